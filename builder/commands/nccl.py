"""`builder nccl run|parse|judge|instances`: nccl-tests smoke checks (see builder/nccl/).

Exit codes: 0 pass; 1 fail (below threshold, data errors, socket fallback, or nccl-tests failed);
2 bad input (option, image, instance type, file); 3 no NVIDIA GPU on this host (`run` only);
4 no nccl-tests result rows in the output.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from pathlib import Path

import click

from builder import imageref
from builder.errors import UsageError
from builder.buildkit import docker_path
from builder.nccl import EXIT_FAIL, EXIT_NO_RESULTS, EXIT_PASS
from builder.nccl.instances import INSTANCES, get_instance
from builder.nccl.judge import judge as judge_run
from builder.nccl.parse import NoResults, parse_runs, perf_name
from builder.nccl.report import SCHEMA, rows_text, summary_text, to_json, verdict_text
from builder.nccl.run import COLLECTIVES, RunOptions, parse_size

def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(errors="replace")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _instance(name: str | None):
    return get_instance(name) if name else None


def _emit_json(doc) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False, allow_nan=False))


@click.group("nccl")
def nccl_group() -> None:
    """nccl-tests smoke checks: run them in an image, parse any output, judge it against the hardware.

    \b
    Exit codes: 0 pass; 1 fail (cut short, data errors, transport, below threshold,
    or nccl-tests failed); 2 bad input (option, unknown image or instance type,
    unreadable file, a pull that failed, --nodes needed); 3 no NVIDIA GPU on this
    host (run only); 4 no nccl-tests result rows in the output.
    """


@nccl_group.command("parse")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--logs", "log_files", multiple=True, metavar="FILE", help="NCCL_DEBUG logs kept apart (read for the transport).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document per result table, as a list.")
@click.option("--rows/--no-rows", default=True, show_default=True, help="Print every row in text mode.")
def parse_cmd(files: tuple[str, ...], log_files: tuple[str, ...], as_json: bool, rows: bool) -> None:
    """Read nccl-tests outputs (any version, srun -l or mpirun --tag-output, '-' for stdin).

    Prints every row, the average bus bandwidth as printed and as recomputed, the peak, and what
    the NCCL logs say about the transport (EFA/OFI plugin, provider, GPUDirect RDMA, or sockets).
    """
    logs = "\n".join(_read(p) for p in log_files)
    docs, missing = [], []
    for path in files:
        try:
            runs = parse_runs(_read(path), logs)
        except NoResults as exc:
            missing.append(f"{path}: {exc}")
            continue
        for run in runs:
            if as_json:
                docs.append(to_json(run, source=path))
            else:
                click.echo(summary_text(run, source=path))
                if rows:
                    click.echo(rows_text(run))
                click.echo("")
    if as_json:
        _emit_json(docs)
    for line in missing:
        click.echo(f"error: {line}", err=True)
    sys.exit(EXIT_NO_RESULTS if missing else EXIT_PASS)


@nccl_group.command("judge")
@click.argument("file", metavar="FILE")
@click.option("--logs", "log_files", multiple=True, metavar="FILE", help="NCCL_DEBUG logs kept apart from the results.")
@click.option("--instance", metavar="TYPE", help=f"Instance type: {', '.join(INSTANCES)}.")
@click.option("--nodes", type=click.IntRange(1), help="Node count (default: hosts listed in the output).")
@click.option("--threshold", type=click.FloatRange(0, min_open=True), metavar="GB/s",
              help="Pass threshold for busbw at >= 1 GiB, instead of the instance's.")
@click.option("--expect-efa/--no-expect-efa", default=None,
              help="Fail unless NCCL used EFA (default: on for multi-node runs on EFA instance types).")
@click.option("--collective", help="Judge only the table of this binary (e.g. all_reduce_perf); names a lone "
              "unnamed table (outputs before nccl-tests 2.17 do not print it).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report (rows, averages, transport, verdict).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG plot of busbw (one per table, named PATH-<collective>.png, when there are several).")
def judge_cmd(file, log_files, instance, nodes, threshold, expect_efa, collective, as_json, plot_path) -> None:
    """Pass or fail an nccl-tests output against the hardware, with the reason.

    Every result table of the file is judged (several when tests ran back to back), or only the
    one --collective names; the file passes when every judged table does.
    """
    inst = _instance(instance)
    logs = "\n".join(_read(p) for p in log_files)
    runs = _select(parse_runs(_read(file), logs, collective=collective), collective, file)
    if inst is not None and threshold is None and nodes is None and not all(r.hosts for r in runs):
        raise UsageError(
            f"--nodes N is needed: {file} does not list the hosts ('# Rank .. on HOST' lines), so the "
            f"{inst.name} threshold (one node or several) cannot be chosen"
        )
    judged = [(run, judge_run(run, inst, nodes=nodes, threshold=threshold, expect_efa=expect_efa)) for run in runs]
    plots = []
    if plot_path:
        from builder.nccl.plot import plot_busbw

        for run, verdict in judged:
            path = plot_path if len(judged) == 1 else plot_path.with_name(
                f"{plot_path.stem}-{run.collective or 'table'}{plot_path.suffix or '.png'}")
            plots.append(plot_busbw(run, path, verdict))
    passed = all(v.passed for _, v in judged)
    if as_json:
        reports = [to_json(run, verdict, source=file) for run, verdict in judged]
        _emit_json(reports[0] if len(reports) == 1 else {"schema": SCHEMA, "source": file, "passed": passed,
                                                         "reports": reports})
    else:
        for run, verdict in judged:
            click.echo(summary_text(run, source=file))
            click.echo(verdict_text(verdict))
        for path in plots:
            click.echo(f"plot: {path}")
    sys.exit(EXIT_PASS if passed else EXIT_FAIL)


def _select(runs, collective: str | None, file: str):
    """The tables to judge: all of them, or those --collective names."""
    if collective is None or len(runs) == 1:
        if collective is not None and runs[0].collective not in (None, perf_name(collective), perf_name(collective) + "_mpi"):
            raise UsageError(f"--collective {collective}: the table in {file} is {runs[0].collective}")
        return runs
    wanted = perf_name(collective)
    chosen = [r for r in runs if r.collective in (wanted, wanted + "_mpi")]
    if not chosen:
        names = ", ".join(r.collective or "unnamed" for r in runs)
        raise UsageError(f"--collective {collective}: no such table in {file} (its tables: {names})")
    return chosen


@nccl_group.command("instances")
@click.option("--json", "as_json", is_flag=True)
def instances_cmd(as_json: bool) -> None:
    """The instance table: GPUs, peaks and all_reduce busbw thresholds (GB/s)."""
    if as_json:
        _emit_json([i.to_dict() for i in INSTANCES.values()])
        return
    click.echo("GB/s: peak per GPU link, net per node, n-peak = min of the two (multi-node); thresholds 1-node, n-node")
    click.echo(f"{'type':<18} {'GPUs':>4} {'GPU':<11} {'intra-node':<17} {'peak':>6} {'net':>6} {'n-peak':>6} "
               f"{'1-node':>7} {'n-node':>7}")
    for i in INSTANCES.values():
        click.echo(f"{i.name:<18} {i.gpus:>4} {i.gpu:<11} {i.intra:<17} {i.intra_peak:>6g} {i.network_peak:>6g} "
                   f"{i.peak(2):>6g} {i.threshold(1):>7g} {i.threshold(2):>7g}")


def _resolve_image(state, target: str) -> str:
    """A matrix image name -> its primary ref; anything else must be a valid image reference."""
    matrix = None
    if imageref.is_bare(target):  # a reference is never a matrix name: no matrix needed for it
        try:
            matrix = state.matrix()
        except Exception as exc:  # noqa: BLE001 - a broken or absent matrix must not hide a plain image ref
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            click.echo(f"warning: matrix not usable ({problem}); treating {target} as an image reference", err=True)
    return imageref.resolve(matrix, target, "an image name of the matrix nor a valid image reference")[0]


@nccl_group.command("run")
@click.argument("target", metavar="NAME|IMAGE")
@click.option("--collective", "-C", "collectives", multiple=True, type=click.Choice(COLLECTIVES),
              help="Collective(s) to run (repeatable; default all_reduce).")
@click.option("--min-bytes", "-b", default="8", show_default=True, help="Smallest message (K/M/G are 1024-based).")
@click.option("--max-bytes", "-e", default="2G", show_default=True, help="Largest message; >= 1G for the bandwidth check.")
@click.option("--factor", "-f", type=click.IntRange(2), default=2, show_default=True)
@click.option("--iters", "-n", type=click.IntRange(1), default=20, show_default=True)
@click.option("--warmup", "-w", type=click.IntRange(0), default=5, show_default=True)
@click.option("--gpus", "-g", type=click.IntRange(1), help="GPUs to use (default: all of this host).")
@click.option("--check/--no-check", default=True, show_default=True, help="Validate results (-c 1).")
@click.option("--tests-dir", help="Directory of the nccl-tests binaries in the image (default: PATH, /opt/nccl-tests/build ...).")
@click.option("--instance", metavar="TYPE", help="Instance type for the thresholds (default: asked from EC2 IMDS).")
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="Extra environment for the test (repeatable).")
@click.option("--out", "out_root", type=click.Path(file_okay=False, path_type=Path), default=Path("nccl-results"),
              show_default=True, help="Where outputs, logs, report.json and plots go (one subfolder per run).")
@click.option("--timeout", type=click.IntRange(1), default=1800, show_default=True, help="Seconds per collective.")
@click.option("--plot/--no-plot", default=True, show_default=True, help="Write busbw-<collective>.png.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of text.")
@click.option("--dry-run", is_flag=True, help="Print the docker commands and exit (no GPU needed).")
@click.pass_obj
def run_cmd(state, target, collectives, min_bytes, max_bytes, factor, iters, warmup, gpus, check, tests_dir,
            instance, env, out_root, timeout, plot, as_json, dry_run) -> None:
    """Run nccl-tests inside a built image (Docker, this host's GPUs), then judge and report.

    NCCL_DEBUG=INFO goes to per-process files (NCCL_DEBUG_FILE), apart from the results.
    Without a GPU it says so in one line and exits 3.
    """
    from builder.nccl import run as runner

    extra_env = []
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise UsageError(f"--env '{item}' must be KEY=VALUE")
        extra_env.append((key, value))
    opts = RunOptions(
        collectives=tuple(collectives) or ("all_reduce",),
        min_bytes=parse_size(min_bytes), max_bytes=parse_size(max_bytes), factor=factor, iters=iters,
        warmup=warmup, check=1 if check else 0, gpus=gpus, tests_dir=tests_dir, extra_env=tuple(extra_env),
    )
    inst = _instance(instance)
    image = _resolve_image(state, target)
    docker = docker_path()
    devices = runner.efa_devices()

    if dry_run:
        if runner.needs_pull(docker, image):
            click.echo(shlex.join([docker, "pull", image]))
        count = gpus or runner.gpu_count() or 1
        for coll in opts.collectives:
            cmd = runner.docker_command(docker, image, coll, opts, count, out_root / "nccl-debug", devices)
            click.echo(shlex.join(cmd))
        return

    # GPUs first: a host without any exits 3 whatever the image (its --help), before a long pull.
    available = runner.require_gpus()
    if gpus and gpus > available:
        raise UsageError(f"--gpus {gpus}: this host has {available} GPU(s)")
    count = gpus or available
    runner.ensure_image(docker, image, progress=lambda msg: click.echo(msg, err=True))
    if inst is None:
        detected = runner.detect_instance_type()
        inst = INSTANCES.get(detected) if detected else None
        if detected and inst is None:
            click.echo(f"warning: instance type {detected} is not in the table: bandwidth not judged", err=True)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = out_root / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', image)}-{stamp}"
    outcomes = runner.run_suite(docker, image, opts, count, out_dir, inst, devices, timeout=timeout, plot=plot,
                                progress=lambda msg: click.echo(msg, err=True))
    reports, code = [], EXIT_PASS
    for o in outcomes:
        if o.error:
            click.echo(f"error: {o.error}", err=True)
            code = max(code, EXIT_NO_RESULTS)
            continue
        reports.append(to_json(o.run, o.verdict, source=str(o.raw.stdout_path)))
        if not as_json:
            click.echo(summary_text(o.run, source=f"{o.collective}_perf"))
            click.echo(verdict_text(o.verdict))
        if o.raw.returncode != 0:
            click.echo(f"warning: {o.collective}_perf exited {o.raw.returncode}", err=True)
        if o.failed:
            code = max(code, EXIT_FAIL)
    if as_json:
        _emit_json(reports)
    else:
        click.echo(f"outputs: {out_dir}")
    sys.exit(code)


def register(cli: click.Group) -> None:
    cli.add_command(nccl_group)
