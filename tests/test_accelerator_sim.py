"""The accelerator RTL in amaranth.sim on tiny programs (fast; no Verilator).

Whole random programs against the golden model run on Verilator in test_programs_cocotb.py.
"""

import numpy as np
import pytest

from neuralmatrix.hw.accelerator import ErrorCode
from neuralmatrix.hw.arith import matmul_int32
from neuralmatrix.hw.isa import Insn, Opcode as O, assemble_binary, encode
from neuralmatrix.hw.params import HwConfig

from accel_sim import run_accelerator

A_BASE, B_BASE, OUT_BASE = 1024, 2048, 3072


def _place_rows(mem, base, rows, pitch):
    for r, row in enumerate(rows):
        mem[base + r * pitch: base + r * pitch + len(row)] = np.asarray(row, np.int8).view(np.uint8)


def _gemm_program(cfg, M, K, N):
    """C = 2 * (A @ B) via an accumulate chain, stored as int32."""
    B = cfg.bus_bytes
    a_rows = M if cfg.dataflow.value == "ws" else K
    a_cols = K if cfg.dataflow.value == "ws" else M
    return [
        Insn(O.LOAD_SP, sp_addr=0, nrows=a_rows, ncols=a_cols, dram_addr=A_BASE, dram_stride=B),
        Insn(O.LOAD_SP, sp_addr=16, nrows=K, ncols=N, dram_addr=B_BASE, dram_stride=B, push_next=1),
        Insn(O.COMPUTE, a_addr=0, b_addr=16, c_addr=0, m=M, k=K, n=N, pop_prev=1),
        Insn(O.COMPUTE, a_addr=0, b_addr=16, c_addr=0, m=0, k=K, n=N),     # zero-size: a no-op
        Insn(O.COMPUTE, a_addr=0, b_addr=16, c_addr=0, m=M, k=K, n=N, accumulate=1, push_next=1),
        Insn(O.STORE, acc_addr=0, nrows=M, ncols=N, dram_addr=OUT_BASE, dram_stride=16, mode=2,
             pop_prev=1),
        Insn(O.HALT),
    ]


@pytest.mark.parametrize("dataflow", ["ws", "os"])
@pytest.mark.parametrize("rows,cols,multipliers", [(2, 3, "dsp"), (4, 4, "dsp"), (2, 3, "logic")])
def test_gemm_accumulate_chain(rows, cols, multipliers, dataflow):
    cfg = HwConfig(rows, cols, dataflow, sp_depth=64, acc_depth=64, multipliers=multipliers)
    rng = np.random.default_rng(rows * 10 + cols)
    M, K, N = (7, rows, cols) if dataflow == "ws" else (rows, 9, cols)
    A = rng.integers(-128, 128, (M, K))
    Bm = rng.integers(-128, 128, (K, N))
    A[0, :] = -128
    Bm[:, 0] = -128
    mem = np.zeros(4096, np.uint8)
    _place_rows(mem, A_BASE, A if dataflow == "ws" else A.T, cfg.bus_bytes)
    _place_rows(mem, B_BASE, Bm, cfg.bus_bytes)
    prog = _gemm_program(cfg, M, K, N)
    mem[:16 * len(prog)] = np.frombuffer(assemble_binary(prog), np.uint8)
    res = run_accelerator(cfg, mem, 0)
    assert res["error"] == (0, 0, 0)
    got = np.stack([mem[OUT_BASE + 16 * r: OUT_BASE + 16 * r + 4 * N].view(np.int32) for r in range(M)])
    np.testing.assert_array_equal(got, matmul_int32(A, Bm) * 2)
    c = res["counters"]
    assert c["macs"] == 2 * M * K * N
    assert c["insns"] == len(prog)
    assert c["bytes_written"] == 4 * M * N


@pytest.mark.parametrize("word,code", [
    (0, ErrorCode.ILLEGAL_OPCODE),                                        # opcode 0
    (0xF, ErrorCode.ILLEGAL_OPCODE),                                      # unknown opcode
    (encode(Insn(O.LOAD_SP, pop_prev=1)), ErrorCode.ILLEGAL_TOKENS),      # LOAD has no prev
    (encode(Insn(O.STORE, push_next=1)), ErrorCode.ILLEGAL_TOKENS),       # STORE has no next
])
def test_illegal_instruction_halts_with_error(word, code):
    cfg = HwConfig(2, 2, sp_depth=16, acc_depth=16)
    prog = assemble_binary([Insn(O.COMPUTE)]) + word.to_bytes(16, "little") + assemble_binary([Insn(O.HALT)])
    mem = np.zeros(1024, np.uint8)
    mem[:len(prog)] = np.frombuffer(prog, np.uint8)
    res = run_accelerator(cfg, mem, 0, max_cycles=2000)
    assert res["error"] == (1, code, 16)


def test_misaligned_program_address():
    cfg = HwConfig(2, 2, sp_depth=16, acc_depth=16)
    mem = np.zeros(1024, np.uint8)
    res = run_accelerator(cfg, mem, 8, max_cycles=100)
    assert res["error"] == (1, ErrorCode.MISALIGNED_PROGRAM, 8)
