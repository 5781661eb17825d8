"""Map a rendered Dockerfile's instructions to stanzas, and BuildKit's plain progress back to them.

Every rendered stanza opens with one ``# --- <stanza> ---`` comment line, so each instruction
belongs to the last marker above it. BuildKit numbers the steps that do work ``[i/n]`` (FROM,
RUN, COPY, ADD, WORKDIR); image history has one entry per instruction after FROM. Both are
turned into stanza names here, so a failure and a layer size can be reported per stanza.
``Reporter`` draws that progress, one line per image.
"""

from __future__ import annotations

import re
import sys
import threading
from collections import deque
from dataclasses import dataclass, field

MARKER_RE = re.compile(r"^# --- ([a-z0-9][a-z0-9-]*) -+\s*$")
INSTRUCTION_RE = re.compile(r"^([A-Za-z]+)\s")
STEP_KINDS = ("FROM", "RUN", "COPY", "ADD", "WORKDIR")
VERTEX_RE = re.compile(r"^#(\d+) \[(?:[\w.-]+ )?(\d+)/(\d+)\] (.*)$")
LINE_RE = re.compile(r"^#(\d+) (.*)$")
TIMED_RE = re.compile(r"^\d+(?:\.\d+)? (.*)$")
ERROR_RE = re.compile(r"^#(\d+) ERROR: (.*)$")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    text: str  # the first line
    stanza: str


def instructions(dockerfile: str) -> list[Instruction]:
    """Instructions of the final stage (after its FROM, inclusive), each with its stanza."""
    out: list[Instruction] = []
    stanza = "preamble"
    continued = False
    for raw in dockerfile.splitlines():
        line = raw.strip()
        marker = MARKER_RE.match(line)
        if marker and not continued:
            stanza = marker.group(1)
            continue
        if continued:
            if line and not line.startswith("#"):  # comments and blank lines keep the continuation
                continued = line.endswith("\\")
            continue
        if not line or line.startswith("#"):
            continue
        m = INSTRUCTION_RE.match(line + " ")
        if m:
            keyword = m.group(1).upper()
            if keyword == "FROM":
                out = []
            out.append(Instruction(keyword, line, stanza))
        continued = line.endswith("\\")
    return out


def step_stanzas(dockerfile: str) -> list[str]:
    """Stanza of each BuildKit step [1/n]..[n/n]."""
    return [i.stanza for i in instructions(dockerfile) if i.keyword in STEP_KINDS]


def history_stanzas(dockerfile: str) -> list[Instruction]:
    """Instructions after FROM: one image-history entry each (BuildKit records ARG too)."""
    return instructions(dockerfile)[1:]


@dataclass
class Progress:
    """Follows BuildKit's ``--progress plain`` output line by line."""

    steps: list[str]
    tail_lines: int = 30
    current: str | None = None  # the stanza running now
    failed_stanza: str | None = None
    failed_step: str | None = None
    error: str | None = None
    _index: int = 0
    _vertex_stanza: dict = field(default_factory=dict)
    _vertex_step: dict = field(default_factory=dict)
    _logs: dict = field(default_factory=dict)
    _last: deque = field(default_factory=lambda: deque(maxlen=40))

    def feed(self, line: str) -> str | None:
        """Consume one line; return the stanza when the running stanza changes."""
        line = line.rstrip("\n")
        self._last.append(line)
        m = VERTEX_RE.match(line)
        if m:
            vertex, index, total, text = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
            stanza = self.steps[index - 1] if total == len(self.steps) and 0 < index <= total else None
            self._vertex_stanza[vertex] = stanza or "unknown"
            self._vertex_step[vertex] = f"[{index}/{total}] {text}"
            # Cached steps are announced out of order: only moving forward counts as progress.
            if stanza and index > self._index and stanza != self.current:
                self._index = index
                self.current = stanza
                return stanza
            self._index = max(self._index, index if stanza else 0)
            return None
        m = ERROR_RE.match(line)
        if m and m.group(1) in self._vertex_stanza:
            self.failed_stanza = self._vertex_stanza[m.group(1)]
            self.failed_step = self._vertex_step.get(m.group(1))
            self.error = m.group(2)
            return None
        if m and self.error is None:
            self.error = m.group(2)
        m = LINE_RE.match(line)
        if m and m.group(1) in self._vertex_stanza:
            body = TIMED_RE.match(m.group(2))
            if body:
                self._logs.setdefault(m.group(1), deque(maxlen=self.tail_lines)).append(body.group(1))
        return None

    def failure_tail(self) -> list[str]:
        """The last output lines of the failed step (or of the whole log when none is known)."""
        for vertex, stanza in self._vertex_stanza.items():
            if stanza == self.failed_stanza and self._vertex_step.get(vertex) == self.failed_step:
                return list(self._logs.get(vertex, ()))
        return list(self._last)[-self.tail_lines:]


class Reporter:
    """Progress on stderr: one line per image, redrawn in place on a terminal, else one line
    per change (CI logs)."""

    def __init__(self, names: list[str], stream=None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.names = names
        self.width = max(len(n) for n in names) if names else 0
        self.lines = {n: "waiting" for n in names}
        self.lock = threading.Lock()
        self.drawn = 0

    def note(self, text: str) -> None:
        """A line above the progress lines (before the first is drawn)."""
        with self.lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def update(self, name: str, text: str) -> None:
        with self.lock:
            self.lines[name] = text
            if self.tty:
                if self.drawn:
                    self.stream.write(f"\x1b[{self.drawn}F")
                for n in self.names:
                    self.stream.write(f"\x1b[2K[{n:<{self.width}}] {self.lines[n]}\n")
                self.drawn = len(self.names)
            else:
                self.stream.write(f"[{name}] {text}\n")
            self.stream.flush()
