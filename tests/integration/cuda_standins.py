"""CUDA stand-in bases for the compile tests (test fixtures only): Debian (debootstrap, like the
other stand-ins in standins.py) plus NVIDIA's CUDA 13 toolkit pieces from PyPI, laid out like
the nvidia/cuda devel images, so the stanzas that run nvcc build for real. Nothing is pulled.

What each part imitates, and where that is documented:
- The toolkit: NVIDIA's wheels ``nvidia-cuda-nvcc`` (nvcc, ptxas, nvlink, fatbinary, cudafe++),
  ``nvidia-nvvm`` (cicc, libnvvm), ``nvidia-cuda-crt`` (crt/ headers nvcc includes),
  ``nvidia-cuda-runtime`` (headers, libcudart.so.13, libcudart_static.a) and
  ``nvidia-cuda-cccl`` (Thrust/CUB/libcu++), all of which install under ``nvidia/cu13/``, put
  where a CUDA toolkit install puts them: ``/usr/local/cuda-13.0/{bin,nvvm}`` and
  ``targets/x86_64-linux/{include,lib}``, with ``include`` and ``lib64`` symlinks beside them and
  ``/usr/local/cuda`` pointing at the versioned folder. nvcc itself reads that layout: its
  ``bin/nvcc.profile`` (in the wheel) adds ``$(TOP)/$(_TARGET_DIR_)/include`` and
  ``.../lib64`` to every compile and link. The unversioned ``libcudart.so`` is what the
  ``cuda-cudart-dev`` package adds.
- The environment of NVIDIA's nvidia/cuda images (gitlab.com/nvidia/container-images/cuda,
  ``dist/<version>/<os>/base/Dockerfile``): ``PATH`` with ``/usr/local/cuda/bin``,
  ``LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64`` (where the container toolkit
  mounts the driver), ``NVIDIA_VISIBLE_DEVICES``, ``NVIDIA_DRIVER_CAPABILITIES`` and
  ``CUDA_VERSION``.
- The base's own NCCL: the runtime image installs the ``libnccl2`` package and holds it
  (``apt-mark hold``), the devel image adds ``libnccl-dev`` (same Dockerfiles, ``runtime/`` and
  ``devel/``): ``/usr/lib/x86_64-linux-gnu/libnccl.so.2`` on the loader's default path and
  ``/usr/include/nccl.h``. Here both are real Debian packages made from NVIDIA's
  ``nvidia-nccl-cu13`` wheel (its libnccl.so.2 and nccl.h), so ``apt-get remove libnccl2`` (the
  nccl-source stanza) and a link that picks the base's library behave as with NVIDIA's images.
- The NGC parts (ngc flavor of the stand-in): Python, a ``torch`` module reporting versions (its
  NCCL through ncclGetVersion of the loader's libnccl.so.2, as NGC's PyTorch links it), the
  Mellanox/ibverbs packages remove-conflicts removes, HPC-X's ``/opt/hpcx`` and
  ``/usr/local/mpi`` with ``OPAL_PREFIX``, as standins.ngc_standin does (NGC PyTorch release notes).

No GPU driver is in the image (``libcuda.so.1`` comes from the host at run time), so CUDA
programs built here fail at their first CUDA call with CUDA's own "driver" error, which is what
the smoke checks expect.

Wheels are downloaded once into $BUILDER_TEST_CACHE/wheels by pip, by exact version; the image
tag is a hash of the recipe and the wheels' SHA256, so a second run reuses the image.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import standins

RECIPE = "cuda-standin-2"  # bump when the recipe below changes
CUDA_VERSION = "13.0.2"  # what CUDA_VERSION says; the toolkit pieces are of the 13.0 release
CUDA_DIR = "/usr/local/cuda-13.0"
TARGET = f"{CUDA_DIR}/targets/x86_64-linux"
# pip pins: the CUDA 13.0 toolkit pieces (nvidia/cu13/...) and the base's NCCL.
TOOLKIT_WHEELS = {
    "nvidia-cuda-nvcc": "13.0.88",
    "nvidia-nvvm": "13.0.88",
    "nvidia-cuda-crt": "13.0.88",
    "nvidia-cuda-runtime": "13.0.96",
    "nvidia-cuda-cccl": "13.0.85",
}
NCCL_WHEEL = "nvidia-nccl-cu13"
# CI time: NCCL compiles one object per collective, operation, type, algorithm and protocol
# (~150 files for one architecture in 2.28, half a minute to a minute each on one core). NCCL's
# own filter for developer builds, ONLY_FUNCS (src/device/generate.py: "make ONLY_FUNCS=\"AllReduce
# Sum f32 RING LL\"", read by src/device/Makefile from make's environment), limits the device code
# to the collective all_reduce_perf runs by default. Set in the stand-in's environment, never in a
# stanza; BUILDER_TEST_NCCL_FULL=1 gives a stand-in without it (the full one-architecture build).
NCCL_ONLY_FUNCS = "AllReduce Sum f32 RING LL"
NVIDIA_ENV = [
    f"PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:{standins.PATH_ENV}",
    "LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64",
    "NVIDIA_VISIBLE_DEVICES=all",
    "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
    f"CUDA_VERSION={CUDA_VERSION}",
]


def wheel(name: str, version: str) -> Path:
    """NAME==VERSION's wheel, downloaded once by pip into the test cache."""
    folder = standins.cache_dir() / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    stem = name.replace("-", "_")
    found = sorted(folder.glob(f"{stem}-{version}-*.whl"))
    if not found:
        standins._run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                       "--platform", "manylinux2014_x86_64", "--python-version", "3.11",
                       "-d", str(folder), f"{name}=={version}"], timeout=1800)
        found = sorted(folder.glob(f"{stem}-{version}-*.whl"))
    if not found:
        raise RuntimeError(f"pip did not download {name}=={version} into {folder}")
    return found[0]


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _members(whl: Path, prefix: str) -> list[tuple[zipfile.ZipInfo, str]]:
    with zipfile.ZipFile(whl) as z:
        return [(i, i.filename[len(prefix):]) for i in z.infolist()
                if i.filename.startswith(prefix) and not i.is_dir() and not i.filename.endswith("__init__.py")]


