"""Tests for the committed digits CNN and its data loader (no PyTorch needed)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from neuralmatrix.sw.models.digits import MODEL_PATH, float_accuracy, load_split

ALLOWED_OPS = {"Conv", "BatchNormalization", "Relu", "MaxPool", "Flatten", "Gemm"}
# Measured: 0.9867 (444/450) on the test split; keep a small margin.
MIN_ACCURACY = 0.97


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load(str(MODEL_PATH))


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


def test_model_file_is_small_and_valid(model: onnx.ModelProto) -> None:
    assert MODEL_PATH.name == "digits_cnn.onnx"
    assert MODEL_PATH.stat().st_size < 200_000
    onnx.checker.check_model(model, full_check=True)
    assert {op.domain: op.version for op in model.opset_import}.get("", None) == 17


def test_model_ops(model: onnx.ModelProto) -> None:
    op_types = {node.op_type for node in model.graph.node}
    assert op_types <= ALLOWED_OPS, op_types - ALLOWED_OPS
    assert "BatchNormalization" in op_types


def test_model_io_shapes(model: onnx.ModelProto) -> None:
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims, out_dims = _dims(inp), _dims(out)
    assert in_dims[1:] == [1, 8, 8] and len(in_dims) == 4
    assert out_dims[1:] == [10] and len(out_dims) == 2
    # Batch dimension is dynamic: run two different batch sizes.
    images, _ = load_split("test")
    evaluator = ReferenceEvaluator(model)
    for n in (1, 3):
        (logits,) = evaluator.run(None, {inp.name: images[:n]})
        assert logits.shape == (n, 10) and logits.dtype == np.float32


def test_float_accuracy() -> None:
    assert float_accuracy() >= MIN_ACCURACY


def test_float_accuracy_can_fail(tmp_path, model: onnx.ModelProto) -> None:
    # Zero the last Gemm's weights and bias: every logit is equal, argmax is 0.
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    last_gemm = [n for n in broken.graph.node if n.op_type == "Gemm"][-1]
    for init in broken.graph.initializer:
        if init.name in last_gemm.input[1:]:
            array = onnx.numpy_helper.to_array(init)
            init.CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(array), init.name))
    path = tmp_path / "broken.onnx"
    onnx.save(broken, str(path))
    assert float_accuracy(path) < MIN_ACCURACY


@pytest.mark.parametrize("split, n", [("train", 1347), ("test", 450)])
def test_load_split_format(split: str, n: int) -> None:
    images, labels = load_split(split)
    assert images.shape == (n, 1, 8, 8) and images.dtype == np.float32
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert set(np.unique(labels)) == set(range(10))


@pytest.mark.parametrize("bad", ["validation", "Train", ""])
def test_load_split_rejects_bad_name(bad: str) -> None:
    with pytest.raises(ValueError, match=repr(bad)):
        load_split(bad)


def test_splits_disjoint_and_deterministic() -> None:
    from sklearn.datasets import load_digits

    x_train, y_train = load_split("train")
    x_test, y_test = load_split("test")
    x_train2, y_train2 = load_split("train")
    x_test2, y_test2 = load_split("test")
    np.testing.assert_array_equal(x_train, x_train2)
    np.testing.assert_array_equal(y_train, y_train2)
    np.testing.assert_array_equal(x_test, x_test2)
    np.testing.assert_array_equal(y_test, y_test2)
    train_rows = {row.tobytes() for row in x_train}
    test_rows = {row.tobytes() for row in x_test}
    assert len(train_rows) == len(x_train) and len(test_rows) == len(x_test)
    assert train_rows.isdisjoint(test_rows)
    # Together they are exactly the whole (duplicate-free) data set.
    full = {row.tobytes() for row in (load_digits().images / 16.0).astype(np.float32)[:, None]}
    assert train_rows | test_rows == full
