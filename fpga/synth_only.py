"""Synthesis-only targets: Yosys resource counts, no place and route, no timing.

For arrays beyond one ECP5/iCE40 device (up to 64x64, the limit of
:class:`~neuralmatrix.hw.params.HwConfig`), :func:`neuralmatrix.fpga.synth.synthesize` with
``target="xilinx"`` runs ``synth_xilinx -family FAMILY -noiopad -noclkbuf`` (out of context)
and reports its cell counts. Nothing is placed or routed: there is no Fmax and no device
capacity, and every report labels the figures ``synthesis only, no timing``
(:data:`FLOW_LABEL`).

What is counted (:data:`COUNTED`): the top with its hierarchy kept (no ``-flatten``). The
generated Verilog has one uniquified module per PE (``nm_array.pe_R_C``), but most of them are
identical apart from their names: an array has at most 9 distinct PE modules (the corners, the
edges and the interior). :func:`merge_identical_modules` keeps one module of each kind and points
every instance at it, so Yosys synthesizes each kind once; ``stat``'s design totals then count
each module times its instances. Because Yosys without ``-flatten`` synthesizes every module on
its own, the totals equal those of the unmerged design exactly (16x16 ws array on xc7: the same
cell counts in 21 s instead of 265 s). Flattening would let Yosys optimise across PE
boundaries (16x16: 6,373 FF instead of 6,606, and 6 instead of 776 LUT2), at 65 s for 16x16.

Resources (``SynthResult.resources``):

========  ==============================================================================
key       cells counted
========  ==============================================================================
LUT       LUT1..LUT6 (logic LUTs; a 6-input LUT each)
FF        FDRE, FDSE, FDCE, FDPE
DSP       DSP48E1 (xc7) / DSP48E2 (xcu, xcup)
BRAM      RAMB36E1/E2 + RAMB18E1/E2 blocks (each counted as one)
LUTRAM    SRL16E, SRLC32E and distributed RAM cells (RAM32X1D, RAM64M, ...), cells
CARRY     CARRY4 (xc7) / CARRY8 (xcu, xcup)
========  ==============================================================================
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

__all__ = ["TARGETS", "FAMILIES", "FLOW_LABEL", "FLOW_PNR", "COUNTED", "RESOURCE_KEYS",
           "merge_identical_modules", "run_yosys_only"]

#: Targets that stop after synthesis.
TARGETS = ("xilinx",)

#: ``synth_xilinx -family`` values offered as the xilinx target's devices.
FAMILIES = {"xc7": "Xilinx 7 series", "xcu": "Xilinx UltraScale",
            "xcup": "Xilinx UltraScale+"}

FLOW_LABEL = "synthesis only, no timing"
FLOW_PNR = "place and route"
COUNTED = ("hierarchical: each distinct module synthesized once (identical PE modules merged), "
           "totals = every module x its instances; not flattened")

RESOURCE_KEYS = ("LUT", "FF", "DSP", "BRAM", "LUTRAM", "CARRY")

_MODULE_RE = re.compile(
    r"(?:^\(\*[^\n]*\*\)\n)*^module (\\\S+|[A-Za-z_][\w$]*)\s*\(.*?^endmodule\n?", re.M | re.S)
_AUTO_RE = re.compile(r"\\\$auto\$\S*")


def merge_identical_modules(text: str) -> tuple[str, dict[str, int]]:
    """Yosys-written Verilog with every module that is identical to an earlier one (up to its
    name and Yosys's ``$auto$`` wire names) removed and its instances pointed at that one.

    Returns the new text and, per module kept, how many modules it stands for.
    """
    modules = list(_MODULE_RE.finditer(text))
    kept: dict[str, str] = {}
    same_as: dict[str, str] = {}
    for m in modules:
        name = m.group(1)
        ids: dict[str, str] = {}
        key = _AUTO_RE.sub(lambda a: ids.setdefault(a.group(0), f"\\$auto{len(ids)}"),
                           m.group(0).replace(f"module {name}", "module \0", 1))
        same_as[name] = kept.setdefault(key, name)
    parts, pos = [], 0
    for m in modules:
        if same_as[m.group(1)] != m.group(1):
            parts += [text[pos:m.start()]]
            pos = m.end()
    parts.append(text[pos:])
    merged = "".join(parts)
    renamed = {name: rep for name, rep in same_as.items() if name != rep}
    if renamed:
        # Instances are written as "  <module> <instance> (" on a line of their own.
        inst_re = re.compile(r"^(\s+)(\\\S+|[A-Za-z_][\w$]*)(\s+\S+\s*\()", re.M)
        merged = inst_re.sub(lambda i: i.group(1) + renamed.get(i.group(2), i.group(2))
                             + i.group(3), merged)
    counts: dict[str, int] = {}
    for rep in same_as.values():
        counts[rep] = counts.get(rep, 0) + 1
    return merged, counts


def yosys_script(family: str, source: str, module: str) -> str:
    return "\n".join([
        f"read_verilog {source}",
        f"synth_xilinx -family {family} -top {module} -noiopad -noclkbuf",
        "tee -q -o stat.json stat -json", "stat", ""])


def run_yosys_only(result, text: str, run, deadline, timeout_s) -> None:
    """Fill *result* (a SynthResult of a synthesis-only target) from the Verilog *text*;
    *run* is :func:`neuralmatrix.fpga.synth._run`."""
    work: Path = result.workdir
    module = result.top_module
    t0 = time.monotonic()
    merged, counts = merge_identical_modules(text)
    (work / "merged.v").write_text(merged)
    result.seconds["merge"] = round(time.monotonic() - t0, 3)
    result.modules = {"generated": sum(counts.values()), "synthesized": len(counts)}
    (work / "synth.ys").write_text(yosys_script(result.device, "merged.v", module))
    result.logs["yosys"] = work / "yosys.log"
    result.seconds["yosys"] = run("yosys", ["-q", "-l", "yosys.log", "-s", "synth.ys"], work,
                                  deadline, timeout_s, result.logs["yosys"])
    stat = json.loads((work / "stat.json").read_text())
    result.cells = design_cells(stat)
    result.resources = resources(result.cells)


def design_cells(stat: dict) -> dict[str, int]:
    """``stat -json``'s design totals (submodule instances counted through), by cell type."""
    totals = stat.get("design", {}).get("num_cells_by_type", {})
    modules = {name.lstrip("\\") for name in stat.get("modules", {})}
    return {k: v for k, v in sorted(totals.items())
            if k.lstrip("\\") not in modules and not k.startswith("$scopeinfo")}


def resources(cells: dict[str, int]) -> dict[str, int]:
    def count(pattern):
        return sum(n for name, n in cells.items() if re.fullmatch(pattern, name))

    return {
        "LUT": count(r"LUT[1-6]"),
        "FF": count(r"FD[RSCP]E"),
        "DSP": count(r"DSP48E[12]"),
        "BRAM": count(r"RAMB(36|18)E[12]"),
        "LUTRAM": count(r"SRL16E|SRLC32E|RAM\d+[XM]\w*"),
        "CARRY": count(r"CARRY[48]"),
    }
