"""The figures contract (sw/macs.py): useful, linearization and padding MACs, utilization and
occupancy, from the compile report, the golden model's counters and cycle estimate, the run
table and (one small network) the RTL counters."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sim.network import KernelRun
from neuralmatrix.sim.report import COLUMNS, layer_rows
from neuralmatrix.sw.compiler import compile_model
from neuralmatrix.sw.ir import Kernel
from neuralmatrix.sw.macs import FIGURES, model_macs
from neuralmatrix.sw.runtime import run_golden

from test_compiler import feeds_for, make_model

CFG16 = HwConfig(16, 16, "ws")
RNG = np.random.default_rng(0)


def _compile(model, inputs, cfg=CFG16):
    comp = compile_model(model, cfg, calib_feeds=feeds_for(inputs))
    return comp, feeds_for(inputs, n=1, seed=9)[0]


def _check_kernel_figures(comp, feed, cfg):
    """Every kernel: executed = the golden model's counter, the sum identity, and both
    percentages from the golden cycle estimate."""
    peak = cfg.rows * cfg.cols
    g = run_golden(comp.compiled, feed)
    kernels = comp.report["kernels"]
    assert [k.counters["macs"] for k in g.kernels] == [k["executed_macs"] for k in kernels]
    for k in kernels:
        assert k["executed_macs"] == k["useful_macs"] + k["linearization_macs"] + k["padding_macs"]
        assert k["utilization_pct"] == round(100 * k["useful_macs"] / (k["est_cycles"] * peak), 2)
        assert k["occupancy_pct"] == round(100 * k["executed_macs"] / (k["est_cycles"] * peak), 2)
    tot = comp.report["totals"]
    for f in ("executed_macs", "useful_macs", "linearization_macs", "padding_macs"):
        assert tot[f] == sum(k[f] for k in kernels)
    return g


def _depthwise(C=32, H=10):
    return make_model([helper.make_node("Conv", ["x", "W"], ["y"], name="dw", group=C,
                                        pads=[1, 1, 1, 1])],
                      [("x", [1, C, H, H])], ["y"], [("W", RNG.standard_normal((C, 1, 3, 3)))])


def test_depthwise_conv_useful_vs_executed():
    C, H = 32, 10
    comp, feed = _compile(_depthwise(C, H), [("x", [1, C, H, H])])
    (k,) = comp.report["kernels"]
    assert k["role"] == "linear"
    assert k["useful_macs"] == C * 3 * 3 * H * H            # real per-group K = 1 * 3 * 3
    assert k["executed_macs"] > k["useful_macs"]            # block-diagonal weight, dense tiles
    assert k["linearization_macs"] == 0
    assert k["padding_macs"] == k["executed_macs"] - k["useful_macs"] > 0
    assert k["utilization_pct"] < k["occupancy_pct"]
    _check_kernel_figures(comp, feed, CFG16)


def test_diagonal_scaling_is_linearization_one_mac_per_element():
    M, C = 36, 20
    model = make_model([helper.make_node("Mul", ["x", "c"], ["y"], name="scale")],
                       [("x", [M, C])], ["y"], [("c", RNG.uniform(0.5, 2.0, C))])
    comp, feed = _compile(model, [("x", [M, C])])
    (k,) = comp.report["kernels"]
    assert k["role"] == "linearization"
    assert k["useful_macs"] == 0
    assert k["linearization_macs"] == M * C                 # one MAC per element
    assert k["padding_macs"] == k["executed_macs"] - M * C > 0   # the diagonal's zeros
    assert k["utilization_pct"] == 0.0 < k["occupancy_pct"]
    assert comp.report["totals"]["linearization_pct"] is None    # no useful MACs at all
    _check_kernel_figures(comp, feed, CFG16)


def test_gemm_not_dividing_the_array():
    M, K, N = 37, 50, 21                                    # none a multiple of 16
    model = make_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                       [("x", [M, K])], ["y"], [("W", RNG.standard_normal((K, N)))])
    comp, feed = _compile(model, [("x", [M, K])])
    tot = comp.report["totals"]
    assert tot["useful_macs"] == M * K * N
    # COMPUTEs issue the real edge extents: no MAC is executed for the ragged tiles, whose
    # idle PEs show in the cycles (utilization = occupancy, far below 100%)
    assert tot["executed_macs"] == M * K * N and tot["padding_macs"] == 0
    cycles, peak = tot["est_cycles"], CFG16.rows * CFG16.cols
    assert tot["utilization_pct"] == round(100 * M * K * N / (cycles * peak), 2)
    assert tot["occupancy_pct"] == tot["utilization_pct"] < 50
    _check_kernel_figures(comp, feed, CFG16)


def test_network_mixes_the_three_kinds():
    """Conv + Relu + residual-style Add of a diagonal scaling: useful only from the Conv,
    linearization from the Add, the report's layers and totals add up."""
    model = make_model([
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Mul", ["x", "s"], ["m"], name="mul"),
        helper.make_node("Add", ["r", "m"], ["y"], name="add")],
        [("x", [1, 8, 6, 6])], ["y"],
        [("W", RNG.standard_normal((8, 8, 3, 3))), ("s", RNG.uniform(0.5, 2, (1, 8, 1, 1)))])
    comp, feed = _compile(model, [("x", [1, 8, 6, 6])], HwConfig())
    _check_kernel_figures(comp, feed, HwConfig())
    tot = comp.report["totals"]
    assert tot["useful_macs"] == 8 * 8 * 9 * 36
    assert tot["linearization_macs"] > 0
    layers = {lay["layer"]: lay for lay in comp.report["layers"]}
    assert layers["conv"]["useful_macs"] == tot["useful_macs"]
    assert sum(lay["executed_macs"] for lay in layers.values()) == tot["executed_macs"]


