"""Verilog generation for every top the project offers."""

from __future__ import annotations

from amaranth.back import verilog

from .params import HwConfig
from .systolic import SystolicArray

__all__ = ["TOPS", "top_module_name", "build_top", "generate_verilog"]

# Top name -> (HDL module name, constructor). Later issues add the whole accelerator.
TOPS = {
    "array": ("nm_array", SystolicArray),
}


def top_module_name(top: str) -> str:
    """The Verilog module name of *top*."""
    return _lookup(top)[0]


def build_top(config: HwConfig, top: str = "array"):
    """The Amaranth component of *top* for *config*."""
    return _lookup(top)[1](config)


def generate_verilog(config: HwConfig, top: str = "array") -> str:
    """Verilog text of *top* for *config*; identical for identical inputs."""
    name, factory = _lookup(top)
    return verilog.convert(factory(config), name=name, emit_src=False)


def _lookup(top: str):
    try:
        return TOPS[top]
    except KeyError:
        raise ValueError(f"top must be one of {', '.join(TOPS)}, got {top!r}") from None
