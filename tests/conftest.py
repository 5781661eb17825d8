"""Shared test fixtures: the repository paths and a helper to write small matrix files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def bundled_matrix():
    from builder.matrix import load_matrix

    return load_matrix(REPO / "matrix.yaml")


@pytest.fixture
def write_matrix(tmp_path):
    """Write a matrix file (dedented YAML) into a temp project and return its path."""

    def write(text: str, name: str = "matrix.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write
