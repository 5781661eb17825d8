"""Compatibility rules between component versions, checked on every ImageSpec.

Each rule has an id (used by ``waivers:`` where a rule may be waived, and by ``explain``),
compares versions with ``packaging.version`` (never as strings: "1.5.0" > "1.44.0" as text),
and returns Problems whose message says what is wrong and how to fix it.
"""

from __future__ import annotations

import re
from typing import Callable, Iterator
from urllib.parse import urlsplit

from packaging.version import Version

from builder import components as comp
from builder import facts
from builder.errors import Problem

RULES: list[tuple[str, str, Callable]] = []  # (id, one-line description, function)

# What each flavor lets the matrix set; the rest comes from the base image.
FLAVOR_COMPONENTS = {
    "dlc": {"sagemaker_training", "sagemaker_pytorch_training"},
    "nvidia": {"efa", "aws_ofi_nccl", "nccl", "nccl_tests", "gdrcopy", "pmix", "openmpi", "xformers",
               "sagemaker_training", "sagemaker_pytorch_training"},
    "source": {"pytorch", "python", "nccl", "efa", "aws_ofi_nccl", "nccl_tests", "gdrcopy", "torchvision",
               "boost", "miniconda", "mpi4py", "sagemaker_training", "sagemaker_pytorch_training", "smddp", "s3_plugin"},
}
FLAVOR_REQUIRES = {
    "dlc": (),
    "nvidia": ("efa",),
    "source": ("pytorch", "python", "nccl", "efa", "miniconda"),
}
BASE_MUST_SHIP = {
    "dlc": ("pytorch", "python", "cuda"),
    "nvidia": ("pytorch", "cuda", "nccl", "python"),
    "source": ("cuda",),
}
# Stanzas whose RUN lines call apt-get/dpkg (the others use pip or plain files).
APT_STANZAS = ("build-tools", "remove-conflicts", "nccl-apt", "efa", "nccl-source")
SMDDP_FILE_RE = re.compile(r"^smdistributed_dataparallel-(?P<ver>\d+\.\d+\.\d+)-(?P<py>cp3\d+)-(?P=py)-linux_x86_64\.whl$")


class Finding:
    """A problem before the matrix loader adds the file, line and image name."""

    __slots__ = ("key", "message", "severity", "rule")

    def __init__(self, rule: str, key: str, message: str, severity: str = "error"):
        self.rule, self.key, self.message, self.severity = rule, key, message, severity


def rule(rule_id: str, description: str):
    def wrap(fn):
        RULES.append((rule_id, description, fn))
        return fn

    return wrap


# NCCL's "2.19.3-1" needs no rewrite: PEP 440 reads "-N" as an implicit post-release
# (peps.python.org/pep-0440/#implicit-post-releases; packaging parses 2.19.3-1 == 2.19.3.post1).
V = Version


def check(spec, comps_raw=None):
    """All problems of one spec, as Problem objects (file/line/image filled by the caller)."""
    out = []
    for rule_id, _desc, fn in RULES:
        for f in fn(spec):
            out.append(Problem("", 0, spec.name, f.key, f"{f.message} [{rule_id}]", f.severity))
    return out


# --- rules ------------------------------------------------------------------------------------


@rule("flavor-components", "each flavor sets only the components it installs; the base provides the rest")
def _flavor_components(spec) -> Iterator[Finding]:
    allowed = FLAVOR_COMPONENTS[spec.flavor]
    for name in spec.components:
        if name not in allowed:
            if spec.flavor != "source" and name in ("pytorch", "python", "cuda", "cudnn"):
                why = f"the base {spec.base.key} ships {name} {spec.base.ships.get(name, '?')}; a different one needs flavor source or another base"
            else:
                why = f"flavor {spec.flavor} does not install {name}; remove it (allowed: {', '.join(sorted(allowed))})"
            yield Finding("flavor-components", f"components.{name}", why)
    for name in FLAVOR_REQUIRES[spec.flavor]:
        if name not in spec.components:
            yield Finding("flavor-components", f"components.{name}", f"flavor {spec.flavor} needs components.{name}")
    for name in BASE_MUST_SHIP[spec.flavor]:
        if name not in spec.base.ships:
            why = ("; an Amazon Linux 2023 DLC tag does not name it, the DLC changelog does"
                   if spec.base.dlc is not None and spec.base.dlc.python is None and name == "python" else "")
            yield Finding("flavor-components", "base", f"bases.{spec.base.key}.ships must list {name} (the rules check against it){why}")


