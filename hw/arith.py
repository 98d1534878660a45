"""The arithmetic contract shared by the RTL and the golden model, as numpy reference functions.

Everything the hardware computes is defined here first; the RTL is checked against these
functions and the golden model is built from them. All functions are vectorized.

Products and sums
    ``int8 x int8`` products are exact (16 bits) and summed into a signed 32-bit accumulator
    with two's-complement wrap-around: results are taken modulo ``2**32`` and reinterpreted as
    signed. Nothing saturates before the output path.

Requantization (int32 accumulator -> int16 PWL input or int8 output)
    ``x = sat(round_shift(acc * mult, shift))`` with ``mult`` an unsigned 16-bit multiplier and
    ``shift`` 0..47. The product is exact (48 bits). :func:`round_shift` rounds half up (toward
    +infinity at exact halves): ``(p + 2**(shift-1)) >> shift`` with an arithmetic shift; no
    rounding when ``shift == 0``. ``sat`` clamps to the signed range of the target width.
    The real-valued scale this implements is ``mult / 2**shift``.

Piecewise-linear evaluation (int16 x -> int8 y)
    A table has ``segments`` entries ``(bp[s], k[s], b[s])``: breakpoint int16, slope int16,
    intercept int32; and a header: ``mode``, ``x0`` (int16), ``seg_shift`` (0..15),
    ``out_shift`` (0..47).

    * segment, ``mode == PWL_BREAKPOINTS``: ``s = #{t in 1..segments-1 : bp[t] <= x}``
      (with ascending breakpoints: the last segment whose lower bound is <= x; ``bp[0]`` unused);
    * segment, ``mode == PWL_UNIFORM``: ``s = clamp((x - x0) >> seg_shift, 0, segments - 1)``;
    * ``y = sat8(round_shift(k[s] * x + b[s], out_shift))`` (the sum is exact, 34 bits).

    So ``k`` and ``b`` are fixed-point with ``out_shift`` fractional bits, in output units.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "INT8_MIN", "INT8_MAX", "INT16_MIN", "INT16_MAX", "PWL_UNIFORM", "PWL_BREAKPOINTS",
    "MULT_BITS", "MAX_SHIFT", "wrap_int32", "matmul_int32", "round_shift", "saturate",
    "requantize", "pwl_segment", "pwl_eval",
]

INT8_MIN, INT8_MAX = -128, 127
INT16_MIN, INT16_MAX = -(1 << 15), (1 << 15) - 1
MULT_BITS = 16          # requantization multiplier: unsigned
MAX_SHIFT = 47          # largest right shift of requantization and PWL
PWL_UNIFORM, PWL_BREAKPOINTS = 0, 1


def wrap_int32(x) -> np.ndarray:
    """Reduce integers modulo 2**32 into the signed int32 range (two's-complement wrap)."""
    x = np.asarray(x, dtype=np.int64)
    return ((x + 2**31) % 2**32 - 2**31).astype(np.int32)


def matmul_int32(a, b, acc=None) -> np.ndarray:
    """``acc + a @ b`` with int8 operands, exact products, wrapped to int32.

    Parameters
    ----------
    a : (M, K) int8-valued array
    b : (K, N) int8-valued array
    acc : (M, N) int32 array, optional
        Accumulator to add to (the "accumulate" mode); zero if omitted.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    for name, x in (("a", a), ("b", b)):
        if x.size and (x.min() < INT8_MIN or x.max() > INT8_MAX):
            raise ValueError(f"{name} must hold int8 values, got range {x.min()}..{x.max()}")
    out = a.astype(np.int64) @ b.astype(np.int64)
    if acc is not None:
        out = out + np.asarray(acc, dtype=np.int64)
    return wrap_int32(out)


def round_shift(p, shift) -> np.ndarray:
    """Arithmetic right shift by *shift* (0..47) rounding half up; exact on int64."""
    p = np.asarray(p, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    return np.right_shift(p + half, shift)


def saturate(x, bits: int) -> np.ndarray:
    """Clamp to the signed range of *bits* bits."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return np.clip(np.asarray(x, dtype=np.int64), lo, hi)


def requantize(acc, mult, shift, bits: int = 8) -> np.ndarray:
    """``sat_bits(round_shift(acc * mult, shift))``; *mult*/*shift* broadcast (per lane)."""
    acc = np.asarray(acc, dtype=np.int64)
    mult = np.asarray(mult, dtype=np.int64)
    if np.any((mult < 0) | (mult >= 1 << MULT_BITS)):
        raise ValueError(f"mult must be 0..{(1 << MULT_BITS) - 1}")
    if np.any((np.asarray(shift) < 0) | (np.asarray(shift) > MAX_SHIFT)):
        raise ValueError(f"shift must be 0..{MAX_SHIFT}")
    return saturate(round_shift(acc * mult, shift), bits)


def pwl_segment(x, mode: int, bp, x0: int, seg_shift: int) -> np.ndarray:
    """Segment index of each int16 *x* (see the module docstring)."""
    x = np.asarray(x, dtype=np.int64)
    bp = np.asarray(bp, dtype=np.int64)
    segments = len(bp)
    if mode == PWL_BREAKPOINTS:
        return (x[..., None] >= bp[None, 1:]).sum(axis=-1) if segments > 1 else np.zeros_like(x)
    if mode == PWL_UNIFORM:
        return np.clip(np.right_shift(x - x0, seg_shift), 0, segments - 1)
    raise ValueError(f"PWL mode must be {PWL_UNIFORM} (uniform) or {PWL_BREAKPOINTS}, got {mode}")


def pwl_eval(x, mode: int, bp, k, b, x0: int, seg_shift: int, out_shift: int) -> np.ndarray:
    """``sat8(round_shift(k[s] * x + b[s], out_shift))`` for int16 *x*."""
    x = np.asarray(x, dtype=np.int64)
    s = pwl_segment(x, mode, bp, x0, seg_shift)
    k = np.asarray(k, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    return saturate(round_shift(k[s] * x + b[s], out_shift), 8)
