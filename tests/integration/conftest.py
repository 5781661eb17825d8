"""Fixtures of the real-engine build/smoke tests: the prepared test project and its server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gitserver  # noqa: E402
import harness  # noqa: E402
import standins  # noqa: E402
from prereq import need  # noqa: E402  (skip locally, fail in CI)


def engine_ok() -> bool:
    return os.path.exists(standins.DOCKER) and subprocess.run(
        [standins.DOCKER, "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def build_project(tmp_path_factory):
    """The test project: stand-in bases (cached in the engine), fixture server, rendered images/."""
    need(engine_ok(), "no Docker engine answers through /usr/bin/docker (run scripts/setup-host.sh)")
    need(os.geteuid() == 0, "stand-in base images need root (debootstrap, chroot)")
    for tool in ("debootstrap", "chroot", "dpkg-deb"):
        need(shutil.which(tool) is not None, f"{tool} is missing (apt-get install debootstrap)")
    files = tmp_path_factory.mktemp("fixture-files")
    # The server's URL is in the efa stanza's RUN line: the same port every session keeps that
    # layer and all after it cached (a port in use falls back to a free one).
    try:
        server = harness.FixtureServer(files, gitserver.preferred_port("builder-itest-files"))
    except OSError:
        server = harness.FixtureServer(files)
    with server:
        yield harness.prepare(tmp_path_factory.mktemp("project"), server, files)
