"""The nccl-tests parser on real outputs (tests/fixtures/nccl, quoted from public sources).

Cases no public output was found for are built from nccl-tests' printf formats (src/common.cu)
and say so: marked SYNTHETIC below (the ``%5g`` #wrong column with 1.6e+07, the OK/FAILED average
footer, the 2.0-era layout, a nan average, 1-decimal busbw above 1000 GB/s).
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


# --- SYNTHETIC: built from nccl-tests' printf formats (src/common.cu), no public output found ----

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


# --- newer real outputs: 2.17+/2.20 headers, other net plugins, PXN, failed plugin init ----------


def test_v2_17_header_and_wrong_counts_from_a_corrupting_cluster():
    run = parse_text(load_fixture("olivia_gh200_2_17_9_wrong.txt"))
    assert (run.tests_version, run.collective) == ("2.17.9", "all_reduce_perf")
    assert len(run.rows) == 28 and {r.type for r in run.rows} == {"int8"}
    assert run.nranks == 16 and run.hosts == ("gpu-1-43", "gpu-1-47", "gpu-1-49", "gpu-1-51")
    bad = [r.size for r in run.rows if r.wrong]
    assert bad == [2 << 20, 4 << 20, 8 << 20, 16 << 20, 32 << 20, 64 << 20]
    assert run.rows[21].out_of_place.wrong == 18134 and run.rows[21].in_place.wrong == 9609
    assert run.truncated is None  # rows reach maxBytes (128 MiB); the page just shows no footer
    assert any("no 'Avg bus bandwidth' footer" in w for w in run.warnings)


def test_v2_20_header_with_commit_hash():
    run = parse_text(load_fixture("dgx_spark_103_v2_20.txt"))
    assert (run.tests_version, run.collective) == ("2.20.0", "all_reduce_perf")
    assert run.params["maxBytes"] == "8589934592" and run.params["validation"] == "1"
    assert [r.size for r in run.rows] == [8192, 16384, 32768, 65536]
    assert run.hosts == ("spark-d708", "spark-dbf4")
    assert run.truncated is True  # the quote stops long before maxBytes: an excerpt reads as cut short
    assert any("cut short" in w for w in run.warnings)


def test_another_net_plugin_with_pxn_channels_is_other_with_gdr():
    run = parse_text(load_fixture("nccl_tests_321_rdma_plugin_pxn.txt"))
    assert len(run.rows) == 13 and run.collective == "alltoall_perf"
    assert all(r.redop == "none" and r.in_place.wrong is None for r in run.rows)
    t = run.transport
    assert t.verdict == "other" and t.network == "NCCL RDMA Plugin v6" and not t.socket_fallback
    assert t.gdr is True  # "via NET/NCCL RDMA Plugin v6/0(2)/GDRDMA/Shared": PXN, GPUDirect RDMA
    assert t.plugin_loaded is True and t.processes == 4
    assert "Using network NCCL RDMA Plugin v6" in t.evidence[0]


def test_plugin_loaded_then_failed_to_initialize_is_socket_and_survives_no_rows():
    text = load_fixture("training_on_eks_p4d_ofi_init_failed.txt")
    t = read_transport(text)
    assert t.verdict == "socket" and t.socket_fallback
    assert t.plugin_loaded is True and t.plugin_failed and t.plugin == "aws-ofi-nccl 1.17.1"
    assert any("Failed to initialize sendrecv protocol" in e for e in t.evidence)
    with pytest.raises(NoResults) as exc:
        parse_runs(text)
    assert exc.value.exit_code == 4 and exc.value.transport.verdict == "socket"
    assert "socket" in str(exc.value) and "failed to initialize" in str(exc.value)


def test_footers_without_hash_and_float_error_over_tolerance():
    run = parse_text(load_fixture("nccl_tests_37_allgather_no_hash.txt"))
    assert run.collective == "all_gather_perf" and run.error_column == "error"
    (row,) = run.rows
    assert row.out_of_place.delta == 1.0 and row.delta_exceeded
    assert (run.out_of_bounds, run.out_of_bounds_ok, run.avg_busbw_printed) == (2, False, 128.942)
    assert run.footer and run.truncated is False and run.average_matches is True
    assert run.time_unit == "us" and row.out_of_place.time_us == 29122
    assert run.warnings == ()


def test_unlabeled_ranks_interleaved_in_one_table_keep_the_first_sequence():
    run = parse_text(load_fixture("nccl_tests_182_unlabeled_ranks.txt"))
    assert [r.size for r in run.rows] == [8, 16, 32, 64, 128, 256, 512, 1024]
    assert run.rows[0].out_of_place.time_us == 40.64  # the first process's row, not the second's
    assert any("size sequence restarts" in w and "srun -l" in w for w in run.warnings)


def test_one_node_on_sockets_among_efa_nodes_names_the_host():
    # Built from two real logs: the EFA ranks of the aws-efa-eks job and the socket rank of the
    # aws-k8s-tester job, as one job whose second node lacks the plugin.
    text = load_fixture("efa_eks_p4d_2node_mpirun_old.txt") + load_fixture("aws_k8s_tester_464_socket.txt")
    t = read_transport(text)
    assert t.verdict == "socket" and t.bad_hosts == ("multi-node-nccl-test-worker-0",)
    assert 1 <= len(t.bad_hosts) < t.processes
    assert "multi-node-nccl-test-worker-0" in t.evidence[0] and "Using network Socket" in t.evidence[0]
    assert t.summary().startswith("socket on multi-node-nccl-test-worker-0 (")


def test_tables_back_to_back_are_named_by_their_own_command_lines():
    # Built from two real outputs run one after the other: all_reduce (a3mega) then all_gather (nixpkgs).
    text = load_fixture("a3mega_h100_2node_mpirun.txt") + load_fixture("nixpkgs_251856_allgather_2_13.txt")
    runs = parse_runs(text)
    assert [r.collective for r in runs] == ["all_reduce_perf", "all_gather_perf"]
    assert [len(r.rows) for r in runs] == [31, 1]
    # --collective only names a lone unnamed table; it never renames these.
    assert [r.collective for r in parse_runs(text, collective="alltoall_perf")] == ["all_reduce_perf", "all_gather_perf"]


def test_pxn_and_newer_gdr_channel_suffixes():
    # SYNTHETIC lines in NCCL's transport/net.cc format: "via NET/%s/%d(%d)/GDRDMA" and /GDRDMA(PCI).
    pxn = "p5-1:1:2 [1] NCCL INFO Channel 02/0 : 9[1] -> 2[2] [send] via NET/Libfabric/2(10)/GDRDMA/Shared\n"
    pci = "p5-1:1:2 [1] NCCL INFO Channel 02/0 : 9[1] -> 2[2] [send] via NET/Libfabric/2/GDRDMA(PCI)\n"
    plain = "p5-1:1:2 [1] NCCL INFO Channel 02/0 : 9[1] -> 2[2] [send] via NET/Libfabric/2(10)\n"
    assert read_transport(pxn).gdr is True and read_transport(pci).gdr is True
    assert read_transport(plain).gdr is False and read_transport(pxn).verdict == "efa"


def test_provider_name_with_a_suffix_is_still_efa():
    line = "h:1:1 [0] NCCL INFO NET/OFI Selected provider is efa-direct, fabric is efa-direct (found 4 nics)\n"
    assert read_transport(line + "h:1:1 [0] NCCL INFO Using network Libfabric\n").verdict == "efa"


def test_srun_label_around_mpirun_tag_is_stripped_twice():
    assert split_prefix("3: [1,0]<stdout>:#  size") == (LAUNCHER_SRUN, "3", "#  size")


# SYNTHETIC: the 2.0-era layout from nccl-tests' 2.0 printf formats (no '#' on the footer, no Pid in
# the rank lines, "bytes N type op ... res" header, times in ms); no public output of that era with
# the full table was found (NVIDIA/nccl-tests issues 7 and 8 show only its first lines).
V20 = """\
nThread 1 nGpus 8 minBytes 8 maxBytes 1073741824 step: 2(factor) warmup iters: 5 iters: 20 validation: 1
# Using devices
#   Rank  0 on   dgx1-01 device  0 [0x06] Tesla V100-SXM2-16GB
#   Rank  1 on   dgx1-01 device  1 [0x07] Tesla V100-SXM2-16GB

