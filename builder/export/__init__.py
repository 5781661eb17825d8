"""Export a built image for Slurm nodes: an enroot ``.sqsh`` (or a ``docker save`` tar) on shared storage.

Pipeline (one module per stage):
  source.py         stream ``docker save`` out of the engine, layers in order
  layers.py         apply each layer onto a root filesystem (whiteouts, opaque dirs, links)
  enroot_config.py  write what ``enroot start`` reads (/etc/rc, /etc/environment, /etc/fstab)
  squash.py         mksquashfs with enroot-like options
  atomic.py         temporary file beside the destination, atomic rename, destination lock, stale clean-up
  tree.py           removing the unpacked image (read-only folders included)
  sidecar.py        NAME.sqsh.json: digest, matrix entry, versions, sha256; skip when unchanged

``method="enroot"`` hands the image to ``enroot import dockerd://`` instead (where enroot is
installed); the publishing, sidecar and skip logic are the same.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from builder import imageref
from builder.buildkit import sdk_client
from builder.errors import BuilderError, UsageError
from builder.export import atomic, container, enroot_config, sidecar, source, squash, tree
from builder.export.layers import RootfsBuilder, enroot_excludes

FORMATS = ("sqsh", "tar")
METHODS = ("native", "enroot")
SOURCES = ("layers", "container")  # native: docker save + our layer merge, or the engine's docker export
# Test hook: stop (SIGSTOP) at these stages so a test can kill the export there, deterministically.
PAUSE_ENV = "BUILDER_EXPORT_TEST_PAUSE_AT"

def validate_reference(ref: str) -> str:
    if imageref.is_reference(ref) or imageref.IMAGE_ID_RE.match(ref):
        return ref
    raise UsageError(f"{ref!r} is neither an image in the matrix nor a valid image reference (name[:tag][@digest])")


@dataclass(frozen=True)
class ExportRequest:
    ref: str
    dest: Path
    fmt: str = "sqsh"
    method: str = "native"
    source: str = "layers"
    squash_options: tuple[str, ...] = squash.ENROOT_DEFAULT
    processors: int = 1
    keep_owners: bool = False
    force: bool = False
    work_dir: Path | None = None  # where the image is unpacked (default: the system temp dir)
    matrix_entry: Mapping[str, Any] | None = None  # name, flavor, components, tags of the matrix image
    # When matrix_entry is None: finds the entry from the image's labels (its title label), or None.
    matrix_lookup: Callable[[Mapping[str, str]], Mapping[str, Any] | None] | None = field(default=None, compare=False)

    def settings(self, repo_tag: str | None = None) -> dict[str, Any]:
        """What decides the file's bytes: a change here re-exports even an unchanged image.

        repo_tag: for tar, the tag written into it (what ``docker load`` restores)."""
        if self.fmt == "tar":
            return {"format": "tar", "repo_tag": repo_tag, "exporter_revision": sidecar.EXPORTER_REVISION}
        return {
            "format": "sqsh",
            "method": self.method,
            **({"source": self.source} if self.method == "native" else {}),
            "squash_options": list(self.squash_options),
            "owners": "image" if self.keep_owners else "root",
            "exporter_revision": sidecar.EXPORTER_REVISION,
        }


@dataclass
class ExportResult:
    dest: Path
    sidecar: Path
    skipped: bool
    image_id: str
    sha256: str
    size: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dest": str(self.dest), "sidecar": str(self.sidecar), "skipped": self.skipped,
            "image_id": self.image_id, "sha256": self.sha256, "size": self.size,
            "seconds": round(self.seconds, 2), **self.details,
        }


def _pause(stage: str) -> None:
    if stage in os.environ.get(PAUSE_ENV, "").split(","):
        os.kill(os.getpid(), signal.SIGSTOP)


def docker_client():
    """A Docker SDK client of the engine, checked to answer."""
    # A long read timeout: the engine may compute a big layer's tar (vfs, fuse-overlayfs)
    # for minutes before it sends the first byte of it.
    return sdk_client(timeout=3600)


def find_image(client, ref: str):
    """The engine's image ``ref``, or None when the engine does not have it."""
    from docker.errors import APIError, ImageNotFound

    try:
        return client.images.get(ref)
    except ImageNotFound:
        return None
    except APIError as exc:
        raise BuilderError(f"docker could not inspect {ref}: {exc.explanation or exc}") from None


