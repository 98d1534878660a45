"""Per-layer performance reports of network runs, from the RTL performance counters.

One row per layer (the ONNX node(s) a kernel implements; kernels of one layer are summed) and
a ``TOTAL`` row, in the spirit of SCALE-Sim's reports. Columns (:data:`COLUMNS`):

======================  ====================================================================
``layer``               ONNX node name(s) the kernels implement
``kernels``             accelerator programs of the layer
``cycles``              RTL cycles, start to done, summed over the layer's kernels
``est_cycles``          the golden model's cycle estimate of the same programs
``est_error_pct``       ``100 * (est_cycles - cycles) / cycles``
``load_busy`` ...       busy and token-stall cycles of the load, compute and store units
``executed_macs``       MACs the array executed (the ``macs`` counter: ``m * k * n`` of every
                        COMPUTE; zeros of block-diagonal weights included)
``useful_macs``         the ONNX model's own Conv/ConvTranspose/MatMul/Gemm MACs, from the
                        original graph's shapes (:mod:`neuralmatrix.sw.macs`)
``linearization_macs``  structurally nonzero work of the kernels that implement element-wise
                        and nonlinear ops (role ``"linearization"``)
``padding_macs``        ``executed_macs - useful_macs - linearization_macs``: zeros executed
``utilization_pct``     ``100 * useful_macs / (cycles * rows * cols)``
``occupancy_pct``       ``100 * executed_macs / (cycles * rows * cols)``
``pwl_evals``           elements through the PWL unit
``dram_read``           bytes read from external memory (instructions included)
``dram_written``        bytes written to external memory
======================  ====================================================================

Counters of several inferences are summed (a run of N inputs reports N times the work).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sw.macs import figures

__all__ = ["COLUMNS", "UNIT_COUNTERS", "layer_rows", "write_report", "rich_table"]

UNIT_COUNTERS = ("load_busy", "load_stall", "compute_busy", "compute_stall", "store_busy",
                 "store_stall")
COLUMNS = ("layer", "kernels", "cycles", "est_cycles", "est_error_pct", *UNIT_COUNTERS,
           "executed_macs", "useful_macs", "linearization_macs", "padding_macs",
           "utilization_pct", "occupancy_pct", "pwl_evals", "dram_read", "dram_written")
_SUMMED = ("cycles", "est_cycles", *UNIT_COUNTERS, "macs", "pwl_evals", "bytes_read",
           "bytes_written", "useful", "linearization")


def layer_rows(kernel_runs: Sequence, config: HwConfig, kernels: Iterable, *,
               measured: bool = True) -> list[dict]:
    """Rows of :data:`COLUMNS` from :class:`~neuralmatrix.sim.network.KernelRun` lists (one
    list per inference), layers in order of first appearance, then ``TOTAL``. *kernels* are
    the compiled network's :class:`~neuralmatrix.sw.ir.Kernel` steps (their
    ``useful_macs`` and ``linearization_macs``, by kernel name).

    With ``measured=False`` (golden-model runs, which count work but not time) the
    utilization and occupancy come from the estimate and ``cycles``, ``est_error_pct`` and
    the unit busy/stall columns are None."""
    static = {k.name: (k.useful_macs, k.linearization_macs) for k in kernels}
    layers: dict[str, dict] = {}
    total = {k: 0 for k in _SUMMED} | {"kernels": 0}
    for runs in kernel_runs:
        for k in runs:
            acc = layers.setdefault(k.layer or k.name, {c: 0 for c in _SUMMED} | {"kernels": 0})
            useful, lin = static[k.name]
            for target in (acc, total):
                target["kernels"] += 1
                target["est_cycles"] += k.est_cycles
                target["useful"] += useful
                target["linearization"] += lin
                for c in _SUMMED:
                    if c not in ("est_cycles", "useful", "linearization"):
                        target[c] += int(k.counters.get(c, 0))
    n_runs = max(1, len(kernel_runs))
    peak = config.rows * config.cols
    rows = []
    for name, acc in [*layers.items(), ("TOTAL", total)]:
        cycles = acc["cycles"] if measured else acc["est_cycles"]
        row = {"layer": name, "kernels": acc["kernels"] // n_runs,
               "cycles": cycles, "est_cycles": acc["est_cycles"],
               "est_error_pct": round(100.0 * (acc["est_cycles"] - cycles) / cycles, 2) if cycles else None}
        row |= {c: acc[c] for c in UNIT_COUNTERS}
        row |= figures(acc["macs"], acc["useful"], acc["linearization"], cycles, peak)
        row |= {"pwl_evals": acc["pwl_evals"], "dram_read": acc["bytes_read"],
                "dram_written": acc["bytes_written"]}
        if not measured:
            row |= {c: None for c in ("cycles", "est_error_pct", *UNIT_COUNTERS)}
        rows.append(row)
    return rows


def write_report(rows: list[dict], path, meta: dict | None = None) -> list[Path]:
    """Write *rows* as CSV and JSON: ``path`` itself in the format its suffix names (``.csv``
    or ``.json``) and the other format next to it; any other suffix gets both added.
    Returns the paths written."""
    path = Path(path)
    if path.suffix in (".csv", ".json"):
        csv_path, json_path = path.with_suffix(".csv"), path.with_suffix(".json")
    else:
        csv_path, json_path = Path(f"{path}.csv"), Path(f"{path}.json")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r[k] is None else r[k]) for k in COLUMNS})
    json_path.write_text(json.dumps({"columns": list(COLUMNS), "meta": meta or {}, "layers": rows},
                                    indent=1))
    return [csv_path, json_path]


def _short(v) -> str:
    """1234567 -> '1.23M': terminal cells stay narrow; the CSV/JSON keep every digit."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.1f}"
    if abs(v) >= 1_000_000_000:
        return f"{v / 1e9:.3g}G"
    if abs(v) >= 1_000_000:
        return f"{v / 1e6:.3g}M"
    if abs(v) >= 10_000:
        return f"{v / 1e3:.1f}k"
    return f"{v:,}"


def rich_table(rows: list[dict], title: str):
    """The human table of :data:`COLUMNS` (unit cells are ``busy / stall`` cycles)."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    heads = ["layer", "kern", "cycles", "est. cycles", "est. err %", "util %", "occup %",
             "useful MACs", "lin. MACs", "pad. MACs",
             "load busy/stall", "compute busy/stall", "store busy/stall", "PWL evals",
             "DRAM rd B", "DRAM wr B"]
    for head in heads:
        t.add_column(head, justify="left" if head == "layer" else "right", overflow="fold")
    for r in rows:
        units = ["" if r[u + "_busy"] is None else
                 f"{_short(r[u + '_busy'])} / {_short(r[u + '_stall'])}"
                 for u in ("load", "compute", "store")]
        cells = [r["layer"], str(r["kernels"]), _short(r["cycles"]), _short(r["est_cycles"]),
                 _short(r["est_error_pct"]), _short(r["utilization_pct"]),
                 _short(r["occupancy_pct"]), _short(r["useful_macs"]),
                 _short(r["linearization_macs"]), _short(r["padding_macs"]),
                 *units, _short(r["pwl_evals"]), _short(r["dram_read"]), _short(r["dram_written"])]
        t.add_row(*cells, style="bold" if r["layer"] == "TOTAL" else None)
    return t
