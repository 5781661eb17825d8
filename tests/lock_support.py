"""Real registries for the lock tests: Debian's docker-registry with htpasswd (Basic) auth, or
with token (Bearer) auth backed by a small token server that follows Docker's token spec.

The token server is test-only and real in every way the registry checks: it signs RS256 JWTs
with a key whose self-signed certificate is the registry's ``rootcertbundle`` and sends it in
the ``x5c`` header; the registry verifies signature, issuer, audience, expiry and the granted
actions. Like Docker Hub, it grants ``pull`` to anonymous callers and ``pull,push`` to a caller
with the right Basic login, and answers 401 to a wrong one; an anonymous caller gets a token
without access to a ``private`` repository, which the registry then refuses.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from push_support import free_port, need, wait_for_port

ISSUER = "builder-test-issuer"
SERVICE = "builder-test-registry"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    def __init__(self, workdir: Path, username: str, password: str):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.username, self.password = username, password
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = dt.datetime.now(dt.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.cert_path = workdir / "token-cert.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._der = self.cert.public_bytes(serialization.Encoding.DER)
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self.requests: list[dict] = []  # what was asked: scope and whether a login came with it
        self.private: set[str] = set()  # repositories an anonymous caller gets no access to
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server._answer(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> "TokenServer":
        self._thread.start()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlsplit(handler.path).query)
        header = handler.headers.get("Authorization", "")
        login = None
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if (user, password) != (self.username, self.password):
                self._send(handler, 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad login"}]})
                return
            login = user
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            wanted = set(actions.split(","))
            allowed = {"pull", "push"} if login else (set() if repo in self.private else {"pull"})
            granted = sorted(wanted & allowed)
            access.append({"type": kind, "name": repo, "actions": granted})
        self.requests.append({"scope": query.get("scope", []), "login": login})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": login or "", "aud": query.get("service", [""])[0], "exp": now + 300,
                  "nbf": now - 60, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        self._send(handler, 200, {"token": self._jwt(claims), "expires_in": 300})

    def _jwt(self, claims: dict) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        head = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self._der).decode()]}
        signing_input = f"{_b64url(json.dumps(head).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    @staticmethod
    def _send(handler, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


class AuthRegistry:
    """docker-registry on 127.0.0.1 with filesystem storage and 'htpasswd' or 'token' auth."""

    def __init__(self, workdir: Path, mode: str, username: str = "builder", password: str | None = None):
        self.workdir, self.mode = workdir, mode
        self.username, self.password = username, password or uuid.uuid4().hex
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.tokens: TokenServer | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        if mode == "htpasswd":
            (workdir / "htpasswd").write_text(f"{self.username}:{cheap_bcrypt(self.password)}\n")
            auth = f"auth:\n  htpasswd:\n    realm: builder-test\n    path: {workdir / 'htpasswd'}\n"
        else:
            self.tokens = TokenServer(workdir, self.username, self.password)
            auth = (f"auth:\n  token:\n    realm: {self.tokens.realm}\n    service: {SERVICE}\n"
                    f"    issuer: {ISSUER}\n    rootcertbundle: {self.tokens.cert_path}\n")
        (workdir / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'data'}\n"
            f"http:\n  addr: {self.host}\n" + auth
        )

    def start(self) -> "AuthRegistry":
        need(_has("docker-registry"), "docker-registry is not installed (apt-get install docker-registry)")
        if self.tokens:
            self.tokens.start()
        log = open(self.workdir / "registry.log", "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.workdir / "config.yml")], stdout=log, stderr=log)
        log.close()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.tokens:
            self.tokens.stop()

    def docker_config(self, folder: Path, password: str | None = None) -> Path:
        """A DOCKER_CONFIG folder with this registry's login, as `docker login` writes it."""
        folder.mkdir(parents=True, exist_ok=True)
        auth = base64.b64encode(f"{self.username}:{password or self.password}".encode()).decode()
        (folder / "config.json").write_text(json.dumps({"auths": {self.host: {"auth": auth}}}))
        return folder

    def push(self, client, local_ref: str, repository: str, tag: str) -> str:
        """Tag and push a local image with the engine; returns the digest the push reported."""
        target = f"{self.host}/{repository}"
        client.images.get(local_ref).tag(target, tag)
        digest = None
        for event in client.api.push(target, tag, stream=True, decode=True,
                                     auth_config={"username": self.username, "password": self.password}):
            if "error" in event:
                raise RuntimeError(f"push failed: {event['error']}")
            digest = (event.get("aux") or {}).get("Digest", digest)
        assert digest, "the engine reported no digest"
        return digest


def cheap_bcrypt(password: str) -> str:
    """htpasswd wants bcrypt; the lowest cost (2^4) keeps each Basic-auth request fast (the
    registry checks the hash on every request, the engine's push makes dozens). Apache's
    htpasswd when installed (apache2-utils), else PyPI's bcrypt (the test extra); Python's
    crypt module is gone since 3.13."""
    if _has("htpasswd"):
        line = subprocess.run(["htpasswd", "-niBC", "4", "builder"], input=password, capture_output=True,
                              text=True, timeout=60, check=True).stdout.strip()
        return line.partition(":")[2]
    try:
        import bcrypt
    except ImportError:
        need(False, "no bcrypt for the registry's htpasswd: install apache2-utils or pip install -e '.[test]'")
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def _has(tool: str) -> bool:
    from shutil import which

    return which(tool) is not None
