"""Whole networks on the RTL (Verilator through cocotb), bit-exact with the golden model.

Default suite: the digits CNN whole (all 450 test digits, through ``neuralmatrix run``), the
first-difference report, a kernel time-out, trace windows. ``--runslow``: whole MiniLM-L6 and
the ResNet-50-class CNN at 224x224.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sim.harness import SimulationTimeout
from neuralmatrix.sim.network import NetworkRun, first_difference, run_network_rtl
from neuralmatrix.sim.report import COLUMNS
from neuralmatrix.sim.runner import fst_supported
from neuralmatrix.sw.cli import main
from neuralmatrix.sw.compiler import builtin, compile_model
from neuralmatrix.sw.ir import Kernel
from neuralmatrix.sw.models.digits import load_split
from neuralmatrix.sw.runtime import run_golden

#: The compiler issue's bound: int8 + PWL top-1 at most 0.5 points below float.
MAX_TOP1_DROP = 0.5


@pytest.fixture(scope="module")
def digits8():
    """The digits CNN compiled for a 8x8 ws array, 5 images per inference."""
    src, _, _ = builtin("digits")
    x, _ = load_split("train")
    calib = [{"input": x[i:i + 5]} for i in range(0, 100, 5)]
    return compile_model(src, HwConfig(), calib_feeds=calib, input_shapes={"input": (5, 1, 8, 8)}).compiled


def _feeds(n):
    x, _ = load_split("test")
    return [{"input": x[5 * i:5 * i + 5]} for i in range(n)]


def _top1(out: str, label: str) -> float:
    line = next(ln for ln in out.splitlines() if ln.startswith("top-1"))
    return float(line.split(f"{label} ")[1].split("%")[0])


def test_run_digits_default_is_bit_exact(tmp_path, capsys):
    """`neuralmatrix run` on its defaults: the digits CNN, 450 test digits, 8x8, RTL."""
    report = tmp_path / "digits"
    assert main(["run", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "bit-exact: every kernel output of all 9 inference(s)" in out
    float_top1, rtl_top1 = _top1(out, "float"), _top1(out, "RTL")
    assert _top1(out, "golden") == rtl_top1                 # bit-exact outputs, same argmax
    assert rtl_top1 >= float_top1 - MAX_TOP1_DROP
    data = json.loads(report.with_suffix(".json").read_text())
    assert data["meta"]["bit_exact"] is True and data["columns"] == list(COLUMNS)
    layers, total = data["layers"][:-1], data["layers"][-1]
    assert total["layer"] == "TOTAL" and len(layers) >= 5
    for key in ("cycles", "executed_macs", "useful_macs", "linearization_macs", "padding_macs",
                "pwl_evals", "dram_read", "dram_written", "compute_busy"):
        assert total[key] == sum(r[key] for r in layers) > 0, key
    for r in layers + [total]:
        assert r["executed_macs"] == r["useful_macs"] + r["linearization_macs"] + r["padding_macs"]
        assert 0 <= r["utilization_pct"] <= r["occupancy_pct"] <= 100
        assert abs(r["est_error_pct"]) < 25                 # the estimate tracks the RTL
    header = report.with_suffix(".csv").read_text().splitlines()[0]
    assert header == ",".join(COLUMNS)


def test_rtl_matches_golden_kernel_by_kernel(digits8):
    feeds = _feeds(2)
    runs = run_network_rtl(digits8, feeds)
    n_kernels = sum(1 for s in digits8.steps if isinstance(s, Kernel))
    for f, r in zip(feeds, runs):
        g = run_golden(digits8, f, keep=True)
        assert first_difference(digits8, g, r) is None
        assert len(r.kernels) == n_kernels == len(r.tensors)
        np.testing.assert_array_equal(r.outputs["logits"], g.outputs["logits"])
        for k, gk in zip(r.kernels, g.kernels):
            assert k.counters["macs"] == gk.counters["macs"] > 0
            assert k.counters["pwl_evals"] == gk.counters["pwl_evals"]
            assert k.counters["bytes_written"] == gk.counters["bytes_written"]
            assert k.counters["cycles"] > 0


def test_first_difference_names_layer_tensor_index_and_values(digits8):
    feeds = _feeds(1)[0]
    g = run_golden(digits8, feeds, keep=True)
    kernels = [s for s in digits8.steps if isinstance(s, Kernel)]
    tensors = {s.out.name: np.array(g.tensors[s.out.name]) for s in kernels}
    run = NetworkRun(g.outputs, dict(g.raw), tensors)
    assert first_difference(digits8, g, run) is None
    victim = kernels[3]
    bad = tensors[victim.out.name]
    bad[1, 2] = bad[1, 2] + 1 if bad[1, 2] < 127 else bad[1, 2] - 1
    later = tensors[kernels[5].out.name]
    later[0, 0] ^= 1
    d = first_difference(digits8, g, run)
    assert (d.kernel, d.layer, d.tensor, d.index) == (victim.name, victim.origin, victim.out.name, (1, 2))
    assert (d.golden, d.rtl, d.count) == (int(g.tensors[victim.out.name][1, 2]), int(bad[1, 2]), 1)
    assert victim.origin in str(d) and "(1, 2)" not in str(d) and "[1, 2]" in str(d)


def test_kernel_time_out_names_kernel_and_cycles(digits8):
    with pytest.raises(SimulationTimeout) as info:
        run_network_rtl(digits8, _feeds(1), max_cycles=200)
    msg = str(info.value)
    first = next(s for s in digits8.steps if isinstance(s, Kernel))
    assert f"kernel 0 ({first.name}" in msg and "no done after 200 cycles" in msg
    assert "status:" in msg


def test_golden_only_run(tmp_path, capsys):
    report = tmp_path / "g.csv"
    assert main(["run", "--golden-only", "--batch", "90", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "bit-exact" not in out and "RTL:" not in out and "Verilator" not in out
    assert _top1(out, "golden") >= _top1(out, "float") - MAX_TOP1_DROP
    data = json.loads(report.with_suffix(".json").read_text())
    assert data["meta"]["bit_exact"] is None
    assert all(r["cycles"] is None and r["est_cycles"] > 0 for r in data["layers"])


def test_run_inputs_npy_and_image(tmp_path, capsys):
    import matplotlib.image as mpimg

    x, y = load_split("test")
    np.save(tmp_path / "three.npy", x[:3])
    big = np.kron(1.0 - x[3, 0], np.ones((4, 4)))          # 32x32, dark ink on white
    mpimg.imsave(tmp_path / "digit.png", big, cmap="gray", vmin=0, vmax=1)
    assert main(["run", "--golden-only", "--batch", "4", "--input", str(tmp_path / "three.npy"),
                 "--input", str(tmp_path / "digit.png")]) == 0
    out = capsys.readouterr().out
    preds = out.split("predictions (float / golden): ")[1].splitlines()[0].split(", ")
    assert len(preds) == 4
    assert [int(p.split("/")[0]) for p in preds[:3]] == list(y[:3])   # float model on the .npy
    assert int(preds[3].split("/")[0]) == y[3]                         # and on the picture


@pytest.mark.parametrize("argv, message", [
    (["run", "--input", "/nonexistent.npy", "--golden-only"], "/nonexistent.npy: no such file"),
    (["run", "--batch", "0"], "--batch must be 1..450, got 0"),
    (["run", "--waves", "x.vcd"], "--waves must name an .fst file"),
    (["run", "--from-cycle", "10", "--to-cycle", "5"], "0 <= --from-cycle <= --to-cycle"),
    (["run", "missing.onnx"], "missing.onnx: no such file"),
    (["run", "--rows", "0"], "rows must be 1..64, got 0"),
])
def test_run_bad_input(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(not fst_supported(), reason="FST waves need the lz4 headers (apt-get install "
                                               "liblz4-dev; .ci/run installs them)")
def test_waves_cover_the_window_kernels(tmp_path, capsys):
    fst = tmp_path / "w.fst"
    assert main(["run", "--batch", "50", "--input", str(_save_digits(tmp_path, 50)),
                 "--waves", str(fst), "--from-cycle", "0", "--to-cycle", "100"]) == 0
    out = capsys.readouterr().out
    assert fst.is_file() and fst.stat().st_size > 1000
    traced = out.split("waves: ")[1]
    assert "kernels 0 " in traced and ", 1 " not in traced       # only the first kernel


def _save_digits(tmp_path, n):
    x, _ = load_split("test")
    path = tmp_path / "digits.npy"
    np.save(path, x[:n])
    return path


def test_minilm_one_encoder_layer_on_rtl(capsys):
    """Embeddings + encoder layer 0 of all-MiniLM-L6-v2 (attention with its mask arithmetic,
    softmax, LayerNorm, GELU) on the RTL, bit-exact, hidden states close to float."""
    assert main(["run", "minilm", "--layers", "1", "--samples", "1"]) == 0
    out = capsys.readouterr().out
    assert "bit-exact: every kernel output of all 1 inference(s)" in out
    line = next(ln for ln in out.splitlines()
                if ln.startswith("hidden-state cosine vs float (per token), RTL"))
    assert float(line.split("mean ")[1].split(",")[0]) >= 0.99
    assert float(line.split("min ")[1].split(" ")[0]) >= 0.98


@pytest.mark.slow
@pytest.mark.parametrize("rows", [8, 16])
def test_minilm_whole_on_rtl(rows, capsys):
    assert main(["run", "minilm", "--rows", str(rows), "--cols", str(rows), "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "bit-exact: every kernel output of all 2 inference(s)" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("sentence-embedding cosine vs float, RTL"))
    assert float(line.split("mean ")[1].split(",")[0]) >= 0.99


@pytest.mark.slow
def test_resnet50_class_on_rtl(capsys):
    assert main(["run", "resnet50", "--rows", "16", "--cols", "16", "--samples", "1"]) == 0
    out = capsys.readouterr().out
    assert "bit-exact: every kernel output of all 1 inference(s)" in out
