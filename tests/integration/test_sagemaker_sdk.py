"""SageMaker jobs through the real SageMaker Python SDK's local mode (docker-compose, the
`sagemaker-local` bridge network), on images built from the real templates on the DLC stand-in
(the real sagemaker-training 4.8.1 and sagemaker-pytorch-training 2.8.1 from PyPI, sshd, Open MPI
and mpi4py as AWS's DLCs ship them).

Covers: `builder smoke --sagemaker` on an image where the job brings its entry point (baked code
through the generic Estimator, PyTorch entry_point/source_dir with hyperparameters and two
file:// channels, a failing script's exit code and failure file, two hosts resolving each other,
the toolkit's MPI runner over sshd with mpi4py on two hosts) and on one that owns its program;
the issue's failure mode (a job's source_dir hiding a baked SAGEMAKER_PROGRAM); an image without
sshd failing the MPI job; and hyperparameter values with quotes breaking in the shell that
sagemaker-training 4.8.1 runs the script through, and surviving its native launcher.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import harness
import standins
from prereq import need

from builder import sagemaker_local as sml
from builder import sagemaker_sdk as sdk

pytestmark = pytest.mark.integration

DOCKER = standins.DOCKER
REPOSITORY = f"{harness.ITEST_REPO}-sagemaker/{{flavor}}"
JOB_IMAGE = f"{harness.ITEST_REPO}-sagemaker/dlc:itest-dlc"
OWNED_IMAGE = f"{harness.ITEST_REPO}-sagemaker/dlc:itest-dlc-owned"


@pytest.fixture(scope="module")
def sagemaker_images(build_project, tmp_path_factory):
    """itest-dlc (the job brings its entry point) and itest-dlc-owned, built from this checkout
    under their own repository (other tests untag and rebuild builder-itest/dlc:itest-dlc); the
    Dockerfiles are the same, so BuildKit's cache makes this quick after test_build_smoke_engine."""
    need(sdk.sdk_problem() is None, f"SageMaker local mode cannot run: {sdk.sdk_problem()}")
    copy = tmp_path_factory.mktemp("sagemaker") / "project"
    shutil.copytree(build_project.root, copy)
    matrix = copy / "matrix.yaml"
    text, count = re.subn(r"(?m)^(  repository: ).*$", rf'\g<1>"{REPOSITORY}"', matrix.read_text(), count=1)
    assert count == 1, "the test matrix's defaults.repository moved"
    matrix.write_text(text)
    project = harness.Project(copy, matrix, build_project.server)
    built = project.cli("build", "itest-dlc", "itest-dlc-owned", "--network", "host", "-j", "2")
    assert built.returncode == 0, built.stderr
    return project


