"""`builder push NAME|IMAGE`: push a built image to Amazon ECR and verify every tag by digest."""

from __future__ import annotations

import json

import click

from builder.ecr import check_repository
from builder.errors import UsageError
from builder import imageref

def parse_image_ref(ref: str) -> tuple[str, str]:
    """'[registry/]repo/path:tag' -> (repository without the registry host, tag). A tag is
    required, so that a bare word is always a matrix name and a typo gets a did-you-mean
    instead of a push of 'typo:latest'."""
    parsed = imageref.parse(ref)
    if parsed is None or parsed.tag is None or parsed.digest is not None:
        raise UsageError(
            f"{ref!r} is neither an image of the matrix nor an image reference with a tag (name:tag); see 'builder list'"
        )
    return check_repository(parsed.path), parsed.tag


def resolve(state, arg: str):
    """NAME (an image of the matrix: all its tags) or IMAGE (a local reference: its one tag)."""
    from builder.push import PushRequest

    if imageref.is_bare(arg):
        spec = state.matrix().find(arg)
        if spec is None:
            state.matrix().get(arg)  # raises UsageError with a did-you-mean
        targets = tuple((ref.rpartition(":")[0], ref.rpartition(":")[2]) for ref in spec.refs)
        return PushRequest(source=spec.primary_ref, targets=targets)
    if "@" in arg:
        raise UsageError(f"{arg!r}: push an image by tag, not by digest")
    repository, tag = parse_image_ref(arg)
    return PushRequest(source=arg, targets=((repository, tag),))


def register(cli: click.Group) -> None:
    @cli.command("push")
    @click.argument("target", metavar="NAME|IMAGE")
    @click.option(
        "--registry",
        metavar="HOST",
        help="Registry to push to, e.g. ACCOUNT.dkr.ecr.REGION.amazonaws.com (default: the registry ECR "
        "reports for your credentials' account and region).",
    )
    @click.option("--region", help="AWS region (default: from the --registry host, else AWS_REGION / your profile).")
    @click.option(
        "--endpoint-url",
        metavar="URL",
        help="ECR API endpoint (private endpoints, tests); AWS_ENDPOINT_URL_ECR works too.",
    )
    @click.option("--immutable/--mutable", default=True, show_default=True, help="Tag mutability of a repository this creates.")
    @click.option("--scan-on-push/--no-scan-on-push", default=True, show_default=True, help="Scan setting of a repository this creates.")
    @click.option("--attempts", type=click.IntRange(1, 20), default=4, show_default=True, help="Tries per tag on transient failures.")
    @click.option("--retry-delay", type=click.FloatRange(0, 600), default=2.0, show_default=True, help="First backoff delay in seconds (doubles each retry).")
    @click.option("--quiet", is_flag=True, help="No per-layer progress.")
    @click.option("--json", "as_json", is_flag=True, help="Print the verified result as JSON on stdout.")
    @click.pass_obj
    def push(state, target, registry, region, endpoint_url, immutable, scan_on_push, attempts, retry_delay, quiet, as_json):
        """Push NAME (every tag the matrix gives it) or IMAGE (name:tag) to Amazon ECR.

        Creates the repository when missing, pushes with a token that is never printed or stored,
        and reports a tag only after its digest from the push matches both the registry's
        (HEAD manifest) and ECR's (describe_images). An immutable tag that already holds this very
        image counts as pushed.

        Exit codes: 0 every tag pushed (or already present) and verified; 1 the push failed after
        retries, the registry refused the token, or a digest could not be verified; 2 bad input
        (unknown image, invalid reference, --registry or --region); 3 an immutable tag already
        holds a different image.
        """
        from builder.ecr import EcrApi, check_registry
        from builder.push import Pusher

        request = resolve(state, target)
        if registry:
            registry = check_registry(registry)
        ecr = EcrApi.connect(registry=registry, region=region, endpoint_url=endpoint_url)
        pusher = Pusher(
            ecr,
            registry=registry,
            immutable=immutable,
            scan_on_push=scan_on_push,
            attempts=attempts,
            retry_delay=retry_delay,
            report=lambda line: click.echo(line, err=True),
            show_progress=not quiet,
        )
        result = pusher.push(request)
        if as_json:
            click.echo(json.dumps(result.to_dict(), indent=2, default=str))
        else:
            for tag in result.tags:
                click.echo(f"{tag.ref}@{tag.digest} {tag.outcome}")
