"""``builder export NAME|IMAGE --to PATH``: an enroot .sqsh (or docker save tar) on shared storage."""

from __future__ import annotations

import json
from pathlib import Path

import click

from builder import imageref
from builder.errors import UsageError


def _entry(spec) -> dict:
    return {
        "name": spec.name,
        "flavor": spec.flavor,
        "components": dict(getattr(spec, "versions", None) or spec.components),
        "tags": list(spec.tags),
        "refs": list(spec.refs),
    }


_bare = imageref.is_bare  # a matrix NAME, or a local image


def _resolve(matrix, arg: str) -> tuple[str, dict | None]:
    """The image to export and its matrix entry (None when not found here).

    NAME (a matrix image) gives its primary ref. An image reference is exported as given; its
    entry is the matrix image whose refs it names (with or without a registry host, as CI
    exports ``$ECR_REGISTRY/<ref>``), else found later from the image's title label.
    """
    ref, spec = imageref.resolve(matrix, arg, "an image in the matrix nor a valid image reference (name[:tag][@digest])")
    if spec is not None:
        return ref, _entry(spec)
    if matrix is not None:
        plain = imageref.split_registry(ref)[1]
        spec = next((s for s in matrix.images if plain in s.refs or ref in s.refs), None)
        if spec is not None:
            return ref, _entry(spec)
    return ref, None


def _entry_lookup(matrix):
    """For an image given by reference: its matrix entry from its title label (what builder
    build writes), when the matrix has that image."""
    from builder.labels import spec_for_labels

    def lookup(labels):
        spec = spec_for_labels(matrix, labels)
        return _entry(spec) if spec is not None else None

    return lookup if matrix is not None else None


def register(cli: click.Group) -> None:
    @cli.command("export")
    @click.argument("image")
    @click.option("--to", "dest", required=True, type=click.Path(dir_okay=False, path_type=Path),
                  help="Destination file, e.g. /fsx/images/NAME.sqsh (written atomically; NAME.sqsh.json beside it).")
    @click.option("--format", "fmt", type=click.Choice(["sqsh", "tar"]), default=None,
                  help="sqsh (enroot/pyxis image) or tar (docker save, for docker load). Default: from the "
                       "file name (.tar -> tar), else sqsh.")
    @click.option("--method", type=click.Choice(["native", "enroot"]), default="native", show_default=True,
                  help="native: Docker + mksquashfs only; enroot: run 'enroot import dockerd://' (must be installed).")
    @click.option("--source", "source_", type=click.Choice(["container", "layers"]), default="container",
                  show_default=True,
                  help="native only: container = the engine's docker export of a never-started container (what "
                       "enroot import dockerd:// reads), streamed into tar2sqfs; layers = docker save, each layer "
                       "applied with its whiteouts in --work-dir, then mksquashfs.")
    @click.option("--compression", metavar="NAME[:LEVEL]",
                  help="zstd (level 3 unless given), gzip, xz, lz4, lzo (enroot's own '-comp lzo -noD') or none. "
                       "zstd, gzip and xz are streamed; lz4, lzo and none unpack the image for mksquashfs (slower "
                       "than enroot here). Default: $ENROOT_SQUASH_OPTIONS, else enroot's configuration (enroot.conf "
                       "and enroot.conf.d), else zstd:1.")
    @click.option("--squash-options", metavar="'OPTS'",
                  help="Raw mksquashfs options instead of --compression (like ENROOT_SQUASH_OPTIONS), e.g. '-comp zstd -b 1M'.")
    @click.option("--processors", type=click.IntRange(min=1), default=None,
                  help="compressor threads (default: -processors in the squash options, else $ENROOT_MAX_PROCESSORS "
                       "or its value in enroot's configuration, else all CPUs).")
    @click.option("--keep-owners", is_flag=True,
                  help="Keep the image's file owners (needs root when the image is unpacked). Default, as enroot: "
                       "every file owned by root.")
    @click.option("--force", is_flag=True, help="Export even when the sidecar says the file is up to date.")
    @click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), envvar="BUILDER_EXPORT_WORKDIR",
                  help="Local folder to unpack the image in, when it is unpacked (--source layers, or options only "
                       "mksquashfs has): about the image's size, twice that with Docker >= 25; default: $TMPDIR.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
    @click.pass_obj
    def export_cmd(state, image, dest, fmt, method, source_, compression, squash_options, processors, keep_owners, force,
                   work_dir, as_json):
        """Export IMAGE (a matrix name or an image reference) to an enroot .sqsh or a docker save tar.

        The file is written beside the destination under a hidden temporary name and renamed
        into place, so nodes never see a partial file and a failed or killed export keeps the
        previous one. NAME.sqsh.json records the image id, matrix entry, component versions
        and the file's sha256; exporting an unchanged image again is skipped (unless --force).

        Exit codes: 0 exported or already up to date; 1 the export failed (engine, disk full,
        permission, mksquashfs), with one error: line; 2 bad input (a NAME neither in the matrix
        nor a local image, an invalid reference or matrix, conflicting options, enroot missing
        for --method enroot); 130 interrupted (Ctrl-C or SIGTERM: temporaries removed).
        """
        from builder.export import ExportRequest, docker_client, export_image, find_image, squash
        from builder.errors import did_you_mean as _did_you_mean

        # A reference needs no matrix, but only when there is none: an invalid matrix is an
        # error, never a quiet fallback (as in smoke).
        matrix = state.matrix() if state.matrix_path.is_file() else None
        ref, entry = _resolve(matrix, image)
        fmt = fmt or ("tar" if dest.suffix == ".tar" else "sqsh")
        if fmt == "tar" and (compression or squash_options or keep_owners or method != "native" or source_ != "container"):
            raise UsageError("--format tar takes none of --compression, --squash-options, --keep-owners, --method, --source")
        squash_settings, squash_origin = {}, None
        if fmt == "sqsh":  # only an sqsh reads the squash settings (enroot.conf included)
            choice = squash.choose(compression, squash_options, processors)
            squash_settings = {"squash_options": choice.options, "processors": choice.processors}
            squash_origin = choice.as_dict()
        # The engine is asked only here, or by export_image after its checks of the destination.
        client = found = None
        if matrix is not None and entry is None and _bare(image):
            client = docker_client()
            found = find_image(client, ref)
            if found is None:  # a mistyped NAME: exit 2 with a did-you-mean
                raise UsageError(f"'{image}' is neither an image of {state.matrix_path.name} nor an image in the "
                                 f"Docker engine{_did_you_mean(image, matrix.names())}; see 'builder list'")
        request = ExportRequest(
            ref=ref,
            dest=dest,
            fmt=fmt,
            method=method,
            source=source_,
            **squash_settings,
            keep_owners=keep_owners,
            force=force,
            work_dir=work_dir,
            matrix_entry=entry,
            matrix_lookup=None if entry else _entry_lookup(matrix),
        )
        # Ctrl-C and SIGTERM (cli.main makes it a KeyboardInterrupt) unwind through export_image's
        # clean-up: temporaries, work folder and containers are removed.
        result = export_image(request, progress=lambda m: click.echo(m, err=True), client=client, image=found)
        if as_json:
            click.echo(json.dumps({**result.as_dict(), **({"squash": squash_origin} if squash_origin else {})},
                                  indent=2, sort_keys=True))
        elif result.skipped:
            click.echo(f"{result.dest} is up to date ({ref}, sha256 {result.sha256[:12]}); use --force to export again")
        else:
            click.echo(f"{result.dest} sha256 {result.sha256} ({result.size} bytes, {result.seconds:.1f} s)")
