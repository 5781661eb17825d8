"""The nccl-tests parser on real outputs (tests/fixtures/nccl, quoted from public sources).

A few cases at the end are built from the printf formats of nccl-tests' src/common.cu (the
``%5g`` #wrong column, the OK/FAILED footer, the newest version lines), because no public
output showing them was found; they say so.
"""

from __future__ import annotations

import pytest

from builder.nccl.parse import (
    LAUNCHER_MPIRUN,
    LAUNCHER_SRUN,
    NoResults,
    parse_runs,
    parse_text,
    read_transport,
    split_prefix,
)
from nccl_support import load_fixture

GiB = 1 << 30


def test_old_format_mpirun_tag_output_interleaved_ranks_with_ofi_logs():
    run = parse_text(load_fixture("efa_eks_p4d_2node_mpirun_old.txt"))
    assert len(run.rows) == 28
    first, last = run.rows[0], run.rows[-1]
    assert (first.size, first.count, first.type, first.redop, first.root) == (8, 2, "float", "sum", None)
    assert first.out_of_place.delta == 2e-07 and first.in_place.delta == 1e-07
    assert first.out_of_place.wrong is None
    assert (last.size, last.out_of_place.time_us, last.out_of_place.busbw, last.in_place.busbw) == (GiB, 61556, 32.71, 32.84)
    assert run.error_column == "error"
    assert run.launcher == LAUNCHER_MPIRUN
    assert run.avg_busbw_printed == 7.80081
    assert run.avg_busbw_recomputed == pytest.approx(7.8011, abs=1e-3)
    assert run.average_matches is True
    assert run.out_of_bounds == 0 and run.out_of_bounds_ok is True
    assert (run.peak.busbw, run.peak.size, run.peak.placement) == (32.84, GiB, "in-place")
    assert run.nranks == 16 and run.hosts == ("nccl-tests-efa-worker-0", "nccl-tests-efa-worker-1")
    assert run.nccl_version == "2.8.3+cuda11.2"
    assert run.params["iters"] == "1000" and run.params["nGpus"] == "1"
    t = run.transport
    assert t.verdict == "efa" and not t.socket_fallback
    assert t.provider == "efa" and t.network == "AWS Libfabric" and t.gdr is True and t.plugin_loaded is True
    assert any("Using network AWS Libfabric" in e for e in t.evidence)
    assert run.warnings == ()


@pytest.mark.parametrize(
    ("name", "rows", "peak", "peak_size"),
    [("awsome_p4de_2node_srun.txt", 29, 78.33, 2 * GiB), ("awsome_p5_2node_srun.txt", 32, 487.26, 16 * GiB)],
)
def test_new_format_srun_label_without_footer(name, rows, peak, peak_size):
    run = parse_text(load_fixture(name))
    assert len(run.rows) == rows
    assert run.launcher == LAUNCHER_SRUN
    assert run.error_column == "#wrong"
    assert all(r.root == -1 and r.redop == "sum" and r.wrong == 0 for r in run.rows)
    assert (run.peak.busbw, run.peak.size) == (peak, peak_size)
    assert run.avg_busbw_printed is None and run.average_matches is None
    assert any("no 'Avg bus bandwidth' footer" in w for w in run.warnings)
    assert run.transport.verdict == "unknown"


def test_integer_times_parse_as_numbers():
    run = parse_text(load_fixture("awsome_p4de_2node_srun.txt"))
    row = next(r for r in run.rows if r.size == 512 * 1024 * 1024)
    assert row.out_of_place.time_us == 13552.0 and row.in_place.time_us == 13548.0


def test_complete_new_output_with_footer_and_hosts():
    run = parse_text(load_fixture("a3mega_h100_2node_mpirun.txt"))
    assert len(run.rows) == 31
    assert run.collective == "all_reduce_perf"  # from the command line echoed before the output
    assert run.avg_busbw_printed == 70.742
    assert run.avg_busbw_recomputed == pytest.approx(70.742, abs=0.006)
    assert run.average_matches is True
    assert run.hosts == ("ztan-mig-235z", "ztan-mig-gq73") and run.nranks == 16
    assert run.devices[0].name == "NVIDIA H100 80GB HBM3"
    assert run.params["maxBytes"] == "8589934592"
    assert run.launcher is None and run.warnings == ()


