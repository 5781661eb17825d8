"""`builder nccl run` against the real Docker engine (integration).

This machine has no GPU, so the real nccl-tests binaries cannot run: the tests check the no-GPU
exit, that the engine accepts the container options `run` builds (by creating the container and
reading its config back), and the whole run -> logs -> parse -> judge path with a stand-in binary
that replays a recorded real output and a recorded real NCCL log.
"""

from __future__ import annotations

import json
import resource
import shlex
import shutil
import subprocess
import sys

import pytest
from nccl_support import docker, load_fixture, stand_in_image, unavailable

from builder.nccl.instances import INSTANCES
from builder.nccl.parse import split_prefix
from builder.nccl.run import RunOptions, run_suite

pytestmark = pytest.mark.integration

RESULTS = "a3mega_h100_2node_mpirun.txt"
LOG_SOURCE = "efa_eks_p4d_2node_mpirun_old.txt"


@pytest.fixture(scope="module")
def image():
    client = docker()
    log = "\n".join(
        split_prefix(line)[2] for line in load_fixture(LOG_SOURCE).splitlines() if "NCCL INFO" in line
    )
    return client, stand_in_image(client, load_fixture(RESULTS), log + "\n")


def builder_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True, cwd=cwd)


def test_run_without_gpu_says_so_in_one_line_and_exits_3(image, tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this host has nvidia-smi: the no-GPU path is not reachable")
    _, tag = image
    proc = builder_cli("nccl", "run", tag, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no NVIDIA GPU on this host")
    assert not (tmp_path / "out").exists()


def test_no_gpu_exit_comes_before_the_image_check(image, tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this host has nvidia-smi: the no-GPU path is not reachable")
    proc = builder_cli("nccl", "run", "builder-test/no-such-image:0", cwd=tmp_path)
    assert proc.returncode == 3 and proc.stderr.startswith("error: no NVIDIA GPU"), proc.stderr


def test_unknown_local_image_is_a_usage_error_and_never_pulled(image, tmp_path):
    proc = builder_cli("nccl", "run", "builder-test/no-such-image:0", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2 and "not in the local Docker engine" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from push_support import Registry

    if not shutil.which("docker-registry"):
        unavailable("docker-registry missing (Debian package docker-registry)")
    reg = Registry(tmp_path_factory.mktemp("registry"), password=None).start()  # no auth: a plain pull
    yield reg
    reg.stop()


def test_registry_reference_not_in_the_engine_is_pulled(image, registry, tmp_path):
    from builder.errors import BuilderError
    from builder.buildkit import image_inspect
    from builder.nccl.run import ensure_image

    client, tag = image
    ref = f"127.0.0.1:{registry.port}/nccl-stand-in:{tag.rsplit(':', 1)[1]}"
    subprocess.run([client, "tag", tag, ref], check=True, capture_output=True)
    pushed = subprocess.run([client, "push", ref], capture_output=True, text=True)
    assert pushed.returncode == 0, pushed.stderr
    subprocess.run([client, "rmi", ref], check=True, capture_output=True)  # our tag only; the image stays
    assert image_inspect(client, ref) is None
    dry = builder_cli("nccl", "run", ref, "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0 and dry.stdout.splitlines()[0] == f"{client} pull {ref}"
    said = []
    try:
        ensure_image(client, ref, progress=said.append)
        assert image_inspect(client, ref) is not None and said == [f"pulling {ref} ..."]
    finally:
        subprocess.run([client, "rmi", ref], capture_output=True)
    with pytest.raises(BuilderError) as exc:
        ensure_image(client, f"127.0.0.1:{registry.port}/nccl-stand-in:no-such-tag")
    message = str(exc.value)
    assert exc.value.exit_code == 2 and message.startswith("cannot pull 127.0.0.1:") and "\n" not in message


def test_engine_accepts_the_gpu_container_options(image, tmp_path):
    client, tag = image
    proc = builder_cli("nccl", "run", tag, "--dry-run", "-g", "8", "-C", "all_reduce", "-C", "alltoall",
                       "--env", "FI_EFA_USE_DEVICE_RDMA=1", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    commands = [shlex.split(line) for line in proc.stdout.splitlines()]  # the image is local: no pull line
    assert [c[-15] for c in commands] == ["all_reduce_perf", "alltoall_perf"]
    argv = commands[0]
    assert argv[1:3] == ["run", "--rm"]
    created = subprocess.run([client, "create", *argv[3:]], capture_output=True, text=True)
    assert created.returncode == 0, created.stderr
    cid = created.stdout.strip()
    try:
        info = json.loads(subprocess.run([client, "inspect", cid], capture_output=True, text=True, check=True).stdout)[0]
    finally:
        subprocess.run([client, "rm", "-f", cid], capture_output=True)
    host = info["HostConfig"]
    assert host["IpcMode"] == "host" and host["NetworkMode"] == "host"
    memlock = next(u for u in host["Ulimits"] if u["Name"] == "memlock")
    assert memlock["Soft"] == -1 and memlock["Hard"] == -1
    assert any("gpu" in caps for req in host["DeviceRequests"] for caps in req["Capabilities"])
    assert host["DeviceRequests"][0]["Count"] == -1  # --gpus all
    env = info["Config"]["Env"]
    assert "NCCL_DEBUG=INFO" in env and "NCCL_DEBUG_FILE=/nccl-debug/%h.%p.log" in env
    assert "FI_EFA_USE_DEVICE_RDMA=1" in env
    assert any(b.endswith(":/nccl-debug") for b in host["Binds"])
    assert info["Config"]["Cmd"][-14:] == ["-b", "8", "-e", "2G", "-f", "2", "-g", "8", "-n", "20", "-w", "5", "-c", "1"]


def _no_gpu_runtime(argv: list[str]) -> list[str]:
    """This engine has no GPU runtime: drop --gpus; everything else stays the real command."""
    argv = list(argv)
    i = argv.index("--gpus")
    del argv[i:i + 2]
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    if hard != resource.RLIM_INFINITY:
        # A sandboxed engine (as on the CI machine) may not raise memlock past its own limit; GPU
        # hosts allow unlimited, and the create test above checks the engine takes -1:-1.
        argv[argv.index("memlock=-1:-1")] = f"memlock={hard}:{hard}"
    return argv


def test_run_suite_with_a_stand_in_binary_keeps_logs_apart_judges_and_reports(image, tmp_path):
    client, tag = image
    out = tmp_path / "run"
    (outcome,) = run_suite(client, tag, RunOptions(), 2, out, INSTANCES["p5.48xlarge"], devices=[],
                           timeout=120, adapt_command=_no_gpu_runtime)
    raw = outcome.raw
    assert outcome.error is None and raw.returncode == 0, raw.stderr_path.read_text()
    assert "all_reduce_perf -b 8 -e 2G -f 2 -g 2 -n 20 -w 5 -c 1" in raw.stderr_path.read_text()
    logs = list(raw.log_dir.glob("*.log"))
    assert len(logs) == 1 and "%" not in logs[0].name  # NCCL_DEBUG_FILE's %h.%p were filled in
    assert "NCCL INFO" not in raw.stdout_path.read_text()  # the results stay clean
    run, verdict = outcome.run, outcome.verdict
    assert len(run.rows) == 31 and run.transport.verdict == "efa" and run.collective == "all_reduce_perf"
    # nodes=1: the recorded 2-node H100 output is judged against one p5's NVLink threshold (270 GB/s).
    assert verdict.passed and verdict.threshold == 270.0, verdict.reasons
    report = json.loads((out / "report-all_reduce.json").read_text())
    assert report["verdict"]["passed"] is True and len(report["rows"]) == 31
    assert (out / "busbw-all_reduce.png").read_bytes()[:4] == b"\x89PNG"
