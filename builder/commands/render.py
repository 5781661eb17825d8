"""`builder render`: write images/<name>/Dockerfile, check it is current, or print one custom file."""

from __future__ import annotations

import difflib
from pathlib import Path

import click

from builder import render_cache
from builder.errors import BuilderError, UsageError


def _parse_sets(values: tuple[str, ...]) -> dict[str, str | None]:
    """COMPONENT=VERSION pairs; COMPONENT= (empty) unsets the component, like null in the matrix."""
    out: dict[str, str | None] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: expected component=version (or component= to unset), e.g. --set nccl=2.23.4")
        out[key.strip()] = value.strip() or None
    return out


@click.command("render")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Render every image of the matrix.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write to OUT/<name>/Dockerfile instead of images/.")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 when images/ is not what the matrix renders.")
@click.option("--stdout", "to_stdout", is_flag=True, help="Print the Dockerfile of one image instead of writing it.")
@click.option("--set", "sets", multiple=True, metavar="COMPONENT=VERSION",
              help="Override a component (or base=, region=) for one image; COMPONENT= unsets it. Re-validated.")
@click.option("--with", "with_", multiple=True, metavar="STANZA", help="Switch a stanza on for one image.")
@click.option("--without", multiple=True, metavar="STANZA", help="Switch a stanza off for one image.")
@click.pass_obj
def render_cmd(state, names, all_, out_dir, check, to_stdout, sets, with_, without):
    """Render Dockerfiles from the matrix into images/<name>/Dockerfile.

    \b
    builder render --all                 regenerate every Dockerfile (stale ones removed)
    builder render --all --check         exit 1 when images/ is out of date (CI)
    builder render NAME --set nccl=2.23.4 --with xformers --stdout
                                         one custom Dockerfile for review

    NAME --stdout validates what that image needs (the file's top level and its entry), not
    every image. Exit codes: 0 written or up to date; 1 --check found images/ stale (a file
    missing, different, or no longer in the matrix); 2 bad input (invalid matrix, unknown
    image, a bad --set/--with/--without, which are re-validated like the matrix).
    """
    custom = bool(sets or with_ or without)
    if custom or to_stdout:
        if len(names) != 1 or all_:
            raise UsageError("--set/--with/--without/--stdout work on exactly one image name")
        _render_one(state, names[0], out_dir, to_stdout, sets, with_, without)
    else:
        _render_files(state, names, all_, out_dir, check)


def _render_one(state, name, out_dir, to_stdout, sets, with_, without) -> None:
    """One image, customised or not, to stdout (or to --out DIR)."""
    custom = bool(sets or with_ or without)
    if to_stdout:  # a review tool run again and again: an unchanged input prints the stored result
        request = {"name": name, "set": list(sets), "with": list(with_), "without": list(without)}
        cache_key = render_cache.key(state.matrix_path, request)
        stored = render_cache.load(cache_key)
        if stored is not None:
            for warning in stored["warnings"]:
                click.echo(f"warning: {warning}", err=True)
            click.echo(stored["dockerfile"], nl=False)
            return
    from builder.render import Renderer, dockerfile_path, write_atomic

    matrix = state.matrix(only=name)  # validates what this image needs, not every image
    spec = matrix.customize(name, _parse_sets(sets), with_, without) if custom else matrix.get(name)
    rendered = Renderer(catalog=matrix.catalog).render(spec)
    if to_stdout or out_dir is None and custom:
        if not to_stdout:
            raise UsageError("a customised image is not in the matrix: pass --stdout, or --out DIR to write it")
        render_cache.store(cache_key, rendered.dockerfile, [str(w) for w in matrix.warnings])
        click.echo(rendered.dockerfile, nl=False)
        return
    write_atomic(dockerfile_path(out_dir, spec), rendered.dockerfile)
    click.echo(f"wrote {dockerfile_path(out_dir, spec)}", err=True)


def _render_files(state, names, all_, out_dir, check) -> None:
    """The selected images to images/ (or --out DIR), or with --check only compared with it."""
    from builder.render import Renderer, dockerfile_path, write_atomic

    matrix = state.matrix()
    renderer = Renderer(catalog=matrix.catalog)
    specs = matrix.select(names, all_)
    root = out_dir.parent if out_dir else state.root
    target = (lambda s: out_dir / s.name / "Dockerfile") if out_dir else (lambda s: dockerfile_path(state.root, s))
    stale: list[str] = []
    written = 0
    for spec in specs:
        text = renderer.render(spec).dockerfile
        path = target(spec)
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        written += 1
        if check:
            stale.append(f"{path.relative_to(root) if path.is_relative_to(root) else path}: "
                         + ("missing" if current is None else _first_difference(current, text)))
        else:
            write_atomic(path, text)
            click.echo(f"wrote {path}", err=True)
    if all_ and out_dir is None:
        stale += _remove_dropped(state.root, {s.name for s in specs}, check)
    if check:
        if stale:
            raise BuilderError("images/ is stale; run 'builder render --all' and commit the result:\n"
                               + "\n".join(f"  {line}" for line in stale))
        click.echo(f"{len(specs)} Dockerfiles up to date", err=True)
    else:
        folder = out_dir if out_dir else state.root / "images"
        click.echo(f"{len(specs)} images valid; {written} Dockerfiles written, {len(specs) - written} unchanged in {folder}",
                   err=True)


def _remove_dropped(root: Path, known: set[str], check: bool) -> list[str]:
    """Generated folders of images no longer in the matrix: removed, or (check) reported."""
    from builder.render import generated_dirs

    stale = []
    for name, folder in generated_dirs(root).items():
        if name in known:
            continue
        if check:
            stale.append(f"images/{name}: no longer in the matrix")
        else:
            (folder / "Dockerfile").unlink()
            if not any(folder.iterdir()):
                folder.rmdir()
            click.echo(f"removed images/{name} (no longer in the matrix)", err=True)
    return stale


def _first_difference(old: str, new: str) -> str:
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0):
        if line.startswith(("+", "-")) and not line.startswith(("+++", "---")):
            return f"differs, first at: {line[:100]}"
    return "differs"


def register(cli: click.Group) -> None:
    cli.add_command(render_cmd)
