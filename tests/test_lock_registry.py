"""`builder lock` against real registries: Debian's docker-registry with Basic (htpasswd) auth,
with token (Bearer) auth served by a Docker-spec token server, and behind the ECR API (moto),
with tiny images pushed by the Docker engine. The tag is moved by pushing another image to it."""

from __future__ import annotations

import json

import pytest

from bake_support import run_builder, write_project
from builder.lock import lock_path
from lock_support import AuthRegistry
from push_support import MOTO_PASSWORD, MotoEcr, aws_env, docker_client, fixture_image

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine():
    return docker_client()


@pytest.fixture(scope="module")
def images(engine):
    return fixture_image(engine, "lock-base", "first"), fixture_image(engine, "lock-base", "second")


@pytest.fixture
def basic_registry(tmp_path):
    registry = AuthRegistry(tmp_path / "registry", "htpasswd").start()
    yield registry
    registry.stop()


@pytest.fixture
def token_registry(tmp_path):
    registry = AuthRegistry(tmp_path / "registry", "token").start()
    yield registry
    registry.stop()


def lock(matrix, *args, env=None):
    return run_builder("--matrix", str(matrix), "lock", *args, env=env)


def test_basic_auth_lock_render_check_and_a_moved_tag(tmp_path, engine, images, basic_registry):
    first = basic_registry.push(engine, images[0], "team/base", "1")
    dlc_digest = basic_registry.push(engine, images[1], "team/dlc", "2.4.0")
    base, dlc = f"{basic_registry.host}/team/base:1", f"{basic_registry.host}/team/dlc:2.4.0"
    matrix = write_project(tmp_path / "proj", ngc_image=base, dlc_image=dlc)
    env = {"DOCKER_CONFIG": str(basic_registry.docker_config(tmp_path / "login"))}

    result = lock(matrix, env=env)  # every image's base
    assert result.returncode == 0, result.stderr
    data = json.loads(lock_path(matrix).read_text())
    assert set(data["images"]) == {base, dlc}
    assert data["images"][base]["digest"] == first and data["images"][dlc]["digest"] == dlc_digest
    assert data["images"][base]["bases"] == ["ngc"] and data["images"][dlc]["bases"] == ["dlc-sm"]
    assert "application/vnd.docker.distribution.manifest.v2+json" == data["images"][base]["media_type"]
    assert f"{base}: new {first}" in result.stdout

    assert run_builder("--matrix", str(matrix), "render", "--all").returncode == 0
    dockerfile = (tmp_path / "proj" / "images" / "nv-efa1.35" / "Dockerfile").read_text()
    assert f"FROM {base}@{first}\n" in dockerfile
    assert f'org.opencontainers.image.base.digest="{first}"' in dockerfile

    again = lock(matrix, "--check", env=env)
    assert again.returncode == 0, again.stderr
    assert f"{base}: unchanged" in again.stdout and f"{dlc}: unchanged" in again.stdout
    assert f"FROM {dlc}@{dlc_digest}" in (tmp_path / "proj" / "images" / "dl" / "Dockerfile").read_text()

    # Someone pushes another image under the same tag: --check notices, the lock stays as it was.
    second = basic_registry.push(engine, images[1], "team/base", "1")
    assert second != first
    moved = lock(matrix, "--check", "--json", env=env)
    assert moved.returncode == 1, moved.stderr
    findings = {f["ref"]: f for f in json.loads(moved.stdout)["findings"]}
    assert findings[base] == {"ref": base, "state": "moved", "digest": second, "locked": first}
    assert findings[dlc]["state"] == "unchanged"
    assert "differ from matrix.lock.json" in moved.stderr
    assert json.loads(lock_path(matrix).read_text())["images"][base]["digest"] == first
    assert run_builder("--matrix", str(matrix), "render", "--all", "--check").returncode == 0

    # Re-locking takes the new digest; the committed Dockerfile is now stale until re-rendered.
    relocked = lock(matrix, "nv-efa1.35", env=env)
    assert relocked.returncode == 0 and "tag moved" in relocked.stdout and "builder render --all" in relocked.stderr
    assert run_builder("--matrix", str(matrix), "render", "--all", "--check").returncode == 1


def test_basic_auth_without_or_with_a_wrong_login_exits_4(tmp_path, engine, images, basic_registry):
    basic_registry.push(engine, images[0], "team/base", "1")
    matrix = write_project(tmp_path / "proj", ngc_image=f"{basic_registry.host}/team/base:1")
    nothing = lock(matrix, "nv-efa1.35", env={"DOCKER_CONFIG": str(tmp_path / "empty")})
    assert nothing.returncode == 4 and f"docker login {basic_registry.host}" in nothing.stderr
    wrong = lock(matrix, "nv-efa1.35",
                 env={"DOCKER_CONFIG": str(basic_registry.docker_config(tmp_path / "bad", password="wrong"))})
    assert wrong.returncode == 4 and "refused the credentials" in wrong.stderr
    assert "Traceback" not in nothing.stderr + wrong.stderr
    assert not lock_path(matrix).exists()


