"""sw.pwl: fitting, breakpoint placement, quantization to the hardware format, range reduction,
and the ``pwl`` command."""

import argparse
import math

import numpy as np
import pytest

from neuralmatrix.hw.arith import PWL_BREAKPOINTS, PWL_UNIFORM, pwl_eval
from neuralmatrix.hw.isa import Insn, Opcode as O, StoreMode, decode, encode, validate
from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sw import pwl
from neuralmatrix.sw.golden import GoldenModel


def test_erf_matches_math_erf():
    x = np.concatenate([np.linspace(-7, 7, 4001), [0.0, 1e-12, -1e-9, 5.9999, 6.0, 6.1, 40.0]])
    ref = np.array([math.erf(v) for v in x])
    assert np.max(np.abs(pwl.erf(x) - ref)) < 1e-12


def test_registry_functions_and_ranges():
    required = {"relu", "leaky_relu", "gelu", "erf", "sigmoid", "tanh", "silu", "elu", "selu",
                "softplus", "hardsigmoid", "hardswish", "exp", "reciprocal", "rsqrt", "sqrt"}
    assert required <= set(pwl.FUNCTIONS)
    assert pwl.FUNCTIONS["exp"].range == (-16.0, 0.0)
    x = np.array([-1.0, 0.0, 2.0])
    assert np.allclose(pwl.gelu(x), [-0.15865525393145707, 0.0, 1.9544997361036416])
    assert np.allclose(pwl.leaky_relu(x), [-0.01, 0.0, 2.0])
    assert np.allclose(pwl.hardswish(np.array([-3.0, 0.0, 3.0, 1.0])), [0, 0, 3, 2 / 3])
    for name, spec in pwl.FUNCTIONS.items():
        lo, hi = spec.range
        assert np.all(np.isfinite(spec.func(np.linspace(lo, hi, 101)))), name


@pytest.mark.parametrize("method", pwl.METHODS)
@pytest.mark.parametrize("name", ["gelu", "sigmoid", "tanh", "exp"])
def test_error_falls_as_segments_grow(name, method):
    lo, hi = pwl.FUNCTIONS[name].range
    errs = [pwl.fit(name, lo, hi, n, method=method).max_error() for n in (4, 8, 16, 32)]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < errs[0] / 8


@pytest.mark.parametrize("name", ["gelu", "exp", "tanh", "sigmoid", "silu", "rsqrt", "sqrt"])
@pytest.mark.parametrize("method", ["curvature", "error"])
def test_nonuniform_beats_uniform(name, method):
    lo, hi = pwl.FUNCTIONS[name].range
    for n in (8, 16):
        uni = pwl.fit(name, lo, hi, n, method="uniform")
        non = pwl.fit(name, lo, hi, n, method=method)
        assert non.max_error() < 0.7 * uni.max_error(), (n, non.max_error(), uni.max_error())


def test_kinks_get_breakpoints():
    for name in ("relu", "leaky_relu", "hardsigmoid"):         # exactly piecewise linear
        lo, hi = pwl.FUNCTIONS[name].range
        for method in ("curvature", "error"):
            assert pwl.fit(name, lo, hi, 5, method=method).max_error() < 1e-9, (name, method)
    pf = pwl.fit("hardswish", -4, 4, 16, method="curvature")
    assert {-3.0, 3.0} <= set(pf.breakpoints.tolist())


def test_least_squares_beats_interpolation():
    for name in ("gelu", "sigmoid", "exp"):
        lo, hi = pwl.FUNCTIONS[name].range
        ls = pwl.fit(name, lo, hi, 16, method="curvature", objective="lsq")
        it = pwl.fit(name, lo, hi, 16, method="curvature", objective="interp")
        mm = pwl.fit(name, lo, hi, 16, method="curvature", objective="minimax")
        assert ls.rms_error() < 0.8 * it.rms_error()
        assert ls.max_error() < it.max_error()
        assert mm.max_error() < 1.01 * ls.max_error()


def test_fit_evaluation_and_extension():
    pf = pwl.fit(lambda x: 2 * x + 1, -1, 3, 4)
    assert np.allclose(pf.breakpoints, [-1, 0, 1, 2, 3])
    assert np.allclose(pf([-5.0, 0.0, 2.5, 10.0]), [-9, 1, 6, 21])    # extends outside
    assert pf.segment_of([-5, 0, 0.5, 1, 99]).tolist() == [0, 1, 1, 2, 3]
    with pytest.raises(ValueError, match="method"):
        pwl.fit("gelu", -1, 1, 4, method="spline")
    with pytest.raises(KeyError, match="available"):
        pwl.fit("nonesuch", -1, 1, 4)