@pytest.fixture
def work():
    path = Path(tempfile.mkdtemp(prefix="builder-itest-sm-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _smoke(project, name: str) -> dict:
    proc = project.cli("smoke", name, "--sagemaker", "--json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["ok"], json.dumps(
        [c for c in doc["checks"] if not c["ok"]] + [o for o in doc.get("sagemaker", []) if not o["ok"]], indent=1)
    return {o["case"]: o for o in doc["sagemaker"]}


def test_smoke_sagemaker_job_brings_its_entry_point(sagemaker_images):
    outcomes = _smoke(sagemaker_images, "itest-dlc")
    assert list(outcomes) == ["baked", "entry_point", "failure", "two_hosts", "mpi", "torch_distributed"]
    assert "no torchrun" in outcomes["torch_distributed"]["note"]  # the stand-in's torch: test_torch_distributed_on_cpu
    assert outcomes["baked"]["model_files"] == ["model.json"]  # the image's own code/train.py
    assert [*outcomes["entry_point"]["exit_codes"].values()] == [0]
    assert outcomes["failure"]["exit_codes"] and [*outcomes["failure"]["exit_codes"].values()] == [1]
    assert "ExecuteUserScriptError" in outcomes["failure"]["failure_file"] and "ExitCode 3" in outcomes["failure"]["failure_file"]
    hosts = sorted(outcomes["two_hosts"]["exit_codes"])
    assert len(hosts) == 2 and hosts[0].startswith("algo-1-") and hosts[1].startswith("algo-2-")
    assert outcomes["two_hosts"]["model_files"] == [f"host-{h}.json" for h in hosts]
    assert {"rank-0.json", "rank-1.json"} <= set(outcomes["mpi"]["model_files"])
    assert not subprocess.run([DOCKER, "ps", "-aq", "--filter", f"label={sdk.JOB_LABEL}"],
                              capture_output=True, text=True).stdout.strip()  # no container left behind


def test_image_owns_its_program(sagemaker_images):
    """code.entry_point image: the generic Estimator runs the baked program unasked, a job's
    entry_point is reported as never run, and a job runs other code only by overriding
    SAGEMAKER_PROGRAM. (The two-host jobs are the same as itest-dlc's: not repeated.)"""
    spec = sagemaker_images_spec(sagemaker_images, "itest-dlc-owned")
    outcomes = {o.case: o for o in sml.contract(DOCKER, OWNED_IMAGE, spec, cases=("baked", "entry_point", "failure"))}
    assert all(o.ok for o in outcomes.values()), [o.to_dict() for o in outcomes.values()]
    assert outcomes["baked"].model_files == ["model.json"]
    assert "never runs" in outcomes["entry_point"].note
    assert "ExitCode 3" in outcomes["failure"].failure_file


def test_source_dir_hides_a_baked_program(sagemaker_images, work):
    """The issue's failure: with SAGEMAKER_PROGRAM baked, PyTorch(entry_point, source_dir) runs the
    image's program name in the job's source_dir, where it does not exist."""
    src = work / "src"
    src.mkdir()
    (src / "entry.py").write_text("print('the job entry point ran')\n")
    result = sdk.run(DOCKER, OWNED_IMAGE, sdk.Job("hidden", entry_point="entry.py", source_dir=src), work / "job", "us-west-2")
    assert [*result.exit_codes.values()] == [1] and "ExitCode 2" in result.text("failure", "output")
    log = "".join(result.logs.values())
    assert "can't open file" in log and "train.py" in log and "the job entry point ran" not in log
    fixed = sdk.run(DOCKER, JOB_IMAGE, sdk.Job("job", entry_point="entry.py", source_dir=src), work / "job2", "us-west-2")
    assert fixed.sdk_error is None and "the job entry point ran" in "".join(fixed.logs.values())


def test_mpi_job_fails_without_sshd(sagemaker_images, work):
    """An image claiming MPI but lacking sshd fails the mpi job here, not on a cluster."""
    broken = f"{harness.ITEST_REPO}-sagemaker/dlc:no-sshd"
    subprocess.run([DOCKER, "build", "-q", "--network", "host", "-t", broken, "-"], input=f"FROM {JOB_IMAGE}\nRUN rm /usr/sbin/sshd\n",
                   text=True, check=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    try:
        spec = sagemaker_images_spec(sagemaker_images, "itest-dlc")
        outcome = sml.contract(DOCKER, broken, spec, cases=("mpi",))[0]
        assert not outcome.ok and outcome.case == "mpi", outcome
        assert any("SSH daemon not found" in line for line in outcome.log_tail) or outcome.problems
    finally:
        subprocess.run([DOCKER, "rmi", broken], capture_output=True)


def sagemaker_images_spec(project, name: str):
    from builder.matrix import load_matrix

    return load_matrix(project.matrix).get(name)


def test_quoted_hyperparameter_reaches_a_shell(sagemaker_images, work):
    """sagemaker-training 3.9.3 to 5.1.0 run the script through /bin/sh with the arguments joined
    unquoted; sagemaker-pytorch-training >= 2.7.0's native launcher (capture_error off) does not."""
    src = work / "src"
    src.mkdir()
    (src / "entry.py").write_text("import sys\nprint('ARGV', sys.argv[1:])\n")
    value = 'it\'s "quoted"'
    shell = sdk.run(DOCKER, JOB_IMAGE, sdk.Job("quoted", entry_point="entry.py", source_dir=src,
                                               hyperparameters={"text": value}), work / "a", "us-west-2")
    assert [*shell.exit_codes.values()] == [1] and "Unterminated quoted string" in "".join(shell.logs.values())
    # The native launcher strips '"' from both ends of the last argument (process.py,
    # check_error: cmd[-1].strip('"')), so the quoted value is not passed last here.
    native = sdk.run(DOCKER, JOB_IMAGE, sdk.Job("native", entry_point="entry.py", source_dir=src, hyperparameters={
        "text": value, "zz": "end", "sagemaker_toolkit_native_launcher_enabled": True}), work / "b", "us-west-2")
    assert native.sdk_error is None, native.logs
    assert f"ARGV {['--text', value, '--zz', 'end']!r}" in "".join(native.logs.values())


# PyTorch for the CPU, for the torch_distributed job: the stand-in's `torch` only reports versions.
# This machine kind keeps the wheel on disk (pip's find-links); PyPI's torch is a CUDA build of
# several GB.
TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")


def test_torch_distributed_on_cpu(sagemaker_images, work):
    """torch_distributed: the toolkit's torchrun launcher on two hosts, gloo all_reduce on the CPU."""
    need(TORCH_WHEEL.is_file(), f"{TORCH_WHEEL} is missing (the CPU build of PyTorch for Python 3.11)")
    context = work / "context"
    context.mkdir()
    shutil.copy(TORCH_WHEEL, context / TORCH_WHEEL.name)
    (context / "Dockerfile").write_text(
        f"FROM {JOB_IMAGE}\nCOPY {TORCH_WHEEL.name} /tmp/\n"
        "RUN rm -rf /usr/local/lib/python3.11/dist-packages/torch"
        f" && pip install --no-cache-dir -q /tmp/{TORCH_WHEEL.name} && rm /tmp/{TORCH_WHEEL.name}\n")
    ref = f"{harness.ITEST_REPO}-sagemaker/dlc:torch-cpu"
    built = subprocess.run([DOCKER, "build", "-q", "--network", "host", "-t", ref, str(context)], text=True,
                           capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "1"}, timeout=1800)
    assert built.returncode == 0, built.stderr[-3000:]
    spec = sagemaker_images_spec(sagemaker_images, "itest-dlc")
    outcome = sml.contract(DOCKER, ref, spec, cases=("torch_distributed",))[0]
    assert outcome.ok, outcome.to_dict()
    assert outcome.model_files == ["rank-0.json", "rank-1.json"] and len(outcome.exit_codes) == 2
