"""Lock file units (no registry): references, challenges, the lock format, pinning at load time,
and rendering that is byte-identical without a lock file."""

from __future__ import annotations

import difflib
import json

import pytest

from bake_support import run_builder, write_project
from builder.errors import UsageError
from builder.lock import (
    LockEntry,
    Reference,
    bases_in_use,
    lock_path,
    lock_text,
    parse_challenge,
    read_lock,
    tag_ref,
)
from builder.matrix import load_matrix
from builder.render import Renderer

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
NGC = "nvcr.io/nvidia/pytorch:24.09-py3"


def write_lock(matrix_path, entries: dict[str, str]) -> None:
    lock_path(matrix_path).write_text(lock_text({ref: LockEntry(d, bases=("ngc",)) for ref, d in entries.items()}))


@pytest.mark.parametrize("text, expected", [
    (NGC, ("nvcr.io", "nvidia/pytorch", "24.09-py3")),
    ("nvidia/cuda:12.1.1-cudnn8-devel-ubuntu22.04", ("docker.io", "nvidia/cuda", "12.1.1-cudnn8-devel-ubuntu22.04")),
    ("ubuntu:22.04", ("docker.io", "library/ubuntu", "22.04")),
    ("ubuntu", ("docker.io", "library/ubuntu", "latest")),
    ("127.0.0.1:5000/team/base:1", ("127.0.0.1:5000", "team/base", "1")),
    ("localhost/base:2", ("localhost", "base", "2")),
])
def test_reference_parse(text, expected):
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag) == expected
    assert ref.url.startswith("http://" if ref.registry.startswith(("127.", "localhost")) else "https://")


@pytest.mark.parametrize("bad", ["Ubuntu:22.04", "a b", "x:tag;rm", "https://reg/x:1"])
def test_reference_parse_rejects(bad):
    with pytest.raises(UsageError):
        Reference.parse(bad)


def test_docker_hub_goes_to_its_api_host():
    assert Reference.parse("ubuntu:22.04").api_host == "registry-1.docker.io"


def test_parse_challenge():
    scheme, params = parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                                     'scope="repository:library/ubuntu:pull"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                      "scope": "repository:library/ubuntu:pull"}
    assert parse_challenge('Basic realm="builder-test"') == ("basic", {"realm": "builder-test"})


def test_lock_text_is_deterministic_and_reads_back(tmp_path):
    entries = {"b/x:1": LockEntry(DIGEST, "application/vnd.oci.image.index.v1+json", {"linux/amd64": OTHER}, ("k2", "k1")),
               "a/y:2": LockEntry(OTHER)}
    text = lock_text(entries)
    assert text == lock_text(dict(reversed(list(entries.items()))))
    data = json.loads(text)
    assert list(data["images"]) == ["a/y:2", "b/x:1"]
    assert data["images"]["b/x:1"]["bases"] == ["k1", "k2"]
    path = tmp_path / "m.lock.json"
    path.write_text(text)
    assert read_lock(path)["b/x:1"].digest == DIGEST
    assert read_lock(tmp_path / "absent.lock.json") is None


@pytest.mark.parametrize("content", [
    "{not json",
    json.dumps({"schema": 2, "images": {}}),
    json.dumps({"schema": 1, "images": {"x:1": {"digest": "sha256:short"}}}),
    json.dumps({"schema": 1, "images": {"x:1@" + DIGEST: {"digest": DIGEST}}}),
])
def test_broken_lock_file_is_a_usage_error(tmp_path, content):
    matrix = write_project(tmp_path)
    lock_path(matrix).write_text(content)
    with pytest.raises(UsageError):
        load_matrix(matrix)
    result = run_builder("--matrix", str(matrix), "render", "--all")
    assert result.returncode == 2 and "builder lock" in result.stderr and "Traceback" not in result.stderr


def test_lock_path_sits_beside_the_matrix(tmp_path):
    assert lock_path(tmp_path / "matrix.yaml") == tmp_path / "matrix.lock.json"
    assert lock_path(tmp_path / "team.yaml") == tmp_path / "team.lock.json"


def test_no_lock_file_changes_nothing(tmp_path, bundled_matrix, repo_root):
    """Without a lock file the bundled matrix renders exactly what images/ holds."""
    assert not lock_path(repo_root / "matrix.yaml").exists()
    renderer = Renderer()
    for spec in bundled_matrix.images:
        assert "@" not in spec.base_image
        text = renderer.render(spec).dockerfile
        assert text == (repo_root / "images" / spec.name / "Dockerfile").read_text()
        assert "org.opencontainers.image.base.digest" not in text


