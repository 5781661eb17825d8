"""Real builds through the real templates and CLI on stand-in bases, then smoke and SageMaker.

Covers: -j 2 with one image failing in a named stanza (wrong EFA checksum) while the other is
built, tagged and measured; per-image logs; smoke passing on the built NVIDIA-base image (the
base's source tree reported as inherited) and failing on a planted private key, credentials
file, apt list and broken plugin dependency; the size gate (exit 3, largest layers); Ctrl-C
leaving nothing tagged; and the DLC-extension flavor end to end (build, smoke with the base's
baked keys inherited; its SageMaker jobs are in test_sagemaker_sdk.py), and the same keys failing when the base cannot be
compared. Stanzas needing nvcc are covered by render and static checks only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

import harness
import standins

from builder import components as comp

pytestmark = pytest.mark.integration

DOCKER = standins.DOCKER
NVIDIA = f"{harness.ITEST_REPO}/nvidia:itest-nvidia"
BADSUM = f"{harness.ITEST_REPO}/nvidia:itest-nvidia-badsum"
DLC = f"{harness.ITEST_REPO}/dlc:itest-dlc"


def untag(*refs: str) -> None:
    for ref in refs:
        subprocess.run([DOCKER, "rmi", "--no-prune", ref], capture_output=True)


def tagged(ref: str) -> bool:
    return standins.image_exists(ref)


@pytest.fixture(scope="module")
def nvidia_built(build_project, tmp_path_factory):
    """itest-nvidia and itest-nvidia-badsum built together (-j 2); one must fail in stanza efa."""
    untag(NVIDIA, BADSUM)
    work = tmp_path_factory.mktemp("nvidia-build")
    proc = build_project.cli("build", "itest-nvidia", "itest-nvidia-badsum", "-j", "2", "--network", "host",
                             "--report", str(work / "report.json"), "--log-dir", str(work / "logs"))
    report = json.loads((work / "report.json").read_text())
    return proc, report, work


def test_parallel_build_one_failure_named(nvidia_built):
    proc, report, work = nvidia_built
    assert proc.returncode == 1, proc.stderr
    images = {i["name"]: i for i in report["images"]}
    good, bad = images["itest-nvidia"], images["itest-nvidia-badsum"]
    assert good["status"] == "built", proc.stderr
    assert good["image_id"].startswith("sha256:") and good["size"] > 0 and good["duration_s"] > 0
    assert good["stanza_sizes"]["build-tools"] > 0 and good["stanza_sizes"]["efa"] > 0
    assert "unknown" not in good["stanza_sizes"]
    assert good["size_gate"]["ok"] is True
    assert bad["status"] == "failed" and bad["failed_stanza"] == "efa"
    assert any("FAILED" in line or "did NOT match" in line for line in bad["log_tail"])
    assert "itest-nvidia-badsum: stanza 'efa' failed" in proc.stderr
    assert "did NOT match" in proc.stderr or "FAILED" in proc.stderr
    assert (work / "logs" / "itest-nvidia.log").stat().st_size > 0
    assert (work / "logs" / "itest-nvidia-badsum.log").stat().st_size > 0
    assert tagged(NVIDIA) and not tagged(BADSUM)
    labels = json.loads(subprocess.run([DOCKER, "image", "inspect", "--format", "{{json .Config.Labels}}", NVIDIA],
                                       capture_output=True, text=True, check=True).stdout)
    assert labels["builder.component.efa"] == "1.48.0" and labels["org.opencontainers.image.title"] == "itest-nvidia"


def test_smoke_nvidia_passes(build_project, nvidia_built):
    proc = build_project.cli("smoke", "itest-nvidia", "--json")
    doc = json.loads(proc.stdout)
    failures = [c for c in doc["checks"] if not c["ok"]]
    assert proc.returncode == 0 and doc["ok"], failures
    kinds = {(c["stanza"], c["kind"]) for c in doc["checks"]}
    for expected in [("efa", "file_contains"), ("efa", "ldd"), ("efa", "command"), ("remove-conflicts", "command"),
                     ("remove-hpcx-mpi", "file_absent"), ("network-env", "env"), ("openssh", "file_exists"),
                     ("base", "nccl_version"), ("base", "python"), ("labels", "label"),
                     ("hygiene", "leftovers"), ("credentials", "scan"), ("network-env", "command")]:
        assert expected in kinds
    nccl = next(c for c in doc["checks"] if c["kind"] == "nccl_version")
    assert "2.25.1 via header" in nccl["detail"] and "torch.cuda.nccl 2.25.1" in nccl["detail"]
    assert inherited_trees(doc) == NGC_TREES


NGC_TREES = {"/opt/pytorch/pytorch/.git", "/opt/pytorch/pytorch/build/CMakeCache.txt"}


def inherited_trees(doc: dict) -> set:
    """The NGC stand-in's source tree: leftovers of the base, so WARN lines, never failures."""
    warned = [c for c in doc["checks"] if c["warn"] and c["stanza"] == "hygiene"]
    assert all(c["kind"] == "build-tree" and "inherited from base builder-fixture/ngc-standin:" in c["detail"]
               for c in warned), warned
    return {c["args"]["path"] for c in warned}


