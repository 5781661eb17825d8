"""The compile tests' project: tests/fixtures/compile-project/matrix.yaml filled in with the CUDA
stand-in base, a local git server (gitserver.py) and a fixture HTTP server holding stand-in EFA
installers with a real libfabric (efa_libfabric.py), rendered with the real CLI. Also the
per-stanza timings of a build, read back from BuildKit's plain progress log.

By hand: ``python tests/integration/compile_project.py /tmp/cproj`` prepares a project, starts the
servers and waits; then ``builder --matrix /tmp/cproj/matrix.yaml build --all --network host``.
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "compile-project"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import cuda_standins  # noqa: E402
import efa_libfabric  # noqa: E402
import gitserver  # noqa: E402
import harness  # noqa: E402
from gitserver import GitServer  # noqa: E402

from builder.build_log import VERTEX_RE, step_stanzas  # noqa: E402

EFA_VERSIONS = ("1.37.0",)


def file_server(folder: Path) -> harness.FixtureServer:
    """The fixture HTTP server on its preferred port (a stable efa layer), else a free one."""
    try:
        return harness.FixtureServer(folder, gitserver.preferred_port("builder-compile-files"))
    except OSError:
        return harness.FixtureServer(folder)


def prepare(root: Path, files: Path, http: harness.FixtureServer, git: GitServer) -> harness.Project:
    data = yaml.safe_load((FIXTURE / "matrix.yaml").read_text())
    base = cuda_standins.cuda_standin(data["bases"]["standin-ngc-cuda"]["ships"], ngc=True)
    text = (FIXTURE / "matrix.yaml").read_text()
    for version in EFA_VERSIONS:
        _, digest = efa_libfabric.efa_installer(version, files)
        text = text.replace(f"@EFA_SHA256_{version}@", digest)
    text = text.replace("@FIXTURE_URL@", http.url).replace("@GIT_URL@", git.url).replace("@NGC_CUDA_IMAGE@", base)
    root.mkdir(parents=True, exist_ok=True)
    (root / "matrix.yaml").write_text(text)
    project = harness.Project(root, root / "matrix.yaml", http)
    rendered = project.cli("render", "--all")
    if rendered.returncode != 0:
        raise RuntimeError(f"builder render --all failed: {rendered.stderr}")
    return project


DONE_RE = re.compile(r"^#(\d+) (DONE|CACHED|ERROR)\b ?(\d+(?:\.\d+)?)?")
STAMP_RE = re.compile(r"^#(\d+) (\d+(?:\.\d+)?) ")


def stanza_seconds(dockerfile: str, log: str) -> dict[str, float]:
    """Seconds each stanza's steps took, from `--progress plain` lines ('#7 [stage-0 5/12] RUN ...'
    then '#7 DONE 81.2s'; a failed step: its last output time stamp); a cached step counts 0."""
    stanzas = step_stanzas(dockerfile)
    vertex_step: dict[str, int] = {}
    last_stamp: dict[str, float] = {}
    out: dict[str, float] = {}
    for line in log.splitlines():
        m = VERTEX_RE.match(line)
        if m:
            vertex_step[m.group(1)] = int(m.group(2))
            continue
        m = STAMP_RE.match(line)
        if m:
            last_stamp[m.group(1)] = float(m.group(2))
            continue
        m = DONE_RE.match(line)
        if m and m.group(1) in vertex_step:
            index = vertex_step[m.group(1)] - 1
            if 0 <= index < len(stanzas):
                seconds = {"CACHED": 0.0, "DONE": float(m.group(3) or 0)}.get(m.group(2), last_stamp.get(m.group(1), 0.0))
                out[stanzas[index]] = out.get(stanzas[index], 0.0) + seconds
    return out


def timing_lines(name: str, seconds: dict[str, float]) -> list[str]:
    total = sum(seconds.values())
    rows = [f"{name}: {total:.0f} s in build steps"]
    rows += [f"  {stanza:<18} {s:8.1f} s" for stanza, s in seconds.items()]
    return rows


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/builder-compile")
    served = target / "_files"
    served.mkdir(parents=True, exist_ok=True)
    with file_server(served) as srv, GitServer() as gsrv:
        proj = prepare(target, served, srv, gsrv)
        print(f"project {proj.root} ready; files {srv.url}; git {gsrv.url}; Ctrl-C to stop", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    shutil.rmtree(served, ignore_errors=True)
