"""The golden model against direct numpy, the race checker, the cycle estimate, the GEMM program."""

import numpy as np
import pytest

from neuralmatrix.hw.arith import matmul_int32, pwl_eval, requantize, saturate, wrap_int32
from neuralmatrix.hw.isa import Insn, Opcode as O, ProgramError, validate
from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sw.gemm_program import MatrixLayout, ProgramBuilder, gemm_program
from neuralmatrix.sw.golden import GoldenModel, estimate_cycles, find_races

I32_MAX, I32_MIN = 2**31 - 1, -2**31
HALT = Insn(O.HALT)
DRAM = 1 << 14
A_AT, B_AT, ACC_AT, OUT_AT = 1024, 2048, 3072, 8192


def _cfg(dataflow="ws", rows=4, cols=4):
    return HwConfig(rows=rows, cols=cols, dataflow=dataflow, sp_depth=64, acc_depth=32,
                    pwl_segments=4, pwl_tables=2)


def _put_rows(model, addr, rows, pitch, dtype=np.int8):
    for r, row in enumerate(np.asarray(rows)):
        raw = np.asarray(row, dtype=dtype).astype(np.dtype(dtype).newbyteorder("<")).view(np.uint8)
        model.dram[addr + r * pitch: addr + r * pitch + raw.size] = raw


def _get_rows(model, addr, nrows, nbytes, pitch, dtype=np.int8):
    return np.stack([model.dram[addr + r * pitch: addr + r * pitch + nbytes].view(dtype)
                     for r in range(nrows)])


def _run(cfg, program, setup=None):
    model = GoldenModel(cfg, DRAM)
    if setup:
        setup(model)
    result = model.run(program + [HALT])
    return model, result


def _sync(cfg, program):
    """The program with tokens (and race-free)."""
    b = ProgramBuilder(cfg)
    for insn in program:
        b.emit(insn)
    prog = b.finish()[:-1]
    assert find_races(prog + [HALT], config=cfg) == []
    return prog


# -- compute ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_compute_with_accumulate_chain_and_wrap(dataflow):
    cfg = _cfg(dataflow)
    rng = np.random.default_rng(0)
    M, K, N = (7, 4, 3) if dataflow == "ws" else (4, 9, 3)
    A = rng.integers(-128, 128, (M, K))
    B = rng.integers(-128, 128, (K, N))
    A[0], B[:, 0] = -128, -128                      # -128 * -128 products
    bias = np.full((M, 4), I32_MAX - 5)             # the chain wraps past INT32_MAX
    a_rows = A if dataflow == "ws" else A.T
    prog = _sync(cfg, [
        Insn(O.LOAD_SP, sp_addr=0, nrows=a_rows.shape[0], ncols=a_rows.shape[1], dram_addr=A_AT,
             dram_stride=4),
        Insn(O.LOAD_SP, sp_addr=20, nrows=K, ncols=N, dram_addr=B_AT, dram_stride=4),
        Insn(O.LOAD_ACC, acc_addr=2, nrows=M, ncols=4, dram_addr=ACC_AT, dram_stride=16),
        Insn(O.COMPUTE, a_addr=0, b_addr=20, c_addr=2, m=M, k=K, n=N, accumulate=1),
        Insn(O.COMPUTE, a_addr=0, b_addr=20, c_addr=2, m=M, k=K, n=N, accumulate=1),
        Insn(O.COMPUTE, a_addr=0, b_addr=20, c_addr=12, m=M, k=K, n=N, accumulate=0),
        Insn(O.STORE, acc_addr=2, nrows=M, ncols=4, dram_addr=OUT_AT, dram_stride=16, mode=2),
    ])

    def setup(m):
        _put_rows(m, A_AT, a_rows, 4)
        _put_rows(m, B_AT, B, 4)
        _put_rows(m, ACC_AT, bias, 16, np.int32)

    model, result = _run(cfg, prog, setup)
    prod = A.astype(np.int64) @ B
    want = bias.astype(np.int64)
    want[:, :N] += 2 * prod
    got = _get_rows(model, OUT_AT, M, 16, 16, np.int32)
    np.testing.assert_array_equal(got, wrap_int32(want))
    assert (got[:, :N] < 0).any()                        # it did wrap
    np.testing.assert_array_equal(got[:, N:], bias[:, N:])   # columns >= n unchanged
    np.testing.assert_array_equal(model.acc[12:12 + M, :N], matmul_int32(A, B))
    assert result.macs == 3 * M * K * N
    assert result.bytes_written == 4 * M * 4
    assert result.insns == len(prog) + 1


