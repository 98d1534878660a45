"""ONNX's own node test cases through the whole compiler, on the golden model.

``python -m neuralmatrix.sw.accuracy onnx-node [--json FILE] [--markdown FILE]`` (or
:func:`main` here) builds ONNX's node test cases in memory
(``onnx.backend.test.case.node.collect_testcases``, offline; one model, its inputs and its
expected outputs per case), and for every case:

1. **Classifies what the case is** (:func:`prepare_case`). A case is *skipped*, and counted
   under its reason, when an input or an expected output is not ``float32``
   (``not float32``: integer/bool outputs, double, float16, ...); when its graph has no
   float input left once parameters are baked (``no float data input``); when an expected
   output is not finite; or when its ops, after the frontend's folding, are not all in
   the compiler's supported-op list (``unsupported op``, naming the ops).
2. **Makes it compilable** the way a compiler for constant weights needs it: every graph
   input an op needs constant is baked into an initializer from the case's own data:
   every non-float input (shapes, axes, pads, indices, conditions) and the float
   parameter positions of :data:`PARAM_INPUTS` (Conv/Gemm weights and bias, Clip bounds,
   BatchNorm statistics, LayerNorm scale/bias, PRelu slope, Pad value, Pow exponent).
   The other float inputs stay graph inputs (MatMul, Add, Mul, ... of two activations).
   ``*_expanded`` cases (the op's function body as a graph) bake the same inputs as the
   case they expand. Models written at an opset newer than the frontend reads are
   converted down with ``onnx.version_converter`` (to the frontend's newest opset).
3. **Compiles** it (:func:`neuralmatrix.sw.compiler.compile_model`, a small
   :class:`~neuralmatrix.hw.params.HwConfig`), **calibrated on the case's own input** (the
   test input itself: the only data a node case has; this is not the accuracy contract's
   held-out calibration, so read the table as "does the lowering compute the op", not as
   an accuracy figure), runs it on the golden model and compares every output with the
   case's expected output.

**Tolerance.** The int8 rule of ``accuracy onnx-cases`` (:data:`~neuralmatrix.sw.accuracy.
TOL_LSB` steps), with the step taken from the expected output's own range: an output passes
when ``max |golden - expected| <= TOL_LSB * max|expected| / 127`` (4/127 = 3.15% of the
output's largest magnitude; an all-zero expected output takes the compiled output's scale
as its step). ``err_lsb`` in a row is the worst output's error in those steps.

**Outcomes.** ``pass``; ``fail`` (compiled and ran, numbers outside the tolerance);
``compile error`` (a project error: :func:`project_errors`; or the opset conversion of the
case failed); ``crash`` (any other exception: a bug, reported with its type, never
swallowed silently); ``skipped`` (see 1). The per-op table groups the cases by the op the
case tests (the node of a single-node case, the expanded op of an ``*_expanded`` case) and
lists every non-pass reason, grouped (numbers normalized so one reason is one line).

The supported-op list is read through :func:`supported_ops` and the error classes through
:func:`project_errors`: one place each to repoint when the frontend or lowering moves.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from neuralmatrix.hw.params import HwConfig

__all__ = ["PARAM_INPUTS", "STATUSES", "supported_ops", "project_errors", "frontend_max_opset",
           "tolerance_step", "within_tolerance", "node_cases", "prepare_case", "Prepared",
           "Skip", "run_case", "conformance", "to_markdown", "print_table", "main"]

#: Float input positions (ONNX input index) that are parameters of the op: baked into
#: initializers from the case's data. Non-float inputs are always baked.
PARAM_INPUTS: dict[str, frozenset[int]] = {
    "Conv": frozenset({1, 2}), "ConvTranspose": frozenset({1, 2}),
    "Gemm": frozenset({1, 2}),
    "BatchNormalization": frozenset({1, 2, 3, 4}),
    "LayerNormalization": frozenset({1, 2}), "InstanceNormalization": frozenset({1, 2}),
    "GroupNormalization": frozenset({1, 2}),
    "PRelu": frozenset({1}), "Clip": frozenset({1, 2}), "Pad": frozenset({2}),
    "Pow": frozenset({1}), "CausalConvWithState": frozenset({1, 2}),
}
#: Row outcomes, in table order.
STATUSES = ("pass", "fail", "compile error", "crash", "skipped")


# -- the public entry points this harness depends on (one place to repoint each) -------------

def supported_ops() -> frozenset[str]:
    """The compiler's supported ONNX ops (today ``neuralmatrix.sw.frontend.SUPPORTED_OPS``)."""
    from neuralmatrix.sw.frontend import SUPPORTED_OPS

    return frozenset(SUPPORTED_OPS)


