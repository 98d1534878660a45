"""The bulk emission path against the one-instruction-at-a-time reference.

:func:`~neuralmatrix.sw.gemm_program.synchronize` against :class:`ProgramBuilder` on random
instruction sequences (dense conflicts, zero sizes, external-memory ordering on and off),
:func:`matmul_program` against :func:`_matmul_program_reference` on random GEMM cases, and
:class:`~neuralmatrix.hw.isa.FieldProgram` as a program everywhere a list of Insn is taken.
"""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest

from neuralmatrix.hw.isa import FieldProgram, Insn, Opcode as O, assemble_binary, field_matrix
from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sw.gemm_program import (
    MatrixLayout, ProgramBuilder, _matmul_program_reference, chunk_depths,
    gemm_program, matmul_program, synchronize,
)
from neuralmatrix.sw.golden import GoldenModel, estimate_cycles

from gemm_cases import random_gemm_case


def _random_insn(rng) -> Insn:
    kind = rng.integers(6)
    r = lambda hi: int(rng.integers(hi))               # noqa: E731
    if kind == 0:
        return Insn(O.LOAD_SP, sp_addr=r(24), nrows=r(5), ncols=1 + r(4), dram_addr=64 * r(8),
                    dram_stride=16 * r(3))
    if kind == 1:
        return Insn(O.LOAD_ACC, acc_addr=r(12), nrows=r(4), ncols=1 + r(4),
                    dram_addr=64 * r(8), dram_stride=16 * r(2))
    if kind in (2, 3):
        return Insn(O.COMPUTE, a_addr=r(24), b_addr=r(24), c_addr=r(12), m=r(5), k=r(5),
                    n=r(4), accumulate=r(2))
    if kind == 4:
        return Insn(O.STORE, acc_addr=r(12), nrows=r(4), ncols=1 + r(4), dram_addr=64 * r(8),
                    dram_stride=16 * r(3), mode=2 * r(2))
    return Insn(O.CFG_REQUANT, lane=0, count=1, mult=r(100), shift=r(8))


@pytest.mark.parametrize("seed", range(6))
def test_cached_structure_serves_another_kernel_of_the_same_shape(seed, monkeypatch):
    """A second program whose instructions differ only in values that do not decide tokens
    or timing (configuration payloads; every external address moved by one offset) takes
    the token structure and the schedule from the caches, and still equals the builder's
    program and a fresh estimate."""
    from neuralmatrix.hw.isa import field_column
    from neuralmatrix.sw import gemm_program, golden

    monkeypatch.setattr(gemm_program, "_TOKEN_CACHE", golden.DigestCache())
    monkeypatch.setattr(golden, "_SCHEDULE_CACHE", golden.DigestCache())
    rng = np.random.default_rng(100 + seed)
    config = HwConfig(4, 4, "ws" if seed % 2 else "os")
    flat = field_matrix([_random_insn(rng) for _ in range(200)])
    other = flat.copy()
    for op, name in ((O.LOAD_SP, "dram_addr"), (O.LOAD_ACC, "dram_addr"), (O.STORE, "dram_addr")):
        rows = other[:, 0] == op
        other[rows, field_column(op, name)] += 4096
    rows = other[:, 0] == O.CFG_REQUANT
    other[rows, field_column(O.CFG_REQUANT, "mult")] = rng.integers(1, 1000, int(rows.sum()))
    assert not np.array_equal(flat, other)
    first, _ = synchronize(flat, config)
    cached = len(gemm_program._TOKEN_CACHE)
    got, relays = synchronize(other, config)
    assert len(gemm_program._TOKEN_CACHE) == cached            # a hit
    builder = ProgramBuilder(config)
    for insn in FieldProgram(other):
        builder.emit(insn)
    assert relays == builder.relays
    np.testing.assert_array_equal(got, field_matrix(builder.program))
    est_first = estimate_cycles(FieldProgram(first), config)
    est = estimate_cycles(FieldProgram(got), config)
    assert len(golden._SCHEDULE_CACHE) == 1                     # a hit
    golden._SCHEDULE_CACHE.clear()
    fresh = estimate_cycles(FieldProgram(got), config)
    assert (est.total, est.busy, est.macs) == (fresh.total, fresh.busy, fresh.macs)
    np.testing.assert_array_equal(est.start, fresh.start)
    np.testing.assert_array_equal(est.end, fresh.end)
    assert est_first.total > 0
    start0 = int(fresh.start[0])
    fresh.start[0] = -5                             # a result is the caller's: the cache keeps
    assert estimate_cycles(FieldProgram(got), config).start[0] == start0  # its own arrays


@pytest.mark.parametrize("seed", range(40))
def test_synchronize_equals_the_builder(seed):
    rng = np.random.default_rng(seed)
    insns = [_random_insn(rng) for _ in range(int(rng.integers(1, 300)))]
    config = [None, HwConfig(4, 4, "ws"), HwConfig(4, 4, "os")][seed % 3]
    flat = field_matrix(insns)
    for dram in (True, False):
        builder = ProgramBuilder(config, dram=dram)
        for insn in FieldProgram(flat):             # fresh Insns: the builder sets their flags
            builder.emit(insn)
        fields, relays = synchronize(flat, config, dram=dram)
        assert relays == builder.relays
        np.testing.assert_array_equal(fields, field_matrix(builder.program))