def test_compute_zero_size_is_a_no_op():
    cfg = _cfg()
    model = GoldenModel(cfg, DRAM)
    model.sp[:] = 1
    model.acc[:] = 7
    result = model.run([Insn(O.COMPUTE, m=4, k=0, n=4), Insn(O.COMPUTE, m=0, k=4, n=4), HALT])
    assert (model.acc == 7).all() and result.macs == 0


# -- loads --------------------------------------------------------------------------------------

def test_load_sp_broadcast_padding_and_zero_fill():
    cfg = _cfg(rows=2, cols=3)                       # sp_row 3, bus 4
    model = GoldenModel(cfg, DRAM)
    model.sp[:] = 99
    row = np.array([-128, 127, 5], np.int8)
    _put_rows(model, A_AT, [row, row + 1], 12)       # pitch 12: padded rows
    model.run([
        Insn(O.LOAD_SP, sp_addr=0, nrows=3, ncols=3, dram_addr=A_AT, dram_stride=0),    # broadcast
        Insn(O.LOAD_SP, sp_addr=3, nrows=2, ncols=2, dram_addr=A_AT, dram_stride=12),   # short rows
        Insn(O.LOAD_SP, sp_addr=5, nrows=0, ncols=3, dram_addr=A_AT, dram_stride=4),    # fence
        HALT])
    np.testing.assert_array_equal(model.sp[0:3], [row] * 3)
    np.testing.assert_array_equal(model.sp[3:5], [[-128, 127, 0], [-127, -128, 0]])
    assert (model.sp[5:] == 99).all()


def test_load_acc_little_endian_and_zero_fill():
    cfg = _cfg()
    model = GoldenModel(cfg, DRAM)
    model.acc[:] = -1
    vals = np.array([[I32_MIN, -1, 0x01020304], [I32_MAX, 1, -2]])
    _put_rows(model, ACC_AT, vals, 16, np.int32)
    result = model.run([Insn(O.LOAD_ACC, acc_addr=1, nrows=2, ncols=3, dram_addr=ACC_AT,
                             dram_stride=16), HALT])
    assert model.dram[ACC_AT + 8] == 0x04                   # little-endian in memory
    np.testing.assert_array_equal(model.acc[1:3], np.c_[vals, [0, 0]])
    assert (model.acc[0] == -1).all() and (model.acc[3] == -1).all()
    assert result.load_bytes_read == 2 * 3 * 4               # 3 beats of 4 bytes per row
    assert result.bytes_read == 2 * 16 + 24


# -- stores ---------------------------------------------------------------------------------------

ACC_EDGES = np.array([[I32_MIN, -70000, -129, -1], [0, 1, 128, 70000], [I32_MAX, 300, -300, 5]])


def _store_setup(model):
    _put_rows(model, ACC_AT, ACC_EDGES, 16, np.int32)


def test_store_int8_per_lane_requant_and_saturation():
    cfg = _cfg()
    mult = np.array([1, 1, 3, 65535])
    shift = np.array([0, 0, 1, 47])
    prog = _sync(cfg, [
        Insn(O.LOAD_ACC, nrows=3, ncols=4, dram_addr=ACC_AT, dram_stride=16),
        Insn(O.CFG_REQUANT, lane=0, count=2, mult=1, shift=0),
        Insn(O.CFG_REQUANT, lane=2, count=1, mult=3, shift=1),
        Insn(O.CFG_REQUANT, lane=3, count=1, mult=65535, shift=47),
        Insn(O.STORE, nrows=3, ncols=4, dram_addr=OUT_AT, dram_stride=8, mode=0),
    ])
    model, result = _run(cfg, prog, _store_setup)
    got = _get_rows(model, OUT_AT, 3, 4, 8)
    want = saturate(requantize(ACC_EDGES, mult, shift, bits=16), 8)
    np.testing.assert_array_equal(got, want)
    assert got[0, 0] == -128 and got[2, 0] == 127             # saturated
    assert result.bytes_written == 12 and result.pwl_evals == 0


