"""Benchmarks that print their figures (not timed tests).

Usage::

    python -m neuralmatrix.sim.benchmarks array [--sizes 4x4,8x8,16x16] [--cycles N]
    python -m neuralmatrix.sim.benchmarks accelerator [--sizes 8x8,16x16] [--gemm 256,256,256]
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

__all__ = ["bench_array", "bench_gemm", "main"]


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


def bench_gemm(config: HwConfig, M: int, K: int, N: int, seed: int = 0, repeats: int = 3) -> dict:
    """Run an int8 ``M x K x N`` GEMM program on the accelerator RTL; check it against numpy
    and the golden model; return utilization, speed and the golden cycle estimate."""
    import numpy as np

    from neuralmatrix.hw.isa import assemble_binary
    from neuralmatrix.sim.harness import ProgramJob, run_programs
    from neuralmatrix.sw.gemm_program import gemm_program
    from neuralmatrix.sw.golden import estimate_cycles

    align = 4096
    a_addr = align
    b_addr = a_addr + -(-M * K // align) * align + align
    c_addr = b_addr + -(-K * N // align) * align + align
    insn_addr = c_addr + -(-4 * M * N // align) * align + align
    gp = gemm_program(config, M, K, N, a_addr=a_addr, b_addr=b_addr, c_addr_dram=c_addr,
                      mult=1, shift=8)
    binary = np.frombuffer(assemble_binary(gp.program), np.uint8)
    image = np.zeros(insn_addr + binary.size, np.uint8)
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (M, K))
    b = rng.integers(-128, 128, (K, N))
    gp.place(image, a, b)
    image[insn_addr:] = binary
    region = (c_addr, gp.c.end - c_addr)
    # The program runs `repeats` times in one simulator process; the speed is the median.
    job = ProgramJob(image, insn_addr, [region], max_cycles=50_000_000)
    results = run_programs(config, [job] * repeats,
                           dram_bytes=1 << max(20, (image.size - 1).bit_length()))
    result = results[0]
    rates = sorted(r.sim_cycles / r.run_seconds for r in results)
    final = image.copy()
    final[c_addr:c_addr + region[1]] = result.regions[0]
    exact = bool(np.array_equal(gp.result(final), gp.expected(a, b)))
    est = estimate_cycles(gp.program, config)
    cycles = result.counters["cycles"]
    return {
        "config": config.tag, "gemm": f"{M}x{K}x{N}", "bit_exact": exact,
        "cycles": cycles, "macs": result.counters["macs"],
        "utilization": result.counters["macs"] / (cycles * config.rows * config.cols),
        "sim_cycles_per_s": rates[len(rates) // 2],
        "golden_estimate": est.total, "estimate_error": est.total / cycles - 1,
        "insns": len(gp.program),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neuralmatrix.sim.benchmarks")
    sub = parser.add_subparsers(dest="which", required=True)
    p = sub.add_parser("array", help="Verilator build time and simulated cycles/s of the array")
    p.add_argument("--sizes", default="4x4,8x8,16x16")
    p.add_argument("--dataflows", default="ws,os")
    p.add_argument("--cycles", type=int, default=200_000)
    p = sub.add_parser("accelerator", help="utilization and speed of a GEMM on the accelerator RTL")
    p.add_argument("--sizes", default="8x8,16x16")
    p.add_argument("--dataflows", default="ws,os")
    p.add_argument("--gemm", default="256,256,256", help="M,K,N (default 256,256,256)")
    args = parser.parse_args(argv)
    sizes = [tuple(map(int, s.split("x"))) for s in args.sizes.split(",")]
    if args.which == "accelerator":
        M, K, N = map(int, args.gemm.split(","))
        table = Table(title=f"int8 GEMM {M}x{K}x{N} on the accelerator RTL (Verilator)")
        for col in ("config", "bit-exact", "RTL cycles", "utilization", "sim cycles/s",
                    "golden estimate", "estimate error"):
            table.add_column(col, justify="right")
        for r, c in sizes:
            for df in args.dataflows.split(","):
                res = bench_gemm(HwConfig(r, c, df), M, K, N)
                table.add_row(res["config"], "yes" if res["bit_exact"] else "NO",
                              f"{res['cycles']:,}", f"{100 * res['utilization']:.1f}%",
                              f"{res['sim_cycles_per_s']:,.0f}", f"{res['golden_estimate']:,}",
                              f"{100 * res['estimate_error']:+.1f}%")
        Console().print(table)
        return 0
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
