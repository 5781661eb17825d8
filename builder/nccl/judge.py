"""Judge a parsed nccl-tests run against the hardware: pass, or fail with the reason.

Four checks. ``complete``: the footer was printed, or at least no row is missing (a job killed
mid-run fails). ``data``: #wrong counts, the old float error column against nccl-tests' own
tolerance, out-of-bounds values, nccl-tests' min-bandwidth FAILED. ``transport``: socket
fallback, an OFI provider other than efa, or another network (IB, another net plugin) where EFA
is expected. ``bandwidth``: all_reduce bus bandwidth below the instance's threshold at large
messages. A check that cannot be made (no logs, no instance type, -c 0) is skipped and says why;
skipped checks do not fail the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from builder.nccl.instances import Instance
from builder.nccl.results import NcclRun, delta_tolerance

LARGE_BYTES = 1 << 30  # thresholds apply to the best busbw at >= 1 GiB (bandwidth-bound sizes)

PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass(frozen=True)
class Check:
    name: str  # "complete" | "data" | "transport" | "bandwidth"
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
    threshold_source: str | None = None  # "instance" (table fraction) | "option" (--threshold)
    peak_label: str | None = None  # what the physical peak is, e.g. "per-node network peak"

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


def _complete_check(run: NcclRun) -> Check:
    if run.footer:
        return Check("complete", PASS, "footer printed: the run finished")
    last = max(r.size for r in run.rows)
    if run.truncated:
        return Check(
            "complete", FAIL,
            f"output cut short: no footer, and the rows stop at {human_bytes(last)}, below maxBytes "
            f"{human_bytes(run.max_bytes)} (the job was killed, timed out or crashed mid-run, or this is an excerpt)",
        )
    if run.max_bytes is not None:
        return Check("complete", SKIP, "no footer (an excerpt?): the rows reach maxBytes, the footer lines are missing")
    return Check("complete", SKIP, "no footer and no parameter line: cannot tell whether the output is complete")


def _data_check(run: NcclRun) -> Check:
    problems = []
    bad = [r for r in run.rows if r.wrong]
    if bad:
        sizes = ", ".join(human_bytes(r.size) for r in bad[:4]) + (" ..." if len(bad) > 4 else "")
        problems.append(f"{run.wrong_total} wrong elements (#wrong) at {sizes}")
    over = [r for r in run.rows if r.delta_exceeded]
    if over:
        worst = max((m.delta for r in over for m in (r.out_of_place, r.in_place) if m.delta is not None))
        sizes = ", ".join(human_bytes(r.size) for r in over[:4]) + (" ..." if len(over) > 4 else "")
        problems.append(f"error column up to {worst:g}, above nccl-tests' tolerance for {over[0].type}, at {sizes}")
    if run.out_of_bounds:
        problems.append(f"{run.out_of_bounds} out-of-bounds values")
    if run.avg_status == "FAILED":
        problems.append("nccl-tests' own average-bandwidth check printed FAILED")
    if problems:
        return Check("data", FAIL, "data errors: " + "; ".join(problems) + " (results are corrupt, not just slow)")
    counted = any(m.wrong is not None for r in run.rows for m in (r.out_of_place, r.in_place))
    deltas = any(
        m.delta is not None and delta_tolerance(r.type) is not None for r in run.rows for m in (r.out_of_place, r.in_place)
    )
    if run.validation == 0 or not (counted or deltas):
        why = "the run used -c 0 (validation: 0)" if run.validation == 0 else "every error value is N/A or absent"
        return Check("data", SKIP, f"data not validated: {why}; run with -c 1 (a '0 OK' footer then checks nothing)")
    parts = ["no wrong elements (#wrong)" if counted else "error column within nccl-tests' tolerance"]
    if run.out_of_bounds is not None:
        parts.append("no out-of-bounds values")
    else:
        parts.append("no footer, so the out-of-bounds count was not seen")
    return Check("data", PASS, "; ".join(parts))


def _transport_check(run: NcclRun, nodes: int | None, expect_efa: bool) -> Check:
    t = run.transport
    if t.verdict == "unknown":
        return Check("transport", SKIP, "transport not verified: no NCCL_DEBUG=INFO network lines in the output")
    if t.verdict == "efa":
        return Check("transport", PASS, t.summary())
    where = f" on {', '.join(t.bad_hosts)}" if t.bad_hosts else ""
    if t.verdict == "ofi-other":
        why = f"OFI plugin loaded but libfabric gave provider '{t.provider}', not efa{where}"
    elif t.verdict == "socket":
        cause = ""
        if t.plugin_failed:
            cause = f" ({t.plugin or 'the net plugin'} loaded but failed to initialize)"
        elif t.plugin_loaded is False:
            cause = " (the aws-ofi-nccl net plugin did not load)"
        why = f"NCCL fell back to sockets{where}{cause}"
    else:  # ib, other
        why = f"NCCL used network {t.network or t.verdict}{where}, not EFA through aws-ofi-nccl"
        if t.verdict == "other":
            why += " (another net plugin was picked: check NCCL_NET_PLUGIN)"
    # The first warning of a failed plugin says why it failed; otherwise the network line says what NCCL did.
    shown = next((e for e in t.evidence if "NCCL WARN" in e), None) if t.plugin_failed else None
    shown = shown or (t.evidence[0] if t.evidence else None)
    evidence = f" [{shown}]" if shown else ""
    multi = (nodes or 1) > 1
    if expect_efa or (multi and t.socket_fallback):
        return Check(
            "transport",
            FAIL,
            f"{why}{evidence}: check that the plugin is in the image and on LD_LIBRARY_PATH/NCCL_NET_PLUGIN "
            "and that the EFA devices (/dev/infiniband) reach the container",
        )
    if not multi:
        return Check("transport", SKIP, f"{why}; single node without EFA expected, so not judged")
    return Check("transport", PASS, f"{t.summary()} (EFA not expected)")


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
    checks = [_complete_check(run), _data_check(run), _transport_check(run, nodes, expect_efa)]

    large = [r for r in run.rows if r.size >= large_bytes]
    note = ""
    if not large:
        biggest = max(r.size for r in run.rows)
        large = [r for r in run.rows if r.size == biggest]
        note = f" (largest message is {human_bytes(biggest)}, below {human_bytes(large_bytes)}: run with -e 1G or more)"
    best = max(large, key=lambda r: r.best_busbw)
    measured, measured_size = best.best_busbw, best.size

    peak = instance.peak(nodes or 1) if instance else None
    source = "option" if threshold is not None else None
    if threshold is None and instance is not None:
        if nodes is None:
            checks.append(Check("bandwidth", SKIP, "bandwidth not judged: node count unknown (give --nodes)"))
        else:
            threshold, source = instance.threshold(nodes), "instance"
    all_reduce = _is_all_reduce(run)
    if threshold is None:
        if not any(c.name == "bandwidth" for c in checks):
            checks.append(Check("bandwidth", SKIP, "bandwidth not judged: give --instance TYPE or --threshold GB/s"))
    elif all_reduce is False:
        checks.append(Check("bandwidth", SKIP, f"thresholds are for all_reduce; this is {run.collective}"))
        threshold, source = None, None
    else:
        if source == "instance":
            n = nodes or 1
            what = f"{threshold:g} GB/s = {instance.fraction(n):g} x {peak:g} GB/s {instance.peak_label(n)} of {instance.name}"
        else:
            what = f"{threshold:g} GB/s (--threshold)"
        assumed = "" if all_reduce else " (collective not named in the output: assumed all_reduce; see --collective)"
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
        threshold_source=source,
        peak_label=instance.peak_label(nodes or 1) if instance else None,
    )
