"""The compiler's fast paths emit exactly the programs of the reference implementation.

Snapshots: SHA-256 of ``assemble_binary`` of GEMM / multi-operand matmul programs and of
random ``sim.progen`` programs, taken before the speed work; any change of an emitted
instruction list changes a hash (tests/test_fast_paths.py checks the assembler itself).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from neuralmatrix.hw.isa import Insn, Opcode as O, assemble_binary
from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sim.progen import random_program
from neuralmatrix.sw.gemm_program import (
    MatrixLayout, Operand, chunk_depths, gemm_program, matmul_program,
)

# -- the cases --------------------------------------------------------------------------------

GEMMS = [  # (rows, cols, dataflow, sp_depth, acc_depth, M, K, N, out)
    (8, 8, "ws", 4096, 1024, 64, 48, 80, "int8"),
    (8, 8, "os", 4096, 1024, 64, 48, 80, "int8"),
    (16, 16, "ws", 4096, 1024, 256, 256, 256, "int8"),
    (16, 16, "os", 4096, 1024, 256, 256, 256, "int8"),
    (2, 3, "ws", 256, 256, 19, 7, 10, "int32"),
    (2, 3, "os", 256, 256, 19, 7, 10, "int32"),
    (4, 4, "ws", 64, 32, 9, 300, 6, "int32"),       # A streamed
    (4, 4, "os", 64, 32, 9, 50, 6, "int32"),        # A streamed
    (4, 4, "ws", 64, 32, 9, 40, 6, "int8"),
    (8, 8, "ws", 256, 64, 200, 64, 24, "int8"),     # several A blocks, double-buffered
    (8, 8, "os", 256, 64, 200, 64, 24, "int8"),
    (16, 16, "ws", 1024, 256, 3136, 147, 64, "int8"),
    (16, 16, "os", 1024, 256, 784, 576, 64, "int8"),
]


class _Table:
    """A stand-in PWL table: the CFG instructions of a 16-segment breakpoint table."""

    def instructions(self, table, config):
        out = [Insn(O.CFG_PWL_HDR, table=table, mode=1, x0=0, seg_shift=0, out_shift=7)]
        out += [Insn(O.CFG_PWL_SEG, table=table, seg=s, bp=s * 100 - 800, k=s - 8, b=3 * s)
                for s in range(config.pwl_segments)]
        return out


def _matmul_case(rows, dataflow, seed):
    """Two operands of different depths, bias, per-column requantization, PWL, zero blocks."""
    cfg = HwConfig(rows, rows, dataflow)
    ws = dataflow == "ws"
    rng = np.random.default_rng(seed)
    M, N, K1, K2 = 37, 45, 70, 19
    bus = cfg.bus_bytes
    pos = [0]

    def lay(r, c, elem=1):
        m = MatrixLayout.tiled(pos[0], r, c, rows, bus, elem)
        pos[0] = -(-m.end // 64) * 64
        return m

    parts = [Operand(lay(M, K) if ws else lay(K, M), lay(K, N)) for K in (K1, K2)]
    bias = lay(1, N, 4)
    c = lay(M, N)
    n_chunks = len(chunk_depths(cfg, [K1, K2]))
    active = rng.random((n_chunks, -(-N // rows))) < 0.7
    mult = rng.integers(1, 1 << 14, N)
    mult[:rows] = 77                                  # a uniform first tile
    return cfg, matmul_program(cfg, parts, c, mult=mult, shift=12, bias=bias, pwl=_Table(),
                               active=active)[0]


def _gemm(case):
    rows, cols, df, sp, acc, M, K, N, out = case
    cfg = HwConfig(rows, cols, df, sp_depth=sp, acc_depth=acc)
    mult = np.arange(N) % 5 + 1
    g = gemm_program(cfg, M, K, N, a_addr=1 << 20, b_addr=2 << 20, c_addr_dram=3 << 20,
                     mult=mult, shift=9, out=out)
    return cfg, g.program


PROGEN_CONFIGS = [HwConfig(r, c, df, sp_depth=64, acc_depth=32, pwl_segments=4, pwl_tables=2,
                           queue_depth=8)
                  for r, c in ((1, 1), (2, 3), (4, 4), (8, 8)) for df in ("ws", "os")]


def _progen(index):
    cfg = PROGEN_CONFIGS[index]
    return cfg, [random_program(cfg, np.random.default_rng([index, s]), dram_bytes=1 << 15).program
                 for s in range(10)]


def _digest(programs) -> str:
    h = hashlib.sha256()
    for p in programs:
        h.update(assemble_binary(p))
    return h.hexdigest()[:20]


SNAPSHOT = {
    'gemm0': '24e6f5b27c19fb7a67c8',
    'gemm1': '951a407522d311417064',
    'gemm2': '0197ba6f6e61fe865361',
    'gemm3': '86eeb3ee0bbcf651ea39',
    'gemm4': '930d181282809c0c8cce',
    'gemm5': '0bb25aabcbea2fc1d25d',
    'gemm6': 'e1a97bc866e84b3c6388',
    'gemm7': 'ef262990d5ce0fa91178',
    'gemm8': '5842882bd4c56497307f',
    'gemm9': '9d4c7d13c1bdbdf54936',
    'gemm10': 'b56441462029d4500f4c',
    'gemm11': '8ab9062bf9d7f9631cba',
    'gemm12': 'bef56c19ccab8942d615',
    'matmul_ws4': 'd33da9019ec990e5f490',
    'matmul_os4': 'e7aa901a6872cfec8fda',
    'matmul_ws8': 'e91008f623ea834aae4c',
    'matmul_os8': '6a08144655dd6b72d21b',
    'matmul_ws16': '0f8234da48403736b903',
    'matmul_os16': '515cf8166a3b64f277ca',
    'progen_ws_1x1': '5251a1096367db698cf3',
    'progen_os_1x1': 'f0adc10d1cbd661dec5c',
    'progen_ws_2x3': '3d3833325263cfa1b012',
    'progen_os_2x3': 'fc9b938334805e1221e2',
    'progen_ws_4x4': 'c19d7f3ffa32345d22e8',
    'progen_os_4x4': 'fd20628ca23bf2024ae7',
    'progen_ws_8x8': 'e9ec6d4ff9d4425a974d',
    'progen_os_8x8': '977e4cc008ce32c81bd8',
}


def _one(cfg, program):
    return cfg, [program]


def _all_cases():
    for i, case in enumerate(GEMMS):
        yield f"gemm{i}", lambda case=case: _one(*_gemm(case))
    for rows in (4, 8, 16):
        for df in ("ws", "os"):
            yield f"matmul_{df}{rows}", lambda rows=rows, df=df: _one(*_matmul_case(rows, df, rows))
    for i in range(len(PROGEN_CONFIGS)):
        yield f"progen_{PROGEN_CONFIGS[i].tag}", lambda i=i: _progen(i)


CASES = dict(_all_cases())


@pytest.mark.parametrize("name", list(CASES))
def test_programs_unchanged(name):
    cfg, programs = CASES[name]()
    assert _digest(programs) == SNAPSHOT[name]
