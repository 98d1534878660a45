"""`neuralmatrix run MODEL.onnx --calib-data FILE`: a user's model calibrated on the user's data.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from neuralmatrix.sw.cli import main


@pytest.fixture()
def conv_model(tmp_path):
    w = np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])], "convrelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        [numpy_helper.from_array(w, "w")])
    path = tmp_path / "convrelu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((6, 2, 6, 6)).astype(np.float32))
    np.save(tmp_path / "x.npy", rng.standard_normal((1, 2, 6, 6)).astype(np.float32))
    return path


def test_run_calibrates_on_the_given_data(conv_model, capsys):
    d = conv_model.parent
    assert main(["run", str(conv_model), "--golden-only", "--calib-data", str(d / "calib.npz"),
                 "--input", str(d / "x.npy")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "calibration on 6 sample(s) of" in out and "calib.npz" in out


def test_run_without_calib_data_says_what_it_calibrated_on(conv_model, capsys):
    assert main(["run", str(conv_model), "--golden-only", "--samples", "2"]) == 0
    assert "calibration on these inputs" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("make, message", [
    (lambda d: np.savez(d / "bad.npz", x=np.zeros((3, 2, 5, 5), np.float32)),
     "input 'x' has shape (1, 2, 5, 5), the model is compiled for (1, 2, 6, 6)"),
    (lambda d: np.savez(d / "bad.npz", z=np.zeros((3, 2, 6, 6), np.float32)),
     "'z' is not a model input"),
    (lambda d: None, "no such file"),
])
def test_bad_calibration_data_is_one_error(conv_model, make, message, capsys):
    make(conv_model.parent)
    code = main(["run", str(conv_model), "--golden-only", "--calib-data",
                 str(conv_model.parent / "bad.npz")])
    assert code == 2 and message in capsys.readouterr().err


def test_calib_data_with_a_builtin_is_an_error(tmp_path, capsys):
    assert main(["run", "digits", "--golden-only", "--calib-data", str(tmp_path / "c.npz")]) == 2
    assert "--calib-data applies to an ONNX model" in capsys.readouterr().err