def _extract(whl: Path, prefix: str, dest: Path, renames: dict[str, str] | None = None) -> None:
    """Files of the wheel under prefix, into dest (executables keep their mode)."""
    with zipfile.ZipFile(whl) as z:
        for info, rel in _members(whl, prefix):
            top = rel.split("/", 1)[0]
            target = dest / ((renames or {}).get(top, top) + rel[len(top):])
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out)
            mode = (info.external_attr >> 16) & 0o777
            target.chmod(mode or 0o644)


def install_toolkit(root: Path, wheels: dict[str, Path]) -> None:
    """The CUDA toolkit pieces at the paths a CUDA install uses (see the module docstring)."""
    cuda = root / CUDA_DIR.lstrip("/")
    for name, whl in wheels.items():
        # nvidia/cu13/{bin,nvvm} stay at the top; include/ and lib/ go to targets/x86_64-linux.
        _extract(whl, "nvidia/cu13/", cuda, {"include": "targets/x86_64-linux/include",
                                            "lib": "targets/x86_64-linux/lib"})
    target = root / TARGET.lstrip("/")
    (cuda / "include").symlink_to("targets/x86_64-linux/include")
    (cuda / "lib64").symlink_to("targets/x86_64-linux/lib")
    (target / "lib/libcudart.so").symlink_to("libcudart.so.13")
    (root / "usr/local/cuda").symlink_to("cuda-13.0")
    # The toolkit's libraries for the loader, as CUDA's packages configure it.
    (root / "etc/ld.so.conf.d/988_cuda-13.conf").write_text(f"{TARGET}/lib\n")


def nccl_debs(whl: Path, version: str, out: Path) -> list[Path]:
    """libnccl2 and libnccl-dev (Debian packages) holding the wheel's libnccl.so.2 and nccl.h."""
    debs = []
    lib = "usr/lib/x86_64-linux-gnu"
    for name, files in (("libnccl2", {"lib/libnccl.so.2": f"{lib}/libnccl.so.{version}"}),
                        ("libnccl-dev", {"include/nccl.h": "usr/include/nccl.h"})):
        pkg = out / name
        with zipfile.ZipFile(whl) as z:
            for src, dest in files.items():
                target = pkg / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(f"nvidia/nccl/{src}") as f, target.open("wb") as o:
                    shutil.copyfileobj(f, o)
        if name == "libnccl2":
            (pkg / lib / "libnccl.so.2").symlink_to(f"libnccl.so.{version}")
        else:
            (pkg / lib).mkdir(parents=True, exist_ok=True)
            (pkg / lib / "libnccl.so").symlink_to("libnccl.so.2")
        (pkg / "DEBIAN").mkdir(parents=True)
        depends = "" if name == "libnccl2" else f"Depends: libnccl2 (= {version}-1+cuda13.0)\n"
        (pkg / "DEBIAN/control").write_text(
            f"Package: {name}\nVersion: {version}-1+cuda13.0\nArchitecture: amd64\n{depends}"
            "Maintainer: tests <tests@example.invalid>\n"
            f"Description: NCCL {version} from NVIDIA's {NCCL_WHEEL} wheel (test fixture)\n")
        deb = out / f"{name}.deb"
        standins._run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(pkg), str(deb)])
        debs.append(deb)
    return debs


