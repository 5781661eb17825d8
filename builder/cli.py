"""The `builder` command line: a thin click layer over the pipeline modules.

Each verb lives in ``builder/commands/<verb>.py`` and exposes ``register(group)``; this
module only holds the global options and turns ``BuilderError`` into one line on stderr
and an exit code, never a traceback. Verbs are imported when used: ``builder render`` loads
the render module only, not the Docker, registry and AWS code of the other verbs.
"""

from __future__ import annotations

import importlib
import signal
import sys
from pathlib import Path

import click

from builder import __version__
from builder.errors import BuilderError

MATRIX_ENV = "BUILDER_MATRIX"


def find_default_matrix(start: Path | None = None) -> Path:
    """The bundled matrix: ./matrix.yaml, or the nearest one in a parent directory (run from the repo)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "matrix.yaml"
        if candidate.is_file():
            return candidate
    return here / "matrix.yaml"


class State:
    """Per-invocation state shared by the verbs (the matrix is loaded once, lazily)."""

    def __init__(self, matrix_path: Path):
        self.matrix_path = matrix_path
        self._matrix = None

    @property
    def root(self) -> Path:
        """The project root: the folder holding matrix.yaml (build context, images/)."""
        return self.matrix_path.resolve().parent

    def matrix(self, pin: bool = True, only: str | None = None):
        """The matrix, bases pinned by its lock file unless ``pin`` is False (`builder lock`).

        ``only`` (one image name): validate just what that image needs, when the matrix has it
        (else the whole matrix is loaded, for the did-you-mean and every problem)."""
        from builder.matrix import load_matrix

        if only is not None and self._matrix is None:
            matrix = load_matrix(self.matrix_path, pin=pin, only=[only])
            if matrix.find(only) is not None:
                self._echo_warnings(matrix)
                return matrix
        if self._matrix is None or self._matrix.pinned != pin:
            self._matrix = load_matrix(self.matrix_path, pin=pin)
            self._echo_warnings(self._matrix)
        return self._matrix

    @staticmethod
    def _echo_warnings(matrix) -> None:
        for warning in matrix.warnings:
            click.echo(f"warning: {warning}", err=True)


# verb -> the module of builder/commands that registers it, so that a verb is imported only when
# it runs. A module not named here (a new verb) is still found: it is imported when the verbs
# are listed or a verb not named here is asked for.
VERBS = {
    "bake": "bake", "build": "build", "diff": "inspect", "explain": "inspect", "export": "export",
    "list": "inspect", "lock": "lock", "matrix": "matrix_cmd", "nccl": "nccl", "outdated": "outdated", "push": "push",
    "render": "render", "sbatch": "sbatch", "smoke": "smoke", "stanzas": "inspect", "validate": "inspect",
}


def _command_modules() -> list[str]:
    import pkgutil

    from builder import commands

    return sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_"))


class BuilderGroup(click.Group):
    """The verbs, imported on first use (click's lazily loaded subcommands pattern)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loaded: set[str] = set()

    def _load(self, module_name: str) -> None:
        if module_name in self._loaded:
            return
        self._loaded.add(module_name)
        module = importlib.import_module(f"builder.commands.{module_name}")
        scratch = click.Group()
        module.register(scratch)
        for name, command in scratch.commands.items():
            self.commands.setdefault(name, command)

    def get_command(self, ctx, cmd_name):
        if cmd_name not in self.commands:
            if cmd_name in VERBS:
                self._load(VERBS[cmd_name])
            else:  # a verb not in VERBS, or a typo (click's did-you-mean then lists them all)
                for module_name in _command_modules():
                    if module_name not in VERBS.values():
                        self._load(module_name)
        return self.commands.get(cmd_name)

    def list_commands(self, ctx):
        for module_name in _command_modules():
            self._load(module_name)
        return sorted(self.commands)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BuilderError as exc:
            click.echo(f"error: {exc}" if "\n" not in str(exc) else _prefix_lines(str(exc)), err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def _prefix_lines(text: str) -> str:
    return "\n".join(f"error: {line}" for line in text.splitlines())


@click.group(cls=BuilderGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--matrix",
    "matrix_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=MATRIX_ENV,
    help=f"Version matrix to use (default: the nearest matrix.yaml; env {MATRIX_ENV}).",
)
@click.version_option(__version__, prog_name="builder")
@click.pass_context
def cli(ctx: click.Context, matrix_path: Path | None) -> None:
    """Render, build, check, push and export PyTorch images for AWS GPU clusters.

    Exit codes: 0 success; 1 the work failed (build, smoke check, push, export);
    2 bad input (matrix, options, unknown image); other codes are documented per verb.
    """
    ctx.obj = State(matrix_path or find_default_matrix())


def _sigterm_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # SIGTERM (CI cancelling a job, a scheduler's timeout) takes the same path as Ctrl-C in every
    # verb: builds are stopped and nothing is tagged, temporaries and containers are removed.
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        cli.main(prog_name="builder")
    except BuilderError as exc:  # errors raised outside a verb (e.g. while parsing options)
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)