def project_errors() -> tuple[type[BaseException], ...]:
    """The compiler's own error classes: a compile that raises one of these failed cleanly
    (``CompileError``, ``FrontendError`` with ``UnsupportedOpsError``, ``LinearizeError``)."""
    from neuralmatrix.sw.compiler import CompileError
    from neuralmatrix.sw.frontend import FrontendError
    from neuralmatrix.sw.lower import LinearizeError

    return (CompileError, FrontendError, LinearizeError)


def frontend_max_opset() -> int:
    """Newest default-domain opset the frontend reads as is (21 today)."""
    from neuralmatrix.sw import frontend

    return int(getattr(frontend, "MAX_OPSET", 21))


# -- tolerance ----------------------------------------------------------------------------

def tolerance_step(expected: np.ndarray, compiled_scale: float) -> float:
    """One int8 step of the expected output's range: ``max|expected| / 127``; the compiled
    output's scale when the expected output is all zeros."""
    peak = float(np.max(np.abs(expected))) if expected.size else 0.0
    return peak / 127.0 if peak > 0 else float(compiled_scale)


def within_tolerance(got: np.ndarray, expected: np.ndarray, compiled_scale: float,
                     tol_lsb: float | None = None) -> tuple[bool, float]:
    """``(passes, error in steps)`` of one output under the module's tolerance rule."""
    if tol_lsb is None:
        from neuralmatrix.sw.accuracy import TOL_LSB as tol_lsb
    got = np.asarray(got, dtype=np.float64).reshape(expected.shape)
    step = tolerance_step(expected, compiled_scale)
    err = float(np.max(np.abs(got - expected))) if expected.size else 0.0
    if not np.isfinite(err):
        return False, float("inf")
    steps = err / step if step > 0 else (0.0 if err == 0 else float("inf"))
    return steps <= tol_lsb, steps


# -- the cases ---------------------------------------------------------------------------

_CASES = None


def node_cases() -> list:
    """ONNX's node test cases (``collect_testcases(None)``), built once per process."""
    global _CASES
    if _CASES is None:
        from onnx.backend.test.case.node import collect_testcases

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with np.errstate(all="ignore"):
                _CASES = list(collect_testcases(None))
    return _CASES


class Skip(Exception):
    """A case outside the harness's scope; ``str()`` is the grouped reason."""


@dataclass
class Prepared:
    """A case made compilable: the model, its feeds and the expected outputs."""

    name: str
    op: str
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    baked: list[str] = field(default_factory=list)
    converted_from: int | None = None


def _case_op(case, by_name: dict) -> tuple[str, onnx.NodeProto | None]:
    """The op a case tests and its node (the expanded op's node for ``*_expanded``)."""
    base = re.sub(r"_expanded(_ver\d+)?$", "", case.name)
    src = by_name.get(base, case) if base != case.name else case
    nodes = [n for n in src.model.graph.node if n.op_type != "Constant"] or list(src.model.graph.node)
    if len(nodes) == 1:
        return nodes[0].op_type, nodes[0]
    if base != case.name:                                       # no base case: name it
        return base.removeprefix("test_"), None
    return "+".join(sorted({n.op_type for n in nodes})), None


