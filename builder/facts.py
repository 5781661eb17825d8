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
# Bundled plugin location moved in 1.44.0: <arch>-linux-gnu/libnccl-net.so -> libnccl-net-ofi.so
# (aws/deep-learning-containers scripts/docker/common/install_efa.sh check_libnccl_net_so). On Amazon
# Linux 2023 the directory is lib64 (install_efa_amzn2023.sh: /opt/amazon/ofi-nccl/lib64/).
EFA_OFI_FLAT_LAYOUT = V("1.44.0")
OFI_LIBDIR_BY_OS = {"amzn2023": "lib64"}
# EFA 1.43.0 dropped Ubuntu 20.04 (AWS EFA changelog).
EFA_DROPS_UBUNTU2004 = V("1.43.0")

# The aws-ofi-nccl (libnccl-ofi) version each EFA installer bundles, as ranges: an installer keeps
# the plugin of the last release whose changelog row says "Upgrade ... libnccl-ofi"/"Amazon OFI NCCL
# Plugin" (EC2 user guide, "Elastic Fabric Adapter release notes", efa-changelog.html: 1.40.0 1.14.2,
# 1.42.0 1.15.0, 1.43.0 1.16.1, 1.43.1 1.16.2, 1.43.2 1.16.3, 1.44.0 1.17.1, 1.45.0 1.17.2,
# 1.47.0 1.18.0, 1.48.0 1.19.0, 1.49.0 1.20.0, 1.50.0 1.21.1 (2026-08-21), 1.51.0 1.22.0
# (2026-10-22)). So 1.41.0 (rdma-core only) still bundles 1.14.2 and 1.46.0 still 1.17.2. Before
# 1.40.0 the changelog names no plugin version: those installers bundle one, version unknown.
EFA_BUNDLED_OFI_FROM = (
    (V("1.40.0"), "1.14.2"),
    (V("1.42.0"), "1.15.0"),
    (V("1.43.0"), "1.16.1"),
    (V("1.43.1"), "1.16.2"),
    (V("1.43.2"), "1.16.3"),
    (V("1.44.0"), "1.17.1"),
    (V("1.45.0"), "1.17.2"),
    (V("1.47.0"), "1.18.0"),
    (V("1.48.0"), "1.19.0"),
    (V("1.49.0"), "1.20.0"),
    (V("1.50.0"), "1.21.1"),
    (V("1.51.0"), "1.22.0"),
)
# The newest installer the changelog above was read for: a newer one may have moved the plugin.
EFA_NEWEST_KNOWN = V("1.51.0")

# From 1.48.0 the installer detects NGC-style containers by /opt/nvidia/nvidia_entrypoint.sh (present
# in NGC and nvidia/cuda images) and then skips its standard aws-ofi-nccl package; --disable-ngc
# (1.48.0 and later) forces the standard install into /opt/amazon/ofi-nccl (aws/deep-learning-containers
# scripts/docker/common/install_efa_amzn2023.sh, "EFA 1.48+ auto-detects NGC containers ... Force the
# standard install with --disable-ngc"). AWS's "Install the EFA software in a container" page adds
# --enable-ngc from 1.49.0 for NGC containers; which NGC plugin variant that installs (aws-ofi-nccl
# contrib/debian-template: libnccl-ofi-ngc-v1/v2 under /opt/amazon/aws-ofi-nccl/lib) is not
# documented, so the images take the documented standard layout with --disable-ngc.
EFA_DETECTS_NGC = V("1.48.0")
EFA_DISABLE_NGC_FLAG = "--disable-ngc"
NGC_MARKER = "/opt/nvidia/nvidia_entrypoint.sh"

