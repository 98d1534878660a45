"""Piecewise-linear (PWL) approximation: how every element-wise nonlinearity becomes one table.

NeuralMatrix evaluates every nonlinear function with the same output-path mechanism,
``y = k[s] * x + b[s]`` with the segment ``s`` chosen from ``x`` (see
:mod:`neuralmatrix.hw.arith`); only the table differs. This module builds those tables in
three steps, each usable alone:

1. **Real-valued fit** (:func:`fit` -> :class:`PwlFit`). Breakpoints are placed ``uniform``,
   by ``curvature`` (equidistributing ``|f''|**(1/2)``, the asymptotically optimal density for
   the max error of a linear fit, ``e_i ~ h_i**2 |f''| / 8``, with a small floor so flat
   regions still get segments) or by ``error`` (the greedy segmentation that is optimal for
   independent segments: each segment is extended as far as the max-error budget allows, and
   the budget is bisected until exactly ``segments`` segments cover the range, on a fine grid
   itself denser where the curvature is; this equalizes per-segment max error). Kinks (slope
   jumps, as in relu or hardswish) are detected numerically and always get a breakpoint in
   the non-uniform methods. Per segment, slope and intercept are fitted by
   least squares over a dense sample of the segment (``objective="lsq"``, default), by a
   minimax (Chebyshev) line (``"minimax"``, Lawson's iteration) or by interpolating the end
   points (``"interp"``, for comparison). Segments are independent: the PWL may jump at a
   breakpoint, exactly as the hardware allows. Outside ``[lo, hi]`` the first and last
   segments extend (the hardware does the same: its first/last segment covers the rest of
   the int16 input range).

2. **Quantization** (:func:`quantize` -> :class:`PwlTable`). With real scales
   ``x = x_int16 * in_scale`` and ``y = y_int8 * out_scale`` a real segment ``y = k x + b``
   becomes ``y_int = K x_int + B`` with ``K = k in_scale / out_scale``, ``B = b / out_scale``;
   the hardware holds ``k = round(K 2**S)`` (int16), ``b`` (int32) and ``out_shift = S``,
   chosen as large as possible without overflowing either. After ``k`` is rounded, ``b`` is
   re-fitted for the rounded slope (through the segment centre, which is the least-squares
   optimum for a fixed slope). Breakpoint mode: ``bp[s] = ceil(edge_s / in_scale)`` (``x``
   exactly on an edge belongs to the upper segment, as in :class:`PwlFit`). Uniform mode
   needs a power-of-two segment width in int16 units: fit over :func:`uniform_grid`'s range.
   Tables are padded to the hardware segment count by repeating the last segment.
   :meth:`PwlTable.evaluate` is :func:`neuralmatrix.hw.arith.pwl_eval`, so it is bit-exact
   with the RTL and the golden model; :meth:`PwlTable.instructions` emits the
   ``CFG_PWL_HDR`` / ``CFG_PWL_SEG`` instructions.

3. **Range reduction** for functions spanning decades (:func:`fit_range_reduced`):
   ``x = m * 2**(p*e)`` with ``m`` in ``[1, 2**p)`` and ``f(x) = f(m) * 2**(a*e)``
   (reciprocal ``p=1, a=-1``; rsqrt ``p=2, a=-1``; sqrt ``p=2, a=+1``). The table covers only
   ``m``: its int16 input is ``m * 2**(15-p)`` (13-14 significant bits), which the compiler
   obtains from an int32 value ``X`` with most significant bit ``q`` by the ordinary
   requantization ``round_shift(X * mult, shift)`` with ``mult / 2**shift = 2**(15-p-p*e)``;
   the table's int8 output is ``f(m) / out_scale`` and the exponent ``2**(a*e)`` goes into
   the scale, i.e. the requantization shift, of whatever consumes ``y``. The exponent must be
   known when those requantization parameters are configured (``CFG_REQUANT`` is per lane),
   so it is per lane / per row, not per element. :meth:`RangeReducedTable.evaluate` is the
   numpy reference of this scheme; :meth:`RangeReducedTable.errors` its relative error.

:data:`FUNCTIONS` names the supported functions with a default input range; :func:`error_table`
tabulates fit and hardware error over segment counts and methods; :func:`add_parser` registers
the ``neuralmatrix pwl`` command.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from neuralmatrix.hw.arith import (
    INT8_MAX, INT16_MAX, INT16_MIN, MAX_SHIFT, PWL_BREAKPOINTS, PWL_UNIFORM, pwl_eval, saturate,
)
from neuralmatrix.hw.isa import Insn, Opcode
from neuralmatrix.hw.params import HwConfig

__all__ = [
    "erf", "relu", "leaky_relu", "gelu", "sigmoid", "tanh", "silu", "elu", "selu", "softplus",
    "hardsigmoid", "hardswish", "exp", "reciprocal", "rsqrt", "sqrt",
    "FuncSpec", "FUNCTIONS", "METHODS", "OBJECTIVES", "PwlFit", "fit", "PwlTable", "quantize",
    "default_scales", "uniform_grid", "fit_table", "RangeReduction", "RANGE_REDUCTIONS",
    "RangeReducedTable", "fit_range_reduced", "error_table", "plot", "add_parser",
]

METHODS = ("uniform", "curvature", "error")
OBJECTIVES = ("lsq", "minimax", "interp")
INT32_MAX = (1 << 31) - 1


# -- functions -------------------------------------------------------------------------------

def erf(x) -> np.ndarray:
    """The error function, vectorized; absolute error below 1e-14 (numpy has none).

    Uses the everywhere-convergent series with positive terms
    ``erf(x) = 2/sqrt(pi) exp(-x**2) sum_n (2 x**2)**n x / (1*3*...*(2n+1))`` (no cancellation),
    for ``|x| <= 6``; beyond, ``erf(x) = sign(x)`` to double precision (``erfc(6) = 2e-17``).
    """
    x = np.asarray(x, dtype=np.float64)
    ax = np.minimum(np.abs(x), 6.0)
    x2 = ax * ax
    term = ax.copy()
    total = ax.copy()
    for n in range(1, 400):
        term = term * (2.0 * x2 / (2 * n + 1))
        total += term
        if np.all(term <= 1e-17 * total):
            break
    out = np.minimum(2.0 / math.sqrt(math.pi) * np.exp(-x2) * total, 1.0)
    return np.copysign(out, x)


def relu(x):
    return np.maximum(np.asarray(x, dtype=np.float64), 0.0)


def leaky_relu(x, alpha: float = 0.01):
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, x, alpha * x)


def gelu(x):
    """Exact (erf) GELU: ``x/2 (1 + erf(x / sqrt 2))``."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def tanh(x):
    return np.tanh(np.asarray(x, dtype=np.float64))


