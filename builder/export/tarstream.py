"""Rewrite the engine's flattened filesystem (``docker export``) as enroot's import leaves it, as a tar stream.

``enroot import dockerd://`` (NVIDIA/enroot v4.1.2, src/docker.sh ``docker::daemon::import``)
extracts ``docker export`` with ``tar --anchored --exclude='dev/*' --exclude='.dockerenv'``,
runs ``common::fixperms`` (src/common.sh: ``chmod -R u+rX`` and, to depth 15, ``u+w`` on
directories), writes /etc/rc, /etc/rc.local, /etc/environment and /etc/fstab
(``docker::configure``), creates the WORKDIR and squashes with ``-all-root``. Here the same
happens to the tar stream itself, header by header, so nothing is unpacked to disk: the
data blocks pass through untouched and memory stays at one read buffer.

Only what a rule changes is rewritten: a header's mode, owner and checksum fields, or a pax
header without its owner records. Names and data are passed on byte for byte.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from typing import IO, Callable, Iterator, Mapping

from builder.errors import BuilderError

BLOCK = 512
_CHUNK = 1 << 20
_OWNER_RECORDS = ("uid", "gid", "uname", "gname")
FIXPERMS_DEPTH = 15  # common::fixperms: find -maxdepth 15 -type d ! -perm -u=w -exec chmod u+w


def enroot_mode(mode: int, is_dir: bool, depth: int) -> int:
    """The permission bits after ``common::fixperms``: u+r on everything, u+x on directories and
    on files some class may execute (chmod's X), u+w on directories at most 15 levels deep."""
    mode |= 0o400
    if is_dir or mode & 0o111:
        mode |= 0o100
    if is_dir and depth <= FIXPERMS_DEPTH:
        mode |= 0o200
    return mode


def _number(field_bytes: bytes) -> int:
    if field_bytes[:1] and field_bytes[0] & 0x80:  # base-256 (GNU), for values octal cannot hold
        value = int.from_bytes(field_bytes[1:], "big")
        return value - (1 << (8 * len(field_bytes) - 1)) if field_bytes[0] & 0x40 else value
    text = field_bytes.split(b"\0", 1)[0].strip(b" \0")
    return int(text, 8) if text else 0


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _checksummed(header: bytearray) -> bytes:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def _pax_records(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(key, value, raw record) of a pax extended header's data."""
    records, pos = [], 0
    while pos < len(data) and data[pos:pos + 1] not in (b"", b"\0"):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        raw = data[pos:pos + length]
        key, _, value = raw[len(data[pos:space]) + 1:-1].partition(b"=")
        records.append((key, value, raw))
        pos += length
    return records


def _header(name: bytes, kind: bytes, mode: int, size: int, mtime: int) -> bytes:
    """A ustar header for an entry builder adds (its names are short: etc/rc, the WORKDIR)."""
    if len(name) > 100:
        raise BuilderError(f"path /{name.decode(errors='replace')} is too long to add to the image")
    header = bytearray(BLOCK)
    header[0:len(name)] = name
    header[100:108] = _octal(mode, 8)
    header[108:116] = _octal(0, 8)
    header[116:124] = _octal(0, 8)
    header[124:136] = _octal(size, 12)
    header[136:148] = _octal(mtime, 12)
    header[156:157] = kind
    header[257:265] = b"ustar\x0000"
    return _checksummed(header)


@dataclass
class StreamStats:
    entries: int = 0
    bytes: int = 0
    dropped: list[str] = field(default_factory=list)  # first few entries left out (/dev content ...)
    replaced: list[str] = field(default_factory=list)  # enroot's files written over the image's
    added: list[str] = field(default_factory=list)


class EnrootStream:
    """Turns a ``docker export`` tar (read from ``source``) into enroot's root filesystem as a tar.

    files: path -> content of the files enroot writes (etc/rc ...); an image's own file at that
    path keeps its mode, as a shell redirection keeps it, and is written in its place.
    workdir: relative path of the WORKDIR, created (0755) when the stream lacks it.
    exclude(path): entries enroot leaves out. keep_owners: keep uid/gid (else all root).
    """

    def __init__(self, source: IO[bytes], *, files: Mapping[str, bytes], workdir: str,
                 exclude: Callable[[str], bool], keep_owners: bool = False, mtime: int = 0,
                 splice: bool = False):
        self.source = source
        self.splice = splice  # source is an unbuffered pipe (fileno()) the consumer splices from
        self.files = dict(files)
        self.workdir = workdir.strip("/")
        self.exclude = exclude
        self.keep_owners = keep_owners
        self.mtime = mtime
        self.stats = StreamStats()
        self._seen: dict[str, str] = {}  # directories and symlinks seen: path -> 'd' | 'l'

    # -- reading ---------------------------------------------------------------------------
    def _read(self, size: int) -> bytes:
        data = self.source.read(size)
        while len(data) < size:
            more = self.source.read(size - len(data))
            if not more:
                raise BuilderError("the image stream from the engine ended in the middle of a file; is the engine healthy?")
            data += more
        return data

    def _data(self, size: int) -> Iterator[bytes | int]:
        """The padded data blocks of an entry, in chunks; or, when ``splice`` is on, their size
        (an int): the consumer moves them from ``source.fileno()`` itself, without a copy."""
        left = _padded(size)
        if self.splice and left:
            yield left
            return
        while left:
            chunk = self.source.read(min(left, _CHUNK))
            if not chunk:
                raise BuilderError("the image stream from the engine ended in the middle of a file; is the engine healthy?")
            left -= len(chunk)
            yield chunk

    def _skip(self, size: int) -> None:
        left = _padded(size)
        while left:
            chunk = self.source.read(min(left, _CHUNK))
            if not chunk:
                raise BuilderError("the image stream from the engine ended in the middle of a file; is the engine healthy?")
            left -= len(chunk)

    # -- the stream --------------------------------------------------------------------------
    def chunks(self) -> Iterator[bytes | int]:
        """The rewritten tar, in chunks (headers alone, data in pieces of up to 1 MiB; with
        ``splice``, data as the number of bytes to move from the source)."""
        prelude: list[bytes] = []  # pax / GNU long-name blocks that belong to the next header
        pax: dict[bytes, bytes] = {}
        long_name = long_link = None
        while True:
            header = self._read(BLOCK)
            if header == b"\0" * BLOCK:
                break
            kind = header[156:157]
            size = _number(header[124:136])
            if kind in (b"x", b"L", b"K"):
                padded = self._read(_padded(size))
                data = padded[:size]
                if kind == b"x":
                    records = _pax_records(data)
                    pax.update((k, v) for k, v, _raw in records)
                    prelude.append(self._pax_block(header, padded, records))
                else:
                    value = data.rstrip(b"\0")
                    long_name, long_link = (value, long_link) if kind == b"L" else (long_name, value)
                    prelude.append(header + padded)
                continue
            if kind == b"g":
                yield header
                yield from self._data(size)
                continue
            size = int(pax.get(b"size", size))
            name = pax.get(b"path") or long_name or self._ustar_name(header)
            yield from self._entry(header, kind, size, name, prelude)
            prelude, pax, long_name, long_link = [], {}, None, None
        yield from self._tail()
        yield b"\0" * (2 * BLOCK)
        while self.source.read(_CHUNK):  # the engine's padding after the end blocks
            pass

    @staticmethod
    def _pad(data: bytes) -> bytes:
        return data + b"\0" * (_padded(len(data)) - len(data))

    @staticmethod
    def _ustar_name(header: bytes) -> bytes:
        name = header[0:100].split(b"\0", 1)[0]
        if header[257:263] == b"ustar\0":  # POSIX ustar: a prefix field (GNU uses it otherwise)
            prefix = header[345:500].split(b"\0", 1)[0]
            if prefix:
                return prefix + b"/" + name
        return name

    def _pax_block(self, header: bytes, padded: bytes, records) -> bytes:
        """A pax header as given, or without its owner records when every file becomes root's."""
        owners = [raw for k, _v, raw in records if k.decode("ascii", "replace") in _OWNER_RECORDS]
        if self.keep_owners or not owners:
            return header + padded
        data = b"".join(raw for _k, _v, raw in records if raw not in owners)
        new = bytearray(header)
        new[124:136] = _octal(len(data), 12)
        return _checksummed(new) + self._pad(data)

    def _entry(self, header: bytes, kind: bytes, size: int, raw_name: bytes, prelude: list[bytes]) -> Iterator[bytes]:
        name = raw_name.decode("utf-8", "surrogateescape")
        rel = "/".join(p for p in name.split("/") if p not in ("", "."))
        if ".." in rel.split("/"):
            raise BuilderError(f"the engine's export holds an unsafe path {name!r}; refusing to export it")
        if rel and self.exclude(rel):
            if len(self.stats.dropped) < 5:
                self.stats.dropped.append(rel)
            self._skip(size if kind not in (b"1", b"2", b"5") else 0)
            return
        mode = _number(header[100:108])
        if rel in self.files and kind in (b"0", b"\0", b"7", b"1", b"2"):
            self._skip(size if kind != b"1" and kind != b"2" else 0)
            content = self.files.pop(rel)
            keep = stat.S_IMODE(mode) if kind in (b"0", b"\0", b"7") else 0o644
            self.stats.replaced.append(rel)
            yield from self._file(rel, content, keep, header)
            return
        is_dir = kind == b"5"
        if is_dir or kind == b"2":
            self._seen[rel] = "d" if is_dir else "l"
        new = bytearray(header)
        changed = False
        if kind != b"2":  # a symlink's mode means nothing (chmod -R leaves it alone)
            perms = enroot_mode(stat.S_IMODE(mode), is_dir, rel.count("/") + 1 if rel else 0)
            if perms != stat.S_IMODE(mode):
                new[100:108] = _octal((mode & ~0o7777) | perms, 8)
                changed = True
        if not self.keep_owners and (_number(header[108:116]) or _number(header[116:124]) or header[265:329].strip(b"\0")):
            new[108:116] = _octal(0, 8)
            new[116:124] = _octal(0, 8)
            new[265:329] = b"\0" * 64
            changed = True
        self.stats.entries += 1
        yield from prelude
        yield _checksummed(new) if changed else header
        if kind in (b"0", b"\0", b"7"):
            self.stats.bytes += size
            yield from self._data(size)
        elif kind not in (b"1", b"2", b"3", b"4", b"5", b"6"):
            yield from self._data(size)  # an entry type we pass on as it is (GNU sparse ...)

    def _file(self, rel: str, content: bytes, mode: int, like: bytes | None = None) -> Iterator[bytes]:
        mtime = _number(like[136:148]) if like is not None else self.mtime
        yield _header(rel.encode("utf-8", "surrogateescape"), b"0", 0o100000 | enroot_mode(mode, False, 0),
                      len(content), mtime)
        yield self._pad(content)

    def _tail(self) -> Iterator[bytes]:
        """What the image lacked: the WORKDIR (``mkdir -p``) and enroot's files."""
        if self.workdir:
            parts = self.workdir.split("/")
            for i in range(1, len(parts) + 1):
                path = "/".join(parts[:i])
                seen = self._seen.get(path)
                if seen == "l":
                    break  # mkdir -p follows the image's symlink; the engine made the real folder already
                if seen is None:
                    self._seen[path] = "d"
                    self.stats.added.append(path)
                    yield _header(path.encode("utf-8", "surrogateescape"), b"5", 0o40755, 0, self.mtime)
        for rel, content in sorted(self.files.items()):
            self.stats.added.append(rel)
            yield from self._file(rel, content, 0o644)
