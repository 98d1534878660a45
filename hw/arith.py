"""The arithmetic contract shared by the RTL and the golden model, as numpy reference functions.

Everything the hardware computes is defined here first; the RTL is checked against these
functions and the golden model is built from them.

* Products: ``int8 x int8`` exact (16 bits), summed into a signed ``acc_width`` (32-bit)
  accumulator with two's-complement wrap-around: results are taken modulo ``2**32`` and
  reinterpreted as signed. No saturation happens in the array.
"""

from __future__ import annotations

import numpy as np

__all__ = ["INT8_MIN", "INT8_MAX", "wrap_int32", "matmul_int32"]

INT8_MIN, INT8_MAX = -128, 127


def wrap_int32(x: np.ndarray) -> np.ndarray:
    """Reduce integers modulo 2**32 into the signed int32 range (two's-complement wrap)."""
    x = np.asarray(x, dtype=np.int64)
    return ((x + 2**31) % 2**32 - 2**31).astype(np.int32)


def matmul_int32(a: np.ndarray, b: np.ndarray, acc: np.ndarray | None = None) -> np.ndarray:
    """``acc + a @ b`` with int8 operands, exact int64 products, wrapped to int32.

    Parameters
    ----------
    a : (M, K) int8-valued array
    b : (K, N) int8-valued array
    acc : (M, N) int32 array, optional
        Accumulator to add to (the array's "accumulate" mode); zero if omitted.
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
