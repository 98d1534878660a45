"""The ONNX compiler stage by stage on tiny graphs built here, run on the golden model and
compared with onnx.reference.ReferenceEvaluator.

Tolerance: every output is compared in int8 steps of its own quantization, ``step`` = the
scale of the int8 graph output (``max|x| / 127`` over the calibration samples). One op costs at most
about: 0.5 step input rounding (times the op's gain), 0.5/127 relative weight rounding per
output channel summed over K, 0.5 step output rounding and, for PWL functions, the table's
fit error (about 1 step at 16 segments, see ``neuralmatrix pwl all``). ``TOL = 4`` steps
covers that with margin for one op; a wrong lowering (wrong axis, layout, scale or table) is
off by tens of steps, and :func:`test_tolerance_catches_a_wrong_result` shows the check fails.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sw import cli
from neuralmatrix.sw.compiler import CompileError, compile_model, report
from neuralmatrix.sw.frontend import UnsupportedOpsError
from neuralmatrix.sw.ir import Kernel, Transfer
from neuralmatrix.sw.runtime import run_golden

TOL = 4.0
CFG = HwConfig()


def make_model(nodes, inputs, outputs, inits=(), opset=17):
    """A model from nodes; *inputs* ``[(name, shape)]``, *outputs* names, *inits* ``[(name,
    array)]``; output types from shape inference (the frontend's checker wants them)."""
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v, dtype=np.asarray(v).dtype if np.asarray(v).dtype
                                            == np.int64 else np.float32), k) for k, v in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for o in model.graph.output:
        if o.name in known and known[o.name].type.tensor_type.HasField("shape"):
            o.CopyFrom(known[o.name])
    return model


def feeds_for(inputs, scale=1.0, offset=0.0, n=8, seed=0):
    rng = np.random.default_rng(seed)
    return [{name: (offset + scale * rng.standard_normal(shape)).astype(np.float32)
             for name, shape in inputs} for _ in range(n)]


def steps_off(model, inputs, *, scale=1.0, offset=0.0, config=CFG):
    """Compile with 8 calibration samples, run a 9th on the golden model: the worst error of
    any output in int8 steps of its range, and the compilation."""
    cal = feeds_for(inputs, scale, offset, n=8, seed=0)
    test = feeds_for(inputs, scale, offset, n=1, seed=123)[0]
    comp = compile_model(model, config, calib_feeds=cal)
    ref = ReferenceEvaluator(model).run(None, test)
    got = run_golden(comp.compiled, test)
    worst = 0.0
    for o, r in zip(model.graph.output, ref):
        g = got.outputs[o.name]
        assert g.shape == r.shape, (o.name, g.shape, r.shape)
        step = comp.compiled.network.outputs[o.name].scale
        worst = max(worst, float(np.max(np.abs(g - r))) / step)
    return worst, comp


def node(op, ins, outs, **attrs):
    return helper.make_node(op, ins, outs, **attrs)


RNG = np.random.default_rng(7)


@pytest.fixture(autouse=True)
def _weights_of_this_test():
    """Every test draws its weights from a fresh generator: what a test sees does not depend on
    which tests ran before it in the same worker (pytest -n)."""
    global RNG
    RNG = np.random.default_rng(7)


def _w(*shape, s=0.5):
    return (RNG.standard_normal(shape) * s).astype(np.float32)


# -- linear layers -------------------------------------------------------------------------------

CONVS = {
    "plain 3x3 pad 1": dict(cin=3, cout=8, k=(3, 3), attrs=dict(pads=[1, 1, 1, 1])),
    "groups 2": dict(cin=4, cout=6, k=(3, 3), attrs=dict(group=2, pads=[1, 1, 1, 1])),
    "depthwise": dict(cin=6, cout=6, k=(3, 3), attrs=dict(group=6, pads=[1, 1, 1, 1])),
    "stride 2": dict(cin=3, cout=5, k=(3, 3), attrs=dict(strides=[2, 2])),
    "dilation 2, asymmetric pad": dict(cin=2, cout=4, k=(3, 3),
                                       attrs=dict(dilations=[2, 2], pads=[2, 1, 0, 2])),
    "1-D": dict(cin=3, cout=4, k=(5,), attrs=dict(pads=[2, 2], strides=[2])),
}


