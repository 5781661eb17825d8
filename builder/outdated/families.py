"""Which tags of a registry belong to the same family as a base's tag, and their order.

A registry lists every tag of a repository: NGC's ``pytorch`` has ``25.06-py3`` beside
``25.06-py3-igpu`` (Jetson/iGPU builds), nvidia/cuda has runtime, devel, cudnn and OS variants, the
DLC registries have EC2 and SageMaker variants, CPU images and build-stamped tags. A newer release
is only a newer tag of the same family: same variant, same OS, same kind of accelerator.

Families (each read in the registry's own tag scheme):
- NGC (nvcr.io/nvidia/*): ``YY.MM-py3`` (NGC release notes name releases by year.month).
- nvidia/cuda (Docker Hub): ``<cuda x.y.z>-[cudnn[N]-]<runtime|devel|base>-<os><ver>``; the CUDA
  version moves, the flavour and OS stay.
- AWS DLC, first generation (regional ECR ``pytorch-training``, aws/deep-learning-containers
  available_images.md): ``<pytorch x.y.z>-gpu-py<NN>-cu<NNN>-ubuntu<YY.04>-<ec2|sagemaker>``;
  build-stamped ``...-vN[.N]`` tags are snapshots of the same release and are skipped.
- AWS DLC, second generation (public.ecr.aws/deep-learning-containers/pytorch, from PyTorch 2.11,
  2026-04; aws/deep-learning-containers docs/pytorch/changelog/index.md): ``2.13-cu133-amzn2023``
  and ``2.13-cu133-amzn2023-sagemaker``; full-version tags like ``2.12.1-cu130-amzn2023-sagemaker``
  exist too, so a base written with two parts is compared with two-part tags and three with three;
  ``cpu`` images are another family.
- Anything else: the tag's shape with its numbers taken out (``v1.2.3-slim`` is ``vN.N.N-slim``),
  ordered by those numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

from packaging.version import Version

NGC_RE = re.compile(r"^(?P<yy>\d{2})\.(?P<mm>\d{2})-py3\Z")
CUDA_RE = re.compile(r"^(?P<cuda>\d+\.\d+(?:\.\d+)?)-(?P<flavour>(?:cudnn\d*-)?(?:runtime|devel|base))-(?P<os>[a-z]+\d+(?:\.\d+)?)\Z")
DLC1_RE = re.compile(r"^(?P<pytorch>\d+\.\d+\.\d+)-gpu-py(?P<py>3\d{1,2})-cu(?P<cu>\d{3,4})-(?P<os>ubuntu\d{2}\.04)-(?P<variant>ec2|sagemaker)\Z")
DLC2_RE = re.compile(r"^(?P<pytorch>\d+\.\d+(?:\.\d+)?)-(?P<accel>cu\d{3,4}|cpu)-(?P<os>amzn\d{4})(?P<variant>-sagemaker)?\Z")


@dataclass(frozen=True)
class Family:
    name: str  # for people: "NGC YY.MM-py3"
    match: Callable[[str], tuple | None]  # tag -> sort key, None when the tag is not of the family

    def newer(self, current: str, tags: Iterable[str]) -> list[str]:
        """Tags of this family newer than ``current``, oldest first."""
        now = self.match(current)
        if now is None:
            return []
        keyed = {tag: k for tag in set(tags) if (k := self.match(tag)) is not None and k > now}
        return sorted(keyed, key=keyed.__getitem__)


def family_of(tag: str) -> Family:
    """The family ``tag`` belongs to (the first scheme above that matches it)."""
    for build in (_ngc, _cuda, _dlc1, _dlc2):
        family = build(tag)
        if family is not None:
            return family
    return _shape(tag)


def _ngc(tag: str) -> Family | None:
    if not NGC_RE.match(tag):
        return None
    return Family("NGC YY.MM-py3", lambda t: (int(m["yy"]), int(m["mm"])) if (m := NGC_RE.match(t)) else None)


def _cuda(tag: str) -> Family | None:
    base = CUDA_RE.match(tag)
    if not base:
        return None
    flavour, os_ = base["flavour"], base["os"]

    def match(t: str):
        m = CUDA_RE.match(t)
        if m and m["flavour"] == flavour and m["os"] == os_:
            return Version(m["cuda"])
        return None

    return Family(f"nvidia/cuda X.Y.Z-{flavour}-{os_}", match)


def _dlc1(tag: str) -> Family | None:
    base = DLC1_RE.match(tag)
    if not base:
        return None
    os_, variant = base["os"], base["variant"]

    def match(t: str):
        m = DLC1_RE.match(t)
        if m and m["os"] == os_ and m["variant"] == variant:
            return Version(m["pytorch"]), int(m["cu"]), int(m["py"])
        return None

    return Family(f"DLC X.Y.Z-gpu-pyNNN-cuNNN-{os_}-{variant}", match)


def _dlc2(tag: str) -> Family | None:
    base = DLC2_RE.match(tag)
    if not base:
        return None
    parts, gpu, os_, variant = base["pytorch"].count("."), base["accel"] != "cpu", base["os"], base["variant"] or ""

    def match(t: str):
        m = DLC2_RE.match(t)
        if (m and m["pytorch"].count(".") == parts and (m["accel"] != "cpu") == gpu
                and m["os"] == os_ and (m["variant"] or "") == variant):
            return Version(m["pytorch"]), int(m["accel"][2:]) if gpu else 0
        return None

    shape = "X.Y" + (".Z" if parts == 2 else "")
    return Family(f"DLC {shape}-{'cuNNN' if gpu else 'cpu'}-{os_}{variant}", match)


def _shape(tag: str) -> Family:
    skeleton = re.sub(r"\d+", "N", tag)

    def match(t: str):
        if re.sub(r"\d+", "N", t) != skeleton:
            return None
        return tuple(int(n) for n in re.findall(r"\d+", t))

    return Family(f"tags shaped {skeleton}", match)

