"""A real one-node Slurm cluster on 127.0.0.1 for the tests: munged + slurmctld + slurmd,
optionally with the real pyxis in its plugstack running the real enroot (``SlurmCluster(pyxis=True)``).

Everything lives in a temp dir (munge key and socket, slurm.conf, plugstack.conf, state, spool,
logs, enroot's and pyxis's paths) on free ports, so it neither needs nor touches /etc/slurm,
/run/munge, /run/pyxis or the enroot data of this machine, and can run beside a system Slurm.
Clients find it through SLURM_CONF. Debian packages: slurm-wlm, munge, and libpmix-dev
(Debian's mpi/pmix plugin dlopens .../pmix2/lib/libpmix.so, which only the -dev package ships);
enroot and pyxis are built from ../shared/upstream by scripts/setup-upstream.sh.

Locally a missing piece skips the tests that need it; with CI=true it fails them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from tests.prereq import in_ci, unavailable  # noqa: F401 (used by the tests through this module)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nccl"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "sinfo", "scontrol")
PMIX_LIB = Path("/usr/lib/x86_64-linux-gnu/pmix2/lib/libpmix.so")
START_TIMEOUT = 60.0
# Where scripts/setup-upstream.sh installs them (enroot's Makefile default prefix /usr/local).
PYXIS_SO = Path("/usr/local/lib/builder-pyxis/spank_pyxis.so")
ENROOT = Path("/usr/local/bin/enroot")
# enroot's own helpers (enroot-mount, enroot-switchroot, ...) sit beside it; pyxis runs `enroot`
# through PATH (pyxis enroot.c: enroot_exec, execvpe("enroot", ...)), and slurmstepd's PATH is
# slurmd's: pyxis clears the rest of the environment (pyxis_slurmstepd.c: slurm_clear_env).
SLURMD_PATH = f"{ENROOT.parent}:/usr/sbin:/usr/bin:/sbin:/bin"
# Default plugstack options; the pyxis README's wiki and pyxis config.c (pyxis_config_parse) list
# them: runtime_path (default /run/pyxis), container_scope (global|job), execute_entrypoint,
# sbatch_support, use_enroot_load, importer, use_squashfuse.
PYXIS_OPTIONS = {"container_scope": "global", "execute_entrypoint": "0"}


def missing_tools(pyxis: bool = False) -> list[str]:
    missing = [t for t in DAEMONS + CLIENTS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if not PMIX_LIB.exists():
        missing.append(f"{PMIX_LIB} (libpmix-dev)")
    if pyxis:
        missing += [f"{p} (scripts/setup-upstream.sh)" for p in (PYXIS_SO, ENROOT) if not p.exists()]
        missing += [t for t in ("mksquashfs", "unsquashfs", "squashfuse") if shutil.which(t) is None]
    return missing


def recorded_output(name: str) -> str:
    """A fixture without its '%%' attribution header (the source's lines, verbatim)."""
    text = (FIXTURES / name).read_text()
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("%%"))


def as_printed(text: str) -> str:
    """What the program itself printed: without the 'N: ' labels srun -l added when it was recorded
    (the generated script runs srun --label, which adds them again)."""
    from builder.nccl.parse import LAUNCHER_SRUN, split_prefix

    out = []
    for line in text.splitlines(keepends=True):
        launcher, _, content = split_prefix(line)
        out.append(content if launcher == LAUNCHER_SRUN else line)
    return "".join(out)


