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

    # A lock broken by a merge: every verb says how to repair it, and 'builder lock' does.
    good = lock_path(matrix).read_text()
    lock_path(matrix).write_text("<<<<<<< HEAD\n" + good + "=======\n" + good + ">>>>>>> theirs\n")
    broken = run_builder("--matrix", str(matrix), "render", "--all", "--check")
    assert broken.returncode == 2 and "run 'builder lock' (no image names) to rewrite it" in broken.stderr
    repaired = lock(matrix, env=env)
    assert repaired.returncode == 0, repaired.stderr
    assert "not a readable lock file" in repaired.stderr and "rewriting it" in repaired.stderr
    assert lock_path(matrix).read_text() == good

    # The matrix moves the base to another tag: the lock warns until 'lock NAME' replaces the entry.
    basic_registry.push(engine, images[0], "team/base", "2")
    matrix.write_text(matrix.read_text().replace(base, f"{basic_registry.host}/team/base:2"))
    stale = run_builder("--matrix", str(matrix), "validate")
    assert f"base ngc is locked as {base} but the matrix now says {basic_registry.host}/team/base:2" in stale.stderr
    moved = lock(matrix, "nv-efa1.35", env=env)
    assert moved.returncode == 0, moved.stderr
    assert f"{base}: removed from the lock" in moved.stdout
    assert set(json.loads(lock_path(matrix).read_text())["images"]) == {f"{basic_registry.host}/team/base:2", dlc}
    assert "warning" not in run_builder("--matrix", str(matrix), "validate").stderr


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

    # A stale login the token service refuses: a public image still resolves anonymously.
    bad = {"DOCKER_CONFIG": str(token_registry.docker_config(tmp_path / "bad", password="wrong"))}
    token_registry.tokens.requests.clear()
    stale = lock(matrix, "--check", "nv-efa1.35", env=bad)
    assert stale.returncode == 0, stale.stderr
    assert "refused your login" in stale.stderr and "trying anonymously" in stale.stderr
    assert token_registry.tokens.requests == [{"scope": ["repository:team/base:pull"], "login": None}]
    # ... but not a private one: the error names the refused login.
    token_registry.tokens.private.add("team/base")
    refused = lock(matrix, "--check", "nv-efa1.35", env=bad)
    assert refused.returncode == 4, refused.stderr
    assert "refused your login" in refused.stderr and f"run 'docker login {token_registry.host}' again" in refused.stderr
    anonymous = lock(matrix, "--check", "nv-efa1.35", env={"DOCKER_CONFIG": str(tmp_path / "empty")})
    assert anonymous.returncode == 4 and f"log in with 'docker login {token_registry.host}'" in anonymous.stderr
    assert "Traceback" not in refused.stderr + anonymous.stderr
    token_registry.tokens.private.clear()

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
        # No AWS credentials at all: the ECR login fails, which is exit 4 (a registry could not
        # be asked), not 1, which --check keeps for a moved tag.
        bare = {"DOCKER_CONFIG": str(tmp_path / "empty"), "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
                "AWS_SESSION_TOKEN": "", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
                "AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL_ECR": moto.endpoint}
        for args in (["--check"], []):
            nocreds = run_builder("--matrix", str(matrix), "lock", *args, "nv-efa1.35", "--ecr-registry", registry.host,
                                  env=bare)
            assert nocreds.returncode == 4, nocreds.stderr
            assert f"ECR login for {registry.host} failed" in nocreds.stderr and "AWS credentials" in nocreds.stderr
            assert "Traceback" not in nocreds.stderr
        noregion = run_builder("--matrix", str(matrix), "lock", "--check", "nv-efa1.35", "--ecr-registry", registry.host,
                               env={**bare, "AWS_DEFAULT_REGION": "", "AWS_REGION": ""})
        assert noregion.returncode == 2 and "AWS_DEFAULT_REGION" in noregion.stderr, noregion.stderr
    finally:
        registry.stop()
        moto.stop()


def test_a_multi_platform_tag_locks_the_index_digest(tmp_path, engine, images, basic_registry):
    """A tag holding a manifest list: the lock keeps the list's digest (what FROM resolves per
    platform) and records each platform's manifest digest."""
    index_digest, amd64 = _index(basic_registry, engine, images)
    base = f"{basic_registry.host}/team/base:multi"
    matrix = write_project(tmp_path / "proj", ngc_image=base)
    result = lock(matrix, "nv-efa1.35", env={"DOCKER_CONFIG": str(basic_registry.docker_config(tmp_path / "login"))})
    assert result.returncode == 0, result.stderr
    entry = json.loads(lock_path(matrix).read_text())["images"][base]
    assert entry == {"digest": index_digest, "media_type": INDEX, "platforms": {"linux/amd64": amd64},
                     "bases": ["ngc"]}


