"""Run, inside a built image, the checks its stanzas declared, plus hygiene and a credentials scan.

One container is started per image (``--network none``, as root, entrypoint replaced by a
bounded sleep) and every check is a ``docker exec`` into it: with the vfs storage driver each new
container is a full copy of the image, so one container for all checks is what keeps this fast.
Hygiene and credentials are scanned first, before any check can leave files behind. Expected
values come from the matrix entry through the renderer's checks; no check needs a GPU: the NCCL
version comes from ``ncclGetVersion`` through ctypes, else from ``nccl.h``.

Findings the base image already has (a DLC's baked ``/root/.ssh/id_rsa``, NGC's source trees)
are not the image's fault: when the base is in the engine they are reported as WARN lines,
not failures. A scan that did not run to its end marker is a failure, never a pass.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import subprocess
import uuid
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from builder import components as comp
from builder import smoke_linking
from builder.smoke_linking import DRIVER_LIBS, nccl_matches
from builder import smoke_login_shell
from builder.build_report import history
from builder.buildkit import image_inspect, last_line
from builder.errors import BuilderError, UsageError
from builder import imageref
from builder.matrix import ImageSpec
from builder.render import Check, Renderer

EXEC_TIMEOUT = 300
SCAN_TIMEOUT = 900  # the credentials scan reads every text file of a multi-GB image
CONTAINER_LIFETIME = 7200  # the smoke container exits (and --rm removes it) even if we are killed
CONTAINER_LABEL = "builder.smoke"
END = "__builder_scan_complete__"  # a scan that did not print this did not finish: a failure

# Env var names that hold secrets by convention (AWS's DLC sanity tests flag the same suffixes).
SECRET_ENV_RE = re.compile(r"(?:^|_)(?:TOKEN|SECRET|SECRET_KEY|PRIVATE_KEY|PASSWORD|PASSWD|API_KEY|"
                           r"SECRET_ACCESS_KEY|ACCESS_KEY_ID|CREDENTIALS)$")
SECRET_VALUE_RES = (
    ("AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")),
    ("private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
)
# Credential files, relative to /root and every /home/*: their presence is the finding. A file
# named .env is one anywhere (found by the scan itself).
CREDENTIAL_FILES = (
    ".aws/credentials", ".docker/config.json", ".netrc", ".git-credentials", ".npmrc", ".pypirc",
    ".huggingface/token", ".cache/huggingface/token", ".config/gh/hosts.yml",
)
# Where the opt-in openssh stanza puts its (documented, shared) key pair.
# Host keys come from installing openssh-server; both are shared by every container of the image,
# which the stanza's own comment warns about. Any other private key fails the scan.
OPENSSH_KEYS = ("/root/.ssh/id_ed25519", "/etc/ssh/ssh_host_*_key")
# Prints "lib X.Y.Z PATH" (ncclGetVersion, and which libnccl the loader picked) or
# "header X.Y.Z PATH" or "none"; then, when torch is installed, "torch X.Y.Z" (the NCCL PyTorch
# itself reports, which can differ from the first libnccl.so.2 on the loader's path) or
# "torch-error MESSAGE".
NCCL_PROBE = r"""
import ctypes, glob, importlib.util, re, sys
def decode(code):  # 2.9 and later: MAJOR*10000 + MINOR*100 + PATCH; before: MAJOR*1000 + ...
    major, rest = divmod(code, 10000 if code >= 10000 else 1000)
    minor, patch = divmod(rest, 100)
    return "%d.%d.%d" % (major, minor, patch)
found = False
for name in ("libnccl.so.2", "libnccl.so"):
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        continue
    v = ctypes.c_int(0)
    if lib.ncclGetVersion(ctypes.byref(v)) == 0:
        maps = [l.split()[-1] for l in open("/proc/self/maps") if "libnccl" in l and "/" in l]
        print("lib %s %s" % (decode(v.value), maps[0] if maps else name))
        found = True
        break
