"""`builder build NAME... | --all`: BuildKit builds of matrix images, tagged from the matrix."""

from __future__ import annotations

from pathlib import Path

import click

from builder import build as b
from builder import build_report as rep
from builder.buildkit import DOCKER_ENV, find_client
from builder.errors import BuilderError


@click.command("build")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Build every image of the matrix.")
@click.option("--docker", "docker", metavar="PATH", envvar=DOCKER_ENV,
              help=f"Docker client to use (default: the first that can build with BuildKit; env {DOCKER_ENV}).")
@click.option("--network", metavar="MODE", help="Network for RUN steps, e.g. host (needed when the engine has no bridge).")
@click.option("--cache-from", "cache_from", multiple=True, metavar="REF",
              help="External cache source (repeatable); {name} becomes each image's name.")
@click.option("--cache-to", "cache_to", metavar="SPEC",
              help="Cache export, e.g. type=registry,ref=reg/cache:{name} (buildx only; {name}: one cache per image).")
@click.option("--builder", "buildx_builder", metavar="NAME",
              help="buildx builder instance (the default docker driver cannot export a cache).")
@click.option("--no-cache", is_flag=True, help="Do not use the build cache.")
@click.option("--build-arg", "build_args", multiple=True, metavar="NAME=VALUE",
              help="Override an ARG (repeatable); passed to the selected images that declare it, an error if none does.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=1, show_default=True, help="Images built in parallel.")
@click.option("--dry-run", is_flag=True, help="Print the commands, build nothing.")
@click.option("--report", "report", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a JSON report: image id, size, duration, per-stanza layer sizes, size gate.")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the per-image build logs <name>.log (default: a new temp folder).")
@click.option("--no-size-gate", is_flag=True, help="Report but do not fail images over their size_baseline.")
@click.pass_obj
def build_cmd(state, names, all_, docker, network, cache_from, cache_to, buildx_builder, no_cache, build_args, jobs,
              dry_run, report, log_dir, no_size_gate):
    """Build images with BuildKit and tag them as the matrix says.

    Tags are applied only after a build succeeded. A failure names the stanza whose step
    failed and shows the end of its log.

    Exit codes: 0 all built; 1 a build failed (the others still finish); 2 bad input (unknown
    image, stale Dockerfile, undeclared --build-arg, unwritable --report or --log-dir, no
    BuildKit client); 3 all built but one is over its size baseline; 130 interrupted (Ctrl-C or
    SIGTERM; nothing half-built is tagged).
    """
    matrix = state.matrix()
    specs = matrix.select(names, all_)
    options = b.BuildOptions(network=network, cache_from=tuple(cache_from), cache_to=cache_to, no_cache=no_cache,
                             build_args=b.parse_build_args(build_args), jobs=jobs, size_gate=not no_size_gate,
                             builder=buildx_builder)
    client = find_client(docker)
    if report:
        rep.check_writable(report)
    if dry_run:
        plans = b.plan(state.root, specs, client, options, Path(b.DRY_RUN_DIR))
        for line in b.dry_run_lines(plans, client, log_dir):
            click.echo(line)
        if report:
            planned = [rep.ImageResult(p.spec.name, list(p.spec.refs), status="planned",
                                       command=[a.replace(b.DRY_RUN_DIR, str(log_dir or "$log_dir")) for a in p.argv])
                       for p in plans]
            rep.write_report(report, planned, client.describe(), dry_run=True)
        return
    try:
        results = b.build(state.root, specs, client, options, log_dir)
    except b.Interrupted as stop:
        if report:
            rep.write_report(report, stop.results, client.describe())
        raise BuilderError("interrupted: no unfinished image was tagged", exit_code=b.EXIT_INTERRUPTED)
    failed = [r for r in results if r.status == "failed"]
    for result in failed:
        click.echo(b.failure_text(result), err=True)
    for result in results:
        if result.status == "size-gate":
            click.echo(rep.size_gate_message(result.name, result.size_gate), err=True)
    built = [r for r in results if r.ok]
    click.echo(f"{len(built)} of {len(results)} built" + (f"; failed: {', '.join(r.name for r in failed)}" if failed else ""),
               err=True)
    if report:  # after the failure texts: a report that cannot be written must not hide them
        rep.write_report(report, results, client.describe())
    code = b.exit_code(results)
    if code:
        names_bad = [r.name for r in results if not r.ok]
        raise BuilderError(f"not built cleanly: {', '.join(names_bad)}", exit_code=code)


def register(cli: click.Group) -> None:
    cli.add_command(build_cmd)
