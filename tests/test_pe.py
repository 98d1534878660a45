"""PE unit tests in amaranth.sim (no Verilator): both dataflows against the arithmetic contract."""

import random

import pytest
from amaranth.sim import Simulator

from neuralmatrix.hw.arith import wrap_int32
from neuralmatrix.hw.params import HwConfig
from neuralmatrix.hw.pe import PRODUCT_STAGES, OutputStationaryPE, WeightStationaryPE, make_pe

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


@pytest.mark.parametrize("dsp", [True, False], ids=["dsp", "logic"])
def test_ws_pe_mac_banks_and_wrap(dsp):
    dut = WeightStationaryPE(HwConfig(), dsp=dsp)
    rng = random.Random(0)
    S = PRODUCT_STAGES

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
        # One case per cycle: its psum_in follows its a_in by PRODUCT_STAGES cycles, and its
        # sum is on psum_out after that cycle's edge.
        for c in range(len(cases) + S):
            if c < len(cases):
                a, bank, _ = cases[c]
                ctx.set(dut.a_in, a)
                ctx.set(dut.bank_in, bank)
            if c >= S:
                ctx.set(dut.psum_in, cases[c - S][2])
            await ctx.tick()
            if c < len(cases):
                assert ctx.get(dut.a_out) == a and ctx.get(dut.bank_out) == bank
            if c >= S:
                a, bank, p = cases[c - S]
                w = 127 if bank else -128
                assert ctx.get(dut.psum_out) == wrap_int32(p + a * w), (a, bank, p)
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


@pytest.mark.parametrize("dsp", [True, False], ids=["dsp", "logic"])
def test_ws_pe_product_latency(dsp):
    """A product reaches psum_out PRODUCT_STAGES + 1 advances after its a_in; stalls (en low)
    in between delay it without losing it."""
    dut = WeightStationaryPE(HwConfig(), dsp=dsp)

    async def bench(ctx):
        ctx.set(dut.en, 1)
        ctx.set(dut.w_shift, 1)
        ctx.set(dut.w_bank, 0)
        ctx.set(dut.w_in, 7)
        await ctx.tick()
        ctx.set(dut.w_shift, 0)
        ctx.set(dut.bank_in, 0)
        ctx.set(dut.psum_in, 0)
        ctx.set(dut.a_in, 0)
        for _ in range(4):
            await ctx.tick()
        for stall in (False, True):
            ctx.set(dut.a_in, 3)
            await ctx.tick()
            ctx.set(dut.a_in, 0)
            seen = []
            for cycle in range(6):
                ctx.set(dut.en, not (stall and cycle == 1))
                await ctx.tick()
                seen.append(ctx.get(dut.psum_out))
            ctx.set(dut.en, 1)
            at = PRODUCT_STAGES - 1 + stall
            assert seen[at] == 21 and seen[at - 1] == 0 and seen[at + 1] == 0, seen

    _simulate(dut, bench)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dsp", [True, False], ids=["dsp", "logic"])
def test_os_pe_accumulate_first_last(seed, dsp):
    dut = OutputStationaryPE(HwConfig(dataflow="os"), dsp=dsp)
    rng = random.Random(seed)

    async def bench(ctx):
        ctx.set(dut.en, 1)
        beats, sums = [], []
        for _ in range(30):
            k = rng.randint(1, 12)
            pairs = [(rng.choice(EXTREMES + [rng.randint(-128, 127)]),
                      rng.choice(EXTREMES + [rng.randint(-128, 127)])) for _ in range(k)]
            beats += [(a, b, t == 0, t == k - 1) for t, (a, b) in enumerate(pairs)]
            sums.append(wrap_int32(sum(a * b for a, b in pairs)))
            # A gap beat (zeros) between some tiles: it must not disturb the held result.
            if rng.random() < 0.5:
                beats.append((0, 0, False, False))
        results, held, last_at = [], None, []
        for c in range(len(beats) + PRODUCT_STAGES + 1):
            a, b, first, last = beats[c] if c < len(beats) else (0, 0, False, False)
            ctx.set(dut.a_in, a)
            ctx.set(dut.b_in, b)
            ctx.set(dut.first_in, first)
            ctx.set(dut.last_in, last)
            await ctx.tick()
            if c < len(beats):
                assert ctx.get(dut.a_out) == a and ctx.get(dut.b_out) == b
            if last:
                last_at.append(c)
            if ctx.get(dut.done):
                assert c - last_at.pop(0) == PRODUCT_STAGES
                held = ctx.get(dut.result)
                results.append(held)
            elif held is not None:
                assert ctx.get(dut.result) == held      # holds while the next tile accumulates
        assert results == sums

    _simulate(dut, bench)
