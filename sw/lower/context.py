"""The lowering context: the state every rule reads and writes, and the emit helpers.

One :class:`Context` per :func:`~neuralmatrix.sw.lower.linearize` call holds the graph's
constants, shapes and consumers, the calibrated ranges, the activations lowered so far
(``vals``: ONNX tensor name -> :class:`~neuralmatrix.sw.ir.Tensor`), the steps emitted so
far, and the facts rules hand to each other (masks, softmax score products, column groups,
two-digit lookups). Its methods make tensors with their scales (:meth:`Context.new`, per
column where every consumer absorbs it), constants, host gathers and kernels with an
optional PWL table (:meth:`Context.kernel`).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from onnx import helper, numpy_helper

from neuralmatrix.hw.arith import INT8_MAX

from .. import pwl as pwl_lib
from ..ir import Kernel, Tensor, Term, Transfer
from ..patterns import LayerNormPattern, find_layer_norms
from ..quantize import Range, bias_int32, requant_params, threshold

__all__ = ["LinearizeError", "Context", "ELEMENTWISE", "ACTIVATIONS", "FUNCTION_KINDS",
           "attr", "prod", "storage", "channels_last", "per_channel"]


class LinearizeError(ValueError):
    """An operator that the linearizer cannot map (with the node and the reason).

    Attributes
    ----------
    node : str or None
        The name of the ONNX node being lowered, when known.
    op : str or None
        Its operator type.
    """

    def __init__(self, message, *, node: str | None = None, op: str | None = None):
        super().__init__(message)
        self.node, self.op = node, op


#: Element-wise operators that fuse into one PWL function of their single tensor input.
ELEMENTWISE = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Gelu", "Erf", "Exp", "Sqrt", "Reciprocal", "Pow", "Clip", "Neg", "Add", "Sub",
    "Mul", "Div", "Identity", "Dropout", "Cast",
})
#: The element-wise operators that are nonlinear functions (each a PWL function kind).
ACTIVATIONS = ELEMENTWISE - {"Add", "Sub", "Mul", "Div", "Identity", "Dropout", "Cast", "Neg"}
#: Function kinds of the PWL tables, the keys of ``func_segments``: each activation op by its
#: lower-case name, and the functions of the lowerings (softmax exp and log, LayerNorm rsqrt,
#: the square of tensor products, the reciprocal of a division, the relu of max trees, the
#: window power of LRN).
FUNCTION_KINDS = frozenset({op.lower() for op in ACTIVATIONS}
                           | {"gelu", "exp", "log", "rsqrt", "square", "reciprocal", "relu",
                              "lrn"})
_IN16 = 32000.0          # int16 codes used for a PWL input range (headroom below 32767)


def attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def prod(xs) -> int:
    return int(np.prod(xs, dtype=np.int64)) if len(xs) else 1


def storage(shape, perm) -> tuple[int, int]:
    stored = [shape[p] for p in perm]
    if not stored:
        return 1, 1
    return prod(stored[:-1]), int(stored[-1])


def channels_last(rank: int) -> tuple[int, ...]:
    if rank >= 3:
        return (0,) + tuple(range(2, rank)) + (1,)
    return tuple(range(rank))


def per_channel(v, rank: int, nchan: int, chan_axis: int):
    """Constant *v* as a per-channel vector, or None if it varies along another axis."""
    v = np.asarray(v, dtype=np.float64)
    if v.ndim > rank:
        return None
    vs = [1] * (rank - v.ndim) + list(v.shape)
    ax = chan_axis % rank
    if any(d != 1 for i, d in enumerate(vs) if i != ax) or vs[ax] not in (1, nchan):
        return None
    return np.broadcast_to(v.reshape(-1), (nchan,)).copy()


class Context:
    """The state of one lowering and the helpers the rules share.

    Parameters
    ----------
    model : onnx.ModelProto
        From :func:`~neuralmatrix.sw.frontend.load_model` (static shapes, constants folded).
    config : HwConfig
    ranges : dict
        :func:`~neuralmatrix.sw.quantize.calibrate` of *model*.
    segments, calibration, pwl_method, func_segments
        As :func:`~neuralmatrix.sw.lower.linearize`.

    Attributes
    ----------
    consts, shapes, consumers, graph_outputs
        The graph: initializers as arrays, static shapes, the nodes reading each tensor, and
        the graph output names.
    vals : dict
        ONNX tensor name -> lowered :class:`~neuralmatrix.sw.ir.Tensor`.
    done : set
        ``id()`` of the nodes already lowered (by a fused chain or a pattern).
    steps, notes : list
        The emitted kernels, transfers and lookups, in order; the lowering's notes.
    layer_norms : dict
        Decomposed LayerNorms (:mod:`~neuralmatrix.sw.patterns`) by ``id()`` of their first node.
    masks, masked : dict
        Attention-mask tensors -> ``(index input, length)``; masked scores -> ``(scores, mask)``.
    scores : dict
        Softmax scores that are a MatMul of two activations -> ``(acc unit, terms)``.
    grouped, split : dict
        Column-grouped PWL outputs (:func:`~neuralmatrix.sw.lower.fusion.emit_linear`);
        two-digit embedding lookups (the Gather rule).
    chain_input : dict
        Fused chain output -> the chain's input.
    percol : set
        The ONNX tensors that get per-column scales (:meth:`find_percol`).
    """

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
        self.cache: dict = {}
        self._names: dict[str, int] = defaultdict(int)
        self.masks: dict[str, tuple[str, int]] = {}      # mask tensor -> (ids input, length)
        self.masked: dict[str, tuple[str, str]] = {}     # scores + mask -> (scores, mask)
        self.scores: dict[str, tuple] = {}               # activation MatMul -> (acc, terms)
        self.grouped: dict[str, tuple] = {}              # column groups (fusion.emit_linear)
        self.split: dict[str, list] = {}                 # two-digit lookups (movement.gather)
        self.chain_input: dict[str, str] = {}            # fused chain output -> its input
        self.percol: set[str] = set()

    def uniq(self, name: str) -> str:
        self._names[name] += 1
        return name if self._names[name] == 1 else f"{name}#{self._names[name]}"

    def new(self, name, shape, perm, scale, elem=1, percol=False) -> Tensor:
        """A new activation; with *percol*, per-column scales when every consumer of the
        ONNX tensor *name* absorbs them (see :meth:`find_percol`)."""
        rows, cols = storage(shape, perm)
        t = Tensor(self.uniq(name), rows, cols, float(scale), elem, None, tuple(shape),
                   tuple(perm))
        if percol and name in self.percol and tuple(perm) == tuple(range(len(shape))):
            cm = self.ranges[name].colmax
            if cm is not None and cm.size == cols:
                s = np.maximum(cm, 1e-8 * max(float(cm.max()), 1e-30)) / INT8_MAX
                u = float(s.max()) / INT8_MAX
                t.scale = u
                t.colscale = np.clip(np.ceil(s / u - 1e-9), 1, INT8_MAX).astype(np.int64)
        return t

    def find_percol(self):
        """ONNX tensors that may have per-column scales: every consumer folds a scale per
        input column exactly (constant-weight MatMul/Gemm into the weight rows, sums and PWL
        inputs into per-column coefficients and requantization, LayerNormalization into its
        mean and centering weights). The scales are whole multiples ``colscale[j]`` (1..127)
        of one unit, so integer coefficients stay exact. Outlier channels (transformer
        residual streams) then no longer cost the other channels their resolution."""
        self.percol = set()
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
            return name == p.x and p.axis == len(self.shape_of(name)) - 1
        if op == "MatMul":
            return ins[0] == name and ins[1] in self.consts and self.consts[ins[1]].ndim == 2
        if op == "Gemm":
            return ins[0] == name and ins[1] in self.consts and not attr(node, "transA", 0)
        if op == "LayerNormalization":
            return ins[0] == name and attr(node, "axis", -1) in (-1, len(self.shape_of(name)) - 1)
        if op in ("Add", "Sub"):
            other = ins[1] if ins[0] == name else ins[0]
            if other in self.masks or ins[0] == ins[1]:
                return False
            out = tuple(self.shape_of(node.output[0]))
            if tuple(self.shape_of(name)) != out:
                return False
            return other in self.consts or tuple(self.shape_of(other)) == out
        return False

    def range_of(self, name) -> Range:
        if name not in self.ranges:
            raise LinearizeError(f"no calibration range for tensor {name!r}")
        return self.ranges[name]

    def scale_of(self, name) -> float:
        return max(threshold(self.range_of(name), self.calibration), 1e-8) / INT8_MAX

    def shape_of(self, name) -> tuple[int, ...]:
        if name in self.consts:
            return tuple(self.consts[name].shape)
        if name in self.vals:
            return self.vals[name].shape
        return self.shapes[name]

    def const(self, name, data, scale, shape=None) -> Tensor:
        data = np.asarray(data)
        t = Tensor(self.uniq(name), data.shape[0], data.shape[1], float(scale), 1,
                   data.astype(np.int64), shape or data.shape)
        return t

    def diag(self, n: int, values) -> Tensor:
        """A constant ``n x n`` int8 diagonal matrix (cached)."""
        values = np.broadcast_to(np.asarray(values, dtype=np.int64), (n,))
        key = ("diag", n, values.tobytes())
        if key not in self.cache:
            self.cache[key] = self.const(f"diag{n}", np.diag(values), 1.0)
        return self.cache[key]

    def ones(self, rows: int, cols: int, value: int = 1) -> Tensor:
        key = ("ones", rows, cols, value)
        if key not in self.cache:
            self.cache[key] = self.const(f"ones{rows}x{cols}", np.full((rows, cols), value), 1.0)
        return self.cache[key]

    def single_consumer(self, name):
        cs = self.consumers[name]
        if len(cs) == 1 and name not in self.graph_outputs:
            return cs[0]
        return None

    def val(self, name, node, percol=False) -> Tensor:
        """The activation *name*; with per-tensor scale unless the caller absorbs per-column
        scales (*percol*)."""
        if name not in self.vals:
            raise LinearizeError(f"{node.op_type} (node {node.name!r}): input {name!r} is not "
                                 f"an activation")
        t = self.vals[name]
        return t if percol else self.plain(t)

    def plain(self, t: Tensor) -> Tensor:
        """*t* with one scale (a diagonal GEMM when it has per-column scales)."""
        if t.colscale is None:
            return t
        key = ("plain", id(t))
        if key not in self.cache:
            w = t.colw
            out = Tensor(self.uniq(f"{t.name}.plain"), t.rows, t.cols, t.scale * float(w.max()),
                         1, None, t.shape, t.perm)
            self.kernel(f"{t.name}.plain", t.name, [Term(t, self.diag(t.cols, 1))], out,
                        t.scale * w, role="linearization")
            self.cache[key] = out
        return self.cache[key]

    def gather(self, name, origin, srcs, fn, perm=None, scale=None) -> Tensor:
        """A host Transfer: *fn* maps the sources' logical index arrays to the output's."""
        srcs = [self.plain(s) for s in srcs]
        idx, off = [], 0
        for s in srcs:
            flat = np.arange(s.rows * s.cols, dtype=np.int64).reshape(s.rows, s.cols) + off
            idx.append(s.from_matrix(flat))
            off += s.rows * s.cols
        out_idx = np.asarray(fn(*idx), dtype=np.int64)
        perm = tuple(range(out_idx.ndim)) if perm is None else tuple(perm)
        out = self.new(name, out_idx.shape, perm, srcs[0].scale if scale is None else scale)
        index = out.to_matrix(out_idx)
        if len(srcs) == 1 and index.size == srcs[0].rows * srcs[0].cols and \
                index.shape[1] == srcs[0].cols and np.array_equal(index.ravel(), np.arange(index.size)):
            # Same bytes in the same order: a new view of the source, no step.
            out.base = srcs[0]
            return out
        self.steps.append(Transfer(out.name, origin, list(srcs), out, index))
        return out

    def relayout(self, t: Tensor, perm, origin) -> Tensor:
        perm = tuple(perm)
        if t.perm == perm:
            return t
        return self.gather(t.name + ".relayout", origin, [t], lambda i: i, perm)

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

    def kernel(self, name, origin, terms, out: Tensor, acc_scale, *, bias=None, func=None,
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
        k = Kernel(self.uniq(name), origin, terms, out, mult, shift, b, table, role, kind)
        self.steps.append(k)
        return k

    def constant(self, name, node, what: str) -> np.ndarray:
        """The constant *name*, an operand *what* of *node* that must be constant."""
        if name not in self.consts:
            raise LinearizeError(f"{node.op_type} (node {node.name!r}): {what} ({name!r}) must "
                                 f"be a constant")
        return self.consts[name]

    def scalar(self, name):
        if name in self.consts and self.consts[name].size == 1:
            return float(self.consts[name].reshape(()))
        return None

    def rows_by(self, x: Tensor, axes, origin) -> Tensor:
        """*x* as a matrix whose columns are the reduced *axes* (moved last, in order)."""
        rank = len(x.shape)
        keep = [d for d in range(rank) if d not in axes]
        perm = tuple(keep) + tuple(axes)
        if len(axes) == 1:
            return self.relayout(x, perm, origin)
        lead = tuple(x.shape[d] for d in keep)
        red = prod([x.shape[d] for d in axes])
        return self.gather(f"{x.name}.rows", origin, [x],
                           lambda i: np.transpose(i, perm).reshape(lead + (red,)))

    def view(self, t: Tensor, row0: int, rows: int) -> Tensor:
        """Rows ``row0 .. row0 + rows`` of *t*'s storage, as a tensor of its own."""
        if row0 == 0 and rows == t.rows:
            return t
        v = Tensor(f"{t.name}[{row0}:{row0 + rows}]", rows, t.cols, t.scale, t.elem)
        v.base, v.row0, v.colscale = t, row0, t.colscale
        return v

    def digits(self, name, m, shape, perm, table=False) -> list[Tensor]:
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
            t = Tensor(self.uniq(f"{name}.{tag}"), m.shape[0], m.shape[1], unit, 1,
                       q.astype(np.int64), shape, perm)
            t.colscale = w
            out.append(t)
        return out

