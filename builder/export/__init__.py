"""Export a built image for Slurm nodes: an enroot ``.sqsh`` (or a ``docker save`` tar) on shared storage.

Pipeline (one module per stage):
  native.py         builder's own writer: streamed (default), unpacked, or from the layers
  container.py      ``docker export`` of a never-started container (what enroot import dockerd:// reads)
  tarstream.py      that stream rewritten as enroot's import leaves it (exclusions, modes, owners, files)
  sqfs_stream.py    tar2sqfs: a squashfs straight from the stream
  source.py         stream ``docker save`` out of the engine, layers in order (--source layers)
  layers.py         apply each layer onto a root filesystem (whiteouts, opaque dirs, links)
  enroot_config.py  write what ``enroot start`` reads (/etc/rc, /etc/environment, /etc/fstab)
  enroot_conf.py    enroot's configuration files, read as enroot reads them
  squash.py         squash options (compression, processors) and mksquashfs
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
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from builder import imageref
from builder.buildkit import sdk_client
from builder.errors import BuilderError, UsageError
from builder.export import atomic, native, sidecar, squash
from builder.export.native import pause as _pause

FORMATS = ("sqsh", "tar")
METHODS = ("native", "enroot")
SOURCES = ("container", "layers")  # native: the engine's docker export (streamed), or docker save + our layer merge

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
    source: str = "container"
    squash_options: tuple[str, ...] = squash.compression_options(squash.DEFAULT_COMPRESSION)
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
            **({"source": self.source, "writer": native.writer_for(self)[0]} if self.method == "native" else {}),
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
        raise UsageError("enroot is not installed here; use --method native (needs only Docker and tar2sqfs or mksquashfs)")
    unpacks = request.fmt == "sqsh" and request.method == "native" and native.writer_for(request)[0] == "mksquashfs"
    if request.keep_owners and unpacks and os.geteuid() != 0:
        raise UsageError("--keep-owners needs root when the image is unpacked (--source layers, or options only "
                         "mksquashfs has); drop it, run as root, or use the streamed export")
    if unpacks:
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
                details = native.write_sqsh(client, image, request, temp, progress)
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
