"""Compile for real: the stanzas that build software from source, built through `builder build`
with the real templates on a CUDA 13 stand-in base (Debian + NVIDIA's PyPI wheels), from the
upstream sources (../shared/upstream bundles, served by a local git server through the matrix's
`sources:`), then smoke-tested with the linking checks:

- itest-cuda-current: GDRCopy 2.5.1, NCCL 2.28.9 from source for one GPU architecture (SM 80),
  aws-ofi-nccl 1.21.1 against a real libfabric, nccl-tests 2.19.6 with MPI=1 against the
  installer's Open MPI and the pinned NCCL;
- itest-cuda-ofi-aws: aws-ofi-nccl 1.12.1-aws (the -aws era, autogen.sh);
- a copy of the templates with libhwloc-dev taken out of aws-ofi-nccl's apt list: the build fails
  in stanza aws-ofi-nccl, at configure's hwloc check.

PyTorch and xformers from source are not built (hours on two cores): see docs/compile.md.
Per-stanza build seconds are printed (pytest -s, or the terminal summary).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

import compile_project
import cuda_standins
import gitserver
import harness
import standins
from prereq import need

pytestmark = pytest.mark.integration

DOCKER = standins.DOCKER
CURRENT = "builder-itest/nvidia:itest-cuda-current"
OFI_AWS = "builder-itest/nvidia:itest-cuda-ofi-aws"
TIMINGS: list[str] = []


@pytest.fixture(scope="module")
def compile_proj(tmp_path_factory):
    engine = os.path.exists(DOCKER) and subprocess.run([DOCKER, "info"], capture_output=True).returncode == 0
    need(engine, "no Docker engine answers through /usr/bin/docker (run scripts/setup-host.sh)")
    need(os.geteuid() == 0, "stand-in base images need root (debootstrap, chroot)")
    for tool in ("debootstrap", "chroot", "dpkg-deb", "git"):
        need(shutil.which(tool) is not None, f"{tool} is missing (run scripts/setup-host.sh)")
    need(all((gitserver.UPSTREAM / b).is_file() for b in gitserver.REPOS),
         f"the upstream bundles are not in {gitserver.UPSTREAM} (set BUILDER_UPSTREAM)")
    files = tmp_path_factory.mktemp("compile-files")
    with compile_project.file_server(files) as http, gitserver.GitServer() as git:
        start = time.monotonic()
        project = compile_project.prepare(tmp_path_factory.mktemp("compile-project"), files, http, git)
        TIMINGS.append(f"prepare (CUDA stand-in, EFA installer with libfabric, render): {time.monotonic() - start:.0f} s")
        yield project


@pytest.fixture(scope="module")
def compiled(compile_proj, tmp_path_factory):
    """Both images built together (-j 2); the report, and each stanza's seconds printed."""
    work = tmp_path_factory.mktemp("compile-build")
    start = time.monotonic()
    proc = compile_proj.cli("build", "itest-cuda-current", "itest-cuda-ofi-aws", "-j", "2", "--network", "host",
                            "--report", str(work / "report.json"), "--log-dir", str(work / "logs"), timeout=5400)
    TIMINGS.append(f"builder build (both images, -j 2): {time.monotonic() - start:.0f} s wall")
    report = json.loads((work / "report.json").read_text())
    for image in report["images"]:
        name = image["name"]
        log = (work / "logs" / f"{name}.log").read_text(errors="replace")
        dockerfile = (compile_proj.root / "images" / name / "Dockerfile").read_text()
        TIMINGS.extend(compile_project.timing_lines(name, compile_project.stanza_seconds(dockerfile, log)))
    print("\n".join(TIMINGS), file=sys.stderr)
    return proc, {i["name"]: i for i in report["images"]}


def smoke(project, name: str, *extra: str) -> dict:
    proc = project.cli("smoke", name, *extra, "--json")
    assert proc.stdout, proc.stderr
    doc = json.loads(proc.stdout)
    doc["returncode"] = proc.returncode
    return doc


