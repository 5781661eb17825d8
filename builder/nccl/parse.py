"""Parse nccl-tests output (any version, any launcher) into ``NcclRun``s. Pure: text in, data out.

What varies between the outputs people actually have (see tests/fixtures/nccl/):
- columns: the 2.0 era heads them ``bytes N type op ... res`` and prints times in ms; before ~2.13
  there is no ``root`` column for all_reduce (broadcast has ``root`` instead of ``redop``,
  all_gather neither) and the error column is ``error``, a float max delta printed with
  ``%5.0le`` (``2e-07``); newer builds print ``redop root`` always and ``#wrong``, a count printed
  with ``%5g`` (so ``1.6e+07`` for big counts); ``N/A`` when run with ``-c 0``. So the column
  header, when present, decides; otherwise the field count does; the time unit comes from the
  unit line, else from size / time / algbw.
- times: ``%7.2f``/``%7.1f``/``%7.0f`` by magnitude (``69.12``, ``1468.2``, ``13552``).
- launchers: ``srun -l`` prefixes ``0: ``, ``mpirun --tag-output`` prefixes ``[1,0]<stdout>:``
  (both, nested, when srun -l runs mpirun); NCCL INFO/WARN lines of every rank are interleaved
  with rank 0's table; a build without MPI run under a launcher prints one table per rank,
  labelled (one stream per label) or not (the size sequence restarts inside one table).
- header lines and footers start with ``#`` (the 2.0 era printed the footer without it, and
  outputs pasted into issues often lose it): ``Out of bounds values : 0 OK``,
  ``Avg bus bandwidth : 52.9 [OK|FAILED]``, ``# Collective test concluded: NAME`` (newest).
  Excerpts may have no footer at all; a killed job has no footer and stops before maxBytes.

The printed average is nccl-tests' mean of every busbw value in the table, out-of-place and
in-place counted separately; we recompute it from the rows to catch truncated outputs.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field, replace

from builder.nccl.prefix import LAUNCHER_MPIRUN, LAUNCHER_SRUN, rank_key, split_prefix, split_streams  # noqa: F401
from builder.nccl.results import (  # noqa: F401 (re-exported: the model this parser builds)
    Device,
    Measure,
    NcclRun,
    NoResults,
    Peak,
    Row,
    delta_tolerance,
)
from builder.nccl.transport import Transport, detect_transport, read_transport  # noqa: F401 (re-exported)

# --- table parsing -------------------------------------------------------------------------------

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
_NCCL_VERSION = re.compile(r"NCCL version\s+(\S+)")
_PARAM = re.compile(r"(nThread|nGpus|minBytes|maxBytes|step:|warmup iters:|iters:|agg iters:|validation:|graph:)\s*(\S+)")
_PERF_BINARY = re.compile(r"\b(\w+_perf)(?:_mpi)?\b")

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


def _parse_stream(lines: list[tuple[int, str]]) -> list[_Table]:
    """Result tables of one rank's stream (normally one; several when tests run back to back)."""
    tables: list[_Table] = []
    cur = _Table(start=lines[0][0] if lines else 0)

    def new_table(index: int) -> _Table:
        nonlocal cur
        if cur.rows:
            tables.append(cur)
            cur = _Table(start=index)
        elif not (cur.params or cur.collective or cur.tests_version or cur.prefix or cur.devices):
            cur.start = index
        return cur

    for index, raw in lines:
        content = raw.strip()
        if not content or "NCCL INFO" in content or "NCCL WARN" in content:
            continue  # log lines: read by detect_transport, never part of a table
        if "nThread" in content and "nGpus" in content:
            new_table(index)
            cur.params = {k.rstrip(":").replace(" ", "_"): v for k, v in _PARAM.findall(content)}
            continue
        m = _COLLECTIVE.search(content)
        if m:
            if "starting" in content:
                new_table(index)
            cur.collective = cur.collective or m.group(1)
            if "concluded" in content and cur.rows:
                tables.append(cur)
                cur = _Table(start=index + 1)
            continue
        m = _TESTS_VERSION.search(content)
        if m:
            new_table(index)
            cur.tests_version = m.group(1)
            continue
        m = _RANK_LINE.match(content)
        if m:
            if cur.rows:
                new_table(index)
            cur.devices.append(Device(int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)))
            continue
        cols = _columns(content)
        if cols:
            new_table(index)
            cur.prefix, cur.group = cols
            continue
        unit = _unit(content)
        if unit or content.lstrip("#").split()[:1] == ["(B)"]:
            cur.unit = unit or cur.unit
            continue
        m = _OOB.match(content)
        if m:
            count, ok = int(m.group(1)), None if m.group(2) is None else m.group(2).upper() == "OK"
            if cur.oob is None or count > cur.oob[0]:  # several unlabeled ranks: keep the worst
                cur.oob = (count, ok)
            continue
        m = _AVG.match(content)
        if m:
            cur.avg = cur.avg or (float(m.group(1)), m.group(2) and m.group(2).upper())
            continue
        if content.startswith("#"):
            continue
        row = _row(cur, content)
        if row is not None:
            if not cur.rows and not (cur.params or cur.prefix or cur.devices):
                cur.start = index
            cur.rows.append(row)
    if cur.rows:
        tables.append(cur)
    for table in tables:
        table.unit, factor = _time_scale(table)
        first, sequences = _first_sequence(table.rows)
        table.dropped = len(table.rows) - len(first) if sequences > 1 else 0
        table.rows = [_scaled(r, factor) for r in first]
        if sequences > 1:
            ranks: dict[int, Device] = {}
            for d in table.devices:
                ranks.setdefault(d.rank, d)  # one process's header per rank number
            table.devices = list(ranks.values())
    return tables