def _dtype_name(a: np.ndarray) -> str:
    return str(a.dtype) if a.dtype.kind != "V" else "custom"


def _all_ops(graph: onnx.GraphProto) -> set[str]:
    ops = set()
    for n in graph.node:
        ops.add(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}:{n.op_type}")
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                ops |= _all_ops(a.g)
            for g in a.graphs:
                ops |= _all_ops(g)
    return ops


def prepare_case(case, by_name: dict | None = None) -> Prepared:
    """Bake a case's parameter inputs, convert its opset; raise :class:`Skip` if out of scope.

    Raises
    ------
    Skip
        Not float32, no float data input, non-finite expected output, or (judged on the raw
        graph, before folding) an op of another domain or a control-flow op.
    ValueError
        The opset conversion failed (``onnx.version_converter``); the message says so.
    """
    by_name = by_name if by_name is not None else {c.name: c for c in node_cases()}
    op, node = _case_op(case, by_name)
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    graph = model.graph
    if not case.data_sets:
        raise Skip("no data set")
    inputs, outputs = case.data_sets[0]
    init = {t.name for t in graph.initializer}
    names = [vi.name for vi in graph.input if vi.name not in init]
    if len(names) != len(inputs) or len(graph.output) != len(outputs):
        raise Skip("inputs/outputs do not match the data set (optional or sequence values)")
    arrays = {}
    for name, x in zip(names, inputs):
        if not isinstance(x, np.ndarray):
            raise Skip("not float32: sequence/optional input")
        arrays[name] = x
    for o, y in zip(graph.output, outputs):
        if not isinstance(y, np.ndarray):
            raise Skip("not float32: sequence/optional output")
        if y.dtype != np.float32:
            raise Skip(f"not float32: output {_dtype_name(y)}")
    for name, x in arrays.items():
        if x.dtype.kind == "f" and x.dtype != np.float32:
            raise Skip(f"not float32: input {_dtype_name(x)}")
    if not all(np.all(np.isfinite(y)) for y in outputs):
        raise Skip("expected output not finite (inf/nan)")
    foreign = sorted(o for o in _all_ops(graph) if ":" in o)
    if foreign:
        raise Skip(f"unsupported op: {', '.join(foreign)}")
    params = set()
    if node is not None:
        positions = PARAM_INPUTS.get(node.op_type, frozenset())
        params = {name for i, name in enumerate(node.input) if i in positions and name}
    bake = [n for n, x in arrays.items() if x.dtype != np.float32 or n in params]
    feeds = {n: x for n, x in arrays.items() if n not in bake}
    if not feeds:
        raise Skip("no float data input (every input is a parameter or not float32)")
    if not all(np.all(np.isfinite(x)) for x in feeds.values()):
        raise Skip("input not finite (inf/nan)")
    keep = [vi for vi in graph.input if vi.name not in bake]
    for n in bake:
        graph.initializer.append(numpy_helper.from_array(arrays[n], n))
    del graph.input[:]
    graph.input.extend(keep)
    model.ir_version = max(model.ir_version, 4)
    converted_from = None
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    target = frontend_max_opset()
    if opset > target:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, target)
        except Exception as exc:  # the C++ converter raises several unrelated types
            raise ValueError(f"opset conversion {opset} -> {target} failed: "
                             f"{_first_line(exc)}") from exc
        converted_from = opset
    expected = {o.name: y for o, y in zip(case.model.graph.output, outputs)}
    return Prepared(case.name, op, model, feeds, expected, bake, converted_from)


def _first_line(exc: BaseException, limit: int = 240) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def reason_key(message: str) -> str:
    """A message with its numbers, shapes and node names normalized: one key per reason."""
    text = re.sub(r"\(node '[^']*'\)", "(node N)", message)
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "#", text)
    return text[:200]


