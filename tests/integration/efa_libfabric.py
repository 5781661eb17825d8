"""A stand-in AWS EFA installer with a real libfabric and a real Open MPI (test fixture), for the
compile tests: aws-ofi-nccl configures and links against it, nccl-tests links its Open MPI.

What it imitates: ``aws-efa-installer/efa_installer.sh`` with the flags the efa stanza passes
(-y -g --skip-kmod --skip-limit-conf --no-verify), installing
- libfabric (with its efa provider) under ``/opt/amazon/efa``: ``lib/libfabric.so*``,
  ``include/rdma/*.h``, ``bin/fi_info``: the prefix AWS's "Get started with EFA and NCCL" guide
  (docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-start-nccl.html) configures aws-ofi-nccl with
  (``--with-libfabric=/opt/amazon/efa``) and the efa stanza puts on ``LD_LIBRARY_PATH``;
- Open MPI under ``/opt/amazon/openmpi`` (``bin/mpirun``, ``bin/mpicc``, ``lib/libmpi.so``,
  ``include/mpi.h``): the ``--with-mpi=/opt/amazon/openmpi`` of the same guide, and the
  ``MPI_HOME`` the nccl-tests stanza builds with;
- ``/opt/amazon/efa_installed_packages``, the installer's version record the smoke check reads.

libfabric is built from source, Debian's (trixie's libfabric 2.1.0 source package, fetched with
apt from Debian's mirror; bookworm's 1.17 is too old: with --enable-platform-aws, which the
aws-ofi-nccl stanza passes, aws-ofi-nccl's configure requires libfabric 1.18 or later up to
v1.12.1-aws and 1.22 or later from v1.13.0-aws, m4/ax_platform_aws.m4), with its efa provider against rdma-core, once,
in a throwaway Debian chroot, into /opt/amazon/efa; the installer tarball carries that tree, as
AWS's carries its prebuilt libfabric-aws packages, and installs rdma-core's libraries (libefa,
libibverbs) with apt, as AWS's installs its rdma-core. Open MPI is Debian's ``openmpi-bin`` (4.1,
the series of the EFA installers' Open MPI 4) with the headers of ``libopenmpi-dev``; like the
real installer, which pulls dependencies from the distribution, it runs apt-get. Open MPI's
libraries and tools are linked under /opt/amazon/openmpi, since Open MPI finds its components by
its compiled-in prefix. No
``mpicc``: aws-ofi-nccl's configure then checks ``mpi.h`` and ``-lmpi`` under ``--with-mpi``
(m4/check_pkg_mpi.m4), the path that tests the installer's layout.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import standins

INSTALLER = r"""#!/bin/bash
# Stand-in aws-efa-installer {version} (test fixture): libfabric built from source and Debian's Open MPI, laid out
# under /opt/amazon like AWS's installer lays out its own builds.
set -euo pipefail
for arg in "$@"; do
  case "$arg" in -y|-g|--skip-kmod|--skip-limit-conf|--no-verify|--minimal) ;; *) echo "unknown option $arg" >&2; exit 2;; esac
done
export DEBIAN_FRONTEND=noninteractive
ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt-get update -qq
# Runtime packages only: Debian's libopenmpi-dev would drag libhwloc-dev (and gfortran) in,
# which AWS's self-contained Open MPI does not, and so hide a stanza that forgets hwloc.
apt-get install -y -qq --no-install-recommends libibverbs1 ibverbs-providers librdmacm1 openmpi-bin >/dev/null
multiarch=/usr/lib/x86_64-linux-gnu
tar -C / -xf "$(dirname "$0")/libfabric-efa.tar"
# As installed from packages: no libtool archive (it would make libtool link rdma-core's -dev
# libraries into everything that links libfabric) and no static library.
rm -f /opt/amazon/efa/lib/libfabric.la /opt/amazon/efa/lib/libfabric.a
mkdir -p /opt/amazon/openmpi/bin /opt/amazon/openmpi/lib /opt/amazon/openmpi/include
# Open MPI's headers from its -dev package, unpacked without that package's dependencies.
work=$(mktemp -d)
(cd "$work" && apt-get download -qq libopenmpi-dev 2>/dev/null)
dpkg-deb -x "$work"/libopenmpi-dev_*.deb "$work/x"
cp -a "$work/x$multiarch/openmpi/include/." /opt/amazon/openmpi/include/
rm -rf "$work"
for lib in libmpi libopen-pal libopen-rte; do
  ln -s "$multiarch/$lib.so.40" "/opt/amazon/openmpi/lib/$lib.so.40"
  ln -s "$lib.so.40" "/opt/amazon/openmpi/lib/$lib.so"
