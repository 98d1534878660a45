"""The instruction set: encoding, text form, validation, deadlock detection, generated docs."""

from pathlib import Path

import numpy as np
import pytest

from neuralmatrix.hw.isa import (
    FIELDS, TOKEN_DEPTH, Insn, Opcode as O, ProgramError, assemble_binary, decode,
    disassemble_binary, encode, format_insn, format_program, markdown_table, parse_program,
    trace_tokens, validate, validate_binary,
)
from neuralmatrix.hw.params import HwConfig

WS = HwConfig(rows=4, cols=4, dataflow="ws", sp_depth=64, acc_depth=32, pwl_segments=8,
              pwl_tables=2, queue_depth=4)
OS = HwConfig(rows=4, cols=4, dataflow="os", sp_depth=64, acc_depth=32, pwl_segments=8,
              pwl_tables=2, queue_depth=4)
HALT = Insn(O.HALT)


def _random_insn(rng, op):
    args = {f.name: int(rng.integers(f.min, f.max + 1)) for f in FIELDS[op]}
    flags = {} if op == O.HALT else {f: int(rng.integers(0, 2)) for f in
                                     ("pop_prev", "pop_next", "push_prev", "push_next")}
    return Insn(op, **flags, **args)


def _problems(program, config=WS, **kw):
    with pytest.raises(ProgramError) as info:
        validate(program, config, **kw)
    return info.value.problems


# -- encoding and text ----------------------------------------------------------------------

def test_encode_decode_round_trip_every_opcode():
    rng = np.random.default_rng(1)
    program = [_random_insn(rng, op) for op in O for _ in range(50)]
    for insn in program:
        assert decode(encode(insn)) == insn
    assert disassemble_binary(assemble_binary(program)) == program


def test_text_round_trip_every_opcode():
    rng = np.random.default_rng(2)
    program = [_random_insn(rng, op) for op in O for _ in range(30)]
    text = format_program(program)
    assert parse_program(text) == program
    assert [format_insn(i) for i in parse_program(text)] == text.splitlines()


def test_text_syntax():
    text = """
    # a comment line
    load_sp sp_addr=0x10 nrows=2 ncols=4 push_next   # trailing comment
    COMPUTE m=8 k=8 n=8 accumulate=1 pop_prev=1 push_next

    CFG_PWL_SEG table=1 seg=2 bp=-5 k=-32768 b=-7
    HALT
    """
    prog = parse_program(text)
    assert prog == [
        Insn(O.LOAD_SP, sp_addr=16, nrows=2, ncols=4, push_next=1),
        Insn(O.COMPUTE, m=8, k=8, n=8, accumulate=1, pop_prev=1, push_next=1),
        Insn(O.CFG_PWL_SEG, table=1, seg=2, bp=-5, k=-32768, b=-7),
        HALT,
    ]
    assert format_insn(prog[1]) == ("COMPUTE a_addr=0 b_addr=0 c_addr=0 m=8 k=8 n=8 accumulate=1 "
                                    "pop_prev push_next")


def test_text_errors_name_every_line():
    text = "LOAD_SP nrows=1\nFROB x=1\nCOMPUTE m=1 q=2\nSTORE mode\nSTORE mode=x\nHALT m=1\nHALT\n"
    with pytest.raises(ProgramError) as info:
        parse_program(text)
    msgs = info.value.problems
    assert len(msgs) == 5
    assert "line 2: unknown opcode 'FROB'" in msgs[0]
    assert msgs[1].startswith("line 3: COMPUTE has no field 'q'")
    assert msgs[2].startswith("line 4: STORE: field 'mode' needs a value")
    assert msgs[3].startswith("line 5: STORE: mode must be an integer")
    assert msgs[4].startswith("line 6: HALT has no field 'm'")


# -- validation -------------------------------------------------------------------------------