@pytest.mark.parametrize("case", list(CONVS))
def test_conv(case):
    c = CONVS[case]
    group = c["attrs"].get("group", 1)
    spatial = [9] * len(c["k"])
    model = make_model([node("Conv", ["x", "W", "B"], ["y"], **c["attrs"])],
                       [("x", [1, c["cin"], *spatial])], ["y"],
                       [("W", _w(c["cout"], c["cin"] // group, *c["k"])), ("B", _w(c["cout"]))])
    worst, comp = steps_off(model, [("x", [1, c["cin"], *spatial])])
    assert worst <= TOL
    assert any(isinstance(s, Transfer) and "im2col" in s.name for s in comp.compiled.steps)


def test_gemm_transb_alpha_beta_and_relu_fused():
    model = make_model([node("Gemm", ["x", "W", "C"], ["g"], transB=1, alpha=0.5, beta=2.0),
                        node("Relu", ["g"], ["y"])],
                       [("x", [4, 12])], ["y"], [("W", _w(10, 12)), ("C", _w(10))])
    worst, comp = steps_off(model, [("x", [4, 12])])
    assert worst <= TOL
    (k,) = comp.compiled.network.kernels          # the ReLU is the GEMM's output table
    assert k.func == "relu" and k.role == "linear"
    tot = comp.report["totals"]
    assert tot["linearization_pct"] == 0.0 and tot["linearization_macs"] == 0
    assert tot["useful_macs"] == 4 * 12 * 10 == tot["executed_macs"]


def test_matmul_constant_and_batched_activations():
    model = make_model([node("MatMul", ["x", "W"], ["a"]), node("MatMul", ["a", "z"], ["y"])],
                       [("x", [2, 3, 8]), ("z", [2, 6, 5])], ["y"], [("W", _w(8, 6))])
    worst, _ = steps_off(model, [("x", [2, 3, 8]), ("z", [2, 6, 5])])
    assert worst <= 2 * TOL                       # two layers in a row


def test_batchnorm_folds_into_conv():
    C = 4
    model = make_model(
        [node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
         node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], epsilon=1e-5)],
        [("x", [1, 2, 6, 6])], ["y"],
        [("W", _w(C, 2, 3, 3)), ("g", 1 + _w(C, s=0.2)), ("b", _w(C)), ("m", _w(C)),
         ("v", 0.5 + np.abs(_w(C)))])
    worst, comp = steps_off(model, [("x", [1, 2, 6, 6])])
    assert worst <= 2 * TOL        # the input rounding times the folded BN gain (up to 1.5x)
    assert len(comp.compiled.network.kernels) == 1
    assert any("folded" in n for n in comp.compiled.network.notes)


def test_conv_channel_of_variance_zero_keeps_its_constant_output():
    """A BatchNorm channel of running variance 0 (EfficientNet-Lite0 has 130): its conv
    weights are ~1e-9 and its folded bias (-5 / sqrt(eps) * gamma) is huge against them.
    The output is the constant bias in float; without a weight-scale floor the bias saturated
    int32 and the products wrapped the accumulator (garbage instead of the constant)."""
    C = 4
    w = _w(C, 2, 3, 3)
    w[1] = 1e-9 * np.sign(w[1])
    var = 0.5 + np.abs(_w(C))
    var[1] = 0.0
    mean = _w(C)
    mean[1] = 5.0                                   # folded bias of channel 1: about -158
    model = make_model(
        [node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
         node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], epsilon=1e-3)],
        [("x", [1, 2, 6, 6])], ["y"],
        [("W", w), ("g", np.ones(C)), ("b", np.zeros(C)), ("m", mean), ("v", var)])
    worst, comp = steps_off(model, [("x", [1, 2, 6, 6])])
    assert worst <= 2 * TOL
    k = comp.compiled.network.kernels[0]
    assert np.all(np.abs(k.bias) <= 2 ** 30)
    assert not np.any(k.terms[0].b.data[:, 1])      # its weights round to 0: a constant


