"""Fast start: a verb is imported when it runs, and `render NAME --stdout` validates that image.

Timings are printed by benchmarks/render_bench.py, never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from builder.cli import VERBS, _command_modules, cli
from tests.matrix_samples import DLC, NVIDIA, dump, matrix


def _modules_after(repo_root, *argv: str) -> tuple[int, set[str], str]:
    """Run the CLI in a fresh interpreter; the modules loaded when it finished."""
    script = (
        "import json, sys\n"
        "from builder.cli import cli\n"
        "code = cli.main(sys.argv[1:], prog_name='builder', standalone_mode=False)\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=repo_root)
    return out.returncode, set(json.loads(out.stderr.strip().splitlines()[-1])), out.stdout


def test_render_to_stdout_imports_only_its_own_verb(repo_root):
    code, loaded, stdout = _modules_after(repo_root, "render", "nvidia-ngc24.09-efa1.35", "--stdout")
    assert code == 0 and stdout.startswith("# Generated")
    assert sorted(m for m in loaded if m.startswith("builder.commands.")) == ["builder.commands.render"]
    assert not {m.split(".")[0] for m in loaded} & {"requests", "docker", "boto3", "botocore", "urllib3"}


def test_each_mapped_verb_is_in_its_module_and_every_verb_is_listed():
    import click

    for verb, module_name in VERBS.items():
        assert module_name in _command_modules(), module_name
        scratch = click.Group()
        __import__(f"builder.commands.{module_name}", fromlist=["register"]).register(scratch)
        assert verb in scratch.commands, (verb, module_name)
    listed = CliRunner().invoke(cli, ["--help"]).output
    for verb in VERBS:  # and the verbs of modules not in VERBS (found by listing the package)
        assert f"  {verb} " in listed, verb
    typo = CliRunner().invoke(cli, ["rendr"])
    assert typo.exit_code == 2 and "No such command 'rendr'" in typo.output


def test_render_one_image_ignores_problems_of_the_others(tmp_path):
    broken = dict(DLC, pip=["torch; rm -rf /"])  # another entry's problem
    path = tmp_path / "matrix.yaml"
    path.write_text(dump(matrix(NVIDIA, broken)))
    one = CliRunner().invoke(cli, ["--matrix", str(path), "render", "nv", "--stdout"])
    assert one.exit_code == 0, one.output
    assert "FROM nvcr.io/nvidia/pytorch:24.09-py3" in one.output
    whole = CliRunner().invoke(cli, ["--matrix", str(path), "render", "--all", "--out", str(tmp_path / "out")])
    assert whole.exit_code == 2 and "image 'dl'" in whole.output and "pip" in whole.output


def test_a_mistyped_name_still_gets_the_whole_matrix_and_a_did_you_mean(tmp_path):
    path = tmp_path / "matrix.yaml"
    path.write_text(dump(matrix(dict(NVIDIA, name="pt-nvidia"), DLC)))
    typo = CliRunner().invoke(cli, ["--matrix", str(path), "render", "pt-nvdia", "--stdout"])
    assert typo.exit_code == 2 and "did you mean 'pt-nvidia'" in typo.output


def _imported(result, module: str) -> bool:
    """Whether -X importtime's report (on stderr) lists ``module``."""
    return any(line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() == module
               for line in result.stderr.splitlines())


def _render(repo_root, matrix_path, name, env):
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "builder", "--matrix", str(matrix_path),
                           "render", name, "--stdout"], capture_output=True, text=True, cwd=repo_root, env=env)


def test_an_unchanged_render_is_printed_from_the_cache_and_any_change_is_a_miss(repo_root, tmp_path):
    import os

    env = {**os.environ, "BUILDER_CACHE_DIR": str(tmp_path / "cache")}
    path = tmp_path / "matrix.yaml"
    path.write_text(dump(matrix(NVIDIA)))
    (tmp_path / "matrix.lock.json").write_text('{"schema": 1, "images": {}}\n')  # warns: base not locked
    first = _render(repo_root, path, "nv", env)
    again = _render(repo_root, path, "nv", env)
    assert first.returncode == again.returncode == 0, first.stderr
    assert again.stdout == first.stdout and "FROM nvcr.io/nvidia/pytorch:24.09-py3" in first.stdout
    warnings = [line for line in first.stderr.splitlines() if line.startswith("warning:")]
    assert warnings and warnings == [line for line in again.stderr.splitlines() if line.startswith("warning:")]
    assert _imported(first, "jinja2") and not _imported(again, "jinja2") and not _imported(again, "yaml")

    path.write_text(dump(matrix(dict(NVIDIA, components={**NVIDIA["components"], "efa": "1.34.0"}))))
    changed = _render(repo_root, path, "nv", env)
    assert changed.returncode == 0 and _imported(changed, "jinja2") and changed.stdout != first.stdout

    off = _render(repo_root, path, "nv", {**env, "BUILDER_NO_CACHE": "1"})
    assert off.stdout == changed.stdout and _imported(off, "jinja2")


def test_a_failed_render_is_never_stored(repo_root, tmp_path):
    import os

    env = {**os.environ, "BUILDER_CACHE_DIR": str(tmp_path / "cache")}
    path = tmp_path / "matrix.yaml"
    path.write_text(dump(matrix(dict(NVIDIA, components={**NVIDIA["components"], "efa": "1.35.0;id"}))))
    for _ in range(2):
        bad = _render(repo_root, path, "nv", env)
        assert bad.returncode == 2 and "components.efa" in bad.stderr
    assert not list((tmp_path / "cache").glob("render/*.json"))
