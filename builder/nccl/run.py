"""Run nccl-tests binaries inside a built image with Docker, on the GPUs of this host.

One ``docker run`` per collective, single process driving every GPU (``-g N``), so neither MPI
nor a launcher is needed on one node. GPU containers need: all GPUs, host IPC (NCCL's shared
memory and CUDA IPC between GPUs), host network (NCCL bootstrap; no bridge on EFA hosts),
unlimited memlock (pinned buffers, EFA memory registration) and the EFA devices
(``/dev/infiniband/uverbs*``) when the host has them. ``NCCL_DEBUG=INFO`` goes to files through
``NCCL_DEBUG_FILE`` so the results on stdout stay clean and the logs still say which transport
NCCL took.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from builder.buildkit import image_inspect, last_line
from builder.errors import BuilderError, UsageError
from builder.imageref import split_registry

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "alltoall", "sendrecv")
# Where images put the binaries when they are not on PATH (NGC/awsome images, DLC images).
SEARCH_DIRS = ("/opt/nccl-tests/build", "/usr/local/bin", "/opt/amazon/nccl-tests/build", "/opt/nccl_tests/build")
LOG_DIR_IN_CONTAINER = "/nccl-debug"

_SIZE = re.compile(r"^(\d+)([KMG]?)\Z", re.IGNORECASE)


class NoGpuError(BuilderError):
    def __init__(self, message: str):
        from builder.nccl import EXIT_NO_GPU

        super().__init__(message, exit_code=EXIT_NO_GPU)


def parse_size(text: str) -> str:
    """nccl-tests size syntax (K/M/G are 1024-based there): validated, passed through as given."""
    if not _SIZE.match(str(text)):
        raise UsageError(f"size '{text}' must be a byte count with an optional K, M or G suffix (e.g. 8, 64M, 2G)")
    return str(text).upper()


@dataclass(frozen=True)
class RunOptions:
    collectives: tuple[str, ...] = ("all_reduce",)
    min_bytes: str = "8"
    max_bytes: str = "2G"
    factor: int = 2
    iters: int = 20
    warmup: int = 5
    check: int = 1
    gpus: int | None = None  # default: every GPU of the host
    tests_dir: str | None = None
    extra_env: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def gpu_count() -> int:
    """GPUs on this host per nvidia-smi (0 without a driver)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def require_gpus() -> int:
    count = gpu_count()
    if count == 0:
        why = "nvidia-smi not found" if not shutil.which("nvidia-smi") else "nvidia-smi lists no GPU"
        raise NoGpuError(
            f"no NVIDIA GPU on this host ({why}): nccl-tests need GPUs; run on a GPU node, "
            "or judge a saved output with 'builder nccl judge FILE'"
        )
    return count


def efa_devices() -> list[str]:
    return sorted(glob.glob("/dev/infiniband/uverbs*"))


def is_registry_ref(ref: str) -> bool:
    """A reference naming its registry ('123.dkr.ecr.us-east-1.amazonaws.com/img:1', 'host:5000/img',
    'localhost/img'): only those are pulled, so a mistyped local name never goes to Docker Hub."""
    return split_registry(ref)[0] is not None


def needs_pull(docker: str, ref: str) -> bool:
    """True when the image must be pulled first; a local name the engine lacks is a UsageError."""
    if image_inspect(docker, ref) is not None:
        return False
    if not is_registry_ref(ref):
        raise UsageError(
            f"image {ref} is not in the local Docker engine: build it (builder build), or give its full "
            "registry reference (e.g. the ECR URI) to have it pulled"
        )
    return True


