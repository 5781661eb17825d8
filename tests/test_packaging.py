"""The wheel carries everything `builder` reads at run time, so it works outside a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_ships_every_template(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"builder/templates/{p.relative_to(REPO / 'templates').as_posix()}"
                for p in (REPO / "templates").rglob("*") if p.is_file()}
    assert expected and expected <= names, sorted(expected - names)
    assert "builder/cli.py" in names and "builder/nccl/parse.py" in names and "builder/export/squash.py" in names
