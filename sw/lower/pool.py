"""Reductions and pooling: ReduceMean/ReduceSum, GlobalAveragePool, AveragePool, MaxPool.

Reductions are GEMMs with a ones vector; AveragePool sums shifted views of its input (one
host gather stacks them); MaxPool is a tree of ``max(a, b) = a + relu(b - a)`` with a PWL
relu.
"""

from __future__ import annotations

import itertools

import numpy as np

from neuralmatrix.hw.arith import INT8_MAX

from .. import pwl as pwl_lib
from ..ir import FILL_MIN, FILL_ZERO, Kernel, Tensor, Term
from .context import LinearizeError, attr, channels_last, prod
from .rules import rule

__all__ = ["reduce", "global_average_pool", "max_pool", "average_pool"]


def _reduce(ctx, node, mean: bool):
    x = ctx.val(node.input[0], node)
    rank = len(x.shape)
    axes = attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = ctx.constant(node.input[1], node, "axes").tolist()
    if axes is None or len(axes) == 0:
        axes = list(range(rank))
    axes = sorted(a % rank for a in axes)
    out_shape = ctx.shape_of(node.output[0])
    count = prod([x.shape[a] for a in axes])
    # Reducing every stored row of a channel-last tensor (global pooling): ones-row @ x.
    if x.shape[0] == 1 and x.perm[-1] not in axes and \
            set(range(rank)) - set(axes) == {0, x.perm[-1]}:
        perm = channels_last(len(out_shape)) if len(out_shape) >= 3 else \
            tuple(range(len(out_shape)))
        out = ctx.new(node.output[0], out_shape, perm, ctx.scale_of(node.output[0]))
        ctx.kernel(node.name or node.op_type, node.name, [Term(ctx.ones(1, x.rows), x)],
                   out, x.scale / (count if mean else 1), role="linearization")
        ctx.vals[node.output[0]] = out
        return
    xr = ctx.rows_by(x, axes, node.name)
    lead = tuple(x.shape[d] for d in range(rank) if d not in axes)
    out = ctx.new(node.output[0] + ".sum", lead + (1,), tuple(range(len(lead) + 1)),
                  ctx.scale_of(node.output[0]))
    ctx.kernel(node.name or node.op_type, node.name, [Term(xr, ctx.ones(xr.cols, 1))],
               out, x.scale / (count if mean else 1), role="linearization")
    ctx.vals[node.output[0]] = ctx.gather(node.output[0], node.name, [out],
                                          lambda i: i.reshape(out_shape))


@rule("ReduceMean", "ReduceSum")
def reduce(ctx, node):
    """ReduceMean/ReduceSum: a GEMM with a ones vector over the reduced axes (moved last), or
    a ones row over the stored rows of a channel-last tensor (global pooling)."""
    _reduce(ctx, node, node.op_type == "ReduceMean")


@rule("GlobalAveragePool")
def global_average_pool(ctx, node):
    """GlobalAveragePool: a ones row times the channel-last rows."""
    x = ctx.val(node.input[0], node)
    x = ctx.relayout(x, channels_last(len(x.shape)), node.name)
    out_shape = ctx.shape_of(node.output[0])
    out = ctx.new(node.output[0], out_shape, channels_last(len(out_shape)),
                  ctx.scale_of(node.output[0]))
    ctx.kernel(node.name or node.op_type, node.name, [Term(ctx.ones(1, x.rows), x)], out,
               x.scale / x.rows, role="linearization")
    ctx.vals[node.output[0]] = out


