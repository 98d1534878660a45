"""Linear layers: Conv, Gemm, MatMul, and BatchNormalization folding.

Constant-weight layers are one kernel (convolution: im2col, a host gather, times a
block-diagonal weight matrix for groups); the BatchNormalization and constant per-channel
Mul/Div/Add/Sub that follow are folded into the weights and the int32 bias, and the
element-wise chain after that is a PWL table on the kernel's output
(:func:`~neuralmatrix.sw.lower.fusion.emit_linear`). A MatMul of two activations is one kernel
per batch matrix.
"""

from __future__ import annotations

import itertools

import numpy as np

from neuralmatrix.hw.arith import INT8_MAX

from ..ir import FILL_ZERO, Term
from ..quantize import bias_floor, quantize_weights
from .context import LinearizeError, attr, channels_last, per_channel, prod
from .fusion import emit_linear, emit_sum, tail
from .rules import rule

__all__ = ["conv", "gemm", "matmul", "batch_normalization", "linear_grouped"]


def _fold_after(ctx, name, nchan: int, chan_axis: int):
    """Fold BatchNormalization and constant per-channel Mul, Div, Add, Sub that follow a
    linear layer's output *name* (channels on *chan_axis*): returns
    ``(scale_per_channel, bias_per_channel, new_name)``."""
    a, b = None, None
    while True:
        c = ctx.single_consumer(name)
        if c is None or id(c) in ctx.done:
            return a, b, name
        if c.op_type == "BatchNormalization" and c.input[0] == name:
            gamma, beta, mean, var = (ctx.consts.get(i) for i in c.input[1:5])
            if any(v is None for v in (gamma, beta, mean, var)):
                return a, b, name
            eps = attr(c, "epsilon", 1e-5)
            s = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
            t = beta - mean * s
        elif c.op_type in ("Add", "Sub", "Mul", "Div"):
            other = c.input[1] if c.input[0] == name else c.input[0]
            if other not in ctx.consts or c.input[0] == c.input[1]:
                return a, b, name
            v = per_channel(ctx.consts[other], len(ctx.shape_of(name)), nchan, chan_axis)
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
        if tuple(ctx.shape_of(c.output[0])) != tuple(ctx.shape_of(name)):
            return a, b, name
        a = s if a is None else a * s
        b = t if b is None else b * s + t
        ctx.done.add(id(c))
        ctx.notes.append(f"{c.name or c.op_type} folded into the preceding layer")
        name = c.output[0]


@rule("Conv")
def conv(ctx, node):
    """Conv (1-D, 2-D, 3-D; groups, depthwise): im2col (a host gather) times a block-diagonal
    weight matrix, with the BatchNormalization and constant per-channel arithmetic after it
    folded in."""
    x = ctx.val(node.input[0], node)
    w = ctx.consts.get(node.input[1])
    if w is None:
        raise LinearizeError(f"Conv (node {node.name!r}): weights must be constant")
    bias = ctx.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    rank = len(x.shape)
    if rank not in (3, 4, 5):
        raise LinearizeError(f"Conv (node {node.name!r}): only 1-D, 2-D and 3-D convolutions, "
                             f"input has rank {rank}")
    nb = x.shape[0]
    x = ctx.relayout(x, channels_last(rank), node.name)
    sp = rank - 2
    ks = list(w.shape[2:])
    strides = list(attr(node, "strides", [1] * sp))
    dil = list(attr(node, "dilations", [1] * sp))
    group = int(attr(node, "group", 1))
    pads = list(attr(node, "pads", [0] * (2 * sp)))
    auto = attr(node, "auto_pad", b"NOTSET")
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
    cout, cin_g = w.shape[:2]
    cin = x.shape[1]
    if cin != cin_g * group:
        raise LinearizeError(f"Conv (node {node.name!r}): {cin} input channels, weights "
                             f"expect {cin_g} x group {group}")
    out_sp = [(in_sp[d] + pads[d] + pads[d + sp] - dil[d] * (ks[d] - 1) - 1) // strides[d] + 1
              for d in range(sp)]
    taps = list(itertools.product(*[range(k) for k in ks]))

    def im2col(i):
        i = i.reshape(nb, cin, *in_sp)
        p = np.pad(i, ((0, 0), (0, 0)) + tuple((pads[d], pads[d + sp]) for d in range(sp)),
                   constant_values=FILL_ZERO)
        views = []
        for tap in taps:
            v = p
            for d in range(sp):
                v = np.take(v, np.arange(out_sp[d]) * strides[d] + tap[d] * dil[d], axis=2 + d)
            views.append(v)                                 # (nb, cin, *out_sp)
        cols = np.moveaxis(np.stack(views, axis=2), (1, 2), (-2, -1))
        return cols.reshape(nb * prod(out_sp), cin * len(taps))   # columns (c, taps)

    a = ctx.gather(f"{node.name}.im2col", node.name, [x], im2col)
    s_bn, t_bn, out_name = _fold_after(ctx, node.output[0], cout, 1)
    wf = w.astype(np.float64).reshape(cout, cin_g * len(taps))
    bf = np.zeros(cout) if bias is None else bias.astype(np.float64)
    if s_bn is not None:
        wf = wf * s_bn[:, None]
        bf = bf * s_bn + t_bn
    q, sw = quantize_weights(wf, axis=0, sum_group=len(taps),
                             min_scale=bias_floor(bf, x.scale))
    cout_g = cout // group
    r = ctx.ranges.get(node.input[0])
    if r is not None and r.chanmean is not None and r.chanmean.size == cin:
        valid = np.ones(len(taps))                  # share of each tap's reads inside the input
        for d in range(sp):
            o = np.arange(out_sp[d]) * strides[d] - pads[d]
            inside = [np.mean((o + t * dil[d] >= 0) & (o + t * dil[d] < in_sp[d]))
                      for t in range(ks[d])]
            valid *= np.array([inside[tap[d]] for tap in taps])
        mean_cols = (r.chanmean.reshape(group, 1, cin_g, 1) * valid).reshape(group, 1, -1)
        err = (q * sw[:, None] - wf).reshape(group, cout_g, -1)
        bf = bf - (err * mean_cols).sum(axis=2).reshape(cout)
    B = np.zeros((cin * len(taps), cout), dtype=np.int64)
    kg = cin_g * len(taps)
    for g in range(group):
        B[g * kg:(g + 1) * kg, g * cout_g:(g + 1) * cout_g] = q[g * cout_g:(g + 1) * cout_g].T
    wt = ctx.const(f"{node.name}.W", B, 1.0)
    shape = (nb, cout) + tuple(out_sp)
    emit_linear(ctx, node, [Term(a, wt)], x.scale * sw, bf, out_name, shape,
                channels_last(len(shape)))


