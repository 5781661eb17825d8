"""Handing a generated sbatch script to Slurm: `sbatch --test-only`, `--parsable`, `--wait`.

Only shells out to the `sbatch` found on PATH; the script itself comes from builder.slurm.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from builder.errors import BuilderError

if TYPE_CHECKING:
    from builder.slurm import Job

# Exit code of `builder sbatch --submit/--test-only/--wait` when no sbatch is on PATH.
EXIT_NO_SLURM = 3


@dataclass(frozen=True)
class Submission:
    job_id: str | None
    output: str | None  # the job's output file, when known (%x/%j resolved)
    message: str  # what sbatch said (stderr for --test-only)
    exit_code: int  # sbatch's exit code (with --wait: the job's)


def find_sbatch() -> str:
    path = shutil.which("sbatch")
    if path is None:
        raise BuilderError(
            "sbatch not found on PATH; copy the script to a Slurm login node and run `sbatch SCRIPT` there",
            exit_code=EXIT_NO_SLURM,
        )
    return path


def submit(script: Path, job: Job, *, wait: bool = False, test_only: bool = False,
           cwd: Path | None = None, timeout: float | None = None) -> Submission:
    """Hand the script to sbatch: --test-only validates it with slurmctld, --wait blocks until done."""
    sbatch = find_sbatch()
    argv = [sbatch]
    if test_only:
        argv.append("--test-only")
    else:
        argv.append("--parsable")
        if wait:
            argv.append("--wait")
    argv.append(str(script))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BuilderError(f"sbatch did not return within {timeout:.0f} s ({' '.join(argv)})") from None
    said = (proc.stderr.strip() or proc.stdout.strip())
    if test_only:
        if proc.returncode != 0:
            raise BuilderError(f"slurmctld rejected {script}: {_one_line(said)}")
        return Submission(None, None, _one_line(said), 0)
    job_id = proc.stdout.strip().split(";", 1)[0] or None
    if job_id is not None and not job_id.isdigit():
        job_id = None
    if job_id is None:
        raise BuilderError(f"sbatch refused {script}: {_one_line(said) or 'no job id returned'}")
    output = resolve_output(job.output, job.name, job_id, cwd)
    return Submission(job_id, output, _one_line(proc.stderr.strip()), proc.returncode)


def resolve_output(pattern: str, name: str, job_id: str, cwd: Path | None = None) -> str | None:
    """The output path sbatch writes for this job, when the pattern uses only %x, %j and %%."""
    if re.search(r"%(?![xj%])", pattern):
        return None
    path = pattern.replace("%%", "\0").replace("%x", name).replace("%j", job_id).replace("\0", "%")
    return str((cwd or Path.cwd()) / path) if not path.startswith("/") else path


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())
