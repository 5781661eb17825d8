"""Apply image layer tars, in order, onto a root filesystem directory (the merged view).

Each layer is an OCI/Docker layer tar: plain entries add or replace paths, ``.wh.NAME``
deletes NAME from the layers below and ``DIR/.wh..wh..opq`` hides everything the layers
below had in DIR. The result is what overlayfs (and so ``docker export``) shows.

Why not ``tar -x`` per layer: whiteouts need the lower layers' content, and a layer may hold
hostile paths (``../x``, a file under a symlink planted by an earlier layer, a hard link to
a symlink, a whiteout named ``.wh..``). So nothing here resolves a path through the host:
every directory is reached from the root's descriptor one component at a time with
``O_NOFOLLOW``, and every entry is created, changed and removed relative to its parent's
descriptor. A symlink is only ever read as a link, never followed, and a mode, owner or time
is set only after ``lstat`` shows the entry is not a symlink.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from dataclasses import dataclass, field
from typing import IO, Callable

from builder.errors import BuilderError
from builder.export import tree
from builder.export.tarstream import enroot_mode

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# AUFS bookkeeping (``.wh..wh.plnk/`` hard-link targets, ``.wh..wh.aufs``, ``.wh..wh.orph``):
# never part of the image. plnk files are kept while their layer applies, so hard links to
# them resolve, then removed, as the engine does.
AUFS_META_PREFIX = ".wh..wh."
AUFS_PLNK = ".wh..wh.plnk"
_COPY_BUFFER = 1 << 20
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40  # symlinks followed while resolving WORKDIR inside the image, as the kernel allows


def enroot_excludes(rel: str) -> bool:
    """What enroot leaves out of an image: the content of /dev (it mounts its own at start)."""
    return rel.startswith("dev/")


def normalize(name: str) -> str:
    """A tar member name as a clean path relative to the root ('' is the root itself).

    Rejects '..' components instead of resolving them: a layer that climbs out is broken
    or hostile, and either way must not be applied.
    """
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise BuilderError(f"image layer holds an unsafe path {name!r} (contains '..'); refusing to export it")
    return "/".join(parts)


def _split(rel: str) -> tuple[str, str]:
    parent, _, name = rel.rpartition("/")
    return parent, name


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    """lstat relative to a directory descriptor; None when nothing is there."""
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


@dataclass
class LayerStats:
    entries: int = 0
    bytes: int = 0
    whiteouts: int = 0
    opaque_dirs: int = 0
    skipped: list[str] = field(default_factory=list)  # entries that could not be made (e.g. devices without root)
    xattrs_dropped: int = 0  # extended attributes this user may not set (security.*, trusted.* without root)


class _Prefixed:
    """A read()-able stream with a few already-read bytes put back in front."""

    def __init__(self, head: bytes, rest: IO[bytes]):
        self._head, self._rest = head, rest

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._rest.read(size)
        if size is None or size < 0:
            data, self._head = self._head + self._rest.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        if len(data) < size:
            data += self._rest.read(size - len(data))
        return data


class RootfsBuilder:
    """Applies layers bottom-up onto ``root``; call ``finish()`` once after the last layer, and
    ``close()`` (or use it as a context manager) to release its descriptors.

    keep_owners: chown entries to the owners in the layer (needs root). Otherwise every
    entry belongs to the caller and the squashfs is made with ``-all-root``, as enroot does.

    Not as root, an entry the image makes unreadable to its owner (``/etc/shadow`` 0000 on
    RHEL-family images) could not be read by mksquashfs. ``finish()`` opens those up
    (``u+r``, and ``u+x`` for directories) and lists their real modes in ``mode_fixes``, for
    mksquashfs to restore in the squashfs.
    """

    def __init__(self, root: str | os.PathLike, *, keep_owners: bool = False,
                 exclude: Callable[[str], bool] = enroot_excludes, enroot_modes: bool = False):
        self.root = os.fspath(root)
        self.enroot_modes = enroot_modes  # modes as common::fixperms leaves them (tarstream.enroot_mode)
        self.keep_owners = keep_owners
        self.exclude = exclude
        self._is_root = os.geteuid() == 0
        if keep_owners and not self._is_root:
            raise BuilderError("keeping the image's file owners needs root; run as root or drop --keep-owners")
        self._root_fd = os.open(self.root, _PATH_FLAGS)
        # Open descriptors of the directories on the path last used, root first: layers list
        # entries folder by folder, so most lookups reuse them. Dropped from the first one a
        # removal touches.
        self._chain: list[tuple[str, int]] = []
        # Directory metadata is applied last (deepest first): a read-only directory must
        # stay writable while later layers add to it, and adding entries changes its mtime.
        self._dir_meta: dict[str, tarfile.TarInfo] = {}
        self._unreadable = False  # some entry got a mode its (non-root) owner cannot read
        self.mode_fixes: list[tuple[str, int]] = []  # (path, mode) to restore in the squashfs
        self.stats = LayerStats()

    def close(self) -> None:
        self._drop_chain(0)
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def __enter__(self) -> "RootfsBuilder":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    # -- directories -------------------------------------------------------------------------
    def _drop_chain(self, keep: int) -> None:
        while len(self._chain) > keep:
            os.close(self._chain.pop()[1])

    def _forget(self, rel: str) -> None:
        """``rel`` is being removed or replaced: no cached descriptor may stand for it."""
        parts = rel.split("/") if rel else []
        for i, part in enumerate(parts):
            if i >= len(self._chain) or self._chain[i][0] != part:
                return
        self._drop_chain(len(parts) - 1 if parts else 0)

    def _dir(self, rel: str, create: bool) -> int | None:
        """A descriptor of directory ``rel``, reached without following any symlink.

        create: make missing directories (0755) and replace a file or symlink in the way (an
        upper directory hides a lower non-directory). Otherwise None when ``rel`` is not a
        real directory. The descriptor belongs to the cache: do not close it, and look it up
        again after anything that may remove directories.
        """
        parts = rel.split("/") if rel else []
        common = 0
        while common < len(parts) and common < len(self._chain) and self._chain[common][0] == parts[common]:
            common += 1
        self._drop_chain(common)
        fd = self._chain[-1][1] if self._chain else self._root_fd
        for part in parts[common:]:
            try:
                child = os.open(part, _PATH_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    return None
                self._mkdir(fd, part)
                child = os.open(part, _PATH_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                if not create:
                    return None
                os.unlink(part, dir_fd=fd)  # a file or symlink where a directory must be
                self._mkdir(fd, part)
                child = os.open(part, _PATH_FLAGS, dir_fd=fd)
            self._chain.append((part, child))
            fd = child
        return fd

    @staticmethod
    def _mkdir(dir_fd: int, name: str) -> None:
        # A directory no layer entry describes: 0755 as the engine makes it, whatever the umask.
        os.mkdir(name, 0o755, dir_fd=dir_fd)
        os.chmod(name, 0o755, dir_fd=dir_fd)

    def _remove(self, rel: str) -> None:
        """Remove ``rel`` from the lower layers' content (nothing when its parent is not a real directory)."""
        if not rel:
            raise BuilderError("image layer would remove the root directory; refusing to export it")
        parent, name = _split(rel)
        pfd = self._dir(parent, create=False)
        if pfd is None:
            return
        self._remove_at(pfd, name, rel)

    def _remove_at(self, pfd: int, name: str, rel: str) -> None:
        st = _lstat(name, pfd)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            self._forget(rel)
            prefix = rel + "/"
            for d in [d for d in self._dir_meta if d == rel or d.startswith(prefix)]:
                del self._dir_meta[d]
        tree.remove_at(pfd, name)

    # -- layers ------------------------------------------------------------------------------
    def apply(self, fileobj: IO[bytes]) -> None:
        """Apply one layer read sequentially from ``fileobj`` (plain or compressed tar)."""
        head = fileobj.read(4)
        if head == _ZSTD_MAGIC:
            raise BuilderError("an image layer is zstd-compressed, which this exporter cannot read; "
                               "export with --source container")
        written: set[str] = set()  # paths this layer made, and their parents: its whiteouts keep them
        aufs_seen = False
        try:
            with tarfile.open(fileobj=_Prefixed(head, fileobj), mode="r|*", bufsize=_COPY_BUFFER) as layer:
                for member in layer:
                    rel = normalize(member.name)
                    if rel.startswith(AUFS_META_PREFIX) and rel != OPAQUE_MARKER:
                        aufs_seen = True
                        if rel.startswith(AUFS_PLNK + "/") and (member.isreg() or member.islnk()):
                            self._add(layer, member, rel)
                        continue
                    parent, base = _split(rel)
                    if base.startswith(WHITEOUT_PREFIX):
                        self._whiteout(parent, base, written, member.name)
                        continue
                    if not rel or self.exclude(rel):
                        if not rel and member.isdir():
                            self._dir_meta[""] = member
                        continue
                    self._add(layer, member, rel)
                    while rel not in written:
                        written.add(rel)
                        rel = _split(rel)[0]
                    self.stats.entries += 1
        except RecursionError:
            raise BuilderError("image layer nests folders too deeply to export") from None
        if aufs_seen:
            for name in self._listdir(self._root_fd):
                if name.startswith(AUFS_META_PREFIX):
                    self._remove_at(self._root_fd, name, name)

    def _whiteout(self, parent: str, base: str, written: set[str], raw: str) -> None:
        if base == OPAQUE_MARKER:
            self.stats.opaque_dirs += 1
            if self._dir(parent, create=False) is not None:
                self._clear_lower(parent, written)
            return
        name = base[len(WHITEOUT_PREFIX):]
        if name in ("", ".", ".."):
            raise BuilderError(f"image layer holds an invalid whiteout {raw!r}; refusing to export it")
        self.stats.whiteouts += 1
        target = f"{parent}/{name}" if parent else name
        if target not in written:
            self._remove(target)

    def _clear_lower(self, rel: str, written: set[str]) -> None:
        """Opaque directory: remove what the lower layers put under ``rel``, keep this layer's."""
        pfd = self._dir(rel, create=False)
        if pfd is None:
            return
        for name in self._listdir(pfd):
            child = f"{rel}/{name}" if rel else name
            if child in written:
                if self._dir(child, create=False) is not None:
                    self._clear_lower(child, written)
            else:
                self._remove(child)

    @staticmethod
    def _listdir(pfd: int) -> list[str]:
        listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
        try:
            return os.listdir(listing)
        finally:
            os.close(listing)

    def _add(self, layer: tarfile.TarFile, member: tarfile.TarInfo, rel: str) -> None:
        parent, name = _split(rel)
        pfd = self._dir(parent, create=True)
        existing = _lstat(name, pfd)
        if member.isdir():
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                os.unlink(name, dir_fd=pfd)
                existing = None
            if existing is None:
                os.mkdir(name, 0o700, dir_fd=pfd)
            self._dir_meta[rel] = member  # the upper layer's metadata wins
            return
        if existing is not None:
            self._remove_at(pfd, name, rel)
            pfd = self._dir(parent, create=True)
        if member.isreg():
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=pfd)
            with os.fdopen(fd, "wb") as out:
                source = layer.extractfile(member)
                if source is not None:
                    while chunk := source.read(_COPY_BUFFER):
                        out.write(chunk)
            self.stats.bytes += member.size
        elif member.issym():
            os.symlink(member.linkname, name, dir_fd=pfd)
        elif member.islnk():
            # Looking the target up moves the descriptor cache, which may close ``pfd``: the
            # link's own parent is looked up again (issue 12: EBADF in _set_meta).
            pfd = self._hard_link(member, rel, name)
        elif member.isfifo():
            os.mkfifo(name, 0o600, dir_fd=pfd)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            try:
                os.mknod(name, 0o600 | kind, os.makedev(member.devmajor, member.devminor), dir_fd=pfd)
            except PermissionError:
                self.stats.skipped.append(rel)
                return
        else:
            self.stats.skipped.append(rel)
            return
        self._set_meta(pfd, name, member)

    def _hard_link(self, member: tarfile.TarInfo, rel: str, name: str) -> int:
        """Link ``rel`` to the layer's target; returns the (fresh) descriptor of ``rel``'s parent."""
        target = normalize(member.linkname)
        tparent, tname = _split(target)
        tfd = self._dir(tparent, create=False) if target else None
        tst = _lstat(tname, tfd) if tfd is not None else None
        if tst is None or stat.S_ISDIR(tst.st_mode):
            raise BuilderError(f"image layer hard-links {rel!r} to {member.linkname!r}, which is not a file in the image")
        # Looking up the target may have moved the descriptor cache: look the parent up again.
        tfd_dup = os.dup(tfd)
        try:
            pfd = self._dir(_split(rel)[0], create=True)
            # linkat without AT_SYMLINK_FOLLOW: a link to a symlink is a second name of the
            # symlink itself, as the engine makes it; its header modes are then not applied.
            os.link(tname, name, src_dir_fd=tfd_dup, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd_dup)
        return pfd

    def _set_meta(self, pfd: int, name: str, member: tarfile.TarInfo) -> None:
        """Owner, mode, xattrs and mtime of the entry just made; never through a symlink."""
        st = os.lstat(name, dir_fd=pfd)
        symlink = stat.S_ISLNK(st.st_mode)
        if self.keep_owners:
            os.chown(name, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
        if not symlink:
            mode = self._mode(member, directory=False, depth=0)
            os.chmod(name, mode, dir_fd=pfd)  # after chown: chown clears set-id bits
            self._note_mode(mode, directory=False)
        self._set_xattrs(pfd, name, member)
        os.utime(name, ns=(_ns(member.mtime), _ns(member.mtime)), dir_fd=pfd, follow_symlinks=False)

    def _mode(self, member: tarfile.TarInfo, directory: bool, depth: int) -> int:
        mode = stat.S_IMODE(member.mode)
        return enroot_mode(mode, directory, depth) if self.enroot_modes else mode

    def _note_mode(self, mode: int, directory: bool) -> None:
        if not self._is_root and (mode & 0o400 == 0 or (directory and mode & 0o100 == 0)):
            self._unreadable = True

    def _set_xattrs(self, pfd: int, name: str, member: tarfile.TarInfo) -> None:
        keys = [k for k in member.pax_headers if k.startswith("SCHILY.xattr.")]
        if not keys:
            return
        # No *xattrat call in Python: name the entry through the parent's descriptor
        # (/proc/self/fd/N is that very directory) and do not follow the last component.
        path = f"/proc/self/fd/{pfd}/{name}"
        for key in keys:
            try:
                os.setxattr(path, key[len("SCHILY.xattr."):], member.pax_headers[key].encode("utf-8", "surrogateescape"),
                            follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
                    raise
                self.stats.xattrs_dropped += 1

    def finish(self) -> None:
        """Apply directory owners, modes and times, deepest first (see ``_dir_meta``)."""
        for rel in sorted(self._dir_meta, key=lambda r: r.count("/") + (1 if r else 0), reverse=True):
            member = self._dir_meta[rel]
            parent, name = _split(rel)
            pfd = self._dir(parent, create=False)
            if pfd is None:
                continue
            if not rel:
                pfd, name = self._root_fd, "."
            st = _lstat(name, pfd)
            if st is None or not stat.S_ISDIR(st.st_mode):
                continue
            if self.keep_owners:
                os.chown(name, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
            mode = self._mode(member, directory=True, depth=rel.count("/") + 1 if rel else 0)
            os.chmod(name, mode, dir_fd=pfd)
            self._note_mode(mode, directory=True)
            self._set_xattrs(pfd, name, member)
            os.utime(name, ns=(_ns(member.mtime), _ns(member.mtime)), dir_fd=pfd, follow_symlinks=False)
        self._dir_meta.clear()
        self._drop_chain(0)
        if self._unreadable:
            self._open_up_unreadable()

    def _open_up_unreadable(self) -> None:
        """Not root: give the owner read (and directory search) access where the image took it
        away, remembering the real modes for the squashfs. Top-down, so each directory is
        opened up before it is entered."""
        if stat.S_IMODE(os.lstat(".", dir_fd=self._root_fd).st_mode) & 0o500 != 0o500:
            os.chmod(".", stat.S_IMODE(os.lstat(".", dir_fd=self._root_fd).st_mode) | 0o500, dir_fd=self._root_fd)
        pending = [""]
        while pending:
            rel = pending.pop()
            pfd = self._dir(rel, create=False)
            if pfd is None:
                continue
            for name in self._listdir(pfd):
                child = f"{rel}/{name}" if rel else name
                st = os.lstat(name, dir_fd=pfd)
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISDIR(st.st_mode):
                    if mode & 0o500 != 0o500:
                        os.chmod(name, mode | 0o500, dir_fd=pfd)
                        self.mode_fixes.append((child, mode))
                    pending.append(child)
                elif stat.S_ISREG(st.st_mode) and mode & 0o400 == 0:
                    os.chmod(name, mode | 0o400, dir_fd=pfd)
                    self.mode_fixes.append((child, mode))
        self._drop_chain(0)

    def write_file(self, rel: str, data: bytes, mode: int = 0o644) -> None:
        """Write a file the exporter adds (enroot's /etc/rc ...), safely: never through a symlink.

        An existing regular file keeps its mode (like a shell ``>`` redirection); anything
        else at that path is replaced.
        """
        rel = normalize(rel)
        parent, name = _split(rel)
        pfd = self._dir(parent, create=True)
        st = _lstat(name, pfd)
        if st is not None and stat.S_ISREG(st.st_mode):
            mode = stat.S_IMODE(st.st_mode)
        if st is not None:
            self._remove_at(pfd, name, rel)
            pfd = self._dir(parent, create=True)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            os.fchmod(out.fileno(), mode)
        self._note_mode(mode, directory=False)

    def resolve(self, path: str) -> str | None:
        """``path`` with the image's symlinks resolved inside the root (an absolute link target
        starts again from the image's root, '..' stops at it), as the engine resolves WORKDIR.
        None when a component is a file or the links go round in circles."""
        todo = [p for p in path.split("/") if p not in ("", ".")]
        done: list[str] = []
        links = 0
        missing = False
        while todo:
            part = todo.pop(0)
            if part == "..":
                if done:
                    done.pop()
                continue
            if missing:
                done.append(part)
                continue
            pfd = self._dir("/".join(done), create=False)
            if pfd is None:
                return None
            try:
                st = os.lstat(part, dir_fd=pfd)
            except FileNotFoundError:
                missing = True
                done.append(part)
                continue
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_LINKS:
                    return None
                target = os.readlink(part, dir_fd=pfd)
                if target.startswith("/"):
                    done = []
                todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            elif stat.S_ISDIR(st.st_mode):
                done.append(part)
            else:
                return None
        return "/".join(done)

    def ensure_dir(self, path: str) -> None:
        """Create a directory the image lacks (the engine creates the WORKDIR), following the
        image's own symlinks inside the root and keeping what exists."""
        rel = self.resolve(path)
        if rel:
            self._dir(rel, create=True)
            self._drop_chain(0)


def _ns(mtime: float | int) -> int:
    return int(round(float(mtime) * 1_000_000_000))
