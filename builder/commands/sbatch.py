"""`builder sbatch NAME|IMAGE --nodes N --sqsh PATH`: multi-node nccl-tests through Slurm + pyxis."""

from __future__ import annotations

import json
from pathlib import Path

import click

from builder import imageref, slurm
from builder.errors import BuilderError, UsageError

EPILOG = """\b
Exit codes: 0 script written (and accepted, submitted or finished as asked);
1 sbatch rejected the script, or with --wait the job failed;
2 bad input (unknown image, missing versions, bad option);
3 --submit/--test-only/--wait asked but no sbatch on PATH.
"""


def _resolve(state, image: str, efa, ofi, nccl) -> tuple[str, dict, bool]:
    """(label, versions, from_matrix): matrix name first, else an image ref with explicit versions."""
    spec = None
    if state.matrix_path.is_file():
        spec = state.matrix().find(image)
    versions: dict[str, str] = dict(spec.versions) if spec is not None else {}
    if spec is None:
        looks_like_ref = any(c in image for c in ":/@")
        if efa is None:
            if not looks_like_ref and state.matrix_path.is_file():
                state.matrix().get(image)  # raises UsageError with a did-you-mean
            raise UsageError(
                f"{image!r} is not an image in {state.matrix_path.name}; for another image pass the versions "
                "it contains: --efa VERSION [--aws-ofi-nccl VERSION] [--nccl VERSION]"
            )
        imageref.resolve(None, image, "a matrix image name nor a valid image reference")
    for key, value in (("efa", efa), ("aws_ofi_nccl", ofi), ("nccl", nccl)):
        if value is not None:
            versions[key] = value
    return (spec.name if spec is not None else image), versions, spec is not None