def test_store_pwl_segment_boundaries_both_modes():
    cfg = _cfg()
    bp, k, b = [0, -10, 0, 10], [1, 2, -3, 4], [-5, 6, 7, -8]
    x = np.array([[-11, -10, -9, -1], [0, 1, 9, 10], [11, -32768, 32767, 3]])
    out = []
    for mode, x0, seg_shift in ((1, 0, 0), (0, -8, 3)):
        prog = _sync(cfg, [
            Insn(O.LOAD_ACC, nrows=3, ncols=4, dram_addr=ACC_AT, dram_stride=16),
            Insn(O.CFG_REQUANT, lane=0, count=4, mult=1, shift=0),
            *[Insn(O.CFG_PWL_SEG, table=1, seg=s, bp=bp[s], k=k[s], b=b[s]) for s in range(4)],
            Insn(O.CFG_PWL_HDR, table=1, mode=mode, x0=x0, seg_shift=seg_shift, out_shift=1),
            Insn(O.STORE, nrows=3, ncols=4, dram_addr=OUT_AT, dram_stride=4, mode=1, table=1),
        ])
        model, result = _run(cfg, prog, lambda m: _put_rows(m, ACC_AT, x, 16, np.int32))
        got = _get_rows(model, OUT_AT, 3, 4, 4)
        np.testing.assert_array_equal(got, pwl_eval(x, mode, bp, k, b, x0, seg_shift, 1))
        assert result.pwl_evals == 12
        out.append(got)
    # Breakpoints: x = -10 is the first value of segment 1, -11 the last of segment 0.
    assert out[0][0, 0] == saturate((1 * -11 - 5 + 1) >> 1, 8)
    assert out[0][0, 1] == (2 * -10 + 6 + 1) >> 1
    assert out[0][1, 3] == (4 * 10 - 8 + 1) >> 1


def test_store_int32_and_overlapping_rows():
    cfg = _cfg()
    prog = _sync(cfg, [
        Insn(O.LOAD_ACC, nrows=3, ncols=4, dram_addr=ACC_AT, dram_stride=16),
        Insn(O.STORE, nrows=3, ncols=4, dram_addr=OUT_AT, dram_stride=16, mode=2),
        Insn(O.STORE, nrows=3, ncols=3, dram_addr=OUT_AT + 256, dram_stride=4, mode=2),
        Insn(O.STORE, nrows=3, ncols=2, dram_addr=OUT_AT + 512, dram_stride=0, mode=2),
    ])
    model, result = _run(cfg, prog, _store_setup)
    np.testing.assert_array_equal(_get_rows(model, OUT_AT, 3, 16, 16, np.int32), ACC_EDGES)
    # Rows 12 bytes long, 4 apart: each row overwrites the previous one's tail.
    got = model.dram[OUT_AT + 256: OUT_AT + 256 + 20].view(np.int32)
    np.testing.assert_array_equal(got, [ACC_EDGES[0, 0], ACC_EDGES[1, 0], *ACC_EDGES[2, :3]])
    np.testing.assert_array_equal(model.dram[OUT_AT + 512: OUT_AT + 520].view(np.int32),
                                  ACC_EDGES[2, :2])
    assert result.bytes_written == 48 + 36 + 24


def test_run_validates_first():
    with pytest.raises(ProgramError, match="k must be <= rows"):
        GoldenModel(_cfg(), DRAM).run([Insn(O.COMPUTE, m=1, k=5, n=1), HALT])


# -- races ----------------------------------------------------------------------------------------

