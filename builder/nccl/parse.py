"""Parse nccl-tests output (any version, any launcher) into an ``NcclRun``. Pure: text in, data out.

What varies between the outputs people actually have (see tests/fixtures/nccl/):
- columns: before ~2.13 there is no ``root`` column for all_reduce (but broadcast has ``root``
  instead of ``redop``, all_gather neither) and the error column is ``error``, a float max delta
  printed with ``%5.0le`` (``2e-07``); newer builds print ``redop root`` always and ``#wrong``,
  a count printed with ``%5g`` (so ``1.6e+07`` for big counts); ``N/A`` when run with ``-c 0``;
  the newest may add ``#bitdiff``, per-iteration columns or a timestamp. So the column header,
  when present, decides; otherwise the field count does.
- times: ``%7.2f``/``%7.1f``/``%7.0f`` by magnitude (``69.12``, ``1468.2``, ``13552``).
- launchers: ``srun -l`` prefixes ``0: ``, ``mpirun --tag-output`` prefixes ``[1,0]<stdout>:``;
  NCCL INFO/WARN lines of every rank are interleaved with rank 0's table; a build without MPI
  run under srun prints one table per rank.
- footer: ``# Out of bounds values : 0 OK``, ``# Avg bus bandwidth    : 52.9 [OK|FAILED]``,
  ``# Collective test concluded: NAME`` (newest). Excerpts may have no footer at all.

The printed average is nccl-tests' mean of every busbw value in the table, out-of-place and
in-place counted separately; we recompute it from the rows to catch truncated outputs.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

from builder.errors import BuilderError

# --- launcher prefixes ---------------------------------------------------------------------------

# mpirun --tag-output (Open MPI 4: "[jobid,rank]<stdout>:", Open MPI 5 may add a space).
_MPI_TAG = re.compile(r"^\s*\[\d+,(\d+)\]<(?:stdout|stderr)>:\s?")
# srun -l / --label: "0: ", right-aligned when there are many tasks (" 7: ").
_SRUN_TAG = re.compile(r"^\s*(\d+): ")

LAUNCHER_MPIRUN = "mpirun --tag-output"
LAUNCHER_SRUN = "srun -l"


def split_prefix(line: str) -> tuple[str | None, str | None, str]:
    """(launcher, rank label, content) for one output line; no launcher -> (None, None, line)."""
    m = _MPI_TAG.match(line)
    if m:
        return LAUNCHER_MPIRUN, m.group(1), line[m.end():]
    m = _SRUN_TAG.match(line)
    if m:
        return LAUNCHER_SRUN, m.group(1), line[m.end():]
    return None, None, line


# --- data model ----------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Transport:
    """What the NCCL_DEBUG=INFO lines say about the network NCCL picked."""

    verdict: str  # "efa" | "ofi-other" | "socket" | "ib" | "unknown"
    plugin_loaded: bool | None = None  # the aws-ofi-nccl (or any external net) plugin
    plugin: str | None = None  # e.g. "aws-ofi-nccl 1.7.3-aws"
    provider: str | None = None  # libfabric provider: "efa", "tcp;ofi_rxm" ...
    network: str | None = None  # "AWS Libfabric", "Libfabric", "Socket", "IB"
    gdr: bool | None = None  # GPUDirect RDMA seen on NET channels
    nics: int | None = None
    evidence: tuple[str, ...] = ()

    @property
    def socket_fallback(self) -> bool:
        return self.verdict in ("socket", "ofi-other")

    def summary(self) -> str:
        if self.verdict == "unknown":
            return "unknown (no NCCL_DEBUG=INFO network lines)"
        parts = [self.verdict]
        if self.network:
            parts.append(f"network {self.network}")
        if self.plugin:
            parts.append(self.plugin)
        elif self.plugin_loaded is False:
            parts.append("net plugin NOT loaded")
        if self.provider:
            parts.append(f"provider {self.provider}" + (f" ({self.nics} NICs)" if self.nics else ""))
        if self.gdr is not None:
            parts.append("GPUDirect RDMA" if self.gdr else "no GPUDirect RDMA")
        return ", ".join(parts)


@dataclass(frozen=True)
class NcclRun:
    rows: tuple[Row, ...]
    collective: str | None = None  # "all_reduce_perf" ...
    tests_version: str | None = None  # nccl-tests version line (newest builds only)
    nccl_version: str | None = None  # "2.18.5+cuda12.2"
    params: dict = field(default_factory=dict)  # nThread, nGpus, minBytes, iters ... as printed
    devices: tuple[Device, ...] = ()
    error_column: str | None = None  # "#wrong" | "error" | None (unknown: no header)
    out_of_bounds: int | None = None
    out_of_bounds_ok: bool | None = None
    avg_busbw_printed: float | None = None
    avg_status: str | None = None  # "OK" | "FAILED" when NCCL_TESTS_MIN_BW / -m was set
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
    def average_matches(self) -> bool | None:
        """Printed average == recomputed one, within print rounding (None: nothing printed)."""
        if self.avg_busbw_printed is None:
            return None
        printed, mine = self.avg_busbw_printed, self.avg_busbw_recomputed
        # busbw is printed with 2 decimals: each value is off by <= 0.005, so is their mean.
        return abs(printed - mine) <= 0.006 + 1e-4 * abs(printed)

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
            "transport": {**asdict(self.transport), "socket_fallback": self.transport.socket_fallback},
            "warnings": list(self.warnings),
        }


class NoResults(BuilderError):
    """The text holds no nccl-tests result row."""

    def __init__(self, message: str):
        from builder.nccl import EXIT_NO_RESULTS

        super().__init__(message, exit_code=EXIT_NO_RESULTS)


# --- table parsing -------------------------------------------------------------------------------

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RANK_LINE = re.compile(
    r"^#?\s*Rank\s+(\d+)\s+(?:Group\s+\d+\s+)?Pid\s+\d+\s+on\s+(\S+)\s+device\s+(\d+)\s+\[[^\]]*\]\s+(.*?)\s*$"
)
_OOB = re.compile(r"Out of bounds values\s*:\s*(\d+)\s*(OK|FAILED)?")
_AVG = re.compile(rf"Avg bus bandwidth\s*:\s*({_NUM}|nan|inf)\s*(OK|FAILED)?", re.IGNORECASE)
_COLLECTIVE = re.compile(r"Collective test (?:starting|concluded):\s*(\S+)")
_TESTS_VERSION = re.compile(r"nccl-tests version\s+(\S+)")
_NCCL_VERSION = re.compile(r"NCCL version\s+(\S+)")
_PARAM = re.compile(r"(nThread|nGpus|minBytes|maxBytes|step:|warmup iters:|iters:|agg iters:|validation:|graph:)\s*(\S+)")
_PERF_BINARY = re.compile(r"\b(\w+_perf)(?:_mpi)?\b")

_DEFAULT_GROUP = ("time", "algbw", "busbw", "#wrong")
_KNOWN_OPS = {"sum", "prod", "max", "min", "avg", "none", "mulsum", "premulsum"}


@dataclass
class _Table:
    prefix: tuple[str, ...] | None = None  # column names before the first time column
    group: tuple[str, ...] | None = None  # column names of one out-of-place/in-place group
    rows: list = field(default_factory=list)
    params: dict = field(default_factory=dict)
    devices: list = field(default_factory=list)
    collective: str | None = None
    tests_version: str | None = None
    oob: tuple[int, bool | None] | None = None
    avg: tuple[float, str | None] | None = None


def _columns(content: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    tokens = content.lstrip("#").split()
    if "size" not in tokens or "busbw" not in tokens:
        return None
    times = [i for i, t in enumerate(tokens) if t in ("time", "cputime")]
    if len(times) < 2:
        return None
    first, second = times[0], times[1]
    group = tuple(tokens[first:second])
    return tuple(tokens[:first]), group


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


def _parse_stream(lines: list[str]) -> list[_Table]:
    """Result tables of one rank's stream (normally one; several when tests run back to back)."""
    tables: list[_Table] = []
    cur = _Table()

    def new_table() -> _Table:
        nonlocal cur
        if cur.rows:
            tables.append(cur)
            cur = _Table()
        return cur

    for raw in lines:
        content = raw.strip()
        if not content or "NCCL INFO" in content or "NCCL WARN" in content:
            continue  # log lines: read by detect_transport, never part of a table
        if "nThread" in content and "nGpus" in content:
            new_table()
            cur.params = {k.rstrip(":").replace(" ", "_"): v for k, v in _PARAM.findall(content)}
            continue
        m = _COLLECTIVE.search(content)
        if m:
            if "starting" in content:
                new_table()
            cur.collective = cur.collective or m.group(1)
            if "concluded" in content and cur.rows:
                tables.append(cur)
                cur = _Table()
            continue
        m = _TESTS_VERSION.search(content)
        if m:
            new_table()
            cur.tests_version = m.group(1)
            continue
        m = _RANK_LINE.match(content)
        if m:
            cur.devices.append(Device(int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)))
            continue
        cols = _columns(content)
        if cols:
            new_table()
            cur.prefix, cur.group = cols
            continue
        m = _OOB.search(content)
        if m and content.startswith("#"):
            cur.oob = (int(m.group(1)), None if m.group(2) is None else m.group(2) == "OK")
            continue
        m = _AVG.search(content)
        if m and content.startswith("#"):
            cur.avg = (float(m.group(1)), m.group(2))
            continue
        if content.startswith("#"):
            continue
        row = _row(cur, content)
        if row is not None:
            cur.rows.append(row)
    if cur.rows:
        tables.append(cur)
    return tables