@rule("Gemm")
def gemm(ctx, node):
    """Gemm with constant B (weights) or an activation B; C a constant bias."""
    if node.input[0] in ctx.grouped:
        w = ctx.consts[node.input[1]].astype(np.float64) * attr(node, "alpha", 1.0)
        if attr(node, "transB", 0):
            w = w.T
        N = w.shape[1]
        bias = ctx.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        bf = np.zeros(N) if bias is None else np.broadcast_to(
            bias.astype(np.float64).reshape(-1) * attr(node, "beta", 1.0), (N,)).copy()
        return linear_grouped(ctx, node, node.input[0], w, bf)
    x = ctx.val(node.input[0], node,
                percol=node.input[1] in ctx.consts and not attr(node, "transA", 0))
    if attr(node, "transA", 0):
        x = ctx.gather(f"{node.name}.transA", node.name, [x], lambda i: i.T)
    x = ctx.relayout(x, (0, 1), node.name)
    w = ctx.consts.get(node.input[1])
    alpha, beta = attr(node, "alpha", 1.0), attr(node, "beta", 1.0)
    bias = ctx.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if bias is None and len(node.input) > 2 and node.input[2] and beta != 0:
        return _gemm_activation_c(ctx, node, x, w, alpha, beta)
    if w is None:
        return _gemm_activations(ctx, node, x, alpha, beta, bias)
    w = w.astype(np.float64) * alpha
    if attr(node, "transB", 0):
        w = w.T
    N = w.shape[1]
    if bias is not None and (bias.size not in (1, N) or (bias.ndim == 2 and bias.shape[0] != 1)):
        return _gemm_matrix_c(ctx, node, x, w, bias.astype(np.float64) * beta)
    bf = np.zeros(N) if bias is None else np.broadcast_to(
        bias.astype(np.float64).reshape(-1) * beta, (N,)).copy()
    _linear_const(ctx, node, x, w, bf, (x.shape[0], N))


def _gemm_matrix_c(ctx, node, x, w, c):
    """Gemm with a constant C that varies along rows: ``A B`` as one kernel, then ``+ C``
    as a sum with C's two int8 digits (about 14 bits, per-column scales)."""
    shape = (x.shape[0], w.shape[1])
    c = np.broadcast_to(c.reshape((1,) * (2 - c.ndim) + c.shape), shape)
    q, sw = quantize_weights(w * x.colw[:, None], axis=1)
    top = ctx.range_of(node.output[0]).absmax + float(np.max(np.abs(c)))
    ab = ctx.new(f"{node.output[0]}.ab", shape, (0, 1), max(top, 1e-8) / INT8_MAX)
    ctx.kernel(f"{node.name or 'Gemm'}.ab", node.name,
               [Term(x, ctx.const(f"{node.name}.W", q, 1.0))], ab, x.scale * sw)
    parts = [(ab, np.ones(shape[1]))]
    parts += [(t, np.ones(shape[1])) for t in ctx.digits(f"{node.name}.C", c, shape, (0, 1))]
    emit_sum(ctx, node, parts, node.output[0], shape, (0, 1))


