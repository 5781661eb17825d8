"""What a parsed nccl-tests table is: rows, measures, the run and its derived figures. Pure.

``builder.nccl.parse`` builds these from text; judge, report and plot read them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from builder.errors import BuilderError
from builder.nccl import EXIT_NO_RESULTS
from builder.nccl.transport import Transport

# nccl-tests' DeltaMaxValue (src/common.cu of the versions with the float ``error`` column): the
# largest max-abs-difference its check accepts, per type; integer types accept none (1e-200).
_DELTA_TOLERANCE = {
    "half": 1e-2, "float16": 1e-2, "bfloat16": 1e-2,
    "float": 1e-5, "float32": 1e-5,
    "double": 1e-12, "float64": 1e-12,
    **{t: 0.0 for t in ("char", "int8", "uint8", "int", "int32", "uint32", "int64", "uint64")},
}


def delta_tolerance(type_name: str) -> float | None:
    """The largest ``error`` value nccl-tests accepts for a type (None: type not known here)."""
    return _DELTA_TOLERANCE.get(type_name)


@dataclass(frozen=True)
class Measure:
    """One half of a row: out-of-place or in-place."""

    time_us: float
    algbw: float  # GB/s
    busbw: float  # GB/s
    wrong: int | None = None  # '#wrong' column (newer builds); None when N/A or absent
    delta: float | None = None  # 'error' column (older builds): max abs difference, not a count


@dataclass(frozen=True)
class Row:
    size: int  # bytes
    count: int  # elements
    type: str
    redop: str | None
    root: int | None
    out_of_place: Measure
    in_place: Measure

    @property
    def best_busbw(self) -> float:
        return max(self.out_of_place.busbw, self.in_place.busbw)

    @property
    def wrong(self) -> int:
        return sum(m.wrong or 0 for m in (self.out_of_place, self.in_place))

    @property
    def delta_exceeded(self) -> bool:
        """The old ``error`` column is above what nccl-tests accepts for this type."""
        tolerance = delta_tolerance(self.type)
        return tolerance is not None and any(
            m.delta is not None and m.delta > tolerance for m in (self.out_of_place, self.in_place)
        )


@dataclass(frozen=True)
class Device:
    rank: int
    host: str
    device: int
    name: str


@dataclass(frozen=True)
class Peak:
    busbw: float
    size: int
    placement: str  # "out-of-place" | "in-place"


def _print_bound(value: float) -> float:
    """Half a unit of the last decimal nccl-tests prints busbw with (2 decimals, fewer from 1000)."""
    return 0.005 if value < 1000 else (0.05 if value < 10000 else 0.5)


@dataclass(frozen=True)
class NcclRun:
    rows: tuple[Row, ...]
    collective: str | None = None  # "all_reduce_perf" ...
    tests_version: str | None = None  # nccl-tests version line (newest builds only)
    nccl_version: str | None = None  # "2.18.5+cuda12.2"
    params: dict = field(default_factory=dict)  # nThread, nGpus, minBytes, iters ... as printed
    devices: tuple[Device, ...] = ()
    error_column: str | None = None  # "#wrong" | "error" | None (unknown: no header)
    time_unit: str = "us"  # as printed (the 2.0 era printed ms); time_us is converted
    out_of_bounds: int | None = None
    out_of_bounds_ok: bool | None = None
    avg_busbw_printed: float | None = None  # None: no footer, or it printed nan/inf
    avg_status: str | None = None  # "OK" | "FAILED" when NCCL_TESTS_MIN_BW / -m was set
    footer: bool = False  # an 'Out of bounds' or 'Avg bus bandwidth' line was seen
    launcher: str | None = None
    transport: Transport = Transport("unknown")
    warnings: tuple[str, ...] = ()

    @property
    def avg_busbw_recomputed(self) -> float:
        values = [m.busbw for r in self.rows for m in (r.out_of_place, r.in_place)]
        return sum(values) / len(values)

    @property
    def peak(self) -> Peak:
        best = None
        for r in self.rows:
            for placement, m in (("out-of-place", r.out_of_place), ("in-place", r.in_place)):
                if best is None or m.busbw > best.busbw:
                    best = Peak(m.busbw, r.size, placement)
        return best

    @property
    def hosts(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for d in self.devices:
            seen.setdefault(d.host, None)
        return tuple(seen)

    @property
    def nranks(self) -> int | None:
        return len(self.devices) or None

    @property
    def wrong_total(self) -> int:
        return sum(r.wrong for r in self.rows)

    @property
    def validation(self) -> int | None:
        """The run's -c value as printed ('validation: 0' means nothing was checked)."""
        value = self.params.get("validation")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def max_bytes(self) -> int | None:
        value = self.params.get("maxBytes")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def truncated(self) -> bool | None:
        """True: no footer and the rows stop before maxBytes (killed, timed out, crashed mid-run).
        False: the footer was printed. None: no footer, but no row is known to be missing."""
        if self.footer:
            return False
        last, top = max(r.size for r in self.rows), self.max_bytes
        if top is None:
            return None
        step = self.params.get("step", "")
        m = re.fullmatch(r"(\d+)\((factor|bytes)\)", step)
        if m and int(m.group(1)) > 0:
            after = last * int(m.group(1)) if m.group(2) == "factor" else last + int(m.group(1))
            return True if last < top and after <= top else None
        return True if last < top else None

    @property
    def average_matches(self) -> bool | None:
        """Printed average == recomputed one, within print rounding (None: nothing printed)."""
        if self.avg_busbw_printed is None:
            return None
        values = [m.busbw for r in self.rows for m in (r.out_of_place, r.in_place)]
        # Each value is off by at most half its last printed decimal, so is their mean.
        bound = sum(_print_bound(v) for v in values) / len(values)
        printed, mine = self.avg_busbw_printed, self.avg_busbw_recomputed
        return abs(printed - mine) <= bound + 0.001 + 1e-5 * abs(printed)  # the average itself is %g

    def to_dict(self) -> dict:
        peak = self.peak
        return {
            "collective": self.collective,
            "tests_version": self.tests_version,
            "nccl_version": self.nccl_version,
            "launcher": self.launcher,
            "params": dict(self.params),
            "nranks": self.nranks,
            "hosts": list(self.hosts),
            "error_column": self.error_column,
            "time_unit_printed": self.time_unit,
            "rows": [asdict(r) for r in self.rows],
            "avg_busbw": {
                "printed": self.avg_busbw_printed,
                "recomputed": round(self.avg_busbw_recomputed, 6),
                "matches": self.average_matches,
                "status": self.avg_status,
            },
            "peak": asdict(peak),
            "out_of_bounds": {"count": self.out_of_bounds, "ok": self.out_of_bounds_ok},
            "wrong_total": self.wrong_total,
            "footer": self.footer,
            "truncated": self.truncated,
            "transport": {**asdict(self.transport), "socket_fallback": self.transport.socket_fallback},
            "warnings": list(self.warnings),
        }


class NoResults(BuilderError):
    """The text holds no nccl-tests result row (the transport is still read from its logs)."""

    def __init__(self, message: str, transport: Transport | None = None):
        self.transport = transport or Transport("unknown")
        if self.transport.verdict != "unknown":
            message += f"; the NCCL logs show: {self.transport.summary()}"
            if self.transport.evidence:
                message += f" [{self.transport.evidence[0]}]"
        super().__init__(message, exit_code=EXIT_NO_RESULTS)
