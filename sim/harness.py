"""Program-level co-simulation: whole programs on the Verilator model of a core + DRAM model.

::

    results = run_programs(config, [ProgramJob(image, insn_addr, regions=[(out_addr, n)])])
    results[0].regions[0], results[0].cycles, results[0].counters["macs"]

All jobs of one call run sequentially in ONE simulator process (one start-up, one build): for
each job the testbench (:mod:`neuralmatrix.sim.tb_program`) resets the design, zeroes the DRAM,
loads the image at address 0 through the C++ back door, pulses ``start`` and waits for ``done``
with no Python in the per-cycle loop (the C++ run loop of :mod:`neuralmatrix.sim.runloop`;
with waves, cocotb's C++ clock and one ``First(RisingEdge(done), Timer(max_cycles))``), then reads counters, status and the regions back through the back door.

Jobs and results travel through files in a temporary directory named by the environment
variable ``NM_HARNESS_DIR``: ``jobs.json`` + one ``.npy`` per distinct image in, ``results.json``
+ one ``.npz`` of regions per job out.

A job that does not finish within ``max_cycles`` is recorded as timed out (the next jobs still
run, after a reset); :func:`run_programs` then raises :class:`SimulationTimeout` naming the cycle
count and the decoded status (unit states, queue levels, pc).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neuralmatrix.hw.params import HwConfig

from . import backdoor, runloop, runner
from .runner import SimulationFailed

__all__ = ["DEFAULT_DRAM_BYTES", "CLOCK_NS", "ProgramJob", "ProgramResult", "SimulationTimeout",
           "run_programs", "simulation_build", "describe_status"]

DEFAULT_DRAM_BYTES = 32 << 20
CLOCK_NS = 10                    # simulated clock period
TB_MODULE = "neuralmatrix.sim.tb_program"
ENV_DIR = "NM_HARNESS_DIR"


@dataclass
class ProgramJob:
    """One program run.

    Attributes
    ----------
    image : np.ndarray
        Bytes (any dtype, taken raw) loaded at DRAM address 0; the rest of the DRAM is zero.
    insn_addr : int
        Address of the first instruction.
    regions : list of (addr, nbytes)
        DRAM ranges read back after the run.
    max_cycles : int
        Cycles after ``start`` before the job counts as timed out.
    name : str
        For messages.
    """

    image: np.ndarray
    insn_addr: int
    regions: list = field(default_factory=list)
    max_cycles: int = 1_000_000
    name: str = ""


@dataclass
class ProgramResult:
    """Outcome of one :class:`ProgramJob`.

    ``cycles`` is the core's ``cycles`` counter (start to done) when it counted, else
    ``sim_cycles``: the clock edges from the one that sampled ``start`` to the one that raised
    ``done`` (or to the timeout).
    """

    name: str
    regions: list
    counters: dict
    status: dict
    cycles: int
    sim_cycles: int
    error: bool
    error_code: int
    error_pc: int
    fault: bool
    fault_addr: int
    timed_out: bool
    load_seconds: float       # back-door load of the image (zeroing excluded)
    run_seconds: float        # wall time from start to done
    max_cycles: int = 0
    cpu_seconds: float = 0.0  # CPU time of the simulator process from start to done

    @property
    def cycles_per_cpu_second(self) -> float:
        """Simulated cycles per CPU second: the speed without the waits of a shared machine."""
        return self.sim_cycles / self.cpu_seconds if self.cpu_seconds > 0 else float("inf")

    @property
    def cycles_per_second(self) -> float:
        return self.sim_cycles / self.run_seconds if self.run_seconds > 0 else float("inf")


class SimulationTimeout(SimulationFailed):
    """A program did not raise ``done`` within its ``max_cycles``.

    Attributes: ``results`` (all jobs, the timed-out ones with ``timed_out=True``) and
    ``timeouts`` (their indices).
    """

    def __init__(self, message: str, results: list, timeouts: list):
        super().__init__(message)
        self.results = results
        self.timeouts = timeouts


def describe_status(status: dict) -> str:
    """One line of the decoded status port: unit states, queue levels, pc."""
    parts = []
    for key, value in status.items():
        if key == "pc":
            parts.append(f"pc={value:#010x}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


_VERILOG_CACHE: dict = {}


def simulation_build(config: HwConfig, core_factory=None, dram_bytes: int = DEFAULT_DRAM_BYTES,
                     *, waves: bool = False):
    """Build (or reuse) the Verilator model of ``SimTop(config, core_factory, dram_bytes)``
    with the back door. Returns ``(runner.Build, memory_names)``: the DRAM first, then the
    core memories zeroed before every job."""
    from .dram_model import sim_verilog

    core_factory = core_factory or _default_core()
    key = (config, core_factory, dram_bytes)
    if key not in _VERILOG_CACHE:
        name = f"simtop-{getattr(core_factory, '__qualname__', 'core')}-{config.tag}"
        parts = [repr(config), f"{core_factory.__module__}.{core_factory.__qualname__}", str(dram_bytes)]
        _VERILOG_CACHE[key] = tuple(runner.cached_generation(
            name, parts, lambda: list(sim_verilog(config, core_factory, dram_bytes))))
    text, top, public = _VERILOG_CACHE[key]
    built = runner.build(text, top, extra_sources=[backdoor.SOURCE, runloop.SOURCE],
                         extra_args=list(backdoor.BUILD_ARGS), public=public, waves=waves)
    return built, public


def _default_core():
    from neuralmatrix.hw.accelerator import Accelerator

    return Accelerator


def run_programs(config: HwConfig, jobs, *, core_factory=None,
                 dram_bytes: int = DEFAULT_DRAM_BYTES, waves_file=None) -> list[ProgramResult]:
    """Run *jobs* (a sequence of :class:`ProgramJob`) in one simulator process, in order.

    *core_factory* builds the core from *config* (default: the accelerator). Raises
    :class:`SimulationTimeout` when a job timed out (after all jobs ran), and
    :class:`~neuralmatrix.sim.runner.SimulationFailed` when the simulation itself failed.
    """
    jobs = list(jobs)
    if not jobs:
        return []
    for i, job in enumerate(jobs):
        nbytes = np.asarray(job.image).nbytes
        if nbytes > dram_bytes:
            raise ValueError(f"job {i}: image of {nbytes} bytes exceeds the {dram_bytes}-byte DRAM")
        for addr, n in job.regions:
            if addr < 0 or n < 0 or addr + n > dram_bytes:
                raise ValueError(f"job {i}: region ({addr:#x}, {n}) is outside the DRAM")
        if job.max_cycles < 1:
            raise ValueError(f"job {i}: max_cycles must be positive")
    built, memories = simulation_build(config, core_factory, dram_bytes, waves=waves_file is not None)

    with tempfile.TemporaryDirectory(prefix="nm_harness_") as tmp:
        tmp = Path(tmp)
        images: dict[int, str] = {}
        spec_jobs = []
        for i, job in enumerate(jobs):
            if id(job.image) not in images:
                name = f"image{len(images)}.npy"
                np.save(tmp / name, np.ascontiguousarray(job.image).reshape(-1).view(np.uint8))
                images[id(job.image)] = name
            spec_jobs.append({"name": job.name or f"job{i}", "image": images[id(job.image)],
                              "insn_addr": int(job.insn_addr), "max_cycles": int(job.max_cycles),
                              "regions": [[int(a), int(n)] for a, n in job.regions]})
        spec = {"memory": memories[0], "clear": memories[1:], "clock_ns": CLOCK_NS,
                "cpp_clock": waves_file is None, "jobs": spec_jobs}
        (tmp / "jobs.json").write_text(json.dumps(spec))
        log = tmp / "sim.log"
        try:
            runner.run(built, TB_MODULE, env={ENV_DIR: str(tmp)}, log_file=log,
                       waves_file=waves_file, test_dir=tmp / "run")
        except SimulationFailed as exc:
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise SimulationFailed(f"{exc}\n--- simulator log (tail) ---\n{tail}") from None
        raw = json.loads((tmp / "results.json").read_text())
        results = []
        for i, r in enumerate(raw):
            with np.load(tmp / r["regions_file"]) as npz:
                regions = [npz[f"r{k}"] for k in range(len(jobs[i].regions))]
            results.append(_result(r, regions))

    timeouts = [i for i, r in enumerate(results) if r.timed_out]
    if timeouts:
        lines = []
        for i in timeouts:
            r = results[i]
            busy = {k: v for k, v in r.counters.items() if v}
            lines.append(f"job {i} ({r.name}): no done after {r.sim_cycles} cycles "
                         f"(max_cycles={r.max_cycles}); status: {describe_status(r.status)}; "
                         f"counters: {busy}; error={int(r.error)} fault={int(r.fault)}")
        raise SimulationTimeout("\n".join(lines), results, timeouts)
    return results


def _result(r: dict, regions: list) -> ProgramResult:
    counters = r["counters"]
    sim_cycles = r["sim_cycles"]
    cycles = counters.get("cycles") or sim_cycles
    if counters.get("cycles") and not r["timed_out"] and abs(counters["cycles"] - sim_cycles) > 2:
        warnings.warn(f"{r['name']}: cycles counter {counters['cycles']} disagrees with the "
                      f"simulated time ({sim_cycles} cycles)", stacklevel=3)
    return ProgramResult(
        name=r["name"], regions=regions, counters=counters, status=r["status"], cycles=cycles,
        sim_cycles=sim_cycles, error=bool(r["error"]), error_code=r["error_code"],
        error_pc=r["error_pc"], fault=bool(r["fault"]), fault_addr=r["fault_addr"],
        timed_out=r["timed_out"], load_seconds=r["load_seconds"], run_seconds=r["run_seconds"],
        max_cycles=r["max_cycles"], cpu_seconds=r.get("cpu_seconds", 0.0))


def harness_dir() -> Path:
    """The job directory of the current simulation (inside the testbench)."""
    try:
        return Path(os.environ[ENV_DIR])
    except KeyError:
        raise RuntimeError(f"{ENV_DIR} is not set: run this testbench through "
                           "neuralmatrix.sim.harness.run_programs") from None