def _index(registry, engine, images):
    """Push one image and a manifest list over it under team/base:multi; (index digest, amd64 digest)."""
    import hashlib

    import requests

    amd64 = registry.push(engine, images[0], "team/base", "single")
    auth = (registry.username, registry.password)
    url = f"http://{registry.host}/v2/team/base/manifests"
    manifest = requests.get(f"{url}/{amd64}", auth=auth, timeout=30,
                            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert manifest.status_code == 200
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": len(manifest.content),
         "digest": amd64, "platform": {"architecture": "amd64", "os": "linux"}},
    ]}).encode()
    put = requests.put(f"{url}/multi", data=index, auth=auth, headers={"Content-Type": INDEX}, timeout=30)
    assert put.status_code == 201, put.text
    return "sha256:" + hashlib.sha256(index).hexdigest(), amd64


INDEX = "application/vnd.docker.distribution.manifest.list.v2+json"


def test_check_only_heads_and_lock_gets_an_index_once(tmp_path, engine, images, basic_registry):
    """Docker Hub counts manifest GETs as pulls: --check sends HEADs only; lock GETs a new
    index once for its platforms and not again while its digest stands."""
    import requests

    from builder.lock import Credentials, LockEntry, RegistryClient, check, relock

    index_digest, amd64 = _index(basic_registry, engine, images)
    ref = f"{basic_registry.host}/team/base:multi"
    methods: list[str] = []
    session = requests.Session()
    session.hooks["response"].append(lambda answer, *args, **kwargs: methods.append(answer.request.method))
    config = basic_registry.docker_config(tmp_path / "login")
    client = RegistryClient(Credentials(docker_config=config / "config.json"), session=session)

    entries, _ = relock({ref: ("ngc",)}, None, client, prune=True)
    assert entries[ref] == LockEntry(index_digest, INDEX, {"linux/amd64": amd64}, ("ngc",))
    assert methods.count("GET") == 1

    methods.clear()
    findings = check({ref: ("ngc",)}, entries, client)
    assert [f.state for f in findings] == ["unchanged"]
    assert methods and set(methods) == {"HEAD"}

    methods.clear()
    again, _ = relock({ref: ("ngc",)}, entries, client, prune=True)
    assert again == entries and set(methods) == {"HEAD"}


def test_check_reports_every_registry(tmp_path, engine, images, basic_registry):
    """One registry down: the other base is still checked and reported; exit 4, or 1 when the
    reachable one moved (drift is what --check is for)."""
    from push_support import free_port

    first = basic_registry.push(engine, images[0], "team/base", "1")
    base = f"{basic_registry.host}/team/base:1"
    down = f"127.0.0.1:{free_port()}/team/dlc:2.4.0"
    matrix = write_project(tmp_path / "proj", ngc_image=base, dlc_image=down)
    env = {"DOCKER_CONFIG": str(basic_registry.docker_config(tmp_path / "login"))}
    lock_path(matrix).write_text(json.dumps({"schema": 1, "images": {
        base: {"digest": first, "bases": ["ngc"]}, down: {"digest": "sha256:" + "ab" * 32, "bases": ["dlc-sm"]}}}))

    result = lock(matrix, "--check", "--json", env=env)
    assert result.returncode == 4, result.stderr
    findings = {f["ref"]: f for f in json.loads(result.stdout)["findings"]}
    assert findings[base]["state"] == "unchanged"
    assert findings[down]["state"] == "error" and "cannot reach" in findings[down]["message"]
    assert "1 of 2 base images could not be checked; 1 match matrix.lock.json" in result.stderr

    basic_registry.push(engine, images[1], "team/base", "1")
    moved = lock(matrix, "--check", env=env)
    assert moved.returncode == 1, moved.stderr
    assert f"{base}: tag moved" in moved.stdout and f"{down}: not checked: cannot reach" in moved.stdout
    assert "1 of 2 base images differ from matrix.lock.json (1 more could not be checked)" in moved.stderr

    # lock itself writes nothing when a registry cannot be asked.
    before = lock_path(matrix).read_text()
    relock = lock(matrix, env=env)
    assert relock.returncode == 4 and "nothing written" in relock.stderr and down in relock.stderr
    assert lock_path(matrix).read_text() == before
