"""Benchmark: export a multi-layer image of a few GB to an enroot .sqsh, several ways.

Run by hand (never in CI): ``python benchmarks/export_bench.py [--gb 2.5] [--compressions lzo-noD,zstd:3,lz4]``.
Prints one row per method and compression: seconds (total, unpack, squash) and file size.

Methods:
  native        ``builder export`` (docker save stream -> layers applied -> mksquashfs)
  native-container ``builder export --source container`` (the engine's docker export -> mksquashfs)
  naive         what people do today: ``docker export | tar -x`` then the same mksquashfs
  naive-tar2sqfs ``docker export | tar2sqfs`` (squashfs-tools-ng; nothing unpacked on disk)
  enroot        ``enroot import dockerd://`` with the same ENROOT_SQUASH_OPTIONS (only where installed)

The image is built locally from this machine's own files (shared libraries, Python packages,
a JDK, LLVM: content that compresses like a CUDA/PyTorch image) plus one incompressible
blob standing in for fat binaries, in several layers, with a layer that deletes and rewrites
part of a lower one so whiteouts are exercised. It is cached under a tag keyed by its recipe.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
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

# Candidate layer sources, largest first; taken until the size target is met.
SOURCES = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/jvm",
    str(Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"),
    "/usr/lib/llvm-14",
    "/usr/lib/gcc",
    "/usr/share",
    "/usr/lib/google-cloud-sdk",
]
COMPRESSIONS = {
    "lzo-noD": ("-comp", "lzo", "-noD"),  # enroot's default
    "zstd:1": squash.compression_options("zstd:1"),
    "zstd:3": squash.compression_options("zstd:3"),
    "lz4": squash.compression_options("lz4"),
    "gzip": squash.compression_options("gzip"),
    "xz": squash.compression_options("xz"),
}
TAR2SQFS = {"lzo-noD": None, "zstd:1": ["-c", "zstd", "-X", "level=1"], "zstd:3": ["-c", "zstd", "-X", "level=3"],
            "lz4": ["-c", "lz4"], "gzip": ["-c", "gzip"], "xz": ["-c", "xz"]}


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
        if size >= target_gb * 1e9:
            break
        if os.path.isdir(src):
            chosen.append(src)
            size += du(src)
    blob_mb = 256
    recipe = repr((chosen, blob_mb, sup.base_image(), 2))
    ref = f"builder-bench/export:{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    if sup.image_exists(ref):
        return ref
    print(f"building {ref}: {len(chosen)} layers from {', '.join(chosen)} ({size / 1e9:.2f} GB) + {blob_mb} MB blob",
          flush=True)
    ctx = work / "context"
    ctx.mkdir()
    lines = [f"FROM {sup.base_image()}"]
    for i, src in enumerate(chosen):
        # Hard links make the context without copying (same filesystem); fall back to a copy.
        if subprocess.run(["cp", "-al", src, str(ctx / f"l{i}")], capture_output=True).returncode:
            shutil.copytree(src, ctx / f"l{i}", symlinks=True)
        lines.append(f"COPY l{i} /opt/l{i}")
    with open(ctx / "blob", "wb") as f:
        f.write(os.urandom(blob_mb << 20))
    lines.append("COPY blob /opt/blob")
    # Whiteouts and a rewritten folder on top, as a pip upgrade in a later layer would do.
    lines.append("RUN rm -rf /opt/l0/* /opt/blob && echo rewritten > /opt/l0/NEW")
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    sup.docker("build", "--network", "host", "-q", "-t", ref, str(ctx), env={**os.environ, "DOCKER_BUILDKIT": "1"})
    print(f"  built in {time.monotonic() - started:.0f} s", flush=True)
    shutil.rmtree(ctx)
    return ref


def run_native(ref: str, options, out: Path, work: Path, processors: int, source: str = "layers") -> dict:
    result = export_image(ExportRequest(ref=ref, dest=out, squash_options=tuple(options), processors=processors,
                                        force=True, work_dir=work, source=source))
    d = result.details
    return {"total": result.seconds, "unpack": d["unpack_seconds"], "squash": d["squash_seconds"], "size": result.size}


def naive_unpack(ref: str, rootfs: Path) -> float:
    started = time.monotonic()
    cid = sup.docker("create", ref, "/bin/true").decode().strip()
    try:
        rootfs.mkdir()
        subprocess.run(f"{sup.DOCKER} export {cid} | tar -C {rootfs} --warning=no-timestamp --anchored "
                       f"--exclude='dev/*' --exclude=.dockerenv -px", shell=True, check=True)
    finally:
        sup.docker("rm", "-f", cid)
    return time.monotonic() - started


def run_mksquashfs(rootfs: Path, options, out: Path, processors: int) -> tuple[float, int]:
    started = time.monotonic()
    subprocess.run(["mksquashfs", str(rootfs), str(out), "-noappend", "-no-progress", "-all-root",
                    "-processors", str(processors), *options], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started, out.stat().st_size


def run_tar2sqfs(ref: str, args, out: Path, processors: int) -> tuple[float, int]:
    started = time.monotonic()
    cid = sup.docker("create", ref, "/bin/true").decode().strip()
    try:
        subprocess.run(f"{sup.DOCKER} export {cid} | tar2sqfs -q -f -s -j {processors} {' '.join(args)} {out}",
                       shell=True, check=True)
    finally:
        sup.docker("rm", "-f", cid)
    return time.monotonic() - started, out.stat().st_size


def run_enroot(ref: str, options, out: Path, processors: int) -> tuple[float, int]:
    out.unlink(missing_ok=True)
    env = {**os.environ, "ENROOT_SQUASH_OPTIONS": " ".join(options), "ENROOT_MAX_PROCESSORS": str(processors)}
    started = time.monotonic()
    subprocess.run(["enroot", "import", "-o", str(out), f"dockerd://{ref}"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started, out.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=2.5, help="approximate image size (default 2.5)")
    parser.add_argument("--compressions", default="lzo-noD,zstd:3,lz4",
                        help=f"comma list from {','.join(COMPRESSIONS)}")
    parser.add_argument("--processors", type=int, default=squash.default_processors())
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--skip", default="", help="comma list of methods to skip (native,native-container,naive,naive-tar2sqfs,enroot)")
    args = parser.parse_args()
    sup.need_export_tools()
    skip = set(filter(None, args.skip.split(",")))
    names = [c for c in args.compressions.split(",") if c]
    for name in names:
        if name not in COMPRESSIONS:
            parser.error(f"unknown compression {name}")

    work = Path(tempfile.mkdtemp(prefix="export-bench-", dir=args.work_dir))
    rows = []
    try:
        ref = bench_image(args.gb, work)
        size = int(sup.docker("image", "inspect", "-f", "{{.Size}}", ref).decode())
        layers = sup.docker("image", "inspect", "-f", "{{len .RootFS.Layers}}", ref).decode().strip()
        print(f"image {ref}: {size / 1e9:.2f} GB in {layers} layers; {args.processors} processors; "
              f"mksquashfs {subprocess.run(['mksquashfs', '-version'], capture_output=True, text=True).stdout.split()[2]}",
              flush=True)
        out = work / "out.sqsh"
        for name in names:
            options = COMPRESSIONS[name]
            if "native" not in skip:
                r = run_native(ref, options, out, work, args.processors)
                rows.append(("native", name, r["total"], r["unpack"], r["squash"], r["size"]))
                print_row(rows[-1])
            if "native-container" not in skip:
                r = run_native(ref, options, out, work, args.processors, source="container")
                rows.append(("native-container", name, r["total"], r["unpack"], r["squash"], r["size"]))
                print_row(rows[-1])
            if "naive" not in skip:
                rootfs = work / "naive-rootfs"
                unpack = naive_unpack(ref, rootfs)
                squash_s, out_size = run_mksquashfs(rootfs, options, out, args.processors)
                shutil.rmtree(rootfs)
                rows.append(("naive", name, unpack + squash_s, unpack, squash_s, out_size))
                print_row(rows[-1])
            if "naive-tar2sqfs" not in skip and shutil.which("tar2sqfs") and TAR2SQFS[name] is not None:
                seconds, out_size = run_tar2sqfs(ref, TAR2SQFS[name], out, args.processors)
                rows.append(("naive-tar2sqfs", name, seconds, None, None, out_size))
                print_row(rows[-1])
            if "enroot" not in skip and shutil.which("enroot"):
                seconds, out_size = run_enroot(ref, options, out, args.processors)
                rows.append(("enroot dockerd://", name, seconds, None, None, out_size))
                print_row(rows[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not shutil.which("enroot"):
        print("(enroot is not installed here: its row is missing)")
    print("\nsummary")
    for row in rows:
        print_row(row)


def print_row(row) -> None:
    method, name, total, unpack, squash_s, size = row
    split = f"unpack {unpack:6.1f} s  squash {squash_s:6.1f} s" if unpack is not None else " " * 33
    print(f"  {method:16s} {name:8s} total {total:6.1f} s  {split}  {size / 1e9:6.2f} GB", flush=True)


if __name__ == "__main__":
    main()
