"""A real one-node Slurm cluster on 127.0.0.1 for the tests: munged + slurmctld + slurmd.

Everything lives in a temp dir (munge key and socket, slurm.conf, state, spool, logs) on free
ports, so it neither needs nor touches /etc/slurm or /run/munge, and can run beside a system
Slurm. Clients find it through SLURM_CONF. Debian packages: slurm-wlm, munge, and libpmix-dev
(Debian's mpi/pmix plugin dlopens .../pmix2/lib/libpmix.so, which only the -dev package ships).

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

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "sinfo", "scontrol")
PMIX_LIB = Path("/usr/lib/x86_64-linux-gnu/pmix2/lib/libpmix.so")
START_TIMEOUT = 60.0


def missing_tools() -> list[str]:
    missing = [t for t in DAEMONS + CLIENTS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if not PMIX_LIB.exists():
        missing.append(f"{PMIX_LIB} (libpmix-dev)")
    return missing


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
    """Start with ``start()``, stop with ``stop()``; ``env`` is what a client needs."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="builder-slurm-"))
        self.dir.chmod(0o755)  # munged wants the socket's folders traversable, not writable by others
        self.conf = self.dir / "slurm.conf"
        self.munge_socket = self.dir / "munge" / "munge.sock"
        self.procs: list[subprocess.Popen] = []
        self.munged_pid: int | None = None

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
        for argv in (
            [_which("slurmctld"), "-D", "-f", str(self.conf)],
            [_which("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)],
        ):
            out = open(self.dir / "log" / f"{Path(argv[0]).name}.out", "w")
            self.procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env))
            out.close()
        self._wait_idle()
        return self

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
                # An empty plugstack: ignore /etc/slurm/plugstack.conf (pyxis would be loaded from there).
                f"PlugStackConfig={d / 'plugstack.conf'}",
                f"NodeName=localhost NodeAddr=127.0.0.1 {_node_hardware()} State=UNKNOWN",
                "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
                "",
            ])
        )
        (d / "plugstack.conf").write_text("")

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


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node Slurm; SLURM_CONF points at it for the whole session."""
    missing = missing_tools()
    if missing:
        unavailable(f"Slurm test cluster needs: {', '.join(missing)}")
    if os.geteuid() != 0:
        unavailable("the Slurm test cluster runs slurmd as root")
    cluster = SlurmCluster()
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
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
