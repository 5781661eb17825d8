"""Apply image layer tars, in order, onto a root filesystem directory (the merged view).

Each layer is an OCI/Docker layer tar: plain entries add or replace paths, ``.wh.NAME``
deletes NAME from the layers below and ``DIR/.wh..wh..opq`` hides everything the layers
below had in DIR. The result is what overlayfs (and so ``docker export``) shows.

Why not ``tar -x`` per layer: whiteouts need the lower layers' content, and a layer may hold
hostile paths (``../x``, or a file under a symlink planted by an earlier layer). Every path
here is checked and created component by component without following symlinks, so nothing
is ever written outside the root.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from typing import IO, Callable

from builder.errors import BuilderError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_COPY_BUFFER = 1 << 20


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


@dataclass
class LayerStats:
    entries: int = 0
    bytes: int = 0
    whiteouts: int = 0
    opaque_dirs: int = 0
    skipped: list[str] = field(default_factory=list)  # entries that could not be made (e.g. devices without root)


class RootfsBuilder:
    """Applies layers bottom-up onto ``root``; call ``finish()`` once after the last layer.

    keep_owners: chown entries to the owners in the layer (needs root). Otherwise every
    entry belongs to the caller and the squashfs is made with ``-all-root``, as enroot does.
    """

    def __init__(self, root: str | os.PathLike, *, keep_owners: bool = False,
                 exclude: Callable[[str], bool] = enroot_excludes):
        self.root = os.fspath(root)
        self.keep_owners = keep_owners
        self.exclude = exclude
        self._is_root = os.geteuid() == 0
        if keep_owners and not self._is_root:
            raise BuilderError("keeping the image's file owners needs root; run as root or drop --keep-owners")
        self._dirs: set[str] = {""}  # paths known to be real directories (never symlinks)
        # Directory metadata is applied last (deepest first): a read-only directory must
        # stay writable while later layers add to it, and adding entries changes its mtime.
        self._dir_meta: dict[str, tarfile.TarInfo] = {}
        self.stats = LayerStats()

    # -- paths -------------------------------------------------------------------------------
    def _abs(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def _lstat(self, rel: str) -> os.stat_result | None:
        try:
            return os.lstat(self._abs(rel))
        except FileNotFoundError:
            return None

    def _ensure_dir(self, rel: str) -> None:
        """Make ``rel`` a real directory, replacing a file or symlink there (an upper directory
        hides a lower non-directory), creating missing parents the same way."""
        if rel in self._dirs:
            return
        self._ensure_dir(os.path.dirname(rel))
        st = self._lstat(rel)
        if st is not None and stat.S_ISDIR(st.st_mode):
            self._dirs.add(rel)
            return
        if st is not None:
            os.unlink(self._abs(rel))
        os.mkdir(self._abs(rel), 0o755)
        self._dirs.add(rel)

    def _remove(self, rel: str) -> None:
        st = self._lstat(rel)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(self._abs(rel), onerror=self._rmtree_retry)
            prefix = rel + "/"
            self._dirs = {d for d in self._dirs if d != rel and not d.startswith(prefix)}
            for d in [d for d in self._dir_meta if d == rel or d.startswith(prefix)]:
                del self._dir_meta[d]
        else:
            os.unlink(self._abs(rel))

    @staticmethod
    def _rmtree_retry(func, path, _exc_info):
        # A directory without write permission (possible when not root): open it up, retry.
        os.chmod(os.path.dirname(path), 0o700)
        func(path)

    # -- layers ------------------------------------------------------------------------------
    def apply(self, fileobj: IO[bytes]) -> None:
        """Apply one layer read sequentially from ``fileobj`` (plain or compressed tar)."""
        written: set[str] = set()  # paths this layer created: an opaque marker keeps them
        with tarfile.open(fileobj=fileobj, mode="r|*", bufsize=_COPY_BUFFER) as layer:
            for member in layer:
                rel = normalize(member.name)
                base = os.path.basename(rel)
                if base.startswith(WHITEOUT_PREFIX):
                    parent = os.path.dirname(rel)
                    if base == OPAQUE_MARKER:
                        self.stats.opaque_dirs += 1
                        if parent in self._dirs or self._is_dir(parent):
                            self._clear_lower(parent, written)
                    else:
                        self.stats.whiteouts += 1
                        target = os.path.join(parent, base[len(WHITEOUT_PREFIX):]) if parent else base[len(WHITEOUT_PREFIX):]
                        if target not in written and self._parent_is_real(target):
                            self._remove(target)
                    continue
                if not rel or self.exclude(rel):
                    if not rel and member.isdir():
                        self._dir_meta[""] = member
                    continue
                self._add(layer, member, rel)
                written.add(rel)
                self.stats.entries += 1

    def _is_dir(self, rel: str) -> bool:
        st = self._lstat(rel)
        return st is not None and stat.S_ISDIR(st.st_mode) and self._parent_is_real(rel)

    def _parent_is_real(self, rel: str) -> bool:
        """True when every parent of ``rel`` is a real directory (so acting on it stays inside)."""
        parent = os.path.dirname(rel)
        while parent not in self._dirs:
            st = self._lstat(parent)
            if st is None or not stat.S_ISDIR(st.st_mode):
                return False
            parent = os.path.dirname(parent)
        return True

    def _clear_lower(self, rel: str, written: set[str]) -> None:
        """Opaque directory: remove what the lower layers put under ``rel``, keep this layer's."""
        for name in os.listdir(self._abs(rel)):
            child = f"{rel}/{name}" if rel else name
            if child in written:
                st = self._lstat(child)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    self._clear_lower(child, written)
            else:
                self._remove(child)

    def _add(self, layer: tarfile.TarFile, member: tarfile.TarInfo, rel: str) -> None:
        self._ensure_dir(os.path.dirname(rel))
        path = self._abs(rel)
        existing = self._lstat(rel)
        if member.isdir():
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                os.unlink(path)
                existing = None
            if existing is None:
                os.mkdir(path, 0o700)
            self._dirs.add(rel)
            self._dir_meta[rel] = member  # the upper layer's metadata wins
            return
        if existing is not None:
            self._remove(rel)
        if member.isreg():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                source = layer.extractfile(member)
                if source is not None:
                    shutil.copyfileobj(source, out, _COPY_BUFFER)
            self.stats.bytes += member.size
        elif member.issym():
            os.symlink(member.linkname, path)
        elif member.islnk():
            target = normalize(member.linkname)
            tst = self._lstat(target)
            if tst is None or stat.S_ISDIR(tst.st_mode) or not self._parent_is_real(target):
                raise BuilderError(f"image layer hard-links {rel!r} to {member.linkname!r}, which is not a file in the image")
            os.link(self._abs(target), path, follow_symlinks=False)
            # The link's header metadata lands on the shared inode, as the engine does it.
        elif member.isfifo():
            os.mkfifo(path, 0o600)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            try:
                os.mknod(path, 0o600 | kind, os.makedev(member.devmajor, member.devminor))
            except PermissionError:
                self.stats.skipped.append(rel)
                return
        else:
            self.stats.skipped.append(rel)
            return
        self._set_meta(path, member)

    def _set_meta(self, path: str, member: tarfile.TarInfo) -> None:
        symlink = member.issym()
        if self.keep_owners:
            os.chown(path, member.uid, member.gid, follow_symlinks=False)
        if not symlink:
            os.chmod(path, stat.S_IMODE(member.mode))  # after chown: chown clears set-id bits
        self._set_xattrs(path, member)
        os.utime(path, ns=(_ns(member.mtime), _ns(member.mtime)), follow_symlinks=False)

    def _set_xattrs(self, path: str, member: tarfile.TarInfo) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            try:
                os.setxattr(path, key[len("SCHILY.xattr."):], value.encode("utf-8", "surrogateescape"),
                            follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
                    raise

    def finish(self) -> None:
        """Apply directory owners, modes and times, deepest first (see ``_dir_meta``)."""
        for rel in sorted(self._dir_meta, key=lambda r: r.count("/") + (1 if r else 0), reverse=True):
            member = self._dir_meta[rel]
            path = self._abs(rel)
            if self.keep_owners:
                os.chown(path, member.uid, member.gid, follow_symlinks=False)
            os.chmod(path, stat.S_IMODE(member.mode))
            self._set_xattrs(path, member)
            os.utime(path, ns=(_ns(member.mtime), _ns(member.mtime)), follow_symlinks=False)
        self._dir_meta.clear()

    def write_file(self, rel: str, data: bytes, mode: int = 0o644) -> None:
        """Write a file the exporter adds (enroot's /etc/rc ...), safely: never through a symlink.

        An existing regular file keeps its mode (like a shell ``>`` redirection); anything
        else at that path is replaced.
        """
        rel = normalize(rel)
        self._ensure_dir(os.path.dirname(rel))
        st = self._lstat(rel)
        if st is not None and stat.S_ISREG(st.st_mode):
            mode = stat.S_IMODE(st.st_mode)
        if st is not None:
            self._remove(rel)
        fd = os.open(self._abs(rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(self._abs(rel), mode)

    def ensure_dir(self, rel: str) -> None:
        """Create a directory the image lacks (enroot creates the WORKDIR), keeping existing ones."""
        rel = normalize(rel)
        if rel and self._lstat(rel) is None:
            self._ensure_dir(rel)


def _ns(mtime: float | int) -> int:
    return int(round(float(mtime) * 1_000_000_000))