def test_old_broadcast_root_column_and_na_errors():
    run = parse_text(load_fixture("nccl_tests_82_broadcast_old_na.txt"))
    (row,) = run.rows
    assert (row.size, row.type, row.redop, row.root) == (8, "float", None, 0)
    assert row.out_of_place.delta is None and row.in_place.wrong is None  # N/A with -c 0
    assert row.out_of_place.time_us == 45.82
    assert run.collective == "broadcast_perf" and run.nccl_version == "2.9.6+cuda11.2"
    assert run.params["validation"] == "0"


def test_indented_tag_output_alltoall_with_na_in_place():
    run = parse_text(load_fixture("bottlerocket_313_alltoall_na.txt"))
    assert len(run.rows) == 9
    assert all(r.redop == "none" and r.out_of_place.wrong == 0 and r.in_place.wrong is None for r in run.rows)
    assert run.launcher == LAUNCHER_MPIRUN
    assert run.error_column is None  # no header: columns guessed from the field count


def test_old_float_error_column_without_header_block():
    run = parse_text(load_fixture("aws_ofi_nccl_33_p3dn_old.txt"))
    assert [r.size for r in run.rows] == [1048576, 2097152, 4194304]
    assert run.rows[0].out_of_place.delta == 5e-07 and run.rows[0].in_place.time_us == 643.4


def test_socket_fallback_from_interleaved_ranks():
    t = read_transport(load_fixture("aws_k8s_tester_464_socket.txt"))
    assert t.verdict == "socket" and t.socket_fallback and t.network == "Socket"
    assert t.evidence[0].endswith("NCCL INFO Using network Socket")


def test_ofi_plugin_with_tcp_provider_is_not_efa():
    t = read_transport(load_fixture("nccl_229_ofi_tcp_provider.txt"))
    assert t.verdict == "ofi-other" and t.provider == "tcp;ofi_rxm" and t.socket_fallback


def test_missing_plugin_means_sockets():
    t = read_transport(load_fixture("nccl_352_no_plugin.txt"))
    assert t.verdict == "socket" and t.plugin_loaded is False
    assert "No plugin found" in t.evidence[0]


def test_collnet_symbol_message_does_not_mean_plugin_missing():
    t = read_transport("host:1:1 [0] NCCL INFO NET/Plugin: Failed to find ncclCollNetPlugin_v4 symbol.\n")
    assert t.verdict == "unknown" and t.plugin_loaded is None


def test_logs_apart_from_results_give_the_transport():
    results = load_fixture("a3mega_h100_2node_mpirun.txt")
    logs = load_fixture("efa_eks_p4d_2node_mpirun_old.txt")
    assert parse_text(results, logs=logs).transport.verdict == "efa"


def test_no_rows_raises_with_exit_code_4():
    with pytest.raises(NoResults) as exc:
        parse_text(load_fixture("nccl_352_no_plugin.txt"))
    assert exc.value.exit_code == 4


def test_split_prefix_forms():
    assert split_prefix("0: #  size") == (LAUNCHER_SRUN, "0", "#  size")
    assert split_prefix(" 12: x") == (LAUNCHER_SRUN, "12", "x")
    assert split_prefix("[1,10]<stdout>:abc") == (LAUNCHER_MPIRUN, "10", "abc")
    assert split_prefix("        [1,0]<stderr>: abc") == (LAUNCHER_MPIRUN, "0", "abc")
    assert split_prefix("           8             2") == (None, None, "           8             2")


# --- built from nccl-tests' printf formats (src/common.cu), no public output found -------------

