"""mksquashfs options (compression, processors) and running it.

Defaults follow enroot so a .sqsh made here behaves like one from ``enroot import``:
``ENROOT_SQUASH_OPTIONS`` when set, else enroot's own default ``-comp lzo -noD`` (lzo
because every squashfs reader has it; the data blocks stay uncompressed so it is fast).
``--compression zstd`` (level 3 unless given) is several times smaller for about the same
time, but needs squashfs-tools >= 4.4 / kernel >= 4.14 on the nodes that unsquash it.
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
from typing import Sequence

from builder.errors import BuilderError, UsageError

ENROOT_DEFAULT = ("-comp", "lzo", "-noD")
COMPRESSORS = ("gzip", "lzo", "lz4", "xz", "zstd", "none")
_LEVEL_FLAG = {"gzip": "-Xcompression-level", "zstd": "-Xcompression-level"}
_LEVEL_RANGE = {"gzip": (1, 9), "zstd": (1, 22)}
_SAFE_OPTION = re.compile(r"^[A-Za-z0-9_.,:=+-]+$")


def compression_options(spec: str) -> tuple[str, ...]:
    """'zstd' / 'zstd:19' / 'gzip:6' / 'lzo' / 'none' -> mksquashfs arguments."""
    name, _, level = spec.partition(":")
    name = name.strip().lower()
    if name not in COMPRESSORS:
        raise UsageError(f"unknown compression {spec!r}; use one of {', '.join(COMPRESSORS)} (optionally NAME:LEVEL)")
    if name == "none":
        if level:
            raise UsageError("compression 'none' takes no level")
        return ("-noI", "-noD", "-noF", "-noX")
    options = ["-comp", name]
    if name == "zstd" and not level:
        level = "3"  # zstd's own default (15) is ~4x slower for a few percent
    if level:
        if name not in _LEVEL_FLAG or not level.isdigit():
            raise UsageError(f"compression {spec!r}: only gzip and zstd take a numeric level")
        low, high = _LEVEL_RANGE[name]
        if not low <= int(level) <= high:
            raise UsageError(f"compression {spec!r}: {name} levels are {low}-{high}")
        options += [_LEVEL_FLAG[name], level]
    return tuple(options)


def squash_options(compression: str | None, extra: str | None, env: dict | None = None) -> tuple[str, ...]:
    """The options that decide the file's content: --compression, else --squash-options,
    else ENROOT_SQUASH_OPTIONS, else enroot's default."""
    env = os.environ if env is None else env
    if compression and extra:
        raise UsageError("give either --compression or --squash-options, not both")
    if compression:
        return compression_options(compression)
    text = extra if extra is not None else env.get("ENROOT_SQUASH_OPTIONS")
    if text is None or not text.strip():
        return ENROOT_DEFAULT
    words = tuple(shlex.split(text))
    for word in words:
        if not _SAFE_OPTION.match(word):
            raise UsageError(f"mksquashfs option {word!r} has characters outside [A-Za-z0-9_.,:=+-]")
    for reserved in ("-processors", "-all-root", "-noappend", "-no-progress"):
        if reserved in words:
            raise UsageError(f"{reserved} is set by builder export itself; remove it from the squash options")
    return words


def default_processors(env: dict | None = None) -> int:
    env = os.environ if env is None else env
    value = env.get("ENROOT_MAX_PROCESSORS")
    if value and value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0)) or 1


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


def mksquashfs(rootfs: str, output: str, options: Sequence[str], *, processors: int,
               all_root: bool, log_path: str) -> None:
    """Run mksquashfs; on failure raise one line naming the cause (disk full, bad option ...)."""
    command = [find_mksquashfs(), rootfs, output, "-noappend", "-no-progress",
               "-processors", str(processors), *options]
    if all_root:
        command.append("-all-root")
    with open(log_path, "wb") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              preexec_fn=_die_with_parent, check=False)
    if proc.returncode == 0:
        return
    with open(log_path, "rb") as log:
        lines = [l.strip() for l in log.read().decode("utf-8", "replace").splitlines() if l.strip()]
    text = " ".join(lines)
    if "No space left" in text or "Disk quota exceeded" in text:
        raise BuilderError(f"no space left on the device holding {os.path.dirname(output) or '.'} "
                           "while writing the squashfs; free space there or export elsewhere")
    reason = next((l for l in reversed(lines) if "FATAL" in l or "rror" in l), lines[-1] if lines else "")
    raise BuilderError(f"mksquashfs failed (exit {proc.returncode}): {reason}")