def _ngc_parts(box: "standins.Chroot", ships: dict) -> None:
    """What the nvidia flavor's stanzas remove, replace or read in an NGC image."""
    deb = standins._dummy_deb("libmlx5-1", box.work)
    shutil.copy(deb, box.root / "tmp/libmlx5-1.deb")
    box.sh("apt-get update -qq"
           f" && apt-get install -y -qq --no-install-recommends {' '.join(standins.IBVERBS_PACKAGES)} >/dev/null"
           " && dpkg -i /tmp/libmlx5-1.deb >/dev/null && rm /tmp/libmlx5-1.deb"
           " && rm -rf /var/lib/apt/lists/*")
    fake_mpirun = "#!/bin/sh\necho 'HPC-X mpirun stand-in (test fixture)'\n"
    box.write("/opt/hpcx/ompi/bin/mpirun", fake_mpirun, 0o755)
    box.write("/usr/local/mpi/bin/mpirun", fake_mpirun, 0o755)
    box.write("/opt/hpcx/nccl_rdma_sharp_plugin/lib/README.fixture", "SHARP plugin stand-in\n")
    box.write("/opt/hpcx/ucx/lib/README.fixture", "UCX stays: import torch needs it since NGC 23.09\n")
    dynamic_torch(box, ships["pytorch"])


def dynamic_torch(box: "standins.Chroot", version: str) -> None:
    """A `torch` module that only reports versions, with NGC's NCCL linking: NGC's PyTorch uses
    the container's libnccl.so.2 (it is built against the system NCCL, not a bundled copy), so
    torch.cuda.nccl.version() is what ncclGetVersion of the loader's libnccl.so.2 says; a stanza
    that replaces the NCCL changes what PyTorch reports."""
    site = "/usr/local/lib/python3.11/dist-packages/torch"
    box.write(f"{site}/__init__.py", f'"""Stand-in torch (test fixture): versions only."""\n'
              f'__version__ = "{version}+standin"\nfrom . import cuda  # noqa: E402,F401\n')
    box.write(f"{site}/cuda/__init__.py", "from . import nccl  # noqa: F401\n")
    box.write(f"{site}/cuda/nccl.py",
              "import ctypes\n\n\ndef version():\n    code = ctypes.c_int(0)\n"
              "    ctypes.CDLL('libnccl.so.2').ncclGetVersion(ctypes.byref(code))\n"
              "    major, rest = divmod(code.value, 10000)\n    return (major, *divmod(rest, 100))\n")


def cuda_standin(ships: dict, ngc: bool) -> str:
    """A CUDA 13 devel-like base (ngc=True: with NGC's parts too); returns its reference."""
    nccl = ships["nccl"].split("-")[0]
    wheels = {name: wheel(name, version) for name, version in TOOLKIT_WHEELS.items()}
    nccl_whl = wheel(NCCL_WHEEL, nccl)
    digest = hashlib.sha256("".join(_sha(w) for w in [*wheels.values(), nccl_whl]).encode()).hexdigest()
    kind = "ngc-cuda-standin" if ngc else "cuda-devel-standin"
    only = "" if os.environ.get("BUILDER_TEST_NCCL_FULL") == "1" else NCCL_ONLY_FUNCS
    ref = f"builder-fixture/{kind}:{standins._key(kind, RECIPE, digest, only, json.dumps(ships, sort_keys=True))}"
    if standins.image_exists(ref):
        return ref
    with standins.Chroot() as box:
        install_toolkit(box.root, wheels)
        for deb in nccl_debs(nccl_whl, nccl, box.work):
            shutil.copy(deb, box.root / "tmp" / deb.name)
        # libnccl2 held, as NVIDIA's runtime Dockerfile does (hence the nccl-source stanza's
        # --allow-change-held-packages).
        box.sh("dpkg -i /tmp/libnccl2.deb /tmp/libnccl-dev.deb >/dev/null && rm /tmp/libnccl*.deb"
               " && apt-mark hold libnccl2 >/dev/null && ldconfig")
        env = list(NVIDIA_ENV) + ([f'ONLY_FUNCS="{only}"'] if only else [])
        if ngc:
            box.sh("rm -f /usr/lib/python3*/EXTERNALLY-MANAGED")
            _ngc_parts(box, ships)
            env[0] = f"PATH=/usr/local/mpi/bin:/usr/local/nvidia/bin:/usr/local/cuda/bin:{standins.PATH_ENV}"
            env.append("OPAL_PREFIX=/opt/hpcx/ompi")
        box.import_as(ref, [f"ENV {e}" for e in env] + ['CMD ["/bin/bash"]'])
    return ref


def nvcc_version(ref: str) -> str:
    """`nvcc --version`'s last line in the image (a quick proof the toolkit runs)."""
    proc = subprocess.run([standins.DOCKER, "run", "--rm", "--network", "none", ref, "nvcc", "--version"],
                          capture_output=True, text=True)
    return proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else proc.stderr
