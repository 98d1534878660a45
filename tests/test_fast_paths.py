"""The bulk fast paths against straightforward per-instruction versions.

``assemble_binary`` (numpy packing) against :func:`~neuralmatrix.hw.isa.encode`, the bulk
validator against the per-instruction checks (valid programs and planted errors), the
program-order cycle estimate against the general event rounds, and the golden model's
pre-decoded loop against :meth:`GoldenModel._execute` instruction by instruction.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from neuralmatrix.hw import isa
from neuralmatrix.hw.arith import matmul_int32
from neuralmatrix.hw.isa import (
    FIELDS, INSN_BYTES, Insn, Opcode as O, ProgramError, assemble_binary, encode, field_matrix,
    validate,
)
from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sim.progen import random_program
from neuralmatrix.sw import golden
from neuralmatrix.sw.gemm_program import gemm_program
from neuralmatrix.sw.golden import GoldenModel, GoldenResult

CONFIGS = [HwConfig(r, c, df, sp_depth=64, acc_depth=32, pwl_segments=4, pwl_tables=2,
                    queue_depth=8)
           for r, c in ((1, 1), (2, 3), (4, 4), (8, 8)) for df in ("ws", "os")]
DRAM = 1 << 15


def _programs(n_per_config=6):
    for index, cfg in enumerate(CONFIGS):
        for seed in range(n_per_config):
            yield cfg, random_program(cfg, np.random.default_rng([77, index, seed]),
                                      dram_bytes=DRAM)


def _gemms():
    for df in ("ws", "os"):
        cfg = HwConfig(4, 4, df, sp_depth=64, acc_depth=32)
        for M, K, N, out in ((9, 40, 6, "int8"), (9, 300 if df == "ws" else 50, 6, "int32"),
                             (5, 3, 7, "int8")):
            yield cfg, gemm_program(cfg, M, K, N, a_addr=0, b_addr=8192, c_addr_dram=16384,
                                    mult=np.arange(N) + 100, shift=7, out=out)


def _reference_problems(program, cfg, **kw):
    return isa._all_problems(list(program), cfg, kw.get("dram_bytes"), kw.get("program_range"))


def _mutants(program, rng, count):
    """Copies of *program* with one planted change each: a field out of its range or off by
    a lot, a token flag flipped, an instruction dropped or swapped, HALT moved."""
    for _ in range(count):
        p = copy.deepcopy(program)
        kind = rng.integers(5)
        i = int(rng.integers(len(p) - 1))
        if kind == 0 and FIELDS[p[i].op]:
            f = FIELDS[p[i].op][rng.integers(len(FIELDS[p[i].op]))]
            p[i].args[f.name] = int(rng.choice([f.max + 1, f.min - 1, f.max, 0, 4096, 1 << 20]))
        elif kind == 1:
            flag = ("pop_prev", "pop_next", "push_prev", "push_next")[rng.integers(4)]
            setattr(p[i], flag, 1 - getattr(p[i], flag))
        elif kind == 2:
            del p[i]
        elif kind == 3 and i + 1 < len(p) - 1:
            p[i], p[i + 1] = p[i + 1], p[i]
        else:
            p.insert(i, p.pop())                        # HALT no longer last
        yield p


# -- assembler ---------------------------------------------------------------------------------

def test_assemble_binary_equals_encode():
    for cfg, case in _programs(3):
        prog = case.program
        assert assemble_binary(prog) == b"".join(encode(i).to_bytes(INSN_BYTES, "little")
                                                 for i in prog)
    # Every field at its extremes (signed ones negative), every opcode.
    for op, fields_ in FIELDS.items():
        for pick in (lambda f: f.max, lambda f: f.min, lambda f: (f.max + f.min) // 2):
            insn = Insn(op, pop_prev=1, push_next=1, **{f.name: pick(f) for f in fields_})
            assert assemble_binary([insn, insn]) == encode(insn).to_bytes(INSN_BYTES, "little") * 2


def test_assemble_binary_out_of_range_raises_like_encode():
    insn = Insn(O.LOAD_SP, nrows=1 << 16)
    with pytest.raises(ValueError, match=r"LOAD_SP.nrows must be 0..65535, got 65536"):
        assemble_binary([Insn(O.HALT), insn])
    with pytest.raises(ValueError, match="nrows must be"):
        encode(insn)
    big = Insn(O.COMPUTE)
    big.args["m"] = 1 << 70                              # beyond int64: per-instruction path
    with pytest.raises(ValueError, match="COMPUTE.m must be"):
        assemble_binary([big])
    assert field_matrix([big]) is None


# -- validator ---------------------------------------------------------------------------------

def test_bulk_validation_accepts_what_the_checks_accept():
    for cfg, case in _programs():
        n = len(case.program) * INSN_BYTES
        kw = {"dram_bytes": DRAM, "program_range": (case.insn_addr, case.insn_addr + n)}
        assert _reference_problems(case.program, cfg, **kw) == []
        assert isa._quick_ok(case.program, cfg, kw["dram_bytes"], kw["program_range"])
    for cfg, g in _gemms():
        assert isa._quick_ok(g.program, cfg, None, None)


def test_bulk_validation_never_passes_a_bad_program():
    rng = np.random.default_rng(5)
    seen_bad = 0
    for cfg, case in _programs(3):
        n = len(case.program) * INSN_BYTES
        kw = {"dram_bytes": DRAM, "program_range": (case.insn_addr, case.insn_addr + n)}
        for p in _mutants(case.program, rng, 12):
            reference = _reference_problems(p, cfg, **kw)
            if isa._quick_ok(p, cfg, kw["dram_bytes"], kw["program_range"]):
                assert reference == [], reference
            else:
                # validate words exactly the problems of the per-instruction checks
                seen_bad += bool(reference)
                if reference:
                    with pytest.raises(ProgramError) as err:
                        validate(p, cfg, **kw)
                    assert err.value.problems == reference
                else:
                    validate(p, cfg, **kw)
    assert seen_bad > 100


# -- cycle estimate ----------------------------------------------------------------------------

def _same_estimate(a, b):
    assert a.total == b.total and a.busy == b.busy and a.macs == b.macs
    np.testing.assert_array_equal(a.start, b.start)
    np.testing.assert_array_equal(a.end, b.end)


def test_program_order_estimate_equals_event_rounds():
    costs = {**golden.CYCLE_COSTS}
    cases = [(cfg, c.program) for cfg, c in _programs()] + [(cfg, g.program) for cfg, g in _gemms()]
    for cfg, prog in cases:
        fast = golden._estimate_in_order(prog, cfg, costs)
        assert fast is not None
        _same_estimate(fast, golden._estimate_any_order(prog, cfg, costs))
        assert golden.estimate_cycles(prog, cfg).total == fast.total
    # Without HALT, and with a token pushed only after its popper (general rounds only).
    cfg, prog = cases[0]
    _same_estimate(golden._estimate_in_order(prog[:-1], cfg, costs),
                   golden._estimate_any_order(prog[:-1], cfg, costs))
    late = [Insn(O.COMPUTE, m=1, k=1, n=1, pop_next=1), Insn(O.STORE, push_prev=1, nrows=1,
                                                             ncols=1), Insn(O.HALT)]
    assert golden._estimate_in_order(late, cfg, costs) is None
    est = golden.estimate_cycles(late, cfg)
    assert est.start[0] >= est.end[1]


# -- golden model ------------------------------------------------------------------------------

def _reference_run(model: GoldenModel, program) -> GoldenResult:
    result = GoldenResult()
    for insn in program:
        result.insns += 1
        result.insn_bytes_read += INSN_BYTES
        if insn.op == O.HALT:
            break
        model._execute(insn, result)
    return result


def _state(model):
    return (model.dram.copy(), model.sp.copy(), model.acc.copy(), model.mult.copy(),
            model.shift.copy(), model.pwl_header.copy(), model.pwl_k.copy())


def _check_golden(cfg, image, program):
    fast, ref = GoldenModel(cfg, image.size), GoldenModel(cfg, image.size)
    fast.load_image(image)
    ref.load_image(image)
    r_fast = fast.run(program, check=False)
    r_ref = _reference_run(ref, program)
    for a, b in zip(_state(fast), _state(ref)):
        np.testing.assert_array_equal(a, b)
    assert r_fast.counters() == r_ref.counters()
    assert r_fast.load_bytes_read == r_ref.load_bytes_read


def test_golden_fast_loop_equals_instruction_by_instruction():
    for cfg, case in _programs():
        _check_golden(cfg, case.image, case.program)
    rng = np.random.default_rng(3)
    for cfg, g in _gemms():
        image = np.zeros(1 << 15, np.uint8)
        g.place(image, rng.integers(-128, 128, (g.M, g.K)), rng.integers(-128, 128, (g.K, g.N)))
        _check_golden(cfg, image, g.program)


@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_golden_compute_wraps_and_is_exact_at_the_extremes(dataflow):
    """-128 * -128 summed over the longest k the scratchpad holds, accumulated into an int32
    accumulator near its maximum until it wraps: float64 products, int64 sums, exact wrap."""
    cfg = HwConfig(4, 4, dataflow, sp_depth=4096, acc_depth=64)
    ws = dataflow == "ws"
    k = 4 if ws else 2040
    model = GoldenModel(cfg, 1 << 12)
    model.sp[:] = -128
    model.sp[1:2048:3] = 127                            # A rows: both signs; B: all -128
    start = np.full((4, 4), 2**31 - 40000, dtype=np.int32)
    start[3] = -2**31 + 5
    model.acc[:4, :4] = start
    prog = [Insn(O.COMPUTE, a_addr=0, b_addr=2048, c_addr=0, m=4, k=k, n=4, accumulate=1)
            for _ in range(3)] + [Insn(O.HALT)]
    model.run(prog, check=False)
    a = model.sp[0:4, :k] if ws else model.sp[0:k, :4].T
    b = model.sp[2048:2048 + k, :4]
    expect = start
    for _ in range(3):
        expect = matmul_int32(a, b, expect)
    np.testing.assert_array_equal(model.acc[:4, :4], expect)
    exact = start.astype(np.int64) + 3 * (a.astype(np.int64) @ b.astype(np.int64))
    assert (exact > 2**31 - 1).any() and (exact < -2**31).sum() == 0   # it wrapped upward


def test_golden_odd_instructions_take_the_general_path():
    """Out-of-range rows (check=False) fail the same way on both paths."""
    cfg = HwConfig(4, 4, sp_depth=64, acc_depth=32)
    bad = [Insn(O.LOAD_SP, sp_addr=0, nrows=2, ncols=4, dram_addr=4090, dram_stride=16),
           Insn(O.HALT)]
    for run in (lambda m: m.run(bad, check=False), lambda m: _reference_run(m, bad)):
        with pytest.raises(ProgramError, match="outside external memory"):
            run(GoldenModel(cfg, 4096))
