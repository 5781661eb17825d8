"""End to end through the real Slurm + pyxis + enroot: `builder build` -> `builder export` ->
`builder sbatch --submit --wait`, the job running inside the exported image.

Real: the image (itest-nvidia from the real templates on the NGC stand-in base: the EFA
installer stanza's PATH and the network-env presets), mksquashfs through `builder export`,
slurmctld/slurmd (Debian's Slurm 22.05), pyxis 0.24.0 in the plugstack, enroot 4.1.2 unpacking
(`enroot create`) or mounting (`use_squashfuse=1`) the .sqsh and starting the container, srun
--mpi=pmix, `builder nccl parse`/`judge` on the job's output file, and `builder smoke`.
Stand-in (no GPU here; labelled in the image): /opt/nccl-tests/build/all_reduce_perf is a
script that replays a real recorded nccl-tests output (tests/fixtures/nccl/awsome_p5_2node_srun.txt,
2 x p5.48xlarge) on rank 0 and records what its rank got into /results when that is mounted.
Not testable here: more than one node, GPUs, EFA devices, non-root users (see docs/slurm.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import harness
import standins
from slurm_support import as_printed, pyxis_cluster, recorded_output  # noqa: F401  (session fixture)

from builder import smoke_login_shell
from builder.nccl.parse import parse_text
from builder.smoke import Container
from builder.smoke_login_shell import parse_environ

pytestmark = pytest.mark.integration

DOCKER = standins.DOCKER
NVIDIA = f"{harness.ITEST_REPO}/nvidia:itest-nvidia"
IMAGE = f"{harness.ITEST_REPO}/slurm:itest-nvidia-nccl-replay"
RECORDED = "awsome_p5_2node_srun.txt"
TASKS = 2
BENCH_ARGS = ["-b", "8", "-e", "16G", "-f", "2", "-g", "1", "-c", "1", "-w", "5", "-n", "100"]
DEBIAN_ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # the stand-in base's /etc/profile

STAND_IN = """#!/bin/bash
# Stand-in for nccl-tests' all_reduce_perf (test fixture; no GPU here). It records what this rank
# got inside the container into /results when that is mounted, then, like nccl-tests under MPI,
# prints the results on rank 0 only: a real recorded output, replayed verbatim from
# tests/fixtures/nccl/{recorded} (2 x p5.48xlarge; attributed in tests/fixtures/nccl/README.md).
set -eu
if [ -d /results ]; then
  printf '%s\\n' "$@" > "/results/args.$SLURM_PROCID"
  cat /proc/self/environ > "/results/environ.$SLURM_PROCID"
  cat /proc/self/mounts > "/results/mounts.$SLURM_PROCID"
fi
if [ "${{PMIX_RANK:-$SLURM_PROCID}}" = 0 ]; then cat /opt/nccl-tests/replay/all_reduce_perf.txt; fi
"""
DOCKERFILE = f"""FROM {NVIDIA}
COPY recorded.txt /opt/nccl-tests/replay/all_reduce_perf.txt
COPY all_reduce_perf /opt/nccl-tests/build/all_reduce_perf
# As the nccl-tests stanza does: the binaries on PATH.
ENV PATH=/opt/nccl-tests/build:$PATH
LABEL builder.test.standin="nccl-tests all_reduce_perf replaying tests/fixtures/nccl/{RECORDED}"
"""


def image_env(ref: str) -> dict[str, str]:
    out = subprocess.run([DOCKER, "image", "inspect", "--format", "{{json .Config.Env}}", ref],
                         capture_output=True, text=True, check=True).stdout
    return dict(e.split("=", 1) for e in json.loads(out))


@pytest.fixture(scope="module")
def exported(build_project, tmp_path_factory):
    """itest-nvidia built by `builder build` (cached layers when the build tests ran first), the
    stand-in nccl-tests layer on top, and `builder export` of that to a .sqsh."""
    built = build_project.cli("build", "itest-nvidia", "--network", "host")
    assert built.returncode == 0, built.stderr[-3000:]
    ctx = tmp_path_factory.mktemp("nccl-replay")
    (ctx / "recorded.txt").write_text(as_printed(recorded_output(RECORDED)))
    (ctx / "all_reduce_perf").write_text(STAND_IN.format(recorded=RECORDED))
    (ctx / "all_reduce_perf").chmod(0o755)
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    subprocess.run([DOCKER, "build", "-q", "--network", "host", "-t", IMAGE, str(ctx)], check=True,
                   capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    sqsh = tmp_path_factory.mktemp("fsx") / "itest-nvidia-nccl.sqsh"
    proc = build_project.cli("export", IMAGE, "--to", str(sqsh), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["dest"] == str(sqsh)
    return sqsh, image_env(IMAGE)


def sbatch(project, cluster, cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`builder sbatch itest-nvidia ... --wait --json` against the pyxis cluster, run in cwd."""
    argv = [*project.cli_argv(), "sbatch", "itest-nvidia", "--nodes", "1", "--ntasks-per-node", str(TASKS),
            "--time", "5", "--submit", "--wait", "--json", *args]
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**project.cli_env(), "SLURM_CONF": str(cluster.conf)})
    summary = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    return proc, summary