def test_model_macs_of_each_operator():
    model = make_model([
        helper.make_node("Conv", ["x", "W"], ["c"], name="grouped", group=2, strides=[2, 2]),
        helper.make_node("ConvTranspose", ["c", "T"], ["t"], name="deconv"),
        helper.make_node("Reshape", ["t", "shape"], ["r"]),
        helper.make_node("MatMul", ["r", "r2"], ["q"], name="batched"),
        helper.make_node("Gemm", ["a", "B"], ["g"], name="gemm", transA=1)],
        [("x", [1, 4, 9, 9]), ("r2", [2, 5, 3]), ("a", [7, 3])], ["q", "g"],
        [("W", np.zeros((6, 2, 3, 3))), ("T", np.zeros((6, 2, 2, 2))),
         ("shape", np.array([2, 4, 5], dtype=np.int64)), ("B", np.zeros((7, 5)))])
    m = model_macs(model)
    # Conv: out 1x6x4x4, K per group 2*3*3; ConvTranspose: in 1x6x4x4 meets 2 * 2*2 outputs
    assert m["grouped"] == 6 * 4 * 4 * 2 * 3 * 3
    assert m["deconv"] == 6 * 4 * 4 * 2 * 2 * 2
    assert m["batched"] == 2 * 4 * 3 * 5          # output 2x4x3, K = 5
    assert m["gemm"] == 3 * 5 * 7                 # A^T is 3x7


def test_run_table_names_and_golden_rows():
    comp, feed = _compile(_depthwise(), [("x", [1, 32, 10, 10])])
    c = comp.compiled
    order = [s for s in c.steps if isinstance(s, Kernel)]
    g = run_golden(c, feed)
    runs = [[KernelRun(k.name, s.origin, k.counters, k.est_cycles, 0.0)
             for k, s in zip(g.kernels, order)]] * 2          # two inferences
    rows = layer_rows(runs, CFG16, order, measured=False)
    assert set(FIGURES) <= set(COLUMNS) and "macs" not in COLUMNS
    total = rows[-1]
    tot = comp.report["totals"]
    for f in ("executed_macs", "useful_macs", "linearization_macs", "padding_macs"):
        assert total[f] == 2 * tot[f]
    assert total["utilization_pct"] == tot["utilization_pct"]
    assert total["occupancy_pct"] == tot["occupancy_pct"]


def test_rtl_counters_agree():
    """One small network on the RTL (8x8 ws): the RTL's MAC counter is the executed MACs of
    the report, and the run table's figures follow from it and the RTL cycles."""
    pytest.importorskip("cocotb")
    from neuralmatrix.sim.network import run_network_rtl

    cfg = HwConfig()
    comp, feed = _compile(_depthwise(16, 6), [("x", [1, 16, 6, 6])], cfg)
    c = comp.compiled
    (run,) = run_network_rtl(c, [feed])
    assert [k.counters["macs"] for k in run.kernels] == \
        [k["executed_macs"] for k in comp.report["kernels"]]
    rows = layer_rows([run.kernels], cfg, c.network.kernels)
    total, peak = rows[-1], cfg.rows * cfg.cols
    assert total["useful_macs"] == 16 * 9 * 36
    assert total["utilization_pct"] == round(100 * total["useful_macs"] / (total["cycles"] * peak), 2)
    assert total["occupancy_pct"] == round(100 * total["executed_macs"] / (total["cycles"] * peak), 2)
