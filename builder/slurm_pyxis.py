"""The pyxis/enroot part of a generated sbatch script: what the container step needs so the job
sees the image's environment, and shows it.

Two things the bare `srun --container-image` gets wrong or hides (tried here with Slurm 22.05,
pyxis 0.24.0 and enroot 4.1.2, tests/integration/test_slurm_pyxis.py):

- enroot starts every container through a login shell by default, and an image whose
  /etc/profile sets PATH (Debian's does, for root and for users) loses the PATH the image was
  built with: the job no longer finds mpirun or the nccl-tests binaries. The script turns the
  login shell off for its own steps (ENROOT_LOGIN_SHELL below); `builder smoke` warns about
  such images (builder/smoke_login_shell.py).
- a wrong image, or a PATH lost anyway, only shows as "command not found" deep in the output;
  the script has local rank 0 of each node print what the job got from the image first.
"""

from __future__ import annotations

import re

# enroot 4.1.2: enroot.in sets `config::export ENROOT_LOGIN_SHELL true` (the environment wins over
# enroot.conf), config::fini unsets any ENROOT_* whose value is n/no/false; src/runtime.sh
# runtime::_start then runs `enroot-switchroot ${ENROOT_LOGIN_SHELL:+--login} ...`, and
# bin/enroot-switchroot.c sys_init starts the shell as "-sh" (a login shell, which reads
# /etc/profile) only with --login. doc/cmd/start.md documents the setting ("Use a login shell to
# run the container initialization", default yes). pyxis hands the job's environment to enroot,
# less a deny list that does not name this variable (pyxis 0.24.0 pyxis_slurmstepd.c:
# enroot_import_job_env, enroot_deny_env), so exporting it in the batch script reaches enroot.
LOGIN_SHELL_SETTING = ("ENROOT_LOGIN_SHELL", "n")

# pyxis --container-name: a name, optionally ":flags" (pyxis args.c: auto, create, exec, no_exec);
# builder takes the plain name, which pyxis stores as the enroot container pyxis_<name>.
CONTAINER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# Lines start with '#': `builder nccl parse` reads them as header lines, not results. POSIX sh, as
# pyxis already needs a shell in the image (pyxis_slurmstepd.c: enroot_container_start runs
# `sh -c "kill -STOP $$ ..."` in it). The benchmark then replaces the shell (exec), so signals
# and PMIx reach it unchanged.
IMAGE_REPORT = """if [ "${SLURM_LOCALID:-0}" = 0 ]; then
  host=$(hostname 2>/dev/null || echo "node ${SLURM_NODEID:-0}")
  echo "# image on $host: PATH=$PATH"
  echo "# image on $host: LD_LIBRARY_PATH=${LD_LIBRARY_PATH-}"
  echo "# image on $host: mpirun=$(command -v mpirun || echo "not on PATH")"
  env | grep -E "^(NCCL|FI|OFI|OPAL|OMPI)_" | sort | sed "s|^|# image on $host: |"
fi
if [ ! -x "$1" ]; then
  echo "builder: $1 is not an executable in the image (see builder sbatch --tests-dir)" >&2
  exit 127
fi
exec "$@"
"""
assert "'" not in IMAGE_REPORT  # it is written single-quoted into the script

IMAGE_REPORT_VAR = "IMAGE_REPORT"


def script_lines(login_shell: bool) -> list[str]:
    """The lines above the srun of a container job: the login-shell setting and the report."""
    lines = []
    if not login_shell:
        name, value = LOGIN_SHELL_SETTING
        lines += [
            "# enroot starts containers through a login shell by default; an image whose /etc/profile",
            "# sets PATH (Debian's does) would lose the PATH it was built with (mpirun, nccl-tests).",
            "# Off for this job's steps: pyxis passes this variable to enroot (docs/slurm.md).",
            f"export {name}={value}",
            "",
        ]
    lines += [
        "# Run inside the container before the benchmark: local rank 0 of each node prints what the",
        "# job got from the image (PATH, mpirun, the EFA/NCCL variables), then the benchmark replaces it.",
        "# shellcheck disable=SC2016  # expanded by the shell in the container, not here",
        f"{IMAGE_REPORT_VAR}='{IMAGE_REPORT}'",
        "",
    ]
    return lines


def srun_args(container_name: str | None, env_names: list[str]) -> list[str]:
    """pyxis options of the srun line. --container-env: pyxis sets the job's environment in the
    container, but a variable the image also sets keeps the image's value (pyxis README,
    --container-env; pyxis_slurmstepd.c: spank_import_container_env overwrites the job's values
    with the container's, except for the names given here): without it the script's EFA/NCCL
    choices and --env overrides would silently lose to the image's presets."""
    args = [f"--container-name={container_name}"] if container_name else []
    if env_names:
        args.append("--container-env=" + ",".join(env_names))
    return args


def wrap_argv() -> list[str]:
    """What goes before the benchmark argv on the srun line ($0 of the shell is 'image-report')."""
    return ["sh", "-c", f'"${IMAGE_REPORT_VAR}"', "image-report"]
