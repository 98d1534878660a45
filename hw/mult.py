"""Signed multipliers built from logic (LUTs and carry chains) instead of a DSP block.

Yosys's ECP5 flow turns every ``*`` it can into a MULT18X18D; a PE that must not use one
(``HwConfig.multipliers`` = ``logic``, or ``auto`` past the device's DSP count) builds its
product with the functions here, which contain no ``*``: Yosys sees muxes, XORs and adds,
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

Every function adds its logic to a :class:`~amaranth.hdl.Module` as named combinational
signals and returns the result signal: the digits and partial products are computed once and
shared by their users (an expression built from slices of an expression would be emitted
again for every slice). :func:`booth_encode` is cheap (one LUT per digit bit);
:func:`booth_product` is the multiply.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal, Value, signed

__all__ = ["DIGIT_BITS", "booth_digits", "booth_encode", "booth_product", "logic_product"]

#: Bits of one encoded Booth digit: (neg, one, two), LSB first.
DIGIT_BITS = 3


def booth_digits(width: int) -> int:
    """Booth digits of a *width*-bit signed multiplier (*width* even, >= 2)."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 2 or width % 2:
        raise ValueError(f"Booth multiplier width must be an even integer >= 2, not {width!r}")
    return width // 2


def booth_encode(m: Module, b: Value, name: str = "booth") -> Signal:
    """The radix-4 Booth digits of signed *b*, packed ``DIGIT_BITS`` per digit, digit 0 first
    (``Cat(neg0, one0, two0, neg1, ...)``), as signal ``{name}_digits`` of *m*."""
    b = Value.cast(b)
    bits = [Const(0, 1), *(b[k] for k in range(len(b)))]     # bits[k + 1] = b[k]
    count = booth_digits(len(b))
    digits = Signal(DIGIT_BITS * count, name=f"{name}_digits")
    for i in range(count):
        lo, mid, hi = bits[2 * i], bits[2 * i + 1], bits[2 * i + 2]
        two = (hi & ~mid & ~lo) | (~hi & mid & lo)
        m.d.comb += digits[DIGIT_BITS * i:DIGIT_BITS * (i + 1)].eq(Cat(hi, mid ^ lo, two))
    return digits


def booth_product(m: Module, a: Value, digits: Value, width: int, name: str = "booth") -> Signal:
    """``a * b`` (signed, ``len(a) + width`` bits) from signed *a* and the packed Booth
    *digits* of the *width*-bit signed multiplier ``b`` (:func:`booth_encode`), as signal
    ``{name}_p`` of *m*."""
    count = booth_digits(width)
    if len(digits) != DIGIT_BITS * count:
        raise ValueError(f"a {width}-bit multiplier has {DIGIT_BITS * count} Booth digit bits, "
                         f"got {len(digits)}")
    a = Value.cast(a).as_signed()
    n = len(a)
    a_ext = Signal(signed(n + 1), name=f"{name}_a1")
    a_dbl = Signal(signed(n + 1), name=f"{name}_a2")
    m.d.comb += [a_ext.eq(a), a_dbl.eq(Cat(Const(0, 1), a))]
    terms, negs = [], []
    for i in range(count):
        neg, one, two = (digits[DIGIT_BITS * i + k] for k in range(DIGIT_BITS))
        pp = Signal(signed(n + 1), name=f"{name}_pp{i}")
        m.d.comb += pp.eq(((a_ext & one.replicate(n + 1)) | (a_dbl & two.replicate(n + 1)))
                          ^ neg.replicate(n + 1))
        # Row i >= 1 carries the +1 of row i - 1 at its bit 2(i - 1), below its own bits, so
        # it starts at bit 2(i - 1); row 0 starts at bit 0.
        terms.append((pp, 0) if i == 0 else (Cat(negs[-1], Const(0, 1), pp).as_signed(),
                                             2 * (i - 1)))
        negs.append(neg)
    terms.append((negs[-1].as_unsigned(), 2 * (count - 1)))
    product = Signal(signed(n + width), name=f"{name}_p")
    m.d.comb += product.eq(_sum_tree(m, terms, name)[:n + width])
    return product


def logic_product(m: Module, a: Value, b: Value, name: str = "booth") -> Signal:
    """``a * b`` of two signed values without a ``*`` (Booth-encodes *b*), as a signal of *m*."""
    b = Value.cast(b)
    return booth_product(m, a, booth_encode(m, b, name), len(b), name)


def _sum_tree(m: Module, terms: list[tuple[Value, int]], name: str) -> Value:
    """Sum of ``value << shift`` over *terms*, as a balanced tree of two-input adds. Each add
    is aligned at the lower shift of its operands, so no adder carries known-zero low bits."""
    level = 0
    while len(terms) > 1:
        paired = []
        for k in range(0, len(terms) - 1, 2):
            (x, sx), (y, sy) = terms[k], terms[k + 1]
            base = min(sx, sy)
            total = (x << (sx - base)) + (y << (sy - base))
            s = Signal(total.shape(), name=f"{name}_s{level}_{k // 2}")
            m.d.comb += s.eq(total)
            paired.append((s, base))
        if len(terms) % 2:
            paired.append(terms[-1])
        terms = paired
        level += 1
    value, shift = terms[0]
    return value << shift
