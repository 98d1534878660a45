"""The C++ run loop of the simulation top: a program runs to ``done`` without cocotb per cycle.

:data:`SOURCE` (``runloop.cpp``) is compiled into the Verilator model of
:class:`~neuralmatrix.sim.dram_model.SimTop` next to the memory back door
(:func:`neuralmatrix.sim.harness.simulation_build`). From inside the cocotb test::

    loop = RunLoop()
    loop.reset(2)                         # rst high for two rising edges
    ... back-door loads ...
    cycles, done = loop.run(insn_addr, max_cycles)
    loop.clock(1)

The clock is then toggled in C++ (no cocotb ``Clock``, no VPI callback per edge) and the
testbench drives the top's ``clk``, ``rst``, ``start`` and ``insn_addr`` only through these
calls: a cocotb write to them would be applied later by the scheduler, over the loop's values.
Simulated time does not advance, so cycles are counted here. cocotb's main loop dumps the
waves, so a traced run uses a cocotb clock instead.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

__all__ = ["SOURCE", "RunLoopError", "RunLoop"]

#: The C++ run loop, an ``extra_sources`` entry of the simulation top's build.
SOURCE = Path(__file__).parent / "runloop.cpp"

_DONE, _TIMEOUT, _NO_MODEL = 0, 1, -1


class RunLoopError(RuntimeError):
    """The run loop is missing from the simulator, or it could not find the model."""


def _library():
    lib = ctypes.CDLL(None)
    try:
        lib.nm_run
    except AttributeError:
        raise RunLoopError(
            "the C++ run loop is not in this simulator: build it with extra_sources="
            "[neuralmatrix.sim.runloop.SOURCE] and extra_args=['-LDFLAGS', '-rdynamic'] "
            "(Verilator only), and call it from inside the cocotb test process") from None
    lib.nm_clock.argtypes = [ctypes.c_uint64]
    lib.nm_set_reset.argtypes = [ctypes.c_int]
    lib.nm_run.argtypes = [ctypes.c_uint32, ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint64)]
    for f in (lib.nm_clock, lib.nm_set_reset, lib.nm_run):
        f.restype = ctypes.c_int
    return lib


class RunLoop:
    """Clock, reset and start of the simulation top, driven from C++."""

    def __init__(self):
        self._lib = _library()

    def _check(self, rc: int) -> int:
        if rc == _NO_MODEL:
            raise RunLoopError("the run loop found no Verilator model (no public scope)")
        return rc

    def clock(self, n: int) -> None:
        """*n* rising edges with the inputs unchanged."""
        self._check(self._lib.nm_clock(n))

    def reset(self, cycles: int) -> None:
        """``rst`` high for *cycles* rising edges (it stays high until :meth:`run`)."""
        self._check(self._lib.nm_set_reset(1))
        self.clock(cycles)

    def run(self, insn_addr: int, max_cycles: int) -> tuple[int, bool]:
        """Release reset, pulse ``start`` at *insn_addr* and clock until ``done`` or
        *max_cycles* edges after the start edge. Returns ``(cycles, done)``: the edges from the
        one that sampled ``start`` to the one that raised ``done`` (or to the time-out)."""
        cycles = ctypes.c_uint64()
        rc = self._check(self._lib.nm_run(insn_addr, max_cycles, ctypes.byref(cycles)))
        return cycles.value, rc == _DONE
