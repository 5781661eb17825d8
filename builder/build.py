"""Build images of the matrix with BuildKit: plan, run (N at a time), tag, measure, report.

The Dockerfile built is the committed ``images/<name>/Dockerfile``, and only when it equals a
fresh render (what reviewers saw is what gets built). The build itself runs untagged with
``--iidfile``; the matrix's tags are applied only after it succeeded, so Ctrl-C or a failure
never leaves a tag on a half-built image. Each build's full log goes to ``<log-dir>/<name>.log``;
a failure names the stanza whose step failed and shows the end of that step's output.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from builder import build_report as rep
from builder.bake import build_args
from builder.build_log import Progress, Reporter, step_stanzas
from builder.buildkit import Client, build_command, engine_answers, engine_down_message, image_inspect, last_line
from builder.errors import BuilderError, UsageError
from builder.matrix import ImageSpec
from builder.render import Renderer, dockerfile_path

ARG_RE = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)", re.M)
# ARGs that carry a matrix component (version, wheel, checksum): the image's labels and smoke
# expectations come from the matrix, so a --build-arg may not change them behind its back.
COMPONENT_ARG_RE = re.compile(r"_(?:VERSION|WHEEL|SHA256)$")
BUILD_ARG_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)")  # fullmatch: a trailing newline is refused
# BuildKit's own knobs may be passed although no Dockerfile declares them.
BUILTIN_ARGS = {"BUILDKIT_INLINE_CACHE", "BUILDKIT_MULTI_PLATFORM", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                "FTP_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy", "ftp_proxy", "all_proxy"}
EXIT_SIZE_GATE = 3  # every image built, but one is over its size baseline
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class BuildOptions:
    network: str | None = None
    cache_from: tuple[str, ...] = ()  # "{name}" is replaced by each image's name
    cache_to: str | None = None
    builder: str | None = None  # buildx builder instance
    no_cache: bool = False
    build_args: tuple[tuple[str, str], ...] = ()
    jobs: int = 1
    size_gate: bool = True
    tail_lines: int = 30


@dataclass
class Plan:
    spec: ImageSpec
    dockerfile: Path
    text: str
    steps: list[str]
    argv: list[str] = field(default_factory=list)
    iidfile: Path | None = None


def parse_build_args(values: Iterable[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for value in values:
        m = BUILD_ARG_RE.fullmatch(value)
        if not m:
            raise UsageError(f"--build-arg {value!r}: expected NAME=VALUE")
        out.append((m.group(1), m.group(2)))
    return tuple(out)


def plan(root: Path, specs: list[ImageSpec], client: Client, options: BuildOptions, work: Path) -> list[Plan]:
    """Check every Dockerfile is present and current and every --build-arg is declared; all
    problems at once, before anything is built."""
    renderer = Renderer()
    problems, plans, declared_any = [], [], set()
    for spec in specs:
        path = dockerfile_path(root, spec)
        text = renderer.render(spec).dockerfile
        if not path.is_file():
            problems.append(f"{path.relative_to(root)} is missing: run 'builder render {spec.name}'")
            continue
        if path.read_text(encoding="utf-8") != text:
            problems.append(f"{path.relative_to(root)} is stale (differs from a fresh render): "
                            f"run 'builder render {spec.name}' and review the diff")
            continue
        declared = set(ARG_RE.findall(text))
        declared_any |= declared
        defaults = build_args(text)
        # An override goes to the images that declare the ARG (one EFA version for the nvidia
        # images of a mixed selection); BuildKit's own knobs go to all.
        args = tuple((k, v) for k, v in options.build_args if k in declared or k in BUILTIN_ARGS)
        for key, value in args:
            if COMPONENT_ARG_RE.search(key) and key in defaults and defaults[key] != value:
                problems.append(f"--build-arg {key}={value}: {spec.name} is tagged, labelled and smoke-checked with "
                                f"{key}={defaults[key]} from the matrix; change the matrix instead "
                                f"(try it with 'builder render {spec.name} --set ... --stdout')")
        p = Plan(spec, path, text, step_stanzas(text))
        p.iidfile = work / f"{spec.name}.iid"
        p.argv = build_command(client, dockerfile=path, context=root, iidfile=p.iidfile, network=options.network,
                               cache_from=tuple(_per_image(ref, spec.name) for ref in options.cache_from),
                               cache_to=_per_image(options.cache_to, spec.name) if options.cache_to else None,
                               no_cache=options.no_cache, build_args=args, builder=options.builder)
        plans.append(p)
    for key, _ in options.build_args:
        if plans and key not in declared_any and key not in BUILTIN_ARGS:
            problems.append(f"--build-arg {key} is not an ARG of any selected image's Dockerfile "
                            f"(declared: {', '.join(sorted(declared_any)) or 'none'})")
    if problems:
        raise UsageError("\n".join(problems))
    return plans


def _per_image(value: str, name: str) -> str:
    """A cache reference or spec for one image: '{name}' becomes the image's name, so that with
    several images each gets its own cache instead of overwriting the others'."""
    return value.replace("{name}", name)


