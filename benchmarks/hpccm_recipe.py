"""An hpccm recipe of about the size of one rendered nvidia image (benchmarks/render_bench.py).

The same shape as the nvidia flavor: an NGC PyTorch base, build tools from apt, GDRCopy,
NCCL built from source, PMIx and Open MPI, aws-ofi-nccl configured against libfabric, the
environment and labels. Building blocks and their keyword arguments are hpccm's documented
API (hpccm/building_blocks/*.py docstrings, "# Parameters"); this file is input to `hpccm
--recipe`, never imported by builder.
"""
# ruff: noqa: F821 (hpccm injects Stage0 and the building blocks into a recipe's globals)

Stage0 += baseimage(image="nvcr.io/nvidia/pytorch:24.09-py3", _distro="ubuntu22")
Stage0 += comment("Build tools and the libraries the EFA, NCCL and MPI builds need")
Stage0 += packages(ospackages=["autoconf", "automake", "build-essential", "ca-certificates", "curl", "git",
                               "libhwloc-dev", "libnuma-dev", "libtool", "make", "openssh-client", "pkg-config",
                               "wget"])
Stage0 += gdrcopy(version="2.4.1")
Stage0 += nccl(build=True, version="2.22.3-1", cuda="12.6")
Stage0 += pmix(version="4.2.9")
Stage0 += openmpi(version="4.1.6", cuda=True, infiniband=False, pmix="/usr/local/pmix", ucx=False)
Stage0 += generic_autotools(
    url="https://github.com/aws/aws-ofi-nccl/releases/download/v1.12.1-aws/aws-ofi-nccl-1.12.1-aws.tar.gz",
    prefix="/opt/aws-ofi-nccl",
    configure_opts=["--with-libfabric=/opt/amazon/efa", "--with-cuda=/usr/local/cuda",
                    "--with-mpi=/usr/local/openmpi", "--disable-tests"],
    ldconfig=True,
)
Stage0 += generic_build(
    repository="https://github.com/NVIDIA/nccl-tests.git", branch="v2.13.11",
    build=["make -j MPI=1 MPI_HOME=/usr/local/openmpi NCCL_HOME=/usr/local/nccl CUDA_HOME=/usr/local/cuda"],
    install=["cp -a build /opt/nccl-tests"],
)
Stage0 += environment(variables={
    "LD_LIBRARY_PATH": "/opt/aws-ofi-nccl/lib:/opt/amazon/efa/lib:/usr/local/nccl/lib:$LD_LIBRARY_PATH",
    "PATH": "/opt/amazon/efa/bin:/usr/local/openmpi/bin:$PATH",
    "FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1", "NCCL_DEBUG": "INFO", "NCCL_SOCKET_IFNAME": "^lo,docker",
})
Stage0 += label(metadata={"org.opencontainers.image.title": "nvidia-ngc24.09-efa1.35",
                          "org.opencontainers.image.source": "https://github.com/example-org/pytorch-efa-images"})
