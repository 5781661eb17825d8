"""Smoke check: does the image keep its environment when enroot starts it through a login shell?

enroot (and so pyxis, `srun --container-image`) starts every container through a login shell
unless ENROOT_LOGIN_SHELL is off: enroot 4.1.2 enroot.in (`config::export ENROOT_LOGIN_SHELL
true`), src/runtime.sh runtime::_start (`enroot-switchroot ${ENROOT_LOGIN_SHELL:+--login}`).
enroot-switchroot (bin/enroot-switchroot.c) first replaces the environment with the image's
/etc/environment, which enroot import writes from the image's Env (load_environment: clearenv,
then the file), then with --login (sys_login) adds TERM=dumb, HOME, SHELL, USER and LOGNAME when
unset, and starts the user's shell as "-<shell>": a login shell, which reads /etc/profile and
~/.profile. The shell is the host user's (enroot's hooks.d/10-shadow.sh writes it into the
container's passwd) when the image has it, else /bin/sh; /bin/bash here when the image has it.

An /etc/profile that sets PATH (Debian's does, for root and for other users) then drops what the
image put on PATH (/opt/amazon/openmpi/bin, /opt/nccl-tests/build, ...) from every job. This
module runs that login shell in the smoke container, as root and as an ordinary user, and
compares the result with the image's Env: any baked variable changed or removed is a WARN
(the image still works under Docker and under `builder sbatch`, whose script turns the login
shell off; see docs/slurm.md for what else avoids it).
"""

from __future__ import annotations

import subprocess
from typing import Mapping

# uid:gid and HOME of the two users the check runs as: root, and an ordinary user (on clusters
# jobs run as the user; Debian's /etc/profile sets a different PATH for each).
USERS = (("root", "0:0", "/root"), ("user", "1000:1000", "/nonexistent"))
TIMEOUT = 60.0
# The system's own bin folders: a login PATH for ordinary users leaves out the sbin ones (Debian's
# /etc/profile), which is no finding; losing any other folder the image put on PATH is.
SYSTEM_DIRS = frozenset(("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin",
                         "/usr/local/games", "/usr/games"))
# Run as the login shell of the image: bash when it has one, else sh; prints the environment the
# shell ends with, NUL-separated, as pyxis reads it (pyxis_slurmstepd.c: read_proc_environ).
PROBE = ('if [ -x /bin/bash ]; then s=/bin/bash; else s=/bin/sh; fi; '
         'exec env -i "$@" SHELL="$s" "$s" -l -c "cat /proc/self/environ"')


def parse_environ(data: str) -> dict[str, str]:
    out = {}
    for entry in data.split("\0"):
        name, eq, value = entry.partition("=")
        if name and eq:
            out[name] = value
    return out


def baked_env(config: Mapping) -> dict[str, str]:
    return dict(e.partition("=")[::2] for e in (config.get("Env") or []) if "=" in e)


def login_env_argv(docker: str, container: str, user: str, home: str, baked: Mapping[str, str]) -> list[str]:
    """`docker exec` of the probe with the environment enroot-switchroot would give the shell."""
    start = dict(baked)
    for name, value in (("TERM", "dumb"), ("HOME", home), ("USER", "root" if user == "0:0" else "user"),
                        ("LOGNAME", "root" if user == "0:0" else "user")):
        start.setdefault(name, value)  # sys_login: setenv(..., 0), the image's value wins
    # sys_login sets PATH only when the image has none (login.defs ENV_SUPATH/ENV_PATH, else a default).
    start.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    start.pop("SHELL", None)  # the probe sets the shell it runs
    pairs = [f"{k}={v}" for k, v in start.items()]
    return [docker, "exec", "-u", user, container, "/bin/sh", "-c", PROBE, "probe", *pairs]


def compare(baked: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """What the login shell did to the baked variables, one phrase each ([]: nothing)."""
    changes = []
    for name, value in baked.items():
        if name not in after:
            changes.append(f"unsets {name}")
        elif after[name] != value:
            if name.endswith("PATH"):
                phrase = _path_change(name, value, after[name])
                if phrase:
                    changes.append(phrase)
                continue
            changes.append(f"changes {name} from {value!r} to {after[name]!r}")
    return changes


def _path_change(name: str, before: str, after: str) -> str | None:
    """A PATH-like list: entries of the image lost or put in another order (system folders aside)."""
    mine = [p for p in before.split(":") if p and p not in SYSTEM_DIRS]
    now = after.split(":")
    lost = [p for p in mine if p not in now]
    if lost:
        return f"drops {', '.join(lost)} from {name}"
    if [p for p in now if p in mine] != list(dict.fromkeys(mine)):
        return f"reorders {name} from {before!r} to {after!r}"
    return None


def results(docker: str, container: str, config: Mapping) -> list[tuple[dict, bool, str]]:
    """(args, warn, detail) per user; a probe that cannot run is a warning too."""
    baked = baked_env(config)
    out = []
    for label, user, home in USERS:
        args = {"user": label}
        argv = login_env_argv(docker, container, user, home, baked)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            out.append((args, True, f"the login shell did not finish within {TIMEOUT:.0f}s (does /etc/profile wait for input?)"))
            continue
        if proc.returncode != 0:
            why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            out.append((args, True, f"could not run the image's login shell: {why}"))
            continue
        changes = compare(baked, parse_environ(proc.stdout))
        if changes:
            out.append((args, True, "under enroot's default login shell (ENROOT_LOGIN_SHELL) the image's login scripts (/etc/profile, ~/.profile) "
                        f"{'; '.join(changes)}: jobs started by pyxis lose them unless the login shell is off "
                        "(`builder sbatch` scripts turn it off; see docs/slurm.md)"))
        else:
            out.append((args, False, "the login shell enroot starts keeps PATH and every baked variable"))
    return out