#                                                 out-of-place                    in-place
#      bytes             N    type      op    time  algbw  busbw      res     time  algbw  busbw      res
           8             2   float     sum   0.042   0.00   0.00    1e-07    0.041   0.00   0.00    1e-07
   536870912     134217728   float     sum   4.522 118.73 207.77    5e-07    4.519 118.80 207.90    5e-07
  1073741824     268435456   float     sum   9.011 119.16 208.53    5e-07    9.006 119.23 208.65    3e+00
 Out of bounds values : 1 FAILED
 Avg bus bandwidth    : 138.805 
"""


def test_v2_0_era_layout_footer_ranks_and_milliseconds():
    run = parse_text(V20)
    assert (run.out_of_bounds, run.out_of_bounds_ok, run.avg_busbw_printed) == (1, False, 138.805)
    assert run.footer and run.truncated is False and run.warnings == ()
    assert run.hosts == ("dgx1-01",) and run.nranks == 2
    assert run.error_column == "error" and run.rows[0].redop == "sum"
    assert run.time_unit == "ms" and run.rows[1].out_of_place.time_us == pytest.approx(4522)
    assert run.rows[2].delta_exceeded and not run.rows[1].delta_exceeded


def test_nan_average_is_not_a_number_in_the_report():
    import json

    from builder.nccl.report import to_json

    run = parse_text(NEWEST.replace("377.522 FAILED", "nan"))
    assert run.avg_busbw_printed is None and run.footer
    assert any("nan" in w for w in run.warnings)
    json.loads(json.dumps(to_json(run), allow_nan=False))


def test_average_of_busbw_printed_with_one_decimal_above_1000():
    # SYNTHETIC: getFloatStr prints one decimal from 1000 GB/s (NVL-class busbw).
    text = NEWEST.replace("374.89", "1374.9").replace("375.06", "1375.1").replace("379.97", "1380.0") \
        .replace("380.17", "1380.2").replace("377.522 FAILED", "1377.52")
    run = parse_text(text)
    assert run.average_matches is True and run.avg_busbw_printed == 1377.52


def test_truncated_job_output_is_detected():
    text = load_fixture("a3mega_h100_2node_mpirun.txt")
    cut = text[: text.index("  4294967296")]  # the job died after 2 GiB
    run = parse_text(cut)
    assert run.truncated is True and not run.footer
    assert any("cut short" in w for w in run.warnings)
