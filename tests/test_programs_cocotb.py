"""Random valid programs on the accelerator RTL (Verilator), bit-identical to the golden model.

The default suite runs a few hundred programs over several array sizes and both dataflows;
``--runslow --programs N`` runs N more per configuration (the long run: 10,000 in all).
"""

import zlib

import numpy as np
import pytest

from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sim.harness import ProgramJob, run_programs
from neuralmatrix.sim.progen import random_program

DRAM = 1 << 16          # bytes of the random programs' external memory
SIM_DRAM = 1 << 20      # the simulated DRAM (the image is loaded at address 0)

CONFIGS = {
    "ws_2x3": HwConfig(2, 3, "ws", sp_depth=64, acc_depth=64),
    "os_2x3": HwConfig(2, 3, "os", sp_depth=64, acc_depth=64),
    "ws_4x4_q4": HwConfig(4, 4, "ws", sp_depth=128, acc_depth=64, queue_depth=4, dram_latency=3),
    "os_4x4": HwConfig(4, 4, "os", sp_depth=128, acc_depth=64),
    "ws_8x8": HwConfig(8, 8, "ws", sp_depth=256, acc_depth=128, pwl_segments=8),
    "os_8x8": HwConfig(8, 8, "os", sp_depth=256, acc_depth=128, pwl_tables=2),
    # Mixed multipliers: the accelerator's output path and MAC counter take 3 * 3 + 1 = 10 of
    # the 13 DSP blocks, so 3 PEs multiply on DSP blocks and 3 in logic.
    "ws_2x3_auto13": HwConfig(2, 3, "ws", sp_depth=64, acc_depth=64, multipliers="auto",
                              dsp_budget=13),
    "os_2x3_auto13": HwConfig(2, 3, "os", sp_depth=64, acc_depth=64, multipliers="auto",
                              dsp_budget=13),
}


def _check_programs(config: HwConfig, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cases = [random_program(config, rng, dram_bytes=DRAM) for _ in range(count)]
    jobs = [ProgramJob(case.image, case.insn_addr, [(0, DRAM)], max_cycles=200_000, name=f"p{i}")
            for i, case in enumerate(cases)]
    results = run_programs(config, jobs, dram_bytes=SIM_DRAM)
    mismatches = []
    for i, (case, res) in enumerate(zip(cases, results)):
        want, golden = case.golden()
        got = res.regions[0]
        if res.error or res.fault:
            mismatches.append(f"program {i}: error={res.error} code={res.error_code} fault={res.fault}")
            continue
        diff = np.flatnonzero(got != want)
        if diff.size:
            a = int(diff[0])
            mismatches.append(f"program {i}: {diff.size} bytes differ, first at {a:#x}: "
                              f"RTL {got[a]} golden {want[a]}")
        for name in ("macs", "pwl_evals", "insns", "bytes_written"):
            if res.counters[name] != golden.counters()[name]:
                mismatches.append(f"program {i}: counter {name} RTL {res.counters[name]} "
                                  f"golden {golden.counters()[name]}")
    assert not mismatches, f"{len(mismatches)} of {count} programs differ:\n" + "\n".join(mismatches[:20])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_random_programs(name):
    _check_programs(CONFIGS[name], count=50, seed=zlib.crc32(name.encode()))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_random_programs_long(name, request):
    count = request.config.getoption("--programs")
    _check_programs(CONFIGS[name], count=count, seed=1000 + zlib.crc32(name.encode()))


@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_maximum_size_transfers(dataflow):
    """Loads that fill the whole scratchpad and accumulator, the longest COMPUTE the dataflow
    allows, and stores of every accumulator row, in all three store modes."""
    from neuralmatrix.hw.isa import Insn, Opcode as O, assemble_binary, validate
    from neuralmatrix.sw.golden import GoldenModel

    cfg = HwConfig(2, 3, dataflow, sp_depth=64, acc_depth=64)
    B, S, A = cfg.bus_bytes, cfg.sp_depth, cfg.acc_depth
    rng = np.random.default_rng(5)
    image = np.zeros(DRAM, np.uint8)
    sp_src, acc_src, out = 0x1000, 0x2000, 0x4000
    image[sp_src:sp_src + S * B] = rng.integers(0, 256, S * B)
    image[acc_src:acc_src + A * 4 * cfg.cols] = rng.integers(0, 256, A * 4 * cfg.cols)
    m, k = (A, cfg.rows) if dataflow == "ws" else (cfg.rows, S // 2)
    program = [
        Insn(O.LOAD_SP, sp_addr=0, nrows=S, ncols=cfg.sp_row, dram_addr=sp_src, dram_stride=B),
        Insn(O.LOAD_ACC, acc_addr=0, nrows=A, ncols=cfg.cols, dram_addr=acc_src,
             dram_stride=4 * cfg.cols, push_next=1),
        Insn(O.COMPUTE, a_addr=0, b_addr=S // 2 if dataflow == "os" else 0, c_addr=0, m=m, k=k,
             n=cfg.cols, accumulate=1, pop_prev=1, push_next=1),
        Insn(O.CFG_REQUANT, lane=0, count=cfg.cols, mult=65535, shift=20),
        Insn(O.STORE, acc_addr=0, nrows=A, ncols=cfg.cols, dram_addr=out, dram_stride=16,
             mode=2, pop_prev=1),
        Insn(O.STORE, acc_addr=0, nrows=A, ncols=cfg.cols, dram_addr=out + 16 * A,
             dram_stride=B, mode=0),
        Insn(O.HALT),
    ]
    insn_addr = 0x8000
    validate(program, cfg, dram_bytes=DRAM, program_range=(insn_addr, insn_addr + 16 * len(program)))
    image[insn_addr:insn_addr + 16 * len(program)] = np.frombuffer(assemble_binary(program), np.uint8)
    golden = GoldenModel(cfg, DRAM)
    golden.load_image(image)
    golden.run(program)
    res = run_programs(cfg, [ProgramJob(image, insn_addr, [(0, DRAM)], max_cycles=100_000)],
                       dram_bytes=SIM_DRAM)[0]
    assert not res.error and not res.fault
    np.testing.assert_array_equal(res.regions[0], golden.dram)
    assert res.counters["macs"] == m * k * cfg.cols
