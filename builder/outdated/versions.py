"""Upstream release names in the matrix's version forms, and which of them are newer.

Tag forms, read in each repository's tag list (the git bundles in ../shared/upstream, and GitHub):
- NVIDIA/nccl: ``v2.23.4-1`` (version, dash, package release). The matrix writes ``2.23.4`` and
  builder.components.nccl_git_tag adds ``-1`` back; a release other than 1 is kept (``2.23.4-2``).
- aws/aws-ofi-nccl: ``v1.12.1-aws`` up to v1.13.2-aws, ``v1.14.0`` after (the matrix writes
  ``1.12.1``; builder.components.ofi_git_tag derives the tag); pre-releases (``-rc``) are skipped.
- NVIDIA/nccl-tests: ``v2.13.10``; NVIDIA/gdrcopy: ``v2.4.1`` and two-part ``v2.6``.
PyPI versions are PEP 440 already; pre-releases and wholly yanked releases are skipped.
"""

from __future__ import annotations

import re
from typing import Iterable

from packaging.version import InvalidVersion, Version

NCCL_TAG_RE = re.compile(r"^v(\d+\.\d+\.\d+)-(\d+)\Z")
OFI_TAG_RE = re.compile(r"^v(\d+\.\d+\.\d+)(?:-aws)?\Z")
PLAIN_TAG_RE = re.compile(r"^v(\d+\.\d+(?:\.\d+)?)\Z")

# component -> (GitHub repository, tag pattern); versions are group 1 (and 2 for NCCL's release).
GITHUB_COMPONENTS = {
    "nccl": ("NVIDIA/nccl", NCCL_TAG_RE),
    "aws_ofi_nccl": ("aws/aws-ofi-nccl", OFI_TAG_RE),
    "nccl_tests": ("NVIDIA/nccl-tests", PLAIN_TAG_RE),
    "gdrcopy": ("NVIDIA/gdrcopy", PLAIN_TAG_RE),
}
# component -> PyPI project (the SageMaker training toolkit; SMDDP is not published on PyPI:
# its wheels are URLs on smdataparallel.s3.amazonaws.com, see ../shared/reference/versions.md).
PYPI_COMPONENTS = {
    "sagemaker_training": "sagemaker-training",
    "sagemaker_pytorch_training": "sagemaker-pytorch-training",
}


def from_tag(component: str, tag: str) -> str | None:
    """A git tag in the matrix's form for ``component``, or None when it is no release tag."""
    _, pattern = GITHUB_COMPONENTS[component]
    m = pattern.match(tag)
    if not m:
        return None
    if component == "nccl":
        return m.group(1) if m.group(2) == "1" else f"{m.group(1)}-{m.group(2)}"
    return m.group(1)


def key(version: str) -> tuple[Version, int]:
    """Sort key for the matrix's version forms (NCCL's ``-N`` release second)."""
    base, _, release = version.partition("-")
    return Version(base), int(release) if release.isdigit() else 1


def newer(current: str, candidates: Iterable[str]) -> list[str]:
    """The candidates newer than ``current``, oldest first, without duplicates. A current value
    that does not parse (a URL, a typo the matrix would refuse) has nothing newer."""
    try:
        now = key(current)
    except (InvalidVersion, ValueError):
        return []
    found = set()
    for item in candidates:
        try:
            if key(item) > now and not Version(item.partition("-")[0]).is_prerelease:
                found.add(item)
        except (InvalidVersion, ValueError):
            continue
    return sorted(found, key=key)


def pypi_releases(document: dict) -> list[str]:
    """Releases from PyPI's JSON API (``GET /pypi/<project>/json``: ``releases`` maps each version
    to its files, each with ``yanked``; docs.pypi.org "JSON API"). A release whose every file is
    yanked is gone for pip; one without files is skipped too. Warehouse calls the ``releases``
    key deprecated in favour of the JSON simple API (PEP 691; pypi/warehouse#11777) but still
    serves it (recorded from pypi.org 2026-12-06): a missing key reads as "no releases"."""
    releases = document.get("releases") if isinstance(document, dict) else None
    if not isinstance(releases, dict):
        return []
    out = []
    for version, files in releases.items():
        if not isinstance(files, list) or not files:
            continue
        if all(isinstance(f, dict) and f.get("yanked") for f in files):
            continue
        try:
            parsed = Version(version)
        except InvalidVersion:
            continue
        if not parsed.is_prerelease and not parsed.is_devrelease:
            out.append(version)
    return out
