"""ONNX frontend: reading, opset conversion, static shapes, folding, unsupported-op report."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from neuralmatrix.sw import frontend
from neuralmatrix.sw.frontend import (
    MAX_OPSET, MIN_OPSET, FrontendError, UnsupportedOpsError, load_model, unsupported_ops,
)
from neuralmatrix.sw.models.digits import MODEL_PATH as DIGITS_MODEL

FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


def _model(nodes, inputs, outputs, initializers=(), opset=17, domains=()):
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8 if opset >= 11 else 4
    return model


def _vi(name, shape, dtype=FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _run(model, feeds):
    return ReferenceEvaluator(model).run(None, feeds)


def _assert_all_static(model):
    onnx.checker.check_model(model)
    graph = model.graph
    infos = {vi.name: vi for vi in [*graph.input, *graph.value_info, *graph.output]}
    constants = {t.name for t in graph.initializer}
    names = [vi.name for vi in graph.input] + [o for n in graph.node for o in n.output if o]
    for name in names:
        if name in constants:
            continue
        dims = infos[name].type.tensor_type.shape.dim
        assert infos[name].type.tensor_type.HasField("shape"), name
        assert all(d.HasField("dim_value") for d in dims), name


def _ops(model):
    return [node.op_type for node in model.graph.node]


# -- unsupported operators ----------------------------------------------------------------


def _three_unsupported():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("TopK", ["r", "k"], ["v", "i"], name="/topk/TopK"),
        helper.make_node("NonZero", ["v"], ["nz"], name="/nz/NonZero"),
        helper.make_node("MyOp", ["v"], ["c"], domain="com.example"),  # unnamed: node #3
        helper.make_node("Add", ["c", "v"], ["y"], name="add"),
    ]
    return _model(nodes, [_vi("x", ["N", 4])],
                  [_vi("y", ["N", 2]), _vi("nz", [2, "K"], INT64)],
                  [_const("k", [2])], domains=["com.example"])


def test_every_unsupported_op_is_listed():
    with pytest.raises(UnsupportedOpsError) as info:
        load_model(_three_unsupported())
    expected = [("TopK", "/topk/TopK"), ("NonZero", "/nz/NonZero"), ("com.example:MyOp", "#3")]
    assert info.value.unsupported == expected
    message = str(info.value)
    assert message.startswith("model 'test': 3 unsupported operators")
    assert 'TopK (node "/topk/TopK")' in message
    assert 'NonZero (node "/nz/NonZero")' in message
    assert "com.example:MyOp (unnamed node #3)" in message
    assert "Relu" not in message and "Add" not in message
    assert isinstance(info.value, FrontendError)
    assert unsupported_ops(_three_unsupported()) == expected


def test_unsupported_op_on_constants_folds_away():
    nodes = [helper.make_node("NonZero", ["mask"], ["idx"], name="/nz"),
             helper.make_node("Cast", ["idx"], ["f"], to=FLOAT),
             helper.make_node("ReduceSum", ["f"], ["s"], keepdims=0),
             helper.make_node("Mul", ["x", "s"], ["y"])]
    model = _model(nodes, [_vi("x", [3])], [_vi("y", [3])],
                   [_const("mask", [[1, 0], [1, 1]], np.int32)])
    loaded = load_model(model)
    assert _ops(loaded) == ["Mul"]
    x = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(_run(loaded, {"x": x})[0], _run(model, {"x": x})[0])


# -- reading and opsets -------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "missing.onnx"
    with pytest.raises(FrontendError, match="missing.onnx: no such file"):
        load_model(path)


@pytest.mark.parametrize("data", [b"\x00\xffgarbage, not a protobuf\x13\x37", b"", b"\x08\x07"])
def test_garbage_names_the_path(tmp_path, data):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(data)
    with pytest.raises(FrontendError, match="garbage.onnx: not an ONNX model"):
        load_model(str(path))


def test_external_data_is_read_next_to_the_model(tmp_path, monkeypatch):
    weight = np.arange(12, dtype=np.float32).reshape(4, 3)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                   [_vi("x", [2, 4])], [_vi("y", [2, 3])], [numpy_helper.from_array(weight, "w")])
    onnx.save_model(model, tmp_path / "m.onnx", save_as_external_data=True,
                    location="m.weights", size_threshold=0)
    assert (tmp_path / "m.weights").exists()
    monkeypatch.chdir(tmp_path.parent)
    loaded = load_model(tmp_path / "m.onnx")
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), weight)


def test_opset9_is_converted():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "m"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["y"])]
    inits = [numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(rng.standard_normal((64, 5)).astype(np.float32), "m"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b")]
    model = _model(nodes, [_vi("x", [1, 2, 4, 4])], [_vi("y", [1, 5])], inits, opset=9)
    loaded = load_model(model)
    assert [(o.domain, o.version) for o in loaded.opset_import] == [("", frontend.CONVERT_TO_OPSET)]
    assert _ops(loaded) == ["Conv", "Relu", "Flatten", "MatMul", "Add"]
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(loaded, {"x": x})[0], _run(model, {"x": x})[0], rtol=1e-6)


def test_failed_conversion_is_a_frontend_error():
    model = _model([helper.make_node("NoSuchOp", ["x"], ["y"])], [_vi("x", [2])], [_vi("y", [2])],
                   opset=9)
    with pytest.raises(FrontendError, match=r"converting opset 9 to opset 17 \(the frontend reads 11..21\) failed; blocked by NoSuchOp"):
        load_model(model)


def test_initializers_listed_as_inputs_are_not_inputs():
    model = _model([helper.make_node("Add", ["x", "b"], ["y"])],
                   [_vi("x", [2]), _vi("b", [2])], [_vi("y", [2])],
                   [_const("b", [1, 2], np.float32)], opset=9)
    model.ir_version = 3
    loaded = load_model(model)
    assert [vi.name for vi in loaded.graph.input] == ["x"]
    onnx.checker.check_model(loaded)


@pytest.mark.parametrize("opset", [22, 23])
def test_new_opset_converted_down(opset):
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [2])], [_vi("y", [2])],
                   opset=opset)
    model.ir_version = 10
    loaded = load_model(model)
    assert [o.version for o in loaded.opset_import if o.domain == ""] == [frontend.MAX_OPSET]


def test_checker_failure_is_a_frontend_error():
    model = _model([helper.make_node("Relu", ["x", "x"], ["y"])], [_vi("x", [2])], [_vi("y", [2])])
    with pytest.raises(FrontendError, match="checker"):
        load_model(model)


def test_caller_model_is_not_modified():
    nodes = [helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Relu", ["i"], ["y"])]
    model = _model(nodes, [_vi("x", ["N", 2])], [_vi("y", ["N", 2])])
    before = model.SerializeToString()
    load_model(model)
    assert model.SerializeToString() == before


# -- static shapes ------------------------------------------------------------------------


def _dynamic_batch():
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])]
    return _model(nodes, [_vi("x", ["batch", 4])], [_vi("y", ["batch", 3])],
                  [numpy_helper.from_array(w, "w")])


def _shape(vi):
    return tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)


def test_dynamic_batch_from_input_shapes():
    loaded = load_model(_dynamic_batch(), input_shapes={"x": (5, 4)})
    assert _shape(loaded.graph.input[0]) == (5, 4)
    assert _shape(loaded.graph.output[0]) == (5, 3)
    _assert_all_static(loaded)


def test_dynamic_batch_from_default_dim():
    loaded = load_model(_dynamic_batch(), default_dim=2)
    assert _shape(loaded.graph.input[0]) == (2, 4)
    assert _shape(loaded.graph.output[0]) == (2, 3)
    _assert_all_static(loaded)


@pytest.mark.parametrize("shapes, match", [
    ({"z": (1, 4)}, r"input_shapes names \['z'\], which are not graph inputs"),
    ({"x": (1, 4, 1)}, r"does not fit its declared shape \('\?', 4\)"),
    ({"x": (1, 5)}, "does not fit"),
])
def test_bad_input_shapes(shapes, match):
    with pytest.raises(FrontendError, match=match):
        load_model(_dynamic_batch(), input_shapes=shapes)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_default_dim(bad):
    with pytest.raises(ValueError, match="default_dim must be a positive integer"):
        load_model(_dynamic_batch(), default_dim=bad)


# -- folding ------------------------------------------------------------------------------


def _torch_reshape_chain():
    """``x.view(x.size(0), -1) @ w`` as the torch exporter writes it."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="/Shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0, name="/Gather"),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="/Unsqueeze"),
        helper.make_node("Concat", ["n1", "minus1"], ["newshape"], axis=0, name="/Concat"),
        helper.make_node("Reshape", ["x", "newshape"], ["flat"], name="/Reshape"),
        helper.make_node("MatMul", ["flat", "w"], ["y"], name="/MatMul"),
    ]
    w = np.random.default_rng(1).standard_normal((12, 5)).astype(np.float32)
    inits = [_const("zero", 0), _const("axes0", [0]), _const("minus1", [-1]),
             numpy_helper.from_array(w, "w")]
    return _model(nodes, [_vi("x", ["batch", 3, 2, 2])], [_vi("y", ["batch", 5])], inits)


