"""cocotb testbench of :mod:`neuralmatrix.sim.harness`: runs the jobs of ``$NM_HARNESS_DIR``.

Per job: reset, zero the DRAM and load the image through the back door, pulse ``start``, then
wait for ``done`` or the cycle budget in a single await (the clock runs in C++), read counters,
status and regions, and append to ``results.json``.
"""

from __future__ import annotations

import json
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, ReadOnly, RisingEdge, Timer
from cocotb.utils import get_sim_time

from neuralmatrix.hw.counters import counter_layout, status_layout
from neuralmatrix.sim.backdoor import Backdoor
from neuralmatrix.sim.harness import harness_dir
from neuralmatrix.sim.streams import unpack

RESET_CYCLES = 2


@cocotb.test()
async def run_jobs(dut):
    tmp = harness_dir()
    spec = json.loads((tmp / "jobs.json").read_text())
    period = spec["clock_ns"]
    mem = Backdoor(spec["memory"])
    # The core's on-chip memories restart from their power-up (zero) state for every job, as
    # the golden model does; Verilator zero-initializes them only once.
    on_chip = [Backdoor(name) for name in spec.get("clear", [])]
    # impl="gpi": the clock toggles in C++ (the default is a Python coroutine unless
    # COCOTB_TRUST_INERTIAL_WRITES is set), so no Python runs per cycle.
    Clock(dut.clk, period, unit="ns", impl="gpi").start()
    dut.start.value = 0
    dut.insn_addr.value = 0
    images: dict[str, np.ndarray] = {}
    results = []
    for i, job in enumerate(spec["jobs"]):
        dut.rst.value = 1
        await ClockCycles(dut.clk, RESET_CYCLES)
        if job["image"] not in images:
            images.clear()
            images[job["image"]] = np.load(tmp / job["image"])
        image = images[job["image"]]
        mem.zero()
        for memory in on_chip:
            memory.zero()
        t0 = time.perf_counter()
        mem.write(0, image)
        load_seconds = time.perf_counter() - t0
        dut.rst.value = 0
        dut.insn_addr.value = job["insn_addr"]
        await RisingEdge(dut.clk)
        dut.start.value = 1
        await RisingEdge(dut.clk)            # the edge that samples start
        t_start = get_sim_time("ns")
        w0 = time.perf_counter()
        dut.start.value = 0
        await ReadOnly()
        timed_out = False
        if not int(dut.done.value):          # else done rose with the start edge
            timer = Timer(job["max_cycles"] * period, "ns")
            fired = await First(RisingEdge(dut.done), timer)
            timed_out = fired is timer
            await ReadOnly()
        run_seconds = time.perf_counter() - w0
        sim_cycles = round((get_sim_time("ns") - t_start) / period)
        counters = unpack(counter_layout(), int(dut.counters.value))
        status = unpack(status_layout(), int(dut.status.value))
        result = {
            "name": job["name"], "counters": counters, "status": status,
            "sim_cycles": sim_cycles, "timed_out": timed_out, "max_cycles": job["max_cycles"],
            "error": int(dut.error.value), "error_code": int(dut.error_code.value),
            "error_pc": int(dut.error_pc.value), "fault": int(dut.fault.value),
            "fault_addr": int(dut.fault_addr.value), "load_seconds": load_seconds,
            "run_seconds": run_seconds, "regions_file": f"regions{i}.npz",
        }
        np.savez(tmp / result["regions_file"],
                 **{f"r{k}": mem.read(addr, n) for k, (addr, n) in enumerate(job["regions"])})
        results.append(result)
        (tmp / "results.json").write_text(json.dumps(results))
        dut._log.info("job %d (%s): %s after %d cycles (%.3f s, load %.3f s)", i, job["name"],
                      "TIMEOUT" if timed_out else "done", sim_cycles, run_seconds, load_seconds)
        await RisingEdge(dut.clk)
