"""matmul_program's schedules on the accelerator RTL (Verilator), bit-identical to the golden
model: resident and streamed A, A streamed once per group of N tiles, bias, several terms,
skipped zero blocks, both dataflows."""

import numpy as np
import pytest

from neuralmatrix.hw.isa import assemble_binary
from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sim.harness import ProgramJob, run_programs
from neuralmatrix.sw.gemm_program import matmul_program
from neuralmatrix.sw.golden import GoldenModel

from gemm_cases import random_gemm_case

SIM_DRAM = 1 << 20

CONFIGS = {
    "ws_4x4": HwConfig(4, 4, "ws", sp_depth=128, acc_depth=64),
    "os_4x4": HwConfig(4, 4, "os", sp_depth=128, acc_depth=64),
    "ws_8x8": HwConfig(8, 8, "ws", sp_depth=512, acc_depth=256),
}


def _job(cfg: HwConfig, rng, index: int):
    g = random_gemm_case(cfg, rng, base=64, max_m=80, max_n=50, max_k=120, max_terms=3,
                         bias_p=0.6, active_p=[0.5, 1.0])
    parts, c, bias, out, active = g.parts, g.c, g.bias, g.out, g.active
    M, K, N = g.shape
    program, plan = matmul_program(cfg, parts, c, mult=rng.integers(1, 8, N), shift=6, out=out,
                                   bias=bias, active=active)
    blob = np.frombuffer(assemble_binary(program), np.uint8)
    insn_addr = g.end
    image = np.zeros(insn_addr + blob.size, np.uint8)
    for q in parts:
        q.a.write(image, rng.integers(-128, 128, (q.a.rows, q.a.cols)))
        q.b.write(image, rng.integers(-128, 128, (q.b.rows, q.b.cols)))
    if bias is not None:
        bias.write(image, rng.integers(-3000, 3000, (1, N)))
    image[insn_addr:] = blob
    golden = GoldenModel(cfg, SIM_DRAM)
    golden.load_image(image)
    counters = golden.run(program).counters()
    want = c.read(golden.dram)
    job = ProgramJob(image, insn_addr, [(c.addr, c.end - c.addr)], max_cycles=2_000_000,
                     name=f"gemm{index} {M}x{K}x{N} {plan}")
    return job, c, want, counters, plan


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matmul_programs_on_rtl(name):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(list(CONFIGS).index(name))
    cases = [_job(cfg, rng, i) for i in range(16)]
    if name == "ws_8x8":        # some A tiles serve a group of N tiles
        assert any(plan["a_streamed"] and plan["n_tiles_per_group"] > 1 for *_, plan in cases)
    results = run_programs(cfg, [job for job, *_ in cases], dram_bytes=SIM_DRAM)
    bad = []
    for (job, c, want, counters, plan), res in zip(cases, results):
        if res.error or res.fault or res.timed_out:
            bad.append(f"{job.name}: error={res.error} fault={res.fault} timeout={res.timed_out}")
            continue
        got = np.zeros(SIM_DRAM, np.uint8)
        got[c.addr:c.end] = res.regions[0]
        if not np.array_equal(c.read(got), want):
            bad.append(f"{job.name}: C differs")
        for k in ("macs", "insns", "bytes_written"):
            if res.counters[k] != counters[k]:
                bad.append(f"{job.name}: counter {k} RTL {res.counters[k]} golden {counters[k]}")
    assert not bad, "\n".join(bad)
