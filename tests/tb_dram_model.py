"""cocotb testbench of :class:`neuralmatrix.sim.dram_model.DramModel` alone (driven by
tests/test_harness.py): latency, gapless back-to-back bursts, back-pressure, byte strobes, faults.

Environment: ``NM_CONFIG`` (HwConfig JSON), ``NM_MEM`` (back-door memory name).
"""

from __future__ import annotations

import json
import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge

from neuralmatrix.hw.dram import request_layout, write_layout
from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sim.backdoor import Backdoor
from neuralmatrix.sim.streams import StreamSink, StreamSource


class DramTB:
    def __init__(self, dut, *, idle=0.0, backpressure=0.0, seed=0):
        self.dut = dut
        self.cfg = HwConfig(**json.loads(os.environ["NM_CONFIG"]))
        self.B = self.cfg.bus_bytes
        self.mem = Backdoor(os.environ["NM_MEM"])
        self.rng = random.Random(seed)
        self.rd_req = StreamSource(dut, "bus__rd_req", request_layout(), idle=idle, rng=self.rng)
        self.wr_req = StreamSource(dut, "bus__wr_req", request_layout(), idle=idle, rng=self.rng)
        self.wr_data = StreamSource(dut, "bus__wr_data", write_layout(self.cfg), idle=idle,
                                    rng=self.rng)
        self.rd_data = StreamSink(dut, "bus__rd_data", 8 * self.B, backpressure=backpressure,
                                  rng=self.rng)
        self.sources = [self.rd_req, self.wr_req, self.wr_data]
        self.cycle = 0
        Clock(dut.clk, 10, unit="ns").start()

    async def reset(self):
        self.dut.rst.value = 1
        for _ in range(2):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0

    def word(self, image: np.ndarray, addr: int) -> int:
        return int.from_bytes(image[addr:addr + self.B].tobytes(), "little")

    async def run(self, until, max_cycles=20000):
        while not until():
            assert self.cycle < max_cycles, f"timeout after {self.cycle} cycles"
            for s in self.sources:
                s.drive()
            self.rd_data.drive()
            await FallingEdge(self.dut.clk)
            for s in self.sources:
                s.sample(self.cycle)
            self.rd_data.sample(self.cycle)
            await RisingEdge(self.dut.clk)
            self.cycle += 1
        for s in self.sources:
            s.valid.value = 0
        self.rd_data.ready.value = 0


@cocotb.test()
async def read_latency_and_gapless_bursts(dut):
    """First beat exactly dram_latency cycles after the request; back-to-back bursts stream
    without a gap; data in request order."""
    tb = DramTB(dut)
    await tb.reset()
    B, L = tb.B, tb.cfg.dram_latency
    image = np.random.default_rng(1).integers(0, 256, tb.mem.size, dtype=np.uint8)
    tb.mem.write(0, image)
    bursts = [(3 * B, 5), (64 * B, 16), (tb.mem.size - B, 1), (0, 255), (7 * B, 2)]
    tb.rd_req.send({"addr": a, "len": n} for a, n in bursts)
    total = sum(n for _, n in bursts)
    await tb.run(lambda: len(tb.rd_data.beats) == total)
    want = [tb.word(image, a + i * B) for a, n in bursts for i in range(n)]
    assert tb.rd_data.beats == want
    first = tb.rd_data.cycles[0] - tb.rd_req.accept_cycles[0]
    assert first == L, f"first beat {first} cycles after the request, expected {L}"
    span = tb.rd_data.cycles[-1] - tb.rd_data.cycles[0] + 1
    assert span == total, f"{total} beats took {span} cycles (gaps between bursts)"
    assert not int(dut.fault.value)


@cocotb.test()
async def random_reads_writes_with_backpressure(dut):
    """Random bursts, random idle cycles and back-pressure, random strobes: reads return the
    memory as a byte-level model predicts; the back door sees what the write port wrote."""
    tb = DramTB(dut, idle=0.3, backpressure=0.4, seed=2)
    await tb.reset()
    B = tb.B
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, tb.mem.size, dtype=np.uint8)
    tb.mem.write(0, image)
    model = image.copy()
    nwords = tb.mem.size // B
    # writes first, checked by the back door
    for _ in range(12):
        n = int(rng.integers(1, 20))
        a = int(rng.integers(0, nwords - n + 1)) * B
        tb.wr_req.send([{"addr": a, "len": n}])
        for i in range(n):
            data = rng.integers(0, 256, B, dtype=np.uint8)
            strb = int(rng.integers(0, 1 << B))
            tb.wr_data.send([{"data": int.from_bytes(data.tobytes(), "little"), "strb": strb}])
            for j in range(B):
                if strb >> j & 1:
                    model[a + i * B + j] = data[j]
    await tb.run(lambda: tb.wr_data.idle_now and tb.wr_req.idle_now)
    await RisingEdge(dut.clk)
    assert np.array_equal(tb.mem.read(0, tb.mem.size), model), "write port / strobes wrong"
    # then reads through the read port
    bursts = []
    for _ in range(15):
        n = int(rng.integers(1, 33))
        bursts.append((int(rng.integers(0, nwords - n + 1)) * B, n))
    tb.rd_req.send({"addr": a, "len": n} for a, n in bursts)
    total = sum(n for _, n in bursts)
    await tb.run(lambda: len(tb.rd_data.beats) == total)
    assert tb.rd_data.beats == [tb.word(model, a + i * B) for a, n in bursts for i in range(n)]
    assert not int(dut.fault.value)


async def _expect_fault(tb, stream, req, fault_addr):
    await tb.reset()
    assert not int(tb.dut.fault.value)
    stream.send([req])
    await tb.run(lambda: stream.idle_now)
    for _ in range(3):
        await RisingEdge(tb.dut.clk)
    assert int(tb.dut.fault.value), f"no fault for {req}"
    assert int(tb.dut.fault_addr.value) == fault_addr


@cocotb.test()
async def faults(dut):
    """Unaligned, zero-length and out-of-range requests set the sticky fault; reset clears it;
    a faulting read still returns its beats, a faulting write writes nothing."""
    tb = DramTB(dut)
    B, size = tb.B, tb.mem.size
    tb.mem.fill(0x11)
    await _expect_fault(tb, tb.rd_req, {"addr": 3 * B + 1, "len": 2}, 3 * B + 1)
    await tb.run(lambda: len(tb.rd_data.beats) == 2)
    tb.rd_data.beats.clear()
    await _expect_fault(tb, tb.rd_req, {"addr": 4 * B, "len": 0}, 4 * B)
    await _expect_fault(tb, tb.rd_req, {"addr": size - 2 * B, "len": 3}, size - 2 * B)
    await tb.run(lambda: len(tb.rd_data.beats) == 3)
    await _expect_fault(tb, tb.wr_req, {"addr": size - B, "len": 2}, size - B)
    tb.wr_data.send([{"data": 0, "strb": (1 << B) - 1}] * 2)
    await tb.run(lambda: tb.wr_data.idle_now)
    await _expect_fault(tb, tb.wr_req, {"addr": 2, "len": 1}, 2)
    tb.wr_data.send([{"data": 0, "strb": (1 << B) - 1}])
    await tb.run(lambda: tb.wr_data.idle_now)
    await RisingEdge(tb.dut.clk)
    assert (tb.mem.read(0, size) == 0x11).all(), "a faulting write changed the memory"
    await tb.reset()
    await RisingEdge(tb.dut.clk)
    assert not int(dut.fault.value), "reset did not clear fault"
