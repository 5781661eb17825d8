"""matrix.yaml in, immutable ImageSpecs out: defaults, axes, strict values, compatibility rules.

Every problem is collected (never the first one only) as a ``Problem`` naming the file, line,
image and key, then raised together in one ``MatrixError``. Values reach shell commands in
Dockerfiles, so each has a strict pattern: we reject, we never escape.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from packaging.version import InvalidVersion, Version

from builder import components as comp
from builder import facts, imageref
from builder.errors import MatrixError, Problem, UsageError, did_you_mean
from builder.lockfile import lock_path, pin_specs
from builder.stanzas import Catalog, load_catalog
from builder.yamlio import LineDict, load_yaml

FLAVORS = ("dlc", "source", "nvidia")

# --- strict patterns ---------------------------------------------------------------------------
# Anchored with \Z, never $: `$` also matches before a trailing newline, which would carry a line
# break into the Dockerfile.
NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*\Z")  # docker repository path component
REPO_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*\Z")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
VERSION_RE = re.compile(r"^\d+(?:\.\d+){0,3}(?:(?:a|b|rc)\d+)?(?:\.post\d+)?\Z")
NCCL_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+(?:-\d+)?\Z")
PYTHON_RE = re.compile(r"^3\.\d{1,2}\Z")
CONDA_RE = re.compile(r"^\d+\.\d+\.\d+-\d+\Z")
# Ubuntu bases, and Amazon Linux 2023 (the AWS DLCs from PyTorch 2.11, facts.DLC_AL2023_FIRST).
OS_RE = re.compile(r"^(?:ubuntu(?:18|20|22|24)\.04|amzn2023)\Z")
REGION_RE = re.compile(r"^[a-z]{2}(?:-gov)?-[a-z]+-\d\Z")
CHECKSUM_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z")  # a version, or the exact file name
SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]*\Z")
ENV_VALUE_RE = re.compile(r"^[A-Za-z0-9_.,:/=^+@%-]*\Z")
LABEL_KEY_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*\Z")
LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9 _.,:/=+@()%-]*\Z")
ARCH_RE = re.compile(r"^\d{2,3}a?\Z")
TEXT_RE = re.compile(r"^[A-Za-z0-9 _.,:/=+@()%!?-]*\Z")  # one line of prose: comments and labels
RELPATH_RE = re.compile(r"^(?!/)(?!.*(?:^|/)\.\.(?:/|$))[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*/?\Z")
PROGRAM_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.(?:py|sh)\Z")
URL_PATH_RE = re.compile(r"^[A-Za-z0-9._~/%+-]*\Z")
HOST_RE = re.compile(r"^[a-z0-9]+(?:[.-][a-z0-9]+)*\Z")
PLACEHOLDER_RE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
REQUIREMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(?:\[[A-Za-z0-9._,-]+\])?(?: *(?:===?|~=|!=|<=|>=|<|>) *[A-Za-z0-9.*+!-]+)*(?: *, *(?:===?|~=|!=|<=|>=|<|>) *[A-Za-z0-9.*+!-]+)*\Z")

# SHA256 values their publishers list, by source and version (the matrix may add more).
PUBLISHED_CHECKSUMS = {"efa_installer": facts.EFA_INSTALLER_SHA256}

# --- components: name -> value kind -------------------------------------------------------------
COMPONENTS = {
    "pytorch": "version",
    "cuda": "version",
    "cudnn": "version",
    "python": "python",
    "nccl": "nccl",
    "efa": "version",
    "aws_ofi_nccl": "version",
    "nccl_tests": "version",
    "gdrcopy": "version",
    "pmix": "version",
    "openmpi": "version",
    "torchvision": "version",
    "xformers": "version",
    "boost": "version",
    "miniconda": "conda",
    "mpi4py": "version",
    "sagemaker_training": "version",
    "sagemaker_pytorch_training": "version",
    "smddp": "url",
    "s3_plugin": "url",
}
SHIPS_KEYS = set(COMPONENTS) | {"os"}

# Upstream sources: URL templates ({version} and friends) and the file name each must end in.
SOURCE_FILES = {
    "efa_installer": ("efa", "aws-efa-installer-{version}.tar.gz"),
    "pmix": ("pmix", "pmix-{version}.tar.gz"),
    "openmpi": ("openmpi", "openmpi-{version}.tar.gz"),
    "miniconda": ("miniconda", "Miniconda3-py{python_nodot}_{version}-Linux-x86_64.sh"),
    "boost": ("boost", "boost_{version_underscored}.tar.gz"),
    "nccl_git": ("nccl", "nccl.git"),
    "aws_ofi_nccl_git": ("aws_ofi_nccl", "aws-ofi-nccl.git"),
    "nccl_tests_git": ("nccl_tests", "nccl-tests.git"),
    "gdrcopy_git": ("gdrcopy", "gdrcopy.git"),
    "pytorch_git": ("pytorch", "pytorch.git"),
    "torchvision_git": ("torchvision", "vision.git"),
    "xformers_git": ("xformers", "xformers.git"),
}
# The official upstream of each source. A matrix's `sources:` overrides any of them (a mirror, an
# air-gapped artifact store); a matrix that names none builds from these.
UPSTREAM_SOURCES = {
    "efa_installer": "https://efa-installer.amazonaws.com/aws-efa-installer-{version}.tar.gz",
    "pmix": "https://github.com/openpmix/openpmix/releases/download/v{version}/pmix-{version}.tar.gz",
    "openmpi": "https://download.open-mpi.org/release/open-mpi/v{series}/openmpi-{version}.tar.gz",
    "miniconda": "https://repo.anaconda.com/miniconda/Miniconda3-py{python_nodot}_{version}-Linux-x86_64.sh",
    "boost": "https://archives.boost.io/release/{version}/source/boost_{version_underscored}.tar.gz",
    "nccl_git": "https://github.com/NVIDIA/nccl.git",
    "aws_ofi_nccl_git": "https://github.com/aws/aws-ofi-nccl.git",
    "nccl_tests_git": "https://github.com/NVIDIA/nccl-tests.git",
    "gdrcopy_git": "https://github.com/NVIDIA/gdrcopy.git",
    "pytorch_git": "https://github.com/pytorch/pytorch.git",
    "torchvision_git": "https://github.com/pytorch/vision.git",
    "xformers_git": "https://github.com/facebookresearch/xformers.git",
}

TOP_KEYS = ("schema", "defaults", "flavor_defaults", "bases", "sources", "checksums", "images")
ENTRY_KEYS = (
    "name", "flavor", "description", "base", "region", "components", "stanzas", "axes", "include",
    "exclude", "repository", "tags", "labels", "env", "cuda_archs", "code", "pip", "waivers", "label_prefix",
    "size_baseline", "size_tolerance",
)
DEFAULT_KEYS = tuple(k for k in ENTRY_KEYS if k not in ("name", "flavor", "axes", "include", "exclude"))
MAPPING_KEYS = ("components", "stanzas", "labels", "env", "waivers", "code")
AXIS_KEYS = tuple(COMPONENTS) + ("base", "region")
BASE_KEYS = ("image", "dlc_tag", "registry", "ships", "description")
# Where a DLC base is pulled from: the region's private ECR registry, or ECR Public (facts.DLC_PUBLIC_REGISTRY).
DLC_REGISTRIES = ("regional", "public")
CODE_KEYS = ("dir", "program", "entry_point")
# Who names the program a SageMaker job runs (docs/sagemaker.md): "job" (default) bakes the code
# but leaves the choice to the job (the SDK's entry_point / sagemaker_program hyperparameter);
# "image" bakes ENV SAGEMAKER_PROGRAM, which the training toolkit reads before the job's
# sagemaker_program (aws/sagemaker-training-toolkit src/sagemaker_training/environment.py,
# Environment.__init__), so the image's program runs whatever the job names.
CODE_ENTRY_POINTS = ("job", "image")
WAIVABLE = {
    "nccl-older-than-base": "a pinned NCCL older than the one the base image ships",
}


@dataclass(frozen=True)
class BaseImage:
    key: str
    image: str
    ships: Mapping[str, str]
    dlc: comp.DlcTag | None = None
    description: str = ""
    dlc_tag: str = ""
    public: bool = False  # a DLC pulled from ECR Public rather than the region's registry

    @property
    def os(self) -> str | None:
        return self.ships.get("os")

    @property
    def tag(self) -> str:
        ref = self.image.split("@", 1)[0]
        last = ref.rsplit("/", 1)[-1]
        return last.split(":", 1)[1] if ":" in last else "latest"


@dataclass(frozen=True)
class CodeSpec:
    dir: str
    program: str
    entry_point: str = "job"  # CODE_ENTRY_POINTS: who names the program a SageMaker job runs


@dataclass(frozen=True)
class ImageSpec:
    name: str
    flavor: str
    base: BaseImage
    components: Mapping[str, str]  # what the matrix installs or pins
    versions: Mapping[str, str]  # what the image ends up with: base ships, overlaid by components
    stanzas: tuple[str, ...]
    repository: str
    tags: tuple[str, ...]
    labels: Mapping[str, str]
    env: tuple[tuple[str, str], ...] = ()
    cuda_archs: tuple[str, ...] = ()
    code: CodeSpec | None = None
    pip: tuple[str, ...] = ()
    waivers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    region: str | None = None
    description: str = ""
    label_prefix: str = "builder"
    sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    source_forms: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    checksums: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    provenance: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    origin: str = ""
    size_baseline: int | None = None  # bytes; builds fail when the image exceeds it by size_tolerance
    size_tolerance: float = 0.2

    @property
    def base_image(self) -> str:
        return self.base.image

    @property
    def refs(self) -> tuple[str, ...]:
        return tuple(f"{self.repository}:{t}" for t in self.tags)

    @property
    def primary_ref(self) -> str:
        return self.refs[0]

    @property
    def ofi(self) -> comp.OfiPlugin | None:
        efa = self.versions.get("efa")
        return comp.ofi_plugin(efa, self.components.get("aws_ofi_nccl"), self.base.os) if efa else None

    def has(self, stanza: str) -> bool:
        return stanza in self.stanzas


@dataclass(frozen=True)
class Matrix:
    path: Path
    images: tuple[ImageSpec, ...]
    warnings: tuple[Problem, ...]
    catalog: Catalog
    _drafts: Mapping[str, "_Draft"] = field(repr=False, compare=False, default_factory=dict)
    _context: "_Context | None" = field(repr=False, compare=False, default=None)
    pinned: bool = True  # bases pinned by matrix.lock.json (False: as the matrix writes them)

    def names(self) -> list[str]:
        return [i.name for i in self.images]

    def find(self, name: str) -> ImageSpec | None:
        return next((i for i in self.images if i.name == name), None)

    def get(self, name: str) -> ImageSpec:
        spec = self.find(name)
        if spec is None:
            raise UsageError(f"{self.path.name}: no image named '{name}'{_did_you_mean(name, self.names())}; see 'builder list'")
        return spec

    def select(self, names: Iterable[str], all_: bool = False) -> list[ImageSpec]:
        names = list(names)
        if all_ and names:
            raise UsageError("give image names or --all, not both")
        if all_:
            return list(self.images)
        if not names:
            raise UsageError("name at least one image, or pass --all; see 'builder list'")
        return [self.get(n) for n in dict.fromkeys(names)]  # a name given twice is one image

    def customize(
        self,
        name: str,
        sets: Mapping[str, str] | None = None,
        with_: Iterable[str] = (),
        without: Iterable[str] = (),
    ) -> ImageSpec:
        """One image with components set and stanzas switched, re-validated like the matrix."""
        self.get(name)
        draft = self._drafts[name]
        draft = replace(draft, prov=dict(draft.prov))  # the stored draft stays as loaded
        origin = "command line"
        values = dict(draft.values)
        comps = LineDict(values.get("components") or {})
        comps.line, comps.key_lines = draft.line, {}
        for key, value in (sets or {}).items():
            if key in ("base", "region"):
                values[key] = value
            else:
                comps[key] = value
            draft.prov[f"components.{key}" if key not in ("base", "region") else key] = origin
        values["components"] = comps
        stanzas = LineDict(values.get("stanzas") or {})
        stanzas.line, stanzas.key_lines = draft.line, {}
        for s in with_:
            stanzas[s] = True
        for s in without:
            stanzas[s] = False
        values["stanzas"] = stanzas
        problems: list[Problem] = []
        spec = _build_spec(self._context, replace(draft, values=values), problems)
        errors = [p for p in problems if p.severity == "error"]
        if errors or spec is None:
            raise MatrixError(errors or [Problem(str(self.path), draft.line, name, None, "invalid override")])
        if not self.pinned:
            return spec
        return pin_specs(self.path, [spec])[0][0]


# ------------------------------------------------------------------------------------------------


@dataclass
class _Context:
    file: str
    root: Path
    catalog: Catalog
    bases: dict
    sources: dict
    checksums: dict
    defaults: dict
    flavor_defaults: dict


@dataclass(frozen=True)
class _Draft:
    """One expanded matrix entry before validation: merged values plus where each came from."""

    name_template: str
    line: int
    index: int
    values: dict
    prov: dict


_did_you_mean = did_you_mean


def _shown(path: Path) -> str:
    """How messages name a file: bare when it is in the working directory."""
    return path.name if path.parent.resolve() == Path.cwd().resolve() else str(path)


def load_matrix(path: Path | str, catalog: Catalog | None = None, pin: bool = True,
                only: Iterable[str] | None = None) -> Matrix:
    """Load, expand and validate a matrix file; raise MatrixError with every problem found.

    With ``pin`` (the default), bases locked in matrix.lock.json are pinned by digest and every
    gap between the lock and the matrix is a warning; `builder lock` loads with pin=False.
    ``only`` (image names) validates the file's top level and only the entries whose name
    template can give one of those names (`builder render NAME --stdout`); the Matrix then
    holds those images alone."""
    path = Path(path)
    data = load_yaml(path)
    file = _shown(path)
    catalog = catalog or load_catalog()
    problems: list[Problem] = []

    def err(line, image, key, msg, severity="error"):
        problems.append(Problem(file, line, image, key, msg, severity))

    if not isinstance(data, dict):
        raise MatrixError([Problem(file, 1, None, None, "the matrix must be a mapping with an 'images:' list")])
    for key in data:
        if key not in TOP_KEYS:
            err(data.line_of(key), None, str(key), f"unknown top-level key{_did_you_mean(key, TOP_KEYS)}; allowed: {', '.join(TOP_KEYS)}")
    if data.get("schema", 1) != 1:
        err(data.line_of("schema"), None, "schema", "unsupported schema version; this builder reads schema: 1")

    ctx = _Context(
        file=file,
        root=path.resolve().parent,
        catalog=catalog,
        bases={},
        sources=_mapping(data, "sources", err) or LineDict(),
        checksums=_mapping(data, "checksums", err) or {},
        defaults=_mapping(data, "defaults", err) or LineDict(),
        flavor_defaults=_mapping(data, "flavor_defaults", err) or {},
    )
    _check_defaults(ctx, err)
    _check_sources(ctx, err)
    ctx.bases = _load_bases(data, err)

    entries = data.get("images")
    if not isinstance(entries, list) or not entries:
        err(data.line_of("images") if "images" in data else 1, None, "images", "needs a non-empty list of image entries")
        entries = []

    drafts: list[_Draft] = []
    for index, entry in enumerate(entries):
        drafts.extend(_expand(ctx, index, entry, err))

    specs: list[ImageSpec] = []
    seen: dict[str, int] = {}
    by_name: dict[str, _Draft] = {}
    if only is not None:
        wanted = set(only)
        drafts = [d for d in drafts if any(_could_name(d.name_template, n) for n in wanted)]
    for draft in drafts:
        spec = _build_spec(ctx, draft, problems)
        if spec is None:
            continue
        if spec.name in seen:
            err(draft.line, spec.name, "name", f"duplicate image name (also on line {seen[spec.name]}); "
                "make the name template include an axis, e.g. name: \"nvidia-efa{efa}\"")
            continue
        seen[spec.name] = draft.line
        by_name[spec.name] = draft
        specs.append(spec)

    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise MatrixError(errors)
    if pin:
        specs, gaps = pin_specs(path, specs, complete=only is None)
        problems += [Problem(_shown(lock_path(path)), 0, None, None, gap, "warning") for gap in gaps]
    return Matrix(
        path=path,
        images=tuple(specs),
        warnings=tuple(p for p in problems if p.severity == "warning"),
        catalog=catalog,
        _drafts=by_name,
        _context=ctx,
        pinned=pin,
    )


def _could_name(template: object, name: str) -> bool:
    """Whether a name template ('nvidia-ngc{base_tag}-efa{efa}') can give this name: its
    literal parts in order, any placeholder standing for any text."""
    if not isinstance(template, str):
        return True  # reported by _build_spec
    pattern = "".join(".*" if i % 2 else re.escape(part) for i, part in enumerate(PLACEHOLDER_RE.split(template)))
    return re.fullmatch(pattern, name, re.DOTALL) is not None


def _mapping(data: LineDict, key: str, err) -> LineDict | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        err(data.line_of(key), None, key, "must be a mapping")
        return None
    return value


def _check_defaults(ctx: _Context, err) -> None:
    for key in ctx.defaults:
        if key not in DEFAULT_KEYS:
            err(ctx.defaults.line_of(key), None, f"defaults.{key}", f"unknown key{_did_you_mean(key, DEFAULT_KEYS)}")
    for flavor, values in ctx.flavor_defaults.items():
        line = ctx.flavor_defaults.line_of(flavor)
        if flavor not in FLAVORS:
            err(line, None, f"flavor_defaults.{flavor}", f"unknown flavor{_did_you_mean(flavor, FLAVORS)}; flavors: {', '.join(FLAVORS)}")
        elif not isinstance(values, dict):
            err(line, None, f"flavor_defaults.{flavor}", "must be a mapping")
        else:
            for key in values:
                if key not in DEFAULT_KEYS:
                    err(values.line_of(key), None, f"flavor_defaults.{flavor}.{key}", f"unknown key{_did_you_mean(key, DEFAULT_KEYS)}")


def _check_sources(ctx: _Context, err) -> None:
    for key, url in list(ctx.sources.items()):
        line = ctx.sources.line_of(key)
        if key not in SOURCE_FILES:
            err(line, None, f"sources.{key}", f"unknown source{_did_you_mean(key, SOURCE_FILES)}")
            continue
        if not isinstance(url, str):
            err(line, None, f"sources.{key}", "must be a URL string")
            continue
        # Checked here too, not only where an image uses it: a bad mirror URL is a bug even unused.
        sample, msg = _fill(url, {"version": "1.0.0", "series": "1.0", "version_underscored": "1_0_0",
                                  "python_nodot": "311"})
        msg = msg or _check_url(sample)
        if msg:
            err(line, None, f"sources.{key}", msg)
    for key, table in list(ctx.checksums.items()):
        line = ctx.checksums.line_of(key)
        if key not in SOURCE_FILES:
            err(line, None, f"checksums.{key}", f"unknown source{_did_you_mean(key, SOURCE_FILES)}")
            continue
        if not isinstance(table, dict):
            err(line, None, f"checksums.{key}", "must map versions to sha256 values")
            continue
        for version, digest in table.items():
            if not isinstance(version, str) or not CHECKSUM_KEY_RE.match(version):
                err(table.line_of(version), None, f"checksums.{key}", f"{version!r}: key by version or by file name")
            if not isinstance(digest, str) or not SHA256_RE.match(digest):
                err(table.line_of(version), None, f"checksums.{key}.{version}", "must be 64 lowercase hex digits (sha256)")


def _load_bases(data: LineDict, err) -> dict[str, BaseImage | None]:
    bases: dict[str, BaseImage | None] = {}
    raw = data.get("bases") or {}
    if not isinstance(raw, dict):
        err(data.line_of("bases"), None, "bases", "must map base names to {image|dlc_tag, ships}")
        return bases
    for key, entry in raw.items():
        line = raw.line_of(key)
        where = f"bases.{key}"
        if not isinstance(key, str) or not NAME_RE.match(key):
            err(line, None, where, "base names use lowercase letters, digits and . _ -")
            continue
        if not isinstance(entry, dict):
            err(line, None, where, "must be a mapping with image or dlc_tag")
            bases[key] = None
            continue
        for k in entry:
            if k not in BASE_KEYS:
                err(entry.line_of(k), None, f"{where}.{k}", f"unknown key{_did_you_mean(k, BASE_KEYS)}")
        ships = {}
        raw_ships = entry.get("ships") or {}
        if not isinstance(raw_ships, dict):
            err(entry.line_of("ships"), None, f"{where}.ships", "must map components to versions")
            raw_ships = {}
        ok = True
        for comp_name, value in raw_ships.items():
            cl = raw_ships.line_of(comp_name)
            if comp_name not in SHIPS_KEYS:
                err(cl, None, f"{where}.ships.{comp_name}", f"unknown component{_did_you_mean(comp_name, SHIPS_KEYS)}")
                ok = False
                continue
            if comp_name == "os":
                if not isinstance(value, str) or not OS_RE.match(value):
                    err(cl, None, f"{where}.ships.os", "must look like ubuntu22.04")
                    ok = False
                    continue
            elif (msg := _check_value(comp_name, value)) is not None:
                err(cl, None, f"{where}.ships.{comp_name}", msg)
                ok = False
                continue
            ships[comp_name] = value
        dlc = None
        image = entry.get("image")
        if "dlc_tag" in entry:
            tag = entry["dlc_tag"]
            dlc = comp.parse_dlc_tag(tag) if isinstance(tag, str) else None
            if dlc is None:
                err(entry.line_of("dlc_tag"), None, f"{where}.dlc_tag",
                    "not a DLC PyTorch training GPU tag; expected like 2.4.0-gpu-py311-cu124-ubuntu22.04-sagemaker")
                ok = False
            else:
                for k, v in (("pytorch", dlc.pytorch), ("python", dlc.python), ("os", dlc.os)):
                    if v is None:  # an Amazon Linux 2023 DLC tag names no Python: ships.python says it
                        continue
                    if k in ships and not _agrees_with_tag(k, ships[k], v):
                        err(raw_ships.line_of(k), None, f"{where}.ships.{k}", f"{ships[k]} contradicts the DLC tag ({v})")
                        ok = False
                    ships.setdefault(k, v)
                if "cuda" in ships and comp.cuda_tag(ships["cuda"]) != dlc.cuda_tag:
                    err(raw_ships.line_of("cuda"), None, f"{where}.ships.cuda", f"{ships['cuda']} contradicts the DLC tag ({dlc.cuda_tag})")
                    ok = False
                ships.setdefault("cuda", comp.cuda_from_tag(dlc.cuda_tag))  # cu124 -> 12.4; ships may say 12.4.1
        registry = entry.get("registry", "regional")
        if registry not in DLC_REGISTRIES or ("registry" in entry and dlc is None):
            err(entry.line_of("registry"), None, f"{where}.registry",
                f"registry: is {' or '.join(DLC_REGISTRIES)}, beside a dlc_tag:")
            ok = False
        if image is not None and (not isinstance(image, str) or not imageref.is_reference(image)):
            err(entry.line_of("image"), None, f"{where}.image", "not a valid image reference (registry/repo:tag[@sha256:...])")
            ok = False
        if image is None and dlc is None:
            err(line, None, where, "needs image: (a full reference) or dlc_tag: (an AWS DLC tag)")
            ok = False
        desc = entry.get("description", "")
        if not isinstance(desc, str) or not TEXT_RE.match(desc):
            err(entry.line_of("description"), None, f"{where}.description", "one line of plain text")
            ok = False
        bases[key] = (BaseImage(key, image or "", MappingProxyType(ships), dlc, desc, entry.get("dlc_tag", ""),
                                registry == "public") if ok else None)
    return bases


def _agrees_with_tag(key: str, shipped: str, from_tag: str) -> bool:
    """ships.<key> agrees with what the DLC tag says; a tag's short PyTorch (2.13) matches 2.13.x."""
    if key == "os":
        return shipped == from_tag
    if key == "pytorch" and len(Version(from_tag).release) == 2:
        return comp.short(shipped) == comp.short(from_tag)
    return Version(shipped) == Version(from_tag)


