"""The files enroot reads from an image at start, written from the image's config.

What ``enroot import`` writes (read in NVIDIA/enroot src/docker.sh, v3-v4): ``/etc/environment``
(the image's ENV, one KEY=VALUE a line), ``/etc/fstab`` (each VOLUME as a bind mount from the
container's own rootfs), ``/etc/rc`` (labels as comments, cd to WORKDIR, source
``/etc/rc.local``, then exec ENTRYPOINT+CMD, or ENTRYPOINT plus the arguments given to
``enroot start``; ``/bin/sh`` when the image has neither) and an empty ``/etc/rc.local``.
pyxis runs the image through these, so a .sqsh without them loses the image's environment.
"""

from __future__ import annotations

import shlex
from typing import Mapping

RC_LOCAL = (
    "# This file is sourced by /etc/rc when the container starts.\n"
    "# It can be used to manipulate the entrypoint or the command of the container.\n"
)


def _quoted(words: list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def _one_line(text: str) -> str:
    """A label as one comment line: a newline in a label value must not start a shell line in /etc/rc."""
    return str(text).replace("\n", "\\n").replace("\r", "\\r")


def render(config: Mapping) -> dict[str, str]:
    """Path (relative to the root) -> content, from the engine's image ``Config``."""
    env = list(config.get("Env") or [])
    volumes = sorted((config.get("Volumes") or {}).keys())
    labels = config.get("Labels") or {}
    workdir = config.get("WorkingDir") or "/"
    entrypoint = list(config.get("Entrypoint") or [])
    cmd = list(config.get("Cmd") or [])
    if not entrypoint and not cmd:
        cmd = ["/bin/sh"]

    fstab = "".join(f"${{ENROOT_ROOTFS}}{v} {v} none x-create=dir,bind,rw,nosuid,nodev\n" for v in volumes)
    environment = "".join(f"{line}\n" for line in env)
    rc = "".join(f"# {_one_line(key)} {_one_line(value)}\n" for key, value in labels.items())
    if rc:
        rc += "\n"
    with_args = f"exec {_quoted(entrypoint)} \"$@\"" if entrypoint else 'exec "$@"'
    default = f"exec {_quoted(entrypoint + cmd)}"
    rc += (
        f"mkdir -p {shlex.quote(workdir)} 2> /dev/null\n"
        f"cd {shlex.quote(workdir)} && unset OLDPWD || exit 1\n"
        "\n"
        "if [ -s /etc/rc.local ]; then\n"
        "    . /etc/rc.local\n"
        "fi\n"
        "\n"
        "if [ $# -gt 0 ]; then\n"
        f"    {with_args}\n"
        "else\n"
        f"    {default}\n"
        "fi\n"
    )
    return {
        "etc/fstab": fstab,
        "etc/environment": environment,
        "etc/rc": rc,
        "etc/rc.local": RC_LOCAL,
    }


def workdir(config: Mapping) -> str:
    return config.get("WorkingDir") or "/"
