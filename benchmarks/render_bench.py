"""Render time per image and for the whole bundled matrix (prints figures; asserts nothing).

    python benchmarks/render_bench.py [--repeat 20] [--matrix matrix.yaml]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from builder.matrix import load_matrix
from builder.render import Renderer

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--matrix", type=Path, default=REPO / "matrix.yaml")
    args = parser.parse_args()

    start = time.perf_counter()
    matrix = load_matrix(args.matrix)
    load_ms = (time.perf_counter() - start) * 1000
    renderer = Renderer()
    for spec in matrix.images:  # warm the template cache once, as a long-lived process would
        renderer.render(spec)

    print(f"matrix: {args.matrix} ({len(matrix.images)} images), load+validate {load_ms:.1f} ms (cold)")
    print(f"{'image':<44}{'median ms':>10}{'min ms':>9}{'bytes':>8}")
    for spec in matrix.images:
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            out = renderer.render(spec)
            times.append((time.perf_counter() - t) * 1000)
        print(f"{spec.name:<44}{statistics.median(times):>10.2f}{min(times):>9.2f}{len(out.dockerfile):>8}")

    totals = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        matrix = load_matrix(args.matrix)
        for spec in matrix.images:
            renderer.render(spec)
        totals.append((time.perf_counter() - t) * 1000)
    print(f"whole matrix (load + validate + render all): median {statistics.median(totals):.1f} ms, "
          f"min {min(totals):.1f} ms over {args.repeat} runs")


if __name__ == "__main__":
    main()
