"""The benchmark harness: every library in a worker process of its own (no timing
assertions: timings are never tested, only that the machinery answers)."""
import argparse
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_layers  # noqa: E402
import bench_timing as bt  # noqa: E402


@pytest.fixture(scope="module")
def npfcn_worker():
    worker = bt.Worker(str(BENCH / "bench_layers.py"), "npfcn", ["--threads", "1"])
    yield worker
    worker.close()
    assert worker.proc.returncode == 0


def test_an_npfcn_worker_is_alone_and_times_a_case(npfcn_worker):
    assert npfcn_worker.hello["threads"]["npfcn"] >= 1
    assert "cpu" in npfcn_worker.hello["machine"]
    assert npfcn_worker.ask(op="imported", module="torch") == {"imported": False}
    case = "w1/16 conv5_x 32->32 @21|fb"
    assert npfcn_worker.ask(op="warmup", case=case, min_time=0.0)["inner"] == 1
    assert npfcn_worker.ask(op="time", case=case)["s"] > 0


def test_a_failing_request_is_reported_and_the_worker_goes_on(npfcn_worker):
    with pytest.raises(RuntimeError, match="KeyError"):
        npfcn_worker.ask(op="warmup", case="no such layer|fwd")
    with pytest.raises(RuntimeError, match="before its warmup"):
        npfcn_worker.ask(op="time", case="w1/16 fc6 32->256 k7 @11|fwd")
    stats = bt.compare_processes({"a": npfcn_worker}, "w1/16 conv5_x 32->32 @21|fwd", repeats=2,
                                 min_time=0.0, pause=0.0)
    assert len(stats["a"].times) == 2


def test_direct_convolution_flops():
    # 2 * N * C_out * C_in * k^2 * OH * OW, worked by hand for two shapes
    assert bench_layers.conv_flops(bench_layers.CASES["N4 64->64 @32"]) == 2 * 4 * 64 * 64 * 9 * 32 * 32
    fc6 = bench_layers.CASES["fc6 512->4096 k7 @14"]
    assert bench_layers.conv_flops(fc6) == 2 * 4096 * 512 * 49 * 8 * 8


def test_the_default_selection_holds_the_issue_table():
    args = argparse.Namespace(quick=False, narrow=False, all=False, only=None)
    names = bench_layers.select(args)
    for name in ("conv1_1 3->64 @224", "conv5_x 512->512 @14", "fc6 512->4096 k7 @14",
                 "w1/16 conv3_x 16->16 @82", "w1/16 conv4_x 32->32 @41", "N4 64->64 @32",
                 "segnet-basic 64->64 k7 @90x120", "upscore8 21 k16 s8 @38", "maxpool 2x2 64 @224"):
        assert name in names
