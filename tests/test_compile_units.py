"""Unit tests of issue 11's pieces that need no engine: `sources:` redirects every download and
git repository of every bundled image (what an air-gapped mirror needs), the compile stanzas'
linking checks and template fixes, and the parsers of builder.smoke_linking."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml

from builder import smoke_linking
from builder.matrix import SOURCE_FILES, load_matrix
from builder.render import Renderer

REPO = Path(__file__).resolve().parent.parent
MIRROR = "https://mirror.example.internal"
URL_RE = re.compile(r"https?://[^\s\"'@]+")


def mirrored_matrix(tmp_path: Path) -> Path:
    """The bundled matrix with every source key pointed at one mirror, same file names."""
    data = yaml.safe_load((REPO / "matrix.yaml").read_text())
    data["sources"] = {key: f"{MIRROR}/{key}/{file}"
                       for key, (_, file) in SOURCE_FILES.items()}
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "examples").symlink_to(REPO / "examples")  # code.dir is relative to the matrix
    return path


def test_sources_redirect_every_download_and_repository(tmp_path):
    matrix = load_matrix(mirrored_matrix(tmp_path))
    renderer = Renderer()
    wheels = {v for spec in matrix.images for k, v in spec.versions.items() if k in ("smddp", "s3_plugin")}
    seen = 0
    for spec in matrix.images:
        for line in renderer.render(spec).dockerfile.splitlines():
            if line.lstrip().startswith("#") or line.startswith("LABEL") or "org.opencontainers" in line:
                continue
            for url in URL_RE.findall(line):
                seen += 1
                # The wheels are matrix values themselves (a user points them at a mirror directly).
                assert url.startswith(MIRROR + "/") or url in wheels, f"{spec.name}: {url} is not redirected"
    assert seen > 0


def test_compile_stanzas_declare_linking_checks():
    matrix = load_matrix(REPO / "matrix.yaml")
    renderer = Renderer()
    kinds = {}
    for spec in matrix.images:
        for check in renderer.render(spec).checks:
            kinds.setdefault((check.stanza, check.kind), check)
    for stanza, kind in (("aws-ofi-nccl", "ofi_plugin_version"), ("aws-ofi-nccl", "ldd_tree"),
                         ("gdrcopy", "ldd_tree"), ("nccl-tests", "ldd_tree"), ("nccl-tests", "no_gpu_run"),
                         ("nccl-tests", "nccl_linked"), ("nccl-source", "ldd")):
        assert (stanza, kind) in kinds, (stanza, kind)


def test_aws_ofi_nccl_installs_hwloc_and_source_nccl_tests_link_the_pin():
    matrix = load_matrix(REPO / "matrix.yaml")
    renderer = Renderer()
    for spec in matrix.images:
        text = renderer.render(spec).dockerfile
        if "aws-ofi-nccl" in spec.stanzas:
            assert re.search(r"^\s+libhwloc-dev \\$", text, re.M), spec.name
        if "nccl-tests" in spec.stanzas and spec.flavor == "source":
            assert "LD_RUN_PATH=/opt/conda/lib make -C /tmp/nccl-tests" in text, spec.name
        elif "nccl-tests" in spec.stanzas:
            assert "LD_RUN_PATH" not in text, spec.name


def test_parse_ldd_tree():
    out = ("ldd\t/opt/x/bin/a\n  libc.so.6 => /lib/libc.so.6 (0x1)\n  libnccl.so.2 => not found\n"
           "ldd\t/opt/x/lib/b.so\n  libcuda.so.1 => not found\n__builder_ldd_done__\n")
    files, missing = smoke_linking.parse_ldd_tree(out, ("libcuda.so.1",))
    assert files == ["/opt/x/bin/a", "/opt/x/lib/b.so"]
    assert missing == {"/opt/x/bin/a": ["libnccl.so.2"]}


class FakeBox:
    """Answers docker exec with canned output (what the probes print in a real image)."""

    def __init__(self, stdout: str, stderr: str = "", rc: int = 0):
        self.result = SimpleNamespace(stdout=stdout, stderr=stderr, returncode=rc)
        self.calls = []

    def exec(self, argv, timeout=0, env=None):
        self.calls.append((argv, env))
        return self.result


def smoker(stdout: str, stderr: str = "", rc: int = 0, python: str | None = sys.executable):
    return SimpleNamespace(box=FakeBox(stdout, stderr, rc), python=python)


def test_nccl_linked_names_the_library_and_both_versions():
    ok, detail = smoke_linking.nccl_linked(smoker("lib /usr/lib/libnccl.so.2 2.28.9\n"), "/b/all_reduce_perf", "2.28.9")
    assert ok and "loads NCCL 2.28.9 from /usr/lib/libnccl.so.2" in detail
    ok, detail = smoke_linking.nccl_linked(smoker("lib /usr/lib/x86_64-linux-gnu/libnccl.so.2 2.27.7\n"),
                                           "/b/all_reduce_perf", "2.28.9")
    assert not ok and "2.27.7 from /usr/lib/x86_64-linux-gnu/libnccl.so.2" in detail and "pins 2.28.9" in detail
    ok, detail = smoke_linking.nccl_linked(smoker("unresolved libnccl.so.2 not found\n"), "/b/x", "2.28.9")
    assert not ok and "not found" in detail
    ok, detail = smoke_linking.nccl_linked(smoker("", python=None), "/b/x", "2.28.9")
    assert not ok and "no python" in detail


def test_ofi_plugin_version_accepts_the_aws_suffix_only_for_its_version():
    out = "name AWS Libfabric\nlog NET/OFI Initializing aws-ofi-nccl 1.13.2-aws\nlog NET/OFI no EFA\ninit 2\n"
    ok, detail = smoke_linking.ofi_plugin_version(smoker(out), "/opt/aws-ofi-nccl/lib/libnccl-net.so", "1.13.2")
    assert ok and "aws-ofi-nccl 1.13.2-aws" in detail
    ok, detail = smoke_linking.ofi_plugin_version(smoker(out), "/p.so", "1.13.1")
    assert not ok and "reports aws-ofi-nccl 1.13.2-aws, the matrix says 1.13.1" in detail
    dev = "name AWS Libfabric\nlog Initializing aws-ofi-nccl GitHub-dev\ninit 2\n"
    ok, detail = smoke_linking.ofi_plugin_version(smoker(dev), "/p.so", "1.21.1")
    assert not ok and "GitHub-dev" in detail
    ok, detail = smoke_linking.ofi_plugin_version(smoker("", "OSError: cannot open", 1), "/p.so", "1.21.1")
    assert not ok and "cannot load" in detail


def test_no_gpu_run_tells_cuda_errors_from_loader_errors():
    cuda = "Cuda failure common.cu:1033 'CUDA driver version is insufficient for CUDA runtime version'\n"
    ok, detail = smoke_linking.no_gpu_run(smoker(cuda, rc=1), ["all_reduce_perf"])
    assert ok and "insufficient" in detail
    loader = "all_reduce_perf: error while loading shared libraries: libnccl.so.2: cannot open shared object file\n"
    ok, detail = smoke_linking.no_gpu_run(smoker("", loader, rc=127), ["all_reduce_perf"])
    assert not ok and "loader error" in detail and "libnccl.so.2" in detail
    ok, detail = smoke_linking.no_gpu_run(smoker("# nThread 1\n", rc=0), ["all_reduce_perf"])
    assert not ok and "exited 0" in detail
    ok, detail = smoke_linking.no_gpu_run(smoker("Segmentation fault\n", rc=139), ["all_reduce_perf"])
    assert not ok and "without CUDA's or NCCL's no-device error" in detail


def test_rule_ofi_cuda13(write_matrix):
    """aws-ofi-nccl 1.13.0-1.16.x does not compile against CUDA 13 (found by the compile tests)."""
    import copy

    import pytest

    from builder.errors import MatrixError
    from tests.matrix_samples import BASES, NVIDIA, dump, matrix, with_components

    bases = copy.deepcopy(BASES)
    bases["ngc"]["ships"].update(cuda="13.0.2", nccl="2.27.7")
    entry = with_components(NVIDIA, aws_ofi_nccl="1.13.2", efa="1.37.0")
    with pytest.raises(MatrixError) as exc:
        load_matrix(write_matrix(dump({**matrix(entry), "bases": bases})))
    lines = [str(p) for p in exc.value.problems if "[ofi-cuda13]" in str(p)]
    assert len(lines) == 1 and "aws-ofi-nccl 1.13.2 does not compile against CUDA 13.0.2" in lines[0]
    assert "components.aws_ofi_nccl" in lines[0]
    for ok in ("1.12.1", "1.17.0", "1.21.1"):
        load_matrix(write_matrix(dump({**matrix(with_components(NVIDIA, aws_ofi_nccl=ok, efa="1.37.0")), "bases": bases})))
    load_matrix(write_matrix(dump(matrix(entry))))  # CUDA 12.6: builds
