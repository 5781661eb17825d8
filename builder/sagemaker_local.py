"""`builder smoke --sagemaker`: an image run through the real SageMaker Python SDK's local mode.

The jobs a user of the image would run (docs/sagemaker.md), each judged on what SageMaker reports:

- ``baked``: the generic ``Estimator`` with the image's own code (images with ``code``): the job
  names the baked program with the ``sagemaker_program`` hyperparameter (``code.entry_point:
  job``), or the image's ``SAGEMAKER_PROGRAM`` runs it (``code.entry_point: image``);
- ``entry_point``: ``PyTorch(entry_point=..., source_dir=...)`` with hyperparameters (one with
  shell-safe text) and two ``file://`` input channels; skipped where the image owns its program
  (it would never run);
- ``failure``: the same script exiting 3: the toolkit must exit non-zero and write
  ``/opt/ml/output/failure`` (``ExecuteUserScriptError``, ``ExitCode 3``), no ``success``;
- ``two_hosts``: ``instance_count=2``: both hosts see both names in ``SM_HOSTS`` and resolve them;
- ``mpi``: where the image claims MPI launchers (``mpi_claimed``), ``distribution={"mpi": ...}``
  on two hosts: the toolkit's MPI runner starts ``/usr/sbin/sshd``, waits for the other host's
  sshd, runs ``mpirun ... python -m mpi4py``: a missing sshd, ssh key or mpi4py fails here;
- ``torch_distributed``: where the image has ``torchrun``, ``distribution={"torch_distributed":
  ...}`` on two hosts: the toolkit's torchrun launcher, a gloo ``all_reduce`` on the CPU.

No emulation remains: the SDK runs wherever builder could emulate it (a local engine, since both
mount host folders, and a compose), and where it cannot, ``--sagemaker`` exits 2 saying why.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from builder import sagemaker_sdk as sdk
from builder.smoke import CONTAINER_LABEL

if TYPE_CHECKING:
    from builder.matrix import ImageSpec
    from builder.stanzas import Catalog

PROGRAM = "builder_contract_train.py"
# A value with a space and quotes: sagemaker-training 3.9.3 to 5.1.0 join the command line and run
# it through /bin/sh (src/sagemaker_training/process.py, create(): asyncio.create_subprocess_shell),
# so such a value breaks the job there. The contract passes shell-safe values only and documents
# the trap (docs/sagemaker.md); tests/integration shows it with the bundled toolkit.
HYPERPARAMETERS = {"epochs": 2, "note": "contract-check"}

# The bundled training script: what the toolkit handed it, written back into the model folder.
TRAIN_SCRIPT = '''\
"""builder's SageMaker contract job: writes what the training toolkit handed it."""
import argparse, json, os, socket, sys, time

parser = argparse.ArgumentParser()
parser.add_argument("--fail", type=int, default=0)
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--note", default="")
parser.add_argument("--wait-hosts", type=int, default=0)
parser.add_argument("--mpi", type=int, default=0)
parser.add_argument("--torch-dist", type=int, default=0)
args, _ = parser.parse_known_args()
if args.fail:
    print(f"contract job: failing on purpose with exit code {args.fail}", file=sys.stderr)
    sys.exit(args.fail)


def resolve(name):
    try:
        return socket.gethostbyname(name)
    except OSError as exc:
        return f"unresolved: {exc}"


host, hosts = os.environ["SM_CURRENT_HOST"], json.loads(os.environ["SM_HOSTS"])
model_dir = os.environ.get("SM_MODEL_DIR", "/opt/ml/model")
rows = {}
for channel in json.loads(os.environ.get("SM_CHANNELS", "[]")):
    folder = os.environ["SM_CHANNEL_" + channel.upper()]
    rows[channel] = sum(1 for f in sorted(os.listdir(folder)) for line in open(os.path.join(folder, f)) if line.strip())
report = {"host": host, "hosts": hosts, "resolved": {h: resolve(h) for h in hosts}, "argv": sys.argv[1:],
          "hps": json.loads(os.environ.get("SM_HPS", "{}")), "rows": rows, "epochs": args.epochs, "note": args.note,
          "program": os.environ.get("SM_USER_ENTRY_POINT"), "hostname": socket.gethostname()}
name = f"host-{host}.json"
if args.mpi:
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    report.update(rank=comm.Get_rank(), size=comm.Get_size(), rank_hosts=comm.allgather(socket.gethostname()))
    name = f"rank-{comm.Get_rank()}.json"