DRY_RUN_DIR = "@BUILDER_LOG_DIR@"  # stands for the log folder in the printed commands


def dry_run_lines(plans: list[Plan], client: Client, log_dir: Path | None = None) -> list[str]:
    """A bash script: each image's build, and its tags only when the build succeeded."""
    env = " ".join(f"{k}={v}" for k, v in client.env)
    folder = shlex.quote(str(log_dir)) if log_dir else '"$(mktemp -d)"'
    lines = ["# builder build --dry-run: paste into bash", f"log_dir={folder} && mkdir -p \"$log_dir\""]

    def words(argv: list[str]) -> str:
        return shlex.join(argv).replace(DRY_RUN_DIR, '"$log_dir"')

    for p in plans:
        iid = f'"$(cat "$log_dir"/{p.iidfile.name})"'
        lines.append(f"# {p.spec.name}: stanzas {', '.join(p.spec.stanzas)}")
        steps = [(env + " " if env else "") + words(p.argv)]
        steps += [f"{shlex.quote(client.docker)} tag {iid} {shlex.quote(ref)}" for ref in p.spec.refs]
        lines.append(" \\\n  && ".join(steps))
    return lines


class Builder:
    def __init__(self, client: Client, options: BuildOptions, log_dir: Path, reporter: Reporter):
        self.client, self.options, self.log_dir, self.reporter = client, options, log_dir, reporter
        self.stop = threading.Event()
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def run(self, plans: list[Plan]) -> list[rep.ImageResult]:
        """Build all plans, options.jobs at a time. A failure does not stop the others; Ctrl-C
        or SIGTERM (how CI cancels a job) stops every running build and reports the unfinished
        ones as interrupted."""
        results = {p.spec.name: rep.ImageResult(p.spec.name, list(p.spec.refs)) for p in plans}
        pool = ThreadPoolExecutor(max_workers=max(1, self.options.jobs))
        try:
            futures = {pool.submit(self._build_one_safely, p, results[p.spec.name]): p for p in plans}
            pending = set(futures)
            while pending:
                _, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM: builder.cli.main raises it for both
            self.interrupt()
            pool.shutdown(wait=True, cancel_futures=True)
            for result in results.values():
                if result.status in ("pending", "running"):
                    result.status = "interrupted"
            raise _Interrupted(list(results.values()))
        pool.shutdown(wait=True)
        return list(results.values())

    def _build_one_safely(self, p: Plan, result: rep.ImageResult) -> None:
        """A worker never raises: whatever goes wrong (a log that cannot be written, a client that
        cannot start) fails this image with one line, and the others and the report go on."""
        try:
            self._build_one(p, result)
        except Exception as exc:  # noqa: BLE001 - reported as this image's failure, never a traceback
            result.status = "failed"
            what = str(exc) if isinstance(exc, (BuilderError, OSError)) else f"{type(exc).__name__}: {exc}"
            result.error = f"cannot build: {what}"
            self.reporter.update(p.spec.name, f"FAILED: {result.error}")

    def interrupt(self) -> None:
        self.stop.set()
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(2)  # SIGINT: the client cancels the BuildKit solve
        deadline = time.monotonic() + 15
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()

    def _build_one(self, p: Plan, result: rep.ImageResult) -> None:
        name = p.spec.name
        if self.stop.is_set():
            result.status = "interrupted"
            return
        result.status = "running"
        log_path = self.log_dir / f"{name}.log"
        result.log = str(log_path)
        progress = Progress(p.steps, tail_lines=self.options.tail_lines)
        self.reporter.update(name, "starting")
        start = time.monotonic()
        p.iidfile.unlink(missing_ok=True)
        code = self._run_build(p, progress, log_path, start)
        result.duration_s = round(time.monotonic() - start, 1)
        if self.stop.is_set():
            result.status = "interrupted"
            self.reporter.update(name, "interrupted (nothing tagged)")
            return
        if code != 0 or not p.iidfile.is_file():
            result.status = "failed"
            result.failed_stanza = progress.failed_stanza
            result.failed_step = progress.failed_step
            result.error = progress.error or f"build exited {code}"
            result.log_tail = progress.failure_tail()
            where = f"stanza {progress.failed_stanza}" if progress.failed_stanza else "before any stanza ran"
            self.reporter.update(name, f"FAILED in {where} after {result.duration_s:.0f}s (log: {log_path})")
            return
        image_id = p.iidfile.read_text().strip()
        if self.stop.is_set():  # stopped while the build was finishing: tag nothing
            result.status = "interrupted"
            self.reporter.update(name, "interrupted (nothing tagged)")
            return
        try:
            self._tag_all(image_id, list(p.spec.refs))
            result.image_id = image_id
            self._measure(p, result)
        except (subprocess.CalledProcessError, BuilderError) as exc:
            result.status = "failed"
            what = (f"'{' '.join(exc.cmd[1:3])}' failed: {last_line(exc.stderr) or 'no output'}"
                    if isinstance(exc, subprocess.CalledProcessError) else str(exc))
            result.error = f"built {image_id[7:19]} but {what}"
            self.reporter.update(name, f"FAILED after the build: {result.error}")
            return
        gate = result.size_gate
        if gate is not None and not gate["ok"] and self.options.size_gate:
            result.status = "size-gate"
            self.reporter.update(name, f"built {result.image_id[7:19]}, {rep.human(result.size)}: OVER SIZE GATE "
                                       f"(limit {rep.human(gate['limit'])})")
            return
        result.status = "built"
        self.reporter.update(name, f"built {result.image_id[7:19]}, {rep.human(result.size)} "
                                   f"in {result.duration_s:.0f}s")

    def _run_build(self, p: Plan, progress: Progress, log_path: Path, start: float) -> int:
        """The build command, its output to the log and its progress to the reporter; its exit code."""
        name = p.spec.name
        with open(log_path, "w", encoding="utf-8") as log:
            log.write("$ " + shlex.join(p.argv) + "\n")
            log.flush()
            proc = subprocess.Popen(p.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    errors="replace", env=self.client.environ(), start_new_session=True)
            with self._lock:
                self._procs[name] = proc
            for line in proc.stdout:
                log.write(line)
                changed = progress.feed(line)
                if changed:
                    index = p.steps.index(changed) + 1
                    self.reporter.update(name, f"stanza {changed} (step {index}/{len(p.steps)}, "
                                               f"{time.monotonic() - start:.0f}s)")
            code = proc.wait()
            with self._lock:
                self._procs.pop(name, None)
        return code

    def _docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A short docker command in its own session: Ctrl-C in the terminal must not kill it
        halfway through the tags."""
        return subprocess.run([self.client.docker, *args], check=check, capture_output=True, text=True,
                              start_new_session=True)

    def _tag_all(self, image_id: str, refs: list[str]) -> None:
        """All the matrix's tags, or none: when one fails, the tags already moved go back to
        where they pointed before (or are removed when they are new)."""
        before = {ref: (image_inspect(self.client.docker, ref) or {}).get("Id") for ref in refs}
        done = []
        try:
            for ref in refs:
                self._docker("tag", image_id, ref)
                done.append(ref)
        except subprocess.CalledProcessError:
            for ref in done:
                if before[ref]:
                    self._docker("tag", before[ref], ref, check=False)
                elif before[ref] is None:
                    self._docker("rmi", "--no-prune", ref, check=False)
            raise

    def _measure(self, p: Plan, result: rep.ImageResult) -> None:
        result.size = rep.image_size(self.client.docker, result.image_id)
        result.layers = rep.layer_sizes(p.text, rep.history(self.client.docker, result.image_id))
        result.stanza_sizes = rep.per_stanza(result.layers)
        result.size_gate = rep.size_gate(result.size, p.spec.size_baseline, p.spec.size_tolerance, result.layers)


class _Interrupted(Exception):
    def __init__(self, results):
        super().__init__("interrupted")
        self.results = results


Interrupted = _Interrupted


def _short(text: str, limit: int = 110) -> str:
    text = re.sub(r"--mount=\S+\s+", "", " ".join(text.split()))  # cache mounts say nothing about the failure
    return text if len(text) <= limit else text[: limit - 3] + "..."


def failure_text(result: rep.ImageResult) -> str:
    where = (f"stanza '{result.failed_stanza}' failed" if result.failed_stanza
             else "the build failed before any stanza ran")
    error = result.error or ""
    m = re.match(r"^(?:executor failed running|process) .*?: (exit code: \d+|did not complete successfully.*)$", error)
    error = m.group(1) if m else _short(error, 300)
    lines = [f"{result.name}: {where}" + (f" at {_short(result.failed_step)}" if result.failed_step else "")
             + (f": {error}" if error else "")]
    lines += [f"  | {line}" for line in result.log_tail]
    if result.log:
        lines.append(f"  full log: {result.log}")
    return "\n".join(lines)


def exit_code(results: list[rep.ImageResult]) -> int:
    if any(r.status in ("failed",) for r in results):
        return 1
    if any(r.status == "interrupted" for r in results):
        return EXIT_INTERRUPTED
    if any(r.status == "size-gate" for r in results):
        return EXIT_SIZE_GATE
    return 0


def default_log_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="builder-build-logs-"))


def prepare_log_dir(log_dir: Path | None) -> Path:
    """The log folder, created and proven writable before anything is built."""
    if not log_dir:
        try:
            return default_log_dir()
        except OSError as exc:
            raise BuilderError(f"cannot create a temporary log folder ({exc.strerror}); set TMPDIR or pass --log-dir")
    log_dir = Path(log_dir)
    try:
        rep.probe_writable(log_dir)
    except OSError as exc:
        raise UsageError(f"--log-dir {log_dir}: cannot write build logs there ({exc.strerror or exc}); "
                         "choose a writable folder")
    return log_dir


def build(
    root: Path,
    specs: list[ImageSpec],
    client: Client,
    options: BuildOptions,
    log_dir: Path | None = None,
    reporter_factory: Callable[[list[str]], Reporter] = Reporter,
) -> list[rep.ImageResult]:
    """Python entry point: build and tag the images; returns one result per image. The engine is
    asked first, so that no log folder is made for nothing when it does not answer."""
    problem = engine_answers(client)
    if problem:
        raise BuilderError(engine_down_message(client.docker, problem))
    log_dir = prepare_log_dir(log_dir)
    plans = plan(root, specs, client, options, log_dir)
    reporter = reporter_factory([p.spec.name for p in plans])
    reporter.note(f"building {len(plans)} image(s) with {client.describe()}, {options.jobs} at a time; "
                  f"logs in {log_dir}")
    return Builder(client, options, log_dir, reporter).run(plans)
