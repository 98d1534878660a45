"""Never a traceback: every compile failure is one error that names where it happened.

The lowering's rule dispatcher (:func:`neuralmatrix.sw.lower.rules.apply`) turns whatever a
rule raises into a LinearizeError naming the node, its operator and the reason (the original
kept as ``__cause__``); :func:`~neuralmatrix.sw.compiler.compile_model` turns failures in
calibration and code generation into CompileError; and
:func:`~neuralmatrix.sw.compiler.write_output` leaves nothing half-written behind. The package
layout itself (rule table, no import cycle, module sizes) is checked here too.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from neuralmatrix.sw import cli, frontend
from neuralmatrix.sw import compiler as compiler_mod
from neuralmatrix.sw.compiler import CompileError, compile_model, write_output
from neuralmatrix.sw.lower import RULES, SUPPORTED_OPS, LinearizeError, rule
from test_compiler import CFG, feeds_for, make_model, node

LOWER_DIR = Path(compiler_mod.__file__).parent / "lower"


def _relu_model():
    return make_model([node("Relu", ["x"], ["y"], name="act")], [("x", [4, 6])], ["y"])


# -- the rule dispatcher ----------------------------------------------------------------------

def test_an_unexpected_failure_in_a_rule_names_the_node(monkeypatch):
    def broken(ctx, node):
        return [][1]

    monkeypatch.setitem(RULES, "Relu", broken)
    with pytest.raises(LinearizeError, match=r"^Relu \(node 'act'\): cannot be lowered: "
                                             r"IndexError: list index out of range$") as info:
        compile_model(_relu_model(), CFG, calib_feeds=feeds_for([("x", [4, 6])]))
    assert isinstance(info.value.__cause__, IndexError)
    assert (info.value.node, info.value.op) == ("act", "Relu")


def test_a_linearize_error_without_the_node_gets_it(monkeypatch):
    def refuses(ctx, node):
        raise LinearizeError("this table is not finite")

    monkeypatch.setitem(RULES, "Relu", refuses)
    with pytest.raises(LinearizeError, match=r"^Relu \(node 'act'\): this table is not "
                                             r"finite$") as info:
        compile_model(_relu_model(), CFG, calib_feeds=feeds_for([("x", [4, 6])]))
    assert info.value.node == "act"


def test_a_linearize_error_that_names_the_node_is_unchanged():
    model = make_model([node("MatMul", ["x", "w"], ["y"], name="mm")], [("x", [4, 6])], ["y"],
                       [("w", np.ones(6, np.float32))])
    with pytest.raises(LinearizeError, match=r"^MatMul \(node 'mm'\): constant B must be "
                                             r"2-D$") as info:
        compile_model(model, CFG, calib_feeds=feeds_for([("x", [4, 6])]))
    assert info.value.__cause__ is None and info.value.op == "MatMul"


def _runtime_operand(op, int_input, shape, attrs, outputs):
    """*op* of ``x [4, 6]`` whose second operand is the int64 graph input *int_input*."""
    ins = ["x", int_input] + (["e", "ax"] if op == "Slice" else [])
    inits = [numpy_helper.from_array(np.array([5], np.int64), "e"),
             numpy_helper.from_array(np.array([1], np.int64), "ax")] if op == "Slice" else []
    graph = helper.make_graph(
        [helper.make_node(op, ins, [o for o, _ in outputs], name="n", **attrs)], "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6]),
         helper.make_tensor_value_info(int_input, TensorProto.INT64, shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, s) for o, s in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("op,operand,value,attrs,outputs", [
    ("Slice", "starts", [1], {}, [("y", [4, 4])]),
    ("Split", "split", [2, 4], {"axis": 1}, [("a", [4, 2]), ("b", [4, 4])]),
])
def test_a_run_time_operand_that_must_be_constant(op, operand, value, attrs, outputs):
    """Slice starts and Split sizes from a graph input: a KeyError traceback before the
    rules checked their constant operands."""
    model = _runtime_operand(op, "k", [len(value)], attrs, outputs)
    feeds = [{"x": np.random.default_rng(i).standard_normal((4, 6)).astype(np.float32),
              "k": np.array(value, np.int64)} for i in range(3)]
    with pytest.raises(LinearizeError, match=rf"^{op} \(node 'n'\): {operand} \('k'\) must be "
                                             rf"a constant$"):
        compile_model(model, CFG, calib_feeds=feeds)


def test_a_failure_before_the_first_rule_is_one_error(monkeypatch):
    from neuralmatrix.sw.lower import masks

    def broken(ctx):
        raise RuntimeError("evaluator crashed")

    monkeypatch.setattr(masks, "find_masks", broken)
    with pytest.raises(LinearizeError, match=r"^graph analysis before lowering failed: "
                                             r"RuntimeError: evaluator crashed$"):
        compile_model(_relu_model(), CFG, calib_feeds=feeds_for([("x", [4, 6])]))


def test_rules_register_once():
    with pytest.raises(ValueError, match="Relu already has a rule"):
        rule("Relu")(lambda ctx, node: None)
    with pytest.raises(TypeError, match="operator names"):
        rule()


def test_supported_ops_are_the_rule_table():
    assert SUPPORTED_OPS == frozenset(RULES)
    # The frontend accepts every op with a rule, plus the shape and mask arithmetic that folds
    # away or that masks.find_masks lowers whole.
    assert SUPPORTED_OPS <= frontend.SUPPORTED_OPS
    assert frontend.SUPPORTED_OPS - SUPPORTED_OPS == {
        "Shape", "Constant", "ConstantOfShape", "Equal", "And", "Or", "Not"}


# -- compile_model: calibration and code generation ---------------------------------------------

def test_calibration_failures_are_compile_errors():
    model = _relu_model()
    with pytest.raises(CompileError, match=r"^calibration failed: .*Required inputs .*'x'"):
        compile_model(model, CFG, calib_feeds=[{"z": np.zeros((4, 6), np.float32)}])
    sqrt = make_model([node("Sqrt", ["x"], ["y"], name="root")], [("x", [1, 8])], ["y"])
    with pytest.raises(CompileError, match=r"^calibration: tensor 'y' \(Sqrt node 'root'\) is "
                                           r"not finite") as info:
        compile_model(sqrt, CFG, calib_feeds=feeds_for([("x", [1, 8])], n=2))
    assert isinstance(info.value.__cause__, ValueError)


def test_code_generation_failures_name_the_kernel(monkeypatch):
    from neuralmatrix.sw import codegen

    def broken(program, cfg, fields=None):
        raise ZeroDivisionError("no cycles")

    monkeypatch.setattr(codegen, "estimate_cycles", broken)
    with pytest.raises(CompileError, match=r"^code generation failed: layer 'act' \(kernel "
                                           r"'act\.pwl'\): no program: ZeroDivisionError: "
                                           r"no cycles$") as info:
        compile_model(_relu_model(), CFG, calib_feeds=feeds_for([("x", [4, 6])]))
    assert isinstance(info.value.__cause__.__cause__, ZeroDivisionError)


# -- the output folder: all or nothing ----------------------------------------------------------

def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    comp = compile_model(_relu_model(), CFG, calib_feeds=feeds_for([("x", [4, 6])]))
    out = write_output(comp, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(rep, console=None):
        raise OSError("disk full")

    monkeypatch.setattr(compiler_mod, "format_report", broken)
    with pytest.raises(OSError, match="disk full"):
        write_output(comp, tmp_path / "new")
    with pytest.raises(OSError, match="disk full"):
        write_output(comp, out)                      # over an earlier output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]       # no temporary folders
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before   # the earlier one intact


@pytest.mark.parametrize("case", ["rule", "calibration"])
def test_the_cli_reports_one_error_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    if case == "rule":
        monkeypatch.setitem(RULES, "Relu", lambda ctx, node: {}["missing"])
        model, want = _relu_model(), r"Relu \(node 'act'\): cannot be lowered: KeyError"
    else:
        model = make_model([node("Sqrt", ["x"], ["y"], name="root")], [("x", [2, 8])], ["y"])
        want = r"calibration: tensor 'y' \(Sqrt node 'root'\) is not finite"
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert cli.main(["compile", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neuralmatrix compile: error: ") and "Traceback" not in err
    assert re.search(want, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# -- the package ----------------------------------------------------------------------------------

@pytest.mark.parametrize("first,second", [("quantize", "lower"), ("lower", "quantize")])
def test_no_import_cycle(first, second):
    code = f"import neuralmatrix.sw.{first}; import neuralmatrix.sw.{second}"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_quantize_does_not_import_the_lowering():
    src = (LOWER_DIR.parent / "quantize.py").read_text()
    assert "lower" not in {line.split()[1].lstrip(".").split(".")[0]
                           for line in src.splitlines()
                           if line.strip().startswith(("from .", "import ."))}


def test_modules_are_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in LOWER_DIR.glob("*.py")}
    assert {"__init__.py", "context.py", "rules.py", "linear.py", "elementwise.py", "pool.py",
            "softmax.py", "layernorm.py", "masks.py", "movement.py"} <= set(sizes)
    assert max(sizes.values()) <= 500, sizes
