"""A local git server for the compile tests: the upstream bundles in ../shared/upstream (or
$BUILDER_UPSTREAM) cloned into bare repositories and served over git's smart HTTP protocol on
127.0.0.1, so the stanzas' ``git clone --depth 1 --branch TAG URL`` runs unchanged against it.

Why smart HTTP: git's "dumb" HTTP (static files) refuses shallow clones ("dumb http transport
does not support shallow capabilities", ../shared/upstream/README.md), and the matrix accepts
plain http only for a loopback mirror (builder/matrix.py _check_url), never git://. The CGI
program is git's own ``git http-backend`` (git-http-backend(1): GIT_PROJECT_ROOT,
GIT_HTTP_EXPORT_ALL, and the request in the CGI variables REQUEST_METHOD, PATH_INFO,
QUERY_STRING, CONTENT_TYPE; GIT_PROTOCOL carries the Git-Protocol header for protocol v2).

The bare repositories are cached under $BUILDER_TEST_CACHE, keyed by each bundle's SHA256.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import standins

HERE = Path(__file__).resolve().parent
UPSTREAM = Path(os.environ.get("BUILDER_UPSTREAM") or HERE.parent.parent.parent / "shared" / "upstream")
# bundle file -> path on the server (owner/name.git, as on GitHub: the matrix's sources: must end
# in the file name builder/matrix.py SOURCE_FILES expects, e.g. nccl.git).
REPOS = {
    "nccl.bundle": "NVIDIA/nccl.git",
    "nccl-tests.bundle": "NVIDIA/nccl-tests.git",
    "aws-ofi-nccl.bundle": "aws/aws-ofi-nccl.git",
    "gdrcopy.bundle": "NVIDIA/gdrcopy.git",
}


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def bare_repositories(upstream: Path = UPSTREAM) -> Path:
    """GIT_PROJECT_ROOT holding one bare clone per bundle (cached by bundle content)."""
    missing = [name for name in REPOS if not (upstream / name).is_file()]
    if missing:
        raise FileNotFoundError(f"upstream bundles missing in {upstream}: {', '.join(missing)} "
                                "(set BUILDER_UPSTREAM to the folder holding them)")
    key = hashlib.sha256("".join(_digest(upstream / n) for n in sorted(REPOS)).encode()).hexdigest()[:16]
    root = standins.cache_dir() / f"git-{key}"
    if root.is_dir():
        return root
    partial = root.with_name(root.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    for bundle, repo in REPOS.items():
        target = partial / repo
        target.parent.mkdir(parents=True, exist_ok=True)
        # --mirror keeps every branch and tag as it is in the bundle (the stanzas clone tags).
        subprocess.run(["git", "clone", "-q", "--mirror", str(upstream / bundle), str(target)],
                       check=True, capture_output=True)
    try:
        os.rename(partial, root)
    except OSError:  # another session made it first
        shutil.rmtree(partial, ignore_errors=True)
    return root


class _GitHandler(BaseHTTPRequestHandler):
    root: Path  # set on the subclass

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        self._cgi()

    def do_POST(self):
        self._cgi()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _cgi(self):
        path, _, query = self.path.partition("?")
        body = self._body() if self.command == "POST" else b""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_PROJECT_ROOT": str(self.root),
               "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": self.command, "PATH_INFO": path,
               "QUERY_STRING": query, "CONTENT_TYPE": self.headers.get("Content-Type", ""),
               "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": self.client_address[0],
               "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
               "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", "")}
        proc = subprocess.run(["git", "http-backend"], input=body, capture_output=True, env=env)
        # CGI output: headers, a blank line (CRLF or LF), the body.
        ends = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := proc.stdout.find(sep)) >= 0]
        cut, width = min(ends) if ends else (len(proc.stdout), 0)
        head, payload = proc.stdout[:cut], proc.stdout[cut + width:]
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        if proc.returncode != 0 and not proc.stdout:
            status, payload = 500, proc.stderr
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def preferred_port(name: str) -> int:
    """A port for name that is the same from one test session to the next. The URLs of the
    servers are in the RUN lines of the stanzas, so in BuildKit's cache keys: with the same port,
    a second session reuses every compiled layer. A port in use is no error (see bind)."""
    return 30000 + int(hashlib.sha256(name.encode()).hexdigest(), 16) % 20000


def bind(server_class, handler, name: str):
    """The server on its preferred port, else on any free one (then nothing is cached)."""
    try:
        return server_class(("127.0.0.1", preferred_port(name)), handler)
    except OSError:
        return server_class(("127.0.0.1", 0), handler)


class GitServer:
    """Smart-HTTP git server on 127.0.0.1: url_of('nccl.bundle') is the URL."""

    def __init__(self, root: Path | None = None):
        self.root = root or bare_repositories()
        handler = type("Handler", (_GitHandler,), {"root": self.root})
        self.httpd = bind(ThreadingHTTPServer, handler, "builder-compile-git")
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url_of(self, bundle: str) -> str:
        return f"{self.url}/{REPOS[bundle]}"

    def __enter__(self) -> "GitServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
