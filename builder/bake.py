"""ImageSpecs in, a `docker buildx bake` JSON definition out: one target per image.

Bake builds the targets in parallel on one or many BuildKit builders and shares a registry
cache, so a team hands it the whole matrix instead of running `builder build` image after image.
The file builds exactly what `builder render` committed under images/ (the Dockerfile is the
source of truth, reviewed in pull requests): a missing or stale Dockerfile is an error, never
rendered silently on the side.

Format: the JSON form of the Bake file reference (docs.docker.com/build/bake/reference/):
``group`` and ``target`` properties; target attributes ``context``, ``dockerfile``, ``args``,
``tags``, ``labels``, ``platforms``, ``cache-from``, ``cache-to``, ``description``, ``network``.

Paths: bake resolves ``context`` from the folder it runs in, not from the bake file's folder, so
every target's context is ``.``: run ``docker buildx bake -f FILE`` from the matrix's folder.

Cache: a registry cache is read only from a repository the user named (``--cache-ref``, or the
image's own tag under ``--registry``); a bare tag would mean Docker Hub, where anyone who owns the
namespace could feed layers into the build.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from builder.errors import BuilderError, UsageError
from builder.matrix import FLAVORS, ImageSpec
from builder.render import Renderer, dockerfile_path

# buildx accepts only these characters in target and group names (bake.go, targetNamePattern);
# image names may hold dots, so a target name swaps them for underscores.
TARGET_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]+\Z")
# A registry cache reference: host[:port]/path, fully qualified (a host with a '.' or a port,
# or localhost), no tag: one tag per target is added.
CACHE_REF_RE = re.compile(
    r"^(?:[a-z0-9]+(?:-[a-z0-9]+)*(?:\.[a-z0-9]+(?:-[a-z0-9]+)*)+(?::\d{1,5})?|[a-z0-9]+(?:[.-][a-z0-9]+)*:\d{1,5}"
    r"|localhost)/[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$"
)
REGISTRY_RE = re.compile(r"^[a-z0-9]+(?:[.-][a-z0-9]+)*(?::\d{1,5})?\Z")
# The stanzas install x86_64 software (EFA installer, lib/x86_64-linux-gnu paths, the smddp
# wheels) on x86_64 bases: another platform would build something that cannot work.
SUPPORTED_PLATFORMS = ("linux/amd64",)
NETWORKS = ("default", "host", "none")
ARG_RE = re.compile(r"^ARG ([A-Za-z_][A-Za-z0-9_]*)=(\S*)$", re.MULTILINE)
# Build arguments that only steer apt's prompts: not worth overriding from bake.
QUIET_ARGS = {"DEBIAN_FRONTEND"}
DEFAULT_PLATFORMS = ("linux/amd64",)  # every base (NGC, CUDA, DLC) is an x86_64 GPU image
GROUP_NAMES = ("default", *FLAVORS)  # bake looks a name up as a group and as a target


@dataclass(frozen=True)
class BakeOptions:
    registry: str | None = None  # host[:port] prefixed to every tag (e.g. the ECR registry)
    cache_ref: str | None = None  # registry cache repository; one tag per target
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS
    network: str | None = None  # 'host' where builds have no bridge network (needs --allow=network.host)

    def check(self) -> "BakeOptions":
        if self.registry is not None and not REGISTRY_RE.match(self.registry):
            raise UsageError(f"--registry {self.registry!r}: expected host[:port], e.g. 123456789012.dkr.ecr.us-west-2.amazonaws.com")
        if self.cache_ref is not None and not CACHE_REF_RE.match(self.cache_ref):
            raise UsageError(f"--cache-ref {self.cache_ref!r}: expected a fully qualified repository without tag, "
                             "e.g. 123456789012.dkr.ecr.us-west-2.amazonaws.com/pytorch-efa/cache")
        for platform in self.platforms:
            if platform not in SUPPORTED_PLATFORMS:
                raise UsageError(f"--platform {platform!r}: only linux/amd64 is supported; the images install "
                                 "x86_64 software (EFA installer, x86_64-linux-gnu libraries, smddp wheels)")
        if self.network is not None and self.network not in NETWORKS:
            raise UsageError(f"--network {self.network!r}: one of {', '.join(NETWORKS)}")
        return self


def target_name(image_name: str) -> str:
    name = image_name.replace(".", "_")
    if not TARGET_NAME_RE.match(name):  # matrix names are stricter already; belt and braces
        raise BuilderError(f"image '{image_name}' has no valid bake target name")
    return name


def build_args(dockerfile: str) -> dict[str, str]:
    """The ARGs the Dockerfile declares with a default (the matrix's versions and checksums), so
    `docker buildx bake --set 'TARGET.args.NCCL_VERSION=...'` overrides them by their real names."""
    return {name: value for name, value in ARG_RE.findall(dockerfile) if name not in QUIET_ARGS}


def _cache(ref_repo: str, target: str) -> tuple[list[str], list[str]]:
    ref = f"{ref_repo}:{target}"
    # image-manifest + OCI media types: the form ECR (and most registries) accept for a cache.
    return ([f"type=registry,ref={ref}"],
            [f"type=registry,ref={ref},mode=max,image-manifest=true,oci-mediatypes=true"])


def bake_definition(root: Path, specs: Sequence[ImageSpec], options: BakeOptions,
                    renderer: Renderer | None = None) -> dict:
    """The bake JSON for ``specs``; raises BuilderError when images/ does not hold their
    current Dockerfiles (run `builder render --all`)."""
    options.check()
    renderer = renderer or Renderer()
    targets: dict[str, dict] = {}
    owners: dict[str, str] = {}
    stale: list[str] = []
    groups: dict[str, list[str]] = {flavor: [] for flavor in FLAVORS}
    for spec in specs:
        name = target_name(spec.name)
        if name in GROUP_NAMES:
            raise UsageError(f"image '{spec.name}': bake target '{name}' has the name of a group of the bake file "
                             f"({', '.join(GROUP_NAMES)}); rename the image in matrix.yaml")
        if name in owners:
            raise BuilderError(f"images '{owners[name]}' and '{spec.name}' map to the same bake target '{name}'; "
                               "rename one in matrix.yaml")
        owners[name] = spec.name
        rendered = renderer.render(spec)
        path = dockerfile_path(root, spec)
        on_disk = path.read_text(encoding="utf-8") if path.is_file() else None
        if on_disk != rendered.dockerfile:
            stale.append(f"images/{spec.name}/Dockerfile ({'missing' if on_disk is None else 'stale'})")
            continue
        tags = [f"{options.registry}/{ref}" if options.registry else ref for ref in spec.refs]
        target: dict = {
            "description": f"{spec.name} ({spec.flavor})" + (f": {spec.description}" if spec.description else ""),
            "context": ".",  # bake resolves it from where it runs: the matrix's folder
            "dockerfile": f"images/{spec.name}/Dockerfile",
            "args": build_args(rendered.dockerfile),
            "tags": tags,
            "labels": dict(rendered.labels),
            "platforms": list(options.platforms),
        }
        if options.cache_ref:
            target["cache-from"], target["cache-to"] = _cache(options.cache_ref, name)
        elif options.registry:
            # Reuse the layers of the image last pushed under its first tag, in the user's own
            # registry; the image carries its cache metadata for the next build.
            target["cache-from"], target["cache-to"] = [f"type=registry,ref={tags[0]}"], ["type=inline"]
        else:
            # No registry named: read no cache from anywhere (a bare tag means Docker Hub).
            target["cache-to"] = ["type=inline"]
        if options.network:
            target["network"] = options.network
        targets[name] = target
        groups[spec.flavor].append(name)
    if stale:
        raise BuilderError("images/ does not match the matrix; run 'builder render --all' first:\n"
                           + "\n".join(f"  {line}" for line in stale))
    group = {"default": {"description": "every image selected", "targets": list(targets)}}
    for flavor, names in groups.items():
        if names:
            group[flavor] = {"description": f"the {flavor} images", "targets": names}
    return {"group": group, "target": targets}
