"""Judge a parsed nccl-tests run against the hardware: pass, or fail with the reason.

Three ways to fail, each a check of its own: data errors (#wrong, out-of-bounds, nccl-tests' own
min-bandwidth FAILED), socket fallback (NCCL_DEBUG lines show Socket, or an OFI provider other
than efa, where EFA is expected), and all_reduce bus bandwidth below the instance's threshold at
large messages. A check that cannot be made (no logs, no instance type) is skipped and says why;
skipped checks do not fail the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from builder.nccl.instances import Instance
from builder.nccl.parse import NcclRun

LARGE_BYTES = 1 << 30  # thresholds apply to the best busbw at >= 1 GiB (bandwidth-bound sizes)

PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass(frozen=True)
class Check:
    name: str  # "data" | "transport" | "bandwidth"
    status: str  # pass | fail | skip
    detail: str


@dataclass(frozen=True)
class Verdict:
    passed: bool
    checks: tuple[Check, ...]
    collective: str | None
    instance: str | None
    nodes: int | None
    measured: float | None  # best busbw (GB/s) at large messages
    measured_size: int | None
    threshold: float | None
    physical_peak: float | None

    @property
    def reasons(self) -> list[str]:
        return [c.detail for c in self.checks if c.status == FAIL]

    def to_dict(self) -> dict:
        return {**asdict(self), "reasons": self.reasons}


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def _data_check(run: NcclRun) -> Check:
    problems = []
    bad = [r for r in run.rows if r.wrong]
    if bad:
        sizes = ", ".join(human_bytes(r.size) for r in bad[:4]) + (" ..." if len(bad) > 4 else "")
        problems.append(f"{run.wrong_total} wrong elements (#wrong) at {sizes}")
    if run.out_of_bounds:
        problems.append(f"{run.out_of_bounds} out-of-bounds values")
    if run.avg_status == "FAILED":
        problems.append("nccl-tests' own average-bandwidth check printed FAILED")
    if problems:
        return Check("data", FAIL, "data errors: " + "; ".join(problems) + " (results are corrupt, not just slow)")
    checked = run.error_column == "#wrong" and any(
        m.wrong is not None for r in run.rows for m in (r.out_of_place, r.in_place)
    )
    if checked or run.out_of_bounds is not None:
        return Check("data", PASS, "no wrong elements, no out-of-bounds values")
    return Check("data", SKIP, "data not checked (run with -c 1; the output has no #wrong counts or footer)")


def _transport_check(run: NcclRun, nodes: int | None, expect_efa: bool) -> Check:
    t = run.transport
    if t.verdict == "unknown":
        return Check("transport", SKIP, "transport not verified: no NCCL_DEBUG=INFO network lines in the output")
    if t.socket_fallback:
        why = (
            f"OFI plugin loaded but libfabric gave provider '{t.provider}', not efa"
            if t.verdict == "ofi-other"
            else "NCCL fell back to sockets"
            + (" (the aws-ofi-nccl net plugin did not load)" if t.plugin_loaded is False else "")
        )
        evidence = f" [{t.evidence[0]}]" if t.evidence else ""
        if expect_efa or (nodes or 1) > 1:
            return Check(
                "transport",
                FAIL,
                f"{why}{evidence}: check that the plugin is in the image and on LD_LIBRARY_PATH/NCCL_NET_PLUGIN "
                "and that the EFA devices (/dev/infiniband) reach the container",
            )
        return Check("transport", SKIP, f"{why}; single node without EFA expected, so not judged")
    if expect_efa and t.verdict != "efa":
        return Check("transport", FAIL, f"expected EFA, NCCL used {t.summary()}")
    return Check("transport", PASS, t.summary())


def _is_all_reduce(run: NcclRun) -> bool | None:
    if run.collective:
        return "all_reduce" in run.collective
    return None


def judge(
    run: NcclRun,
    instance: Instance | None = None,
    nodes: int | None = None,
    threshold: float | None = None,
    expect_efa: bool | None = None,
    large_bytes: int = LARGE_BYTES,
) -> Verdict:
    nodes = nodes or len(run.hosts) or None
    if expect_efa is None:
        expect_efa = bool(instance and instance.efa and (nodes or 1) > 1)
    checks = [_data_check(run), _transport_check(run, nodes, expect_efa)]

    large = [r for r in run.rows if r.size >= large_bytes]
    note = ""
    if not large:
        biggest = max(r.size for r in run.rows)
        large = [r for r in run.rows if r.size == biggest]
        note = f" (largest message is {human_bytes(biggest)}, below {human_bytes(large_bytes)}: run with -e 1G or more)"
    best = max(large, key=lambda r: r.best_busbw)
    measured, measured_size = best.best_busbw, best.size

    peak = instance.peak(nodes or 1) if instance else None
    if threshold is None and instance is not None:
        if nodes is None:
            checks.append(Check("bandwidth", SKIP, "bandwidth not judged: node count unknown (give --nodes)"))
        else:
            threshold = instance.threshold(nodes)
    all_reduce = _is_all_reduce(run)
    if threshold is None:
        if not any(c.name == "bandwidth" for c in checks):
            checks.append(Check("bandwidth", SKIP, "bandwidth not judged: give --instance TYPE or --threshold GB/s"))
    elif all_reduce is False:
        checks.append(Check("bandwidth", SKIP, f"thresholds are for all_reduce; this is {run.collective}"))
        threshold = None
    else:
        what = (
            f"{threshold:g} GB/s"
            + (
                f" = {instance.single_fraction if (nodes or 1) <= 1 else instance.multi_fraction:g} x "
                f"{peak:g} GB/s {'per-GPU ' + instance.intra if (nodes or 1) <= 1 else 'per-node network'} peak "
                f"of {instance.name}"
                if instance and peak
                else ""
            )
        )
        assumed = "" if all_reduce else " (collective not named in the output: assumed all_reduce)"
        scope = f"{nodes} node{'s' if (nodes or 1) > 1 else ''}" if nodes else "nodes unknown"
        line = f"best busbw {measured:g} GB/s at {human_bytes(measured_size)} ({scope})"
        if measured < threshold:
            checks.append(Check("bandwidth", FAIL, f"{line} is below the threshold {what}{note}{assumed}"))
        else:
            checks.append(Check("bandwidth", PASS, f"{line} >= threshold {what}{note}{assumed}"))

    return Verdict(
        passed=not any(c.status == FAIL for c in checks),
        checks=tuple(checks),
        collective=run.collective,
        instance=instance.name if instance else None,
        nodes=nodes,
        measured=measured,
        measured_size=measured_size,
        threshold=threshold,
        physical_peak=peak,
    )