def ensure_image(docker: str, ref: str, progress=None, timeout: int = 3600) -> None:
    """The image is in the local engine afterwards, pulled when it is a registry reference."""
    if not needs_pull(docker, ref):
        return
    if progress:
        progress(f"pulling {ref} ...")
    try:
        proc = subprocess.run([docker, "pull", ref], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BuilderError(f"docker pull {ref} did not finish within {timeout}s") from None
    if proc.returncode != 0:
        said = last_line(proc.stderr or proc.stdout).strip()
        raise UsageError(
            f"cannot pull {ref}: {said or f'docker pull exited {proc.returncode}'} "
            "(log in to the registry first, e.g. aws ecr get-login-password | docker login ..., or build it)"
        )


def _launch_script(tests_dir: str | None) -> str:
    """Finds the binary inside the image ($1), then execs it with the remaining arguments."""
    if tests_dir:
        # It lands in a shell script: an absolute path of plain characters only (reject, don't escape).
        if not re.fullmatch(r"/[A-Za-z0-9._/-]*", tests_dir):
            raise UsageError(f"--tests-dir '{tests_dir}' must be an absolute path of letters, digits, '._-/'")
        return 'b="$1"; shift; exec "%s/$b" "$@"' % tests_dir.rstrip("/")
    dirs = " ".join(SEARCH_DIRS)
    return (
        'b="$1"; shift; p=$(command -v "$b" 2>/dev/null || true); '
        f'for d in {dirs}; do [ -n "$p" ] || {{ [ -x "$d/$b" ] && p="$d/$b"; }}; done; '
        '[ -n "$p" ] || { echo "nccl-tests binary $b not found on PATH or in ' + dirs + '" >&2; exit 127; }; '
        'exec "$p" "$@"'
    )


def docker_command(
    docker: str,
    image: str,
    collective: str,
    opts: RunOptions,
    gpus: int,
    log_dir: Path,
    devices: list[str],
    name: str | None = None,
) -> list[str]:
    """The full ``docker run`` argv for one collective (pure: no side effects)."""
    if collective not in COLLECTIVES:
        raise UsageError(f"unknown collective '{collective}': choose from {', '.join(COLLECTIVES)}")
    cmd = [docker, "run", "--rm"]
    if name:
        cmd += ["--name", name]
    cmd += [
        "--gpus", "all",
        "--ipc", "host",
        "--network", "host",
        "--ulimit", "memlock=-1:-1",
        "--ulimit", "stack=67108864:67108864",
    ]
    for dev in devices:
        cmd += ["--device", f"{dev}:{dev}"]
    env = [
        ("NCCL_DEBUG", "INFO"),
        ("NCCL_DEBUG_FILE", f"{LOG_DIR_IN_CONTAINER}/%h.%p.log"),
        *opts.extra_env,
    ]
    for key, value in env:
        cmd += ["-e", f"{key}={value}"]
    cmd += ["-v", f"{Path(log_dir).resolve()}:{LOG_DIR_IN_CONTAINER}"]
    cmd += [image, "/bin/sh", "-c", _launch_script(opts.tests_dir), "nccl-tests", f"{collective}_perf"]
    cmd += [
        "-b", opts.min_bytes, "-e", opts.max_bytes, "-f", str(opts.factor),
        "-g", str(gpus), "-n", str(opts.iters), "-w", str(opts.warmup), "-c", str(opts.check),
    ]
    return cmd


@dataclass(frozen=True)
class RawResult:
    collective: str
    returncode: int
    stdout_path: Path
    stderr_path: Path
    log_dir: Path

    def logs_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


def run_collective(cmd: list[str], collective: str, out_dir: Path, log_dir: Path, timeout: int,
                   name: str, docker: str) -> RawResult:
    stdout_path = out_dir / f"{collective}.out"
    stderr_path = out_dir / f"{collective}.err"
    with stdout_path.open("w") as out, stderr_path.open("w") as err:
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=err, timeout=timeout)
        except subprocess.TimeoutExpired:
            subprocess.run([docker, "rm", "-f", name], capture_output=True)
            raise BuilderError(f"{collective}_perf timed out after {timeout}s (raise --timeout, or lower --max-bytes)")
    return RawResult(collective, proc.returncode, stdout_path, stderr_path, log_dir)


def detect_instance_type(timeout: float = 1.0) -> str | None:
    """EC2 instance type from IMDSv2, or None off EC2 (used only when --instance is not given)."""
    import requests

    base = "http://169.254.169.254/latest"
    try:
        token = requests.put(f"{base}/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
                             timeout=timeout).text
        resp = requests.get(f"{base}/meta-data/instance-type", headers={"X-aws-ec2-metadata-token": token},
                            timeout=timeout)
        return resp.text.strip() if resp.ok else None
    except requests.RequestException:
        return None


@dataclass(frozen=True)
class Outcome:
    """One collective of a run: the raw files, and the parsed run and verdict when there were results."""

    collective: str
    raw: RawResult
    run: object | None  # NcclRun
    verdict: object | None  # Verdict
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or not self.verdict.passed or self.raw.returncode != 0


def run_suite(
    docker: str,
    image: str,
    opts: RunOptions,
    gpus: int,
    out_dir: Path,
    instance=None,
    devices: list[str] | None = None,
    timeout: int = 1800,
    plot: bool = True,
    progress=None,
    adapt_command=None,
) -> list[Outcome]:
    """Run each collective, keep stdout/stderr/NCCL logs under ``out_dir``, parse, judge, report.

    ``adapt_command(argv) -> argv`` lets a caller adjust the docker argv (the tests use it to drop
    ``--gpus`` on an engine without a GPU runtime).
    """
    from builder.nccl.judge import judge
    from builder.nccl.parse import NoResults, parse_text
    from builder.nccl.report import to_json

    devices = efa_devices() if devices is None else devices
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = out_dir.name[-15:].replace("/", "")
    outcomes = []
    for coll in opts.collectives:
        log_dir = out_dir / f"nccl-debug-{coll}"
        log_dir.mkdir(exist_ok=True)
        name = re.sub(r"[^a-zA-Z0-9_.-]", "-", f"builder-nccl-{coll}-{stamp}-{os.getpid()}")
        cmd = docker_command(docker, image, coll, opts, gpus, log_dir, devices, name=name)
        if adapt_command:
            cmd = adapt_command(cmd)
        if progress:
            progress(f"running {coll}_perf on {gpus} GPU(s) in {image} ...")
        raw = run_collective(cmd, coll, out_dir, log_dir, timeout, name, docker)
        try:
            result = parse_text(raw.stdout_path.read_text(errors="replace"), raw.logs_text(), collective=f"{coll}_perf")
        except NoResults:
            tail = raw.stderr_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no stderr)"]
            outcomes.append(Outcome(coll, raw, None, None, f"{coll}_perf produced no results (exit {raw.returncode}): {tail[0]}"))
            continue
        # EFA devices on the host mean the image must use them: a socket fallback is an image bug.
        verdict = judge(result, instance, nodes=1, expect_efa=bool(devices))
        (out_dir / f"report-{coll}.json").write_text(json.dumps(to_json(result, verdict, str(raw.stdout_path)), indent=2))
        if plot:
            from builder.nccl.plot import plot_busbw

            plot_busbw(result, out_dir / f"busbw-{coll}.png", verdict)
        outcomes.append(Outcome(coll, raw, result, verdict))
    return outcomes
