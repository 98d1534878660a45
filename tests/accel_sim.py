"""Run the accelerator in amaranth.sim with a Python external-memory model (small configs only).

Used by fast unit tests of the accelerator RTL; whole programs at speed run on Verilator
through :mod:`neuralmatrix.sim.harness`.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from amaranth.sim import Simulator

from neuralmatrix.hw.accelerator import Accelerator
from neuralmatrix.hw.counters import COUNTERS
from neuralmatrix.hw.params import HwConfig


def run_accelerator(config: HwConfig, image: np.ndarray, insn_addr: int, max_cycles: int = 20000,
                    latency: int = 3):
    """Run the program at *insn_addr* in *image* (np.uint8, modified in place).

    Returns ``(cycles, counters dict, error, error_code, error_pc)``; raises TimeoutError.
    """
    dut = Accelerator(config)
    B = config.bus_bytes
    mem = image
    result = {}

    async def bench(ctx):
        port = dut.dram
        reads: deque = deque()     # (ready_cycle, addr) of beats to return
        writes: deque = deque()    # burst start addresses and lengths
        cycle = 0
        ctx.set(dut.insn_addr, insn_addr)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(port.rd_req.ready, 1)
        ctx.set(port.wr_req.ready, 1)
        while True:
            cycle += 1
            if cycle > max_cycles:
                raise TimeoutError(f"no done after {max_cycles} cycles; status "
                                   f"{ctx.get(dut.status)}")
            # Present read data.
            if reads and reads[0][0] <= cycle:
                addr = reads[0][1]
                ctx.set(port.rd_data.valid, 1)
                ctx.set(port.rd_data.payload, int.from_bytes(mem[addr:addr + B].tobytes(), "little"))
            else:
                ctx.set(port.rd_data.valid, 0)
            ctx.set(port.wr_data.ready, int(bool(writes)))
            # Sample handshakes before the edge.
            if ctx.get(port.rd_req.valid):
                req = ctx.get(port.rd_req.payload)
                for b in range(req.len):
                    reads.append((cycle + latency + b, req.addr + b * B))
            if ctx.get(port.rd_data.valid) and ctx.get(port.rd_data.ready):
                reads.popleft()
            if ctx.get(port.wr_req.valid):
                req = ctx.get(port.wr_req.payload)
                writes.append([req.addr, req.len])
            if writes and ctx.get(port.wr_data.valid):
                beat = ctx.get(port.wr_data.payload)
                addr = writes[0][0]
                raw = int(beat.data).to_bytes(B, "little")
                for i in range(B):
                    if (int(beat.strb) >> i) & 1:
                        mem[addr + i] = raw[i]
                writes[0][0] += B
                writes[0][1] -= 1
                if writes[0][1] == 0:
                    writes.popleft()
            if ctx.get(dut.done):
                break
            await ctx.tick()
        counters = ctx.get(dut.counters)
        result["counters"] = {name: int(getattr(counters, name)) for name in COUNTERS}
        result["error"] = (ctx.get(dut.error), ctx.get(dut.error_code), ctx.get(dut.error_pc))
        result["cycles"] = cycle

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return result