@rule("nccl-needs-efa", "NCCL >= 2.19 needs EFA installer >= 1.29.1, or FI_EFA_SET_CUDA_SYNC_MEMOPS=0")
def _nccl_needs_efa(spec) -> Iterator[Finding]:
    nccl, efa = spec.versions.get("nccl"), spec.versions.get("efa")
    if not nccl or not efa:
        return
    if V(nccl) >= facts.NCCL_NEEDS_NEW_EFA and V(efa) < facts.EFA_FOR_NEW_NCCL:
        if dict(spec.env).get(facts.SYNC_MEMOPS_OVERRIDE[0]) == facts.SYNC_MEMOPS_OVERRIDE[1]:
            return
        yield Finding(
            "nccl-needs-efa", "components.efa",
            f"NCCL {nccl} needs EFA installer >= {facts.EFA_FOR_NEW_NCCL} (have {efa}); raise components.efa "
            f"or set env.{facts.SYNC_MEMOPS_OVERRIDE[0]}: \"0\"",
        )


@rule("nccl-older-than-base", "a pinned NCCL older than the base image's own is a downgrade (waivable)")
def _nccl_downgrade(spec) -> Iterator[Finding]:
    pinned, shipped = spec.components.get("nccl"), spec.base.ships.get("nccl")
    if not pinned or not shipped:
        return
    if V(pinned) < V(shipped) and "nccl-older-than-base" not in spec.waivers:
        yield Finding(
            "nccl-older-than-base", "components.nccl",
            f"NCCL {pinned} is older than {shipped} shipped by base {spec.base.key}; remove the pin, raise it, "
            "or explain under waivers.nccl-older-than-base",
        )
    elif V(pinned) == V(shipped) and spec.flavor == "nvidia":
        yield Finding("nccl-older-than-base", "components.nccl",
                      f"NCCL {pinned} is what base {spec.base.key} already ships; the pin rebuilds it for nothing", "warning")


@rule("ofi-bundled", "aws-ofi-nccl is built when the EFA installer does not bundle it; a source build over a bundled one is no downgrade")
def _ofi_bundled(spec) -> Iterator[Finding]:
    efa, ofi = spec.components.get("efa"), spec.components.get("aws_ofi_nccl")
    if ofi and not efa:
        yield Finding("ofi-bundled", "components.aws_ofi_nccl", "aws-ofi-nccl needs libfabric from the EFA installer; set components.efa")
        return
    if not efa:
        return
    if comp.efa_bundles_ofi(efa):
        # A newer plugin built on top of the bundled one is what awsome-distributed-training's
        # nccl-tests.Dockerfile does (aws-ofi-nccl from source over EFA 1.43.2); an older one would
        # shadow the bundled plugin with a downgrade.
        bundled = comp.bundled_ofi_version(efa)
        if ofi and bundled and V(ofi) < V(bundled):
            yield Finding("ofi-bundled", "components.aws_ofi_nccl",
                          f"aws-ofi-nccl {ofi} is older than the {bundled} EFA installer {efa} bundles; "
                          "remove components.aws_ofi_nccl or raise it")
        elif ofi and bundled and V(ofi) == V(bundled):
            yield Finding("ofi-bundled", "components.aws_ofi_nccl",
                          f"EFA installer {efa} already bundles aws-ofi-nccl {ofi}; the source build is redundant", "warning")
    elif not ofi:
        yield Finding("ofi-bundled", "components.aws_ofi_nccl",
                      f"EFA installer {efa} does not bundle aws-ofi-nccl: set components.aws_ofi_nccl, "
                      "or NCCL silently falls back to sockets")


