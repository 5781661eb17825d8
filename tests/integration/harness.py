"""The real-engine test harness: a fixture HTTP server with a stand-in EFA installer, a temp
project holding the test matrix (real templates, stand-in bases and URLs), and the CLI.

Usable by hand too: ``python tests/integration/harness.py /tmp/proj`` prepares a project, starts
the server and waits, so ``builder --matrix /tmp/proj/matrix.yaml build --all --network host``
can be run against it.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "itest-project"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import standins  # noqa: E402

from packaging.version import Version  # noqa: E402

from builder import components as comp  # noqa: E402

DOCKER = standins.DOCKER
# The repository the test images are tagged in. BUILDER_ITEST_REPO gives a run its own, so test
# runs that share one engine (several worktrees) do not retag each other's images mid-run.
ITEST_REPO = os.environ.get("BUILDER_ITEST_REPO") or "builder-itest"
# The installers the test matrix pins (1.43.2 with a wrong checksum on purpose), plus 1.51.0 for the
# NGC-detection test, which fetches it by URL.
INSTALLER_VERSIONS = ("1.48.0", "1.43.2", "1.51.0")

# The stand-in installer: same name, layout and flags as AWS's, installing marker files, a
# fi_info that prints versions, and the bundled aws-ofi-nccl plugin as a real shared library
# (copied from the image's zlib) where the installer version puts it, so ldd has work to do.
# --- NGC detection (issue 10), as upstream behaves: from 1.48.0 the installer takes a system with
# /opt/nvidia/nvidia_entrypoint.sh for an NGC container and skips its standard aws-ofi-nccl
# package unless --disable-ngc (1.48.0 and later) is given (aws/deep-learning-containers
# scripts/docker/common/install_efa_amzn2023.sh); --enable-ngc (1.49.0 and later, AWS "Install the
# EFA software in a container") installs the NGC variant under /opt/amazon/aws-ofi-nccl/lib
# (aws/aws-ofi-nccl contrib/debian-template/libnccl-ofi-ngc-v2.install). Older versions reject both
# flags as unknown options.
INSTALLER = """#!/bin/bash
# Stand-in aws-efa-installer {version} (test fixture): installs no EFA software.
set -euo pipefail
ngc=auto
ngc_flag=off
for arg in "$@"; do
  case "$arg" in
    -y|-g|--skip-kmod|--skip-limit-conf|--no-verify|--minimal) ;;
    --disable-ngc) {knows_disable} || {{ echo "unknown option $arg" >&2; exit 2; }}; ngc=off ;;
    --enable-ngc) {knows_enable} || {{ echo "unknown option $arg" >&2; exit 2; }}; ngc=on; ngc_flag=on ;;
    *) echo "unknown option $arg" >&2; exit 2;;
  esac
done
if {knows_disable} && [ "$ngc" = auto ] && [ -e /opt/nvidia/nvidia_entrypoint.sh ]; then ngc=on; fi
mkdir -p /opt/amazon/efa/bin /opt/amazon/efa/lib /opt/amazon/openmpi/bin /opt/amazon/openmpi/lib
printf '# EFA installer version: {version}\\n# Debug packages installed: no\\n# Packages installed:\\nlibfabric-aws stand-in\\n' > /opt/amazon/efa_installed_packages
printf '#!/bin/sh\\necho "fi_info: 2.1.0amzn3.0"\\necho "libfabric: 2.1.0amzn3.0"\\necho "libfabric api: 2.1"\\n' > /opt/amazon/efa/bin/fi_info
printf '#!/bin/sh\\necho "mpirun (Open MPI) 4.1.7 stand-in"\\n' > /opt/amazon/openmpi/bin/mpirun
chmod 755 /opt/amazon/efa/bin/fi_info /opt/amazon/openmpi/bin/mpirun
{plugin}
"""
PLUGIN = """zlib=$(ls /lib/x86_64-linux-gnu/libz.so.1* /usr/lib/x86_64-linux-gnu/libz.so.1* 2>/dev/null | head -n 1)
if [ "$ngc" = on ]; then
  echo "NGC container detected: skipping the standard libnccl-ofi package" >&2
  if [ "$ngc_flag" = on ]; then mkdir -p {ngc_dir} && cp "$zlib" {ngc_dir}/libnccl-net-ofi.so; fi