def _geometry(ctx, node, x: Tensor):
    """Window geometry of a pooling node: ``(ks, strides, dil, pads, out_sp, extra)``, pads
    as ONNX lists them (all begins, then all ends), ``extra`` the ceil-mode overhang past the
    end padding per spatial axis."""
    rank = len(x.shape)
    sp = rank - 2
    if sp not in (1, 2, 3):
        raise LinearizeError(f"{node.op_type} (node {node.name!r}): only 1-D, 2-D and 3-D "
                             f"pooling, input has rank {rank}")
    ks = list(attr(node, "kernel_shape"))
    strides = list(attr(node, "strides", [1] * sp))
    dil = list(attr(node, "dilations", [1] * sp))
    pads = list(attr(node, "pads", [0] * (2 * sp)))
    ceil = attr(node, "ceil_mode", 0)
    auto = attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    in_sp = list(x.shape[2:])
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * sp)
        for d in range(sp):
            o = -(-in_sp[d] // strides[d])
            total = max(0, (o - 1) * strides[d] + (ks[d] - 1) * dil[d] + 1 - in_sp[d])
            small = total // 2
            pads[d], pads[d + sp] = (small, total - small) if auto == "SAME_UPPER" else \
                (total - small, small)
    elif auto == "VALID":
        pads = [0] * (2 * sp)
    elif auto != "NOTSET":
        raise LinearizeError(f"{node.op_type} (node {node.name!r}): unknown auto_pad {auto!r}")
    out_sp, extra = [], []
    for d in range(sp):
        span = in_sp[d] + pads[d] + pads[d + sp] - dil[d] * (ks[d] - 1) - 1
        o = (-(-span // strides[d]) if ceil else span // strides[d]) + 1
        if ceil and (o - 1) * strides[d] >= in_sp[d] + pads[d]:
            o -= 1
        out_sp.append(o)
        extra.append(max(0, (o - 1) * strides[d] + (ks[d] - 1) * dil[d] + 1
                         - (in_sp[d] + pads[d] + pads[d + sp])))
    return ks, strides, dil, pads, out_sp, extra


def _windows(ctx, node, x: Tensor, fill, order=None):
    """The shifted views of a pooling window (one gather stacks them, output positions in
    *order* when given): ``(views, out_shape, has_pad, window size)``."""
    rank = len(x.shape)
    sp = rank - 2
    ks, strides, dil, pads, out_sp, extra = _geometry(ctx, node, x)
    C, nb, in_sp = x.shape[1], x.shape[0], list(x.shape[2:])
    taps = list(itertools.product(*[range(k) for k in ks]))
    px = nb * prod(out_sp)

    def stack(i):
        i = i.reshape(nb, C, *in_sp)
        width = ((0, 0), (0, 0)) + tuple((pads[d], pads[d + sp] + extra[d]) for d in range(sp))
        if fill == "edge":
            p = np.pad(i, width, mode="edge")
        else:
            p = np.pad(i, width, constant_values=fill)
        views = []
        for tap in taps:
            v = p
            for d in range(sp):
                v = np.take(v, np.arange(out_sp[d]) * strides[d] + tap[d] * dil[d], axis=2 + d)
            v = np.moveaxis(v, 1, -1).reshape(px, C)
            views.append(v if order is None else v[order])
        return np.concatenate(views, axis=0)

    x = ctx.relayout(x, channels_last(rank), node.name)
    st = ctx.gather(f"{node.name}.windows", node.name, [x], stack)
    views = [ctx.view(st, t * px, px) for t in range(len(taps))]
    out_shape = (nb, C) + tuple(out_sp)
    has_pad = any(pads) or any(extra)
    return views, out_shape, has_pad, len(taps)


def _counts(ctx, node, x: Tensor, include_pad: bool) -> np.ndarray:
    """Per output position (flattened, batch first), how many window taps an AveragePool
    divides by: the taps inside the input (``count_include_pad=0``) or inside the input and
    its explicit padding (``1``; the ceil-mode overhang never counts)."""
    sp = len(x.shape) - 2
    ks, strides, dil, pads, out_sp, _ = _geometry(ctx, node, x)
    in_sp = list(x.shape[2:])
    per_axis = []
    for d in range(sp):
        lo, hi = (-pads[d], in_sp[d] + pads[d + sp]) if include_pad else (0, in_sp[d])
        pos = (np.arange(out_sp[d])[:, None] * strides[d] - pads[d]
               + np.arange(ks[d])[None, :] * dil[d])
        per_axis.append(((pos >= lo) & (pos < hi)).sum(axis=1))
    cnt = per_axis[0]
    for c in per_axis[1:]:
        cnt = np.multiply.outer(cnt, c)
    return np.tile(cnt.reshape(-1), x.shape[0])


@rule("MaxPool")
def max_pool(ctx, node):
    """MaxPool: a tree of ``max(a, b) = a + relu(b - a)`` over the shifted window views."""
    if len(node.output) > 1 and node.output[1]:
        raise LinearizeError(f"MaxPool (node {node.name!r}): the Indices output is not supported")
    x = ctx.val(node.input[0], node)
    # Contiguous windows (no dilation) that touch the padding also hold the edge element,
    # so replicating the edge is exact and keeps max(a, b) within one int8 range.
    dilated = any(d != 1 for d in attr(node, "dilations", [1]))
    views, out_shape, _, _ = _windows(ctx, node, x, FILL_MIN if dilated else "edge")
    C = x.shape[1]
    # b - a spans the input's range: when that exceeds one int8 range (inputs of both
    # signs, or -128 padding), relu(b - a) is stored at twice the scale (max(a, b) is
    # then within one step; it is exact when the inputs are of one sign, as after ReLU).
    r = ctx.range_of(node.input[0])
    span = (255 if dilated else max(r.hi - r.lo, 0.0) / x.scale)
    dk = 1 if span <= INT8_MAX + 1e-6 else 2
    level = 0
    while len(views) > 1:
        nxt = []
        for i in range(0, len(views) - 1, 2):
            a, b = views[i], views[i + 1]
            d = Tensor(ctx.uniq(f"{node.name}.d{level}.{i}"), a.rows, C, a.scale * dk)
            ctx.kernel(f"{node.name}.relu{level}.{i}", node.name,
                       [Term(a, ctx.diag(C, -1)), Term(b, ctx.diag(C, 1))], d, a.scale,
                       func=pwl_lib.relu, pre=(-255 * a.scale, 255 * a.scale),
                       role="linearization", kind="relu")
            m = Tensor(ctx.uniq(f"{node.name}.max{level}.{i}"), a.rows, C, a.scale)
            ctx.kernel(f"{node.name}.max{level}.{i}", node.name,
                       [Term(a, ctx.diag(C, 1)), Term(d, ctx.diag(C, dk))], m, a.scale,
                       role="linearization")
            nxt.append(m)
        if len(views) % 2:
            nxt.append(views[-1])
        views = nxt
        level += 1
    res = views[0]
    out = ctx.new(node.output[0], out_shape, channels_last(len(out_shape)), res.scale)
    if len(ctx.steps) and isinstance(ctx.steps[-1], Kernel) and ctx.steps[-1].out is res:
        ctx.steps[-1].out = out
    else:
        out.base = res
    ctx.vals[node.output[0]] = out


@rule("AveragePool")
def average_pool(ctx, node):
    """AveragePool: one kernel summing the shifted window views, requantized by the window
    size. Where the divisor varies with the position (``count_include_pad=0`` with padding,
    ceil-mode windows past the end), the gather orders the output positions by divisor and
    each group of one divisor is a kernel of its own requantization; a second gather puts
    the positions back in order. A single window over the whole input of one image (no
    padding) is global pooling: a ones row times the rows."""
    x = ctx.val(node.input[0], node)
    sp = x.shape[2:]
    if x.shape[0] == 1 and len(sp) == 2 and list(attr(node, "kernel_shape")) == list(sp) \
            and not any(attr(node, "pads", [0] * 4)) and not attr(node, "ceil_mode", 0) \
            and all(d == 1 for d in attr(node, "dilations", [1, 1])) \
            and attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"):
        global_average_pool(ctx, node)      # one window over the whole image: a ones row
        return
    cnt = _counts(ctx, node, x, bool(attr(node, "count_include_pad", 0)))
    C = x.shape[1]
    if np.all(cnt == cnt[0]):
        views, out_shape, _, n = _windows(ctx, node, x, FILL_ZERO)
        out = ctx.new(node.output[0], out_shape, channels_last(len(out_shape)),
                      ctx.scale_of(node.output[0]))
        ctx.kernel(node.name or node.op_type, node.name,
                   [Term(v, ctx.diag(C, 1)) for v in views], out, x.scale / int(cnt[0]),
                   role="linearization")
        ctx.vals[node.output[0]] = out
        return
    order = np.argsort(-cnt, kind="stable")
    views, out_shape, _, _ = _windows(ctx, node, x, FILL_ZERO, order)
    scale = ctx.scale_of(node.output[0])
    grouped = Tensor(ctx.uniq(f"{node.output[0]}.bycount"), len(order), C, scale)
    sorted_cnt = cnt[order]
    starts = np.flatnonzero(np.r_[True, sorted_cnt[1:] != sorted_cnt[:-1]])
    for r0, r1 in zip(starts, list(starts[1:]) + [len(order)]):
        n = int(sorted_cnt[r0])
        ctx.kernel(f"{node.name or node.op_type}.div{n}", node.name,
                   [Term(ctx.view(v, int(r0), int(r1 - r0)), ctx.diag(C, 1)) for v in views],
                   ctx.view(grouped, int(r0), int(r1 - r0)), x.scale / n,
                   role="linearization")
    inverse = np.argsort(order)
    nb = out_shape[0]
    sp_out = out_shape[2:]
    ctx.vals[node.output[0]] = ctx.gather(
        node.output[0], node.name, [grouped],
        lambda g: np.moveaxis(g[inverse].reshape((nb,) + tuple(sp_out) + (C,)), -1, 1),
        perm=channels_last(len(out_shape)))


@rule("LRN")
def lrn(ctx, node):
    """LRN, ``y = x / (bias + alpha/size * sum_window x^2)^beta`` over a window of channels:
    a PWL square of ``x``, the window sums as one GEMM with a band matrix over the channels
    carrying the PWL ``(bias + alpha/size * s)^-beta``, then the product with ``x``. The
    intermediate ranges follow from ``x``'s calibrated magnitude ``X``: squares in
    ``[0, X^2]``, window sums in ``[0, size X^2]``."""
    from .elementwise import _product

    x = ctx.val(node.input[0], node)
    if len(x.shape) < 3:
        raise LinearizeError(f"LRN (node {node.name!r}): input of rank {len(x.shape)}, "
                             f"need (N, C, spatial...)")
    size = int(attr(node, "size"))
    alpha, beta = float(attr(node, "alpha", 1e-4)), float(attr(node, "beta", 0.75))
    bias = float(attr(node, "bias", 1.0))
    if bias <= 0:
        raise LinearizeError(f"LRN (node {node.name!r}): bias {bias:g} must be positive")
    x = ctx.relayout(x, channels_last(len(x.shape)), node.name)
    C, shape = x.shape[1], tuple(x.shape)
    X = max(ctx.range_of(node.input[0]).absmax, 1e-12)
    sq = ctx.new(f"{node.output[0]}.sq", shape, x.perm, X * X / INT8_MAX)
    ctx.kernel(f"{node.name or 'LRN'}.square", node.name, [Term(x, ctx.diag(C, 1))], sq,
               x.scale, func=lambda v: np.asarray(v, dtype=np.float64) ** 2, pre=(-X, X),
               role="linearization", kind="square")
    c = np.arange(C)
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    band = ((c[:, None] >= c[None, :] - lo) & (c[:, None] <= c[None, :] + hi)).astype(np.int64)
    top = bias ** -beta
    d = ctx.new(f"{node.output[0]}.scale", shape, x.perm, top / INT8_MAX)
    ctx.kernel(f"{node.name or 'LRN'}.window", node.name,
               [Term(sq, ctx.const(f"lrn_band{C}x{size}", band, 1.0))], d, sq.scale,
               func=lambda s: (bias + alpha / size * np.maximum(np.asarray(s, np.float64), 0))
               ** -beta, pre=(0.0, size * X * X), role="linearization", kind="lrn")
    _product(ctx, node, x, d, shape, absmax=(X, top))