def test_torch_shape_chain_folds():
    model = _torch_reshape_chain()
    loaded = load_model(model, input_shapes={"x": (3, 3, 2, 2)})
    assert _ops(loaded) == ["Reshape", "MatMul"]
    reshape = loaded.graph.node[0]
    constants = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    np.testing.assert_array_equal(constants[reshape.input[1]], [3, -1])
    assert set(constants) == {reshape.input[1], "w"}
    _assert_all_static(loaded)
    x = np.random.default_rng(2).standard_normal((3, 3, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(_run(loaded, {"x": x})[0], _run(model, {"x": x})[0])


def test_mask_chain_folds():
    """Range / ConstantOfShape / Equal / Where / Cast / Expand on shapes all fold."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["len"], axis=0),
        helper.make_node("Range", ["zero", "len", "one"], ["pos"]),
        helper.make_node("Cast", ["pos"], ["posf"], to=FLOAT),
        helper.make_node("Unsqueeze", ["len", "axes0"], ["len1"]),
        helper.make_node("ConstantOfShape", ["len1"], ["ones"],
                         value=helper.make_tensor("v", INT64, [1], [1])),
        helper.make_node("Equal", ["ones", "pos"], ["is1"]),
        helper.make_node("Where", ["is1", "big", "posf"], ["bias"]),
        helper.make_node("Size", ["x"], ["n"]),
        helper.make_node("Cast", ["n"], ["nf"], to=FLOAT),
        helper.make_node("Expand", ["nf", "s"], ["nfull"]),
        helper.make_node("Add", ["x", "bias"], ["a"]),
        helper.make_node("Div", ["a", "nfull"], ["y"]),
    ]
    inits = [_const("zero", 0), _const("one", 1), _const("axes0", [0]),
             _const("big", 100.0, np.float32)]
    model = _model(nodes, [_vi("x", ["B", "L"])], [_vi("y", ["B", "L"])], inits)
    loaded = load_model(model, input_shapes={"x": (2, 4)})
    assert _ops(loaded) == ["Add", "Div"]
    _assert_all_static(loaded)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(_run(loaded, {"x": x})[0], _run(model, {"x": x})[0])


def test_constant_nodes_become_initializers():
    nodes = [helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0]),
             helper.make_node("Mul", ["x", "c"], ["y"])]
    loaded = load_model(_model(nodes, [_vi("x", [2])], [_vi("y", [2])]))
    assert _ops(loaded) == ["Mul"]
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), [1, 2])


def test_huge_outputs_are_not_folded_and_say_so():
    side = 16385  # 16385 * 8192 > MAX_FOLD_ELEMENTS
    assert side * 8192 > frontend.MAX_FOLD_ELEMENTS
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="big"),
             helper.make_node("Add", ["x", "big"], ["y"])]
    model = _model(nodes, [_vi("x", [1, 8192])], [_vi("y", [side, 8192])],
                   [_const("shape", [side, 8192])])
    with pytest.raises(FrontendError, match=r'ConstantOfShape \(node "big"\): not folded to a '
                                            r"constant: its output of 134,225,920 elements is "
                                            r"above the folding limit"):
        load_model(model)


def test_dead_nodes_and_unused_initializers_removed():
    nodes = [helper.make_node("Relu", ["x"], ["y"]),
             helper.make_node("Sigmoid", ["x"], ["unused"]),
             helper.make_node("Mul", ["unused", "w"], ["unused2"])]
    model = _model(nodes, [_vi("x", [2])], [_vi("y", [2])], [_const("w", [1, 2], np.float32)])
    loaded = load_model(model)
    assert _ops(loaded) == ["Relu"]
    assert not loaded.graph.initializer


def test_identity_and_dropout_removed():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Identity", ["r"], ["i"]),
        helper.make_node("Dropout", ["i"], ["d", "mask"], name="drop"),
        helper.make_node("Sigmoid", ["d"], ["s"]),
        helper.make_node("Identity", ["s"], ["y"]),        # straight to a graph output
        helper.make_node("Dropout", ["r", "ratio"], ["z"]),  # to a graph output
        helper.make_node("Tanh", ["r"], ["t"]),
        helper.make_node("Identity", ["t"], ["t1"]),
        helper.make_node("Identity", ["t1"], ["w"]),       # chain to a graph output
    ]
    outputs = [_vi("y", [2, 3]), _vi("z", [2, 3]), _vi("w", [2, 3])]
    model = _model(nodes, [_vi("x", [2, 3])], outputs, [_const("ratio", 0.5, np.float32)])
    loaded = load_model(model)
    assert sorted(_ops(loaded)) == ["Relu", "Sigmoid", "Tanh"]
    assert [o.name for o in loaded.graph.output] == ["y", "z", "w"]
    _assert_all_static(loaded)
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    for got, want in zip(_run(loaded, {"x": x}), _run(model, {"x": x})):
        np.testing.assert_array_equal(got, want)


def test_identity_from_input_to_output_is_kept():
    model = _model([helper.make_node("Identity", ["x"], ["y"])], [_vi("x", [2])], [_vi("y", [2])])
    loaded = load_model(model)
    assert _ops(loaded) == ["Identity"]


def test_unknown_shape_is_reported():
    # A Reshape whose target shape is a runtime input: its output shape cannot be known.
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"], name="/reshape")]
    model = _model(nodes, [_vi("x", [2, 3]), _vi("shape", [2], INT64)], [_vi("y", ["A", "B"])])
    with pytest.raises(FrontendError, match=r"'y' \(output of Reshape node \"/reshape\"\)"):
        load_model(model)


# -- the committed digits CNN -------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 4])
def test_digits_cnn_unchanged(batch):
    original = onnx.load(DIGITS_MODEL)
    loaded = load_model(DIGITS_MODEL, input_shapes={"input": (batch, 1, 8, 8)})
    assert set(_ops(loaded)) == {"Conv", "BatchNormalization", "Relu", "MaxPool", "Flatten", "Gemm"}
    _assert_all_static(loaded)
    x = np.random.default_rng(batch).random((batch, 1, 8, 8), dtype=np.float32)
    want = _run(original, {"input": x})
    got = _run(loaded, {"input": x})
    assert got[0].shape == (batch, 10)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-6)


def test_sum_becomes_a_chain_of_adds():
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in "abc"]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Sum", ["a", "b", "c"], ["y"], name="s")],
                              "g", vi, [y])
    model = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [n.op_type for n in model.graph.node] == ["Add", "Add"]
    feeds = {n: np.random.default_rng(i).standard_normal((2, 3)).astype(np.float32)
             for i, n in enumerate("abc")}
    (got,) = ReferenceEvaluator(model).run(None, feeds)
    np.testing.assert_allclose(got, feeds["a"] + feeds["b"] + feeds["c"], rtol=1e-6)



# -- networks as users bring them: constant subgraphs of any op, old and new opsets ---------

def _ort_steps_off(model, feeds_cal, feed_test):
    """Compile *model* (8x8 ws) calibrated on *feeds_cal*, run *feed_test* on the golden model
    and on onnxruntime: the worst output error in int8 steps of the output's scale."""
    import onnxruntime as ort

    from neuralmatrix.hw.params import HwConfig
    from neuralmatrix.sw.compiler import compile_model
    from neuralmatrix.sw.runtime import run_golden

    comp = compile_model(model, HwConfig(), calib_feeds=feeds_cal)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, feed_test)
    got = run_golden(comp.compiled, feed_test)
    worst = 0.0
    for o, r in zip(model.graph.output, want):
        step = comp.compiled.network.outputs[o.name].scale
        worst = max(worst, float(np.max(np.abs(got.outputs[o.name] - r))) / step)
    return worst


def _feeds(shape, n, seed):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _position_ids_model(opset=18):
    """BERT position ids as torch dynamo exports them: GatherElements of two initializers,
    then an embedding Gather, added to the input."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(np.arange(64, dtype=np.int64)[None], "pos"),
             numpy_helper.from_array(np.arange(8, dtype=np.int64)[None], "idx"),
             numpy_helper.from_array(rng.standard_normal((64, 16)).astype(np.float32), "emb")]
    nodes = [helper.make_node("GatherElements", ["pos", "idx"], ["p"], axis=1, name="ge"),
             helper.make_node("Gather", ["emb", "p"], ["e"], name="lookup"),
             helper.make_node("Add", ["x", "e"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "posids", [_vi("x", [1, 8, 16])], [_vi("y", [1, 8, 16])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _constant_of_shape_conv(opset=9):
    """An old exporter's CNN: the Conv weight and bias made at run time by ConstantOfShape
    and scaled by Mul, Relu after."""
    inits = [numpy_helper.from_array(np.array([4, 3, 3, 3], dtype=np.int64), "w_shape"),
             numpy_helper.from_array(np.array([4], dtype=np.int64), "b_shape"),
             numpy_helper.from_array(np.linspace(-1, 1, 108, dtype=np.float32)
                                     .reshape(4, 3, 3, 3), "w_scale")]
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [0.2])
    nodes = [helper.make_node("ConstantOfShape", ["w_shape"], ["w0"], value=value),
             helper.make_node("Mul", ["w0", "w_scale"], ["w"]),
             helper.make_node("ConstantOfShape", ["b_shape"], ["b"], value=value),
             helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "cos", [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 4, 8, 8])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 4
    return model


def test_all_constant_gather_elements_folds_and_compiles():
    model = _position_ids_model()
    assert [n.op_type for n in load_model(model).graph.node] == ["Add"]
    assert _ort_steps_off(model, _feeds((1, 8, 16), 8, 0), _feeds((1, 8, 16), 1, 9)[0]) <= 4


def test_constant_of_shape_weights_fold_and_compile():
    model = _constant_of_shape_conv()
    assert [n.op_type for n in load_model(model).graph.node] == ["Conv", "Relu"]
    assert _ort_steps_off(model, _feeds((1, 3, 8, 8), 8, 0), _feeds((1, 3, 8, 8), 1, 9)[0]) <= 4


@pytest.mark.parametrize("opset", [7, 9, 13, 21, 24, 28])
def test_opsets_7_to_28_compile(opset):
    """A MatMul + Relu + Softmax model saved at each opset (28: `onnx.helper.make_model`'s
    default with onnx 1.23) compiles and matches onnxruntime."""
    w = np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Relu", ["t"], ["r"]),
             helper.make_node("Softmax", ["r"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, f"op{opset}", [_vi("x", [4, 16])], [_vi("y", [4, 8])],
                              [numpy_helper.from_array(w, "w")])
    if opset < 9:                       # IR 3: initializers are graph inputs too
        graph.input.append(_vi("w", [16, 8]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if opset < 9:
        model.ir_version = 3
    loaded = load_model(model)
    assert MIN_OPSET <= [o.version for o in loaded.opset_import if o.domain == ""][0] <= MAX_OPSET
    assert _ort_steps_off(model, _feeds((4, 16), 8, 0), _feeds((4, 16), 1, 9)[0]) <= 4


def test_default_opset_of_the_onnx_package_compiles():
    model = _position_ids_model(opset=onnx.defs.onnx_opset_version())
    load_model(model)


def test_failed_down_conversion_names_the_opset_and_the_op():
    s = numpy_helper.from_array(np.ones(8, np.float32), "s")
    graph = helper.make_graph([helper.make_node("RMSNormalization", ["x", "s"], ["y"], name="rms")],
                              "g", [_vi("x", [1, 4, 8])], [_vi("y", [1, 4, 8])], [s])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    with pytest.raises(FrontendError, match=r"converting opset 23 to opset 21 .* blocked by "
                                            r"RMSNormalization \(node 'rms'\)"):
        load_model(model)


def test_constant_of_shape_of_a_runtime_shape_is_one_clear_error():
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    nodes = [helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT64),
             helper.make_node("ConstantOfShape", ["xi"], ["y"], value=value, name="cos")]
    graph = helper.make_graph(nodes, "g", [_vi("x", [2])], [_vi("y", ["A", "B"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(FrontendError, match=r"ConstantOfShape \(node \"cos\"\): not folded to a "
                                            r"constant: its input 'xi' is computed at run time"):
        load_model(model)