def _which(tool: str) -> str:
    return shutil.which(tool) or str(Path("/usr/sbin", tool))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_hardware() -> str:
    """Sockets/cores/threads as slurmd sees them, so it does not drain the node for a mismatch."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    found = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0]))
    return " ".join(f"{k}={found[k]}" for k in keys if k in found)


class SlurmCluster:
    """Start with ``start()``, stop with ``stop()``; ``env`` is what a client needs.

    With ``pyxis=True`` the plugstack loads the real pyxis, and slurmd finds the real enroot
    first on its PATH, behind a two-line wrapper that only sets enroot's documented path settings
    (enroot doc/configuration.md: "enroot.conf ... or environment variables"; in enroot.in,
    config::export lets the environment win over enroot.conf) to folders in this cluster's temp
    dir. The wrapper is needed because pyxis starts enroot with slurmd's PATH and the job's
    environment minus ENROOT_*_PATH (pyxis_slurmstepd.c: enroot_deny_env), so the only other way
    would be editing this machine's /usr/local/etc/enroot/enroot.conf, which other users share.
    """

    def __init__(self, pyxis: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="builder-slurm-"))
        self.dir.chmod(0o755)  # munged wants the socket's folders traversable, not writable by others
        self.conf = self.dir / "slurm.conf"
        self.munge_socket = self.dir / "munge" / "munge.sock"
        self.procs: list[subprocess.Popen] = []
        self.munged_pid: int | None = None
        self.pyxis = pyxis
        self.enroot_dir = self.dir / "enroot"
        self.pyxis_runtime = self.dir / "pyxis"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def logs(self) -> str:
        parts = []
        for log in sorted((self.dir / "log").glob("*")):
            parts.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:]))
        return "\n".join(parts)

    def start(self) -> "SlurmCluster":
        (self.dir / "log").mkdir()
        self._start_munge()
        self._write_conf()
        daemon_env = self.env
        if self.pyxis:
            self._write_enroot_wrapper()
            daemon_env = {**daemon_env, "PATH": f"{self.dir / 'bin'}:{SLURMD_PATH}"}
        for argv in (
            [_which("slurmctld"), "-D", "-f", str(self.conf)],
            # -N: the node name of slurm.conf, which is not this machine's host name.
            [_which("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)],
        ):
            out = open(self.dir / "log" / f"{Path(argv[0]).name}.out", "w")
            self.procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=daemon_env))
            out.close()
        self._wait_idle()
        return self

    def _write_enroot_wrapper(self) -> None:
        paths = {name: self.enroot_dir / sub for name, sub in (
            ("ENROOT_RUNTIME_PATH", "runtime"), ("ENROOT_CACHE_PATH", "cache"), ("ENROOT_DATA_PATH", "data"),
            ("ENROOT_TEMP_PATH", "tmp"), ("ENROOT_CONFIG_PATH", "config"))}
        for path in paths.values():
            path.mkdir(parents=True, mode=0o700)
        wrapper = self.dir / "bin" / "enroot"
        wrapper.parent.mkdir()
        wrapper.write_text(
            "#!/bin/sh\n# The real enroot, with its paths in this test cluster's temp dir (see tests/slurm_support.py).\n"
            + "".join(f"export {name}={path}\n" for name, path in paths.items())
            + f'exec {ENROOT} "$@"\n')
        wrapper.chmod(0o755)

    def set_pyxis_options(self, **options: str) -> None:
        """Rewrite plugstack.conf; srun and each new slurmstepd read it when a step starts."""
        merged = {**PYXIS_OPTIONS, "runtime_path": str(self.pyxis_runtime), **options}
        args = " ".join(f"{k}={v}" for k, v in merged.items())
        (self.dir / "plugstack.conf").write_text(f"required {PYXIS_SO} {args}\n" if self.pyxis else "")

    def enroot(self, *args: str) -> subprocess.CompletedProcess:
        """The cluster's enroot (same paths as pyxis uses), e.g. enroot('list')."""
        return subprocess.run([str(self.dir / "bin" / "enroot"), *args], capture_output=True, text=True)

    def _start_munge(self) -> None:
        folder = self.munge_socket.parent
        folder.mkdir(mode=0o755)
        key = folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        # --force: munged refuses to run as root otherwise; it daemonizes and writes its pid file.
        subprocess.run(
            [_which("munged"), "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
             f"--log-file={self.dir / 'log' / 'munged.log'}", f"--pid-file={folder / 'munged.pid'}",
             f"--seed-file={folder / 'munged.seed'}"],
            check=True, capture_output=True, text=True,
        )
        self.munged_pid = int((folder / "munged.pid").read_text().strip())

    def _write_conf(self) -> None:
        d = self.dir
        for sub in ("state", "spool"):
            (d / sub).mkdir()
        self.conf.write_text(
            "\n".join([
                "ClusterName=buildertest",
                "SlurmctldHost=localhost(127.0.0.1)",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                f"AuthInfo=socket={self.munge_socket}",
                "CredType=cred/munge",
                f"StateSaveLocation={d / 'state'}",
                f"SlurmdSpoolDir={d / 'spool'}",
                f"SlurmctldPidFile={d / 'slurmctld.pid'}",
                f"SlurmdPidFile={d / 'slurmd.pid'}",
                f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
                # No cgroups here: track processes by /proc, bind nothing.
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SchedulerType=sched/builtin",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "MpiDefault=none",
                "ReturnToService=2",
                # Our own plugstack: pyxis or nothing, never /etc/slurm/plugstack.conf.
                f"PlugStackConfig={d / 'plugstack.conf'}",
                f"NodeName=localhost NodeAddr=127.0.0.1 {_node_hardware()} State=UNKNOWN",
                "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
                "",
            ])
        )
        self.set_pyxis_options()

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        state = ""
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}\n{self.logs()}")
            res = subprocess.run([_which("sinfo"), "-h", "-o", "%T"], capture_output=True, text=True, env=self.env)
            state = res.stdout.strip()
            if res.returncode == 0 and state in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Slurm node did not come up (state {state!r})\n{self.logs()}")

    def stop(self) -> None:
        if self.pyxis and self.procs:
            self._remove_containers()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        if self.munged_pid is not None:
            try:
                os.kill(self.munged_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.munged_pid = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def _remove_containers(self) -> None:
        """Named containers outlive their jobs (container_scope=global); remove them, and unmount
        whatever a killed step left mounted under the cluster's dir, before deleting it."""
        listed = self.enroot("list")
        for name in listed.stdout.split():
            self.enroot("remove", "--force", name)
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        for target in sorted((m.split()[1] for m in mounts if m.split()[1].startswith(str(self.dir))), reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True)


def start_cluster(pyxis: bool = False):
    """A started cluster (skip locally / fail in CI when something is missing)."""
    missing = missing_tools(pyxis)
    if missing:
        unavailable(f"Slurm test cluster{' with pyxis' if pyxis else ''} needs: {', '.join(missing)}")
    if os.geteuid() != 0:
        unavailable("the Slurm test cluster runs slurmd as root")
    cluster = SlurmCluster(pyxis=pyxis)
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node Slurm; SLURM_CONF points at it for the whole session."""
    cluster = start_cluster()
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        cluster.stop()


@pytest.fixture(scope="session")
def pyxis_cluster():
    """A running one-node Slurm with pyxis and enroot; clients reach it through ``cluster.env``
    (SLURM_CONF is not changed for the session, so it can run beside ``slurm_cluster``)."""
    cluster = start_cluster(pyxis=True)
    try:
        yield cluster
    finally:
        cluster.stop()
