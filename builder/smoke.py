"""Run, inside a built image, the checks its stanzas declared, plus hygiene and a credentials scan.

One container is started per image (``--network none``, entrypoint replaced by a sleep) and
every check is a ``docker exec`` into it: with the vfs storage driver each new container is a
full copy of the image, so one container for all checks is what keeps this fast. Expected
values come from the matrix entry through the renderer's checks; no check needs a GPU: the
NCCL version comes from ``ncclGetVersion`` through ctypes, else from ``nccl.h``.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from packaging.version import InvalidVersion, Version

from builder import components as comp
from builder.errors import BuilderError, UsageError
from builder.matrix import IMAGE_RE, ImageSpec
from builder.render import Check, Renderer

EXEC_TIMEOUT = 300
# Env var names that hold secrets by convention (AWS's DLC sanity tests flag the same suffixes).
SECRET_ENV_RE = re.compile(r"(?:^|_)(?:TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|SECRET_ACCESS_KEY|ACCESS_KEY_ID)$")
SECRET_VALUE_RES = (
    ("AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")),
    ("private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
)
# Credential files by path: their presence is the finding.
CREDENTIAL_FILES = (
    "/root/.aws/credentials", "/root/.docker/config.json", "/root/.netrc", "/root/.git-credentials",
    "/root/.npmrc", "/root/.pypirc", "/root/.huggingface/token", "/root/.cache/huggingface/token", "/.env",
    "/root/.env",
)
# Where the opt-in openssh stanza puts its (documented, shared) key pair.
# Host keys come from installing openssh-server; both are shared by every container of the image,
# which the stanza's own comment warns about. Any other private key fails the scan.
OPENSSH_KEYS = ("/root/.ssh/id_ed25519", "/etc/ssh/ssh_host_*_key")

NCCL_PROBE = r"""
import ctypes, glob, re, sys
for name in ("libnccl.so.2", "libnccl.so"):
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        continue
    v = ctypes.c_int(0)
    if lib.ncclGetVersion(ctypes.byref(v)) == 0:
        code = v.value  # 2.9 and later: MAJOR*10000 + MINOR*100 + PATCH; before: MAJOR*1000 + ...
        major, rest = divmod(code, 10000 if code >= 10000 else 1000)
        minor, patch = divmod(rest, 100)
        print("lib %d.%d.%d" % (major, minor, patch)); sys.exit(0)
heads = ["/usr/include/nccl.h", "/usr/local/include/nccl.h", "/opt/conda/include/nccl.h",
         "/usr/local/cuda/include/nccl.h"] + sorted(glob.glob("/usr/include/*/nccl.h"))
for head in heads:
    try:
        text = open(head).read()
    except OSError:
        continue
    parts = [re.search(r"#define NCCL_%s\s+(\d+)" % k, text) for k in ("MAJOR", "MINOR", "PATCH")]
    if all(parts):
        print("header %s %s" % (".".join(p.group(1) for p in parts), head)); sys.exit(0)
print("none"); sys.exit(3)
"""

# Leftovers that make an image bigger or leak the build: AWS checks the same kinds of things.
HYGIENE_SCRIPT = r"""
for f in /var/lib/apt/lists/*; do
  case "$f" in */lock|*/partial|*/auxfiles|'/var/lib/apt/lists/*') ;; *) [ -e "$f" ] && echo "apt-lists	$f";; esac