@pytest.mark.parametrize("method", ["uniform", "curvature", "error"])
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "gelu", "exp"])
def test_quantized_table_is_pwl_eval_and_close(name, method):
    pf, table = pwl.fit_table(name, 16, method)
    assert table.mode == (PWL_UNIFORM if method == "uniform" else PWL_BREAKPOINTS)
    x = table.input_range()
    y = table.evaluate(x)
    assert np.array_equal(y, pwl_eval(x, table.mode, table.bp, table.k, table.b, table.x0,
                                      table.seg_shift, table.out_shift))
    assert np.all(np.abs(table.k) <= 32767) and np.all(np.abs(table.b) < 2**31)
    e = table.errors()
    assert e["n"] == x.size > 30000
    # within the float fit's error plus output rounding and a little fixed-point slack
    bound = pf.max_error() / table.out_scale + 0.5 + 0.05
    assert e["max_lsb"] <= bound, (e, bound)
    if method != "uniform":
        assert e["max_lsb"] < 1.1                     # a few output LSB at most; ~1 here


def test_quantize_out_shift_is_maximal():
    pf, table = pwl.fit_table("gelu", 16, "curvature")
    S = table.out_shift
    assert 0 < S < 47
    K = pf.slopes * table.in_scale / table.out_scale
    B = pf.intercepts / table.out_scale
    # one more fraction bit would overflow k (int16) or b (int32)
    assert (np.max(np.abs(np.round(K * 2.0 ** (S + 1)))) > 32767
            or np.max(np.abs(B)) * 2.0 ** (S + 1) > 2**31 - 1e6)


def test_quantize_padding_and_uniform_constraints():
    pf = pwl.fit("tanh", -4, 4, 8, method="uniform")
    t = pwl.quantize(pf, in_scale=2**-13, out_scale=1 / 127, mode="uniform", segments_hw=16)
    assert (t.mode, t.x0, t.seg_shift, t.segments) == (PWL_UNIFORM, -32768, 13, 16)
    assert np.all(t.k[8:] == t.k[7]) and np.all(t.b[8:] == t.b[7])
    tb = pwl.quantize(pf, in_scale=2**-13, out_scale=1 / 127, mode="breakpoints",
                      segments_hw=16)
    x = np.arange(-32768, 32768)
    assert np.array_equal(t.evaluate(x), tb.evaluate(x))   # both modes: the same table
    with pytest.raises(ValueError, match="power-of-two"):
        pwl.quantize(pwl.fit("tanh", -3, 4, 8), in_scale=2**-13, out_scale=1 / 127,
                     mode="uniform")
    with pytest.raises(ValueError, match="pwl_segments"):
        pwl.quantize(pwl.fit("tanh", -4, 4, 32), in_scale=2**-13, out_scale=1 / 127,
                     config=HwConfig())
    x0, shift, lo, hi = pwl.uniform_grid(-3, 4, 8, 2**-13)
    assert (x0, shift, lo, hi) == (-24576, 13, -3.0, 5.0)


def test_instructions_round_trip_and_validate():
    cfg = HwConfig(pwl_segments=16, pwl_tables=4)
    for method, table_id in (("uniform", 1), ("error", 3)):
        _, table = pwl.fit_table("sigmoid", 16, method, config=cfg)
        insns = table.instructions(table_id, config=cfg)
        assert insns[0].op == O.CFG_PWL_HDR and len(insns) == 1 + cfg.pwl_segments
        assert all(i.op == O.CFG_PWL_SEG and i.table == table_id for i in insns[1:])
        back = [decode(encode(i)) for i in insns]
        assert [(i.op, i.args) for i in back] == [(i.op, i.args) for i in insns]
        validate(insns + [Insn(O.HALT)], cfg)
    with pytest.raises(ValueError, match="table_id"):
        table.instructions(4, config=cfg)


def test_golden_model_runs_the_table():
    """The instructions, run by the golden model on int16 inputs, give table.evaluate."""
    cfg = HwConfig(rows=4, cols=4, sp_depth=16, acc_depth=64, pwl_segments=16, pwl_tables=2)
    _, table = pwl.fit_table("gelu", 16, "curvature", config=cfg)
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.integers(-32768, 32768, 248), [-32768, 32767, 0, -1, 1, 5, 6, 7]])
    acc = x.reshape(64, 4).astype("<i4")
    program = table.instructions(1, config=cfg) + [
        Insn(O.LOAD_ACC, acc_addr=0, nrows=64, ncols=4, dram_addr=0, dram_stride=4 * 4,
             push_next=1),
        Insn(O.COMPUTE, pop_prev=1, push_next=1),                   # fence
        Insn(O.CFG_REQUANT, lane=0, count=4, mult=1, shift=0),     # int32 -> int16 as is
        Insn(O.STORE, acc_addr=0, nrows=64, ncols=4, dram_addr=2048, dram_stride=4,
             mode=StoreMode.INT8_PWL, table=1, pop_prev=1),
        Insn(O.HALT),
    ]
    model = GoldenModel(cfg, 4096)
    model.load_image(acc.tobytes(), 0)
    model.run(program)
    out = model.dram[2048:2048 + 256].view(np.int8).astype(np.int64)
    assert np.array_equal(out, table.evaluate(x))