def checks(doc: dict, kind: str) -> list[dict]:
    return [c for c in doc["checks"] if c["kind"] == kind]


def test_everything_compiles(compiled):
    proc, images = compiled
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, stanzas in (("itest-cuda-current", ("gdrcopy", "nccl-source", "aws-ofi-nccl", "nccl-tests")),
                          ("itest-cuda-ofi-aws", ("aws-ofi-nccl",))):
        image = images[name]
        assert image["status"] == "built", image.get("log_tail")
        for stanza in stanzas:
            assert image["stanza_sizes"].get(stanza, 0) > 0, (name, stanza, image["stanza_sizes"])


def test_smoke_current_links_what_the_matrix_pins(compile_proj, compiled):
    doc = smoke(compile_proj, "itest-cuda-current")
    failures = [c for c in doc["checks"] if not c["ok"]]
    assert doc["returncode"] == 0 and doc["ok"], failures
    trees = {c["args"]["path"] for c in checks(doc, "ldd_tree")}
    assert {"/opt/gdrcopy/lib", "/opt/aws-ofi-nccl/lib", "/opt/nccl-tests/build"} <= trees
    linked = checks(doc, "nccl_linked")
    # (Debian's merged /usr: the loader may name /lib for /usr/lib.)
    assert len(linked) == 1 and re.search(r"loads NCCL 2\.28\.9 from (/usr)?/lib/libnccl\.so\.2$", linked[0]["detail"]), linked
    plugin = checks(doc, "ofi_plugin_version")
    assert len(plugin) == 1 and "aws-ofi-nccl 1.21.1" in plugin[0]["detail"], plugin
    run = checks(doc, "no_gpu_run")
    assert len(run) == 1 and run[0]["ok"], run
    # ncclGetVersion of the libnccl.so.2 the loader picks is the pin, not the base's 2.27.7.
    version = checks(doc, "nccl_version")
    assert version and all(re.search(r"2\.28\.9 via ncclGetVersion \((/usr)?/lib/libnccl\.so\.2", c["detail"])
                           and "torch.cuda.nccl 2.28.9" in c["detail"] for c in version), version


def test_smoke_ofi_aws_era(compile_proj, compiled):
    doc = smoke(compile_proj, "itest-cuda-ofi-aws")
    assert doc["returncode"] == 0 and doc["ok"], [c for c in doc["checks"] if not c["ok"]]
    plugin = checks(doc, "ofi_plugin_version")
    assert len(plugin) == 1 and "aws-ofi-nccl 1.12.1-aws" in plugin[0]["detail"], plugin


