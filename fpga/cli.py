"""The ``neuralmatrix synth`` and ``neuralmatrix sweep`` subcommands: FPGA resources and Fmax
of a generated top, and of every configuration of a design-space sweep.

``sw/cli.py`` registers both with :func:`add_parser`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from neuralmatrix.hw.params import ConfigError, HwConfig

from .synth import (DEFAULT_DEVICE, DEFAULT_FREQ_MHZ, DEFAULT_ROUTER, DEVICES, ROUTERS,
                    DoesNotFit, SynthError,
                    SynthResult, check_parameters, synthesize)
from .synth_only import FLOW_LABEL, FLOW_PNR

__all__ = ["add_parser", "format_table", "format_notes", "format_sweep_table"]

# Exit codes besides 0 and the 2 that main() returns for a bad parameter.
EXIT_TOOL_FAILED = 1
EXIT_DOES_NOT_FIT = 3
EXIT_INTERRUPTED = 130


def add_parser(subparsers) -> None:
    """Register ``synth`` and ``sweep`` on *subparsers* (the object ``add_subparsers``
    returned)."""
    _add_synth_parser(subparsers)
    _add_sweep_parser(subparsers)
    _add_power_parser(subparsers)
    _add_cpu_parser(subparsers)
    _add_bitstream_parser(subparsers)


def _add_synth_parser(subparsers) -> None:
    d = HwConfig()
    devices = "; ".join(f"{t}: {', '.join(DEVICES[t])} (default {DEFAULT_DEVICE[t]})"
                        for t in DEVICES)
    p = subparsers.add_parser(
        "synth", help="synthesize and place-and-route the hardware on an FPGA (area, Fmax)",
        description="Synthesize the generated hardware with Yosys and place and route it with "
                    "nextpnr (the yowasp PyPI builds), then report its resources, their share "
                    "of the device, and the achieved Fmax. ECP5 runs out of context; iCE40 "
                    "wraps the top in a five-pin serial I/O shim (counted separately). "
                    "Identical options give identical numbers (fixed placement seed). "
                    f"Exit status: 0 done, 2 bad parameter, {EXIT_DOES_NOT_FIT} does not fit "
                    f"the device, {EXIT_TOOL_FAILED} a tool failed or timed out.")
    p.add_argument("--rows", type=int, default=d.rows,
                   help=f"systolic array rows ({HwConfig.describe('rows')}; default {d.rows})")
    p.add_argument("--cols", type=int, default=d.cols,
                   help=f"systolic array columns ({HwConfig.describe('cols')}; default {d.cols})")
    p.add_argument("--dataflow", default=str(d.dataflow),
                   help=f"ws = weight-stationary, os = output-stationary (default {d.dataflow})")
    p.add_argument("--target", default="ecp5",
                   help="FPGA family: ecp5 or ice40 (default ecp5), or xilinx: synthesis only, "
                        "no timing (synth_xilinx resource counts, arrays up to 64x64)")
    p.add_argument("--device", default=None,
                   help=f"device: {devices}; ECP5 in package CABGA381, up5k in sg48, "
                        f"hx8k in ct256")
    p.add_argument("--top", default="array",
                   help="array = the systolic array alone; accelerator = the whole accelerator "
                        "(default array)")
    p.add_argument("--freq", type=float, default=None, metavar="MHZ",
                   help="target clock for timing-driven placement (default "
                        + ", ".join(f"{v:g} on {t}" for t, v in DEFAULT_FREQ_MHZ.items())
                        + "); the achieved Fmax is reported either way")
    p.add_argument("--seed", type=int, default=1, help="nextpnr placement seed (default 1)")
    _add_router_option(p)
    p.add_argument("--json", metavar="FILE", default=None,
                   help="also write every figure as JSON to FILE ('-' for standard output; "
                        "the table then goes to standard error)")
    p.add_argument("--workdir", metavar="DIR", default=None,
                   help="keep the Verilog, netlist and logs in DIR (default: a new temporary "
                        "directory, printed at the end)")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="wall-time budget of the whole run (default 3600)")
    p.set_defaults(func=_cmd_synth)


def _add_router_option(p) -> None:
    p.add_argument("--router", default=DEFAULT_ROUTER, choices=ROUTERS,
                   help=f"nextpnr router (default {DEFAULT_ROUTER}, nextpnr's own, "
                        f"timing-driven); router2 routes large designs faster, to a slower "
                        f"clock")


def _cmd_synth(args) -> int:
    config = HwConfig(rows=args.rows, cols=args.cols, dataflow=args.dataflow)
    check_parameters(config, args.target, args.device, args.top, args.freq, args.seed,
                     args.timeout, args.router)
    out = None
    if args.json not in (None, "-"):
        out = Path(args.json)
        if not out.parent.is_dir():
            raise ConfigError(f"json: directory {out.parent} does not exist")
    try:
        result = synthesize(config, target=args.target, device=args.device, top=args.top,
                            freq_mhz=args.freq, workdir=args.workdir, seed=args.seed,
                            timeout_s=args.timeout, router=args.router)
    except DoesNotFit as exc:
        print(f"neuralmatrix synth: {exc}", file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    except SynthError as exc:
        print(f"neuralmatrix synth: error: {exc}", file=sys.stderr)
        return EXIT_TOOL_FAILED

    from rich.console import Console

    console = Console(stderr=args.json == "-")
    console.print(format_table(result))
    for line in format_notes(result):
        console.print(line, highlight=False, soft_wrap=True)
    if args.json == "-":
        sys.stdout.write(json.dumps(result.as_dict(), indent=2) + "\n")
    elif out is not None:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
        tmp.replace(out)
        console.print(f"wrote {out}")
    return 0


def format_table(result: SynthResult):
    """A rich table of *result*: each resource, the device's capacity, the share, and Fmax."""
    from rich.table import Table

    where = (f"{result.part}-{result.package}" if result.package
             else f"{result.target} {result.device}")
    label = "" if result.flow == FLOW_PNR else f" ({result.flow})"
    table = Table(title=f"{result.top} {result.config.tag} on {where}{label}")
    table.add_column("resource")
    table.add_column("used", justify="right")
    table.add_column("device", justify="right")
    table.add_column("%", justify="right")
    for key, used in result.resources.items():
        cap = result.capacity.get(key)
        pct = result.utilization.get(key)
        table.add_row(key, f"{used:,}", "" if cap is None else f"{cap:,}",
                      "" if pct is None else f"{pct:.1f}")
    table.add_section()
    if result.flow != FLOW_PNR:
        table.add_row("Fmax", "n/a", "no timing: synthesis only", "")
        return table
    fmax = "n/a" if result.fmax_mhz is None else f"{result.fmax_mhz:.2f} MHz"
    table.add_row("Fmax", fmax, f"target {result.freq_mhz:g} MHz", "")
    cp = result.critical_path
    if cp is not None:
        table.add_section()
        table.add_row("critical path", f"{cp['delay_ns']:.2f} ns",
                      f"logic {cp['logic_ns']:.2f} + routing {cp['routing_ns']:.2f} ns",
                      f"{cp['logic_levels']} cells")
        table.add_row("  from", cp["from_scope"] or "(top)", "", "")
        table.add_row("  to", cp["to_scope"] or "(top)", "", "")
    return table


