"""The ``neuralmatrix`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from neuralmatrix.hw.params import ConfigError, HwConfig

__all__ = ["main"]


def _add_hw_options(parser: argparse.ArgumentParser) -> None:
    d = HwConfig()
    parser.add_argument("--rows", type=int, default=d.rows,
                        help=f"systolic array rows ({HwConfig.describe('rows')}; default {d.rows})")
    parser.add_argument("--cols", type=int, default=d.cols,
                        help=f"systolic array columns ({HwConfig.describe('cols')}; default {d.cols})")
    parser.add_argument("--dataflow", default=str(d.dataflow),
                        help="ws = weight-stationary, os = output-stationary "
                             f"(default {d.dataflow})")


def _config(args) -> HwConfig:
    multipliers = getattr(args, "multipliers", HwConfig().multipliers)
    budget = None
    if multipliers == "auto":
        budget = args.dsp_budget if args.dsp_budget is not None else args.dsp_budget_default
    if multipliers != "auto" and getattr(args, "dsp_budget", None) is not None:
        raise ConfigError(f"dsp-budget applies to --multipliers auto only, got --multipliers "
                          f"{multipliers} with --dsp-budget {args.dsp_budget}")
    return HwConfig(rows=args.rows, cols=args.cols, dataflow=args.dataflow,
                    multipliers=multipliers, dsp_budget=budget)


def _cmd_verilog(args) -> int:
    from neuralmatrix.hw.generate import TOPS, generate_verilog

    if args.top not in TOPS:
        raise ConfigError(f"top must be one of {', '.join(TOPS)}, got {args.top!r}")
    config = _config(args)          # validated before anything is written
    text = generate_verilog(config, args.top)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        out = Path(args.output)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)
        print(f"wrote {out} ({config.tag}, top {args.top}, {len(text.splitlines())} lines)",
              file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuralmatrix",
        description="Generate, simulate and measure the NeuralMatrix int8 GEMM accelerator.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("verilog", help="write the Verilog of the generated hardware",
                       description="Write the Verilog of the generated hardware. The output is "
                                   "byte-identical for identical options.")
    _add_hw_options(p)
    p.add_argument("--top", default="array",
                   help="which design to emit: array = the systolic array with its stream ports; "
                        "accelerator = the whole accelerator with its memory port (default array)")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="output Verilog file ('-' for standard output)")
    from neuralmatrix.fpga.cli import add_multipliers_option
    from neuralmatrix.fpga.synth import DEVICES

    budget = DEVICES["ecp5"]["85k"].dsp_blocks
    add_multipliers_option(p, "--dsp-budget allows")
    p.add_argument("--dsp-budget", type=int, default=None, metavar="N",
                   help=f"--multipliers auto: DSP blocks the top may use (default {budget}, "
                        f"the ECP5-85k's MULT18X18D)")
    p.set_defaults(dsp_budget_default=budget)
    p.set_defaults(func=_cmd_verilog)

    from neuralmatrix.fpga.cli import add_parser as add_synth_parser
    from neuralmatrix.sim import run_cmd
    from neuralmatrix.sw import compiler, pwl

    compiler.add_parser(sub)
    run_cmd.add_parser(sub)
    sub.add_parser("accuracy", add_help=False,
                   help="accuracy of compiled networks on the golden model against the float "
                        "models (digits, minilm, efficientnet-lite0, onnx-cases, pwl; "
                        "'neuralmatrix accuracy -h' for its options)")
    pwl.add_parser(sub)
    add_synth_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["accuracy"]:                 # its own parser (sw/accuracy.py)
        from neuralmatrix.sw.accuracy import main as accuracy_main

        return accuracy_main(argv[1:], prog="neuralmatrix accuracy")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"neuralmatrix {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
