"""The compiler driver and ``neuralmatrix compile``.

ONNX -> :mod:`~neuralmatrix.sw.frontend` (static, folded, every unsupported op reported at
once) -> :mod:`~neuralmatrix.sw.quantize` (calibration) -> :mod:`~neuralmatrix.sw.lower`
(kernels, PWL tables, host transfers) -> :mod:`~neuralmatrix.sw.codegen` (layout, programs,
image) -> a report per layer.

The output directory holds ``image.bin`` (the initial external memory: constants and
programs), ``program.bin`` (every kernel's program, back to back), ``network.json`` (tensors,
layouts, steps, program addresses), ``transfers.npz`` (host gather indices), ``quant.json``
(scales, requantization, PWL tables), ``report.json`` and ``report.txt``. It is written to a
temporary directory first and renamed, so a failed compile leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neuralmatrix.hw.params import HwConfig

from .codegen import Compiled, codegen
from .frontend import FrontendError, load_model
from .ir import Kernel, Lookup, Transfer
from .lower import LinearizeError, linearize
from .macs import account, figures, model_macs, percentages
from .quantize import METHODS, calibrate

__all__ = ["CompileError", "Compilation", "BUILTIN_MODELS", "compile_model", "report",
           "write_output", "format_report", "add_parser"]

BUILTIN_MODELS = ("digits", "minilm", "efficientnet-lite0")


class CompileError(ValueError):
    """A model that cannot be compiled for this hardware (names the layer and the reason)."""


@dataclass
class Compilation:
    compiled: Compiled
    report: dict
    seconds: float
    model: object          # the frontend's onnx.ModelProto


def _random_feeds(model, n: int = 4, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    init = {i.name for i in model.graph.initializer}
    feeds = []
    for _ in range(n):
        f = {}
        for vi in model.graph.input:
            if vi.name in init:
                continue
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            f[vi.name] = rng.standard_normal(shape).astype(np.float32)
        feeds.append(f)
    return feeds


def builtin(name: str, *, seq_len: int = 16):
    """``(model, calibration feeds, input_shapes)`` of a built-in model."""
    if name == "digits":
        from .models.digits import MODEL_PATH, load_split

        x, _ = load_split("train")
        return str(MODEL_PATH), [{"input": x[i:i + 1]} for i in range(0, 256)], {"input": (1, 1, 8, 8)}
    if name == "minilm":
        from .models import minilm

        try:
            feeds = minilm.calibration_feeds(seq_len)     # disjoint from the test sentences
            return minilm.load_onnx(seq_len), feeds, {k: (1, seq_len) for k in feeds[0]}
        except ModuleNotFoundError as exc:                # the weights' package is missing
            if exc.name != minilm.PACKAGE:
                raise
            raise CompileError(str(exc)) from None
    if name == "efficientnet-lite0":
        from .models import efficientnet_lite0 as eff
        from .models.photos import calibration_images

        x = calibration_images()                       # photos disjoint from the test photos
        feeds = [{eff.INPUT_NAME: x[i:i + 1]} for i in range(len(x))]
        return eff.load_onnx(), feeds, {eff.INPUT_NAME: (1, 3, eff.IMAGE_SIZE, eff.IMAGE_SIZE)}
    raise CompileError(f"unknown built-in model {name!r}; built-in: {', '.join(BUILTIN_MODELS)}")


def compile_model(src, config: HwConfig, *, calib_feeds: list[dict] | None = None,
                  input_shapes: dict | None = None, segments: int = 16,
                  calibration: str = "max", pwl_method: str = "curvature",
                  func_segments: dict | None = None) -> Compilation:
    """Compile an ONNX model (path or ModelProto) for *config*.

    Raises FrontendError (unreadable model, unsupported operators: all listed),
    LinearizeError (an operator use the lowering cannot map, naming the node) or
    CompileError (calibration failed, e.g. a tensor that is not finite on the feeds; or a
    layer that does not fit the hardware, naming the layer and kernel). Nothing else: a
    failure inside a phase is reported as that phase's error, the original as ``__cause__``.
    """
    t0 = time.perf_counter()
    marks = [t0]
    model = load_model(src, input_shapes=input_shapes)
    marks.append(time.perf_counter())
    feeds = calib_feeds if calib_feeds else _random_feeds(model)
    try:
        ranges = calibrate(model, feeds)
    except Exception as exc:  # noqa: BLE001 - the float model failed on the feeds
        msg = str(exc) if str(exc).startswith("calibration") else \
            f"calibration failed: {type(exc).__name__}: {exc}"
        raise CompileError(msg) from exc
    marks.append(time.perf_counter())
    net = linearize(model, config, ranges, segments=segments, calibration=calibration,
                    pwl_method=pwl_method, func_segments=func_segments)
    try:
        account(net, model_macs(model))
    except ValueError as exc:
        raise CompileError(f"MAC accounting: {exc}") from exc
    marks.append(time.perf_counter())
    try:
        compiled = codegen(net, config)
        marks.append(time.perf_counter())
        rep = report(compiled)
    except Exception as exc:  # noqa: BLE001 - codegen names the layer and kernel it can
        raise CompileError(f"code generation failed: {exc}") from exc
    seconds = marks[-1] - t0
    rep["compile_seconds"] = round(seconds, 3)
    rep["phase_seconds"] = {phase: round(b - a, 3) for phase, a, b in zip(
        ("frontend", "calibration", "linearization", "codegen"), marks, marks[1:])}
    rep["calibration"] = {"method": calibration, "samples": len(feeds),
                          "data": "given" if calib_feeds else "random normal (no data given)"}
    return Compilation(compiled, rep, seconds, model)


def report(c: Compiled) -> dict:
    """Per-kernel and per-layer figures and totals (see ``format_report``).

    Every kernel, layer and the totals carry the figures of :mod:`neuralmatrix.sw.macs`
    (``executed_macs``, ``useful_macs``, ``linearization_macs``, ``padding_macs``,
    ``utilization_pct``, ``occupancy_pct``), the percentages on the golden model's cycle
    estimate ``est_cycles``; ``linearization_pct`` is ``100 * linearization_macs /
    useful_macs`` (the extra work linearization costs; None without useful MACs)."""
    cfg = c.config
    peak = cfg.rows * cfg.cols
    kernels, layers = [], {}
    host_bytes = 0
    for s in c.steps:
        if isinstance(s, (Transfer, Lookup)):
            host_bytes += s.bytes
            lay = layers.setdefault(s.origin or s.name, _layer(s.origin or s.name))
            lay["host_bytes"] += s.bytes
            continue
        kc = c.code[id(s)]
        K = sum(t.b.rows for t in s.terms)
        useful, lin = _kernel_figures(s)
        row = {"name": s.name, "layer": s.origin, "role": s.role, "M": s.out.rows, "K": K,
               "N": s.out.cols, "terms": len(s.terms),
               **figures(kc.macs, useful, lin, kc.est_cycles, peak),
               "pwl": s.func if s.pwl is not None else "",
               "segments": int(s.pwl.fitted_segments) if s.pwl is not None else 0,
               "est_cycles": kc.est_cycles, "insns": len(kc.program)}
        kernels.append(row)
        lay = layers.setdefault(s.origin or s.name, _layer(s.origin or s.name))
        lay["kernels"] += 1
        for f in _MAC_FIGURES:
            lay[f] += row[f]
        lay["est_cycles"] += kc.est_cycles
        if row["pwl"]:
            lay["pwl"] = sorted(set(lay["pwl"]) | {f"{row['pwl']}/{row['segments']}"})
    for lay in layers.values():
        lay |= _percentages(lay, peak)
    sums = {f: sum(k[f] for k in kernels) for f in _MAC_FIGURES}
    cycles = sum(k["est_cycles"] for k in kernels)
    totals = {"kernels": len(kernels), "layers": len(layers), **sums,
              **_percentages(sums | {"est_cycles": cycles}, peak),
              "linearization_pct": round(100.0 * sums["linearization_macs"]
                                         / sums["useful_macs"], 3) if sums["useful_macs"] else None,
              "est_cycles": cycles,
              "host_bytes_moved": host_bytes,
              "host_arithmetic": ["quantize the network inputs", "dequantize the outputs"],
              "dram_bytes": c.dram_bytes,
              "program_bytes": sum(kc.size for kc in c.code.values()),
              "pwl_tables": sum(1 for k in kernels if k["pwl"])}
    return {"config": {"rows": cfg.rows, "cols": cfg.cols, "dataflow": cfg.dataflow.value,
                       "sp_depth": cfg.sp_depth, "acc_depth": cfg.acc_depth,
                       "bus_bytes": cfg.bus_bytes, "pwl_segments": cfg.pwl_segments},
            "layers": list(layers.values()), "kernels": kernels, "totals": totals,
            "notes": list(c.network.notes)}


_MAC_FIGURES = ("executed_macs", "useful_macs", "linearization_macs", "padding_macs")


def _kernel_figures(k: Kernel) -> tuple[int, int]:
    """``(useful_macs, linearization_macs)`` of a kernel (set by :func:`macs.account`)."""
    if k.useful_macs is None or k.linearization_macs is None:
        raise ValueError(f"kernel {k.name!r}: no MAC accounting (neuralmatrix.sw.macs.account "
                         f"was not run on its network)")
    return k.useful_macs, k.linearization_macs


def _percentages(fig: dict, peak: int) -> dict:
    return percentages(fig["executed_macs"], fig["useful_macs"], fig["est_cycles"], peak)


def _layer(name: str) -> dict:
    return {"layer": name, "kernels": 0, **{f: 0 for f in _MAC_FIGURES},
            "est_cycles": 0, "host_bytes": 0, "pwl": []}


def format_report(rep: dict, console=None) -> None:
    """The per-layer table and the totals, on a rich console."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    cfg = rep["config"]
    t = Table(title=f"per layer ({cfg['rows']}x{cfg['cols']} {cfg['dataflow']}; "
                    f"utilization = useful MACs, occupancy = executed MACs, over est. cycles "
                    f"x {cfg['rows'] * cfg['cols']} PEs)")
    heads = ("layer", "kernels", "useful MACs", "linearization MACs", "padding MACs",
             "executed MACs", "est. cycles", "util %", "occup %", "PWL (func/segments)",
             "host bytes")
    for col in heads:
        t.add_column(col, justify="left" if col in ("layer", "PWL (func/segments)") else "right")
    for lay in rep["layers"]:
        pct = ["" if lay[p] is None else f"{lay[p]:.1f}" for p in ("utilization_pct", "occupancy_pct")]
        t.add_row(lay["layer"], str(lay["kernels"]), f"{lay['useful_macs']:,}",
                  f"{lay['linearization_macs']:,}", f"{lay['padding_macs']:,}",
                  f"{lay['executed_macs']:,}", f"{lay['est_cycles']:,}", *pct,
                  ", ".join(lay["pwl"]), f"{lay['host_bytes']:,}")
    console.print(t)
    tot = rep["totals"]
    console.print(
        f"kernels {tot['kernels']}, useful MACs {tot['useful_macs']:,}, linearization MACs "
        f"{tot['linearization_macs']:,} ({tot['linearization_pct']}% of useful), padding MACs "
        f"{tot['padding_macs']:,}, executed {tot['executed_macs']:,}; estimated cycles "
        f"{tot['est_cycles']:,}: utilization {tot['utilization_pct']}%, occupancy "
        f"{tot['occupancy_pct']}%; host data movement {tot['host_bytes_moved']:,} bytes, "
        f"external memory {tot['dram_bytes']:,} bytes")


