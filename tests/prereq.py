"""Missing prerequisites (a daemon, a tool): skip locally with the reason, fail in CI.

CI runs with CI=true after scripts/setup-host.sh has installed everything, so there a missing
engine, registry or Slurm is a broken setup, not a reason to skip.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip (locally) or fail (CI) with the reason; never returns."""
    if in_ci():
        pytest.fail(f"CI=true but {reason} (scripts/setup-host.sh should provide it)")
    pytest.skip(reason)


def need(condition: bool, reason: str) -> None:
    """Continue when ``condition`` holds, else skip or fail as ``unavailable`` does."""
    if not condition:
        unavailable(reason)
