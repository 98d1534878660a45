"""Post-training int8 quantization: calibration, weight quantization, requantization.

Symmetric int8 everywhere: activations per tensor, weights per output channel, biases int32
in the accumulator's scale. Calibration runs the float ONNX model
(``onnx.reference.ReferenceEvaluator``) on sample inputs and records every intermediate
tensor's range; the clipping threshold of a tensor is chosen by ``max`` (largest magnitude),
``percentile`` (99.99th percentile of magnitudes) or ``mse`` (the threshold minimizing the
mean squared quantization error over a grid of candidates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from neuralmatrix.hw.arith import INT8_MAX, MAX_SHIFT, MULT_BITS

__all__ = ["METHODS", "Range", "calibrate", "layer_norm_parts", "threshold", "quantize_weights", "requant_params",
           "bias_int32"]

METHODS = ("max", "percentile", "mse")


@dataclass
class Range:
    """What calibration saw of one tensor: extremes, and samples for percentile/MSE."""

    lo: float
    hi: float
    sample: np.ndarray
    colmax: np.ndarray | None = None     # largest magnitude per index of the last axis
    rowmax: np.ndarray | None = None     # largest magnitude per index of the next-to-last axis
    rowmin: np.ndarray | None = None     # smallest magnitude per index of the next-to-last axis

    @property
    def absmax(self) -> float:
        return max(abs(self.lo), abs(self.hi))


def calibrate(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]],
              max_sample: int = 1 << 16) -> dict[str, Range]:
    """Run *model* in float on every feed and record the range of every tensor.

    Parameters
    ----------
    model : onnx.ModelProto
        As returned by :func:`neuralmatrix.sw.frontend.load_model` (static shapes).
    feeds : list of dict
        Input name -> array, one dict per calibration batch.
    max_sample : int
        Values kept per tensor for percentile / MSE thresholds.
    """
    from onnx.reference import ReferenceEvaluator

    if not feeds:
        raise ValueError("calibration needs at least one input sample")
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for out in node.output:
            if out and out not in names:
                probe.graph.output.append(onnx.ValueInfoProto(name=out))
                names.add(out)
    from .linearize import _double_ops

    sess = ReferenceEvaluator(probe, new_ops=_double_ops())   # a vectorized Erf
    outs = [o.name for o in probe.graph.output]
    seen: dict[str, list[np.ndarray]] = {}
    cols: dict[str, np.ndarray] = {}
    rows: dict[str, list] = {}
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    for feed in feeds:
        values = dict(feed)
        values.update(zip(outs, sess.run(None, feed)))
        for n in norms:
            values.update(layer_norm_parts(n, values[n.input[0]]))
        for k, v in values.items():
            v = np.asarray(v)
            if v.dtype.kind == "f":
                seen.setdefault(k, []).append(v.ravel())
                if v.ndim >= 1 and v.size:
                    m = np.abs(v.astype(np.float64)).reshape(-1, v.shape[-1])
                    cm = m.max(axis=0)
                    cols[k] = cm if k not in cols or cols[k].shape != cm.shape else \
                        np.maximum(cols[k], cm)
                    if v.ndim >= 2:
                        r3 = m.reshape(-1, v.shape[-2], v.shape[-1])
                        hi, lo = r3.max(axis=(0, 2)), r3.min(axis=(0, 2))
                        prev = rows.get(k)
                        rows[k] = [hi, lo] if prev is None or prev[0].shape != hi.shape else \
                            [np.maximum(prev[0], hi), np.minimum(prev[1], lo)]
    rng = np.random.default_rng(0)
    ranges = {}
    for k, vs in seen.items():
        v = np.concatenate(vs).astype(np.float64)
        sample = v if v.size <= max_sample else rng.choice(v, max_sample, replace=False)
        ranges[k] = Range(float(v.min()) if v.size else 0.0, float(v.max()) if v.size else 0.0,
                          sample, cols.get(k), *rows.get(k, (None, None)))
    return ranges


def layer_norm_parts(node: onnx.NodeProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """The intermediate values of a LayerNormalization *node* on input *x*, named
    ``OUT#mean``, ``OUT#centered``, ``OUT#sumsq`` (sum of squares of the centered rows) and
    ``OUT#inv`` (``1 / sqrt(variance + epsilon)``): the tensors its lowering creates."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    x = np.asarray(x, dtype=np.float64)
    axis = attrs.get("axis", -1) % x.ndim
    eps = attrs.get("epsilon", 1e-5)
    axes = tuple(range(axis, x.ndim))
    count = int(np.prod([x.shape[a] for a in axes]))
    mean = x.mean(axis=axes, keepdims=True)
    c = x - mean
    ss = np.sum(c * c, axis=axes, keepdims=True)
    out = node.output[0]
    return {f"{out}#mean": mean, f"{out}#centered": c, f"{out}#sumsq": ss,
            f"{out}#inv": 1.0 / np.sqrt(ss / count + eps)}


