"""Judgement, reports and plot on real outputs; the `builder nccl` verbs through click."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import pytest
from click.testing import CliRunner
from nccl_support import FIXTURES, load_fixture

from builder.cli import cli
from builder.errors import UsageError
from builder.nccl.instances import INSTANCES, get_instance
from builder.nccl.judge import FAIL, PASS, SKIP, judge
from builder.nccl.parse import parse_text, read_transport
from builder.nccl.plot import plot_busbw
from builder.nccl.report import to_json


def checks(verdict) -> dict[str, str]:
    return {c.name: c.status for c in verdict.checks}


def test_instance_table_covers_the_issue_and_keeps_thresholds_below_peaks():
    for name in ("p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge", "p5e.48xlarge", "p5en.48xlarge",
                 "g5.48xlarge", "g6.48xlarge", "g6e.48xlarge"):
        inst = INSTANCES[name]
        assert inst.gpus == 8 and inst.efa
        assert 0 < inst.threshold(1) < inst.intra_peak
        assert 0 < inst.threshold(2) < min(inst.network_peak, inst.intra_peak)
    assert INSTANCES["p5.48xlarge"].network_peak == 400 and INSTANCES["p4d.24xlarge"].network_peak == 50
    with pytest.raises(UsageError):
        get_instance("p9.huge")


def test_healthy_two_node_p5_passes():
    run = parse_text(load_fixture("awsome_p5_2node_srun.txt"), collective="all_reduce_perf")
    v = judge(run, INSTANCES["p5.48xlarge"], nodes=2)
    assert v.passed and checks(v) == {"complete": SKIP, "data": PASS, "transport": SKIP, "bandwidth": PASS}
    assert (v.measured, v.measured_size, v.threshold, v.physical_peak) == (487.26, 16 << 30, 240.0, 400.0)


def test_healthy_p4d_with_efa_logs_passes_and_p5_thresholds_fail_it():
    run = parse_text(load_fixture("efa_eks_p4d_2node_mpirun_old.txt"))
    ok = judge(run, INSTANCES["p4d.24xlarge"])  # nodes from the two hosts of the output
    assert ok.passed and ok.nodes == 2 and checks(ok)["transport"] == PASS
    slow = judge(run, INSTANCES["p5.48xlarge"])
    assert not slow.passed and checks(slow)["bandwidth"] == FAIL
    assert "below the threshold 240 GB/s" in slow.reasons[0]


def test_socket_fallback_fails_a_multi_node_run():
    run = parse_text(load_fixture("awsome_p4de_2node_srun.txt"), logs=load_fixture("aws_k8s_tester_464_socket.txt"))
    v = judge(run, INSTANCES["p4de.24xlarge"], nodes=2)
    assert not v.passed and checks(v)["transport"] == FAIL and checks(v)["bandwidth"] == PASS
    assert "fell back to sockets" in v.reasons[0] and "Using network Socket" in v.reasons[0]


def test_tcp_provider_fails_when_efa_is_expected():
    run = parse_text(load_fixture("awsome_p4de_2node_srun.txt"), logs=load_fixture("nccl_229_ofi_tcp_provider.txt"))
    v = judge(run, INSTANCES["p4de.24xlarge"], nodes=2)
    assert not v.passed and "provider 'tcp;ofi_rxm'" in v.reasons[0]


def test_single_node_socket_is_only_judged_when_efa_is_expected():
    run = parse_text(load_fixture("aws_ofi_nccl_33_p3dn_old.txt"), logs=load_fixture("nccl_352_no_plugin.txt"))
    assert checks(judge(run, nodes=1))["transport"] == SKIP
    v = judge(run, nodes=1, expect_efa=True)
    assert checks(v)["transport"] == FAIL and "did not load" in v.reasons[0]


def test_data_errors_fail():
    run = parse_text(load_fixture("awsome_p5_2node_srun.txt"))
    rows = list(run.rows)
    rows[-1] = replace(rows[-1], out_of_place=replace(rows[-1].out_of_place, wrong=12))
    v = judge(replace(run, rows=tuple(rows)), INSTANCES["p5.48xlarge"], nodes=2)
    assert not v.passed and checks(v)["data"] == FAIL and "12 wrong elements" in v.reasons[0]


def test_small_messages_only_are_judged_at_the_largest_size_and_say_so():
    run = parse_text(load_fixture("bottlerocket_313_alltoall_na.txt"))
    v = judge(run, threshold=5.0, nodes=2)
    assert checks(v)["bandwidth"] == FAIL and "largest message is 512 KiB" in v.reasons[0]


def test_other_collectives_are_not_held_to_all_reduce_thresholds():
    run = parse_text(load_fixture("nccl_tests_82_broadcast_old_na.txt"))
    v = judge(run, INSTANCES["p4d.24xlarge"], nodes=2)
    assert checks(v)["bandwidth"] == SKIP and checks(v)["data"] == SKIP


def test_json_report_is_serialisable_and_complete():
    run = parse_text(load_fixture("efa_eks_p4d_2node_mpirun_old.txt"))
    doc = json.loads(json.dumps(to_json(run, judge(run, INSTANCES["p4d.24xlarge"]), source="x")))
    assert doc["schema"] == "builder.nccl/1" and len(doc["rows"]) == 28
    assert doc["avg_busbw"]["printed"] == 7.80081 and doc["avg_busbw"]["matches"] is True
    assert doc["transport"]["verdict"] == "efa" and doc["transport"]["socket_fallback"] is False
    assert doc["verdict"]["passed"] is True and doc["verdict"]["threshold"] == 30.0
    assert doc["rows"][0]["out_of_place"]["delta"] == 2e-07


def test_plot_writes_a_png(tmp_path):
    run = parse_text(load_fixture("awsome_p5_2node_srun.txt"))
    out = plot_busbw(run, tmp_path / "p5.png", judge(run, INSTANCES["p5.48xlarge"], nodes=2))
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 600 and height > 400


# --- CLI ----------------------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(cli, ["nccl", *args], catch_exceptions=False)


def test_cli_parse_json_reads_every_file():
    res = invoke("parse", "--json", str(FIXTURES / "awsome_p4de_2node_srun.txt"), str(FIXTURES / "a3mega_h100_2node_mpirun.txt"))
    assert res.exit_code == 0, res.output
    docs = json.loads(res.output)
    assert [len(d["rows"]) for d in docs] == [29, 31]


def test_cli_parse_without_rows_exits_4():
    res = invoke("parse", str(FIXTURES / "nccl_352_no_plugin.txt"))
    assert res.exit_code == 4


def test_cli_judge_pass_fail_and_plot(tmp_path):
    f = str(FIXTURES / "efa_eks_p4d_2node_mpirun_old.txt")
    ok = invoke("judge", f, "--instance", "p4d.24xlarge", "--plot", str(tmp_path / "p4d.png"))
    assert ok.exit_code == 0 and "PASS" in ok.output and (tmp_path / "p4d.png").stat().st_size > 10_000
    bad = invoke("judge", f, "--instance", "p5.48xlarge", "--json")
    assert bad.exit_code == 1
    assert json.loads(bad.output)["verdict"]["reasons"]


def test_cli_judge_socket_fallback_fails(tmp_path):
    res = invoke("judge", str(FIXTURES / "awsome_p4de_2node_srun.txt"), "--logs",
                 str(FIXTURES / "aws_k8s_tester_464_socket.txt"), "--instance", "p4de.24xlarge", "--nodes", "2")
    assert res.exit_code == 1 and "[fail] transport" in res.output


def test_cli_unknown_instance_is_a_usage_error():
    res = invoke("judge", str(FIXTURES / "awsome_p4de_2node_srun.txt"), "--instance", "p9.huge")
    assert res.exit_code == 2


def test_read_transport_is_exported_for_the_slurm_writer():
    assert read_transport("").verdict == "unknown"


def test_tests_dir_must_be_a_plain_absolute_path(tmp_path):
    from builder.nccl.run import RunOptions, docker_command

    cmd = docker_command("docker", "img:1", "all_reduce", RunOptions(tests_dir="/opt/t/build"), 8, tmp_path, [])
    assert 'exec "/opt/t/build/$b" "$@"' in cmd[cmd.index("-c") + 1]
    with pytest.raises(UsageError):
        docker_command("docker", "img:1", "all_reduce", RunOptions(tests_dir='/x"; rm -rf /'), 8, tmp_path, [])


# --- review of issue 5: what must fail, skip or be asked for ---------------------------------------


def test_one_node_on_sockets_fails_a_multi_node_efa_run_and_names_it():
    # Built from two real logs: aws-efa-eks's EFA ranks and aws-k8s-tester's socket rank in one job.
    logs = load_fixture("efa_eks_p4d_2node_mpirun_old.txt") + load_fixture("aws_k8s_tester_464_socket.txt")
    run = parse_text(load_fixture("awsome_p4de_2node_srun.txt"), logs=logs)
    v = judge(run, INSTANCES["p4de.24xlarge"], nodes=2)
    assert not v.passed and checks(v)["transport"] == FAIL
    assert "fell back to sockets on multi-node-nccl-test-worker-0" in v.reasons[0]


def test_another_net_plugin_fails_where_efa_is_expected():
    run = parse_text(load_fixture("nccl_tests_321_rdma_plugin_pxn.txt"))
    v = judge(run, INSTANCES["p5.48xlarge"])  # 2 hosts in the output: multi-node, EFA expected
    assert v.nodes == 2 and checks(v)["transport"] == FAIL and checks(v)["bandwidth"] == SKIP  # alltoall
    assert "NCCL used network NCCL RDMA Plugin v6" in v.reasons[-1] and "NCCL_NET_PLUGIN" in v.reasons[-1]
    # The same run judged where EFA is not expected (an InfiniBand cluster) passes the transport.
    assert checks(judge(run, threshold=10, nodes=2, expect_efa=False))["transport"] == PASS


def test_failed_plugin_initialisation_is_named_as_the_cause():
    run = parse_text(load_fixture("awsome_p4de_2node_srun.txt"), logs=load_fixture("training_on_eks_p4d_ofi_init_failed.txt"))
    v = judge(run, INSTANCES["p4de.24xlarge"], nodes=2)
    assert "aws-ofi-nccl 1.17.1 loaded but failed to initialize" in v.reasons[0]
    assert "NET/OFI Failed to initialize sendrecv protocol" in v.reasons[0]


def test_unknown_network_lines_are_not_called_missing_logs():
    run = parse_text(load_fixture("awsome_p5_2node_srun.txt"))
    assert "no NCCL_DEBUG=INFO network lines" in dict((c.name, c.detail) for c in judge(run, nodes=2).checks)["transport"]
    other = replace(run, transport=read_transport("h:1:1 [0] NCCL INFO Using network IBext_v8\n"))
    v = judge(other, INSTANCES["p5.48xlarge"], nodes=2, expect_efa=True)
    assert checks(v)["transport"] == FAIL and "IBext_v8" in v.reasons[0]


def test_wrong_counts_and_old_error_column_fail_the_data_check():
    v = judge(parse_text(load_fixture("olivia_gh200_2_17_9_wrong.txt")), threshold=1, nodes=4)
    assert checks(v)["data"] == FAIL and "wrong elements (#wrong) at 2 MiB" in v.reasons[0]
    v = judge(parse_text(load_fixture("nccl_tests_37_allgather_no_hash.txt")), nodes=1)
    assert checks(v)["data"] == FAIL
    assert "error column up to 1" in v.reasons[0] and "2 out-of-bounds values" in v.reasons[0]


def test_truncated_job_output_fails_as_incomplete():
    text = load_fixture("a3mega_h100_2node_mpirun.txt")
    run = parse_text(text[: text.index("  4294967296")])
    v = judge(run, INSTANCES["p5.48xlarge"], nodes=1)
    assert checks(v)["complete"] == FAIL and not v.passed
    assert "output cut short" in v.reasons[0] and "below maxBytes 8 GiB" in v.reasons[0]
    assert "no footer, so the out-of-bounds count was not seen" in dict((c.name, c.detail) for c in v.checks)["data"]


def test_validation_off_is_a_skip_not_a_pass():
    # SYNTHETIC: a -c 0 run (validation: 0, #wrong N/A) still prints "Out of bounds values : 0 OK".
    from test_nccl_parse import NEWEST

    text = NEWEST.replace("validation: 1", "validation: 0").replace("2 FAILED", "0 OK").replace(" FAILED", "")
    text = "\n".join(line if not line.startswith("  ") else line.replace("       0 ", "     N/A ")
                     .replace("  1.6e+07", "      N/A").replace("       3", "     N/A") for line in text.splitlines())
    run = parse_text(text)
    assert run.out_of_bounds == 0 and run.wrong_total == 0
    v = judge(run, INSTANCES["p5.48xlarge"], nodes=1)
    assert checks(v)["data"] == SKIP and "-c 0" in dict((c.name, c.detail) for c in v.checks)["data"]


def test_g6e_multi_node_peak_is_capped_by_its_pcie_link():
    g6e = INSTANCES["g6e.48xlarge"]
    assert (g6e.network_peak, g6e.peak(2), g6e.threshold(2)) == (50, 31.5, 18.9)
    assert g6e.peak_label(2).startswith("per-GPU PCIe 4.0 x16 peak (below the 50 GB/s")
    assert INSTANCES["p5.48xlarge"].peak(2) == 400 and INSTANCES["g5.48xlarge"].peak(2) == 12.5


def test_threshold_option_is_not_described_as_a_fraction_of_the_instance():
    run = parse_text(load_fixture("awsome_p5_2node_srun.txt"))
    v = judge(run, INSTANCES["p5.48xlarge"], nodes=2, threshold=100)
    detail = dict((c.name, c.detail) for c in v.checks)["bandwidth"]
    assert "100 GB/s (--threshold)" in detail and " x " not in detail and v.threshold_source == "option"
    detail = dict((c.name, c.detail) for c in judge(run, INSTANCES["p5.48xlarge"], nodes=2).checks)["bandwidth"]
    assert "240 GB/s = 0.6 x 400 GB/s per-node network peak of p5.48xlarge" in detail


def test_cli_judge_needs_nodes_when_the_output_lists_no_hosts():
    res = invoke("judge", str(FIXTURES / "awsome_p4de_2node_srun.txt"), "--instance", "p4de.24xlarge")
    assert res.exit_code == 2 and "--nodes N is needed" in res.output


def test_cli_judge_every_table_or_the_one_named(tmp_path):
    both = tmp_path / "both.out"
    both.write_text(load_fixture("a3mega_h100_2node_mpirun.txt") + load_fixture("nixpkgs_251856_allgather_2_13.txt"))
    res = invoke("judge", str(both), "--instance", "p5.48xlarge", "--nodes", "2", "--json")
    doc = json.loads(res.output)
    assert [r["collective"] for r in doc["reports"]] == ["all_reduce_perf", "all_gather_perf"]
    assert doc["passed"] is (res.exit_code == 0)
    one = invoke("judge", str(both), "--instance", "p5.48xlarge", "--nodes", "2", "--collective", "all_reduce_perf",
                 "--json", "--plot", str(tmp_path / "p.png"))
    assert json.loads(one.output)["collective"] == "all_reduce_perf" and (tmp_path / "p.png").exists()
    several = invoke("judge", str(both), "--threshold", "1", "--plot", str(tmp_path / "q.png"))
    assert (tmp_path / "q-all_reduce_perf.png").exists() and (tmp_path / "q-all_gather_perf.png").exists()
    assert several.output.count("PASS") + several.output.count("FAIL") >= 2
    missing = invoke("judge", str(both), "--collective", "alltoall")
    assert missing.exit_code == 2 and "all_reduce_perf, all_gather_perf" in missing.output


def test_cli_parse_keeps_the_transport_when_there_are_no_rows():
    res = CliRunner().invoke(cli, ["nccl", "parse", str(FIXTURES / "training_on_eks_p4d_ofi_init_failed.txt")])
    assert res.exit_code == 4
    assert "socket" in res.output and "failed to initialize" in res.output


def test_cli_json_has_no_nan(tmp_path):
    from test_nccl_parse import NEWEST

    f = tmp_path / "nan.out"
    f.write_text(NEWEST.replace("377.522 FAILED", "nan"))
    res = invoke("parse", "--json", str(f))

    def refuse(token):
        raise ValueError(token)

    doc = json.loads(res.output, parse_constant=refuse)
    assert doc[0]["avg_busbw"]["printed"] is None