def format_notes(result: SynthResult) -> list[str]:
    """Lines printed under the table: seed, time per step, where the files are, the shim."""
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    lines = [f"seed {result.seed}, {result.router}; time: {steps}", f"files: {result.workdir}"]
    if result.flow != FLOW_PNR:
        lines[0] = f"time: {steps}"
    cp = result.critical_path
    if cp is not None:
        lines.insert(0, f"critical path: {cp['from']} -> {cp['to']}")
    if result.counted:
        mods = result.modules
        lines.insert(0, f"{result.flow}; counted: {result.counted}"
                        + (f" ({mods['synthesized']} of {mods['generated']} modules "
                           f"synthesized)" if mods else ""))
    if result.io_shim is not None:
        lines.append(f"I/O shim: {result.io_shim['inputs']} input + {result.io_shim['outputs']} "
                     f"output bits, serialised; not in the counts above, in the Fmax")
    return lines


# --------------------------------------------------------------------------------------------
# sweep

def _add_sweep_parser(subparsers) -> None:
    from .sweep import DEFAULT_WORKLOAD, PLOT_FORMATS

    p = subparsers.add_parser(
        "sweep", help="synthesize every array configuration of a sweep (area, Fmax, throughput)",
        description="Run every configuration (rows x cols x dataflow) through the synth flow, "
                    "in parallel on local processes or on a Dask cluster, and estimate each "
                    "one's throughput on a workload at its Fmax (golden-model cycle estimate, "
                    "no simulation). Results are appended to DIR/results.jsonl as each "
                    "configuration finishes; running the same command again resumes (finished "
                    "configurations are not run again). At the end DIR/results.csv, the plots "
                    "and a table. A design that does not fit is a result; a tool failure is an "
                    "error row and the sweep goes on. Exit status: 0 done, 1 some rows are "
                    f"errors (or the sweep could not run), 2 bad parameter, {EXIT_INTERRUPTED} "
                    "interrupted (rerun to resume).")
    p.add_argument("--rows", default="2,4,8,16", metavar="LIST",
                   help=f"array rows, comma-separated ({HwConfig.describe('rows')} each; "
                        f"default 2,4,8,16)")
    p.add_argument("--cols", default=None, metavar="LIST",
                   help="array columns, comma-separated (default: the --rows list)")
    p.add_argument("--square", action="store_true",
                   help="only configurations with rows == cols")
    p.add_argument("--dataflow", default="ws,os", metavar="LIST",
                   help="dataflows, comma-separated: ws, os (default ws,os)")
    p.add_argument("--target", default="ecp5",
                   help="FPGA family: ecp5 or ice40 (default ecp5), or xilinx: synthesis only, "
                        "no timing (synth_xilinx resource counts, arrays up to 64x64)")
    p.add_argument("--device", default=None,
                   help="device short name (ecp5: 12k, 25k, 45k, 85k; ice40: up5k, hx8k; "
                        "xilinx: xc7, xcu, xcup; "
                        "default " + ", ".join(f"{v} on {k}" for k, v in DEFAULT_DEVICE.items())
                        + ")")
    p.add_argument("--top", default="array",
                   help="array = the systolic array alone; accelerator = the whole accelerator "
                        "(default array)")
    p.add_argument("--freq", type=float, default=None, metavar="MHZ",
                   help="target clock for timing-driven placement (default as for synth)")
    p.add_argument("--seed", type=int, default=1, help="nextpnr placement seed (default 1)")
    _add_router_option(p)
    p.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="wall-time budget of each configuration's flow (default 3600)")
    p.add_argument("--workload", default=DEFAULT_WORKLOAD, metavar="SPEC",
                   help=f"workload for cycles and throughput: gemm:MxKxN (default "
                        f"{DEFAULT_WORKLOAD})")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="local worker processes (default: the number of CPUs)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on a Dask distributed cluster, e.g. tcp://host:8786 (its workers "
                        "need neuralmatrix installed and the output directory at the same path)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default sweep-TARGET-DEVICE-TOP); reusing it resumes")
    p.add_argument("--plots", default="png", metavar="FORMATS",
                   help=f"plot formats, comma-separated: {', '.join(PLOT_FORMATS)}, or none "
                        f"(default png)")
    p.add_argument("--no-retry-errors", action="store_true",
                   help="do not run again the configurations recorded as errors")
    p.add_argument("--power", default=None, metavar="WORKLOAD",
                   help="fill power_w and gops_per_w with the activity-based power model "
                        "(ECP5), the switching activity of each configuration measured on the "
                        "RTL running WORKLOAD: digits (a Verilator build per configuration, "
                        "cached); see neuralmatrix power --help")
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args) -> int:
    from rich.console import Console

    from .sweep import (SweepError, check_workload, parse_int_list, parse_name_list,
                        plan_configs, run_sweep)

    rows = parse_int_list(args.rows, "rows")
    cols = rows if args.cols is None else parse_int_list(args.cols, "cols")
    configs = plan_configs(rows, cols, parse_name_list(args.dataflow, "dataflow"),
                           square=args.square)
    dev, _ = check_parameters(configs[0], args.target, args.device, args.top, args.freq,
                              args.seed, args.timeout, args.router)
    check_workload(args.workload)
    plots = parse_name_list(args.plots, "plots")
    if plots == ["none"]:
        plots = []
    out = Path(args.out) if args.out else Path(f"sweep-{args.target}-{dev.name}-{args.top}")
    power = None
    if args.power is not None:
        from .power import activity_power_model

        if args.target != "ecp5":
            raise ConfigError(f"power: the power model covers ECP5 only, got target "
                              f"{args.target!r}")
        power = activity_power_model(args.power, log=lambda line: print(line, flush=True))
    # Not a terminal (a log file): wide enough for the table instead of rich's 80 columns.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
    try:
        report = run_sweep(configs, out_dir=out, target=args.target, device=args.device,
                           top=args.top, seed=args.seed, router=args.router, freq_mhz=args.freq,
                           timeout_s=args.timeout, workload=args.workload, jobs=args.jobs,
                           scheduler=args.scheduler, retry_errors=not args.no_retry_errors,
                           plots=plots, power=power, log=console.print)
    except SweepError as exc:
        print(f"neuralmatrix sweep: error: {exc}", file=sys.stderr)
        return EXIT_TOOL_FAILED
    if report.rows:
        console.print(format_sweep_table(report.rows))
    console.print(f"{report.ran} run, {report.reused} reused of {report.total}; "
                  f"{report.errors} error(s); {report.seconds:.0f} s")
    console.print(f"results: {report.csv} (all runs: {report.jsonl})")
    if report.plots:
        console.print("plots: " + ", ".join(str(p) for p in report.plots))
    if report.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_TOOL_FAILED if report.errors else 0