@contextlib.contextmanager
def squashfuse(cluster):
    """pyxis use_squashfuse=1 for the steps started inside (enroot mounts the .sqsh: seconds faster
    per job than unpacking it; enroot starts the container the same way, src/runtime.sh runtime::_start)."""
    cluster.set_pyxis_options(use_squashfuse="1")
    try:
        yield
    finally:
        cluster.set_pyxis_options()


def report_lines(text: str) -> dict[str, str]:
    """The image report of rank 0 ('0: # image on HOST: NAME=VALUE') as a dict."""
    out = {}
    for line in text.splitlines():
        if line.startswith("0: # image on ") and "=" in line:
            name, value = line.split(": ", 2)[2].split("=", 1)
            out[name] = value
    return out


def test_job_runs_in_the_image_with_its_environment_and_its_output_is_read(
        build_project, pyxis_cluster, exported, tmp_path):
    sqsh, baked = exported
    results = tmp_path / "results"
    results.mkdir()
    proc, summary = sbatch(build_project, pyxis_cluster, tmp_path, "--sqsh", str(sqsh),
                           "--container-mount", f"{results}:/results", "--env", "NCCL_SOCKET_IFNAME=^lo,docker",
                           "-o", "run.sbatch")
    assert proc.returncode == 0, proc.stdout + proc.stderr + pyxis_cluster.logs()
    output = Path(summary["output"]).read_text()

    # The job's output shows the image's environment: its PATH (EFA/OpenMPI and nccl-tests
    # binaries), mpirun found on it, its presets, and the script's variables winning (--container-env).
    report = report_lines(output)
    assert report["PATH"] == baked["PATH"]
    assert report["PATH"].startswith("/opt/nccl-tests/build:") and "/opt/amazon/openmpi/bin" in report["PATH"]
    assert report["mpirun"] == "/opt/amazon/openmpi/bin/mpirun"
    assert report["OPAL_PREFIX"] == baked["OPAL_PREFIX"] == "/opt/amazon/openmpi"
    assert baked["NCCL_SOCKET_IFNAME"] != "^lo,docker" and report["NCCL_SOCKET_IFNAME"] == "^lo,docker"
    assert report["NCCL_DEBUG"] == "INFO"

    # Every rank ran inside the image (the binary exists only there), wired up by srun --mpi=pmix,
    # with the image's variables and the script's, and --container-mounts brought /results in.
    for rank in range(TASKS):
        env = parse_environ((results / f"environ.{rank}").read_text())
        assert env["PMIX_RANK"] == str(rank) and env["SLURM_PROCID"] == str(rank)
        assert env["PATH"] == baked["PATH"]
        for name, value in summary["env"].items():
            assert env[name] == value, name
        for name, value in baked.items():
            if name not in summary["env"] and name != "PATH":
                assert env.get(name) == value, name
        assert (results / f"args.{rank}").read_text().split() == BENCH_ARGS

    # `builder nccl parse`/`judge` read the job's real output file like the recorded run it replayed.
    run, recorded = parse_text(output), parse_text(recorded_output(RECORDED))
    assert run.rows == recorded.rows and len(run.rows) == 32
    assert run.launcher == "srun -l" and run.collective == "all_reduce_perf"
    parsed = build_project.cli("nccl", "parse", "--json", summary["output"])
    assert parsed.returncode == 0, parsed.stderr
    assert json.loads(parsed.stdout)[0]["peak"]["busbw"] == 487.26
    judged = build_project.cli("nccl", "judge", summary["output"], "--nodes", "2", "--instance", "p5.48xlarge",
                               "--collective", "all_reduce_perf")
    assert judged.returncode == 0, judged.stdout + judged.stderr
    assert "PASS: all_reduce_perf on 2 x p5.48xlarge" in judged.stdout


