"""LayerNormalization and its decomposed ReduceMean/Sub/Pow/Sqrt/Div form.

The mean by GEMM, centering by a rank-1 term, per-row sums of squares by GEMM
(block-diagonal, per group of ``rows`` rows; the centered values have per-column scales
``k_j * s`` and column ``j`` is repeated ``k_j**2`` times, so a few massive channels do not
coarsen the others), a fused PWL rsqrt (rows of always massive variance, like [CLS], with an
input gain of their own), the per-row scaling as a GEMM with a diagonal matrix, gamma and
beta folded into weights and a rank-1 term. A decomposed LayerNorm
(:func:`neuralmatrix.sw.patterns.find_layer_norms`) is lowered at its first node by
:func:`lower_chain`, with the same kernels.
"""

from __future__ import annotations

import math

import numpy as np

from neuralmatrix.hw.arith import INT8_MAX

from ..ir import FILL_ZERO, Tensor, Term, Transfer
from .context import LinearizeError, attr, prod
from .rules import rule

__all__ = ["SQUARE_BUDGET", "SQUARE_MARGIN", "RSQRT_MARGIN", "layer_normalization",
           "lower_chain"]

#: Most GEMM depth of a LayerNorm sum of squares, in multiples of the row length
#: (:func:`_square_levels`).
SQUARE_BUDGET = 2.0
#: Margin of those column scales over the calibrated magnitudes.
SQUARE_MARGIN = 4.0
#: Lower end of a LayerNorm's rsqrt table, as a fraction of the smallest calibrated sum of
#: squares (the output scale covers rsqrt there).
RSQRT_MARGIN = 0.8


@rule("LayerNormalization")
def layer_normalization(ctx, node):
    """LayerNormalization: :func:`_layer_norm` with the node's attributes."""
    extra = [o if o else None for o in list(node.output[1:3]) + [""] * (3 - len(node.output))]
    gamma = ctx.consts.get(node.input[1])
    beta = ctx.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if gamma is None or (len(node.input) > 2 and node.input[2] and beta is None):
        raise LinearizeError(f"LayerNormalization (node {node.name!r}): scale and bias "
                             f"must be constant")
    _layer_norm(ctx, node, node.name, node.input[0], node.output[0], attr(node, "axis", -1),
                float(attr(node, "epsilon", 1e-5)), gamma, beta, *extra[:2])


def lower_chain(ctx, node):
    """A decomposed LayerNorm (:mod:`~neuralmatrix.sw.patterns`) at its first node: the
    same lowering as LayerNormalization, the chain's other nodes marked done."""
    p = ctx.layer_norms[id(node)]
    for n in p.nodes:
        ctx.done.add(id(n))
    gamma = np.ones(1) if p.gamma is None else p.gamma
    ctx.notes.append(f"{p.name}: decomposed LayerNorm ({len(p.nodes)} nodes, "
                     f"{p.nodes[0].op_type}..{p.nodes[-1].op_type}) lowered as one")
    _layer_norm(ctx, node, p.name, p.x, p.output, p.axis, p.epsilon, gamma, p.beta)