def test_race_checker_finds_planted_race_and_accepts_synchronized_version():
    cfg = _cfg()
    racy = [
        Insn(O.LOAD_SP, sp_addr=0, nrows=4, ncols=4, dram_addr=A_AT, dram_stride=4),
        Insn(O.COMPUTE, a_addr=0, b_addr=0, c_addr=0, m=4, k=4, n=4),
        Insn(O.STORE, nrows=4, ncols=4, dram_addr=OUT_AT, dram_stride=4),
        HALT,
    ]
    races = find_races(racy, config=cfg)
    assert len(races) == 2
    assert races[0].startswith("insn 0 LOAD_SP (LOAD) and insn 1 COMPUTE (COMPUTE) are not ordered")
    assert "insn 0 writes SP rows 0..3" in races[0] and "insn 1 reads SP rows 0..3" in races[0]
    assert races[1].startswith("insn 1 COMPUTE (COMPUTE) and insn 2 STORE (STORE)")
    fixed = [
        Insn(O.LOAD_SP, sp_addr=0, nrows=4, ncols=4, dram_addr=A_AT, dram_stride=4, push_next=1),
        Insn(O.COMPUTE, a_addr=0, b_addr=0, c_addr=0, m=4, k=4, n=4, pop_prev=1, push_next=1),
        Insn(O.STORE, nrows=4, ncols=4, dram_addr=OUT_AT, dram_stride=4, pop_prev=1),
        HALT,
    ]
    assert find_races(fixed, config=cfg) == []
    # Ordered, but the wrong way round for the reuse of SP rows by a second load: a race.
    war = fixed[:2] + [Insn(O.LOAD_SP, sp_addr=2, nrows=1, ncols=4, dram_addr=A_AT)] + fixed[2:]
    assert any("insn 1 COMPUTE (COMPUTE) and insn 2 LOAD_SP (LOAD)" in r
               for r in find_races(war, config=cfg))


def test_race_through_external_memory_and_relay():
    cfg = _cfg()
    store = Insn(O.STORE, nrows=1, ncols=4, dram_addr=OUT_AT, dram_stride=4)
    load = Insn(O.LOAD_SP, sp_addr=8, nrows=1, ncols=4, dram_addr=OUT_AT)
    races = find_races([store, load, HALT], config=cfg)
    assert len(races) == 1 and "writes DRAM bytes 8192..8195" in races[0]
    b = ProgramBuilder(cfg)
    b.emit(Insn(O.STORE, nrows=1, ncols=4, dram_addr=OUT_AT, dram_stride=4))
    b.emit(Insn(O.LOAD_SP, sp_addr=8, nrows=1, ncols=4, dram_addr=OUT_AT))
    prog = b.finish()
    assert b.relays == 1
    assert [i.op for i in prog] == [O.STORE, O.COMPUTE, O.LOAD_SP, O.HALT]
    assert prog[0].push_prev and prog[1].pop_next and prog[1].push_prev and prog[2].pop_next
    assert find_races(prog, config=cfg) == []
    validate(prog, cfg)


def test_race_checker_rejects_deadlock():
    with pytest.raises(ProgramError, match="deadlock"):
        find_races([Insn(O.COMPUTE, pop_prev=1), HALT])


# -- cycle estimate -------------------------------------------------------------------------------

def test_cycle_estimate_is_plausible_and_monotone():
    cfg = _cfg()
    load = Insn(O.LOAD_SP, nrows=16, ncols=4, dram_addr=A_AT, dram_stride=4, push_next=1)
    comp = Insn(O.COMPUTE, m=16, k=4, n=4, pop_prev=1)
    est = estimate_cycles([load, comp, HALT], cfg)
    assert est.start[1] >= est.end[0]                          # waits for its token
    assert est.end[0] - est.start[0] >= cfg.dram_latency + 16
    assert est.total > est.end.max()
    assert est.macs == 16 * 4 * 4 and 0 < est.occupancy < 1
    # Without the token the two overlap; more rows or more latency never make it faster.
    free = estimate_cycles([Insn(O.LOAD_SP, nrows=16, ncols=4, dram_addr=A_AT, dram_stride=4),
                            Insn(O.COMPUTE, m=16, k=4, n=4), HALT], cfg)
    assert free.total < est.total
    slow = HwConfig(**{**cfg.as_dict(), "dataflow": "ws", "dram_latency": 40})
    assert estimate_cycles([load, comp, HALT], slow).total > est.total
    totals = [estimate_cycles([Insn(O.COMPUTE, m=m, k=4, n=4), HALT], cfg).total for m in (4, 8, 32)]
    assert totals == sorted(totals) and totals[0] < totals[2]


