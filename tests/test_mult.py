"""The logic (no-DSP) multiplier of hw/mult.py in amaranth.sim: exhaustive over int8 x int8."""

import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.sim import Simulator

from neuralmatrix.hw.mult import booth_encode, booth_product, logic_product

VALUES = range(-128, 128)


def test_logic_products_exhaustive_int8():
    """Every int8 x int8 product, in both forms: :func:`logic_product` (Booth-encodes in place)
    and the split form (digits encoded ahead, as a PE could register them) with the operands'
    roles swapped. One multiplier of each, swept over all 65,536 operand pairs (one lane is
    faster in amaranth.sim than many lanes in one wide signal)."""
    m = Module()
    a, b = Signal(signed(8)), Signal(signed(8))
    p_inline, p_split = Signal(signed(16)), Signal(signed(16))
    m.d.comb += [
        p_inline.eq(logic_product(m, a, b, "inline")),
        p_split.eq(booth_product(m, b, booth_encode(m, a, "split"), 8, "split")),
    ]
    bad = []

    async def bench(ctx):
        for av in VALUES:
            ctx.set(a, av)
            for bv in VALUES:
                ctx.set(b, bv)
                got = (ctx.get(p_inline), ctx.get(p_split))
                if got != (av * bv, av * bv):
                    bad.append((av, bv, got))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert not bad, f"{len(bad)} wrong products (a, b, (inline, split)), e.g. {bad[:5]}"


def test_logic_product_has_no_multiply():
    """No `*` reaches Yosys: the RTLIL of a logic product holds no $mul cell."""
    from amaranth.back import rtlil
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    class Top(wiring.Component):
        a: In(signed(8))
        b: In(signed(8))
        p: Out(signed(16))

        def elaborate(self, platform):
            m = Module()
            m.d.comb += self.p.eq(logic_product(m, self.a, self.b))
            return m

    text = rtlil.convert(Top(), name="top")
    assert "$add" in text and "$mul" not in text


@pytest.mark.parametrize("width", [0, 3, 7, "8"])
def test_odd_widths_are_refused(width):
    from neuralmatrix.hw.mult import booth_digits

    with pytest.raises(ValueError, match="even integer"):
        booth_digits(width)
