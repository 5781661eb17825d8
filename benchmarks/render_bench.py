"""Render time per image, for the whole bundled matrix, and a process's start-to-finish time
next to hpccm's (prints figures; asserts nothing).

    python benchmarks/render_bench.py [--repeat 20] [--matrix matrix.yaml] [--runs 15]
        [--image nvidia-ngc24.09-efa1.35] [--hpccm-venv DIR | --no-hpccm]

The process comparison runs `builder render NAME --stdout` (a new interpreter each time) and
`hpccm --recipe benchmarks/hpccm_recipe.py` (a recipe of about the same size and the same
shape as an nvidia image) in turns, so all see the same machine load: builder once as a user
runs it again on an unchanged checkout (the stored render, builder.render_cache) and once
with BUILDER_NO_CACHE=1 (the matrix loaded and validated for that image, the stanzas rendered;
compiled templates are still reused only with the cache on). hpccm is not a project
dependency: it is installed once, pinned, into its own virtual environment (by default
~/.cache/builder/bench-hpccm-<version>; needs PyPI the first time).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from builder.matrix import load_matrix
from builder.render import Renderer

REPO = Path(__file__).resolve().parent.parent
HPCCM_VERSION = "26.5.0"  # PyPI hpccm, NVIDIA/hpc-container-maker
HPCCM_RECIPE = REPO / "benchmarks" / "hpccm_recipe.py"


def hpccm_command(venv: Path) -> list[str]:
    """hpccm in its own virtual environment, installed there when missing."""
    exe = venv / "bin" / "hpccm"
    if not exe.exists():
        print(f"installing hpccm {HPCCM_VERSION} into {venv} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"hpccm=={HPCCM_VERSION}"], check=True)
    return [str(exe), "--recipe", str(HPCCM_RECIPE)]


# As an installed package runs: with .pyc files (pip writes them for hpccm at install time; an
# editable install gets them on first import, unless PYTHONDONTWRITEBYTECODE forbids it).
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed_run(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of the child, bytes it printed) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, check=True, cwd=REPO, env={**CHILD_ENV, **env}).stdout
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, len(out)


def compare_processes(image: str, runs: int, hpccm: list[str] | None) -> None:
    render = [sys.executable, "-m", "builder", "render", image, "--stdout"]
    commands = {  # name -> (argv, extra environment)
        f"builder render {image} --stdout": (render, {}),
        "  the same, BUILDER_NO_CACHE=1 (load, validate, render)": (render, {"BUILDER_NO_CACHE": "1"}),
    }
    if hpccm:
        commands["hpccm --recipe benchmarks/hpccm_recipe.py"] = (hpccm, {})
    figures: dict[str, list[tuple[float, float, int]]] = {name: [] for name in commands}
    for argv, env in commands.values():  # warm: .pyc files, the caches, the page cache
        timed_run(argv, env)
    for _ in range(runs):  # in turns, so that all see the same load
        for name, (argv, env) in commands.items():
            figures[name].append(timed_run(argv, env))
    print(f"\nwhole process, {runs} runs each in turns, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}:")
    print(f"{'command':<58}{'wall median':>12}{'wall min':>10}{'cpu median':>12}{'bytes':>7}")
    for name, rows in figures.items():
        walls, cpus = [r[0] for r in rows], [r[1] for r in rows]
        print(f"{name:<58}{statistics.median(walls) * 1000:>10.0f}ms{min(walls) * 1000:>8.0f}ms"
              f"{statistics.median(cpus) * 1000:>10.0f}ms{rows[-1][2]:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--matrix", type=Path, default=REPO / "matrix.yaml")
    parser.add_argument("--image", default="nvidia-ngc24.09-efa1.35", help="image for the process comparison")
    parser.add_argument("--runs", type=int, default=15, help="process runs of each command")
    parser.add_argument("--hpccm-venv", type=Path, default=Path.home() / ".cache" / "builder" / f"bench-hpccm-{HPCCM_VERSION}")
    parser.add_argument("--no-hpccm", action="store_true", help="time builder alone")
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

    compare_processes(args.image, args.runs, None if args.no_hpccm else hpccm_command(args.hpccm_venv))


if __name__ == "__main__":
    main()