if args.torch_dist:  # under torchrun: the env:// rendezvous on the master host, gloo on the CPU
    import torch
    import torch.distributed as dist
    dist.init_process_group("gloo")
    total = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(total)
    report.update(rank=dist.get_rank(), size=dist.get_world_size(), sum=float(total.item()))
    name = f"rank-{dist.get_rank()}.json"
    dist.destroy_process_group()
with open(os.path.join(model_dir, name), "w") as handle:
    json.dump(report, handle)
deadline = time.time() + args.wait_hosts  # local mode shares one model folder between hosts
while time.time() < deadline and not all(os.path.exists(os.path.join(model_dir, f"host-{h}.json")) for h in hosts):
    time.sleep(0.5)
print(f"contract job: {name} written")
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


def mpi_claimed(spec: "ImageSpec") -> bool:
    """Whether the image claims the toolkit's MPI launchers (distribution mpi, pytorchddp, SMDDP),
    which start /usr/sbin/sshd and run `python -m mpi4py` (sagemaker-training
    src/sagemaker_training/mpi.py and smdataparallel.py: _start_sshd_daemon, _python_command).
    The openssh stanza, SMDDP, or an AWS DLC base (its Dockerfile installs openssh-server, a root
    key pair, Open MPI and mpi4py: aws/deep-learning-containers
    pytorch/training/docker/2.4/py3/cu124/Dockerfile.gpu)."""
    return spec.has("openssh") or spec.has("smddp") or spec.base.dlc is not None


def program_summary(spec: "ImageSpec") -> str:
    """What a SageMaker job of this image runs (for `explain` and the docs)."""
    code = spec.code
    if code is None:
        return "the job's entry_point (no code baked)"
    if code.entry_point == "image":
        return (f"always /opt/ml/code/{code.program} (code.entry_point: image; a job's entry_point is "
                "ignored, and a local-mode source_dir hides the baked code)")
    return (f"the job's entry_point; a job without one names the baked /opt/ml/code/{code.program} with "
            f"hyperparameter sagemaker_program={code.program} (code.entry_point: job)")


@dataclass
class Outcome:
    case: str
    ok: bool
    problems: list[str]
    exit_codes: dict
    model_files: list[str]
    failure_file: str | None
    log_tail: list[str] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict:
        return {"case": self.case, "ok": self.ok, "problems": self.problems, "exit_codes": self.exit_codes,
                "model_files": self.model_files, "failure_file": self.failure_file, "note": self.note,
                "log_tail": self.log_tail}


def _report(result: sdk.JobResult, host: str | None = None) -> dict | None:
    names = sorted(n for n in result.model if n.startswith("host-") and (host is None or n == f"host-{host}.json"))
    return json.loads(result.model[names[0]]) if names else None


def judge_success(result: sdk.JobResult, hosts: int = 1) -> list[str]:
    """A job that should succeed: fit() returned, the first host exited 0 (compose stops the
    others when one exits), success marker, no failure file, a model."""
    problems = []
    if result.sdk_error:
        problems.append(f"the SDK reported a failure: {result.sdk_error}")
    if len(result.exit_codes) != hosts:
        problems.append(f"{len(result.exit_codes)} containers ran, expected {hosts}")
    elif 0 not in result.exit_codes.values():
        problems.append(f"no host exited 0: {result.exit_codes}")
    if "success" not in result.output:
        problems.append("no /opt/ml/output/success in output.tar.gz")
    if "failure" in result.output:
        problems.append(f"/opt/ml/output/failure written: {result.text('failure', 'output')[:200]!r}")
    if not result.model:
        problems.append("model.tar.gz is empty (nothing written to /opt/ml/model)")
    return problems


def judge_failure(result: sdk.JobResult, script_exit: int) -> list[str]:
    """A script that exits script_exit: SageMaker's Failed job (container exit non-zero) with a
    failure reason naming the error and the script's exit code."""
    problems = []
    failure = result.text("failure", "output")
    codes = list(result.exit_codes.values())
    # Judged on the container's exit code, as SageMaker does: docker-compose 1.29 at times exits 0
    # after --abort-on-container-exit although the container exited 1, and the SDK then reports
    # success (seen on this project's engine).
    if not codes or codes[0] == 0:
        problems.append(f"the container exited {codes[0] if codes else 'never'}, expected non-zero")
    if failure is None:
        problems.append("no /opt/ml/output/failure (SageMaker would have no failure reason)")
    elif "ExecuteUserScriptError" not in failure or f"ExitCode {script_exit}" not in failure:
        problems.append(f"failure does not name ExecuteUserScriptError and ExitCode {script_exit}: {failure[:200]!r}")
    if "success" in result.output:
        problems.append("a failing script left /opt/ml/output/success")
    return problems


