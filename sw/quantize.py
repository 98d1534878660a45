"""Post-training int8 quantization: calibration, weight quantization, requantization.

Symmetric int8 everywhere: activations per tensor, weights per output channel, biases int32
in the accumulator's scale. Calibration runs the float ONNX model (onnxruntime with graph
optimizations off, so every intermediate tensor is the graph's own; the ONNX reference evaluator
when onnxruntime cannot load the model) on sample inputs and records every intermediate
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
    if not feeds:
        raise ValueError("calibration needs at least one input sample")
    run = _float_runner(model)
    # Each feed keeps an equal share of the percentile / MSE sample; extremes are exact.
    per_feed = max(1, max_sample // len(feeds))
    rng = np.random.default_rng(0)
    seen: dict[str, list[np.ndarray]] = {}
    cols: dict[str, np.ndarray] = {}
    rows: dict[str, list] = {}
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    for feed in feeds:
        values = dict(feed)
        values.update(run(feed))
        for n in norms:
            values.update(layer_norm_parts(n, values[n.input[0]]))
        for k, v in values.items():
            v = np.asarray(v)
            if v.dtype.kind != "f" or not v.size:
                if v.dtype.kind == "f":
                    seen.setdefault(k, [])
                continue
            # Maxima and minima are exact in the tensor's own precision: no float64 copy.
            flat = v.ravel()
            low[k] = min(low.get(k, math.inf), float(flat.min()))
            high[k] = max(high.get(k, -math.inf), float(flat.max()))
            pick = flat if flat.size <= per_feed else flat[rng.integers(0, flat.size, per_feed)]
            seen.setdefault(k, []).append(pick)
            if not v.ndim:
                continue
            m = np.abs(v).reshape(-1, v.shape[-1])
            cm = m.max(axis=0).astype(np.float64)
            cols[k] = cm if k not in cols or cols[k].shape != cm.shape else np.maximum(cols[k], cm)
            if v.ndim >= 2:
                r3 = m.reshape(-1, v.shape[-2], v.shape[-1])
                hi = r3.max(axis=2).max(axis=0).astype(np.float64)
                lo = r3.min(axis=2).min(axis=0).astype(np.float64)
                prev = rows.get(k)
                rows[k] = [hi, lo] if prev is None or prev[0].shape != hi.shape else \
                    [np.maximum(prev[0], hi), np.minimum(prev[1], lo)]
    ranges = {}
    for k, vs in seen.items():
        v = np.concatenate(vs).astype(np.float64)
        sample = v if v.size <= max_sample else rng.choice(v, max_sample, replace=False)
        ranges[k] = Range(low.get(k, 0.0), high.get(k, 0.0), sample, cols.get(k),
                          *rows.get(k, (None, None)))
    return ranges


def _float_runner(model: onnx.ModelProto):
    """A function ``feed -> {tensor name: value}`` giving every node output of *model* in float.

    onnxruntime (CPU, graph optimizations disabled, one thread: these graphs are small and the
    machine's BLAS threads only contend) when it loads the model with every intermediate as an
    output; otherwise the ONNX reference evaluator (with a double-precision Erf), which runs
    any standard graph, roughly a hundred times slower on MiniLM.
    """
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = {o.name for o in probe.graph.output}
    inputs = {i.name: i for i in probe.graph.input}
    extra = [out for node in probe.graph.node for out in node.output
             if out and out not in names and out not in inputs]
    typed = {v.name: v for v in probe.graph.value_info}      # the frontend inferred them
    if not all(n in typed for n in extra):
        typed = {v.name: v for v in onnx.shape_inference.infer_shapes(probe).graph.value_info}
    if all(n in typed for n in extra):
        import onnxruntime as ort

        probe.graph.output.extend(typed[n] for n in extra)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            sess = ort.InferenceSession(probe.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])
        except Exception:       # onnxruntime's own error types: an op or opset it lacks
            sess = None
        if sess is not None:
            outs = [o.name for o in sess.get_outputs()]
            dtypes = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
                      for i in model.graph.input}

            def run_ort(feed):
                cast = {k: np.asarray(v, dtype=dtypes.get(k)) for k, v in feed.items()}
                return dict(zip(outs, sess.run(outs, cast)))

            return run_ort
    from onnx.reference import ReferenceEvaluator

    from .linearize import _double_ops

    for n in extra:
        probe.graph.output.append(onnx.ValueInfoProto(name=n))
    sess = ReferenceEvaluator(probe, new_ops=_double_ops())   # a vectorized Erf
    outs = [o.name for o in probe.graph.output]
    return lambda feed: dict(zip(outs, sess.run(None, feed)))


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