# aws-ofi-nccl git tags end in "-aws" up to v1.13.2-aws, plain from v1.14.0 (aws/aws-ofi-nccl tags),
# with exceptions read from the tag list: v0.9, v0.9.1, v0.9.2, v1.1.1 and v1.6.0 have no "-aws" twin.
OFI_LAST_AWS_SUFFIX = V("1.13.999")
OFI_TAGS_WITHOUT_AWS_SUFFIX = (V("0.9"), V("0.9.1"), V("0.9.2"), V("1.1.1"), V("1.6.0"))
# aws-ofi-nccl 1.12.1 is recommended with EFA >= 1.35.0 (AWS EFA docs).
EFA_WANTS_OFI_1121 = V("1.35.0")
OFI_RECOMMENDED_FOR_NEW_EFA = V("1.12.1")
# --enable-platform-aws first exists in aws-ofi-nccl 1.6.0 (m4/ax_platform_aws.m4 appears at tag
# v1.6.0; v1.5.0-aws's configure.ac has no such option).
OFI_PLATFORM_AWS_FLAG = V("1.6.0")
# aws-ofi-nccl before 1.7 needed NCCL headers from the install it links (--with-nccl); later ones ship
# their own copies of the headers they need.
OFI_NEEDS_NCCL_HEADERS_BELOW = V("1.7.0")
# From 1.15.0 a source build installs libnccl-net-ofi.so beside libnccl-net.so (src/Makefile.am,
# ENABLE_NCCL_NET_LIBRARY; EFA changelog 1.42.0 "Changed default plugin library name to
# libnccl-net-ofi.so ... users can set NCCL_NET_PLUGIN=ofi").
OFI_NET_OFI_NAME = V("1.15.0")

