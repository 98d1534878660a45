"""Reductions and pooling: ReduceMean/ReduceSum, GlobalAveragePool, AveragePool, MaxPool.

Reductions are GEMMs with a ones vector; AveragePool sums shifted views of its input (one
host gather stacks them); MaxPool is a tree of ``max(a, b) = a + relu(b - a)`` with a PWL
relu.
"""

from __future__ import annotations

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


def _windows(ctx, node, x: Tensor, fill):
    """The shifted views of a pooling window (one gather stacks them): ``(views, out_shape,
    has_pad, window size)``."""
    rank = len(x.shape)
    sp = rank - 2
    if sp not in (1, 2):
        raise LinearizeError(f"{node.op_type} (node {node.name!r}): only 1-D and 2-D pooling, "
                             f"input has rank {rank}")
    ks = list(attr(node, "kernel_shape"))
    strides = list(attr(node, "strides", [1] * sp))
    dil = list(attr(node, "dilations", [1] * sp))
    pads = list(attr(node, "pads", [0] * (2 * sp)))
    ceil = attr(node, "ceil_mode", 0)
    auto = attr(node, "auto_pad", b"NOTSET")
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

    x = ctx.relayout(x, channels_last(rank), node.name)
    st = ctx.gather(f"{node.name}.windows", node.name, [x], stack)
    n = kh * kw
    px = nb * Ho * Wo
    views = [ctx.view(st, t * px, px) for t in range(n)]
    out_shape = (nb, C) + ((Wo,) if sp == 1 else (Ho, Wo))
    has_pad = any(pads) or extra_h or extra_w
    return views, out_shape, has_pad, n


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
    """AveragePool: one kernel summing the shifted window views; a single window over the
    whole input of one image (no padding) is global pooling: a ones row times the rows."""
    x = ctx.val(node.input[0], node)
    sp = x.shape[2:]
    if x.shape[0] == 1 and len(sp) == 2 and list(attr(node, "kernel_shape")) == list(sp) \
            and not any(attr(node, "pads", [0] * 4)) and not attr(node, "ceil_mode", 0) \
            and all(d == 1 for d in attr(node, "dilations", [1, 1])) \
            and attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"):
        global_average_pool(ctx, node)
        return
    views, out_shape, has_pad, n = _windows(ctx, node, x, FILL_ZERO)
    if has_pad and not attr(node, "count_include_pad", 0):
        raise LinearizeError(f"AveragePool (node {node.name!r}): padding with "
                             f"count_include_pad=0 (a per-pixel divisor) is not supported")
    C = x.shape[1]
    out = ctx.new(node.output[0], out_shape, channels_last(len(out_shape)),
                  ctx.scale_of(node.output[0]))
    ctx.kernel(node.name or node.op_type, node.name,
               [Term(v, ctx.diag(C, 1)) for v in views], out, x.scale / n,
               role="linearization")
    ctx.vals[node.output[0]] = out

