"""Version facts about the AWS/NVIDIA stack, each with its source.

Everything here is data, compared with ``packaging.version`` by the callers in
``builder.components`` and ``builder.rules``; nothing here formats shell.
Sources are named per table (see also ../shared/reference/versions.md).
"""

from __future__ import annotations

from packaging.version import Version

V = Version

# --- EFA installer ---------------------------------------------------------------
# EFA installer >= 1.29.1 is required for NCCL >= 2.19.0, else FI_EFA_SET_CUDA_SYNC_MEMOPS=0
# (aws-samples/awsome-distributed-training, 0.nvcr-pytorch-aws.dockerfile).
NCCL_NEEDS_NEW_EFA = V("2.19.0")
EFA_FOR_NEW_NCCL = V("1.29.1")
SYNC_MEMOPS_OVERRIDE = ("FI_EFA_SET_CUDA_SYNC_MEMOPS", "0")

# The EFA installer bundles aws-ofi-nccl from 1.38.0 on (AWS EFA changelog; awsome-distributed-training
# nccl-tests.Dockerfile drops its separate build in 2025-09).
EFA_BUNDLES_OFI = V("1.38.0")
# Bundled plugin location moved in 1.44.0: <arch>-linux-gnu/libnccl-net.so -> libnccl-net-ofi.so.
EFA_OFI_FLAT_LAYOUT = V("1.44.0")
# EFA 1.43.0 dropped Ubuntu 20.04 (AWS EFA changelog).
EFA_DROPS_UBUNTU2004 = V("1.43.0")

# aws-ofi-nccl version bundled by EFA installer versions (AWS EFA changelog). Versions not listed
# still bundle a plugin; smoke checks then only require it to exist and load.
EFA_BUNDLED_OFI = {
    V("1.40.0"): "1.14.2",
    V("1.42.0"): "1.15.0",
    V("1.43.0"): "1.16.1",
    V("1.43.1"): "1.16.2",
    V("1.43.2"): "1.16.3",
    V("1.50.0"): "1.21.1",
    V("1.51.0"): "1.22.0",
}

# aws-ofi-nccl git tags end in "-aws" up to v1.13.2-aws, plain from v1.14.0 (aws/aws-ofi-nccl tags).
OFI_LAST_AWS_SUFFIX = V("1.13.999")
# aws-ofi-nccl 1.12.1 is recommended with EFA >= 1.35.0 (AWS EFA docs).
EFA_WANTS_OFI_1121 = V("1.35.0")
OFI_RECOMMENDED_FOR_NEW_EFA = V("1.12.1")
# --enable-platform-aws appeared in aws-ofi-nccl 1.4 era; older configure scripts reject unknown
# flags only with a warning, but we keep the seed's exact form for old tags.
OFI_PLATFORM_AWS_FLAG = V("1.4.0")
# aws-ofi-nccl before 1.7 needed NCCL headers from the install it links (--with-nccl); later ones ship
# their own copies of the headers they need.
OFI_NEEDS_NCCL_HEADERS_BELOW = V("1.7.0")

# SHA256 values of aws-efa-installer-<v>.tar.gz live in matrix.yaml (checksums.efa_installer), so
# users add pins without a code change. They are AWS's published values ("Verify the EFA installer
# using a checksum", EC2 user guide), cross-checked where AWS ParallelCluster's cookbook pins the same
# version (cookbooks/aws-parallelcluster-environment/attributes/environment.rb and its history).

# --- EFA / NCCL environment presets (efa-cheatsheet, awsome-distributed-training) ----------
# aws-ofi-nccl <= 1.5: FI_PROVIDER=efa and NCCL_PROTO=simple; 1.6.x: FI_EFA_USE_DEVICE_RDMA=1;
# >= 1.7 with libfabric >= 1.18: nothing. RDMAV_FORK_SAFE=1 only on the aws-ofi-nccl <= 1.5 stacks that
# set it (the SMDDP container of seed 000 and its mpirun -x list); new stacks must not set it
# (libfabric handles fork safety itself, efa-cheatsheet).
OFI_OLD_STACK_BELOW = V("1.6.0")
OFI_DEVICE_RDMA_BELOW = V("1.7.0")