def format_sweep_table(rows: list[dict]):
    """A rich table of a sweep's CSV rows: resources (% of the device), Fmax, throughput."""
    from rich.table import Table

    first = rows[0]
    workload = next((r["workload"] for r in rows if r.get("workload")), "")
    synth_only = first.get("flow") == FLOW_LABEL
    table = Table(title=f"{first['top']} on {first['target']} {first['device']}"
                        + (f", {workload}" if workload else "")
                        + (f" ({FLOW_LABEL}; counted: {first['counted']})" if synth_only
                           else ""))
    table.add_column("config", no_wrap=True)
    for name in ("LUT" if synth_only else "LUT4", "FF", "DSP", "BRAM"):
        table.add_column(name, justify="right")
    table.add_column("Fmax MHz", justify="right")
    table.add_column("cycles", justify="right")
    table.add_column("GOPS", justify="right")
    power = any(r.get("power_w") is not None for r in rows)
    if power:
        table.add_column("W", justify="right")
        table.add_column("GOPS/W", justify="right")
    table.add_column("time s", justify="right")
    table.add_column("status", overflow="fold")

    def cell(value, pct=None, fmt="{:,}"):
        if value is None:
            return ""
        return fmt.format(value) + ("" if pct is None else f" ({pct:.0f}%)")

    for r in rows:
        status = ("error: " + r["error"] if r["fits"] == "" else
                  "does not fit: " + r["overflow"] if r["fits"] == "no" else "ok")
        if r["fits"] == "n/a":
            status = r["error"] or FLOW_LABEL
        if r["fits"] == "yes" and r["error"]:
            status = r["error"]
        values = [f"{r['dataflow']} {r['rows']}x{r['cols']}"]
        values += [cell(r[c], r[f"{c}_pct"]) for c in ("luts", "ffs", "dsps", "brams")]
        values += [cell(r["fmax_mhz"], fmt="{:.1f}"), cell(r["cycles"]),
                   cell(r["gops"], fmt="{:.2f}")]
        if power:
            values += [cell(r["power_w"], fmt="{:.2f}"), cell(r["gops_per_w"], fmt="{:.2f}")]
        values += [cell(r["synth_seconds"], fmt="{:.0f}"), status]
        table.add_row(*values)
    return table


