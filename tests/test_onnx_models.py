"""The onnx wheel's light model files (public, opset 9) through the compiler: ``accuracy
onnx-models``. Default: SqueezeNet (2 s compile) and the softmax of huge, nearly equal logits
those constant-weight networks end in; ``--runslow``: all nine files."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sw.compiler import compile_model
from neuralmatrix.sw.onnx_models import light_models, onnx_models
from neuralmatrix.sw.onnx_models import _one as one_model
from neuralmatrix.sw.runtime import run_golden


@pytest.mark.parametrize("L,centre,spread", [(10, 1e6, 0.0), (1000, 1e6, 0.0), (3, -5e5, 0.0),
                                             (4, 40.0, 0.0), (16, 3.0, 1.0)])
def test_softmax_of_huge_logits(L, centre, spread):
    """One int8 step of scores around 1e6 is ~8,000: the log-sum needs a finer accumulator
    (it came out as 0 and every output as 1.0 before)."""
    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, L])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, L])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    rng = np.random.default_rng(1)
    feeds = [{"x": (centre + spread * rng.standard_normal((1, L))).astype(np.float32)}
             for _ in range(4)]
    comp = compile_model(m, HwConfig(rows=8, cols=8), calib_feeds=feeds)
    got = run_golden(comp.compiled, feeds[0]).outputs["y"].reshape(1, L)
    ref = ort.InferenceSession(m.SerializeToString()).run(None, feeds[0])[0]
    assert np.max(np.abs(got - ref)) <= 4 / 127


def test_light_models_are_the_nine_files():
    assert [p.stem for p in light_models()] == [
        "light_bvlc_alexnet", "light_densenet121", "light_inception_v1", "light_inception_v2",
        "light_resnet50", "light_shufflenet", "light_squeezenet", "light_vgg19",
        "light_zfnet512"]


def test_squeezenet_matches_onnxruntime():
    row = one_model(next(p for p in light_models() if "squeezenet" in p.stem),
                    HwConfig(rows=16, cols=16), 4.0)
    assert row["status"] == "pass", row
    assert row["useful_macs"] == 349_151_936 and 0 < row["utilization_pct"] < 100


@pytest.mark.slow
def test_all_light_models():
    r = onnx_models(HwConfig(rows=16, cols=16))
    assert r["counts"]["crash"] == 0 and r["counts"]["fail"] == 0, r["models"]
    for row in r["models"]:
        assert row["status"] == "pass" or row["detail"], row