def _check_value(name: str, value: Any) -> str | None:
    """None when ``value`` is valid for component ``name``, else the reason and the fix."""
    kind = COMPONENTS[name]
    if isinstance(value, float):
        return f"{value!r} is a YAML number: quote versions, e.g. \"{value}\" (3.10 would become 3.1)"
    if not isinstance(value, str):
        return f"must be a quoted version string, not {type(value).__name__}"
    if kind == "url":
        return _check_url(value)
    if name == "aws_ofi_nccl" and value.endswith("-aws"):
        return f"write {value[:-4]}: the -aws tag suffix is derived from the version"
    if name == "nccl" and value.startswith("v"):
        return f"write {value.lstrip('v')}: the v...-1 git tag form is derived"
    pattern = {"version": VERSION_RE, "nccl": NCCL_VERSION_RE, "python": PYTHON_RE, "conda": CONDA_RE}[kind]
    if not pattern.match(value):
        hint = {"python": "like \"3.11\"", "nccl": "like 2.21.5", "conda": "like 24.7.1-0"}.get(kind, "like 1.2.3")
        return f"{value!r} is not a valid version ({hint})"
    try:
        Version(value.replace("-", ".post") if kind in ("nccl", "conda") else value)
    except InvalidVersion:
        return f"{value!r} does not parse as a version"
    return None