#: Why a case does not pass, by its error or failure category: ``(pattern on the message,
#: explanation)``, first match wins (:func:`explain`).
EXPLANATIONS: tuple[tuple[str, str], ...] = (
    (r"shape inference failed", "ONNX shape inference rejects the (converted) model; the "
     "frontend needs its static shapes"),
    (r"constant-only operator left after folding", "shape arithmetic left at run time (If / "
     "Range on shapes not folded): a dynamic-shape graph"),
    (r"graph output .* is a constant or was not computed", "an output the lowered graph does "
     "not compute (training-mode statistics of BatchNormalization)"),
    (r"no elements", "an op over an empty tensor (its result a constant)"),
    (r"not finite on the calibration", "infinite values (a -inf mask) in the graph"),
    (r"is not a tensor", "optional or sequence type"),
    (r"distinct exponents", "per-element exponents (one PWL table per exponent)"),
    (r"must be (a )?constant", "a run-time operand that the lowering needs constant"),
    (r"has no lowering", "no lowering rule"),
    (r"opset conversion", "onnx.version_converter cannot convert the case"),
)
#: A failure within this many times the tolerance is explained as rounding (:func:`explain`).
NEAR_TOLERANCE = 2.0


def explain(row: dict, tol_lsb: float) -> str:
    """The explanation of a non-pass row, from its category (never from the case name):
    compile errors and crashes by :data:`EXPLANATIONS`; failures by their size, within
    :data:`NEAR_TOLERANCE` times the tolerance ``int8/PWL rounding accumulated over a chain
    of ops``, beyond it ``int8 resolution: the output depends on input differences below
    the input's int8 step``."""
    if row["status"] == "fail":
        err = row.get("err_lsb")
        if err is not None and err <= NEAR_TOLERANCE * tol_lsb:
            return (f"int8/PWL rounding accumulated over a chain of ops ({err:.1f} steps, "
                    f"tolerance {tol_lsb:g})")
        return ("int8 resolution: the output depends on input differences below the input's "
                f"int8 step ({'?' if err is None else f'{err:.0f}'} steps)")
    text = f"{row.get('reason', '')} {row.get('detail', '')}"
    for pattern, why in EXPLANATIONS:
        if re.search(pattern, text):
            return why
    return row.get("reason", "")


def run_case(case, config: HwConfig | None = None, by_name: dict | None = None,
             tol_lsb: float | None = None) -> dict:
    """Run one node case through the compiler; one row of the table.

    Returns
    -------
    dict
        ``case``, ``op``, ``status`` (one of :data:`STATUSES`), ``reason`` (every non-pass:
        the grouped reason) and ``detail`` (the message), ``err_lsb`` when it ran, ``baked``
        (the inputs made initializers), ``opset_from`` when converted, ``seconds``.
    """
    from neuralmatrix.sw.compiler import compile_model
    from neuralmatrix.sw.frontend import UnsupportedOpsError
    from neuralmatrix.sw.runtime import run_golden

    config = config or HwConfig(rows=8, cols=8)
    by_name = by_name if by_name is not None else {c.name: c for c in node_cases()}
    t0 = time.perf_counter()
    row: dict = {"case": case.name}
    try:
        prep = prepare_case(case, by_name)
    except Skip as exc:
        op, _ = _case_op(case, by_name)
        row.update(op=op, status="skipped", reason=str(exc), detail=str(exc))
        return row
    except ValueError as exc:
        op, _ = _case_op(case, by_name)
        raw = sorted(_all_ops(case.model.graph) - supported_ops() - {"Constant"})
        if raw:                  # judged on the raw graph: the conversion came first
            row.update(op=op, status="skipped", reason=f"unsupported op: {', '.join(raw)}",
                       detail=_first_line(exc))
        else:
            row.update(op=op, status="compile error", reason="opset conversion failed",
                       detail=_first_line(exc))
        return row
    row.update(op=prep.op, baked=prep.baked)
    if prep.converted_from:
        row["opset_from"] = prep.converted_from
    errors = project_errors()
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            comp = compile_model(prep.model, config, calib_feeds=[prep.feeds])
            res = run_golden(comp.compiled, prep.feeds)
    except UnsupportedOpsError as exc:
        ops = sorted({o for o, _ in exc.unsupported})
        row.update(status="skipped", reason=f"unsupported op: {', '.join(ops)}",
                   detail=_first_line(exc))
        return row
    except errors as exc:
        msg = _first_line(exc)
        row.update(status="compile error", reason=f"{type(exc).__name__}: {reason_key(msg)}",
                   detail=msg)
        return row
    except Exception as exc:  # noqa: BLE001 - reported as a crash: a bug to fix
        msg = _first_line(exc)
        row.update(status="crash", reason=f"{type(exc).__name__}: {reason_key(msg)}",
                   detail=f"{type(exc).__name__}: {msg}")
        return row
    worst, ok, missing = 0.0, True, []
    for name, exp in prep.expected.items():
        if name not in res.outputs:
            missing.append(name)
            continue
        scale = comp.compiled.network.outputs[name].scale
        passed, steps = within_tolerance(res.outputs[name], exp, scale, tol_lsb)
        ok &= passed
        worst = max(worst, steps)
    row["err_lsb"] = round(worst, 3) if np.isfinite(worst) else None
    row["seconds"] = round(time.perf_counter() - t0, 3)
    if missing:
        row.update(status="crash", reason="output missing from the golden run",
                   detail=f"outputs not produced: {missing}")
    elif ok:
        row["status"] = "pass"
    else:
        row.update(status="fail", reason="numbers outside the int8 tolerance",
                   detail=f"max error {worst:.2f} steps of max|expected|/127")
    return row


