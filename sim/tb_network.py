"""cocotb testbench of :mod:`neuralmatrix.sim.network`: whole inferences from ``$NM_HARNESS_DIR``.

For each inference: the host loop of the golden model
(:func:`neuralmatrix.sw.runtime.network_steps`) on a numpy mirror of the external memory. The
whole image is loaded into the DRAM once; each kernel the loop yields then runs on the RTL:
reset, the activation region mirror -> DRAM (back door), pulse ``start`` at the kernel's
program address, run to ``done`` or the budget with no Python per cycle
(:mod:`neuralmatrix.sim.tb_core`: the C++ run loop, or cocotb's C++ clock when traced),
counters read, the kernel's output tensor DRAM -> mirror (the DRAM's activation region stays
equal to the mirror between kernels, so only what the host or the kernel changed is copied). At
the end of the inference the constants and programs in the DRAM must still equal the image and
the activation region the mirror (a store outside the kernels' outputs fails the run). A kernel that
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
from neuralmatrix.sw.ir import Kernel, Lookup, Transfer
from neuralmatrix.sw.runtime import network_steps


def host_writes(compiled) -> list[list[tuple[int, int]]]:
    """Per kernel (program order), and one more entry for after the last one: the byte ranges
    of external memory the host loop writes after the previous kernel and before this one (the
    network inputs for the first, then the outputs of the transfers and lookups in between). A
    kernel stores only its output tensor."""
    pending = [_extent(compiled.layout(t)) for t in compiled.network.inputs.values()
               if t is not None]
    plan = []
    for s in compiled.steps:
        if isinstance(s, (Transfer, Lookup)):
            pending.append(_extent(compiled.layout(s.out)))
        elif isinstance(s, Kernel):
            plan.append(pending)
            pending = []
    return plan + [pending]


def _extent(layout) -> tuple[int, int]:
    return layout.addr, layout.end


class _Core:
    """The simulated core and its DRAM, driven one kernel at a time.

    The DRAM's activation region equals the mirror between kernels; a kernel costs back-door
    copies of only what changes: the host's writes since the previous kernel (in) and the
    kernel's output tensor (out), instead of the whole region both ways (MiniLM-L6 at 128
    tokens: 22.7 MB, 697 kernels)."""

    def __init__(self, dut, spec: dict, compiled):
        self.dut = dut
        self.compiled = compiled
        self.clock = driver(dut, spec)
        self.mem = Backdoor(spec["memory"])
        self.on_chip = [Backdoor(name) for name in spec.get("clear", [])]
        self.n = compiled.dram_bytes
        self.act = compiled.regions.get("activations", (0, self.n))
        self.plan = host_writes(compiled)
        self.dirty: list[tuple[int, int]] = []

    def load(self, mirror: np.ndarray) -> None:
        """The whole image into the DRAM (start of an inference)."""
        self.mem.zero()
        self.mem.write(0, mirror[:self.n])
        self.dirty = []

    def skipped(self, index: int, kc) -> None:
        """Kernel *index* ran on the golden model (on the mirror): its host writes and its
        output must reach the DRAM before the next RTL kernel."""
        self.dirty += self.plan[index] + [_extent(self.compiled.layout(kc.kernel.out))]

    def matches(self, image: np.ndarray, mirror: np.ndarray) -> bool:
        """At the end of an inference: the DRAM holds *image* outside the activation region and
        *mirror* inside it (after the writes not yet copied: kernels run on the golden model
        after the last RTL kernel, host steps after the last kernel)."""
        self._push(mirror, self.plan[-1])
        a0, a1 = self.act
        return bool(np.array_equal(self.mem.read(0, a0), image[:a0])
                    and np.array_equal(self.mem.read(a1, self.n - a1), image[a1:self.n])
                    and np.array_equal(self.mem.read(a0, a1 - a0), mirror[a0:a1]))

    async def run(self, mirror: np.ndarray, index: int, kc, budget: int) -> dict:
        await self.clock.reset()
        for memory in self.on_chip:          # power-up state, as for every harness job
            memory.zero()
        self._push(mirror, self.plan[index])
        sim_cycles, timed_out = await self.clock.run(kc.addr, budget)
        out = {**outputs(self.dut), "sim_cycles": sim_cycles, "timed_out": timed_out,
               "max_cycles": budget}
        lo, hi = _extent(self.compiled.layout(kc.kernel.out))
        self.mem.read_into(lo, mirror[lo:hi])
        await self.clock.tick()
        return out


    def _push(self, mirror: np.ndarray, host: list[tuple[int, int]]) -> None:
        for lo, hi in _merged(self.dirty + host):
            self.mem.write(lo, mirror[lo:hi])
        self.dirty = []


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


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
                    r = await core.run(mirror, index, kc,
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
                    core.skipped(index, kc)
                kernels.append({"name": kc.kernel.name, "layer": kc.kernel.origin,
                                "counters": counters, "est_cycles": kc.est_cycles,
                                "seconds": time.perf_counter() - k0})
                done += 1
                index += 1
                (tmp / "progress").write_text(str(done))
                kc = steps.send(counters)
        except StopIteration as stop:
            result = stop.value
        if not core.matches(compiled.image, mirror):
            (tmp / "failure.json").write_text(json.dumps({
                "run": run, "index": index, "kernel": "(any)", "layer": "(any)", "stray": True}))
            raise AssertionError("the RTL wrote outside the kernels' output tensors")
        arrays = {f"out/{k}": v for k, v in result.outputs.items()}
        arrays |= {f"raw/{k}": v for k, v in result.raw.items()}
        arrays |= {f"ten/{k}": v for k, v in tensors.items()}
        np.savez(tmp / f"run{run}.npz", **arrays)
        (tmp / f"run{run}.json").write_text(json.dumps(
            {"kernels": kernels, "seconds": time.perf_counter() - w0}))
        dut._log.info("inference %d: %d kernels, %d cycles, %.2f s", run, len(kernels),
                      sum(k["counters"].get("cycles", 0) for k in kernels),
                      time.perf_counter() - w0)