def silu(x):
    x = np.asarray(x, dtype=np.float64)
    return x * sigmoid(x)


def elu(x, alpha: float = 1.0):
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def selu(x):
    return _SELU_SCALE * elu(x, _SELU_ALPHA)


def softplus(x):
    x = np.asarray(x, dtype=np.float64)
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def hardsigmoid(x):
    """PyTorch's: ``relu6(x + 3) / 6``."""
    return np.clip(np.asarray(x, dtype=np.float64) / 6.0 + 0.5, 0.0, 1.0)


def hardswish(x):
    x = np.asarray(x, dtype=np.float64)
    return x * hardsigmoid(x)


def exp(x):
    return np.exp(np.asarray(x, dtype=np.float64))


def reciprocal(x):
    return 1.0 / np.asarray(x, dtype=np.float64)


def rsqrt(x):
    return 1.0 / np.sqrt(np.asarray(x, dtype=np.float64))


def sqrt(x):
    return np.sqrt(np.asarray(x, dtype=np.float64))


class FuncSpec(NamedTuple):
    """A registered function: vectorized callable, default input range, notes."""

    func: Callable
    range: tuple[float, float]
    notes: str


FUNCTIONS: dict[str, FuncSpec] = {
    "relu": FuncSpec(relu, (-8.0, 8.0), "exact with a breakpoint at 0"),
    "leaky_relu": FuncSpec(leaky_relu, (-8.0, 8.0), "alpha = 0.01; exact with a breakpoint at 0"),
    "gelu": FuncSpec(gelu, (-8.0, 8.0), "erf form x/2 (1 + erf(x/sqrt 2))"),
    "erf": FuncSpec(erf, (-4.0, 4.0), "saturates to +-1 beyond the range"),
    "sigmoid": FuncSpec(sigmoid, (-8.0, 8.0), "logistic; saturates beyond the range"),
    "tanh": FuncSpec(tanh, (-4.0, 4.0), "saturates beyond the range"),
    "silu": FuncSpec(silu, (-8.0, 8.0), "x sigmoid(x) (swish)"),
    "elu": FuncSpec(elu, (-8.0, 8.0), "alpha = 1"),
    "selu": FuncSpec(selu, (-8.0, 8.0), "alpha 1.6733, scale 1.0507"),
    "softplus": FuncSpec(softplus, (-8.0, 8.0), "log(1 + e^x)"),
    "hardsigmoid": FuncSpec(hardsigmoid, (-4.0, 4.0), "relu6(x + 3) / 6 (PyTorch)"),
    "hardswish": FuncSpec(hardswish, (-4.0, 4.0), "x relu6(x + 3) / 6 (PyTorch)"),
    "exp": FuncSpec(exp, (-16.0, 0.0), "softmax numerator after max subtraction (x <= 0)"),
    "reciprocal": FuncSpec(reciprocal, (1.0, 2.0),
                           "mantissa table of the range-reduced 1/x: x = m 2^e, m in [1, 2)"),
    "rsqrt": FuncSpec(rsqrt, (1.0, 4.0),
                      "mantissa table of the range-reduced 1/sqrt(x): x = m 4^e, m in [1, 4)"),
    "sqrt": FuncSpec(sqrt, (0.0, 16.0), "direct; range reduction as rsqrt is also available"),
}


def _resolve(func) -> tuple[Callable, str]:
    if isinstance(func, str):
        if func not in FUNCTIONS:
            raise KeyError(f"unknown function {func!r}; available: {', '.join(FUNCTIONS)}")
        return FUNCTIONS[func].func, func
    return func, getattr(func, "__name__", "f")


# -- real-valued fit ---------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class PwlFit:
    """A real-valued PWL approximation: segment ``i`` is ``slopes[i] x + intercepts[i]`` on
    ``[breakpoints[i], breakpoints[i+1])``; the first and last segments extend beyond the
    range."""

    breakpoints: np.ndarray
    slopes: np.ndarray
    intercepts: np.ndarray
    method: str = "uniform"
    objective: str = "lsq"
    func: Callable | None = field(default=None, repr=False)
    name: str = ""

    @property
    def segments(self) -> int:
        return len(self.slopes)

    @property
    def lo(self) -> float:
        return float(self.breakpoints[0])

    @property
    def hi(self) -> float:
        return float(self.breakpoints[-1])

    def segment_of(self, x) -> np.ndarray:
        """Segment index of each *x* (an edge belongs to the segment above it)."""
        return np.searchsorted(self.breakpoints[1:-1], np.asarray(x, dtype=np.float64),
                               side="right")

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        s = self.segment_of(x)
        return self.slopes[s] * x + self.intercepts[s]

    def _errors(self, func, lo, hi, n):
        func = func if func is not None else self.func
        if func is None:
            raise ValueError("no function given and the fit does not know its function")
        func, _ = _resolve(func)
        lo = self.lo if lo is None else lo
        hi = self.hi if hi is None else hi
        inner = self.breakpoints[(self.breakpoints > lo) & (self.breakpoints < hi)]
        # Dense grid plus both sides of every breakpoint (the PWL may jump there).
        x = np.unique(np.concatenate([np.linspace(lo, hi, n), inner,
                                      np.nextafter(inner, -np.inf)]))
        return x, self(x) - func(x)

    def max_error(self, func=None, lo: float | None = None, hi: float | None = None,
                  n: int = 20001) -> float:
        """Max ``|pwl(x) - func(x)|`` over ``[lo, hi]`` (default: the fitted range)."""
        return float(np.max(np.abs(self._errors(func, lo, hi, n)[1])))

    def rms_error(self, func=None, lo: float | None = None, hi: float | None = None,
                  n: int = 20001) -> float:
        """Root mean square of ``pwl(x) - func(x)``, uniform in ``x`` over ``[lo, hi]``."""
        x, e = self._errors(func, lo, hi, n)
        return float(np.sqrt(np.trapezoid(e * e, x) / (x[-1] - x[0])))


