"""`builder outdated`: the newest upstream releases of every base and component in the matrix,
what each bump implies, and (--write) the matrix bumped where the rules accept it."""

from __future__ import annotations

import json
import os
import re
from urllib.parse import urlsplit

import click

from builder.errors import BuilderError, UsageError

ONLY = ("bases", "efa", "nccl", "aws_ofi_nccl", "nccl_tests", "gdrcopy", "sagemaker_training",
        "sagemaker_pytorch_training")


def _url(value: str | None, option: str, template: bool = False) -> str | None:
    """https, or http to this machine (a mirror in a test); a template needs {version}."""
    if value is None:
        return None
    from builder.registry_api import is_loopback

    parts = urlsplit(value)
    if re.search(r"[\s\x00-\x1f]", value) or not parts.netloc or not (
            parts.scheme == "https" or parts.scheme == "http" and is_loopback(parts.netloc)):
        raise UsageError(f"{option}: {value!r} is not an https URL (plain http only to this machine)")
    if template and "{version}" not in value:
        raise UsageError(f"{option}: {value!r} needs a {{version}} placeholder, like "
                         "https://efa-installer.amazonaws.com/aws-efa-installer-{version}.tar.gz")
    return value


@click.command("outdated")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print sources, findings and edits as JSON on stdout.")
@click.option("--write", is_flag=True, help="Edit matrix.yaml in place with every bump the rules accept "
                                            "(comments and layout kept), then render --all.")
@click.option("--check", "check_only", is_flag=True, help="Exit 1 when anything has a newer release.")
@click.option("--only", multiple=True, type=click.Choice(ONLY), help="Ask only about these (repeatable).")
@click.option("--github-api", metavar="URL", help="GitHub API root (default https://api.github.com; "
                                                  "GitHub Enterprise, tests). Token: env GITHUB_TOKEN.")
@click.option("--pypi-url", metavar="URL", help="PyPI root serving /pypi/<project>/json (default https://pypi.org).")
@click.option("--efa-url", metavar="TEMPLATE", help="EFA installer URL with {version} (default: the matrix's "
                                                    "sources.efa_installer, else efa-installer.amazonaws.com).")
@click.option("--ecr-registry", "ecr_hosts", multiple=True, metavar="HOST", help="Also treat HOST as ECR (as lock).")
@click.option("--region", help="AWS region for ECR logins (as lock).")
@click.option("--endpoint-url", metavar="URL", help="ECR API endpoint (private endpoints, tests).")
@click.option("--timeout", type=click.FloatRange(1, 600), default=30.0, show_default=True,
              help="Seconds per request.")
