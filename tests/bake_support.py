"""Helpers for the bake, matrix, workflow and lock tests: skip-or-fail, a small project on disk,
and real tools found or fetched once into a cache (buildx from Debian, actionlint)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.prereq import in_ci, need  # noqa: F401 (used by the tests through this module)

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("BUILDER_TEST_CACHE", Path.home() / ".cache" / "builder-tests"))

# Two flavors, a dotted image name (bake target names cannot hold dots) and an explicit base
# image, so the lock tests can point it at a local registry.
SMALL_MATRIX = """\
schema: 1
defaults:
  cuda_archs: ["80", "90"]
bases:
  ngc:
    image: %(ngc_image)s
    ships: {pytorch: "2.5.0a0", cuda: "12.6.1", nccl: "2.22.3", python: "3.10", os: ubuntu22.04}
  dlc-sm:
    dlc_tag: 2.4.0-gpu-py311-cu124-ubuntu22.04-sagemaker%(dlc_image)s
    ships: {cuda: "12.4.1", nccl: "2.22.3", efa: "1.34.0"}
images:
  - name: nv-efa1.35
    flavor: nvidia
    description: NGC with EFA 1.35
    base: ngc
    repository: team/nvidia
    tags: ["{name}", "efa{efa}"]
    components: {efa: "1.35.0", aws_ofi_nccl: "1.12.1", nccl_tests: "2.13.10"}
  - name: dl
    flavor: dlc
    base: dlc-sm
    region: us-west-2
    pip: ["torchmetrics==1.4.0"]
"""


def write_project(folder: Path, ngc_image: str = "nvcr.io/nvidia/pytorch:24.09-py3", dlc_image: str | None = None) -> Path:
    """A project folder with SMALL_MATRIX; dlc_image replaces the DLC base's ECR URI."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "matrix.yaml"
    dlc = f"\n    image: {dlc_image}" if dlc_image else ""
    path.write_text(SMALL_MATRIX % {"ngc_image": ngc_image, "dlc_image": dlc}, encoding="utf-8")
    return path


def run_builder(*args: str, env: dict | None = None, cwd: Path | None = None, input: str | None = None):
    """The real CLI in a subprocess (exit codes and stderr as users see them)."""
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, input=input, timeout=300)


# --- docker buildx ---------------------------------------------------------------------------------

TRIXIE_SOURCES = "deb http://deb.debian.org/debian trixie main\n"


def buildx_config() -> Path | None:
    """A DOCKER_CONFIG folder whose cli-plugins/ has docker-buildx, or None.

    Bookworm has no buildx package; Debian trixie's docker-buildx (a Go binary) runs as a CLI
    plugin of bookworm's docker 20.10 client. It is fetched once with apt-get download into the
    test cache (the .deb is only unpacked there, never installed)."""
    docker = shutil.which("docker", path="/usr/bin") or shutil.which("docker")
    if docker is None:
        return None
    folder = CACHE / "docker-config"
    plugin = folder / "cli-plugins" / "docker-buildx"
    if not plugin.exists():
        _fetch_buildx(plugin)
    if not plugin.exists():
        return None
    ok = subprocess.run([docker, "buildx", "version"], env={**os.environ, "DOCKER_CONFIG": str(folder)},
                        capture_output=True, text=True, timeout=60)
    return folder if ok.returncode == 0 else None


def _fetch_buildx(plugin: Path) -> None:
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        return
    work = CACHE / "trixie"
    (work / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (work / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (work / "sources.list").write_text(TRIXIE_SOURCES)
    opts = ["-o", f"Dir::Etc::sourcelist={work / 'sources.list'}", "-o", "Dir::Etc::sourceparts=/dev/null",
            "-o", f"Dir::State::Lists={work / 'lists'}", "-o", f"Dir::Cache={work / 'cache'}",
            "-o", "APT::Sandbox::User=root"]
    try:
        subprocess.run(["apt-get", *opts, "update"], cwd=work, capture_output=True, timeout=300, check=True)
        subprocess.run(["apt-get", *opts, "download", "docker-buildx"], cwd=work, capture_output=True,
                       timeout=300, check=True)
        deb = next(work.glob("docker-buildx_*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), str(work / "x")], capture_output=True, timeout=120, check=True)
    except (subprocess.SubprocessError, StopIteration, OSError):
        return
    binary = work / "x" / "usr" / "libexec" / "docker" / "cli-plugins" / "docker-buildx"
    if binary.is_file():
        plugin.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(binary, plugin)
        plugin.chmod(0o755)


def dedent(text: str) -> str:
    return textwrap.dedent(text)
