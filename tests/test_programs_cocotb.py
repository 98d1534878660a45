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
