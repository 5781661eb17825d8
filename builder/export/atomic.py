"""Publish a file on shared storage so readers only ever see a complete one.

Every node of a cluster may open the destination at any moment, so the new file is
written under a hidden temporary name in the same folder (same filesystem, so the rename
is atomic on NFS and Lustre/FSx too), flushed, then renamed over the old one. A killed
export leaves at most a temporary file, which the next export to that folder removes:
at once when it was made on this host by a process that is gone, after a day when it
came from another host (whose processes cannot be checked from here).
"""

from __future__ import annotations

import errno
import os
import re
import socket
import time
from pathlib import Path

from builder.errors import BuilderError

STALE_FOREIGN_SECONDS = 24 * 3600
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def temp_name(dest: Path, tag: str = "") -> Path:
    suffix = f".{tag}" if tag else ""
    return dest.parent / f".{dest.name}.{_HOST}.{os.getpid()}{suffix}.tmp"


def _temp_pattern(dest: Path) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(dest.name)}\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)(\.[a-z]+)?\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(dest: Path, *names: Path, now: float | None = None) -> list[Path]:
    """Remove leftover temporaries of earlier exports to ``dest`` (and its sidecar ``names``)."""
    now = time.time() if now is None else now
    removed = []
    patterns = [_temp_pattern(p) for p in (dest, *names)]
    try:
        entries = list(os.scandir(dest.parent))
    except OSError:
        return removed
    for entry in entries:
        for pattern in patterns:
            match = pattern.match(entry.name)
            if not match:
                continue
            pid = int(match["pid"])
            mine = match["host"] == _HOST
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                break
            if (mine and pid != os.getpid() and not _alive(pid)) or (not mine and age > STALE_FOREIGN_SECONDS):
                try:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
                except FileNotFoundError:
                    pass
            break
    return removed


def os_error_line(exc: OSError, path: Path | str, doing: str) -> BuilderError:
    """One line for a filesystem failure: what, where, and what to do."""
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return BuilderError(f"no space left while {doing} {path}: free space there or export elsewhere "
                            "(--work-dir moves the unpacked image to another disk)")
    if code in (errno.EACCES, errno.EPERM):
        return BuilderError(f"permission denied while {doing} {path}: export as a user who may write there")
    if code == errno.EROFS:
        return BuilderError(f"read-only filesystem while {doing} {path}: export to a writable place")
    if code == errno.ENOENT:
        return BuilderError(f"no such folder while {doing} {path}: create it first")
    return BuilderError(f"{exc.strerror or exc} while {doing} {path}")


def check_writable_folder(dest: Path) -> None:
    """Fail fast, before any heavy work, when the destination folder cannot take a file."""
    folder = dest.parent
    try:
        if not folder.is_dir():
            raise BuilderError(f"destination folder {folder} does not exist; create it first")
        if dest.is_dir():
            raise BuilderError(f"destination {dest} is a folder; give a file name like {dest}/NAME.sqsh")
    except OSError as exc:
        raise os_error_line(exc, folder, "looking at") from None
    probe = temp_name(dest, "probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise os_error_line(exc, folder, "creating a file in") from None


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network filesystems refuse fsync on directories; the rename still stands
    finally:
        os.close(fd)


def publish(temp: Path, dest: Path) -> None:
    """Flush ``temp`` and rename it over ``dest`` (atomic: readers see old or new, never half)."""
    try:
        fsync_path(temp)
        os.replace(temp, dest)
    except OSError as exc:
        raise os_error_line(exc, dest, "publishing") from None
    fsync_dir(dest.parent)


def discard(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
