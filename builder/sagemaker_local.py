"""Run an image the way SageMaker (and the SDK's local mode) runs a training job, and judge it.

Per host the SDK writes ``input/config/{hyperparameters,inputdataconfig,resourceconfig}.json``,
mounts input, output, model and code under ``/opt/ml``, sets ``AWS_REGION`` and
``TRAINING_JOB_NAME`` and runs ``docker run IMAGE train``. The contract: exit 0, a model
written, ``output/success`` present and ``output/failure`` absent; a failing script gives a
non-zero exit and a ``failure`` file. Both runs use a tiny bundled script, no GPU, no network
(``--network none``; ``algo-1`` is mapped to 127.0.0.1 because the PyTorch container package
resolves every host before training).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from builder.smoke import CONTAINER_LABEL

if TYPE_CHECKING:
    from builder.matrix import ImageSpec
    from builder.stanzas import Catalog

PROGRAM = "builder_contract_train.py"
HOST = "algo-1"
RUN_TIMEOUT = 600

# The bundled training script: writes a model from the training channel, or fails on request.
TRAIN_SCRIPT = '''\
import argparse, json, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("--fail", type=int, default=0)
parser.add_argument("--epochs", type=int, default=1)
args, _ = parser.parse_known_args()
if args.fail:
    print("contract check: failing on purpose", file=sys.stderr)
    sys.exit(args.fail)
channel = os.environ.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train")
rows = [line.split(",") for line in open(os.path.join(channel, "data.csv")) if line.strip()]
xs, ys = [float(r[0]) for r in rows], [float(r[1]) for r in rows]
n = len(xs); mx, my = sum(xs) / n, sum(ys) / n
w = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
model_dir = os.environ.get("SM_MODEL_DIR", "/opt/ml/model")
with open(os.path.join(model_dir, "model.json"), "w") as f:
    json.dump({"weight": w, "bias": my - w * mx, "epochs": args.epochs}, f)
print("contract check: model written")
'''


def supports_contract(spec: "ImageSpec", catalog: "Catalog") -> bool:
    """Whether the image has the `train` entry point the contract runs (`builder smoke
    --sagemaker`, the CI matrix's `sagemaker`). The sagemaker-toolkit stanza installs it, in any
    flavor that switches it on; a -sagemaker DLC base ships it, and counts where the flavor claims
    the contract (flavor dlc, the only one extending DLC images)."""
    if spec.has("sagemaker-toolkit"):
        return True
    dlc = spec.base.dlc
    return catalog.flavors[spec.flavor].sagemaker and dlc is not None and dlc.variant == "sagemaker"


@dataclass
class Outcome:
    case: str  # "success" | "failure"
    exit_code: int
    model_files: list[str]
    success_marker: bool
    failure_file: str | None
    log_tail: list[str]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"case": self.case, "ok": self.ok, "exit_code": self.exit_code, "model_files": self.model_files,
                "success_marker": self.success_marker, "failure_file": self.failure_file,
                "problems": self.problems, "log_tail": self.log_tail}


def prepare(root: Path, hyperparameters: dict) -> None:
    """The /opt/ml tree local mode mounts, under root."""
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps({k: json.dumps(v) for k, v in hyperparameters.items()}))
    (config / "inputdataconfig.json").write_text(json.dumps({"train": {"TrainingInputMode": "File"}}))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": HOST, "hosts": [HOST], "network_interface_name": "eth0"}))
    train = root / "input" / "data" / "train"
    train.mkdir(parents=True)
    (train / "data.csv").write_text("".join(f"{x},{2 * x + 1}\n" for x in range(10)))
    for sub in ("model", "output/data", "code"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "code" / PROGRAM).write_text(TRAIN_SCRIPT)


def run_job(docker: str, image: str, root: Path, region: str, timeout: float = RUN_TIMEOUT) -> tuple[int, str]:
    """One training job. The container is named and labelled so that a timeout or Ctrl-C
    removes it (killing the client alone would leave it running)."""
    name = f"builder-sagemaker-{uuid.uuid4().hex[:12]}"
    argv = [
        docker, "run", "--rm", "--name", name, "--label", f"{CONTAINER_LABEL}=1",
        "--network", "none", "--add-host", f"{HOST}:127.0.0.1", "--hostname", HOST,
        "-v", f"{root / 'input'}:/opt/ml/input", "-v", f"{root / 'output'}:/opt/ml/output",
        "-v", f"{root / 'model'}:/opt/ml/model", "-v", f"{root / 'code'}:/opt/ml/code",
        "-e", f"AWS_REGION={region}", "-e", "TRAINING_JOB_NAME=builder-contract-check",
        "-e", f"SAGEMAKER_PROGRAM={PROGRAM}", "-e", "SAGEMAKER_SUBMIT_DIRECTORY=/opt/ml/code",
        image, "train",
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return 124, out + f"\n(timed out after {timeout:.0f}s)"
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True)  # gone already after a normal exit
    return proc.returncode, proc.stdout + proc.stderr


def judge(case: str, code: int, log: str, root: Path) -> Outcome:
    model = sorted(str(p.relative_to(root / "model")) for p in (root / "model").rglob("*") if p.is_file())
    success = (root / "output" / "success").exists()
    failure_path = root / "output" / "failure"
    failure = failure_path.read_text(errors="replace")[:1024] if failure_path.exists() else None
    tail = [line for line in log.splitlines() if line.strip()][-15:]
    outcome = Outcome(case, code, model, success, failure, tail)
    if case == "success":
        if code != 0:
            outcome.problems.append(f"train exited {code}, expected 0")
        if not model:
            outcome.problems.append("no model file written to /opt/ml/model")
        if not success:
            outcome.problems.append("no /opt/ml/output/success marker")
        if failure is not None:
            outcome.problems.append(f"/opt/ml/output/failure written: {failure.strip()[:200]!r}")
    else:
        if code == 0:
            outcome.problems.append("a failing script gave exit 0 (SageMaker would report the job Completed)")
        if failure is None:
            outcome.problems.append("a failing script left no /opt/ml/output/failure (no failure reason in SageMaker)")
        if success:
            outcome.problems.append("a failing script left the success marker")
    return outcome


def contract(docker: str, image: str, region: str = "us-west-2", keep: Path | None = None) -> list[Outcome]:
    """Both cases; each job gets a fresh /opt/ml tree (removed afterwards unless keep is given)."""
    outcomes = []
    # Local mode passes the program and code folder as sagemaker_* hyperparameters (the toolkit
    # drops them from the script's arguments); the SAGEMAKER_* env below names them too.
    names = {"sagemaker_program": PROGRAM, "sagemaker_submit_directory": "/opt/ml/code"}
    for case, hps in (("success", {"epochs": 2, **names}), ("failure", {"fail": 3, **names})):
        root = Path(tempfile.mkdtemp(prefix=f"builder-sm-{case}-", dir=keep))
        try:
            prepare(root, hps)
            code, log = run_job(docker, image, root, region)
            outcomes.append(judge(case, code, log, root))
        finally:
            if keep is None:
                _remove(docker, image, root)
    return outcomes


def _remove(docker: str, image: str, root: Path) -> None:
    """Files the job wrote belong to the container's user (root): when we are not root, remove
    them from inside a container of the same image."""
    shutil.rmtree(root, ignore_errors=True)
    if root.exists():
        subprocess.run([docker, "run", "--rm", "--label", f"{CONTAINER_LABEL}=1", "--network", "none",
                        "-v", f"{root}:/x", "--entrypoint", "/bin/sh", "--user", "0",
                        image, "-c", "rm -rf /x/* /x/.[!.]*"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
