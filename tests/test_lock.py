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
    # Docker Hub written with a host: one registry, official images under library/.
    ("docker.io/ubuntu:22.04", ("docker.io", "library/ubuntu", "22.04")),
    ("index.docker.io/ubuntu:22.04", ("docker.io", "library/ubuntu", "22.04")),
    ("registry-1.docker.io/ubuntu:22.04", ("docker.io", "library/ubuntu", "22.04")),
    ("docker.io/library/ubuntu:22.04", ("docker.io", "library/ubuntu", "22.04")),
    ("docker.io/nvidia/cuda:12.4.1-devel-ubuntu22.04", ("docker.io", "nvidia/cuda", "12.4.1-devel-ubuntu22.04")),
    ("index.docker.io/nvidia/cuda", ("docker.io", "nvidia/cuda", "latest")),
    ("library/ubuntu@" + "sha256:" + "ab" * 32, ("docker.io", "library/ubuntu", "latest")),
    ("Docker.IO/ubuntu:22.04", ("docker.io", "library/ubuntu", "22.04")),
])
def test_reference_parse(text, expected):
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag) == expected
    assert ref.url.startswith("http://" if ref.registry.startswith(("127.", "localhost")) else "https://")


@pytest.mark.parametrize("bad", ["Ubuntu:22.04", "a b", "x:tag;rm", "https://reg/x:1", "Team/base:1",
                                 "docker.io/Ubuntu:22.04"])
def test_reference_parse_rejects(bad):
    with pytest.raises(UsageError):
        Reference.parse(bad)


@pytest.mark.parametrize("text", ["ubuntu:22.04", "docker.io/ubuntu:22.04", "index.docker.io/library/ubuntu:22.04"])
def test_docker_hub_goes_to_its_api_host(text):
    ref = Reference.parse(text)
    assert ref.api_host == "registry-1.docker.io" and ref.url == "https://registry-1.docker.io"


def test_parse_challenge():
    scheme, params = parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                                     'scope="repository:library/ubuntu:pull"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                      "scope": "repository:library/ubuntu:pull"}
    assert parse_challenge('Basic realm="builder-test"') == ("basic", {"realm": "builder-test"})
    # RFC 7235 allows bare tokens as values; some registries send them.
    assert parse_challenge("Bearer realm=https://auth.example.com/token, service=reg.example.com,scope=repository:a/b:pull") \
        == ("bearer", {"realm": "https://auth.example.com/token", "service": "reg.example.com",
                       "scope": "repository:a/b:pull"})
    assert parse_challenge('Basic realm=registry') == ("basic", {"realm": "registry"})


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
    json.dumps({"schema": 1, "images": {"x:1": {"digest": DIGEST + "\n"}}}),  # would break FROM
])
def test_broken_lock_file_is_a_usage_error(tmp_path, content):
    matrix = write_project(tmp_path)
    lock_path(matrix).write_text(content)
    with pytest.raises(UsageError):
        load_matrix(matrix)
    result = run_builder("--matrix", str(matrix), "render", "--all")
    assert result.returncode == 2 and "builder lock" in result.stderr and "Traceback" not in result.stderr
    # What the message promises: a plain 'builder lock' can rewrite it (it does not read the
    # lock to load the matrix); --check and lock NAME refuse, as their result would mislead.
    for args in (["--check"], ["nv-efa1.35"]):
        refused = run_builder("--matrix", str(matrix), "lock", *args)
        assert refused.returncode == 2, refused.stderr
        assert "run 'builder lock' (no image names) to rewrite it" in refused.stderr
        assert lock_path(matrix).read_text() == content


def test_lock_rewrites_a_broken_lock_file(tmp_path, monkeypatch):
    """`builder lock` loads the matrix without the lock (pin=False), so a broken file is
    only warned about; what it would resolve are the matrix's own tags."""
    from builder.lock import bases_in_use

    matrix = write_project(tmp_path)
    lock_path(matrix).write_text("<<<<<<< HEAD\n{}\n>>>>>>> theirs\n")
    specs = load_matrix(matrix, pin=False).images
    assert NGC in bases_in_use(specs, None)
    with pytest.raises(UsageError):
        load_matrix(matrix)


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


def test_stale_lock_warns_on_every_load(tmp_path):
    """A tag changed in the matrix after locking, a base never locked, an entry nobody uses:
    each a warning on every command (validate, render --check included), never silence."""
    matrix = write_project(tmp_path)
    dlc = load_matrix(matrix).get("dl").base_image
    lock_path(matrix).write_text(lock_text({NGC: LockEntry(DIGEST, bases=("ngc",)),
                                            "team/gone:1": LockEntry(OTHER, bases=("retired",))}))
    text = matrix.read_text().replace("pytorch:24.09-py3", "pytorch:24.10-py3")
    matrix.write_text(text)
    loaded = load_matrix(matrix)
    messages = [str(w) for w in loaded.warnings]
    new = "nvcr.io/nvidia/pytorch:24.10-py3"
    assert f"base ngc is locked as {NGC} but the matrix now says {new}; run 'builder lock'" in " ".join(messages)
    assert any(f"base dlc-sm ({dlc}) has no entry, so its images render unpinned" in m for m in messages)
    assert any("entry team/gone:1 (locked for base retired) is used by no image" in m for m in messages)
    assert not any(f"entry {NGC}" in m for m in messages)  # already named by the 'locked as' line
    assert all(m.startswith(f"{lock_path(matrix)}: ") for m in messages)
    assert loaded.get("nv-efa1.35").base_image == new  # unpinned, and said so
    assert run_builder("--matrix", str(matrix), "render", "--all").returncode == 0
    for verb in (["validate"], ["render", "--all", "--check"], ["list"]):
        result = run_builder("--matrix", str(matrix), *verb)
        assert result.returncode == 0, result.stderr
        assert f"warning: {lock_path(matrix)}: base ngc is locked as {NGC}" in result.stderr, verb
    assert "3 warnings" in run_builder("--matrix", str(matrix), "validate").stdout