def test_add_and_mul_of_tensors_and_constants():
    model = make_model([node("Add", ["x", "z"], ["s"]), node("Mul", ["s", "c"], ["t"]),
                        node("Mul", ["t", "z"], ["y"])],
                       [("x", [3, 8]), ("z", [3, 8])], ["y"], [("c", _w(8))])
    worst, comp = steps_off(model, [("x", [3, 8]), ("z", [3, 8])])
    assert worst <= 2 * TOL                       # x*y by ((x+y)^2 - (x-y)^2) / 4: two PWL squares
    assert {k.func for k in comp.compiled.network.kernels} >= {"square"}


def test_product_of_tensors_of_very_different_sizes():
    """Each operand enters the squares normalized by its own magnitude: a 100x smaller factor
    keeps its resolution (with one weight scale for both, it rounded to a few levels)."""
    model = make_model([node("Mul", ["x", "z"], ["y"])], [("x", [4, 16]), ("z", [4, 16])], ["y"])
    cal = [{"x": f["x"] * 100, "z": f["z"] * 0.5} for f in feeds_for([("x", [4, 16]),
                                                                      ("z", [4, 16])])]
    test = {"x": cal[0]["x"][::-1].copy(), "z": cal[1]["z"]}
    comp = compile_model(model, CFG, calib_feeds=cal)
    got = run_golden(comp.compiled, test).outputs["y"]
    ref = test["x"] * test["z"]
    assert np.max(np.abs(got - ref)) / comp.compiled.network.outputs["y"].scale <= 2 * TOL


@pytest.mark.parametrize("shape_b", [[4, 16], [4, 1]], ids=["elementwise", "per-row"])
def test_div_by_a_tensor(shape_b):
    """``a / b``: a PWL reciprocal of b on its calibrated range, then the product (an L2
    normalization divides by a per-row norm: the per-row case)."""
    model = make_model([node("Relu", ["z"], ["zr"]),
                        node("Add", ["zr", "one"], ["d"]), node("Div", ["x", "d"], ["y"])],
                       [("x", [4, 16]), ("z", shape_b)], ["y"], [("one", np.float32(0.5))])
    worst, comp = steps_off(model, [("x", [4, 16]), ("z", shape_b)])
    assert worst <= 2 * TOL
    assert {k.func for k in comp.compiled.network.kernels} >= {"reciprocal", "square"}


def test_div_by_a_tensor_that_reaches_zero_is_an_error():
    model = make_model([node("Div", ["x", "z"], ["y"])], [("x", [4, 16]), ("z", [4, 16])], ["y"])
    from neuralmatrix.sw.lower import LinearizeError

    with pytest.raises(LinearizeError, match=r"Div \(node .*the divisor 'z' takes values in .* "
                                             r"which reach 0"):
        compile_model(model, CFG, calib_feeds=feeds_for([("x", [4, 16]), ("z", [4, 16])]))


# -- element-wise functions ----------------------------------------------------------------------

ACTIVATIONS = {
    "Relu": ({}, 0.0), "LeakyRelu": ({"alpha": 0.1}, 0.0), "Elu": ({}, 0.0), "Selu": ({}, 0.0),
    "Sigmoid": ({}, 0.0), "Tanh": ({}, 0.0), "Softplus": ({}, 0.0), "HardSigmoid": ({}, 0.0),
    "HardSwish": ({}, 0.0), "Erf": ({}, 0.0), "Exp": ({}, 0.0), "Neg": ({}, 0.0),
    "Sqrt": ({}, 3.0), "Reciprocal": ({}, 3.0),
}


@pytest.mark.parametrize("op", list(ACTIVATIONS))
def test_activation(op):
    attrs, offset = ACTIVATIONS[op]
    model = make_model([node(op, ["x"], ["y"], **attrs)], [("x", [4, 16])], ["y"])
    worst, comp = steps_off(model, [("x", [4, 16])], scale=1.0 if offset == 0 else 0.5,
                            offset=offset)
    assert worst <= TOL
    (k,) = comp.compiled.network.kernels
    assert k.role == "linearization"
    assert (k.pwl is None) == (op == "Neg")       # -x is a GEMM with -1 on the diagonal


def test_scalar_multiply_folds_into_the_scale():
    model = make_model([node("Mul", ["x", "c"], ["m"]), node("Div", ["m", "d"], ["y"])],
                       [("x", [4, 16])], ["y"], [("c", np.float32(0.4)), ("d", np.float32(2.0))])
    worst, comp = steps_off(model, [("x", [4, 16])])
    assert worst <= TOL
    assert not comp.compiled.network.kernels