# --------------------------------------------------------------------------------------------
# power

def _add_power_parser(subparsers) -> None:
    from .power import WORKLOADS

    p = subparsers.add_parser(
        "power", help="activity-based power estimate of a synthesized configuration (ECP5)",
        description="Estimate the power of a design from its resources and Fmax (the JSON of "
                    "neuralmatrix synth --json) and the switching activity of its "
                    "configuration measured on the RTL: the compiled digits CNN runs on the "
                    "accelerator under Verilator, which writes a SAIF file of toggle counts "
                    "(cached per configuration). Per-resource energy figures and static power "
                    "are assumed values of the order of Lattice's ECP5 Power Calculator "
                    "(method: Lattice TN1266), uncertain by a factor of two; the low and high "
                    "bounds are printed. See fpga/power.py.")
    p.add_argument("synth_json", metavar="SYNTH_JSON",
                   help="the output of neuralmatrix synth --json (resources, Fmax, device, "
                        "configuration)")
    p.add_argument("--workload", default="digits",
                   help=f"activity workload: {', '.join(WORKLOADS)} (default digits)")
    p.add_argument("--images", type=int, default=2,
                   help="test images of the workload run on the RTL (default 2)")
    p.add_argument("--freq", type=float, default=None, metavar="MHZ",
                   help="clock for the estimate (default: the achieved Fmax)")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="also write the estimate as JSON to FILE")
    p.set_defaults(func=_cmd_power)


