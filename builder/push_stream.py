"""Reading the Docker engine's push stream: errors, the pushed digest, per-layer progress.

The engine answers a push with HTTP 200 and then streams JSON lines; a registry failure arrives
as an ``error``/``errorDetail`` line in that stream (docker-py issues 3161, 3277), so every line is
checked. The registry's manifest digest comes in the final ``aux`` line
(``{"aux": {"Tag": ..., "Digest": "sha256:...", "Size": ...}}``), echoed by a status line
``TAG: digest: sha256:... size: N``; both are read and must agree.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
_STATUS_DIGEST_RE = re.compile(r"^(?P<tag>\S+): digest: (?P<digest>sha256:[0-9a-f]{64}) size: (?P<size>[0-9]+)$")

# What kind of failure a stream error is: decides between retrying and one clear error.
AUTH = "auth"  # the registry refused the credentials: one more try with a fresh token
TRANSIENT = "transient"  # network or server trouble: retry with backoff
TAG_CONFLICT = "tag-conflict"  # immutable tag already holds an image: compare digests, never retry
FATAL = "fatal"  # anything else: report it

_PATTERNS = (
    (TAG_CONFLICT, r"tag invalid|cannot be overwritten because the repository is immutable|ImageTagAlreadyExists"),
    (AUTH, r"unauthorized|authentication required|no basic auth credentials|authorization token has expired|denied: "
     r"Your authorization token"),
    (
        TRANSIENT,
        r"\bEOF\b|i/o timeout|connection refused|connection reset|broken pipe|TLS handshake timeout|timed? ?out|"
        r"use of closed network connection|no such host|server misbehaving|blob upload unknown|"
        r"\b50[0-4]\b|Internal Server Error|Bad Gateway|Service Unavailable|Gateway Time-?out|toomanyrequests|"
        r"too many requests|ThrottlingException|net/http",
    ),
)


def classify(message: str) -> str:
    for kind, pattern in _PATTERNS:
        if re.search(pattern, message, re.IGNORECASE):
            return kind
    return FATAL


class PushStreamError(Exception):
    """An error line from the push stream, with its kind (see classify)."""

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        self.message = message
        self.kind = kind or classify(message)


@dataclass
class LayerState:
    status: str = ""
    current: int = 0
    total: int = 0
    shown_at: float = 0.0
    shown_fraction: float = -1.0


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


class LayerProgress:
    """Per-layer progress as plain lines (CI logs have no terminal): one line when a layer changes
    state, and while pushing at most one line per 25% or per ``interval`` seconds."""

    def __init__(self, report: Callable[[str], None], interval: float = 10.0):
        self.report = report
        self.interval = interval
        self.layers: dict[str, LayerState] = {}

    def feed(self, line: dict) -> None:
        layer_id, status = line.get("id"), str(line.get("status", ""))
        if not layer_id or not status or _STATUS_DIGEST_RE.match(status):
            return
        state = self.layers.setdefault(layer_id, LayerState())
        detail = line.get("progressDetail") or {}
        now = time.monotonic()
        if status == "Pushing":
            state.current, state.total = int(detail.get("current", 0)), int(detail.get("total", 0) or 0)
            fraction = min(state.current / state.total, 1.0) if state.total else 0.0
            due = status != state.status or fraction - state.shown_fraction >= 0.25 or now - state.shown_at >= self.interval
            if due:
                total = f" / {_size(state.total)}" if state.total else ""
                self.report(f"  {layer_id}: pushing {_size(state.current)}{total}")
                state.shown_at, state.shown_fraction = now, fraction
        elif status.startswith("Retrying in"):
            # The engine's own per-layer retry counts down once a second: show the first line only.
            if not state.status.startswith("Retrying in"):
                self.report(f"  {layer_id}: upload failed, the engine retries ({status[:1].lower() + status[1:]})")
        elif status != state.status:
            self.report(f"  {layer_id}: {status[:1].lower() + status[1:]}")
        state.status = status


@dataclass(frozen=True)
class StreamOutcome:
    digest: str
    size: int | None
    layers: int


def read_push_stream(
    lines: Iterable[dict | str], tag: str, progress: LayerProgress | None = None
) -> StreamOutcome:
    """Consume the whole stream; raise PushStreamError on the first error line, or when the stream
    ends without a digest for ``tag`` (a push is never taken as done without one)."""
    aux_digest = status_digest = None
    size = None
    for line in lines:
        if not isinstance(line, dict):  # decode=True gives dicts; be strict about anything else
            raise PushStreamError(f"unexpected line in the push stream: {str(line)[:200]}", FATAL)
        if "error" in line or "errorDetail" in line:
            detail = line.get("errorDetail") or {}
            raise PushStreamError(str(line.get("error") or detail.get("message") or "unknown push error").strip())
        aux = line.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            if aux.get("Tag") not in (None, tag):
                raise PushStreamError(f"the engine reported a digest for tag {aux.get('Tag')!r}, expected {tag!r}")
            aux_digest, size = str(aux["Digest"]), aux.get("Size")
        match = _STATUS_DIGEST_RE.match(str(line.get("status", "")))
        if match and match["tag"] == tag:
            status_digest = match["digest"]
        if progress is not None:
            progress.feed(line)
    digest = aux_digest or status_digest
    if not digest or not DIGEST_RE.match(digest):
        raise PushStreamError("the push stream ended without a manifest digest (interrupted push)", TRANSIENT)
    if aux_digest and status_digest and aux_digest != status_digest:
        raise PushStreamError(f"the push stream reported two digests: {aux_digest} and {status_digest}")
    layers = len(progress.layers) if progress is not None else 0
    return StreamOutcome(digest=digest, size=int(size) if size is not None else None, layers=layers)
