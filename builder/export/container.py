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
import time
from typing import IO, Iterator

from builder.export import atomic
from builder.export.source import ChunkReader

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
        yield ChunkReader(container.export(chunk_size=1 << 20))
    finally:
        container.remove(force=True)