def _cmd_power(args) -> int:
    from rich.console import Console

    from .power import estimate_power, measure_activity

    path = Path(args.synth_json)
    try:
        synth = json.loads(path.read_text())
        config = HwConfig(**synth["config"])
        resources, device, top = synth["resources"], synth["device"], synth["top"]
        target, fmax = synth["target"], synth.get("fmax_mhz")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"synth_json: cannot read a neuralmatrix synth --json result from "
                          f"{path}: {exc}") from None
    if target != "ecp5":
        raise ConfigError(f"synth_json: the power model covers ECP5 only, got target {target!r}")
    freq = args.freq if args.freq is not None else fmax
    if freq is None:
        raise ConfigError("freq: the synth result has no Fmax (no place and route); give --freq")
    activity = measure_activity(config, args.workload, images=args.images)
    est = estimate_power(resources, freq, activity, device=device, top=top)
    console = Console(highlight=False)
    console.print(format_power_table(est, f"{top} {config.tag} on ECP5 {device}"))
    a = activity
    console.print(f"activity ({a.workload}, {a.cycles:,} cycles on the RTL): logic {a.logic:.4f}, "
                  f"array {a.array:.4f}, PE/DSP {a.dsp:.4f} toggles/bit/cycle; memory port "
                  f"duty {a.bram:.3f}")
    if args.json:
        out = Path(args.json)
        out.write_text(json.dumps({"synth": str(path), **est.as_dict()}, indent=2) + "\n")
        console.print(f"wrote {out}")
    return 0


def format_power_table(est, title: str):
    """A rich table of a :class:`~neuralmatrix.fpga.power.PowerEstimate`."""
    from rich.table import Table

    table = Table(title=f"{title} at {est.freq_mhz:.1f} MHz")
    table.add_column("part")
    table.add_column("count", justify="right")
    table.add_column("W", justify="right")
    table.add_row("static", "", f"{est.static_w:.3f}")
    for name, watts in est.parts_w.items():
        table.add_row(name, f"{est.counts.get(name, 0):,}", f"{watts:.4f}")
    table.add_row("total", "", f"{est.total_w:.3f}")
    table.add_row("bounds (coefficients /2..x2, static -/+50%)", "",
                  f"{est.low_w:.3f}..{est.high_w:.3f}")
    return table