# --- NVIDIA PyTorch (NGC) bases: what each tag ships (NGC PyTorch release notes) -------------
# Kept in matrix.yaml (bases: ... ships:) so a user can add a tag without a code change.

# --- PyTorch <-> CUDA <-> Python, for source builds ----------------------------------------
# From pytorch/pytorch RELEASE.md "Release Compatibility Matrix" (rows 1.12 to 2.10: lowest stable
# to highest experimental CUDA, and the Python range incl. experimental) and, for 1.10/1.11 which
# have no row, the CUDA wheels they shipped (cu102..cu113 / cu115) and pytorch/vision's README.
PYTORCH_COMPAT = {
    # minor: (min CUDA, max CUDA, min Python, max Python)
    "1.10": (V("10.2"), V("11.3"), V("3.6"), V("3.9")),
    "1.11": (V("10.2"), V("11.5"), V("3.7"), V("3.10")),
    "1.12": (V("10.2"), V("11.6"), V("3.7"), V("3.10")),
    "1.13": (V("11.6"), V("11.7"), V("3.7"), V("3.10")),
    "2.0": (V("11.7"), V("11.8"), V("3.8"), V("3.11")),
    "2.1": (V("11.8"), V("12.1"), V("3.8"), V("3.11")),
    "2.2": (V("11.8"), V("12.1"), V("3.8"), V("3.12")),
    "2.3": (V("11.8"), V("12.1"), V("3.8"), V("3.12")),
    "2.4": (V("11.8"), V("12.4"), V("3.8"), V("3.12")),
    "2.5": (V("11.8"), V("12.4"), V("3.9"), V("3.13")),
    "2.6": (V("11.8"), V("12.6"), V("3.9"), V("3.13")),
    "2.7": (V("11.8"), V("12.8"), V("3.9"), V("3.13")),
    "2.8": (V("12.6"), V("12.9"), V("3.9"), V("3.13")),
    "2.9": (V("12.6"), V("13.0"), V("3.10"), V("3.14")),
    "2.10": (V("12.6"), V("13.0"), V("3.10"), V("3.14")),
}
# torchvision release paired with each PyTorch minor (pytorch/vision README compatibility table).
TORCHVISION_FOR = {
    "1.10": "0.11.3",
    "1.11": "0.12.0",
    "1.12": "0.13.1",
    "1.13": "0.14.1",
    "2.0": "0.15.2",
    "2.1": "0.16.2",
    "2.2": "0.17.2",
    "2.3": "0.18.1",
    "2.4": "0.19.1",
    "2.5": "0.20.1",
    "2.6": "0.21.0",
    "2.7": "0.22.1",
    "2.8": "0.23.0",
    "2.9": "0.24.0",
    "2.10": "0.25.0",
}

# --- SMDDP ------------------------------------------------------------------------------------
# No SMDDP wheel exists for PyTorch >= 2.6 (AWS docs, distributed-data-parallel-support).
SMDDP_LAST_PYTORCH = V("2.5.999")

# --- AWS Deep Learning Containers registry accounts (AWS DLC available_images.md) --------------
DLC_DEFAULT_ACCOUNT = "763104351884"
DLC_STANDARD_REGIONS = (
    "us-east-1", "us-east-2", "us-west-1", "us-west-2",
    "ca-central-1", "sa-east-1",
    "eu-west-1", "eu-west-2", "eu-west-3", "eu-central-1", "eu-north-1",
    "ap-south-1", "ap-northeast-1", "ap-northeast-2", "ap-southeast-1", "ap-southeast-2",
)
DLC_REGION_ACCOUNTS = {
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-south-2": "772153158452",
    "ap-southeast-3": "907027046896",
    "ap-southeast-4": "457447274322",
    "ap-northeast-3": "364406365360",
    "ca-west-1": "204538143572",
    "eu-south-1": "692866216735",
    "eu-south-2": "503227376785",
    "eu-central-2": "380420809688",
    "il-central-1": "780543022126",
    "me-south-1": "217643126080",
    "me-central-1": "914824155844",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
    **{r: DLC_DEFAULT_ACCOUNT for r in DLC_STANDARD_REGIONS},
}
