"""Random program generator: valid, race-free, runnable, and covering the ISA's corners."""

import numpy as np
import pytest

from neuralmatrix.hw.isa import INSN_BYTES, Opcode as O, disassemble_binary, validate
from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sim.progen import random_program
from neuralmatrix.sw.golden import estimate_cycles, find_races

SHAPES = [(1, 1), (2, 3), (4, 4), (8, 8)]
CONFIGS = [HwConfig(r, c, df, sp_depth=64, acc_depth=32, pwl_segments=4, pwl_tables=2,
                    queue_depth=8)
           for r, c in SHAPES for df in ("ws", "os")]
PER_CONFIG = 25                      # 200 programs in all
DRAM = 1 << 15


def _cases(config, seed0):
    for seed in range(PER_CONFIG):
        yield random_program(config, np.random.default_rng([seed0, seed]), dram_bytes=DRAM)


@pytest.fixture(scope="module")
def features():
    """Features seen over every generated program, filled by the test below."""
    return set()


@pytest.mark.parametrize("index", range(len(CONFIGS)), ids=[c.tag for c in CONFIGS])
def test_random_programs_are_valid_race_free_and_run(index, features):
    config = CONFIGS[index]
    for case in _cases(config, index):
        prog = case.program
        n = len(prog) * INSN_BYTES
        binary = case.image[case.insn_addr:case.insn_addr + n].tobytes()
        assert disassemble_binary(binary) == prog
        assert case.insn_addr % max(INSN_BYTES, config.bus_bytes) == 0
        validate(prog, config, dram_bytes=DRAM, program_range=(case.insn_addr, case.insn_addr + n))
        assert find_races(prog, config=config) == []
        for addr, nbytes in case.outputs:
            assert 0 <= addr and addr + nbytes <= DRAM
            assert addr >= case.insn_addr + n or addr + nbytes <= case.insn_addr
        dram, result = case.golden()
        assert result.insns == len(prog)
        assert (dram[case.insn_addr:case.insn_addr + n] == case.image[case.insn_addr:case.insn_addr + n]).all()
        assert estimate_cycles(prog, config).total > 0
        features.update(_features(prog))


def _features(prog):
    seen = set()
    for insn in prog:
        seen.add(insn.op.name)
        if insn.op in (O.LOAD_SP, O.LOAD_ACC, O.STORE) and insn.nrows == 0:
            seen.add("zero-size transfer")
        if insn.op in (O.LOAD_SP, O.STORE) and insn.nrows > 1 and insn.dram_stride == 0:
            seen.add(f"{insn.op.name} stride 0")
        if insn.op == O.STORE:
            seen.add(f"store mode {insn.mode}")
            row = insn.ncols * (4 if insn.mode == 2 else 1)
            if insn.nrows > 1 and 0 < insn.dram_stride < row:
                seen.add("overlapping store rows")
        if insn.op == O.COMPUTE:
            if insn.accumulate and insn.m:
                seen.add("accumulate")
            if not insn.m and (insn.pop_prev or insn.pop_next):
                seen.add("fence compute with tokens")
        if insn.op == O.CFG_PWL_HDR:
            seen.add(f"pwl mode {insn.mode}")
        if insn.op == O.CFG_REQUANT:
            if insn.mult in (0, 65535):
                seen.add("extreme mult")
            if insn.shift == 47:
                seen.add("shift 47")
        if insn.op == O.LOAD_SP and insn.nrows and insn.ncols < 2:
            seen.add("short rows")
    return seen


def test_features_covered(features):
    """Runs after the parametrized test in the same module (pytest keeps file order)."""
    if len(features) == 0:
        pytest.skip("run together with test_random_programs_are_valid_race_free_and_run")
    wanted = {op.name for op in O} | {
        "zero-size transfer", "LOAD_SP stride 0", "STORE stride 0", "store mode 0",
        "store mode 1", "store mode 2", "overlapping store rows", "accumulate",
        "fence compute with tokens", "pwl mode 0", "pwl mode 1", "extreme mult", "shift 47",
        "short rows",
    }
    assert wanted <= features, wanted - features


def test_generator_is_deterministic():
    config = CONFIGS[5]
    a = random_program(config, np.random.default_rng(7), dram_bytes=DRAM)
    b = random_program(config, np.random.default_rng(7), dram_bytes=DRAM)
    assert a.program == b.program and (a.image == b.image).all() and a.outputs == b.outputs
