"""Multi-node nccl-tests through Slurm and pyxis: an sbatch script from an image's versions.

The script is a pure function of the component versions (efa, aws_ofi_nccl, nccl) and the job
options, so it can be reviewed, unit-tested and diffed; submitting it is a separate step
(``submit``, in builder.slurm_submit) that only shells out to ``sbatch``. The container step's
pyxis/enroot specifics are in builder.slurm_pyxis. The EFA/NCCL environment comes from
``builder.components`` (plugin paths, era presets) plus the few rules below that only matter
at run time (tuner loading, the CUDA sync-memops override).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from packaging.version import Version

from builder import components as comp
from builder import facts
from builder import slurm_pyxis
from builder.errors import UsageError
from builder.matrix import ENV_NAME_RE, ENV_VALUE_RE, NCCL_VERSION_RE, VERSION_RE
from builder.nccl.instances import rdma_read
# Submission lives in its own module; the CLI and tests reach it through this one.
from builder.slurm_submit import EXIT_NO_SLURM, Submission, find_sbatch, resolve_output, submit  # noqa: F401

# nccl-tests binaries (<name>_perf) a user may ask for; all_reduce is the one judged by default.
TESTS = ("all_reduce", "all_gather", "reduce_scatter", "alltoall", "sendrecv", "broadcast", "reduce")
# Where the nccl-tests stanza and the awsome-distributed-training images put the binaries.
DEFAULT_TESTS_DIR = "/opt/nccl-tests/build"
# sbatch expands %x (job name) and %j (job id); `builder nccl parse` reads this file.
DEFAULT_OUTPUT = "%x_%j.out"


# --- run-time rules not in builder.components (sources inline) ------------------------------
# NCCL's tuner plugin interface appeared in NCCL 2.19; 2.19 and 2.20 load a tuner only when
# NCCL_TUNER_PLUGIN names the file (aws/aws-ofi-nccl PR 922, src/Makefile.am comment).
NCCL_TUNER_API = Version("2.19.0")
# The tuner component (libnccl-ofi-tuner.so) was added to aws-ofi-nccl in January 2024
# (aws/aws-ofi-nccl PR 318), first released in v1.8.0-aws.
OFI_TUNER_FROM = Version("1.8.0")
# The tuner refuses to load when NCCL_ALGO or NCCL_PROTO is set (aws/aws-ofi-nccl issue 982).
TUNER_CONFLICTS = ("NCCL_ALGO", "NCCL_PROTO")
# From aws-ofi-nccl 1.16 the tuner is built into the net plugin, which NCCL >= 2.21 searches for
# a tuner when NCCL_TUNER_PLUGIN is unset (aws/aws-ofi-nccl PR 922, merged 2025-06, "2.19 - 2.20
# tuner only loaded if NCCL_TUNER_PLUGIN is set"): there the variable is not needed.
OFI_TUNER_IN_NET_PLUGIN = Version("1.16.0")
NCCL_FINDS_TUNER_IN_NET = Version("2.21.0")
# EFA installers from 1.43.0 bundle aws-ofi-nccl >= 1.16.1 (facts.EFA_BUNDLED_OFI_FROM).
EFA_BUNDLES_TUNER_IN_NET = Version("1.43.0")
# The tuner's models are for the p5 family (aws/aws-ofi-nccl PR 657); on p4d/p4de the plugin sets
# NCCL_PROTO=simple itself and the tuner NCCL 2.19-2.20 loads by name then aborts the job with
# "NCCL Error 4" (aws/aws-ofi-nccl issue 982). So it is only named for p5-family instances.
TUNER_FAMILIES = ("p5", "p5e", "p5en")

# --- strict patterns: these values end up in a shell script; reject, never escape -------------
# Always re.fullmatch: with re.match, '$' also accepts a trailing newline, and a newline in a value
# written into a comment line turns the rest of it into a command above the #SBATCH block.
SQSH_RE = re.compile(r"^(?:/|\./|\.\./)[A-Za-z0-9._+/-]*[A-Za-z0-9_+-]\.(?:sqsh|squashfs)$")
ABS_PATH_RE = re.compile(r"^/(?:[A-Za-z0-9._+-]+/?)*$")
MOUNT_RE = re.compile(r"^/[A-Za-z0-9._+/-]*(?::/[A-Za-z0-9._+/-]*)?(?::(?:ro|rw))?$")
SLURM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
INSTANCE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
TIME_RE = re.compile(r"^(?:\d+-)?\d+(?::\d{1,2}){0,2}$")
SIZE_RE = re.compile(r"^\d+[KMG]?$")
OUTPUT_RE = re.compile(r"^[A-Za-z0-9._/%+-]+$")
IMAGE_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,254}")  # matrix name or image reference
TESTS_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]{0,63}")


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str
    why: str


@dataclass(frozen=True)
class Versions:
    """The component versions that choose the environment (None: not in the image / unknown)."""

    efa: str
    aws_ofi_nccl: str | None = None
    nccl: str | None = None
    nccl_tests: str | None = None

    @classmethod
    def from_mapping(cls, versions: Mapping[str, str]) -> "Versions":
        efa = versions.get("efa")
        if not efa:
            raise UsageError(
                "the image has no EFA installer in its components; multi-node nccl-tests over EFA "
                "needs one (pass --efa VERSION if the image has it)"
            )
        return cls(efa, versions.get("aws_ofi_nccl"), versions.get("nccl"), versions.get("nccl_tests"))

    def check(self) -> None:
        # The matrix's own patterns, matched whole: packaging.Version would also take ' 1.30.0\n',
        # and these values are written into the script's comments.
        for name, value, pattern in (("efa", self.efa, VERSION_RE), ("aws_ofi_nccl", self.aws_ofi_nccl, VERSION_RE),
                                     ("nccl", self.nccl, NCCL_VERSION_RE),
                                     ("nccl_tests", self.nccl_tests, TESTS_VERSION_RE)):
            if value is None:
                continue
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise UsageError(f"{name} version {value!r} is not a version (digits and dots, e.g. 1.47.0)")

    @property
    def bundled(self) -> bool:
        return comp.efa_bundles_ofi(self.efa)

    @property
    def source_ofi(self) -> str | None:
        """The source-built plugin version (None when the EFA installer bundles the plugin)."""
        return None if self.bundled else self.aws_ofi_nccl


def nccl_env(versions: Versions, debug: str = "INFO", instance: str | None = None) -> list[EnvVar]:
    """The EFA/NCCL environment for a multi-node run, chosen by component versions.

    New stacks get no obsolete variables (the plugin sets FI_* and per-instance NCCL_* itself);
    old stacks get what their plugin era needs (components.network_env). ``instance`` (a type such
    as p5.48xlarge) decides whether the AWS tuner may be named (``tuner_choice``).
    """
    versions.check()
    env = [EnvVar("NCCL_DEBUG", debug, "the transport verdict (EFA plugin or socket fallback) is only in these logs")]
    env += [EnvVar(n, v, why) for n, v, why in comp.network_env(versions.efa, versions.source_ofi)]
    # Instance-dependent (aborts libfabric on p3dn/g5, which lack RDMA read): only for a known instance.
    env += [EnvVar(n, v, why) for n, v, why in comp.device_rdma_env(versions.source_ofi, rdma_read(instance))]
    plugin = comp.ofi_plugin(versions.efa)
    if plugin.net_plugin_name:
        env.append(EnvVar(
            "NCCL_NET_PLUGIN", plugin.net_plugin_name,
            f"the plugin file is {Path(plugin.net_lib).name}, not the libnccl-net.so NCCL loads by default",
        ))
    use, _ = tuner_choice(versions, instance)
    if use:
        env.append(EnvVar(
            "NCCL_TUNER_PLUGIN", plugin.tuner_lib,
            f"AWS algorithm/protocol tuner for the p5 family ({plugin.version_note}); NCCL 2.19-2.20 load it "
            "only when named, and plugins before 1.16 do not bundle it into the net plugin",
        ))
    nccl = _nccl_version(versions.nccl)
    if nccl is not None and nccl >= facts.NCCL_NEEDS_NEW_EFA and Version(versions.efa) < facts.EFA_FOR_NEW_NCCL:
        name, value = facts.SYNC_MEMOPS_OVERRIDE
        env.append(EnvVar(name, value, "EFA installer < 1.29.1 with NCCL >= 2.19 hangs without it"))
    return env


def instance_env(intra: str) -> list[EnvVar]:
    """Per-instance additions the plugin does not make itself, by how the GPUs of a node talk."""
    if intra.startswith("PCIe"):
        # g5/g6: no NVLink; CUDA memcpy for SHM transfers (efa-cheatsheet preset for g5/g6).
        return [EnvVar("NCCL_SHM_USE_CUDA_MEMCPY", "1", "PCIe-only GPUs (g5/g6): SHM transfers through CUDA memcpy")]
    return []


def env_notes(versions: Versions, instance: str | None = None) -> list[str]:
    """What the user should know about the chosen environment (printed as warnings)."""
    notes = []
    if not versions.bundled and versions.aws_ofi_nccl is None:
        notes.append(
            f"the aws-ofi-nccl version in this image is unknown (EFA {versions.efa} does not bundle it; the base "
            "image installs it): NCCL_TUNER_PLUGIN is left out; pass --aws-ofi-nccl VERSION to choose it"
        )
    _, note = tuner_choice(versions, instance)
    if note:
        notes.append(note)
    ofi = versions.source_ofi
    if ofi and Version(ofi) < facts.OFI_DEVICE_RDMA_BELOW and rdma_read(instance) is None:
        notes.append(f"aws-ofi-nccl {ofi} needs FI_EFA_USE_DEVICE_RDMA=1 on instances with RDMA read (p4d, p5) but "
                     "it aborts libfabric on p3dn/g5: it is left out; pass --instance TYPE to set it")
    return notes


def _nccl_version(nccl: str | None) -> Version | None:
    return Version(comp.nccl_base(nccl)) if nccl else None


def _ofi_version(versions: Versions) -> Version | None:
    """The aws-ofi-nccl version in the image: given, from the EFA changelog table, or None."""
    ofi = versions.aws_ofi_nccl or (comp.bundled_ofi_version(versions.efa) if versions.bundled else None)
    return Version(ofi) if ofi else None


def tuner_choice(versions: Versions, instance: str | None) -> tuple[bool, str | None]:
    """(name NCCL_TUNER_PLUGIN?, a note for the user when the answer depends on what they can tell us)."""
    nccl = _nccl_version(versions.nccl)
    if nccl is not None and nccl < NCCL_TUNER_API:
        return False, None  # no tuner interface in this NCCL
    ofi = _ofi_version(versions)
    if ofi is None and not versions.bundled:
        return False, None  # unknown source-built plugin: env_notes says so
    if ofi is not None and ofi < OFI_TUNER_FROM:
        return False, None  # the plugin has no tuner
    in_net = (ofi >= OFI_TUNER_IN_NET_PLUGIN) if ofi is not None else Version(versions.efa) >= EFA_BUNDLES_TUNER_IN_NET
    if in_net and nccl is not None and nccl >= NCCL_FINDS_TUNER_IN_NET:
        return False, None  # NCCL finds the tuner in the net plugin by itself
    family = instance.split(".", 1)[0] if instance else None
    if family is not None and family not in TUNER_FAMILIES:
        return False, None  # calibrated for p5 only; aborts NCCL 2.19-2.20 on p4d (issue 982)
    if nccl is None:
        return False, ("the NCCL version in this image is unknown: NCCL_TUNER_PLUGIN is left out (NCCL >= 2.21 "
                       "finds the tuner in aws-ofi-nccl >= 1.16 by itself); pass --nccl VERSION to choose it")
    if family is None:
        return False, ("no --instance given: NCCL_TUNER_PLUGIN is left out (the AWS tuner is for the p5 family "
                       "and aborts NCCL 2.19-2.20 on p4d); pass --instance p5.48xlarge to name it")
    return True, None


@dataclass(frozen=True)
class Job:
    """What to run and where; everything but the environment."""

    image: str  # matrix name or image reference, for the comments and the default job name
    nodes: int
    sqsh: str | None  # None: run on the host without pyxis (--no-container)
    test: str = "all_reduce"
    ntasks_per_node: int = 8
    gpus_per_node: int | None = None
    tests_dir: str = DEFAULT_TESTS_DIR
    min_bytes: str = "8"
    max_bytes: str = "16G"
    factor: int = 2
    iters: int = 100
    warmup: int = 5
    check: int = 1
    job_name: str | None = None
    instance: str | None = None  # instance type, for the comments and the judge hint
    partition: str | None = None
    time_limit: str | None = None
    output: str = DEFAULT_OUTPUT
    exclusive: bool = True
    container_mounts: tuple[str, ...] = ()
    container_name: str | None = None  # pyxis --container-name: the unpacked image kept and reused
    login_shell: bool = False  # True: leave enroot's login shell on (the image's /etc/profile runs)
    extra_env: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return self.job_name or default_job_name(self.image)

    @property
    def binary(self) -> str:
        return f"{self.tests_dir.rstrip('/')}/{self.test}_perf"

    def validate(self) -> None:
        problems = []
        if not isinstance(self.image, str) or not IMAGE_LABEL_RE.fullmatch(self.image):
            problems.append(f"image {self.image!r} must be a matrix name or an image reference (letters, digits, ._:/@+-)")
        if self.nodes < 1:
            problems.append("--nodes must be at least 1")
        if self.ntasks_per_node < 1:
            problems.append("--ntasks-per-node must be at least 1")
        if self.gpus_per_node is not None and self.gpus_per_node < 1:
            problems.append("--gpus-per-node must be at least 1")
        if self.test not in TESTS:
            problems.append(f"unknown test {self.test!r}; choose one of {', '.join(TESTS)}")
        if self.sqsh is not None and not SQSH_RE.fullmatch(self.sqsh):
            problems.append(
                f"--sqsh {self.sqsh!r} must be a .sqsh path starting with / or ./ "
                "(pyxis treats anything else as a registry image), made of letters, digits and ._+-/"
            )
        if not ABS_PATH_RE.fullmatch(self.tests_dir):
            problems.append(f"--tests-dir {self.tests_dir!r} must be an absolute path of letters, digits and ._+-/")
        for flag, value in (("--min-bytes", self.min_bytes), ("--max-bytes", self.max_bytes)):
            if not SIZE_RE.fullmatch(value):
                problems.append(f"{flag} {value!r} must be a byte count, optionally with K, M or G (e.g. 16G)")
        for flag, value in (("--factor", self.factor), ("--iters", self.iters)):
            if value < 1:
                problems.append(f"{flag} must be at least 1")
        if self.warmup < 0 or self.check < 0:
            problems.append("--warmup and --check must not be negative")
        if not SLURM_NAME_RE.fullmatch(self.name):
            problems.append(f"job name {self.name!r} must be letters, digits and ._- (at most 64)")
        if self.instance is not None and not INSTANCE_RE.fullmatch(self.instance):
            problems.append(f"--instance {self.instance!r} must be an instance type such as p5.48xlarge")
        if self.partition is not None and not SLURM_NAME_RE.fullmatch(self.partition):
            problems.append(f"--partition {self.partition!r} must be letters, digits and ._-")
        if self.time_limit is not None and not TIME_RE.fullmatch(self.time_limit):
            problems.append(f"--time {self.time_limit!r} must be a Slurm time such as 30, 1:00:00 or 1-00:00")
        if not OUTPUT_RE.fullmatch(self.output):
            problems.append(f"--job-output {self.output!r} must be a path of letters, digits and ._/%+-")
        for mount in self.container_mounts:
            if not MOUNT_RE.fullmatch(mount):
                problems.append(f"--container-mount {mount!r} must be SRC[:DST[:ro|rw]] with absolute paths")
        if self.container_mounts and self.sqsh is None:
            problems.append("--container-mount needs a container (drop --no-container)")
        if self.container_name is not None:
            if not slurm_pyxis.CONTAINER_NAME_RE.fullmatch(self.container_name):
                problems.append(f"--container-name {self.container_name!r} must be letters, digits and ._- (at most 64)")
            if self.sqsh is None:
                problems.append("--container-name needs a container (drop --no-container)")
        for name, value in self.extra_env:
            if not ENV_NAME_RE.fullmatch(name) or not ENV_VALUE_RE.fullmatch(value):
                problems.append(f"--env {name + '=' + value!r} must be NAME=VALUE with NAME in [A-Z0-9_] and a plain value")
        if problems:
            raise UsageError("; ".join(problems))

    def benchmark_argv(self) -> list[str]:
        # -g 1: one GPU per task, the tasks (ntasks-per-node of them per node) are the ranks.
        return [
            self.binary, "-b", self.min_bytes, "-e", self.max_bytes, "-f", str(self.factor),
            "-g", "1", "-c", str(self.check), "-w", str(self.warmup), "-n", str(self.iters),
        ]


def default_job_name(image: str) -> str:
    """'nccl-<name>' from a matrix name or the last path component of an image reference."""
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip("-.") or "image"
    return f"nccl-{base}"[:64]


def merge_env(env: list[EnvVar], extra: tuple[tuple[str, str], ...]) -> tuple[list[EnvVar], list[str]]:
    """User --env entries override or extend the chosen ones; returns (env, warnings)."""
    warnings: list[str] = []
    merged = {e.name: e for e in env}
    for name, value in extra:
        merged[name] = EnvVar(name, value, "set with --env")
    if "NCCL_TUNER_PLUGIN" in merged and merged["NCCL_TUNER_PLUGIN"].why != "set with --env":
        clash = [n for n in TUNER_CONFLICTS if n in merged]
        if clash:
            del merged["NCCL_TUNER_PLUGIN"]
            warnings.append(
                f"dropped NCCL_TUNER_PLUGIN: the aws-ofi-nccl tuner refuses to load when {' or '.join(clash)} is set"
            )
    return list(merged.values()), warnings


def describe_versions(versions: Versions) -> str:
    plugin = comp.ofi_plugin(versions.efa)
    if versions.bundled:
        ofi = f"bundled{' ' + versions.aws_ofi_nccl if versions.aws_ofi_nccl else ''} at {plugin.lib_dir}"
    else:
        ofi = f"{versions.aws_ofi_nccl or 'unknown'} built at {plugin.lib_dir}"
    parts = [f"efa {versions.efa}", f"aws-ofi-nccl {ofi}", f"nccl {versions.nccl or 'unknown'}"]
    if versions.nccl_tests:
        parts.append(f"nccl-tests {versions.nccl_tests}")
    return ", ".join(parts)


def render_sbatch(job: Job, versions: Versions, env: list[EnvVar] | None = None) -> str:
    """The sbatch script text (deterministic: same inputs, same bytes)."""
    job.validate()
    versions.check()
    if env is None:
        env, _ = merge_env(nccl_env(versions, instance=job.instance), job.extra_env)
    q = shlex.quote
    ranks = job.nodes * job.ntasks_per_node
    lines = [
        "#!/bin/bash",
        f"# nccl-tests {job.test} on {job.nodes} node(s) x {job.ntasks_per_node} GPU(s) = {ranks} ranks,"
        f" image {job.image}{' on ' + job.instance if job.instance else ''}.",
        "# Generated by `builder sbatch`; do not edit by hand, re-generate instead.",
        f"# Components: {describe_versions(versions)}.",
        "# Read the result with: builder nccl parse <the --output file below>",
        f"# Judge it with: builder nccl judge <that file> --nodes {job.nodes}"
        f"{' --instance ' + job.instance if job.instance else ' --instance TYPE'} --collective {job.test}_perf",
        f"#SBATCH --job-name={job.name}",
        f"#SBATCH --nodes={job.nodes}",
        f"#SBATCH --ntasks-per-node={job.ntasks_per_node}",
    ]
    if job.gpus_per_node is not None:
        lines.append(f"#SBATCH --gpus-per-node={job.gpus_per_node}")
    if job.exclusive:
        lines.append("#SBATCH --exclusive")
    # Start only when every node has booted (cloud nodes are powered up on demand).
    lines.append("#SBATCH --wait-all-nodes=1")
    if job.partition:
        lines.append(f"#SBATCH --partition={job.partition}")
    if job.time_limit:
        lines.append(f"#SBATCH --time={job.time_limit}")
    lines += [f"#SBATCH --output={job.output}", "", "set -euo pipefail", ""]
    where = ("srun passes them into the container; --container-env makes them win over the image's"
             if job.sqsh else "srun passes it to every task")
    lines.append(f"# EFA/NCCL environment for these versions ({where}).")
    for var in env:
        lines.append(f"# {var.why}")
        lines.append(f"export {var.name}={q(var.value)}")
    lines.append("")
    srun, wrap = ["srun"], []
    if job.sqsh is not None:
        lines += slurm_pyxis.script_lines(job.login_shell)
        lines.append(f"IMAGE={q(job.sqsh)}")
        lines.append("")
        srun += ["--container-image", '"$IMAGE"', *slurm_pyxis.srun_args(job.container_name, [v.name for v in env])]
        if job.container_mounts:
            srun += [f"--container-mounts={q(','.join(job.container_mounts))}"]
        wrap = slurm_pyxis.wrap_argv()
    else:
        lines.append("# --no-container: the benchmark runs on the nodes themselves, without pyxis.")
    # pmix: nccl-tests built with MPI=1 wires its ranks up through Slurm's PMIx server.
    # --label: "N: " before every line, so each rank's NCCL lines (and a build without MPI, where
    # every rank prints its own table) can be told apart by `builder nccl parse`.
    srun += ["--mpi=pmix", "--cpu-bind=none", "--label"]
    bench = wrap + [q(a) for a in job.benchmark_argv()]
    # Names the table in the output: nccl-tests before 2.17 does not print the collective.
    lines.append(f"echo {q(f'nccl-tests: {job.test}_perf on {job.nodes} node(s) x {job.ntasks_per_node} task(s)')}")
    lines.append(" ".join(srun) + " \\")
    lines.append("    " + " ".join(bench))
    return "\n".join(lines) + "\n"
