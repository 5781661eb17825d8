"""Benchmark: what `builder push` costs on top of a plain push, and what a re-run costs.

Example (this machine, 2 cores, vfs storage driver; 3 x 32 MB layers): plain docker push 26.2 s,
builder push cold 30.4 s, same image under a new tag 5.8 s, re-run of an immutable tag 1.0 s.

Run by hand (never in CI): ``python benchmarks/push_bench.py [--layers 4] [--layer-mb 64]``.
Uses the test stand-ins (moto server for the ECR API, Debian's docker-registry behind the
ECR-bookkeeping front of tests/push_support.py), all on this machine, so the figures measure the
engine, the tool and the checks, not a network (both pushes go through the same Python relay, so
compare rows with each other, not with ECR). Prints seconds per case:

  plain docker push      the SDK push of a fresh image, stream read, nothing verified
  builder push (cold)    a fresh image: repository, token, push, digest checks with registry and ECR
  builder push (new tag) the same image under another tag: every layer already in the registry
  builder push (re-run)  the same tag again on an immutable repository: checked, nothing pushed

The image is the busybox stand-in plus ``--layers`` layers of ``--layer-mb`` MB of random bytes
(incompressible, so the registry really stores them), built fresh each run so that the cold
pushes upload everything.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from builder.ecr import EcrApi  # noqa: E402
from builder.push import Pusher, PushRequest  # noqa: E402
from push_support import EcrFront, MotoEcr, Registry, aws_env, docker_client, fixture_image  # noqa: E402


def build_image(client, base: str, layers: int, layer_mb: int) -> str:
    nonce = uuid.uuid4().hex[:12]
    lines = [f"FROM {base}"] + [
        # exec form: the stand-in has busybox but no /bin/sh
        f'RUN ["/bin/busybox", "sh", "-c", "busybox dd if=/dev/urandom of=/layer{i} bs=1048576 count={layer_mb} '
        f'2>/dev/null && busybox echo {nonce} > /nonce{i}"]'
        for i in range(layers)
    ]
    tag = f"builder-bench/push:{nonce}"
    client.images.build(fileobj=io.BytesIO("\n".join(lines).encode()), tag=tag, network_mode="host", rm=True)
    return tag


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--layer-mb", type=int, default=64)
    args = parser.parse_args()

    client = docker_client()
    os.environ.update({k: v for k, v in aws_env("").items() if k.startswith("AWS_") and k != "AWS_ENDPOINT_URL_ECR"})
    moto = MotoEcr().start()
    with tempfile.TemporaryDirectory(prefix="push-bench-") as tmp:
        registry = Registry(Path(tmp) / "registry").start()
        front = EcrFront(registry, moto).start()
        base = fixture_image(client, "push-bench-base", "bench")
        made = []
        try:
            ecr = EcrApi.connect(region="us-east-1", endpoint_url=moto.endpoint)
            pusher = Pusher(ecr, client, registry=front.address, show_progress=False)
            plain_image, tool_image = (build_image(client, base, args.layers, args.layer_mb) for _ in range(2))
            made += [plain_image, tool_image]
            size_mb = client.images.get(tool_image).attrs["Size"] / 1e6

            plain_ref = f"{front.address}/bench/plain"
            client.images.get(plain_image).tag(plain_ref, "v1")
            made.append(f"{plain_ref}:v1")
            ecr.ensure_repository("bench/plain")
            auth = ecr.authorization().docker_auth_config()

            def plain_push():
                for line in client.api.push(plain_ref, "v1", stream=True, decode=True, auth_config=auth):
                    if "error" in line:
                        raise SystemExit(f"plain push failed: {line['error']}")

            rows = [("plain docker push", timed(plain_push)[0])]
            repo = f"bench/{uuid.uuid4().hex[:8]}"
            for label, tag in (("builder push (cold)", "v1"), ("builder push (new tag)", "v2"), ("builder push (re-run)", "v1")):
                seconds, result = timed(lambda: pusher.push(PushRequest(tool_image, ((repo, tag),))))
                rows.append((f"{label} [{result.tags[0].outcome}]", seconds))
                made.append(f"{front.address}/{repo}:{tag}")
            print(f"image: {args.layers} x {args.layer_mb} MB random layers + busybox, {size_mb:.0f} MB")
            for label, seconds in rows:
                print(f"{label:40s} {seconds:7.2f} s")
        finally:
            for ref in made:
                try:
                    client.images.remove(ref, noprune=False)
                except Exception:
                    pass
            front.stop()
            registry.stop()
            moto.stop()


if __name__ == "__main__":
    main()
