"""enroot's configuration, read the way enroot 4.1.2 reads it (NVIDIA/enroot enroot.in, "BEGIN CONFIG").

- One configuration file: ``@sysconfdir@/enroot.conf``, its path written into the ``enroot``
  script at install time (Makefile: ``sed -e 's;@sysconfdir@;$(SYSCONFDIR);'``, SYSCONFDIR =
  ``$(prefix)/etc/enroot``, prefix ``/usr/local`` by default; the deb and rpm packages build with
  ``prefix=`` so theirs is ``/etc/enroot``). builder asks the installed ``enroot`` script for
  it (its ``config::init "PATH"`` line); with no enroot installed, the first of
  ``/etc/enroot/enroot.conf`` and ``/usr/local/etc/enroot/enroot.conf`` that exists.
- ``config::init``: that file, then ``enroot.conf.d/*.conf`` in glob order (bash sorts the
  names; builder sorts them bytewise, the C locale's order).
- ``config::load``: each line is ``read -r key value`` with ``IFS=$' \\t='``; only keys matching
  ``^ENROOT_[[:upper:]_]+$`` (and a few others builder does not use) count; the value is
  ``eval echo``'d.
- ``config::export KEY VALUE``: ``export "$1=${!1:-$2}"``: a non-empty environment variable
  wins, and so does the first non-empty value: a later line or drop-in does NOT override an
  earlier one. enroot's built-in default applies when none set the key.

builder cannot run ``eval``: a value that needs the shell (``$``, backquotes, globs, braces,
``~``, operators) is an error naming its file and line, for the keys builder reads only.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from builder.errors import UsageError

SYSTEM_CONF = "/etc/enroot/enroot.conf"  # pkg/deb/rules, pkg/rpm/SPECS/enroot.spec: prefix=
PREFIX_CONF = "/usr/local/etc/enroot/enroot.conf"  # Makefile: prefix ?= /usr/local
_KEY = re.compile(r"^ENROOT_[A-Z_]+\Z")  # enroot.in config::load: ^ENROOT_[[:upper:]_]+$
_INIT_LINE = re.compile(r'^config::init "(/[^"$`]+)"\s*$', re.M)
_NEEDS_SHELL = re.compile(r"[$`*?\[\]{}~;&|<>()]")


@dataclass(frozen=True)
class Value:
    text: str  # after quote removal, words joined by one space (what eval echo prints)
    where: str  # "$KEY" or "FILE:LINE"


def installed_conf(enroot: str | None = None) -> str | None:
    """The configuration file the installed ``enroot`` reads, from its own script."""
    path = enroot or shutil.which("enroot")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            match = _INIT_LINE.search(f.read(1 << 20))
    except OSError:
        return None
    return match[1] if match else None


def conf_file() -> str:
    """Where enroot's configuration is read from on this machine (see the module docstring)."""
    found = installed_conf()
    if found:
        return found
    return next((p for p in (SYSTEM_CONF, PREFIX_CONF) if os.path.exists(p)), SYSTEM_CONF)


def conf_files(conf: str) -> list[str]:
    """enroot.conf, then its drop-ins, in config::init's order."""
    files = [conf]
    folder = Path(conf + ".d")
    try:
        names = sorted((e.name for e in os.scandir(folder) if e.name.endswith(".conf")), key=os.fsencode)
    except OSError:
        names = []
    return files + [str(folder / n) for n in names]


def _split_line(line: str) -> tuple[str, str]:
    """``read -r key value`` with IFS=$' \\t=': the first field, and the rest of the line."""
    line = line.strip(" \t\n")
    match = re.match(r"^([^ \t=]*)(?:[ \t]*=[ \t]*|[ \t]+|\Z)(.*)\Z", line, re.S)
    if not match:
        return "", ""
    return match[1], match[2].rstrip(" \t")


def read_file(path: str) -> list[tuple[str, str, int]]:
    """(key, raw value, line number) of the ENROOT_* lines of one file, in order."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = []
    for number, line in enumerate(lines, 1):
        key, value = _split_line(line)
        if _KEY.match(key):
            found.append((key, value, number))
    return found


def _before_comment(raw: str) -> str:
    """The value up to a shell comment: a '#' that starts a word, outside quotes."""
    quote = ""
    for i, ch in enumerate(raw):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or raw[i - 1] in " \t"):
            return raw[:i]
    return raw


def evaluate(key: str, raw: str, where: str) -> str:
    """What ``eval echo VALUE`` prints, for values that need no shell; else one error line."""
    if _NEEDS_SHELL.search(_before_comment(raw)):
        raise UsageError(f"{where}: {key} needs the shell to evaluate ({raw.strip()!r}), which builder does not "
                         f"run; set {key} in the environment or write the value out")
    try:
        return " ".join(shlex.split(_before_comment(raw)))
    except ValueError:
        raise UsageError(f"{where}: {key} has unbalanced quotes ({raw.strip()!r})") from None


class EnrootConfig:
    """The enroot settings an export uses, resolved as enroot resolves them; files read once."""

    def __init__(self, env: Mapping[str, str] | None = None, conf: str | None = None):
        self.env = os.environ if env is None else env
        self.conf = conf or conf_file()
        self._lines: list[tuple[str, str, str]] | None = None  # (key, raw value, "file:line")

    def _all(self) -> list[tuple[str, str, str]]:
        if self._lines is None:
            self._lines = [(key, raw, f"{path}:{number}") for path in conf_files(self.conf)
                           for key, raw, number in read_file(path)]
        return self._lines

    def get(self, key: str) -> Value | None:
        """The value enroot would use for ``key`` before its built-in default, or None."""
        if self.env.get(key, ""):
            return Value(" ".join(self.env[key].split()), f"${key}")
        for line_key, raw, where in self._all():
            if line_key == key:
                text = evaluate(key, raw, where)
                if text:  # config::export: ${!1:-$2}, so an empty value lets a later one in
                    return Value(text, where)
        return None
