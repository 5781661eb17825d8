"""Fast tests of the build stage: stanza mapping, BuildKit progress parsing, layer sizes, size
gate, command line, client choice, planning errors. No Docker engine needed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder import build as b
from builder import build_report as rep
from builder.build_log import Progress, history_stanzas, instructions, step_stanzas
from builder.buildkit import Client, build_command, find_client, probe
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
    assert "--network host" in result.output and "tag" in result.output and "small:small" in result.output
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