def test_planted_key_and_apt_list_fail_smoke(build_project, nvidia_built, tmp_path):
    """Things the image adds (not its base): a key in /workspace (and so in the history of the
    RUN that wrote it), an AWS credentials file under /home, a leftover apt list, and an
    aws-ofi-nccl plugin whose dependency is gone (ldd must name it)."""
    planted = f"{harness.ITEST_REPO}/planted:key-and-apt-list"
    net_lib = comp.ofi_plugin("1.48.0").net_lib
    dockerfile = (f"FROM {NVIDIA}\n"
                  "RUN mkdir -p /workspace /home/ubuntu/.aws \\\n"
                  " && printf -- '-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXktdjEAAAAA\\n"
                  "-----END OPENSSH PRIVATE KEY-----\\n' > /workspace/deploy_key \\\n"
                  " && printf '[default]\\naws_access_key_id = x\\n' > /home/ubuntu/.aws/credentials \\\n"
                  " && echo 'Package: x' > /var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages \\\n"
                  f" && cp /usr/lib/x86_64-linux-gnu/libssl.so.3 {net_lib} && rm /usr/lib/x86_64-linux-gnu/libcrypto.so.3\n")
    subprocess.run([DOCKER, "build", "-q", "--network", "host", "-t", planted, "-"], input=dockerfile, text=True,
                   check=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    planted_findings = {
        ("credentials", "private-key", "/workspace/deploy_key"),
        ("credentials", "credential-file", "/home/ubuntu/.aws/credentials"),
        ("credentials", "history", None),
        ("hygiene", "apt-lists", "/var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"),
    }
    try:
        for args, expected in ((("smoke", "itest-nvidia", "--image", planted, "--json"), planted_findings | {("efa", "ldd", net_lib)}),
                               (("smoke", planted, "--json"), planted_findings | {("efa", "ldd", net_lib)})):
            proc = build_project.cli(*args)
            assert proc.returncode == 1, proc.stderr
            doc = json.loads(proc.stdout)
            failed = {(c["stanza"], c["kind"], c["args"].get("path")) for c in doc["checks"] if not c["ok"]}
            assert failed == expected, failed
            ldd = next(c for c in doc["checks"] if c["kind"] == "ldd" and not c["ok"])
            assert "libcrypto.so.3" in ldd["detail"]
            assert inherited_trees(doc) == NGC_TREES
            assert not [c for c in doc["checks"] if c["warn"] and c["stanza"] == "credentials"]
        text = build_project.cli("smoke", planted)
        assert text.returncode == 1
        assert "FAIL credentials: private-key(path=/workspace/deploy_key)" in text.stdout
        assert "error:" in text.stderr and "Traceback" not in text.stderr
    finally:
        untag(planted)


def test_interrupt_leaves_nothing_tagged(build_project, tmp_path):
    untag(DLC)
    env = build_project.cli_env()
    proc = subprocess.Popen(
        [*build_project.cli_argv(), "build", "itest-dlc", "--network", "host", "--no-cache",
         "--report", str(tmp_path / "report.json"), "--log-dir", str(tmp_path / "logs")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    deadline = time.monotonic() + 600
    for line in proc.stderr:
        seen.append(line)
        if "stanza pip-requirements" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    assert not tagged(DLC)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"][0]["status"] == "interrupted" and report["images"][0]["image_id"] is None


def test_dlc_end_to_end_with_sagemaker_contract(build_project, tmp_path):
    untag(DLC)
    built = build_project.cli("build", "itest-dlc", "--network", "host", "--report", str(tmp_path / "r.json"))
    assert built.returncode == 0, built.stderr
    assert tagged(DLC)
    image = json.loads((tmp_path / "r.json").read_text())["images"][0]
    assert image["stanza_sizes"].get("pip-requirements", 0) > 0 and image["stanza_sizes"].get("sagemaker-code", 0) > 0
    proc = build_project.cli("smoke", "itest-dlc", "--json")  # --sagemaker: tests/integration/test_sagemaker_sdk.py
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["ok"], json.dumps([c for c in doc["checks"] if not c["ok"]], indent=1)
    kinds = {(c["stanza"], c["kind"]) for c in doc["checks"]}
    assert ("sagemaker-code", "env") in kinds and ("pip-requirements", "python") in kinds
    # The base's baked root key pair and host keys (as in AWS's DLCs) are inherited: WARN, not FAIL.
    warned = {c["args"].get("path") for c in doc["checks"] if c["warn"] and c["stanza"] == "credentials"}
    assert {"/root/.ssh/id_rsa", "/etc/ssh/ssh_host_rsa_key", "/etc/ssh/ssh_host_ed25519_key"} <= warned, warned
    assert all("inherited from base builder-fixture/dlc-standin:" in c["detail"]
               for c in doc["checks"] if c["warn"] and c["stanza"] != "enroot")
    # The stand-in base is Debian, whose /etc/profile resets PATH: under enroot's login shell the
    # image would lose the /opt/ml/code it puts on PATH (builder/smoke_login_shell.py, docs/slurm.md).
    login = [c for c in doc["checks"] if c["kind"] == "login-shell"]
    assert login and all(c["warn"] and "drops /opt/ml/code from PATH" in c["detail"] for c in login)
    # ncclGetVersion through ctypes on the stand-in's libnccl.so.2, and the NCCL torch reports.
    nccl = next(c for c in doc["checks"] if c["kind"] == "nccl_version")
    assert "2.22.3 via ncclGetVersion (/usr/local/lib/libnccl.so.2.22.3)" in nccl["detail"], nccl
    assert "torch.cuda.nccl 2.22.3" in nccl["detail"]
    text = build_project.cli("smoke", "itest-dlc")
    assert text.returncode == 0 and "WARN credentials: private-key(path=/root/.ssh/id_rsa)" in text.stdout


def test_base_not_in_engine_judges_everything(build_project, tmp_path):
    """When the base cannot be compared, one line says so and the inherited keys fail."""
    if not tagged(DLC):
        built = build_project.cli("build", "itest-dlc", "--network", "host")
        assert built.returncode == 0, built.stderr
    orphan = f"{harness.ITEST_REPO}/orphan:no-base"
    dockerfile = f"FROM {DLC}\nLABEL org.opencontainers.image.base.name=builder-fixture/not-in-the-engine:0\n"
    subprocess.run([DOCKER, "build", "-q", "-t", orphan, "-"], input=dockerfile, text=True, check=True,
                   capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    try:
        proc = build_project.cli("smoke", orphan, "--json")
        assert proc.returncode == 1, proc.stderr
        doc = json.loads(proc.stdout)
        failed = {c["args"].get("path") for c in doc["checks"] if not c["ok"] and c["stanza"] == "credentials"}
        assert "/root/.ssh/id_rsa" in failed
        notes = [c for c in doc["checks"] if c["stanza"] == "base" and c["warn"]]
        assert len(notes) == 1 and "not in the engine" in notes[0]["detail"]
    finally:
        untag(orphan)


def test_size_gate_lists_largest_layers(build_project, nvidia_built, tmp_path):
    """Exit 3 over the baseline, with the largest layers and their stanzas (stderr and report).
    A copy of the project with a tiny baseline: the Dockerfile is the same, so all is cached."""
    copy = tmp_path / "project"
    shutil.copytree(build_project.root, copy, ignore=shutil.ignore_patterns("report*.json"))
    matrix = copy / "matrix.yaml"
    matrix.write_text(matrix.read_text().replace('size_baseline: "2GB"', 'size_baseline: "1MB"'))
    proc = subprocess.run([*build_project.cli_argv()[:-2], "--matrix", str(matrix), "build", "itest-nvidia",
                           "--network", "host", "--report", str(tmp_path / "r.json")],
                          capture_output=True, text=True, env=build_project.cli_env(), timeout=1500)
    assert proc.returncode == 3, proc.stderr
    assert "over its baseline" in proc.stderr and "largest stanzas: " in proc.stderr
    gate = json.loads((tmp_path / "r.json").read_text())["images"][0]["size_gate"]
    assert not gate["ok"] and gate["largest_layers"] and gate["largest_layers"][0]["stanza"] != "unknown"
    assert {s["stanza"] for s in gate["largest_stanzas"]} & {"build-tools", "efa", "openssh"}


def test_sagemaker_refused_without_toolkit(build_project, nvidia_built):
    proc = build_project.cli("smoke", "itest-nvidia", "--sagemaker")
    assert proc.returncode == 2 and "does not claim SageMaker support" in proc.stderr


# --- upstream behaviours that break images (issue 10) -------------------------------------------
# The NGC stand-in carries /opt/nvidia/nvidia_entrypoint.sh and an /etc/shinit_v2 every bash runs;
# the stand-in installer >= 1.48 skips its plugin there unless --disable-ngc. Each defect class is
# planted on top of the good image and smoke must name exactly the checks it breaks.

NET_LIB = comp.ofi_plugin("1.48.0").net_lib
PROBE = ("network-env", "command", None)


def _plant(tag: str, body: str) -> str:
    ref = f"{harness.ITEST_REPO}/planted:{tag}"
    subprocess.run([DOCKER, "build", "-q", "--network", "host", "-t", ref, "-"], input=f"FROM {NVIDIA}\n{body}",
                   text=True, check=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    return ref


def _failed(build_project, ref: str) -> tuple[set, dict]:
    proc = build_project.cli("smoke", "itest-nvidia", "--image", ref, "--json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == (1 if not doc["ok"] else 0), proc.stderr
    return {(c["stanza"], c["kind"], c["args"].get("path")) for c in doc["checks"] if not c["ok"]}, doc


def test_installer_without_disable_ngc_leaves_nccl_pointed_at_nothing(build_project, nvidia_built):
    """EFA 1.48 rerun without --disable-ngc on the NGC base: no plugin, and smoke says where."""
    url = f"{build_project.server.url}/aws-efa-installer-1.48.0.tar.gz"
    ref = _plant("no-disable-ngc", "RUN rm -rf /opt/amazon/ofi-nccl && mkdir /tmp/efa \\\n"
                 f" && curl -fsS -o /tmp/efa/i.tgz {url} && tar -xzf /tmp/efa/i.tgz -C /tmp/efa \\\n"
                 " && /tmp/efa/aws-efa-installer/efa_installer.sh -y -g --skip-kmod --skip-limit-conf --no-verify \\\n"
                 " && rm -rf /tmp/efa\n")
    try:
        failed, doc = _failed(build_project, ref)
        assert failed == {("efa", "file_exists", NET_LIB), ("efa", "ldd", NET_LIB), PROBE}, failed
        probe = next(c for c in doc["checks"] if c["stanza"] == "network-env" and c["kind"] == "command")
        assert "falls back to sockets" in probe["detail"]
    finally:
        untag(ref)


def test_shinit_v2_pointing_nccl_elsewhere_fails_smoke(build_project, nvidia_built):
    """An NGC 25.11-style /etc/shinit_v2 that sets NCCL_NET_PLUGIN overrides the image's ENV for
    every bash: smoke judges the plugin NCCL would open from that environment."""
    ref = _plant("shinit-v2", "RUN printf 'export NCCL_NET_PLUGIN=aws-ofi\\n' >> /etc/shinit_v2\n")
    try:
        failed, doc = _failed(build_project, ref)
        assert failed == {PROBE}, failed
        probe = next(c for c in doc["checks"] if c["stanza"] == "network-env" and c["kind"] == "command")
        assert "NCCL_NET_PLUGIN='aws-ofi'" in probe["detail"]
    finally:
        untag(ref)


def test_standin_installer_flags_follow_upstream(build_project):
    """--disable-ngc is unknown before 1.48, --enable-ngc before 1.49; --enable-ngc installs the
    NGC plugin variant under /opt/amazon/aws-ofi-nccl, not where the standard package goes. One
    container runs the four cases, each installer in a fresh copy of /opt/amazon."""
    ngc = standins.ngc_standin(harness.test_matrix_bases()["standin-ngc"]["ships"])
    cases = (("1.43.2", "--disable-ngc"), ("1.48.0", "--enable-ngc"), ("1.51.0", "--enable-ngc"),
             ("1.51.0", "--disable-ngc"))
    script = "\n".join(
        f"rm -rf /opt/amazon /tmp/e && mkdir -p /tmp/e && python3 -c 'import sys,urllib.request as u; "
        f"u.urlretrieve(sys.argv[1], \"/tmp/i.tgz\")' {build_project.server.url}/aws-efa-installer-{v}.tar.gz"
        f" && tar -xzf /tmp/i.tgz -C /tmp/e; /tmp/e/aws-efa-installer/efa_installer.sh -y {flag} 2>/dev/null;"
        f" echo \"case {v} {flag} rc=$? $(ls -d /opt/amazon/*ofi*/lib 2>/dev/null | tr '\\n' ' ')\""
        for v, flag in cases)
    out = subprocess.run([DOCKER, "run", "--rm", "--network", "host", "--entrypoint", "/bin/bash", ngc, "-c", script],
                         capture_output=True, text=True, timeout=300).stdout
    lines = {tuple(line.split()[1:3]): line for line in out.splitlines() if line.startswith("case ")}
    assert "rc=2" in lines[("1.43.2", "--disable-ngc")], out
    assert "rc=2" in lines[("1.48.0", "--enable-ngc")], out
    enable = lines[("1.51.0", "--enable-ngc")]
    assert "rc=0" in enable and "/opt/amazon/aws-ofi-nccl/lib" in enable and "/opt/amazon/ofi-nccl/lib" not in enable
    disable = lines[("1.51.0", "--disable-ngc")]
    assert "rc=0" in disable and "/opt/amazon/ofi-nccl/lib" in disable and "aws-ofi-nccl" not in disable
