"""cocotb testbench of :mod:`neuralmatrix.sim.harness`: runs the jobs of ``$NM_HARNESS_DIR``.

Per job: reset, zero the DRAM and load the image through the back door, pulse ``start``, then
run to ``done`` or the cycle budget with no Python per cycle (:mod:`neuralmatrix.sim.tb_core`:
the C++ run loop, or cocotb's C++ clock for traced runs), read counters, status and regions,
and append to ``results.json``.
"""

from __future__ import annotations

import json
import time

import cocotb
import numpy as np

from neuralmatrix.sim.backdoor import Backdoor
from neuralmatrix.sim.harness import harness_dir
from neuralmatrix.sim.tb_core import driver, outputs


@cocotb.test()
async def run_jobs(dut):
    tmp = harness_dir()
    spec = json.loads((tmp / "jobs.json").read_text())
    mem = Backdoor(spec["memory"])
    # The core's on-chip memories restart from their power-up (zero) state for every job, as
    # the golden model does; Verilator zero-initializes them only once.
    on_chip = [Backdoor(name) for name in spec.get("clear", [])]
    core = driver(dut, spec)
    images: dict[str, np.ndarray] = {}
    results = []
    for i, job in enumerate(spec["jobs"]):
        await core.reset()
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
        w0, c0 = time.perf_counter(), time.process_time()
        sim_cycles, timed_out = await core.run(job["insn_addr"], job["max_cycles"])
        run_seconds, cpu_seconds = time.perf_counter() - w0, time.process_time() - c0
        result = {
            "name": job["name"], **outputs(dut),
            "sim_cycles": sim_cycles, "timed_out": timed_out, "max_cycles": job["max_cycles"],
            "load_seconds": load_seconds,
            "run_seconds": run_seconds, "cpu_seconds": cpu_seconds, "regions_file": f"regions{i}.npz",
        }
        np.savez(tmp / result["regions_file"],
                 **{f"r{k}": mem.read(addr, n) for k, (addr, n) in enumerate(job["regions"])})
        results.append(result)
        (tmp / "results.json").write_text(json.dumps(results))
        dut._log.info("job %d (%s): %s after %d cycles (%.3f s, load %.3f s)", i, job["name"],
                      "TIMEOUT" if timed_out else "done", sim_cycles, run_seconds, load_seconds)
        await core.tick()
