"""Benchmark: ``builder export`` against ``enroot import dockerd://`` and the naive pipeline, side by side.

Run by hand (never in CI): ``python benchmarks/export_bench.py [--rounds 3] [--gb 1.3]``.

Every round runs every contender once, in turn, on the same image (paired runs on a shared,
noisy machine); the summary gives each one's median seconds, its size, and its median ratio
to enroot's and to the naive pipeline's time in the same rounds. The machine state (CPUs,
load average, other containers) is printed before and after.

Contenders:
  enroot            ``enroot import dockerd://`` with enroot's own settings (its configuration;
                    by default ``-comp lzo -noD``), where enroot is installed
  naive zstd:3      ``docker export | tar -x`` then ``mksquashfs -all-root -comp zstd -Xcompression-level 3``
  builder default   ``builder export`` as installed: zstd level 1, streamed into tar2sqfs
  builder zstd      ``builder export --compression zstd`` (level 3, as the naive pipeline), streamed
  with --all also:
  naive lzo-noD     ``docker export | tar -x`` then ``mksquashfs -all-root -comp lzo -noD``
  builder lzo       ``builder export --compression lzo`` (enroot's ``-comp lzo -noD``, unpacked)

The image (at least --gb GB of files, about 7 layers) is built from this machine's own files (shared libraries,
LLVM, GCC, a Python installation: content that compresses like a CUDA/PyTorch image), a block
of random bytes standing in for fat binaries, and a top layer that deletes a lower folder
(whiteouts). It is cached under a tag keyed by its recipe.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import export_support as sup  # noqa: E402  (busybox base image, docker helper)
from builder.export import ExportRequest, export_image, squash  # noqa: E402

# One layer each, in this order (those missing here are left out); the third is deleted again
# by the top layer.
SOURCES = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/llvm-14", "/usr/lib/gcc", str(Path(sys.base_prefix) / "lib"),
           "/usr/lib/jvm", "/usr/share"]
BLOB_MB = 64


def du(path: str) -> int:
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def bench_image(target_gb: float, work: Path) -> str:
    chosen, size = [], 0
    for src in SOURCES:
        if (size < target_gb * 1e9 or len(chosen) < 3) and os.path.isdir(src):
            chosen.append(src)
            size += du(src) if len(chosen) != 3 else 0  # the third is deleted on top
    recipe = repr((chosen, BLOB_MB, sup.base_image(), 4))
    ref = f"builder-bench/export:{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    if sup.image_exists(ref):
        return ref
    print(f"building {ref} from {', '.join(chosen)} ({size / 1e9:.2f} GB) + {BLOB_MB} MB random", flush=True)
    ctx = work / "context"
    ctx.mkdir()
    lines = [f"FROM {sup.base_image()}"]
    for i, src in enumerate(chosen):
        if subprocess.run(["cp", "-al", src, str(ctx / f"l{i}")], capture_output=True).returncode:
            shutil.copytree(src, ctx / f"l{i}", symlinks=True)
        lines.append(f"COPY l{i} /opt/l{i}")
    with open(ctx / "blob", "wb") as f:
        f.write(os.urandom(BLOB_MB << 20))
    lines.append("COPY blob /opt/blob")
    # Whiteouts on top, as a later "pip install --upgrade" layer makes them.
    lines.append(f"RUN rm -rf /opt/l{min(2, len(chosen) - 1)} && echo rewritten > /opt/NEW")
    lines.append('CMD ["/bin/sh"]')  # enroot's docker create needs a command (enroot issue 120)
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    sup.docker("build", "--network", "host", "-q", "-t", ref, str(ctx), env={**os.environ, "DOCKER_BUILDKIT": "1"})
    print(f"  built in {time.monotonic() - started:.0f} s", flush=True)
    shutil.rmtree(ctx)
    return ref


def timed(fn) -> tuple[float, int]:
    started = time.monotonic()
    out = fn()
    return time.monotonic() - started, out.stat().st_size


def naive(ref: str, options: tuple[str, ...], out: Path, work: Path, processors: int) -> Path:
    rootfs = work / "naive-rootfs"
    cid = sup.docker("create", ref, "/bin/true").decode().strip()
    try:
        rootfs.mkdir()
        subprocess.run(f"{sup.DOCKER} export {cid} | tar -C {rootfs} --warning=no-timestamp --anchored "
                       f"--exclude='dev/*' --exclude=.dockerenv -px", shell=True, check=True)
        subprocess.run(["mksquashfs", str(rootfs), str(out), "-noappend", "-no-progress", "-all-root",
                        "-processors", str(processors), *options], check=True, stdout=subprocess.DEVNULL)
    finally:
        sup.docker("rm", "-f", cid)
        shutil.rmtree(rootfs, ignore_errors=True)
    return out


def enroot(ref: str, out: Path, work: Path, processors: int) -> Path:
    env = {k: v for k, v in os.environ.items() if k != "ENROOT_SQUASH_OPTIONS"}
    env.update({f"ENROOT_{k}_PATH": str(work / f"enroot-{k.lower()}") for k in ("RUNTIME", "CACHE", "DATA", "TEMP")})
    env["ENROOT_MAX_PROCESSORS"] = str(processors)
    for k in ("RUNTIME", "CACHE", "DATA", "TEMP"):
        os.makedirs(env[f"ENROOT_{k}_PATH"], exist_ok=True)
    subprocess.run(["enroot", "import", "-o", str(out), f"dockerd://{ref}"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def builder(ref: str, out: Path, work: Path, processors: int, compression: str | None) -> Path:
    choice = squash.choose(compression, None, processors, env={})  # builder's own default, not this shell's
    export_image(ExportRequest(ref=ref, dest=out, squash_options=choice.options, processors=choice.processors,
                               force=True, work_dir=work))
    return out


def machine_state() -> str:
    load = Path("/proc/loadavg").read_text().split()[:3]
    running = sup.docker("ps", "-q").decode().split()
    return f"{len(os.sched_getaffinity(0))} CPUs, load average {' '.join(load)}, {len(running)} running containers"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.2, help="at least this many GB of files (default 1.2)")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds; medians are reported (default 3)")
    parser.add_argument("--processors", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--all", action="store_true", help="also naive lzo-noD and builder lzo")
    args = parser.parse_args()
    sup.need_export_tools()
    work = Path(tempfile.mkdtemp(prefix="export-bench-", dir=args.work_dir))
    p = args.processors
    contenders = {
        "enroot": lambda out: enroot(ref, out, work, p),
        "naive zstd:3": lambda out: naive(ref, squash.compression_options("zstd:3"), out, work, p),
        "builder default": lambda out: builder(ref, out, work, p, None),
        "builder zstd": lambda out: builder(ref, out, work, p, "zstd"),
    }
    if args.all:
        contenders["naive lzo-noD"] = lambda out: naive(ref, ("-comp", "lzo", "-noD"), out, work, p)
        contenders["builder lzo"] = lambda out: builder(ref, out, work, p, "lzo")
    if not shutil.which("enroot"):
        del contenders["enroot"]
        print("enroot is not installed here: its row is missing")
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in contenders}
    try:
        ref = bench_image(args.gb, work)
        size = int(sup.docker("image", "inspect", "-f", "{{.Size}}", ref).decode())
        layers = sup.docker("image", "inspect", "-f", "{{len .RootFS.Layers}}", ref).decode().strip()
        print(f"image {ref}: {size / 1e9:.2f} GB in {layers} layers; {p} processors; docker "
              f"{sup.docker('version', '-f', '{{.Server.Version}}').decode().strip()}; "
              f"default options {' '.join(squash.choose(None, None, p).options)}", flush=True)
        print(f"machine before: {machine_state()}", flush=True)
        for round_ in range(1, args.rounds + 1):
            for name, fn in contenders.items():
                out = work / "out.sqsh"
                out.unlink(missing_ok=True)
                for stale in (work / "out.sqsh.json",):
                    stale.unlink(missing_ok=True)
                seconds, out_size = timed(lambda: fn(out))
                results[name].append((seconds, out_size))
                print(f"  round {round_}  {name:16s} {seconds:6.1f} s  {out_size / 1e6:7.0f} MB", flush=True)
        print(f"machine after:  {machine_state()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary(results, args.rounds)


def summary(results: dict[str, list[tuple[float, int]]], rounds: int) -> None:
    print(f"\nmedians of {rounds} paired rounds")
    print(f"  {'contender':16s} {'seconds':>8s} {'MB':>7s} {'x enroot':>9s} {'x naive zstd:3':>15s}")
    for name, runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        mb = statistics.median(r[1] for r in runs) / 1e6
        ratios = []
        for base in ("enroot", "naive zstd:3"):
            if base in results:
                ratios.append(f"{statistics.median(r[0] / b[0] for r, b in zip(runs, results[base])):.2f}")
            else:
                ratios.append("-")
        print(f"  {name:16s} {seconds:8.1f} {mb:7.0f} {ratios[0]:>9s} {ratios[1]:>15s}")


if __name__ == "__main__":
    main()
