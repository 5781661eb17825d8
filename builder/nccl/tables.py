"""Reading nccl-tests result tables out of one rank's lines (the formats are described in
``builder.nccl.parse``): headers, column groups, rows, footers, time units. Pure."""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field, replace

from builder.nccl.results import Device, Measure, Row

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
# "#  Rank  0 Group  0 Pid  6899 on host device  0 [0x04] NAME"; the 2.0 era had no Group/Pid.
_RANK_LINE = re.compile(
    r"^#?\s*Rank\s+(\d+)\s+(?:Group\s+\d+\s+)?(?:Pid\s+\d+\s+)?on\s+(\S+)\s+device\s+(\d+)\s+\[[^\]]*\]\s+(.*?)\s*$"
)
# Footers anchored at the line start, '#' optional (2.0 era and pasted outputs have none).
_OOB = re.compile(r"^#?\s*Out of bounds values\s*:\s*(\d+)\s*(OK|FAILED)?", re.IGNORECASE)
_AVG = re.compile(rf"^#?\s*Avg bus bandwidth\s*:\s*({_NUM}|[-+]?nan|[-+]?inf)\s*(OK|FAILED)?", re.IGNORECASE)
_COLLECTIVE = re.compile(r"Collective test (?:starting|concluded):\s*(\S+)")
_TESTS_VERSION = re.compile(r"nccl-tests version\s+(\S+)")
_PARAM = re.compile(r"(nThread|nGpus|minBytes|maxBytes|step:|warmup iters:|iters:|agg iters:|validation:|graph:)\s*(\S+)")

_DEFAULT_GROUP = ("time", "algbw", "busbw", "#wrong")
_KNOWN_OPS = {"sum", "prod", "max", "min", "avg", "none", "mulsum", "premulsum"}
# The 2.0-era header names: "bytes N type op time algbw busbw res".
_OLD_NAMES = {"bytes": "size", "N": "count", "op": "redop", "res": "error"}


@dataclass
class _Table:
    start: int = 0  # index (in the whole text) of the table's first line
    prefix: tuple[str, ...] | None = None  # column names before the first time column
    group: tuple[str, ...] | None = None  # column names of one out-of-place/in-place group
    unit: str | None = None  # "us" | "ms" from the unit line under the header
    rows: list = field(default_factory=list)
    params: dict = field(default_factory=dict)
    devices: list = field(default_factory=list)
    collective: str | None = None
    tests_version: str | None = None
    oob: tuple[int, bool | None] | None = None
    avg: tuple[float, str | None] | None = None
    dropped: int = 0  # rows of interleaved unlabeled duplicates left out