done
for tool in mpirun mpiexec orterun orted ompi_info; do ln -s "/usr/bin/$tool" "/opt/amazon/openmpi/bin/$tool"; done
# The network-env stanza sets OPAL_PREFIX=/opt/amazon/openmpi (the real installer's prefix). Open
# MPI then reads its components and help files below that prefix in place of its configured
# /usr: Debian's library folder and share/ are linked there so the relocation finds them.
ln -s "$multiarch" "/opt/amazon/openmpi/lib/x86_64-linux-gnu"
ln -s /usr/share /opt/amazon/openmpi/share
printf '# EFA installer version: {version}\n# Debug packages installed: no\n# Packages installed:\nlibfabric {libfabric} (built from source, stand-in for libfabric-aws)\nopenmpi-bin (Debian, stand-in for openmpi40-aws)\n' \
  > /opt/amazon/efa_installed_packages
"""


LIBFABRIC_VERSION = "2.1.0"
LIBFABRIC_SOURCE = f"libfabric={LIBFABRIC_VERSION}-1.1"  # Debian trixie's source package
# Providers: efa (what aws-ofi-nccl uses on AWS), shm (efa's intra-node path), tcp (a fallback).
LIBFABRIC_CONFIGURE = "--prefix=/opt/amazon/efa --enable-only --enable-efa --enable-shm --enable-tcp"
BUILD = r"""
apt-get update -qq
apt-get install -y -qq --no-install-recommends build-essential autoconf automake libtool pkg-config \
    libibverbs-dev librdmacm-dev xz-utils >/dev/null
mkdir -p /tmp/build && tar -C /tmp/build -xJf /tmp/libfabric.orig.tar.xz
cd /tmp/build/libfabric-*/
./autogen.sh >/dev/null
./configure -q {configure}
make -j"$(nproc)" >/dev/null
make install >/dev/null
/opt/amazon/efa/bin/fi_info --version
"""


def libfabric_source() -> Path:
    """The upstream tarball of Debian's libfabric source package (apt, a private apt state)."""
    cache = standins.cache_dir() / "libfabric-src"
    found = sorted(cache.glob(f"libfabric_{LIBFABRIC_VERSION}.orig.tar.*"))
    if found:
        return found[0]
    apt = cache / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "etc"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "etc/sources.list").write_text(f"deb-src {standins.debian_mirror()} trixie main\n")
    opts = [f"-oDir::Etc::sourcelist={apt}/etc/sources.list", "-oDir::Etc::sourceparts=-",
            f"-oDir::State::Lists={apt}/lists", f"-oDir::Cache={apt}/cache"]
    standins._run(["apt-get", *opts, "update", "-qq"], timeout=600)
    # --download-only fetches the .dsc, the Debian changes and the upstream tarball, each checked
    # against the signed index; only the upstream tarball is used.
    subprocess.run(["apt-get", *opts, "source", "--download-only", LIBFABRIC_SOURCE], cwd=cache,
                   capture_output=True, timeout=600)
    found = sorted(cache.glob(f"libfabric_{LIBFABRIC_VERSION}.orig.tar.*"))
    if not found:
        raise RuntimeError(f"apt-get source could not fetch {LIBFABRIC_SOURCE} from {standins.debian_mirror()}")
    return found[0]


def libfabric_tree() -> Path:
    """/opt/amazon/efa with libfabric built from source (a tar, cached by source and recipe)."""
    source = libfabric_source()
    key = standins._key("libfabric", LIBFABRIC_CONFIGURE, BUILD, hashlib.sha256(source.read_bytes()).hexdigest())
    tar = standins.cache_dir() / f"libfabric-efa-{LIBFABRIC_VERSION}-{key}.tar"
    if tar.is_file():
        return tar
    with standins.Chroot() as box:
        shutil.copy(source, box.root / "tmp/libfabric.orig.tar.xz")
        box.sh(BUILD.replace("{configure}", LIBFABRIC_CONFIGURE), timeout=2400)
        partial = tar.with_suffix(".partial")
        # Fixed owner and times: the installer tarball's SHA256 stays the same for the same build.
        standins._run(["tar", "-C", str(box.root), "--numeric-owner", "--owner=0", "--group=0",
                       "--mtime=@0", "--sort=name", "-cf", str(partial), "opt/amazon/efa"])
        partial.replace(tar)
    return tar


def efa_installer(version: str, folder: Path) -> tuple[Path, str]:
    """aws-efa-installer-<version>.tar.gz in folder, and its SHA256 (the same bytes while the
    cached libfabric build stays, so the efa layer stays cached)."""
    script = INSTALLER.replace("{version}", version).replace("{libfabric}", LIBFABRIC_VERSION).encode()
    cached = standins.cache_dir() / f"aws-efa-installer-{version}-{standins._key(script.decode(), libfabric_tree().name)}.tar.gz"
    if not cached.is_file():
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            info = tarfile.TarInfo("aws-efa-installer/efa_installer.sh")
            info.size, info.mode, info.mtime = len(script), 0o755, 0
            tar.addfile(info, io.BytesIO(script))
            tar.add(libfabric_tree(), arcname="aws-efa-installer/libfabric-efa.tar",
                    filter=lambda i: (setattr(i, "mtime", 0), i)[1])
        cached.with_suffix(".partial").write_bytes(buf.getvalue())
        cached.with_suffix(".partial").replace(cached)
    path = folder / f"aws-efa-installer-{version}.tar.gz"
    shutil.copy(cached, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()
