"""Parser throughput on a large interleaved job output: prints seconds and lines per second.

The output is the p5 table of tests/fixtures/nccl (srun -l) with NCCL_DEBUG=INFO lines of 64
ranks interleaved between its rows, the shape of a big Slurm job's .out file.
Usage: python benchmarks/nccl_parse.py [INFO lines per row, default 2000]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from builder.nccl.parse import parse_text

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "nccl" / "awsome_p5_2node_srun.txt"


def main() -> None:
    per_row = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    rows = [line for line in FIXTURE.read_text().splitlines() if not line.startswith("%%")]
    lines = []
    for i, row in enumerate(rows):
        lines.append(row)
        for j in range(per_row):
            rank = (i + j) % 64
            lines.append(f"{rank}: node-{rank // 8}:{1000 + rank}:{2000 + j} [{rank % 8}] NCCL INFO Channel {j % 32:02d}/0 : "
                         f"{rank}[{rank % 8}] -> {(rank + 8) % 64}[{rank % 8}] [send] via NET/Libfabric/{rank % 32}/GDRDMA")
    text = "\n".join(lines)
    start = time.perf_counter()
    run = parse_text(text)
    elapsed = time.perf_counter() - start
    print(f"lines: {len(lines)}  bytes: {len(text)}  rows: {len(run.rows)}  transport: {run.transport.verdict}")
    print(f"parse: {elapsed:.3f} s  ({len(lines) / elapsed:,.0f} lines/s, {len(text) / elapsed / 1e6:.1f} MB/s)")


if __name__ == "__main__":
    main()
