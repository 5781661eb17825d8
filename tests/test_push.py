"""Fast tests of the push stage: stream reading, error kinds, target resolution, the ECR API
wrapper against moto's server (no Docker engine needed)."""

from __future__ import annotations

import types

import pytest

from builder.commands.push import parse_image_ref, resolve
from builder.ecr import ECR_HOST_RE, EcrApi, RegistryAuth, check_registry
from builder.errors import UsageError
from builder.push import PushRequest, backoff_delay
from builder.push_stream import (
    AUTH,
    FATAL,
    TAG_CONFLICT,
    TRANSIENT,
    LayerProgress,
    PushStreamError,
    classify,
    read_push_stream,
)
from push_support import MOTO_PASSWORD, MotoEcr

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


@pytest.mark.parametrize(
    "message, kind",
    [
        ('Put "https://x/v2/r/manifests/t": EOF', TRANSIENT),
        ("dial tcp 127.0.0.1:5000: connect: connection refused", TRANSIENT),
        ("read tcp 10.0.0.1:5000: i/o timeout", TRANSIENT),
        ("received unexpected HTTP status: 502 Bad Gateway", TRANSIENT),
        ("toomanyrequests: Rate exceeded", TRANSIENT),
        ("unauthorized: authentication required", AUTH),
        ("denied: Your authorization token has expired. Reauthenticate and try again.", AUTH),
        (
            "tag invalid: The image tag 'v1' already exists in the 'r' repository and cannot be overwritten "
            "because the repository is immutable.",
            TAG_CONFLICT,
        ),
        ("manifest invalid: manifest invalid", FATAL),
        ("name unknown: The repository with name 'r' does not exist", FATAL),
    ],
)
def test_error_kinds(message, kind):
    assert classify(message) == kind


def _stream(*extra):
    return [
        {"status": "The push refers to repository [r]"},
        {"status": "Preparing", "progressDetail": {}, "id": "aaa"},
        {"status": "Pushing", "progressDetail": {"current": 10, "total": 100}, "id": "aaa"},
        {"status": "Pushed", "progressDetail": {}, "id": "aaa"},
        *extra,
    ]


def test_stream_digest_from_aux_and_status():
    lines = _stream({"status": f"v1: digest: {DIGEST} size: 527"}, {"aux": {"Tag": "v1", "Digest": DIGEST, "Size": 527}})
    outcome = read_push_stream(lines, "v1")
    assert (outcome.digest, outcome.size) == (DIGEST, 527)


def test_stream_error_line_anywhere_fails_even_after_progress():
    lines = _stream({"errorDetail": {"message": "unauthorized: authentication required"}, "error": "unauthorized: authentication required"})
    with pytest.raises(PushStreamError) as caught:
        read_push_stream(lines, "v1")
    assert caught.value.kind == AUTH


def test_stream_without_digest_is_never_success():
    with pytest.raises(PushStreamError) as caught:
        read_push_stream(_stream(), "v1")
    assert caught.value.kind == TRANSIENT


def test_stream_with_disagreeing_digests_fails():
    lines = _stream({"status": f"v1: digest: {OTHER} size: 527"}, {"aux": {"Tag": "v1", "Digest": DIGEST, "Size": 527}})
    with pytest.raises(PushStreamError, match="two digests"):
        read_push_stream(lines, "v1")


def test_stream_digest_for_another_tag_fails():
    with pytest.raises(PushStreamError, match="expected 'v1'"):
        read_push_stream(_stream({"aux": {"Tag": "v2", "Digest": DIGEST, "Size": 1}}), "v1")


def test_progress_one_line_per_state_and_collapsed_engine_retries():
    shown: list[str] = []
    progress = LayerProgress(shown.append)
    for line in _stream(
        {"status": "Retrying in 5 seconds", "progressDetail": {}, "id": "aaa"},
        {"status": "Retrying in 4 seconds", "progressDetail": {}, "id": "aaa"},
        {"status": "Pushed", "progressDetail": {}, "id": "aaa"},
    ):
        progress.feed(line)
    assert shown == [
        "  aaa: preparing",
        "  aaa: pushing 10 B / 100 B",
        "  aaa: pushed",
        "  aaa: upload failed, the engine retries (retrying in 5 seconds)",
        "  aaa: pushed",
    ]


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("pytorch:2.3", ("pytorch", "2.3")),
        ("team/pytorch:2.3-cu121", ("team/pytorch", "2.3-cu121")),
        ("127.0.0.1:5000/team/pytorch:v1", ("team/pytorch", "v1")),
        ("123456789012.dkr.ecr.us-east-1.amazonaws.com/pt:v1", ("pt", "v1")),
        ("localhost/pt:v1", ("pt", "v1")),
    ],
)
def test_image_refs(ref, expected):
    assert parse_image_ref(ref) == expected


