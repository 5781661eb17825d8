"""The metadata file beside an export: what it holds, and whether re-exporting is needed.

``NAME.sqsh.json`` records the image (id, repo digests, labels), the matrix entry and
component versions, the export settings and the file's size, mtime and sha256. An export
whose image id and settings match, and whose file still has the recorded size and mtime,
is up to date: CI can run the export on every run and pay only for a ``docker inspect``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

SCHEMA = 1
# Bump when the exporter's output for the same image and settings changes.
EXPORTER_REVISION = 3  # 3: enroot's modes and files as its import makes them; streamed through tar2sqfs


def sidecar_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".json")


def read(dest: Path) -> dict | None:
    try:
        data = json.loads(sidecar_path(dest).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def file_facts(path: Path) -> dict[str, int]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def up_to_date(dest: Path, image_id: str, settings: Mapping[str, Any]) -> dict | None:
    """The recorded metadata when ``dest`` already holds this image with these settings."""
    meta = read(dest)
    if not meta or meta.get("image", {}).get("id") != image_id:
        return None
    if meta.get("settings") != dict(settings):
        return None
    try:
        facts = file_facts(dest)
    except OSError:
        return None
    recorded = meta.get("file", {})
    if recorded.get("size") != facts["size"] or recorded.get("mtime_ns") != facts["mtime_ns"]:
        return None
    return meta


def render(meta: Mapping[str, Any]) -> bytes:
    return (json.dumps({"schema": SCHEMA, **meta}, indent=2, sort_keys=True) + "\n").encode()
