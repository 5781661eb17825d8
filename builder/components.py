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
    """The aws-ofi-nccl version an EFA installer bundles, when the changelog says so."""
    return facts.EFA_BUNDLED_OFI.get(V(efa))


def ofi_git_tag(ofi: str) -> str:
    """aws-ofi-nccl 1.12.1 -> 'v1.12.1-aws'; 1.14.0 -> 'v1.14.0' (suffix dropped from 1.14.0)."""
    suffix = "-aws" if V(ofi) <= facts.OFI_LAST_AWS_SUFFIX else ""
    return f"v{ofi}{suffix}"


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


def ofi_plugin(efa: str) -> OfiPlugin:
    """Plugin location by EFA installer version (reference: versions.md section 3)."""
    if not efa_bundles_ofi(efa):
        lib = f"{OFI_SOURCE_PREFIX}/lib"
        return OfiPlugin(lib, f"{lib}/libnccl-net.so", f"{lib}/libnccl-ofi-tuner.so", False, None)
    if V(efa) < facts.EFA_OFI_FLAT_LAYOUT:
        lib = f"{OFI_BUNDLED_PREFIX}/lib/{ARCH}-linux-gnu"
        return OfiPlugin(lib, f"{lib}/libnccl-net.so", f"{lib}/libnccl-ofi-tuner.so", True, None)
    lib = f"{OFI_BUNDLED_PREFIX}/lib"
    return OfiPlugin(lib, f"{lib}/libnccl-net-ofi.so", f"{lib}/libnccl-ofi-tuner.so", True, "ofi")


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

def network_env(efa: str, ofi: str | None) -> list[tuple[str, str, str]]:
    """ENV presets as (name, value, why), chosen by the aws-ofi-nccl era.

    ``ofi`` is the source-built plugin version, or None when the EFA installer bundles it
    (bundled plugins are all new-stack).
    """
    env: list[tuple[str, str, str]] = [
        ("OMPI_MCA_pml", "^ucx", "OpenMPI must not pick UCX on EFA; cm is fine with the EFA MTL"),
        ("OMPI_MCA_btl", "tcp,self", "bootstrap over TCP; NCCL carries the data"),
        ("OMPI_MCA_btl_tcp_if_exclude", "lo,docker0,veth_def_agent", "skip loopback and container bridges"),
        ("OPAL_PREFIX", "/opt/amazon/openmpi", "relocated OpenMPI from the EFA installer"),
        ("NCCL_SOCKET_IFNAME", "^docker,lo,veth", "NCCL bootstrap must avoid container interfaces"),
        ("PMIX_MCA_gds", "hash", "avoids PMIx shared-memory (ds12/ds21) crashes under srun --mpi=pmix"),
    ]
    if ofi is not None:
        old = V(ofi)
        if old < facts.OFI_OLD_STACK_BELOW:
            env += [
                ("FI_PROVIDER", "efa", "aws-ofi-nccl <= 1.5 does not select the provider itself"),
                ("NCCL_PROTO", "simple", "LL/LL128 are unsafe over EFA with aws-ofi-nccl <= 1.5"),
                ("RDMAV_FORK_SAFE", "1", "old libfabric/rdma-core need fork safety set by hand"),
            ]
        if old < facts.OFI_DEVICE_RDMA_BELOW:
            env.append(("FI_EFA_USE_DEVICE_RDMA", "1", "aws-ofi-nccl < 1.7 does not enable GPUDirect RDMA itself"))
    return env


# --- AWS Deep Learning Containers -------------------------------------------------------------

DLC_TAG_RE = re.compile(
    r"^(?P<pytorch>\d+\.\d+\.\d+)-gpu-py(?P<py>3\d{1,2})-cu(?P<cu>\d{3,4})"
    r"-(?P<os>ubuntu\d{2}\.04)-(?P<variant>ec2|sagemaker)(?P<build>-v\d+(?:\.\d+)*)?\Z"
)


@dataclass(frozen=True)
class DlcTag:
    pytorch: str
    python: str  # "3.11"
    cuda_tag: str  # "cu121"
    os: str  # "ubuntu22.04"
    variant: str  # "ec2" | "sagemaker"


def parse_dlc_tag(tag: str) -> DlcTag | None:
    m = DLC_TAG_RE.match(tag)
    if not m:
        return None
    py = m.group("py")
    return DlcTag(m.group("pytorch"), f"{py[0]}.{py[1:]}", f"cu{m.group('cu')}", m.group("os"), m.group("variant"))


def dlc_registry(region: str) -> str | None:
    account = facts.DLC_REGION_ACCOUNTS.get(region)
    if account is None:
        return None
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{domain}"


def dlc_image(region: str, tag: str, repository: str = "pytorch-training") -> str | None:
    registry = dlc_registry(region)
    return f"{registry}/{repository}:{tag}" if registry else None
