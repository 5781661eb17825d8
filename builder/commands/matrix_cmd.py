"""`builder matrix`: the images as a CI matrix, so a workflow fans out one job per image.

    builder matrix --format github >> "$GITHUB_OUTPUT"     # matrix={"include":[...]}
    strategy: {matrix: "${{ fromJSON(needs.plan.outputs.matrix) }}"}

Each entry says where its jobs run: ``runner`` (labels of a build node: source images compile
PyTorch and need a large one) and ``gpu`` with ``gpu_runner`` (images with nccl-tests get a
GPU smoke run). The labels are conventions of the example workflow; change them with options.
``sagemaker`` says whether the image runs the SageMaker training contract (``builder smoke
--sagemaker``), and ``base_ecr_account``/``base_ecr_region`` name the ECR registry a base image
is pulled from (DLC bases; empty otherwise), so a job can log in there before building.
"""

from __future__ import annotations

import json
import re

import click

from builder.bake import target_name
from builder.ecr import ECR_HOST_RE
from builder.errors import BuilderError, UsageError
from builder.matrix import ImageSpec
from builder.sagemaker_local import supports_contract

BUILD_LABELS = ("self-hosted", "linux", "x64", "image-builder")
LARGE_LABEL = "large"  # PyTorch from source: many cores and a big disk
GPU_LABELS = ("self-hosted", "linux", "x64", "gpu")
LARGE_FLAVORS = ("source",)
OUTPUT_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")  # matched whole: it becomes a line of $GITHUB_OUTPUT


def ci_entry(spec: ImageSpec, build_labels=BUILD_LABELS, gpu_labels=GPU_LABELS, sagemaker: bool = False) -> dict:
    runner = list(build_labels) + ([LARGE_LABEL] if spec.flavor in LARGE_FLAVORS else [])
    gpu = spec.has("nccl-tests")
    host = spec.base_image.split("/", 1)[0]
    ecr = ECR_HOST_RE.match(host)
    return {
        "name": spec.name,
        "flavor": spec.flavor,
        "target": target_name(spec.name),  # the docker buildx bake target
        "repository": spec.repository,
        "tags": list(spec.tags),
        "refs": list(spec.refs),
        "base": spec.base_image,
        "runner": runner,
        "gpu": gpu,
        "gpu_runner": list(gpu_labels) if gpu else [],
        "sagemaker": sagemaker,
        "base_ecr_account": ecr["account"] if ecr else "",
        "base_ecr_region": ecr["region"] if ecr else "",
    }


def _labels(value: str | None, default: tuple[str, ...], option: str) -> tuple[str, ...]:
    if value is None:
        return default
    labels = tuple(part.strip() for part in value.split(",") if part.strip())
    if not labels or not all(label.replace("-", "").replace("_", "").replace(".", "").isalnum() for label in labels):
        raise UsageError(f"{option} {value!r}: comma-separated runner labels like self-hosted,linux,x64")
    return labels


@click.command("matrix")
@click.argument("names", nargs=-1)
@click.option("--format", "fmt", type=click.Choice(["github", "json"]), default="json", show_default=True,
              help="github: one 'matrix={\"include\":[...]}' line for $GITHUB_OUTPUT; json: a readable list.")
@click.option("--flavor", "flavors", multiple=True, type=click.Choice(["dlc", "source", "nvidia"]),
              help="Only images of this flavor (repeatable).")
@click.option("--gpu-only", is_flag=True, help="Only images that get a GPU smoke run (nccl-tests).")
@click.option("--output-name", default="matrix", show_default=True, metavar="NAME",
              help="Name of the step output with --format github.")
@click.option("--allow-empty", is_flag=True, help="Print an empty matrix instead of failing when no image matches.")
@click.option("--build-labels", metavar="L1,L2", help=f"Runner labels of a build node (default {','.join(BUILD_LABELS)}).")
@click.option("--gpu-labels", metavar="L1,L2", help=f"Runner labels of a GPU node (default {','.join(GPU_LABELS)}).")
@click.pass_obj
def matrix_cmd(state, names, fmt, flavors, gpu_only, output_name, allow_empty, build_labels, gpu_labels):
    """Print the images (name, flavor, tags, runner labels, GPU and SageMaker, base registry) as a CI matrix.

    \b
    builder matrix --format github >> "$GITHUB_OUTPUT"
    builder matrix --format github --gpu-only --output-name gpu_matrix --allow-empty >> "$GITHUB_OUTPUT"
    builder matrix --flavor nvidia

    With no NAME, every image of the matrix. Exit codes: 0 printed; 2 unknown image or bad option;
    1 no image left after --flavor/--gpu-only without --allow-empty (GitHub fails an empty matrix).
    """
    if not OUTPUT_NAME_RE.fullmatch(output_name):
        raise UsageError(f"--output-name {output_name!r}: letters, digits, _ and - only")
    matrix = state.matrix()
    specs = matrix.select(names, all_=not names)
    if flavors:
        specs = [s for s in specs if s.flavor in flavors]
    build = _labels(build_labels, BUILD_LABELS, "--build-labels")
    gpu = _labels(gpu_labels, GPU_LABELS, "--gpu-labels")
    entries = [ci_entry(s, build, gpu, supports_contract(s, matrix.catalog)) for s in specs]
    if gpu_only:
        entries = [e for e in entries if e["gpu"]]
    if not entries and not allow_empty:
        raise BuilderError("no image matches; an empty CI matrix fails the workflow (pass --allow-empty "
                           "and skip the job on an empty matrix)")
    if fmt == "github":
        click.echo(f"{output_name}=" + json.dumps({"include": entries}, separators=(",", ":")))
    else:
        click.echo(json.dumps(entries, indent=2))


def register(cli: click.Group) -> None:
    cli.add_command(matrix_cmd)
