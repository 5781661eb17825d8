"""`builder push` against real parts: the Docker engine pushes to Debian's docker-registry (htpasswd
auth) through ``EcrFront`` (ECR's registry-side bookkeeping, see push_support), and the ECR API is
moto in server mode. Faults: the registry killed mid-push (back again, or gone), a token the
registry refuses, an immutable tag holding another image (found before the push, or refused by the
registry in a race). No outcome may be a success without a digest verified three ways.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import uuid

import pytest
import requests

from builder.ecr import EcrApi
from builder.push import Pusher, PushRequest
from push_support import (
    MOTO_PASSWORD,
    EcrFront,
    MotoEcr,
    Registry,
    aws_env,
    docker_client,
    fixture_image,
    need,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine():
    return docker_client()


@pytest.fixture(scope="module")
def moto():
    server = MotoEcr().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def images(engine):
    return {"a": fixture_image(engine, "push-a", "image a"), "b": fixture_image(engine, "push-b", "image b")}


def _stack(tmp_path, moto, engine, password=MOTO_PASSWORD):
    need(shutil.which("docker-registry") is not None, "docker-registry is not installed (apt-get install docker-registry)")
    registry = Registry(tmp_path / "registry", password=password).start()
    front = EcrFront(registry, moto).start()
    return registry, front


@pytest.fixture
def stack(tmp_path, moto, engine):
    registry, front = _stack(tmp_path, moto, engine)
    yield registry, front
    _teardown(engine, registry, front)


def _teardown(engine, registry, front):
    front.stop()
    registry.stop()
    for image in engine.images.list():  # drop the tags the tests made (the fixture images stay cached)
        for tag in image.tags:
            if tag.startswith((front.address + "/", "itest/")):
                engine.images.remove(tag, noprune=True)


def _repo() -> str:
    return f"itest/{uuid.uuid4().hex[:10]}"


def _run(moto, front, *args, home=None):
    env = aws_env(moto.endpoint)
    if home is not None:
        env["HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "builder", "push", *args, "--registry", front.address],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _served_digest(front, repository, tag):
    answer = requests.head(
        f"http://{front.address}/v2/{repository}/manifests/{tag}",
        auth=("AWS", MOTO_PASSWORD),
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        timeout=30,
    )
    return answer.headers.get("Docker-Content-Digest") if answer.status_code == 200 else None


def _recorded_digest(moto, repository, tag):
    ecr = moto.client()
    try:
        return ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])["imageDetails"][0]["imageDigest"]
    except ecr.exceptions.ImageNotFoundException:
        return None


def _local(engine, source, repository, tag):
    engine.images.get(source).tag(repository, tag)
    return f"{repository}:{tag}"


def test_push_verifies_digest_and_keeps_token_off_disk(stack, moto, engine, images, tmp_path):
    registry, front = stack
    repo = _repo()
    ref = _local(engine, images["a"], repo, "v1")
    home = tmp_path / "home"
    home.mkdir()
    result = _run(moto, front, ref, "--json", home=home)
    assert result.returncode == 0, result.stderr
    pushed = json.loads(result.stdout)
    (tag,) = pushed["tags"]
    assert (tag["outcome"], tag["attempts"]) == ("pushed", 1)
    assert tag["digest"] == _served_digest(front, repo, "v1") == _recorded_digest(moto, repo, "v1")
    assert pushed["repositories"][0]["immutable"] and pushed["repositories"][0]["scan_on_push"]
    assert "pushing" in result.stderr  # per-layer progress
    # The registry name was only for the push: the local engine keeps the image's own tags.
    assert not [t for t in engine.images.get(ref).tags if t.startswith(front.address + "/")]
    assert MOTO_PASSWORD not in result.stdout + result.stderr
    assert not [p for p in home.rglob("*") if p.is_file() and MOTO_PASSWORD in p.read_text(errors="ignore")]


def test_every_tag_pushed_and_same_image_again_is_accepted(stack, moto, engine, images, monkeypatch):
    registry, front = stack
    for name, value in aws_env(moto.endpoint).items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    repo = _repo()
    ecr = EcrApi.connect(region="us-east-1", endpoint_url=moto.endpoint)
    pusher = Pusher(ecr, engine, registry=front.address, retry_delay=0.1)
    request = PushRequest(source=images["a"], targets=((repo, "2.3.0-cu121"), (repo, "2.3-latest")))
    first = pusher.push(request)
    assert [t.outcome for t in first.tags] == ["pushed", "pushed"]
    assert len({t.digest for t in first.tags}) == 1
    for t in first.tags:
        assert t.digest == _served_digest(front, repo, t.tag) == _recorded_digest(moto, repo, t.tag)
    again = pusher.push(request)  # an immutable tag that already holds this image: success, no push
    assert [t.outcome for t in again.tags] == ["already-present", "already-present"]
    assert [t.digest for t in again.tags] == [t.digest for t in first.tags]


def test_immutable_tag_with_another_image_is_one_clear_error(stack, moto, engine, images):
    registry, front = stack
    repo = _repo()
    assert _run(moto, front, _local(engine, images["a"], repo, "v1")).returncode == 0
    before = _recorded_digest(moto, repo, "v1")
    result = _run(moto, front, _local(engine, images["b"], repo, "v1"))  # same tag, other image
    assert result.returncode == 3
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "already holds a different image" in errors[0] and "immutable" in errors[0]
    assert result.stdout == ""
    assert _recorded_digest(moto, repo, "v1") == _served_digest(front, repo, "v1") == before


def test_immutable_tag_taken_during_the_push_is_refused(stack, moto, engine, images):
    """Another pusher wins the race between our check and our manifest PUT: the registry refuses
    the tag (TAG_INVALID, as ECR does) and the tool reports the conflict, not a success."""
    registry, front = stack
    repo = _repo()
    ref = _local(engine, images["a"], repo, "v1")
    rival = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 2, "digest": "sha256:" + "0" * 64},
            "layers": [],
        }
    )

    def rival_wins(method, path):
        if method == "PUT" and "/manifests/" in path and front.before_request:
            front.before_request = None
            moto.client().put_image(repositoryName=repo, imageManifest=rival, imageTag="v1")

    front.before_request = rival_wins
    result = _run(moto, front, ref)
    assert result.returncode == 3, result.stderr
    assert "already holds a different image" in result.stderr
    assert _served_digest(front, repo, "v1") is None  # the registry never stored ours


def test_registry_killed_at_manifest_put_then_back_is_retried(stack, moto, engine, images):
    registry, front = stack
    repo = _repo()
    ref = _local(engine, images["a"], repo, "v1")

    def crash_once(method, path):
        if method == "PUT" and "/manifests/" in path and front.before_request:
            front.before_request = None
            registry.stop()
            threading.Timer(0.3, registry.start).start()

    front.before_request = crash_once
    result = _run(moto, front, ref, "--json", "--retry-delay", "2")
    assert result.returncode == 0, result.stderr
    (tag,) = json.loads(result.stdout)["tags"]
    assert tag["attempts"] >= 2 and "retrying" in result.stderr
    assert tag["digest"] == _served_digest(front, repo, "v1") == _recorded_digest(moto, repo, "v1")


def test_registry_killed_during_layer_upload_recovers(stack, moto, engine, images):
    registry, front = stack
    repo = _repo()
    ref = _local(engine, images["b"], repo, "v1")

    def crash_once(method, path):
        if method == "PATCH" and front.before_request:
            front.before_request = None
            registry.stop()
            threading.Timer(0.5, registry.start).start()

    front.before_request = crash_once
    result = _run(moto, front, ref, "--json")
    assert result.returncode == 0, result.stderr
    (tag,) = json.loads(result.stdout)["tags"]
    assert tag["digest"] == _served_digest(front, repo, "v1") == _recorded_digest(moto, repo, "v1")


def test_registry_gone_is_one_clear_error_and_no_success(stack, moto, engine, images):
    registry, front = stack
    repo = _repo()
    ref = _local(engine, images["a"], repo, "v1")

    def crash(method, path):
        if method == "PUT" and "/manifests/" in path:
            registry.stop()

    front.before_request = crash
    result = _run(moto, front, ref, "--attempts", "3", "--retry-delay", "0.1")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "failed after 3 attempts" in errors[0]
    assert result.stdout == ""
    assert _recorded_digest(moto, repo, "v1") is None


def test_refused_token_is_retried_then_one_clear_error(tmp_path, moto, engine, images):
    registry, front = _stack(tmp_path, moto, engine, password="not-what-ecr-issues")
    try:
        repo = _repo()
        result = _run(moto, front, _local(engine, images["a"], repo, "v1"), "--attempts", "4", "--retry-delay", "0.1")
        assert result.returncode == 1
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "refused the ECR token" in errors[0]
        # retried once with a fresh token; a second refusal ends it (more tries cannot help)
        assert "attempt 2 of 4" in result.stderr and "attempt 3 of 4" not in result.stderr
        assert "failed after 2 attempts" in errors[0]
        assert MOTO_PASSWORD not in result.stdout + result.stderr
        assert result.stdout == ""
        assert _recorded_digest(moto, repo, "v1") is None
    finally:
        _teardown(engine, registry, front)


def test_matrix_name_pushes_every_tag_the_matrix_gives(stack, moto, engine, images):
    """`builder push NAME`: the entry's refs, re-rooted at the registry, all verified."""
    from pathlib import Path

    from builder.matrix import load_matrix

    registry, front = stack
    matrix_path = Path(__file__).resolve().parent.parent / "matrix.yaml"
    local = {tag for image in engine.images.list() for tag in image.tags}
    # An entry none of whose refs exist here, so that no real build of it is touched.
    spec = next((s for s in load_matrix(matrix_path).images if not set(s.refs) & local), None)
    need(spec is not None, "every matrix entry has a local image; no entry is free for a stand-in")
    for ref in spec.refs:
        engine.images.get(images["b"]).tag(*ref.rsplit(":", 1))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "builder", "--matrix", str(matrix_path), "push", spec.name, "--registry", front.address, "--json"],
            env=aws_env(moto.endpoint),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        tags = json.loads(result.stdout)["tags"]
        assert [f"{t['repository']}:{t['tag']}" for t in tags] == list(spec.refs)
        for t in tags:
            assert t["ref"] == f"{front.address}/{t['repository']}:{t['tag']}"
            assert t["digest"] == _served_digest(front, t["repository"], t["tag"]) == _recorded_digest(moto, t["repository"], t["tag"])
    finally:
        for ref in spec.refs:
            engine.images.remove(ref, noprune=True)