@pytest.mark.parametrize("ref", ["pytorch", "Upper/case:v1", "pt:v1;rm -rf /", "pt:", "pt:-x", "a//b:v1"])
def test_bad_image_refs(ref):
    with pytest.raises(UsageError):
        parse_image_ref(ref)


class _Matrix:
    def __init__(self, *specs):
        self.specs = {s.name: s for s in specs}

    def find(self, name):
        return self.specs.get(name)

    def get(self, name):
        if name not in self.specs:
            raise UsageError(f"matrix.yaml: no image named '{name}'")
        return self.specs[name]


def _state(*specs):
    matrix = _Matrix(*specs)
    return types.SimpleNamespace(matrix=lambda: matrix)


def test_resolve_matrix_name_pushes_every_tag():
    spec = types.SimpleNamespace(
        name="pt-dlc",
        repository="team/pytorch",
        refs=("team/pytorch:2.3.0-cu121", "team/pytorch:2.3-latest"),
        primary_ref="team/pytorch:2.3.0-cu121",
    )
    request = resolve(_state(spec), "pt-dlc")
    assert request == PushRequest(
        source="team/pytorch:2.3.0-cu121",
        targets=(("team/pytorch", "2.3.0-cu121"), ("team/pytorch", "2.3-latest")),
    )


def test_resolve_image_ref_and_unknown_name():
    assert resolve(_state(), "team/pt:v1").targets == (("team/pt", "v1"),)
    with pytest.raises(UsageError, match="no image named"):
        resolve(_state(), "pt-typo")
    with pytest.raises(UsageError, match="by tag"):
        resolve(_state(), "team/pt@" + DIGEST)


def test_registry_hosts():
    match = ECR_HOST_RE.match("123456789012.dkr.ecr.eu-west-1.amazonaws.com")
    assert (match["account"], match["region"]) == ("123456789012", "eu-west-1")
    assert check_registry("127.0.0.1:5000") == "127.0.0.1:5000"
    for bad in ("https://x.example", "x.example/path", "a b", ""):
        with pytest.raises(UsageError):
            check_registry(bad)


def test_token_never_in_repr():
    auth = RegistryAuth(username="AWS", password="s3cret-token", registry="r.example")
    assert "s3cret-token" not in repr(auth)


def test_backoff_grows_and_is_capped():
    assert 1.5 <= backoff_delay(1, 2.0) <= 2.5
    assert 6.0 <= backoff_delay(3, 2.0) <= 10.0
    assert backoff_delay(30, 2.0) <= 75.0


# --- the ECR API wrapper against moto's server ----------------------------------------------------


@pytest.fixture(scope="module")
def moto():
    server = MotoEcr().start()
    yield server
    server.stop()


@pytest.fixture
def ecr(moto, monkeypatch):
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return EcrApi.connect(region="us-east-1", endpoint_url=moto.endpoint)


def test_repository_created_immutable_with_scan_then_read_back(ecr):
    first = ecr.ensure_repository("unit/created", immutable=True, scan_on_push=True)
    assert (first.created, first.immutable, first.scan_on_push) == (True, True, True)
    again = ecr.ensure_repository("unit/created", immutable=False, scan_on_push=False)
    assert (again.created, again.immutable, again.scan_on_push) == (False, True, True)  # settings kept