# --- entry points ----------------------------------------------------------------------------------


def _binary_mentions(contents: list[str]) -> list[tuple[int, str]]:
    """(line index, 'x_perf') for command lines and echoes naming an nccl-tests binary."""
    found = []
    for index, content in enumerate(contents):
        if "_perf" not in content or content.lstrip().startswith("#") or "NCCL " in content:
            continue
        m = _PERF_BINARY.search(content)
        if m:
            found.append((index, m.group(1)))
    return found


def perf_name(name: str | None) -> str | None:
    """'all_reduce' -> 'all_reduce_perf' (the form nccl-tests prints)."""
    if name is None:
        return None
    name = name.strip()
    return name if name.endswith("_perf") else f"{name}_perf"


def parse_runs(text: str, logs: str = "", collective: str | None = None) -> list[NcclRun]:
    """Every result table in ``text`` (several when tests ran back to back), in order.

    Each table is named by its own ``# Collective test starting`` line, else by the nearest
    ``x_perf`` mention (a command line, an echo) between the previous table and it.
    ``collective`` names a lone unnamed table and is ignored otherwise. ``logs`` is extra
    NCCL_DEBUG output kept apart from the results (NCCL_DEBUG_FILE); the transport verdict reads
    both. Raises NoResults when there is no result row at all (with the transport it found).
    """
    launcher, streams, contents = split_streams(text)
    transport = detect_transport(text.splitlines() + logs.splitlines())
    with_tables = {label: tables for label, lines in streams.items() if (tables := _parse_stream(lines))}
    if not with_tables:
        raise NoResults(
            "no nccl-tests result rows found (the test crashed, was killed, or this is not nccl-tests output)",
            transport,
        )
    warnings: list[str] = []
    label = min(with_tables, key=rank_key)
    if len(with_tables) > 1:
        warnings.append(
            f"{len(with_tables)} ranks each printed a result table: nccl-tests was probably built without MPI "
            f"(MPI=1) and every rank ran alone; reading rank {label}'s"
        )
    nccl_version = next(
        (m.group(1) for c in contents + logs.splitlines() if "NCCL version" in c and (m := _NCCL_VERSION.search(c))),
        None,
    )
    tables = with_tables[label]
    mentions = _binary_mentions(contents)
    lone = perf_name(collective) if len(tables) == 1 else None

    runs = []
    previous_start = -1
    for table in tables:
        notes = list(warnings)
        named = [name for index, name in mentions if previous_start < index <= table.start]
        previous_start = table.start
        name = table.collective or (named[-1] if named else None) or lone
        avg = table.avg
        if avg is not None and not math.isfinite(avg[0]):
            notes.append(f"nccl-tests printed 'Avg bus bandwidth : {avg[0]}' (no valid average)")
        run = NcclRun(
            rows=tuple(table.rows),
            collective=name,
            tests_version=table.tests_version,
            nccl_version=nccl_version,
            params=table.params,
            devices=tuple(table.devices),
            error_column=(table.group[3] if table.group and len(table.group) > 3 else None),
            time_unit=table.unit or "us",
            out_of_bounds=table.oob[0] if table.oob else None,
            out_of_bounds_ok=table.oob[1] if table.oob else None,
            avg_busbw_printed=avg[0] if avg and math.isfinite(avg[0]) else None,
            avg_status=avg[1] if avg else None,
            footer=table.oob is not None or table.avg is not None,
            launcher=launcher,
            transport=transport,
        )
        if table.dropped:
            notes.append(
                f"the size sequence restarts inside this table ({table.dropped} more rows): several processes "
                "printed it unlabeled (nccl-tests built without MPI, every rank ran alone) or -N repeated the "
                f"sweep; reading the first sequence ({len(table.rows)} rows); run with srun -l to tell ranks apart"
            )
        if run.truncated:
            notes.append(
                f"no footer and the rows stop at {max(r.size for r in run.rows)} B, below maxBytes {run.max_bytes}: "
                "the run was cut short (killed, timed out, crashed) or this is an excerpt"
            )
        elif not run.footer:
            notes.append("no 'Avg bus bandwidth' footer: an excerpt, or the output was cut")
        elif run.average_matches is False:
            notes.append(
                f"printed average {run.avg_busbw_printed:g} != recomputed {run.avg_busbw_recomputed:.4f} GB/s: "
                "rows are missing from this output"
            )
        runs.append(replace(run, warnings=tuple(notes)))
    return runs


def parse_text(text: str, logs: str = "", collective: str | None = None) -> NcclRun:
    """The (first) result table of an nccl-tests output; see ``parse_runs`` for several."""
    runs = parse_runs(text, logs, collective)
    if len(runs) > 1:
        extra = f"{len(runs) - 1} more result table(s) follow in this output (parse_runs reads them all)"
        return replace(runs[0], warnings=(*runs[0].warnings, extra))
    return runs[0]
