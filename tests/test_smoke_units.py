"""Fast tests of the smoke stage and the SageMaker contract judge: parsers, findings, implicit
checks, target resolution. No Docker engine needed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from builder import sagemaker_local as sml
from builder import smoke as sm
from builder.errors import UsageError
from builder.render import Check

LDD_OK = """\
\tlinux-vdso.so.1 (0x00007ffd)
\tlibfabric.so.1 => /opt/amazon/efa/lib/libfabric.so.1 (0x00007f)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)
"""
LDD_MISSING = LDD_OK + "\tlibcudart.so.12 => not found\n\tlibhwloc.so.15 => not found\n"


def test_parse_ldd():
    assert sm.parse_ldd(LDD_OK) == []
    assert sm.parse_ldd(LDD_MISSING) == ["libcudart.so.12", "libhwloc.so.15"]


def test_nccl_version_compare():
    assert sm.nccl_matches("2.22.3", "2.22.3")
    assert not sm.nccl_matches("2.22.3", "2.21.5")
    assert sm.nccl_matches("2.10.3", "2.10.3")


def test_nccl_probe_reads_header(tmp_path, monkeypatch):
    """The in-image probe falls back to nccl.h when no libnccl loads (run here with a fake header)."""
    header = tmp_path / "nccl.h"
    header.write_text("#define NCCL_MAJOR 2\n#define NCCL_MINOR 25\n#define NCCL_PATCH 1\n")
    probe = sm.NCCL_PROBE.replace('"/usr/include/nccl.h"', repr(str(header)))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split()[:2] == ["header", "2.25.1"]


def test_token_env():
    findings = sm.token_env(["PATH=/usr/bin", "HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz0123456789",
                             "NOTE=AKIAABCDEFGHIJKLMNOP", "GITHUB_TOKEN=", "NCCL_SOCKET_IFNAME=^docker,lo",
                             "DJANGO_SECRET_KEY=x", "SSH_PRIVATE_KEY=y", "GOOGLE_CREDENTIALS=z"])
    assert any("HF_TOKEN" in f for f in findings)
    assert any("NOTE holds a AWS access key id" in f for f in findings)
    assert not any("GITHUB_TOKEN" in f for f in findings)  # empty: nothing leaked
    assert not any("NCCL" in f or "PATH" in f for f in findings)
    for name in ("DJANGO_SECRET_KEY", "SSH_PRIVATE_KEY", "GOOGLE_CREDENTIALS"):
        assert any(name in f for f in findings), name


def test_history_findings():
    steps = ["/bin/sh -c #(nop) ADD file:abc in /", "RUN |2 HF_TOKEN=hf_x MODE=fast /bin/sh -c make",
             "RUN |1 MODE=fast /bin/sh -c echo AKIAQWERTYUIOPASDFGH > /etc/x", "ENV API_TOKEN=abc"]
    found = [f for step in steps for f in sm.history_findings(step)]
    assert any("build arg HF_TOKEN" in f for f in found)
    assert any("AWS access key id" in f for f in found)
    assert not any("build arg MODE" in f or "API_TOKEN" in f for f in found)


def scan(stdout: str, rc: int = 0, stderr: str = "") -> sm.Scan:
    return sm.Scan.parse(subprocess.CompletedProcess([], rc, stdout, stderr))


def test_secret_findings_allowlist_and_examples():
    out = scan("credential-file\t/root/.aws/credentials\n"
               "/root/.ssh/id_ed25519\0-----BEGIN OPENSSH PRIVATE KEY-----\n"
               "/etc/ssh/ssh_host_rsa_key\0-----BEGIN OPENSSH PRIVATE KEY-----\n"
               "/opt/leak.pem\0-----BEGIN RSA PRIVATE KEY-----\n"
               "/opt/leak.pem\0-----BEGIN RSA PRIVATE KEY-----\n"
               "/usr/local/lib/boto3/examples/cloudfront.rst\0AKIAIOSFODNN7EXAMPLE\n"
               "/etc/profile.d/aws:odd.sh\0AKIAQWERTYUIOPASDFGH\n" + sm.END + "\n")
    assert out.error is None
    everything = [(kind, path) for kind, path, _ in sm.secret_findings(out)]
    assert everything == [("credential-file", "/root/.aws/credentials"), ("private-key", "/root/.ssh/id_ed25519"),
                          ("private-key", "/etc/ssh/ssh_host_rsa_key"), ("private-key", "/opt/leak.pem"),
                          ("aws-key", "/etc/profile.d/aws:odd.sh")]
    allowed = [(kind, path) for kind, path, _ in sm.secret_findings(out, sm.OPENSSH_KEYS)]
    assert ("private-key", "/root/.ssh/id_ed25519") not in allowed and ("private-key", "/opt/leak.pem") in allowed
    assert ("private-key", "/etc/ssh/ssh_host_rsa_key") not in allowed


def test_a_scan_that_did_not_finish_is_an_error():
    """Timeout (rc 124, no output), a missing tool, a script cut short: never a clean scan."""
    assert scan("", 124, "timed out after 600s").error.startswith("exit 124")
    assert "stopped before its end" in scan("apt-lists\t/var/lib/apt/lists/x\n").error
    assert "grep is missing" in scan("scan-error\tgrep is missing in the image\n", 3).error
    assert "find/grep exited 1" in scan(f"scan-error\tfind/grep exited 1\n{sm.END}\n", 0, "grep: /x: I/O error").error
    results = sm.Smoker._scan_errors(scan("", 124), scan(sm.END + "\n"))
    assert [(r.stanza, r.kind, r.ok) for r in results] == [("hygiene", "scan", False)]


class FakeBox(sm.Container):
    """Stands in for the container when only the exit status and output matter: every exec
    (scripts and globs too) gives the same result."""

    def __init__(self, rc: int, stdout: str = "", stderr: str = ""):
        self.proc = subprocess.CompletedProcess([], rc, stdout, stderr)

    def exec(self, argv, timeout=None, env=None):
        return self.proc


def test_file_checks_fail_when_the_exec_failed():
    smoker = sm.Smoker("docker", "img", None)
    smoker.box = FakeBox(124, "", "timed out after 300s")
    for check in (Check("remove-hpcx-mpi", "file_absent", {"path": "/opt/hpcx/ompi"}),
                  Check("efa", "file_exists", {"path": "/opt/amazon/efa"})):
        result = smoker.check(check)
        assert not result.ok and "cannot check" in result.detail, result.line()
    smoker.box = FakeBox(0, sm.END + "\n")
    assert smoker.check(Check("x", "file_absent", {"path": "/opt/hpcx/ompi"})).ok


def test_version_text_must_end_where_the_version_ends():
    assert sm.contains("# EFA installer version: 1.38.1\n", "EFA installer version: 1.38.1")
    assert not sm.contains("# EFA installer version: 1.38.10\n", "EFA installer version: 1.38.1")
    assert not sm.contains("12.6.1", "2.6.1") and sm.contains("v2.6.1", "2.6.1")
    assert sm.contains("2.6.0a0+standin", "2.6.0a0") and sm.contains("Python 3.11.2", "Python 3.11.")
    assert not sm.contains("1.38.1.2", "1.38.1")


def test_parse_ldd_tolerates_only_what_is_allowed():
    text = LDD_OK + "\tlibcuda.so.1 => not found\n"
    assert sm.parse_ldd(text) == ["libcuda.so.1"]
    assert sm.parse_ldd(text, ("libcuda.so.1",)) == []
    assert sm.parse_ldd(LDD_MISSING, ("libcuda.so.1",)) == ["libcudart.so.12", "libhwloc.so.15"]


def test_secrets_script_on_files(tmp_path):
    """The scan itself, run here on a fake root: a PEM line on its own is a key, code naming the
    marker is not; test folders are skipped only inside site-packages; .env anywhere and
    credential files under /home/* count; it ends with the marker."""
    root = tmp_path
    (root / "workspace").mkdir()
    (root / "workspace/key.pem").write_text("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----\n")
    (root / "workspace/ssh.py").write_text('_SK_START = b"-----BEGIN OPENSSH PRIVATE KEY-----"\n')
    (root / "opt/app/tests").mkdir(parents=True)
    (root / "opt/app/tests/id_rsa").write_text("-----BEGIN RSA PRIVATE KEY-----\nx\n")
    (root / "lib/python3/site-packages/paramiko/tests").mkdir(parents=True)
    (root / "lib/python3/site-packages/paramiko/tests/test_rsa.key").write_text("-----BEGIN RSA PRIVATE KEY-----\nx\n")
    (root / "srv/app").mkdir(parents=True)
    (root / "srv/app/.env").write_text("X=1\n")
    (root / "home/ubuntu/.aws").mkdir(parents=True)
    (root / "home/ubuntu/.aws/credentials").write_text("[default]\n")
    (root / "usr/share").mkdir(parents=True)
    (root / "usr/share/cfg").write_text("key=AKIAQWERTYUIOPASDFGH\n")
    (root / "usr/share/blob.bin").write_bytes(b"\0\0AKIAQWERTYUIOPASDFGH\n")
    script = sm.SECRETS_SCRIPT.replace("find / -xdev", f"find {root} -xdev").replace("/root /home/*", f"{root}/home/*")
    proc = subprocess.run(["/bin/sh", "-c", script, "sh", *sm.CREDENTIAL_FILES], capture_output=True, text=True)
    result = sm.Scan.parse(proc)
    assert result.error is None, (proc.stdout, proc.stderr)
    found = {(kind, path.replace(str(root), "")) for kind, path, _ in sm.secret_findings(result)}
    assert found == {("private-key", "/workspace/key.pem"), ("private-key", "/opt/app/tests/id_rsa"),
                     ("credential-file", "/srv/app/.env"), ("credential-file", "/home/ubuntu/.aws/credentials"),
                     ("aws-key", "/usr/share/cfg")}


def test_glob_script_lists_matches_and_dangling_links(tmp_path):
    (tmp_path / "libA.so.1").write_text("")
    (tmp_path / "libB.so").symlink_to(tmp_path / "gone.so")
    result = sm.Scan.parse(subprocess.run(["/bin/sh", "-c", sm.GLOB_SCRIPT, "sh", f"{tmp_path}/lib*.so*"],
                                          capture_output=True, text=True))
    assert result.error is None
    assert sorted(result.lines) == [("file", f"{tmp_path}/libA.so.1"), ("link", f"{tmp_path}/libB.so")]
    none = sm.Scan.parse(subprocess.run(["/bin/sh", "-c", sm.GLOB_SCRIPT, "sh", f"{tmp_path}/nothing*"],
                                        capture_output=True, text=True))
    assert none.error is None and none.lines == []


def test_hygiene_script_finds_leftovers(tmp_path):
    """The in-image scripts are plain sh: run them against a fake root by rewriting paths."""
    root = tmp_path
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)
    (root / "var/lib/apt/lists/lock").write_text("")
    (root / "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease").write_text("x")
    (root / "tmp").mkdir()
    (root / "tmp/build.log").write_text("x")
    (root / "root/.cache/pip").mkdir(parents=True)
    (root / "root/.cache/pip/wheel.whl").write_text("x")
    (root / "root/.cache/torch_extensions").mkdir(parents=True)  # empty: a cache mount's mount point
    (root / "root/.ccache").mkdir()
    (root / "opt/conda/pkgs").mkdir(parents=True)
    (root / "opt/conda/pkgs/numpy-1.26.4-py311.conda").write_text("x")
    (root / "opt/pytorch/pytorch/build").mkdir(parents=True)
    (root / "opt/pytorch/pytorch/build/CMakeCache.txt").write_text("x")
    (root / "opt/pytorch/pytorch/.git/objects").mkdir(parents=True)
    script = sm.HYGIENE_SCRIPT.replace("/var/lib/apt/lists", f"{root}/var/lib/apt/lists") \
        .replace("for d in /tmp /var/tmp", f"for d in {root}/tmp {root}/var/tmp") \
        .replace("/root/.", f"{root}/root/.").replace("/opt/conda/", f"{root}/opt/conda/") \
        .replace("for d in /usr/local/src /usr/src /opt /root /workspace", f"for d in {root}/opt")
    result = sm.Scan.parse(subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True))
    assert result.error is None
    found = {(kind, path.replace(str(root), "")) for kind, path in sm.scan_findings(result)}
    assert found == {("apt-lists", "/var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease"),
                     ("temp", "/tmp/build.log"), ("cache", "/root/.cache/pip"),
                     ("conda-pkgs", "/opt/conda/pkgs/numpy-1.26.4-py311.conda"),
                     ("build-tree", "/opt/pytorch/pytorch/build/CMakeCache.txt"), ("build-tree", "/opt/pytorch/pytorch/.git")}


def test_base_candidates():
    labels = {"org.opencontainers.image.base.name": "nvcr.io/nvidia/pytorch:25.01-py3",
              "org.opencontainers.image.base.digest": "sha256:" + "a" * 64}
    assert sm.base_candidates(labels, None) == ["nvcr.io/nvidia/pytorch@sha256:" + "a" * 64,
                                                "nvcr.io/nvidia/pytorch:25.01-py3"]
    assert sm.base_candidates({"org.opencontainers.image.base.name": "localhost:5000/base"}, None) == ["localhost:5000/base"]
    assert sm.base_candidates({}, None) == []


def test_nccl_probe_reports_the_loaded_library(tmp_path):
    """ncclGetVersion through ctypes, on a stub libnccl.so.2 built here, and the path it came from."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a stub libnccl.so.2")
    src = tmp_path / "nccl.c"
    src.write_text("int ncclGetVersion(int *v) { *v = 22304; return 0; }\n")
    subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libnccl.so.2", "-o", str(tmp_path / "libnccl.so.2"), str(src)],
                   check=True)
    env = {"LD_LIBRARY_PATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    probe = sm.NCCL_PROBE.replace('find_spec("torch")', 'find_spec("no_such_module_here")')
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["lib", "2.23.4", str(tmp_path / "libnccl.so.2")], out.stderr


def test_resolve_target(bundled_matrix):
    name = bundled_matrix.images[0].name
    spec, ref = sm.resolve(bundled_matrix, name)
    assert spec.name == name and ref == spec.primary_ref
    spec, ref = sm.resolve(bundled_matrix, name, "local/other:1")
    assert ref == "local/other:1"
    assert sm.resolve(bundled_matrix, "registry.local:5000/team/img:tag") == (None, "registry.local:5000/team/img:tag")
    with pytest.raises(UsageError):
        sm.resolve(bundled_matrix, "Not An Image!")
    with pytest.raises(UsageError):  # matched whole: a trailing newline is refused
        sm.resolve(bundled_matrix, "registry.local:5000/team/img:tag\n")
    with pytest.raises(UsageError):
        sm.resolve(bundled_matrix, "nope", "x:1")


def test_implicit_checks_cover_what_the_base_ships(bundled_matrix):
    dlc = next(s for s in bundled_matrix.images if s.flavor == "dlc")
    checks = {(c.kind, tuple(sorted(c.args.items()))) for c in sm.implicit_checks(dlc, ())}
    kinds = {k for k, _ in checks}
    assert "nccl_version" in kinds and "file_contains" in kinds


def test_check_result_lines():
    r = sm.CheckResult("efa", "file_exists", {"path": "/opt/x"}, False, "missing")
    assert r.line() == "FAIL efa: file_exists(path=/opt/x): missing"
    report = sm.SmokeReport("img:1", "img", [r, sm.CheckResult("base", "command", {}, True)])
    assert not report.ok and json.loads(json.dumps(report.to_dict()))["failed"] == 1
    assert "FAILED: img:1: 1 passed, 1 failed" in sm.format_text(report)
    warned = sm.CheckResult("credentials", "private-key", {"path": "/root/.ssh/id_rsa"}, True,
                            "private key in the image (inherited from base dlc:1)", warn=True)
    assert warned.line().startswith("WARN credentials: private-key(path=/root/.ssh/id_rsa)")
    report = sm.SmokeReport("img:1", "img", [warned])
    assert report.ok and report.to_dict()["warnings"] == 1 and "1 warnings" in sm.format_text(report)


def _engine_without_images(folder) -> str:
    """A docker client whose engine answers but has no images (test fixture)."""
    path = folder / "docker"
    path.write_text('#!/bin/sh\nif [ "$1" = version ]; then echo 20.10.24; exit 0; fi\necho "No such image" >&2; exit 1\n')
    path.chmod(0o755)
    return str(path)


def test_cli_smoke_bad_input_is_one_line(tmp_path, repo_root):
    from click.testing import CliRunner

    from builder.cli import cli

    run = CliRunner().invoke
    matrix = ["--matrix", str(repo_root / "matrix.yaml")]
    result = run(cli, [*matrix, "smoke", "some/image:1", "--docker", str(tmp_path / "nodocker")])
    assert result.exit_code == 2 and "not found or not executable" in result.output
    docker = _engine_without_images(tmp_path)
    name = "nvidia-ngc25.01-py3-efa1.47.0"
    result = run(cli, [*matrix, "smoke", name[:-1] + "9", "--docker", docker])  # a typo
    assert result.exit_code == 2 and f"did you mean '{name}'" in result.output, result.output
    broken = tmp_path / "matrix.yaml"
    broken.write_text((repo_root / "matrix.yaml").read_text().replace("schema: 1", "schema: 1\nbogus_key: 1", 1))
    for target in (name, "pytorch-efa/nvidia:x"):  # an invalid matrix is never skipped for a bare image
        result = run(cli, ["--matrix", str(broken), "smoke", target, "--docker", docker])
        assert result.exit_code == 2 and "bogus_key" in result.output, result.output


def test_sagemaker_contract_support_per_flavor(bundled_matrix, repo_root):
    """One rule for `smoke --sagemaker` and the CI matrix: the toolkit stanza in any flavor, or a
    -sagemaker DLC base where the flavor claims the contract."""
    from dataclasses import replace
    from types import SimpleNamespace

    from click.testing import CliRunner

    from builder.cli import cli

    catalog = bundled_matrix.catalog
    supports = {s.name: sml.supports_contract(s, catalog) for s in bundled_matrix.images}
    by_kind = {}
    for spec in bundled_matrix.images:
        dlc = spec.base.dlc
        kind = (spec.flavor, dlc.variant if dlc else None, spec.has("sagemaker-toolkit"))
        by_kind.setdefault(kind, set()).add(supports[spec.name])
    assert by_kind == {("source", None, True): {True},  # the toolkit stanza
                       ("dlc", "sagemaker", False): {True},  # a -sagemaker DLC ships the toolkit
                       ("dlc", "ec2", True): {True},  # an -ec2 DLC with the toolkit stanza
                       ("dlc", "ec2", False): {False},  # an -ec2 DLC without it: no `train`
                       ("nvidia", None, False): {False}}
    # nvidia (no claim) with the toolkit switched on has `train` too.
    nvidia = next(s for s in bundled_matrix.images if s.flavor == "nvidia")
    toolkit = bundled_matrix.customize(nvidia.name, {"sagemaker_training": "4.8.1", "sagemaker_pytorch_training": "2.8.1"},
                                       ["sagemaker-toolkit"])
    assert not catalog.flavors["nvidia"].sagemaker and sml.supports_contract(toolkit, catalog)
    # A -sagemaker DLC counts only where the flavor claims the contract.
    dlc_sm = next(s for s in bundled_matrix.images if s.base.dlc and s.base.dlc.variant == "sagemaker")
    unclaimed = SimpleNamespace(flavors={**catalog.flavors, "dlc": replace(catalog.flavors["dlc"], sagemaker=False)})
    assert not sml.supports_contract(dlc_sm, unclaimed)
    # `builder matrix` tells CI the same.
    result = CliRunner().invoke(cli, ["--matrix", str(repo_root / "matrix.yaml"), "matrix"])
    assert result.exit_code == 0, result.output
    assert {e["name"]: e["sagemaker"] for e in json.loads(result.output)} == supports