def test_token_auth_anonymous_and_with_login(tmp_path, engine, images, token_registry):
    digest = token_registry.push(engine, images[0], "team/base", "1")
    base = f"{token_registry.host}/team/base:1"
    matrix = write_project(tmp_path / "proj", ngc_image=base)
    token_registry.tokens.requests.clear()

    # A public image: an anonymous token with pull access is enough, as on Docker Hub or NGC.
    anonymous = lock(matrix, "nv-efa1.35", env={"DOCKER_CONFIG": str(tmp_path / "empty")})
    assert anonymous.returncode == 0, anonymous.stderr
    assert json.loads(lock_path(matrix).read_text())["images"][base]["digest"] == digest
    assert token_registry.tokens.requests == [{"scope": ["repository:team/base:pull"], "login": None}]

    token_registry.tokens.requests.clear()
    config = token_registry.docker_config(tmp_path / "login")
    logged_in = lock(matrix, "--check", "nv-efa1.35", env={"DOCKER_CONFIG": str(config)})
    assert logged_in.returncode == 0, logged_in.stderr
    assert token_registry.tokens.requests == [{"scope": ["repository:team/base:pull"], "login": token_registry.username}]

    wrong = lock(matrix, "--check", "nv-efa1.35",
                 env={"DOCKER_CONFIG": str(token_registry.docker_config(tmp_path / "bad", password="wrong"))})
    assert wrong.returncode == 4 and "token service" in wrong.stderr and "refused the login" in wrong.stderr

    missing = write_project(tmp_path / "gone", ngc_image=f"{token_registry.host}/team/base:9")
    gone = lock(missing, "nv-efa1.35", env={"DOCKER_CONFIG": str(config)})
    assert gone.returncode == 1 and "no such tag" in gone.stderr


def test_ecr_login_through_the_ecr_api(tmp_path, engine, images):
    moto = MotoEcr().start()
    registry = AuthRegistry(tmp_path / "registry", "htpasswd", username="AWS", password=MOTO_PASSWORD).start()
    try:
        digest = registry.push(engine, images[0], "team/base", "1")
        base = f"{registry.host}/team/base:1"
        matrix = write_project(tmp_path / "proj", ngc_image=base)
        env = {**aws_env(moto.endpoint), "DOCKER_CONFIG": str(tmp_path / "empty")}
        result = run_builder("--matrix", str(matrix), "lock", "nv-efa1.35", "--ecr-registry", registry.host, env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(lock_path(matrix).read_text())["images"][base]["digest"] == digest
        # The same registry without --ecr-registry: no docker login, so the registry refuses.
        plain = run_builder("--matrix", str(matrix), "lock", "--check", "nv-efa1.35", env=env)
        assert plain.returncode == 4 and "docker login" in plain.stderr
    finally:
        registry.stop()
        moto.stop()


def test_a_multi_platform_tag_locks_the_index_digest(tmp_path, engine, images, basic_registry):
    """A tag holding a manifest list: the lock keeps the list's digest (what FROM resolves per
    platform) and records each platform's manifest digest."""
    import hashlib

    import requests

    amd64 = basic_registry.push(engine, images[0], "team/base", "single")
    auth = (basic_registry.username, basic_registry.password)
    url = f"http://{basic_registry.host}/v2/team/base/manifests"
    manifest = requests.get(f"{url}/{amd64}", auth=auth, timeout=30,
                            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert manifest.status_code == 200
    media_type = "application/vnd.docker.distribution.manifest.list.v2+json"
    index = json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": [
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": len(manifest.content),
         "digest": amd64, "platform": {"architecture": "amd64", "os": "linux"}},
    ]}).encode()
    put = requests.put(f"{url}/multi", data=index, auth=auth, headers={"Content-Type": media_type}, timeout=30)
    assert put.status_code == 201, put.text
    index_digest = "sha256:" + hashlib.sha256(index).hexdigest()
    assert put.headers["Docker-Content-Digest"] == index_digest

    base = f"{basic_registry.host}/team/base:multi"
    matrix = write_project(tmp_path / "proj", ngc_image=base)
    result = lock(matrix, "nv-efa1.35", env={"DOCKER_CONFIG": str(basic_registry.docker_config(tmp_path / "login"))})
    assert result.returncode == 0, result.stderr
    entry = json.loads(lock_path(matrix).read_text())["images"][base]
    assert entry == {"digest": index_digest, "media_type": media_type, "platforms": {"linux/amd64": amd64},
                     "bases": ["ngc"]}