def test_gelu_chain_is_one_table():
    """The exporters' erf form of GELU fuses into one PWL table on the MatMul's output."""
    nodes = [node("MatMul", ["x", "W"], ["h"]), node("Div", ["h", "r2"], ["d"]),
             node("Erf", ["d"], ["e"]), node("Add", ["e", "one"], ["a"]),
             node("Mul", ["half", "a"], ["p"]), node("Mul", ["h", "p"], ["y"])]
    model = make_model(nodes, [("x", [4, 16])], ["y"],
                       [("W", _w(16, 24)), ("r2", np.float32(np.sqrt(2))),
                        ("one", np.float32(1)), ("half", np.float32(0.5))])
    worst, comp = steps_off(model, [("x", [4, 16])])
    assert worst <= TOL
    (k,) = comp.compiled.network.kernels
    assert k.func == "gelu"


def test_clip_and_prelu():
    model = make_model([node("Clip", ["x", "lo", "hi"], ["c"]),
                        node("PRelu", ["c", "slope"], ["y"])],
                       [("x", [1, 3, 4, 4])], ["y"],
                       [("lo", np.float32(-1.5)), ("hi", np.float32(2.0)),
                        ("slope", np.array([[[0.1]], [[0.2]], [[0.3]]], dtype=np.float32))])
    worst, _ = steps_off(model, [("x", [1, 3, 4, 4])])
    assert worst <= 2 * TOL


# -- normalization, softmax, pooling ----------------------------------------------------------------

@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax(op):
    model = make_model([node(op, ["x"], ["y"], axis=-1)], [("x", [2, 3, 16])], ["y"])
    worst, _ = steps_off(model, [("x", [2, 3, 16])], scale=3.0)
    assert worst <= TOL


def test_attention_scores_softmax_uses_the_int32_product():
    model = make_model([node("MatMul", ["q", "k"], ["s"]), node("Softmax", ["s"], ["y"], axis=-1)],
                       [("q", [2, 8, 16]), ("k", [2, 16, 8])], ["y"])
    worst, comp = steps_off(model, [("q", [2, 8, 16]), ("k", [2, 16, 8])])
    assert worst <= 2 * TOL                       # two ops: the scores and the softmax
    exp_kernels = [k for k in comp.compiled.network.kernels if k.func == "exp"]
    assert exp_kernels and all(k.terms[0].a.name.startswith("q") for k in exp_kernels)


def test_layer_norm():
    model = make_model([node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)],
                       [("x", [1, 12, 32])], ["y"], [("g", 1 + _w(32, s=0.3)), ("b", _w(32))])
    worst, comp = steps_off(model, [("x", [1, 12, 32])], scale=3.0, offset=1.0)
    assert worst <= TOL
    assert {k.func for k in comp.compiled.network.kernels} >= {"rsqrt"}


def test_layer_norm_massive_channel(monkeypatch):
    """A LayerNorm input with one massive value (as MiniLM's residual stream has in one
    channel of the [CLS] row, ~200 against ~1): its sum of squares keeps the resolution of
    the ordinary channels (column levels, ``_square_levels``). With ``SQUARE_BUDGET = 1``
    (one scale for every column, the old lowering) the ordinary rows' variances carry the
    massive channel's rounding noise and come out tens of percent high."""
    from neuralmatrix.sw.lower import layernorm

    massive = np.zeros((1, 16, 256))
    massive[0, 0, 5] = 200.0
    model = make_model([node("Add", ["x", "m"], ["s"]),
                        node("LayerNormalization", ["s", "g", "b"], ["y"], axis=-1)],
                       [("x", [1, 16, 256])], ["y"],
                       [("m", massive), ("g", np.ones(256)), ("b", np.zeros(256))])
    cal = feeds_for([("x", [1, 16, 256])], n=8, seed=0)
    test = feeds_for([("x", [1, 16, 256])], n=1, seed=99)[0]
    ref = ReferenceEvaluator(model).run(None, test)[0][0]
    ratio = {}
    for budget in (1.0, layernorm.SQUARE_BUDGET):
        monkeypatch.setattr(layernorm, "SQUARE_BUDGET", budget)
        got = run_golden(compile_model(model, CFG, calib_feeds=cal).compiled, test).outputs["y"][0]
        ratio[budget] = np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert np.abs(ratio[1.0][1:] - 1).mean() > 0.05          # the check can fail
    assert np.abs(ratio[layernorm.SQUARE_BUDGET] - 1).max() <= 0.03, ratio


