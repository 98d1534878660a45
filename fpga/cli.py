"""The ``neuralmatrix synth`` subcommand: FPGA resources and Fmax of a generated top.

``sw/cli.py`` registers it with :func:`add_parser`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from neuralmatrix.hw.params import ConfigError, HwConfig

from .synth import (DEFAULT_DEVICE, DEFAULT_FREQ_MHZ, DEVICES, DoesNotFit, SynthError,
                    SynthResult, check_parameters, synthesize)

__all__ = ["add_parser", "format_table", "format_notes"]

# Exit codes besides 0 and the 2 that main() returns for a bad parameter.
EXIT_TOOL_FAILED = 1
EXIT_DOES_NOT_FIT = 3


def add_parser(subparsers) -> None:
    """Register ``synth`` on *subparsers* (the object ``add_subparsers`` returned)."""
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
                   help="FPGA family: ecp5 or ice40 (default ecp5)")
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
    p.add_argument("--json", metavar="FILE", default=None,
                   help="also write every figure as JSON to FILE ('-' for standard output; "
                        "the table then goes to standard error)")
    p.add_argument("--workdir", metavar="DIR", default=None,
                   help="keep the Verilog, netlist and logs in DIR (default: a new temporary "
                        "directory, printed at the end)")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="wall-time budget of the whole run (default 3600)")
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args) -> int:
    config = HwConfig(rows=args.rows, cols=args.cols, dataflow=args.dataflow)
    check_parameters(config, args.target, args.device, args.top, args.freq, args.seed, args.timeout)
    out = None
    if args.json not in (None, "-"):
        out = Path(args.json)
        if not out.parent.is_dir():
            raise ConfigError(f"json: directory {out.parent} does not exist")
    try:
        result = synthesize(config, target=args.target, device=args.device, top=args.top,
                            freq_mhz=args.freq, workdir=args.workdir, seed=args.seed,
                            timeout_s=args.timeout)
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

    table = Table(title=f"{result.top} {result.config.tag} on {result.part}-{result.package}")
    table.add_column("resource")
    table.add_column("used", justify="right")
    table.add_column("device", justify="right")
    table.add_column("%", justify="right")
    for key, used in result.resources.items():
        cap = result.capacity.get(key)
        pct = result.utilization.get(key)
        table.add_row(key, f"{used:,}", "" if cap is None else f"{cap:,}",
                      "" if pct is None else f"{pct:.1f}")
    fmax = "n/a" if result.fmax_mhz is None else f"{result.fmax_mhz:.2f} MHz"
    table.add_section()
    table.add_row("Fmax", fmax, f"target {result.freq_mhz:g} MHz", "")
    return table


def format_notes(result: SynthResult) -> list[str]:
    """Lines printed under the table: seed, time per step, where the files are, the shim."""
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    lines = [f"seed {result.seed}; time: {steps}", f"files: {result.workdir}"]
    if result.io_shim is not None:
        lines.append(f"I/O shim: {result.io_shim['inputs']} input + {result.io_shim['outputs']} "
                     f"output bits, serialised; not in the counts above, in the Fmax")
    return lines
