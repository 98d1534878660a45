"""SkidBuffer (hw/readpipe.py) in amaranth.sim: order, no loss or duplication under random
valid and back-pressure, a registered upstream ready, and full throughput when never stalled."""

import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from neuralmatrix.hw.readpipe import SkidBuffer


def _dut():
    m = Module()
    buf = SkidBuffer(m, 16, "t")
    return m, buf


@pytest.mark.parametrize("p_valid,p_ready", [(1.0, 1.0), (0.7, 0.5), (1.0, 0.3), (0.3, 0.9)])
def test_skid_buffer_passes_every_beat_in_order(p_valid, p_ready):
    m, buf = _dut()
    rng = random.Random(int(100 * p_valid + p_ready))
    sent, got = [], []
    n = 300

    async def bench(ctx):
        nxt = 0
        cycles = 0
        while len(got) < n:
            offer = nxt < n and rng.random() < p_valid
            ctx.set(buf.up_valid, offer)
            ctx.set(buf.up_payload, nxt)
            ctx.set(buf.down_ready, rng.random() < p_ready)
            up_ready = ctx.get(buf.up_ready)
            if ctx.get(buf.down_valid) and ctx.get(buf.down_ready):
                got.append(ctx.get(buf.down_payload))
            if offer and up_ready:
                sent.append(nxt)
                nxt += 1
            await ctx.tick()
            cycles += 1
            assert cycles < 20 * n
        if p_valid == 1.0 and p_ready == 1.0:
            assert cycles == n + 1          # one beat per cycle, one cycle of latency

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == sent == list(range(n))