# --------------------------------------------------------------------------------------------
# cpu-compare

def _add_cpu_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "cpu-compare", help="inferences/s and inferences/s/W: the accelerator vs this CPU",
        description="Measure this machine's CPU with onnxruntime on the built-in networks "
                    "(fp32, int8 dynamic and static quantization; batch 1 and 32, the best "
                    "counted) and compare with the accelerator: the golden model's cycle "
                    "estimate of the compiled network at the Fmax of SYNTH_JSON (neuralmatrix "
                    "synth --top accelerator --json) and the activity-based power model. CPU "
                    "watts: RAPL if readable, else the stated TDP of the CPU (from "
                    "/proc/cpuinfo) shared over the cores used, or --cpu-watts. See "
                    "fpga/cpu.py.")
    p.add_argument("synth_json", metavar="SYNTH_JSON",
                   help="neuralmatrix synth --top accelerator --json result (ECP5)")
    p.add_argument("--models", default="digits,minilm", metavar="LIST",
                   help="networks, comma-separated: digits, minilm (default both)")
    p.add_argument("--seconds", type=float, default=3.0,
                   help="timed CPU run per model, precision and batch size (default 3)")
    p.add_argument("--threads", type=int, default=None,
                   help="onnxruntime intra-op threads (default: every core usable here)")
    p.add_argument("--cpu-watts", type=float, default=None, metavar="W",
                   help="CPU power to charge instead of RAPL or the TDP assumption")
    p.add_argument("--seq-len", type=int, default=16, help="MiniLM sequence length (default 16)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the rows as JSON")
    p.set_defaults(func=_cmd_cpu)


