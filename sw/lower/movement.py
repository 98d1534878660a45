"""Data movement: Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Expand, Concat, Split,
Slice, Pad, Gather, and the pass-through Identity, Dropout and Cast.

Each is a host gather (:class:`~neuralmatrix.sw.ir.Transfer`, made by
:meth:`~neuralmatrix.sw.lower.context.Context.gather`), or nothing when the storage does not
change; an embedding Gather of a run-time index input is a
:class:`~neuralmatrix.sw.ir.Lookup`.
"""

from __future__ import annotations

import numpy as np

from neuralmatrix.hw.arith import INT8_MAX

from ..ir import FILL_ZERO, Lookup, Tensor, Term
from .context import LinearizeError, attr
from .rules import rule

__all__ = ["identity", "reshape", "expand", "transpose", "concat", "split", "slice_", "pad",
           "gather"]


def _move(ctx, node, fn, *, srcs=None, perm=None):
    srcs = srcs or [ctx.val(node.input[0], node)]
    out = ctx.gather(node.output[0], node.name, srcs, fn, perm)
    ctx.vals[node.output[0]] = out
    return out


@rule("Identity", "Dropout", "Cast")
def identity(ctx, node):
    """Identity, Dropout (inference), Cast (of a float activation): the same tensor."""
    ctx.vals[node.output[0]] = ctx.val(node.input[0], node)


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx, node):
    """A new shape of the same elements: no step when the storage order is unchanged."""
    shape = ctx.shape_of(node.output[0])
    _move(ctx, node, lambda i: i.reshape(shape))


@rule("Expand")
def expand(ctx, node):
    """Expand: a broadcasting gather."""
    shape = ctx.shape_of(node.output[0])
    _move(ctx, node, lambda i: np.broadcast_to(i, shape))


@rule("Transpose")
def transpose(ctx, node):
    """Transpose: a gather (or a new view when the storage order is unchanged)."""
    perm = attr(node, "perm", None)
    _move(ctx, node, lambda i: np.transpose(i, perm))


@rule("Concat")
def concat(ctx, node):
    """Concat of activations, rescaled to the largest of their scales."""
    axis = attr(node, "axis")
    srcs = [ctx.val(i, node) if i in ctx.vals else None for i in node.input]
    if any(s is None for s in srcs):
        raise LinearizeError(f"Concat (node {node.name!r}): constant operands are not supported")
    scale = max(s.scale for s in srcs)
    srcs = [_rescale(ctx, node, s, scale) for s in srcs]
    _move(ctx, node, lambda *i: np.concatenate(i, axis=axis), srcs=srcs)


def _rescale(ctx, node, t: Tensor, scale: float) -> Tensor:
    if abs(t.scale - scale) <= 1e-9 * scale:
        return t
    out = Tensor(ctx.uniq(f"{t.name}.rescaled"), t.rows, t.cols, scale, 1, None, t.shape, t.perm)
    ctx.kernel(f"{node.name}.rescale", node.name, [Term(t, ctx.diag(t.cols, 1))], out,
               t.scale, role="linearization")
    return out


