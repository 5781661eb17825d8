"""builder's own .sqsh writer (``--method native``): three ways, one result.

- streamed (the default: ``--source container`` with options tar2sqfs can write): the
  engine's ``docker export`` of a never-started container, rewritten on the fly as enroot's
  import leaves it (tarstream.py), straight into tar2sqfs. Nothing is unpacked, no work folder.
- unpacked (``--source container`` with options only mksquashfs has, such as enroot's own
  ``-comp lzo -noD``): the same rewritten stream applied to a work folder, then mksquashfs.
- layers (``--source layers``): ``docker save``, each layer applied with its whiteouts
  (layers.py), enroot's files and modes added, then mksquashfs. The image's own files only:
  no engine-made /etc/mtab, and the build host's /etc/hostname and /etc/resolv.conf.
"""

from __future__ import annotations

import os
import re
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from builder.errors import BuilderError
from builder.export import atomic, container, enroot_config, source, sqfs_stream, squash, tree
from builder.export.layers import RootfsBuilder, enroot_excludes
from builder.export.tarstream import EnrootStream

# Test hook: stop (SIGSTOP) at these stages so a test can kill the export there, deterministically.
PAUSE_ENV = "BUILDER_EXPORT_TEST_PAUSE_AT"


def pause(stage: str) -> None:
    if stage in os.environ.get(PAUSE_ENV, "").split(","):
        os.kill(os.getpid(), signal.SIGSTOP)


def writer_for(request) -> tuple[str, list[str] | None]:
    """("tar2sqfs", its arguments) when the export can be streamed, else ("mksquashfs", None)."""
    if request.source != "container":
        return "mksquashfs", None
    args = sqfs_stream.tar2sqfs_args(request.squash_options)
    if args is None or not sqfs_stream.find_tar2sqfs():
        return "mksquashfs", None
    return "tar2sqfs", args


def _enroot_stream(reader, image, request, splice: bool = False) -> EnrootStream:
    config = image.attrs.get("Config") or {}
    files = {rel: text.encode() for rel, text in enroot_config.render(config).items()}
    return EnrootStream(reader, files=files, workdir=enroot_config.workdir(config), exclude=container.engine_excludes,
                        keep_owners=request.keep_owners, mtime=int(time.time()), splice=splice)


def write_sqsh(client, image, request, temp: Path, progress) -> dict[str, Any]:
    writer, args = writer_for(request)
    if writer == "tar2sqfs":
        return _streamed(client, image, request, temp, progress, args)
    if request.source == "container":
        why = "tar2sqfs is not installed" if not sqfs_stream.find_tar2sqfs() else \
            f"tar2sqfs has no equivalent of '{' '.join(request.squash_options)}'"
        progress(f"note: {why}: unpacking the image for mksquashfs (slower, needs --work-dir space)")
    return _unpacked(client, image, request, temp, progress)