def _check_url(url: str, expected_file: str | None = None) -> str | None:
    if any(c.isspace() or not c.isprintable() for c in url):  # urlsplit silently drops tabs and newlines
        return f"{url!r}: no spaces, tabs, newlines or control characters in URLs"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "not a URL"
    loopback = parts.hostname in ("127.0.0.1", "localhost")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        return f"{url!r} must use https:// (plain http is accepted only for a loopback test mirror)"
    if parts.query or parts.fragment or parts.username or parts.password:
        return f"{url!r}: no query, fragment or credentials allowed in URLs"
    if not parts.hostname or not HOST_RE.match(parts.hostname):
        return f"{url!r}: invalid host"
    if not URL_PATH_RE.match(parts.path) or "//" in parts.path or "/../" in parts.path + "/":
        return f"{url!r}: the path may only hold letters, digits and . _ ~ / % + -"
    if expected_file is not None and parts.path.rsplit("/", 1)[-1] != expected_file:
        return f"{url!r} must end in {expected_file}"
    return None


# --- expansion ---------------------------------------------------------------------------------


def _expand(ctx: _Context, index: int, entry: Any, err) -> list[_Draft]:
    if not isinstance(entry, dict):
        err(getattr(entry, "line", 0), None, f"images[{index}]", "each image entry must be a mapping")
        return []
    label = entry.get("name") if isinstance(entry.get("name"), str) else f"images[{index}]"
    for key in entry:
        if key not in ENTRY_KEYS:
            err(entry.line_of(key), label, str(key), f"unknown key{_did_you_mean(key, ENTRY_KEYS)}")
    name = entry.get("name")
    if not isinstance(name, str):
        err(entry.line, label, "name", "every image needs a name")
        return []
    flavor = entry.get("flavor")
    if flavor not in FLAVORS:
        err(entry.line_of("flavor"), name, "flavor", f"must be one of {', '.join(FLAVORS)}{_did_you_mean(flavor, FLAVORS)}")
        return []

    merged: dict = {}
    prov: dict = {}
    layers = [("defaults", ctx.defaults), (f"flavor_defaults.{flavor}", ctx.flavor_defaults.get(flavor) or {}),
              (f"{ctx.file}:{entry.line}", entry)]
    for source, layer in layers:
        for key, value in layer.items():
            if key not in DEFAULT_KEYS:
                continue
            if key in MAPPING_KEYS and isinstance(value, dict) and isinstance(merged.get(key), dict):
                combined = LineDict(merged[key])
                combined.line = value.line
                combined.key_lines = {**merged[key].key_lines, **value.key_lines}
                combined.update(value)
                merged[key] = combined
            else:
                merged[key] = value
            if key in MAPPING_KEYS and isinstance(value, dict):
                for sub in value:
                    prov[f"{key}.{sub}"] = source
            prov[key] = source
    merged["flavor"] = flavor

    combos = _combinations(entry, name, err)
    drafts = []
    for combo in combos:
        values = dict(merged)
        p = dict(prov)
        if not isinstance(values.get("components") or {}, dict):
            drafts.append(_Draft(name, entry.line, index, values, p))  # _build_spec reports it
            continue
        comps = LineDict(values.get("components") or {})
        comps.line = getattr(values.get("components"), "line", entry.line)
        comps.key_lines = dict(getattr(values.get("components"), "key_lines", {}))
        for key, value in combo.items():
            if key in ("base", "region"):
                values[key] = value
                p[key] = f"axis {key}"
            else:
                comps[key] = value
                comps.key_lines[key] = entry.line_of("axes")
                p[f"components.{key}"] = f"axis {key}"
        values["components"] = comps
        drafts.append(_Draft(name, entry.line, index, values, p))
    return drafts


