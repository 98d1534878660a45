"""Clocking the simulation top from a cocotb test: reset, start, run to ``done``, read out.

Shared by :mod:`neuralmatrix.sim.tb_program` and :mod:`neuralmatrix.sim.tb_network`. Both
drivers give the same cycle-level sequence per program: ``rst`` high for ``RESET_CYCLES`` rising
edges (the caller loads memories after :meth:`reset`), ``rst`` low for one edge, ``start`` high
for the edge that samples it, then edges until ``done``; after the read-out one more edge.

* :class:`CppDriver` (the default): the C++ run loop (:mod:`neuralmatrix.sim.runloop`) clocks
  the model; no cocotb scheduling and no VPI callback per cycle.
* :class:`CocotbDriver` (traced runs, whose waves cocotb's main loop dumps): cocotb's C++
  ("gpi") clock and one ``First(RisingEdge(done), Timer(budget))``.
"""

from __future__ import annotations

from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, ReadOnly, RisingEdge, Timer
from cocotb.utils import get_sim_time

from neuralmatrix.hw.counters import counter_layout, status_layout
from neuralmatrix.sim.runloop import RunLoop
from neuralmatrix.sim.streams import unpack

__all__ = ["RESET_CYCLES", "CppDriver", "CocotbDriver", "driver", "outputs"]

RESET_CYCLES = 2


def outputs(dut) -> dict:
    """Counters, status and error/fault ports, decoded."""
    return {
        "counters": unpack(counter_layout(), int(dut.counters.value)),
        "status": unpack(status_layout(), int(dut.status.value)),
        "error": int(dut.error.value), "error_code": int(dut.error_code.value),
        "error_pc": int(dut.error_pc.value), "fault": int(dut.fault.value),
        "fault_addr": int(dut.fault_addr.value),
    }


class CppDriver:
    """The C++ run loop. Simulated time stands still; cycles are counted in C++."""

    def __init__(self, dut, period_ns: int):
        self.loop = RunLoop()

    async def reset(self) -> None:
        self.loop.reset(RESET_CYCLES)

    async def run(self, insn_addr: int, budget: int) -> tuple[int, bool]:
        """``(cycles, timed_out)``: edges from the start edge to the done edge."""
        cycles, done = self.loop.run(insn_addr, budget)
        return cycles, not done

    async def tick(self) -> None:
        self.loop.clock(1)


class CocotbDriver:
    """cocotb's C++ clock; the waiting is one trigger per program."""

    def __init__(self, dut, period_ns: int):
        self.dut, self.period = dut, period_ns
        Clock(dut.clk, period_ns, unit="ns", impl="gpi").start()
        dut.start.value = 0
        dut.insn_addr.value = 0

    async def reset(self) -> None:
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, RESET_CYCLES)

    async def run(self, insn_addr: int, budget: int) -> tuple[int, bool]:
        dut = self.dut
        dut.rst.value = 0
        dut.insn_addr.value = insn_addr
        await RisingEdge(dut.clk)
        dut.start.value = 1
        await RisingEdge(dut.clk)            # the edge that samples start
        t0 = get_sim_time("ns")
        dut.start.value = 0
        await ReadOnly()
        timed_out = False
        if not int(dut.done.value):          # else done rose with the start edge
            timer = Timer(budget * self.period, "ns")
            timed_out = await First(RisingEdge(dut.done), timer) is timer
            await ReadOnly()
        return round((get_sim_time("ns") - t0) / self.period), timed_out

    async def tick(self) -> None:
        await RisingEdge(self.dut.clk)


def driver(dut, spec: dict):
    """The driver *spec* asks for (``spec["cpp_clock"]``, default on)."""
    cls = CppDriver if spec.get("cpp_clock", True) else CocotbDriver
    return cls(dut, spec["clock_ns"])