def test_lock_pins_from_and_records_the_digest_label(tmp_path):
    matrix = write_project(tmp_path)
    before = Renderer().render(load_matrix(matrix).get("nv-efa1.35")).dockerfile
    write_lock(matrix, {NGC: DIGEST})
    loaded = load_matrix(matrix)
    spec = loaded.get("nv-efa1.35")
    assert spec.base_image == f"{NGC}@{DIGEST}"
    assert spec.tags == ("nv-efa1.35", "efa1.35.0")  # tags are not touched by the pin
    rendered = Renderer().render(spec)
    assert f"FROM {NGC}@{DIGEST}\n" in rendered.dockerfile
    assert rendered.labels["org.opencontainers.image.base.name"] == NGC
    assert rendered.labels["org.opencontainers.image.base.digest"] == DIGEST
    assert any(c.kind == "label" and c.args["name"] == "org.opencontainers.image.base.digest" for c in rendered.checks)
    # Only the header's base line, the FROM line and one label differ from the unlocked file.
    diff = [line for line in difflib.unified_diff(before.splitlines(), rendered.dockerfile.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert sorted(diff) == sorted([f"-# base:     {NGC}", f"+# base:     {NGC}@{DIGEST}", f"-FROM {NGC}",
                                   f"+FROM {NGC}@{DIGEST}",
                                   f'+      org.opencontainers.image.base.digest="{DIGEST}" \\']), diff
    # The DLC base (not locked) stays a tag; customize() pins too.
    assert "@" not in loaded.get("dl").base_image
    assert loaded.customize("nv-efa1.35", {"nccl_tests": "2.13.9"}).base_image == f"{NGC}@{DIGEST}"


def test_tag_ref_undoes_the_pin_and_leaves_matrix_pins_alone(tmp_path):
    matrix = write_project(tmp_path)
    write_lock(matrix, {NGC: DIGEST})
    specs = load_matrix(matrix).images
    entries = read_lock(lock_path(matrix))
    assert tag_ref(specs[0], entries) == NGC
    refs = bases_in_use(specs, entries)
    assert refs[NGC] == ("ngc",)
    assert any(ref.endswith(":2.4.0-gpu-py311-cu124-ubuntu22.04-sagemaker") for ref in refs)
    # A base the matrix pins by digest itself is not the lock's business.
    pinned = write_project(tmp_path / "pinned", ngc_image=f"{NGC}@{OTHER}")
    spec = load_matrix(pinned).get("nv-efa1.35")
    assert spec.base_image == f"{NGC}@{OTHER}" and tag_ref(spec, None) is None


def test_render_check_fails_after_the_lock_changes(tmp_path):
    matrix = write_project(tmp_path)
    assert run_builder("--matrix", str(matrix), "render", "--all").returncode == 0
    write_lock(matrix, {NGC: DIGEST})
    result = run_builder("--matrix", str(matrix), "render", "--all", "--check")
    assert result.returncode == 1 and "nv-efa1.35" in result.stderr
    assert run_builder("--matrix", str(matrix), "render", "--all").returncode == 0
    assert f"FROM {NGC}@{DIGEST}" in (tmp_path / "images" / "nv-efa1.35" / "Dockerfile").read_text()


def test_check_without_a_lock_file_exits_1(tmp_path):
    matrix = write_project(tmp_path)
    result = run_builder("--matrix", str(matrix), "lock", "--check")
    assert result.returncode == 1 and "run 'builder lock' first" in result.stderr


def test_docker_login_reads_auths_and_credential_helpers(tmp_path, monkeypatch):
    import base64
    import os

    from builder.lock import docker_login

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"reg.example.com": {"auth": base64.b64encode(b"u:p:w").decode()},
                                            "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()}},
                                  "credHelpers": {"helped.example.com": "testhelper"}}))
    assert docker_login("reg.example.com", config) == ("u", "p:w")
    assert docker_login("docker.io", config) == ("hub", "pw")
    assert docker_login("other.example.com", config) is None
    # A real executable speaking the credential-helper protocol (get, server on stdin).
    helper = tmp_path / "bin" / "docker-credential-testhelper"
    helper.parent.mkdir()
    helper.write_text("#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread server\n"
                      "[ \"$server\" = helped.example.com ] || { echo 'credentials not found'; exit 1; }\n"
                      "printf '{\"ServerURL\":\"%s\",\"Username\":\"hu\",\"Secret\":\"hs\"}' \"$server\"\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}{os.pathsep}{os.environ['PATH']}")
    assert docker_login("helped.example.com", config) == ("hu", "hs")
