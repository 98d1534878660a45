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

#: Largest int32 bias magnitude a weight scale is chosen for (:func:`bias_floor`): half the
#: int32 range, the other half is headroom for the products.
BIAS_LIMIT = 2 ** 30

__all__ = ["METHODS", "BIAS_LIMIT", "bias_floor", "Range", "calibrate", "layer_norm_parts", "threshold", "quantize_weights", "requant_params",
           "bias_int32", "double_precision_ops"]

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
    chanmean: np.ndarray | None = None   # mean per index of axis 1 (NCHW channels, features)

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
    norms = _layer_norms(model)
    producers = {out: f"{n.op_type} node {n.name!r}" for n in model.graph.node for out in n.output}
    stats = _Stats(max(1, max_sample // len(feeds)), producers)
    chunk: list[dict[str, np.ndarray]] = []
    size = 0
    for i, feed in enumerate(feeds):
        values = dict(feed)
        values.update(run(feed))
        for x, out, axis, eps in norms:
            values.update(layer_norm_parts(out, values[x], axis, eps))
        chunk.append(values)
        size += sum(np.size(v) for v in values.values())
        if size >= _CHUNK_VALUES or i == len(feeds) - 1:
            stats.add(chunk)
            chunk, size = [], 0
    return stats.ranges(max_sample)


#: Values of all tensors of a few feeds reduced together by :class:`_Stats` (about 256 MB of
#: float32): fewer, larger numpy reductions than one per tensor and feed.
_CHUNK_VALUES = 1 << 26


class _Stats:
    """Running extremes, per-column / per-row magnitudes and samples of every float tensor."""

    def __init__(self, per_feed: int, producers: dict[str, str]):
        self.per_feed = per_feed
        self.producers = producers
        self.rng = np.random.default_rng(0)
        self.low: dict[str, float] = {}
        self.high: dict[str, float] = {}
        self.seen: dict[str, list[np.ndarray]] = {}
        self.cols: dict[str, np.ndarray] = {}
        self.rows: dict[str, list[np.ndarray]] = {}
        self.sums: dict[str, list] = {}             # per axis-1 index: [sum, count]

    def add(self, chunk: list[dict[str, np.ndarray]]) -> None:
        """Fold in the tensors of *chunk* (one dict per feed, the same tensors in each)."""
        for k in chunk[0]:
            parts = [np.asarray(values[k]) for values in chunk]
            if parts[0].dtype.kind != "f":
                continue
            self.seen.setdefault(k, [])
            if len({p.shape for p in parts}) == 1:
                self._fold(k, np.stack(parts), len(parts))
            else:                                   # feeds of different shapes
                for p in parts:
                    self._fold(k, p[None], 1)

    def _fold(self, k: str, v: np.ndarray, feeds: int) -> None:
        """*v*: the tensor of *feeds* feeds stacked on a new leading axis. Extremes are exact in
        the tensor's own precision (no float64 copy)."""
        if not v.size:
            return
        flat = v.ravel()
        lo, hi = float(flat.min()), float(flat.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            where = self.producers.get(k, "a graph input")
            raise ValueError(f"calibration: tensor {k!r} ({where}) is not finite on the "
                             f"calibration inputs (range {lo:g}..{hi:g}), e.g. the square root "
                             f"or logarithm of a negative number; int8 has no NaN or inf")
        self.low[k] = min(self.low.get(k, math.inf), lo)
        self.high[k] = max(self.high.get(k, -math.inf), hi)
        take = self.per_feed * feeds
        self.seen[k].append(flat if flat.size <= take
                            else flat[self.rng.integers(0, flat.size, take)])
        if v.ndim < 2:                              # a scalar per feed: no columns or rows
            return
        if v.ndim >= 3:                             # axis 1 of the tensor is axis 2 of v
            c = np.moveaxis(v, 2, 0).reshape(v.shape[2], -1)
            prev = self.sums.get(k)
            if prev is None or prev[0].shape != (c.shape[0],):
                prev = self.sums[k] = [np.zeros(c.shape[0]), 0]
            prev[0] += c.sum(axis=1, dtype=np.float64)
            prev[1] += c.shape[1]
        m = np.abs(v).reshape(-1, v.shape[-1])
        cm = m.max(axis=0).astype(np.float64)
        prev = self.cols.get(k)
        self.cols[k] = cm if prev is None or prev.shape != cm.shape else np.maximum(prev, cm)
        if v.ndim >= 3:
            r3 = m.reshape(-1, v.shape[-2], v.shape[-1])
            rmax = r3.max(axis=2).max(axis=0).astype(np.float64)
            rmin = r3.min(axis=2).min(axis=0).astype(np.float64)
            prev = self.rows.get(k)
            self.rows[k] = [rmax, rmin] if prev is None or prev[0].shape != rmax.shape else \
                [np.maximum(prev[0], rmax), np.minimum(prev[1], rmin)]

    def ranges(self, max_sample: int) -> dict[str, Range]:
        out = {}
        for k, vs in self.seen.items():
            v = np.concatenate(vs).astype(np.float64) if vs else np.zeros(0)
            sample = v if v.size <= max_sample else self.rng.choice(v, max_sample, replace=False)
            sums = self.sums.get(k)
            out[k] = Range(self.low.get(k, 0.0), self.high.get(k, 0.0), sample, self.cols.get(k),
                           *self.rows.get(k, (None, None)),
                           None if sums is None else sums[0] / max(sums[1], 1))
        return out


def _float_runner(model: onnx.ModelProto):
    """A function ``feed -> {tensor name: value}`` giving every node output of *model* in float.

    onnxruntime (CPU, graph optimizations disabled, one thread: these graphs are small and the
    machine's BLAS threads only contend) while it loads and runs the model with every
    intermediate as an output; the ONNX reference evaluator (with a double-precision Erf) for a
    model it refuses (an op or broadcast it does not implement), which runs any standard graph,
    about ten times slower on MiniLM.
    """
    names = {o.name for o in model.graph.output}
    inputs = {i.name for i in model.graph.input}
    extra = [out for node in model.graph.node for out in node.output
             if out and out not in names and out not in inputs]
    fast = _ort_runner(model, extra)
    slow = None

    def run(feed):
        nonlocal fast, slow
        if fast is not None:
            try:
                return fast(feed)
            except _ort_errors():
                fast = None
        if slow is None:
            slow = _reference_runner(model, extra)
        return slow(feed)

    return run


def _ort_errors() -> tuple[type[Exception], ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(getattr(state, n) for n in ("Fail", "InvalidArgument", "NotImplemented",
                                             "InvalidGraph", "RuntimeException", "EPFail")
                 if hasattr(state, n))


def _ort_runner(model: onnx.ModelProto, extra: list[str]):
    """onnxruntime on a copy of *model* with the *extra* tensors as outputs, or None."""
    typed = {v.name: v for v in model.graph.value_info}      # the frontend inferred them
    if not all(n in typed for n in extra):
        typed = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    if not all(n in typed for n in extra):
        return None
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(typed[n] for n in extra)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 4
    try:
        sess = ort.InferenceSession(m.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])
    except _ort_errors():
        return None
    outs = [o.name for o in sess.get_outputs()]
    dtypes = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
              for i in model.graph.input}

    def run(feed):
        cast = {k: np.asarray(v, dtype=dtypes.get(k)) for k, v in feed.items()}
        return dict(zip(outs, sess.run(outs, cast)))

    return run


def double_precision_ops() -> list:
    """Reference-evaluator kernels that keep double precision (the stock Erf and Gelu round
    to float32, whose steps look like kinks to the PWL fit); ``new_ops`` of
    ``onnx.reference.ReferenceEvaluator``."""
    from onnx.reference.op_run import OpRun

    try:
        from scipy.special import erf
    except ImportError:                                      # pragma: no cover
        erf = np.vectorize(math.erf, otypes=[np.float64])

    class Erf(OpRun):
        op_domain = ""

        def _run(self, x):
            return (np.asarray(erf(np.asarray(x, dtype=np.float64))).astype(x.dtype),)

    class Gelu(OpRun):
        op_domain = ""

        def _run(self, x, approximate="none"):
            v = np.asarray(x, dtype=np.float64)
            if approximate == "tanh":
                y = 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
            else:
                y = 0.5 * v * (1 + np.asarray(erf(v / math.sqrt(2))))
            return (y.astype(x.dtype),)

    return [Erf, Gelu]


def _reference_runner(model: onnx.ModelProto, extra: list[str]):
    """The ONNX reference evaluator on a copy of *model* with the *extra* tensors as outputs."""
    from onnx.reference import ReferenceEvaluator

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in extra:
        m.graph.output.append(onnx.ValueInfoProto(name=n))
    sess = ReferenceEvaluator(m, new_ops=double_precision_ops())   # a vectorized Erf
    outs = [o.name for o in m.graph.output]
    return lambda feed: dict(zip(outs, sess.run(None, feed)))


def layer_norm_parts(out: str, x: np.ndarray, axis: int = -1,
                     eps: float = 1e-5) -> dict[str, np.ndarray]:
    """The intermediate values of a LayerNorm over the axes from *axis* on, whose output is
    the tensor *out*, on input *x*: ``OUT#mean``, ``OUT#centered``, ``OUT#sumsq`` (sum of
    squares of the centered rows) and ``OUT#inv`` (``1 / sqrt(variance + epsilon)``), the
    tensors its lowering creates."""
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(range(axis % x.ndim, x.ndim))
    count = int(np.prod([x.shape[a] for a in axes]))
    mean = x.mean(axis=axes, keepdims=True)
    c = x - mean
    ss = np.sum(c * c, axis=axes, keepdims=True)
    return {f"{out}#mean": mean, f"{out}#centered": c, f"{out}#sumsq": ss,
            f"{out}#inv": 1.0 / np.sqrt(ss / count + eps)}


def _layer_norms(model: onnx.ModelProto) -> list[tuple[str, str, int, float]]:
    """``(input, output, axis, epsilon)`` of every LayerNorm the lowering (:mod:`~neuralmatrix.sw.lower`) lowers: the
    LayerNormalization nodes and the decomposed chains of :mod:`~neuralmatrix.sw.patterns`."""
    from .patterns import find_layer_norms

    norms = []
    for n in model.graph.node:
        if n.op_type == "LayerNormalization":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            norms.append((n.input[0], n.output[0], attrs.get("axis", -1),
                          attrs.get("epsilon", 1e-5)))
    norms += [(p.x, p.output, p.axis, p.epsilon) for p in find_layer_norms(model)]
    return norms


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


def quantize_weights(w: np.ndarray, axis: int | None = -1, sum_group: int = 1,
                     min_scale=None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights, one scale per index of *axis* (``None``: one scale).

    *min_scale* (per index of *axis*) is a floor of the scales: a channel whose bias is huge
    against its weights (a BatchNorm channel of variance 0, weights decayed to ~1e-9) gets
    a scale whose accumulator unit still holds the bias in int32 (its tiny weights round
    to 0 and its output is the constant bias, as in float).

    With *sum_group* > 1 (2-D *w*), every run of *sum_group* consecutive weights of one
    output channel (a convolution's kernel window of one input channel) keeps the rounded
    sum of its real values (:func:`_sum_preserving_round`).

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
    if min_scale is not None:
        scale = np.maximum(scale, np.broadcast_to(np.asarray(min_scale, np.float64), scale.shape))
    shape = [1] * w.ndim
    shape[axis] = -1
    exact = w / scale.reshape(shape)
    if sum_group > 1 and w.ndim == 2 and w.shape[1 - axis] % sum_group == 0:
        q = _sum_preserving_round(exact if axis == 0 else exact.T, sum_group)
        q = q if axis == 0 else q.T
    else:
        q = np.round(exact)
    return np.clip(q, -INT8_MAX, INT8_MAX).astype(np.int8), scale


def _sum_preserving_round(e: np.ndarray, group: int) -> np.ndarray:
    """Round the rows of *e* (N x K, K a multiple of *group*) to integers so that every run of
    *group* consecutive entries sums to the rounded sum of its real values: the entries with
    the largest rounding residuals move by one step. A convolution's response to an input
    channel that is constant over the kernel window (flat image regions) is then as exact as
    one rounding of the sum, instead of the sum of *group* independent rounding errors
    (an edge detector with large weights summing to ~0 otherwise gives a brightness-
    proportional offset)."""
    n, k = e.shape
    g = e.reshape(n, k // group, group)
    q = np.round(g)
    r = g - q
    d = (np.round(g.sum(axis=2)) - q.sum(axis=2)).astype(np.int64)[..., None]
    rank_up = np.argsort(np.argsort(-r, axis=2, kind="stable"), axis=2, kind="stable")
    rank_dn = np.argsort(np.argsort(r, axis=2, kind="stable"), axis=2, kind="stable")
    q = q + (rank_up < d) - (rank_dn < -d)
    return q.reshape(n, k)


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


def bias_floor(bias, in_scale) -> np.ndarray:
    """The smallest weight scale per output channel for which ``bias / (in_scale * scale)``
    stays within :data:`BIAS_LIMIT` (the *min_scale* of :func:`quantize_weights`)."""
    return np.abs(np.asarray(bias, dtype=np.float64)) / (float(in_scale) * BIAS_LIMIT)


def bias_int32(bias: np.ndarray, acc_scale) -> np.ndarray:
    """A float bias in the accumulator's scale (int32, saturated)."""
    q = np.round(np.asarray(bias, dtype=np.float64) / np.asarray(acc_scale, dtype=np.float64))
    return np.clip(q, -(2 ** 31), 2 ** 31 - 1).astype(np.int64)
