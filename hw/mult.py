"""Signed multipliers built from logic (LUTs and carry chains) instead of a DSP block.

Yosys's ECP5 flow turns every ``*`` it can into a MULT18X18D; a PE that must not use one
(``HwConfig.multipliers`` = ``logic``, or ``auto`` past the device's DSP count) builds its
product from the expressions here, which contain no ``*``: Yosys sees muxes, XORs and adds,
so no DSP is inferred, and the adds map to carry chains.

Radix-4 (modified) Booth: the signed multiplier ``b`` (``n`` bits, ``n`` even) is recoded into
``n / 2`` digits ``d_i`` in ``{-2, -1, 0, 1, 2}`` with ``b = sum(d_i * 4**i)``; digit ``i`` is
read from bits ``b[2i+1], b[2i], b[2i-1]`` (``b[-1] = 0``) and stored as three bits:

    neg  = b[2i+1]                      (the digit is negative, or the -0 of 111)
    one  = b[2i] ^ b[2i-1]              (|d| = 1)
    two  = b[2i+1] ? ~b[2i] & ~b[2i-1] : b[2i] & b[2i-1]     (|d| = 2)

Partial product ``i`` is ``sel ^ neg`` (``n + 1`` bits, signed), with ``sel`` = ``a``, ``2a`` or
0: the ones' complement of ``|d| * a`` when ``neg``; the missing ``+1`` (``neg_i`` at bit
``2i``) rides in the two free low bits of the next row, the last one in the final sum. Three
adds in two levels sum the four rows of an 8x8 product.

:func:`booth_encode` is cheap (one LUT per digit bit) and can sit in the register stage
before the multiply, e.g. on a PE's stationary weight; :func:`booth_product` is the multiply.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Value

__all__ = ["DIGIT_BITS", "booth_digits", "booth_encode", "booth_product", "logic_product"]

#: Bits of one encoded Booth digit: (neg, one, two), LSB first.
DIGIT_BITS = 3


def booth_digits(width: int) -> int:
    """Booth digits of a *width*-bit signed multiplier (*width* even, >= 2)."""
    if not isinstance(width, int) or width < 2 or width % 2:
        raise ValueError(f"Booth multiplier width must be an even integer >= 2, not {width!r}")
    return width // 2


def booth_encode(b: Value) -> Value:
    """The radix-4 Booth digits of signed *b*, packed ``DIGIT_BITS`` per digit, digit 0 first
    (``Cat(neg0, one0, two0, neg1, ...)``)."""
    b = Value.cast(b)
    bits = [Const(0, 1), *(b[k] for k in range(len(b)))]     # bits[k + 1] = b[k]
    digits = []
    for i in range(booth_digits(len(b))):
        lo, mid, hi = bits[2 * i], bits[2 * i + 1], bits[2 * i + 2]
        one = mid ^ lo
        two = (hi & ~mid & ~lo) | (~hi & mid & lo)
        digits.append(Cat(hi, one, two))
    return Cat(*digits)


def booth_product(a: Value, digits: Value, width: int) -> Value:
    """``a * b`` (signed, ``len(a) + width`` bits) from signed *a* and the packed Booth
    *digits* of the *width*-bit signed multiplier ``b`` (:func:`booth_encode`)."""
    a = Value.cast(a).as_signed()
    n = len(a)
    count = booth_digits(width)
    if len(digits) != DIGIT_BITS * count:
        raise ValueError(f"a {width}-bit multiplier has {DIGIT_BITS * count} Booth digit bits, "
                         f"got {len(digits)}")
    a1 = a.as_signed()                                   # sign-extended to n + 1 by Cat below
    a_ext = Cat(a1, a1[n - 1])                           # a in n + 1 bits
    a_dbl = Cat(Const(0, 1), a1)                         # 2a in n + 1 bits
    rows, negs = [], []
    for i in range(count):
        neg, one, two = (digits[DIGIT_BITS * i + k] for k in range(DIGIT_BITS))
        sel = (a_ext & one.replicate(n + 1)) | (a_dbl & two.replicate(n + 1))
        pp = (sel ^ neg.replicate(n + 1)).as_signed()
        # Row i carries the +1 of row i - 1 at its bit 2(i - 1), below its own bits.
        rows.append(pp if i == 0 else Cat(negs[-1], Const(0, 1), pp).as_signed())
        negs.append(neg)
    # Row i (i >= 1) now starts at bit 2(i - 1); row 0 at bit 0.
    terms = [(rows[0], 0)] + [(rows[i], 2 * (i - 1)) for i in range(1, count)]
    terms.append((negs[-1].as_unsigned(), 2 * (count - 1)))
    total = _sum_tree(terms)
    return total[:n + width].as_signed()


def logic_product(a: Value, b: Value) -> Value:
    """``a * b`` of two signed values without a ``*`` (Booth-encodes *b* in place)."""
    b = Value.cast(b)
    return booth_product(a, booth_encode(b), len(b))


def _sum_tree(terms: list[tuple[Value, int]]) -> Value:
    """Sum of ``value << shift`` over *terms*, as a balanced tree of two-input adds. Each add
    is aligned at the lower shift of its operands, so no adder carries known-zero low bits."""
    while len(terms) > 1:
        paired = []
        for k in range(0, len(terms) - 1, 2):
            (x, sx), (y, sy) = terms[k], terms[k + 1]
            base = min(sx, sy)
            paired.append(((x << (sx - base)) + (y << (sy - base)), base))
        if len(terms) % 2:
            paired.append(terms[-1])
        terms = paired
    value, shift = terms[0]
    return value << shift