def _combinations(entry: LineDict, name: str, err) -> list[dict]:
    axes = entry.get("axes") or {}
    if not isinstance(axes, dict):
        err(entry.line_of("axes"), name, "axes", "must map axis names to lists of values")
        return []
    for key, values in axes.items():
        if key not in AXIS_KEYS:
            err(axes.line_of(key), name, f"axes.{key}", f"unknown axis{_did_you_mean(key, AXIS_KEYS)}; axes may be components, base or region")
            return []
        if not isinstance(values, list) or not values:
            err(axes.line_of(key), name, f"axes.{key}", "must be a non-empty list")
            return []
    keys = list(axes)
    combos = [dict(zip(keys, vals)) for vals in itertools.product(*(axes[k] for k in keys))] if keys else [{}]

    for field_name in ("exclude", "include"):
        items = entry.get(field_name) or []
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            err(entry.line_of(field_name), name, field_name, "must be a list of mappings")
            return []
        for item in items:
            for key in item:
                if key not in AXIS_KEYS:
                    err(item.line, name, f"{field_name}.{key}", f"unknown axis{_did_you_mean(key, AXIS_KEYS)}")
                    return []
    excluded = entry.get("exclude") or []
    combos = [c for c in combos if not any(all(c.get(k) == v for k, v in ex.items()) for ex in excluded)]
    if keys and not combos:
        err(entry.line_of("exclude"), name, "exclude", "excludes every combination of the axes")
    # GitHub Actions semantics: an include extends every combination whose axis values it does
    # not overwrite; an include that extends none becomes a combination of its own.
    for inc in entry.get("include") or []:
        extended = False
        for c in combos:
            if keys and all(c.get(k) == v for k, v in inc.items() if k in keys):
                c.update({k: v for k, v in inc.items() if k not in keys})
                extended = True
        if not extended:
            combos.append(dict(inc))
    return combos