def threshold(r: Range, method: str = "max") -> float:
    """The clipping magnitude of a tensor for *method* (see the module doc)."""
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    top = r.absmax
    if top == 0:
        return 1e-8
    if method == "max":
        return top
    mags = np.abs(r.sample)
    if method == "percentile":
        return max(float(np.percentile(mags, 99.99)), top * 1e-3)
    best, best_err = top, math.inf
    for t in top * np.linspace(0.3, 1.0, 36):
        s = t / INT8_MAX
        q = np.clip(np.round(mags / s), 0, INT8_MAX) * s
        err = float(np.mean((q - mags) ** 2))
        if err < best_err:
            best, best_err = float(t), err
    return best


def quantize_weights(w: np.ndarray, axis: int | None = -1) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights, one scale per index of *axis* (``None``: one scale).

    Returns ``(q, scale)`` with ``w ~ q * scale`` (``scale`` broadcast along *axis*).
    """
    w = np.asarray(w, dtype=np.float64)
    if axis is None:
        top = np.max(np.abs(w)) if w.size else 0.0
        scale = np.array(top / INT8_MAX if top > 0 else 1.0)
        return np.clip(np.round(w / scale), -INT8_MAX, INT8_MAX).astype(np.int8), scale
    axis = axis % w.ndim
    other = tuple(i for i in range(w.ndim) if i != axis)
    top = np.max(np.abs(w), axis=other) if w.size else np.zeros(w.shape[axis])
    scale = np.where(top > 0, top / INT8_MAX, 1.0)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale


def requant_params(ratio) -> tuple[np.ndarray, np.ndarray]:
    """``(mult, shift)`` with ``mult / 2**shift ~ ratio`` (per element), ``mult`` an unsigned
    16-bit integer, ``shift`` 0..47, as precise as the fields allow.

    Raises ValueError for a negative ratio or one too large for a 16-bit multiplier.
    """
    r = np.atleast_1d(np.asarray(ratio, dtype=np.float64))
    if np.any(r < 0) or not np.all(np.isfinite(r)):
        raise ValueError(f"requantization ratios must be finite and >= 0, got {r.min():g}..{r.max():g}")
    top = (1 << MULT_BITS) - 1
    if np.any(r > top):
        raise ValueError(f"requantization ratio {r.max():g} exceeds the 16-bit multiplier")
    mult = np.zeros(r.shape, dtype=np.int64)
    shift = np.zeros(r.shape, dtype=np.int64)
    pos = r > 0
    # Largest shift with round(r * 2**shift) <= top.
    e = np.floor(np.log2(top / np.where(pos, r, 1.0))).astype(np.int64)
    s = np.clip(e, 0, MAX_SHIFT)
    m = np.round(r * np.exp2(s)).astype(np.int64)
    over = m > top
    s = np.where(over, s - 1, s)
    m = np.where(over, np.round(r * np.exp2(s)).astype(np.int64), m)
    mult[pos], shift[pos] = m[pos], s[pos]
    return mult, shift


def bias_int32(bias: np.ndarray, acc_scale) -> np.ndarray:
    """A float bias in the accumulator's scale (int32, saturated)."""
    q = np.round(np.asarray(bias, dtype=np.float64) / np.asarray(acc_scale, dtype=np.float64))
    return np.clip(q, -(2 ** 31), 2 ** 31 - 1).astype(np.int64)
