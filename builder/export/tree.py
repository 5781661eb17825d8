"""Removing a directory tree we made, without ever following a symlink out of it.

The unpacked image holds the image's own modes: read-only directories (0555 /usr/bin on
RHEL-family images) and, for a non-root exporter, directories it may not even list. A plain
``shutil.rmtree`` cannot empty those, so each directory is opened up (``u+rwx``, we own it)
before its entries go. Everything is done relative to open directory descriptors: a symlink
is removed as a link, never followed.
"""

from __future__ import annotations

import errno
import os
import stat

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(name: str, dir_fd: int | None) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        # Not listable (mode 0000 and not root): it is ours, so open it up and try again.
        os.chmod(name, 0o700, dir_fd=dir_fd, follow_symlinks=True)  # a directory: lstat-checked by the caller
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def remove_at(dir_fd: int | None, name: str) -> None:
    """Remove ``name`` (relative to ``dir_fd``; a path when ``dir_fd`` is None), whatever it is."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    # Iterative, so a hostile layer's very deep tree cannot exhaust Python's recursion limit.
    # Each frame: (open directory, entries still to remove, its name in the frame below).
    stack: list[tuple[int, list[str], str]] = [(_open_dir(name, dir_fd), [], name)]
    try:
        stack[-1][1].extend(_entries(stack[-1][0]))
        while stack:
            fd, names, own_name = stack[-1]
            if not names:
                stack.pop()
                os.close(fd)
                os.rmdir(own_name, dir_fd=stack[-1][0] if stack else dir_fd)
                continue
            child = names.pop()
            try:
                cst = os.lstat(child, dir_fd=fd)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(cst.st_mode):
                stack.append((_open_dir(child, fd), [], child))
                stack[-1][1].extend(_entries(stack[-1][0]))
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        for fd, _names, _name in stack:
            os.close(fd)


def _entries(fd: int) -> list[str]:
    if stat.S_IMODE(os.fstat(fd).st_mode) & 0o700 != 0o700:
        os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | 0o700)  # so its entries can be unlinked
    return os.listdir(fd)


def remove_tree(path: str | os.PathLike) -> None:
    """Remove ``path`` and everything under it; a missing path is fine."""
    try:
        remove_at(None, os.fspath(path))
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
