"""Benchmarks that print their figures (not timed tests).

Usage::

    python -m neuralmatrix.sim.benchmarks array [--sizes 4x4,8x8,16x16] [--cycles N]
    python -m neuralmatrix.sim.benchmarks accelerator [--sizes 8x8,16x16] [--gemm 256,256,256]
                                                      [--golden-only]
    python -m neuralmatrix.sim.benchmarks network [--nets digits,minilm16,minilm128,resnet50]
                                                  [--sizes 8x8,16x16] [--json FILE]
    python -m neuralmatrix.sim.benchmarks compile [--nets minilm16,minilm48,minilm128,digits]
                                                  [--sizes 8x8] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from neuralmatrix.hw.generate import generate_verilog, top_module_name
from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sim.runner import build, run
from neuralmatrix.sw.macs import FIGURES, figures

__all__ = ["bench_array", "bench_gemm", "estimate_gemm", "bench_network", "bench_compile", "NETWORKS",
           "COMPILE_NETWORKS", "main"]


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
    and the golden model; return the MAC figures (:data:`~neuralmatrix.sw.macs.FIGURES`:
    useful = ``M * K * N``, executed = the RTL counter), speed and the golden cycle estimate."""
    import numpy as np

    from neuralmatrix.sim.harness import ProgramJob, run_programs
    from neuralmatrix.sw.gemm_program import random_gemm_image
    from neuralmatrix.sw.golden import estimate_cycles

    image, insn_addr, gp, a, b = random_gemm_image(config, M, K, N, seed=seed, shift=8,
                                                   align=4096)
    c_addr = gp.c.addr
    region = (c_addr, gp.c.end - c_addr)
    # The program runs `repeats` times in one simulator process; the speed is the median.
    job = ProgramJob(image, insn_addr, [region], max_cycles=50_000_000)
    results = run_programs(config, [job] * repeats,
                           dram_bytes=1 << max(20, (image.size - 1).bit_length()))
    result = results[0]
    rates = sorted(r.sim_cycles / r.run_seconds for r in results)
    cpu_rates = sorted(r.cycles_per_cpu_second for r in results)
    final = image.copy()
    final[c_addr:c_addr + region[1]] = result.regions[0]
    exact = bool(np.array_equal(gp.result(final), gp.expected(a, b)))
    est = estimate_cycles(gp.program, config)
    cycles = result.counters["cycles"]
    return {
        "config": config.tag, "gemm": f"{M}x{K}x{N}", "bit_exact": exact, "cycles": cycles,
        **figures(result.counters["macs"], M * K * N, 0, cycles, config.rows * config.cols),
        "sim_cycles_per_s": rates[len(rates) // 2],
        "sim_cycles_per_cpu_s": cpu_rates[len(cpu_rates) // 2],
        "golden_estimate": est.total, "estimate_error": est.total / cycles - 1,
        "insns": len(gp.program),
    }


def estimate_gemm(config: HwConfig, M: int, K: int, N: int, seed: int = 0) -> dict:
    """The same GEMM program as :func:`bench_gemm` on the golden model alone: its MAC
    figures on the cycle estimate (no RTL, no simulator needed)."""
    from neuralmatrix.sw.gemm_program import random_gemm_image
    from neuralmatrix.sw.golden import estimate_cycles

    _, _, gp, _, _ = random_gemm_image(config, M, K, N, seed=seed, shift=8, align=4096)
    est = estimate_cycles(gp.program, config)
    return {"config": config.tag, "gemm": f"{M}x{K}x{N}", "est_cycles": est.total,
            **figures(est.macs, M * K * N, 0, est.total, config.rows * config.cols)}


#: Benchmark networks: name -> (``neuralmatrix run`` model, options).
NETWORKS = {
    "digits": ("digits", {"batch": 50}),             # all 450 test digits, 9 inferences
    "minilm16": ("minilm", {"seq_len": 16, "samples": 1}),
    "minilm128": ("minilm", {"seq_len": 128, "samples": 1}),
    "resnet50": ("resnet50", {"samples": 1}),
}


#: Compile benchmark: name -> (``neuralmatrix compile`` model, extra arguments).
COMPILE_NETWORKS = {
    "minilm16": ("minilm", ["--seq-len", "16"]),
    "minilm48": ("minilm", ["--seq-len", "48"]),
    "minilm128": ("minilm", ["--seq-len", "128"]),
    "digits": ("digits", []),
}


def bench_compile(name: str, config: HwConfig) -> dict:
    """``neuralmatrix compile`` of a built-in network in a fresh process, as a user runs it:
    the compile time it reports (import, calibration, linearization, code generation), the
    whole process's wall time (Python start-up and imports, writing the outputs included),
    and the size of what it emitted."""
    import subprocess
    import time

    model, extra = COMPILE_NETWORKS[name]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "neuralmatrix.sw.cli", "compile", model, *extra,
               "--rows", str(config.rows), "--cols", str(config.cols),
               "--dataflow", config.dataflow.value, "-o", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        process_s = time.perf_counter() - t0
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        rep = json.loads((out / "report.json").read_text())
    tot = rep["totals"]
    return {"network": name, "config": config.tag, "compile_s": rep["compile_seconds"],
            "phase_s": rep["phase_seconds"], "process_s": process_s,
            "kernels": tot["kernels"], "insns": sum(k["insns"] for k in rep["kernels"]),
            "program_bytes": tot["program_bytes"], "est_cycles": tot["est_cycles"],
            **{f: tot[f] for f in FIGURES}}


def bench_network(name: str, config: HwConfig) -> dict:
    """Compile a benchmark network, run it on the golden model and on the RTL; wall times
    (the Verilator build apart), RTL cycles, utilization and the golden estimate's error."""
    import time
    from argparse import Namespace

    from neuralmatrix.sim.harness import simulation_build
    from neuralmatrix.sim.network import dram_size_for, first_difference, run_network_rtl
    from neuralmatrix.sim.report import layer_rows
    from neuralmatrix.sim.run_cmd import load_workload
    from neuralmatrix.sw.compiler import compile_model
    from neuralmatrix.sw.runtime import run_golden

    model, opts = NETWORKS[name]
    args = Namespace(model=model, input=None, input_shape=None, batch=50, seq_len=16, samples=1)
    for k, v in opts.items():
        setattr(args, k, v)
    work = load_workload(args)
    t0 = time.perf_counter()
    comp = compile_model(work.model, config, calib_feeds=work.calib, input_shapes=work.input_shapes)
    compile_s = time.perf_counter() - t0
    c = comp.compiled
    t0 = time.perf_counter()
    golden = [run_golden(c, f, keep=True) for f in work.feeds]
    golden_s = time.perf_counter() - t0
    built, _ = simulation_build(config, dram_bytes=dram_size_for(c))
    t0, cpu0 = time.perf_counter(), _children_cpu()
    runs = run_network_rtl(c, work.feeds)
    rtl_s, rtl_cpu_s = time.perf_counter() - t0, _children_cpu() - cpu0
    exact = all(first_difference(c, g, r) is None for g, r in zip(golden, runs))
    rows = layer_rows([r.kernels for r in runs], config, c.network.kernels)
    layers, total = rows[:-1], rows[-1]
    big = [r for r in layers if r["cycles"] >= 0.01 * total["cycles"]]
    return {
        "network": name, "config": config.tag, "inferences": len(work.feeds),
        "bit_exact": exact, "compile_s": compile_s, "golden_s": golden_s,
        "build_s": 0.0 if built.reused else built.seconds, "rtl_s": rtl_s,
        "cycles": total["cycles"], **{f: total[f] for f in FIGURES},
        "est_error_pct": total["est_error_pct"],
        "max_layer_est_error_pct": max(abs(r["est_error_pct"]) for r in big),
        "layers": len(layers), "sim_cycles_per_s": total["cycles"] / rtl_s,
        "rtl_cpu_s": rtl_cpu_s, "sim_cycles_per_cpu_s": total["cycles"] / max(rtl_cpu_s, 1e-9),
    }


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes (the simulator): the RTL
    time without the waits of a shared machine."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


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
    p.add_argument("--golden-only", action="store_true",
                   help="the golden model's cycle estimate only (no RTL)")
    _add_net_options(sub.add_parser(
        "network", help="whole networks on the RTL: wall time, cycles, utilization"),
        NETWORKS, "8x8,16x16")
    _add_net_options(sub.add_parser(
        "compile", help="compile time of built-in networks (neuralmatrix compile)"),
        COMPILE_NETWORKS, "8x8")
    args = parser.parse_args(argv)
    sizes = [tuple(map(int, s.split("x"))) for s in args.sizes.split(",")]
    if args.which == "accelerator" and args.golden_only:
        return _main_gemm_estimate(args, sizes)
    if args.which != "compile":
        from neuralmatrix.sim.extras import MissingExtra, require

        try:
            require("sim", f"benchmarks {args.which}")
        except MissingExtra as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.which == "network":
        return _main_network(args, sizes)
    if args.which == "compile":
        return _main_compile(args, sizes)
    if args.which == "accelerator":
        M, K, N = map(int, args.gemm.split(","))
        table = Table(title=f"int8 GEMM {M}x{K}x{N} on the accelerator RTL (Verilator)")
        for col in ("config", "bit-exact", "RTL cycles", "utilization", "occupancy",
                    "sim cycles/s", "per CPU s", "golden estimate", "estimate error"):
            table.add_column(col, justify="right")
        for r, c in sizes:
            for df in args.dataflows.split(","):
                res = bench_gemm(HwConfig(r, c, df), M, K, N)
                table.add_row(res["config"], "yes" if res["bit_exact"] else "NO",
                              f"{res['cycles']:,}", f"{res['utilization_pct']:.1f}%",
                              f"{res['occupancy_pct']:.1f}%",
                              f"{res['sim_cycles_per_s']:,.0f}",
                              f"{res['sim_cycles_per_cpu_s']:,.0f}", f"{res['golden_estimate']:,}",
                              f"{100 * res['estimate_error']:+.1f}%")
        Console(width=None if sys.stdout.isatty() else 160).print(table)
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


def _main_gemm_estimate(args, sizes) -> int:
    M, K, N = map(int, args.gemm.split(","))
    table = Table(title=f"int8 GEMM {M}x{K}x{N}, golden-model cycle estimate")
    for col in ("config", "est. cycles", "useful MACs", "executed MACs", "utilization",
                "occupancy"):
        table.add_column(col, justify="right")
    for r, c in sizes:
        for df in args.dataflows.split(","):
            res = estimate_gemm(HwConfig(r, c, df), M, K, N)
            table.add_row(res["config"], f"{res['est_cycles']:,}", f"{res['useful_macs']:,}",
                          f"{res['executed_macs']:,}", f"{res['utilization_pct']:.2f}%",
                          f"{res['occupancy_pct']:.2f}%")
    Console().print(table)
    return 0


def _add_net_options(p, known, sizes: str) -> None:
    p.add_argument("--nets", default=",".join(known),
                   help=f"comma-separated, of {', '.join(known)} (default all)")
    p.add_argument("--sizes", default=sizes)
    p.add_argument("--dataflows", default="ws")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")


def _main_network(args, sizes) -> int:
    console = Console(width=None if sys.stdout.isatty() else 200)
    table = Table(title="Whole networks on the accelerator RTL (Verilator; wall times without "
                        "the one-time build)")
    for col in ("network", "config", "inf.", "bit-exact", "compile s", "golden s", "RTL s",
                "RTL CPU s", "RTL cycles", "sim cycles/s", "utilization", "occupancy", "est. error",
                "max layer err"):
        table.add_column(col, justify="right")
    _each_config(NETWORKS, sizes, args, bench_network, table, lambda res: (
        res["network"], res["config"], str(res["inferences"]),
        "yes" if res["bit_exact"] else "NO", f"{res['compile_s']:.1f}",
        f"{res['golden_s']:.1f}", f"{res['rtl_s']:.1f}", f"{res['rtl_cpu_s']:.1f}",
        f"{res['cycles']:,}",
        f"{res['sim_cycles_per_s']:,.0f}", f"{res['utilization_pct']:.1f}%",
        f"{res['occupancy_pct']:.1f}%",
        f"{res['est_error_pct']:+.1f}%", f"{res['max_layer_est_error_pct']:.1f}%"),
        console=console)
    console.print(table)
    return 0


def _each_config(known, sizes, args, bench, table, row, console=None) -> list[dict]:
    """``bench(net, config)`` for every network of ``args.nets`` (names of *known*), size and
    dataflow; one table row each (``row(result)``), every result printed to *console* if
    given, and all results so far rewritten to ``args.json`` after each one (an interrupted
    run keeps what it measured)."""
    nets = args.nets.split(",")
    unknown = [n for n in nets if n not in known]
    if unknown:
        raise SystemExit(f"unknown network(s) {', '.join(unknown)}; known: {', '.join(known)}")
    results = []
    for net in nets:
        for r, c in sizes:
            for df in args.dataflows.split(","):
                res = bench(net, HwConfig(r, c, df))
                results.append(res)
                if console is not None:
                    console.print(res)
                table.add_row(*row(res))
                if args.json:
                    Path(args.json).write_text(json.dumps(results, indent=1))
    return results


def _main_compile(args, sizes) -> int:
    table = Table(title="neuralmatrix compile (fresh process each; compile s = the time the "
                        "command reports, process s = its whole run)")
    for col in ("network", "config", "compile s", "process s", "kernels", "instructions",
                "program bytes", "est. cycles", "est. utilization", "est. occupancy"):
        table.add_column(col, justify="right")
    _each_config(COMPILE_NETWORKS, sizes, args, bench_compile, table, lambda res: (
        res["network"], res["config"], f"{res['compile_s']:.2f}", f"{res['process_s']:.2f}",
        f"{res['kernels']:,}", f"{res['insns']:,}", f"{res['program_bytes']:,}",
        f"{res['est_cycles']:,}", f"{res['utilization_pct']:.1f}%",
        f"{res['occupancy_pct']:.1f}%"))
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