@click.pass_context
def outdated_cmd(ctx, names, as_json, write, check_only, only, github_api, pypi_url, efa_url, ecr_hosts, region,
                 endpoint_url, timeout):
    """What upstream has released since the matrix was written, and what each bump would do.

    Asks the real sources with their ordinary APIs: each base's registry for the tags of its
    family (NGC YY.MM-py3, nvidia/cuda, both DLC generations; logins as 'builder lock'),
    GitHub's tags of NCCL, nccl-tests, aws-ofi-nccl and GDRCopy (anonymous, or GITHUB_TOKEN),
    PyPI's JSON API for the SageMaker toolkit, and the EFA installer site (HEAD requests for the
    next versions). Each bump is tried on the matrix and validated by its rules: a bump the rules
    refuse is listed with the rule's reason. With NAMEs, only their images.

    --write keeps every accepted bump in matrix.yaml: new base tags as new bases (with what their
    image environment says they ship) joined to the axes that list their predecessor, component
    versions, and for a new EFA installer the SHA256 of the tarball whose GPG signature verified
    against AWS's key (pinned by fingerprint). Then it renders every image.

    \b
    Exit codes: 0 done; 1 --check found newer releases, or an EFA tarball failed its
    signature check (that bump is not written); 2 bad input (the matrix is invalid, options);
    4 a source could not be asked (the others are still reported, and written with --write).
    """
    from builder.registry_auth import Credentials
    from builder.outdated import efa, plan, report, upstream
    from builder.outdated.bumps import analyse
    from builder.outdated.gpg import SignatureError
    from builder.outdated.registry import TagLister
    from builder.outdated.web import SourceError, Web
    from builder.render import write_atomic

    state = ctx.obj
    progress = (lambda line: click.echo(line, err=True)) if not as_json else (lambda _: None)
    matrix = state.matrix(pin=False)
    specs = matrix.select(names, all_=not names)
    document = plan.MatrixDocument(state.matrix_path, matrix.catalog)
    raw_checksums = document.doc.get("checksums") or {}
    # Pins keyed by version, or by file name (aws-efa-installer-<version>.tar.gz), as the matrix allows.
    matrix_sums = {str(k).removeprefix("aws-efa-installer-").removesuffix(".tar.gz"): str(v)
                   for k, v in (raw_checksums.get("efa_installer") or {}).items()}
    from builder import facts

    known_sums = {**facts.EFA_INSTALLER_SHA256, **matrix_sums}
    sources = document.doc.get("sources") or {}
    endpoints = upstream.Endpoints(
        github_api=_url(github_api, "--github-api") or upstream.GITHUB_API,
        pypi=_url(pypi_url, "--pypi-url") or upstream.PYPI_URL,
        efa_template=_url(efa_url, "--efa-url", template=True) or str(sources.get("efa_installer") or efa.EFA_URL_TEMPLATE),
    )
    web = Web(timeout=timeout, github_token=os.environ.get("GITHUB_TOKEN") or None)
    lister = TagLister(Credentials(ecr_hosts=frozenset(ecr_hosts), ecr_region=region, ecr_endpoint_url=endpoint_url),
                       timeout=timeout, warn=lambda line: click.echo(f"warning: {line}", err=True))
    survey = upstream.survey(specs, web, lister, endpoints, known_sums, only, progress)

    verified: dict[str, str | Exception] = {}
    efa_source = survey.components.get("efa")
    if write and efa_source and not efa_source.error and efa_source.releases:
        newest = efa_source.releases[-1]
        if newest not in known_sums:
            progress(f"downloading EFA installer {newest} and verifying its GPG signature")
            try:
                verified[newest] = efa.verify_and_hash(web, endpoints.efa_template, newest).sha256
            except (SignatureError, SourceError) as exc:
                verified[newest] = exc

    result = analyse(document, specs, survey, known_sums, verified)
    written = False
    if write and result.accepted:
        write_atomic(state.matrix_path, document.text())
        written = True
    if as_json:
        click.echo(json.dumps(report.document(result, survey, written, str(state.matrix_path)), indent=2))
    else:
        click.echo(report.table(result, survey, written), nl=False)
    if written:
        click.echo(f"wrote {state.matrix_path} ({len(result.accepted)} edits)", err=True)
        state._matrix = None  # the render below loads the written matrix
        ctx.invoke(ctx.parent.command.get_command(ctx.parent, "render"), all_=True)
    _exit(result, survey, verified, check_only)


def _exit(result, survey, verified, check_only) -> None:
    from builder.outdated.web import SourceError

    failed = [v for v in verified.values() if isinstance(v, Exception) and not isinstance(v, SourceError)]
    unreachable = [s.subject for s in survey.errors] + ["efa download" for v in verified.values() if isinstance(v, SourceError)]
    newer = [f for f in result.findings if f.verdict != "kept"]  # kept: older axis values, on purpose
    if check_only and newer:
        raise BuilderError(f"{len({(f.subject, f.current) for f in newer})} versions in the matrix have newer "
                           "upstream releases" + (f"; {len(unreachable)} sources could not be asked" if unreachable else ""))
    if failed:
        raise BuilderError("\n".join(str(e) for e in failed))
    if unreachable:
        raise SourceError(f"{len(unreachable)} sources could not be asked: " + ", ".join(unreachable)
                          + "; the others are reported above")


def register(cli: click.Group) -> None:
    cli.add_command(outdated_cmd)