def _fit_lines(func, edges: np.ndarray, objective: str, m: int = 257):
    """Slope and intercept of each segment ``[edges[i], edges[i+1]]`` (dense sample of m)."""
    t = np.linspace(0.0, 1.0, m)
    h = np.diff(edges)
    X = edges[:-1, None] + h[:, None] * t[None, :]
    Y = np.asarray(func(X), dtype=np.float64)
    if not np.all(np.isfinite(Y)):
        raise ValueError("the function is not finite on the fitted range")
    if objective == "interp":
        k = np.where(h > 0, (Y[:, -1] - Y[:, 0]) / np.where(h > 0, h, 1.0), 0.0)
        return k, Y[:, 0] - k * X[:, 0]

    def wls(w):
        sw = w.sum(axis=1)
        xm = (w * X).sum(axis=1) / sw
        ym = (w * Y).sum(axis=1) / sw
        dx = X - xm[:, None]
        var = (w * dx * dx).sum(axis=1)
        k = np.where(var > 0, (w * dx * (Y - ym[:, None])).sum(axis=1)
                     / np.where(var > 0, var, 1.0), 0.0)
        return k, ym - k * xm

    w = np.ones_like(X)
    k, b = wls(w)
    if objective == "lsq":
        return k, b
    if objective != "minimax":
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    # Lawson's algorithm: weights multiplied by the residual converge to the minimax line.
    best_k, best_b = k, b
    best_e = np.abs(Y - (k[:, None] * X + b[:, None])).max(axis=1)
    for _ in range(200):
        r = np.abs(Y - (k[:, None] * X + b[:, None]))
        w = w * r
        s = w.sum(axis=1, keepdims=True)
        w = np.where(s > 0, w / np.where(s > 0, s, 1.0), 1.0 / m)
        k, b = wls(w)
        e = np.abs(Y - (k[:, None] * X + b[:, None])).max(axis=1)
        better = e < best_e
        best_k, best_b, best_e = (np.where(better, k, best_k), np.where(better, b, best_b),
                                  np.minimum(e, best_e))
    return best_k, best_b


def _kinks(func, lo, hi, n=8192) -> np.ndarray:
    """Abscissae where *func*'s slope jumps (relu, hardswish, ...), to within (hi - lo) / n.

    On a fine grid the change of the finite-difference slope across a grid point is about
    ``|f''| h`` where *func* is smooth but stays finite (the jump) at a kink; a kink is an
    isolated local maximum 20x above the values three points away on both sides.
    """
    x = np.linspace(lo, hi, n + 1)
    y = np.asarray(func(x), dtype=np.float64)
    g = np.diff(y) / np.diff(x)
    j = np.abs(np.diff(g))                      # j[i - 1]: slope change at x[i]
    if j.size < 8:
        return np.empty(0)
    tiny = 1e-9 * max(1.0, float(np.max(np.abs(g))))
    i = np.arange(3, j.size - 3)
    c = j[i]
    hit = ((c > tiny) & (c >= j[i - 1]) & (c > j[i + 1])
           & (c > 20 * j[i - 3]) & (c > 20 * j[i + 3]))
    return x[i[hit] + 1]