# --- building one ImageSpec ---------------------------------------------------------------------


def _fill(template: str, values: Mapping[str, str]) -> tuple[str | None, str | None]:
    """Replace {placeholders}; only plain names, so no attribute/format-spec tricks get through."""
    missing = []

    def sub(m):
        key = m.group(1)
        if key not in values:
            missing.append(key)
            return m.group(0)
        return values[key]

    out = PLACEHOLDER_RE.sub(sub, template)
    if missing:
        return None, f"unknown placeholder {{{missing[0]}}}{_did_you_mean(missing[0], values)}; known: {', '.join(sorted(values))}"
    if "{" in out or "}" in out:
        return None, "braces may only wrap a placeholder name like {efa}"
    return out, None


def _build_spec(ctx: _Context, draft: _Draft, problems: list[Problem]) -> ImageSpec | None:
    from builder import rules  # the compatibility rules need the finished spec

    values = draft.values
    flavor = values["flavor"]
    start = len(problems)
    label = draft.name_template

    def err(key, msg, line=None, severity="error"):
        problems.append(Problem(ctx.file, line or draft.line, label, key, msg, severity))

    comps_raw = values.get("components") or {}
    if not isinstance(comps_raw, dict):
        err("components", "must map component names to versions")
        comps_raw = LineDict()
    comps: dict[str, str] = {}
    for key, value in comps_raw.items():
        line = comps_raw.line_of(key) if isinstance(comps_raw, LineDict) else draft.line
        if key not in COMPONENTS:
            err(f"components.{key}", f"unknown component{_did_you_mean(key, COMPONENTS)}", line)
            continue
        if value is None:  # explicitly unset a default
            continue
        msg = _check_value(key, value)
        if msg:
            err(f"components.{key}", msg, line)
            continue
        comps[key] = value

    # Base image
    base_key = values.get("base")
    base = None
    if not isinstance(base_key, str):
        err("base", "every image needs base: <a name from bases:>")
    elif base_key not in ctx.bases:
        err("base", f"unknown base '{base_key}'{_did_you_mean(base_key, ctx.bases)}; define it under bases:")
    else:
        base = ctx.bases[base_key]  # None when the base itself was invalid (already reported)
    region = values.get("region")
    if flavor == "dlc":
        if base is not None and base.dlc is None:
            err("base", f"a dlc image needs a base with dlc_tag:, '{base_key}' has none")
            base = None
        if not isinstance(region, str) or not REGION_RE.match(region):
            err("region", "a dlc image needs region: like us-west-2")
            region = None
        elif comp.dlc_registry(region) is None and not (base is not None and (base.image or base.public)):
            err("region", f"no Deep Learning Containers registry known for region '{region}'"
                f"{_did_you_mean(region, facts.DLC_REGION_ACCOUNTS)}; "
                f"or give bases.{base_key}.image the full DLC image URI for that region")
            region = None
        if base is not None and region and not base.image:
            base = replace(base, image=comp.dlc_image(region, base.dlc_tag, base.dlc.repository, base.public))
    elif base is not None and base.dlc is not None:
        err("base", f"'{base_key}' is a DLC base; only flavor dlc extends DLC images")
        base = None

    # Stanzas
    catalog = ctx.catalog
    flavor_stanzas = catalog.flavor_stanzas(flavor)
    switches = values.get("stanzas") or {}
    if not isinstance(switches, dict):
        err("stanzas", "must map stanza names to true/false")
        switches = {}
    names_here = [s.name for s in flavor_stanzas]
    for key, on in switches.items():
        line = switches.line_of(key) if isinstance(switches, LineDict) else draft.line
        if key not in names_here:
            other = key in catalog.stanzas
            err(f"stanzas.{key}", (f"not a stanza of flavor {flavor}; its stanzas: {', '.join(names_here)}" if other
                                   else f"unknown stanza{_did_you_mean(key, names_here)}"), line)
        elif not isinstance(on, bool):
            err(f"stanzas.{key}", "must be true or false", line)

    code = _code_spec(values.get("code"), err)
    if code is not None and not (ctx.root / code.dir / code.program).is_file():
        err("code", f"{code.dir}/{code.program} does not exist next to the matrix ({ctx.root}); "
            "code.dir is relative to the folder holding matrix.yaml")
    pip = _pip(values.get("pip"), err)
    present = set(comps) | ({"code"} if code else set()) | ({"pip"} if pip else set())
    enabled = []
    for meta in flavor_stanzas:
        switch = switches.get(meta.name)
        wanted = switch if isinstance(switch, bool) else not meta.optional
        if not wanted:
            continue
        missing = [n for n in meta.needs if n not in present]
        if missing:
            if switch is True:
                err(f"stanzas.{meta.name}", f"needs {', '.join(missing)}; set {' and '.join('components.' + m if m in COMPONENTS else m for m in missing)}")
            continue
        enabled.append(meta.name)

    # Scalars and small mappings
    archs = values.get("cuda_archs") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) and ARCH_RE.match(a) for a in archs):
        err("cuda_archs", "must be a list of quoted SM numbers like [\"80\", \"90\"]")
        archs = []
    elif not archs:
        compiling = [s for s in enabled if catalog.stanzas[s].compiles_cuda]
        if compiling:  # an empty list would build for nvcc's default GPU only
            err("cuda_archs", f"stanza {compiling[0]} compiles CUDA code: set cuda_archs to the GPUs it runs on, "
                "e.g. [\"80\", \"90\"] for A100 (p4d) and H100/H200 (p5)")
    env = _env(values.get("env"), err)
    labels = _labels(values.get("labels"), err)
    waivers = _waivers(values.get("waivers"), err)
    description = values.get("description", "")
    if not isinstance(description, str) or not TEXT_RE.match(description):
        err("description", "one line of plain text (letters, digits, basic punctuation)")
        description = ""
    label_prefix = values.get("label_prefix", "builder")
    if not isinstance(label_prefix, str) or not LABEL_KEY_RE.match(label_prefix):
        err("label_prefix", "lowercase reverse-DNS style, e.g. com.example.images")
        label_prefix = "builder"

    size_baseline = _size(values.get("size_baseline"), err)
    tolerance = values.get("size_tolerance", 0.2)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance <= 10:
        err("size_tolerance", "a fraction like 0.2 (fail when the image is more than 20% over its baseline)")
        tolerance = 0.2

    if base is None or len(problems) > start and any(p.severity == "error" for p in problems[start:]):
        return None

    versions = {**base.ships, **comps}
    versions.pop("os", None)
    fill_values = _placeholders(flavor, base, versions, region)
    name, msg = _fill(draft.name_template, fill_values)
    if msg:
        err("name", msg)
        return None
    if not NAME_RE.match(name):
        err("name", f"'{name}' must be lowercase letters, digits and single . _ - separators")
        return None
    label = name
    fill_values["name"] = name
    repository, msg = _fill(values.get("repository", "{name}") if isinstance(values.get("repository", "{name}"), str) else "", fill_values)
    if msg or not repository or not REPO_RE.match(repository):
        err("repository", msg or f"'{repository}' is not a valid repository name (lowercase path like team/pytorch)")
        return None
    tag_templates = values.get("tags") or ["{name}"]
    tags = []
    if not isinstance(tag_templates, list) or not all(isinstance(t, str) for t in tag_templates):
        err("tags", "must be a list of tag templates like \"pt{pytorch}-efa{efa}\"")
        return None
    for template in tag_templates:
        tag, msg = _fill(template, fill_values)
        if msg:
            err("tags", msg)
            return None
        tag = tag.replace("+", "_")
        if not TAG_RE.match(tag):
            err("tags", f"'{tag}' is not a valid Docker tag ([A-Za-z0-9_.-], at most 128 characters)")
            return None
        if tag not in tags:
            tags.append(tag)

    sources, forms, checksums = _resolve_sources(ctx, comps, versions, err)
    provenance = dict(draft.prov)
    provenance["base"] = provenance.get("base", "defaults")
    for key in base.ships:
        provenance.setdefault(f"ships.{key}", f"base {base.key}")

    spec = ImageSpec(
        name=name,
        flavor=flavor,
        base=base,
        components=MappingProxyType(dict(sorted(comps.items()))),
        versions=MappingProxyType(dict(sorted(versions.items()))),
        stanzas=tuple(enabled),
        repository=repository,
        tags=tuple(tags),
        labels=MappingProxyType(labels),
        env=tuple(env),
        cuda_archs=tuple(archs),
        code=code,
        pip=tuple(pip),
        waivers=MappingProxyType(waivers),
        region=region,
        description=description,
        label_prefix=label_prefix,
        sources=MappingProxyType(sources),
        source_forms=MappingProxyType(forms),
        checksums=MappingProxyType(checksums),
        provenance=MappingProxyType(provenance),
        origin=f"{ctx.file}:{draft.line}",
        size_baseline=size_baseline,
        size_tolerance=float(tolerance),
    )
    for problem in rules.check(spec, comps_raw):
        problems.append(replace(problem, file=ctx.file, image=name,
                                line=problem.line or _line_for(comps_raw, problem.key, draft.line)))
    if any(p.severity == "error" for p in problems[start:]):
        return None
    return spec


