"""Real parts for the push tests: a moto ECR API server, a Docker registry with htpasswd auth, and
a small front end that plays ECR's registry side in between.

Why the front end: on real ECR, one service holds both the API records and the registry, so an
image pushed with ``docker push`` shows up in ``describe_images``, and a push onto an existing
immutable tag is refused by the registry. Moto has no registry, and Debian's ``docker-registry``
knows nothing about moto. ``EcrFront`` sits in front of the registry and does exactly that
registry-side bookkeeping, nothing else:

* before relaying a manifest PUT for a tag it asks moto whether the repository exists and, for an
  immutable repository, whether the tag is taken; if so it answers as ECR does (``TAG_INVALID``);
* after the registry accepted the manifest (201) it records it in moto with ``put_image``, giving
  the registry's own ``Docker-Content-Digest`` and the manifest bytes it stored.

Every other request (auth challenge, blob uploads, HEADs) is relayed untouched, so the
credentials are checked by the real registry against its htpasswd file, and the product code
talks to the registry and to moto exactly as it does to ECR. When the registry is down the front
end drops the client's connection, as a dead server would. Nothing here lives in ``builder/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import warnings
from collections.abc import Callable
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.prereq import in_ci, need  # noqa: F401 (used by the tests through this module)

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
MOTO_PASSWORD = f"{ACCOUNT}-auth-token"  # what moto's get_authorization_token decodes to (after 'AWS:')

MANIFEST_PATH_RE = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/?]+)$")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization", "proxy-authenticate"}


# --- skip locally, fail in CI ------------------------------------------------------------------


def docker_client():
    """A Docker SDK client that answers, or skip/fail."""
    try:
        import docker

        client = docker.from_env(timeout=300)
        client.ping()
        return client
    except Exception as exc:  # DockerException, connection errors
        need(False, f"no Docker engine answers ({type(exc).__name__}: {exc})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def aws_env(endpoint: str) -> dict[str, str]:
    """The environment a CLI run gets: fake credentials, a region, no profile or instance metadata."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ENDPOINT_URL_ECR=endpoint,
    )
    return env


# --- moto ----------------------------------------------------------------------------------------


class MotoEcr:
    """moto in server mode (a real HTTP endpoint, in a thread of the test process)."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def start(self) -> "MotoEcr":
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self._server.start()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        self._server.stop()

    def client(self):
        import boto3

        return boto3.client(
            "ecr",
            region_name=REGION,
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


# --- the registry --------------------------------------------------------------------------------


def bcrypt_hash(password: str) -> str:
    """htpasswd needs bcrypt; the crypt module (glibc/libxcrypt) makes it without extra packages."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))


class Registry:
    """Debian's docker-registry (distribution 2.8) with filesystem storage and htpasswd auth.
    stop() kills it (a crash, not a drain); start() brings it back on the same port and storage."""

    def __init__(self, workdir: Path, password: str | None = MOTO_PASSWORD, username: str = "AWS"):
        """password=None: no auth (the engine trusts loopback registries without a login)."""
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        auth = ""
        if password is not None:
            (workdir / "htpasswd").write_text(f"{username}:{bcrypt_hash(password)}\n")
            auth = f"auth:\n  htpasswd:\n    realm: builder-test\n    path: {workdir / 'htpasswd'}\n"
        (workdir / "config.yml").write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n" + auth
        )

    def start(self) -> "Registry":
        log = open(self.workdir / "registry.log", "ab")
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(self.workdir / "config.yml")], stdout=log, stderr=log
        )
        log.close()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


# --- ECR's registry-side bookkeeping (test-only front end) ------------------------------------------