def test_login_shell_trap_is_real_caught_by_smoke_and_avoided_by_the_script(pyxis_cluster, exported, tmp_path):
    """Under enroot's default login shell the stand-in base's Debian /etc/profile resets PATH:
    a bare `srun --container-image` loses the image's PATH, smoke's login-shell check finds
    exactly the entries the job lost, and the documented setting (ENROOT_LOGIN_SHELL=n, what the
    script exports) keeps them."""
    sqsh, baked = exported
    probe = ["srun", "--container-image", str(sqsh), "sh", "-c",
             'echo "PATH=$PATH"; echo "mpirun=$(command -v mpirun || echo missing)"']
    env = {k: v for k, v in pyxis_cluster.env.items() if k != "ENROOT_LOGIN_SHELL"}
    with squashfuse(pyxis_cluster):
        bare = subprocess.run(probe, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
        immune = subprocess.run(probe, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                                env={**env, "ENROOT_LOGIN_SHELL": "n"})
    assert bare.returncode == 0, bare.stderr + pyxis_cluster.logs()
    seen = dict(line.split("=", 1) for line in bare.stdout.splitlines() if "=" in line)
    assert seen == {"PATH": DEBIAN_ROOT_PATH, "mpirun": "missing"}
    assert immune.returncode == 0, immune.stderr
    assert f"PATH={baked['PATH']}" in immune.stdout and "mpirun=/opt/amazon/openmpi/bin/mpirun" in immune.stdout

    # smoke's check, on the same image in Docker, predicts what enroot did.
    config = json.loads(subprocess.run([DOCKER, "image", "inspect", "--format", "{{json .Config}}", IMAGE],
                                       capture_output=True, text=True, check=True).stdout)
    with Container(DOCKER, IMAGE, "login-shell") as box:
        found = {args["user"]: (warn, detail) for args, warn, detail in
                 smoke_login_shell.results(DOCKER, box.name, config)}
    lost = [p for p in baked["PATH"].split(":") if p not in DEBIAN_ROOT_PATH.split(":")]
    warn, detail = found["root"]
    assert warn and f"drops {', '.join(lost)} from PATH" in detail and "ENROOT_LOGIN_SHELL" in detail
    assert found["user"][0]  # Debian's /etc/profile sets PATH for other users too


def test_smoke_reports_the_login_shell_check(build_project, tmp_path):
    """`builder smoke` runs the check: WARN for an image whose /etc/profile sets PATH, PASS once
    it does not (a two-megabyte image made from this machine's busybox, so it is quick)."""
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is missing (scripts/setup-host.sh installs it)"
    root = tmp_path / "rootfs"
    for folder in ("bin", "etc", "root", "tmp", "opt/tools/bin"):
        (root / folder).mkdir(parents=True)
    shutil.copy(busybox, root / "bin/busybox")
    for applet in ("sh", "env", "cat", "find", "grep", "sed", "sort", "ls", "sleep", "cksum", "id"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/profile").write_text('PATH="/usr/local/bin:/usr/bin:/bin"\nexport PATH\n')
    results = {}
    for tag, profile in (("resets-path", None), ("keeps-path", "# nothing here sets PATH\n")):
        if profile is not None:
            (root / "etc/profile").write_text(profile)
        ref = f"{harness.ITEST_REPO}/login-shell:{tag}"
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run([DOCKER, "import", "--change", "ENV PATH=/opt/tools/bin:/bin", "-", ref], stdin=tar.stdout,
                       check=True, capture_output=True)
        tar.wait()
        proc = build_project.cli("smoke", ref, "--json")
        subprocess.run([DOCKER, "rmi", ref], capture_output=True)
        results[tag] = [c for c in json.loads(proc.stdout)["checks"] if c["kind"] == "login-shell"]
    assert [(c["args"]["user"], c["warn"]) for c in results["resets-path"]] == [("root", True), ("user", True)]
    assert "drops /opt/tools/bin from PATH" in results["resets-path"][0]["detail"]
    assert [(c["stanza"], c["ok"], c["warn"]) for c in results["keeps-path"]] == [("enroot", True, False)] * 2


def test_named_container_is_reused_by_a_second_job(build_project, pyxis_cluster, exported, tmp_path):
    sqsh, _ = exported
    name = "itest-nvidia-nccl"
    first, summary = sbatch(build_project, pyxis_cluster, tmp_path, "--sqsh", str(sqsh), "--container-name", name,
                            "-o", "first.sbatch")
    assert first.returncode == 0, first.stdout + first.stderr + pyxis_cluster.logs()
    assert f"pyxis_{name}" in pyxis_cluster.enroot("list").stdout.split()  # pyxis kept it (named)
    rootfs = pyxis_cluster.enroot_dir / "data" / f"pyxis_{name}"
    before = (rootfs / "etc").stat().st_ino
    # The second job cannot import anything: its .sqsh is gone. It runs from the kept container.
    moved = sqsh.with_suffix(".away")
    sqsh.rename(moved)
    try:
        second, summary2 = sbatch(build_project, pyxis_cluster, tmp_path, "--sqsh", str(sqsh),
                                  "--container-name", name, "-o", "second.sbatch")
        after = (rootfs / "etc").stat().st_ino
    finally:
        moved.rename(sqsh)
        pyxis_cluster.enroot("remove", "--force", f"pyxis_{name}")
    assert second.returncode == 0, second.stdout + second.stderr + pyxis_cluster.logs()
    assert summary2["job_id"] != summary["job_id"] and after == before  # the same unpacked tree
    assert len(parse_text(Path(summary2["output"]).read_text()).rows) == 32


def test_use_squashfuse_mounts_the_image_instead_of_unpacking_it(build_project, pyxis_cluster, exported, tmp_path):
    sqsh, baked = exported
    results = tmp_path / "results"
    results.mkdir()
    containers_before = pyxis_cluster.enroot("list").stdout.split()
    with squashfuse(pyxis_cluster):
        proc, summary = sbatch(build_project, pyxis_cluster, tmp_path, "--sqsh", str(sqsh),
                               "--container-mount", f"{results}:/results", "-o", "fuse.sbatch")
    assert proc.returncode == 0, proc.stdout + proc.stderr + pyxis_cluster.logs()
    # enroot started the .sqsh itself: the root is an overlay over the squashfuse mount in enroot's
    # runtime path (enroot src/runtime.sh: runtime::_mount_rootfs), and no container was created.
    root = next(line.split() for line in (results / "mounts.0").read_text().splitlines() if line.split()[1] == "/")
    assert root[2] == "overlay" and f"lowerdir={pyxis_cluster.enroot_dir / 'runtime'}" in root[3]
    assert pyxis_cluster.enroot("list").stdout.split() == containers_before
    assert report_lines(Path(summary["output"]).read_text())["PATH"] == baked["PATH"]
    assert len(parse_text(Path(summary["output"]).read_text()).rows) == 32


def test_a_binary_missing_from_the_image_is_named_and_fails_the_job(build_project, pyxis_cluster, exported, tmp_path):
    sqsh, _ = exported
    with squashfuse(pyxis_cluster):
        proc, summary = sbatch(build_project, pyxis_cluster, tmp_path, "--sqsh", str(sqsh),
                               "--tests-dir", "/opt/not-nccl-tests", "-o", "missing.sbatch")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert summary["exit_code"] != 0
    output = Path(summary["output"]).read_text()
    assert "/opt/not-nccl-tests/all_reduce_perf is not an executable in the image" in output