def _snap(edges: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Move the nearest interior edge onto each point (each edge at most once)."""
    edges = edges.copy()
    free = np.ones(len(edges), dtype=bool)
    free[[0, -1]] = False
    for p in points:
        if not free.any():
            break
        cand = np.nonzero(free)[0]
        i = cand[np.argmin(np.abs(edges[cand] - p))]
        edges[i], free[i] = p, False
    return np.sort(edges)


def _curvature_edges(func, lo, hi, segments, power=0.5, floor=0.1, n=8193, kinks=True):
    """Equidistribute ``|f''|**power + floor * mean``, with an edge on every kink.

    Kinks split ``[lo, hi]`` into pieces; each piece gets segments in proportion to its share
    of the density (at least one; largest remainders), equidistributed inside it.
    """
    x = np.linspace(lo, hi, n)
    y = np.asarray(func(x), dtype=np.float64)
    d2 = np.abs(np.gradient(np.gradient(y, x), x))
    ks = _kinks(func, lo, hi) if kinks else np.empty(0)
    if ks.size:                                 # the kink's own spike is not curvature
        near = np.min(np.abs(x[:, None] - ks[None, :]), axis=1) <= 2.5 * (hi - lo) / (n - 1)
        d2[near] = np.interp(x[near], x[~near], d2[~near]) if (~near).any() else 0.0
    dens = d2 ** power
    mean = dens.mean()
    dens = dens + floor * mean if mean > 0 else np.ones_like(dens)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(x))])
    cuts = np.concatenate([[lo], ks, [hi]])
    if ks.size and segments >= len(cuts) - 1:
        c = np.interp(cuts, x, cdf)
        share = np.diff(c) / c[-1] * segments
        alloc = np.maximum(1, np.floor(share)).astype(int)
        while alloc.sum() > segments:           # took too many through the minimum of one
            alloc[np.argmax(np.where(alloc > 1, alloc - share, -np.inf))] -= 1
        while alloc.sum() < segments:
            alloc[np.argmax(share - alloc)] += 1
        parts = [np.interp(np.linspace(c[j], c[j + 1], alloc[j] + 1), cdf, x)[:-1]
                 for j in range(len(alloc))]
        edges = np.concatenate(parts + [[hi]])
        edges[np.searchsorted(edges, ks)] = ks  # exactly on the kinks
    else:
        edges = np.interp(np.linspace(0.0, cdf[-1], segments + 1), cdf, x)
        if ks.size:
            edges = _snap(edges, ks)
    edges[0], edges[-1] = lo, hi
    return edges


def _error_edges(func, lo, hi, segments, n=2048):
    """Greedy minimax segmentation on an (n+1)-point grid, budget found by bisection."""
    if segments > n // 4:
        raise ValueError(f"method 'error' supports at most {n // 4} segments")
    # The grid is denser where the curvature is, and holds every kink.
    x = np.union1d(_curvature_edges(func, lo, hi, n, floor=0.5, kinks=False),
                   _kinks(func, lo, hi))
    n = len(x) - 1
    y = np.asarray(func(x), dtype=np.float64)

    def csum(v):
        return np.concatenate([[0.0], np.cumsum(v)])
    S1, Sx, Sxx, Sy, Sxy = (csum(np.ones_like(x)), csum(x), csum(x * x), csum(y), csum(x * y))

    def err(i, j):                          # LS line through grid points i..j, max residual
        c = S1[j + 1] - S1[i]
        sx, sy = Sx[j + 1] - Sx[i], Sy[j + 1] - Sy[i]
        vxx = (Sxx[j + 1] - Sxx[i]) - sx * sx / c
        k = ((Sxy[j + 1] - Sxy[i]) - sx * sy / c) / vxx if vxx > 0 else 0.0
        b = (sy - k * sx) / c
        return float(np.max(np.abs(y[i:j + 1] - (k * x[i:j + 1] + b))))

    def greedy(eps, limit):
        ends, i = [], 0
        while True:
            if err(i, n) <= eps:
                ends.append(n)
                return ends
            if len(ends) + 1 >= limit:
                return None
            good, step = i + 1, 1               # gallop, then bisect: err(i, good) <= eps
            while good + step < n and err(i, good + step) <= eps:
                good += step
                step *= 2
            bad = min(good + step, n)
            while bad - good > 1:
                mid = (good + bad) // 2
                if err(i, mid) <= eps:
                    good = mid
                else:
                    bad = mid
            ends.append(good)
            i = good

    hi_eps, lo_eps = err(0, n), 0.0
    ends = [n]
    if hi_eps > 0:
        for _ in range(48):
            mid = 0.5 * (lo_eps + hi_eps)
            if greedy(mid, segments) is not None:
                hi_eps = mid
            else:
                lo_eps = mid
            if hi_eps - lo_eps <= 1e-6 * hi_eps:
                break
        ends = greedy(hi_eps, segments)
    idx = [0] + ends
    while len(idx) - 1 < segments:              # fewer needed: split the widest segments
        widths = np.diff(idx)
        w = int(np.argmax(widths))
        if widths[w] < 2:
            break
        idx.insert(w + 1, idx[w] + widths[w] // 2)
    edges = x[np.array(idx)]
    if len(edges) - 1 < segments:               # degenerate: pad with tiny splits
        extra = np.linspace(lo, hi, segments + 2 - len(edges))[1:-1]
        edges = np.sort(np.concatenate([edges, extra]))
    return edges


def fit(func, lo: float, hi: float, segments: int, *, method: str = "uniform",
        objective: str = "lsq", breakpoints=None) -> PwlFit:
    """Fit *func* (vectorized callable or a :data:`FUNCTIONS` name) on ``[lo, hi]``.

    Parameters
    ----------
    segments : int
        Number of segments (``segments + 1`` breakpoints including both ends).
    method : str
        ``uniform``, ``curvature`` or ``error`` breakpoint placement (module docstring).
    objective : str
        ``lsq`` (least squares per segment over a dense sample), ``minimax`` or ``interp``.
    breakpoints : array, optional
        Explicit ascending edges (``segments + 1``, from *lo* to *hi*); overrides *method*.
    """
    f, name = _resolve(func)
    lo, hi = float(lo), float(hi)
    if not hi > lo:
        raise ValueError(f"need lo < hi, got [{lo}, {hi}]")
    if not isinstance(segments, (int, np.integer)) or segments < 1:
        raise ValueError(f"segments must be a positive integer, got {segments!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if breakpoints is not None:
        edges = np.asarray(breakpoints, dtype=np.float64)
        if len(edges) != segments + 1 or np.any(np.diff(edges) < 0):
            raise ValueError("breakpoints must be segments + 1 ascending values")
        method = "given"
    elif method == "uniform":
        edges = np.linspace(lo, hi, segments + 1)
    elif method == "curvature":
        edges = _curvature_edges(f, lo, hi, segments)
    elif method == "error":
        edges = _error_edges(f, lo, hi, segments)
    else:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    k, b = _fit_lines(f, edges, objective)
    return PwlFit(edges, k, b, method=method, objective=objective, func=f, name=name)


# -- quantization to the hardware format ------------------------------------------------------

@dataclass(eq=False)
class PwlTable:
    """One hardware PWL table (the fields of ``CFG_PWL_HDR`` / ``CFG_PWL_SEG``) and its scales.

    ``x_int16 = round(x / in_scale)``, ``y_real = y_int8 * out_scale``; ``lo``/``hi`` is the
    real input range the table was made for (used by :meth:`errors`).
    """

    mode: int
    x0: int
    seg_shift: int
    out_shift: int
    bp: np.ndarray
    k: np.ndarray
    b: np.ndarray
    in_scale: float
    out_scale: float
    lo: float
    hi: float
    name: str = ""
    func: Callable | None = field(default=None, repr=False)
    fitted: int = 0

    @property
    def segments(self) -> int:
        """Entries of the hardware table (the fit padded by repeating its last segment)."""
        return len(self.k)

    @property
    def fitted_segments(self) -> int:
        """Segments of the fit itself, before the padding (``fitted``; else the table size)."""
        return self.fitted or self.segments

    def evaluate(self, x_int16) -> np.ndarray:
        """int8 outputs of int16 inputs: :func:`neuralmatrix.hw.arith.pwl_eval` (bit-exact)."""
        return pwl_eval(x_int16, self.mode, self.bp, self.k, self.b, self.x0, self.seg_shift,
                        self.out_shift)

    def quantize_input(self, x) -> np.ndarray:
        """``sat16(round(x / in_scale))``."""
        return saturate(np.round(np.asarray(x, dtype=np.float64) / self.in_scale), 16)

    def evaluate_real(self, x) -> np.ndarray:
        """Real in, real out, through the integer table."""
        return self.evaluate(self.quantize_input(x)) * self.out_scale

    def input_range(self, lo=None, hi=None, in_scale=None) -> np.ndarray:
        """Every int16 input whose real value lies in ``[lo, hi]``."""
        s = self.in_scale if in_scale is None else in_scale
        lo = self.lo if lo is None else lo
        hi = self.hi if hi is None else hi
        a = max(INT16_MIN, math.ceil(lo / s - 1e-9))
        z = min(INT16_MAX, math.floor(hi / s + 1e-9))
        return np.arange(a, z + 1, dtype=np.int64)

    def errors(self, func=None, in_scale: float | None = None, out_scale: float | None = None,
               lo: float | None = None, hi: float | None = None) -> dict:
        """Integer-domain error against the real function over every int16 input in range.

        Returns ``max_lsb``, ``rms_lsb`` (output LSBs) and ``max``, ``rms`` (real units) of
        ``y_int8 - f(x_int16 * in_scale) / out_scale``, and ``n`` inputs. The 0.5 LSB of
        output rounding is included.
        """
        func = self.func if func is None else func
        if func is None:
            raise ValueError("no function given and the table does not know its function")
        func, _ = _resolve(func)
        si = self.in_scale if in_scale is None else in_scale
        so = self.out_scale if out_scale is None else out_scale
        x = self.input_range(lo, hi, si)
        e = self.evaluate(x) - np.asarray(func(x * si), dtype=np.float64) / so
        mx, rms = float(np.max(np.abs(e))), float(np.sqrt(np.mean(e * e)))
        return {"max_lsb": mx, "rms_lsb": rms, "max": mx * so, "rms": rms * so, "n": int(x.size)}

    def instructions(self, table_id: int = 0, config: HwConfig | None = None) -> list[Insn]:
        """``CFG_PWL_HDR`` then one ``CFG_PWL_SEG`` per segment, for table *table_id*."""
        if config is not None:
            if not 0 <= table_id < config.pwl_tables:
                raise ValueError(f"table_id must be 0..{config.pwl_tables - 1}, got {table_id}")
            if self.segments != config.pwl_segments:
                raise ValueError(f"table has {self.segments} segments, the hardware "
                                 f"{config.pwl_segments} (quantize with config=...)")
        out = [Insn(Opcode.CFG_PWL_HDR, table=table_id, mode=self.mode, x0=self.x0,
                    seg_shift=self.seg_shift, out_shift=self.out_shift)]
        out += [Insn(Opcode.CFG_PWL_SEG, table=table_id, seg=s, bp=int(self.bp[s]),
                     k=int(self.k[s]), b=int(self.b[s])) for s in range(self.segments)]
        return out

    def real_segments(self) -> tuple[np.ndarray, np.ndarray]:
        """The real slope and intercept each hardware segment implements."""
        scale = self.out_scale / 2.0 ** self.out_shift
        return self.k * scale / self.in_scale, self.b * scale


def _pow2_at_least(n: int) -> int:
    return max(2, 1 << (int(n) - 1).bit_length())


def _parse_mode(mode, fit_: PwlFit):
    if mode in ("uniform", PWL_UNIFORM):
        return PWL_UNIFORM
    if mode in ("breakpoints", PWL_BREAKPOINTS):
        return PWL_BREAKPOINTS
    if mode == "auto":
        return PWL_UNIFORM if fit_.method == "uniform" else PWL_BREAKPOINTS
    raise ValueError(f"mode must be 'uniform', 'breakpoints' or 'auto', got {mode!r}")


def quantize(fit: PwlFit, *, in_scale: float, out_scale: float, mode="auto",
             segments_hw: int | None = None, config: HwConfig | None = None) -> PwlTable:
    """The hardware table of *fit* for ``x = x_int16 * in_scale``, ``y = y_int8 * out_scale``.

    Parameters
    ----------
    mode : ``"uniform"``, ``"breakpoints"`` (or ``PWL_UNIFORM`` / ``PWL_BREAKPOINTS``), ``"auto"``
        ``auto``: uniform for a ``method="uniform"`` fit, breakpoints otherwise. Uniform mode
        requires equal segments of a power-of-two width (in int16 units) starting on an int16:
        fit over the range :func:`uniform_grid` returns.
    segments_hw : int, optional
        Hardware segment count (default ``config.pwl_segments``, else the fit's segment count
        rounded up to a power of two); the table is padded by repeating the last segment.
    """
    if in_scale <= 0 or out_scale <= 0:
        raise ValueError("in_scale and out_scale must be positive")
    pmode = _parse_mode(mode, fit)
    if config is not None:
        if segments_hw is not None and segments_hw != config.pwl_segments:
            raise ValueError(f"segments_hw={segments_hw} differs from config.pwl_segments="
                             f"{config.pwl_segments}")
        segments_hw = config.pwl_segments
    E = fit.breakpoints / in_scale                   # edges in int16 units
    K = fit.slopes * in_scale / out_scale            # output LSB per input LSB
    B = fit.intercepts / out_scale
    n = fit.segments
    x0, seg_shift = 0, 0
    if pmode == PWL_UNIFORM:
        w = (E[-1] - E[0]) / n
        seg_shift = int(round(math.log2(w))) if w > 0 else -1
        x0 = int(round(E[0]))
        grid = x0 + np.arange(n + 1) * 2.0 ** seg_shift
        if (not 0 <= seg_shift <= 15 or abs(w - 2.0 ** seg_shift) > 1e-6 * w
                or np.max(np.abs(E - grid)) > 1e-6 * max(1.0, w)):
            raise ValueError(
                f"uniform mode needs equal segments of a power-of-two width (1..32768 int16 "
                f"units) starting on an integer; this fit's segments are {w:g} units wide from "
                f"{E[0]:g}: fit over uniform_grid(lo, hi, segments, in_scale)'s range, or use "
                f"mode='breakpoints'")
        if not INT16_MIN <= x0 <= INT16_MAX:
            raise ValueError(f"uniform mode: x0 = {x0} is outside int16")
        lower = np.clip(grid[:-1], INT16_MIN, INT16_MAX).astype(np.int64)
        keep = np.arange(n)
    else:
        lower = np.ceil(E[:-1] - 1e-9)
        upper = np.ceil(E[1:] - 1e-9) - 1            # last int of each segment
        keep = np.nonzero((upper >= INT16_MIN) & (lower <= INT16_MAX))[0]
        if keep.size == 0:
            raise ValueError(f"the fitted range [{fit.lo:g}, {fit.hi:g}] is outside int16 at "
                             f"in_scale {in_scale:g}")
        lower = np.clip(lower, INT16_MIN, INT16_MAX).astype(np.int64)
    nk = len(keep)
    if pmode == PWL_UNIFORM:
        nk = n                                       # the grid fixes every segment's place
    if segments_hw is None:
        segments_hw = _pow2_at_least(nk)
    if nk > segments_hw:
        raise ValueError(f"the fit has {nk} segments, the hardware table {segments_hw}: use "
                         f"fewer segments or a config with pwl_segments >= {nk}")
    # Least-squares intercept for the rounded slope: through the centre of the fitted range.
    xc = np.clip(0.5 * (E[:-1] + E[1:]), INT16_MIN, INT16_MAX)[keep]
    K, B = K[keep], B[keep]
    for S in range(MAX_SHIFT, -1, -1):
        k = np.round(K * 2.0 ** S)
        if np.max(np.abs(k)) > INT16_MAX:
            continue
        b = np.round(2.0 ** S * (B + K * xc) - k * xc)
        if np.max(np.abs(b)) <= INT32_MAX:
            break
    else:
        upper = np.clip(np.ceil(E[1:] - 1e-9) - 1, INT16_MIN, INT16_MAX)[keep]
        refit = _step_refit(K, B, lower[keep].astype(np.float64), upper, xc, fit.func,
                            in_scale, out_scale)
        if refit is None:
            raise ValueError(
                f"PWL table of {fit.name or 'f'} on [{fit.lo:g}, {fit.hi:g}] (in_scale "
                f"{in_scale:g}, out_scale {out_scale:g}): slopes/intercepts fit int16/int32 at no "
                f"out_shift, even with its steep segments refitted as steps")
        S, k, b = refit
    k, b, bp = k.astype(np.int64), b.astype(np.int64), lower[keep].copy()
    pad = segments_hw - len(k)
    if pad:
        k, b, bp = (np.concatenate([v, np.repeat(v[-1:], pad)]) for v in (k, b, bp))
        if pmode == PWL_UNIFORM:                     # informational only in uniform mode
            bp = np.clip(x0 + np.arange(segments_hw) * (1 << seg_shift), INT16_MIN, INT16_MAX)
    lo = max(fit.lo, INT16_MIN * in_scale)
    hi = min(fit.hi, INT16_MAX * in_scale)
    return PwlTable(pmode, x0 if pmode == PWL_UNIFORM else 0,
                    seg_shift if pmode == PWL_UNIFORM else 0, S, bp.astype(np.int64), k, b,
                    float(in_scale), float(out_scale), lo, hi, fit.name, fit.func, nk)


#: A refitted steep segment moves at least this many output LSBs per input LSB, so every
#: integer input but its anchor saturates on the side the real function is on.
_STEP_LSB = 256


def _step_refit(K, B, lower, upper, xc, func=None, in_scale=1.0, out_scale=1.0):
    """Slopes and intercepts for a table whose steepest segments rise by more output LSBs per
    input LSB than an int16 slope can hold at any ``out_shift`` (an input scale far coarser
    than the function's range: only a few int16 inputs fall on it).

    On the integer inputs such a segment is a step: each input but one lands beyond the int8
    range. It is refitted exact on those inputs: anchored at its integer input closest to the
    line's zero, through the function's own value there (*func*, else the fitted line's;
    clipped to just beyond int8), with the largest slope the field holds, of the same sign,
    at least :data:`_STEP_LSB` LSB per input step. The other segments keep their
    least-squares intercepts. Returns ``(out_shift, k, b)`` or None.
    """
    for S in range(MAX_SHIFT, -1, -1):
        steep = np.abs(K) * 2.0 ** S > INT16_MAX
        if steep.any() and INT16_MAX / 2.0 ** S < _STEP_LSB:
            continue
        k = np.where(steep, np.sign(K) * INT16_MAX, np.round(K * 2.0 ** S))
        b = np.round(2.0 ** S * (B + K * xc) - k * xc)
        with np.errstate(divide="ignore", invalid="ignore"):
            root = np.where(K != 0, -B / K, xc)
        anchor = np.clip(np.round(root), lower, np.maximum(lower, upper))
        y = B + K * anchor
        if func is not None:
            with np.errstate(all="ignore"):
                exact = np.asarray(_resolve(func)[0](anchor * in_scale), dtype=np.float64)
            y = np.where(np.isfinite(exact), exact / out_scale, y)
        y = np.clip(y, -128.5, 128.5)
        b = np.where(steep, np.round(2.0 ** S * y) - k * anchor, b)
        if np.max(np.abs(b)) <= INT32_MAX:
            return S, k, b
    return None


def default_scales(func, lo: float, hi: float) -> tuple[float, float]:
    """``in_scale``: the smallest power of two with ``[lo, hi]`` inside int16 (the top end may
    saturate by one LSB); ``out_scale = max |f| / 127`` on the range."""
    f, _ = _resolve(func)
    m = max(abs(lo), abs(hi))
    in_scale = 2.0 ** math.ceil(math.log2(m / 32768.0)) if m > 0 else 1.0
    y = np.abs(np.asarray(f(np.linspace(lo, hi, 4097)), dtype=np.float64))
    top = float(np.max(y))
    return in_scale, (top / INT8_MAX if top > 0 else 1.0)


def uniform_grid(lo: float, hi: float, segments: int, in_scale: float):
    """The uniform hardware grid covering ``[lo, hi]``: ``(x0, seg_shift, lo', hi')`` with
    ``x0 = floor(lo / in_scale)``, segment width ``2**seg_shift`` int16 units and the real
    range ``[lo', hi']`` to fit over (``hi' >= hi``; segments beyond int16 are unused)."""
    x0 = max(INT16_MIN, math.floor(lo / in_scale + 1e-9))
    span = hi / in_scale - x0
    seg_shift = max(0, math.ceil(math.log2(span / segments) - 1e-9))
    if seg_shift > 15:
        raise ValueError(f"[{lo}, {hi}] needs segments wider than 2**15 at in_scale {in_scale}")
    return x0, seg_shift, x0 * in_scale, (x0 + segments * (1 << seg_shift)) * in_scale


def fit_table(func, segments: int = 16, method: str = "curvature", *, lo: float | None = None,
              hi: float | None = None, objective: str = "lsq", in_scale: float | None = None,
              out_scale: float | None = None, segments_hw: int | None = None,
              config: HwConfig | None = None) -> tuple[PwlFit, PwlTable]:
    """Fit and quantize in one step with default scales (:func:`default_scales`).

    ``method="uniform"`` fits over :func:`uniform_grid`'s range and makes a uniform-mode
    table; the other methods make breakpoint-mode tables. *lo*/*hi* default to the registry's
    range when *func* is a name.
    """
    f, name = _resolve(func)
    if lo is None or hi is None:
        if name not in FUNCTIONS:
            raise ValueError("lo and hi are required for a function not in FUNCTIONS")
        dlo, dhi = FUNCTIONS[name].range
        lo = dlo if lo is None else lo
        hi = dhi if hi is None else hi
    s_in, s_out = default_scales(f, lo, hi)
    in_scale = s_in if in_scale is None else in_scale
    out_scale = s_out if out_scale is None else out_scale
    if method == "uniform":
        _, _, flo, fhi = uniform_grid(lo, hi, segments, in_scale)
        pf = fit(f, flo, fhi, segments, method="uniform", objective=objective)
        mode = "uniform"
    else:
        pf = fit(f, lo, hi, segments, method=method, objective=objective)
        mode = "breakpoints"
    pf = PwlFit(pf.breakpoints, pf.slopes, pf.intercepts, pf.method, pf.objective, f, name)
    table = quantize(pf, in_scale=in_scale, out_scale=out_scale, mode=mode,
                     segments_hw=segments_hw, config=config)
    table.lo, table.hi = max(lo, table.lo), min(hi, table.hi)
    return pf, table


# -- range reduction -----------------------------------------------------------------------------

class RangeReduction(NamedTuple):
    """``x = m * 2**(period_log2 * e)`` with ``m in [1, 2**period_log2)``, and
    ``f(x) = f(m) * 2**(out_exp * e)``."""

    period_log2: int
    out_exp: int


RANGE_REDUCTIONS: dict[str, RangeReduction] = {
    "reciprocal": RangeReduction(1, -1),
    "rsqrt": RangeReduction(2, -1),
    "sqrt": RangeReduction(2, 1),
}


@dataclass(eq=False)
class RangeReducedTable:
    """A mantissa table and the numpy reference of the range-reduced evaluation."""

    name: str
    reduction: RangeReduction
    fit: PwlFit
    table: PwlTable

    def split(self, x) -> tuple[np.ndarray, np.ndarray]:
        """``(m_int16, e)`` of positive *x*: ``m_int16 = sat16(round(m * 2**(15 - p)))``."""
        x = np.asarray(x, dtype=np.float64)
        if np.any(~(x > 0)) or np.any(~np.isfinite(x)):
            raise ValueError("range reduction needs finite positive inputs")
        p = self.reduction.period_log2
        _, ex = np.frexp(x)                         # x = mant 2**ex, mant in [0.5, 1)
        e = np.floor_divide(ex - 1, p)              # floor(log2 x) // p
        m = np.ldexp(x, -p * e)                     # in [1, 2**p)
        return saturate(np.round(m / self.table.in_scale), 16), e

    def evaluate(self, x) -> np.ndarray:
        """Real ``f(x)`` through the int8 table: ``table(m_int16) * out_scale * 2**(a e)``."""
        m_int, e = self.split(x)
        y = self.table.evaluate(m_int).astype(np.float64) * self.table.out_scale
        return np.ldexp(y, self.reduction.out_exp * e)

    def errors(self, lo: float = 2.0 ** -24, hi: float = 2.0 ** 24, n: int = 200001,
               seed: int = 0) -> dict:
        """Relative error ``|evaluate(x) / f(x) - 1|`` (max and RMS) over log-uniform random x
        in ``[lo, hi]`` plus every mantissa input exactly; also the float fit's."""
        rng = np.random.default_rng(seed)
        p = self.reduction.period_log2
        mant = self.table.input_range(1.0, 2.0 ** p) * self.table.in_scale
        x = np.concatenate([np.exp(rng.uniform(math.log(lo), math.log(hi), n)), mant])
        ref = np.asarray(self.fit.func(x), dtype=np.float64)
        rel = np.abs(self.evaluate(x) / ref - 1.0)
        rel_fit = np.abs(self.fit(mant) / self.fit.func(mant) - 1.0)
        return {"max_rel": float(rel.max()), "rms_rel": float(np.sqrt(np.mean(rel * rel))),
                "fit_max_rel": float(rel_fit.max()), "n": int(x.size)}


def fit_range_reduced(name: str, segments: int = 16, method: str = "curvature", *,
                      objective: str = "lsq", segments_hw: int | None = None,
                      config: HwConfig | None = None) -> RangeReducedTable:
    """The mantissa table of *name* (``reciprocal``, ``rsqrt`` or ``sqrt``) for range reduction.

    The table's input is ``m * 2**(15 - p)`` (``in_scale = 2**(p - 15)``, so ``[1, 2**p)``
    fills the upper half of int16), its output ``f(m) / out_scale`` with
    ``out_scale = max f / 127`` on ``[1, 2**p]``.
    """
    if name not in RANGE_REDUCTIONS:
        raise KeyError(f"no range reduction for {name!r}; available: {', '.join(RANGE_REDUCTIONS)}")
    red = RANGE_REDUCTIONS[name]
    f = FUNCTIONS[name].func
    lo, hi = 1.0, 2.0 ** red.period_log2
    in_scale = 2.0 ** (red.period_log2 - 15)
    out_scale = float(max(f(lo), f(hi))) / INT8_MAX
    pf, table = fit_table(name, segments, method, lo=lo, hi=hi, objective=objective,
                          in_scale=in_scale, out_scale=out_scale, segments_hw=segments_hw,
                          config=config)
    return RangeReducedTable(name, red, pf, table)


# -- error table -------------------------------------------------------------------------------

def error_table(functions=None, segment_counts=(8, 16, 32), methods=("uniform", "curvature"),
                objective: str = "lsq") -> list[dict]:
    """Fit and hardware error of each function x segment count x method (default ranges).

    Each row: ``function, lo, hi, segments, method, mode, fit_max, fit_rms`` (real units, over
    the range) and ``int8_max_lsb, int8_rms_lsb, int8_max, int8_rms`` (the quantized table over
    every int16 input in range; LSB of the int8 output and real units), ``out_scale``.
    """
    functions = list(FUNCTIONS) if functions is None else list(functions)
    rows = []
    for name in functions:
        _resolve(name)
        lo, hi = FUNCTIONS[name].range
        for seg in segment_counts:
            for method in methods:
                pf, table = fit_table(name, seg, method, objective=objective)
                e = table.errors()
                rows.append({
                    "function": name, "lo": lo, "hi": hi, "segments": seg, "method": method,
                    "mode": "uniform" if table.mode == PWL_UNIFORM else "breakpoints",
                    "fit_max": pf.max_error(lo=lo, hi=hi), "fit_rms": pf.rms_error(lo=lo, hi=hi),
                    "int8_max_lsb": e["max_lsb"], "int8_rms_lsb": e["rms_lsb"],
                    "int8_max": e["max"], "int8_rms": e["rms"], "out_scale": table.out_scale,
                })
    return rows


# -- plot ----------------------------------------------------------------------------------------

def plot(pf: PwlFit, table: PwlTable, path, *, title: str | None = None) -> None:
    """Function, float PWL and int8 table (top) and their errors (bottom), as an image file.

    Uses matplotlib's object API (no pyplot, no global backend change; Agg canvas).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lo, hi = table.lo, table.hi
    xi = table.input_range()
    if xi.size > 8192:
        xi = xi[np.linspace(0, xi.size - 1, 8192).astype(np.int64)]
    x = xi * table.in_scale
    y = pf.func(x)
    yf = pf(x)
    yh = table.evaluate(xi) * table.out_scale
    fig = Figure(figsize=(8, 6), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    ax1.plot(x, y, color="black", lw=2, label=pf.name or "f")
    ax1.plot(x, yf, color="tab:blue", lw=1, label=f"PWL float ({pf.segments} seg, {pf.method})")
    ax1.step(x, yh, color="tab:orange", lw=0.8, where="mid", label="int8 table")
    for e in pf.breakpoints:
        if lo <= e <= hi:
            ax1.axvline(e, color="grey", lw=0.4, alpha=0.5)
    ax1.legend(loc="best", fontsize=8)
    ax1.set_ylabel("y")
    ax1.set_title(title or f"{pf.name}: {pf.segments} segments, {pf.method}")
    ax2.plot(x, yh - y, color="tab:orange", lw=0.6, alpha=0.8, label="int8 table error")
    ax2.plot(x, yf - y, color="tab:blue", lw=1.2, label="float fit error")
    ax2.axhline(0.5 * table.out_scale, color="grey", ls=":", lw=0.8, label="+-0.5 LSB")
    ax2.axhline(-0.5 * table.out_scale, color="grey", ls=":", lw=0.8)
    ax2.set_xlabel("x")
    ax2.set_ylabel("error")
    ax2.legend(loc="best", fontsize=8)
    fig.savefig(path, dpi=110)


# -- command line --------------------------------------------------------------------------------

def _parse_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. --range=-8,8), got {text!r}") \
            from None
    if not hi > lo:
        raise argparse.ArgumentTypeError(f"need LO < HI, got {text!r}")
    return lo, hi


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``pwl FUNC --segments N [--method M] [--range LO,HI] [--plot FILE.png]``."""
    p = subparsers.add_parser(
        "pwl", help="fit a nonlinear function with a PWL table and report its error",
        description="Fit a nonlinear function with a piecewise-linear table, quantize it to the "
                    "hardware format (int16 in, int8 out) and print its error, breakpoints and "
                    "per-segment slope/intercept. FUNC 'all' prints the error table of every "
                    "function at 8/16/32 segments, uniform against non-uniform.")
    p.add_argument("function", metavar="FUNC",
                   help=f"one of: {', '.join(FUNCTIONS)}, or 'all'")
    p.add_argument("--segments", type=int, default=16, help="segments, 1..64 (default 16)")
    p.add_argument("--method", choices=METHODS, default="curvature",
                   help="breakpoint placement (default curvature)")
    p.add_argument("--objective", choices=OBJECTIVES, default="lsq",
                   help="per-segment line fit: least squares, minimax or end-point "
                        "interpolation (default lsq)")
    p.add_argument("--range", type=_parse_range, default=None, metavar="LO,HI",
                   help="input range (default: the function's); write --range=-8,8 for a "
                        "negative LO")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="also write a figure of the function, the PWL and the error")
    p.set_defaults(func=_cmd_pwl)
    return p


def _console():
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=132)


def _fmt(v: float) -> str:
    return f"{v:.3g}" if v != 0 else "0"


def _print_all(console, args) -> int:
    from rich.markup import escape
    from rich.table import Table

    other = args.method if args.method != "uniform" else "curvature"
    rows = error_table(methods=("uniform", other), objective=args.objective)
    t = Table(title=f"PWL error, uniform vs {other} ({args.objective} fit); "
                    "int8 = hardware table over every int16 input in range")
    for col in ("function", "range", "segs", "method", "float max", "float rms",
                "int8 max [LSB]", "int8 rms [LSB]", "int8 max"):
        t.add_column(escape(col),
                     justify="left" if col in ("function", "range", "method") else "right")
    last = None
    for r in rows:
        if last is not None and r["function"] != last:
            t.add_section()
        last = r["function"]
        t.add_row(r["function"], escape(f"[{r['lo']:g}, {r['hi']:g}]"), str(r["segments"]),
                  r["method"],
                  _fmt(r["fit_max"]), _fmt(r["fit_rms"]), f"{r['int8_max_lsb']:.2f}",
                  f"{r['int8_rms_lsb']:.2f}", _fmt(r["int8_max"]))
    console.print(t)
    return 0


def _cmd_pwl(args) -> int:
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    if args.function == "all":
        return _print_all(console, args)
    if args.function not in FUNCTIONS:
        print(f"neuralmatrix pwl: error: unknown function {args.function!r}; available: "
              f"{', '.join(FUNCTIONS)}, all", file=sys.stderr)
        return 2
    if not 1 <= args.segments <= 64:
        print(f"neuralmatrix pwl: error: --segments must be 1..64, got {args.segments}",
              file=sys.stderr)
        return 2
    name = args.function
    lo, hi = args.range if args.range else FUNCTIONS[name].range
    try:
        pf, table = fit_table(name, args.segments, args.method, lo=lo, hi=hi,
                              objective=args.objective)
    except ValueError as exc:
        print(f"neuralmatrix pwl: error: {exc}", file=sys.stderr)
        return 2
    e = table.errors()
    mode = "uniform" if table.mode == PWL_UNIFORM else "breakpoints"
    console.print(f"[bold]{name}[/bold] on " + escape(
        f"[{lo:g}, {hi:g}]: {pf.segments} segments, {pf.method} placement, {pf.objective} "
        f"fit ({FUNCTIONS[name].notes})"))
    console.print(f"hardware: mode {mode}, {table.segments} segments, x0 {table.x0}, "
                  f"seg_shift {table.seg_shift}, out_shift {table.out_shift}, "
                  f"in_scale {table.in_scale:.6g}, out_scale {table.out_scale:.6g}")
    t = Table(title="error")
    for col in ("", "max", "rms", "max [out LSB]", "rms [out LSB]"):
        t.add_column(escape(col), justify="right" if col else "left")
    fmax, frms = pf.max_error(lo=lo, hi=hi), pf.rms_error(lo=lo, hi=hi)
    t.add_row("float fit", _fmt(fmax), _fmt(frms), f"{fmax / table.out_scale:.3f}",
              f"{frms / table.out_scale:.3f}")
    t.add_row(f"int8 table ({e['n']} inputs)", _fmt(e["max"]), _fmt(e["rms"]),
              f"{e['max_lsb']:.3f}", f"{e['rms_lsb']:.3f}")
    if name in RANGE_REDUCTIONS and args.range is None:
        rr = fit_range_reduced(name, args.segments, args.method, objective=args.objective)
        r = rr.errors()
        t.add_row("range-reduced int8, relative", f"{r['max_rel']:.3%}", f"{r['rms_rel']:.3%}",
                  "", "")
    console.print(t)
    s = Table(title="segments (k, b: fixed point with out_shift fraction bits, output LSB units)")
    for col in ("seg", "from", "to", "bp", "k", "b", "slope", "intercept"):
        s.add_column(col, justify="right")
    slope, icpt = table.real_segments()
    for i in range(table.segments):
        if table.mode == PWL_UNIFORM:
            a = (table.x0 + i * (1 << table.seg_shift)) * table.in_scale
            z = a + (1 << table.seg_shift) * table.in_scale
        else:
            a = table.bp[i] * table.in_scale if i else -math.inf
            z = table.bp[i + 1] * table.in_scale if i + 1 < table.segments else math.inf
        s.add_row(str(i), f"{a:.5g}", f"{z:.5g}", str(int(table.bp[i])), str(int(table.k[i])),
                  str(int(table.b[i])), f"{slope[i]:.5g}", f"{icpt[i]:.5g}")
    console.print(s)
    if args.plot:
        try:
            plot(pf, table, args.plot)
        except ImportError:
            print("neuralmatrix pwl: error: --plot needs matplotlib (pip install matplotlib)",
                  file=sys.stderr)
            return 2
        console.print(escape(f"wrote {args.plot}"))
    return 0
