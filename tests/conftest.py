"""Shared test fixtures: the repository paths and a helper to write small matrix files."""

from __future__ import annotations

import os
import sys
import textwrap
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# smdebug-rulesconfig (a dependency of the SageMaker SDK, a test extra) installs a top-level
# `tests` package into site-packages, which wins over this folder (a namespace package) for
# `from tests.matrix_samples import ...`. This folder is `tests` here.
if getattr(sys.modules.get("tests"), "__path__", None) != [str(REPO / "tests")]:
    _tests = types.ModuleType("tests")
    _tests.__path__ = [str(REPO / "tests")]
    sys.modules["tests"] = _tests

# The tools the test extras install (shellcheck, hadolint, actionlint, moto_server, builder) sit
# beside this interpreter; put them on PATH as an activated venv would (CI calls .venv/bin/python).
_BIN = str(Path(sys.executable).parent)
if _BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture(scope="session", autouse=True)
def _own_cache_dir(tmp_path_factory):
    """builder's caches (stored renders, compiled templates) in this session's temp folder, for
    the CLI run in-process and in subprocesses alike: tests never read a user's cache."""
    os.environ["BUILDER_CACHE_DIR"] = str(tmp_path_factory.mktemp("builder-cache"))
    yield
    os.environ.pop("BUILDER_CACHE_DIR", None)


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