done
for d in /tmp /var/tmp; do
  for f in "$d"/* "$d"/.[!.]*; do [ -e "$f" ] && echo "temp	$f"; done
done
for f in /root/.cache/pip /root/.cache/ccache /root/.ccache /root/.bash_history /root/.python_history /root/.wget-hsts; do
  # a BuildKit cache mount leaves its (empty) mount point behind: only content counts
  if [ -d "$f" ]; then [ -n "$(ls -A "$f" 2>/dev/null)" ] && echo "cache	$f"; elif [ -e "$f" ]; then echo "cache	$f"; fi
done
for d in /usr/local/src /opt /root; do
  [ -d "$d" ] || continue
  find "$d" -maxdepth 3 \( -name CMakeCache.txt -o -name config.status -o -name .git \) -print 2>/dev/null | sed 's/^/build-tree	/'
done
exit 0
"""

# Text files only (-I); "path:match" lines. A PEM block must start a line on its own (code that
# merely names the marker, like cryptography's ssh.py, does not); AWS's documented example key
# ids (…EXAMPLE, all over boto3/botocore docs) are dropped in Python.
SECRETS_SCRIPT = r"""
for f in "$@"; do [ -e "$f" ] && printf 'credential-file\t%s\n' "$f"; done
grep -rIsHoE --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev --exclude-dir=tests --exclude-dir=test \
  -e '^-----BEGIN [A-Z ]*PRIVATE KEY-----[[:space:]]*$' -e '(AKIA|ASIA)[0-9A-Z]{16}' \
  /root /home /etc /opt /tmp /var/tmp /srv /usr/local 2>/dev/null | sed 's/^/match\t/'
exit 0
"""


@dataclass
class CheckResult:
    stanza: str
    kind: str
    args: Mapping[str, object]
    ok: bool
    detail: str = ""

    def line(self) -> str:
        what = ", ".join(f"{k}={v}" for k, v in self.args.items())
        return f"{'PASS' if self.ok else 'FAIL'} {self.stanza}: {self.kind}({what})" + (f": {self.detail}" if self.detail else "")

    def to_dict(self) -> dict:
        return {"stanza": self.stanza, "kind": self.kind, "args": dict(self.args), "ok": self.ok, "detail": self.detail}


@dataclass
class SmokeReport:
    image: str
    name: str | None
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]

    def to_dict(self) -> dict:
        return {"image": self.image, "name": self.name, "ok": self.ok,
                "passed": sum(r.ok for r in self.results), "failed": len(self.failures),
                "checks": [r.to_dict() for r in self.results]}


def implicit_checks(spec: ImageSpec, declared: tuple[Check, ...]) -> list[Check]:
    """What the base image ships, checked even where no stanza of ours installed it."""
    kinds = {c.kind for c in declared}
    out = []
    if "pytorch" in spec.versions:
        out.append(Check("base", "python", MappingProxyType({
            "code": "import torch; print(torch.__version__)", "stdout_contains": spec.versions["pytorch"]})))
    if "nccl" in spec.versions and "nccl_version" not in kinds:
        out.append(Check("base", "nccl_version", MappingProxyType({"version": comp.nccl_base(spec.versions["nccl"])})))
    if "efa" in spec.versions and "efa" not in spec.stanzas:
        out.append(Check("base", "file_contains", MappingProxyType({
            "path": "/opt/amazon/efa_installed_packages", "text": f"EFA installer version: {spec.versions['efa']}"})))
    return out


def parse_ldd(output: str) -> list[str]:
    """Libraries ldd could not resolve."""
    return [line.split("=>", 1)[0].strip() for line in output.splitlines() if "not found" in line]


def nccl_matches(found: str, expected: str) -> bool:
    try:
        return Version(found) == Version(expected)
    except InvalidVersion:
        return found == expected


def token_env(env: list[str]) -> list[str]:
    """Findings among the image's ENV entries ('NAME=value')."""
    out = []
    for entry in env:
        name, _, value = entry.partition("=")
        if SECRET_ENV_RE.search(name) and value:
            out.append(f"env {name} looks like a secret (ARG/ENV values persist in the image; use RUN --mount=type=secret)")
            continue
        for label, pattern in SECRET_VALUE_RES:
            if pattern.search(value):
                out.append(f"env {name} holds a {label}")
    return out


def scan_findings(lines: str, allowed: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """'kind<TAB>path' lines from the in-container scripts, minus allowed paths."""
    out = []
    for line in lines.splitlines():
        kind, _, path = line.partition("\t")
        if kind and path and not any(fnmatch.fnmatchcase(path, pattern) for pattern in allowed):
            out.append((kind, path))
    return out


def secret_findings(output: str, allowed: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """(kind, path, why) from the secrets script's output; one finding per path and kind."""
    out: dict[tuple[str, str], str] = {}
    for kind, path in scan_findings(output):
        if kind == "credential-file":
            out[("credential-file", path)] = "credential file baked into the image"
            continue
        path, _, match = path.rpartition(":")
        if not path or any(fnmatch.fnmatchcase(path, pattern) for pattern in allowed):
            continue
        if "PRIVATE KEY" in match:
            out.setdefault(("private-key", path), f"private key ({match.strip('- ').lower()}) in the image")
        elif not match.endswith("EXAMPLE"):
            out.setdefault(("aws-key", path), f"AWS access key id {match[:8]}... in the image")
    return [(kind, path, why) for (kind, path), why in out.items()]


class Container:
    """One long-lived container of the image, for many `docker exec` checks."""

    def __init__(self, docker: str, image: str):
        self.docker, self.image, self.id = docker, image, None

    def __enter__(self) -> "Container":
        proc = subprocess.run(
            [self.docker, "run", "-d", "--rm", "--network", "none", "--entrypoint", "/bin/sh", self.image,
             "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"],
            capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuilderError(f"cannot start a container of {self.image}: {_last(proc.stderr)} "
                               "(the smoke checks need /bin/sh in the image)")
        self.id = proc.stdout.strip()
        return self

    def __exit__(self, *exc) -> None:
        if self.id:
            subprocess.run([self.docker, "rm", "-f", self.id], capture_output=True)

    def exec(self, argv: list[str], timeout: float = EXEC_TIMEOUT) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([self.docker, "exec", self.id, *argv], capture_output=True, text=True,
                                  errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout:.0f}s")


def _last(text: str, limit: int = 300) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:limit]


class Smoker:
    def __init__(self, docker: str, image: str, spec: ImageSpec | None):
        self.docker, self.image, self.spec = docker, image, spec
        self.config: dict = {}
        self.python: str | None = None

    def run(self) -> SmokeReport:
        report = SmokeReport(self.image, self.spec.name if self.spec else None)
        inspect = subprocess.run([self.docker, "image", "inspect", "--format", "{{json .Config}}", self.image],
                                 capture_output=True, text=True)
        if inspect.returncode != 0:
            hint = ("build it first ('builder build NAME')" if self.spec is not None
                    else "not an image of the matrix either (see 'builder list')")
            raise BuilderError(f"image {self.image} not found in the engine ({_last(inspect.stderr)}); {hint}")
        self.config = json.loads(inspect.stdout) or {}
        checks: list[Check] = []
        if self.spec is not None:
            rendered = Renderer().render(self.spec)
            checks = list(rendered.checks)
            checks[0:0] = implicit_checks(self.spec, rendered.checks)
        with Container(self.docker, self.image) as box:
            self.box = box
            probe = box.exec(["/bin/sh", "-c", "command -v python || command -v python3"])
            self.python = probe.stdout.strip().splitlines()[0] if probe.returncode == 0 and probe.stdout.strip() else None
            for check in checks:
                report.results.append(self.check(check))
            report.results.extend(self.hygiene())
            report.results.extend(self.credentials())
        return report

    # -- declared checks ---------------------------------------------------------------------------

    def check(self, check: Check) -> CheckResult:
        handler = getattr(self, f"_{check.kind}", None)
        if handler is None:
            return CheckResult(check.stanza, check.kind, check.args, False, "unknown check kind")
        ok, detail = handler(**dict(check.args))
        return CheckResult(check.stanza, check.kind, check.args, ok, detail)

    def _file_exists(self, path):
        proc = self.box.exec(["/bin/sh", "-c", 'test -e "$1"', "sh", path])
        return proc.returncode == 0, "" if proc.returncode == 0 else "missing"

    def _file_absent(self, path):
        proc = self.box.exec(["/bin/sh", "-c", 'for p in $1; do if [ -e "$p" ] || [ -L "$p" ]; then echo "$p"; fi; done', "sh", path])
        found = proc.stdout.split()
        return not found, "" if not found else f"present: {' '.join(found[:5])}"

    def _file_contains(self, path, text):
        proc = self.box.exec(["/bin/sh", "-c", 'cat "$1"', "sh", path])
        if proc.returncode != 0:
            return False, f"cannot read {path}: {_last(proc.stderr)}"
        if text in proc.stdout:
            return True, ""
        return False, f"{text!r} not in {path} (first line: {_last(proc.stdout.splitlines()[0] if proc.stdout else '')!r})"

    def _command(self, argv, stdout_contains=None):
        proc = self.box.exec(list(argv))
        if proc.returncode != 0:
            return False, f"exit {proc.returncode}: {_last(proc.stderr or proc.stdout)}"
        if stdout_contains is not None and stdout_contains not in proc.stdout:
            return False, f"output lacks {stdout_contains!r}: {_last(proc.stdout)!r}"
        return True, ""

    def _python(self, code, stdout_contains=None):
        if not self.python:
            return False, "no python or python3 in the image"
        return self._command([self.python, "-c", code], stdout_contains)

    def _ldd(self, path):
        proc = self.box.exec(["ldd", path])
        if proc.returncode != 0:
            return False, f"ldd failed ({_last(proc.stderr or proc.stdout)}): missing, or not a dynamic library"
        missing = parse_ldd(proc.stdout)
        if missing:
            return False, f"unresolved: {', '.join(missing)} (NCCL would silently fall back to sockets)"
        return True, ""

    def _nccl_version(self, version):
        if not self.python:
            return False, "no python to call ncclGetVersion"
        proc = self.box.exec([self.python, "-c", NCCL_PROBE])
        words = proc.stdout.split()
        if proc.returncode != 0 or len(words) < 2:
            return False, "no loadable libnccl.so.2 and no nccl.h found"
        source, found = words[0], words[1]
        where = "ncclGetVersion" if source == "lib" else f"header {words[2] if len(words) > 2 else ''}"
        if nccl_matches(found, version):
            return True, f"{found} via {where}"
        return False, f"NCCL {found} via {where}, expected {version}"

    def _env(self, name, value):
        env = dict(e.partition("=")[::2] for e in self.config.get("Env") or [])
        if name not in env:
            return False, "not set in the image config"
        return (env[name] == str(value)), "" if env[name] == str(value) else f"is {env[name]!r}"

    def _label(self, name, value):
        labels = self.config.get("Labels") or {}
        if name not in labels:
            return False, "label missing"
        return (labels[name] == str(value)), "" if labels[name] == str(value) else f"is {labels[name]!r}"

    # -- hygiene and credentials ---------------------------------------------------------------------

    def hygiene(self) -> list[CheckResult]:
        proc = self.box.exec(["/bin/sh", "-c", HYGIENE_SCRIPT])
        found = scan_findings(proc.stdout)
        results = [CheckResult("hygiene", kind, {"path": path}, False, _HYGIENE_WHY.get(kind, "leftover"))
                   for kind, path in found]
        return results or [CheckResult("hygiene", "leftovers", {}, True, "no apt lists, temp files, caches or build trees")]

    def credentials(self) -> list[CheckResult]:
        allowed = OPENSSH_KEYS if self.spec is not None and self.spec.has("openssh") else ()
        proc = self.box.exec(["/bin/sh", "-c", SECRETS_SCRIPT, "sh", *CREDENTIAL_FILES], timeout=600)
        results = [CheckResult("credentials", kind, {"path": path}, False, why)
                   for kind, path, why in secret_findings(proc.stdout, allowed)]
        results += [CheckResult("credentials", "env", {}, False, finding) for finding in token_env(self.config.get("Env") or [])]
        return results or [CheckResult("credentials", "scan", {}, True,
                                       "no keys or tokens" + (" (openssh stanza key allowed)" if allowed else ""))]


_HYGIENE_WHY = {
    "apt-lists": "apt lists left in the image (clean them in the same RUN, or use the apt cache mount)",
    "temp": "file left in a temp folder",
    "cache": "cache or shell history left in the image",
    "build-tree": "build tree left in the image",
}


def resolve(matrix, arg: str, image: str | None = None) -> tuple[ImageSpec | None, str]:
    """NAME (a matrix image: its primary ref) or IMAGE (a reference; its title label names the
    matrix entry when there is one). --image REF checks REF against NAME's expectations."""
    spec = matrix.find(arg) if matrix is not None else None
    if spec is not None:
        return spec, image or spec.primary_ref
    if image is not None:
        raise UsageError(f"no image named '{arg}' in the matrix (with --image, the argument is a matrix name)")
    if not IMAGE_RE.match(arg):
        raise UsageError(f"'{arg}' is neither an image of the matrix nor a valid image reference")
    return None, arg


def spec_from_labels(matrix, docker: str, ref: str) -> ImageSpec | None:
    proc = subprocess.run([docker, "image", "inspect", "--format", "{{json .Config.Labels}}", ref],
                          capture_output=True, text=True)
    if proc.returncode != 0 or matrix is None:
        return None
    labels = json.loads(proc.stdout or "null") or {}
    title = labels.get("org.opencontainers.image.title")
    return matrix.find(title) if title else None


def smoke(docker: str, image: str, spec: ImageSpec | None) -> SmokeReport:
    """Python entry point: every check of the image; never raises for a failing check."""
    return Smoker(docker, image, spec).run()


def format_text(report: SmokeReport) -> str:
    lines = [r.line() for r in report.results]
    lines.append(f"{'OK' if report.ok else 'FAILED'}: {report.image}: "
                 f"{sum(r.ok for r in report.results)} passed, {len(report.failures)} failed")
    return "\n".join(lines)


__all__ = ["smoke", "resolve", "spec_from_labels", "format_text", "SmokeReport", "CheckResult", "shlex"]