def _line_for(mapping, key: str | None, default: int) -> int:
    if key and key.startswith("components.") and isinstance(mapping, LineDict):
        return mapping.line_of(key.split(".", 1)[1])
    return default


def _placeholders(flavor: str, base: BaseImage, versions: Mapping[str, str], region: str | None) -> dict[str, str]:
    values = {k: v for k, v in versions.items() if COMPONENTS.get(k) != "url"}
    values["flavor"] = flavor
    if region:
        values["region"] = region
    values["base"] = base.key
    values["base_tag"] = base.tag
    if "cuda" in versions:
        values["cuda_tag"] = comp.cuda_tag(versions["cuda"])
        values["cuda_short"] = comp.short(versions["cuda"])
    if "python" in versions:
        values["python_tag"] = comp.python_tag(versions["python"])
    if "pytorch" in versions:
        values["pytorch_short"] = comp.short(versions["pytorch"])
    return values


VERSION_SENTINEL = "@VERSION@"  # never valid in a URL, so it marks exactly where {version} went


def _resolve_sources(ctx, comps, versions, err) -> tuple[dict, dict, dict]:
    """URLs of the upstream sources this image's components use, the same URL with the version
    left as a sentinel (render puts the stanza's ARG there), and the pinned checksums."""
    sources, forms, checksums = {}, {}, {}
    for key, (component, file_template) in SOURCE_FILES.items():
        if component not in comps:
            continue
        template = ctx.sources.get(key, UPSTREAM_SOURCES[key])
        if not isinstance(template, str):
            continue  # reported by _check_sources
        version = comps[component]
        values = {
            "version": version,
            "series": comp.short(version) if VERSION_RE.match(version) else version,
            "version_underscored": version.replace(".", "_"),
            "python_nodot": versions.get("python", "").replace(".", ""),
        }
        url, msg = _fill(template, values)
        expected, _ = _fill(file_template, values)
        msg = msg or _check_url(url, expected)
        if msg:
            err(f"sources.{key}", msg, ctx.sources.line_of(key))
            continue
        sources[key] = url
        forms[key], _ = _fill(template, {**values, "version": VERSION_SENTINEL})
        # By file name first: one version can have several files (Miniconda per Python). The
        # matrix's pins come before the published ones built in.
        table = ctx.checksums.get(key) or {}
        digest = table.get(expected) or table.get(version) or PUBLISHED_CHECKSUMS.get(key, {}).get(version)
        if digest:
            checksums[key] = digest
    return sources, forms, checksums


SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\Z")
SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def _size(raw, err) -> int | None:
    """'18GB' / '850 MiB' -> bytes."""
    if raw is None:
        return None
    m = SIZE_RE.match(str(raw).strip()) if isinstance(raw, str) else None
    if not m:
        err("size_baseline", "a size like \"18GB\" or \"850MiB\"")
        return None
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2)])


def _code_spec(raw, err) -> CodeSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        err("code", "must be a mapping {dir: path/in/repo, program: train.py}")
        return None
    for k in raw:
        if k not in CODE_KEYS:
            err(f"code.{k}", f"unknown key{_did_you_mean(k, CODE_KEYS)}")
    directory, program = raw.get("dir"), raw.get("program")
    ok = True
    if not isinstance(directory, str) or not RELPATH_RE.match(directory):
        err("code.dir", "a relative path inside the project (letters, digits, . _ -; no '..')")
        ok = False
    if not isinstance(program, str) or not PROGRAM_RE.match(program):
        err("code.program", "a file name ending in .py or .sh, e.g. train.py")
        ok = False
    entry_point = raw.get("entry_point", "job")
    if entry_point not in CODE_ENTRY_POINTS:
        err("code.entry_point", "job (the job's entry_point runs; default) or image (the baked program always runs)")
        ok = False
    return CodeSpec(directory.rstrip("/"), program, entry_point) if ok else None


