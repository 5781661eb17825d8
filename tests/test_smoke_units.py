"""Fast tests of the smoke stage and the SageMaker contract judge: parsers, findings, implicit
checks, target resolution. No Docker engine needed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from builder import sagemaker_local as sml
from builder import smoke as sm
from builder.errors import UsageError

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
                             "NOTE=AKIAABCDEFGHIJKLMNOP", "GITHUB_TOKEN=", "NCCL_SOCKET_IFNAME=^docker,lo"])
    assert any("HF_TOKEN" in f for f in findings)
    assert any("NOTE holds a AWS access key id" in f for f in findings)
    assert not any("GITHUB_TOKEN" in f for f in findings)  # empty: nothing leaked
    assert not any("NCCL" in f or "PATH" in f for f in findings)


def test_secret_findings_allowlist_and_examples():
    out = ("credential-file\t/root/.aws/credentials\n"
           "match\t/root/.ssh/id_ed25519:-----BEGIN OPENSSH PRIVATE KEY-----\n"
           "match\t/etc/ssh/ssh_host_rsa_key:-----BEGIN OPENSSH PRIVATE KEY-----\n"
           "match\t/opt/leak.pem:-----BEGIN RSA PRIVATE KEY-----\n"
           "match\t/opt/leak.pem:-----BEGIN RSA PRIVATE KEY-----\n"
           "match\t/usr/local/lib/boto3/examples/cloudfront.rst:AKIAIOSFODNN7EXAMPLE\n"
           "match\t/etc/profile.d/aws.sh:AKIAQWERTYUIOPASDFGH\n")
    everything = [(kind, path) for kind, path, _ in sm.secret_findings(out)]
    assert everything == [("credential-file", "/root/.aws/credentials"), ("private-key", "/root/.ssh/id_ed25519"),
                          ("private-key", "/etc/ssh/ssh_host_rsa_key"), ("private-key", "/opt/leak.pem"),
                          ("aws-key", "/etc/profile.d/aws.sh")]
    allowed = [(kind, path) for kind, path, _ in sm.secret_findings(out, sm.OPENSSH_KEYS)]
    assert ("private-key", "/root/.ssh/id_ed25519") not in allowed and ("private-key", "/opt/leak.pem") in allowed
    assert ("private-key", "/etc/ssh/ssh_host_rsa_key") not in allowed


def test_secrets_script_on_files(tmp_path):
    """The grep patterns: a PEM line on its own is a key, code naming the marker is not."""
    (tmp_path / "key.pem").write_text("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----\n")
    (tmp_path / "ssh.py").write_text('_SK_START = b"-----BEGIN OPENSSH PRIVATE KEY-----"\n')
    script = sm.SECRETS_SCRIPT.replace("/root /home /etc /opt /tmp /var/tmp /srv /usr/local", str(tmp_path))
    out = subprocess.run(["/bin/sh", "-c", script, "sh"], capture_output=True, text=True).stdout
    assert [(kind, path) for kind, path, _ in sm.secret_findings(out)] == [("private-key", str(tmp_path / "key.pem"))]


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
    (root / "root/.ccache").mkdir()  # empty: the mount point a BuildKit cache mount leaves
    script = sm.HYGIENE_SCRIPT.replace("/var/lib/apt/lists", f"{root}/var/lib/apt/lists") \
        .replace("for d in /tmp /var/tmp", f"for d in {root}/tmp {root}/var/tmp") \
        .replace("/root/.cache/pip", f"{root}/root/.cache/pip").replace("/root/.ccache", f"{root}/root/.ccache") \
        .replace("for d in /usr/local/src /opt /root", f"for d in {root}/usr/local/src {root}/opt")
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True).stdout
    kinds = dict((path.rsplit("/", 1)[-1], kind) for kind, path in sm.scan_findings(out))
    assert kinds == {"deb.debian.org_dists_bookworm_InRelease": "apt-lists", "build.log": "temp", "pip": "cache"}


def test_resolve_target(bundled_matrix):
    name = bundled_matrix.images[0].name
    spec, ref = sm.resolve(bundled_matrix, name)
    assert spec.name == name and ref == spec.primary_ref
    spec, ref = sm.resolve(bundled_matrix, name, "local/other:1")
    assert ref == "local/other:1"
    assert sm.resolve(bundled_matrix, "registry.local:5000/team/img:tag") == (None, "registry.local:5000/team/img:tag")
    with pytest.raises(UsageError):
        sm.resolve(bundled_matrix, "Not An Image!")
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


def test_contract_judge(tmp_path):
    sml.prepare(tmp_path, {"epochs": 2})
    config = json.loads((tmp_path / "input/config/hyperparameters.json").read_text())
    assert config == {"epochs": "2"}  # SageMaker passes hyperparameters as JSON strings
    assert json.loads((tmp_path / "input/config/resourceconfig.json").read_text())["current_host"] == "algo-1"
    bad = sml.judge("success", 0, "", tmp_path)
    assert not bad.ok and any("model" in p for p in bad.problems) and any("success" in p for p in bad.problems)
    (tmp_path / "model/model.json").write_text("{}")
    (tmp_path / "output/success").write_text("")
    assert sml.judge("success", 0, "", tmp_path).ok
    assert not sml.judge("failure", 0, "", tmp_path).ok
    (tmp_path / "output/success").unlink()
    (tmp_path / "output/failure").write_text("ExecuteUserScriptError: exit 3")
    failure = sml.judge("failure", 1, "", tmp_path)
    assert failure.ok and failure.failure_file.startswith("ExecuteUserScriptError")


def test_contract_script_runs_locally(tmp_path, monkeypatch):
    """The bundled training script itself: model on success, the requested code on failure."""
    sml.prepare(tmp_path, {})
    env = {"SM_CHANNEL_TRAIN": str(tmp_path / "input/data/train"), "SM_MODEL_DIR": str(tmp_path / "model"), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, str(tmp_path / "code" / sml.PROGRAM)], env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads((tmp_path / "model/model.json").read_text())["weight"] == pytest.approx(2.0)
    bad = subprocess.run([sys.executable, str(tmp_path / "code" / sml.PROGRAM), "--fail", "3"], env=env, capture_output=True)
    assert bad.returncode == 3
