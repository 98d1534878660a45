"""Sharded whole-network runs: `neuralmatrix run --jobs N` and `--scheduler` (Dask).

The shards must give the verdict, the outputs, the counters and the report totals of a
single-process run, and a failed shard must name its inferences.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sim.network import run_network_rtl
from neuralmatrix.sim.runner import SimulationFailed
from neuralmatrix.sim.shards import ShardError, run_sharded, shard_bounds
from neuralmatrix.sw.cli import main
from neuralmatrix.sw.compiler import builtin, compile_model
from neuralmatrix.sw.models.digits import load_split


@pytest.fixture(scope="module")
def digits8():
    src, _, _ = builtin("digits")
    x, _ = load_split("train")
    calib = [{"input": x[i:i + 5]} for i in range(0, 100, 5)]
    return compile_model(src, HwConfig(), calib_feeds=calib,
                         input_shapes={"input": (5, 1, 8, 8)}).compiled


def _feeds(n):
    x, _ = load_split("test")
    return [{"input": x[5 * i:5 * i + 5]} for i in range(n)]


@pytest.mark.parametrize("n, shards, expected", [
    (5, 2, [(0, 3), (3, 5)]), (2, 4, [(0, 1), (1, 2)]), (6, 3, [(0, 2), (2, 4), (4, 6)]),
    (1, 1, [(0, 1)]),
])
def test_shard_bounds_cover_every_feed_once(n, shards, expected):
    assert shard_bounds(n, shards) == expected


def test_two_local_shards_equal_one_process(digits8):
    feeds = _feeds(3)
    single = run_network_rtl(digits8, feeds)
    seen = []
    sharded = run_sharded(digits8, feeds, jobs=2, progress=lambda d, t: seen.append((d, t)))
    assert len(sharded) == len(single) == 3
    for a, b in zip(single, sharded):
        assert a.outputs.keys() == b.outputs.keys()
        for k in a.outputs:
            np.testing.assert_array_equal(a.outputs[k], b.outputs[k])
        assert [k.counters for k in a.kernels] == [k.counters for k in b.kernels]
    assert seen and seen[-1][0] == seen[-1][1]


def test_failed_shard_names_its_inferences(digits8):
    with pytest.raises(SimulationFailed) as info:
        run_sharded(digits8, _feeds(4), jobs=2, max_cycles=200,
                    names=["a.npy", "b.npy", "c.npy", "d.npy"])
    msg = str(info.value)
    assert "of 2, inferences " in msg and "no done after 200 cycles" in msg
    assert ("inferences 0..1 (a.npy, b.npy)" in msg) or ("inferences 2..3 (c.npy, d.npy)" in msg)
    assert ("of inference 0" in msg) or ("of inference 2" in msg)   # indices of the whole run


def test_jobs_must_be_positive(digits8):
    with pytest.raises(ShardError, match="--jobs must be at least 1, got 0"):
        run_sharded(digits8, _feeds(1), jobs=0)


def _run_totals(tmp_path, name, extra, capsys):
    x, _ = load_split("test")
    np.save(tmp_path / "digits.npy", x[:15])
    report = tmp_path / name
    code = main(["run", "--batch", "5", "--input", str(tmp_path / "digits.npy"),
                 "--report", str(report), *extra])
    out = capsys.readouterr().out
    data = json.loads(report.with_suffix(".json").read_text())
    return code, out, data


def test_cli_jobs_and_dask_give_the_single_process_report(tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    code1, out1, one = _run_totals(tmp_path, "one", [], capsys)
    code2, out2, two = _run_totals(tmp_path, "two", ["--jobs", "2"], capsys)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        code3, out3, three = _run_totals(tmp_path, "dask", ["--scheduler",
                                                            cluster.scheduler_address], capsys)
    assert code1 == code2 == code3 == 0
    assert "in 2 processes" in out2 and f"on the Dask scheduler {cluster.scheduler_address}" in out3
    for out in (out1, out2, out3):
        assert "bit-exact: every kernel output of all 3 inference(s)" in out
    assert one["layers"] == two["layers"] == three["layers"]
    assert one["meta"]["bit_exact"] is two["meta"]["bit_exact"] is three["meta"]["bit_exact"] is True


@pytest.mark.parametrize("argv, message", [
    (["--jobs", "0"], "--jobs must be at least 1, got 0"),
    (["--scheduler", "tcp://127.0.0.1:9"], "cannot reach the Dask scheduler at tcp://127.0.0.1:9"),
])
def test_bad_sharding_options_fail_before_compiling(argv, message, capsys):
    assert main(["run", *argv]) == 2
    err = capsys.readouterr()
    assert message in err.err and "compiled" not in err.out