POOLS = {
    "MaxPool 2x2": node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    "MaxPool 3x3 pad 1": node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "AveragePool 2x2": node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    "GlobalAveragePool": node("GlobalAveragePool", ["x"], ["y"]),
}


@pytest.mark.parametrize("case", list(POOLS))
def test_pooling(case):
    model = make_model([POOLS[case]], [("x", [1, 3, 6, 6])], ["y"])
    worst, _ = steps_off(model, [("x", [1, 3, 6, 6])])
    assert worst <= TOL


def test_data_movement():
    """Reshape, Transpose, Concat, Slice, Gather, Split, Flatten: host gathers, exact."""
    nodes = [node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
             node("Reshape", ["t", "shape"], ["r"]),
             node("Slice", ["r", "starts", "ends", "axes"], ["s"]),
             node("Gather", ["s", "idx"], ["g"], axis=1),
             node("Concat", ["g", "g"], ["c"], axis=0),
             node("Split", ["c"], ["y0", "y1"], axis=1),
             node("Flatten", ["y1"], ["y"])]
    model = make_model(nodes, [("x", [1, 4, 6])], ["y0", "y"],
                       [("shape", np.array([6, 4], dtype=np.int64)),
                        ("starts", np.array([1], dtype=np.int64)),
                        ("ends", np.array([5], dtype=np.int64)),
                        ("axes", np.array([0], dtype=np.int64)),
                        ("idx", np.array([3, 0, 2, 2], dtype=np.int64))])
    worst, comp = steps_off(model, [("x", [1, 4, 6])])
    assert worst <= 0.5 + 1e-6                     # the input rounding only
    assert not comp.compiled.network.kernels


def test_tolerance_catches_a_wrong_result(monkeypatch):
    """The check is not vacuous: a softmax over the wrong axis is many steps off."""
    model = make_model([node("Softmax", ["x"], ["y"], axis=-1)], [("x", [4, 16])], ["y"])
    wrong = make_model([node("Softmax", ["x"], ["y"], axis=0)], [("x", [4, 16])], ["y"])
    cal = feeds_for([("x", [4, 16])], 3.0)
    test = feeds_for([("x", [4, 16])], 3.0, n=1, seed=5)[0]
    comp = compile_model(wrong, CFG, calib_feeds=cal)
    got = run_golden(comp.compiled, test).outputs["y"]
    ref = ReferenceEvaluator(model).run(None, test)[0]
    assert np.max(np.abs(got - ref)) / comp.compiled.network.outputs["y"].scale > 10 * TOL