def _env_pair(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise UsageError(f"--env {text!r} must be NAME=VALUE")
    name, value = text.split("=", 1)
    return name, value


def register(cli: click.Group) -> None:
    @cli.command("sbatch", epilog=EPILOG)
    @click.argument("image", metavar="NAME|IMAGE")
    @click.option("--nodes", "-N", type=int, required=True, help="Number of nodes.")
    @click.option("--sqsh", help="The image exported with enroot (a path starting with / or ./), e.g. /fsx/NAME.sqsh.")
    @click.option("--no-container", is_flag=True,
                  help="Run the binaries on the nodes themselves, without pyxis (bare-metal nccl-tests).")
    @click.option("--test", "test", type=click.Choice(slurm.TESTS), default="all_reduce", show_default=True,
                  help="nccl-tests binary (<test>_perf).")
    @click.option("--instance", "instance_type", metavar="TYPE",
                  help="Instance type (e.g. p5.48xlarge): GPUs per node, per-instance variables, the judge hint.")
    @click.option("--ntasks-per-node", type=int,
                  help="Ranks per node, one per GPU (default: the instance's GPU count, else 8).")
    @click.option("--gpus-per-node", type=int, help="Also request GPUs as GRES (clusters that configure gres/gpu).")
    @click.option("--tests-dir", default=slurm.DEFAULT_TESTS_DIR, show_default=True,
                  help="Folder holding the nccl-tests binaries (in the image, or on the nodes with --no-container).")
    @click.option("--min-bytes", "-b", default="8", show_default=True)
    @click.option("--max-bytes", "-e", default="16G", show_default=True)
    @click.option("--factor", "-f", type=int, default=2, show_default=True)
    @click.option("--iters", "-n", type=int, default=100, show_default=True)
    @click.option("--warmup", "-w", type=int, default=5, show_default=True)
    @click.option("--check", "-c", type=int, default=1, show_default=True, help="Data check iterations (0: none).")
    @click.option("--efa", help="EFA installer version in the image (overrides the matrix; required for other images).")
    @click.option("--aws-ofi-nccl", "ofi", help="Source-built aws-ofi-nccl version (overrides the matrix).")
    @click.option("--nccl", help="NCCL version in the image (overrides the matrix).")
    @click.option("--env", "env", multiple=True, metavar="NAME=VALUE", help="Extra or overriding variable (repeatable).")
    @click.option("--container-mount", "mounts", multiple=True, metavar="SRC[:DST[:ro]]",
                  help="pyxis --container-mounts entry (repeatable).")
    @click.option("--container-name", metavar="NAME",
                  help="pyxis --container-name: keep the unpacked image on each node under this name and reuse it "
                       "in later jobs (pyxis skips the import while the name exists: re-export means a new name).")
    @click.option("--login-shell", is_flag=True,
                  help="Leave enroot's login shell on (ENROOT_LOGIN_SHELL): the image's /etc/profile then runs "
                       "and may reset PATH; by default the script turns it off (docs/slurm.md).")
    @click.option("--job-name", help="Slurm job name (default: nccl-NAME).")
    @click.option("--partition", "-p", help="Slurm partition.")
    @click.option("--time", "time_limit", help="Slurm time limit, e.g. 30 or 1:00:00.")
    @click.option("--job-output", default=slurm.DEFAULT_OUTPUT, show_default=True,
                  help="Job output file (sbatch --output pattern); `builder nccl parse` reads it.")
    @click.option("--exclusive/--no-exclusive", default=True, show_default=True)
    @click.option("--out", "-o", "out", type=click.Path(dir_okay=False, path_type=Path),
                  help="Where to write the script ('-': stdout). Default: ./<job name>-<N>n.sbatch.")
    @click.option("--submit", is_flag=True, help="Submit with sbatch.")
    @click.option("--wait", is_flag=True, help="Submit and wait for the job to end (sbatch --wait); implies --submit.")
    @click.option("--test-only", is_flag=True, help="Ask slurmctld whether it would accept the job (sbatch --test-only).")
    @click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of text.")
    @click.pass_obj
    def sbatch_cmd(state, image, nodes, sqsh, no_container, test, instance_type, ntasks_per_node, gpus_per_node,
                   tests_dir, min_bytes, max_bytes, factor, iters, warmup, check, efa, ofi, nccl, env, mounts, container_name,
                   login_shell, job_name, partition, time_limit, job_output, exclusive, out, submit, wait, test_only, as_json):
        """Write an sbatch script running nccl-tests across nodes through pyxis (srun --container-image
        ... --mpi=pmix), with the EFA/NCCL environment chosen from the image's component versions."""
        if no_container and sqsh:
            raise UsageError("--sqsh and --no-container exclude each other")
        if not no_container and not sqsh:
            raise UsageError("--sqsh PATH is required (the image exported with `enroot import`), or --no-container")
        if test_only and (submit or wait):
            raise UsageError("--test-only only validates; drop --submit/--wait")
        label, comps, from_matrix = _resolve(state, image, efa, ofi, nccl)
        versions = slurm.Versions.from_mapping(comps)
        instance = None
        if instance_type is not None:
            from builder.nccl.instances import get_instance

            instance = get_instance(instance_type)  # UsageError naming the known types
        if ntasks_per_node is None:
            ntasks_per_node = instance.gpus if instance else 8
        job = slurm.Job(
            image=label, nodes=nodes, sqsh=None if no_container else sqsh, test=test,
            ntasks_per_node=ntasks_per_node, gpus_per_node=gpus_per_node, tests_dir=tests_dir,
            min_bytes=min_bytes, max_bytes=max_bytes, factor=factor, iters=iters, warmup=warmup, check=check,
            job_name=job_name, instance=instance_type, partition=partition, time_limit=time_limit,
            output=job_output,
            exclusive=exclusive, container_mounts=tuple(mounts), container_name=container_name,
            login_shell=login_shell, extra_env=tuple(_env_pair(e) for e in env),
        )
        job.validate()
        chosen = slurm.nccl_env(versions, instance=instance_type) + (slurm.instance_env(instance.intra) if instance else [])
        env_vars, warnings = slurm.merge_env(chosen, job.extra_env)
        warnings = slurm.env_notes(versions, instance_type) + warnings
        if from_matrix and not versions.nccl_tests and tests_dir == slurm.DEFAULT_TESTS_DIR and not no_container:
            warnings.append(f"image {label} does not list nccl_tests in its components; "
                            f"the job expects the binaries in {tests_dir} (see --tests-dir)")
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)
        text = slurm.render_sbatch(job, versions, env_vars)

        runs = submit or wait or test_only
        if out is not None and str(out) == "-":
            if runs:
                raise UsageError("--out - prints the script; write it to a file to submit it")
            click.echo(text, nl=False)
            return
        path = out or Path(f"{job.name}-{nodes}n.sbatch")
        try:
            path.write_text(text)
            path.chmod(0o755)
        except OSError as exc:
            raise BuilderError(f"cannot write {path}: {exc.strerror}; choose another --out") from None
        summary = {"script": str(path), "job_name": job.name, "nodes": nodes,
                   "env": {v.name: v.value for v in env_vars}}
        code = 0
        if runs:
            result = slurm.submit(path, job, wait=wait, test_only=test_only)
            summary.update(job_id=result.job_id, output=result.output, sbatch=result.message,
                           exit_code=result.exit_code)
            code = 0 if result.exit_code == 0 else 1
        if as_json:
            click.echo(json.dumps(summary, indent=2, sort_keys=True))
        else:
            click.echo(f"wrote {path}")
            if test_only:
                click.echo(f"accepted by slurmctld: {summary['sbatch']}")
            elif runs:
                state_word = "finished" if wait else "submitted"
                if wait and code:
                    state_word = f"failed (exit {summary['exit_code']})"
                click.echo(f"job {summary['job_id']} {state_word}; output: {summary['output'] or job.output}")
                result_file = summary["output"] or "<job output file>"
                click.echo(f"read it with: builder nccl parse {result_file}")
                click.echo(f"judge it with: builder nccl judge {result_file} --nodes {nodes} "
                           f"--instance {instance_type or 'TYPE'} --collective {test}_perf")
            else:
                click.echo(f"submit with: sbatch {path}")
        if code:
            raise click.exceptions.Exit(code)
