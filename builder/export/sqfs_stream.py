"""Writing a squashfs straight from a tar stream with squashfs-tools-ng's ``tar2sqfs``.

No unpacked copy, no work folder: the stream from the engine goes through builder's filter
(tarstream.py) into tar2sqfs's stdin. mksquashfs-style options are translated where tar2sqfs
has the same setting (tar2sqfs --help and ``-X help`` of squashfs-tools-ng 1.2); options it
has no equivalent for (``-noD`` and the other ``-no*`` compression switches, ``-e``, sort
files ...) make the caller use mksquashfs instead, so an option is never silently dropped.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from typing import Sequence

from builder.errors import BuilderError
from builder.export import squash

# mksquashfs's own defaults, which tar2sqfs would otherwise replace with its own (xz): gzip
# (mksquashfs(1) "-comp": "Select compression; gzip is the default"); levels are the same.
_MKSQUASHFS_DEFAULT_COMP = "gzip"
# lz4 is left to mksquashfs: tar2sqfs 1.2.0's lz4 images mount (kernel, squashfuse) but
# unsquashfs 4.5.1, which ``enroot create`` and pyxis run, stops with "read_id_table: failed to
# read id table block" (tried here; tests/test_export_units.py keeps checking it).
_COMPRESSORS = ("gzip", "lzo", "xz", "zstd")
_EXTRA = {  # mksquashfs -X option -> tar2sqfs -X key (None: a flag)
    "-Xcompression-level": "level",
    "-Xalgorithm": "algorithm",
    "-Xdict-size": "dictsize",
    "-Xwindow-size": "window",
    "-Xhc": None,
}
_HARMLESS = {"-exit-on-error", "-no-exports", "-no-recovery", "-quiet"}  # same result either way
_SIZE = re.compile(r"^(\d+)([KkMm]?)\Z")


def find_tar2sqfs() -> str | None:
    return shutil.which("tar2sqfs")


def _block_size(text: str) -> str:
    match = _SIZE.match(text)
    if not match:
        raise BuilderError(f"block size {text!r} is not a number (with K or M)")
    return str(int(match[1]) << {"": 0, "k": 10, "m": 20}[match[2].lower()])


def tar2sqfs_args(options: Sequence[str]) -> list[str] | None:
    """tar2sqfs arguments with the same effect as these mksquashfs options, or None when one
    of them has no tar2sqfs equivalent."""
    comp = _MKSQUASHFS_DEFAULT_COMP
    extra: list[str] = []
    args: list[str] = []
    words = list(options)
    i = 0
    while i < len(words):
        word, value = words[i], words[i + 1] if i + 1 < len(words) else None
        if word == "-comp" and value in _COMPRESSORS:
            comp, i = value, i + 2
        elif word in _EXTRA and _EXTRA[word] is None:
            extra.append(word[2:])
            i += 1
        elif word in _EXTRA and value is not None:
            extra.append(f"{_EXTRA[word]}={value}")
            i += 2
        elif word == "-b" and value is not None:
            args += ["--block-size", _block_size(value)]
            i += 2
        elif word == "-no-xattrs":
            args.append("--no-xattr")
            i += 1
        elif word in _HARMLESS:
            i += 1
        else:
            return None
    args += ["--compressor", comp]
    if extra:
        args += ["--comp-extra", ",".join(extra)]
    return args


_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux; Python >= 3.10 names it)


def _widen_pipe(fd: int) -> None:
    """A 1 MiB pipe instead of 64 KiB: the engine's stream and tar2sqfs's reads then overlap
    instead of taking turns every 64 KiB (pipe(7): F_SETPIPE_SZ, at most
    /proc/sys/fs/pipe-max-size, 1 MiB by default)."""
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", _F_SETPIPE_SZ), 1 << 20)
    except OSError:
        pass  # an unprivileged user over its pipe quota keeps the default


class Tar2Sqfs:
    """A running tar2sqfs writing ``output``; ``write()`` the tar, then ``finish()``.

    Its messages go to an unnamed temporary file (nothing is left behind); a failure becomes
    one line. Used as a context manager, an exception kills it before the caller removes
    the partial output."""

    def __init__(self, output: str, args: Sequence[str], *, processors: int, binary: str | None = None):
        binary = binary or find_tar2sqfs()
        if not binary:
            raise BuilderError("tar2sqfs not found; install squashfs-tools-ng (apt-get install squashfs-tools-ng)")
        self.output = output
        self._log = tempfile.TemporaryFile()
        command = [binary, "--quiet", "--no-skip", "--num-jobs", str(processors),
                   "--defaults", "uid=0,gid=0,mode=0755", *args, output]
        self.command = command
        self._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT,
                                      preexec_fn=squash._die_with_parent, bufsize=0)
        _widen_pipe(self._proc.stdin.fileno())

    def write(self, chunk: bytes | int, source_fd: int | None = None) -> None:
        """Write ``chunk``; an int is that many bytes moved from ``source_fd`` with splice(2),
        never through Python's memory."""
        try:
            if isinstance(chunk, int):
                self._splice(source_fd, chunk)
            else:
                self._proc.stdin.write(chunk)
        except BrokenPipeError:
            self.finish()  # it stopped reading: its exit status and message say why
            raise BuilderError("tar2sqfs stopped reading the image stream") from None

    def _splice(self, source_fd: int, count: int) -> None:
        out = self._proc.stdin.fileno()
        while count:
            moved = os.splice(source_fd, out, count)
            if moved == 0:
                raise BuilderError("the image stream from the engine ended in the middle of a file; is the engine healthy?")
            count -= moved

    def finish(self) -> None:
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        code = self._proc.wait()
        self._log.seek(0)
        lines = [l.strip() for l in self._log.read().decode("utf-8", "replace").splitlines() if l.strip()]
        self._log.close()
        if code == 0:
            return
        text = " ".join(lines)
        if "No space left" in text or "Disk quota exceeded" in text or self._disk_full():
            raise BuilderError(f"no space left on the device holding {os.path.dirname(self.output) or '.'} "
                               "while writing the squashfs; free space there or export elsewhere")
        raise BuilderError(f"tar2sqfs failed (exit {code}): {lines[-1] if lines else 'no message'}")

    def _disk_full(self) -> bool:
        """tar2sqfs 1.2 reports a full disk as "I/O error": ask the filesystem instead."""
        try:
            st = os.statvfs(os.path.dirname(self.output) or ".")
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < (1 << 20)

    def __enter__(self) -> "Tar2Sqfs":
        return self

    def __exit__(self, exc_type, *_rest) -> None:
        if exc_type is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
            if not self._log.closed:
                self._log.close()
