"""The files enroot reads from an image at start, written from the image's config.

What ``enroot import`` writes (read in NVIDIA/enroot src/docker.sh, v3-v4): ``/etc/environment``
(the image's ENV, one KEY=VALUE a line), ``/etc/fstab`` (each VOLUME as a bind mount from the
container's own rootfs), ``/etc/rc`` (labels as comments, cd to WORKDIR, source
``/etc/rc.local``, then exec ENTRYPOINT+CMD, or ENTRYPOINT plus the arguments given to
``enroot start``; ``/bin/sh`` when the image has neither) and an empty ``/etc/rc.local``.
pyxis runs the image through these, so a .sqsh without them loses the image's environment.
"""

from __future__ import annotations

from typing import Mapping

RC_LOCAL = (
    "# This file is sourced by /etc/rc when the container starts.\n"
    "# It can be used to manipulate the entrypoint or the command of the container.\n"
)


_ANSI = {"\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v", "\f": "\\f", "\r": "\\r",
         "\x1b": "\\E", "'": "\\'", "\\": "\\\\"}


def bash_quote(word: str) -> str:
    """``${word@Q}`` as bash 5 writes it: 'single quoted', or $'...' when the word holds a
    control character (bash's ansic_shouldquote), so /etc/rc reads the same as enroot's."""
    if any(ord(c) < 32 or ord(c) == 127 for c in word):
        return "$'" + "".join(_ANSI.get(c, f"\\{ord(c):03o}" if ord(c) < 32 or ord(c) == 127 else c)
                              for c in word) + "'"
    return "'" + word.replace("'", "'\\''") + "'"


def _quoted(words: list[str]) -> str:
    return " ".join(bash_quote(w) for w in words)


def _dir_word(path: str) -> str:
    """The WORKDIR inside double quotes, as enroot writes it; a name the shell would expand or
    that would end the quotes is quoted properly instead (enroot's /etc/rc breaks on those)."""
    if any(c in path for c in '"$`\\') or any(ord(c) < 32 for c in path):
        return bash_quote(path)
    return f'"{path}"'


def render(config: Mapping) -> dict[str, str]:
    """Path (relative to the root) -> content, from the engine's image ``Config``: what
    docker::configure (src/docker.sh) writes, byte for byte for ordinary images."""
    env = list(config.get("Env") or [])
    volumes = sorted((config.get("Volumes") or {}).keys())  # jq 'keys' sorts by code point
    labels = config.get("Labels") or {}
    workdir = config.get("WorkingDir") or "/"
    entrypoint = list(config.get("Entrypoint") or [])
    cmd = list(config.get("Cmd") or [])
    if not entrypoint and not cmd:
        cmd = ["/bin/sh"]

    fstab = "".join(f"${{ENROOT_ROOTFS}}{v} {v} none x-create=dir,bind,rw,nosuid,nodev\n" for v in volumes)
    environment = "".join(f"{line}\n" for line in env)
    # jq: "# \(.key) \(.value | gsub("\n"; " "))"; a newline in a key is kept out of the shell too.
    rc = "".join(f"# {str(key).replace(chr(10), ' ')} {str(value).replace(chr(10), ' ')}\n"
                 for key, value in labels.items())
    if rc:
        rc += "\n"
    ep = _quoted(entrypoint)  # ${entrypoint[@]+${entrypoint[@]@Q}}: nothing when empty
    rc += (
        f"mkdir -p {_dir_word(workdir)} 2> /dev/null\n"
        f"cd {_dir_word(workdir)} && unset OLDPWD || exit 1\n"
        "\n"
        "if [ -s /etc/rc.local ]; then\n"
        "    . /etc/rc.local\n"
        "fi\n"
        "\n"
        "if [ $# -gt 0 ]; then\n"
        f"    exec {ep} \"$@\"\n"
        "else\n"
        f"    exec {ep} {_quoted(cmd)}\n"
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
