"""Local stand-ins of the services `builder outdated` asks, speaking their real protocols:

- ``Upstreams``: one HTTP server answering as GitHub's REST API (tags, paginated with ``link``
  headers, the ``x-ratelimit-*`` headers and the 403 GitHub sends when the limit is used up), as
  PyPI's JSON API (answers recorded from pypi.org) and as the EFA installer download site
  (HEAD/GET of versioned and ``latest`` tarballs, their ``.sig`` files and the key file). The
  tarballs are synthetic and signed with a throw-away GnuPG key made here (``ThrowawayKey``).
- ``fill_registry``: images pushed over the distribution API into Debian's docker-registry
  (lock_support.AuthRegistry, htpasswd logins), tags of several families.
Fixture files and their sources: tests/fixtures/outdated/README.md.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import tarfile
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

from push_support import free_port, wait_for_port

FIXTURES = Path(__file__).parent / "fixtures" / "outdated"
GITHUB_LIMIT = 60  # unauthenticated requests an hour (docs.github.com, rate limits for the REST API)


def published_efa() -> list[str]:
    text = (FIXTURES / "efa" / "published.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


class ThrowawayKey:
    """A throw-away OpenPGP signing key in its own GNUPGHOME (never the user's keyring)."""

    def __init__(self, folder: Path, name: str = "builder test EFA signer <efa-test@example.invalid>"):
        self.home = folder
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        self._gpg("--quick-generate-key", "--passphrase", "", "--pinentry-mode", "loopback", name, "ed25519", "sign", "never")
        listing = self._gpg("--with-colons", "--fingerprint").stdout
        self.fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        self.public = self._gpg("--armor", "--export", self.fingerprint).stdout.encode()

    def sign(self, data: bytes) -> bytes:
        with tempfile.TemporaryDirectory() as work:
            path = Path(work) / "data"
            path.write_bytes(data)
            self._gpg("--detach-sign", "--local-user", self.fingerprint, "--output", f"{path}.sig", str(path))
            return Path(f"{path}.sig").read_bytes()

    def _gpg(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["gpg", "--batch", "--yes", "--homedir", str(self.home), *args],
                              capture_output=True, text=True, check=True, timeout=120)


def synthetic_tarball(version: str) -> bytes:
    """A tiny stand-in of aws-efa-installer-<version>.tar.gz (SYNTHETIC: one script saying so)."""
    script = f"#!/bin/sh\n# SYNTHETIC stand-in of the AWS EFA installer {version} (builder tests)\nexit 0\n".encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("aws-efa-installer/efa_installer.sh")
        info.size, info.mode, info.mtime = len(script), 0o755, 1700000000
        tar.addfile(info, io.BytesIO(script))
    return gzip.compress(raw.getvalue(), mtime=0)  # the same bytes every time


class Upstreams:
    """GitHub, PyPI and the EFA download site on one loopback port."""

    def __init__(self, key: ThrowawayKey):
        self.key = key
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.github_remaining = GITHUB_LIMIT
        self.efa_versions = published_efa()
        self.forged: set[str] = set()  # versions whose tarball is swapped after signing
        self.foreign_key: bytes | None = None  # served instead of the signer's key
        self.requests: list[tuple[str, str]] = []
        self._signatures: dict[str, bytes] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server._answer(self, body=True)

            def do_HEAD(self):
                server._answer(self, body=False)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def github_api(self) -> str:
        return f"{self.base}/github"

    @property
    def pypi(self) -> str:
        return f"{self.base}/pypi"

    @property
    def efa_template(self) -> str:
        return f"{self.base}/efa/aws-efa-installer-{{version}}.tar.gz"

    def start(self) -> "Upstreams":
        self._thread.start()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- routing ------------------------------------------------------------------------------------

    def _answer(self, handler, body: bool) -> None:
        parts = urlsplit(handler.path)
        self.requests.append((handler.command, parts.path))
        if parts.path.startswith("/github/"):
            return self._github(handler, parts, body)
        if m := re.match(r"^/pypi/pypi/([a-z0-9-]+)/json\Z", parts.path):
            path = FIXTURES / "pypi" / f"{m.group(1)}.json"
            if path.is_file():
                return _send(handler, 200, path.read_bytes(), "application/json", body)
            return _send(handler, 404, b'{"message": "Not Found"}', "application/json", body)
        if parts.path.startswith("/efa/"):
            return self._efa(handler, parts.path[len("/efa/"):], body)
        if m := re.match(r"^/v2/(.+)/tags/list\Z", parts.path):
            return self._tags(handler, m.group(1), parse_qs(parts.query), body)
        return _send(handler, 404, b"not found", "text/plain", body)

    def _github(self, handler, parts, body: bool) -> None:
        m = re.match(r"^/github/repos/([^/]+)/([^/]+)/tags\Z", parts.path)
        path = FIXTURES / "github" / f"{m.group(1)}-{m.group(2)}.tags.json" if m else None
        reset = str(int(time.time()) + 3600)
        if self.github_remaining <= 0:
            headers = {"x-ratelimit-limit": str(GITHUB_LIMIT), "x-ratelimit-remaining": "0",
                       "x-ratelimit-reset": reset, "x-ratelimit-used": str(GITHUB_LIMIT), "x-ratelimit-resource": "core"}
            return _send(handler, 403, (FIXTURES / "github" / "rate-limited.json").read_bytes(),
                         "application/json; charset=utf-8", body, headers)
        self.github_remaining -= 1
        limits = {"x-ratelimit-limit": str(GITHUB_LIMIT), "x-ratelimit-remaining": str(self.github_remaining),
                  "x-ratelimit-reset": reset, "x-ratelimit-used": str(GITHUB_LIMIT - self.github_remaining),
                  "x-ratelimit-resource": "core"}
        if path is None or not path.is_file():
            return _send(handler, 404, b'{"message": "Not Found", "documentation_url": '
                         b'"https://docs.github.com/rest/repos/repos#list-repository-tags", "status": "404"}',
                         "application/json; charset=utf-8", body, limits)
        items = json.loads(path.read_text())
        query = parse_qs(parts.query)
        per_page = min(int(query.get("per_page", ["30"])[0]), 100)
        page = int(query.get("page", ["1"])[0])
        last = max(1, -(-len(items) // per_page))
        chunk = items[(page - 1) * per_page: page * per_page]
        url = f"{self.base}{parts.path}?per_page={per_page}&page="
        links = []
        if page < last:
            links += [f'<{url}{page + 1}>; rel="next"', f'<{url}{last}>; rel="last"']
        if page > 1:
            links += [f'<{url}{page - 1}>; rel="prev"', f'<{url}1>; rel="first"']
        headers = dict(limits, **({"link": ", ".join(links)} if links else {}))
        return _send(handler, 200, json.dumps(chunk).encode(), "application/json; charset=utf-8", body, headers)

    def _tags(self, handler, repo: str, query: dict, body: bool) -> None:
        """Tag listing as the OCI distribution spec writes it ("Listing Tags"): lexical order,
        at most ``n`` after ``last``, and ``Link: <...?n=<n>&last=<last tag>>; rel="next"`` while
        more remain. docker-registry 2.8 (Debian's) ignores ``n`` for tags, hence this stand-in."""
        tags = sorted(REGISTRY_TAGS.get(repo, {}))
        if not tags:
            return _send(handler, 404, b'{"errors": [{"code": "NAME_UNKNOWN"}]}', "application/json", body)
        last = query.get("last", [""])[0]
        rest = [t for t in tags if t > last]
        n = int(query.get("n", [str(len(rest))])[0])
        page = rest[:n]
        headers = {}
        if len(rest) > n:
            headers["Link"] = f'</v2/{repo}/tags/list?n={n}&last={page[-1]}>; rel="next"'
        return _send(handler, 200, json.dumps({"name": repo, "tags": page}).encode(), "application/json", body, headers)

    def _efa(self, handler, name: str, body: bool) -> None:
        if name == "aws-efa-installer.key":
            return _send(handler, 200, self.foreign_key or self.key.public, "application/pgp-keys", body)
        m = re.match(r"^aws-efa-installer-(latest|\d+\.\d+\.\d+)\.tar\.gz(\.sig)?\Z", name)
        if not m:
            return _send(handler, 404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml", body)
        version = self.efa_versions[-1] if m.group(1) == "latest" else m.group(1)
        if version not in self.efa_versions:
            # S3 without list rights answers 403 AccessDenied for a key that does not exist.
            return _send(handler, 403, b"<Error><Code>AccessDenied</Code></Error>", "application/xml", body)
        tarball = synthetic_tarball(version)
        if m.group(2):
            if version not in self._signatures:
                self._signatures[version] = self.key.sign(tarball)
            return _send(handler, 200, self._signatures[version], "application/octet-stream", body)
        if version in self.forged:
            tarball = tarball + b"\0forged"
        etag = {"ETag": f'"{hashlib.md5(tarball).hexdigest()}"'}
        return _send(handler, 200, tarball, "application/x-tar", body, etag)


def _send(handler, status: int, data: bytes, content_type: str, body: bool, headers: dict | None = None) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    if body:
        handler.wfile.write(data)


# --- the local OCI registry ---------------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _empty_layer() -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w"):
        pass
    tar = raw.getvalue()
    return gzip.compress(tar, mtime=0), "sha256:" + hashlib.sha256(tar).hexdigest()


def _blob(session: requests.Session, base: str, repo: str, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = session.post(f"{base}/v2/{repo}/blobs/uploads/")
    assert start.status_code == 202, start.text
    location = urljoin(base, start.headers["Location"])
    done = session.put(location + ("&" if "?" in location else "?") + f"digest={digest}", data=data,
                       headers={"Content-Type": "application/octet-stream"})
    assert done.status_code == 201, done.text
    return {"digest": digest, "size": len(data)}


def push_image(registry, repo: str, tag: str, env: list[str], index: bool = False) -> None:
    """A tiny linux/amd64 image (one empty layer, a config with ``env``) tagged ``tag``;
    with ``index``, the tag names an OCI image index that lists it, as NGC's tags do."""
    session = requests.Session()
    session.auth = (registry.username, registry.password)
    base = f"http://{registry.host}"
    layer, diff_id = _empty_layer()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": env},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **_blob(session, base, repo, config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_blob(session, base, repo, layer)}],
    }).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    reference = digest if index else tag
    answer = session.put(f"{base}/v2/{repo}/manifests/{reference}", data=manifest, headers={"Content-Type": OCI_MANIFEST})
    assert answer.status_code == 201, answer.text
    if index:
        document = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest),
             "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
        answer = session.put(f"{base}/v2/{repo}/manifests/{tag}", data=document, headers={"Content-Type": OCI_INDEX})
        assert answer.status_code == 201, answer.text


# Tags by repository, each with the environment its stand-in image carries. Tag names follow
# the real families (NGC release names; nvidia/cuda's scheme; AWS DLC available_images.md and
# aws/deep-learning-containers docs/pytorch/changelog/index.md); the environment values are SYNTHETIC.
NGC_ENV = {
    "25.01-py3": ["NCCL_VERSION=2.25.1", "CUDA_VERSION=12.8.0.038", "PYTORCH_VERSION=2.6.0a0+ecf3bae40a"],
    "25.06-py3": ["NCCL_VERSION=2.27.3", "CUDA_VERSION=12.9.1.010", "PYTORCH_VERSION=2.8.0a0+5228986c39"],
    "25.06-py3-igpu": ["CUDA_VERSION=12.9.1.010"],
    "25.09-py3": ["NCCL_VERSION=2.27.7", "CUDA_VERSION=13.0.1.012", "PYTORCH_VERSION=2.9.0a0+50eac811a6"],
    "25.11-py3": ["NCCL_VERSION=2.28.7", "CUDA_VERSION=13.0.2.006", "PYTORCH_VERSION=2.10.0a0+b558c986e8"],
    "26.01-py3-igpu": ["CUDA_VERSION=13.1.0.036"],
}
REGISTRY_TAGS = {
    "nvidia/pytorch": NGC_ENV,
    "nvidia/cuda": {t: [f"CUDA_VERSION={t.split('-')[0]}"] for t in (
        "12.8.1-cudnn-devel-ubuntu22.04", "12.9.1-cudnn-devel-ubuntu22.04", "13.0.2-cudnn-devel-ubuntu22.04",
        "13.0.2-cudnn-devel-ubuntu24.04", "13.0.2-cudnn-runtime-ubuntu22.04")},
    "pytorch-training": {t: ["PYTHONDONTWRITEBYTECODE=1"] for t in (
        "2.8.0-gpu-py312-cu129-ubuntu22.04-ec2", "2.8.0-gpu-py312-cu129-ubuntu22.04-ec2-v1.10",
        "2.9.0-gpu-py312-cu130-ubuntu22.04-ec2", "2.10.0-gpu-py313-cu130-ubuntu22.04-ec2",
        "2.10.0-gpu-py313-cu130-ubuntu22.04-sagemaker")},
    "deep-learning-containers/pytorch": {t: ["PYTHONDONTWRITEBYTECODE=1"] for t in (
        "2.11-cu130-amzn2023", "2.11-cu130-amzn2023-sagemaker", "2.11-cpu-amzn2023",
        "2.12-cu130-amzn2023", "2.12-cu130-amzn2023-sagemaker", "2.12.1-cu130-amzn2023-sagemaker",
        "2.13-cu133-amzn2023", "2.13-cu133-amzn2023-sagemaker", "2.13-cpu-amzn2023-sagemaker")},
}


def fill_registry(registry) -> None:
    for repo, tags in REGISTRY_TAGS.items():
        for tag, env in tags.items():
            push_image(registry, repo, tag, env, index=repo == "nvidia/pytorch")


def project(folder: Path, registry_host: str) -> Path:
    """The commented test matrix, its bases on the local registry."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "matrix.yaml"
    path.write_text((FIXTURES / "matrix.yaml").read_text().replace("@REGISTRY@", registry_host))
    return path
