"""`builder sbatch` against a real Slurm (slurmctld + slurmd + munged from Debian, on 127.0.0.1).

What runs for real: slurmctld judging the generated script (sbatch --test-only), the job itself
(sbatch --wait), srun --mpi=pmix starting every rank with the exported EFA/NCCL environment, and
`builder nccl parse` reading the job's output file. This module covers the --no-container variant
(no pyxis in this cluster's plugstack); the pyxis variant runs end to end in the exported image
through the real pyxis and enroot in tests/integration/test_slurm_pyxis.py. No GPU here, so
--tests-dir points at a stand-in all_reduce_perf: a shell script that records its argv and
environment per rank, and on rank 0 prints a real recorded nccl-tests output verbatim
(tests/fixtures/nccl/, attributed there; without the srun labels it was recorded with, since the
script's srun --label adds them): one from Slurm on 2 x p5.48xlarge, and one with the NCCL INFO
lines of an EFA run on 2 x p4d.24xlarge.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder import slurm
from builder.cli import cli
from slurm_support import as_printed, recorded_output, slurm_cluster  # noqa: F401  (session fixture)

pytestmark = pytest.mark.integration

VERSIONS = ["--efa", "1.47.0", "--nccl", "2.29.3"]  # the awsome nccl-tests image, 2026-02
TASKS = 2  # the test node has 2 CPUs


def sbatch(tmp_path, monkeypatch, *args: str):
    monkeypatch.chdir(tmp_path)
    return CliRunner().invoke(
        cli, ["--matrix", str(tmp_path / "none.yaml"), "sbatch", "nccl-tests:efa1.47.0", *VERSIONS, *args]
    )


def test_pyxis_script_is_accepted_by_slurmctld(slurm_cluster, tmp_path, monkeypatch):
    res = sbatch(tmp_path, monkeypatch, "--nodes", "1", "--ntasks-per-node", str(TASKS),
                 "--sqsh", "/fsx/nccl-tests.sqsh", "--test-only", "-o", "pyxis.sbatch")
    assert res.exit_code == 0, res.output + slurm_cluster.logs()
    assert re.search(r"accepted by slurmctld: .*Job \d+ to start at .* on nodes localhost", res.output), res.output
    text = (tmp_path / "pyxis.sbatch").read_text()
    assert 'srun --container-image "$IMAGE" --container-env=' in text and "export ENROOT_LOGIN_SHELL=n" in text


def test_slurmctld_rejection_is_reported(slurm_cluster, tmp_path, monkeypatch):
    # Two nodes on a one-node cluster: the controller says no, and so do we (exit 1).
    res = sbatch(tmp_path, monkeypatch, "--nodes", "2", "--ntasks-per-node", "1",
                 "--sqsh", "/fsx/nccl-tests.sqsh", "--test-only", "-o", "two.sbatch")
    assert res.exit_code == 1, res.output
    assert "slurmctld rejected" in res.output


@pytest.mark.parametrize("recorded", ["awsome_p5_2node_srun.txt", "efa_eks_p4d_2node_mpirun_old.txt"])
def test_no_container_variant_runs_to_completion_and_parses(recorded, slurm_cluster, tmp_path, monkeypatch):
    from builder.nccl.parse import parse_text

    bindir, record = tmp_path / "bin", tmp_path / "record"
    bindir.mkdir()
    record.mkdir()
    (tmp_path / "recorded.txt").write_text(as_printed(recorded_output(recorded)))
    stand_in = bindir / "all_reduce_perf"
    stand_in.write_text(
        "#!/bin/bash\n"
        "# Stand-in for nccl-tests' all_reduce_perf (no GPU here): record what srun gave this rank,\n"
        "# then, like nccl-tests under MPI, print the results on rank 0 only (a real recorded output).\n"
        "set -eu\n"
        f"printf '%s\\n' \"$@\" > {record}/args.$SLURM_PROCID\n"
        f"env | sort > {record}/env.$SLURM_PROCID\n"
        f"if [ \"$SLURM_PROCID\" = 0 ]; then cat {tmp_path / 'recorded.txt'}; fi\n"
    )
    stand_in.chmod(0o755)

    res = sbatch(tmp_path, monkeypatch, "--nodes", "1", "--ntasks-per-node", str(TASKS), "--no-container",
                 "--tests-dir", str(bindir), "--time", "5", "--wait", "--json", "-o", "run.sbatch")
    assert res.exit_code == 0, res.output + slurm_cluster.logs()
    summary = json.loads(res.output)
    output = Path(summary["output"])
    assert output == tmp_path / f"nccl-nccl-tests-efa1.47.0_{summary['job_id']}.out"

    # Every rank was started by srun with PMIx and the chosen environment.
    expected_env = summary["env"]
    for rank in range(TASKS):
        env = dict(line.split("=", 1) for line in (record / f"env.{rank}").read_text().splitlines() if "=" in line)
        assert env["PMIX_RANK"] == str(rank)  # srun --mpi=pmix wired the rank up
        assert env["SLURM_NTASKS"] == str(TASKS)
        for name, value in expected_env.items():
            assert env.get(name) == value, name
        args = (record / f"args.{rank}").read_text().split()
        assert args == ["-b", "8", "-e", "16G", "-f", "2", "-g", "1", "-c", "1", "-w", "5", "-n", "100"]
    assert "NCCL_TUNER_PLUGIN" not in expected_env  # NCCL 2.29 finds the tuner in the EFA 1.47 plugin

    # The job's output file reads like the recorded run it replayed: rows, average, transport.
    job_run, recorded_run = parse_text(output.read_text()), parse_text(recorded_output(recorded))
    assert job_run.rows and job_run.rows == recorded_run.rows
    assert job_run.avg_busbw_printed == recorded_run.avg_busbw_printed
    assert job_run.transport == recorded_run.transport
    assert job_run.launcher == "srun -l" and job_run.collective == "all_reduce_perf"  # named by the script's echo
    if recorded.startswith("awsome_p5"):
        assert len(job_run.rows) == 32
        assert (job_run.peak.busbw, job_run.peak.size) == (487.26, 17179869184)
    else:  # the EFA verdict survives the trip through the job's output file
        assert job_run.transport.verdict == "efa" and not job_run.transport.socket_fallback

    # And through the CLI that users run on the job's output.
    parsed = CliRunner().invoke(cli, ["nccl", "parse", "--json", str(output)])
    assert parsed.exit_code == 0, parsed.output
    report = json.loads(parsed.output)[0]
    assert report["peak"]["busbw"] == recorded_run.peak.busbw
    assert report["transport"]["verdict"] == recorded_run.transport.verdict


def test_wait_reports_a_failed_job(slurm_cluster, tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "all_reduce_perf").write_text("#!/bin/bash\necho 'stand-in: simulated crash' >&2\nexit 3\n")
    (bindir / "all_reduce_perf").chmod(0o755)
    res = sbatch(tmp_path, monkeypatch, "--nodes", "1", "--ntasks-per-node", "1", "--no-container",
                 "--tests-dir", str(bindir), "--time", "5", "--wait", "-o", "fail.sbatch")
    assert res.exit_code == 1, res.output
    assert re.search(r"job \d+ failed \(exit \d+\)", res.output)
    out = next(tmp_path.glob("*.out")).read_text()
    assert "simulated crash" in out


def test_pmix_plugin_is_loadable(slurm_cluster):
    # The generated srun line needs --mpi=pmix; Debian needs libpmix-dev for that plugin to load.
    res = subprocess.run(["srun", "--mpi=list"], capture_output=True, text=True, env=slurm_cluster.env)
    assert "pmix" in res.stdout + res.stderr
    assert slurm.DEFAULT_OUTPUT == "%x_%j.out"


def test_submit_returns_the_job_id_and_output_path(slurm_cluster, tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sendrecv_perf").write_text("#!/bin/bash\necho \"stand-in rank $SLURM_PROCID\"\n")
    (bindir / "sendrecv_perf").chmod(0o755)
    res = sbatch(tmp_path, monkeypatch, "--nodes", "1", "--ntasks-per-node", "1", "--no-container", "--test",
                 "sendrecv", "--tests-dir", str(bindir), "--time", "5", "--submit", "--json", "-o", "s.sbatch")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["job_id"].isdigit()
    assert summary["output"] == str(tmp_path / f"nccl-nccl-tests-efa1.47.0_{summary['job_id']}.out")
    # Let the job end before reading its output (a bounded wait; no timing is asserted).
    for _ in range(120):
        queued = subprocess.run(["squeue", "-h", "-j", summary["job_id"]], env=slurm_cluster.env,
                                capture_output=True, text=True).stdout.strip()
        if not queued:
            break
        time.sleep(1)
    assert "stand-in rank 0" in Path(summary["output"]).read_text()


def test_every_rank_printing_its_table_is_told_apart_by_the_labels(slurm_cluster, tmp_path, monkeypatch):
    """nccl-tests built without MPI: srun starts N independent single-rank runs, each prints a table.
    With srun --label (the generated script) the parser reads rank 0's and says why."""
    from builder.nccl.parse import parse_text

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (tmp_path / "recorded.txt").write_text(as_printed(recorded_output("awsome_p5_2node_srun.txt")))
    (bindir / "all_reduce_perf").write_text(f"#!/bin/bash\ncat {tmp_path / 'recorded.txt'}\n")
    (bindir / "all_reduce_perf").chmod(0o755)
    res = sbatch(tmp_path, monkeypatch, "--nodes", "1", "--ntasks-per-node", str(TASKS), "--no-container",
                 "--tests-dir", str(bindir), "--time", "5", "--wait", "--json", "-o", "nompi.sbatch")
    assert res.exit_code == 0, res.output + slurm_cluster.logs()
    run = parse_text(Path(json.loads(res.output)["output"]).read_text())
    assert len(run.rows) == 32 and run.peak.busbw == 487.26
    assert any(f"{TASKS} ranks each printed a result table" in w for w in run.warnings)