def export_image(request: ExportRequest, *, progress: Callable[[str], None] = lambda _m: None,
                 client=None, image=None) -> ExportResult:
    """Export ``request.ref`` to ``request.dest``; skip when the sidecar says it is current.

    client, image: the engine's client and ``request.ref``'s image, when the caller has them."""
    started = time.monotonic()
    dest = request.dest.absolute()
    if request.fmt not in FORMATS:
        raise UsageError(f"unknown format {request.fmt!r}; use one of {', '.join(FORMATS)}")
    if request.method not in METHODS:
        raise UsageError(f"unknown method {request.method!r}; use one of {', '.join(METHODS)}")
    if request.source not in SOURCES:
        raise UsageError(f"unknown source {request.source!r}; use one of {', '.join(SOURCES)}")
    if request.fmt == "tar" and request.method != "native":
        raise UsageError("--format tar is always made with docker save; drop --method enroot")
    if request.method == "enroot" and request.keep_owners:
        raise UsageError("enroot import always makes every file root's; drop --keep-owners or use --method native")
    if request.method == "enroot" and not shutil.which("enroot"):
        raise UsageError("enroot is not installed here; use --method native (needs only Docker and mksquashfs)")
    if request.keep_owners and os.geteuid() != 0:
        raise UsageError("--keep-owners needs root (files are created with the image's owners); drop it or run as root")
    if request.fmt == "sqsh" and request.method == "native":
        squash.find_mksquashfs()
    side = sidecar.sidecar_path(dest)
    atomic.check_writable_folder(dest, side)
    client = client or docker_client()
    if image is None:
        image = find_image(client, request.ref)
    if image is None:
        raise BuilderError(f"image {request.ref} is not in the Docker engine; build it (builder build) or docker "
                           "load it first")

    lock = atomic.DestinationLock(dest)
    if not lock.acquire(progress):
        progress(f"note: no file lock in {dest.parent} (filesystem without flock); concurrent exports "
                 "to this file are not serialised")
    try:
        for stale in atomic.clean_stale(dest, side, locked=lock.held):
            progress(f"removed stale temporary {stale}")
        return _export_locked(request, client, image, dest, side, progress, started)
    finally:
        lock.release()


