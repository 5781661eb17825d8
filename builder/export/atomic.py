"""Publish a file on shared storage so readers only ever see a complete one.

Every node of a cluster may open the destination at any moment, so the new file is
written under a hidden temporary name in the same folder (same filesystem, so the rename
is atomic on NFS and Lustre/FSx too), flushed, then renamed over the old one.

Exports to one destination take turns: each holds an ``flock`` on ``.NAME.lock`` beside it
from the up-to-date check to the sidecar, so a second export of the same image waits and
then finds it current, and two different images never interleave their file and sidecar.

A killed export leaves at most a temporary file, which the next export to that folder
removes. Whose it was is told by its name: host, kernel boot id, PID namespace and pid.
Under the destination lock, a temporary made under this kernel is stale (its writer would
hold the lock); without a working lock (a filesystem without flock), one from this very PID
namespace is stale when its process is gone. Two containers sharing a host name (``--network
host``) never take each other's files for dead ones. Temporaries from another kernel
(another node, whose processes cannot be checked from here) are removed after a day.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import stat
import time
from pathlib import Path
from typing import Callable

from builder.errors import BuilderError

STALE_FOREIGN_SECONDS = 24 * 3600
FILE_MODE = 0o644  # what every node must be able to read, whatever the exporting user's umask
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return re.sub(r"[^0-9a-f]", "", f.read())[:8] or "0" * 8
    except OSError:
        return "0" * 8


def _pid_namespace() -> str:
    try:
        return re.sub(r"\D", "", os.readlink("/proc/self/ns/pid")) or "0"
    except OSError:
        return "0"


_BOOT = _boot_id()
_PIDNS = _pid_namespace()
IDENTITY = f"{_HOST}.{_BOOT}-{_PIDNS}"  # who made a temporary: host, kernel boot, PID namespace


def temp_name(dest: Path, tag: str = "") -> Path:
    suffix = f".{tag}" if tag else ""
    return dest.parent / f".{dest.name}.{IDENTITY}.{os.getpid()}{suffix}.tmp"


def lock_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.lock"


def _temp_pattern(dest: Path) -> re.Pattern:
    # The boot-namespace part is absent from temporaries of older builder versions.
    return re.compile(rf"^\.{re.escape(dest.name)}\.(?P<host>[A-Za-z0-9-]+)\."
                      rf"(?:(?P<boot>[0-9a-f]{{8}})-(?P<ns>\d+)\.)?(?P<pid>\d+)(\.[a-z]+)?\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_gone(boot: str | None, ns: str | None, pid: int, *, locked: bool, age: float) -> bool:
    """Whether the process that named a temporary (or work folder, or container) is gone.

    locked: the caller holds the lock every live owner on this kernel would hold.
    """
    if boot == _BOOT and ns == _PIDNS and pid == os.getpid():
        return False
    if boot == _BOOT and (locked or ns == _PIDNS):
        return locked or not _alive(pid)
    return age > STALE_FOREIGN_SECONDS


def clean_stale(dest: Path, *names: Path, locked: bool = False, now: float | None = None) -> list[Path]:
    """Remove leftover temporaries of earlier exports to ``dest`` (and its sidecar ``names``).

    locked: this process holds ``dest``'s lock (see ``DestinationLock``).
    """
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
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                break
            if owner_gone(match["boot"], match["ns"], int(match["pid"]), locked=locked, age=age):
                try:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
                except FileNotFoundError:
                    pass
            break
    return removed


# flock errors that mean "no working flock on this filesystem" rather than a failure
# (Lustre mounted with noflock: ENOSYS/EINVAL; NFS without lockd: ENOLCK; NFS's fcntl-emulated
# flock of a read-only descriptor: EBADF).
_UNSUPPORTED = (errno.ENOLCK, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF)


def _open_lock_file(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # another user's lock file: reading it is enough
    try:
        os.fchmod(fd, 0o666)  # other users exporting here lock it too (only works on our own)
    except OSError:
        pass
    return fd


def lock_exclusive(path: Path | str, *, directory: bool = False,
                   waiting: Callable[[], None] | None = None) -> tuple[int | None, bool]:
    """Open ``path`` (a lock file, made if missing, or with ``directory`` a folder) and take an
    exclusive flock on it; closing the fd drops the lock.

    Returns ``(fd, True)`` when locked; ``(fd, False)`` where the filesystem has no working
    flock (the caller must then judge without it, and close fd); ``(None, False)`` when another
    process holds the lock and ``waiting`` is None. With ``waiting``, it is called and the lock
    is waited for. Raises OSError when ``path`` cannot be opened.
    """
    if directory:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    else:
        fd = _open_lock_file(Path(path))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is None:
                os.close(fd)
                return None, False
            waiting()
            fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return fd, False
        os.close(fd)
        raise
    except BaseException:
        os.close(fd)
        raise
    return fd, True


class DestinationLock:
    """An exclusive ``flock`` on ``.NAME.lock`` beside the destination, held for a whole export.

    ``acquire`` returns False (and the export goes on unlocked, as before) where the
    filesystem has no working flock (Lustre mounted with ``noflock``, some NFS setups) or the
    lock file cannot be opened. The lock file stays: removing it would let two exports lock
    two different files.
    """

    def __init__(self, dest: Path):
        self.path = lock_path(dest)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, progress: Callable[[str], None] = lambda _m: None) -> bool:
        dest = self.path.parent / self.path.name[1:-5]
        try:
            fd, locked = lock_exclusive(self.path, waiting=lambda: progress(
                f"waiting for another export to {dest} to finish"))
        except OSError:
            return False
        if not locked:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def os_error_line(exc: OSError, path: Path | str, doing: str, *, work_dir: bool = False) -> BuilderError:
    """One line for a filesystem failure: what, where, and what to do.

    work_dir: the failure was in the local folder the image is unpacked in (``--work-dir``).
    """
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        where = ("pass --work-dir on a disk with about the image's size free" if work_dir
                 else "free space there or export elsewhere")
        return BuilderError(f"no space left while {doing} {path}: {where}")
    if code in (errno.EACCES, errno.EPERM):
        return BuilderError(f"permission denied while {doing} {path}: export as a user who may write there")
    if code == errno.EROFS:
        return BuilderError(f"read-only filesystem while {doing} {path}: export to a writable place")
    if code == errno.ENOENT:
        return BuilderError(f"no such folder while {doing} {path}: create it first")
    return BuilderError(f"{exc.strerror or exc} while {doing} {path}")


def check_writable_folder(dest: Path, *others: Path) -> None:
    """Fail fast, before any heavy work, when the destination folder cannot take the file, or
    the existing ``dest`` (or ``others``, e.g. its sidecar) could not be replaced."""
    folder = dest.parent
    try:
        if not folder.is_dir():
            raise BuilderError(f"destination folder {folder} does not exist; create it first")
        if dest.is_dir():
            raise BuilderError(f"destination {dest} is a folder; give a file name like {dest}/NAME.sqsh")
        folder_st = os.stat(folder)
    except OSError as exc:
        raise os_error_line(exc, folder, "looking at") from None
    probe = temp_name(dest, "probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        discard(probe)  # an export holding the lock may have cleaned it up already
    except OSError as exc:
        raise os_error_line(exc, folder, "creating a file in") from None
    uid = os.geteuid()
    if folder_st.st_mode & stat.S_ISVTX and uid != 0:
        # A sticky folder (like /tmp): only a file's owner may rename over it or remove it.
        for path in (dest, *others):
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if uid not in (st.st_uid, folder_st.st_uid):
                raise BuilderError(f"cannot replace {path}: it belongs to uid {st.st_uid} and {folder} lets only "
                                   "a file's owner replace it (sticky bit); remove it as that user or export elsewhere")


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
    """Give ``temp`` its final mode, flush it and rename it over ``dest`` (atomic: readers see
    old or new, never half)."""
    try:
        os.chmod(temp, FILE_MODE)
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
