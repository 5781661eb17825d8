"""The other way out of the engine: a container's flattened filesystem (``docker export``).

``docker save`` (Docker 20.10, classic image store) stages every layer in a folder of the
engine's before it sends a byte, so on big images reading layers costs more than reading
the engine's own flattened view of a container (measured in benchmarks/export_bench.py).
``--source container`` uses that view instead: what ``enroot import dockerd://`` reads, with
the same exclusions (/dev content, /.dockerenv), made with a command so images with neither
CMD nor ENTRYPOINT work too (enroot issue 120). The container is never started; it carries a
label naming this process so one left by a killed export is removed by the next.
"""

from __future__ import annotations

import os
from typing import IO, Callable

from builder.export import atomic
from builder.export.source import ChunkReader

OWNER_LABEL = "builder.export.owner"


def engine_excludes(rel: str) -> bool:
    return rel.startswith("dev/") or rel == ".dockerenv"


def clean_stale_containers(client) -> int:
    removed = 0
    for container in client.containers.list(all=True, filters={"label": OWNER_LABEL}):
        host, _, pid = (container.labels.get(OWNER_LABEL) or "").partition(":")
        if host == atomic._HOST and pid.isdigit() and not atomic._alive(int(pid)):
            container.remove(force=True)
            removed += 1
    return removed


def apply_container_export(client, image, apply: Callable[[IO[bytes]], None]) -> None:
    clean_stale_containers(client)
    container = client.containers.create(image.id, command=["/"], network_disabled=True,
                                         labels={OWNER_LABEL: f"{atomic._HOST}:{os.getpid()}"})
    try:
        apply(ChunkReader(container.export(chunk_size=1 << 20)))
    finally:
        container.remove(force=True)
