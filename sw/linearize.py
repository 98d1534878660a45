"""Linearization: an ONNX graph becomes GEMM kernels, PWL tables and host data movement.

This is the NeuralMatrix step. Every ONNX node is lowered onto :mod:`neuralmatrix.sw.ir`:

* **Linear layers** (Conv 1-D/2-D incl. groups and depthwise, Gemm, MatMul with constant or
  activation operands) are kernels; convolution is im2col (a host gather) times a
  block-diagonal weight matrix (groups), BatchNormalization and constant scalings and bias
  additions are folded into the weights and the int32 bias.
* **Element-wise nonlinear functions** are PWL tables on the output path. A maximal chain of
  element-wise operators of one tensor (``x * 0.5 * (1 + erf(x / sqrt 2))``, ``x *
  sigmoid(x)``, clips, ...) is fused into ONE function, evaluated in float by the reference
  ONNX runtime on a grid and fitted by :mod:`neuralmatrix.sw.pwl`; when the chain follows a
  linear layer, the table sits on that layer's output (no extra kernel).
* **Element-wise sums** of tensors accumulate into the int32 accumulator (each operand times a
  diagonal int8 weight that aligns the scales); products with constants are diagonal
  weights; products of two tensors are ``A B ((x/A + y/B)^2 - (x/A - y/B)^2) / 4`` with a
  PWL square (``A``, ``B`` their calibrated magnitudes); ``a / b`` of two tensors is ``a``
  times a PWL reciprocal of ``b`` (whose calibrated range must not reach 0).
* **Reductions** are GEMMs with a ones vector (ReduceSum/ReduceMean, GlobalAveragePool,
  softmax denominators); AveragePool sums shifted views; MaxPool is a tree of
  ``max(a, b) = a + relu(b - a)``.
* **Softmax** is ``exp(x - max - log(sum exp(x - max)))``: a max tree, a kernel with a fused
  PWL exp (the max is subtracted by a rank-1 GEMM term), a sum by GEMM with a fused PWL log,
  and a final kernel with a fused PWL exp. LogSoftmax stops before the last exp.
* **LayerNormalization** (and its decomposed ReduceMean/Sub/Pow/Sqrt/Div form): mean by GEMM,
  centering by a rank-1 term, per-row sums of squares by GEMM (block-diagonal, per group of
  ``rows`` rows; the centered values have per-column scales ``k_j * s`` and column ``j`` is
  repeated ``k_j**2`` times, so a few massive channels do not coarsen the others), a fused
  PWL rsqrt (rows of always massive variance, like [CLS], with an input gain of their own),
  the per-row scaling as a GEMM with a diagonal matrix, gamma and beta folded into weights
  and a rank-1 term.
* **Data movement** (Reshape, Transpose, Flatten, Concat, Split, Slice, Squeeze, Unsqueeze,
  Pad, Expand, Gather) are host gathers (:class:`~neuralmatrix.sw.ir.Transfer`), or nothing
  when the storage does not change; an embedding Gather of a run-time index input is a
  :class:`~neuralmatrix.sw.ir.Lookup`.

* **Attention masks**: the float tensor a BERT export computes from the integer
  ``attention_mask`` input (Cast/GatherND/And/Where) is checked on probes to be a key-padding
  mask and becomes one GEMM term of the softmax kernels (a lookup of the mask row); the
  ``Where(IsNaN(p), 0, p)`` guard after softmax is the identity.

Quantization decisions (activation scales from calibration, per-channel weight scales, int32
biases, requantization multipliers) are made here, with :mod:`neuralmatrix.sw.quantize`.
Activations get per-column scales (whole multiples of one unit) wherever every consumer can
fold them (:meth:`_Lowering._find_percol`); a PWL output whose columns span decades is split
into column groups with a table each (:meth:`_Lowering._emit_grouped`); embedding tables and
constant addends are two int8 digits (:meth:`_Lowering._digits`).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from neuralmatrix.hw.arith import INT8_MAX
from neuralmatrix.hw.params import HwConfig

from . import pwl as pwl_lib
from .ir import FILL_MIN, FILL_ZERO, Kernel, Lookup, Network, Tensor, Term, Transfer
from .patterns import LayerNormPattern, find_layer_norms
from .quantize import Range, bias_int32, quantize_weights, requant_params, threshold

__all__ = ["LinearizeError", "ELEMENTWISE", "FUNCTION_KINDS", "linearize"]


class LinearizeError(ValueError):
    """An operator that the linearizer cannot map (with the node and the reason)."""


#: Element-wise operators that fuse into one PWL function of their single tensor input.
ELEMENTWISE = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Gelu", "Erf", "Exp", "Sqrt", "Reciprocal", "Pow", "Clip", "Neg", "Add", "Sub",
    "Mul", "Div", "Identity", "Dropout", "Cast",
})
_ACTIVATIONS = ELEMENTWISE - {"Add", "Sub", "Mul", "Div", "Identity", "Dropout", "Cast", "Neg"}
#: Function kinds of the PWL tables, the keys of ``func_segments``: each activation op by its
#: lower-case name, and the functions of the lowerings (softmax exp and log, LayerNorm rsqrt,
#: the square of tensor products, the reciprocal of a division, the relu of max trees).
FUNCTION_KINDS = frozenset({op.lower() for op in _ACTIVATIONS}
                           | {"gelu", "exp", "log", "rsqrt", "square", "reciprocal", "relu"})
#: Most column groups a layer's PWL output is split into (:meth:`_Lowering._emit_grouped`).
PWL_GROUPS = 4
#: Most GEMM depth of a LayerNorm sum of squares, in multiples of the row length
#: (:meth:`_Lowering._square_levels`).
SQUARE_BUDGET = 2.0
#: Margin of those column scales over the calibrated magnitudes.
SQUARE_MARGIN = 4.0
#: Lower end of a LayerNorm's rsqrt table, as a fraction of the smallest calibrated sum of
#: squares (the output scale covers rsqrt there).
RSQRT_MARGIN = 0.8
_IN16 = 32000.0          # int16 codes used for a PWL input range (headroom below 32767)


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _prod(xs) -> int:
    return int(np.prod(xs, dtype=np.int64)) if len(xs) else 1


def _storage(shape, perm) -> tuple[int, int]:
    stored = [shape[p] for p in perm]
    if not stored:
        return 1, 1
    return _prod(stored[:-1]), int(stored[-1])


def _channels_last(rank: int) -> tuple[int, ...]:
    if rank >= 3:
        return (0,) + tuple(range(2, rank)) + (1,)
    return tuple(range(rank))


def _coefficients(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer coefficients for ``sum_i w[i, j] * x_i`` per column ``j``: ``q`` (int8, P x n)
    and the accumulator unit ``u`` (n) with ``q * u ~ w``. The largest coefficient of a column
    is 64..127, chosen per column to minimize the worst relative rounding error of all its
    coefficients (operands of very different scales keep their ratio, not 1/127 of it)."""
    w = np.asarray(w, dtype=np.float64)
    top = np.max(np.abs(w), axis=0)
    top = np.where(top > 0, top, 1.0)
    best_q = np.round(w / top * INT8_MAX)
    best_u = top / INT8_MAX
    nz = np.abs(w) > 0
    best_err = np.full(w.shape[1], np.inf)
    for qt in range(64, INT8_MAX + 1):
        u = top / qt
        exact = w / u
        q = np.round(exact)
        rel = np.where(nz, np.abs(q - exact) / np.maximum(np.abs(exact), 1e-30), 0.0)
        rel = np.where(nz & (q == 0), np.inf, rel)
        err = rel.max(axis=0)
        better = err < best_err - 1e-12
        best_err = np.where(better, err, best_err)
        best_q = np.where(better[None, :], q, best_q)
        best_u = np.where(better, u, best_u)
    return best_q.astype(np.int64), best_u


def _double_ops() -> list:
    """Reference-evaluator kernels that keep double precision (the stock Erf rounds to
    float32, whose steps look like kinks to the PWL fit)."""
    from onnx.reference.op_run import OpRun

    try:
        from scipy.special import erf
    except ImportError:                                      # pragma: no cover
        erf = np.vectorize(math.erf, otypes=[np.float64])

    class Erf(OpRun):
        op_domain = ""

        def _run(self, x):
            return (np.asarray(erf(np.asarray(x, dtype=np.float64))).astype(x.dtype),)

    return [Erf]


def linearize(model: onnx.ModelProto, config: HwConfig, ranges: dict[str, Range], *,
              segments: int = 16, calibration: str = "max", pwl_method: str = "curvature",
              func_segments: dict[str, int] | None = None) -> Network:
    """Lower *model* (from :func:`~neuralmatrix.sw.frontend.load_model`: static shapes,
    constants folded) onto kernels and transfers.

    Parameters
    ----------
    config : HwConfig
        The hardware (PWL table size, array shape).
    ranges : dict
        :func:`~neuralmatrix.sw.quantize.calibrate` of the same model.
    segments : int
        PWL segments per function (at most ``config.pwl_segments``).
    calibration : str
        Threshold method of :func:`~neuralmatrix.sw.quantize.threshold`.
    pwl_method : str
        Breakpoint placement of :func:`neuralmatrix.sw.pwl.fit` (``uniform`` is fitted over
        the same range, placed uniformly, and stored as breakpoints).
    func_segments : dict, optional
        Segment count per function kind (``"exp"``, ``"gelu"``, ``"rsqrt"``, ...) overriding
        *segments*.
    """
    return _Lowering(model, config, ranges, segments, calibration, pwl_method,
                     func_segments or {}).run()


