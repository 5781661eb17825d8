"""The stanza catalogue: one template file per stanza, its metadata in its own header.

A stanza file ``templates/stanzas/<name>.Dockerfile.j2`` opens with a Jinja comment holding
YAML metadata between ``---`` lines::

    {#---
    summary: what the stanza does, one line
    needs: [efa]          # matrix fields that must be set; the stanza is on when they are
    optional: false       # optional stanzas stay off unless the matrix switches them on
    apt: [curl]           # Debian/Ubuntu packages it needs at build time (installed early)
    compiles_cuda: false  # true when it runs nvcc: the image then needs cuda_archs
    checks:               # smoke checks proving it worked in a built image (Jinja strings)
      - {kind: file_contains, path: /opt/amazon/efa_installed_packages, text: "{{ v.efa }}"}
    ---#}

A flavor file ``templates/flavors/<flavor>.yaml`` lists its stanzas in build order, rarely
changing layers first. Adding a stanza is one new file plus one line in a flavor file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from builder.errors import BuilderError

# An installed wheel carries them as builder/templates; a checkout (and an editable install)
# reads the repository's templates/.
_HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = next((d for d in (_HERE / "templates", _HERE.parent / "templates") if (d / "flavors").is_dir()),
                     _HERE.parent / "templates")
STANZA_SUFFIX = ".Dockerfile.j2"
_META_RE = re.compile(r"\A\{#-?-{3}\n(?P<meta>.*?)\n-{3}-?#\}\n", re.S)

# Kinds of smoke checks a stanza may declare; builder.smoke interprets them.
CHECK_KINDS = {
    "file_exists",  # path
    "file_absent",  # path (glob allowed)
    "file_contains",  # path, text
    "command",  # argv (list), optional stdout_contains
    "ldd",  # path: every dependency resolves
    "python",  # code: exits 0, optional stdout_contains
    "nccl_version",  # version: ncclGetVersion() (or nccl.h) reports it
    "env",  # name, value: the image config sets it
    "label",  # name, value
    # builder.smoke_linking: what compiled stanzas link
    "ldd_tree",  # path (a folder): every ELF file under it resolves
    "nccl_linked",  # path, version: the libnccl.so.2 the loader picks for path reports version
    "ofi_plugin_version",  # path, version: the aws-ofi-nccl plugin logs that version at init
    "no_gpu_run",  # argv: fails with CUDA's/NCCL's no-device error, never a loader error
}


# libyaml's safe loader when PyYAML has it (the catalogue is read on every start), same results.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class StanzaMeta:
    name: str
    summary: str
    needs: tuple[str, ...] = ()
    optional: bool = False
    apt: tuple[str, ...] = ()
    checks: tuple[dict, ...] = ()
    compiles_cuda: bool = False
    path: Path = field(default=Path(), compare=False)


@dataclass(frozen=True)
class Flavor:
    name: str
    summary: str
    stanzas: tuple[str, ...]
    sagemaker: bool  # whether images of this flavor claim the SageMaker training contract


class CatalogError(BuilderError):
    """A broken or missing template catalogue: a bug or a broken install, not user input."""


def _parse_meta(path: Path) -> StanzaMeta:
    text = path.read_text(encoding="utf-8")
    m = _META_RE.match(text)
    if not m:
        raise CatalogError(f"{path}: stanza must open with a {{#--- YAML metadata ---#}} block")
    data = yaml.load(m.group("meta"), Loader=_SAFE_LOADER) or {}
    unknown = set(data) - {"summary", "needs", "optional", "apt", "checks", "compiles_cuda"}
    if unknown:
        raise CatalogError(f"{path}: unknown metadata keys {sorted(unknown)}")
    name = path.name[: -len(STANZA_SUFFIX)]
    checks = tuple(data.get("checks") or ())
    for check in checks:
        if check.get("kind") not in CHECK_KINDS:
            raise CatalogError(f"{path}: unknown check kind {check.get('kind')!r}")
    if not data.get("summary"):
        raise CatalogError(f"{path}: metadata needs a one-line summary")
    return StanzaMeta(
        name=name,
        summary=str(data["summary"]).strip(),
        needs=tuple(data.get("needs") or ()),
        optional=bool(data.get("optional", False)),
        apt=tuple(data.get("apt") or ()),
        checks=checks,
        compiles_cuda=bool(data.get("compiles_cuda", False)),
        path=path,
    )


@dataclass(frozen=True)
class Catalog:
    stanzas: dict  # name -> StanzaMeta
    flavors: dict  # name -> Flavor

    def flavor_stanzas(self, flavor: str) -> tuple[StanzaMeta, ...]:
        return tuple(self.stanzas[s] for s in self.flavors[flavor].stanzas)


@lru_cache(maxsize=4)
def load_catalog(templates_dir: Path = TEMPLATES_DIR) -> Catalog:
    stanzas = {}
    for path in sorted((templates_dir / "stanzas").glob(f"*{STANZA_SUFFIX}")):
        meta = _parse_meta(path)
        stanzas[meta.name] = meta
    flavors = {}
    if not stanzas or not (templates_dir / "flavors").is_dir():
        raise CatalogError(f"no stanza templates in {templates_dir}: reinstall the package (pip install .) or run from a checkout")
    for path in sorted((templates_dir / "flavors").glob("*.yaml")):
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
        missing = [s for s in data["stanzas"] if s not in stanzas]
        if missing:
            raise CatalogError(f"{path}: unknown stanzas {missing}")
        flavors[path.stem] = Flavor(path.stem, data["summary"].strip(), tuple(data["stanzas"]), bool(data.get("sagemaker")))
    return Catalog(stanzas, flavors)
