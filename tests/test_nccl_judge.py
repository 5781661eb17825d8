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
                 "g5.48xlarge", "g6.48xlarge"):
        inst = INSTANCES[name]
        assert inst.gpus == 8 and inst.efa
        assert 0 < inst.threshold(1) < inst.intra_peak and 0 < inst.threshold(2) < inst.network_peak
    assert INSTANCES["p5.48xlarge"].network_peak == 400 and INSTANCES["p4d.24xlarge"].network_peak == 50
    with pytest.raises(UsageError):
        get_instance("p9.huge")


def test_healthy_two_node_p5_passes():
    run = parse_text(load_fixture("awsome_p5_2node_srun.txt"), collective="all_reduce_perf")
    v = judge(run, INSTANCES["p5.48xlarge"], nodes=2)
    assert v.passed and checks(v) == {"data": PASS, "transport": SKIP, "bandwidth": PASS}
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