# (config, instruction, expected message fragment)
RULES = [
    (WS, Insn(O.LOAD_SP, nrows=70000, ncols=1), "insn 0 LOAD_SP: nrows must be 0..65535, got 70000"),
    (WS, Insn(O.CFG_PWL_SEG, bp=40000), "insn 0 CFG_PWL_SEG: bp must be -32768..32767, got 40000"),
    (WS, Insn(O.COMPUTE, push_next=2), "insn 0 COMPUTE: push_next must be 0 or 1, got 2"),
    (WS, Insn(O.LOAD_SP, dram_addr=2), "insn 0 LOAD_SP: dram_addr must be a multiple of bus_bytes = 4, got 2"),
    (WS, Insn(O.STORE, dram_stride=6), "insn 0 STORE: dram_stride must be a multiple of bus_bytes = 4, got 6"),
    (WS, Insn(O.LOAD_SP, sp_addr=60, nrows=5, ncols=1), "insn 0 LOAD_SP: sp_addr + nrows must be <= sp_depth = 64, got 65"),
    (WS, Insn(O.LOAD_SP, nrows=1, ncols=5), "insn 0 LOAD_SP: ncols must be <= sp_row = 4, got 5"),
    (WS, Insn(O.LOAD_SP, nrows=1, ncols=0), "insn 0 LOAD_SP: ncols must be >= 1 when nrows > 0, got 0"),
    (WS, Insn(O.LOAD_ACC, acc_addr=30, nrows=3, ncols=1), "insn 0 LOAD_ACC: acc_addr + nrows must be <= acc_depth = 32, got 33"),
    (WS, Insn(O.LOAD_ACC, nrows=1, ncols=5), "insn 0 LOAD_ACC: ncols must be <= cols = 4, got 5"),
    (WS, Insn(O.STORE, acc_addr=31, nrows=2, ncols=1), "insn 0 STORE: acc_addr + nrows must be <= acc_depth = 32, got 33"),
    (WS, Insn(O.STORE, nrows=1, ncols=5), "insn 0 STORE: ncols must be <= cols = 4, got 5"),
    (WS, Insn(O.STORE, mode=3), "insn 0 STORE: mode must be <= INT32 = 2, got 3"),
    (WS, Insn(O.STORE, table=2), "insn 0 STORE: table must be <= pwl_tables - 1 = 1, got 2"),
    (WS, Insn(O.COMPUTE, m=1, k=5, n=1), "insn 0 COMPUTE: k must be <= rows = 4 in ws, got 5"),
    (WS, Insn(O.COMPUTE, m=1, k=1, n=5), "insn 0 COMPUTE: n must be <= cols = 4, got 5"),
    (WS, Insn(O.COMPUTE, a_addr=60, m=5, k=1, n=1), "insn 0 COMPUTE: a_addr + m must be <= sp_depth = 64 in ws, got 65"),
    (WS, Insn(O.COMPUTE, b_addr=62, m=1, k=3, n=1), "insn 0 COMPUTE: b_addr + k must be <= sp_depth = 64, got 65"),
    (WS, Insn(O.COMPUTE, c_addr=30, m=3, k=1, n=1), "insn 0 COMPUTE: c_addr + m must be <= acc_depth = 32, got 33"),
    (OS, Insn(O.COMPUTE, m=5, k=1, n=1), "insn 0 COMPUTE: m must be <= rows = 4 in os, got 5"),
    (OS, Insn(O.COMPUTE, a_addr=60, m=1, k=5, n=1), "insn 0 COMPUTE: a_addr + k must be <= sp_depth = 64 in os, got 65"),
    (WS, Insn(O.CFG_REQUANT, lane=3, count=2), "insn 0 CFG_REQUANT: lane + count must be <= cols = 4, got 5"),
    (WS, Insn(O.CFG_REQUANT, shift=48), "insn 0 CFG_REQUANT: shift must be <= MAX_SHIFT = 47, got 48"),
    (WS, Insn(O.CFG_PWL_SEG, seg=8), "insn 0 CFG_PWL_SEG: seg must be <= pwl_segments - 1 = 7, got 8"),
    (WS, Insn(O.CFG_PWL_SEG, table=2), "insn 0 CFG_PWL_SEG: table must be <= pwl_tables - 1 = 1, got 2"),
    (WS, Insn(O.CFG_PWL_HDR, table=3), "insn 0 CFG_PWL_HDR: table must be <= pwl_tables - 1 = 1, got 3"),
    (WS, Insn(O.CFG_PWL_HDR, out_shift=48), "insn 0 CFG_PWL_HDR: out_shift must be <= MAX_SHIFT = 47, got 48"),
    (WS, Insn(O.CFG_PWL_HDR, seg_shift=16), "insn 0 CFG_PWL_HDR: seg_shift must be 0..15, got 16"),
    (WS, Insn(O.LOAD_SP, pop_prev=1), "insn 0 LOAD_SP: pop_prev must be 0 (the LOAD unit has no previous unit)"),
    (WS, Insn(O.LOAD_ACC, push_prev=1), "insn 0 LOAD_ACC: push_prev must be 0 (the LOAD unit has no previous unit)"),
    (WS, Insn(O.STORE, pop_next=1), "insn 0 STORE: pop_next must be 0 (the STORE unit has no next unit)"),
    (WS, Insn(O.CFG_REQUANT, push_next=1), "insn 0 CFG_REQUANT: push_next must be 0 (the STORE unit has no next unit)"),
]


