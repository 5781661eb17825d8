"""The other way out of the engine: a container's flattened filesystem (``docker export``).

``docker save`` (Docker 20.10, classic image store) stages every layer in a folder of the
engine's before it sends a byte, so on big images reading layers costs more than reading
the engine's own flattened view of a container (measured in benchmarks/export_bench.py).
``--source container`` (the default) uses that view instead: what ``enroot import dockerd://``
reads (src/docker.sh docker::daemon::import: ``docker create`` then ``docker export``), with the
engine's own /etc/hostname, /etc/hosts, /etc/resolv.conf and /etc/mtab as enroot gets them,
and the same exclusions (/dev content, /.dockerenv). The container is made with a command so
images with neither CMD nor ENTRYPOINT work too (enroot's ``docker create IMAGE`` fails on those). The container is never started; it carries a
label naming this process so one left by a killed export is removed by the next.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import shutil
import subprocess
import time
from typing import IO, Iterator

from builder.errors import BuilderError
from builder.export import atomic
from builder.export.source import ChunkReader
from builder.export.sqfs_stream import _widen_pipe
from builder.export.squash import _die_with_parent

OWNER_LABEL = "builder.export.owner"


def engine_excludes(rel: str) -> bool:
    return rel.startswith("dev/") or rel == ".dockerenv"


def _age(container) -> float:
    created = str(container.attrs.get("Created") or "")
    try:  # '2024-05-01T10:00:00.123456789Z': at most microseconds for fromisoformat
        stamp = _dt.datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", created).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return time.time() - stamp.timestamp()


def clean_stale_containers(client) -> int:
    """Remove containers of exports that are gone (label: host.boot-pidns:pid, see atomic.owner_gone)."""
    removed = 0
    for container in client.containers.list(all=True, filters={"label": OWNER_LABEL}):
        identity, _, pid = (container.labels.get(OWNER_LABEL) or "").rpartition(":")
        match = re.match(r"^[A-Za-z0-9-]+\.(?P<boot>[0-9a-f]{8})-(?P<ns>\d+)$", identity)
        if not pid.isdigit():
            continue
        if atomic.owner_gone(match["boot"] if match else None, match["ns"] if match else None, int(pid),
                             locked=False, age=_age(container)):
            container.remove(force=True)
            removed += 1
    return removed


@contextlib.contextmanager
def exported(client, image) -> Iterator[IO[bytes]]:
    """The flattened filesystem of a new (never started) container of ``image``, as a tar
    stream; the container is removed afterwards, whatever happens."""
    clean_stale_containers(client)
    container = client.containers.create(image.id, command=["/"], network_disabled=True,
                                         labels={OWNER_LABEL: f"{atomic.IDENTITY}:{os.getpid()}"})
    try:
        cli = shutil.which("docker")
        if cli is None:
            yield ChunkReader(container.export(chunk_size=1 << 20))
        else:
            with _cli_export(cli, container.id) as reader:
                yield reader
    finally:
        container.remove(force=True)


class _PipeReader:
    """read(n) over a pipe: up to n bytes, b"" at the end."""

    def __init__(self, fd: int):
        self.fd = fd

    def read(self, size: int = -1) -> bytes:
        return os.read(self.fd, size if size and size > 0 else 1 << 20)

    def fileno(self) -> int:
        return self.fd


@contextlib.contextmanager
def _cli_export(cli: str, container_id: str) -> Iterator[IO[bytes]]:
    """``docker export`` through the docker client, which reads the engine's chunked HTTP
    stream in Go: measured here, the Python SDK's read of the same stream took up to twice
    the wall time (many small reads under a loaded CPU). Its errors become one line."""
    # The engine the Python client talks to (docker.from_env: $DOCKER_HOST, else the local
    # socket), never a docker CLI context pointing elsewhere.
    host = [] if os.environ.get("DOCKER_HOST") else ["--host", "unix:///var/run/docker.sock"]
    proc = subprocess.Popen([cli, *host, "export", container_id], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    try:
        _widen_pipe(proc.stdout.fileno())
        yield _PipeReader(proc.stdout.fileno())
        proc.stdout.close()
        code = proc.wait()
        if code != 0:
            lines = [l for l in proc.stderr.read().decode("utf-8", "replace").splitlines() if l.strip()]
            raise BuilderError(f"docker export failed (exit {code}): {lines[-1] if lines else 'no message'}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            stream.close()
