"""`builder bake`: write a `docker buildx bake` JSON file for the selected images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from builder.bake import DEFAULT_PLATFORMS, SUPPORTED_PLATFORMS, BakeOptions, bake_definition
from builder.render import write_atomic


@click.command("bake")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every image of the matrix.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the bake file here ('-' for stdout; default: docker-bake.json beside matrix.yaml).")
@click.option("--registry", metavar="HOST[:PORT]",
              help="Prefix every tag with this registry (e.g. your ECR registry); each target then also reads "
                   "cache from its own image there.")
@click.option("--cache-ref", metavar="REPOSITORY",
              help="Fully qualified registry cache repository (one tag per target, mode=max; needs a "
                   "docker-container builder). Default: inline cache in the images, read from --registry only.")
@click.option("--platform", "platforms", multiple=True, metavar="OS/ARCH",
              help=f"Target platform (default and only supported: {', '.join(SUPPORTED_PLATFORMS)}).")
@click.option("--network", type=click.Choice(["default", "host", "none"]),
              help="Network for RUN steps; 'host' needs 'docker buildx bake --allow=network.host'.")
@click.pass_obj
def bake_cmd(state, names, all_, out, registry, cache_ref, platforms, network):
    """Write a docker buildx bake file: one target per image, groups per flavor and default.

    \b
    builder bake --all                               docker-bake.json beside matrix.yaml
    builder bake --all --registry 123456789012.dkr.ecr.us-west-2.amazonaws.com \\
        --cache-ref 123456789012.dkr.ecr.us-west-2.amazonaws.com/pytorch-efa/cache
    docker buildx bake -f docker-bake.json nvidia      build the nvidia group in parallel

    Run docker buildx bake from the matrix's folder: bake resolves each target's context ('.')
    from where it runs, whatever folder the file is in. Target names are image names with '.'
    replaced by '_' (bake allows [a-zA-Z0-9_-]); an image may not be named like a group
    (default, dlc, source, nvidia). Exit codes: 0 written; 1 images/ is stale (run 'builder
    render --all'); 2 bad input.
    """
    specs = state.matrix().select(names, all_)
    to_stdout = out is not None and str(out) == "-"
    path = None if to_stdout else (out or state.root / "docker-bake.json")
    options = BakeOptions(registry=registry, cache_ref=cache_ref, platforms=tuple(platforms) or DEFAULT_PLATFORMS,
                          network=network)
    text = json.dumps(bake_definition(state.root, specs, options), indent=2) + "\n"
    if to_stdout:
        click.echo(text, nl=False)
        return
    write_atomic(path, text)
    rel = os.path.relpath(path.resolve(), state.root)
    shown = rel if not rel.startswith("..") else str(path.resolve())
    click.echo(f"wrote {path} ({len(specs)} targets); run 'docker buildx bake -f {shown}' from {state.root}", err=True)


def register(cli: click.Group) -> None:
    cli.add_command(bake_cmd)
