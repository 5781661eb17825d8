"""Facts derived from component versions: tag forms, plugin paths, environment presets.

These are never typed by hand in the matrix: the stanzas, the smoke checks, the sbatch
writer and the validator all ask this module, so they cannot disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from packaging.version import Version

from builder import facts

ARCH = "x86_64"
# Where a source-built aws-ofi-nccl is installed (configure --prefix).
OFI_SOURCE_PREFIX = "/opt/aws-ofi-nccl"
OFI_BUNDLED_PREFIX = "/opt/amazon/ofi-nccl"


def V(value: str) -> Version:
    return Version(value)


def short(version: str, parts: int = 2) -> str:
    """'12.1.1' -> '12.1' (parts=2)."""
    return ".".join(str(p) for p in V(version).release[:parts])


def cuda_tag(cuda: str) -> str:
    """CUDA 12.1.1 -> 'cu121' (the DLC/PyTorch wheel tag)."""
    major, minor = V(cuda).release[:2]
    return f"cu{major}{minor}"


def cuda_from_tag(tag: str) -> str:
    """'cu124' -> '12.4' (major and one-digit minor, as PyTorch and DLC tags write them)."""
    digits = tag[2:]
    return f"{digits[:-1]}.{digits[-1]}"


def python_tag(python: str) -> str:
    """Python 3.11 -> 'py311' (DLC tag form)."""
    major, minor = V(python).release[:2]
    return f"py{major}{minor}"


def cp_tag(python: str) -> str:
    """Python 3.11 -> 'cp311' (wheel ABI tag)."""
    major, minor = V(python).release[:2]
    return f"cp{major}{minor}"


# --- aws-ofi-nccl ------------------------------------------------------------------------------

def efa_bundles_ofi(efa: str) -> bool:
    return V(efa) >= facts.EFA_BUNDLES_OFI


def bundled_ofi_version(efa: str) -> str | None:
    """The aws-ofi-nccl version an EFA installer bundles: the last changelog upgrade at or before
    it (facts.EFA_BUNDLED_OFI_FROM), None before 1.40.0 (not named) or past the newest known."""
    v = V(efa)
    if not efa_bundles_ofi(efa) or v > facts.EFA_NEWEST_KNOWN:
        return None
    found = None
    for first, ofi in facts.EFA_BUNDLED_OFI_FROM:
        if v >= first:
            found = ofi
    return found


def ofi_git_tag(ofi: str) -> str:
    """aws-ofi-nccl 1.12.1 -> 'v1.12.1-aws'; 1.14.0 -> 'v1.14.0'; 1.6.0 -> 'v1.6.0' (no -aws twin)."""
    v = V(ofi)
    aws = v <= facts.OFI_LAST_AWS_SUFFIX and v not in facts.OFI_TAGS_WITHOUT_AWS_SUFFIX
    return f"v{ofi}{'-aws' if aws else ''}"


def efa_installer_flags(efa: str) -> list[str]:
    """efa_installer.sh options for a container build on an NGC or nvidia/cuda base.

    -y -g: unattended, with the GPUDirect packages; --skip-kmod, --skip-limit-conf, --no-verify: the
    kernel module, memlock limits and device check belong to the host (AWS, "Install the EFA
    software in a container"). From 1.48.0 --disable-ngc: those bases carry
    /opt/nvidia/nvidia_entrypoint.sh, which makes the installer skip its standard aws-ofi-nccl
    package (facts.EFA_DETECTS_NGC); the flag keeps the plugin where NCCL is pointed."""
    flags = ["-y", "-g", "--skip-kmod", "--skip-limit-conf", "--no-verify"]
    if V(efa) >= facts.EFA_DETECTS_NGC:
        flags.append(facts.EFA_DISABLE_NGC_FLAG)
    return flags


@dataclass(frozen=True)
class OfiPlugin:
    """Where the NCCL net plugin lives in an image, and how NCCL finds it."""

    lib_dir: str
    net_lib: str  # absolute path of the net plugin
    tuner_lib: str  # absolute path of the tuner plugin (may not exist on old versions)
    bundled: bool
    net_plugin_name: str | None  # value for NCCL_NET_PLUGIN when the file is not libnccl-net.so

    @property
    def version_note(self) -> str:
        return "bundled with the EFA installer" if self.bundled else "built from source"


def ofi_plugin(efa: str, source_ofi: str | None = None, os_name: str | None = None) -> OfiPlugin:
    """Plugin location by EFA installer version, or the source build's when ``source_ofi`` is set
    (built from source on top of a bundling installer too, as awsome-distributed-training's
    nccl-tests.Dockerfile does: its lib directory then comes first on LD_LIBRARY_PATH, so the
    libnccl-net.so NCCL opens by default is the source build's)."""
    if source_ofi or not efa_bundles_ofi(efa):
        lib = f"{OFI_SOURCE_PREFIX}/lib"
        return OfiPlugin(lib, f"{lib}/libnccl-net.so", f"{lib}/libnccl-ofi-tuner.so", False, None)
    if V(efa) < facts.EFA_OFI_FLAT_LAYOUT:
        lib = f"{OFI_BUNDLED_PREFIX}/lib/{ARCH}-linux-gnu"
        return OfiPlugin(lib, f"{lib}/libnccl-net.so", f"{lib}/libnccl-ofi-tuner.so", True, None)
    lib = f"{OFI_BUNDLED_PREFIX}/{facts.OFI_LIBDIR_BY_OS.get(os_name or '', 'lib')}"
    return OfiPlugin(lib, f"{lib}/libnccl-net-ofi.so", f"{lib}/libnccl-ofi-tuner.so", True, "ofi")


# Resolves the net plugin NCCL would open from the image's own environment, as NCCL's
# src/plugin/plugin_open.cc does (NVIDIA/nccl v2.30.7-1, openPluginLib): NCCL_NET_PLUGIN as given,
# then libnccl-net-<name>.so unless it is a path or a lib*.so name; unset: libnccl-net.so. A name
# without "/" is searched like dlopen does: LD_LIBRARY_PATH, then the ld.so cache. Run by bash -c,
# so an image whose ENV/BASH_ENV sources /etc/shinit_v2 (NGC) is judged with what that sets.
# $1 is the plugin path the image is meant to use; the check fails unless NCCL would open it.
PLUGIN_PROBE = r"""want="$1"; name="${NCCL_NET_PLUGIN:-}"
find_lib() { case "$1" in */*) [ -e "$1" ] && readlink -f "$1"; return;; esac
  local IFS=:; for d in $LD_LIBRARY_PATH; do [ -n "$d" ] && [ -e "$d/$1" ] && { readlink -f "$d/$1"; return; }; done
  ldconfig -p 2>/dev/null | awk -v n="$1" '$1 == n {print $NF; exit}' | xargs -r readlink -f; }
if [ -z "$name" ]; then cands="libnccl-net.so"; else cands="$name"
  case "$name" in */*|lib*.so) ;; *) cands="$cands libnccl-net-$name.so";; esac; fi
for c in $cands; do got=$(find_lib "$c"); [ -n "$got" ] && break; done
if [ -z "$got" ]; then echo "NCCL_NET_PLUGIN='$name': NCCL finds no plugin ($cands); it falls back to sockets" >&2; exit 1; fi
if [ "$got" != "$(readlink -f "$want")" ]; then echo "NCCL would open $got, not $want" >&2; exit 1; fi
echo "NCCL opens $got"
"""


# --- NCCL -------------------------------------------------------------------------------------

NCCL_RE = re.compile(r"^(\d+\.\d+\.\d+)(?:-(\d+))?\Z")


def nccl_base(nccl: str) -> str:
    """'2.19.3-1' -> '2.19.3'."""
    m = NCCL_RE.match(nccl)
    return m.group(1) if m else nccl


def nccl_git_tag(nccl: str) -> str:
    """NCCL 2.19.3 -> 'v2.19.3-1' (NVIDIA/nccl tag form); an explicit '-N' release is kept."""
    m = NCCL_RE.match(nccl)
    if not m:
        raise ValueError(f"not an NCCL version: {nccl}")
    return f"v{m.group(1)}-{m.group(2) or '1'}"


def nccl_apt_version(nccl: str, cuda: str) -> str:
    """NCCL 2.21.5 on CUDA 12.4.1 -> '2.21.5-1+cuda12.4' (NVIDIA apt repo form)."""
    m = NCCL_RE.match(nccl)
    if not m:
        raise ValueError(f"not an NCCL version: {nccl}")
    return f"{m.group(1)}-{m.group(2) or '1'}+cuda{short(cuda)}"


def gencode_flags(archs: tuple[str, ...]) -> str:
    """('80', '90') -> '-gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90'."""
    return " ".join(f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs)


def torch_arch_list(archs: tuple[str, ...]) -> str:
    """('70', '80', '90') -> '7.0;8.0;9.0+PTX' (TORCH_CUDA_ARCH_LIST, PTX for the newest)."""
    items = [f"{a[:-1]}.{a[-1]}" if not a.endswith("a") else f"{a[:-2]}.{a[-2]}a" for a in archs]
    if items:
        items[-1] += "+PTX"
    return ";".join(items)


# --- EFA / NCCL / OpenMPI environment ---------------------------------------------------------

def network_env(efa: str, ofi: str | None, sagemaker: bool = False) -> list[tuple[str, str, str]]:
    """ENV presets as (name, value, why), chosen by the aws-ofi-nccl era.

    ``ofi`` is the source-built plugin version, or None when the EFA installer bundles it
    (bundled plugins are all new-stack). ``sagemaker``: the image claims the SageMaker contract,
    whose MPI runner passes btl_tcp_if_include (facts.SAGEMAKER_MPI_INCLUDES_IFACE). Instance-
    dependent values (FI_EFA_USE_DEVICE_RDMA) are never baked: see device_rdma_env.
    """
    env: list[tuple[str, str, str]] = [
        ("OMPI_MCA_pml", "^ucx", "OpenMPI must not pick UCX on EFA; cm is fine with the EFA MTL"),
        ("OMPI_MCA_btl", "tcp,self", "bootstrap over TCP; NCCL carries the data"),
        ("OMPI_MCA_btl_tcp_if_exclude", "lo,docker0,veth_def_agent", "skip loopback and container bridges"),
        ("OPAL_PREFIX", "/opt/amazon/openmpi", "relocated OpenMPI from the EFA installer"),
        ("NCCL_SOCKET_IFNAME", "^docker,lo,veth", "NCCL bootstrap must avoid container interfaces"),
        ("PMIX_MCA_gds", "hash", "avoids PMIx shared-memory (ds12/ds21) crashes under srun --mpi=pmix"),
        (*facts.HUGE_PAGE_OFF, "forking data loader workers fail with ENOMEM on huge pages (efa-cheatsheet)"),
    ]
    if sagemaker:
        env = [e for e in env if e[0] != facts.SAGEMAKER_MPI_INCLUDES_IFACE]
    if ofi is not None and V(ofi) < facts.OFI_OLD_STACK_BELOW:
        env += [
            ("FI_PROVIDER", "efa", "aws-ofi-nccl <= 1.5 does not select the provider itself"),
            ("NCCL_PROTO", "simple", "LL/LL128 are unsafe over EFA with aws-ofi-nccl <= 1.5"),
            ("RDMAV_FORK_SAFE", "1", "old libfabric/rdma-core need fork safety set by hand"),
        ]
    return env


def device_rdma_env(ofi: str | None, device_rdma: bool | None) -> list[tuple[str, str, str]]:
    """FI_EFA_USE_DEVICE_RDMA for a run: aws-ofi-nccl < 1.7 does not enable GPUDirect RDMA itself,
    but the variable aborts libfabric on an EFA without RDMA read (p3dn), so it is set only for an
    instance known to have it (``device_rdma``, builder.nccl.instances); None: instance unknown."""
    if ofi is None or V(ofi) >= facts.OFI_DEVICE_RDMA_BELOW or not device_rdma:
        return []
    return [(facts.DEVICE_RDMA_ENV, "1", "aws-ofi-nccl < 1.7 does not enable GPUDirect RDMA itself; this instance's EFA has RDMA read")]


def package_manager(os_name: str | None) -> str | None:
    """apt or dnf for a base's ships.os (facts.OS_PACKAGE_MANAGER); None when unknown."""
    return facts.OS_PACKAGE_MANAGER.get(os_name or "")


# --- AWS Deep Learning Containers -------------------------------------------------------------

# Ubuntu generation (up to PyTorch 2.10): 2.10.0-gpu-py313-cu130-ubuntu22.04-ec2[-v1.2].
DLC_TAG_RE = re.compile(
    r"^(?P<pytorch>\d+\.\d+\.\d+)-gpu-py(?P<py>3\d{1,2})-cu(?P<cu>\d{3,4})"
    r"-(?P<os>ubuntu\d{2}\.04)-(?P<variant>ec2|sagemaker)(?P<build>-v\d+(?:\.\d+)*)?\Z"
)
# Amazon Linux 2023 generation (from 2.11): 2.13.0-cu133-amzn2023, 2.13-cu133-amzn2023-sagemaker
# (aws/deep-learning-containers docs/src/data/pytorch/*-cuda-*.yml). The EC2 variant has no suffix.
DLC_AL2023_TAG_RE = re.compile(
    r"^(?P<pytorch>\d+\.\d+(?:\.\d+)?)-cu(?P<cu>\d{3,4})-(?P<os>amzn2023)(?P<variant>-sagemaker)?\Z"
)


@dataclass(frozen=True)
class DlcTag:
    pytorch: str
    python: str | None  # "3.11"; None where the tag does not say (Amazon Linux 2023 generation)
    cuda_tag: str  # "cu121"
    os: str  # "ubuntu22.04" | "amzn2023"
    variant: str  # "ec2" | "sagemaker"
    repository: str = facts.DLC_UBUNTU_REPOSITORY  # the ECR repository the tag lives in


def parse_dlc_tag(tag: str) -> DlcTag | None:
    m = DLC_TAG_RE.match(tag)
    if m:
        py = m.group("py")
        return DlcTag(m.group("pytorch"), f"{py[0]}.{py[1:]}", f"cu{m.group('cu')}", m.group("os"), m.group("variant"))
    m = DLC_AL2023_TAG_RE.match(tag)
    if m is None or V(m.group("pytorch")) < facts.DLC_AL2023_FIRST:
        return None
    return DlcTag(m.group("pytorch"), None, f"cu{m.group('cu')}", m.group("os"),
                  "sagemaker" if m.group("variant") else "ec2", facts.DLC_AL2023_REPOSITORY)


def dlc_registry(region: str) -> str | None:
    account = facts.DLC_REGION_ACCOUNTS.get(region)
    if account is None:
        return None
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{domain}"


def dlc_image(region: str | None, tag: str, repository: str = facts.DLC_UBUNTU_REPOSITORY,
              public: bool = False) -> str | None:
    """The DLC's URI: ECR Public (``public``), or the region's private registry."""
    if public:
        return f"{facts.DLC_PUBLIC_REGISTRY}/{repository}:{tag}"
    registry = dlc_registry(region) if region else None
    return f"{registry}/{repository}:{tag}" if registry else None
