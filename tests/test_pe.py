"""PE unit tests in amaranth.sim (no Verilator): both dataflows against the arithmetic contract."""

import random

import pytest
from amaranth.sim import Simulator

from neuralmatrix.hw.arith import wrap_int32
from neuralmatrix.hw.params import HwConfig
from neuralmatrix.hw.pe import OutputStationaryPE, WeightStationaryPE, make_pe

EXTREMES = [-128, -127, -1, 0, 1, 126, 127]


def _simulate(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_make_pe_follows_dataflow():
    from amaranth.hdl import Fragment

    for dataflow, cls in (("ws", WeightStationaryPE), ("os", OutputStationaryPE)):
        pe = make_pe(HwConfig(dataflow=dataflow))
        assert isinstance(pe, cls)
        Fragment.get(pe, None)   # elaborates (and marks it used)


def test_ws_pe_mac_banks_and_wrap():
    dut = WeightStationaryPE(HwConfig())
    rng = random.Random(0)

    async def bench(ctx):
        # Load bank 0 with -128 and bank 1 with 127 through the shift chain.
        ctx.set(dut.en, 1)
        for bank, w in ((0, -128), (1, 127)):
            ctx.set(dut.w_shift, 1)
            ctx.set(dut.w_bank, bank)
            ctx.set(dut.w_in, w)
            await ctx.tick()
            assert ctx.get(dut.w_out) == w
        ctx.set(dut.w_shift, 0)
        cases = [(a, bank, p) for a in EXTREMES for bank in (0, 1)
                 for p in (0, 2**31 - 1, -2**31, 12345)]
        cases += [(rng.randint(-128, 127), rng.randint(0, 1), rng.randint(-2**31, 2**31 - 1))
                  for _ in range(200)]
        for a, bank, p in cases:
            ctx.set(dut.a_in, a)
            ctx.set(dut.bank_in, bank)
            ctx.set(dut.psum_in, p)
            await ctx.tick()
            w = 127 if bank else -128
            assert ctx.get(dut.psum_out) == wrap_int32(p + a * w), (a, bank, p)
            assert ctx.get(dut.a_out) == a and ctx.get(dut.bank_out) == bank
        # en low freezes everything, including a requested weight shift.
        ctx.set(dut.en, 0)
        ctx.set(dut.psum_in, 1)
        ctx.set(dut.w_shift, 1)
        ctx.set(dut.w_in, 5)
        before = ctx.get(dut.psum_out)
        await ctx.tick()
        assert ctx.get(dut.psum_out) == before
        assert ctx.get(dut.w_out) == 127

    _simulate(dut, bench)


@pytest.mark.parametrize("seed", [0, 1])
def test_os_pe_accumulate_first_last(seed):
    dut = OutputStationaryPE(HwConfig(dataflow="os"))
    rng = random.Random(seed)

    async def bench(ctx):
        ctx.set(dut.en, 1)
        for _ in range(30):
            k = rng.randint(1, 12)
            pairs = [(rng.choice(EXTREMES + [rng.randint(-128, 127)]),
                      rng.choice(EXTREMES + [rng.randint(-128, 127)])) for _ in range(k)]
            for t, (a, b) in enumerate(pairs):
                ctx.set(dut.a_in, a)
                ctx.set(dut.b_in, b)
                ctx.set(dut.first_in, t == 0)
                ctx.set(dut.last_in, t == k - 1)
                await ctx.tick()
                assert ctx.get(dut.a_out) == a and ctx.get(dut.b_out) == b
            assert ctx.get(dut.result) == wrap_int32(sum(a * b for a, b in pairs))
            # The result holds while the next tile accumulates.
            held = ctx.get(dut.result)
            ctx.set(dut.first_in, 1)
            ctx.set(dut.last_in, 0)
            ctx.set(dut.a_in, 3)
            ctx.set(dut.b_in, 3)
            await ctx.tick()
            assert ctx.get(dut.result) == held
        ctx.set(dut.first_in, 0)

    _simulate(dut, bench)

