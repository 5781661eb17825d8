"""Find a Docker client that can build with BuildKit, and spell its build command.

Two kinds work: a client with the buildx plugin (``docker buildx build``), or a classic client
older than 23.0 with ``DOCKER_BUILDKIT=1`` (its built-in BuildKit). Newer clients without
buildx refuse BuildKit builds, and the legacy builder cannot run ``RUN --mount``, so such a
client is skipped with the reason recorded for the error message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from builder.errors import BuilderError, UsageError

DOCKER_ENV = "BUILDER_DOCKER"
CLASSIC_BUILDKIT_BEFORE = Version("23.0")  # from 23.0 the client needs buildx for BuildKit
KNOWN_PATHS = ("/usr/bin/docker", "/usr/local/bin/docker")


@dataclass(frozen=True)
class Client:
    docker: str  # the docker binary (also used for inspect/tag/run)
    kind: str  # "buildx" | "classic"
    version: str
    env: tuple[tuple[str, str], ...] = ()

    def build_argv(self) -> list[str]:
        return [self.docker, "buildx", "build"] if self.kind == "buildx" else [self.docker, "build"]

    def environ(self) -> dict[str, str]:
        return {**os.environ, **dict(self.env)}

    def describe(self) -> str:
        how = "buildx" if self.kind == "buildx" else "classic client, DOCKER_BUILDKIT=1"
        return f"{self.docker} {self.version} ({how})"


def _run(argv: list[str], timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def probe(path: str) -> Client | str:
    """A usable Client for this binary, or the reason it cannot build with BuildKit."""
    try:
        version = _run([path, "version", "--format", "{{.Client.Version}}"])
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run: {exc}"
    client_version = (version.stdout or "").strip().splitlines()[0] if version.stdout.strip() else "?"
    try:
        buildx = _run([path, "buildx", "version"])
        if buildx.returncode == 0:
            return Client(path, "buildx", client_version)
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        if Version(client_version.split("+")[0].split("-")[0]) < CLASSIC_BUILDKIT_BEFORE:
            return Client(path, "classic", client_version, (("DOCKER_BUILDKIT", "1"),))
    except InvalidVersion:
        return f"unknown client version {client_version!r}"
    return f"client {client_version} has no buildx plugin (and from 23.0 needs it for BuildKit)"


def candidates() -> list[str]:
    """docker binaries on PATH first, then the usual install locations, each once."""
    seen: list[str] = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(folder, "docker")
        if os.access(path, os.X_OK):
            real = os.path.realpath(path)
            if real not in (os.path.realpath(p) for p in seen):
                seen.append(path)
    for path in KNOWN_PATHS:
        if os.access(path, os.X_OK) and os.path.realpath(path) not in (os.path.realpath(p) for p in seen):
            seen.append(path)
    return seen


def docker_path(preferred: str | None = None) -> str:
    """The docker binary the user named (option or $BUILDER_DOCKER: a path or a name on PATH),
    else the first one found; for verbs that only run, inspect and tag."""
    preferred = preferred or os.environ.get(DOCKER_ENV) or None
    if preferred:
        path = preferred if os.sep in preferred else shutil.which(preferred)
        if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
            raise UsageError(f"docker client '{preferred}' (--docker or ${DOCKER_ENV}) not found or not executable")
        return path
    found = candidates()
    if not found:
        raise UsageError(f"no docker client on PATH; install one or pass its path with --docker or ${DOCKER_ENV}")
    return found[0]


def find_client(preferred: str | None = None) -> Client:
    """The client to build with: the one the user named (option or $BUILDER_DOCKER), else the
    first candidate that can use BuildKit. Raises with every candidate's reason otherwise (a
    usage error, exit 2: the fix is on this machine, not in the matrix or the build)."""
    preferred = preferred or os.environ.get(DOCKER_ENV) or None
    if preferred:
        path = docker_path(preferred)
        found = probe(path)
        if isinstance(found, str):
            raise UsageError(f"{path} cannot build with BuildKit: {found}; "
                             "install the buildx plugin or choose another client with --docker")
        return found
    reasons = []
    for path in candidates():
        found = probe(path)
        if isinstance(found, Client):
            return found
        reasons.append(f"{path}: {found}")
    detail = "; ".join(reasons) if reasons else "no docker binary on PATH"
    raise UsageError(f"no Docker client can build with BuildKit ({detail}); install docker-buildx "
                       f"or a docker client older than 23.0, and pass it with --docker or ${DOCKER_ENV}")


def last_line(text: str | None, limit: int = 300) -> str:
    """The last non-blank line of a command's output (what says why it failed), at most limit
    characters; "" when there is none."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


def image_inspect(docker: str, ref: str) -> dict | None:
    """`docker image inspect` of one image (Id, Size, Config with its Env and Labels), or None
    when the engine has no such image. In its own session, so that a Ctrl-C meant for us cannot
    kill it and make an existing tag look absent (build's all-or-none tagging relies on it)."""
    proc = subprocess.run([docker, "image", "inspect", "--format", "{{json .}}", ref], capture_output=True,
                          text=True, errors="replace", start_new_session=True)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout or "null") or {}


def engine_answers(client: Client | str) -> str | None:
    """None when the engine answers, else its error (one line). `docker version` rather than
    `docker info`: with the engine down, info's --format can print a template error instead of
    the reason."""
    docker = client.docker if isinstance(client, Client) else client
    try:
        proc = _run([docker, "version", "--format", "{{.Server.Version}}"], timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if proc.returncode == 0 and proc.stdout.strip():
        return None
    return last_line(proc.stderr or proc.stdout) or f"docker version exited {proc.returncode}"


def engine_down_message(docker: str, problem: str) -> str:
    return (f"the Docker engine does not answer through {docker}: {problem}; "
            "start dockerd (scripts/setup-host.sh does) or set DOCKER_HOST")


def build_command(
    client: Client,
    *,
    dockerfile: Path,
    context: Path,
    iidfile: Path,
    network: str | None = None,
    cache_from: tuple[str, ...] = (),
    cache_to: str | None = None,
    no_cache: bool = False,
    build_args: tuple[tuple[str, str], ...] = (),
    builder: str | None = None,
) -> list[str]:
    """The build command. No -t: tags are applied only after a successful build, so a stopped
    or failed build never leaves a tag pointing at a half-built or stale image."""
    if cache_to and client.kind != "buildx":
        raise UsageError(f"--cache-to needs buildx; {client.describe()} cannot export a cache "
                         "(use --cache-from with an image built with BUILDKIT_INLINE_CACHE=1)")
    if builder and client.kind != "buildx":
        raise UsageError(f"--builder needs buildx; {client.describe()} builds with the engine's own BuildKit")
    argv = client.build_argv() + ["--progress", "plain", "--file", str(dockerfile), "--iidfile", str(iidfile)]
    if client.kind == "buildx":
        if builder:
            argv += ["--builder", builder]
        argv.append("--load")
    if network:
        argv += ["--network", network]
    for ref in cache_from:
        argv += ["--cache-from", ref]
    if cache_to:
        argv += ["--cache-to", cache_to]
    if no_cache:
        argv.append("--no-cache")
    for key, value in build_args:
        argv += ["--build-arg", f"{key}={value}"]
    argv.append(str(context))
    return argv


def sdk_client(timeout: float):
    """A Docker SDK client of the engine, checked to answer: the one way push and export (which
    stream layers and push progress through the engine API) reach it."""
    import docker

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        raise BuilderError(f"cannot reach the Docker engine ({exc.__class__.__name__}: {exc}); "
                           "start dockerd or set DOCKER_HOST") from None
    return client
