"""Run a training job on a local image through the real SageMaker Python SDK's local mode.

The SDK (``sagemaker`` v2 on PyPI, the ``[sagemaker]`` extra) writes one ``docker-compose.yaml``
per job: a service per host (``algo-N-<suffix>``) on a bridge network named ``sagemaker-local``
with the host names as aliases, ``command: train``, per-host ``/opt/ml/{input,output}`` mounts,
one shared ``/opt/ml/model``, each ``file://`` channel at ``/opt/ml/input/data/<channel>`` and a
local ``source_dir`` at ``/opt/ml/code`` (aws/sagemaker-python-sdk v2
``src/sagemaker/local/image.py``: ``_generate_compose_file``, ``_create_docker_host``,
``_prepare_training_volumes``). It runs ``docker compose`` (or ``docker-compose``) ``up
--abort-on-container-exit``, then packs ``model.tar.gz`` and ``output.tar.gz`` into the
``file://`` output path, also after a failure.

What the SDK leaves behind is ours to clean: compose's stopped containers (one full copy of the
image each on a vfs engine). Every container of a job carries the label ``builder.sagemaker.job``
(through the SDK's ``local.container_config``), which is how its exit codes and logs are read
and how it is removed. No AWS account is used: fake credentials, a region, telemetry off, local
code, ``file://`` inputs and outputs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import subprocess
import tarfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import UsageError

JOB_LABEL = "builder.sagemaker.job"
ROLE = "arn:aws:iam::111122223333:role/builder-local-mode"  # never called: local mode has no IAM
INSTALL_HINT = "pip install 'aws-pytorch-image-builder[sagemaker]' (the SageMaker Python SDK v2)"
# sagemaker/config/config_schema.py: SageMaker.PythonSDK.Modules.TelemetryOptOut. Without it the
# SDK sends a request per fit() (sagemaker/telemetry/telemetry_logging.py), local mode included.
SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
# The SDK v2 warns on import and on every estimator that v3 exists (sagemaker/deprecations.py);
# builder chose v2 on purpose (docs/sagemaker.md: v3 has no local mode for a job's own `train`).
os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")


@dataclass
class Job:
    """One training job: which estimator, and what the job brings."""

    case: str
    estimator: str = "pytorch"  # "pytorch" (entry_point/source_dir) | "generic" (image_uri only)
    instance_count: int = 1
    hyperparameters: dict = field(default_factory=dict)
    entry_point: str | None = None
    source_dir: Path | None = None
    environment: dict = field(default_factory=dict)
    distribution: dict | None = None
    channels: dict = field(default_factory=dict)  # name -> local folder (passed as file://)


@dataclass
class JobResult:
    case: str
    sdk_error: str | None  # the SDK's exception, first line (None: fit() returned)
    exit_codes: dict  # host -> container exit code
    logs: dict  # host -> log text
    model: dict  # member name -> bytes, from model.tar.gz
    output: dict  # member name -> bytes, from output.tar.gz (success / failure / data/...)

    def text(self, member: str, where: str = "model") -> str | None:
        data = (self.model if where == "model" else self.output).get(member)
        return None if data is None else data.decode(errors="replace")


def _import_sdk() -> None:
    """Import the SDK's local mode quietly: importing it prints "sagemaker.config INFO - Not
    applying SDK defaults ..." on stdout (sagemaker/config/config.py), which would land in
    builder's --json output."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import sagemaker.local  # noqa: F401
        import sagemaker.pytorch  # noqa: F401


def sdk_problem() -> str | None:
    """Why the SDK's local mode cannot run here (None: it can)."""
    try:
        _import_sdk()
    except ImportError as exc:
        return f"the SageMaker Python SDK v2 is not installed ({exc}): {INSTALL_HINT}"
    if compose_command() is None:
        return ("neither `docker compose` nor `docker-compose` is on PATH (the SDK's local mode runs one of "
                "them): apt-get install docker-compose, or install Docker's compose plugin")
    return None


def compose_command() -> list[str] | None:
    """The compose the SDK will pick: `docker compose` v2 first, else `docker-compose`
    (sagemaker/local/image.py, _SageMakerContainer._get_compose_cmd_prefix)."""
    if shutil.which("docker"):
        proc = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if proc.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def local_session(region: str, root: Path, job_id: str):
    """A LocalSession with fake credentials, local code, no telemetry, our label on containers."""
    import boto3
    from sagemaker.local import LocalSession

    boto = boto3.Session(aws_access_key_id="builder-local-mode", aws_secret_access_key="builder-local-mode",
                         region_name=region)
    session = LocalSession(boto_session=boto, sagemaker_config=SDK_CONFIG)
    # local.container_config is merged into every compose service (sagemaker/local/image.py,
    # _create_docker_host): our label finds the job's containers afterwards.
    session.config = {"local": {"local_code": True, "container_root": str(root),
                                "container_config": {"labels": {JOB_LABEL: job_id}}}}
    return session