@rule("ofi-recommended", "aws-ofi-nccl >= 1.12.1 is recommended with EFA installer >= 1.35")
def _ofi_recommended(spec) -> Iterator[Finding]:
    efa, ofi = spec.components.get("efa"), spec.components.get("aws_ofi_nccl")
    if efa and ofi and V(efa) >= facts.EFA_WANTS_OFI_1121 and V(ofi) < facts.OFI_RECOMMENDED_FOR_NEW_EFA:
        yield Finding("ofi-recommended", "components.aws_ofi_nccl",
                      f"aws-ofi-nccl {ofi} with EFA installer {efa}: {facts.OFI_RECOMMENDED_FOR_NEW_EFA} or newer is recommended",
                      "warning")


@rule("efa-os", "EFA installer 1.43.0 and later do not support Ubuntu 20.04")
def _efa_os(spec) -> Iterator[Finding]:
    efa, os_ = spec.components.get("efa"), spec.base.ships.get("os")
    if efa and os_ == "ubuntu20.04" and V(efa) >= facts.EFA_DROPS_UBUNTU2004:
        yield Finding("efa-os", "components.efa",
                      f"EFA installer {efa} does not support Ubuntu 20.04 (base {spec.base.key}); use EFA < {facts.EFA_DROPS_UBUNTU2004} or an Ubuntu 22.04 base")


@rule("smddp-wheel", "the SMDDP wheel matches PyTorch, CUDA and Python; none exists for PyTorch >= 2.6")
def _smddp(spec) -> Iterator[Finding]:
    url = spec.components.get("smddp")
    if not url:
        return
    key = "components.smddp"
    pytorch, python, cuda = (spec.versions.get(k) for k in ("pytorch", "python", "cuda"))
    if pytorch and V(pytorch) > facts.SMDDP_LAST_PYTORCH:
        yield Finding("smddp-wheel", key, f"no SMDDP wheel exists for PyTorch {pytorch} (last is 2.5.x); remove components.smddp")
        return
    path = urlsplit(url).path
    file = path.rsplit("/", 1)[-1]
    m = SMDDP_FILE_RE.match(file)
    if not m:
        yield Finding("smddp-wheel", key, "must end in smdistributed_dataparallel-<ver>-cpXY-cpXY-linux_x86_64.whl")
        return
    segments = path.split("/")
    if python and m.group("py") != comp.cp_tag(python):
        yield Finding("smddp-wheel", key, f"wheel is for {m.group('py')} but the image has Python {python} ({comp.cp_tag(python)})")
    if pytorch and comp.nccl_base(pytorch) not in segments:
        yield Finding("smddp-wheel", key, f"wheel path is not for PyTorch {pytorch} (expected /{pytorch}/ in the URL path)")
    if cuda and comp.cuda_tag(cuda) not in segments:
        found = next((s for s in segments if re.match(r"^cu\d{3,4}$", s)), "none")
        yield Finding("smddp-wheel", key, f"wheel is for CUDA {found} but the image has CUDA {cuda} ({comp.cuda_tag(cuda)})")