def conformance(config: HwConfig | None = None, names: list[str] | None = None,
                pattern: str | None = None, progress=None) -> dict:
    """Run the node cases (all, the named ones, or those whose name matches *pattern*).

    Returns
    -------
    dict
        ``rows`` (one per case, :func:`run_case`), ``counts`` per status, ``float_cases``
        (cases not skipped: float32 cases whose ops are all supported), ``pass_pct`` (pass
        over float cases), ``ops`` (per op: cases and count per status, reasons grouped),
        ``skipped`` (reason -> count), ``failures`` (reason -> count and an example case),
        ``tolerance_lsb``, ``config``, ``calibration``.
    """
    from neuralmatrix.sw.accuracy import TOL_LSB

    config = config or HwConfig(rows=8, cols=8)
    cases = node_cases()
    by_name = {c.name: c for c in cases}
    if names is not None:
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"unknown node test cases: {unknown}")
        cases = [by_name[n] for n in names]
    if pattern:
        cases = [c for c in cases if re.search(pattern, c.name)]
    rows = []
    for i, case in enumerate(cases):
        rows.append(run_case(case, config, by_name))
        if progress:
            progress(i + 1, len(cases), rows[-1])
    return summarize(rows, TOL_LSB, config)


def summarize(rows: list[dict], tol_lsb: float, config: HwConfig) -> dict:
    for r in rows:
        if r["status"] in ("fail", "compile error", "crash"):
            r["explanation"] = explain(r, tol_lsb)
            if r["status"] == "fail":
                r["reason"] = "numbers outside the int8 tolerance: " + re.sub(
                    r" \(\d[^)]*\)$", "", r["explanation"])
    counts = Counter(r["status"] for r in rows)
    ops: dict[str, dict] = {}
    for r in rows:
        o = ops.setdefault(r["op"], {"cases": 0, **{s: 0 for s in STATUSES},
                                     "reasons": Counter()})
        o["cases"] += 1
        o[r["status"]] += 1
        if r["status"] != "pass":
            o["reasons"][f"{r['status']}: {r['reason']}"] += 1
    for o in ops.values():
        o["reasons"] = dict(o["reasons"].most_common())
    skipped = Counter(_skip_group(r["reason"]) for r in rows if r["status"] == "skipped")
    failures: dict[str, dict] = {}
    for r in rows:
        if r["status"] in ("fail", "compile error", "crash"):
            key = f"{r['status']}: {r['reason']}"
            f = failures.setdefault(key, {"count": 0, "example": r["case"],
                                          "message": r.get("detail", ""), "cases": [],
                                          "explanation": r["explanation"]})
            f["count"] += 1
            f["cases"].append(r["case"])
    float_cases = sum(counts[s] for s in STATUSES if s != "skipped")
    return {
        "tolerance_lsb": tol_lsb,
        "tolerance": f"max|golden - expected| <= {tol_lsb:g} * max|expected| / 127",
        "calibration": "on the case's own test input (the only data a node case has)",
        "config": f"{config.rows}x{config.cols} {config.dataflow.value}",
        "total_cases": len(rows), "float_cases": float_cases,
        "counts": {s: counts[s] for s in STATUSES},
        "pass_pct": round(100.0 * counts["pass"] / float_cases, 2) if float_cases else None,
        "ops": dict(sorted(ops.items())),
        "skipped": dict(skipped.most_common()),
        "failures": dict(sorted(failures.items(), key=lambda kv: -kv[1]["count"])),
        "rows": rows,
    }


