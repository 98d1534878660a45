"""Accuracy regressions: each figure sw/ACCURACY.md quotes, with its bound.

The default suite runs the digits CNN on all 450 test images (about 20 s) and MiniLM on a
short sequence (22 sentences, about 1 minute); the whole MiniLM figure (66 sentences, about
7 minutes) and the onnx-wheel cases (about 2 minutes) run with ``--runslow``.
"""

from __future__ import annotations

import numpy as np
import pytest

from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sw import accuracy, pwl

# Measured (calibration on minilm.CALIBRATION_SENTENCES, none of them a test sentence):
# 16 tokens, first 22 sentences: mean 0.9855, min 0.8956 ("The train to Berlin leaves from
# platform 7 at 08:45.", cut at 16 tokens); "Thank you very much!" 0.9499.
MINILM16_MEAN, MINILM16_MIN = 0.983, 0.88
# 48 tokens, 66 sentences: see test_minilm_whole_regression.
MINILM48_MEAN, MINILM48_MIN = 0.991, 0.94


@pytest.fixture(autouse=True)
def _one_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def test_digits_top1_drop():
    r = accuracy.digits()
    assert r["images"] == 450
    assert r["float_top1"] >= 0.97
    assert r["drop_points"] <= 0.5                 # the issue's bound (goal 0.3)
    assert r["agreement"] >= 0.99


def test_minilm_short_sequence():
    """The whole encoder at 16 tokens on the first 22 sentences, "Thank you very much!" (7
    tokens) among them (the integers do not depend on the array size, so a 32x32 array only
    makes it faster)."""
    r = accuracy.minilm(HwConfig(rows=32, cols=32), sentences=22, seq_len=16)
    assert r["cosine_mean"] >= MINILM16_MEAN and r["cosine_min"] >= MINILM16_MIN, r["cosines"]
    # linearization MACs (structurally nonzero work of the element-wise, softmax and
    # LayerNorm kernels) over the useful MACs; the zeros of their diagonal and block weights
    # are padding, not counted here
    assert 0 < r["linearization_pct"] <= 10.5


@pytest.fixture(scope="module")
def minilm_whole():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return accuracy.minilm(HwConfig(rows=32, cols=32), sentences=66, seq_len=48)


@pytest.mark.slow
def test_minilm_whole_regression(minilm_whole):
    """The measured figure (see MINILM48_*) must not get worse."""
    r = minilm_whole
    assert r["sentences"] == 66 and r["truncated_sentences"] == 0
    assert r["cosine_mean"] >= MINILM48_MEAN and r["cosine_min"] >= MINILM48_MIN, r["cosines"]


@pytest.mark.slow
def test_minilm_whole_issue_bound(minilm_whole):
    assert minilm_whole["cosine_mean"] >= 0.99      # the issue's bound (goal 0.995)


@pytest.mark.slow
def test_onnx_cases():
    r = accuracy.onnx_cases()
    c = r["counts"]
    assert c["pass"] >= 83, [x["case"] for x in r["cases"] if x["status"] == "fail"]
    conv2d = [x for x in r["cases"] if x["case"].startswith("test_Conv2d")]
    assert conv2d and all(x["status"] in ("pass", "fail") for x in conv2d)


def test_pwl_error_table_non_uniform_wins():
    rows = pwl.error_table(functions=["gelu", "sigmoid", "exp"], segment_counts=(8, 16),
                           methods=("uniform", "curvature"))
    by = {(r["function"], r["segments"], r["method"]): r for r in rows}
    for f in ("gelu", "sigmoid", "exp"):
        assert by[(f, 16, "curvature")]["int8_max_lsb"] <= by[(f, 8, "curvature")]["int8_max_lsb"]
        assert by[(f, 16, "curvature")]["int8_max_lsb"] <= 1.5
    assert np.mean([by[(f, 8, "curvature")]["int8_rms_lsb"] for f in ("gelu", "sigmoid", "exp")]) \
        <= np.mean([by[(f, 8, "uniform")]["int8_rms_lsb"] for f in ("gelu", "sigmoid", "exp")])


@pytest.mark.slow
def test_minilm_layers_trace():
    """The per-layer trace README quotes for the 32-segment outlier: with 16 segments every
    layer of sentence 17 stays close to float; with 32 its token 5 breaks from layer 3 on."""
    cfg = HwConfig(rows=32, cols=32, pwl_segments=32)
    base = accuracy.minilm_layers(cfg, 17, 48, 16)["layers"]
    bad = accuracy.minilm_layers(cfg, 17, 48, 32)["layers"]
    assert [r["layer"] for r in base] == list(range(1, 7))
    assert min(r["cosine_min"] for r in base) > 0.98
    assert bad[2]["worst_token"] == 5 and bad[2]["cosine_min"] < 0.9