@rule("Split")
def split(ctx, node):
    """Split: one gather per output."""
    x = ctx.val(node.input[0], node)
    axis = attr(node, "axis", 0) % len(x.shape)
    sizes = attr(node, "split", None)
    if sizes is None and len(node.input) > 1 and node.input[1]:
        sizes = ctx.constant(node.input[1], node, "split").tolist()
    if sizes is None:
        n = len(node.output)
        sizes = [-(-x.shape[axis] // n)] * (n - 1)
        sizes.append(x.shape[axis] - sum(sizes))
    start = 0
    for o, s in zip(node.output, sizes):
        lo, hi = start, start + s
        ctx.vals[o] = ctx.gather(o, node.name, [x],
                                 lambda i, lo=lo, hi=hi: np.take(i, np.arange(lo, hi), axis=axis))
        start = hi


@rule("Slice")
def slice_(ctx, node):
    """Slice with constant starts, ends, axes and steps."""
    x = ctx.val(node.input[0], node)
    rank = len(x.shape)
    ins = list(node.input) + [""] * (5 - len(node.input))
    starts, ends, axes, steps = (ctx.constant(i, node, what).tolist() if i else None for i, what
                                 in zip(ins[1:5], ("starts", "ends", "axes", "steps")))
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps

    def fn(i):
        sl = [slice(None)] * rank
        for s, e, a, st in zip(starts, ends, axes, steps):
            sl[a % rank] = slice(s, e, st)
        return i[tuple(sl)]

    _move(ctx, node, fn)


@rule("Pad")
def pad(ctx, node):
    """Pad: zero (constant) padding, or reflect / edge / wrap, as one gather."""
    mode = attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = ctx.constant(node.input[1], node, "pads").tolist() if len(node.input) > 1 \
        else attr(node, "pads")
    value = ctx.scalar(node.input[2]) if len(node.input) > 2 and node.input[2] else 0.0
    if len(node.input) > 3 and node.input[3]:
        raise LinearizeError(f"Pad (node {node.name!r}): the axes input is not supported")
    x = ctx.val(node.input[0], node)
    rank = len(x.shape)
    width = [(pads[d], pads[d + rank]) for d in range(rank)]
    if mode == "constant" and value:
        # The pad value is one more int8 element the gather copies: the input and the value
        # at the output's scale (the input requantized to it when they differ).
        s_out = ctx.scale_of(node.output[0])
        if abs(value) > INT8_MAX * s_out * (1 + 1e-6):
            s_out = abs(value) / INT8_MAX
        if x.colscale is not None or not np.isclose(x.scale, s_out, rtol=1e-9, atol=0):
            xs = ctx.new(f"{node.output[0]}.in", x.shape, x.perm, s_out)
            ctx.kernel(f"{node.name or 'Pad'}.requant", node.name,
                       [Term(x, ctx.diag(x.cols, 1))], xs, x.scale * x.colw,
                       role="linearization")
            x = xs
        q = int(np.clip(np.round(value / s_out), -INT8_MAX, INT8_MAX))
        cst = ctx.const(f"pad{q}", np.full((1, 1), q), s_out)
        _move(ctx, node, lambda i, c: np.pad(i, width, constant_values=c[0, 0]),
              srcs=[x, cst], perm=x.perm)
        return
    if mode == "constant":
        fn = lambda i: np.pad(i, width, constant_values=FILL_ZERO)  # noqa: E731
    else:                       # reflect / edge / wrap: a gather like any other
        fn = lambda i: np.pad(i, width, mode=mode)  # noqa: E731
    _move(ctx, node, fn, perm=x.perm)


@rule("Gather")
def gather(ctx, node):
    """Gather: an embedding lookup of a run-time index input in a constant table (a
    :class:`~neuralmatrix.sw.ir.Lookup`; two int8 digits when only sums read it), or a
    gather of an activation by constant indices."""
    data, idx = node.input[:2]
    axis = attr(node, "axis", 0)
    if data in ctx.consts and idx not in ctx.consts:
        # Embedding lookup of a run-time index input.
        table = ctx.consts[data].astype(np.float64)
        if table.ndim != 2 or axis != 0:
            raise LinearizeError(f"Gather (node {node.name!r}): only row lookups in a 2-D table")
        s = ctx.scale_of(node.output[0])
        shape = ctx.shape_of(node.output[0])
        if idx not in [i.name for i in ctx.model.graph.input]:
            raise LinearizeError(f"Gather (node {node.name!r}): indices must be a graph input")
        users = ctx.consumers.get(node.output[0], [])
        if node.output[0] in ctx.percol and all(u.op_type in ("Add", "Sub") for u in users):
            # Sums read both digits of a two-digit table: about 14 bits per element.
            parts = []
            for tt in ctx.digits(f"{node.name}.table", table, tuple(table.shape), (0, 1)):
                o = ctx.new(f"{node.output[0]}.{tt.name.rsplit('.', 1)[-1]}", shape,
                            tuple(range(len(shape))), tt.scale)
                o.colscale = tt.colscale
                ctx.steps.append(Lookup(o.name, node.name, tt, idx, o))
                parts.append(o)
            ctx.split[node.output[0]] = parts
            ctx.vals[node.output[0]] = parts[0]
            return
        out = ctx.new(node.output[0], shape, tuple(range(len(shape))), s)
        if node.output[0] in ctx.percol:
            # Per-column scales from the table itself (whole multiples of one unit).
            cm = np.maximum(np.abs(table).max(axis=0), 1e-12) / INT8_MAX
            out.scale = float(cm.max()) / INT8_MAX
            out.colscale = np.clip(np.ceil(cm / out.scale - 1e-9), 1, INT8_MAX).astype(np.int64)
        q = np.clip(np.round(table / (out.scale * out.colw)), -INT8_MAX,
                    INT8_MAX).astype(np.int64)
        tt = ctx.const(f"{node.name}.table", q, out.scale)
        if idx not in [i.name for i in ctx.model.graph.input]:
            raise LinearizeError(f"Gather (node {node.name!r}): indices must be a graph input")
        ctx.steps.append(Lookup(out.name, node.name, tt, idx, out))
        ctx.vals[node.output[0]] = out
        return
    x = ctx.val(data, node)
    ind = ctx.constant(idx, node, "indices").astype(np.int64)
    rank = len(x.shape)
    _move(ctx, node, lambda i: np.take(i, np.where(ind < 0, ind + x.shape[axis % rank], ind),
                                       axis=axis % rank))
