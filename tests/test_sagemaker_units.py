"""SageMaker without an engine: the matrix's code.entry_point, what the stanza bakes, the jobs
planned per image, the judges on SDK results, the bundled contract script, the SMDDP rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from builder import sagemaker_local as sml
from builder import sagemaker_sdk as sdk
from builder.errors import MatrixError, UsageError
from builder.matrix import load_matrix
from builder.render import Renderer
from tests.matrix_samples import DLC, SOURCE, dump, matrix


def _dlc(write_matrix, tmp_path, **code):
    (tmp_path / "code").mkdir(exist_ok=True)
    (tmp_path / "code" / "train.py").write_text("print('baked')\n")
    entry = {**DLC, "code": {"dir": "code", "program": "train.py", **code}}
    return load_matrix(write_matrix(dump(matrix(entry)))).get("dl")


def test_code_entry_point_defaults_to_job_and_bakes_no_program(write_matrix, tmp_path):
    spec = _dlc(write_matrix, tmp_path)
    assert spec.code.entry_point == "job"
    dockerfile = Renderer().render(spec).dockerfile
    assert "COPY code/ /opt/ml/code/" in dockerfile and "SAGEMAKER_SUBMIT_DIRECTORY=/opt/ml/code" in dockerfile
    assert "SAGEMAKER_PROGRAM=" not in dockerfile
    assert "the job's entry_point" in sml.program_summary(spec)


def test_code_entry_point_image_bakes_the_program(write_matrix, tmp_path):
    spec = _dlc(write_matrix, tmp_path, entry_point="image")
    dockerfile = Renderer().render(spec).dockerfile
    assert "SAGEMAKER_PROGRAM=train.py" in dockerfile
    assert sml.program_summary(spec).startswith("always /opt/ml/code/train.py")


@pytest.mark.parametrize("value", ["Image", "both", "", "job\n", 3])
def test_code_entry_point_rejects_anything_else(write_matrix, tmp_path, value):
    with pytest.raises(MatrixError) as exc:
        _dlc(write_matrix, tmp_path, entry_point=value)
    assert "code.entry_point" in str(exc.value) and "job" in str(exc.value)


def test_explain_says_what_a_job_runs(repo_root):
    from click.testing import CliRunner

    from builder.cli import cli

    result = CliRunner().invoke(cli, ["--matrix", str(repo_root / "matrix.yaml"), "explain", "dlc-pt2.4.0-sagemaker-train"])
    assert result.exit_code == 0, result.output
    assert "sagemaker job runs: the job's entry_point" in result.output


def test_smddp_needs_sshd_and_mpi4py(write_matrix):
    without_ssh = {**SOURCE, "stanzas": {}}
    without_mpi4py = {**SOURCE, "components": {k: v for k, v in SOURCE["components"].items() if k != "mpi4py"}}
    for entry, key in ((without_ssh, "stanzas.openssh"), (without_mpi4py, "components.mpi4py")):
        with pytest.raises(MatrixError) as exc:
            load_matrix(write_matrix(dump(matrix(entry))))
        assert key in str(exc.value) and "[smddp-launcher]" in str(exc.value)
    assert load_matrix(write_matrix(dump(matrix(SOURCE)))).get("src").has("openssh")


def test_plan_per_image(bundled_matrix, tmp_path):
    job_image = bundled_matrix.get("dlc-pt2.4.0-sagemaker-train")
    plan = {job.case: job for job, _ in sml.plan(job_image, tmp_path / "a")}
    assert list(plan) == ["baked", "entry_point", "failure", "two_hosts", "mpi"]  # a DLC ships sshd and mpi4py
    assert plan["baked"].estimator == "generic" and plan["baked"].hyperparameters == {"sagemaker_program": "train.py"}
    assert plan["entry_point"].entry_point == sml.PROGRAM and (plan["entry_point"].source_dir / sml.PROGRAM).is_file()
    assert set(plan["entry_point"].channels) == {"train", "validation"} and not plan["entry_point"].environment
    assert plan["two_hosts"].instance_count == 2 and plan["mpi"].distribution["mpi"]["enabled"]
    owned = bundled_matrix.get("dlc-pt2.4.0-sagemaker-train")
    owned = type(owned)(**{**owned.__dict__, "code": type(owned.code)(owned.code.dir, owned.code.program, "image")})
    plan = {job.case: job for job, _ in sml.plan(owned, tmp_path / "b")}
    assert "entry_point" not in plan and plan["baked"].hyperparameters == {}
    assert plan["failure"].environment == {"SAGEMAKER_PROGRAM": sml.PROGRAM}  # an explicit override
    source = bundled_matrix.get("source-pt2.6.0-cu126-nccl2.23.4")  # no code, no openssh, no SMDDP
    assert [job.case for job, _ in sml.plan(source, tmp_path / "c")] == ["entry_point", "failure", "two_hosts"]
    torch = {job.case: job for job, _ in sml.plan(source, tmp_path / "d", torchrun=True)}["torch_distributed"]
    assert torch.instance_count == 2 and torch.distribution == {"torch_distributed": {"enabled": True}}


def _result(**kw) -> sdk.JobResult:
    base = dict(case="x", sdk_error=None, exit_codes={"algo-1-ab": 0}, logs={}, model={"model.json": b"{}"},
                output={"success": b""})
    return sdk.JobResult(**{**base, **kw})


def test_judge_success_and_failure():
    assert sml.judge_success(_result()) == []
    bad = sml.judge_success(_result(sdk_error="Failed to run", exit_codes={"algo-1-ab": 1}, model={},
                                    output={"failure": b"boom"}))
    assert len(bad) == 5
    failure = b'ExecuteUserScriptError:\nExitCode 3\nErrorMessage ""\nCommand "python x.py --fail 3"'
    failed = _result(sdk_error="Process exited with code: 1", exit_codes={"algo-1-ab": 1}, output={"failure": failure})
    assert sml.judge_failure(failed, 3) == []
    assert any("ExitCode 4" in p for p in sml.judge_failure(failed, 4))
    assert len(sml.judge_failure(_result(), 3)) == 3  # exit 0, no failure file, success marker


def _host_report(host, hosts, **extra):
    return json.dumps({"host": host, "hosts": hosts, "resolved": {h: "172.18.0.2" for h in hosts},
                       "hps": sml.HYPERPARAMETERS, "epochs": 2, "argv": [], "rows": {"train": 10, "validation": 4},
                       **extra}).encode()


def test_judge_entry_point_two_hosts_and_mpi():
    one = _result(model={"host-algo-1-ab.json": _host_report("algo-1-ab", ["algo-1-ab"])})
    assert sml.judge_entry_point(one) == []
    assert "did not run" in sml.judge_entry_point(_result())[0]
    hosts = ["algo-1-ab", "algo-2-ab"]
    two = _result(exit_codes={h: 0 for h in hosts}, model={f"host-{h}.json": _host_report(h, hosts) for h in hosts})
    assert sml.judge_two_hosts(two) == []
    blind = _result(exit_codes={h: 0 for h in hosts},
                    model={f"host-{h}.json": _host_report(h, hosts[:1]) for h in hosts})
    assert any("SM_HOSTS" in p for p in sml.judge_two_hosts(blind))
    ranks = {f"rank-{r}.json": json.dumps({"rank": r, "size": 2, "rank_hosts": ["c1", "c2"]}).encode() for r in (0, 1)}
    assert sml.judge_mpi(_result(exit_codes={h: 0 for h in hosts}, model=ranks)) == []
    assert "ranks" in sml.judge_mpi(_result(exit_codes={h: 0 for h in hosts}))[0]
    summed = {f"rank-{r}.json": json.dumps({"rank": r, "size": 2, "sum": 3.0}).encode() for r in (0, 1)}
    assert sml.judge_torch_distributed(_result(exit_codes={h: 0 for h in hosts}, model=summed)) == []
    wrong = {k: v.replace(b"3.0", b"2.0") for k, v in summed.items()}
    assert "all_reduce" in sml.judge_torch_distributed(_result(exit_codes={h: 0 for h in hosts}, model=wrong))[0]


def test_contract_script_runs_as_the_toolkit_would(tmp_path):
    """The bundled script under the variables the toolkit sets: its report, and a requested exit code."""
    plan = sml.plan(type("S", (), {"code": None, "has": lambda self, s: False,
                                   "base": type("B", (), {"dlc": None})()})(), tmp_path / "in")
    job = next(j for j, _ in plan if j.case == "entry_point")
    model = tmp_path / "model"
    model.mkdir()
    env = {"PATH": os.environ["PATH"], "SM_CURRENT_HOST": "algo-1-x", "SM_HOSTS": '["algo-1-x"]',
           "SM_MODEL_DIR": str(model), "SM_CHANNELS": '["train","validation"]', "SM_HPS": json.dumps(sml.HYPERPARAMETERS),
           "SM_CHANNEL_TRAIN": str(job.channels["train"]), "SM_CHANNEL_VALIDATION": str(job.channels["validation"])}
    script = str(job.source_dir / sml.PROGRAM)
    ok = subprocess.run([sys.executable, script, "--epochs", "2", "--note", "contract-check"], env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    report = json.loads((model / "host-algo-1-x.json").read_text())
    assert report["rows"] == {"train": 10, "validation": 4} and report["epochs"] == 2
    assert report["resolved"]["algo-1-x"].startswith("unresolved")  # no such host here
    assert subprocess.run([sys.executable, script, "--fail", "3"], env=env, capture_output=True).returncode == 3


def test_sdk_missing_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(sdk, "sdk_problem", lambda: "the SageMaker Python SDK v2 is not installed")
    with pytest.raises(UsageError) as exc:
        sdk.require_sdk()
    assert exc.value.exit_code == 2 and "SageMaker Python SDK" in str(exc.value)


def test_sdk_problem_names_a_missing_compose(monkeypatch):
    monkeypatch.setattr(sdk, "compose_command", lambda: None)
    problem = sdk.sdk_problem()
    assert problem is not None and "docker-compose" in problem


def test_artifacts_are_read_from_the_tarballs(tmp_path):
    import tarfile

    (tmp_path / "failure").write_text("ExecuteUserScriptError")
    with tarfile.open(tmp_path / "output.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "failure", arcname="failure")
    assert sdk._members(tmp_path / "output.tar.gz") == {"failure": b"ExecuteUserScriptError"}
    assert sdk._members(tmp_path / "missing.tar.gz") == {}


def test_format_lines():
    outcome = sml.Outcome("failure", False, ["no /opt/ml/output/failure"], {"algo-1-ab": 0}, [], None, ["last line"])
    lines = sml.format_lines([outcome.to_dict()])
    assert lines[0].startswith("FAIL sagemaker: failure job (exit codes {'algo-1-ab': 0}")
    assert lines[1] == "FAIL sagemaker: failure job: no /opt/ml/output/failure" and lines[2] == "  | last line"
