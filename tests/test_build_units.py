"""Fast tests of the build stage: stanza mapping, BuildKit progress parsing, layer sizes, size
gate, command line, client choice, planning errors. No Docker engine needed."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder import build as b
from builder import build_report as rep
from builder.build_log import Progress, history_stanzas, instructions, step_stanzas
from builder.buildkit import Client, build_command, find_client, probe
from builder.cli import _sigterm_as_interrupt as cli_sigterm
from builder.cli import cli
from builder.errors import BuilderError, UsageError

DOCKERFILE = """\
# header comment
# --- base ---------------------------------------------
FROM example/base:1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive

# --- efa ----------------------------------------------
ARG EFA_VERSION=1.47.0
RUN mkdir -p /tmp/efa \\
# a comment inside the continuation
 && echo "# --- not-a-marker ---" \\
 && rm -rf /tmp/efa
ENV PATH=/opt/amazon/efa/bin:${PATH}

# --- sagemaker-code -----------------------------------
COPY code/ /opt/ml/code/
# --- labels -------------------------------------------
LABEL a="1" \\
      b="2"
"""

PLAIN_FAILURE = """\
#1 [internal] load build definition from Dockerfile
#1 DONE 0.1s
#4 [1/3] FROM docker.io/example/base:1
#4 CACHED
#5 [2/3] RUN mkdir -p /tmp/efa  && echo "# --- not-a-marker ---"  && rm -rf /tmp/efa
#5 0.201 downloading
#5 0.305 sha256sum: WARNING: 1 computed checksum did NOT match
#5 ERROR: executor failed running [/bin/bash -o pipefail -c mkdir -p /tmp/efa]: exit code: 1
------
 > [2/3] RUN mkdir -p /tmp/efa:
------
error: failed to solve: exit code: 1
"""


def test_instructions_map_to_stanzas():
    kinds = [(i.keyword, i.stanza) for i in instructions(DOCKERFILE)]
    assert kinds == [("FROM", "base"), ("SHELL", "base"), ("ARG", "base"), ("ARG", "efa"), ("RUN", "efa"),
                     ("ENV", "efa"), ("COPY", "sagemaker-code"), ("LABEL", "labels")]
    assert step_stanzas(DOCKERFILE) == ["base", "efa", "sagemaker-code"]
    assert [i.keyword for i in history_stanzas(DOCKERFILE)][0] == "SHELL"


def test_progress_names_failed_stanza_and_tail():
    progress = Progress(step_stanzas(DOCKERFILE))
    changes = [progress.feed(line) for line in PLAIN_FAILURE.splitlines()]
    assert [c for c in changes if c] == ["base", "efa"]
    assert progress.failed_stanza == "efa"
    assert progress.failed_step.startswith("[2/3] RUN mkdir")
    assert "exit code: 1" in progress.error
    assert progress.failure_tail() == ["downloading", "sha256sum: WARNING: 1 computed checksum did NOT match"]


def test_progress_without_known_step_falls_back_to_log_end():
    progress = Progress(["base"])
    for line in ["#1 [internal] load metadata", "#1 ERROR: pull access denied for example/base"]:
        progress.feed(line)
    assert progress.failed_stanza is None
    assert progress.failure_tail()[-1].endswith("pull access denied for example/base")


def test_layer_sizes_pair_history_with_instructions():
    rows = [("", 1000)] + [
        ("SHELL [/bin/bash -o pipefail -c]", 0), ("ARG DEBIAN_FRONTEND=noninteractive", 0),
        ("ARG EFA_VERSION=1.47.0", 0), ("RUN |2 DEBIAN_FRONTEND=noninteractive EFA_VERSION=1.47.0 /bin/bash -c ...", 500),
        ("ENV PATH=/opt/amazon/efa/bin:/usr/bin", 0), ("COPY code/ /opt/ml/code/ # buildkit", 20), ("LABEL a=1 b=2", 0)]
    layers = rep.layer_sizes(DOCKERFILE, rows)
    assert rep.per_stanza(layers) == {"base": 0, "efa": 500, "sagemaker-code": 20, "labels": 0}


def test_layer_sizes_mismatch_is_unknown_not_guessed():
    rows = [("WORKDIR /elsewhere", 7)] * 7
    assert {layer["stanza"] for layer in rep.layer_sizes(DOCKERFILE, rows)} == {"unknown"}


def test_size_gate():
    assert rep.size_gate(100, None, 0.2) is None
    ok = rep.size_gate(119, 100, 0.2)
    bad = rep.size_gate(130, 100, 0.2)
    assert ok["ok"] and not bad["ok"] and bad["limit"] == 120
    assert "30% over its baseline" in rep.size_gate_message("img", bad)


def test_exit_codes():
    r = lambda status: rep.ImageResult("x", [], status=status)  # noqa: E731
    assert b.exit_code([r("built"), r("built")]) == 0
    assert b.exit_code([r("built"), r("failed")]) == 1
    assert b.exit_code([r("size-gate"), r("built")]) == b.EXIT_SIZE_GATE
    assert b.exit_code([r("failed"), r("size-gate")]) == 1
    assert b.exit_code([r("interrupted")]) == b.EXIT_INTERRUPTED


def test_build_command_has_no_tags_and_passes_options(tmp_path):
    classic = Client("/usr/bin/docker", "classic", "20.10.24", (("DOCKER_BUILDKIT", "1"),))
    argv = build_command(classic, dockerfile=tmp_path / "Dockerfile", context=tmp_path, iidfile=tmp_path / "iid",
                         network="host", cache_from=("r/c:1",), no_cache=True, build_args=(("A", "1"),))
    assert argv[:2] == ["/usr/bin/docker", "build"] and "-t" not in argv and "--tag" not in argv
    assert argv[argv.index("--network") + 1] == "host" and "--no-cache" in argv and "A=1" in argv
    with pytest.raises(UsageError, match="needs buildx"):
        build_command(classic, dockerfile=tmp_path, context=tmp_path, iidfile=tmp_path, cache_to="type=inline")
    buildx = Client("/x/docker", "buildx", "27.0.0")
    argv = build_command(buildx, dockerfile=tmp_path, context=tmp_path, iidfile=tmp_path, cache_to="type=local,dest=/c")
    assert argv[1:3] == ["buildx", "build"] and "--load" in argv


def _fake_docker(folder: Path, version: str, buildx: bool) -> str:
    path = folder / "docker"
    path.write_text("#!/bin/sh\n"
                    f'if [ "$1" = version ]; then echo "{version}"; exit 0; fi\n'
                    f'if [ "$1" = buildx ]; then exit {0 if buildx else 1}; fi\nexit 1\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_client_choice(tmp_path, monkeypatch):
    (tmp_path / "new").mkdir()
    (tmp_path / "old").mkdir()
    new = _fake_docker(tmp_path / "new", "28.2.2", buildx=False)
    old = _fake_docker(tmp_path / "old", "20.10.24", buildx=False)
    assert isinstance(probe(new), str) and "buildx" in probe(new)
    assert probe(old).kind == "classic" and dict(probe(old).env) == {"DOCKER_BUILDKIT": "1"}
    monkeypatch.setenv("PATH", f"{tmp_path / 'new'}{os.pathsep}{tmp_path / 'old'}")
    monkeypatch.delenv("BUILDER_DOCKER", raising=False)
    chosen = find_client()
    assert chosen.docker == old or chosen.docker in ("/usr/bin/docker", "/usr/local/bin/docker")
    with pytest.raises(BuilderError, match="cannot build with BuildKit"):
        find_client(new)
    with pytest.raises(UsageError, match="not found"):
        find_client(str(tmp_path / "missing"))


def test_parse_build_args():
    assert b.parse_build_args(["A=1", "B="]) == (("A", "1"), ("B", ""))
    with pytest.raises(UsageError):
        b.parse_build_args(["nope"])
    with pytest.raises(UsageError):  # a trailing newline is refused, not dropped
        b.parse_build_args(["A=1\n"])


def test_report_is_written_whole_and_readable(tmp_path):
    path = tmp_path / "sub" / "report.json"
    rep.check_writable(path)
    rep.write_report(path, [rep.ImageResult("img", ["r/img:1"], status="built")], "docker")
    assert json.loads(path.read_text())["ok"] and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no probe or temp file left


SMALL_MATRIX = """\
schema: 1
bases:
  bb:
    image: example/base:1
    ships: {pytorch: "2.6.0a0", cuda: "12.8.0", nccl: "2.25.1", python: "3.11", os: ubuntu24.04}
sources:
  efa_installer: "https://example.com/aws-efa-installer-{version}.tar.gz"