if not found:
    heads = ["/usr/include/nccl.h", "/usr/local/include/nccl.h", "/opt/conda/include/nccl.h",
             "/usr/local/cuda/include/nccl.h"] + sorted(glob.glob("/usr/include/*/nccl.h"))
    for head in heads:
        try:
            text = open(head).read()
        except OSError:
            continue
        parts = [re.search(r"#define NCCL_%s\s+(\d+)" % k, text) for k in ("MAJOR", "MINOR", "PATCH")]
        if all(parts):
            print("header %s %s" % (".".join(p.group(1) for p in parts), head))
            found = True
            break
if not found:
    print("none")
if importlib.util.find_spec("torch") is not None:
    try:
        import torch
        v = torch.cuda.nccl.version()
        print("torch %s" % (".".join(str(x) for x in v[:3]) if isinstance(v, tuple) else decode(int(v))))
    except Exception as exc:
        print("torch-error %s: %s" % (type(exc).__name__, (str(exc).splitlines() or [""])[0][:200]))
"""

_NEEDS = r"""
for t in {tools}; do
  command -v "$t" >/dev/null 2>&1 || {{ printf 'scan-error\t%s is missing in the image\n' "$t"; exit 3; }}
done
"""

# Leftovers that make an image bigger or leak the build: AWS checks the same kinds of things.
# "kind<TAB>path" lines, then the end marker.
HYGIENE_SCRIPT = _NEEDS.format(tools="find ls") + r"""
for f in /var/lib/apt/lists/*; do
  case "$f" in */lock|*/partial|*/auxfiles|'/var/lib/apt/lists/*') ;; *) [ -e "$f" ] && printf 'apt-lists\t%s\n' "$f";; esac
