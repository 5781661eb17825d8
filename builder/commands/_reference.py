"""docs/cli.md from the click commands: every verb's --help, exit codes included, in one page.

    python -m builder.commands._reference > docs/cli.md

The help texts are the one source of each verb's options and exit codes; tests/test_docs.py
fails when docs/cli.md is not what this prints.
"""

from __future__ import annotations

import click

WIDTH = 100  # fixed, so the page does not depend on the terminal it was made in

HEADER = """# CLI reference

Every verb's `--help`, generated from the click commands by
`python -m builder.commands._reference > docs/cli.md` (`tests/test_docs.py` fails when this page
is stale: change the command's help, then regenerate; never edit this file by hand).

Exit codes common to all verbs: 0 success; 1 the work failed; 2 bad input (matrix, options,
unknown image); 130 interrupted (Ctrl-C or SIGTERM). Each verb below lists its own.
"""


def _walk(command: click.Command, path: str, parent: click.Context | None):
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    ctx = click.Context(command, info_name=path.rsplit(" ", 1)[-1], parent=parent, **settings)
    yield path, command.get_help(ctx)
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            yield from _walk(command.get_command(ctx, name), f"{path} {name}", ctx)


def reference() -> str:
    from builder.cli import cli

    parts = [HEADER]
    pages = list(_walk(cli, "builder", None))
    parts.append("Verbs: " + ", ".join(f"[`{p}`](#{p.replace(' ', '-')})" for p, _ in pages[1:]) + ".\n")
    for path, text in pages:
        parts.append(f"## {path}\n\n```text\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    click.echo(reference(), nl=False)
