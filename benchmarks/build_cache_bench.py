"""Benchmark: layer-cache reuse. A cold build of a stand-in image vs the rebuild after bumping
one late component in the matrix; prints both times and their ratio.

Run by hand (never in CI), as root with a Docker engine: ``python benchmarks/build_cache_bench.py
[--image nvidia|dlc]``. It uses the integration-test harness: stand-in bases (debootstrap,
cached in the engine), the fixture server with the stand-in EFA installer, the real templates.

  dlc     cold: ``builder build itest-dlc --no-cache``; bump: the pip pin termcolor 2.4.0 -> 2.3.0
          (stanza pip-requirements, late in the flavor). Both take ~8 s here: with two small
          steps, the fixed cost (vfs copies of a 500 MB base) dominates; the floor, not the gain.
  nvidia  (default) cold: ``builder build itest-nvidia --no-cache``; bump: EFA installer 1.47.0 -> 1.43.2
          (stanza efa, after build-tools: the apt layer must come from the cache).

``--no-cache`` drops the layer cache, not BuildKit's cache mounts (apt's package cache and
lists): the "cold" figure is a warm-mount build, below a first build on a fresh machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import harness  # noqa: E402

BUMPS = {
    "dlc": ("itest-dlc", 'pip: ["termcolor==2.4.0"]', 'pip: ["termcolor==2.3.0"]'),
    "nvidia": ("itest-nvidia", 'efa: "1.47.0"\n    stanzas:\n      openssh: true\n\n  # The same',
               'efa: "1.43.2"\n    stanzas:\n      openssh: true\n\n  # The same'),
}


def timed_build(project: harness.Project, name: str, *extra: str) -> tuple[float, dict]:
    report = project.root / f"report-{time.monotonic_ns()}.json"
    start = time.monotonic()
    proc = project.cli("build", name, "--network", "host", "--report", str(report), *extra, timeout=3600)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"build of {name} failed:\n{proc.stderr[-3000:]}")
    return seconds, json.loads(report.read_text())["images"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", choices=sorted(BUMPS), default="nvidia")
    args = parser.parse_args()
    name, before, after = BUMPS[args.image]
    with tempfile.TemporaryDirectory(prefix="builder-cache-bench-") as tmp:
        files = Path(tmp) / "files"
        files.mkdir()
        with harness.FixtureServer(files) as server:
            project = harness.prepare(Path(tmp) / "project", server, files)
            text = project.matrix.read_text()
            if args.image == "nvidia":  # give 1.43.2 its real checksum (the test matrix pins a wrong one on purpose)
                _, digest = harness.efa_installer("1.43.2", files)
                text = text.replace('"1.43.2": "' + "0" * 64 + '"', f'"1.43.2": "{digest}"')
            cold, cold_report = timed_build(project, name, "--no-cache")
            if before not in text:
                sys.exit(f"cannot find {before!r} in the test matrix to bump")
            project.matrix.write_text(text.replace(before, after, 1))
            rendered = project.cli("render", name)
            if rendered.returncode != 0:
                sys.exit(rendered.stderr)
            warm, warm_report = timed_build(project, name)
    print(f"image            {name} ({args.image}), {cold_report['size'] / 1e6:.0f} MB")
    print(f"cold build       {cold:8.1f} s   (--no-cache; BuildKit cache mounts such as the apt cache still "
          "hold their files, so a first build on a fresh machine takes longer)")
    print(f"rebuild (bump)   {warm:8.1f} s   ({before.splitlines()[0].strip()} -> {after.splitlines()[0].strip()})")
    print(f"ratio            {cold / warm:8.1f} x faster with the layer cache")
    print("per-stanza layer sizes (MB): "
          + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in warm_report["stanza_sizes"].items() if v))


if __name__ == "__main__":
    main()