# SHA256 of aws-efa-installer-<version>.tar.gz as AWS publishes them (EC2 user guide, "Verify the EFA
# installer using a checksum"; the values AWS ParallelCluster's cookbook pins for the versions it ships).
# Every image verifies the tarball against these; a matrix's checksums.efa_installer adds versions
# published later (or a mirror's repackaged file) without a code change.
# 1.47.0 is cross-checked against awslabs/scale-out-computing-on-aws installer/default_config.yml
# (efa sha256, same value). 1.48.0-1.51.0 are absent on purpose: no AWS-owned source read on
# 2026-12-06 publishes them (the stored efa-verify table ends at 1.47.0; the cookbook's stored pins end
# at 1.41.0; aws/deep-learning-containers installs 1.48.0/1.49.0 without a checksum). Values seen only
# in third-party repositories are not taken: a matrix pins them under checksums.efa_installer.
EFA_INSTALLER_SHA256 = {
    "1.47.0": "2df4201e046833c7dc8160907bee7f52b76ff80ed147376a2d0ed8a0dd66b2db",
    "1.46.0": "8302bd7849afb95c903a875d7dcb6f85b3d7629e9a8b67d020031cfc6f4d0ee1",
    "1.45.1": "9aeb20c645135b6039cc08986d8f14e63280f7839e882a74df5e83627ffeaa17",
    "1.45.0": "25ba26a0877fe3317390dc126aad2f23e27fc461cf0b940004f032cb342fa539",
    "1.44.0": "f129a5b44a49d593d247e55a59eb9bcb57121566e1c2e42b832a4e794fa83d8a",
    "1.43.3": "6c470ebce254c7165347b5048895ac2996c88567271642297f4c597738300652",
    "1.43.2": "de15c5bdbc83b952afbde876110830c604ad0796680e5157c05f7c1979a41069",
    "1.43.1": "54211eda0c193138ee8ed09b5fb41c41fc76fe0a77935fa4ec8d989466342740",
    "1.43.0": "786df3458c499237be33bb8e50ffd4da7c18c20e254380ffc80fb90833d8cc73",
    "1.42.0": "4114fe612905ee05083ae5cb391a00a012510f3abfecc642d86c9a5ae4be9008",
    "1.41.0": "3506354cdfbe31ff552fe75f5d0d9bb7efd29cf79bd99457347d29c751c38f9f",
    "1.40.0": "30491b0fe7c3470d4439594538855c981b05fa69862d74f8c05eb9b97912368a",
    "1.39.0": "2cbc028c03064633bb990782b47c36156637769e2f48704417a9c700a7a32101",
    "1.38.1": "83923374afd388b1cfcf4b3a21a2b1ba7cf46a01a587f7b519b8386cb95e4f81",
    "1.38.0": "4f436954f35ad53754b4d005fd8d0be63de3b4184de41a695b504bdce0fecb22",
    "1.37.0": "2584fc3c8bb99f29b3285e275747ff09d67c18e162c2a652e36c976b72154bfb",
    "1.36.0": "de183f333cfb58aeb7908a67bf9106985ba3ccb7f8638b851d2a0d8dbfacaec4",
    "1.35.0": "432b6ad4368ba0cd8b902729d14a908a97be7a3dcc5239422ea994a47f35a5e1",
    "1.34.0": "bd68839e741b0afd3ec2e37d50603803cfa7a279c120f0a736cc57c2ff2d7fdc",
    "1.33.0": "0372877b87c6a7337bb7791d255e1053b907d030489fb2c3732ba70069185fce",
    "1.32.0": "5f7233760be57f6fee6de8c09acbfbf59238de848e06048dc54d156ef578fc66",
    "1.31.0": "943325bd37902a4300ac9e5715163537d56ecb4e7b87b37827c3e547aa1897bf",
    "1.30.0": "876ab9403e07a0c3c91a1a34685a52eced890ae052df94857f6081c5f6c78a0a",
    "1.29.1": "178b263b8c25845b63dc93b25bcdff5870df5204ec509af26f43e8d283488744",
    "1.29.0": "836655f87015547e733e7d9f7c760e4e24697f8bbc261bb5f3560abd4206bc36",
    "1.28.0": "2e625d2d6d3e073b5178e8e861891273d896b66d03cb1a32244fd56789f1c435",
    "1.27.0": "1d49a97b0bf8d964d91652a79ac851f2550e33a5bf9d0cf86ec9357ff6579aa3",
    "1.26.1": "c616994c924f54ebfabfab32b7fe8ac56947fae00a0ff453d975e298d174fc96",
    "1.26.0": "bc1abc1f76e97d204d3755d2a9ca307fc423e51c63141f798c2f15be3715aa11",
    "1.25.1": "d2abc553d22b89a4ce92882052c1fa6de450d3a801fe005da718b7d4b9602b06",
    "1.25.0": "98b7b26ce031a2d6a93de2297cc71b03af647194866369ca53b60d82d45ad342",
    "1.24.1": "120cfeec233af0955623ac7133b674143329f9561a9a8193e473060f596aec62",
    "1.24.0": "878623f819a0d9099d76ecd41cf4f569d4c3aac0c9bb7ba9536347c50b6bf88e",
    "1.23.1": "5ca848d8e0ff4d1571cd443c36f8d27c8cdf2a0c97e9068ebf000c303fc40797",
    "1.23.0": "555d497a60f22e3857fdeb3dfc53aa86d05926023c68c916d15d2dc3df6525bd",
    "1.22.1": "f90f3d5f59c031b9a964466b5401e86fd0429272408f6c207c3f9048254e9665",
    "1.22.0": "f329e7d54a86a03ea51da6ea9a5b68fb354fbae4a57a02f9592e21fce431dc3a",
    "1.21.0": "c64e6ca34ccfc3ebe8e82d08899ae8442b3ef552541cf5429c43d11a04333050",
    "1.20.0": "aeefd2681ffd5c4c631d1502867db5b831621d6eb85b61fe3ec80df983d1dcf0",
    "1.19.0": "99b77821b9e72c8dea015cc92c96193e8db307deee05b91a58094cc331f16709",
    "1.18.0": "acb18a0808aedb9a5e485f1469225b9ac97f21db9af78e4cd6939700debe1cb6",
    "1.17.3": "5130998b0d2883bbae189b21ab215ecbc1b01ae0231659a9b4a17b0a33ebc6ca",
    "1.17.2": "bca1fdde8b32b00346e175e597ffab32a09a08ee9ab136875fb38283cc4cd099",
    "1.17.1": "f29322640a88ae9279805993cb836276ea240623820848463ca686c8ce02136f",
    "1.17.0": "75ab0cee4fb6bd38889dce313183f5d3a83bd233e0a6ef6205d8352821ea901d",
    "1.16.0": "cecec36495a1bc6fdc82f97761a541e4fb6c9a3cbf3cfcb145acf25ea5dbd45b",
    "1.15.2": "84df4fbc1b3741b6c073176287789a601a589313accc8e6653434e8d4c20bd49",
    "1.15.1": "be871781a1b9a15fca342a9d169219260069942a8bda7a8ad06d4baeb5e2efd7",
    "1.15.0": "b329862dd5729d2d098d0507fb486bf859d7c70ce18b61c302982234a3a5c88f",
    "1.14.1": "c7b1b48e86fe4b3eaa4299d3600930919c4fe6d88cc6e2c7e4a408a3f16452c7",
    "1.14.0": "662d62c12de85116df33780d40e0533ef7dad92709f4f613907475a7a1b60a97",
}

