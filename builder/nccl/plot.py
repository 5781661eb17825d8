"""PNG plot of bus bandwidth against message size: the picture people read an nccl-tests run as.

Log2 x axis (sizes double), linear y; out-of-place and in-place curves, the pass threshold and
the physical peak as horizontal lines, the verdict in the title. matplotlib's Agg backend, so it
runs headless in CI.
"""

from __future__ import annotations

from pathlib import Path

from builder.nccl.judge import LARGE_BYTES, Verdict, human_bytes
from builder.nccl.results import NcclRun


def _size_label(n: float) -> str:
    n = int(n)
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size:
            return f"{n / size:g}{unit}"
    return f"{n}B"


def plot_busbw(run: NcclRun, path: Path, verdict: Verdict | None = None, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    sizes = [r.size for r in run.rows]
    fig, ax = plt.subplots(figsize=(9, 5.2), dpi=110)
    ax.plot(sizes, [r.out_of_place.busbw for r in run.rows], "o-", ms=3.5, lw=1.6, label="out-of-place")
    ax.plot(sizes, [r.in_place.busbw for r in run.rows], "s--", ms=3, lw=1.2, label="in-place")

    top = max(r.best_busbw for r in run.rows)
    if verdict and verdict.physical_peak:
        kind = verdict.peak_label or ("per-node network" if (verdict.nodes or 1) > 1 else "per-GPU link")
        ax.axhline(verdict.physical_peak, color="0.35", ls=":", lw=1.4,
                   label=f"physical peak {verdict.physical_peak:g} GB/s ({kind})")
        top = max(top, verdict.physical_peak)
    if verdict and verdict.threshold:
        # Drawn only where it applies: the bandwidth-bound sizes (>= 1 GiB, or the largest run).
        start = min(LARGE_BYTES, verdict.measured_size or LARGE_BYTES)
        ax.axhline(verdict.threshold, color="tab:red", ls="-.", lw=0.8, alpha=0.35)
        ax.hlines(verdict.threshold, start / 1.15, max(sizes) * 1.3, color="tab:red", linestyles="-.", lw=2,
                  label=f"threshold {verdict.threshold:g} GB/s (judged from {human_bytes(start)})")
        top = max(top, verdict.threshold)
    if verdict and verdict.measured is not None:
        below = verdict.threshold is not None and verdict.measured < verdict.threshold
        ax.plot([verdict.measured_size], [verdict.measured], "X" if below else "o", ms=10, mfc="none", mew=2,
                color="tab:red" if below else "tab:green")
        ax.annotate(f"{verdict.measured:g} GB/s", (verdict.measured_size, verdict.measured),
                    textcoords="offset points", xytext=(-10, 8), ha="right", fontsize=9)

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(LogLocator(base=2, numticks=40))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _size_label(v)))
    ticks = [t for t in ax.get_xticks() if min(sizes) <= t <= max(sizes)]
    if len(ticks) > 12:  # every other power of two keeps labels readable on 8 B .. 16 GiB runs
        ax.set_xticks(ticks[:: (len(ticks) + 11) // 12])
    ax.set_xlim(min(sizes) / 1.3, max(sizes) * 1.3)
    ax.set_ylim(0, top * 1.12 if top > 0 else 1)
    ax.set_xlabel("message size (bytes, log scale)")
    ax.set_ylabel("bus bandwidth (GB/s)")
    ax.grid(True, which="major", alpha=0.3)

    if title is None:
        title = run.collective or "nccl-tests"
        if verdict:
            where = f"{verdict.nodes} x {verdict.instance}" if verdict.instance and verdict.nodes else ""
            title = f"{title} {where} - {'PASS' if verdict.passed else 'FAIL'}".replace("  ", " ")
    ax.set_title(title)
    peak = run.peak
    ax.text(0.01, 0.98, f"peak {peak.busbw:g} GB/s at {human_bytes(peak.size)}; transport: {run.transport.verdict}",
            transform=ax.transAxes, va="top", fontsize=8, color="0.3")
    ax.legend(loc="center left", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