def test_synchronize_rejects_flags_and_halt():
    with pytest.raises(ValueError, match="token flags"):
        synchronize(field_matrix([Insn(O.COMPUTE, pop_prev=1)]))
    with pytest.raises(ValueError, match="HALT"):
        synchronize(field_matrix([Insn(O.HALT)]))


def _case(rng):
    rows = int(rng.choice([2, 4, 8]))
    df = str(rng.choice(["ws", "os"]))
    sp, acc = int(rng.choice([64, 128, 512, 4096])), int(rng.choice([32, 64, 256]))
    cfg = HwConfig(rows, rows, df, sp_depth=sp, acc_depth=acc)
    g = random_gemm_case(cfg, rng, base=1 << 12, max_m=70, max_n=40, max_k=60, max_terms=4,
                         bias_p=0.5, active_p=[0.3, 0.8, 1.0], c_over_a_p=0.3)
    N = g.c.cols
    mult = rng.integers(1, 4, N) if rng.random() < 0.5 else 7
    return cfg, dict(parts=g.parts, c=g.c, mult=mult, shift=5, out=g.out, bias=g.bias,
                     active=g.active)


@pytest.mark.parametrize("seed", range(60))
def test_matmul_program_equals_the_reference(seed):
    rng = np.random.default_rng([11, seed])
    cfg, kw = _case(rng)
    try:
        expect, plan_ref = _matmul_program_reference(cfg, kw["parts"], kw["c"], **{
            k: v for k, v in kw.items() if k not in ("parts", "c")})
    except ValueError as exc:
        with pytest.raises(ValueError, match=re.escape(str(exc))):
            matmul_program(cfg, kw["parts"], kw["c"],
                           **{k: v for k, v in kw.items() if k not in ("parts", "c")})
        return
    program, plan = matmul_program(cfg, kw["parts"], kw["c"],
                                   **{k: v for k, v in kw.items() if k not in ("parts", "c")})
    assert plan == plan_ref and list(plan) == list(plan_ref)
    assert assemble_binary(program) == assemble_binary(expect)
    assert program == expect


def test_field_program_is_a_program():
    cfg = HwConfig(4, 4, "ws", sp_depth=64, acc_depth=32)
    g = gemm_program(cfg, 9, 40, 6, a_addr=0, b_addr=8192, c_addr_dram=16384)
    program = g.program
    assert isinstance(program, FieldProgram)
    insns = list(program)
    assert all(isinstance(i, Insn) for i in insns) and insns[-1].op == O.HALT
    assert program[3] == insns[3] and program[-2:] == insns[-2:] and len(program) == len(insns)
    assert field_matrix(program) is program.fields and not program.fields.flags.writeable
    assert field_matrix(insns).tolist() == program.fields.tolist()
    assert pickle.loads(pickle.dumps(program)) == program
    assert estimate_cycles(program, cfg).total == estimate_cycles(insns, cfg).total
    image = np.zeros(1 << 15, np.uint8)
    rng = np.random.default_rng(0)
    g.place(image, rng.integers(-128, 128, (9, 40)), rng.integers(-128, 128, (40, 6)))
    runs = []
    for p in (program, insns):
        model = GoldenModel(cfg, image.size)
        model.load_image(image)
        runs.append((model.run(p).counters(), model.dram.copy()))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("seed", range(30))
def test_matmul_program_computes_the_product(seed):
    """On the golden model, against numpy: bias, several terms, zero blocks skipped, ws and
    os, resident and streamed A."""
    from neuralmatrix.hw.arith import matmul_int32, requantize, saturate

    rng = np.random.default_rng([12, seed])
    cfg, kw = _case(rng)
    ws = cfg.dataflow.value == "ws"
    c = kw["c"]
    if c.addr == kw["parts"][0].a.addr:             # C over A is no product: move C away
        kw["c"] = MatrixLayout.tiled(1 << 15, c.rows, c.cols, cfg.rows, cfg.bus_bytes, c.elem)
    program, plan = matmul_program(cfg, kw["parts"], kw["c"],
                                   **{k: v for k, v in kw.items() if k not in ("parts", "c")})
    c = kw["c"]
    M, N = c.rows, c.cols
    model = GoldenModel(cfg, 1 << 16)
    chunks = chunk_depths(cfg, [q.b.rows for q in kw["parts"]])
    acc = np.zeros((M, N), dtype=np.int64)
    bs = [rng.integers(-128, 128, (q.b.rows, N)) for q in kw["parts"]]
    for j, (part, k0, k) in enumerate(chunks):        # skipped chunks hold zeros
        for t in np.flatnonzero(~kw["active"][j]):
            bs[part][k0:k0 + k, t * cfg.cols:(t + 1) * cfg.cols] = 0
    for q, b in zip(kw["parts"], bs):
        a = rng.integers(-128, 128, (M, q.b.rows))
        q.a.write(model.dram, a if ws else a.T)
        q.b.write(model.dram, b)
        acc += a @ b
    if kw["bias"] is not None:
        bias = rng.integers(-5000, 5000, (1, N))
        kw["bias"].write(model.dram, bias)
        acc += bias
    model.run(program)
    acc = matmul_int32(np.zeros((M, 0), np.int64), np.zeros((0, N), np.int64), acc)
    if kw["out"] == "int32":
        expect = acc
    else:
        mult = np.broadcast_to(np.asarray(kw["mult"], dtype=np.int64), (N,))
        expect = saturate(requantize(acc, mult, np.full(N, kw["shift"]), bits=16), 8)
    np.testing.assert_array_equal(c.read(model.dram), expect)
