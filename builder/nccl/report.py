"""Reports of a parsed (and maybe judged) run: a JSON document for CI and text for people."""

from __future__ import annotations

import math

from builder.nccl.judge import Verdict, human_bytes
from builder.nccl.results import NcclRun

SCHEMA = "builder.nccl/1"


def _finite(value):
    """JSON has no NaN or Infinity: a non-finite number becomes null (strict parsers reject them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(run: NcclRun, verdict: Verdict | None = None, source: str | None = None) -> dict:
    doc = {"schema": SCHEMA, "source": source, **run.to_dict()}
    if verdict is not None:
        doc["verdict"] = verdict.to_dict()
    return _finite(doc)


def _placement(m) -> str:
    err = "N/A" if m.wrong is None and m.delta is None else (f"{m.wrong}" if m.wrong is not None else f"{m.delta:g}")
    return f"{m.time_us:>10g} {m.algbw:>7.2f} {m.busbw:>7.2f} {err:>6}"


def rows_text(run: NcclRun) -> str:
    head = f"{'size':>10} {'type':>6} {'op':>5} {'root':>4} | {'time us':>10} {'algbw':>7} {'busbw':>7} {'err':>6} | " \
           f"{'time us':>10} {'algbw':>7} {'busbw':>7} {'err':>6}"
    lines = [f"{'':>30}| {'out-of-place':^34}| {'in-place':^34}", head]
    for r in run.rows:
        root = "" if r.root is None else str(r.root)
        lines.append(
            f"{human_bytes(r.size):>10} {r.type:>6} {r.redop or '':>5} {root:>4} | "
            f"{_placement(r.out_of_place)} | {_placement(r.in_place)}"
        )
    return "\n".join(lines)


def summary_text(run: NcclRun, source: str | None = None) -> str:
    peak = run.peak
    printed = "not" if run.avg_busbw_printed is None else f"{run.avg_busbw_printed:g}"
    lines = [
        f"{source + ': ' if source else ''}{run.collective or 'collective not named'}, {len(run.rows)} sizes"
        + (f", {run.nranks} ranks on {len(run.hosts)} host(s)" if run.nranks else "")
        + (f", NCCL {run.nccl_version}" if run.nccl_version else "")
        + (f", via {run.launcher}" if run.launcher else ""),
        f"  avg busbw: {printed} printed, {run.avg_busbw_recomputed:.4f} recomputed (GB/s)"
        + ("; times were printed in ms" if run.time_unit == "ms" else ""),
        f"  peak busbw: {peak.busbw:g} GB/s at {human_bytes(peak.size)} ({peak.placement})",
        f"  transport: {run.transport.summary()}",
    ]
    if run.out_of_bounds is not None:
        lines.append(f"  out of bounds: {run.out_of_bounds}")
    lines += [f"  warning: {w}" for w in run.warnings]
    return "\n".join(lines)


def verdict_text(verdict: Verdict) -> str:
    lines = [f"{'PASS' if verdict.passed else 'FAIL'}: {verdict.collective or 'nccl-tests'}"
             + (f" on {verdict.nodes} x {verdict.instance}" if verdict.instance and verdict.nodes else "")]
    for c in verdict.checks:
        lines.append(f"  [{c.status}] {c.name}: {c.detail}")
    return "\n".join(lines)