def _columns(content: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    tokens = [_OLD_NAMES.get(t, t) for t in content.lstrip("#").split()]
    if "size" not in tokens or "busbw" not in tokens:
        return None
    times = [i for i, t in enumerate(tokens) if t in ("time", "cputime")]
    if len(times) < 2:
        return None
    first, second = times[0], times[1]
    return tuple(tokens[:first]), tuple(tokens[first:second])


def _unit(content: str) -> str | None:
    """'(us)' or '(ms)' from the unit line under the column header ('(B) (elements) (us) ...')."""
    tokens = content.lstrip("#").split()
    if "(B)" not in tokens:
        return None
    return "ms" if "(ms)" in tokens else ("us" if "(us)" in tokens else None)


def _guess_prefix(tokens: list[str]) -> tuple[str, ...] | None:
    """Columns before the times when there was no header: by field count and kind."""
    n = len(tokens) - 2 * len(_DEFAULT_GROUP)
    if n == 5:
        return ("size", "count", "type", "redop", "root")
    if n == 4:
        return ("size", "count", "type", "redop" if tokens[3] in _KNOWN_OPS else "root")
    if n == 3:
        return ("size", "count", "type")
    return None


def _guess_error_column(token: str) -> str:
    """Without a header: old builds print the max delta with %5.0le ('5e-07', '0e+00'), newer ones
    the #wrong count with %5g ('0', '12', '1.6e+07' for millions)."""
    m = re.fullmatch(r"\d(?:\.\d+)?e([-+]\d+)", token)
    if m and (int(m.group(1)) < 0 or float(token) == 0):
        return "error"
    return "#wrong"


def _number(token: str) -> float:
    value = float(token)
    if math.isnan(value):
        raise ValueError(token)
    return value


def _measure(names: tuple[str, ...], values: list[str]) -> Measure:
    cols = dict(zip(names, values))
    wrong = delta = None
    if "#wrong" in cols and cols["#wrong"] != "N/A":
        wrong = int(_number(cols["#wrong"]))
    if "error" in cols and cols["error"] != "N/A":
        delta = _number(cols["error"])
    time_key = "time" if "time" in cols else "cputime"
    return Measure(_number(cols[time_key]), _number(cols["algbw"]), _number(cols["busbw"]), wrong, delta)


def _row(table: _Table, content: str) -> Row | None:
    tokens = content.split()
    if len(tokens) < 11 or not tokens[0].isdigit() or not tokens[1].isdigit():
        return None
    prefix, group = table.prefix, table.group
    if prefix is None or group is None:
        prefix = _guess_prefix(tokens)
        if prefix is None:
            return None
        group = (*_DEFAULT_GROUP[:3], _guess_error_column(tokens[len(prefix) + 3]))
    width = len(group)
    start = len(prefix)
    if len(tokens) < start + 2 * width:
        return None
    cols = dict(zip(prefix, tokens[:start]))
    try:
        oop = _measure(group, tokens[start:start + width])
        inp = _measure(group, tokens[start + width:start + 2 * width])
        root = int(cols["root"]) if "root" in cols else None
        return Row(int(cols["size"]), int(cols["count"]), cols.get("type", "?"), cols.get("redop"), root, oop, inp)
    except (ValueError, KeyError):
        return None  # a log line that happens to start with two integers, or a torn line


def _time_scale(table: _Table) -> tuple[str, float]:
    """(unit as printed, factor to microseconds): the unit line, else size / time against algbw."""
    if table.unit:
        return table.unit, (1000.0 if table.unit == "ms" else 1.0)
    if table.group and "time" not in table.group:
        return "us", 1.0  # cputime: not the time algbw was computed from
    ratios = [
        r.size / m.time_us / 1e3 / m.algbw
        for r in table.rows for m in (r.out_of_place, r.in_place)
        if m.time_us > 0 and m.algbw >= 0.1
    ]
    # In us, bytes/us/1e3 is GB/s, close to algbw (all_gather's factor aside); in ms it is 1000x.
    if ratios and statistics.median(ratios) > math.sqrt(1000):
        return "ms", 1000.0
    return "us", 1.0


def _scaled(row: Row, factor: float) -> Row:
    if factor == 1.0:
        return row
    return replace(
        row,
        out_of_place=replace(row.out_of_place, time_us=row.out_of_place.time_us * factor),
        in_place=replace(row.in_place, time_us=row.in_place.time_us * factor),
    )


def _first_sequence(rows: list[Row]) -> tuple[list[Row], int]:
    """Rows of the first size sequence, and how many sequences there were.

    Sizes grow within each (type, op, root) series of one table. When they restart, several
    processes printed into one unlabeled stream (nccl-tests without MPI under a launcher: every
    rank runs alone and prints its table) or -N repeated the sweep; each row joins the first
    sequence it extends.
    """
    sequences: list[dict] = []
    members: list[list[Row]] = []
    for row in rows:
        key = (row.type, row.redop, row.root)
        for last, rows_of in zip(sequences, members):
            if key not in last or last[key] < row.size or (row.size == 0 and last[key] == 0):
                break
        else:
            sequences.append({})
            members.append([])
            last, rows_of = sequences[-1], members[-1]
        last[key] = row.size
        rows_of.append(row)
    return members[0], len(members)


class _StreamReader:
    """One rank's stream, line by line, into result tables (one normally; several when tests
    run back to back)."""

    def __init__(self, start: int) -> None:
        self.tables: list[_Table] = []
        self.cur = _Table(start=start)

    def new_table(self, index: int) -> _Table:
        if self.cur.rows:
            self.tables.append(self.cur)
            self.cur = _Table(start=index)
        elif not (self.cur.params or self.cur.collective or self.cur.tests_version or self.cur.prefix
                  or self.cur.devices):
            self.cur.start = index
        return self.cur

    def read(self, index: int, raw: str) -> None:
        content = raw.strip()
        if not content or "NCCL INFO" in content or "NCCL WARN" in content:
            return  # log lines: read by detect_transport, never part of a table
        if self._header(index, content) or self._footer(content) or content.startswith("#"):
            return
        row = _row(self.cur, content)
        if row is not None:
            if not self.cur.rows and not (self.cur.params or self.cur.prefix or self.cur.devices):
                self.cur.start = index
            self.cur.rows.append(row)

    def _header(self, index: int, content: str) -> bool:
        """Parameters, collective, version, ranks, column and unit lines; True when it was one."""
        if "nThread" in content and "nGpus" in content:
            self.new_table(index).params = {k.rstrip(":").replace(" ", "_"): v for k, v in _PARAM.findall(content)}
            return True
        m = _COLLECTIVE.search(content)
        if m:
            if "starting" in content:
                self.new_table(index)
            self.cur.collective = self.cur.collective or m.group(1)
            if "concluded" in content and self.cur.rows:
                self.tables.append(self.cur)
                self.cur = _Table(start=index + 1)
            return True
        m = _TESTS_VERSION.search(content)
        if m:
            self.new_table(index).tests_version = m.group(1)
            return True
        m = _RANK_LINE.match(content)
        if m:
            if self.cur.rows:
                self.new_table(index)
            self.cur.devices.append(Device(int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)))
            return True
        cols = _columns(content)
        if cols:
            self.new_table(index)
            self.cur.prefix, self.cur.group = cols
            return True
        unit = _unit(content)
        if unit or content.lstrip("#").split()[:1] == ["(B)"]:
            self.cur.unit = unit or self.cur.unit
            return True
        return False

    def _footer(self, content: str) -> bool:
        m = _OOB.match(content)
        if m:
            count, ok = int(m.group(1)), None if m.group(2) is None else m.group(2).upper() == "OK"
            if self.cur.oob is None or count > self.cur.oob[0]:  # several unlabeled ranks: keep the worst
                self.cur.oob = (count, ok)
            return True
        m = _AVG.match(content)
        if m:
            self.cur.avg = self.cur.avg or (float(m.group(1)), m.group(2) and m.group(2).upper())
            return True
        return False

    def finish(self) -> list[_Table]:
        if self.cur.rows:
            self.tables.append(self.cur)
        for table in self.tables:
            _finish_table(table)
        return self.tables


def _finish_table(table: _Table) -> None:
    """Times in microseconds, and only the first size sequence (the others are more ranks)."""
    table.unit, factor = _time_scale(table)
    first, sequences = _first_sequence(table.rows)
    table.dropped = len(table.rows) - len(first) if sequences > 1 else 0
    table.rows = [_scaled(r, factor) for r in first]
    if sequences > 1:
        ranks: dict[int, Device] = {}
        for d in table.devices:
            ranks.setdefault(d.rank, d)  # one process's header per rank number
        table.devices = list(ranks.values())


def _parse_stream(lines: list[tuple[int, str]]) -> list[_Table]:
    """Result tables of one rank's stream (normally one; several when tests run back to back)."""
    reader = _StreamReader(lines[0][0] if lines else 0)
    for index, raw in lines:
        reader.read(index, raw)
    return reader.finish()