def _gemm_activation_c(ctx, node, x, w, alpha, beta):
    """Gemm whose C is an activation: ``alpha A B`` as one kernel (its int8 scale from the
    calibrated ranges of the output and of C), then ``+ beta C`` as a sum of two tensors."""
    if w is None:
        y = ctx.relayout(ctx.val(node.input[1], node), (0, 1), node.name)
        if attr(node, "transB", 0):
            y = ctx.gather(f"{node.name}.transB", node.name, [y], lambda i: i.T)
        if alpha <= 0:
            raise LinearizeError(f"Gemm (node {node.name!r}): alpha must be positive with an "
                                 f"activation B")
        N, terms, acc = y.shape[1], [Term(x, y)], x.scale * y.scale * alpha
    else:
        wf = w.astype(np.float64) * alpha
        wf = (wf.T if attr(node, "transB", 0) else wf) * x.colw[:, None]
        q, sw = quantize_weights(wf, axis=1)
        N, terms, acc = wf.shape[1], [Term(x, ctx.const(f"{node.name}.W", q, 1.0))], x.scale * sw
    shape = (x.shape[0], N)
    top = ctx.range_of(node.output[0]).absmax + abs(beta) * ctx.range_of(node.input[2]).absmax
    ab = ctx.new(f"{node.output[0]}.ab", shape, (0, 1), max(top, 1e-8) / INT8_MAX)
    ctx.kernel(f"{node.name or 'Gemm'}.ab", node.name, terms, ab, acc)
    c = ctx.val(node.input[2], node)
    if tuple(c.shape) != shape:
        c = ctx.gather(f"{c.name}.bcast", node.name, [c], lambda i: np.broadcast_to(
            i.reshape((1,) * (2 - i.ndim) + i.shape), shape), (0, 1))
    else:
        c = ctx.relayout(c, (0, 1), node.name)
    emit_sum(ctx, node, [(ab, np.ones(N)), (c, np.full(N, float(beta)))], node.output[0],
             shape, (0, 1))


def _gemm_activations(ctx, node, x, alpha, beta, bias):
    y = ctx.val(node.input[1], node)
    y = ctx.relayout(y, (0, 1), node.name)
    if attr(node, "transB", 0):
        y = ctx.gather(f"{node.name}.transB", node.name, [y], lambda i: i.T)
    N = y.shape[1]
    if bias is not None and not (bias.size in (1, N) and bias.ndim <= 2
                                 and (bias.ndim < 2 or bias.shape[0] == 1)):
        raise LinearizeError(f"Gemm (node {node.name!r}): C must broadcast along rows")
    bf = None if bias is None else np.broadcast_to(bias.astype(np.float64).reshape(-1) * beta, (N,))
    if alpha <= 0:
        raise LinearizeError(f"Gemm (node {node.name!r}): alpha must be positive with an "
                             f"activation B")
    emit_linear(ctx, node, [Term(x, y)], x.scale * y.scale * alpha, bf, node.output[0],
                (x.shape[0], N), (0, 1))


def _linear_const(ctx, node, x, w, bf, shape):
    s, t, out_name = _fold_after(ctx, node.output[0], w.shape[1], -1)
    if s is not None:
        w = w * s[None, :]
        bf = bf * s + t
    w = w * x.colw[:, None]                     # per-column input scales: weight rows
    q, sw = quantize_weights(w, axis=1, min_scale=bias_floor(bf, x.scale))
    wt = ctx.const(f"{node.name}.W", q, 1.0)
    emit_linear(ctx, node, [Term(x, wt)], x.scale * sw, bf, out_name, shape,
                tuple(range(len(shape))))


def linear_grouped(ctx, node, name, w, bf):
    """``x @ w`` for a column-grouped *x*: one term per group, the group scales folded
    into the weight rows."""
    shape, groups = ctx.grouped[name]
    s_row = np.zeros(w.shape[0])
    for idx, t in groups:
        s_row[idx] = t.scale
    s, t_, out_name = _fold_after(ctx, node.output[0], w.shape[1], -1)
    if s is not None:
        w = w * s[None, :]
        bf = bf * s + t_
    q, sw = quantize_weights(w * s_row[:, None], axis=1, min_scale=bias_floor(bf, 1.0))
    terms = [Term(t, ctx.const(f"{node.name}.W.{i}", q[idx], 1.0))
             for i, (idx, t) in enumerate(groups)]
    out_shape = tuple(shape[:-1]) + (w.shape[1],)
    emit_linear(ctx, node, terms, sw, bf, out_name, out_shape, tuple(range(len(out_shape))))