def judge_entry_point(result: sdk.JobResult) -> list[str]:
    problems = judge_success(result)
    report = _report(result)
    if report is None:
        return problems + [f"the job's entry_point {PROGRAM} did not run (no host-*.json in the model)"]
    if report["hps"] != HYPERPARAMETERS or report["epochs"] != HYPERPARAMETERS["epochs"]:
        problems.append(f"hyperparameters arrived as {report['hps']} (argv {report['argv']}), sent {HYPERPARAMETERS}")
    if report["rows"] != {"train": 10, "validation": 4}:
        problems.append(f"input channels read as {report['rows']}, expected train 10 rows, validation 4")
    return problems


def judge_two_hosts(result: sdk.JobResult) -> list[str]:
    problems = judge_success(result, hosts=2)
    reports = [json.loads(v) for k, v in sorted(result.model.items()) if k.startswith("host-")]
    names = sorted(result.exit_codes)
    if len(reports) != 2:
        return problems + [f"{len(reports)} of 2 hosts ran the script ({sorted(result.model)})"]
    for report in reports:
        if sorted(report["hosts"]) != names:
            problems.append(f"{report['host']}: SM_HOSTS is {report['hosts']}, the job's hosts are {names}")
        unresolved = {h: ip for h, ip in report["resolved"].items() if ip.startswith("unresolved")}
        if unresolved:
            problems.append(f"{report['host']} cannot resolve {unresolved}")
    return problems


def judge_mpi(result: sdk.JobResult) -> list[str]:
    problems = judge_success(result, hosts=2)
    ranks = [json.loads(v) for k, v in sorted(result.model.items()) if k.startswith("rank-")]
    if len(ranks) != 2 or any(r.get("size") != 2 for r in ranks):
        problems.append(f"mpirun ran {len(ranks)} ranks of 2 ({[r.get('size') for r in ranks]} in COMM_WORLD)")
    elif len(set(ranks[0]["rank_hosts"])) != 2:
        problems.append(f"both ranks ran in one container: {ranks[0]['rank_hosts']}")
    return problems


def judge_torch_distributed(result: sdk.JobResult) -> list[str]:
    problems = judge_success(result, hosts=2)
    ranks = [json.loads(v) for k, v in sorted(result.model.items()) if k.startswith("rank-")]
    if len(ranks) != 2 or any(r.get("size") != 2 or r.get("sum") != 3.0 for r in ranks):
        problems.append(f"torchrun ran {len(ranks)} ranks of 2, all_reduce gave {[r.get('sum') for r in ranks]}, expected 3.0")
    return problems


def plan(spec: "ImageSpec", work: Path, torchrun: bool = False) -> list[tuple[sdk.Job, Callable[[sdk.JobResult], list[str]]]]:
    """The jobs for spec, with their judges; writes the job's source_dir and channels under work."""
    src, train, validation = work / "src", work / "data" / "train", work / "data" / "validation"
    for folder in (src, train, validation):
        folder.mkdir(parents=True, exist_ok=True)
    (src / PROGRAM).write_text(TRAIN_SCRIPT)
    (train / "rows.csv").write_text("".join(f"{x},{2 * x + 1}\n" for x in range(10)))
    (validation / "rows.csv").write_text("".join(f"{x},{2 * x + 1}\n" for x in range(10, 14)))
    owned = spec.code is not None and spec.code.entry_point == "image"
    # Where the image owns its program, a job runs other code only by overriding the variable.
    override = {"SAGEMAKER_PROGRAM": PROGRAM} if owned else {}
    script = dict(entry_point=PROGRAM, source_dir=src, environment=override)
    jobs = []
    if spec.code is not None:
        named = {} if owned else {"sagemaker_program": spec.code.program}
        jobs.append((sdk.Job("baked", estimator="generic", hyperparameters=named, channels={"train": train}),
                     judge_success))
    if not owned:
        jobs.append((sdk.Job("entry_point", hyperparameters=dict(HYPERPARAMETERS),
                             channels={"train": train, "validation": validation}, **script), judge_entry_point))
    jobs.append((sdk.Job("failure", hyperparameters={"fail": 3}, **script), lambda r: judge_failure(r, 3)))
    jobs.append((sdk.Job("two_hosts", instance_count=2, hyperparameters={"wait-hosts": 120}, **script),
                 judge_two_hosts))
    if mpi_claimed(spec):
        jobs.append((sdk.Job("mpi", instance_count=2, hyperparameters={"mpi": 1},
                             distribution={"mpi": {"enabled": True, "processes_per_host": 1}}, **script), judge_mpi))
    if torchrun:
        # sagemaker-training torch_distributed.py: `torchrun --nnodes 2 --nproc_per_node 1
        # --master_addr <algo-1> --master_port 7777 --node_rank N script`, no GPU needed with gloo.
        jobs.append((sdk.Job("torch_distributed", instance_count=2, hyperparameters={"torch-dist": 1},
                             distribution={"torch_distributed": {"enabled": True}}, **script), judge_torch_distributed))
    return jobs