def _manifest(c: Compiled) -> tuple[dict, dict, dict]:
    names: dict[int, str] = {}
    tensors = []
    seen = set()

    def tname(t):
        if id(t) not in names:
            names[id(t)] = t.name
        if id(t) not in seen:
            seen.add(id(t))
            lay = c.layout(t)
            tensors.append({"name": t.name, "rows": t.rows, "cols": t.cols, "elem": t.elem,
                            "scale": t.scale, "const": t.const, "shape": list(t.shape),
                            "perm": list(t.perm), "addr": lay.addr, "pitch": lay.pitch,
                            "panel": lay.panel, "panel_stride": lay.panel_stride,
                            "view_of": t.base.name if t.base is not None else None,
                            "colscale": None if t.colscale is None else
                            [int(v) for v in t.colscale]})
        return names[id(t)]

    steps, index, quant = [], {}, {"tensors": {}, "kernels": {}}
    for name, t in c.network.inputs.items():
        if t is not None:
            tname(t)
    for i, s in enumerate(c.steps):
        if isinstance(s, Transfer):
            key = f"t{i}"
            index[key] = s.index
            steps.append({"kind": "transfer", "name": s.name, "layer": s.origin,
                          "srcs": [tname(t) for t in s.srcs], "out": tname(s.out), "index": key})
        elif isinstance(s, Lookup):
            steps.append({"kind": "lookup", "name": s.name, "layer": s.origin,
                          "table": tname(s.table), "ids": s.ids, "out": tname(s.out)})
        else:
            kc = c.code[id(s)]
            steps.append({"kind": "kernel", "name": s.name, "layer": s.origin, "role": s.role,
                          "terms": [[tname(t.a), tname(t.b)] for t in s.terms],
                          "out": tname(s.out), "program_addr": kc.addr, "program_bytes": kc.size,
                          "plan": kc.plan})
            k = {"mult": s.mult.tolist(), "shift": s.shift.tolist(),
                 "bias": None if s.bias is None else np.asarray(s.bias).tolist()}
            if s.pwl is not None:
                p = s.pwl
                k["pwl"] = {"function": s.func, "mode": int(p.mode), "out_shift": int(p.out_shift),
                            "bp": p.bp.tolist(), "k": p.k.tolist(), "b": p.b.tolist(),
                            "in_scale": p.in_scale, "out_scale": p.out_scale,
                            "range": [p.lo, p.hi]}
            quant["kernels"][s.name] = k
    for t in tensors:
        quant["tensors"][t["name"]] = t["scale"]
    man = {"config": c.config.__dict__ | {"dataflow": c.config.dataflow.value},
           "dram_bytes": c.dram_bytes, "regions": c.regions,
           "inputs": {k: (names.get(id(v)) if v is not None else None)
                      for k, v in c.network.inputs.items()},
           "outputs": {k: tname(v) for k, v in c.network.outputs.items()},
           "tensors": tensors, "steps": steps}
    return man, index, quant