class EcrFront:
    """Relays Docker Registry API requests to ``Registry`` and keeps moto's image records in step
    with what the registry stored (see the module docstring)."""

    def __init__(self, registry: Registry, moto: MotoEcr):
        self.registry = registry
        self.ecr = moto.client()
        # Fault injection: called with (method, path) before each request is handled.
        self.before_request: Callable[[str, str], None] | None = None
        self.recorded: list[tuple[str, str, str]] = []  # (repository, tag, digest) put into moto
        front = self

        class Handler(_RelayHandler):
            owner = front

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> "EcrFront":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ECR's checks before it accepts a manifest for a tag.
    def refuse_manifest(self, repository: str, tag: str) -> tuple[int, dict] | None:
        try:
            repo = self.ecr.describe_repositories(repositoryNames=[repository])["repositories"][0]
        except self.ecr.exceptions.RepositoryNotFoundException:
            return 404, _registry_error(
                "NAME_UNKNOWN", f"The repository with name '{repository}' does not exist in the registry with id '{ACCOUNT}'"
            )
        if repo.get("imageTagMutability") == "IMMUTABLE":
            try:
                self.ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
            except self.ecr.exceptions.ImageNotFoundException:
                return None
            return 400, _registry_error(
                "TAG_INVALID",
                f"The image tag '{tag}' already exists in the '{repository}' repository and cannot be overwritten "
                "because the repository is immutable.",
            )
        return None

    # ECR's record of an accepted manifest.
    def record_manifest(self, repository: str, tag: str, manifest: bytes, media_type: str, digest: str) -> None:
        try:
            self.ecr.put_image(
                repositoryName=repository,
                imageManifest=manifest.decode(),
                imageManifestMediaType=media_type,
                imageTag=tag,
                imageDigest=digest,
            )
        except self.ecr.exceptions.ImageAlreadyExistsException:
            pass  # the same manifest under the same tag (a re-push to a mutable repository)
        self.recorded.append((repository, tag, digest))


def _registry_error(code: str, message: str) -> dict:
    return {"errors": [{"code": code, "message": message, "detail": None}]}


class _RelayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: EcrFront

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self._relay()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes, head_length: str | None = None) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", head_length if head_length is not None else str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _relay(self) -> None:
        front = self.owner
        body = self._read_body()
        path = self.path.split("?", 1)[0]
        manifest = MANIFEST_PATH_RE.match(path) if self.command == "PUT" else None
        tag = manifest["ref"] if manifest and not manifest["ref"].startswith("sha256:") else None
        if front.before_request:
            front.before_request(self.command, path)
        if manifest:
            refusal = front.refuse_manifest(manifest["name"], tag) if tag else None
            if refusal:
                status, payload = refusal
                self._answer(status, [("Content-Type", "application/json; charset=utf-8")], json.dumps(payload).encode())
                return
        try:
            upstream = http.client.HTTPConnection("127.0.0.1", front.registry.port, timeout=120)
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    upstream.putheader(name, value)
            if body or self.command in ("PUT", "POST", "PATCH"):
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            data = response.read()
            headers = response.getheaders()
            upstream.close()
        except OSError:
            self.close_connection = True  # the registry is down: drop the client, as a dead server does
            return
        if manifest and tag and response.status == 201:
            digest = response.getheader("Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()
            front.record_manifest(manifest["name"], tag, body, self.headers.get("Content-Type", ""), digest)
        self._answer(response.status, headers, data, response.getheader("Content-Length") if self.command == "HEAD" else None)


# --- fixture images --------------------------------------------------------------------------------


def fixture_image(client, name: str, marker: str) -> str:
    """A tiny single-layer image (static busybox + a marker file), made with `docker import` and
    cached in the engine under a tag keyed by its content. Returns the reference."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    need(os.path.exists(busybox), "busybox-static is not installed (apt-get install busybox-static)")
    blob = Path(busybox).read_bytes()
    key = hashlib.sha256(blob + marker.encode()).hexdigest()[:12]
    ref = f"builder-test/{name}:{key}"
    with contextlib.suppress(Exception):
        client.images.get(ref)
        return ref
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "etc"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for path, data, mode in (("bin/busybox", blob, 0o755), ("etc/marker", marker.encode(), 0o644)):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    repository, tag = ref.split(":")
    client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=tag)
    return ref