def _export_locked(request: ExportRequest, client, image, dest: Path, side: Path, progress, started: float) -> ExportResult:
    repo_tag = _tar_tag(request.ref, image) if request.fmt == "tar" else None
    settings = request.settings(repo_tag)
    if not request.force:
        current = sidecar.up_to_date(dest, image.id, settings)
        if current:
            return ExportResult(dest, side, True, image.id, current["file"]["sha256"], current["file"]["size"],
                                time.monotonic() - started)

    temp = atomic.temp_name(dest)
    side_temp = atomic.temp_name(side)
    details: dict[str, Any] = {}
    try:
        if request.fmt == "tar":
            digest = _write_tar(image, request.ref, repo_tag, temp, progress)
        else:
            if request.method == "enroot":
                _run_enroot(request, temp, progress)
            else:
                details = _write_native_sqsh(client, image, request, temp, progress)
            _pause("hash")
            progress("hashing the squashfs")
            digest = _sha256(temp)
        _pause("publish")
        # Drop the old sidecar first: if we die between the two renames below, the next run
        # finds no matching sidecar and re-exports, rather than trusting a stale one.
        try:
            atomic.discard(side)
        except OSError as exc:
            raise atomic.os_error_line(exc, side, "removing the old sidecar") from None
        atomic.publish(temp, dest)
        # The facts the skip check compares come from the published, flushed file.
        facts = sidecar.file_facts(dest)
        meta = _metadata(request, image, settings, dest, digest, facts)
        _pause("sidecar")
        try:
            side_temp.write_bytes(sidecar.render(meta))
        except OSError as exc:
            raise atomic.os_error_line(exc, side_temp, "writing") from None
        atomic.publish(side_temp, side)
    except OSError as exc:
        raise atomic.os_error_line(exc, temp, "writing") from None
    except tarfile.TarError as exc:
        raise BuilderError(f"the image stream from the engine is not a valid tar ({exc}); is the engine healthy?") from None
    except Exception as exc:
        if _is_engine_error(exc):
            raise BuilderError(f"the Docker engine failed while sending {request.ref}: {exc.__class__.__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        raise
    finally:
        atomic.discard(temp)
        atomic.discard(side_temp)
    progress(f"exported {request.ref} to {dest} ({facts['size'] / 1e9:.2f} GB)")
    return ExportResult(dest, side, False, image.id, digest, facts["size"], time.monotonic() - started, details)


def _is_engine_error(exc: Exception) -> bool:
    import requests
    from docker.errors import DockerException

    return isinstance(exc, (DockerException, requests.exceptions.RequestException))


def _metadata(request: ExportRequest, image, settings, dest: Path, digest: str, facts) -> dict[str, Any]:
    from builder import __version__

    attrs = image.attrs
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    entry = request.matrix_entry
    if entry is None and request.matrix_lookup is not None:
        entry = request.matrix_lookup(labels)
    entry = dict(entry) if entry else None
    return {
        "image": {
            "ref": request.ref,
            "id": image.id,
            "repo_tags": list(image.tags),
            "repo_digests": list(attrs.get("RepoDigests") or []),
            "created": attrs.get("Created"),
            "architecture": attrs.get("Architecture"),
            "labels": labels,
        },
        "matrix": entry,
        "components": {**components_from_labels(labels), **dict((entry or {}).get("components") or {})},
        "settings": settings,
        "file": {"name": dest.name, "sha256": digest, **facts},
        "exported_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "builder_version": __version__,
    }


_COMPONENT_LABEL = re.compile(r"^[a-z0-9.-]+\.component\.([a-z0-9_]+)$")


def components_from_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Component versions the build wrote as labels (``<prefix>.component.<name>``), so an
    image given by reference still records what is inside it."""
    found = {}
    for key, value in labels.items():
        match = _COMPONENT_LABEL.match(key)
        if match:
            found[match[1]] = value
    return found


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def _tar_tag(ref: str, image) -> str | None:
    """The tag the tar names the image by: as asked, so docker load restores that tag ("repo"
    means "repo:latest"); none for an image given by id or digest."""
    return next((r for r in (ref, f"{ref}:latest") if r in image.tags), None)


def _write_tar(image, ref: str, repo_tag: str | None, temp: Path, progress) -> str:
    """``docker save`` straight into the temporary file, hashing on the way (no second read)."""
    h = hashlib.sha256()
    written = 0
    next_report = 1 << 30
    progress(f"saving {ref} as a docker save tar")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as out:
        for chunk in image.save(chunk_size=1 << 20, named=repo_tag or False):
            out.write(chunk)
            h.update(chunk)
            written += len(chunk)
            if written >= next_report:
                progress(f"  {written / 1e9:.1f} GB written")
                next_report += 1 << 30
            _pause("tar")
    return h.hexdigest()


WORKDIR_PREFIX = "builder-export-"
_WORKDIR = re.compile(rf"^{WORKDIR_PREFIX}[A-Za-z0-9-]+\.(?P<boot>[0-9a-f]{{8}})-(?P<ns>\d+)\.(?P<pid>\d+)-")
_OLD_WORKDIR = re.compile(rf"^{WORKDIR_PREFIX}[A-Za-z0-9-]+-(?P<pid>\d+)-")


def _clean_stale_workdirs(parent: Path) -> None:
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


def _make_workdir(parent: Path) -> tuple[Path, int]:
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


def _write_native_sqsh(client, image, request: ExportRequest, temp: Path, progress) -> dict[str, Any]:
    parent = Path(request.work_dir or tempfile.gettempdir())
    if not parent.is_dir():
        raise BuilderError(f"work folder {parent} does not exist; create it or pass another --work-dir")
    _clean_stale_workdirs(parent)
    work, work_lock = _make_workdir(parent)
    try:
        rootfs = work / "rootfs"
        rootfs.mkdir()
        exclude = container.engine_excludes if request.source == "container" else enroot_excludes
        layer_count = len((image.attrs.get("RootFS") or {}).get("Layers") or []) or "?"
        unpack_started = time.monotonic()
        with RootfsBuilder(rootfs, keep_owners=request.keep_owners, exclude=exclude) as builder:

            def apply_layer(fileobj, index: int, name: str) -> None:
                before = builder.stats.bytes
                builder.apply(fileobj)
                progress(f"applied layer {index + 1}/{layer_count} ({(builder.stats.bytes - before) / 1e6:.0f} MB)")
                _pause("layers")

            try:
                if request.source == "container":
                    progress("reading the filesystem of a container made from the image (docker export)")
                    container.apply_container_export(client, image, lambda f: (builder.apply(f), _pause("container")))
                    saved = source.SaveResult(layers=["container"], streamed=1)
                else:
                    saved = source.apply_saved_image(source.ChunkReader(image.save(chunk_size=1 << 20)),
                                                     str(work / "spool"), apply_layer)
                config = image.attrs.get("Config") or {}
                for rel, text in enroot_config.render(config).items():
                    builder.write_file(rel, text.encode())
                builder.ensure_dir(enroot_config.workdir(config))
                builder.finish()
            except OSError as exc:
                raise atomic.os_error_line(exc, work, "unpacking the image into", work_dir=True) from None
        if builder.stats.skipped:
            progress(f"warning: {len(builder.stats.skipped)} entries could not be created "
                     f"(device nodes need root), first: /{builder.stats.skipped[0]}")
        if builder.stats.xattrs_dropped:
            progress(f"warning: {builder.stats.xattrs_dropped} extended attributes (e.g. file capabilities) "
                     "could not be set as this user and are not in the image; export as root to keep them")
        _pause("squash")
        squash_started = time.monotonic()
        progress(f"mksquashfs {' '.join(request.squash_options)} with {request.processors} processors")
        squash.mksquashfs(str(rootfs), str(temp), request.squash_options, processors=request.processors,
                          all_root=not request.keep_owners, log_path=str(work / "mksquashfs.log"),
                          mode_fixes=builder.mode_fixes)
        return {
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


def _run_enroot(request: ExportRequest, temp: Path, progress) -> None:
    env = dict(os.environ)
    env["ENROOT_SQUASH_OPTIONS"] = " ".join(request.squash_options)
    env["ENROOT_MAX_PROCESSORS"] = str(request.processors)
    progress(f"enroot import dockerd://{request.ref}")
    proc = subprocess.run(["enroot", "import", "-o", str(temp), f"dockerd://{request.ref}"], env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          preexec_fn=squash._die_with_parent, check=False)
    if proc.returncode != 0 or not temp.exists():
        lines = [l for l in proc.stdout.decode("utf-8", "replace").splitlines() if l.strip()]
        raise BuilderError(f"enroot import failed (exit {proc.returncode}): {lines[-1] if lines else 'no output'}")