class _Lowering:
    def __init__(self, model, config, ranges, segments, calibration, pwl_method, func_segments):
        if not 1 <= segments <= config.pwl_segments:
            raise LinearizeError(f"segments must be 1..{config.pwl_segments} (the hardware "
                                 f"table size), got {segments}")
        unknown = sorted(set(func_segments) - FUNCTION_KINDS)
        if unknown:
            raise LinearizeError(f"func_segments: unknown function kind(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(sorted(FUNCTION_KINDS))}")
        for k, v in func_segments.items():
            if not 1 <= v <= config.pwl_segments:
                raise LinearizeError(f"segments for {k} must be 1..{config.pwl_segments}, got {v}")
        self.model = model
        self.cfg = config
        self.ranges = ranges
        self.segments = segments
        self.calibration = calibration
        self.pwl_method = pwl_method
        self.func_segments = func_segments
        g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            t = vi.type.tensor_type
            if t.HasField("shape"):
                self.shapes[vi.name] = tuple(d.dim_value for d in t.shape.dim)
        self.consumers: dict[str, list] = defaultdict(list)
        for node in g.node:
            for i in node.input:
                if i:
                    self.consumers[i].append(node)
        self.graph_outputs = {o.name for o in g.output}
        # Decomposed LayerNorms, by their first node; and by each chain node reading the input.
        self.layer_norms: dict[int, LayerNormPattern] = {}
        self._ln_reads: dict[int, LayerNormPattern] = {}
        for p in find_layer_norms(model, self.shapes):
            self.layer_norms[id(p.nodes[0])] = p
            self._ln_reads.update((id(n), p) for n in p.nodes if p.x in n.input)
        self.vals: dict[str, Tensor] = {}
        self.done: set[int] = set()
        self.steps: list = []
        self.notes: list[str] = []
        self._cache: dict = {}
        self._names: dict[str, int] = defaultdict(int)
        self.masks: dict[str, tuple[str, int]] = {}      # mask tensor -> (ids input, length)
        self.masked: dict[str, tuple[str, str]] = {}     # scores + mask -> (scores, mask)
        self._mm: dict[str, tuple] = {}                  # activation MatMul -> (acc, terms)
        self.grouped: dict[str, tuple] = {}              # column groups (see _emit_grouped)
        self.split: dict[str, list] = {}                 # two-digit lookups (see _op_Gather)
        self._chain_input: dict[str, str] = {}           # fused chain output -> its input

    # -- driver -----------------------------------------------------------------------------

    def run(self) -> Network:
        g = self.model.graph
        inputs: dict[str, Tensor | None] = {}
        for vi in g.input:
            if vi.name in self.consts:
                continue
            elem = vi.type.tensor_type.elem_type
            if elem in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
                inputs[vi.name] = None           # indices: consumed by Lookup steps
                continue
            shape = self.shapes[vi.name]
            conv = any(n.op_type in ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool",
                                     "BatchNormalization") for n in self.consumers[vi.name])
            perm = _channels_last(len(shape)) if conv else tuple(range(len(shape)))
            t = self._new(vi.name, shape, perm, self._scale(vi.name))
            self.vals[vi.name] = t
            inputs[vi.name] = t
        self._find_masks()
        self._find_percol()
        for node in g.node:
            if id(node) in self.done:
                continue
            if id(node) in self.layer_norms:
                self._layer_norm_chain(node)
                continue
            handler = getattr(self, f"_op_{node.op_type}", None)
            if handler is None:
                raise LinearizeError(f"{node.op_type} (node {node.name!r}) has no lowering")
            if all(i in self.consts or not i for i in node.input):
                continue                         # constant subgraph left by the frontend
            handler(node)
        outputs = {}
        for o in g.output:
            if o.name not in self.vals:
                raise LinearizeError(f"graph output {o.name!r} is a constant or was not computed")
            outputs[o.name] = self.vals[o.name]
        return Network(inputs, outputs, self.steps, self.notes)

    # -- helpers: tensors, scales -------------------------------------------------------------

    def _uniq(self, name: str) -> str:
        self._names[name] += 1
        return name if self._names[name] == 1 else f"{name}#{self._names[name]}"

    def _new(self, name, shape, perm, scale, elem=1, percol=False) -> Tensor:
        """A new activation; with *percol*, per-column scales when every consumer of the
        ONNX tensor *name* absorbs them (see :meth:`_find_percol`)."""
        rows, cols = _storage(shape, perm)
        t = Tensor(self._uniq(name), rows, cols, float(scale), elem, None, tuple(shape),
                   tuple(perm))
        if percol and name in self.percol and tuple(perm) == tuple(range(len(shape))):
            cm = self.ranges[name].colmax
            if cm is not None and cm.size == cols:
                s = np.maximum(cm, 1e-8 * max(float(cm.max()), 1e-30)) / INT8_MAX
                u = float(s.max()) / INT8_MAX
                t.scale = u
                t.colscale = np.clip(np.ceil(s / u - 1e-9), 1, INT8_MAX).astype(np.int64)
        return t

    def _find_percol(self):
        """ONNX tensors that may have per-column scales: every consumer folds a scale per
        input column exactly (constant-weight MatMul/Gemm into the weight rows, sums and PWL
        inputs into per-column coefficients and requantization, LayerNormalization into its
        mean and centering weights). The scales are whole multiples ``colscale[j]`` (1..127)
        of one unit, so integer coefficients stay exact. Outlier channels (transformer
        residual streams) then no longer cost the other channels their resolution."""
        self.percol: set[str] = set()
        for name, r in self.ranges.items():
            if r.colmax is None or name in self.graph_outputs or name in self.masks:
                continue
            users = self.consumers.get(name, [])
            if users and all(self._absorbs(u, name) for u in users):
                self.percol.add(name)

    def _absorbs(self, node, name) -> bool:
        op, ins = node.op_type, list(node.input)
        if id(node) in self._ln_reads:
            p = self._ln_reads[id(node)]
            return name == p.x and p.axis == len(self._shape(name)) - 1
        if op == "MatMul":
            return ins[0] == name and ins[1] in self.consts and self.consts[ins[1]].ndim == 2
        if op == "Gemm":
            return ins[0] == name and ins[1] in self.consts and not _attr(node, "transA", 0)
        if op == "LayerNormalization":
            return ins[0] == name and _attr(node, "axis", -1) in (-1, len(self._shape(name)) - 1)
        if op in ("Add", "Sub"):
            other = ins[1] if ins[0] == name else ins[0]
            if other in self.masks or ins[0] == ins[1]:
                return False
            out = tuple(self._shape(node.output[0]))
            if tuple(self._shape(name)) != out:
                return False
            return other in self.consts or tuple(self._shape(other)) == out
        return False

    def _range(self, name) -> Range:
        if name not in self.ranges:
            raise LinearizeError(f"no calibration range for tensor {name!r}")
        return self.ranges[name]

    def _scale(self, name) -> float:
        return max(threshold(self._range(name), self.calibration), 1e-8) / INT8_MAX

    def _shape(self, name) -> tuple[int, ...]:
        if name in self.consts:
            return tuple(self.consts[name].shape)
        if name in self.vals:
            return self.vals[name].shape
        return self.shapes[name]

    def _const(self, name, data, scale, shape=None) -> Tensor:
        data = np.asarray(data)
        t = Tensor(self._uniq(name), data.shape[0], data.shape[1], float(scale), 1,
                   data.astype(np.int64), shape or data.shape)
        return t

    def _diag(self, n: int, values) -> Tensor:
        """A constant ``n x n`` int8 diagonal matrix (cached)."""
        values = np.broadcast_to(np.asarray(values, dtype=np.int64), (n,))
        key = ("diag", n, values.tobytes())
        if key not in self._cache:
            self._cache[key] = self._const(f"diag{n}", np.diag(values), 1.0)
        return self._cache[key]

    def _ones(self, rows: int, cols: int, value: int = 1) -> Tensor:
        key = ("ones", rows, cols, value)
        if key not in self._cache:
            self._cache[key] = self._const(f"ones{rows}x{cols}", np.full((rows, cols), value), 1.0)
        return self._cache[key]

    def _single_consumer(self, name):
        cs = self.consumers[name]
        if len(cs) == 1 and name not in self.graph_outputs:
            return cs[0]
        return None

    def _val(self, name, node, percol=False) -> Tensor:
        """The activation *name*; with per-tensor scale unless the caller absorbs per-column
        scales (*percol*)."""
        if name not in self.vals:
            raise LinearizeError(f"{node.op_type} (node {node.name!r}): input {name!r} is not "
                                 f"an activation")
        t = self.vals[name]
        return t if percol else self._plain(t)

    def _plain(self, t: Tensor) -> Tensor:
        """*t* with one scale (a diagonal GEMM when it has per-column scales)."""
        if t.colscale is None:
            return t
        key = ("plain", id(t))
        if key not in self._cache:
            w = t.colw
            out = Tensor(self._uniq(f"{t.name}.plain"), t.rows, t.cols, t.scale * float(w.max()),
                         1, None, t.shape, t.perm)
            self._kernel(f"{t.name}.plain", t.name, [Term(t, self._diag(t.cols, 1))], out,
                         t.scale * w, role="linearization")
            self._cache[key] = out
        return self._cache[key]

    # -- helpers: steps -----------------------------------------------------------------------

    def _gather(self, name, origin, srcs, fn, perm=None, scale=None) -> Tensor:
        """A host Transfer: *fn* maps the sources' logical index arrays to the output's."""
        srcs = [self._plain(s) for s in srcs]
        idx, off = [], 0
        for s in srcs:
            flat = np.arange(s.rows * s.cols, dtype=np.int64).reshape(s.rows, s.cols) + off
            idx.append(s.from_matrix(flat))
            off += s.rows * s.cols
        out_idx = np.asarray(fn(*idx), dtype=np.int64)
        perm = tuple(range(out_idx.ndim)) if perm is None else tuple(perm)
        out = self._new(name, out_idx.shape, perm, srcs[0].scale if scale is None else scale)
        index = out.to_matrix(out_idx)
        if len(srcs) == 1 and index.size == srcs[0].rows * srcs[0].cols and \
                index.shape[1] == srcs[0].cols and np.array_equal(index.ravel(), np.arange(index.size)):
            # Same bytes in the same order: a new view of the source, no step.
            out.base = srcs[0]
            return out
        self.steps.append(Transfer(out.name, origin, list(srcs), out, index))
        return out

    def _relayout(self, t: Tensor, perm, origin) -> Tensor:
        perm = tuple(perm)
        if t.perm == perm:
            return t
        return self._gather(t.name + ".relayout", origin, [t], lambda i: i, perm)

    def _table(self, func, lo, hi, in_scale, out_scale, kind, func_name):
        segs = self.func_segments.get(kind, self.segments)
        if not hi > lo:
            lo, hi = lo - 1e-3, hi + 1e-3
        grid = np.linspace(lo, hi, 4097)
        with np.errstate(all="ignore"):
            ok = np.isfinite(np.asarray(func(grid), dtype=np.float64))
        if not ok.all():
            if not ok.any():
                raise LinearizeError(f"{func_name}: not finite anywhere on [{lo:g}, {hi:g}]")
            # Shrink to the finite part (e.g. sqrt or log at calibrated values just below 0).
            idx = np.nonzero(ok)[0]
            lo, hi = float(grid[idx[0]]), float(grid[idx[-1]])
        method = self.pwl_method
        fitted = pwl_lib.fit(func, lo, hi, segs, method=method)
        fitted = pwl_lib.PwlFit(fitted.breakpoints, fitted.slopes, fitted.intercepts,
                                fitted.method, fitted.objective, func, func_name)
        table = pwl_lib.quantize(fitted, in_scale=in_scale, out_scale=out_scale,
                                 mode="breakpoints", config=self.cfg)
        table.lo, table.hi = lo, hi
        return table

    def _kernel(self, name, origin, terms, out: Tensor, acc_scale, *, bias=None, func=None,
                pre=None, role="linear", kind="") -> Kernel:
        """Append a kernel; *func* (float callable) with the real range *pre* of its input
        puts a PWL table on the output path."""
        N = out.cols
        acc_scale = np.broadcast_to(np.asarray(acc_scale, dtype=np.float64), (N,)).copy()
        table = None
        if func is None:
            mult, shift = requant_params(acc_scale / (out.scale * out.colw))
        else:
            if out.colscale is not None:
                raise AssertionError(f"{name}: a PWL output has one scale")
            lo, hi = pre
            in_scale = max(abs(lo), abs(hi), 1e-6) / _IN16
            in_scale = max(in_scale, float(acc_scale.max()) / 60000.0)
            mult, shift = requant_params(acc_scale / in_scale)
            table = self._table(func, lo, hi, in_scale, out.scale, kind, kind or "f")
        b = None
        if bias is not None:
            b = bias_int32(np.broadcast_to(np.asarray(bias, dtype=np.float64), (N,)), acc_scale)
        k = Kernel(self._uniq(name), origin, terms, out, mult, shift, b, table, role, kind)
        self.steps.append(k)
        return k

    # -- element-wise chains ------------------------------------------------------------------

    def _scalar(self, name):
        if name in self.consts and self.consts[name].size == 1:
            return float(self.consts[name].reshape(()))
        return None

    def _chain(self, x: str):
        """The maximal chain of element-wise nodes computing a function of *x* alone.

        Returns ``(nodes, out_name)`` (``([], None)`` when there is none). A node joins when
        every non-constant input is *x* or a chain output and every constant input is a
        scalar; the chain is cut back until exactly one of its values leaves it.
        """
        inside = {x}
        members: list = []
        for n in self.model.graph.node:
            if id(n) in self.done or n.op_type not in ELEMENTWISE:
                continue
            ins = [i for i in n.input if i]
            if not any(i in inside for i in ins):
                continue
            if n.op_type in ("Dropout", "Clip"):
                ok = ins[0] in inside and all(i in self.consts for i in ins[1:])
            else:
                ok = all(i in inside or (i in self.consts and self.consts[i].size == 1) for i in ins)
            if ok:
                members.append(n)
                inside.add(n.output[0])
        while members:
            outs = {n.output[0] for n in members}
            leaving = [o for o in outs if o in self.graph_outputs
                       or any(c not in members for c in self.consumers[o])]
            if len(leaving) == 1:
                out = leaving[0]
                needed, keep = {out}, []
                for n in reversed(members):
                    if n.output[0] in needed:
                        keep.append(n)
                        needed.update(i for i in n.input if i)
                keep.reverse()
                if not any(n.op_type not in ("Identity", "Dropout", "Cast") for n in keep):
                    return [], None
                return keep, out
            members = members[:-1]
        return [], None

    def _chain_function(self, x: str, nodes, out: str):
        """The chain as a float function of a 1-D array (the reference ONNX runtime)."""
        from onnx.reference import ReferenceEvaluator

        inits, body = {}, []
        for n in nodes:
            for i in n.input:
                if i in self.consts:
                    inits[i] = numpy_helper.from_array(
                        np.asarray(self.consts[i], dtype=np.float64).reshape(()), i)
            if n.op_type in ("Cast", "Dropout", "Identity"):
                n = helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name)
            body.append(n)
        # In double precision: the fit's curvature estimate needs smooth samples.
        graph = helper.make_graph(
            body, "chain",
            [helper.make_tensor_value_info(x, onnx.TensorProto.DOUBLE, [None])],
            [helper.make_tensor_value_info(out, onnx.TensorProto.DOUBLE, [None])],
            list(inits.values()))
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        sess = ReferenceEvaluator(m, new_ops=_double_ops())

        def f(v):
            v = np.asarray(v, dtype=np.float64)
            r = sess.run(None, {x: v.ravel()})[0]
            return np.asarray(r, dtype=np.float64).reshape(v.shape)

        return f

    def _chain_kind(self, nodes) -> str:
        ops = [n.op_type for n in nodes if n.op_type in _ACTIVATIONS]
        if not ops:
            return "affine"
        if "Erf" in ops or "Gelu" in ops:
            return "gelu"
        return ops[0].lower()

    def _tail(self, x: str):
        """What follows a linear layer's output *x*: ``(func, pre_range, out_name, kind)``
        with the chain consumed, or ``(None, None, x, "")``."""
        nodes, out = self._chain(x)
        if not nodes:
            return None, None, x, ""
        for n in nodes:
            self.done.add(id(n))
        r = self._range(x)
        kind = self._chain_kind(nodes)
        self._chain_input[out] = x
        self.notes.append(f"{', '.join(n.name or n.op_type for n in nodes)}: one PWL "
                          f"({kind}) on the output of {x}")
        return self._chain_function(x, nodes, out), (r.lo, r.hi), out, kind

    def _emit_linear(self, node, terms, acc_scale, bias, out_name, shape, perm, *, role="linear"):
        """A kernel for a linear node, with the element-wise chain after it fused."""
        func, pre, final, kind = self._tail(out_name)
        if func is not None and self._groupable(final, terms, perm):
            return self._emit_grouped(node, terms, acc_scale, bias, final, shape, func, pre,
                                      kind, role)
        out = self._new(final, self._shape(final) if final != out_name else shape, perm,
                        self._scale(final), percol=func is None)
        if _prod(out.shape) != _prod(shape):
            raise LinearizeError(f"{node.op_type} (node {node.name!r}): fused chain changes the shape")
        out.shape = tuple(shape)
        self._kernel(node.name or node.op_type, node.name, terms, out, acc_scale, bias=bias,
                     func=func, pre=pre, role=role, kind=kind)
        self.vals[final] = out
        return out

    def _groupable(self, name, terms, perm) -> bool:
        """A PWL output can be split by column magnitude when only constant-weight
        MatMul/Gemm layers read it and every term's weights are constant."""
        users = self.consumers.get(name, [])
        r = self.ranges.get(name)
        if name in self.graph_outputs or not users or r is None or r.colmax is None:
            return False
        if tuple(perm) != tuple(range(len(perm))) or not all(t.b.const for t in terms):
            return False
        if not all(u.op_type in ("MatMul", "Gemm") and u.input[0] == name and
                   u.input[1] in self.consts and self.consts[u.input[1]].ndim == 2 and
                   not _attr(u, "transA", 0) for u in users):
            return False
        cm = r.colmax
        return cm.size == terms[0].b.cols and float(cm.max()) > 4 * float(np.median(cm))

    def _emit_grouped(self, node, terms, acc_scale, bias, final, shape, func, pre, kind, role):
        """The layer as up to :data:`PWL_GROUPS` kernels over column groups of similar
        magnitude (by calibration), each with its own PWL table and output scale: the
        element-wise function of a layer whose channels span decades (a transformer's GELU)
        keeps the resolution of its small channels. The consumers take one GEMM term per
        group (:meth:`_linear_const`)."""
        cm = self.ranges[final].colmax
        N = cm.size
        top = float(cm.max())
        level = np.clip(np.floor(np.log2(top / np.maximum(cm, top * 1e-6))), 0, PWL_GROUPS - 1)
        acc_scale = np.broadcast_to(np.asarray(acc_scale, dtype=np.float64), (N,))
        bias = None if bias is None else np.broadcast_to(np.asarray(bias, dtype=np.float64), (N,))
        r_in = self._range(self._chain_input.get(final, final))
        groups = []
        for g in range(PWL_GROUPS):
            idx = np.nonzero(level == g)[0]
            if idx.size == 0:
                continue
            out = Tensor(self._uniq(f"{final}.g{g}"), _prod(shape[:-1]), idx.size,
                         max(float(cm[idx].max()), 1e-8) / INT8_MAX)
            gterms = [Term(t.a, self._const(f"{t.b.name}.g{g}", np.asarray(t.b.data)[:, idx], 1.0))
                      for t in terms]
            cin = r_in.colmax[idx].max() if r_in.colmax is not None and \
                r_in.colmax.size == N else max(abs(pre[0]), abs(pre[1]))
            gpre = (max(pre[0], -float(cin)), min(pre[1], float(cin)))
            if not gpre[1] > gpre[0]:
                gpre = pre
            self._kernel(f"{node.name or node.op_type}.g{g}", node.name, gterms, out,
                         acc_scale[idx], bias=None if bias is None else bias[idx], func=func,
                         pre=gpre, role=role, kind=kind)
            groups.append((idx, out))
        self.grouped[final] = (tuple(shape), groups)
        self.notes.append(f"{final}: {len(groups)} column groups, one PWL ({kind}) table each")
        return groups[0][1]

    # -- linear layers ------------------------------------------------------------------------

    def _fold_after(self, name, nchan: int, chan_axis: int):
        """Fold BatchNormalization and constant per-channel Mul, Div, Add, Sub that follow a
        linear layer's output *name* (channels on *chan_axis*): returns
        ``(scale_per_channel, bias_per_channel, new_name)``."""
        a, b = None, None
        while True:
            c = self._single_consumer(name)
            if c is None or id(c) in self.done:
                return a, b, name
            if c.op_type == "BatchNormalization" and c.input[0] == name:
                gamma, beta, mean, var = (self.consts.get(i) for i in c.input[1:5])
                if any(v is None for v in (gamma, beta, mean, var)):
                    return a, b, name
                eps = _attr(c, "epsilon", 1e-5)
                s = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
                t = beta - mean * s
            elif c.op_type in ("Add", "Sub", "Mul", "Div"):
                other = c.input[1] if c.input[0] == name else c.input[0]
                if other not in self.consts or c.input[0] == c.input[1]:
                    return a, b, name
                v = self._per_channel(self.consts[other], len(self._shape(name)), nchan, chan_axis)
                if v is None:
                    return a, b, name
                if c.op_type == "Add":
                    s, t = np.ones(nchan), v
                elif c.op_type == "Sub":
                    s, t = (np.ones(nchan), -v) if c.input[0] == name else (-np.ones(nchan), v)
                elif c.op_type == "Mul":
                    s, t = v, np.zeros(nchan)
                else:
                    if c.input[0] != name:
                        return a, b, name
                    s, t = 1.0 / v, np.zeros(nchan)
            else:
                return a, b, name
            if tuple(self._shape(c.output[0])) != tuple(self._shape(name)):
                return a, b, name
            a = s if a is None else a * s
            b = t if b is None else b * s + t
            self.done.add(id(c))
            self.notes.append(f"{c.name or c.op_type} folded into the preceding layer")
            name = c.output[0]

    @staticmethod
    def _per_channel(v, rank: int, nchan: int, chan_axis: int):
        """Constant *v* as a per-channel vector, or None if it varies along another axis."""
        v = np.asarray(v, dtype=np.float64)
        if v.ndim > rank:
            return None
        vs = [1] * (rank - v.ndim) + list(v.shape)
        ax = chan_axis % rank
        if any(d != 1 for i, d in enumerate(vs) if i != ax) or vs[ax] not in (1, nchan):
            return None
        return np.broadcast_to(v.reshape(-1), (nchan,)).copy()

    def _op_Conv(self, node):
        x = self._val(node.input[0], node)
        w = self.consts.get(node.input[1])
        if w is None:
            raise LinearizeError(f"Conv (node {node.name!r}): weights must be constant")
        bias = self.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        rank = len(x.shape)
        if rank not in (3, 4):
            raise LinearizeError(f"Conv (node {node.name!r}): only 1-D and 2-D convolutions, "
                                 f"input has rank {rank}")
        nb = x.shape[0]
        x = self._relayout(x, _channels_last(rank), node.name)
        sp = rank - 2
        ks = list(w.shape[2:])
        strides = list(_attr(node, "strides", [1] * sp))
        dil = list(_attr(node, "dilations", [1] * sp))
        group = int(_attr(node, "group", 1))
        pads = list(_attr(node, "pads", [0] * (2 * sp)))
        auto = _attr(node, "auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        in_sp = list(x.shape[2:])
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0] * (2 * sp)
            for d in range(sp):
                out_d = -(-in_sp[d] // strides[d])
                total = max(0, (out_d - 1) * strides[d] + (ks[d] - 1) * dil[d] + 1 - in_sp[d])
                lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
                pads[d], pads[d + sp] = lo, total - lo
        elif auto == "VALID":
            pads = [0] * (2 * sp)
        if sp == 1:                                 # treat 1-D as 2-D with height 1
            ks, strides, dil = [1] + ks, [1] + strides, [1] + dil
            pads = [0, pads[0], 0, pads[1]]
            in_sp = [1] + in_sp
            w = w[:, :, None, :]
        cout, cin_g, kh, kw = w.shape
        cin = x.shape[1]
        if cin != cin_g * group:
            raise LinearizeError(f"Conv (node {node.name!r}): {cin} input channels, weights "
                                 f"expect {cin_g} x group {group}")
        H, W = in_sp
        Ho = (H + pads[0] + pads[2] - dil[0] * (kh - 1) - 1) // strides[0] + 1
        Wo = (W + pads[1] + pads[3] - dil[1] * (kw - 1) - 1) // strides[1] + 1

        def im2col(i):
            i = i.reshape(nb, cin, H, W)
            p = np.pad(i, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])),
                       constant_values=FILL_ZERO)
            b = np.arange(nb)[:, None, None, None, None, None]
            oy = np.arange(Ho)[None, :, None, None, None, None]
            ox = np.arange(Wo)[None, None, :, None, None, None]
            c = np.arange(cin)[None, None, None, :, None, None]
            ky = np.arange(kh)[None, None, None, None, :, None]
            kx = np.arange(kw)[None, None, None, None, None, :]
            cols = p[b, c, oy * strides[0] + ky * dil[0], ox * strides[1] + kx * dil[1]]
            return cols.reshape(nb * Ho * Wo, cin * kh * kw)

        a = self._gather(f"{node.name}.im2col", node.name, [x], im2col)
        s_bn, t_bn, out_name = self._fold_after(node.output[0], cout, 1)
        wf = w.astype(np.float64).reshape(cout, cin_g * kh * kw)
        bf = np.zeros(cout) if bias is None else bias.astype(np.float64)
        if s_bn is not None:
            wf = wf * s_bn[:, None]
            bf = bf * s_bn + t_bn
        q, sw = quantize_weights(wf, axis=0)
        cout_g = cout // group
        B = np.zeros((cin * kh * kw, cout), dtype=np.int64)
        kg = cin_g * kh * kw
        for g in range(group):
            B[g * kg:(g + 1) * kg, g * cout_g:(g + 1) * cout_g] = q[g * cout_g:(g + 1) * cout_g].T
        wt = self._const(f"{node.name}.W", B, 1.0)
        shape = (nb, cout) + ((Wo,) if sp == 1 else (Ho, Wo))
        self._emit_linear(node, [Term(a, wt)], x.scale * sw, bf, out_name, shape,
                          _channels_last(len(shape)))

    def _op_Gemm(self, node):
        if node.input[0] in self.grouped:
            w = self.consts[node.input[1]].astype(np.float64) * _attr(node, "alpha", 1.0)
            if _attr(node, "transB", 0):
                w = w.T
            N = w.shape[1]
            bias = self.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            bf = np.zeros(N) if bias is None else np.broadcast_to(
                bias.astype(np.float64).reshape(-1) * _attr(node, "beta", 1.0), (N,)).copy()
            return self._linear_grouped(node, node.input[0], w, bf)
        x = self._val(node.input[0], node,
                      percol=node.input[1] in self.consts and not _attr(node, "transA", 0))
        if _attr(node, "transA", 0):
            x = self._gather(f"{node.name}.transA", node.name, [x], lambda i: i.T)
        x = self._relayout(x, (0, 1), node.name)
        w = self.consts.get(node.input[1])
        alpha, beta = _attr(node, "alpha", 1.0), _attr(node, "beta", 1.0)
        bias = self.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if bias is None and len(node.input) > 2 and node.input[2] and beta != 0:
            raise LinearizeError(f"Gemm (node {node.name!r}): C must be a constant (an "
                                 f"activation C is not supported)")
        if w is None:
            return self._gemm_activations(node, x, alpha, beta, bias)
        w = w.astype(np.float64) * alpha
        if _attr(node, "transB", 0):
            w = w.T
        N = w.shape[1]
        bf = np.zeros(N) if bias is None else np.broadcast_to(
            bias.astype(np.float64).reshape(-1) * beta, (N,)).copy()
        if bias is not None and bias.size not in (1, N):
            raise LinearizeError(f"Gemm (node {node.name!r}): C must broadcast along rows")
        self._linear_const(node, x, w, bf, (x.shape[0], N))

    def _gemm_activations(self, node, x, alpha, beta, bias):
        y = self._val(node.input[1], node)
        y = self._relayout(y, (0, 1), node.name)
        if _attr(node, "transB", 0):
            y = self._gather(f"{node.name}.transB", node.name, [y], lambda i: i.T)
        N = y.shape[1]
        if bias is not None and not (bias.size in (1, N) and bias.ndim <= 2
                                     and (bias.ndim < 2 or bias.shape[0] == 1)):
            raise LinearizeError(f"Gemm (node {node.name!r}): C must broadcast along rows")
        bf = None if bias is None else np.broadcast_to(bias.astype(np.float64).reshape(-1) * beta, (N,))
        if alpha <= 0:
            raise LinearizeError(f"Gemm (node {node.name!r}): alpha must be positive with an "
                                 f"activation B")
        self._emit_linear(node, [Term(x, y)], x.scale * y.scale * alpha, bf, node.output[0],
                          (x.shape[0], N), (0, 1))

    def _linear_const(self, node, x, w, bf, shape):
        s, t, out_name = self._fold_after(node.output[0], w.shape[1], -1)
        if s is not None:
            w = w * s[None, :]
            bf = bf * s + t
        w = w * x.colw[:, None]                     # per-column input scales: weight rows
        q, sw = quantize_weights(w, axis=1)
        wt = self._const(f"{node.name}.W", q, 1.0)
        self._emit_linear(node, [Term(x, wt)], x.scale * sw, bf, out_name, shape,
                          tuple(range(len(shape))))

    def _linear_grouped(self, node, name, w, bf):
        """``x @ w`` for a column-grouped *x*: one term per group, the group scales folded
        into the weight rows."""
        shape, groups = self.grouped[name]
        s_row = np.zeros(w.shape[0])
        for idx, t in groups:
            s_row[idx] = t.scale
        s, t_, out_name = self._fold_after(node.output[0], w.shape[1], -1)
        if s is not None:
            w = w * s[None, :]
            bf = bf * s + t_
        q, sw = quantize_weights(w * s_row[:, None], axis=1)
        terms = [Term(t, self._const(f"{node.name}.W.{i}", q[idx], 1.0))
                 for i, (idx, t) in enumerate(groups)]
        out_shape = tuple(shape[:-1]) + (w.shape[1],)
        self._emit_linear(node, terms, sw, bf, out_name, out_shape, tuple(range(len(out_shape))))

    def _op_MatMul(self, node):
        a_name, b_name = node.input[:2]
        if a_name in self.grouped:
            w = self.consts[b_name].astype(np.float64)
            return self._linear_grouped(node, a_name, w, np.zeros(w.shape[1]))
        if a_name in self.consts and b_name not in self.consts:
            raise LinearizeError(f"MatMul (node {node.name!r}): constant A with activation B "
                                 f"is not supported")
        x = self._val(a_name, node, percol=b_name in self.consts)
        x = self._relayout(x, tuple(range(len(x.shape))), node.name)
        if b_name in self.consts:
            w = self.consts[b_name].astype(np.float64)
            if w.ndim != 2:
                raise LinearizeError(f"MatMul (node {node.name!r}): constant B must be 2-D")
            shape = x.shape[:-1] + (w.shape[1],)
            self._linear_const(node, x, w, np.zeros(w.shape[1]), shape)
            return
        y = self._val(b_name, node)
        y = self._relayout(y, tuple(range(len(y.shape))), node.name)
        xs, ys = x.shape, y.shape
        if len(xs) < 2 or len(ys) < 2:
            raise LinearizeError(f"MatMul (node {node.name!r}): 1-D operands are not supported")
        batch = np.broadcast_shapes(xs[:-2], ys[:-2])
        M, K, N = xs[-2], xs[-1], ys[-1]
        if ys[-2] != K:
            raise LinearizeError(f"MatMul (node {node.name!r}): inner dimensions {K} and {ys[-2]}")
        if tuple(xs[:-2]) != tuple(batch):
            x = self._gather(f"{node.name}.bcastA", node.name, [x],
                             lambda i: np.broadcast_to(i, tuple(batch) + (M, K)))
        if tuple(ys[:-2]) != tuple(batch):
            y = self._gather(f"{node.name}.bcastB", node.name, [y],
                             lambda i: np.broadcast_to(i, tuple(batch) + (K, N)))
        shape = tuple(batch) + (M, N)
        func, pre, final, kind = self._tail(node.output[0])
        out = self._new(final, shape, tuple(range(len(shape))), self._scale(final))
        acc = x.scale * y.scale
        users = self.consumers[final]
        to_softmax = func is None and final not in self.graph_outputs and users and all(
            u.op_type in ("Softmax", "LogSoftmax") or
            (u.op_type == "Add" and any(i in self.masks for i in u.input)) for u in users)
        if to_softmax:
            # Scores: an int8 scale that is a whole number of accumulator units, so the
            # softmax kernels can subtract the int8 row maximum from the int32 product exactly.
            out.scale = max(1, round(out.scale / acc)) * acc
        nb = _prod(batch)
        parts = []
        for b in range(nb):
            xa = self._view(x, b * M, M)
            yb = self._view(y, b * K, K)
            ob = self._view(out, b * M, M)
            self._kernel(f"{node.name or 'MatMul'}[{b}]", node.name, [Term(xa, yb)], ob,
                         acc, func=func, pre=pre, kind=kind)
            parts.append((b * M, M, Term(xa, yb)))
        if to_softmax:
            self._mm[final] = (acc, parts)
        self.vals[final] = out

    def _view(self, t: Tensor, row0: int, rows: int) -> Tensor:
        """Rows ``row0 .. row0 + rows`` of *t*'s storage, as a tensor of its own."""
        if row0 == 0 and rows == t.rows:
            return t
        v = Tensor(f"{t.name}[{row0}:{row0 + rows}]", rows, t.cols, t.scale, t.elem)
        v.base, v.row0, v.colscale = t, row0, t.colscale
        return v

    # -- element-wise ---------------------------------------------------------------------

    def _elementwise_chain(self, node) -> bool:
        """Lower *node* and the element-wise chain it starts as one PWL kernel, if it is one."""
        x = next((i for i in node.input if i in self.vals), None)
        if x is None:
            return False
        nodes, out = self._chain(x)
        if not nodes or node not in nodes:
            return False
        for n in nodes:
            self.done.add(id(n))
        t = self.vals[x]
        r = self._range(x)
        f = self._chain_function(x, nodes, out)
        kind = self._chain_kind(nodes)
        if kind == "affine":
            # a * x + b: a scale change (a > 0, b = 0: no step) or one GEMM with a bias.
            b = float(f(np.zeros(1))[0])
            a = float(f(np.ones(1))[0]) - b
            names = ", ".join(n.name or n.op_type for n in nodes)
            if a > 0 and b == 0:
                o = self._new(out, t.shape, t.perm, t.scale * a)
                o.base, o.colscale = t, t.colscale
                self.notes.append(f"{names}: x * {a:g}, folded into the scale")
            else:
                o = self._new(out, t.shape, t.perm, self._scale(out), percol=True)
                self._kernel(f"{nodes[0].name or nodes[0].op_type}.affine", names,
                             [Term(t, self._diag(t.cols, 1 if a >= 0 else -1))], o,
                             t.scale * t.colw * max(abs(a), 1e-30), bias=np.full(t.cols, b) if b else None,
                             role="linearization")
                self.notes.append(f"{names}: x * {a:g} + {b:g}, one GEMM with a bias")
            self.vals[out] = o
            return True
        o = self._new(out, t.shape, t.perm, self._scale(out))
        self._kernel(f"{nodes[0].name or nodes[0].op_type}.pwl", ",".join(n.name for n in nodes),
                     [Term(t, self._diag(t.cols, 1))], o, t.scale * t.colw, func=f, pre=(r.lo, r.hi),
                     role="linearization", kind=kind)
        self.notes.append(f"{', '.join(n.name or n.op_type for n in nodes)}: one PWL ({kind})")
        self.vals[out] = o
        return True

    def _unary(self, node):
        if not self._elementwise_chain(node):
            raise LinearizeError(f"{node.op_type} (node {node.name!r}): not an element-wise "
                                 f"function of one tensor")

    _op_Relu = _op_LeakyRelu = _op_Elu = _op_Selu = _op_Sigmoid = _op_HardSigmoid = _unary
    _op_HardSwish = _op_Tanh = _op_Softplus = _op_Gelu = _op_Erf = _op_Exp = _unary
    _op_Sqrt = _op_Reciprocal = _op_Clip = _op_Neg = _op_Pow = _unary

    def _op_PRelu(self, node):
        if self._scalar(node.input[1]) is not None:
            return self._unary(node)
        # Per-channel slope: relu(x) - a * relu(-x), two PWL kernels and a sum.
        x = self._val(node.input[0], node)
        a = self.consts.get(node.input[1])
        if a is None:
            raise LinearizeError(f"PRelu (node {node.name!r}): slope must be constant")
        r = self._range(node.input[0])
        rank = len(x.shape)
        if rank >= 3:                                # per-channel slope: channels last
            x = self._relayout(x, _channels_last(rank), node.name)
        n = x.cols
        v = self._per_channel(a, rank, n, 1 if rank >= 3 else -1)
        if v is None and a.ndim == 1 and rank >= 3 and a.size == n != x.shape[-1]:
            v = a.astype(np.float64)     # opset < 7 exports: a 1-D slope is per channel
        if v is None:
            raise LinearizeError(f"PRelu (node {node.name!r}): slope must be a scalar or one "
                                 f"value per channel")
        a = v
        pos = self._new(node.output[0] + ".pos", x.shape, x.perm, max(r.hi, 1e-6) / INT8_MAX)
        neg = self._new(node.output[0] + ".neg", x.shape, x.perm, max(-r.lo, 1e-6) / INT8_MAX)
        self._kernel(f"{node.name}.pos", node.name, [Term(x, self._diag(n, 1))], pos, x.scale,
                     func=pwl_lib.relu, pre=(r.lo, r.hi), role="linearization", kind="relu")
        self._kernel(f"{node.name}.neg", node.name, [Term(x, self._diag(n, -1))], neg, x.scale,
                     func=pwl_lib.relu, pre=(-r.hi, -r.lo), role="linearization", kind="relu")
        self._sum(node, [(pos, np.ones(n)), (neg, -a)], node.output[0], x.shape, x.perm)

    def _sum(self, node, parts, out_name, shape, perm, *, bias=None, fuse=True):
        """``out = sum_i c_i * x_i`` (per-column real coefficients ``c_i``), accumulated in
        int32 with diagonal int8 weights; the element-wise chain after it is fused."""
        n = parts[0][0].cols
        w = np.stack([np.asarray(c, dtype=np.float64) * t.scale * t.colw for t, c in parts])  # P x n
        q, acc = _coefficients(w)
        terms = [Term(t, self._diag(n, q[i])) for i, (t, _) in enumerate(parts)]
        if fuse:
            return self._emit_linear(node, terms, acc, bias, out_name, shape, perm,
                                     role="linearization")
        out = self._new(out_name, shape, perm, self._scale(out_name), percol=True)
        self._kernel(node.name or node.op_type, node.name, terms, out, acc, bias=bias,
                     role="linearization")
        self.vals[out_name] = out
        return out

    def _binary_operands(self, node):
        a, b = node.input[:2]
        out_shape = self._shape(node.output[0])
        return a, b, out_shape

    def _broadcast_to(self, t: Tensor, shape, perm, origin) -> Tensor:
        if tuple(t.shape) == tuple(shape):
            return self._relayout(t, perm, origin)
        return self._gather(f"{t.name}.bcast", origin, [t],
                            lambda i: np.broadcast_to(i.reshape((1,) * (len(shape) - i.ndim) + i.shape),
                                                      shape), perm)

    def _op_Add(self, node, sign=1.0):
        if sign > 0 and (node.input[0] in self.masks or node.input[1] in self.masks):
            mask, scores = node.input[:2] if node.input[0] in self.masks else node.input[1::-1]
            users = self.consumers[node.output[0]]
            if node.output[0] in self.graph_outputs or not users or \
                    any(u.op_type not in ("Softmax", "LogSoftmax") for u in users):
                raise LinearizeError(f"Add (node {node.name!r}): an attention mask must feed "
                                     f"a Softmax only")
            if tuple(self._shape(node.output[0])) != tuple(self._shape(scores)):
                raise LinearizeError(f"Add (node {node.name!r}): the mask must broadcast to "
                                     f"the scores")
            self._val(scores, node)
            self.masked[node.output[0]] = (scores, mask)
            return
        if self._elementwise_chain(node):
            return
        a, b, shape = self._binary_operands(node)
        if a in self.vals and b in self.vals:
            ta, tb = self._val(a, node, percol=True), self._val(b, node, percol=True)
            lead = ta if tuple(ta.shape) == tuple(shape) else tb
            perm = lead.perm
            parts = []
            for name, t, c in ((a, ta, 1.0), (b, tb, sign)):
                for p in self.split.get(name, [t]):
                    p = self._broadcast_to(p, shape, perm, node.name)
                    parts.append((p, c * np.ones(p.cols)))
            self._sum(node, parts, node.output[0], shape, perm)
            return
        x_name, c_name = (a, b) if a in self.vals else (b, a)
        x = self._val(x_name, node, percol=True)
        c = self.consts[c_name].astype(np.float64)
        coef = 1.0 if (x_name == a or sign > 0) else -1.0
        csign = sign if x_name == a else 1.0
        if tuple(x.shape) != tuple(shape):
            x = self._broadcast_to(x, shape, x.perm, node.name)
        n = x.cols
        vs = [1] * (len(shape) - c.ndim) + list(c.shape)
        per_col = all(d == 1 for i, d in enumerate(vs) if i != x.perm[-1])
        if per_col:
            bias = csign * np.broadcast_to(c.reshape(-1), (n,))
            self._sum(node, [(x, coef * np.ones(n))], node.output[0], shape, x.perm, bias=bias)
            return
        # A constant tensor: operands of its own in the int32 sum (two int8 digits per
        # element, per-column scales: about 14 bits).
        full = np.broadcast_to(c.reshape(vs), shape)
        probe = Tensor("probe", *_storage(shape, x.perm), 1.0, 1, None, tuple(shape), x.perm)
        parts = [(x, coef * np.ones(n))]
        for t in self._digits(c_name, probe.to_matrix(full), tuple(shape), x.perm):
            parts.append((t, csign * np.ones(n)))
        self._sum(node, parts, node.output[0], shape, x.perm)

    def _digits(self, name, m, shape, perm, table=False) -> list[Tensor]:
        """A float matrix *m* as two int8 constants ``hi, lo`` with per-column scales:
        ``m ~ hi * scale * w + lo * scale / 127 * w`` (an int32 sum of the two keeps about 14
        bits of every column; *table* only changes the names)."""
        m = np.asarray(m, dtype=np.float64)
        cm = np.maximum(np.abs(m).max(axis=0), 1e-12) / INT8_MAX
        u = float(cm.max()) / INT8_MAX
        w = np.clip(np.ceil(cm / u - 1e-9), 1, INT8_MAX).astype(np.int64)
        sc = u * w
        hi = np.clip(np.round(m / sc), -INT8_MAX, INT8_MAX)
        lo = np.clip(np.round((m - hi * sc) / (sc / INT8_MAX)), -INT8_MAX, INT8_MAX)
        out = []
        for tag, q, unit in (("hi", hi, u), ("lo", lo, u / INT8_MAX)):
            t = Tensor(self._uniq(f"{name}.{tag}"), m.shape[0], m.shape[1], unit, 1,
                       q.astype(np.int64), shape, perm)
            t.colscale = w
            out.append(t)
        return out

    def _op_Sub(self, node):
        self._op_Add(node, sign=-1.0)

    def _op_Mul(self, node, div=False):
        if self._elementwise_chain(node):
            return
        a, b, shape = self._binary_operands(node)
        if a in self.vals and b in self.vals and not div:
            return self._product(node, self._val(a, node), self._val(b, node), shape)
        if div and b in self.vals:
            return self._quotient(node, a, b, shape)
        x_name, c_name = (a, b) if a in self.vals else (b, a)
        x = self._val(x_name, node, percol=True)
        c = self.consts[c_name].astype(np.float64)
        if div:
            c = 1.0 / c
        if c.size == 1 and float(c.reshape(())) > 0 and tuple(x.shape) == tuple(shape):
            # A positive scalar only changes the scale: no step.
            out = self._new(node.output[0], x.shape, x.perm, x.scale * float(c.reshape(())))
            out.base, out.colscale = x, x.colscale
            self.vals[node.output[0]] = out
            self.notes.append(f"{node.name or node.op_type}: scalar folded into the scale")
            return
        if tuple(x.shape) != tuple(shape):
            x = self._broadcast_to(x, shape, x.perm, node.name)
        n = x.cols
        vs = [1] * (len(shape) - c.ndim) + list(c.shape)
        if not all(d == 1 for i, d in enumerate(vs) if i != x.perm[-1]):
            raise LinearizeError(f"{node.op_type} (node {node.name!r}): constant must be a scalar "
                                 f"or per-{'channel' if len(shape) > 2 else 'column'} vector")
        self._sum(node, [(x, np.broadcast_to(c.reshape(-1), (n,)))], node.output[0], shape, x.perm)

    def _op_Div(self, node):
        self._op_Mul(node, div=True)

    def _product(self, node, ta, tb, shape, absmax=None):
        """``x * y = A B ((x/A + y/B)^2 - (x/A - y/B)^2) / 4`` with two PWL squares, ``A, B``
        the magnitudes of ``x`` and ``y`` (*absmax*; default: the calibrated ranges of the
        node's two inputs): both operands enter the squares at full int8 resolution, however
        different their sizes."""
        perm = ta.perm if tuple(ta.shape) == tuple(shape) else tb.perm
        ta = self._broadcast_to(ta, shape, perm, node.name)
        tb = self._broadcast_to(tb, shape, perm, node.name)
        n = ta.cols
        if absmax is None:
            absmax = (self._range(node.input[0]).absmax, self._range(node.input[1]).absmax)
        A, B = (max(float(v), 1e-12) for v in absmax)
        sq = []
        for tag, sgn in (("sum", 1.0), ("diff", -1.0)):
            w = np.array([ta.scale / A, sgn * tb.scale / B])
            top = np.max(np.abs(w))
            q = np.round(w / top * INT8_MAX).astype(np.int64)
            o = self._new(f"{node.output[0]}.{tag}2", shape, perm, 4.0 / INT8_MAX)
            self._kernel(f"{node.name}.{tag}2", node.name,
                         [Term(ta, self._diag(n, q[0])), Term(tb, self._diag(n, q[1]))], o,
                         top / INT8_MAX, func=lambda v: np.asarray(v) ** 2, pre=(-2.0, 2.0),
                         role="linearization", kind="square")
            sq.append(o)
        self._sum(node, [(sq[0], 0.25 * A * B * np.ones(n)), (sq[1], -0.25 * A * B * np.ones(n))],
                  node.output[0], shape, perm)

    def _quotient(self, node, a, b, shape):
        """``a / b`` of two tensors: a PWL reciprocal of *b* on its calibrated range (which
        must not reach 0; the table's range reduction covers one that spans decades), then
        the product :meth:`_product`."""
        ta, tb = self._val(a, node), self._val(b, node)
        rb = self._range(b)
        if rb.lo <= 0.0 <= rb.hi:
            raise LinearizeError(
                f"Div (node {node.name!r}): the divisor {b!r} takes values in "
                f"[{rb.lo:.4g}, {rb.hi:.4g}] on the calibration inputs, which reach 0: a "
                f"reciprocal needs a divisor of one sign, bounded away from 0")
        small = min(abs(rb.lo), abs(rb.hi))
        recip = self._new(f"{node.output[0]}.recip", tb.shape, tb.perm, 1.0 / small / INT8_MAX)
        self._kernel(f"{node.name or 'Div'}.recip", node.name,
                     [Term(tb, self._diag(tb.cols, 1))], recip, tb.scale * tb.colw,
                     func=lambda v: 1.0 / np.asarray(v, dtype=np.float64), pre=(rb.lo, rb.hi),
                     role="linearization", kind="reciprocal")
        self.notes.append(f"{node.name or 'Div'}: a / b as a * (1/b), a PWL reciprocal of "
                          f"{b} on [{rb.lo:.4g}, {rb.hi:.4g}]")
        self._product(node, ta, recip, shape, absmax=(self._range(a).absmax, 1.0 / small))

    # -- reductions, pooling ----------------------------------------------------------------

    def _rows_by(self, x: Tensor, axes, origin) -> Tensor:
        """*x* as a matrix whose columns are the reduced *axes* (moved last, in order)."""
        rank = len(x.shape)
        keep = [d for d in range(rank) if d not in axes]
        perm = tuple(keep) + tuple(axes)
        if len(axes) == 1:
            return self._relayout(x, perm, origin)
        lead = tuple(x.shape[d] for d in keep)
        red = _prod([x.shape[d] for d in axes])
        return self._gather(f"{x.name}.rows", origin, [x],
                            lambda i: np.transpose(i, perm).reshape(lead + (red,)))

    def _reduce(self, node, mean: bool):
        x = self._val(node.input[0], node)
        rank = len(x.shape)
        axes = _attr(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.consts[node.input[1]].tolist()
        if axes is None or len(axes) == 0:
            axes = list(range(rank))
        axes = sorted(a % rank for a in axes)
        out_shape = self._shape(node.output[0])
        count = _prod([x.shape[a] for a in axes])
        # Reducing every stored row of a channel-last tensor (global pooling): ones-row @ x.
        if x.shape[0] == 1 and x.perm[-1] not in axes and \
                set(range(rank)) - set(axes) == {0, x.perm[-1]}:
            perm = _channels_last(len(out_shape)) if len(out_shape) >= 3 else \
                tuple(range(len(out_shape)))
            out = self._new(node.output[0], out_shape, perm, self._scale(node.output[0]))
            self._kernel(node.name or node.op_type, node.name, [Term(self._ones(1, x.rows), x)],
                         out, x.scale / (count if mean else 1), role="linearization")
            self.vals[node.output[0]] = out
            return
        xr = self._rows_by(x, axes, node.name)
        lead = tuple(x.shape[d] for d in range(rank) if d not in axes)
        out = self._new(node.output[0] + ".sum", lead + (1,), tuple(range(len(lead) + 1)),
                        self._scale(node.output[0]))
        self._kernel(node.name or node.op_type, node.name, [Term(xr, self._ones(xr.cols, 1))],
                     out, x.scale / (count if mean else 1), role="linearization")
        self.vals[node.output[0]] = self._gather(node.output[0], node.name, [out],
                                                 lambda i: i.reshape(out_shape))

    def _op_ReduceMean(self, node):
        self._reduce(node, True)

    def _op_ReduceSum(self, node):
        self._reduce(node, False)

    def _op_GlobalAveragePool(self, node):
        x = self._val(node.input[0], node)
        x = self._relayout(x, _channels_last(len(x.shape)), node.name)
        out_shape = self._shape(node.output[0])
        out = self._new(node.output[0], out_shape, _channels_last(len(out_shape)),
                        self._scale(node.output[0]))
        self._kernel(node.name or node.op_type, node.name, [Term(self._ones(1, x.rows), x)], out,
                     x.scale / x.rows, role="linearization")
        self.vals[node.output[0]] = out

    def _windows(self, node, x: Tensor, fill):
        """Shifted views of a pooling window, stacked: ``(stack, views, out_shape)``."""
        rank = len(x.shape)
        sp = rank - 2
        if sp not in (1, 2):
            raise LinearizeError(f"{node.op_type} (node {node.name!r}): only 1-D and 2-D pooling, "
                                 f"input has rank {rank}")
        ks = list(_attr(node, "kernel_shape"))
        strides = list(_attr(node, "strides", [1] * sp))
        dil = list(_attr(node, "dilations", [1] * sp))
        pads = list(_attr(node, "pads", [0] * (2 * sp)))
        ceil = _attr(node, "ceil_mode", 0)
        auto = _attr(node, "auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        in_sp = list(x.shape[2:])
        if auto != "NOTSET":
            raise LinearizeError(f"{node.op_type} (node {node.name!r}): auto_pad={auto} is not "
                                 f"supported; use explicit pads")
        out_sp = []
        for d in range(sp):
            span = in_sp[d] + pads[d] + pads[d + sp] - dil[d] * (ks[d] - 1) - 1
            o = (-(-span // strides[d]) if ceil else span // strides[d]) + 1
            if ceil and (o - 1) * strides[d] >= in_sp[d] + pads[d]:
                o -= 1
            out_sp.append(o)
        if sp == 1:
            ks, strides, dil, in_sp, out_sp = [1] + ks, [1] + strides, [1] + dil, [1] + in_sp, [1] + out_sp
            pads = [0, pads[0], 0, pads[1]]
        C = x.shape[1]
        H, W = in_sp
        Ho, Wo = out_sp
        kh, kw = ks
        extra_h = max(0, (Ho - 1) * strides[0] + (kh - 1) * dil[0] + 1 - (H + pads[0] + pads[2]))
        extra_w = max(0, (Wo - 1) * strides[1] + (kw - 1) * dil[1] + 1 - (W + pads[1] + pads[3]))

        nb = x.shape[0]

        def stack(i):
            i = i.reshape(nb, C, H, W)
            width = ((0, 0), (0, 0), (pads[0], pads[2] + extra_h), (pads[1], pads[3] + extra_w))
            if fill == "edge":
                p = np.pad(i, width, mode="edge")
            else:
                p = np.pad(i, width, constant_values=fill)
            views = []
            for ky in range(kh):
                for kx in range(kw):
                    ys = np.arange(Ho) * strides[0] + ky * dil[0]
                    xs = np.arange(Wo) * strides[1] + kx * dil[1]
                    v = p[:, :, ys][:, :, :, xs]
                    views.append(np.transpose(v, (0, 2, 3, 1)).reshape(nb * Ho * Wo, C))
            return np.concatenate(views, axis=0)

        x = self._relayout(x, _channels_last(rank), node.name)
        st = self._gather(f"{node.name}.windows", node.name, [x], stack)
        n = kh * kw
        px = nb * Ho * Wo
        views = [self._view(st, t * px, px) for t in range(n)]
        out_shape = (nb, C) + ((Wo,) if sp == 1 else (Ho, Wo))
        has_pad = any(pads) or extra_h or extra_w
        return views, out_shape, has_pad, n

    def _op_MaxPool(self, node):
        if len(node.output) > 1 and node.output[1]:
            raise LinearizeError(f"MaxPool (node {node.name!r}): the Indices output is not supported")
        x = self._val(node.input[0], node)
        # Contiguous windows (no dilation) that touch the padding also hold the edge element,
        # so replicating the edge is exact and keeps max(a, b) within one int8 range.
        dilated = any(d != 1 for d in _attr(node, "dilations", [1]))
        views, out_shape, _, _ = self._windows(node, x, FILL_MIN if dilated else "edge")
        C = x.shape[1]
        # b - a spans the input's range: when that exceeds one int8 range (inputs of both
        # signs, or -128 padding), relu(b - a) is stored at twice the scale (max(a, b) is
        # then within one step; it is exact when the inputs are of one sign, as after ReLU).
        r = self._range(node.input[0])
        span = (255 if dilated else max(r.hi - r.lo, 0.0) / x.scale)
        dk = 1 if span <= INT8_MAX + 1e-6 else 2
        level = 0
        while len(views) > 1:
            nxt = []
            for i in range(0, len(views) - 1, 2):
                a, b = views[i], views[i + 1]
                d = Tensor(self._uniq(f"{node.name}.d{level}.{i}"), a.rows, C, a.scale * dk)
                self._kernel(f"{node.name}.relu{level}.{i}", node.name,
                             [Term(a, self._diag(C, -1)), Term(b, self._diag(C, 1))], d, a.scale,
                             func=pwl_lib.relu, pre=(-255 * a.scale, 255 * a.scale),
                             role="linearization", kind="relu")
                m = Tensor(self._uniq(f"{node.name}.max{level}.{i}"), a.rows, C, a.scale)
                self._kernel(f"{node.name}.max{level}.{i}", node.name,
                             [Term(a, self._diag(C, 1)), Term(d, self._diag(C, dk))], m, a.scale,
                             role="linearization")
                nxt.append(m)
            if len(views) % 2:
                nxt.append(views[-1])
            views = nxt
            level += 1
        res = views[0]
        out = self._new(node.output[0], out_shape, _channels_last(len(out_shape)), res.scale)
        if len(self.steps) and isinstance(self.steps[-1], Kernel) and self.steps[-1].out is res:
            self.steps[-1].out = out
        else:
            out.base = res
        self.vals[node.output[0]] = out

    def _op_AveragePool(self, node):
        x = self._val(node.input[0], node)
        views, out_shape, has_pad, n = self._windows(node, x, FILL_ZERO)
        if has_pad and not _attr(node, "count_include_pad", 0):
            raise LinearizeError(f"AveragePool (node {node.name!r}): padding with "
                                 f"count_include_pad=0 (a per-pixel divisor) is not supported")
        C = x.shape[1]
        out = self._new(node.output[0], out_shape, _channels_last(len(out_shape)),
                        self._scale(node.output[0]))
        self._kernel(node.name or node.op_type, node.name,
                     [Term(v, self._diag(C, 1)) for v in views], out, x.scale / n,
                     role="linearization")
        self.vals[node.output[0]] = out

    # -- softmax ------------------------------------------------------------------------------

    def _rowmax(self, node, x: Tensor) -> Tensor:
        """Row maxima ``[rows, 1]`` by a tree of ``a + relu(b - a)`` over column halves."""
        cur = x
        level = 0
        while cur.cols > 1:
            h = cur.cols // 2
            odd = cur.cols % 2
            a = self._gather(f"{node.name}.maxA{level}", node.name, [cur], lambda i: i[:, :h])
            b = self._gather(f"{node.name}.maxB{level}", node.name, [cur], lambda i: i[:, h:2 * h])
            d = Tensor(self._uniq(f"{node.name}.maxd{level}"), x.rows, h, x.scale)
            self._kernel(f"{node.name}.maxrelu{level}", node.name,
                         [Term(a, self._diag(h, -1)), Term(b, self._diag(h, 1))], d, x.scale,
                         func=pwl_lib.relu, pre=(-255 * x.scale, 255 * x.scale),
                         role="linearization", kind="relu")
            m = Tensor(self._uniq(f"{node.name}.max{level}"), x.rows, h, x.scale)
            self._kernel(f"{node.name}.max{level}", node.name,
                         [Term(a, self._diag(h, 1)), Term(d, self._diag(h, 1))], m, x.scale,
                         role="linearization")
            if odd:
                m = self._gather(f"{node.name}.maxodd{level}", node.name, [m, cur],
                                 lambda i, j: np.concatenate([i, j[:, -1:]], axis=1))
            cur = m
            level += 1
        return cur

    def _split_terms(self, t: Tensor, coef: int, L: int) -> list[Term]:
        """``t @ (coef * ones(1, L))`` for an integer *coef* of any size, as rank-1 terms of
        int8 coefficients."""
        terms, left = [], int(coef)
        while left:
            c = max(-INT8_MAX, min(INT8_MAX, left))
            terms.append(Term(t, self._ones(1, L, c)))
            left -= c
        return terms

    def _rank_term(self, cols, L: int, origin: str) -> list[Term]:
        """``sum_i c_i * col_i @ ones(1, L)`` for columns ``col_i`` (``n x 1`` tensors) and
        integer coefficients of any size, as ONE GEMM term: the columns (each repeated so
        that every piece of its coefficient fits int8) gathered side by side, times a
        constant matrix of the pieces. One K chunk instead of one per column."""
        srcs, rows = [], []
        for t, c in cols:
            left = int(c)
            while left:
                piece = max(-INT8_MAX, min(INT8_MAX, left))
                srcs.append(t)
                rows.append(piece)
                left -= piece
        if not srcs:
            return []
        if len(srcs) == 1:
            return [Term(srcs[0], self._ones(1, L, rows[0]))]
        uniq = list(dict.fromkeys(srcs))
        pos = [uniq.index(t) for t in srcs]
        a = self._gather(f"{origin}.rank{len(srcs)}", origin, uniq,
                         lambda *i: np.concatenate([i[p].reshape(-1, 1) for p in pos], axis=1))
        b = self._const(f"rank{len(rows)}x{L}", np.repeat(np.array(rows)[:, None], L, axis=1), 1.0)
        return [Term(a, b)]

    def _softmax(self, node, log: bool):
        """Softmax / LogSoftmax over one axis: ``exp(x - m - log(sum exp(x - m)))`` with ``m``
        a row maximum (of the int8 scores; softmax does not depend on the shift, so an
        approximate maximum used consistently is exact). When the scores are a MatMul of two
        activations used only here, the exp kernels take that product again as their GEMM
        term, so the exponent has the int32 accumulator's precision instead of int8's."""
        src, mask = node.input[0], None
        if src in self.masked:
            src, mask = self.masked[src]
        x = self._val(src, node)
        rank = len(x.shape)
        axis = _attr(node, "axis", -1 if self.opset >= 13 else 1) % rank
        if self.opset < 13 and axis != rank - 1:
            raise LinearizeError(f"{node.op_type} (node {node.name!r}): opset {self.opset} "
                                 f"softmax over axis {axis} is not the last axis")
        if mask is not None and axis != rank - 1:
            raise LinearizeError(f"{node.op_type} (node {node.name!r}): a masked softmax must "
                                 f"be over the last axis")
        perm = tuple(d for d in range(rank) if d != axis) + (axis,)
        fused = self._mm.get(src) if x.perm == perm else None
        x = self._relayout(x, perm, node.name)
        x2 = Tensor(self._uniq(f"{x.name}.2d"), x.rows, x.cols, x.scale)
        x2.base = x
        shape_nd = tuple(x.shape)
        x = x2
        L, M = x.cols, x.rows
        r = self._range(src)
        span = max(r.hi - r.lo, 1e-3)
        zlo = -min(span, 24.0)
        if mask is not None:
            # Masked keys saturate the PWL input at its bottom: exp must be ~0 there.
            zlo = min(zlo, -12.0)
        if fused is not None:
            acc, parts = fused
            hi = x.scale                  # the int8 maximum is within half a step of the true one
            scores = [(r0, n, [t]) for r0, n, t in parts]
        else:
            acc, hi = x.scale / INT8_MAX, 0.0
            scores = [(0, M, [Term(x, self._diag(L, INT8_MAX))])]
        c_m = int(round(x.scale / acc))
        xs = x
        if mask is not None:
            # The row maximum over the kept keys only: masked scores saturate to -128 first.
            xs = Tensor(self._uniq(f"{x.name}.masked"), M, L, x.scale)
            self._kernel(f"{node.name}.mask", node.name,
                         [Term(x, self._diag(L, 1)),
                          self._mask_term(mask, M, x.scale, 2 * INT8_MAX * x.scale)],
                         xs, x.scale, role="linearization")
        m = self._rowmax(node, xs)
        # A masked key gets at least 2 * span + 30 below the row maximum: exp gives 0.
        need = 2 * span + 30.0
        e = Tensor(self._uniq(f"{node.name}.exp"), M, L, math.exp(hi) / INT8_MAX)
        for r0, n, terms in scores:
            extra = [] if mask is None else [self._mask_term(mask, n, acc, need)]
            self._kernel(f"{node.name}.exp", node.name,
                         terms + self._rank_term([(self._view(m, r0, n), -c_m)], L, node.name)
                         + extra,
                         self._view(e, r0, n), acc, func=pwl_lib.exp, pre=(zlo, hi),
                         role="linearization", kind="exp")
        ln_l = math.log(L)
        wanted = max(ln_l + hi, hi, 1e-3) / INT8_MAX
        c_ls = max(1, math.ceil(wanted / acc))
        ls = Tensor(self._uniq(f"{node.name}.logsum"), M, 1, c_ls * acc)
        self._kernel(f"{node.name}.logsum", node.name, [Term(e, self._ones(L, 1))], ls, e.scale,
                     func=np.log, pre=(math.exp(-hi), L * math.exp(hi)), role="linearization",
                     kind="log")
        if log:
            out = self._new(node.output[0], shape_nd, perm, self._scale(node.output[0]))
        else:
            out = self._new(node.output[0], shape_nd, perm, 1.0 / INT8_MAX)
        for r0, n, terms in scores:
            terms = terms + self._rank_term([(self._view(m, r0, n), -c_m),
                                             (self._view(ls, r0, n), -c_ls)], L, node.name)
            if mask is not None:
                terms.append(self._mask_term(mask, n, acc, need))
            if log:
                self._kernel(node.name or node.op_type, node.name, terms, self._view(out, r0, n),
                             acc, role="linearization")
            else:
                self._kernel(node.name or node.op_type, node.name, terms, self._view(out, r0, n),
                             acc, func=pwl_lib.exp, pre=(zlo - ln_l - hi, hi),
                             role="linearization", kind="exp")
        self.vals[node.output[0]] = out

    def _op_Softmax(self, node):
        self._softmax(node, log=False)

    def _op_LogSoftmax(self, node):
        self._softmax(node, log=True)


    # -- attention masks ----------------------------------------------------------------------

    def _find_masks(self):
        """Find the float tensors computed from integer inputs alone (the attention-mask
        arithmetic of a BERT export: Cast, GatherND, And, Where, ...), check that each is a
        key-padding mask (0 where the index input is non-zero, a large negative value where it
        is zero, along the last axis) and mark its nodes done. Softmax lowers the mask as one
        rank-``n`` GEMM term (:meth:`_mask_term`)."""
        g = self.model.graph
        int_inputs = {vi.name for vi in g.input if vi.name not in self.consts and
                      vi.type.tensor_type.elem_type in (onnx.TensorProto.INT64,
                                                        onnx.TensorProto.INT32)}
        derived, nodes = set(int_inputs), []
        for n in g.node:
            ins = [i for i in n.input if i]
            if not any(i in derived for i in ins):
                continue
            if n.op_type == "Gather" and n.input[0] in self.consts and n.input[1] in int_inputs:
                continue                                     # embedding lookup
            if all(i in derived or i in self.consts for i in ins):
                nodes.append(n)
                derived.update(n.output)
        if not nodes:
            return
        produced = {o for n in nodes for o in n.output}
        inner = {id(n) for n in nodes}
        outs = [o for o in produced if o in self.graph_outputs or
                any(id(c) not in inner for c in self.consumers[o])]
        for o in outs:
            self.masks[o] = self._check_mask(o, nodes, int_inputs)
        for n in nodes:
            self.done.add(id(n))

    def _check_mask(self, name, nodes, int_inputs) -> tuple[str, int]:
        from onnx.reference import ReferenceEvaluator

        needed, body = {name}, []
        for n in reversed(nodes):
            if any(o in needed for o in n.output):
                body.append(n)
                needed.update(i for i in n.input if i)
        body.reverse()
        ids = sorted(needed & int_inputs)
        where = f"attention mask {name!r} (nodes {', '.join(n.name for n in body)})"
        if len(ids) != 1:
            raise LinearizeError(f"{where}: computed from {len(ids)} integer inputs, expected one")
        ids = ids[0]
        shape = self.shapes[ids]
        if len(shape) != 2 or shape[0] != 1:
            raise LinearizeError(f"{where}: index input {ids!r} must be [1, L], is {list(shape)}")
        L = shape[1]
        elem = next(vi.type.tensor_type.elem_type for vi in self.model.graph.input if vi.name == ids)
        inits = [numpy_helper.from_array(np.asarray(self.consts[i]), i)
                 for i in sorted({i for n in body for i in n.input if i in self.consts})]
        graph = helper.make_graph(body, "mask", [helper.make_tensor_value_info(ids, elem, shape)],
                                  [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)],
                                  inits)
        sess = ReferenceEvaluator(helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", self.opset)]))
        rng = np.random.default_rng(0)
        probes = [np.ones(L, dtype=np.int64)] + [rng.integers(0, 2, L) for _ in range(4)]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        for p in probes:
            p[0] = 1
            bias = np.asarray(sess.run(None, {ids: p.reshape(1, L).astype(dtype)})[0])
            if bias.ndim < 1 or bias.shape[-1] != L:
                raise LinearizeError(f"{where}: last axis is {bias.shape}, expected {L} keys")
            keep = np.broadcast_to(p != 0, bias.shape)
            if not (np.all(bias[keep] == 0) and np.all(bias[~keep] <= -1e4)):
                raise LinearizeError(f"{where}: not a key-padding mask (0 for kept keys, a "
                                     f"large negative value for masked keys)")
        self.notes.append(f"{where}: key-padding mask from {ids!r}, one GEMM term in softmax")
        return ids, L

    def _mask_term(self, mask: str, rows: int, acc_unit: float, need: float) -> Term:
        """``ones(rows, n) @ mask_rows(n, L)``: adds at most ``-need`` (real, in units of
        *acc_unit*) to every masked key of every row, nothing to the others. The mask row
        (``-127`` masked, ``0`` kept) is an embedding lookup of the index input."""
        ids, L = self.masks[mask]
        key = ("maskrow", mask)
        if key not in self._cache:
            table = self._const(f"{mask}.table", np.array([[-INT8_MAX], [0]]), 1.0)
            col = self._new(f"{mask}.col", (L, 1), (0, 1), 1.0)
            self.steps.append(Lookup(col.name, mask, table, ids, col))
            self._cache[key] = col
        col = self._cache[key]
        n = max(1, math.ceil(need / (INT8_MAX * INT8_MAX * acc_unit)))
        key = ("maskrows", mask, n)
        if key not in self._cache:
            self._cache[key] = self._gather(f"{mask}.rows{n}", mask, [col],
                                            lambda i: np.broadcast_to(i.reshape(1, L), (n, L)))
        return Term(self._ones(rows, n, INT8_MAX), self._cache[key])

    def _op_IsNaN(self, node):
        """``Where(IsNaN(p), c, p)`` after a softmax (exports guard fully masked rows): the
        lowered softmax never gives NaN, so the pair is the identity."""
        x = node.input[0]
        users = self.consumers[node.output[0]]
        if node.output[0] in self.graph_outputs or not users or not all(
                u.op_type == "Where" and u.input[0] == node.output[0] and u.input[2] == x
                and u.input[1] in self.consts for u in users):
            raise LinearizeError(f"IsNaN (node {node.name!r}): only Where(IsNaN(x), c, x) is "
                                 f"supported")
        for u in users:
            self.done.add(id(u))
            self.vals[u.output[0]] = self._val(x, node)
        self.notes.append(f"{node.name}: Where(IsNaN(x), c, x) is x (no NaN on the accelerator)")

    # -- layer normalization -------------------------------------------------------------------

    def _op_LayerNormalization(self, node):
        """LayerNormalization: :meth:`_layer_norm` with the node's attributes."""
        if len(node.output) > 1 and any(node.output[1:]):
            raise LinearizeError(f"LayerNormalization (node {node.name!r}): only the Y output "
                                 f"is supported")
        gamma = self.consts.get(node.input[1])
        beta = self.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if gamma is None or (len(node.input) > 2 and node.input[2] and beta is None):
            raise LinearizeError(f"LayerNormalization (node {node.name!r}): scale and bias "
                                 f"must be constant")
        self._layer_norm(node, node.name, node.input[0], node.output[0], _attr(node, "axis", -1),
                         float(_attr(node, "epsilon", 1e-5)), gamma, beta)

    def _layer_norm_chain(self, node):
        """A decomposed LayerNorm (:mod:`~neuralmatrix.sw.patterns`) at its first node: the
        same lowering as LayerNormalization, the chain's other nodes marked done."""
        p = self.layer_norms[id(node)]
        for n in p.nodes:
            self.done.add(id(n))
        gamma = np.ones(1) if p.gamma is None else p.gamma
        self.notes.append(f"{p.name}: decomposed LayerNorm ({len(p.nodes)} nodes, "
                          f"{p.nodes[0].op_type}..{p.nodes[-1].op_type}) lowered as one")
        self._layer_norm(node, p.name, p.x, p.output, p.axis, p.epsilon, gamma, p.beta)

    def _layer_norm(self, node, name, x_name, out_name, axis, eps, gamma, beta):
        """LayerNorm of *x_name* over the axes from *axis* on into *out_name* (kernel names
        from *name*), as the module doc describes: mean by GEMM with a ones vector, centering
        by a rank-1 term (the sign of gamma folded in), per-row sums of squares by GEMM of row
        blocks with their transposes, a PWL rsqrt on the output path, and the per-row scaling
        as a GEMM with a diagonal block; |gamma| goes into the per-column requantization and
        beta (None: zero) into the bias."""
        x = self._val(x_name, node, percol=True)
        rank = len(x.shape)
        axis = axis % rank
        axes = list(range(axis, rank))
        D = _prod([x.shape[a] for a in axes])
        gamma = np.broadcast_to(gamma.astype(np.float64).reshape(-1), (D,))
        beta = np.zeros(D) if beta is None else np.broadcast_to(beta.astype(np.float64).reshape(-1), (D,))
        xr = self._rows_by(x, axes, name) if len(axes) > 1 or x.perm[-1] != rank - 1 \
            else self._relayout(x, tuple(range(rank)), name)
        M = xr.rows
        sgn = np.where(gamma < 0, -1, 1)
        # Input columns have scales xr.scale * w[j] (w = 1 for a per-tensor scale; then 127
        # is used so the mean keeps 7 more bits). mean: x @ w / D, stored at a scale that is
        # a whole multiple of the unit u, so that the centering coefficients are exact.
        w = xr.colscale.astype(np.int64) if xr.colscale is not None else \
            np.full(D, INT8_MAX, dtype=np.int64)
        u = xr.scale * (1.0 if xr.colscale is not None else 1.0 / INT8_MAX)
        r_mean = self._range(f"{out_name}#mean")
        qm = int(min(INT8_MAX, max(1, math.ceil(max(r_mean.absmax, 1e-12) / INT8_MAX / u))))
        mean = Tensor(self._uniq(f"{out_name}.mean"), M, 1, qm * u)
        self._kernel(f"{name}.mean", name,
                     [Term(xr, self._const(f"{out_name}.w", w[:, None], 1.0))], mean,
                     u / D, role="linearization")
        # centered (times sign(gamma)): x * w - mean * qm, in units of u; once per tensor
        # (for the variance) and once per column (for the output).
        terms = [Term(xr, self._diag(D, w * sgn)),
                 Term(mean, self._const(f"{out_name}.negsign", (-qm * sgn)[None, :], 1.0))]
        cname = f"{out_name}#centered"
        c = Tensor(self._uniq(f"{out_name}.centered"), M, D, self._scale(cname))
        cm = self._range(cname).colmax
        reps = None
        if cm is not None and cm.size == D:
            # With a margin: a centered value beyond its column's range would saturate and
            # make its row's variance too small (held-out sentences go beyond 2x).
            c.scale, c.colscale = self._square_levels(cm * SQUARE_MARGIN, D)
            if c.colscale.max() == 1:
                c.colscale = None
            else:
                reps = np.repeat(np.arange(D), c.colscale * c.colscale)
        self._kernel(f"{name}.center", name, terms, c, u, role="linearization")
        cp = c
        if cm is not None and cm.size == D and float(cm.max()) > 4 * float(np.median(cm)):
            sc = np.maximum(cm, 1e-8 * float(cm.max())) / INT8_MAX
            uc = float(sc.max()) / INT8_MAX
            cp = Tensor(self._uniq(f"{out_name}.centered_pc"), M, D, uc)
            cp.colscale = np.clip(np.ceil(sc / uc - 1e-9), 1, INT8_MAX).astype(np.int64)
            self._kernel(f"{name}.center_pc", name, terms, cp, u, role="linearization")
        # per row block: sum of squares -> rsqrt (PWL) -> diagonal block -> scaled rows
        rss = self._range(f"{out_name}#sumsq")
        r_inv = self._range(f"{out_name}#inv")
        inv_scale = max(r_inv.hi, 1e-12) / INT8_MAX
        if tuple(x.shape) == (M, D) or (len(axes) == 1 and x.perm == tuple(range(rank))):
            out = self._new(out_name, tuple(x.shape), tuple(range(rank)), self._scale(out_name),
                            percol=True)
        else:
            out = self._new(out_name, (M, D), (0, 1), self._scale(out_name))
        R = self.cfg.cols
        mag = np.maximum(np.abs(gamma), 1e-8)
        lo_ss = max(rss.lo, 0.0)
        hi_ss = max(rss.hi, lo_ss * 1.01, 1e-6)
        # Fit where calibration saw data, with a margin below (a row of a sentence unlike
        # the calibration ones, e.g. a short one, must not saturate rsqrt), never at 0 sums.
        lo_ss = max(lo_ss * RSQRT_MARGIN, (hi_ss * 1e-4))
        inv_scale = max(inv_scale, 1.0 / math.sqrt(lo_ss / D + eps) / INT8_MAX)

        # Rows whose variance is always far above the others' (a token carrying a massive
        # activation, like [CLS] in BERT) get an input gain a < 1 on the rsqrt table: their
        # 1/sqrt comes out sqrt(1/a) larger, in the table's fine range, and their scaling
        # kernel takes the output scale times sqrt(a). The table then covers the other
        # rows' sums only. (Exact up to epsilon: rsqrt(a v) = rsqrt(v) / sqrt(a) for
        # v / D >> eps.)
        row_gain = np.ones(M)
        inv_rows, ss_rows = r_inv.rowmax, rss.rowmax
        ss_low = rss.rowmin
        if inv_rows is not None and inv_rows.size == M and ss_rows is not None and \
                ss_rows.size == M and ss_low is not None and ss_low.size == M:
            big = inv_rows < inv_scale * INT8_MAX / 8
            big &= ss_low / D > 1e4 * eps
            if big.any() and not big.all():
                top = float(inv_rows[big].max()) * 1.5
                row_gain[big] = (top / (inv_scale * INT8_MAX)) ** 2
                hi_ss = 2 * max(float(ss_rows[~big].max()), float(np.max(row_gain * ss_rows)))
                self.notes.append(f"{name}: rows {np.nonzero(big)[0].tolist()} with rsqrt "
                                  f"input gain {row_gain[big][0]:.3g}")

        def rsqrt(v, D=D, eps=eps):
            v = np.asarray(v, dtype=np.float64)
            return 1.0 / np.sqrt(np.maximum(v, 0.0) / D + eps)

        for r0 in range(0, M, R):
            n = min(R, M - r0)
            cb = self._view(c, r0, n)
            if reps is None:
                ct = self._gather(f"{out_name}.cT{r0}", name, [cb], lambda i: i.T)
            else:
                # Column j (scale c.scale * k_j) repeated k_j**2 times on both sides: every
                # product then has the unit c.scale**2.
                cr = self._raw_gather(f"{out_name}.cR{r0}", name, cb,
                                      np.arange(n)[:, None] * D + reps[None, :], c.scale)
                ct = self._raw_gather(f"{out_name}.cT{r0}", name, cb,
                                      reps[:, None] + np.arange(n)[None, :] * D, c.scale)
                cb = cr
            inv = Tensor(self._uniq(f"{out_name}.inv{r0}"), n, n, inv_scale)
            a = row_gain[r0:r0 + n]
            self._kernel(f"{name}.rsqrt{r0}", name, [Term(cb, ct)], inv,
                         c.scale * c.scale * a, func=rsqrt, pre=(lo_ss, hi_ss),
                         role="linearization", kind="rsqrt")
            dg = self._gather(f"{out_name}.diag{r0}", name, [inv],
                              lambda i: np.where(np.eye(n, dtype=bool), i, FILL_ZERO))
            # Rows of one input gain share a scaling kernel (its output scale).
            cuts = [0] + [k for k in range(1, n) if a[k] != a[k - 1]] + [n]
            for k0, k1 in zip(cuts[:-1], cuts[1:]):
                self._kernel(f"{name}.scale{r0 + k0}", name,
                             [Term(self._view(dg, k0, k1 - k0), self._view(cp, r0, n))],
                             self._view(out, r0 + k0, k1 - k0),
                             inv_scale * math.sqrt(a[k0]) * cp.scale * cp.colw * mag,
                             bias=beta, role="linearization")
        if out.rows * out.cols != M * D or out.cols != D:
            raise AssertionError(f"{name}: LayerNorm output storage {out.rows}x{out.cols}")
        if tuple(out.shape) != tuple(x.shape):
            shape = tuple(x.shape)
            res = self._gather(out_name, name, [out], lambda i: i.reshape(shape))
        else:
            res = out
        self.vals[out_name] = res

    @staticmethod
    def _square_levels(cm: np.ndarray, D: int, budget: float | None = None):
        """Scales for a tensor whose row sums of squares are taken by GEMM: one unit ``s``
        and a whole multiple ``k_j`` of it per column (as small as the column's calibrated
        magnitude *cm* allows), with ``sum k_j**2 <= budget * D`` (the GEMM repeats column
        ``j`` ``k_j**2`` times). The smallest such ``s``: a few massive channels no longer
        set the resolution of all the others."""
        budget = SQUARE_BUDGET if budget is None else budget
        cm = np.maximum(np.asarray(cm, dtype=np.float64), 1e-12)
        top = float(cm.max())

        def levels(s):
            return np.maximum(np.ceil(cm / (INT8_MAX * s) - 1e-9), 1).astype(np.int64)

        # sum k_j**2 only grows as s shrinks: bisect (in log s) for the smallest feasible s.
        lo, hi = top / INT8_MAX / INT8_MAX, top / INT8_MAX
        for _ in range(40):
            mid = math.sqrt(lo * hi)
            k = levels(mid)
            if k.max() <= INT8_MAX and float(np.sum(k * k)) <= budget * D:
                hi = mid
            else:
                lo = mid
        return hi, levels(hi)

    def _raw_gather(self, name, origin, src: Tensor, index, scale) -> Tensor:
        """A Transfer of *src*'s integers as they are (no per-column rescaling): the caller
        accounts for the scales."""
        index = np.asarray(index, dtype=np.int64)
        out = Tensor(self._uniq(name), index.shape[0], index.shape[1], float(scale))
        self.steps.append(Transfer(out.name, origin, [src], out, index))
        return out

    # -- data movement ------------------------------------------------------------------------

    def _move(self, node, fn, *, srcs=None, perm=None):
        srcs = srcs or [self._val(node.input[0], node)]
        out = self._gather(node.output[0], node.name, srcs, fn, perm)
        self.vals[node.output[0]] = out
        return out

    def _op_Identity(self, node):
        self.vals[node.output[0]] = self._val(node.input[0], node)

    _op_Dropout = _op_Cast = _op_Identity

    def _op_Reshape(self, node):
        shape = self._shape(node.output[0])
        self._move(node, lambda i: i.reshape(shape))

    def _op_Flatten(self, node):
        self._op_Reshape(node)

    _op_Squeeze = _op_Unsqueeze = _op_Reshape

    def _op_Expand(self, node):
        shape = self._shape(node.output[0])
        self._move(node, lambda i: np.broadcast_to(i, shape))

    def _op_Transpose(self, node):
        perm = _attr(node, "perm", None)
        self._move(node, lambda i: np.transpose(i, perm))

    def _op_Concat(self, node):
        axis = _attr(node, "axis")
        srcs = [self._val(i, node) if i in self.vals else None for i in node.input]
        if any(s is None for s in srcs):
            raise LinearizeError(f"Concat (node {node.name!r}): constant operands are not supported")
        scale = max(s.scale for s in srcs)
        srcs = [self._rescale(node, s, scale) for s in srcs]
        self._move(node, lambda *i: np.concatenate(i, axis=axis), srcs=srcs)

    def _rescale(self, node, t: Tensor, scale: float) -> Tensor:
        if abs(t.scale - scale) <= 1e-9 * scale:
            return t
        out = Tensor(self._uniq(f"{t.name}.rescaled"), t.rows, t.cols, scale, 1, None, t.shape, t.perm)
        self._kernel(f"{node.name}.rescale", node.name, [Term(t, self._diag(t.cols, 1))], out,
                     t.scale, role="linearization")
        return out

    def _op_Split(self, node):
        x = self._val(node.input[0], node)
        axis = _attr(node, "axis", 0) % len(x.shape)
        split = _attr(node, "split", None)
        if split is None and len(node.input) > 1 and node.input[1]:
            split = self.consts[node.input[1]].tolist()
        if split is None:
            n = len(node.output)
            split = [-(-x.shape[axis] // n)] * (n - 1)
            split.append(x.shape[axis] - sum(split))
        start = 0
        for o, s in zip(node.output, split):
            lo, hi = start, start + s
            self.vals[o] = self._gather(o, node.name, [x],
                                        lambda i, lo=lo, hi=hi: np.take(i, np.arange(lo, hi), axis=axis))
            start = hi

    def _op_Slice(self, node):
        x = self._val(node.input[0], node)
        starts, ends = (self.consts[i].tolist() for i in node.input[1:3])
        rank = len(x.shape)
        axes = self.consts[node.input[3]].tolist() if len(node.input) > 3 and node.input[3] \
            else list(range(len(starts)))
        steps = self.consts[node.input[4]].tolist() if len(node.input) > 4 and node.input[4] \
            else [1] * len(starts)

        def fn(i):
            sl = [slice(None)] * rank
            for s, e, a, st in zip(starts, ends, axes, steps):
                sl[a % rank] = slice(s, e, st)
            return i[tuple(sl)]

        self._move(node, fn)

    def _op_Pad(self, node):
        mode = _attr(node, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        pads = self.consts[node.input[1]].tolist() if len(node.input) > 1 else _attr(node, "pads")
        value = self._scalar(node.input[2]) if len(node.input) > 2 and node.input[2] else 0.0
        if mode == "constant" and value:
            raise LinearizeError(f"Pad (node {node.name!r}): constant padding with {value} "
                                 f"(only zero)")
        if len(node.input) > 3 and node.input[3]:
            raise LinearizeError(f"Pad (node {node.name!r}): the axes input is not supported")
        x = self._val(node.input[0], node)
        rank = len(x.shape)
        width = [(pads[d], pads[d + rank]) for d in range(rank)]
        if mode == "constant":
            fn = lambda i: np.pad(i, width, constant_values=FILL_ZERO)  # noqa: E731
        else:                       # reflect / edge / wrap: a gather like any other
            fn = lambda i: np.pad(i, width, mode=mode)  # noqa: E731
        self._move(node, fn, perm=x.perm)

    def _op_BatchNormalization(self, node):
        x = self._val(node.input[0], node)
        gamma, beta, mean, var = (self.consts.get(i) for i in node.input[1:5])
        if any(v is None for v in (gamma, beta, mean, var)):
            raise LinearizeError(f"BatchNormalization (node {node.name!r}): parameters must be "
                                 f"constant")
        x = self._relayout(x, _channels_last(len(x.shape)), node.name)
        s = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + _attr(node, "epsilon", 1e-5))
        t = beta - mean * s
        self._sum(node, [(x, s)], node.output[0], x.shape, x.perm, bias=t)

    def _op_Gather(self, node):
        data, idx = node.input[:2]
        axis = _attr(node, "axis", 0)
        if data in self.consts and idx not in self.consts:
            # Embedding lookup of a run-time index input.
            table = self.consts[data].astype(np.float64)
            if table.ndim != 2 or axis != 0:
                raise LinearizeError(f"Gather (node {node.name!r}): only row lookups in a 2-D table")
            s = self._scale(node.output[0])
            shape = self._shape(node.output[0])
            if idx not in [i.name for i in self.model.graph.input]:
                raise LinearizeError(f"Gather (node {node.name!r}): indices must be a graph input")
            users = self.consumers.get(node.output[0], [])
            if node.output[0] in self.percol and all(u.op_type in ("Add", "Sub") for u in users):
                # Sums read both digits of a two-digit table: about 14 bits per element.
                parts = []
                for tt in self._digits(f"{node.name}.table", table, tuple(table.shape), (0, 1)):
                    o = self._new(f"{node.output[0]}.{tt.name.rsplit('.', 1)[-1]}", shape,
                                  tuple(range(len(shape))), tt.scale)
                    o.colscale = tt.colscale
                    self.steps.append(Lookup(o.name, node.name, tt, idx, o))
                    parts.append(o)
                self.split[node.output[0]] = parts
                self.vals[node.output[0]] = parts[0]
                return
            out = self._new(node.output[0], shape, tuple(range(len(shape))), s)
            if node.output[0] in self.percol:
                # Per-column scales from the table itself (whole multiples of one unit).
                cm = np.maximum(np.abs(table).max(axis=0), 1e-12) / INT8_MAX
                out.scale = float(cm.max()) / INT8_MAX
                out.colscale = np.clip(np.ceil(cm / out.scale - 1e-9), 1, INT8_MAX).astype(np.int64)
            q = np.clip(np.round(table / (out.scale * out.colw)), -INT8_MAX,
                        INT8_MAX).astype(np.int64)
            tt = self._const(f"{node.name}.table", q, out.scale)
            if idx not in [i.name for i in self.model.graph.input]:
                raise LinearizeError(f"Gather (node {node.name!r}): indices must be a graph input")
            self.steps.append(Lookup(out.name, node.name, tt, idx, out))
            self.vals[node.output[0]] = out
            return
        x = self._val(data, node)
        ind = self.consts[idx].astype(np.int64)
        rank = len(x.shape)
        self._move(node, lambda i: np.take(i, np.where(ind < 0, ind + x.shape[axis % rank], ind),
                                           axis=axis % rank))