@rule("pytorch-cuda-python", "source builds use a CUDA and Python the PyTorch release supports")
def _pytorch_compat(spec) -> Iterator[Finding]:
    if spec.flavor != "source":
        return
    pytorch, python, cuda = (spec.versions.get(k) for k in ("pytorch", "python", "cuda"))
    if not pytorch:
        return
    minor = comp.short(pytorch)
    table = facts.PYTORCH_COMPAT.get(minor)
    if table is None:
        yield Finding("pytorch-cuda-python", "components.pytorch",
                      f"PyTorch {minor} is not in the compatibility table (builder/facts.py); CUDA/Python unchecked", "warning")
        return
    cuda_min, cuda_max, py_min, py_max = table
    if cuda:
        c = Version(comp.short(cuda))
        if not cuda_min <= c <= cuda_max:
            yield Finding("pytorch-cuda-python", "base",
                          f"PyTorch {pytorch} supports CUDA {cuda_min} to {cuda_max}; base {spec.base.key} has CUDA {cuda}")
    if python:
        p = Version(python)
        if not py_min <= p <= py_max:
            yield Finding("pytorch-cuda-python", "components.python",
                          f"PyTorch {pytorch} supports Python {py_min} to {py_max}, not {python}")
    tv = spec.components.get("torchvision")
    paired = facts.TORCHVISION_FOR.get(minor)
    if tv and paired and comp.short(tv) != comp.short(paired):
        yield Finding("pytorch-cuda-python", "components.torchvision",
                      f"torchvision {tv} does not pair with PyTorch {minor} (use {comp.short(paired)}.x, e.g. {paired})")


@rule("dlc-sagemaker", "SageMaker code in a DLC image needs the -sagemaker variant or the toolkit stanza")
def _dlc(spec) -> Iterator[Finding]:
    if spec.flavor != "dlc" or spec.base.dlc is None:
        return
    if spec.code and spec.base.dlc.variant == "ec2" and not spec.has("sagemaker-toolkit"):
        yield Finding("dlc-sagemaker", "stanzas.sagemaker-toolkit",
                      f"base {spec.base.key} is an ec2 DLC without the SageMaker training toolkit; "
                      "use a -sagemaker tag or switch on stanzas.sagemaker-toolkit")


@rule("sagemaker-toolkit", "SAGEMAKER_TRAINING_MODULE needs sagemaker-pytorch-training installed")
def _toolkit(spec) -> Iterator[Finding]:
    if spec.has("sagemaker-toolkit") and not spec.components.get("sagemaker_pytorch_training"):
        yield Finding("sagemaker-toolkit", "components.sagemaker_pytorch_training",
                      "the toolkit stanza sets SAGEMAKER_TRAINING_MODULE, which fails every job without "
                      "sagemaker-pytorch-training; set components.sagemaker_pytorch_training")


@rule("smddp-launcher", "SMDDP jobs start through the toolkit's MPI runner: sshd (openssh stanza) and mpi4py")
def _smddp_launcher(spec) -> Iterator[Finding]:
    # sagemaker-training src/sagemaker_training/smdataparallel.py (v4.x to v5.1.0):
    # SMDataParallelRunner._setup() runs _start_sshd_daemon(), which raises without /usr/sbin/sshd,
    # on every host, and _python_command() appends "-m mpi4py" to the program mpirun starts.
    if not spec.has("smddp"):
        return
    if not spec.has("openssh"):
        yield Finding("smddp-launcher", "stanzas.openssh",
                      "SMDDP jobs start /usr/sbin/sshd on every host (sagemaker-training's SMDataParallelRunner); "
                      "switch on stanzas.openssh")
    if not spec.components.get("mpi4py") or not spec.has("torchvision"):
        yield Finding("smddp-launcher", "components.mpi4py",
                      "SMDDP jobs run `python -m mpi4py` (sagemaker-training's SMDataParallelRunner); set "
                      "components.mpi4py (installed by the torchvision stanza), e.g. \"3.1.6\"")


@rule("stanza-conflicts", "stanzas that do the same job are not both on")
def _conflicts(spec) -> Iterator[Finding]:
    if spec.has("nccl-apt") and spec.has("nccl-source"):
        yield Finding("stanza-conflicts", "stanzas.nccl-apt", "nccl-apt and nccl-source both install NCCL; switch one off")