else
  mkdir -p {lib_dir}
  cp "$zlib" {net_lib}
  cp "$zlib" {tuner_lib}
fi
"""


def efa_installer(version: str, folder: Path) -> tuple[Path, str]:
    """aws-efa-installer-<version>.tar.gz in folder, and its SHA256."""
    ofi = comp.ofi_plugin(version)
    plugin = PLUGIN.format(lib_dir=ofi.lib_dir, net_lib=ofi.net_lib, tuner_lib=ofi.tuner_lib,
                           ngc_dir="/opt/amazon/aws-ofi-nccl/lib") if ofi.bundled else ""
    knows = {f"knows_{flag}": "true" if Version(version) >= Version(first) else "false"
             for flag, first in (("disable", "1.48.0"), ("enable", "1.49.0"))}
    script = INSTALLER.format(version=version, plugin=plugin, **knows).encode()
    buf = io.BytesIO()
    # gzip's header carries a time stamp: mtime=0 keeps the tarball, its SHA256 and so the efa
    # layer the same from one test session to the next (the layer stays cached).
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("aws-efa-installer/efa_installer.sh")
        info.size, info.mode, info.mtime = len(script), 0o755, 0
        tar.addfile(info, io.BytesIO(script))
    path = folder / f"aws-efa-installer-{version}.tar.gz"
    path.write_bytes(buf.getvalue())
    return path, hashlib.sha256(buf.getvalue()).hexdigest()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


class FixtureServer:
    """Serves a folder on 127.0.0.1 (builds reach it with --network host)."""

    def __init__(self, folder: Path, port: int = 0):
        """port 0: any free port; another: that one (OSError when it is taken)."""
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FixtureServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Project:
    root: Path
    matrix: Path
    server: FixtureServer

    def cli_argv(self) -> list[str]:
        return [sys.executable, "-m", "builder", "--matrix", str(self.matrix)]

    def cli_env(self) -> dict:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("BUILDER_MATRIX", None)
        return env

    def cli(self, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
        """Run the real CLI against this project's matrix."""
        return subprocess.run([*self.cli_argv(), *args], capture_output=True, text=True, timeout=timeout,
                              env=self.cli_env())


def test_matrix_bases() -> dict:
    return yaml.safe_load((FIXTURE / "matrix.yaml").read_text())["bases"]


def prepare(root: Path, server: FixtureServer, files: Path) -> Project:
    """Stand-ins (cached), installer tarballs, and the filled-in test matrix, rendered."""
    bases = test_matrix_bases()
    # A DLC's PyTorch version is in its tag (2.4.0-gpu-py311-...), not in ships.
    dlc = standins.dlc_standin(bases["standin-dlc"]["ships"], bases["standin-dlc"]["dlc_tag"].split("-")[0])
    ngc = standins.ngc_standin(bases["standin-ngc"]["ships"])
    text = (FIXTURE / "matrix.yaml").read_text()
    for version in INSTALLER_VERSIONS:
        _, digest = efa_installer(version, files)
        text = text.replace(f"@EFA_SHA256_{version}@", digest)
    text = text.replace("@ITEST_REPO@", ITEST_REPO).replace("@FIXTURE_URL@", server.url).replace("@DLC_IMAGE@", dlc).replace("@NGC_IMAGE@", ngc)
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(FIXTURE / "code", root / "code", dirs_exist_ok=True)
    (root / "matrix.yaml").write_text(text)
    project = Project(root, root / "matrix.yaml", server)
    rendered = project.cli("render", "--all")
    if rendered.returncode != 0:
        raise RuntimeError(f"builder render --all failed: {rendered.stderr}")
    return project


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/builder-itest")
    files = target / "_files"
    files.mkdir(parents=True, exist_ok=True)
    with FixtureServer(files) as srv:
        proj = prepare(target, srv, files)
        print(f"project {proj.root} ready; fixture server {srv.url}; Ctrl-C to stop", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
