"""The documentation stays true: docs/cli.md is what the click commands say, and links resolve."""

from __future__ import annotations

import re

from builder.commands._reference import reference

LINK = re.compile(r"\]\((?!https?://|#|mailto:)([^)#\s]+)(?:#[^)]*)?\)")


def test_cli_reference_is_generated_from_the_commands(repo_root):
    page = repo_root / "docs" / "cli.md"
    assert page.read_text(encoding="utf-8") == reference(), (
        "docs/cli.md is stale: run 'python -m builder.commands._reference > docs/cli.md' and commit it")


def test_every_verb_documents_its_exit_codes():
    text = reference()
    for section in text.split("\n## ")[1:]:
        name = section.splitlines()[0]
        assert "Exit codes" in section or name in ("builder nccl instances", "builder nccl judge",
                                                  "builder nccl parse", "builder nccl run"), name
    assert text.count("## builder nccl") == 5  # the group's help holds its subcommands' codes


def test_relative_links_in_the_docs_resolve(repo_root):
    pages = [repo_root / "README.md", *sorted((repo_root / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(repo_root)}: {target}")
    assert broken == []