done
for d in /tmp /var/tmp; do
  for f in "$d"/* "$d"/.[!.]*; do [ -e "$f" ] && printf 'temp\t%s\n' "$f"; done
done
for f in /root/.cache/* /root/.cache/.[!.]* /root/.ccache /root/.bash_history /root/.python_history /root/.wget-hsts \
         /opt/conda/pkgs/cache; do
  # a BuildKit cache mount leaves its (empty) mount point behind: only content counts
  if [ -d "$f" ]; then [ -n "$(ls -A "$f")" ] && printf 'cache\t%s\n' "$f"; elif [ -e "$f" ]; then printf 'cache\t%s\n' "$f"; fi
done
for f in /opt/conda/pkgs/*.tar.bz2 /opt/conda/pkgs/*.conda; do [ -e "$f" ] && printf 'conda-pkgs\t%s\n' "$f"; done
for d in /usr/local/src /usr/src /opt /root /workspace; do
  [ -d "$d" ] || continue
  find "$d" -xdev -maxdepth 6 \( -name CMakeCache.txt -o -name config.status -o -name .git \) -prune -printf 'build-tree\t%p\n' \
    || printf 'scan-error\tfind %s exited %s\n' "$d" "$?"
done
printf '%s\n' """ + END + r"""
"""

# The whole root filesystem (one filesystem; /proc, /sys, /dev pruned too), text files under
# 10 MiB only (-I: binary files are skipped after their first block), as root. Test folders are
# skipped only inside site-/dist-packages (libraries ship example keys in their tests). A PEM
# block must start a line on its own (code that merely names the marker, like cryptography's
# ssh.py, does not); AWS's documented example key ids (...EXAMPLE, all over boto3/botocore docs)
# are dropped in Python. grep -Z: "path NUL match" lines, so a path may hold any character but
# a newline. Arguments: the credential files, relative to each home.
SECRETS_SCRIPT = _NEEDS.format(tools="find grep") + r"""
for h in /root /home/*; do
  [ -d "$h" ] || continue
  for rel in "$@"; do [ -e "$h/$rel" ] && printf 'credential-file\t%s\n' "$h/$rel"; done
done
export LC_ALL=C
export PEM_RE='^-----BEGIN [A-Z ]*PRIVATE KEY-----[[:space:]]*$' AWS_RE='(AKIA|ASIA)[0-9A-Z]{16}'
find / -xdev \( -path /proc -o -path /sys -o -path /dev \) -prune \
  -o \( -name tests -o -name test \) \( -path '*/site-packages/*' -o -path '*/dist-packages/*' \) -prune \
  -o -type f \( -name .env -printf 'credential-file\t%p\n' \
  -o -size -10240k -exec sh -c 'grep -IHoEZ -D skip -e "$PEM_RE" -e "$AWS_RE" -- "$@"; [ $? -le 1 ]' sh {} + \)
rc=$?
[ "$rc" -eq 0 ] || printf 'scan-error\tfind/grep exited %s\n' "$rc"
printf '%s\n' """ + END + r"""
"""


# "file<TAB>path" for each existing match of the glob $1, "link<TAB>path" for a dangling symlink.
GLOB_SCRIPT = ('for p in $1; do if [ -e "$p" ]; then printf \'file\\t%s\\n\' "$p"; '
               'elif [ -L "$p" ]; then printf \'link\\t%s\\n\' "$p"; fi; done\n'
               f"printf '%s\\n' {END}\n")


@dataclass
class CheckResult:
    stanza: str
    kind: str
    args: Mapping[str, object]
    ok: bool
    detail: str = ""
    warn: bool = False  # reported, never fails the image (inherited from the base, checks not run)

    @property
    def status(self) -> str:
        return "WARN" if self.warn else ("PASS" if self.ok else "FAIL")

    def line(self) -> str:
        what = ", ".join(f"{k}={v}" for k, v in self.args.items())
        return f"{self.status} {self.stanza}: {self.kind}({what})" + (f": {self.detail}" if self.detail else "")

    def to_dict(self) -> dict:
        return {"stanza": self.stanza, "kind": self.kind, "args": dict(self.args), "ok": self.ok,
                "warn": self.warn, "detail": self.detail}


@dataclass
class SmokeReport:
    image: str
    name: str | None
    results: list[CheckResult] = field(default_factory=list)
    base: str | None = None  # the base image findings were compared with

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]

    @property
    def warnings(self) -> list[CheckResult]:
        return [r for r in self.results if r.warn]

    def to_dict(self) -> dict:
        return {"image": self.image, "name": self.name, "ok": self.ok, "base": self.base,
                "passed": sum(r.ok and not r.warn for r in self.results), "failed": len(self.failures),
                "warnings": len(self.warnings), "checks": [r.to_dict() for r in self.results]}


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


def parse_ldd(output: str, allow: tuple[str, ...] = ()) -> list[str]:
    """Libraries ldd could not resolve, minus the allowed ones (driver libraries)."""
    missing = [line.split("=>", 1)[0].strip() for line in output.splitlines() if "not found" in line]
    return [lib for lib in missing if lib not in allow]


def contains(text: str, needle: str) -> bool:
    """needle in text, where a version at either end of needle must end there: 'version: 1.38.1'
    is not found in 'version: 1.38.10', nor '2.6.1' in '12.6.1'."""
    pattern = re.escape(needle)
    if needle[:1].isdigit():
        pattern = r"(?<!\d)(?<!\d\.)" + pattern
    if needle[-1:].isdigit():
        pattern += r"(?!\.?\d)"
    return re.search(pattern, text) is not None


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


BUILD_ARGS_RE = re.compile(r"^(?:RUN\s+)?\|(\d+)\s+(.*)$")


def history_findings(step: str) -> list[str]:
    """Secrets in one image-history step: build args recorded with a RUN step (BuildKit writes
    'RUN |2 NAME=value ... cmd') and token-like values in any step but ENV (token_env sees those)."""
    step = step.strip()
    if step.startswith("ENV "):
        return []
    out = []
    m = BUILD_ARGS_RE.match(step)
    if m:
        for token in m.group(2).split()[: int(m.group(1))]:
            name, _, value = token.partition("=")
            if SECRET_ENV_RE.search(name) and value:
                out.append(f"build arg {name} is recorded in the image history (use RUN --mount=type=secret)")
    for label, pattern in SECRET_VALUE_RES:
        if pattern.search(step):
            out.append(f"image history holds a {label}: {step[:60]}...")
    return out


@dataclass
class Scan:
    """What an in-container script printed: findings, and whether it ran to its end."""

    lines: list[tuple[str, str]]  # (kind, rest): rest is a path, or "path\0match" for grep matches
    error: str | None = None  # None: the scan ran to its end marker

    @classmethod
    def parse(cls, proc: subprocess.CompletedProcess) -> "Scan":
        lines, errors, complete = [], [], False
        for line in (proc.stdout or "").splitlines():
            if line == END:
                complete = True
            elif "\0" in line:
                lines.append(("match", line))
            else:
                kind, _, rest = line.partition("\t")
                if kind == "scan-error":
                    errors.append(rest)
                elif kind and rest:
                    lines.append((kind, rest))
        if proc.returncode != 0:
            errors.append(f"exit {proc.returncode}")
        elif not complete:
            errors.append("stopped before its end")
        if errors and last_line(proc.stderr):
            errors.append(last_line(proc.stderr))
        return cls(lines, "; ".join(errors) or None)


def scan_findings(scan: Scan) -> list[tuple[str, str]]:
    """(kind, path) of a hygiene scan."""
    return [(kind, path) for kind, path in scan.lines if kind != "match"]


def secret_findings(scan: Scan, allowed: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """(kind, path, why) of the secrets scan; one finding per path and kind."""
    out: dict[tuple[str, str], str] = {}
    for kind, rest in scan.lines:
        if kind == "credential-file":
            if not any(fnmatch.fnmatchcase(rest, pattern) for pattern in allowed):
                out[("credential-file", rest)] = "credential file baked into the image"
            continue
        if kind != "match":
            continue
        path, _, match = rest.partition("\0")
        if not path or any(fnmatch.fnmatchcase(path, pattern) for pattern in allowed):
            continue
        if "PRIVATE KEY" in match:
            out.setdefault(("private-key", path), f"private key ({match.strip('- ').lower()}) in the image")
        elif not match.endswith("EXAMPLE"):
            out.setdefault(("aws-key", path), f"AWS access key id {match[:8]}... in the image")
    return [(kind, path, why) for (kind, path), why in out.items()]


def parse_cksum(output: str) -> dict[str, str]:
    """path -> 'crc size' from cksum's output."""
    sums = {}
    for line in output.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0].isdigit():
            sums[parts[2]] = f"{parts[0]} {parts[1]}"
    return sums


def _docker_run(argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout)


class Container:
    """One long-lived container of the image, for many `docker exec` checks. Named and labelled,
    removed by name on exit (also when Ctrl-C lands during `docker run`), and it sleeps only
    CONTAINER_LIFETIME seconds, so a killed smoke run cannot leave it behind for long."""

    def __init__(self, docker: str, image: str, purpose: str = "smoke"):
        self.docker, self.image = docker, image
        self.name = f"builder-{purpose}-{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> "Container":
        argv = [self.docker, "run", "-d", "--rm", "--name", self.name, "--label", f"{CONTAINER_LABEL}=1",
                "--user", "0", "--network", "none", "--entrypoint", "/bin/sh", self.image,
                "-c", f"trap 'exit 0' TERM; sleep {CONTAINER_LIFETIME} & wait $!"]
        try:
            proc = _docker_run(argv)
        except BaseException:
            self.remove()
            raise
        if proc.returncode != 0:
            self.remove()
            raise BuilderError(f"cannot start a container of {self.image}: {last_line(proc.stderr)} "
                               "(the smoke checks need /bin/sh in the image)")
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        subprocess.run([self.docker, "rm", "-f", self.name], capture_output=True)

    def exec(self, argv: list[str], timeout: float = EXEC_TIMEOUT, env: Mapping[str, str] | None = None
             ) -> subprocess.CompletedProcess:
        opts = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
        try:
            return _docker_run([self.docker, "exec", *opts, self.name, *argv], timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout:.0f}s")

    def script(self, text: str, *args: str, timeout: float = EXEC_TIMEOUT) -> Scan:
        return Scan.parse(self.exec(["/bin/sh", "-c", text, "sh", *args], timeout=timeout))

    def glob(self, pattern: str, dangling: bool = False) -> tuple[list[str], str | None]:
        """Paths in the container matching a shell glob (with dangling symlinks when asked), and
        the error when the listing did not run to its end."""
        scan = self.script(GLOB_SCRIPT, pattern)
        kinds = ("file", "link") if dangling else ("file",)
        return [p for kind, p in scan.lines if kind in kinds], scan.error

    def checksums(self, paths: list[str]) -> dict[str, str]:
        sums: dict[str, str] = {}
        for i in range(0, len(paths), 200):
            sums.update(parse_cksum(self.exec(["cksum", "--", *paths[i:i + 200]]).stdout))
        return sums


def missing_image(image: str, spec: ImageSpec | None) -> BuilderError:
    hint = ("build it first ('builder build NAME')" if spec is not None
            else "not an image of the matrix either (see 'builder list')")
    return BuilderError(f"image {image} not found in the engine; {hint}")


def base_candidates(labels: Mapping[str, str], spec: ImageSpec | None) -> list[str]:
    """References of the image's base: what its labels say it was built FROM (digest first),
    else the matrix entry's base."""
    out = []
    name = labels.get("org.opencontainers.image.base.name") or ""
    digest = labels.get("org.opencontainers.image.base.digest") or ""
    if not name and spec is not None:
        name, _, digest = spec.base_image.partition("@")
    if name and digest:
        last = name.rsplit("/", 1)[-1]
        out.append((name.rsplit(":", 1)[0] if ":" in last else name) + "@" + digest)
    if name:
        out.append(name)
    return out


@dataclass
class Finding:
    section: str  # "hygiene" | "credentials"
    kind: str
    path: str | None
    why: str
    checksum: str | None = None
    env_entry: str | None = None  # credentials found in the image config's Env
    history_step: int | None = None  # credentials found in image history (0 = oldest)


class Smoker:
    def __init__(self, docker: str, image: str, spec: ImageSpec | None, config: dict | None = None):
        """config: the image's inspected Config when the caller has it already."""
        self.docker, self.image, self.spec = docker, image, spec
        self.config = config
        self.python: str | None = None

    def run(self) -> SmokeReport:
        report = SmokeReport(self.image, self.spec.name if self.spec else None)
        if self.config is None:
            inspected = image_inspect(self.docker, self.image)
            if inspected is None:
                raise missing_image(self.image, self.spec)
            self.config = inspected.get("Config") or {}
        checks: list[Check] = []
        if self.spec is not None:
            rendered = Renderer().render(self.spec)
            checks = list(rendered.checks)
            checks[0:0] = implicit_checks(self.spec, rendered.checks)
        declared: list[CheckResult] = []
        with Container(self.docker, self.image) as box:
            self.box = box
            # Hygiene and credentials first: the checks below may write files (caches, .pyc).
            hygiene = box.script(HYGIENE_SCRIPT)
            secrets = box.script(SECRETS_SCRIPT, *CREDENTIAL_FILES, timeout=SCAN_TIMEOUT)
            findings = self._findings(hygiene, secrets)
            file_paths = [f.path for f in findings if f.section == "credentials" and f.path]
            sums = box.checksums(file_paths) if file_paths else {}
            for f in findings:
                f.checksum = sums.get(f.path) if f.path else None
            probe = box.exec(["/bin/sh", "-c", "command -v python || command -v python3"])
            self.python = probe.stdout.strip().splitlines()[0] if probe.returncode == 0 and probe.stdout.strip() else None
            for check in checks:
                declared.append(self.check(check))
            # enroot's login shell (pyxis jobs) must not change what the image bakes in.
            login = [CheckResult("enroot", "login-shell", args, True, detail, warn=warn)
                     for args, warn, detail in smoke_login_shell.results(self.docker, box.name, self.config)]
        report.results.extend(self._judge(findings, report))
        report.results.extend(self._scan_errors(hygiene, secrets))
        report.results.extend(self._summaries(report.results))
        report.results.extend(declared)
        report.results.extend(login)
        return report

    # -- hygiene and credentials ---------------------------------------------------------------------

    def _findings(self, hygiene: Scan, secrets: Scan) -> list[Finding]:
        allowed = OPENSSH_KEYS if self.spec is not None and self.spec.has("openssh") else ()
        out = [Finding("hygiene", kind, path, _HYGIENE_WHY.get(kind, "leftover")) for kind, path in scan_findings(hygiene)]
        out += [Finding("credentials", kind, path, why) for kind, path, why in secret_findings(secrets, allowed)]
        for entry in self.config.get("Env") or []:
            out += [Finding("credentials", "env", None, why, env_entry=entry) for why in token_env([entry])]
        for index, step in enumerate(self._history(self.image)):
            out += [Finding("credentials", "history", None, why, history_step=index) for why in history_findings(step)]
        return out

    def _history(self, ref: str) -> list[str]:
        """CreatedBy of each history entry, oldest first ([] when unreadable)."""
        try:
            return [created for created, _ in history(self.docker, ref)]
        except subprocess.CalledProcessError:
            return []

    def _judge(self, findings: list[Finding], report: SmokeReport) -> list[CheckResult]:
        """FAIL for the image's own findings, WARN for those the base image already has."""
        if not findings:
            return []
        inherited, note = self._inherited(findings, report)
        out = [CheckResult("base", "inherited", {"ref": report.base or "unknown"}, True, note, warn=True)] if note else []
        for i, f in enumerate(findings):
            args = {"path": f.path} if f.path else {}
            if i in inherited:
                out.append(CheckResult(f.section, f.kind, args, True, f"{f.why} (inherited from base {report.base})", warn=True))
            else:
                out.append(CheckResult(f.section, f.kind, args, False, f.why))
        return out

    def _inherited(self, findings: list[Finding], report: SmokeReport) -> tuple[set[int], str]:
        """Indexes of findings the base image has too, and a note when the base could not be compared."""
        labels = self.config.get("Labels") or {}
        candidates = base_candidates(labels, self.spec)
        if not candidates:
            return set(), ("no base image known (no org.opencontainers.image.base.name label, no matrix entry): "
                           "every finding is judged as the image's own")
        base, base_config = None, {}
        for ref in candidates:
            inspected = image_inspect(self.docker, ref)
            if inspected is not None:
                base, base_config = ref, inspected.get("Config") or {}
                break
        report.base = base or candidates[0]
        if base is None:
            return set(), (f"base image {candidates[0]} is not in the engine: every finding is judged as the image's "
                           "own (pull or load the base to tell inherited findings apart)")
        base_env = set(base_config.get("Env") or [])
        base_steps = len(self._history(base))
        inherited = {i for i, f in enumerate(findings)
                     if (f.env_entry is not None and f.env_entry in base_env)
                     or (f.history_step is not None and f.history_step < base_steps)}
        if not any(f.path for f in findings):
            return inherited, ""
        # In the base: the same hygiene scan (a leftover is inherited when the base has the same
        # one), and the checksums of the files holding credentials (inherited only with the very
        # content of the base's copy: a new key written over the base's is the image's own).
        credential_paths = sorted({f.path for f in findings if f.section == "credentials" and f.path})
        try:
            with Container(self.docker, base, purpose="smoke-base") as bbox:
                hygiene = bbox.script(HYGIENE_SCRIPT) if any(f.section == "hygiene" for f in findings) else Scan([])
                sums = bbox.checksums(credential_paths) if credential_paths else {}
        except BuilderError as exc:
            return inherited, f"cannot compare with base {base}: {exc}; every file finding is judged as the image's own"
        base_leftovers = set(scan_findings(hygiene))
        for i, f in enumerate(findings):
            if f.section == "hygiene" and (f.kind, f.path) in base_leftovers:
                inherited.add(i)
            elif f.section == "credentials" and f.path and f.checksum is not None and sums.get(f.path) == f.checksum:
                inherited.add(i)
        if hygiene.error:
            return inherited, (f"the hygiene scan of base {base} failed ({hygiene.error}): every leftover is judged "
                               "as the image's own")
        return inherited, ""

    @staticmethod
    def _scan_errors(hygiene: Scan, secrets: Scan) -> list[CheckResult]:
        out = []
        if hygiene.error:
            out.append(CheckResult("hygiene", "scan", {}, False, f"the hygiene scan failed, so leftovers were not "
                                                                 f"all checked: {hygiene.error}"))
        if secrets.error:
            out.append(CheckResult("credentials", "scan", {}, False, f"the credentials scan failed, so the image was "
                                                                     f"not fully scanned: {secrets.error}"))
        return out

    def _summaries(self, results: list[CheckResult]) -> list[CheckResult]:
        """One PASS line per section with no failure of its own."""
        out = []
        allowed = self.spec is not None and self.spec.has("openssh")
        for section, text in (("hygiene", "no apt lists, temp files, caches or build trees"),
                              ("credentials", "no keys or tokens" + (" (openssh stanza key allowed)" if allowed else ""))):
            mine = [r for r in results if r.stanza == section]
            if any(not r.ok for r in mine):
                continue
            warned = sum(r.warn for r in mine)
            out.append(CheckResult(section, "leftovers" if section == "hygiene" else "scan", {}, True,
                                   text + (" of its own" if warned else "") + (f" ({warned} inherited from the base)" if warned else "")))
        return out

    # -- declared checks ---------------------------------------------------------------------------

    def check(self, check: Check) -> CheckResult:
        handler = getattr(self, f"_{check.kind}", None)
        if handler is None and check.kind in smoke_linking.HANDLERS:
            handler = functools.partial(smoke_linking.HANDLERS[check.kind], self)
        if handler is None:
            return CheckResult(check.stanza, check.kind, check.args, False, "unknown check kind")
        ok, detail = handler(**dict(check.args))
        return CheckResult(check.stanza, check.kind, check.args, ok, detail)

    def _file_exists(self, path):
        proc = self.box.exec(["/bin/sh", "-c", 'if [ -e "$1" ]; then echo present; else echo absent; fi', "sh", path])
        state = proc.stdout.strip()
        if proc.returncode != 0 or state not in ("present", "absent"):
            return False, f"cannot check: exit {proc.returncode}: {last_line(proc.stderr)}"
        return state == "present", "" if state == "present" else "missing"

    def _file_absent(self, path):
        found, error = self.box.glob(path, dangling=True)
        if error:
            return False, f"cannot check: {error}"
        return not found, "" if not found else f"present: {' '.join(found[:5])}"

    def _file_contains(self, path, text):
        proc = self.box.exec(["/bin/sh", "-c", 'cat "$1"', "sh", path])
        if proc.returncode != 0:
            return False, f"cannot read {path}: {last_line(proc.stderr)}"
        if contains(proc.stdout, text):
            return True, ""
        return False, f"{text!r} not in {path} (first line: {last_line(proc.stdout.splitlines()[0] if proc.stdout else '')!r})"

    def _command(self, argv, stdout_contains=None):
        proc = self.box.exec(list(argv))
        if proc.returncode != 0:
            return False, f"exit {proc.returncode}: {last_line(proc.stderr or proc.stdout)}"
        if stdout_contains is not None and not contains(proc.stdout, stdout_contains):
            return False, f"output lacks {stdout_contains!r}: {last_line(proc.stdout)!r}"
        return True, ""

    def _python(self, code, stdout_contains=None):
        if not self.python:
            return False, "no python or python3 in the image"
        return self._command([self.python, "-c", code], stdout_contains)

    def _ldd(self, path, driver_libs=False, torch_lib=False):
        """Every dependency resolves (driver_libs: but DRIVER_LIBS, which the host mounts at run
        time). path may be a glob (every match is checked, and there must be one); torch_lib adds
        torch's lib folder to the search path, as for an extension loaded after `import torch`."""
        allow = DRIVER_LIBS if driver_libs else ()
        files = [path]
        if any(c in path for c in "*?["):
            files, error = self.box.glob(path)
            if error:
                return False, f"cannot list {path}: {error}"
            if not files:
                return False, f"no file matches {path}"
        env = {}
        if torch_lib:
            torch_dir = self._torch_lib_dir()
            if torch_dir is None:
                return False, "torch_lib: torch is not installed"
            current = dict(e.partition("=")[::2] for e in self.config.get("Env") or []).get("LD_LIBRARY_PATH", "")
            env["LD_LIBRARY_PATH"] = torch_dir + (f":{current}" if current else "")
        problems = []
        for file in files:
            proc = self.box.exec(["ldd", file], env=env)
            if proc.returncode != 0:
                problems.append(f"{file}: ldd failed ({last_line(proc.stderr or proc.stdout)}): missing, or not a dynamic library")
                continue
            missing = parse_ldd(proc.stdout, allow)
            if missing:
                problems.append(f"{file}: unresolved: {', '.join(missing)}")
        if problems:
            return False, "; ".join(problems[:3]) + (" (NCCL would silently fall back to sockets)" if "nccl" in path.lower() else "")
        return True, (f"{len(files)} files" if len(files) > 1 else "") + (f" ({', '.join(allow)} allowed: the host's driver)" if allow else "")

    def _torch_lib_dir(self) -> str | None:
        if not self.python:
            return None
        proc = self.box.exec([self.python, "-c", "import importlib.util as u, os; s = u.find_spec('torch'); "
                                                 "print(os.path.join(s.submodule_search_locations[0], 'lib') if s else '')"])
        out = proc.stdout.strip()
        return out or None

    def _nccl_version(self, version):
        if not self.python:
            return False, "no python to call ncclGetVersion"
        proc = self.box.exec([self.python, "-c", NCCL_PROBE])
        lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1:] for line in proc.stdout.splitlines() if line.strip()}
        first = next((k for k in ("lib", "header") if k in lines), None)
        if proc.returncode != 0 or (first is None and "none" not in lines):
            return False, f"the NCCL probe failed: exit {proc.returncode}: {last_line(proc.stderr)}"
        problems, seen = [], []
        if first is None:
            problems.append("no loadable libnccl.so.2 and no nccl.h found")
        else:
            found, _, where_path = (lines[first][0] if lines[first] else "").partition(" ")
            where = f"ncclGetVersion ({where_path})" if first == "lib" else f"header {where_path}"
            seen.append(f"{found} via {where}")
            if not nccl_matches(found, version):
                problems.append(f"NCCL {found} via {where}, expected {version}")
        if "torch" in lines:
            found = (lines["torch"] or [""])[0]
            seen.append(f"torch.cuda.nccl {found}")
            if not nccl_matches(found, version):
                problems.append(f"PyTorch uses NCCL {found} (torch.cuda.nccl.version()), expected {version}")
        elif "torch-error" in lines:
            problems.append(f"torch.cuda.nccl.version() failed: {(lines['torch-error'] or [''])[0]}")
        if problems:
            return False, "; ".join(problems)
        return True, "; ".join(seen)

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


_HYGIENE_WHY = {
    "apt-lists": "apt lists left in the image (clean them in the same RUN, or use the apt cache mount)",
    "temp": "file left in a temp folder",
    "cache": "cache or shell history left in the image",
    "conda-pkgs": "conda package archive left in /opt/conda/pkgs (conda clean -ya, or a cache mount)",
    "build-tree": "build tree left in the image",
}


def resolve(matrix, arg: str, image: str | None = None) -> tuple[ImageSpec | None, str]:
    """NAME (a matrix image: its primary ref) or IMAGE (a reference; its title label names the
    matrix entry when there is one). --image REF checks REF against NAME's expectations."""
    if image is None:
        ref, spec = imageref.resolve(matrix, arg)
        return spec, ref
    spec = matrix.find(arg) if matrix is not None else None
    if spec is not None:
        return spec, image
    if matrix is not None:
        matrix.get(arg)  # raises with a did-you-mean
    raise UsageError(f"no image named '{arg}' in the matrix (with --image, the argument is a matrix name)")


def smoke(docker: str, image: str, spec: ImageSpec | None, config: dict | None = None) -> SmokeReport:
    """Python entry point: every check of the image; never raises for a failing check. config:
    the image's inspected Config, when the caller has it (else it is inspected here)."""
    return Smoker(docker, image, spec, config).run()


def format_text(report: SmokeReport) -> str:
    lines = [r.line() for r in report.results]
    passed = sum(r.ok and not r.warn for r in report.results)
    lines.append(f"{'OK' if report.ok else 'FAILED'}: {report.image}: {passed} passed, {len(report.failures)} failed"
                 + (f", {len(report.warnings)} warnings" if report.warnings else ""))
    return "\n".join(lines)


__all__ = ["smoke", "resolve", "format_text", "SmokeReport", "CheckResult"]