NEWEST = """\
# nccl-tests version 2.17.1 nccl-headers=22603 nccl-library=22603
# Collective test starting: all_reduce_perf
# nThread 1 nGpus 8 minBytes 1073741824 maxBytes 2147483648 step: 2(factor) warmup iters: 5 iters: 20 agg iters: 1 validation: 1 graph: 0
#
# Using devices
#  Rank  0 Group  0 Pid   4242 on    node-a device  0 [0000:53:00] NVIDIA H100 80GB HBM3
#
#                                                              out-of-place                       in-place          
#       size         count      type   redop    root     time   algbw   busbw  #wrong     time   algbw   busbw  #wrong 
#        (B)    (elements)                               (us)  (GB/s)  (GB/s)             (us)  (GB/s)  (GB/s)         
  1073741824     268435456     float     sum      -1  5012.31  214.22  374.89       0  5010.02  214.32  375.06  1.6e+07
  2147483648     536870912     float     sum      -1  9890.55  217.13  379.97       0  9885.13  217.24  380.17       3
# Out of bounds values : 2 FAILED
# Avg bus bandwidth    : 377.522 FAILED
#
# Collective test concluded: all_reduce_perf
"""


def test_newest_format_version_lines_exponent_wrong_and_failed_footer():
    run = parse_text(NEWEST)
    assert run.tests_version == "2.17.1" and run.collective == "all_reduce_perf"
    assert run.rows[0].in_place.wrong == 16_000_000
    assert run.wrong_total == 16_000_003
    assert run.out_of_bounds == 2 and run.out_of_bounds_ok is False
    assert run.avg_busbw_printed == 377.522 and run.avg_status == "FAILED"
    assert run.average_matches is True


def test_back_to_back_tests_give_several_runs():
    text = NEWEST + NEWEST.replace("all_reduce_perf", "all_gather_perf")
    runs = parse_runs(text)
    assert [r.collective for r in runs] == ["all_reduce_perf", "all_gather_perf"]
    first = parse_text(text)
    assert any("more result table" in w for w in first.warnings)


def test_every_rank_printing_a_table_means_no_mpi_build():
    table = load_fixture("aws_ofi_nccl_33_p3dn_old.txt").splitlines()
    text = "\n".join(f"{rank}: {line}" for line in table for rank in (0, 1))
    run = parse_text(text)
    assert len(run.rows) == 3
    assert any("built without MPI" in w for w in run.warnings)


def test_truncated_output_shows_in_the_average():
    text = load_fixture("a3mega_h100_2node_mpirun.txt").replace(
        "  8589934592    2147483648     float     sum      -1    47535  180.71  338.82      0    47743  179.92  337.35      0\n", ""
    )
    run = parse_text(text)
    assert run.average_matches is False
    assert any("rows are missing" in w for w in run.warnings)


def test_old_all_gather_without_op_or_root_columns_and_exponent_errors():
    run = parse_text(load_fixture("nccl_644_allgather_old_noop.txt"))
    assert len(run.rows) == 13
    row = run.rows[0]
    assert (row.size, row.count, row.type, row.redop, row.root) == (65536, 2048, "float", None, None)
    assert row.out_of_place.delta == 0.0 and row.in_place.busbw == 1.14
    assert run.rows[-1].out_of_place.time_us == 32071


def test_columns_wider_than_their_width_still_split():
    run = parse_text(load_fixture("nixpkgs_251856_allgather_2_13.txt"))
    (row,) = run.rows
    assert row.out_of_place.algbw == 1816.16 and row.in_place.algbw == 619657.10
    assert (row.redop, row.root, row.in_place.time_us) == ("none", -1, 0.05)
    assert run.collective == "all_gather_perf" and run.params["step"] == "1048576(bytes)"


@pytest.mark.parametrize(("token", "column"), [("5e-07", "error"), ("0e+00", "error"), ("0", "#wrong"),
                                               ("12", "#wrong"), ("1.6e+07", "#wrong"), ("N/A", "#wrong")])
def test_error_column_kind_without_a_header(token, column):
    from builder.nccl.parse import _guess_error_column

    assert _guess_error_column(token) == column