@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_cycle_estimate_of_big_gemm_is_compute_bound(dataflow):
    cfg = HwConfig(16, 16, dataflow)
    g = gemm_program(cfg, 256, 256, 256, a_addr=1 << 16, b_addr=2 << 16, c_addr_dram=3 << 16)
    est = estimate_cycles(g.program, cfg)
    ideal = 256**3 // 256
    assert ideal < est.total < 1.03 * ideal, (est.total, g.plan)
    assert est.occupancy > 0.97


# -- the GEMM program -----------------------------------------------------------------------------

@pytest.mark.parametrize("dataflow", ["ws", "os"])
@pytest.mark.parametrize("rows,cols,M,K,N,out", [
    (8, 8, 64, 48, 80, "int8"),
    (16, 16, 256, 256, 256, "int8"),
    (2, 3, 19, 7, 10, "int32"),        # odd sizes, panel-major layouts
    (4, 4, 9, 300, 5, "int8"),         # long K
])
def test_gemm_program_matches_numpy(dataflow, rows, cols, M, K, N, out):
    cfg = HwConfig(rows, cols, dataflow, sp_depth=4096 if rows >= 8 else 256, acc_depth=256)
    rng = np.random.default_rng(M * K * N)
    mult = rng.integers(1, 1 << 12, N) if out == "int8" else 1
    g = gemm_program(cfg, M, K, N, a_addr=1 << 16, b_addr=2 << 16, c_addr_dram=3 << 16,
                     mult=mult, shift=16, out=out)
    assert find_races(g.program, config=cfg) == []
    A = rng.integers(-128, 128, (M, K))
    B = rng.integers(-128, 128, (K, N))
    A[0], B[:, -1] = -128, -128
    model = GoldenModel(cfg, 4 << 16)
    g.place(model.dram, A, B)
    result = model.run(g.program)
    np.testing.assert_array_equal(g.result(model.dram), g.expected(A, B))
    assert result.macs == M * K * N
    assert g.a.row_major == (rows == cfg.bus_bytes)


@pytest.mark.parametrize("dataflow,K,streamed", [("os", 30, False), ("os", 50, True),
                                                 ("ws", 16, False), ("ws", 40, True),
                                                 ("ws", 300, True)])
def test_gemm_program_long_k(dataflow, K, streamed):
    """K chunks accumulate; past the scratchpad, A tiles stream instead of staying resident
    (ws: also when A would need several blocks and streaming it once per group of N tiles
    loads less, K = 40 here)."""
    cfg = HwConfig(4, 4, dataflow, sp_depth=64, acc_depth=32)
    g = gemm_program(cfg, 9, K, 6, a_addr=0, b_addr=4096, c_addr_dram=8192, out="int32")
    assert g.plan["k_chunks"] > 1 and g.plan["a_streamed"] == streamed
    assert find_races(g.program, config=cfg) == []
    rng = np.random.default_rng(K)
    A, B = rng.integers(-128, 128, (9, K)), rng.integers(-128, 128, (K, 6))
    model = GoldenModel(cfg, 1 << 14)
    g.place(model.dram, A, B)
    model.run(g.program)
    np.testing.assert_array_equal(g.result(model.dram), matmul_int32(A, B))


def test_gemm_program_errors():
    cfg = HwConfig(4, 4)
    with pytest.raises(ValueError, match="overlap"):
        gemm_program(cfg, 8, 8, 8, a_addr=0, b_addr=16, c_addr_dram=4096)
    with pytest.raises(ValueError, match="multiple of bus_bytes"):
        gemm_program(cfg, 8, 8, 8, a_addr=2, b_addr=4096, c_addr_dram=8192)
    with pytest.raises(ValueError, match="mult must be a scalar or have N = 8"):
        gemm_program(cfg, 8, 8, 8, a_addr=0, b_addr=4096, c_addr_dram=8192, mult=[1, 2])


def test_matrix_layout_round_trip():
    image = np.zeros(4096, np.uint8)
    x = np.arange(5 * 7).reshape(5, 7) - 17
    for panel, elem in ((3, 1), (4, 4), (8, 1)):
        lay = MatrixLayout.tiled(64, 5, 7, panel, 4, elem)
        lay.write(image, x)
        np.testing.assert_array_equal(lay.read(image), x)
        assert lay.offset(0, panel) % 4 == 0
