"""Random multi-term GEMM operands laid out in external memory, for the tests of
:func:`neuralmatrix.sw.gemm_program.matmul_program` (bulk emission and RTL)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sw.gemm_program import MatrixLayout, Operand, chunk_depths


@dataclass
class GemmCase:
    parts: list[Operand]
    c: MatrixLayout
    bias: MatrixLayout | None
    out: str
    active: np.ndarray
    end: int                    # first free address after every matrix (64-byte aligned)

    @property
    def shape(self) -> tuple[int, int, int]:
        c = self.c
        return c.rows, sum(p.b.rows for p in self.parts), c.cols


def random_gemm_case(cfg: HwConfig, rng, *, base: int, max_m: int, max_n: int, max_k: int,
                     max_terms: int, bias_p: float, active_p, c_over_a_p: float = 0.0) -> GemmCase:
    """``sum_t A_t @ B_t`` (+ bias) with random sizes below the bounds, the matrices tiled from
    *base* on; with probability *c_over_a_p* C overwrites the first A (loads and stores then
    ordered through external memory); blocks active with a probability drawn from *active_p*."""
    ws, rows, bus = cfg.dataflow.value == "ws", cfg.rows, cfg.bus_bytes
    M, N = int(rng.integers(1, max_m)), int(rng.integers(1, max_n))
    depths = [int(rng.integers(1, max_k)) for _ in range(int(rng.integers(1, max_terms)))]
    pos = [base]

    def lay(r, c, elem=1):
        m = MatrixLayout.tiled(pos[0], r, c, rows, bus, elem)
        pos[0] = -(-m.end // 64) * 64
        return m

    parts = [Operand(lay(M, K) if ws else lay(K, M), lay(K, N)) for K in depths]
    bias = lay(1, N, 4) if rng.random() < bias_p else None
    out = "int32" if rng.random() < 0.25 else "int8"
    elem = 4 if out == "int32" else 1
    if c_over_a_p and rng.random() < c_over_a_p:
        c = MatrixLayout.tiled(parts[0].a.addr, M, N, rows, bus, elem)
    else:
        c = lay(M, N, elem)
    n_chunks = len(chunk_depths(cfg, depths))
    active = rng.random((n_chunks, -(-N // rows))) < rng.choice(active_p)
    return GemmCase(parts, c, bias, out, active, pos[0])