def has_torchrun(docker: str, image: str) -> bool:
    """Whether the image has torchrun (PyTorch's launcher, which the torch_distributed job needs)."""
    proc = subprocess.run([docker, "run", "--rm", "--label", f"{CONTAINER_LABEL}=1", "--network", "none",
                           "--entrypoint", "/bin/sh", image, "-c", "command -v torchrun"], capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.strip() != ""


def contract(docker: str, image: str, spec: "ImageSpec", region: str = "us-west-2",
             cases: tuple[str, ...] | None = None) -> list[Outcome]:
    """Run the planned jobs (or only `cases`) through the SDK; one Outcome per job."""
    sdk.require_sdk()
    work = Path(tempfile.mkdtemp(prefix="builder-sagemaker-"))
    outcomes = []
    try:
        torchrun = (cases is None or "torch_distributed" in cases) and has_torchrun(docker, image)
        for job, judge in plan(spec, work / "inputs", torchrun):
            if cases is not None and job.case not in cases:
                continue
            result = sdk.run(docker, image, job, work / job.case, region)
            problems = judge(result)
            logs = "\n".join(result.logs.values())
            tail = [line for line in logs.splitlines() if line.strip()][-15:] if problems else []
            outcomes.append(Outcome(job.case, not problems, problems, result.exit_codes, sorted(result.model),
                                    result.text("failure", "output"), tail))
        if not torchrun and (cases is None or "torch_distributed" in cases):
            outcomes.append(Outcome("torch_distributed", True, [], {}, [], None, note=(
                "not run: no torchrun in the image (the torch_distributed launcher needs PyTorch's torchrun)")))
        if spec.code is not None and spec.code.entry_point == "image" and (cases is None or "entry_point" in cases):
            outcomes.append(Outcome("entry_point", True, [], {}, [], None, note=(
                "not run: code.entry_point image, so a job's entry_point never runs (the baked program does)")))
    finally:
        remove_tree(docker, image, work)
    return outcomes


def remove_tree(docker: str, image: str, root: Path) -> None:
    """Files the jobs wrote belong to the container's user (root): when we are not root, remove
    them from inside a container of the same image."""
    shutil.rmtree(root, ignore_errors=True)
    if root.exists():
        subprocess.run([docker, "run", "--rm", "--label", f"{CONTAINER_LABEL}=1", "--network", "none",
                        "-v", f"{root}:/x", "--entrypoint", "/bin/sh", "--user", "0",
                        image, "-c", "rm -rf /x/* /x/.[!.]*"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def format_lines(outcomes: list[dict]) -> list[str]:
    """One PASS/FAIL line per job (the `smoke` text output), its problems, and a log tail."""
    lines = []
    for o in outcomes:
        status = "PASS" if o["ok"] else "FAIL"
        detail = o["note"] or (f"exit codes {o['exit_codes'] or 'none'}, model {o['model_files'] or 'none'}, "
                               f"failure file {'yes' if o['failure_file'] is not None else 'no'}")
        lines.append(f"{status} sagemaker: {o['case']} job ({detail})")
        lines += [f"FAIL sagemaker: {o['case']} job: {p}" for p in o["problems"]]
        lines += [f"  | {line}" for line in (o["log_tail"] if o["problems"] else [])]
    return lines
