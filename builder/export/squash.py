"""Squashfs options (compression, processors) and running mksquashfs.

Options are mksquashfs's, as enroot's ``ENROOT_SQUASH_OPTIONS`` gives them: from
``--compression``/``--squash-options``, else ``ENROOT_SQUASH_OPTIONS`` from the environment or
enroot's configuration (enroot_conf.py), else builder's default, zstd level 1. The streamed export
translates them for tar2sqfs (sqfs_stream.py); options only mksquashfs has (enroot's
``-noD``, ``--compression lzo``) are written by mksquashfs from an unpacked copy.

A file mksquashfs cannot read must fail the export, never end up empty in the image, so
``-exit-on-error`` is always passed (squashfs-tools >= 4.5; older ones have their log
checked instead). Options builder sets itself (``-processors``, ``-no-progress``,
``-noappend``, ``-all-root``) are taken out of the given ones; a ``-processors N`` there is
used when ``--processors`` is not given.
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

from builder.errors import BuilderError, UsageError
from builder.export import enroot_conf

ENROOT_DEFAULT = ("-comp", "lzo", "-noD", "-exit-on-error")  # enroot.in: config::export ENROOT_SQUASH_OPTIONS
# builder's own default when neither the environment nor enroot's configuration sets
# ENROOT_SQUASH_OPTIONS: zstd level 1, streamed through tar2sqfs. Measured here on a 1.16 GB
# image (docs/export.md): tar2sqfs zstd:1 3.9 s of CPU and 429 MB, zstd:3 6.3-8.5 s and 412 MB,
# enroot's lzo -noD 1124 MB. zstd needs squashfs-tools >= 4.4 on the nodes (its CHANGES).
DEFAULT_COMPRESSION = "zstd:1"
EXIT_ON_ERROR = "-exit-on-error"
# Set by builder itself: dropped from given options (-processors N is used as the default count).
_OWN_FLAGS = ("-no-progress", "-noappend", "-all-root", "-progress")
COMPRESSORS = ("gzip", "lzo", "lz4", "xz", "zstd", "none")
_LEVEL_FLAG = {"gzip": "-Xcompression-level", "zstd": "-Xcompression-level"}
_LEVEL_RANGE = {"gzip": (1, 9), "zstd": (1, 22)}
_SAFE_OPTION = re.compile(r"^[A-Za-z0-9_.,:=+-]+\Z")


def compression_options(spec: str) -> tuple[str, ...]:
    """'zstd' / 'zstd:19' / 'gzip:6' / 'lz4' / 'lzo' / 'none' -> mksquashfs arguments.

    lzo means what enroot means by it: its default ``-comp lzo -noD`` (data blocks stored
    uncompressed), which only mksquashfs can write, from an unpacked copy: 1.2-1.6x enroot's time
    here (benchmarks/export_bench.py --all), the same size."""
    name, _, level = spec.partition(":")
    name = name.strip().lower()
    if name not in COMPRESSORS:
        raise UsageError(f"unknown compression {spec!r}; use one of {', '.join(COMPRESSORS)} (optionally NAME:LEVEL)")
    if name == "none":
        if level:
            raise UsageError("compression 'none' takes no level")
        return ("-noI", "-noD", "-noF", "-noX")
    if name == "lzo" and not level:
        return ENROOT_DEFAULT[:3]
    options = ["-comp", name]
    if name == "zstd" and not level:
        level = "3"  # zstd's own default (15) is ~5x slower for a few percent
    if level:
        if name not in _LEVEL_FLAG or not level.isdigit():
            raise UsageError(f"compression {spec!r}: only gzip and zstd take a numeric level")
        low, high = _LEVEL_RANGE[name]
        if not low <= int(level) <= high:
            raise UsageError(f"compression {spec!r}: {name} levels are {low}-{high}")
        options += [_LEVEL_FLAG[name], level]
    return tuple(options)


@dataclass(frozen=True)
class SquashChoice:
    options: tuple[str, ...]  # what decides the file's content (recorded in the sidecar)
    processors: int  # compressor threads
    origin: str  # where the options came from: an option, "$ENROOT_SQUASH_OPTIONS", "FILE:LINE", a default
    processors_origin: str = ""

    def as_dict(self) -> dict:
        return {"options": list(self.options), "origin": self.origin, "processors": self.processors,
                "processors_origin": self.processors_origin}


SQUASH_OPTIONS_KEY = "ENROOT_SQUASH_OPTIONS"
MAX_PROCESSORS_KEY = "ENROOT_MAX_PROCESSORS"


def choose(compression: str | None, extra: str | None, processors: int | None = None,
           env: Mapping[str, str] | None = None, conf: str | None = None) -> SquashChoice:
    """Everything the squashfs is made with. Options: --compression, else --squash-options, else
    ENROOT_SQUASH_OPTIONS (environment, then enroot's configuration, as enroot reads it), else
    builder's default (zstd level 1). Threads: --processors, else a -processors N in those options, else
    ENROOT_MAX_PROCESSORS (environment, then configuration), else all CPUs."""
    settings = enroot_conf.EnrootConfig(env, conf)
    if compression and extra:
        raise UsageError("give either --compression or --squash-options, not both")
    found = None
    if compression:
        options, origin = compression_options(compression), "--compression"
    elif extra is not None and extra.strip():
        options, found = _parse_options(extra, "--squash-options")
        origin = "--squash-options"
    else:
        value = settings.get(SQUASH_OPTIONS_KEY)
        if value is None:
            options, origin = compression_options(DEFAULT_COMPRESSION), "builder's default (zstd level 1)"
        else:
            options, found = _parse_options(value.text, value.where)
            origin = value.where
    if processors:
        return SquashChoice(options, processors, origin, "--processors")
    if found:
        return SquashChoice(options, found, origin, f"-processors in {origin}")
    count, where = _default_processors(settings)
    return SquashChoice(options, count, origin, where)


def _parse_options(text: str, origin: str) -> tuple[tuple[str, ...], int | None]:
    """Given mksquashfs options without the ones builder sets itself, and their -processors N."""
    try:
        words = shlex.split(text)
    except ValueError:
        raise UsageError(f"{origin}: mksquashfs options have unbalanced quotes: {text!r}") from None
    for word in words:
        if not _SAFE_OPTION.match(word):
            raise UsageError(f"{origin}: mksquashfs option {word!r} has characters outside [A-Za-z0-9_.,:=+-]")
    options: list[str] = []
    processors = None
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-processors":
            value = words[i + 1] if i + 1 < len(words) else ""
            if not value.isdigit() or int(value) < 1:
                raise UsageError(f"{origin}: -processors needs a positive number, got {value!r}")
            processors = int(value)
            i += 2
            continue
        if word not in _OWN_FLAGS:
            options.append(word)
        i += 1
    return tuple(options), processors


def _default_processors(settings: enroot_conf.EnrootConfig) -> tuple[int, str]:
    value = settings.get(MAX_PROCESSORS_KEY)
    # "0 means unlimited" (enroot.conf.in); mksquashfs takes that as all CPUs too.
    if value is not None:
        if not value.text.isdigit():
            raise UsageError(f"{value.where}: {MAX_PROCESSORS_KEY} must be a number, got {value.text!r}")
        if int(value.text) > 0:
            return int(value.text), value.where
    return len(os.sched_getaffinity(0)) or 1, "all CPUs"


def default_processors(env: Mapping[str, str] | None = None, conf: str | None = None) -> int:
    """ENROOT_MAX_PROCESSORS (environment, then enroot's configuration), else all CPUs."""
    return _default_processors(enroot_conf.EnrootConfig(env, conf))[0]


def find_mksquashfs() -> str:
    path = shutil.which("mksquashfs")
    if not path:
        raise BuilderError("mksquashfs not found; install squashfs-tools (apt-get install squashfs-tools)")
    return path


def _die_with_parent() -> None:
    # Linux prctl(PR_SET_PDEATHSIG, SIGKILL): if builder is killed, mksquashfs stops too
    # instead of writing on into a temporary file nobody will rename.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


@lru_cache(maxsize=None)
def mksquashfs_version(path: str) -> tuple[int, ...]:
    """(4, 5, 1) from 'mksquashfs version 4.5.1 (2022/03/17)'; (0,) when it cannot tell."""
    try:
        out = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return (0,)
    match = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", out)
    return tuple(int(g) for g in match.groups() if g is not None) if match else (0,)


def pseudo_line(path: str, mode: int) -> str:
    """A pseudo-file definition giving ``path`` (relative to the squashfs root) ``mode``, owned by root."""
    if "\n" in path or "\r" in path:
        raise BuilderError(f"/{path!r} is unreadable to this user and its name cannot be passed to mksquashfs; "
                           "export as root")
    quoted = path.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" m {mode:o} 0 0\n'


_READ_FAILURE = re.compile(r"^(?:FATAL ERROR:?\s*)?(Failed to read file .*|Could not open .*|Cannot stat .*)$")


def mksquashfs(rootfs: str, output: str, options: Sequence[str], *, processors: int,
               all_root: bool, log_path: str, mode_fixes: Sequence[tuple[str, int]] = ()) -> None:
    """Run mksquashfs; on failure raise one line naming the cause (disk full, bad option, unreadable file ...).

    mode_fixes: (path, mode) of entries opened up so a non-root user could read them; the
    squashfs gets their real modes through a pseudo file (``m`` definitions, squashfs-tools >= 4.4).
    """
    binary = find_mksquashfs()
    version = mksquashfs_version(binary)
    options = [o for o in options if o != EXIT_ON_ERROR]
    if version >= (4, 5) or version == (0,):
        options.append(EXIT_ON_ERROR)
    command = [binary, rootfs, output, "-noappend", "-no-progress", "-processors", str(processors), *options]
    if all_root:
        command.append("-all-root")
    if mode_fixes:
        if version < (4, 4):
            raise BuilderError(f"/{mode_fixes[0][0]} is unreadable to this user (mode {mode_fixes[0][1]:04o}) and "
                               f"mksquashfs {'.'.join(map(str, version))} cannot restore its mode; export as root "
                               "or install squashfs-tools >= 4.4")
        pseudo = os.path.join(os.path.dirname(log_path), "modes.pseudo")
        with open(pseudo, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.writelines(pseudo_line(path, mode) for path, mode in mode_fixes)
        command += ["-pf", pseudo]
    with open(log_path, "wb") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              preexec_fn=_die_with_parent, check=False)
    with open(log_path, "rb") as log:
        lines = [l.strip() for l in log.read().decode("utf-8", "replace").splitlines() if l.strip()]
    unreadable = next((m[1] for m in map(_READ_FAILURE.match, lines) if m), None)
    if proc.returncode == 0 and unreadable is None:
        return
    text = " ".join(lines)
    if "No space left" in text or "Disk quota exceeded" in text:
        raise BuilderError(f"no space left on the device holding {os.path.dirname(output) or '.'} "
                           "while writing the squashfs; free space there or export elsewhere")
    if unreadable is not None:
        raise BuilderError(f"mksquashfs could not read the unpacked image ({unreadable.replace(rootfs, '')}); "
                           "nothing was published")
    reason = next((l for l in reversed(lines) if "FATAL" in l or "rror" in l), lines[-1] if lines else "")
    raise BuilderError(f"mksquashfs failed (exit {proc.returncode}): {reason}")
