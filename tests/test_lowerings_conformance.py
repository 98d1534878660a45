"""Lowerings fixed for ONNX's node test cases (sw/CONFORMANCE.md), against onnxruntime:
empty tensors, a Concat with an empty part, PRelu and Mul by constants varying along
several axes, Where and GatherND with constant condition / indices, Pad with an axes input,
MatMul of 1-D operands, Gemm with a matrix C, LayerNorm over short rows, and a reciprocal
of a tensor of both signs (a pole inside the PWL range). Each graph is compiled for an 8x8
array, calibrated on a few random inputs and run on the golden model on another input:
within 4 int8 steps of the output's range (tests/test_lowerings_new.py's check)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sw.compiler import compile_model
from neuralmatrix.sw.lower import LinearizeError
from neuralmatrix.sw.runtime import run_golden
from test_lowerings_new import _check, _model


def _init(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _with_inits(model, inits):
    model.graph.initializer.extend(inits)
    return model


@pytest.mark.parametrize("slope_shape", [(3, 4, 5), (5,), (4, 1)])
def test_prelu_slope_of_any_broadcast(slope_shape):
    slope = np.random.default_rng(1).uniform(0.05, 0.5, slope_shape)
    m = _model([helper.make_node("PRelu", ["x", "s"], ["y"])], [("x", [3, 4, 5])], [3, 4, 5],
               [("s", slope)])
    _check(m, [("x", [3, 4, 5])])


@pytest.mark.parametrize("const_shape", [(4, 1), (3, 1, 5), (4, 5)])
def test_mul_by_a_constant_varying_along_axes(const_shape):
    c = np.random.default_rng(2).uniform(0.5, 2.0, const_shape)
    m = _model([helper.make_node("Mul", ["x", "c"], ["y"])], [("x", [3, 4, 5])], [3, 4, 5],
               [("c", c)])
    _check(m, [("x", [3, 4, 5])])


def test_where_with_a_constant_condition():
    cond = np.random.default_rng(3).random((3, 4)) > 0.5
    m = _model([helper.make_node("Where", ["c", "a", "b"], ["y"])],
               [("a", [3, 4]), ("b", [3, 4])], [3, 4])
    _check(_with_inits(m, [_init("c", cond, bool)]), [("a", [3, 4]), ("b", [3, 4])])


def test_gather_nd_by_constant_indices():
    m = _model([helper.make_node("GatherND", ["x", "i"], ["y"])], [("x", [2, 3, 4])], [2, 1, 4])
    _check(_with_inits(m, [_init("i", [[[0, 1]], [[1, -1]]], np.int64)]), [("x", [2, 3, 4])])


def test_pad_with_an_axes_input():
    m = _model([helper.make_node("Pad", ["x", "p", "", "a"], ["y"])], [("x", [2, 3, 4])],
               [2, 6, 4], opset=18)
    _check(_with_inits(m, [_init("p", [1, 2], np.int64), _init("a", [-2], np.int64)]),
           [("x", [2, 3, 4])])


@pytest.mark.parametrize("a,b,out", [([4], [2, 4, 3], [2, 3]), ([2, 3, 4], [4], [2, 3])])
def test_matmul_of_a_1d_operand(a, b, out):
    m = _model([helper.make_node("MatMul", ["a", "b"], ["y"])], [("a", a), ("b", b)], out)
    _check(m, [("a", a), ("b", b)])


@pytest.mark.parametrize("c_shape", [(3, 4), (3, 1)])
def test_gemm_with_a_matrix_c(c_shape):
    rng = np.random.default_rng(4)
    m = _model([helper.make_node("Gemm", ["x", "w", "c"], ["y"])], [("x", [3, 5])], [3, 4],
               [("w", rng.standard_normal((5, 4))), ("c", rng.standard_normal(c_shape))])
    _check(m, [("x", [3, 5])])


def test_layer_norm_margin_shrinks_with_the_row_length():
    from neuralmatrix.sw.lower.layernorm import SQUARE_MARGIN, square_margin

    assert square_margin(5) == 1.0 and square_margin(384) == SQUARE_MARGIN
    assert 1.0 < square_margin(64) < SQUARE_MARGIN


@pytest.mark.parametrize("case", ["test_layer_normalization_4d_axis_negative_1",
                                  "test_layer_normalization_3d_axis_negative_1_epsilon",
                                  "test_reciprocal_example", "test_rotary_embedding_expanded"])
def test_node_cases_that_failed(case):
    # Rows of 5 elements (9.0 and 4.7 steps before the row-length margin), a reciprocal
    # with a pole in its range (255 steps before the clipped fit), an empty Split part.
    from neuralmatrix.sw.conformance import node_cases, run_case

    by_name = {c.name: c for c in node_cases()}
    row = run_case(by_name[case], by_name=by_name)
    assert row["status"] == "pass", row


def test_reciprocal_of_a_tensor_of_both_signs():
    # |x| >= 0.5 but of both signs: 1/x has a pole inside the table's range.
    m = _model([helper.make_node("Reciprocal", ["x"], ["y"])], [("x", [16])], [16])
    x = np.concatenate([np.linspace(-4, -0.5, 8), np.linspace(0.5, 4, 8)]).astype(np.float32)
    comp = compile_model(m, HwConfig(rows=8, cols=8), calib_feeds=[{"x": x}])
    got = run_golden(comp.compiled, {"x": x}).outputs["y"].reshape(-1)
    step = float(np.max(np.abs(1 / x))) / 127
    assert np.max(np.abs(got - 1 / x)) <= 4 * step


def _concat_empty_model():
    return _model([helper.make_node("Split", ["x", "s"], ["p", "q"], axis=1),
                   helper.make_node("Concat", ["p", "q"], ["y"], axis=1)],
                  [("x", [2, 4])], [2, 4], opset=18)


def test_an_empty_part_of_a_concat_adds_nothing():
    m = _with_inits(_concat_empty_model(), [_init("s", [4, 0], np.int64)])
    _check(m, [("x", [2, 4])])


def test_an_empty_output_is_computed_as_nothing():
    m = _model([helper.make_node("Slice", ["x", "st", "en"], ["y"])], [("x", [3, 4])], [3, 0])
    m = _with_inits(m, [_init("st", [0, 5], np.int64), _init("en", [3, 9], np.int64)])
    x = np.ones((3, 4), np.float32)
    comp = compile_model(m, HwConfig(rows=8, cols=8), calib_feeds=[{"x": x}])
    assert run_golden(comp.compiled, {"x": x}).outputs["y"].size == 0


def test_a_reduction_over_an_empty_tensor_is_one_clear_error():
    m = _model([helper.make_node("ReduceSum", ["x", "ax"], ["y"], keepdims=1)],
               [("x", [2, 0, 4])], [2, 1, 4])
    m = _with_inits(m, [_init("ax", [1], np.int64)])
    with pytest.raises(LinearizeError, match=r"ReduceSum \(node .*no elements"):
        compile_model(m, HwConfig(rows=8, cols=8),
                      calib_feeds=[{"x": np.zeros((2, 0, 4), np.float32)}])
