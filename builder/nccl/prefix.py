"""Launcher prefixes on nccl-tests and NCCL log lines (srun -l, mpirun --tag-output). Pure.

Shared by the table parser and the transport detector, which both read lines of any rank.
"""

from __future__ import annotations

import re

# mpirun --tag-output (Open MPI 4: "[jobid,rank]<stdout>:", Open MPI 5 may add a space).
_MPI_TAG = re.compile(r"^\s*\[\d+,(\d+)\]<(?:stdout|stderr)>:\s?")
# srun -l / --label: "0: ", right-aligned when there are many tasks (" 7: ").
_SRUN_TAG = re.compile(r"^\s*(\d+): ")

LAUNCHER_MPIRUN = "mpirun --tag-output"
LAUNCHER_SRUN = "srun -l"


def split_prefix(line: str) -> tuple[str | None, str | None, str]:
    """(launcher, rank label, content) for one output line; no launcher -> (None, None, line).

    The outer prefix names the launcher and the stream; an inner one (srun -l around mpirun
    --tag-output) is stripped too.
    """
    launcher = label = None
    content = line
    for _ in range(2):
        for kind, pattern in ((LAUNCHER_MPIRUN, _MPI_TAG), (LAUNCHER_SRUN, _SRUN_TAG)):
            m = pattern.match(content)
            if m:
                if launcher is None:
                    launcher, label = kind, m.group(1)
                content = content[m.end():]
                break
        else:
            break
    return launcher, label, content


def split_streams(text: str) -> tuple[str | None, dict[str | None, list[tuple[int, str]]], list[str]]:
    """(the launcher most lines carry, rank label -> its (line index, content) pairs, every
    line's content without prefixes)."""
    launchers: dict[str, int] = {}
    streams: dict[str | None, list[tuple[int, str]]] = {}
    contents: list[str] = []
    for index, line in enumerate(text.splitlines()):
        launcher, rank, content = split_prefix(line)
        if launcher:
            launchers[launcher] = launchers.get(launcher, 0) + 1
        streams.setdefault(rank, []).append((index, content))
        contents.append(content)
    launcher = max(launchers, key=launchers.get) if launchers else None
    return launcher, streams, contents


def rank_key(label: str | None) -> tuple[int, int]:
    return (0, -1) if label is None else (1, int(label))
