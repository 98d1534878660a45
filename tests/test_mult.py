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


# -- the mapping of PEs onto DSP blocks -------------------------------------------------------

from neuralmatrix.hw.params import ConfigError, HwConfig  # noqa: E402


def _muls(config, top="array"):
    """``$mul`` cells of two variable operands in the RTLIL of *top*: what Yosys maps to DSP
    blocks (a product with a constant, e.g. an address times a power of two, becomes a
    shift)."""
    import re

    from amaranth.back import rtlil

    from neuralmatrix.hw.generate import build_top

    text = rtlil.convert(build_top(config, top), name="top")
    count = 0
    for cell in re.findall(r"cell \$mul .*?\n  end", text, re.S):
        operands = re.findall(r"connect \\[AB] (.*)", cell)
        count += not any(re.fullmatch(r"\d+'[01]+", op.strip()) for op in operands)
    return count


@pytest.mark.parametrize("kwargs,message", [
    (dict(multipliers="fpga"), "multipliers must be one of dsp, logic, auto, got 'fpga'"),
    (dict(multipliers="auto"), "multipliers=auto needs dsp_budget"),
    (dict(multipliers="auto", dsp_budget=-1), "dsp_budget must be a non-negative integer"),
    (dict(multipliers="auto", dsp_budget=True), "dsp_budget must be a non-negative integer"),
    (dict(multipliers="logic", dsp_budget=4), "dsp_budget applies to multipliers=auto only"),
])
def test_bad_multiplier_parameters_name_themselves(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        HwConfig(**kwargs)


def test_multiplier_fields_are_hashable_serialisable_and_tagged():
    auto = HwConfig(16, 16, multipliers="auto", dsp_budget=156)
    assert HwConfig(**auto.as_dict()) == auto and hash(auto) == hash(HwConfig(**auto.as_dict()))
    assert len({HwConfig(), HwConfig(multipliers="logic"), auto}) == 3
    assert [c.tag for c in (HwConfig(), HwConfig(multipliers="logic"), auto)] == \
        ["ws_8x8", "ws_8x8_logic", "ws_16x16_auto156"]
    assert auto.dsp_pes() == 156 and auto.dsp_pes(reserved=49) == 107
    assert auto.dsp_pes(reserved=200) == 0
    assert HwConfig(2, 2, multipliers="auto", dsp_budget=156).dsp_pes() == 4
    assert HwConfig(multipliers="logic").dsp_pes() == 0 and HwConfig().dsp_pes() == 64


def test_dsp_pes_are_the_first_in_row_major_order():
    from neuralmatrix.hw.systolic import dsp_grid

    grid = dsp_grid(HwConfig(3, 4, multipliers="auto", dsp_budget=5))
    assert grid == [[True] * 4, [True, False, False, False], [False] * 4]
    assert dsp_grid(HwConfig(3, 4, multipliers="auto", dsp_budget=9), reserved=4) == grid


@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_array_multiplies_only_where_the_split_says(dataflow):
    from neuralmatrix.hw.generate import multiplier_split

    for kwargs, dsp in ((dict(), 12), (dict(multipliers="logic"), 0),
                        (dict(multipliers="auto", dsp_budget=5), 5)):
        config = HwConfig(3, 4, dataflow, **kwargs)
        split = multiplier_split(config, "array")
        assert (split["dsp"], split["logic"], split["reserved"]) == (dsp, 12 - dsp, 0)
        assert _muls(config) == dsp


def test_accelerator_reserves_its_own_multipliers():
    """The accelerator's DSP count outside the PEs (dsps_outside_array: output path and MAC
    counter) is what its RTLIL holds with every PE in logic; auto gives the PEs the rest."""
    from neuralmatrix.hw.accelerator import dsps_outside_array
    from neuralmatrix.hw.generate import multiplier_split

    small = dict(sp_depth=16, acc_depth=16)
    logic = HwConfig(2, 3, multipliers="logic", **small)
    assert dsps_outside_array(logic) == 10 == _muls(logic, "accelerator")
    auto = HwConfig(2, 3, multipliers="auto", dsp_budget=13, **small)
    split = multiplier_split(auto, "accelerator")
    assert (split["dsp"], split["logic"], split["reserved"]) == (3, 3, 10)
    assert _muls(auto, "accelerator") == 13