# --- transport (NCCL_DEBUG=INFO lines) -------------------------------------------------------------

_PLUGIN_VERSION = re.compile(r"NET/OFI (?:Initializing|Using) (aws-ofi-nccl \S+)")
_PLUGIN_LOADED = re.compile(r"NET/Plugin\s*:?\s*(?:Successfully loaded|Loaded) (?:external |net )?plugin", re.I)
_PLUGIN_MISSING = re.compile(
    r"NET/Plugin\s*:?\s*(?:No plugin found|Could not find|Failed to (?:open|load)|Plugin load returned)", re.I
)
_PROVIDER = re.compile(r"NET/OFI Selected [Pp]rovider is ([\w;-]+)")
_NICS = re.compile(r"found (\d+) nics")
_NETWORK = re.compile(r"NCCL INFO Using network (.+?)\s*$")
_CHANNEL_NET = re.compile(r"via NET/([^/\s]+(?: [^/\s]+)*)/\d+(/GDRDMA)?")
_OFI_NO_PROVIDER = re.compile(r"NET/OFI.*(?:No eligible providers|Could not find any optimal provider|Failed to initialize)", re.I)


def detect_transport(lines: list[str]) -> Transport:
    """Read the network choice from NCCL INFO/WARN lines (any rank, any order)."""
    plugin = provider = network = None
    nics = None
    loaded: bool | None = None
    gdr_seen = plain_seen = False
    channel_nets: set[str] = set()
    evidence: dict[str, str] = {}

    def keep(kind: str, line: str) -> None:
        evidence.setdefault(kind, line.strip()[:200])

    for raw in lines:
        line = raw.strip()
        if "NCCL" not in line and "NET/" not in line:
            continue
        if "CollNet" in line:  # "Failed to find ncclCollNetPlugin_v4 symbol": the net plugin did load
            continue
        if "via NET/" in line:
            for m in _CHANNEL_NET.finditer(line):
                channel_nets.add(m.group(1))
                if m.group(2):
                    gdr_seen = True
                else:
                    plain_seen = True
                keep("channel", line)
            continue
        if "NET/" not in line and "Using network" not in line:
            continue
        m = _PLUGIN_VERSION.search(line)
        if m:
            plugin, loaded = m.group(1), True
            keep("plugin", line)
        if _PLUGIN_LOADED.search(line):
            loaded = True
            keep("plugin", line)
        if _PLUGIN_MISSING.search(line) and loaded is None:
            loaded = False
            keep("plugin", line)
        if _OFI_NO_PROVIDER.search(line):
            keep("provider", line)
        m = _PROVIDER.search(line)
        if m:
            provider = provider or m.group(1)
            loaded = True
            keep("provider", line)
            n = _NICS.search(line)
            if n:
                nics = int(n.group(1))
        m = _NETWORK.search(line)
        if m:
            network = network or m.group(1)
            keep("network", line)

    socket_used = (network == "Socket") or ("Socket" in channel_nets)
    libfabric = (network and "Libfabric" in network) or any("Libfabric" in n for n in channel_nets)
    if socket_used:
        verdict = "socket"
    elif libfabric or provider:
        verdict = "efa" if (provider is None or provider == "efa") and (libfabric or provider) else "ofi-other"
    elif network == "IB" or "IB" in channel_nets:
        verdict = "ib"
    elif loaded is False:
        # Plugin missing and no network line: NCCL falls back to its internal transports.
        verdict = "socket"
    else:
        verdict = "unknown"
    gdr = True if gdr_seen else (False if plain_seen else None)
    order = ("network", "plugin", "provider", "channel")
    return Transport(
        verdict=verdict,
        plugin_loaded=loaded,
        plugin=plugin,
        provider=provider,
        network=network or (sorted(channel_nets)[0] if channel_nets else None),
        gdr=gdr,
        nics=nics,
        evidence=tuple(evidence[k] for k in order if k in evidence),
    )