@pytest.mark.parametrize("config,insn,message", RULES, ids=[m.split(": ")[1][:40] for _, _, m in RULES])
def test_every_rule_is_reported(config, insn, message):
    problems = _problems([insn, HALT], config)
    assert any(message in p for p in problems), problems


def test_halt_rules():
    assert any("HALT has no token flags" in p for p in _problems([Insn(O.HALT, pop_prev=1)]))
    assert any("must end with HALT, found none" in p for p in _problems([Insn(O.COMPUTE)]))
    probs = _problems([HALT, Insn(O.COMPUTE)])
    assert any("insn 0 HALT: must be the last instruction" in p for p in probs)
    assert any("exactly one HALT allowed, found 2 (insns 0, 1)" in p for p in _problems([HALT, HALT]))


def test_memory_ranges():
    load = Insn(O.LOAD_SP, nrows=3, ncols=2, dram_addr=1000, dram_stride=8)
    probs = _problems([load, HALT], dram_bytes=1019)   # the last row ends at 1017, its beat at 1019
    assert any("insn 0 LOAD_SP: dram_addr/dram_stride/nrows: reads bytes 1000..1019, beyond "
               "dram_bytes = 1019" in p for p in probs)
    validate([load, HALT], WS, dram_bytes=1020)        # whole beats: 1016..1019 is the last
    store = Insn(O.STORE, nrows=4, ncols=4, dram_addr=0, dram_stride=64, mode=2)
    probs = _problems([store, HALT], program_range=(128, 160))
    assert any("insn 0 STORE: dram_addr/dram_stride: row 2 writes bytes 128..143 inside the program "
               "(128..159)" in p for p in probs)
    validate([store, HALT], WS, program_range=(144, 192))  # rows fall in gaps: no overlap


def test_many_problems_in_one_error():
    program = [
        Insn(O.LOAD_SP, nrows=1, ncols=9, dram_addr=3),
        Insn(O.COMPUTE, m=1, k=9, n=9),
        Insn(O.STORE, mode=3, pop_next=1),
    ]
    with pytest.raises(ProgramError) as info:
        validate(program, WS)
    probs = info.value.problems
    for fragment in ("insn 0 LOAD_SP: dram_addr", "insn 0 LOAD_SP: ncols", "insn 1 COMPUTE: k",
                     "insn 1 COMPUTE: n", "insn 2 STORE: mode", "insn 2 STORE: pop_next",
                     "must end with HALT"):
        assert any(fragment in p for p in probs), fragment
    assert str(info.value).startswith(f"{len(probs)} problems in program:")


def test_valid_program_passes():
    program = [
        Insn(O.LOAD_SP, nrows=4, ncols=4, dram_addr=64, dram_stride=4, push_next=1),
        Insn(O.COMPUTE, m=4, k=4, n=4, pop_prev=1, push_next=1),
        Insn(O.STORE, nrows=4, ncols=4, dram_addr=256, dram_stride=16, mode=2, pop_prev=1),
        HALT,
    ]
    validate(program, WS, dram_bytes=4096, program_range=(0, 64))