def _layer_norm(ctx, node, name, x_name, out_name, axis, eps, gamma, beta,
                mean_name=None, inv_name=None):
    """LayerNorm of *x_name* over the axes from *axis* on into *out_name* (kernel names
    from *name*), as the module doc describes: mean by GEMM with a ones vector, centering
    by a rank-1 term (the sign of gamma folded in), per-row sums of squares by GEMM of row
    blocks with their transposes, a PWL rsqrt on the output path, and the per-row scaling
    as a GEMM with a diagonal block; |gamma| goes into the per-column requantization and
    beta (None: zero) into the bias. *mean_name* and *inv_name* (LayerNormalization's
    optional Mean and InvStdDev outputs) are the mean and the diagonal of the rsqrt blocks,
    moved by the host into the reduced shape (``x.shape[:axis] + (1,) * ...``)."""
    x = ctx.val(x_name, node, percol=True)
    rank = len(x.shape)
    axis = axis % rank
    axes = list(range(axis, rank))
    D = prod([x.shape[a] for a in axes])
    gamma = np.broadcast_to(gamma.astype(np.float64).reshape(-1), (D,))
    beta = np.zeros(D) if beta is None else np.broadcast_to(beta.astype(np.float64).reshape(-1), (D,))
    xr = ctx.rows_by(x, axes, name) if len(axes) > 1 or x.perm[-1] != rank - 1 \
        else ctx.relayout(x, tuple(range(rank)), name)
    M = xr.rows
    sgn = np.where(gamma < 0, -1, 1)
    # Input columns have scales xr.scale * w[j] (w = 1 for a per-tensor scale; then 127
    # is used so the mean keeps 7 more bits). mean: x @ w / D, stored at a scale that is
    # a whole multiple of the unit u, so that the centering coefficients are exact.
    w = xr.colscale.astype(np.int64) if xr.colscale is not None else \
        np.full(D, INT8_MAX, dtype=np.int64)
    u = xr.scale * (1.0 if xr.colscale is not None else 1.0 / INT8_MAX)
    r_mean = ctx.range_of(f"{out_name}#mean")
    qm = int(min(INT8_MAX, max(1, math.ceil(max(r_mean.absmax, 1e-12) / INT8_MAX / u))))
    mean = Tensor(ctx.uniq(f"{out_name}.mean"), M, 1, qm * u)
    ctx.kernel(f"{name}.mean", name,
               [Term(xr, ctx.const(f"{out_name}.w", w[:, None], 1.0))], mean,
               u / D, role="linearization")
    # centered (times sign(gamma)): x * w - mean * qm, in units of u; once per tensor
    # (for the variance) and once per column (for the output).
    terms = [Term(xr, ctx.diag(D, w * sgn)),
             Term(mean, ctx.const(f"{out_name}.negsign", (-qm * sgn)[None, :], 1.0))]
    cname = f"{out_name}#centered"
    c = Tensor(ctx.uniq(f"{out_name}.centered"), M, D, ctx.scale_of(cname))
    cm = ctx.range_of(cname).colmax
    reps = None
    if cm is not None and cm.size == D:
        # With a margin: a centered value beyond its column's range would saturate and
        # make its row's variance too small (held-out sentences go beyond 2x).
        c.scale, c.colscale = _square_levels(cm * SQUARE_MARGIN, D)
        if c.colscale.max() == 1:
            c.colscale = None
        else:
            reps = np.repeat(np.arange(D), c.colscale * c.colscale)
    ctx.kernel(f"{name}.center", name, terms, c, u, role="linearization")
    cp = c
    if cm is not None and cm.size == D and float(cm.max()) > 4 * float(np.median(cm)):
        sc = np.maximum(cm, 1e-8 * float(cm.max())) / INT8_MAX
        uc = float(sc.max()) / INT8_MAX
        cp = Tensor(ctx.uniq(f"{out_name}.centered_pc"), M, D, uc)
        cp.colscale = np.clip(np.ceil(sc / uc - 1e-9), 1, INT8_MAX).astype(np.int64)
        ctx.kernel(f"{name}.center_pc", name, terms, cp, u, role="linearization")
    # per row block: sum of squares -> rsqrt (PWL) -> diagonal block -> scaled rows
    rss = ctx.range_of(f"{out_name}#sumsq")
    r_inv = ctx.range_of(f"{out_name}#inv")
    inv_scale = max(r_inv.hi, 1e-12) / INT8_MAX
    if tuple(x.shape) == (M, D) or (len(axes) == 1 and x.perm == tuple(range(rank))):
        out = ctx.new(out_name, tuple(x.shape), tuple(range(rank)), ctx.scale_of(out_name),
                      percol=True)
    else:
        out = ctx.new(out_name, (M, D), (0, 1), ctx.scale_of(out_name))
    R = ctx.cfg.cols
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
    if inv_name is None and inv_rows is not None and inv_rows.size == M and \
            ss_rows is not None and \
            ss_rows.size == M and ss_low is not None and ss_low.size == M:
        big = inv_rows < inv_scale * INT8_MAX / 8
        big &= ss_low / D > 1e4 * eps
        if big.any() and not big.all():
            top = float(inv_rows[big].max()) * 1.5
            row_gain[big] = (top / (inv_scale * INT8_MAX)) ** 2
            hi_ss = 2 * max(float(ss_rows[~big].max()), float(np.max(row_gain * ss_rows)))
            ctx.notes.append(f"{name}: rows {np.nonzero(big)[0].tolist()} with rsqrt "
                             f"input gain {row_gain[big][0]:.3g}")

    def rsqrt(v, D=D, eps=eps):
        v = np.asarray(v, dtype=np.float64)
        return 1.0 / np.sqrt(np.maximum(v, 0.0) / D + eps)

    invs = []
    for r0 in range(0, M, R):
        n = min(R, M - r0)
        cb = ctx.view(c, r0, n)
        if reps is None:
            ct = ctx.gather(f"{out_name}.cT{r0}", name, [cb], lambda i: i.T)
        else:
            # Column j (scale c.scale * k_j) repeated k_j**2 times on both sides: every
            # product then has the unit c.scale**2.
            cr = _raw_gather(ctx, f"{out_name}.cR{r0}", name, cb,
                             np.arange(n)[:, None] * D + reps[None, :], c.scale)
            ct = _raw_gather(ctx, f"{out_name}.cT{r0}", name, cb,
                             reps[:, None] + np.arange(n)[None, :] * D, c.scale)
            cb = cr
        inv = Tensor(ctx.uniq(f"{out_name}.inv{r0}"), n, n, inv_scale)
        a = row_gain[r0:r0 + n]
        ctx.kernel(f"{name}.rsqrt{r0}", name, [Term(cb, ct)], inv,
                   c.scale * c.scale * a, func=rsqrt, pre=(lo_ss, hi_ss),
                   role="linearization", kind="rsqrt")
        invs.append(inv)
        dg = ctx.gather(f"{out_name}.diag{r0}", name, [inv],
                        lambda i: np.where(np.eye(n, dtype=bool), i, FILL_ZERO))
        # Rows of one input gain share a scaling kernel (its output scale).
        cuts = [0] + [k for k in range(1, n) if a[k] != a[k - 1]] + [n]
        for k0, k1 in zip(cuts[:-1], cuts[1:]):
            ctx.kernel(f"{name}.scale{r0 + k0}", name,
                       [Term(ctx.view(dg, k0, k1 - k0), ctx.view(cp, r0, n))],
                       ctx.view(out, r0 + k0, k1 - k0),
                       inv_scale * math.sqrt(a[k0]) * cp.scale * cp.colw * mag,
                       bias=beta, role="linearization")
    if out.rows * out.cols != M * D or out.cols != D:
        raise AssertionError(f"{name}: LayerNorm output storage {out.rows}x{out.cols}")
    if tuple(out.shape) != tuple(x.shape):
        shape = tuple(x.shape)
        res = ctx.gather(out_name, name, [out], lambda i: i.reshape(shape))
    else:
        res = out
    ctx.vals[out_name] = res
    reduced = tuple(x.shape[:axis]) + (1,) * (rank - axis)
    if mean_name is not None:
        ctx.vals[mean_name] = ctx.gather(mean_name, name, [mean],
                                         lambda i: i.reshape(reduced))
    if inv_name is not None:
        # (No input gain on the rsqrt rows then: every row has the scale inv_scale.)
        ctx.vals[inv_name] = ctx.gather(
            inv_name, name, invs,
            lambda *i: np.concatenate([np.diagonal(b) for b in i]).reshape(reduced))


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


def _raw_gather(ctx, name, origin, src: Tensor, index, scale) -> Tensor:
    """A Transfer of *src*'s integers as they are (no per-column rescaling): the caller
    accounts for the scales."""
    index = np.asarray(index, dtype=np.int64)
    out = Tensor(ctx.uniq(name), index.shape[0], index.shape[1], float(scale))
    ctx.steps.append(Transfer(out.name, origin, [src], out, index))
    return out
