"""Helpers for the nccl tests: fixture loading, the Docker engine, a tiny image with a stand-in binary.

Locally a missing Docker engine skips the integration tests; with CI=true it fails them.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from tests.prereq import in_ci, unavailable  # noqa: F401 (used by the tests through this module)

FIXTURES = Path(__file__).parent / "fixtures" / "nccl"
BUSYBOX = Path("/bin/busybox")


def load_fixture(name: str) -> str:
    """The quoted output of a fixture, without its '%%' header and elision lines."""
    lines = (FIXTURES / name).read_text().splitlines()
    return "\n".join(line for line in lines if not line.startswith("%%")) + "\n"


def docker() -> str:
    """A docker client that reaches a running engine, or skip/fail."""
    client = os.environ.get("BUILDER_DOCKER") or shutil.which("docker")
    if not client:
        unavailable("no docker client on PATH")
    probe = subprocess.run([client, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if probe.returncode != 0:
        unavailable(f"no Docker engine answers: {probe.stderr.strip()[:200]}")
    return client


# A stand-in for nccl-tests inside the test image: this machine has no GPU, so the real binaries
# cannot run. It prints a recorded real output and writes a recorded real NCCL log where
# NCCL_DEBUG_FILE points, so everything around the binary (docker options, log capture, parsing,
# judging) runs for real.
STAND_IN = """#!/bin/sh
# stand-in for nccl-tests: replays a recorded output (tests/fixtures/nccl), echoes its arguments
log=$(echo "$NCCL_DEBUG_FILE" | sed "s/%h/$(hostname)/; s/%p/$$/")
[ -n "$NCCL_DEBUG_FILE" ] && cp /fixture/nccl.log "$log"
echo "$0 $*" >&2
cat /fixture/results.txt
"""


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def stand_in_image(client: str, results: str, log: str) -> str:
    """A busybox image with /opt/nccl-tests/build/all_reduce_perf replaying (results, log); cached by content."""
    if not BUSYBOX.exists():
        unavailable(f"{BUSYBOX} missing (Debian package busybox-static)")
    key = hashlib.sha256((STAND_IN + results + log).encode() + BUSYBOX.read_bytes()).hexdigest()[:16]
    tag = f"builder-test/nccl-stand-in:{key}"
    if subprocess.run([client, "image", "inspect", tag], capture_output=True).returncode == 0:
        return tag
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "fixture", "opt", "opt/nccl-tests", "opt/nccl-tests/build", "etc"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        _add(tar, "bin/busybox", BUSYBOX.read_bytes(), 0o755)
        for applet in ("sh", "cat", "cp", "sed", "echo", "hostname", "ls"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        _add(tar, "opt/nccl-tests/build/all_reduce_perf", STAND_IN.encode(), 0o755)
        _add(tar, "fixture/results.txt", results.encode())
        _add(tar, "fixture/nccl.log", log.encode())
        _add(tar, "etc/hostname", b"stand-in\n")
    proc = subprocess.run(
        [client, "import", "--change", 'ENV PATH=/bin', "--change", 'CMD ["/bin/sh"]', "-", tag],
        input=buf.getvalue(), capture_output=True,
    )
    if proc.returncode != 0:
        pytest.fail(f"docker import failed: {proc.stderr.decode()[:300]}")
    return tag