def _cmd_cpu(args) -> int:
    from rich.console import Console

    from .cpu import MODELS, accelerator_result, benchmark_cpu, compare
    from .power import estimate_power, measure_activity
    from .sweep import parse_name_list

    models = parse_name_list(args.models, "models")
    for m in models:
        if m not in MODELS:
            raise ConfigError(f"models must be among {', '.join(MODELS)}, got {m!r}")
    if not args.seconds > 0:
        raise ConfigError(f"seconds must be positive, got {args.seconds}")
    if args.cpu_watts is not None and not args.cpu_watts > 0:
        raise ConfigError(f"cpu-watts must be positive, got {args.cpu_watts}")
    path = Path(args.synth_json)
    try:
        synth = json.loads(path.read_text())
        config = HwConfig(**synth["config"])
        resources, device, fmax = synth["resources"], synth["device"], synth["fmax_mhz"]
        target, top = synth["target"], synth["top"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"synth_json: cannot read a neuralmatrix synth --json result from "
                          f"{path}: {exc}") from None
    if target != "ecp5" or top != "accelerator" or not fmax:
        raise ConfigError(f"synth_json: needs an ECP5 accelerator result with an Fmax, got "
                          f"target {target!r}, top {top!r}, Fmax {fmax!r}")
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    log = lambda line: console.print(line, soft_wrap=True)        # noqa: E731
    activity = measure_activity(config, "digits")
    est = estimate_power(resources, fmax, activity, device=device, top="accelerator")
    log(f"accelerator {config.tag} on ECP5 {device} at {fmax:.1f} MHz: {est.total_w:.3f} W "
        f"(bounds {est.low_w:.3f}..{est.high_w:.3f}; static {est.static_w:.3f})")
    rows = []
    for m in models:
        acc = accelerator_result(m, config, fmax, est, seq_len=args.seq_len)
        log(f"accelerator {m}: {acc.cycles:,} cycles per inference (golden estimate), "
            f"{acc.inferences_per_s:,.1f} inferences/s")
        cpu = benchmark_cpu(m, seconds=args.seconds, threads=args.threads,
                            seq_len=args.seq_len, cpu_watts=args.cpu_watts, log=log)
        rows += compare(acc, cpu)
    console.print(format_cpu_table(rows))
    sources = sorted({r["cpu_w_source"] for r in rows if r["cpu_w_source"]})
    for src in sources:
        log(f"CPU watts: {src}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


def format_cpu_table(rows: list[dict]):
    """A rich table of :func:`neuralmatrix.fpga.cpu.compare` rows."""
    from rich.table import Table

    table = Table(title="Throughput per watt: accelerator (ECP5) vs this CPU (onnxruntime)")
    for name in ("model", "CPU", "CPU inf/s", "CPU W", "CPU inf/s/W", "accel", "accel inf/s",
                 "accel W", "accel inf/s/W", "ratio (bounds)"):
        table.add_column(name, justify="left" if name in ("model", "CPU", "accel") else "right")

    def num(v, fmt="{:,.1f}"):
        return "" if v is None else fmt.format(v)

    for r in rows:
        if r["error"]:
            cpu = [f"{r['cpu_precision']}: {r['error'][:60]}", "", "", ""]
        else:
            cpu = [r["cpu_precision"], f"{num(r['cpu_inf_s'])} (b{r['cpu_batch']})",
                   num(r["cpu_w"], "{:.2f}"), num(r["cpu_inf_s_w"])]
        ratio = "" if r["ratio"] is None else \
            f"{r['ratio']:.2f}x ({r['ratio_low']:.2f}..{r['ratio_high']:.2f})"
        table.add_row(r["model"], *cpu, r["acc_config"], num(r["acc_inf_s"]),
                      num(r["acc_w"], "{:.3f}"), num(r["acc_inf_s_w"]), ratio)
    return table


# --------------------------------------------------------------------------------------------
# bitstream

def _add_bitstream_parser(subparsers) -> None:
    d = HwConfig()
    p = subparsers.add_parser(
        "bitstream", help="build the board bitstream: accelerator + UART host link (ULX3S)",
        description="Build the bitstream of the accelerator with on-chip memory and the UART "
                    "host link (fpga/board.py; protocol and host script: fpga/host.py) for a "
                    "board, with amaranth-boards' platform and the yowasp Yosys, nextpnr-ecp5 "
                    "and ecppack. Prints the .bit path.")
    p.add_argument("--board", default="ulx3s", help="board: ulx3s (default)")
    p.add_argument("--device", default="85F", help="ULX3S variant: 12F, 25F, 45F, 85F "
                                                   "(default 85F)")
    p.add_argument("--rows", type=int, default=d.rows,
                   help=f"array rows ({HwConfig.describe('rows')}; default {d.rows})")
    p.add_argument("--cols", type=int, default=d.cols,
                   help=f"array columns ({HwConfig.describe('cols')}; default {d.cols})")
    p.add_argument("--dataflow", default=d.dataflow, help="ws or os (default ws)")
    p.add_argument("--mem-kib", type=int, default=64,
                   help="on-chip memory for program and data, KiB, a power of two (default 64)")
    p.add_argument("--baud", type=int, default=115200, help="UART baud rate (default 115200)")
    p.add_argument("--seed", type=int, default=1, help="nextpnr placement seed (default 1)")
    _add_router_option(p)
    p.add_argument("--out", default="build-ulx3s", metavar="DIR",
                   help="build directory (default build-ulx3s)")
    p.set_defaults(func=_cmd_bitstream)


def _cmd_bitstream(args) -> int:
    from .board import build_bitstream
    from .synth import ToolMissing

    config = HwConfig(rows=args.rows, cols=args.cols, dataflow=args.dataflow)
    try:
        bit = build_bitstream(config, args.out, board=args.board, device=args.device,
                              mem_bytes=args.mem_kib * 1024, baud=args.baud, seed=args.seed,
                              router=args.router)
    except ToolMissing as exc:
        print(f"neuralmatrix bitstream: error: {exc}", file=sys.stderr)
        return EXIT_TOOL_FAILED
    except Exception as exc:          # the build script failed; its log is in the directory
        print(f"neuralmatrix bitstream: error: {type(exc).__name__}: {exc} (logs in "
              f"{args.out})", file=sys.stderr)
        return EXIT_TOOL_FAILED
    print(f"bitstream: {bit}")
    return 0
