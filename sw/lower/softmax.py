"""Softmax and LogSoftmax over one axis.

``softmax(x) = exp(x - m - log(sum exp(x - m)))``: a max tree for the row maximum ``m``, a
kernel with a fused PWL exp (the maximum subtracted by a rank-1 GEMM term), a sum by GEMM
with a fused PWL log, and a final kernel with a fused PWL exp; LogSoftmax stops before the
last exp. An attention mask (:mod:`~neuralmatrix.sw.lower.masks`) is one more GEMM term of the
exp kernels.
"""

from __future__ import annotations

import math

import numpy as np

from neuralmatrix.hw.arith import INT8_MAX

from .. import pwl as pwl_lib
from ..ir import Tensor, Term
from .context import LinearizeError, attr
from .masks import mask_term
from .rules import rule

__all__ = ["softmax"]


def _rowmax(ctx, node, x: Tensor) -> Tensor:
    """Row maxima ``[rows, 1]`` by a tree of ``a + relu(b - a)`` over column halves.

    A level narrower than the array (``h < cols``) works on its halves packed ``cols``
    wide (the ``rows x h`` matrix in row order, a host gather): an element-wise kernel
    costs one array row per ``cols`` elements instead of one per ``h``."""
    M, P = x.rows, ctx.cfg.cols
    cur, w = x, x.cols              # cur holds the M x w matrix in row order
    level = 0
    while w > 1:
        h = w // 2
        odd = w % 2
        shape = (M * h // P, P) if h < P and (M * h) % P == 0 else (M, h)

        def half(lo, w=w, h=h, shape=shape):
            return lambda i: i.reshape(M, w)[:, lo:lo + h].reshape(shape)

        a = ctx.gather(f"{node.name}.maxA{level}", node.name, [cur], half(0))
        b = ctx.gather(f"{node.name}.maxB{level}", node.name, [cur], half(h))
        d = Tensor(ctx.uniq(f"{node.name}.maxd{level}"), *shape, x.scale)
        ctx.kernel(f"{node.name}.maxrelu{level}", node.name,
                   [Term(a, ctx.diag(shape[1], -1)), Term(b, ctx.diag(shape[1], 1))], d,
                   x.scale, func=pwl_lib.relu, pre=(-255 * x.scale, 255 * x.scale),
                   role="linearization", kind="relu")
        m = Tensor(ctx.uniq(f"{node.name}.max{level}"), *shape, x.scale)
        ctx.kernel(f"{node.name}.max{level}", node.name,
                   [Term(a, ctx.diag(shape[1], 1)), Term(d, ctx.diag(shape[1], 1))], m, x.scale,
                   role="linearization")
        if odd:
            m = ctx.gather(f"{node.name}.maxodd{level}", node.name, [m, cur],
                           lambda i, j, w=w, h=h: np.concatenate(
                               [i.reshape(M, h), j.reshape(M, w)[:, -1:]], axis=1))
        cur, w = m, h + odd
        level += 1
    if cur.rows != M:
        cur = ctx.gather(f"{node.name}.max", node.name, [cur], lambda i: i.reshape(M, 1))
    return cur


def _pieces(cols) -> tuple[list[Tensor], list[int]]:
    """The columns of :func:`_rank_term`, each repeated once per int8 piece of its
    coefficient, and the pieces."""
    srcs, rows = [], []
    for t, c in cols:
        left = int(c)
        while left:
            piece = max(-INT8_MAX, min(INT8_MAX, left))
            srcs.append(t)
            rows.append(piece)
            left -= piece
    return srcs, rows


def _rank_term(ctx, cols, L: int, origin: str, mask=None) -> list[Term]:
    """``sum_i c_i * col_i @ ones(1, L)`` for columns ``col_i`` (``n x 1`` tensors) and
    integer coefficients of any size, as ONE GEMM term: the columns (each repeated so
    that every piece of its coefficient fits int8) gathered side by side, times a
    constant matrix of the pieces. One K chunk instead of one per column.

    *mask* (a :func:`~.masks.mask_term`, ``A`` constant, ``B`` the mask rows) joins the
    same term: its ``A`` columns and ``B`` rows are gathered after the pieces' (host
    gathers of a constant and an activation), so that the maximum, the log-sum and the
    mask share one K chunk of the exp kernels instead of one chunk each."""
    srcs, rows = _pieces(cols)
    if not srcs:
        return [] if mask is None else [mask]
    if mask is None and len(srcs) == 1:
        return [Term(srcs[0], ctx.ones(1, L, rows[0]))]
    uniq = list(dict.fromkeys(srcs))
    pos = [uniq.index(t) for t in srcs]
    b = ctx.const(f"rank{len(rows)}x{L}", np.repeat(np.array(rows)[:, None], L, axis=1), 1.0)
    if mask is None:
        a = ctx.gather(f"{origin}.rank{len(srcs)}", origin, uniq,
                       lambda *i: np.concatenate([i[p].reshape(-1, 1) for p in pos], axis=1))
        return [Term(a, b)]
    a = ctx.gather(f"{origin}.rankmask{len(srcs)}", origin, [*uniq, mask.a],
                   lambda *i: np.concatenate([i[p].reshape(-1, 1) for p in pos] + [i[-1]],
                                             axis=1))
    bm = ctx.gather(f"{origin}.rankmaskB{len(rows)}", origin, [b, mask.b],
                    lambda i, j: np.concatenate([i, j], axis=0))
    return [Term(a, bm)]


#: Exponent below which exp is 0 at int8 precision (a saturated score difference).
_SATURATE = 32.0


def _fine_accumulator(scale: float, L: int) -> tuple[int, int] | None:
    """``(k, keff)`` when the exp kernels need an accumulator ``k`` times finer than one
    ``1/127`` of a score step (so that ``log(sum exp)`` of ``L`` terms keeps about int8
    precision), else None. ``keff <= k`` is how many copies of the ``127 * x`` term the
    kernel really adds: the true ``k`` when that is cheap, else just enough that one step
    of score difference is below ``-32`` in the exponent, exact since exp(-32) is 0 in int8
    and the true exponent is below that too."""
    ln_l = math.log(max(L, 2))
    need = ln_l / INT8_MAX
    if scale / INT8_MAX <= need:
        return None
    k = math.ceil(scale / ln_l)
    return k, min(k, math.ceil(_SATURATE / ln_l))


@rule("Softmax", "LogSoftmax")
def softmax(ctx, node):
    """Softmax / LogSoftmax over one axis: ``exp(x - m - log(sum exp(x - m)))`` with ``m``
    a row maximum (of the int8 scores; softmax does not depend on the shift, so an
    approximate maximum used consistently is exact). When the scores are a MatMul of two
    activations used only here, the exp kernels take that product again as their GEMM
    term, so the exponent has the int32 accumulator's precision instead of int8's."""
    log = node.op_type == "LogSoftmax"
    src, mask = node.input[0], None
    if src in ctx.masked:
        src, mask = ctx.masked[src]
    x = ctx.val(src, node)
    rank = len(x.shape)
    axis = attr(node, "axis", -1 if ctx.opset >= 13 else 1) % rank
    if ctx.opset < 13 and axis != rank - 1:
        raise LinearizeError(f"{node.op_type} (node {node.name!r}): opset {ctx.opset} "
                             f"softmax over axis {axis} is not the last axis")
    if mask is not None and axis != rank - 1:
        raise LinearizeError(f"{node.op_type} (node {node.name!r}): a masked softmax must "
                             f"be over the last axis")
    perm = tuple(d for d in range(rank) if d != axis) + (axis,)
    fused = ctx.scores.get(src) if x.perm == perm else None
    reps = None
    x = ctx.relayout(x, perm, node.name)
    x2 = Tensor(ctx.uniq(f"{x.name}.2d"), x.rows, x.cols, x.scale)
    x2.base = x
    shape_nd = tuple(x.shape)
    x = x2
    L, M = x.cols, x.rows
    r = ctx.range_of(src)
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
        scores = [(0, M, [Term(x, ctx.diag(L, INT8_MAX))])]
        reps = _fine_accumulator(x.scale, L)
        if reps is not None:
            # One int8 step of the scores is coarser than the log-sum needs (huge logits,
            # e.g. a network of constant weights): run the exp kernels on a finer
            # accumulator; score differences of one step or more then give exp(<= -32) = 0.
            k, keff = reps
            acc = x.scale / (INT8_MAX * k)
            scores = [(0, M, [Term(x, ctx.diag(L, INT8_MAX)) for _ in range(keff)])]
            if keff < k:
                zlo = min(zlo, -_SATURATE)
    c_m = int(round(x.scale / acc)) if fused is not None or reps is None else INT8_MAX * keff
    xs = x
    if mask is not None:
        # The row maximum over the kept keys only: masked scores saturate to -128 first.
        xs = Tensor(ctx.uniq(f"{x.name}.masked"), M, L, x.scale)
        ctx.kernel(f"{node.name}.mask", node.name,
                   [Term(x, ctx.diag(L, 1)),
                      mask_term(ctx, mask, M, x.scale, 2 * INT8_MAX * x.scale)],
                   xs, x.scale, role="linearization")
    m = _rowmax(ctx, node, xs)
    # A masked key gets at least 2 * span + 30 below the row maximum: exp gives 0.
    need = 2 * span + 30.0
    e = Tensor(ctx.uniq(f"{node.name}.exp"), M, L, math.exp(hi) / INT8_MAX)
    for r0, n, terms in scores:
        extra = None if mask is None else mask_term(ctx, mask, n, acc, need)
        ctx.kernel(f"{node.name}.exp", node.name,
                   terms + _rank_term(ctx, [(ctx.view(m, r0, n), -c_m)], L, node.name, extra),
                   ctx.view(e, r0, n), acc, func=pwl_lib.exp, pre=(zlo, hi),
                   role="linearization", kind="exp")
    ln_l = math.log(L)
    wanted = max(ln_l + hi, hi, 1e-3) / INT8_MAX
    c_ls = max(1, math.ceil(wanted / acc))
    ls = Tensor(ctx.uniq(f"{node.name}.logsum"), M, 1, c_ls * acc)
    ctx.kernel(f"{node.name}.logsum", node.name, [Term(e, ctx.ones(L, 1))], ls, e.scale,
               func=np.log, pre=(math.exp(-hi), L * math.exp(hi)), role="linearization",
               kind="log")
    if log:
        out = ctx.new(node.output[0], shape_nd, perm, ctx.scale_of(node.output[0]))
    else:
        out = ctx.new(node.output[0], shape_nd, perm, 1.0 / INT8_MAX)
    for r0, n, terms in scores:
        extra = None if mask is None else mask_term(ctx, mask, n, acc, need)
        terms = terms + _rank_term(ctx, [(ctx.view(m, r0, n), -c_m),
                                         (ctx.view(ls, r0, n), -c_ls)], L, node.name, extra)
        if log:
            ctx.kernel(node.name or node.op_type, node.name, terms, ctx.view(out, r0, n),
                       acc, role="linearization")
        else:
            ctx.kernel(node.name or node.op_type, node.name, terms, ctx.view(out, r0, n),
                       acc, func=pwl_lib.exp, pre=(zlo - ln_l - hi, hi),
                       role="linearization", kind="exp")
    ctx.vals[node.output[0]] = out