def test_existing_repository_needs_no_create_permission(moto, ecr):
    """A typical CI push role (AmazonEC2ContainerRegistryPowerUser) may describe and push but not
    create repositories: pushing to an existing one must work, a missing one is one clear error.
    moto enforces the IAM policy here (auth switched on for this test only)."""
    import json as _json

    import boto3
    import requests as _requests
    from botocore.exceptions import ClientError

    from builder.errors import BuilderError

    admin = dict(region_name="us-east-1", endpoint_url=moto.endpoint, aws_access_key_id="testing",
                 aws_secret_access_key="testing")
    iam = boto3.client("iam", **admin)
    user = "ci-push"
    try:
        iam.create_user(UserName=user)
    except ClientError:
        pass
    allowed = ["ecr:DescribeRepositories", "ecr:GetAuthorizationToken", "ecr:DescribeImages", "ecr:BatchGetImage",
               "ecr:PutImage", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart", "ecr:CompleteLayerUpload"]
    iam.put_user_policy(UserName=user, PolicyName="push", PolicyDocument=_json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": allowed, "Resource": "*"}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    boto3.client("ecr", **admin).create_repository(repositoryName="unit/existing", imageTagMutability="IMMUTABLE")
    role = EcrApi(boto3.client("ecr", region_name="us-east-1", endpoint_url=moto.endpoint,
                               aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"]))
    _requests.post(f"{moto.endpoint}/moto-api/reset-auth", data=b"0", timeout=10)
    try:
        repo = role.ensure_repository("unit/existing", immutable=False)
        assert (repo.created, repo.immutable, repo.tag_immutable("v1")) == (False, True, True)
        with pytest.raises(BuilderError, match=r"does not exist and these credentials may not create it") as err:
            role.ensure_repository("unit/not-there")
        assert "\n" not in str(err.value)
    finally:
        _requests.post(f"{moto.endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)


def test_tag_mutability_with_exclusion_filters_is_left_to_the_registry(moto, ecr):
    import boto3

    client = boto3.client("ecr", region_name="us-east-1", endpoint_url=moto.endpoint)
    client.create_repository(repositoryName="unit/excl", imageTagMutability="IMMUTABLE_WITH_EXCLUSION",
                             imageTagMutabilityExclusionFilters=[{"filterType": "WILDCARD", "filter": "latest*"}])
    repo = ecr.ensure_repository("unit/excl")
    assert repo.immutable and repo.tag_mutability == "IMMUTABLE_WITH_EXCLUSION" and repo.exclusions == ("latest*",)
    assert repo.tag_immutable("v1") is None and repo.tag_immutable("latest") is None
    plain = ecr.ensure_repository("unit/plain-immutable")
    assert plain.tag_immutable("latest") is True
    assert ecr.ensure_repository("unit/plain-mutable", immutable=False).tag_immutable("v1") is False


class _Image:
    def __init__(self, image_id, repo_digests=(), arch="amd64"):
        self.id = image_id
        self.attrs = {"RepoDigests": list(repo_digests), "Architecture": arch, "Os": "linux"}


class _Manifests:
    """ECR's manifests by digest (the answers batch_get_image gives)."""

    def __init__(self, manifests):
        self.manifests = manifests

    def image_manifest(self, repository, tag=None, *, digest=None):
        return self.manifests.get(digest)


def test_same_image_under_both_image_stores():
    from builder.push import Pusher

    config = "sha256:" + "c" * 64
    index = "sha256:" + "d" * 64
    platform_manifest = "sha256:" + "e" * 64
    ecr = _Manifests({
        DIGEST: {"schemaVersion": 2, "config": {"digest": config}},
        index: {"schemaVersion": 2, "manifests": [
            {"digest": OTHER, "platform": {"architecture": "arm64", "os": "linux"}},
            {"digest": platform_manifest, "platform": {"architecture": "amd64", "os": "linux"}}]},
        platform_manifest: {"schemaVersion": 2, "config": {"digest": config}},
        OTHER: {"schemaVersion": 2, "config": {"digest": "sha256:" + "f" * 64}},
    })
    pusher = Pusher(ecr, docker_client=object())
    classic = _Image(config)  # classic store: the image id is the config digest
    assert pusher._same_image(classic, "r", DIGEST)
    assert pusher._same_image(classic, "r", index)  # an index: its amd64 manifest has this config
    assert not pusher._same_image(classic, "r", OTHER)
    containerd = _Image(index)  # containerd store: the image id is the pushed index/manifest digest
    assert pusher._same_image(containerd, "r", index)
    assert pusher._same_image(_Image("sha256:" + "9" * 64, repo_digests=[f"x.example/r@{DIGEST}"]), "r", DIGEST)
    assert not pusher._same_image(_Image("sha256:" + "9" * 64), "r", DIGEST)


def test_authorization_decodes_token_and_registry(ecr):
    auth = ecr.authorization()
    assert (auth.username, auth.password) == ("AWS", MOTO_PASSWORD)
    assert auth.registry == "123456789012.dkr.ecr.us-east-1.amazonaws.com"


def test_missing_image_is_none(ecr):
    ecr.ensure_repository("unit/empty")
    assert ecr.image_digest("unit/empty", "v1") is None
    assert ecr.image_manifest("unit/empty", "v1") is None


def test_no_region_is_a_usage_error(monkeypatch):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    with pytest.raises(UsageError, match="no AWS region"):
        EcrApi.connect(registry="127.0.0.1:5000")


def test_cli_bad_input_exits_2_without_traceback():
    from click.testing import CliRunner

    from builder.cli import cli

    runner = CliRunner()
    for args, message in (
        (["push", "team/pt:v1", "--registry", "https://x.example"], "invalid --registry"),
        (["push", "team/pt:v1;ls"], "neither an image of the matrix"),
        (["push", "team/pt:v1", "--registry", "123456789012.dkr.ecr.us-east-1.amazonaws.com", "--region", "eu-west-1"], "does not match"),
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert "error: " in result.output and message in result.output
        assert "Traceback" not in result.output