@pytest.mark.parametrize("name", ["reciprocal", "rsqrt"])
def test_range_reduced_relative_error(name):
    for method in ("uniform", "curvature"):
        rr = pwl.fit_range_reduced(name, 16, method)
        e = rr.errors(n=20001)
        # int8 output of f(m) in (0.5, 1]: half an LSB is up to 0.5/64 = 0.78% relative
        assert e["max_rel"] < 0.01, e
        assert e["fit_max_rel"] < 0.004, e
    m, ex = rr.split(np.array([1.0, 3.0, 4.0, 0.3, 1e6]))
    scale = rr.table.in_scale
    p = rr.reduction.period_log2
    assert np.all((m * scale >= 1) & (m * scale <= 2 ** p))
    assert np.allclose(m * scale * 2.0 ** (p * ex), [1.0, 3.0, 4.0, 0.3, 1e6], rtol=1e-4)
    with pytest.raises(ValueError, match="positive"):
        rr.evaluate(np.array([0.0]))


def test_error_table_rows():
    rows = pwl.error_table(["gelu", "exp"], segment_counts=(8, 16))
    assert len(rows) == 8
    by = {(r["function"], r["segments"], r["method"]): r for r in rows}
    for f in ("gelu", "exp"):
        assert by[(f, 16, "curvature")]["fit_max"] < by[(f, 16, "uniform")]["fit_max"]
        assert by[(f, 16, "curvature")]["int8_max_lsb"] < by[(f, 8, "curvature")]["int8_max_lsb"]
    assert {"fit_rms", "int8_max", "int8_rms_lsb", "mode"} <= set(rows[0])


def _cli(argv):
    parser = argparse.ArgumentParser(prog="neuralmatrix")
    sub = parser.add_subparsers(dest="command", required=True)
    pwl.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_prints_tables(capsys):
    assert _cli(["pwl", "tanh", "--segments", "8", "--method", "uniform", "--range=-4,4"]) == 0
    out = capsys.readouterr().out
    assert "float fit" in out and "int8 table" in out and "out_shift" in out
    assert "seg_shift 13" in out and "[out LSB]" in out
    assert _cli(["pwl", "reciprocal", "--segments", "8"]) == 0
    assert "range-reduced" in capsys.readouterr().out


def test_cli_all(capsys):
    assert _cli(["pwl", "all"]) == 0
    out = capsys.readouterr().out
    for name in pwl.FUNCTIONS:
        assert name in out
    assert "uniform" in out and "curvature" in out


def test_cli_unknown_function(capsys):
    assert _cli(["pwl", "cosh"]) == 2
    err = capsys.readouterr().err
    assert "unknown function 'cosh'" in err and "gelu" in err and "rsqrt" in err


def test_cli_writes_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "gelu.png"
    assert _cli(["pwl", "gelu", "--segments", "8", "--method", "error", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10000


@pytest.mark.parametrize("func, lo, hi, in_scale, out_scale", [
    (np.tanh, -3.0, 3.0, 1.0, 1e-6),          # every segment steeper than an int16 slope
    (np.exp, -24.0, 0.0, 1e10, 1 / 127),      # the whole range inside one input LSB
    (np.tanh, -3.0, 3.0, 0.25, 1e-6),         # a mix of steep and representable segments
])
def test_steep_tables_are_refitted_exact_on_the_integer_inputs(func, lo, hi, in_scale, out_scale):
    """A table whose slopes no int16 field holds at any out_shift (the old code raised
    "slopes/intercepts do not fit") is refitted: on every int16 input of its range the
    output is the saturated, rounded real function (within one LSB)."""
    fit = pwl.fit(func, lo, hi, 16, method="curvature")
    fit = pwl.PwlFit(fit.breakpoints, fit.slopes, fit.intercepts, fit.method, fit.objective,
                     func, "f")
    K = fit.slopes * in_scale / out_scale
    assert np.max(np.abs(K)) > 32767                    # the case the refit exists for
    table = pwl.quantize(fit, in_scale=in_scale, out_scale=out_scale, mode="breakpoints")
    x = table.input_range(lo, hi)
    assert x.size >= 1
    want = np.clip(np.round(func(x * in_scale) / out_scale), -128, 127)
    assert np.max(np.abs(table.evaluate(x) - want)) <= 1


def test_impossible_table_names_function_and_range():
    """An intercept beyond int32 at every out_shift (a constant 1e12 at out_scale 1) is
    one error naming the function and its range."""
    fit = pwl.PwlFit(np.array([-3.0, 0.0, 3.0]), np.zeros(2), np.full(2, 1e12), "uniform",
                     "lsq", None, "big")
    with pytest.raises(ValueError, match=r"PWL table of big on \[-3, 3\]"):
        pwl.quantize(fit, in_scale=1.0, out_scale=1.0, mode="breakpoints")