def read_transport(text: str) -> Transport:
    """The transport verdict of any NCCL log text (launcher prefixes allowed), results or not."""
    return detect_transport([split_prefix(line)[2] for line in text.splitlines()])


# --- entry points ----------------------------------------------------------------------------------


def _split_streams(text: str) -> tuple[str | None, dict[str | None, list[str]], list[str]]:
    launchers: dict[str, int] = {}
    streams: dict[str | None, list[str]] = {}
    contents: list[str] = []
    for line in text.splitlines():
        launcher, rank, content = split_prefix(line)
        if launcher:
            launchers[launcher] = launchers.get(launcher, 0) + 1
        streams.setdefault(rank, []).append(content)
        contents.append(content)
    launcher = max(launchers, key=launchers.get) if launchers else None
    return launcher, streams, contents


def _rank_key(label: str | None) -> tuple[int, int]:
    return (0, -1) if label is None else (1, int(label))


def parse_runs(text: str, logs: str = "", collective: str | None = None) -> list[NcclRun]:
    """Every result table in ``text`` (several when tests ran back to back), in order.

    ``logs`` is extra NCCL_DEBUG output kept apart from the results (NCCL_DEBUG_FILE); the
    transport verdict reads both. Raises NoResults when there is no result row at all.
    """
    launcher, streams, contents = _split_streams(text)
    with_tables = {label: tables for label, lines in streams.items() if (tables := _parse_stream(lines))}
    if not with_tables:
        raise NoResults(
            "no nccl-tests result rows found (the test crashed, was killed, or this is not nccl-tests output)"
        )
    warnings: list[str] = []
    label = min(with_tables, key=_rank_key)
    if len(with_tables) > 1:
        warnings.append(
            f"{len(with_tables)} ranks each printed a result table: nccl-tests was probably built without MPI "
            f"(MPI=1) and every rank ran alone; reading rank {label}'s"
        )
    transport = detect_transport(contents + logs.splitlines())
    nccl_version = next(
        (m.group(1) for c in contents + logs.splitlines() if "NCCL version" in c and (m := _NCCL_VERSION.search(c))),
        None,
    )
    binary = next(
        (m.group(1) for c in contents if "_perf" in c and "#" not in c[:1] and (m := _PERF_BINARY.search(c))), None
    )

    runs = []
    for table in with_tables[label]:
        notes = list(warnings)
        name = table.collective or collective or binary
        run = NcclRun(
            rows=tuple(table.rows),
            collective=name,
            tests_version=table.tests_version,
            nccl_version=nccl_version,
            params=table.params,
            devices=tuple(table.devices),
            error_column=(table.group[3] if table.group and len(table.group) > 3 else None),
            out_of_bounds=table.oob[0] if table.oob else None,
            out_of_bounds_ok=table.oob[1] if table.oob else None,
            avg_busbw_printed=table.avg[0] if table.avg else None,
            avg_status=table.avg[1] if table.avg else None,
            launcher=launcher,
            transport=transport,
        )
        if table.avg is None:
            notes.append("no 'Avg bus bandwidth' footer: the output is cut short or an excerpt")
        elif run.average_matches is False:
            notes.append(
                f"printed average {run.avg_busbw_printed:g} != recomputed {run.avg_busbw_recomputed:.4f} GB/s: "
                "rows are missing from this output"
            )
        runs.append(_with_warnings(run, notes))
    return runs


def _with_warnings(run: NcclRun, notes: list[str]) -> NcclRun:
    from dataclasses import replace

    return replace(run, warnings=tuple(notes))


def parse_text(text: str, logs: str = "", collective: str | None = None) -> NcclRun:
    """The (first) result table of an nccl-tests output; see ``parse_runs`` for several."""
    runs = parse_runs(text, logs, collective)
    if len(runs) > 1:
        extra = f"{len(runs) - 1} more result table(s) follow in this output (parse_runs reads them all)"
        return _with_warnings(runs[0], [*runs[0].warnings, extra])
    return runs[0]


def parse_file(path, log_paths=(), collective: str | None = None) -> NcclRun:
    """``parse_text`` of a file (e.g. a Slurm job's output), with NCCL_DEBUG_FILE logs read alongside."""
    from pathlib import Path

    logs = "\n".join(Path(p).read_text(errors="replace") for p in log_paths)
    return parse_text(Path(path).read_text(errors="replace"), logs, collective)
