"""`builder lock`: pin base images by digest in matrix.lock.json, or check that their tags still
point where the lock says."""

from __future__ import annotations

import json

import click

from builder.errors import BuilderError, UsageError
from builder.render import write_atomic


@click.command("lock")
@click.argument("names", nargs=-1)
@click.option("--check", "check_only", is_flag=True,
              help="Write nothing; exit 1 when a base's tag moved, is gone, or is not locked.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON on stdout.")
@click.option("--ecr-registry", "ecr_hosts", multiple=True, metavar="HOST",
              help="Also treat HOST as ECR (login through get_authorization_token), e.g. a VPC endpoint. "
                   "*.dkr.ecr.*.amazonaws.com hosts are ECR already.")
@click.option("--region", help="AWS region for ECR logins (default: from the ECR host, else AWS_DEFAULT_REGION "
                                "or your AWS profile's region).")
@click.option("--endpoint-url", metavar="URL", help="ECR API endpoint (private endpoints, tests).")
@click.option("--timeout", type=click.FloatRange(1, 600), default=30.0, show_default=True,
              help="Seconds per registry request.")
@click.pass_obj
def lock_cmd(state, names, check_only, as_json, ecr_hosts, region, endpoint_url, timeout):
    """Resolve each base image tag to its digest and write matrix.lock.json beside the matrix.

    While the lock file exists, every command renders locked bases as FROM image:tag@sha256:...
    with the digest in the org.opencontainers.image.base.digest label, and warns about bases the
    lock does not cover and entries no image uses; after a lock that moved a digest, run
    'builder render --all'. With NAMEs, only their bases are (re)locked or checked. Logins: ECR
    through your AWS credentials, other registries from 'docker login' (a login the registry
    refuses falls back to anonymous); anonymous token auth works for public images. --check
    sends only HEAD requests (Docker Hub counts GETs against its pull limit).

    \b
    Exit codes: 0 locked / every tag unchanged; 1 a tag moved, is gone, or a base is not locked
    (--check; also when another registry could not be asked), or a tag does not exist (lock);
    2 bad input or a broken lock file (--check, or lock with NAMEs; a plain 'builder lock'
    rewrites it); 4 a registry could not be asked (unreachable, login refused, ECR login failed).
    """
    from builder import lock as locking

    path = locking.lock_path(state.matrix_path)
    try:
        entries = locking.read_lock(path)
    except UsageError as exc:
        if check_only or names:
            raise
        click.echo(f"warning: {exc}; rewriting it", err=True)
        entries = None
    matrix = state.matrix(pin=False)  # the bases as the matrix writes them, whatever the lock says
    specs = matrix.select(names, all_=not names)
    refs = locking.bases_in_use(specs, entries)
    warn = (lambda line: click.echo(f"warning: {line}", err=True))
    client = locking.RegistryClient(
        locking.Credentials(ecr_hosts=frozenset(ecr_hosts), ecr_region=region, ecr_endpoint_url=endpoint_url),
        timeout=timeout, warn=warn,
    )
    progress = (lambda line: click.echo(line, err=True)) if not as_json else (lambda _: None)

    if check_only:
        if entries is None:
            raise BuilderError(f"no lock file {path.name} beside the matrix; run 'builder lock' first")
        scope = entries if not names else {ref: e for ref, e in entries.items() if ref in refs}
        findings = locking.check(refs, scope, client, progress)
    else:
        every = locking.bases_in_use(matrix.images, entries)
        new, findings = locking.relock(refs, entries, client, prune=not names, progress=progress, in_use=every)
        write_atomic(path, locking.lock_text(new))

    if as_json:
        click.echo(json.dumps({"lock": str(path), "findings": [f.to_dict() for f in findings]}, indent=2))
    else:
        for finding in findings:
            click.echo(finding.line())
    drift = [f for f in findings if f.drift]
    errors = [f for f in findings if f.state == "error"]
    if check_only:
        if drift:
            raise BuilderError(f"{len(drift)} of {len(refs)} base images differ from {path.name}"
                               + (f" ({len(errors)} more could not be checked)" if errors else "")
                               + "; run 'builder lock' then 'builder render --all' and review the diff")
        if errors:
            matched = len(refs) - len(errors)
            raise locking.RegistryError("\n".join(f.line() for f in errors) + f"\n{len(errors)} of {len(refs)} base "
                                        "images could not be checked" + (f"; {matched} match {path.name}" if matched else ""))
        click.echo(f"{len(refs)} base images match {path.name}", err=True)
        return
    changed = [f for f in findings if f.state in ("new", "moved", "removed")]
    click.echo(f"wrote {path} ({len(new)} base images)"
               + ("; run 'builder render --all' to pin the Dockerfiles" if changed else ""), err=True)


def register(cli: click.Group) -> None:
    cli.add_command(lock_cmd)
