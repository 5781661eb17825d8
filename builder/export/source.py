"""Read an image out of the Docker engine as a stream of layers, in order.

``docker save`` writes its tar in directory-name order, not layer order, and its
manifest.json comes last. In the classic format (Docker < 25) each layer folder holds a
``json`` with its ``parent`` before its ``layer.tar``, so a layer whose parent was the last
one applied is applied straight from the stream; any other is spooled to disk until its
turn, so peak extra disk is the out-of-order layers. The OCI layout that ``docker save``
writes from Docker 25 on names layers by digest only and puts its index last: every layer
is spooled, and the work folder then needs about twice the image's size (``--source
container`` avoids that).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Callable, Iterable, Iterator

from builder.errors import BuilderError

_MAX_SMALL = 16 << 20  # json files kept in memory; anything bigger is spooled
_TAR_BUFFER = 1 << 20  # tarfile's stream default (10 KiB) costs a Python call per 10 KiB


class ChunkReader:
    """A read()-able file over an iterator of byte chunks (the engine's HTTP stream).

    Reads copy only what they return: the buffer is consumed by moving an offset and
    compacted once in a while, not re-sliced on every small read tarfile makes.
    """

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buffer = bytearray()
        self._pos = 0
        self.total = 0

    def _fill(self, size: int) -> None:
        while size < 0 or len(self._buffer) - self._pos < size:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                return
            if self._pos > (4 << 20):
                del self._buffer[: self._pos]
                self._pos = 0
            self._buffer += chunk

    def read(self, size: int = -1) -> bytes:
        size = -1 if size is None else size
        self._fill(size)
        end = len(self._buffer) if size < 0 else min(len(self._buffer), self._pos + size)
        data = bytes(self._buffer[self._pos:end])
        self._pos = end
        self.total += len(data)
        return data


@dataclass
class SaveResult:
    layers: list[str]  # layer paths in the save archive, bottom first
    streamed: int = 0  # how many were applied straight from the stream
    spooled: int = 0
    spool_bytes: int = 0
    json_files: dict[str, bytes] = field(default_factory=dict)


def apply_saved_image(stream: IO[bytes], spool_dir: str,
                      apply_layer: Callable[[IO[bytes], int, str], None]) -> SaveResult:
    """Apply every layer of a ``docker save`` stream through ``apply_layer(fileobj, index, name)``.

    ``index`` counts from 0 (the base layer) in the order the layers are applied; layers
    are applied exactly in manifest order, checked at the end.
    """
    os.makedirs(spool_dir, exist_ok=True)
    parent_of: dict[str, str | None] = {}
    spooled: dict[str, str] = {}  # archive name -> spool file
    applied: list[str] = []
    last_id: str | None = None
    result = SaveResult(layers=[])

    def apply_from(fileobj: IO[bytes], name: str) -> None:
        apply_layer(fileobj, len(applied), name)
        applied.append(name)

    def drain_spool() -> None:
        # Apply spooled classic layers whose parent is now the top of the stack.
        nonlocal last_id
        progressed = True
        while progressed:
            progressed = False
            for name in list(spooled):
                layer_id = _classic_layer_id(name)
                if layer_id and layer_id in parent_of and parent_of[layer_id] == last_id:
                    path = spooled.pop(name)
                    with open(path, "rb") as fileobj:
                        apply_from(fileobj, name)
                    os.unlink(path)
                    last_id = layer_id
                    progressed = True

    with tarfile.open(fileobj=stream, mode="r|", bufsize=_TAR_BUFFER) as archive:
        for member in archive:
            if not member.isfile():
                continue
            name = member.name.removeprefix("./")
            if name.endswith("/VERSION"):
                continue
            source = archive.extractfile(member)
            if source is None:
                continue
            layer_id = _classic_layer_id(name)
            if name.endswith("/json") and name.count("/") == 1:
                meta = json.loads(source.read())
                parent_of[name.split("/")[0]] = meta.get("parent") or None
                continue
            if layer_id and layer_id in parent_of and parent_of[layer_id] == last_id:
                apply_from(source, name)
                last_id = layer_id
                result.streamed += 1
                drain_spool()
                continue
            if member.size <= _MAX_SMALL and (name.endswith(".json") or "/" not in name):
                result.json_files[name] = source.read()
                continue
            path = os.path.join(spool_dir, _spool_name(name))
            with open(path, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            spooled[name] = path
            result.spooled += 1
            result.spool_bytes += member.size
            drain_spool()

    manifest = _manifest(result.json_files)
    wanted = list(manifest["Layers"])
    result.layers = wanted
    if applied != wanted[: len(applied)]:
        raise BuilderError("docker save gave the layers in an unexpected order; export with --method enroot or report this")
    # Whatever was not streamed (OCI layout, or a broken parent chain) is applied now, in
    # manifest order; a blob listed twice (identical layers) is read twice.
    uses = Counter(wanted[len(applied):])
    for name in wanted[len(applied):]:
        if name not in spooled:
            raise BuilderError(f"docker save is missing layer {name}; is the image complete in the engine?")
        with open(spooled[name], "rb") as fileobj:
            apply_from(fileobj, name)
        uses[name] -= 1
        if uses[name] == 0:
            os.unlink(spooled.pop(name))
    return result


def _manifest(json_files: dict[str, bytes]) -> dict:
    raw = json_files.get("manifest.json")
    if raw is None:
        raise BuilderError("docker save gave no manifest.json; is the Docker engine too old or the image incomplete?")
    entries = json.loads(raw)
    if len(entries) != 1:
        raise BuilderError(f"docker save gave {len(entries)} images where one was asked for")
    return entries[0]


def _classic_layer_id(name: str) -> str | None:
    """'<64 hex>/layer.tar' -> the folder name (the classic save format's layer id)."""
    folder, _, leaf = name.partition("/")
    if leaf == "layer.tar" and len(folder) == 64 and all(c in "0123456789abcdef" for c in folder):
        return folder
    return None


def _spool_name(name: str) -> str:
    return name.replace("/", "_")
