"""What a build produced: image id and size, per-stanza layer sizes, the size gate, the JSON report."""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from builder.build_log import history_stanzas
from builder.buildkit import image_inspect
from builder.errors import BuilderError, UsageError
from builder.render import write_atomic


@dataclass
class ImageResult:
    name: str
    refs: list[str]
    status: str = "pending"  # built | failed | interrupted | size-gate | planned (dry run)
    image_id: str | None = None
    size: int | None = None
    duration_s: float | None = None
    log: str | None = None
    failed_stanza: str | None = None
    failed_step: str | None = None
    error: str | None = None
    log_tail: list[str] = field(default_factory=list)
    stanza_sizes: dict[str, int] = field(default_factory=dict)
    layers: list[dict] = field(default_factory=list)
    size_gate: dict | None = None
    command: list[str] = field(default_factory=list)  # the build command (dry run)

    @property
    def ok(self) -> bool:
        return self.status == "built"


def human(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def image_size(docker: str, image: str) -> int:
    doc = image_inspect(docker, image)
    if doc is None:
        raise BuilderError(f"'image inspect' found no image {image}")
    return int(doc.get("Size") or 0)


def history(docker: str, image: str) -> list[tuple[str, int]]:
    """(created_by, size in bytes), oldest first. CreatedBy comes JSON-quoted, one entry per line
    even when a step (a heredoc RUN) spans several; raises CalledProcessError when unreadable."""
    out = subprocess.run(
        [docker, "history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{json .CreatedBy}}", image],
        capture_output=True, text=True, errors="replace", check=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        size, _, created = line.partition("\t")
        try:
            created = json.loads(created)
        except ValueError:
            pass  # not JSON after all: the raw text
        rows.append((str(created), int(size) if size.strip().isdigit() else 0))
    return list(reversed(rows))


def layer_sizes(dockerfile: str, rows: list[tuple[str, int]]) -> list[dict]:
    """Pair the newest history entries with the Dockerfile's instructions after FROM.

    BuildKit writes one history entry per instruction (ARG included); an entry whose
    CreatedBy does not start with its instruction's keyword means the pairing is off (another
    builder, a squash), and those entries are reported under 'unknown' rather than guessed."""
    instrs = history_stanzas(dockerfile)
    if len(rows) < len(instrs):
        return [{"stanza": "unknown", "instruction": created[:80], "size": size} for created, size in rows]
    mine = rows[len(rows) - len(instrs):]
    out = []
    for instr, (created, size) in zip(instrs, mine):
        keyword = created.split(" ", 1)[0].upper()
        stanza = instr.stanza if keyword == instr.keyword else "unknown"
        out.append({"stanza": stanza, "instruction": instr.text[:80], "size": size})
    return out


def per_stanza(layers: list[dict]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for layer in layers:
        sizes[layer["stanza"]] = sizes.get(layer["stanza"], 0) + int(layer["size"])
    return sizes


LARGEST = 5  # layers and stanzas listed when an image is over its size gate


def size_gate(size: int, baseline: int | None, tolerance: float, layers: list[dict] | None = None) -> dict | None:
    """None when the image has no baseline; else the verdict with the numbers behind it. Over
    the limit, the largest layers and the stanzas that made them say where to look."""
    if baseline is None:
        return None
    limit = int(baseline * (1 + tolerance))
    over = (size - baseline) / baseline if baseline else 0.0
    gate = {"baseline": baseline, "tolerance": tolerance, "limit": limit, "size": size,
            "over_fraction": round(over, 4), "ok": size <= limit}
    if not gate["ok"]:
        ranked = sorted((layer for layer in layers or () if layer["size"] > 0), key=lambda layer: -layer["size"])
        gate["largest_layers"] = [dict(layer) for layer in ranked[:LARGEST]]
        stanzas = sorted(per_stanza(layers or []).items(), key=lambda item: -item[1])
        gate["largest_stanzas"] = [{"stanza": k, "size": v} for k, v in stanzas[:LARGEST] if v > 0]
        # The rest is the base image: our layers cannot explain more than they add.
        gate["base_size"] = max(0, size - sum(layer["size"] for layer in layers or ()))
    return gate


def size_gate_message(name: str, gate: dict) -> str:
    lines = [f"{name}: image is {human(gate['size'])}, {gate['over_fraction'] * 100:.0f}% over its baseline "
             f"{human(gate['baseline'])} (tolerance {gate['tolerance'] * 100:.0f}%, limit {human(gate['limit'])}); "
             "shrink it or raise size_baseline in the matrix"]
    if gate.get("largest_stanzas"):
        lines.append("  largest stanzas: " + ", ".join(f"{s['stanza']} {human(s['size'])}" for s in gate["largest_stanzas"])
                     + f"; base image {human(gate.get('base_size'))}")
    for layer in gate.get("largest_layers", []):
        lines.append(f"  {human(layer['size']):>9}  stanza {layer['stanza']}: {layer['instruction']}")
    return "\n".join(lines)


def probe_writable(folder: Path) -> None:
    """Create the folder and a file in it (removed at once); raises OSError when either fails."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def check_writable(path: Path, option: str = "--report") -> None:
    """Before anything is built: the report can be written there (else the hours of building
    end in a lost report)."""
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give a file name")
    try:
        probe_writable(path.parent)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write there ({exc.strerror or exc}); choose a writable path")


def write_report(path: Path, results: list[ImageResult], client: str, dry_run: bool = False) -> None:
    """Atomically (a temp file renamed into place); an OSError becomes one error line."""
    doc = {
        "client": client,
        "dry_run": dry_run,
        "ok": all(r.ok for r in results) and not dry_run,
        "images": [asdict(r) for r in results],
    }
    try:
        write_atomic(path, json.dumps(doc, indent=2) + "\n")
    except OSError as exc:
        raise BuilderError(f"--report {path}: cannot write the report ({exc.strerror or exc})")