# --- EFA / NCCL environment presets (awsome-distributed-training 1.architectures/efa-cheatsheet.md) ---
# Every preset of the cheatsheet sets FI_EFA_USE_HUGE_PAGE=0: "Set to 0 when you see os.fork() causes
# OSError: Cannot allocate memory. Typically happen by multi-process PyTorch data loader".
HUGE_PAGE_OFF = ("FI_EFA_USE_HUGE_PAGE", "0")
# aws-ofi-nccl <= 1.5: FI_PROVIDER=efa and NCCL_PROTO=simple; 1.6.x: FI_EFA_USE_DEVICE_RDMA=1, both
# "AND p4/p5 instances". RDMAV_FORK_SAFE=1 only on the aws-ofi-nccl <= 1.5 stacks that set it (the
# SMDDP container of seed 000 and its mpirun -x list); the cheatsheet says not to use it elsewhere.
OFI_OLD_STACK_BELOW = V("1.6.0")
OFI_DEVICE_RDMA_BELOW = V("1.7.0")
# FI_EFA_USE_DEVICE_RDMA=1 on an EFA device without RDMA read makes libfabric abort():
# "FI_EFA_USE_DEVICE_RDMA=1 was set by user, but EFA device has no rdma-read capability. Application
# will abort()" (ofiwg/libfabric prov/efa/src/rdm/efa_rdm_env.c; older rxr_env.c the same). The
# first-generation EFA of p3dn has none (EC2 user guide, NCCL tutorial: "FI_EFA_USE_DEVICE_RDMA=1 -
# (p4d.24xlarge only)"; libfabric defaults it off for vendor_part_id 0xefa0/0xefa1). So the value
# depends on the instance: it is set at run time (builder.nccl.instances), never baked into an image.
DEVICE_RDMA_ENV = "FI_EFA_USE_DEVICE_RDMA"
# SageMaker's MPI runner passes "-mca btl_tcp_if_include <interface>" (aws/sagemaker-training-toolkit
# src/sagemaker_training/mpi.py, MasterRunner._create_command); Open MPI treats btl_tcp_if_include
# and btl_tcp_if_exclude as mutually exclusive (Open MPI users list, R. Castain 2011-07-26; NEWS
# 1.5.x "Issue a warning if both btl_tcp_if_include and btl_tcp_if_exclude are specified"), so an
# image that claims the SageMaker contract must not bake OMPI_MCA_btl_tcp_if_exclude.
SAGEMAKER_MPI_INCLUDES_IFACE = "OMPI_MCA_btl_tcp_if_exclude"

