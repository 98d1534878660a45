"""Benchmarks that print their figures (not timed tests).

Usage::

    python -m neuralmatrix.sim.benchmarks array [--sizes 4x4,8x8,16x16] [--cycles N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from neuralmatrix.hw.generate import generate_verilog, top_module_name
from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sim.runner import build, run

__all__ = ["bench_array", "main"]


def bench_array(sizes, dataflows=("ws", "os"), cycles: int = 200_000, root: Path | None = None):
    """Build each array configuration fresh and measure it; returns one dict per configuration."""
    rows = []
    for r, c in sizes:
        for df in dataflows:
            cfg = HwConfig(r, c, df)
            built = build(generate_verilog(cfg, "array", for_simulation=True), top_module_name("array"),
                          root=root)
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "bench.json"
                run(built, "neuralmatrix.sim.bench_array",
                    env={"NM_CONFIG": json.dumps(cfg.as_dict()), "NM_BENCH_OUT": str(out),
                         "NM_BENCH_CYCLES": str(cycles)})
                figures = json.loads(out.read_text())
            rows.append({"config": cfg.tag, "build_s": built.seconds, "reused": built.reused,
                         **figures})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neuralmatrix.sim.benchmarks")
    sub = parser.add_subparsers(dest="which", required=True)
    p = sub.add_parser("array", help="Verilator build time and simulated cycles/s of the array")
    p.add_argument("--sizes", default="4x4,8x8,16x16")
    p.add_argument("--dataflows", default="ws,os")
    p.add_argument("--cycles", type=int, default=200_000)
    args = parser.parse_args(argv)
    sizes = [tuple(map(int, s.split("x"))) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as root:   # a fresh build directory: real build times
        results = bench_array(sizes, args.dataflows.split(","), args.cycles, Path(root))
    table = Table(title="Systolic array under Verilator (cocotb runner)")
    for col in ("config", "build s", "free-running cycles/s", "Python-driven cycles/s"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(r["config"], f"{r['build_s']:.1f}", f"{r['free_running']:,.0f}",
                      f"{r['python_driven']:,.0f}")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