images:
  - name: small
    flavor: nvidia
    base: bb
    components: {efa: "1.47.0"}
"""


def test_plan_refuses_missing_stale_dockerfile_and_unknown_arg(tmp_path):
    (tmp_path / "matrix.yaml").write_text(SMALL_MATRIX)
    run = CliRunner().invoke
    result = run(cli, ["--matrix", str(tmp_path / "matrix.yaml"), "build", "small", "--dry-run"])
    assert result.exit_code == 2 and "images/small/Dockerfile is missing" in result.output
    assert run(cli, ["--matrix", str(tmp_path / "matrix.yaml"), "render", "--all"]).exit_code == 0
    result = run(cli, ["--matrix", str(tmp_path / "matrix.yaml"), "build", "small", "--dry-run",
                       "--network", "host", "--build-arg", "EFA_INSTALLER_VERSION=1.47.0"])
    assert result.exit_code == 0, result.output
    assert "--network host" in result.output and " tag " in result.output and "small:small" in result.output
    result = run(cli, ["--matrix", str(tmp_path / "matrix.yaml"), "build", "small", "--dry-run", "--build-arg", "NOPE=1"])
    assert result.exit_code == 2 and "NOPE is not an ARG of any selected image" in result.output
    dockerfile = tmp_path / "images" / "small" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "RUN true\n")
    result = run(cli, ["--matrix", str(tmp_path / "matrix.yaml"), "build", "small", "--dry-run"])
    assert result.exit_code == 2 and "stale" in result.output


def test_failure_text_names_stanza():
    result = rep.ImageResult("img", [], status="failed", failed_stanza="efa", failed_step="[5/9] RUN x",
                             error="exit code: 1", log_tail=["sha256sum: FAILED"], log="/tmp/l/img.log")
    text = b.failure_text(result)
    assert "stanza 'efa' failed at [5/9] RUN x" in text and "| sha256sum: FAILED" in text and "/tmp/l/img.log" in text


def test_progress_ignores_cached_steps_announced_out_of_order():
    progress = Progress(["base", "efa", "efa", "labels"])
    lines = ["#5 [3/4] RUN b", "#4 [2/4] RUN a", "#6 [4/4] COPY x y", "#3 [1/4] FROM base"]
    assert [progress.feed(line) for line in lines] == ["efa", None, "labels", None]


# -- a scripted docker client, for the paths around the build (tags, signals, errors) -------------

FAKE_DOCKER = r'''#!{python}
"""Fake docker client (test fixture): state in $FAKE_STATE, behaviour from $FAKE_BUILD."""
import json, os, signal, sys, time
state = os.environ["FAKE_STATE"]
args = sys.argv[1:]
def key(ref): return os.path.join(state, "tag-" + ref.replace("/", "_").replace(":", "_"))
if args[0] == "version":
    print("20.10.24"); sys.exit(0)
if args[0] == "buildx":
    sys.exit(1)
if args[0] == "build":
    with open(os.path.join(state, "calls"), "a") as f:
        f.write("build\n")
    iid = args[args.index("--iidfile") + 1]
    if os.environ.get("FAKE_BUILD") == "sleep":
        mark = os.path.join(state, "got-sigint-%d" % os.getpid())
        signal.signal(signal.SIGINT, lambda *a: (open(mark, "w").close(), sys.exit(130)))
        open(os.path.join(state, "started-%d" % os.getpid()), "w").close()
        print("#5 [1/2] FROM example/base:1", flush=True)
        time.sleep(30)
        sys.exit(0)
    open(iid, "w").write("sha256:" + "b" * 64)
    sys.exit(0)
if args[:2] == ["image", "inspect"]:
    ref = args[-1]
    if ref.startswith("sha256:"):
        print(json.dumps({"Id": ref, "Size": 1000})); sys.exit(0)
    if os.path.exists(key(ref)):
        print(json.dumps({"Id": open(key(ref)).read(), "Size": 1000})); sys.exit(0)
    sys.exit(1)
if args[0] == "tag":
    if args[2] in os.environ.get("FAKE_FAIL_TAG", "").split(","):
        print("tag refused", file=sys.stderr); sys.exit(1)
    open(key(args[2]), "w").write(args[1]); sys.exit(0)
if args[0] == "rmi":
    os.remove(key(args[-1])); sys.exit(0)
if args[0] == "history":
    sys.exit(0)
sys.exit(1)
'''


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    state = tmp_path / "state"
    state.mkdir()
    path = tmp_path / "bin" / "docker"
    path.parent.mkdir()
    path.write_text(FAKE_DOCKER.replace("{python}", sys.executable))
    path.chmod(0o755)
    monkeypatch.setenv("FAKE_STATE", str(state))
    return Client(str(path), "classic", "20.10.24", (("DOCKER_BUILDKIT", "1"),)), state


def _plans(tmp_path, client, spec, log_dir):
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    p = b.Plan(spec, tmp_path / "Dockerfile", DOCKERFILE, step_stanzas(DOCKERFILE))
    p.iidfile = log_dir / f"{spec.name}.iid"
    p.argv = build_command(client, dockerfile=p.dockerfile, context=tmp_path, iidfile=p.iidfile)
    return [p]


class _Quiet(b.Reporter):
    def __init__(self, names):
        super().__init__(names, stream=open(os.devnull, "w"))


def test_tags_all_or_none(fake_docker, tmp_path, monkeypatch, bundled_matrix):
    """A tag failing half-way puts the tags already moved back where they were."""
    client, state = fake_docker
    spec = next(s for s in bundled_matrix.images if len(s.refs) >= 2)
    first, second = spec.refs[:2]
    (state / ("tag-" + first.replace("/", "_").replace(":", "_"))).write_text("sha256:old")
    monkeypatch.setenv("FAKE_FAIL_TAG", second)
    builder = b.Builder(client, b.BuildOptions(), tmp_path, _Quiet([spec.name]))
    [result] = builder.run(_plans(tmp_path, client, spec, tmp_path))
    assert result.status == "failed" and "tag" in result.error
    tags = {p.name: p.read_text() for p in state.glob("tag-*")}
    assert tags == {"tag-" + first.replace("/", "_").replace(":", "_"): "sha256:old"}


def test_sigterm_stops_parallel_builds_like_ctrl_c(fake_docker, tmp_path, monkeypatch, bundled_matrix):
    """-j 2, then SIGTERM (how CI cancels): both build clients are told to cancel, nothing is tagged."""
    client, state = fake_docker
    monkeypatch.setenv("FAKE_BUILD", "sleep")
    specs = bundled_matrix.images[:2]
    plans = [p for spec in specs for p in _plans(tmp_path, client, spec, tmp_path)]
    builder = b.Builder(client, b.BuildOptions(jobs=2), tmp_path, _Quiet([s.name for s in specs]))
    def cancel_when_both_run():
        for _ in range(600):
            if len(list(state.glob("started-*"))) == 2:
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    # builder.cli.main turns SIGTERM into KeyboardInterrupt for every verb; the same here.
    previous = signal.signal(signal.SIGTERM, cli_sigterm)
    try:
        threading.Thread(target=cancel_when_both_run, daemon=True).start()
        with pytest.raises(b.Interrupted) as stop:
            builder.run(plans)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert [r.status for r in stop.value.results] == ["interrupted", "interrupted"]
    assert len(list(state.glob("got-sigint-*"))) == 2  # each build client was told to cancel
    assert not list(state.glob("tag-*"))


def test_worker_error_fails_the_image_not_the_run(fake_docker, tmp_path, bundled_matrix):
    client, _ = fake_docker
    spec = bundled_matrix.images[0]
    plans = _plans(tmp_path, client, spec, tmp_path)
    plans[0].argv[0] = str(tmp_path / "no-such-docker")
    [result] = b.Builder(client, b.BuildOptions(), tmp_path, _Quiet([spec.name])).run(plans)
    assert result.status == "failed" and result.error.startswith("cannot build:") and "no-such-docker" in result.error


def test_history_keeps_a_multi_line_step_whole(tmp_path):
    """A heredoc RUN spans lines: one history entry still, paired with its size (oldest first)."""
    docker = tmp_path / "docker"
    docker.write_text("#!/bin/sh\nprintf '%s\\t%s\\n' 12 '\"RUN <<EOF\\nset -e\\nEOF\"' 0 '\"ADD file:abc in /\"'\n")
    docker.chmod(0o755)
    assert rep.history(str(docker), "img") == [("ADD file:abc in /", 0), ("RUN <<EOF\nset -e\nEOF", 12)]


def test_size_gate_names_the_largest_layers():
    layers = [{"stanza": "build-tools", "instruction": "RUN apt-get install", "size": 300},
              {"stanza": "efa", "instruction": "RUN efa", "size": 500},
              {"stanza": "efa", "instruction": "ENV X=1", "size": 0},
              {"stanza": "labels", "instruction": "LABEL a=1", "size": 0}]
    gate = rep.size_gate(2000, 1000, 0.2, layers)
    assert not gate["ok"] and gate["base_size"] == 1200
    assert [layer["stanza"] for layer in gate["largest_layers"]] == ["efa", "build-tools"]
    assert gate["largest_stanzas"] == [{"stanza": "efa", "size": 500}, {"stanza": "build-tools", "size": 300}]
    text = rep.size_gate_message("img", gate)
    assert "largest stanzas: efa 500 B, build-tools 300 B; base image 1.2 kB" in text
    assert "stanza efa: RUN efa" in text.splitlines()[2]
    assert "largest_layers" not in rep.size_gate(100, 1000, 0.2, layers)


def test_dry_run_is_a_script_that_runs(fake_docker, tmp_path, monkeypatch):
    """The printed commands, pasted into bash, build and then tag from the iid file."""
    client, state = fake_docker
    (tmp_path / "matrix.yaml").write_text(SMALL_MATRIX)
    run = CliRunner().invoke
    assert run(cli, ["--matrix", str(tmp_path / "matrix.yaml"), "render", "--all"]).exit_code == 0
    monkeypatch.setenv("BUILDER_DOCKER", client.docker)
    result = run(cli, ["--matrix", str(tmp_path / "matrix.yaml"), "build", "small", "small", "--dry-run",
                       "--report", str(tmp_path / "plan.json")])
    assert result.exit_code == 0, result.output
    assert result.output.count("# small: stanzas") == 1  # a name given twice is built once
    proc = subprocess.run(["bash", "-c", result.output], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (state / "tag-small_small").read_text() == "sha256:" + "b" * 64
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["dry_run"] and [i["status"] for i in plan["images"]] == ["planned"]
    assert plan["images"][0]["command"][1] == "build"


def test_cli_one_line_errors_before_building(fake_docker, tmp_path, monkeypatch):
    client, state = fake_docker
    (tmp_path / "matrix.yaml").write_text(SMALL_MATRIX)
    run = CliRunner().invoke
    assert run(cli, ["--matrix", str(tmp_path / "matrix.yaml"), "render", "--all"]).exit_code == 0
    monkeypatch.setenv("BUILDER_DOCKER", client.docker)
    (tmp_path / "a-file").write_text("")
    matrix = ["--matrix", str(tmp_path / "matrix.yaml")]
    for args, message in [
        (["--log-dir", str(tmp_path / "a-file")], "--log-dir"),
        (["--log-dir", "/proc/builder-test"], "--log-dir"),
        (["--report", str(tmp_path)], "is a directory"),
        (["--report", "/proc/builder-test/r.json"], "--report"),
        (["--build-arg", "EFA_INSTALLER_VERSION=1.43.2"], "change the matrix instead"),
    ]:
        result = run(cli, [*matrix, "build", "small", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
        assert len([line for line in result.output.splitlines() if line.lower().startswith("error:")]) == 1
    assert not (state / "calls").exists()  # nothing was built


def test_no_buildkit_client_is_exit_2(tmp_path, monkeypatch):
    (tmp_path / "matrix.yaml").write_text(SMALL_MATRIX)
    new = _fake_docker(tmp_path, "28.2.2", buildx=False)
    result = CliRunner().invoke(cli, ["--matrix", str(tmp_path / "matrix.yaml"), "build", "small", "--docker", new])
    assert result.exit_code == 2 and "cannot build with BuildKit" in result.output


def test_cache_refs_per_image(tmp_path):
    buildx = Client("/x/docker", "buildx", "27.0.0")
    assert b._per_image("type=registry,ref=r/cache:{name}", "img-a") == "type=registry,ref=r/cache:img-a"
    argv = build_command(buildx, dockerfile=tmp_path, context=tmp_path, iidfile=tmp_path, builder="ci")
    assert argv[argv.index("--builder") + 1] == "ci"
    classic = Client("/usr/bin/docker", "classic", "20.10.24", (("DOCKER_BUILDKIT", "1"),))
    with pytest.raises(UsageError, match="--builder needs buildx"):
        build_command(classic, dockerfile=tmp_path, context=tmp_path, iidfile=tmp_path, builder="ci")