def test_a_lock_that_covers_the_matrix_warns_nothing(tmp_path):
    matrix = write_project(tmp_path)
    dlc = load_matrix(matrix).get("dl").base_image
    write_lock(matrix, {NGC: DIGEST, dlc: OTHER})
    assert load_matrix(matrix).warnings == ()
    # A base the matrix pins by digest needs no entry.
    pinned = write_project(tmp_path / "pinned", ngc_image=f"{NGC}@{OTHER}")
    write_lock(pinned, {dlc: OTHER})
    assert load_matrix(pinned).warnings == ()


def test_relock_of_some_images_drops_the_old_entry_of_their_base():
    """`builder lock NAME` after a tag change: the base's old entry goes, other bases' stay."""
    from builder.lock import Resolved, relock

    class Registry:  # stands in for RegistryClient.resolve only: relock's bookkeeping is under test
        def resolve(self, ref, platforms=False, known=None):
            return Resolved(ref, DIGEST, "application/vnd.oci.image.manifest.v1+json")

    old = {NGC: LockEntry(OTHER, bases=("ngc",)), "dlc/base:1": LockEntry(OTHER, bases=("dlc-sm",)),
           "orphan/of-other:1": LockEntry(OTHER, bases=("other",))}
    new_ref = "nvcr.io/nvidia/pytorch:24.10-py3"
    entries, findings = relock({new_ref: ("ngc",)}, old, Registry(), prune=False,
                               in_use=[new_ref, "dlc/base:1"])
    assert set(entries) == {new_ref, "dlc/base:1", "orphan/of-other:1"}
    assert {(f.ref, f.state) for f in findings} == {(new_ref, "new"), (NGC, "removed")}
    assert any(f.line() == f"{NGC}: removed from the lock (no image uses it now)" for f in findings)


def test_docker_hub_login_from_a_credential_store(tmp_path, monkeypatch):
    """Docker Desktop, pass and secretservice keep the Docker Hub login under
    https://index.docker.io/v1/ (credsStore); it is found for every Hub spelling."""
    import os

    from builder.lock import docker_login

    helper = tmp_path / "bin" / "docker-credential-hubstore"
    helper.parent.mkdir()
    helper.write_text("#!/bin/sh\nread server\n"
                      "[ \"$server\" = https://index.docker.io/v1/ ] || { echo 'credentials not found'; exit 1; }\n"
                      "printf '{\"Username\":\"hubuser\",\"Secret\":\"hubsecret\"}'\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}{os.pathsep}{os.environ['PATH']}")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"credsStore": "hubstore", "auths": {"https://index.docker.io/v1/": {}}}))
    for registry in ("registry-1.docker.io", "docker.io", "index.docker.io"):
        assert docker_login(registry, config) == ("hubuser", "hubsecret"), registry
    assert docker_login("nvcr.io", config) is None
    # A per-registry helper for Docker Hub, keyed as docker writes it.
    config.write_text(json.dumps({"credHelpers": {"https://index.docker.io/v1/": "hubstore"}}))
    assert docker_login("registry-1.docker.io", config) == ("hubuser", "hubsecret")


class _OddRegistry:
    """A loopback HTTP server answering manifests the way docker-registry never does: no
    Docker-Content-Digest on HEAD, a wrong digest, an oversized body (shapes seen from other
    registries and proxies, which the local registry cannot be made to send)."""

    def __init__(self, body: bytes, head_digest: str | None = None, length: bool = True,
                 media_type: str = "application/vnd.oci.image.manifest.v1+json"):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self
        self.methods: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, send_body):
                outer.methods.append(self.command)
                self.send_response(200)
                self.send_header("Content-Type", media_type)
                if length:  # else HTTP/1.0 with the body ending at close
                    self.send_header("Content-Length", str(len(body)))
                if head_digest:
                    self.send_header("Docker-Content-Digest", head_digest)
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def do_HEAD(self):
                self._answer(False)

            def do_GET(self):
                self._answer(True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_manifests_fetched_when_head_names_no_digest_and_checked():
    import hashlib

    from builder.lock import MAX_MANIFEST_BYTES, RegistryClient, RegistryError

    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    odd = _OddRegistry(body)
    try:
        resolved = RegistryClient().resolve(f"{odd.host}/team/base:1")
        assert resolved.digest == digest and odd.methods == ["HEAD", "GET"]
    finally:
        odd.close()
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": []}).encode()
    lying = _OddRegistry(index, head_digest=OTHER, media_type="application/vnd.oci.image.index.v1+json")
    try:
        assert RegistryClient().resolve(f"{lying.host}/team/base:1").digest == OTHER  # --check: HEAD only
        with pytest.raises(RegistryError, match="does not match the manifest it sent"):
            RegistryClient().resolve(f"{lying.host}/team/base:1", platforms=True)  # lock reads the index
    finally:
        lying.close()
    for length in (True, False):  # announced, or only found out while reading
        huge = _OddRegistry(b"{" + b" " * (MAX_MANIFEST_BYTES + 1) + b"}", length=length)
        try:
            with pytest.raises(RegistryError, match="over 4 MiB"):
                RegistryClient().resolve(f"{huge.host}/team/base:1")
        finally:
            huge.close()