@rule("efa-known", "EFA installers newer than the newest one builder's facts were read for are flagged")
def _efa_known(spec) -> Iterator[Finding]:
    efa = spec.components.get("efa")
    if efa and V(efa) > facts.EFA_NEWEST_KNOWN:
        yield Finding("efa-known", "components.efa",
                      f"EFA installer {efa} is newer than {facts.EFA_NEWEST_KNOWN}, the newest in builder/facts.py: "
                      "its bundled aws-ofi-nccl and layout are assumed to be 1.51's (smoke checks where NCCL finds the plugin)",
                      "warning")


@rule("ngc-release", "NGC PyTorch 25.11 and later are refused until their net plugin and MPI facts are confirmed")
def _ngc_release(spec) -> Iterator[Finding]:
    m = re.match(facts.NGC_IMAGE_RE, spec.base.image)
    if spec.flavor != "nvidia" or m is None:
        return
    if (int(m.group("yy")), int(m.group("mm"))) >= facts.NGC_UNCONFIRMED_FROM:
        yield Finding("ngc-release", "base",
                      f"NGC {m.group('yy')}.{m.group('mm')} sets NCCL_NET_PLUGIN in /etc/shinit_v2 and its libtorch may need "
                      "HPC-X's Open MPI 5, which builder cannot confirm from NGC's release notes: use NGC 25.10 or older, "
                      "or flavor dlc/source")


@rule("os-packages", "stanzas that install OS packages with apt are not used on a base with another package manager")
def _os_packages(spec) -> Iterator[Finding]:
    manager = comp.package_manager(spec.base.os)
    if manager in (None, "apt"):
        return
    apt_stanzas = [s for s in spec.stanzas if s in APT_STANZAS]
    if apt_stanzas:
        yield Finding("os-packages", f"stanzas.{apt_stanzas[0]}",
                      f"stanza {apt_stanzas[0]} installs packages with apt, but base {spec.base.key} is {spec.base.os} ({manager}); "
                      "switch it off or use an Ubuntu base")

# aws-ofi-nccl v1.13.0-aws to v1.16.3 declare the CUDA driver functions they resolve with CUDA's
# unversioned typedefs (src/nccl_ofi_cuda.c/.cpp: "static PFN_##function pfn_##function", e.g.
# PFN_cuCtxGetDevice). CUDA 12's cudaTypedefs.h defines those names ("#define PFN_cuCtxGetDevice
# PFN_cuCtxGetDevice_v2000" in 12.8); CUDA 13's keeps only the versioned ones (_v2000, _v13000),
# so the build stops with "unknown type name 'PFN_cuCtxGetDevice'". v1.17.0 declares
# PFN_##function##_v##version; v1.12.1-aws and older dlopen libcuda and use no PFN_* type.
# (Found compiling v1.13.2-aws against NVIDIA's CUDA 13.0 wheels: tests/integration/test_compile.py.)
OFI_UNVERSIONED_PFN = (Version("1.13.0"), Version("1.17.0"))
CUDA_WITHOUT_UNVERSIONED_PFN = Version("13.0")


@rule("ofi-cuda13", "aws-ofi-nccl 1.13.0 to 1.16.x does not compile against CUDA 13")
def _ofi_cuda13(spec) -> Iterator[Finding]:
    ofi, cuda = spec.components.get("aws_ofi_nccl"), spec.versions.get("cuda")
    if not ofi or not cuda or not spec.has("aws-ofi-nccl"):
        return
    low, high = OFI_UNVERSIONED_PFN
    if low <= V(ofi) < high and V(cuda) >= CUDA_WITHOUT_UNVERSIONED_PFN:
        yield Finding("ofi-cuda13", "components.aws_ofi_nccl",
                      f"aws-ofi-nccl {ofi} does not compile against CUDA {cuda}: it uses the unversioned "
                      "PFN_* typedefs CUDA 13's cudaTypedefs.h dropped; use aws-ofi-nccl 1.17.0 or later "
                      "(or 1.12.1 and older)")