def _pip(raw, err) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        err("pip", "must be a list of requirements like \"torchmetrics==1.4.0\"")
        return []
    from packaging.requirements import InvalidRequirement, Requirement  # local: only pip: lists need it

    out = []
    for item in raw:
        # Matched whole, unstripped: packaging < 25 (which the SageMaker SDK pins) accepts a
        # trailing newline in Requirement(), so the pattern alone must refuse it.
        if not isinstance(item, str) or item != item.strip() or not REQUIREMENT_RE.match(item):
            err("pip", f"{item!r}: a name with optional extras and version specifiers only "
                "(no URLs, markers, options or shell characters)")
            continue
        try:
            Requirement(item)
        except InvalidRequirement as exc:
            err("pip", f"{item!r}: {exc}")
            continue
        out.append(item.strip())
    return out


def _env(raw, err) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        err("env", "must map variable names to values")
        return []
    out = []
    for key, value in raw.items():
        if not isinstance(key, str) or not ENV_NAME_RE.match(key):
            err(f"env.{key}", "variable names are UPPER_CASE letters, digits and _")
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            err(f"env.{key}", "quote the value, e.g. \"0\"")
            continue
        if not ENV_VALUE_RE.match(str(value)):
            err(f"env.{key}", "values may hold letters, digits and _ . , : / = ^ + @ % - only")
            continue
        out.append((key, str(value)))
    return out


def _labels(raw, err) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        err("labels", "must map label keys to values")
        return {}
    out = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not LABEL_KEY_RE.match(key):
            err(f"labels.{key}", "label keys are lowercase reverse-DNS like org.opencontainers.image.source")
            continue
        if not isinstance(value, str) or not LABEL_VALUE_RE.match(value):
            err(f"labels.{key}", "label values are one line without quotes, $, backslashes or backticks")
            continue
        out[key] = value
    return dict(sorted(out.items()))


def _waivers(raw, err) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        err("waivers", "must map rule names to a one-line reason")
        return {}
    out = {}
    for key, reason in raw.items():
        if key not in WAIVABLE:
            err(f"waivers.{key}", f"rule cannot be waived{_did_you_mean(key, WAIVABLE)}; waivable: {', '.join(WAIVABLE)}")
            continue
        if not isinstance(reason, str) or len(reason.strip()) < 10 or not TEXT_RE.match(reason):
            err(f"waivers.{key}", "give the reason as one line of plain text (at least 10 characters)")
            continue
        out[key] = reason.strip()
    return out