def _skip_group(reason: str) -> str:
    """Skip reasons grouped for the summary (one line per kind, ops named separately)."""
    if reason.startswith("unsupported op"):
        return "unsupported op"
    if reason.startswith("not float32"):
        return "not float32"
    return reason


# -- output ------------------------------------------------------------------------------

def _header(r: dict) -> str:
    c = r["counts"]
    pct = "n/a" if r["pass_pct"] is None else f"{r['pass_pct']:.1f}%"
    return (f"{r['total_cases']} ONNX node test cases; {r['float_cases']} float32 cases of "
            f"supported ops: pass {c['pass']} ({pct}), fail {c['fail']}, compile error "
            f"{c['compile error']}, crash {c['crash']}; skipped {c['skipped']}")


def _cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def to_markdown(r: dict, command: str | None = None) -> str:
    """The per-op table, the failures with their explanations (:func:`explain`), every
    non-pass case with its reason, and the skip counts as Markdown; *command* (the one that
    produced it) heads the file."""
    c, pct = r["counts"], "n/a" if r["pass_pct"] is None else f"{r['pass_pct']:.1f}%"
    lines = ["# ONNX node test cases on the golden model", ""]
    if command:
        lines += ["Generated by", "", "```sh", command, "```", ""]
    lines += [f"Config {r['config']}; calibration {r['calibration']}; tolerance "
              f"{r['tolerance']}. The harness and its rules: `sw/conformance.py`.", "",
              "## Summary", "", _header(r) + ".", "",
              "| float32 cases of supported ops | pass | fail | compile error | crash |",
              "|---:|---:|---:|---:|---:|",
              f"| {r['float_cases']} | {c['pass']} ({pct}) | {c['fail']} | "
              f"{c['compile error']} | {c['crash']} |", "",
              "## Per op", "",
              "| op | cases | pass | fail | compile error | crash | skipped | why (non-pass, "
              "from the category) |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for op, o in r["ops"].items():
        if o["cases"] == o["skipped"]:
            continue
        why = Counter(re.sub(r" \(\d[^)]*\)$", "", row["explanation"]) for row in r["rows"]
                      if row["op"] == op and "explanation" in row)
        lines.append(f"| {op} | {o['cases']} | {o['pass']} | {o['fail']} | "
                     f"{o['compile error']} | {o['crash']} | {o['skipped']} | "
                     f"{_cell('; '.join(f'{k} ({n})' for k, n in why.most_common()))} |")
    if r["failures"]:
        lines += ["", "## Failures by category", "",
                  "| failure | cases | why | example | message |", "|---|---:|---|---|---|"]
        for key, f in r["failures"].items():
            lines.append(f"| {_cell(key)} | {f['count']} | {_cell(f['explanation'])} | "
                         f"{f['example']} | {_cell(f['message'])} |")
        lines += ["", "## Every non-pass case", "",
                  "| case | op | status | error (steps) | reason |", "|---|---|---|---:|---|"]
        for row in r["rows"]:
            if "explanation" in row:
                err = "" if row.get("err_lsb") is None else f"{row['err_lsb']:.2f}"
                lines.append(f"| {row['case']} | {row['op']} | {row['status']} | {err} | "
                             f"{_cell(row['explanation'])} |")
    lines += [""]
    lines += ["", "Skipped: " + ", ".join(f"{k} {n}" for k, n in r["skipped"].items()) + "."]
    blocking = Counter()
    for row in r["rows"]:
        if row["status"] == "skipped" and row["reason"].startswith("unsupported op: "):
            blocking.update(row["reason"].removeprefix("unsupported op: ").split(", "))
    if blocking:
        lines.append("Unsupported ops (cases): " + ", ".join(f"{k} {n}" for k, n in
                                                           blocking.most_common()) + ".")
    return "\n".join(lines) + "\n"


def print_table(r: dict, console=None, cases: bool = False) -> None:
    """The per-op table (ops with at least one case in scope) and the failure list (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title=f"ONNX node cases, golden model {r['config']} (calibrated on the test "
                    f"input; tolerance {r['tolerance']})")
    for c in ("op", "cases", "pass", "fail", "compile error", "crash", "skipped", "non-pass reasons"):
        t.add_column(c, justify="left" if c in ("op", "non-pass reasons") else "right")
    for op, o in r["ops"].items():
        if o["cases"] == o["skipped"]:
            continue
        t.add_row(op, str(o["cases"]), str(o["pass"]), str(o["fail"]), str(o["compile error"]),
                  str(o["crash"]), str(o["skipped"]),
                  "\n".join(f"{k} ({n})" for k, n in o["reasons"].items()))
    console.print(t)
    if r["failures"]:
        f = Table(title="failure reasons")
        for c in ("reason", "cases", "example", "message"):
            f.add_column(c)
        for key, v in r["failures"].items():
            f.add_row(key, str(v["count"]), v["example"], v["message"])
        console.print(f)
    if cases:
        t = Table(title="cases")
        for c in ("case", "op", "status", "err (steps)", "reason"):
            t.add_column(c)
        for row in r["rows"]:
            t.add_row(row["case"], row["op"], row["status"],
                      "" if row.get("err_lsb") is None else f"{row['err_lsb']:.2f}",
                      row.get("reason", ""))
        console.print(t)
    console.print(_header(r))
    console.print("skipped: " + ", ".join(f"{k} {n}" for k, n in r["skipped"].items()))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--case", action="append", metavar="NAME",
                   help="onnx-node: run only this case (repeatable)")
    p.add_argument("--match", metavar="REGEX", help="onnx-node: run the cases whose name matches")
    p.add_argument("--markdown", metavar="FILE", help="onnx-node: write the table as Markdown")
    p.add_argument("--cases", action="store_true", help="onnx-node: also print one row per case")


def run_cli(args, console) -> dict:
    """The ``onnx-node`` subcommand: run, print, write ``--markdown``; return the figures."""
    config = HwConfig(rows=args.rows or 8, cols=args.cols or args.rows or 8)
    r = conformance(config, names=args.case, pattern=args.match)
    print_table(r, console, cases=args.cases)
    if args.markdown:
        argv = sys.argv[1:] if args.argv is None else args.argv
        command = "python -m neuralmatrix.sw.accuracy " + " ".join(argv)
        Path(args.markdown).write_text(to_markdown(r, command))
        console.print(f"wrote {args.markdown}")
    return r


def main(argv: list[str] | None = None) -> int:
    """``python -m neuralmatrix.sw.conformance``: the same as ``accuracy onnx-node``."""
    from neuralmatrix.sw.accuracy import main as accuracy_main

    return accuracy_main(["onnx-node", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