def test_base_nccl_first_on_the_path_is_caught(compile_proj, compiled, tmp_path):
    """The source-flavor defect in miniature: the base's libnccl2 found first by the loader.
    nccl_linked and ncclGetVersion name the base's 2.27.7; the run still reaches CUDA."""
    wrong = "builder-itest/nvidia:wrong-nccl"
    standin = _base_ref(compile_proj)
    dockerfile = (f"FROM {standin} AS base\nFROM {CURRENT}\n"
                  "COPY --from=base /usr/lib/x86_64-linux-gnu/libnccl.so.2 /opt/base-nccl/libnccl.so.2\n"
                  "ENV LD_LIBRARY_PATH=/opt/base-nccl:${LD_LIBRARY_PATH}\n")
    subprocess.run([DOCKER, "build", "-q", "--network", "host", "-t", wrong, "-"], input=dockerfile, text=True,
                   check=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    try:
        doc = smoke(compile_proj, "itest-cuda-current", "--image", wrong)
        assert doc["returncode"] == 1
        failed = {c["kind"]: c for c in doc["checks"] if not c["ok"]}
        assert "nccl_linked" in failed and "loads NCCL 2.27.7 from /opt/base-nccl/libnccl.so.2" in failed["nccl_linked"]["detail"]
        assert "the matrix pins 2.28.9" in failed["nccl_linked"]["detail"]
        assert checks(doc, "no_gpu_run")[0]["ok"]
    finally:
        subprocess.run([DOCKER, "rmi", "--no-prune", wrong], capture_output=True)


def _base_ref(project) -> str:
    text = (project.root / "images" / "itest-cuda-current" / "Dockerfile").read_text()
    return next(line.split()[1] for line in text.splitlines() if line.startswith("FROM "))


def test_missing_hwloc_fails_naming_the_stanza(compile_proj, tmp_path):
    """A deliberate defect: the real templates with libhwloc-dev taken out of aws-ofi-nccl's apt
    list (a copy of the package and templates), built with the real CLI: configure stops at
    aws-ofi-nccl's CHECK_PKG_HWLOC, and the failure names the stanza."""
    tree = tmp_path / "defect"
    shutil.copytree(harness.REPO / "builder", tree / "builder", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(harness.REPO / "templates", tree / "templates")
    stanza = tree / "templates" / "stanzas" / "aws-ofi-nccl.Dockerfile.j2"
    text = stanza.read_text()
    assert "libhwloc-dev, " in text
    stanza.write_text(text.replace("libhwloc-dev, ", ""))
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(compile_proj.matrix.read_text().replace("name: itest-cuda-ofi-aws", "name: itest-cuda-nohwloc"))
    env = {**compile_proj.cli_env(), "PYTHONPATH": str(tree)}
    rendered = subprocess.run([sys.executable, "-m", "builder", "--matrix", str(matrix), "render", "itest-cuda-nohwloc"],
                              capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    dockerfile = (tmp_path / "images" / "itest-cuda-nohwloc" / "Dockerfile").read_text()
    assert "aws-ofi-nccl" in dockerfile and "libhwloc-dev" not in dockerfile  # the defect is what gets built
    proc = subprocess.run([sys.executable, "-m", "builder", "--matrix", str(matrix), "build", "itest-cuda-nohwloc",
                           "--network", "host", "--report", str(tmp_path / "r.json")],
                          capture_output=True, text=True, env=env, timeout=3600, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "itest-cuda-nohwloc: stanza 'aws-ofi-nccl' failed" in proc.stderr
    image = json.loads((tmp_path / "r.json").read_text())["images"][0]
    assert image["status"] == "failed" and image["failed_stanza"] == "aws-ofi-nccl"
    assert any("hwloc" in line for line in image["log_tail"]), image["log_tail"]
    assert not standins.image_exists("builder-itest/nvidia:itest-cuda-nohwloc")


def test_print_timings(compiled, request):
    """Per-stanza build seconds in the terminal summary (figures, not assertions)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        for line in ["", "compile timings (this run; cached steps count 0):", *TIMINGS]:
            reporter.write_line(line)


def test_cuda_devel_standin_is_shaped_like_nvidia_cuda(compile_proj):
    """The devel-like stand-in (no NGC parts): the toolkit where nvcc and the stanzas look for it,
    and the base's held libnccl2 as the libnccl.so.2 on the loader's default path, as in
    nvidia/cuda devel images. (nvcc compiling and linking is what the builds above prove.)"""
    ref = cuda_standins.cuda_standin({"cuda": cuda_standins.CUDA_VERSION, "nccl": "2.27.7"}, ngc=False)
    script = ("nvcc --version | tail -1 && ls /usr/local/cuda/lib64/libcudart_static.a /usr/local/cuda/include/cuda.h"
              " && ldconfig -p | grep 'libnccl.so.2 ' && apt-mark showhold && echo \"$LD_LIBRARY_PATH\"")
    proc = subprocess.run([DOCKER, "run", "--rm", "--network", "none", ref, "bash", "-c", script],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cuda_13.0" in proc.stdout
    # (Debian's merged /usr: ldconfig names /lib/x86_64-linux-gnu, the same folder.)
    assert re.search(r"libnccl\.so\.2 .*=> (/usr)?/lib/x86_64-linux-gnu/libnccl\.so\.2$", proc.stdout, re.M), proc.stdout
    assert "libnccl2" in proc.stdout.split()
    assert "/usr/local/nvidia/lib:/usr/local/nvidia/lib64" in proc.stdout
