"""`builder smoke NAME|IMAGE [--sagemaker]`: the stanzas' checks inside a built image."""

from __future__ import annotations

import json

import click

from builder import sagemaker_local, sagemaker_sdk
from builder import smoke as sm
from builder.buildkit import DOCKER_ENV, docker_path, engine_answers, engine_down_message, image_inspect
from builder.errors import BuilderError, UsageError
from builder.labels import image_title, spec_for_labels


def _looks_like_name(target: str) -> bool:
    """A bare word (no registry, repository path, tag or digest): more likely a matrix name."""
    return not any(c in target for c in "/:@")


@click.command("smoke")
@click.argument("target", metavar="NAME|IMAGE")
@click.option("--image", "image", metavar="REF", help="Check this image against NAME's expectations (default: NAME's first tag).")
@click.option("--sagemaker", is_flag=True, help="Also run SageMaker training jobs through the SageMaker Python SDK's local mode.")
@click.option("--json", "as_json", is_flag=True, help="JSON output on stdout.")
@click.option("--docker", "docker", metavar="PATH", envvar=DOCKER_ENV, help="Docker client to use.")
@click.pass_obj
def smoke_cmd(state, target, image, sagemaker, as_json, docker):
    """Check a built image: every check its stanzas declared, with expected values from the
    matrix (EFA installer, NCCL version, aws-ofi-nccl plugin and its ldd, nccl-tests, torch,
    SageMaker toolkit, labels), hygiene (no apt lists, temp files, caches, build trees) and a
    credentials scan. No GPU needed. Findings the base image already has are WARN lines.

    NAME is a matrix image (its first tag is checked); IMAGE is any reference, matched to its
    matrix entry through its org.opencontainers.image.title label (else only hygiene and
    credentials are checked, and a WARN line says so). --sagemaker then runs training jobs
    through the real SageMaker Python SDK's local mode (docs/sagemaker.md).

    Exit codes: 0 all checks passed (WARN lines included); 1 a check or the SageMaker contract
    failed (each failure is one line); 2 bad input (unknown NAME, invalid matrix, missing
    --docker client, an image without the toolkit with --sagemaker).
    """
    docker = docker_path(docker)
    # A bare image needs no matrix, but only when there is none: an invalid matrix is an error,
    # never a quiet fallback to hygiene-only checks.
    matrix = state.matrix() if state.matrix_path.is_file() else None
    spec, ref = sm.resolve(matrix, target, image)
    problem = engine_answers(docker)
    if problem:
        raise BuilderError(engine_down_message(docker, problem))
    inspected = image_inspect(docker, ref)  # once: whether it exists, its title label, its config
    config = (inspected or {}).get("Config") or {}
    no_entry = None
    if spec is None:
        if matrix is not None and _looks_like_name(target) and inspected is None:
            matrix.get(target)  # a mistyped NAME: exit 2 with a did-you-mean
        spec = spec_for_labels(matrix, config.get("Labels"))
        if spec is None:
            title = image_title(config.get("Labels"))
            no_entry = (f"no matrix entry for {ref}"
                        + (f" (title label '{title}' is not an image of {state.matrix_path.name})" if title and matrix
                           else " (no matrix)" if matrix is None else " (no org.opencontainers.image.title label)")
                        + ": the stanzas' declared checks were NOT run; only hygiene and credentials")
    if sagemaker:
        if spec is None:
            raise UsageError(f"--sagemaker needs a matrix image: {ref} has no matching entry")
        if not sagemaker_local.supports_contract(spec, matrix.catalog):
            raise UsageError(f"{spec.name} does not claim SageMaker support: it has neither the sagemaker-toolkit "
                             "stanza nor a -sagemaker DLC base, so it has no `train` entry point")
        sagemaker_sdk.require_sdk()
    if inspected is None:
        raise sm.missing_image(ref, spec)
    report = sm.smoke(docker, ref, spec, config)
    if no_entry:
        report.results.insert(0, sm.CheckResult("matrix", "entry", {"image": ref}, True, no_entry, warn=True))
    doc = report.to_dict()
    failed = not report.ok
    if sagemaker:
        outcomes = sagemaker_local.contract(docker, ref, spec, spec.region or "us-west-2")
        doc["sagemaker"] = [o.to_dict() for o in outcomes]
        doc["ok"] = doc["ok"] and all(o.ok for o in outcomes)
        failed = failed or not all(o.ok for o in outcomes)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(sm.format_text(report))
        for line in sagemaker_local.format_lines(doc.get("sagemaker", [])):
            click.echo(line)
    if no_entry:
        click.echo(f"warning: {no_entry}", err=True)
    if failed:
        bad = [r.line() for r in report.failures]
        for outcome in doc.get("sagemaker", []):
            bad += [f"sagemaker {outcome['case']}: {p}" for p in outcome["problems"]]
        raise BuilderError(f"{ref}: {len(bad)} check(s) failed", exit_code=1)


def register(cli: click.Group) -> None:
    cli.add_command(smoke_cmd)