# --- NVIDIA PyTorch (NGC) bases: what each tag ships (NGC PyTorch release notes) -------------
# Kept in matrix.yaml (bases: ... ships:) so a user can add a tag without a code change.
# From 25.11 NGC sets NCCL_NET_PLUGIN in /etc/shinit_v2 (sourced by every bash through ENV/BASH_ENV),
# and 26.x images reportedly drop aws-ofi-nccl and link libtorch against HPC-X's Open MPI 5. Neither
# NGC's release notes (rel-25-12: CUDA 13.1.0, PyTorch 2.10.0a0, Python 3.12, nothing about the net
# plugin or MPI) nor any readable copy of shinit_v2 confirm what removing /opt/hpcx/ompi or pointing
# NCCL at the EFA installer's plugin does there, so the nvidia flavor refuses those releases
# (rules.py, ngc-release) instead of guessing.
NGC_UNCONFIRMED_FROM = (25, 11)
NGC_IMAGE_RE = r"^nvcr\.io/nvidia/pytorch:(?P<yy>\d{2})\.(?P<mm>\d{2})-py3"

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
# From PyTorch 2.7 NCCL is no longer a git submodule (third_party/nccl/nccl is not in the tree), so a
# pinned NCCL is linked as a system NCCL (USE_SYSTEM_NCCL, cmake/Modules/FindNCCL.cmake).
PYTORCH_NCCL_NOT_SUBMODULE = V("2.7.0")
# "Last version of magma-cuda published was 12.6 https://anaconda.org/pytorch/magma-cuda126"
# (pytorch/pytorch#147476): no conda magma package for a newer CUDA.
MAGMA_CONDA_LAST_CUDA = V("12.6")
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

# --- AWS Deep Learning Containers ------------------------------------------------------------
# Registry accounts by region (aws/deep-learning-containers docs/reference/region_availability.md,
# 2026-08: it adds ap-southeast-5/6/7, ap-east-2 and mx-central-1 to the older available_images.md).
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
    "ap-east-2": "975050140332",
    "ap-south-2": "772153158452",
    "ap-southeast-3": "907027046896",
    "ap-southeast-4": "457447274322",
    "ap-southeast-5": "550225433462",
    "ap-southeast-6": "633930458069",
    "ap-southeast-7": "590183813437",
    "ap-northeast-3": "364406365360",
    "ca-west-1": "204538143572",
    "eu-south-1": "692866216735",
    "eu-south-2": "503227376785",
    "eu-central-2": "380420809688",
    "il-central-1": "780543022126",
    "me-south-1": "217643126080",
    "me-central-1": "914824155844",
    "mx-central-1": "637423239942",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
    **{r: DLC_DEFAULT_ACCOUNT for r in DLC_STANDARD_REGIONS},
}
# Every DLC is also on ECR Public without credentials (docs/get_started/index.md, "Public ECR (No
# Authentication)"; each image's docs/src/data/*.yml says public_registry: true).
DLC_PUBLIC_REGISTRY = "public.ecr.aws/deep-learning-containers"
# Two generations of PyTorch training DLCs (docs/src/data/pytorch-training/*.yml and
# docs/src/data/pytorch/*.yml; the ECR repository is the data folder's name):
# - up to 2.10: Ubuntu, repository pytorch-training, tags like 2.10.0-gpu-py313-cu130-ubuntu22.04-ec2;
# - from 2.11 (2026-04-30, docs/pytorch/changelog/index.md "Initial release of PyTorch DLC images on
#   Amazon Linux 2023"): repository pytorch, tags 2.13.0-cu133-amzn2023 and 2.13-cu133-amzn2023, the
#   SageMaker variant with -sagemaker; no Python in the tag (py312 in every 2.11-2.13 data file,
#   "Python 3.12 in a venv at /opt/venv", docs/pytorch/index.md).
DLC_UBUNTU_REPOSITORY = "pytorch-training"
DLC_AL2023_REPOSITORY = "pytorch"
DLC_AL2023_FIRST = V("2.11")

# OS package manager of each base OS the matrix knows (ships.os).
OS_PACKAGE_MANAGER = {"ubuntu18.04": "apt", "ubuntu20.04": "apt", "ubuntu22.04": "apt",
                      "ubuntu24.04": "apt", "amzn2023": "dnf"}
