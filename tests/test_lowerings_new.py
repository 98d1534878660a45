"""Lowerings of issue 11 against onnxruntime: AveragePool / MaxPool with count_include_pad=0,
ceil_mode, asymmetric and SAME pads, 1-D / 3-D pooling, LRN, 3-D Conv, Pad with a constant
and Gemm with an activation as C. Each graph is compiled for an 8x8 array, calibrated on a few
random inputs, run on the golden model and compared with onnxruntime on another input: within
4 int8 steps of the output's range."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sw.compiler import compile_model
from neuralmatrix.sw.runtime import run_golden

TOL_STEPS = 4.0


def _model(nodes, inputs, out_shape, inits=(), opset=17):
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                           for n, s in inputs],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k)
                           for k, v in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _check(model, inputs, seed=0, relu_inputs=False):
    rng = np.random.default_rng(seed)

    def feed():
        f = {n: rng.standard_normal(s).astype(np.float32) for n, s in inputs}
        return {n: np.abs(v) for n, v in f.items()} if relu_inputs else f

    calib = [feed() for _ in range(4)]
    test = feed()
    comp = compile_model(model, HwConfig(rows=8, cols=8), calib_feeds=calib + [test])
    got = run_golden(comp.compiled, test).outputs["y"]
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, test)[0]
    got = got.reshape(ref.shape)
    step = float(np.max(np.abs(ref))) / 127
    err = float(np.max(np.abs(got - ref)))
    assert err <= TOL_STEPS * step, f"max error {err / step:.2f} int8 steps"
    return comp


def _pool_shape(inp, ks, strides, pads, ceil, dil=None):
    sp = len(ks)
    dil = dil or [1] * sp
    out = []
    for d in range(sp):
        span = inp[2 + d] + pads[d] + pads[d + sp] - dil[d] * (ks[d] - 1) - 1
        o = (-(-span // strides[d]) if ceil else span // strides[d]) + 1
        if ceil and (o - 1) * strides[d] >= inp[2 + d] + pads[d]:
            o -= 1
        out.append(o)
    return list(inp[:2]) + out


POOLS = [  # input shape, kernel, strides, pads, ceil_mode, count_include_pad
    ([1, 3, 7, 7], [3, 3], [1, 1], [1, 1, 1, 1], 0, 0),
    ([1, 4, 8, 8], [3, 3], [2, 2], [1, 1, 1, 1], 0, 0),
    ([1, 3, 7, 7], [2, 2], [2, 2], [0, 0, 0, 0], 1, 0),
    ([1, 3, 7, 7], [2, 2], [2, 2], [0, 0, 0, 0], 1, 1),
    ([1, 3, 6, 7], [3, 2], [2, 1], [0, 1, 2, 0], 0, 0),
    ([1, 3, 6, 7], [3, 2], [2, 1], [0, 1, 2, 0], 0, 1),
    ([1, 2, 9], [3], [2], [1, 1], 1, 0),
    ([1, 2, 4, 5, 5], [2, 3, 3], [1, 2, 2], [0, 1, 1, 1, 1, 1], 0, 0),
    ([1, 2, 4, 5, 5], [2, 2, 2], [2, 2, 2], [0, 0, 0, 0, 0, 0], 1, 1),
]


@pytest.mark.parametrize("op", ["AveragePool", "MaxPool"])
@pytest.mark.parametrize("shape,ks,strides,pads,ceil,cip", POOLS)
def test_pooling(op, shape, ks, strides, pads, ceil, cip):
    extra = {"count_include_pad": cip} if op == "AveragePool" else {}
    node = helper.make_node(op, ["x"], ["y"], kernel_shape=ks, strides=strides, pads=pads,
                            ceil_mode=ceil, **extra)
    # MaxPool on inputs of one sign (after a ReLU, as in CNNs): each max of the tree is
    # exact there; on signed inputs every level may be one step low (sw/ACCURACY.md).
    _check(_model([node], [("x", shape)], _pool_shape(shape, ks, strides, pads, ceil)),
           [("x", shape)], relu_inputs=op == "MaxPool")


@pytest.mark.parametrize("auto", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("op", ["AveragePool", "MaxPool"])
def test_pooling_same_pads(op, auto):
    shape = [1, 3, 6, 6]
    node = helper.make_node(op, ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                            auto_pad=auto)
    _check(_model([node], [("x", shape)], [1, 3, 3, 3]), [("x", shape)],
           relu_inputs=op == "MaxPool")


@pytest.mark.parametrize("size,alpha,beta,bias,C", [(5, 1e-4, 0.75, 1.0, 8), (3, 0.5, 0.75, 2.0, 6),
                                                  (5, 0.1, 0.5, 1.0, 7)])
def test_lrn(size, alpha, beta, bias, C):
    shape = [1, C, 5, 5]
    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=alpha, beta=beta, bias=bias)
    comp = _check(_model([node], [("x", shape)], shape), [("x", shape)])
    assert any(k["pwl"] == "lrn" for k in comp.report["kernels"])


@pytest.mark.parametrize("shape,wshape,kw", [
    ([1, 2, 4, 5, 5], [3, 2, 2, 3, 3], {"pads": [0, 1, 1, 1, 1, 1]}),
    ([1, 4, 5, 6, 6], [4, 2, 3, 3, 3], {"group": 2, "strides": [1, 2, 2]}),
    ([1, 3, 4, 4, 4], [3, 1, 2, 2, 2], {"group": 3, "dilations": [2, 1, 1]}),
    ([1, 3, 9], [4, 3, 3], {"pads": [2, 1], "strides": [2]}),
])
def test_conv_nd(shape, wshape, kw):
    rng = np.random.default_rng(7)
    w = rng.standard_normal(wshape).astype(np.float32) * 0.3
    b = rng.standard_normal(wshape[0]).astype(np.float32) * 0.1
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], **kw)
    probe = _model([node], [("x", shape)], None, [("w", w), ("b", b)])
    import onnx

    out = onnx.shape_inference.infer_shapes(probe).graph.output[0]
    out_shape = [d.dim_value for d in out.type.tensor_type.shape.dim]
    _check(_model([node], [("x", shape)], out_shape, [("w", w), ("b", b)]), [("x", shape)])


@pytest.mark.parametrize("value", [0.5, -1.25, 10.0])
def test_pad_constant_value(value):
    shape = [1, 3, 4, 5]
    pads = np.array([0, 0, 1, 2, 0, 1, 2, 0], np.int64)
    node = helper.make_node("Pad", ["x", "pads", "v"], ["y"], mode="constant")
    model = _model([node], [("x", shape)], [1, 4, 7, 7], [("v", np.array(value))])
    model.graph.initializer.append(numpy_helper.from_array(pads, "pads"))
    _check(model, [("x", shape)])


def test_pad_then_conv_keeps_the_value():
    """A non-zero pad value feeding a convolution (the value reaches the GEMM)."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((2, 3, 3, 3)) * 0.3).astype(np.float32)
    pads = np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)
    nodes = [helper.make_node("Pad", ["x", "pads", "v"], ["p"], mode="constant"),
             helper.make_node("Conv", ["p", "w"], ["y"])]
    model = _model(nodes, [("x", [1, 3, 5, 5])], [1, 2, 5, 5], [("v", np.array(2.0)), ("w", w)])
    model.graph.initializer.append(numpy_helper.from_array(pads, "pads"))
    _check(model, [("x", [1, 3, 5, 5])])


@pytest.mark.parametrize("const_b,c_shape,beta,trans_b", [
    (True, [4, 6], 1.0, 0), (True, [1, 6], 0.5, 1), (False, [4, 6], -1.0, 0),
    (False, [6], 2.0, 1)])
def test_gemm_with_activation_c(const_b, c_shape, beta, trans_b):
    rng = np.random.default_rng(5)
    b_shape = [6, 5] if trans_b else [5, 6]
    inits = [("b", rng.standard_normal(b_shape) * 0.4)] if const_b else []
    inputs = [("a", [4, 5]), ("c", c_shape)] + ([] if const_b else [("b", b_shape)])
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=0.75, beta=beta,
                            transB=trans_b)
    _check(_model([node], inputs, [4, 6], inits), inputs)