def estimator(job: Job, image: str, session, output: Path):
    """The SDK's estimator for job: sagemaker.estimator.Estimator or sagemaker.pytorch.PyTorch."""
    common = dict(image_uri=image, role=ROLE, instance_count=job.instance_count, instance_type="local",
                  sagemaker_session=session, output_path=f"file://{output}", base_job_name="builder-smoke",
                  hyperparameters=job.hyperparameters or None, environment=job.environment or None)
    if job.estimator == "generic":
        from sagemaker.estimator import Estimator

        return Estimator(**common)
    from sagemaker.pytorch import PyTorch

    return PyTorch(entry_point=job.entry_point, source_dir=str(job.source_dir) if job.source_dir else None,
                   distribution=job.distribution, **common)


def run(docker: str, image: str, job: Job, work: Path, region: str) -> JobResult:
    """Run job (fit() with file:// channels), then read the artifacts, exit codes and logs and
    remove the job's containers. PyTorch needs no framework_version with an image_uri."""
    job_id = f"{job.case}-{uuid.uuid4().hex[:12]}"
    root, output = work / "root", work / "output"
    root.mkdir(parents=True, exist_ok=True)
    output.mkdir(parents=True, exist_ok=True)
    sdk_log = io.StringIO()
    error = None
    _import_sdk()  # before the loggers are quieted: importing sets the SDK's own levels

    try:
        # The SDK streams compose's output to sys.stdout and logs to its own loggers: both are
        # kept out of builder's output (which may be --json) and read per host from the engine.
        with contextlib.redirect_stdout(sdk_log), contextlib.redirect_stderr(sdk_log), _quiet_sdk_loggers():
            session = local_session(region, root, job_id)
            est = estimator(job, image, session, output)
            est.fit({name: f"file://{path}" for name, path in job.channels.items()} or None, wait=True)
    except Exception as exc:  # the SDK raises RuntimeError/ValueError/...: reported, never a traceback
        error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    finally:
        codes, logs = collect_containers(docker, job_id)
    if error and not codes:
        tail = [line for line in sdk_log.getvalue().splitlines() if line.strip()][-5:]
        error = " | ".join([error, *tail])
    return JobResult(job.case, error, codes, logs, _members(output / "model.tar.gz"), _members(output / "output.tar.gz"))


@contextlib.contextmanager
def _quiet_sdk_loggers():
    loggers = [logging.getLogger(name) for name in ("sagemaker", "sagemaker.config", "botocore", "boto3")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def collect_containers(docker: str, job_id: str) -> tuple[dict, dict]:
    """Exit code and log of each host's container, then remove them (compose leaves them)."""
    listed = subprocess.run([docker, "ps", "-aq", "--filter", f"label={JOB_LABEL}={job_id}"],
                            capture_output=True, text=True)
    ids = listed.stdout.split()
    codes, logs = {}, {}
    for cid in ids:
        fmt = '{{index .Config.Labels "com.docker.compose.service"}} {{.State.ExitCode}}'
        info = subprocess.run([docker, "inspect", "--format", fmt, cid], capture_output=True, text=True)
        host, _, code = info.stdout.strip().rpartition(" ")
        log = subprocess.run([docker, "logs", cid], capture_output=True, text=True, errors="replace")
        codes[host or cid] = int(code) if code.lstrip("-").isdigit() else -1
        logs[host or cid] = log.stdout + log.stderr
    if ids:
        subprocess.run([docker, "rm", "-f", *ids], capture_output=True)
    return dict(sorted(codes.items())), dict(sorted(logs.items()))


def _members(path: Path) -> dict:
    """Regular files of a .tar.gz the SDK packed, by name ('./' stripped); {} when absent."""
    if not path.is_file():
        return {}
    out = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            if member.isfile():
                out[member.name.removeprefix("./")] = tar.extractfile(member).read()
    return out


def require_sdk() -> None:
    problem = sdk_problem()
    if problem:
        raise UsageError(f"--sagemaker runs the real SageMaker Python SDK: {problem}")