def _savez_fast(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` at zlib level 1: the same ``.npz`` for ``np.load``, written about
    10x faster (MiniLM-L6 at 128 tokens, 61 MB of int64 indices: 0.4 s instead of 4.5 s, 10.0 MB
    instead of 9.9 MB)."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)


def write_output(comp: Compilation, out_dir) -> Path:
    """Write every artefact into *out_dir* atomically (all or nothing)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(0o755)
        c = comp.compiled
        (tmp / "image.bin").write_bytes(c.image.tobytes())
        blobs = [c.image[kc.addr:kc.addr + kc.size].tobytes()
                 for kc in sorted(c.code.values(), key=lambda k: k.addr)]
        (tmp / "program.bin").write_bytes(b"".join(blobs))
        man, index, quant = _manifest(c)
        (tmp / "network.json").write_text(json.dumps(man, indent=1, default=str))
        _savez_fast(tmp / "transfers.npz", index)
        (tmp / "quant.json").write_text(json.dumps(quant, indent=1))
        (tmp / "report.json").write_text(json.dumps(comp.report, indent=1))
        from rich.console import Console

        with open(tmp / "report.txt", "w") as fh:
            format_report(comp.report, Console(file=fh, width=160, color_system=None))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# -- command line --------------------------------------------------------------------------------

def _load_feeds(path: str, model_path) -> list[dict]:
    p = Path(path)
    if not p.exists():
        raise CompileError(f"calibration data {path}: no such file")
    if p.suffix == ".npz":
        data = np.load(p)
        n = min(len(data[k]) for k in data.files)
        return [{k: data[k][i:i + 1] for k in data.files} for i in range(n)]
    if p.suffix == ".npy":
        import onnx

        m = onnx.load(model_path, load_external_data=False) if not hasattr(model_path, "graph") \
            else model_path
        init = {i.name for i in m.graph.initializer}
        name = next(i.name for i in m.graph.input if i.name not in init)
        x = np.load(p)
        return [{name: x[i:i + 1]} for i in range(len(x))]
    raise CompileError(f"calibration data must be .npy or .npz, got {path}")


def _parse_func_segments(text: str | None) -> dict[str, int] | None:
    """``"exp=16,gelu=8"`` -> ``{"exp": 16, "gelu": 8}`` (kinds are checked by the linearizer)."""
    if not text:
        return None
    out = {}
    for item in text.split(","):
        kind, sep, n = item.strip().partition("=")
        if not sep or not kind or not n.strip().isdigit():
            raise CompileError(f"--func-segments: expected KIND=N[,KIND=N...], got {item!r}")
        out[kind.strip().lower()] = int(n)
    return out


def _parse_shapes(items) -> dict:
    out = {}
    for item in items or []:
        name, _, dims = item.partition("=")
        try:
            out[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise CompileError(f"--input-shape must look like name=1x3x224x224, got {item!r}") from None
    return out


def add_parser(sub) -> argparse.ArgumentParser:
    from .cli import _add_hw_options

    p = sub.add_parser(
        "compile", help="compile an ONNX model into accelerator programs and a memory image",
        description="Compile an ONNX model (or a built-in one: digits, minilm, efficientnet-lite0) into int8 "
                    "programs for the accelerator: every layer becomes GEMM kernels and PWL "
                    "tables. Writes the program, the memory image, the quantization "
                    "parameters and a per-layer report to DIR.")
    p.add_argument("model", help="MODEL.onnx, or a built-in model: digits, minilm, efficientnet-lite0")
    _add_hw_options(p)
    p.add_argument("--segments", type=int, default=16,
                   help="PWL segments per nonlinear function (1..pwl_segments; default 16)")
    p.add_argument("--func-segments", default=None, metavar="KIND=N[,KIND=N...]",
                   help="segments for some function kinds instead of --segments, e.g. "
                        "exp=16,gelu=8 (kinds: activation op names in lower case, and exp, log, "
                        "rsqrt, square, reciprocal, relu of softmax, LayerNorm, products, "
                        "division and max trees)")
    p.add_argument("--calibration", default="max", choices=METHODS,
                   help="activation threshold method (default max)")
    p.add_argument("--pwl-method", default="curvature", choices=("uniform", "curvature", "error"),
                   help="PWL breakpoint placement (default curvature)")
    p.add_argument("--calib-data", metavar="FILE",
                   help="calibration inputs: .npy (first input, batch on axis 0) or .npz (one "
                        "array per input); default: the built-in model's data, else random")
    p.add_argument("--input-shape", action="append", metavar="NAME=DIMS",
                   help="static shape of an input with dynamic dimensions, e.g. input=1x3x224x224")
    p.add_argument("--seq-len", type=int, default=16, help="minilm: tokens per sentence (default 16)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    p.set_defaults(func=_cmd_compile)
    return p


def _cmd_compile(args) -> int:
    from rich.console import Console

    from .cli import _config

    config = _config(args)
    console = Console(stderr=True)
    try:
        if args.model in BUILTIN_MODELS:
            src, feeds, shapes = builtin(args.model, seq_len=args.seq_len)
        else:
            src, feeds, shapes = args.model, None, _parse_shapes(args.input_shape)
            if not Path(src).exists():
                raise CompileError(f"{src}: no such file")
        if args.calib_data:
            feeds = _load_feeds(args.calib_data, src)
        comp = compile_model(src, config, calib_feeds=feeds, input_shapes=shapes,
                             segments=args.segments, calibration=args.calibration,
                             pwl_method=args.pwl_method,
                             func_segments=_parse_func_segments(args.func_segments))
        out = write_output(comp, args.output)
    except (FrontendError, LinearizeError, CompileError) as exc:
        print(f"neuralmatrix compile: error: {exc}", file=sys.stderr)
        return 2
    format_report(comp.report, console)
    console.print(f"compiled in {comp.seconds:.2f} s; wrote {out}/")
    return 0