@rule("MatMul")
def matmul(ctx, node):
    """MatMul by constant weights, or of two activations (one kernel per batch matrix;
    softmax scores are recorded in ``ctx.scores`` for the softmax kernels to reuse)."""
    a_name, b_name = node.input[:2]
    if a_name in ctx.grouped:
        w = ctx.consts[b_name].astype(np.float64)
        return linear_grouped(ctx, node, a_name, w, np.zeros(w.shape[1]))
    if a_name in ctx.consts and b_name not in ctx.consts:
        raise LinearizeError(f"MatMul (node {node.name!r}): constant A with activation B "
                             f"is not supported")
    x = ctx.val(a_name, node, percol=b_name in ctx.consts)
    x = ctx.relayout(x, tuple(range(len(x.shape))), node.name)
    if b_name in ctx.consts:
        w = ctx.consts[b_name].astype(np.float64)
        if w.ndim != 2:
            raise LinearizeError(f"MatMul (node {node.name!r}): constant B must be 2-D")
        shape = x.shape[:-1] + (w.shape[1],)
        _linear_const(ctx, node, x, w, np.zeros(w.shape[1]), shape)
        return
    y = ctx.val(b_name, node)
    y = ctx.relayout(y, tuple(range(len(y.shape))), node.name)
    onnx_shape = None
    if len(x.shape) == 1 or len(y.shape) == 1:
        # numpy's rule: a 1-D A is a row (1, K), a 1-D B a column (K, 1); the added
        # dimension is dropped from the output (the same storage: a view).
        onnx_shape = tuple(ctx.shape_of(node.output[0]))
        if len(x.shape) == 1:
            x = ctx.gather(f"{x.name}.row", node.name, [x], lambda i: i.reshape(1, -1))
        if len(y.shape) == 1:
            y = ctx.gather(f"{y.name}.col", node.name, [y], lambda i: i.reshape(-1, 1))
    xs, ys = x.shape, y.shape
    batch = np.broadcast_shapes(xs[:-2], ys[:-2])
    M, K, N = xs[-2], xs[-1], ys[-1]
    if ys[-2] != K:
        raise LinearizeError(f"MatMul (node {node.name!r}): inner dimensions {K} and {ys[-2]}")
    if tuple(xs[:-2]) != tuple(batch):
        x = ctx.gather(f"{node.name}.bcastA", node.name, [x],
                       lambda i: np.broadcast_to(i, tuple(batch) + (M, K)))
    if tuple(ys[:-2]) != tuple(batch):
        y = ctx.gather(f"{node.name}.bcastB", node.name, [y],
                       lambda i: np.broadcast_to(i, tuple(batch) + (K, N)))
    shape = tuple(batch) + (M, N)
    func, pre, final, kind = tail(ctx, node.output[0])
    out = ctx.new(final, shape, tuple(range(len(shape))), ctx.scale_of(final))
    acc = x.scale * y.scale
    users = ctx.consumers[final]
    to_softmax = func is None and final not in ctx.graph_outputs and users and all(
        u.op_type in ("Softmax", "LogSoftmax") or
        (u.op_type == "Add" and any(i in ctx.masks for i in u.input)) for u in users)
    if to_softmax:
        # Scores: an int8 scale that is a whole number of accumulator units, so the
        # softmax kernels can subtract the int8 row maximum from the int32 product exactly.
        out.scale = max(1, round(out.scale / acc)) * acc
    nb = prod(batch)
    parts = []
    for b in range(nb):
        xa = ctx.view(x, b * M, M)
        yb = ctx.view(y, b * K, K)
        ob = ctx.view(out, b * M, M)
        ctx.kernel(f"{node.name or 'MatMul'}[{b}]", node.name, [Term(xa, yb)], ob,
                   acc, func=func, pre=pre, kind=kind)
        parts.append((b * M, M, Term(xa, yb)))
    if to_softmax:
        ctx.scores[final] = (acc, parts)
    if onnx_shape is not None:
        out = ctx.gather(final, node.name, [out], lambda i: i.reshape(onnx_shape))
    ctx.vals[final] = out


@rule("BatchNormalization")
def batch_normalization(ctx, node):
    """A BatchNormalization not folded into a preceding layer: a per-channel scale and bias."""
    x = ctx.val(node.input[0], node)
    gamma, beta, mean, var = (ctx.consts.get(i) for i in node.input[1:5])
    if any(v is None for v in (gamma, beta, mean, var)):
        raise LinearizeError(f"BatchNormalization (node {node.name!r}): parameters must be "
                             f"constant")
    x = ctx.relayout(x, channels_last(len(x.shape)), node.name)
    s = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + attr(node, "epsilon", 1e-5))
    t = beta - mean * s
    emit_sum(ctx, node, [(x, s)], node.output[0], x.shape, x.perm, bias=t)