def test_results_do_not_depend_on_the_array():
    """The integers are the same on every array size and dataflow (int32 sums are exact,
    requantization and tables are per column and per kernel)."""
    model = make_model([node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
                        node("Relu", ["c"], ["r"]),
                        node("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
                        node("Flatten", ["m"], ["f"]), node("Gemm", ["f", "W2"], ["g"]),
                        node("Softmax", ["g"], ["y"])],
                       [("x", [1, 2, 8, 8])], ["y"], [("W", _w(8, 2, 3, 3)), ("W2", _w(128, 10))])
    cal = feeds_for([("x", [1, 2, 8, 8])])
    test = feeds_for([("x", [1, 2, 8, 8])], n=1, seed=9)[0]
    outs = []
    for cfg in (HwConfig(), HwConfig(rows=16, cols=16), HwConfig(dataflow="os")):
        comp = compile_model(model, cfg, calib_feeds=cal)
        outs.append(run_golden(comp.compiled, test).raw["y"])
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


# -- report ----------------------------------------------------------------------------------------

def test_report_linearization_percentage():
    """MaxPool is linearization work: max(a, b) = a + relu(b - a) costs GEMMs with diagonal
    weights; the report's percentage is their structural MACs over the useful ones, and the
    zeros of the diagonals are padding."""
    model = make_model([node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
                        node("MaxPool", ["c"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
                       [("x", [1, 3, 8, 8])], ["y"], [("W", _w(8, 3, 3, 3))])
    _, comp = steps_off(model, [("x", [1, 3, 8, 8])])
    rep = comp.report
    lin = sum(k["useful_macs"] for k in rep["kernels"] if k["role"] == "linear")
    extra = sum(k["linearization_macs"] for k in rep["kernels"] if k["role"] == "linearization")
    assert lin == 64 * 27 * 8                      # M=64 pixels, K=3*3*3, N=8 channels
    assert extra > 0
    tot = rep["totals"]
    assert tot["useful_macs"] == lin and tot["linearization_macs"] == extra
    assert tot["linearization_pct"] == round(100 * extra / lin, 3)
    assert tot["executed_macs"] == tot["useful_macs"] + extra + tot["padding_macs"]
    assert tot["padding_macs"] > 0                 # off-diagonal zeros of the diagonal weights
    assert rep == {**report(comp.compiled), "compile_seconds": rep["compile_seconds"],
                   "phase_seconds": rep["phase_seconds"], "calibration": rep["calibration"]}
    phases = rep["phase_seconds"]
    assert list(phases) == ["frontend", "calibration", "linearization", "codegen"]
    assert all(v >= 0 for v in phases.values())
    assert sum(phases.values()) == pytest.approx(rep["compile_seconds"], abs=0.005)


# -- errors ----------------------------------------------------------------------------------------

def _unsupported_model(tmp_path):
    model = make_model([node("Relu", ["x"], ["r"]), node("Hardmax", ["r"], ["h"], name="hm"),
                        node("Round", ["x"], ["l"], name="rnd"), node("Add", ["h", "l"], ["y"])],
                       [("x", [1, 4, 3, 3])], ["y"])
    for i, n in enumerate(model.graph.node):
        n.name = n.name or f"n{i}"
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    return path


def test_unsupported_ops_listed_and_nothing_written(tmp_path, capsys):
    path = _unsupported_model(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["compile", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "2 unsupported operators" in err
    assert 'Hardmax (node "hm")' in err and 'Round (node "rnd")' in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]
    with pytest.raises(UnsupportedOpsError):
        compile_model(str(path), CFG)


def test_layer_too_big_for_the_scratchpad(tmp_path):
    model = make_model([node("MatMul", ["x", "W"], ["y"], name="big")], [("x", [4, 64])], ["y"],
                       [("W", _w(64, 16))])
    with pytest.raises(CompileError, match=r"layer 'big' .*GEMM 4x64x16.* does not fit .*sp_depth 16"):
        compile_model(model, HwConfig(sp_depth=16, acc_depth=16))


def test_compile_digits_writes_the_artefacts(tmp_path, capsys):
    out = tmp_path / "digits"
    assert cli.main(["compile", "digits", "-o", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["image.bin", "network.json", "program.bin", "quant.json", "report.json",
                     "report.txt", "transfers.npz"]
    rep = json.loads((out / "report.json").read_text())
    net = json.loads((out / "network.json").read_text())
    assert rep["totals"]["kernels"] == sum(s["kind"] == "kernel" for s in net["steps"]) > 0
    assert (out / "image.bin").stat().st_size == net["dram_bytes"]
    assert (out / "program.bin").stat().st_size == rep["totals"]["program_bytes"]
    assert "per layer" in (out / "report.txt").read_text()
    assert "compiled in" in capsys.readouterr().err
    kernels = [s for s in net["steps"] if s["kind"] == "kernel"]
    quant = json.loads((out / "quant.json").read_text())
    assert set(quant["kernels"]) == {k["name"] for k in kernels}
    assert any("pwl" in q for q in quant["kernels"].values())


# -- calibration ---------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["onnxruntime", "reference"])
def test_calibration_records_every_tensor(engine, monkeypatch):
    """Extremes, per-column and per-row magnitudes of every intermediate tensor, from
    onnxruntime and from the reference evaluator it falls back to, against numpy."""
    from neuralmatrix.sw import quantize
    from neuralmatrix.sw.frontend import load_model

    if engine == "reference":       # onnxruntime refusing the model: the fallback runs
        import onnxruntime
        from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtRefusal

        def refuse(*args, **kwargs):
            raise OrtRefusal("not this model")

        monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    w = _w(16, 8)
    model = make_model([node("MatMul", ["x", "w"], ["h"]), node("Relu", ["h"], ["y"])],
                       [("x", [2, 5, 16])], ["y"], [("w", w)])
    feeds = feeds_for([("x", [2, 5, 16])], n=3)
    ranges = quantize.calibrate(load_model(model), feeds)
    h = np.stack([f["x"].astype(np.float64) @ w for f in feeds])      # (feed, 2, 5, 8)
    for name, v in (("h", h), ("y", np.maximum(h, 0))):
        r = ranges[name]
        np.testing.assert_allclose([r.lo, r.hi], [v.min(), v.max()], rtol=1e-5)
        np.testing.assert_allclose(r.colmax, np.abs(v).max(axis=(0, 1, 2)), rtol=1e-5)
        np.testing.assert_allclose(r.rowmax, np.abs(v).max(axis=(0, 1, 3)), rtol=1e-5)
        np.testing.assert_allclose(r.rowmin, np.abs(v).min(axis=(0, 1, 3)), rtol=1e-5, atol=1e-6)
        assert r.sample.size == v.size


def test_calibration_falls_back_when_onnxruntime_refuses_to_run():
    """A per-channel PRelu slope of shape (C,) on (N, C, L) (old PyTorch exports): onnxruntime
    loads the model but refuses the broadcast when it runs; the reference evaluator, which
    applies such a slope along the channels, calibrates it."""
    from neuralmatrix.sw import quantize
    from neuralmatrix.sw.frontend import load_model

    slope = np.array([0.1, 0.2, 0.3], dtype=np.float32)
    model = make_model([node("PRelu", ["x", "s"], ["y"])], [("x", [2, 3, 4])], ["y"],
                       [("s", slope)])
    feeds = feeds_for([("x", [2, 3, 4])], n=2)
    ranges = quantize.calibrate(load_model(model), feeds)
    ref = ReferenceEvaluator(model)
    ys = np.stack([ref.run(None, f)[0] for f in feeds])
    np.testing.assert_allclose([ranges["y"].lo, ranges["y"].hi], [ys.min(), ys.max()], rtol=1e-6)


def test_calibration_names_a_tensor_that_is_not_finite():
    model = make_model([node("Sqrt", ["x"], ["y"])], [("x", [1, 8])], ["y"])
    with pytest.raises(CompileError, match=r"tensor 'y' \(Sqrt node .*\) is not finite"):
        compile_model(model, CFG, calib_feeds=feeds_for([("x", [1, 8])], n=2))


def test_segments_per_function_kind(tmp_path, capsys):
    """``--func-segments`` (``func_segments``): a kind gets its own segment count, the others
    keep ``--segments``; an unknown kind or a malformed list is an error, nothing written."""
    from neuralmatrix.sw.lower import LinearizeError

    model = make_model([node("Sigmoid", ["x"], ["s"]), node("MatMul", ["s", "w"], ["m"]),
                        node("Tanh", ["m"], ["t"]), node("MatMul", ["t", "w"], ["u"]),
                        node("Exp", ["u"], ["y"])],
                       [("x", [4, 16])], ["y"], [("w", _w(16, 16, s=0.2))])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    out = tmp_path / "out"
    assert cli.main(["compile", str(path), "--func-segments", "sigmoid=4, exp=8",
                     "-o", str(out)]) == 0
    kernels = json.loads((out / "report.json").read_text())["kernels"]
    assert {k["pwl"]: k["segments"] for k in kernels if k["pwl"]} == \
        {"sigmoid": 4, "tanh": 16, "exp": 8}
    with pytest.raises(LinearizeError, match="unknown function kind.*softmax.*known: .*rsqrt"):
        compile_model(model, CFG, calib_feeds=feeds_for([("x", [4, 16])]),
                      func_segments={"softmax": 8})
    capsys.readouterr()
    for bad in ("sigmoid", "sigmoid=four", "=3"):
        assert cli.main(["compile", str(path), "--func-segments", bad,
                         "-o", str(tmp_path / "bad")]) == 2
        assert "--func-segments: expected KIND=N" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
