"""cocotb testbench of :mod:`neuralmatrix.sim.network`: whole inferences from ``$NM_HARNESS_DIR``.

For each inference: the host loop of the golden model
(:func:`neuralmatrix.sw.runtime.network_steps`) on a numpy mirror of the external memory. The
whole image is loaded into the DRAM once; each kernel the loop yields then runs on the RTL:
reset, the activation region mirror -> DRAM (back door), pulse ``start`` at the kernel's
program address, run to ``done`` or the budget with no Python per cycle
(:mod:`neuralmatrix.sim.tb_core`: the C++ run loop, or cocotb's C++ clock when traced),
counters read, activation region DRAM -> mirror. At the end of the inference the constants and
programs in the DRAM must still equal the image (a stray write fails the run). A kernel that
times out or flags an error ends the run with ``failure.json`` naming it.
"""

from __future__ import annotations

import json
import time

import cocotb
import numpy as np

from neuralmatrix.sim.backdoor import Backdoor
from neuralmatrix.sim.harness import harness_dir
from neuralmatrix.sim.network import kernel_budget, load_compiled
from neuralmatrix.sim.tb_core import driver, outputs
from neuralmatrix.sw.golden import GoldenModel
from neuralmatrix.sw.runtime import network_steps


class _Core:
    """The simulated core and its DRAM, driven one kernel at a time."""

    def __init__(self, dut, spec: dict, compiled):
        self.dut = dut
        self.clock = driver(dut, spec)
        self.mem = Backdoor(spec["memory"])
        self.on_chip = [Backdoor(name) for name in spec.get("clear", [])]
        self.n = compiled.dram_bytes
        self.act = compiled.regions.get("activations", (0, self.n))

    def load(self, mirror: np.ndarray) -> None:
        """The whole image into the DRAM (start of an inference)."""
        self.mem.zero()
        self.mem.write(0, mirror[:self.n])

    def unchanged_outside_activations(self, image: np.ndarray) -> bool:
        a0, a1 = self.act
        return bool(np.array_equal(self.mem.read(0, a0), image[:a0])
                    and np.array_equal(self.mem.read(a1, self.n - a1), image[a1:self.n]))

    async def run(self, mirror: np.ndarray, addr: int, budget: int) -> dict:
        a0, a1 = self.act
        await self.clock.reset()
        for memory in self.on_chip:          # power-up state, as for every harness job
            memory.zero()
        self.mem.write(a0, mirror[a0:a1])
        sim_cycles, timed_out = await self.clock.run(addr, budget)
        out = {**outputs(self.dut), "sim_cycles": sim_cycles, "timed_out": timed_out,
               "max_cycles": budget}
        mirror[a0:a1] = self.mem.read(a0, a1 - a0)
        await self.clock.tick()
        return out


@cocotb.test()
async def run_network(dut):
    tmp = harness_dir()
    spec = json.loads((tmp / "spec.json").read_text())
    compiled = load_compiled(tmp / "compiled.pkl")
    only = set(spec["kernel_filter"]) if spec["kernel_filter"] is not None else None
    core = _Core(dut, spec, compiled)
    golden = GoldenModel(compiled.config, 1) if only is not None else None
    with np.load(tmp / "feeds.npz") as npz:
        all_feeds = [{name: npz[f"{i}/{name}"] for name in names}
                     for i, names in enumerate(spec["names"])]
    done = 0
    for run, feeds in enumerate(all_feeds):
        mirror = compiled.image.copy()
        core.load(mirror)
        steps = network_steps(compiled, feeds, mirror, keep=False)
        kernels, tensors = [], {}
        w0 = time.perf_counter()
        index = 0
        try:
            kc = next(steps)
            while True:
                k0 = time.perf_counter()
                if only is None or index in only:
                    r = await core.run(mirror, kc.addr,
                                       spec["max_cycles"] or kernel_budget(kc.est_cycles))
                    if r["timed_out"] or r["error"] or r["fault"]:
                        r.update(run=run, index=index, kernel=kc.kernel.name,
                                 layer=kc.kernel.origin)
                        (tmp / "failure.json").write_text(json.dumps(r))
                        raise AssertionError(f"kernel {index} ({kc.kernel.name}) failed: {r}")
                    counters = r["counters"]
                    tensors[kc.kernel.out.name] = compiled.layout(kc.kernel.out).read(mirror)
                else:
                    golden.dram = mirror
                    golden.reset()
                    counters = golden.run(kc.program, check=False).counters()
                    counters.setdefault("cycles", 0)
                kernels.append({"name": kc.kernel.name, "layer": kc.kernel.origin,
                                "counters": counters, "est_cycles": kc.est_cycles,
                                "seconds": time.perf_counter() - k0})
                done += 1
                index += 1
                (tmp / "progress").write_text(str(done))
                kc = steps.send(counters)
        except StopIteration as stop:
            result = stop.value
        if not core.unchanged_outside_activations(compiled.image):
            (tmp / "failure.json").write_text(json.dumps({
                "run": run, "index": index, "kernel": "(any)", "layer": "(any)", "stray": True}))
            raise AssertionError("the RTL wrote outside the activation region")
        arrays = {f"out/{k}": v for k, v in result.outputs.items()}
        arrays |= {f"raw/{k}": v for k, v in result.raw.items()}
        arrays |= {f"ten/{k}": v for k, v in tensors.items()}
        np.savez(tmp / f"run{run}.npz", **arrays)
        (tmp / f"run{run}.json").write_text(json.dumps(
            {"kernels": kernels, "seconds": time.perf_counter() - w0}))
        dut._log.info("inference %d: %d kernels, %d cycles, %.2f s", run, len(kernels),
                      sum(k["counters"].get("cycles", 0) for k in kernels),
                      time.perf_counter() - w0)