# -- deadlock -----------------------------------------------------------------------------------

def test_deadlock_on_crossed_tokens():
    program = [
        Insn(O.LOAD_SP, pop_next=1, push_next=1),      # waits for compute
        Insn(O.COMPUTE, pop_prev=1, push_prev=1),      # waits for load
        Insn(O.STORE, nrows=0),
        HALT,
    ]
    probs = _problems(program)
    assert len(probs) == 1
    msg = probs[0]
    assert msg.startswith("deadlock: ")
    assert "LOAD blocked at insn 0 LOAD_SP: waiting for a token from COMPUTE (pop_next)" in msg
    assert "COMPUTE blocked at insn 1 COMPUTE: waiting for a token from LOAD (pop_prev)" in msg
    assert "STORE finished" in msg


def test_deadlock_on_full_instruction_queue():
    # queue_depth + 1 loads wait for computes behind them; only queue_depth loads fit.
    n = WS.queue_depth + 1
    program = ([Insn(O.LOAD_SP, pop_next=1) for _ in range(n)]
               + [Insn(O.COMPUTE, push_prev=1) for _ in range(n)] + [HALT])
    msg = _problems(program)[0]
    assert (f"fetch blocked at insn {WS.queue_depth} LOAD_SP: LOAD queue full "
            f"({WS.queue_depth} instructions waiting)") in msg
    assert "LOAD blocked at insn 0 LOAD_SP: waiting for a token from COMPUTE (pop_next)" in msg
    assert "COMPUTE idle, waiting for fetch" in msg
    # With the computes first, the same program is fine.
    validate(program[n:-1] + program[:n] + [HALT], WS)


def test_deadlock_on_full_token_queue():
    program = [Insn(O.COMPUTE, push_next=1) for _ in range(TOKEN_DEPTH + 1)] + [HALT]
    msg = _problems(program)[0]
    assert (f"COMPUTE blocked at insn {TOKEN_DEPTH} COMPUTE: waiting to push a token to STORE "
            f"(token queue full, {TOKEN_DEPTH} tokens)") in msg
    validate(program[1:], WS)      # 255 unconsumed tokens still fit


def test_trace_clocks():
    program = [
        Insn(O.LOAD_SP, push_next=1),
        Insn(O.LOAD_SP),
        Insn(O.COMPUTE, pop_prev=1, push_next=1),
        Insn(O.STORE, pop_prev=1),
        HALT,
    ]
    trace = trace_tokens(program)
    assert not trace.deadlocked
    assert trace.unit_index == [0, 1, 0, 0, -1]
    assert trace.clock[2] == (0, -1, -1)       # the first load completed before
    assert trace.clock[3] == (0, 0, -1)        # transitively: load 0 and compute 0


# -- binaries and docs ----------------------------------------------------------------------------

def test_validate_binary_reports_illegal_opcodes_with_index():
    good = assemble_binary([Insn(O.COMPUTE)])
    blob = good + (0).to_bytes(16, "little") + (0xF).to_bytes(16, "little") + assemble_binary(
        [Insn(O.STORE, mode=3), HALT])
    with pytest.raises(ProgramError) as info:
        validate_binary(blob, WS)
    probs = info.value.problems
    assert "insn 1: illegal opcode 0" in probs
    assert "insn 2: illegal opcode 15" in probs
    assert any(p.startswith("insn 3 STORE: mode") for p in probs)
    with pytest.raises(ProgramError, match="not a multiple of 16"):
        validate_binary(good[:8], WS)
    assert validate_binary(good + assemble_binary([HALT]), WS) == [Insn(O.COMPUTE), HALT]


def test_isa_md_is_up_to_date():
    path = Path(__file__).resolve().parents[1] / "hw" / "ISA.md"     # the source tree's copy
    assert path.read_text() == markdown_table(), (
        "hw/ISA.md is stale: regenerate it with\n  python -c \"from neuralmatrix.hw.isa import "
        "markdown_table; open('hw/ISA.md', 'w').write(markdown_table())\"")
    for op in O:
        assert f"`{op.name}`" in path.read_text()
