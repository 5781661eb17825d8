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
from dataclasses import replace

from builder.nccl.prefix import LAUNCHER_MPIRUN, LAUNCHER_SRUN, rank_key, split_prefix, split_streams  # noqa: F401
from builder.nccl.results import NcclRun, NoResults  # noqa: F401 (NcclRun: the model this parser builds)
from builder.nccl.tables import _guess_error_column, _parse_stream  # noqa: F401 (re-exported for tests)
from builder.nccl.transport import Transport, detect_transport, read_transport  # noqa: F401 (re-exported)

_NCCL_VERSION = re.compile(r"NCCL version\s+(\S+)")
_PERF_BINARY = re.compile(r"\b(\w+_perf)(?:_mpi)?\b")


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
        named = [name for index, name in mentions if previous_start < index <= table.start]
        previous_start = table.start
        run = _run(table, table.collective or (named[-1] if named else None) or lone, nccl_version, launcher, transport)
        runs.append(replace(run, warnings=tuple(warnings + _notes(table, run))))
    return runs


def _run(table, name: str | None, nccl_version: str | None, launcher: str | None, transport) -> NcclRun:
    avg = table.avg
    return NcclRun(
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


def _notes(table, run: NcclRun) -> list[str]:
    """What a reader of this table should know: a bad average, repeated sizes, a cut output."""
    notes = []
    if table.avg is not None and not math.isfinite(table.avg[0]):
        notes.append(f"nccl-tests printed 'Avg bus bandwidth : {table.avg[0]}' (no valid average)")
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
    return notes


def parse_text(text: str, logs: str = "", collective: str | None = None) -> NcclRun:
    """The (first) result table of an nccl-tests output; see ``parse_runs`` for several."""
    runs = parse_runs(text, logs, collective)
    if len(runs) > 1:
        extra = f"{len(runs) - 1} more result table(s) follow in this output (parse_runs reads them all)"
        return replace(runs[0], warnings=(*runs[0].warnings, extra))
    return runs[0]