def _streamed(client, image, request, temp: Path, progress, args: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    progress(f"streaming docker export into tar2sqfs {' '.join(args)} with {request.processors} jobs")
    with container.exported(client, image) as reader:
        # Data moves from the docker client's pipe to tar2sqfs's without a copy (os.splice),
        # where the reader is such a pipe; headers go through the filter.
        fd = reader.fileno() if hasattr(reader, "fileno") and hasattr(os, "splice") else None
        stream = _enroot_stream(reader, image, request, splice=fd is not None)
        with sqfs_stream.Tar2Sqfs(str(temp), args, processors=request.processors) as out:
            for chunk in stream.chunks():
                out.write(chunk, fd)
            pause("stream")
            out.finish()
    return {"writer": "tar2sqfs", "stream_seconds": round(time.monotonic() - started, 2),
            "unpacked_bytes": stream.stats.bytes, "entries": stream.stats.entries,
            "added": stream.stats.added, "replaced": stream.stats.replaced}


WORKDIR_PREFIX = "builder-export-"
_WORKDIR = re.compile(rf"^{WORKDIR_PREFIX}[A-Za-z0-9-]+\.(?P<boot>[0-9a-f]{{8}})-(?P<ns>\d+)\.(?P<pid>\d+)-")
_OLD_WORKDIR = re.compile(rf"^{WORKDIR_PREFIX}[A-Za-z0-9-]+-(?P<pid>\d+)-")


def clean_stale_workdirs(parent: Path) -> None:
    """Remove unpacked images of exports that are gone. A live export holds an flock on its
    work folder, so one whose lock can be taken, made under this kernel, is stale. Where the
    filesystem has no flock, taking it proves nothing: the name (pid) decides, as for temporaries."""
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(WORKDIR_PREFIX)]
    except OSError:
        return
    now = time.time()
    for entry in entries:
        match = _WORKDIR.match(entry.name) or _OLD_WORKDIR.match(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            fd, locked = atomic.lock_exclusive(entry.path, directory=True)
            if fd is None:
                continue  # its export is running
            try:
                groups = match.groupdict()
                age = now - entry.stat(follow_symlinks=False).st_mtime
                if atomic.owner_gone(groups.get("boot"), groups.get("ns"), int(match["pid"]), locked=locked, age=age):
                    tree.remove_tree(entry.path)
            finally:
                os.close(fd)
        except OSError:
            continue  # another user's, or just removed: not ours to worry about


def make_workdir(parent: Path) -> tuple[Path, int]:
    """A new work folder in ``parent`` and an fd holding its flock (where the filesystem has flock).

    Made under a dot name the clean-up ignores, locked, then given its real name: another
    export's clean-up never sees it unlocked."""
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{WORKDIR_PREFIX}", dir=parent))
    except OSError as exc:
        raise atomic.os_error_line(exc, parent, "creating a work folder in", work_dir=True) from None
    fd = None
    try:
        # Nobody else knows the dot name, so waiting (were it ever held) ends at once.
        fd, _locked = atomic.lock_exclusive(staging, directory=True, waiting=lambda: None)
        work = parent / f"{WORKDIR_PREFIX}{atomic.IDENTITY}.{os.getpid()}-{staging.name.rpartition('-')[2]}"
        os.rename(staging, work)
    except BaseException as exc:
        if fd is not None:
            os.close(fd)
        try:
            tree.remove_tree(staging)  # the clean-up of later exports ignores dot names
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise atomic.os_error_line(exc, parent, "creating a work folder in", work_dir=True) from None
        raise
    return work, fd


def _unpacked(client, image, request, temp: Path, progress) -> dict[str, Any]:
    parent = Path(request.work_dir or tempfile.gettempdir())
    if not parent.is_dir():
        raise BuilderError(f"work folder {parent} does not exist; create it or pass another --work-dir")
    clean_stale_workdirs(parent)
    work, work_lock = make_workdir(parent)
    try:
        rootfs = work / "rootfs"
        rootfs.mkdir()
        unpack_started = time.monotonic()
        with RootfsBuilder(rootfs, keep_owners=request.keep_owners, exclude=lambda _rel: False,
                           enroot_modes=True) as builder:
            try:
                saved = _fill(client, image, request, builder, work, progress)
            except OSError as exc:
                raise atomic.os_error_line(exc, work, "unpacking the image into", work_dir=True) from None
        if builder.stats.skipped:
            progress(f"warning: {len(builder.stats.skipped)} entries could not be created "
                     f"(device nodes need root), first: /{builder.stats.skipped[0]}")
        if builder.stats.xattrs_dropped:
            progress(f"warning: {builder.stats.xattrs_dropped} extended attributes (e.g. file capabilities) "
                     "could not be set as this user and are not in the image; export as root to keep them")
        pause("squash")
        squash_started = time.monotonic()
        progress(f"mksquashfs {' '.join(request.squash_options)} with {request.processors} processors")
        squash.mksquashfs(str(rootfs), str(temp), request.squash_options, processors=request.processors,
                          all_root=not request.keep_owners, log_path=str(work / "mksquashfs.log"),
                          mode_fixes=builder.mode_fixes)
        return {
            "writer": "mksquashfs",
            "unpack_seconds": round(squash_started - unpack_started, 2),
            "squash_seconds": round(time.monotonic() - squash_started, 2),
            "unpacked_bytes": builder.stats.bytes,
            "layers": len(saved.layers), "layers_streamed": saved.streamed, "layers_spooled": saved.spooled,
            "entries": builder.stats.entries, "whiteouts": builder.stats.whiteouts,
            "opaque_dirs": builder.stats.opaque_dirs,
        }
    finally:
        try:
            tree.remove_tree(work)
        finally:
            os.close(work_lock)


def _fill(client, image, request, builder: RootfsBuilder, work: Path, progress) -> source.SaveResult:
    """Unpack the image into ``builder``'s root: the rewritten container stream, or the layers."""
    if request.source == "container":
        progress("reading the filesystem of a container made from the image (docker export)")
        with container.exported(client, image) as reader:
            stream = _enroot_stream(reader, image, request)
            builder.apply(source.ChunkReader(_paused(stream.chunks(), "container")))
        builder.finish()
        return source.SaveResult(layers=["container"], streamed=1)
    layer_count = len((image.attrs.get("RootFS") or {}).get("Layers") or []) or "?"
    builder.exclude = enroot_excludes

    def apply_layer(fileobj, index: int, name: str) -> None:
        before = builder.stats.bytes
        builder.apply(fileobj)
        progress(f"applied layer {index + 1}/{layer_count} ({(builder.stats.bytes - before) / 1e6:.0f} MB)")
        pause("layers")

    saved = source.apply_saved_image(source.ChunkReader(image.save(chunk_size=1 << 20)), str(work / "spool"),
                                     apply_layer)
    config = image.attrs.get("Config") or {}
    for rel, text in enroot_config.render(config).items():
        builder.write_file(rel, text.encode())
    builder.ensure_dir(enroot_config.workdir(config))
    builder.finish()
    return saved


def _paused(chunks, stage: str):
    for chunk in chunks:
        yield chunk
    pause(stage)
