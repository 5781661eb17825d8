"""Stand-in base images (test fixtures only): Debian rootfs made with debootstrap, shaped like the
bases the stanzas expect, and imported with ``docker import``. Nothing here is pulled.

- ``builder-fixture/dlc-standin``: Python, pip and the SageMaker training toolkit really
  installed from PyPI (sagemaker-training builds a C extension, so gcc is installed for the pip
  step and purged after), ``SAGEMAKER_TRAINING_MODULE`` set as in AWS's DLCs, the EFA installer
  marker and ``nccl.h`` of the versions the test matrix says the base ships, a stub
  ``libnccl.so.2`` whose ``ncclGetVersion`` reports that NCCL (compiled with the same gcc), and
  what AWS's DLC Dockerfiles bake in (aws/deep-learning-containers
  pytorch/training/docker/2.4/py3/cu124/Dockerfile.gpu): openssh-server with its host keys, a root
  key pair (``ssh-keygen -q -t rsa -N '' -f /root/.ssh/id_rsa``, authorized for root,
  ``StrictHostKeyChecking no``), Open MPI behind an ``mpirun --allow-run-as-root`` wrapper, and
  mpi4py: the SageMaker toolkit's MPI runner needs all of them (Debian's openmpi-bin and
  python3-mpi4py stand in for the EFA installer's Open MPI and conda's mpi4py). The keys are
  findings that smoke must report as inherited from the base, not fail.
- ``builder-fixture/ngc-standin``: Python and pip, the Mellanox/ibverbs packages the
  remove-conflicts stanza removes (``libmlx5-1`` is Ubuntu-only, so a dummy package stands in),
  HPC-X's ``/opt/hpcx/{ompi,nccl_rdma_sharp_plugin,ucx}`` and ``/usr/local/mpi`` with
  ``OPAL_PREFIX`` set as NGC does, a stand-in ``torch`` module reporting the shipped version,
  ``nccl.h``, and a PyTorch source tree under ``/opt/pytorch`` (a ``.git`` and a CMake build
  folder, as NGC ships): leftovers that smoke must report as inherited from the base.
  Upstream behaviours that break images (issue 10), each a separate block in ``ngc_standin``:
  ``/opt/nvidia/nvidia_entrypoint.sh`` (NGC and nvidia/cuda images ``COPY nvidia_entrypoint.sh
  /opt/nvidia/``; what EFA installers >= 1.48 take for an NGC container), ``/etc/shinit_v2`` with
  ``ENV=/etc/shinit_v2`` and ``BASH_ENV=/etc/bash.bashrc`` sourcing it, so every bash runs it (as in
  NGC images, where 25.11+ set ``NCCL_NET_PLUGIN`` there), emptied apt lists, and one of the
  packages remove-conflicts names (``ibverbs-utils``) not installed.

Each image is tagged with a hash of its recipe and inputs, so a second run reuses it; the
debootstrap rootfs is cached as a tarball under ``$BUILDER_TEST_CACHE`` (default
``~/.cache/builder-tests``) for the next recipe change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

DOCKER = "/usr/bin/docker"
RECIPE_REVISION = "5"  # bump when a recipe below changes
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-pip", "python-is-python3", "ca-certificates")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
SAGEMAKER_TRAINING = "4.8.1"
SAGEMAKER_PYTORCH_TRAINING = "2.8.1"
# ibverbs-utils, which remove-conflicts also names, is left out on purpose: with emptied apt lists
# `apt-get remove` of a package the base lacks fails ("Unable to locate package").
IBVERBS_PACKAGES = ("libibverbs1", "libibverbs-dev")
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NGC_RECIPE = "opt-pytorch-tree+ngc-entrypoint-shinit"  # changes the NGC stand-in's tag alone (RECIPE_REVISION rebuilds both)
# NGC's shell init: NGC images set ENV=/etc/shinit_v2 and BASH_ENV=/etc/bash.bashrc, so every
# non-interactive bash runs it (NVIDIA TensorRT-LLM docker/common scripts: "export
# BASH_ENV=${BASH_ENV:-/etc/bash.bashrc}; export ENV=${ENV:-/etc/shinit_v2}"). The stand-in's sets
# nothing NCCL reads, as before 25.11; a test swaps in one that sets NCCL_NET_PLUGIN as 25.11+ do.
SHINIT_V2 = "# Stand-in /etc/shinit_v2 (test fixture): NGC's shell init, run by every bash.\nexport NGC_SHINIT_V2=1\n"
NGC_ENTRYPOINT = "#!/bin/bash\n# Stand-in /opt/nvidia/nvidia_entrypoint.sh (test fixture)\nexec \"$@\"\n"
DLC_RECIPE = "mpi-over-ssh"  # changes the DLC stand-in's tag alone


def cache_dir() -> Path:
    path = Path(os.environ.get("BUILDER_TEST_CACHE") or Path.home() / ".cache" / "builder-tests")
    path.mkdir(parents=True, exist_ok=True)
    return path


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if line.startswith("URIs:") and len(words) > 1 and "security" not in words[1]:
                return words[1]
            if words[:1] == ["deb"] and "security" not in line:
                return next(w for w in words[1:] if w.startswith("http"))
    return "http://deb.debian.org/debian"


def _key(*parts: str) -> str:
    h = hashlib.sha256()
    for part in (RECIPE_REVISION, *parts):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _run(argv, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv[:4]))} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-3000:]}")
    return proc


def image_exists(ref: str) -> bool:
    return subprocess.run([DOCKER, "image", "inspect", ref], capture_output=True).returncode == 0


def rootfs_tarball() -> Path:
    """debootstrap --variant=minbase with Python and pip, cached as a tarball."""
    mirror = debian_mirror()
    tar = cache_dir() / f"debootstrap-{SUITE}-{_key(mirror, *BASE_PACKAGES)}.tar"
    if tar.is_file():
        return tar
    work = Path(tempfile.mkdtemp(prefix="builder-debootstrap-"))
    try:
        root = work / "rootfs"
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(root), mirror],
             timeout=1200)
        _clean(root)
        partial = tar.with_suffix(".partial")
        _run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."])
        os.replace(partial, tar)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tar


def _clean(root: Path) -> None:
    """What a well-made base image does at the end: no apt lists, caches or temp files."""
    for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb",
                    "root/.cache", "tmp/*", "var/tmp/*", "var/log/apt/*", "var/log/dpkg.log"):
        for path in root.glob(pattern):
            if path.name in ("lock", "partial", "auxfiles"):
                continue
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


class Chroot:
    """A rootfs unpacked from the cached tarball, with /proc and the host's DNS and CA bundle."""

    def __init__(self):
        self.work = Path(tempfile.mkdtemp(prefix="builder-standin-"))
        self.root = self.work / "rootfs"

    def __enter__(self) -> "Chroot":
        self.root.mkdir()
        _run(["tar", "-C", str(self.root), "--numeric-owner", "-xf", str(rootfs_tarball())])
        shutil.copy("/etc/resolv.conf", self.root / "etc/resolv.conf")
        # The host's bundle holds an extra root that HTTPS to PyPI needs from inside the image too.
        shutil.copy(HOST_CA, self.root / "etc/ssl/certs/ca-certificates.crt")
        _run(["mount", "-t", "proc", "proc", str(self.root / "proc")])
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["umount", "-l", str(self.root / "proc")], capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)

    def sh(self, script: str, timeout: float = 1200) -> None:
        env = {"PATH": PATH_ENV, "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root", "LC_ALL": "C.UTF-8"}
        _run(["chroot", str(self.root), "/bin/bash", "-euo", "pipefail", "-c", script], env=env, timeout=timeout)

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def import_as(self, ref: str, changes: list[str]) -> None:
        (self.root / "etc/resolv.conf").write_text("")
        subprocess.run(["umount", "-l", str(self.root / "proc")], capture_output=True)
        _clean(self.root)
        argv = [DOCKER, "import"]
        for change in changes:
            argv += ["--change", change]
        tar = subprocess.Popen(["tar", "-C", str(self.root), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        try:
            _run(argv + ["-", ref], stdin=tar.stdout)
        finally:
            tar.stdout.close()
            tar.wait()


def nccl_header(version: str) -> str:
    major, minor, patch = (version.split("-")[0].split(".") + ["0", "0"])[:3]
    return (f"/* Stand-in nccl.h (test fixture): only the version macros of NCCL {version}. */\n"
            f"#define NCCL_MAJOR {major}\n#define NCCL_MINOR {minor}\n#define NCCL_PATCH {patch}\n")


def efa_marker(version: str) -> str:
    return f"# EFA installer version: {version}\n# Stand-in base image (test fixture)\n"


def standin_torch(box: "Chroot", version: str, nccl: str | None) -> None:
    """A `torch` module that only reports versions (the real one is gigabytes of CUDA)."""
    site = "/usr/local/lib/python3.11/dist-packages/torch"
    release = tuple(int(p) for p in (nccl or "0.0.0").split("-")[0].split("."))
    box.write(f"{site}/__init__.py", f'"""Stand-in torch (test fixture): versions only."""\n'
              f'__version__ = "{version}+standin"\nfrom . import cuda  # noqa: E402,F401\n')
    box.write(f"{site}/cuda/__init__.py", "from . import nccl  # noqa: F401\n")
    box.write(f"{site}/cuda/nccl.py", f"def version():\n    return {release!r}\n")


# The MPI-over-ssh layer of AWS's PyTorch training DLCs (Dockerfile.gpu, "Install OpenSSH for MPI
# to communicate between containers" and "Configure Open MPI"): real keys, since the toolkit's MPI
# runner logs in to the other host's sshd with root's key (sagemaker-training mpi.py, _can_connect).
DLC_MPI_PACKAGES = ("openssh-server", "openssh-client", "openmpi-bin", "python3-mpi4py")
DLC_MPI_SETUP = (
    "mkdir -p /var/run/sshd"
    " && grep -v StrictHostKeyChecking /etc/ssh/ssh_config > /etc/ssh/ssh_config.new"
    " && echo '    StrictHostKeyChecking no' >> /etc/ssh/ssh_config.new"
    " && mv /etc/ssh/ssh_config.new /etc/ssh/ssh_config"
    " && sed 's@session\\s*required\\s*pam_loginuid.so@session optional pam_loginuid.so@g' -i /etc/pam.d/sshd"
    " && mkdir -p /root/.ssh && ssh-keygen -q -t rsa -N '' -f /root/.ssh/id_rsa"
    " && cp /root/.ssh/id_rsa.pub /root/.ssh/authorized_keys"
    " && printf 'Host *\\n StrictHostKeyChecking no\\n' >> /root/.ssh/config"
    " && printf '#!/bin/bash\\nexec /usr/bin/mpirun --allow-run-as-root \"$@\"\\n' > /usr/local/bin/mpirun"
    " && chmod 755 /usr/local/bin/mpirun"
)


def stub_libnccl(version: str) -> str:
    """Shell that builds /usr/local/lib/libnccl.so.2 answering ncclGetVersion with version."""
    major, minor, patch = (int(p) for p in (version.split("-")[0].split(".") + ["0", "0"])[:3])
    code = major * 10000 + minor * 100 + patch
    return (f"printf 'int ncclGetVersion(int *v) {{ *v = {code}; return 0; }}\\n' > /tmp/nccl.c"
            f" && gcc -shared -fPIC -Wl,-soname,libnccl.so.2 -o /usr/local/lib/libnccl.so.{major}.{minor}.{patch} /tmp/nccl.c"
            f" && ln -s libnccl.so.{major}.{minor}.{patch} /usr/local/lib/libnccl.so.2 && rm /tmp/nccl.c && ldconfig")


def dlc_standin(ships: dict, pytorch: str | None = None) -> str:
    """DLC-like image with the real SageMaker toolkit from PyPI; returns its reference."""
    ships = {**ships, **({"pytorch": pytorch} if pytorch else {})}
    ref = f"builder-fixture/dlc-standin:{_key('dlc', DLC_RECIPE, SAGEMAKER_TRAINING, SAGEMAKER_PYTORCH_TRAINING, json.dumps(ships, sort_keys=True))}"
    if image_exists(ref):
        return ref
    with Chroot() as box:
        box.sh("rm -f /usr/lib/python3*/EXTERNALLY-MANAGED"
               " && apt-get update -qq"
               " && apt-get install -y -qq --no-install-recommends gcc libc6-dev python3-dev >/dev/null"
               f" && pip install -q --no-cache-dir sagemaker-training=={SAGEMAKER_TRAINING}"
               f" sagemaker-pytorch-training=={SAGEMAKER_PYTORCH_TRAINING}"
               f" && apt-get install -y -qq --no-install-recommends {' '.join(DLC_MPI_PACKAGES)} >/dev/null"
               f" && {DLC_MPI_SETUP}"
               + (f" && {stub_libnccl(ships['nccl'])}" if "nccl" in ships else "")
               + " && apt-get purge -y -qq --auto-remove gcc libc6-dev python3-dev >/dev/null"
               " && rm -rf /var/lib/apt/lists/* /root/.cache")
        if "efa" in ships:
            box.write("/opt/amazon/efa_installed_packages", efa_marker(ships["efa"]))
        if "pytorch" in ships:
            standin_torch(box, ships["pytorch"], ships.get("nccl"))
        if "nccl" in ships:
            box.write("/usr/include/nccl.h", nccl_header(ships["nccl"]))
        box.import_as(ref, [f"ENV PATH={PATH_ENV}",
                            "ENV SAGEMAKER_TRAINING_MODULE=sagemaker_pytorch_container.training:main",
                            'CMD ["/bin/bash"]'])
    return ref


def _dummy_deb(name: str, out: Path) -> Path:
    """An empty Debian package, for a package name Debian lacks (Ubuntu's libmlx5-1)."""
    pkg = out / name
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "usr/share/doc" / name).mkdir(parents=True)
    (pkg / "usr/share/doc" / name / "README.fixture").write_text("Stand-in package for the remove-conflicts stanza.\n")
    (pkg / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: 50.0-fixture\nArchitecture: all\nMaintainer: tests <tests@example.invalid>\n"
        "Description: stand-in for the NGC image's Mellanox package (test fixture)\n")
    deb = out / f"{name}.deb"
    _run(["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(deb)])
    return deb


def ngc_standin(ships: dict) -> str:
    """NGC-like image: what the nvidia flavor's stanzas remove, replace or read."""
    ref = f"builder-fixture/ngc-standin:{_key('ngc', NGC_RECIPE, json.dumps(ships, sort_keys=True))}"
    if image_exists(ref):
        return ref
    with Chroot() as box:
        deb = _dummy_deb("libmlx5-1", box.work)
        shutil.copy(deb, box.root / "tmp/libmlx5-1.deb")
        box.sh("rm -f /usr/lib/python3*/EXTERNALLY-MANAGED"
               " && apt-get update -qq"
               f" && apt-get install -y -qq --no-install-recommends {' '.join(IBVERBS_PACKAGES)} >/dev/null"
               " && dpkg -i /tmp/libmlx5-1.deb >/dev/null && rm /tmp/libmlx5-1.deb"
               " && rm -rf /var/lib/apt/lists/*")
        fake_mpirun = "#!/bin/sh\necho 'HPC-X mpirun stand-in (test fixture)'\n"
        box.write("/opt/hpcx/ompi/bin/mpirun", fake_mpirun, 0o755)
        box.write("/usr/local/mpi/bin/mpirun", fake_mpirun, 0o755)
        box.write("/opt/hpcx/nccl_rdma_sharp_plugin/lib/README.fixture", "SHARP plugin stand-in\n")
        box.write("/opt/hpcx/ucx/lib/README.fixture", "UCX stays: import torch needs it since NGC 23.09\n")
        if "pytorch" in ships:
            standin_torch(box, ships["pytorch"], ships.get("nccl"))
        if "nccl" in ships:
            box.write("/usr/include/nccl.h", nccl_header(ships["nccl"]))
        # Upstream behaviours that break images (issue 10); see the module docstring.
        box.write("/opt/nvidia/nvidia_entrypoint.sh", NGC_ENTRYPOINT, 0o755)
        box.write("/etc/shinit_v2", SHINIT_V2)
        bashrc = box.root / "etc/bash.bashrc"
        bashrc.write_text('[ -n "${ENV:-}" ] && [ -r "$ENV" ] && . "$ENV"\n' + bashrc.read_text())
        box.write("/opt/pytorch/pytorch/.git/HEAD", "ref: refs/heads/main\n")
        box.write("/opt/pytorch/pytorch/build/CMakeCache.txt", "# stand-in NGC build tree (test fixture)\n")
        box.import_as(ref, [f"ENV PATH=/usr/local/mpi/bin:{PATH_ENV}", "ENV OPAL_PREFIX=/opt/hpcx/ompi",
                            "ENV ENV=/etc/shinit_v2", "ENV BASH_ENV=/etc/bash.bashrc",
                            'ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh"]', 'CMD ["/bin/bash"]'])
    return ref
