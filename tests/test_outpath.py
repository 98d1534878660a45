"""Output path in amaranth.sim: every lane of every mode against hw/arith.py, bit for bit."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from neuralmatrix.hw import isa
from neuralmatrix.hw.arith import pwl_eval, requantize, saturate
from neuralmatrix.hw.isa import Insn, Opcode, StoreMode
from neuralmatrix.hw.outpath import OutputPath, latency
from neuralmatrix.hw.params import HwConfig

I32_MIN, I32_MAX = -2**31, 2**31 - 1
ACC_EDGES = [I32_MIN, I32_MIN + 1, -1, 0, 1, I32_MAX - 1, I32_MAX]
MULT_EDGES = [0, 1, 65535]
SHIFT_EDGES = [0, 1, 31, 47]
K_EDGES = [-32768, -32767, -1, 0, 1, 32767]
B_EDGES = [I32_MIN, -1, 0, 1, I32_MAX]

CONFIGS = [
    HwConfig(rows=1, cols=1, pwl_segments=2, pwl_tables=2),
    HwConfig(rows=3, cols=3, pwl_segments=4, pwl_tables=3),
    HwConfig(rows=8, cols=8, pwl_segments=16, pwl_tables=2),
]
IDS = [f"c{c.cols}_s{c.pwl_segments}_t{c.pwl_tables}" for c in CONFIGS]


def _word(op, **args) -> int:
    return isa.encode(Insn(op, **args))


class Model:
    """The output path's configuration state and results, straight from hw/arith.py."""

    def __init__(self, config: HwConfig):
        self.c = config
        C, N, T = config.cols, config.pwl_segments, config.pwl_tables
        self.mult = np.zeros(C, dtype=np.int64)
        self.shift = np.zeros(C, dtype=np.int64)
        self.tables = [dict(mode=0, x0=0, seg_shift=0, out_shift=0, bp=np.zeros(N, np.int64),
                            k=np.zeros(N, np.int64), b=np.zeros(N, np.int64)) for _ in range(T)]

    def apply(self, word: int) -> None:
        if word & 0xF not in (Opcode.CFG_REQUANT, Opcode.CFG_PWL_SEG, Opcode.CFG_PWL_HDR):
            return                                  # unknown opcodes are ignored
        insn = isa.decode(word)
        if insn.op == Opcode.CFG_REQUANT:
            for lane in range(insn.lane, min(insn.lane + insn.count, self.c.cols)):
                self.mult[lane], self.shift[lane] = insn.mult, insn.shift
        elif insn.table < self.c.pwl_tables:
            t = self.tables[insn.table]
            if insn.op == Opcode.CFG_PWL_HDR:
                t.update(mode=insn.mode, x0=insn.x0, seg_shift=insn.seg_shift,
                         out_shift=insn.out_shift)
            elif insn.seg < self.c.pwl_segments:
                t["bp"][insn.seg], t["k"][insn.seg], t["b"][insn.seg] = insn.bp, insn.k, insn.b

    def row(self, acc, mode: int, table: int) -> list[int]:
        acc = np.asarray(acc, dtype=np.int64)
        if mode == StoreMode.INT32:
            return acc.tolist()
        x = requantize(acc, self.mult, self.shift, bits=16)
        if mode == StoreMode.INT8:
            return saturate(x, 8).tolist()
        if table >= self.c.pwl_tables:               # documented: an absent table reads as zeros
            return [0] * len(acc)
        return pwl_eval(x, **self.tables[table]).tolist()


# -- stimulus -------------------------------------------------------------------------------------

def _rand_lane_params(rng):
    return rng.choice([
        (1, 0), (1, 0), (1, 0),                                   # identity: x = sat16(acc)
        (rng.choice(MULT_EDGES), rng.choice(SHIFT_EDGES)),
        (rng.randrange(65536), rng.randint(0, 47)),
        (rng.randrange(1, 65536), rng.randint(12, 24)),           # "realistic" scales
        (1 << (s := rng.randint(0, 15)), s),                      # x = acc, exact power of two
    ])


def _rand_table(rng, N):
    """Header and entries of a random table (a list of CFG_PWL_* field dicts)."""
    kind = rng.random()
    if kind < 0.5:          # ascending, distinct breakpoints
        bps = sorted(rng.sample(range(-32768, 32768), N))
    elif kind < 0.7:        # ascending with the extremes in it
        bps = sorted(rng.sample(range(-32767, 32767), N - 1) + [rng.choice([-32768, 32767])])
    else:                   # arbitrary: the contract counts, it does not search
        bps = [rng.randint(-32768, 32767) for _ in range(N)]
    if rng.random() < 0.5:  # moderate values, outputs mostly inside int8
        out_shift = rng.randint(4, 12)
        ks = [rng.randint(-1 << out_shift, 1 << out_shift) >> 4 for _ in range(N)]
        bs = [rng.randint(-(128 << out_shift), 128 << out_shift) for _ in range(N)]
    else:
        out_shift = rng.choice([0, 1, 15, 16, 31, 32, 33, 46, 47, rng.randint(0, 47)])
        ks = [rng.choice(K_EDGES + [rng.randint(-32768, 32767)]) for _ in range(N)]
        bs = [rng.choice(B_EDGES + [rng.randint(I32_MIN, I32_MAX)]) for _ in range(N)]
    hdr = dict(mode=rng.randint(0, 1), x0=rng.choice([0, rng.randint(-32768, 32767),
                                                      rng.randint(-2000, 2000)]),
               seg_shift=rng.choice([0, 15, rng.randint(0, 15), rng.randint(4, 12)]),
               out_shift=out_shift)
    segs = [dict(seg=s, bp=bps[s], k=ks[s], b=bs[s]) for s in range(N)]
    return hdr, segs


def _targets(table: dict, N: int) -> list[int]:
    """PWL inputs on and around every breakpoint and every uniform segment boundary."""
    xs = [-32768, -32767, -1, 0, 1, 32766, 32767]
    for t in range(1, N):
        xs += [table["bp"][t] + d for d in (-1, 0, 1)]
    for j in range(-1, N + 1):
        xs += [table["x0"] + (j << table["seg_shift"]) + d for d in (-1, 0, 1)]
    return [int(x) for x in xs]


def _rand_acc(rng, model: Model, lane: int, table: int):
    """An accumulator value for *lane*: random, extreme or landing on a PWL edge."""
    r = rng.random()
    mult, shift = int(model.mult[lane]), int(model.shift[lane])
    if r < 0.5 and mult and table < model.c.pwl_tables:
        # Invert the requantization (exactly for x = acc * 2**shift / mult when it divides).
        x = rng.choice(_targets(model.tables[table], model.c.pwl_segments))
        acc = (x << shift) // mult + rng.choice([0, 0, 0, -1, 1])
        return max(I32_MIN, min(I32_MAX, acc))
    if r < 0.6:
        return rng.choice(ACC_EDGES + [40000, -40000, 32768, -32769])
    if r < 0.8:
        return rng.randint(-1 << rng.randint(0, 31), (1 << rng.randint(0, 31)) - 1)
    return rng.randint(I32_MIN, I32_MAX)


def _random_schedule(config: HwConfig, rng, phases: int, rows_per_phase: int):
    """A list of ("cfg", word) / ("row", data, mode, table, tag) / ("gap", n) and the results."""
    C, N, T = config.cols, config.pwl_segments, config.pwl_tables
    model = Model(config)
    sched, expect = [], []

    def cfg(word):
        model.apply(word)
        sched.append(("cfg", word))

    def table_cfg(t):
        hdr, segs = _rand_table(rng, N)
        cfg(_word(Opcode.CFG_PWL_HDR, table=t, **hdr))
        for s in segs:
            cfg(_word(Opcode.CFG_PWL_SEG, table=t, **s))

    for lane in range(C):
        mult, shift = _rand_lane_params(rng)
        cfg(_word(Opcode.CFG_REQUANT, lane=lane, count=1, mult=mult, shift=shift))
    for t in range(T):
        table_cfg(t)
    for _ in range(phases):
        # Configuration changes between rows (each waits for the pipeline to drain).
        for _ in range(rng.randint(0, 3)):
            what = rng.random()
            if what < 0.4:
                lane = rng.choice([rng.randrange(C), rng.randrange(256)])
                mult, shift = _rand_lane_params(rng)
                cfg(_word(Opcode.CFG_REQUANT, lane=lane, count=rng.choice([0, 1, 2, 255]),
                          mult=mult, shift=shift))
            elif what < 0.6:
                table_cfg(rng.randrange(T))
            elif what < 0.8:
                hdr, segs = _rand_table(rng, N)
                cfg(_word(Opcode.CFG_PWL_SEG, table=rng.randrange(8), **rng.choice(segs)))
                cfg(_word(Opcode.CFG_PWL_HDR, table=rng.randrange(8), **hdr))
            else:     # not a configuration instruction: ignored
                cfg((rng.getrandbits(124) << 4) | rng.choice([0, 1, 2, 3, 4, 8, 9, 15]))
        for _ in range(rows_per_phase):
            mode = rng.choice([0, 1, 1, 2])
            table = rng.randrange(T) if rng.random() < 0.97 else rng.randrange(T, 8) \
                if T < 8 else 0
            acc = [_rand_acc(rng, model, lane, table) for lane in range(C)]
            tag = rng.randrange(256)
            sched.append(("row", acc, mode, table, tag))
            expect.append((model.row(acc, mode, table), mode, tag))
            if rng.random() < 0.3:
                sched.append(("gap", rng.randint(1, 3)))
    return sched, expect


# -- testbench ------------------------------------------------------------------------------------

def _simulate(dut, *benches, background=()):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for bench in benches:
        sim.add_testbench(bench)
    for bench in background:
        sim.add_testbench(bench, background=True)
    sim.run()


async def _send_cfg(ctx, dut, word):
    ctx.set(dut.cfg.payload, word)
    ctx.set(dut.cfg.valid, 1)
    await ctx.tick().until(dut.cfg.ready)
    ctx.set(dut.cfg.valid, 0)


def _set_row(ctx, dut, acc, mode, table, tag):
    for lane, v in enumerate(acc):
        ctx.set(dut.i.payload.data[lane], v)
    ctx.set(dut.i.payload.mode, mode)
    ctx.set(dut.i.payload.table, table)
    ctx.set(dut.i.payload.tag, tag)


async def _send_row(ctx, dut, acc, mode, table, tag):
    _set_row(ctx, dut, acc, mode, table, tag)
    ctx.set(dut.i.valid, 1)
    await ctx.tick().until(dut.i.ready)
    ctx.set(dut.i.valid, 0)


def _payload(payload, cols):
    return [payload.data[lane] for lane in range(cols)], payload.mode, payload.tag


def _run_schedule(config, sched, expect, rng, p_ready):
    dut = OutputPath(config)
    got = []

    async def producer(ctx):
        for item in sched:
            if item[0] == "cfg":
                await _send_cfg(ctx, dut, item[1])
            elif item[0] == "row":
                await _send_row(ctx, dut, *item[1:])
            else:
                await ctx.tick().repeat(item[1])

    async def consumer(ctx):
        while len(got) < len(expect):
            ctx.set(dut.o.ready, rng.random() < p_ready)
            _, _, valid, ready, payload = await ctx.tick().sample(
                dut.o.valid, dut.o.ready, dut.o.payload)
            if valid and ready:
                got.append(_payload(payload, config.cols))
                n = len(got) - 1
                assert got[n] == expect[n], (n, got[n], expect[n])
        await ctx.tick().repeat(latency(config) + 2)
        assert ctx.get(dut.idle) and not ctx.get(dut.o.valid)

    _simulate(dut, producer, consumer)
    assert got == expect


# -- tests ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
@pytest.mark.parametrize("p_ready", [1.0, 0.6])
def test_random_rows_match_arith(config, p_ready):
    rng = random.Random(hash((config.cols, config.pwl_segments, p_ready)) & 0xFFFF)
    phases = 60 if config.cols < 8 else 30
    sched, expect = _random_schedule(config, rng, phases=phases, rows_per_phase=8)
    _run_schedule(config, sched, expect, rng, p_ready)


@pytest.mark.parametrize("config", CONFIGS[1:], ids=IDS[1:])
def test_requant_edges(config):
    """Every (mult, shift) edge pair with every accumulator edge and rounding tie, all modes."""
    rng = random.Random(1)
    C, N = config.cols, config.pwl_segments
    model = Model(config)
    sched, expect = [], []

    def cfg(word):
        model.apply(word)
        sched.append(("cfg", word))

    # Table 0: wide breakpoints, identity-ish slope; table 1: extreme entries.
    cfg(_word(Opcode.CFG_PWL_HDR, table=0, mode=1, out_shift=8))
    for s in range(N):
        cfg(_word(Opcode.CFG_PWL_SEG, table=0, seg=s, bp=-32768 + s * (65536 // N),
                  k=(s - N // 2) * 37, b=(s - 1) * 1000))
    cfg(_word(Opcode.CFG_PWL_HDR, table=1, mode=0, x0=-3, seg_shift=1, out_shift=0))
    for s in range(N):
        cfg(_word(Opcode.CFG_PWL_SEG, table=1, seg=s, bp=0, k=K_EDGES[s % len(K_EDGES)],
                  b=B_EDGES[s % len(B_EDGES)]))

    pairs = [(mu, sh) for mu in MULT_EDGES for sh in SHIFT_EDGES]
    pairs += [(1, 2), (3, 1), (65535, 16), (65535, 32)]
    for start in range(0, len(pairs), C):
        chunk = pairs[start:start + C]
        for lane in range(C):
            mu, sh = chunk[lane % len(chunk)]
            cfg(_word(Opcode.CFG_REQUANT, lane=lane, count=1, mult=mu, shift=sh))
        accs = ACC_EDGES + [2, -2, 3, -3, 1 << 15, -(1 << 15), (1 << 15) - 1, -(1 << 15) - 1]
        # Rounding ties of each lane's shift: acc = +-2**(shift-1) (+-1).
        ties = [[(1 << max(model.shift[lane] - 1, 0)) * sgn + d
                 if model.shift[lane] <= 32 else rng.randint(I32_MIN, I32_MAX)
                 for lane in range(C)] for sgn in (1, -1, 3, -3) for d in (-1, 0, 1)]
        rows = [[a] * C for a in accs] + ties
        for acc in rows:
            acc = [int(max(I32_MIN, min(I32_MAX, v))) for v in acc]
            for mode, table in ((0, 0), (1, 0), (1, 1), (2, 0)):
                tag = rng.randrange(256)
                sched.append(("row", acc, mode, table, tag))
                expect.append((model.row(acc, mode, table), mode, tag))
    _run_schedule(config, sched, expect, rng, p_ready=0.8)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_pwl_extremes(config):
    """k*x + b at the ends of its 33-bit range, every out_shift edge, both segment modes."""
    rng = random.Random(2)
    C, N = config.cols, config.pwl_segments
    model = Model(config)
    sched, expect = [], []

    def cfg(word):
        model.apply(word)
        sched.append(("cfg", word))

    for lane in range(C):
        cfg(_word(Opcode.CFG_REQUANT, lane=lane, count=1, mult=1, shift=0))
    extremes = [(-32768, I32_MAX), (-32768, I32_MIN), (32767, I32_MIN), (32767, I32_MAX),
                (-1, 0), (0, -1), (1, 1)]
    for k, b in extremes:
        for out_shift in (0, 1, 7, 8, 30, 31, 32, 33, 34, 46, 47):
            for t, (mode, seg_shift) in enumerate([(1, 0), (0, 15)]):
                cfg(_word(Opcode.CFG_PWL_HDR, table=t, mode=mode, x0=-32768,
                          seg_shift=seg_shift, out_shift=out_shift))
                for s in range(N):
                    cfg(_word(Opcode.CFG_PWL_SEG, table=t, seg=s, bp=-32768 + s, k=k, b=b))
            xs = [-32768, 32767, -1, 0, 1, -32767, 32766, I32_MIN, I32_MAX]
            for start in range(0, len(xs), C):
                acc = [xs[(start + lane) % len(xs)] for lane in range(C)]
                for table in (0, 1):
                    tag = rng.randrange(256)
                    sched.append(("row", acc, 1, table, tag))
                    expect.append((model.row(acc, 1, table), 1, tag))
    _run_schedule(config, sched, expect, rng, p_ready=1.0)


def test_latency_and_throughput():
    config = CONFIGS[2]
    dut = OutputPath(config)
    lat = latency(config)
    assert lat == 14

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        await _send_cfg(ctx, dut, _word(Opcode.CFG_REQUANT, lane=0, count=255, mult=1, shift=0))
        assert not ctx.get(dut.i.ready)       # the configuration is being written
        await ctx.tick()
        # A single row: valid on o exactly `lat` cycles after the cycle it was accepted in.
        _set_row(ctx, dut, [7] * config.cols, 0, 0, 0x5A)
        ctx.set(dut.i.valid, 1)
        assert ctx.get(dut.i.ready)
        await ctx.tick()
        ctx.set(dut.i.valid, 0)
        for cycle in range(1, lat + 3):
            if ctx.get(dut.o.valid):
                break
            await ctx.tick()
        assert cycle == lat
        assert ctx.get(dut.o.payload.tag) == 0x5A and ctx.get(dut.o.payload.data[0]) == 7
        await ctx.tick()
        assert ctx.get(dut.idle)
        # Back to back: one row per cycle in, one per cycle out, never a stall.
        n = 20
        seen = []
        for t in range(n + lat):
            if t < n:
                _set_row(ctx, dut, [t - 10] * config.cols, 2, 0, t)
                ctx.set(dut.i.valid, 1)
                assert ctx.get(dut.i.ready)
            else:
                ctx.set(dut.i.valid, 0)
            if t >= lat:
                assert ctx.get(dut.o.valid)
            if ctx.get(dut.o.valid):
                seen.append(ctx.get(dut.o.payload.tag))
            await ctx.tick()
        assert seen == list(range(n))

    _simulate(dut, bench)


def test_cfg_only_when_idle():
    """cfg.ready is low while any row is in flight (also under back-pressure); a cfg and a row
    offered together when idle: the cfg goes first and the row sees the new configuration."""
    config = CONFIGS[1]
    dut = OutputPath(config)
    lat = latency(config)

    async def bench(ctx):
        assert ctx.get(dut.idle) and ctx.get(dut.cfg.ready)
        await _send_cfg(ctx, dut, _word(Opcode.CFG_REQUANT, lane=0, count=3, mult=1, shift=0))
        ctx.set(dut.o.ready, 0)
        await _send_row(ctx, dut, [100, -300, 5], 0, 0, 1)
        # In flight, then stalled on o for a while: configuration must wait.
        ctx.set(dut.cfg.payload, _word(Opcode.CFG_REQUANT, lane=0, count=3, mult=2, shift=0))
        ctx.set(dut.cfg.valid, 1)
        for _ in range(lat + 6):
            assert not ctx.get(dut.cfg.ready) and not ctx.get(dut.idle)
            await ctx.tick()
        assert ctx.get(dut.o.valid)
        assert [ctx.get(dut.o.payload.data[l]) for l in range(3)] == [100, -128, 5]
        ctx.set(dut.o.ready, 1)
        await ctx.tick()                      # row leaves; the pipeline is empty again
        assert ctx.get(dut.idle) and ctx.get(dut.cfg.ready)
        # cfg (still offered) and a row offered in the same cycle: the cfg wins.
        _set_row(ctx, dut, [100, -300, 5], 0, 0, 2)
        ctx.set(dut.i.valid, 1)
        assert not ctx.get(dut.i.ready)
        await ctx.tick()
        ctx.set(dut.cfg.valid, 0)
        assert not ctx.get(dut.i.ready)       # the configuration is being written
        assert not ctx.get(dut.idle)
        await ctx.tick()
        assert ctx.get(dut.i.ready)
        await ctx.tick()
        ctx.set(dut.i.valid, 0)
        assert not ctx.get(dut.cfg.ready)     # a row is in flight again
        for _ in range(lat - 1):
            assert not ctx.get(dut.o.valid)
            await ctx.tick()
        # Exactly one row comes out (the cycle of the cfg did not also take the row).
        assert ctx.get(dut.o.valid)
        assert [ctx.get(dut.o.payload.data[l]) for l in range(3)] == [127, -128, 10]
        assert ctx.get(dut.o.payload.tag) == 2
        await ctx.tick()
        assert ctx.get(dut.cfg.ready) and not ctx.get(dut.o.valid)

    _simulate(dut, bench)


def test_reset_state_is_zero():
    """Unconfigured: mult 0 gives 0, an all-zero table gives 0, INT32 passes through."""
    config = CONFIGS[1]
    rng = random.Random(3)
    model = Model(config)
    sched, expect = [], []
    for mode in (0, 1, 2):
        acc = [I32_MIN, I32_MAX, -5]
        sched.append(("row", acc, mode, 1, mode))
        expect.append((model.row(acc, mode, 1), mode, mode))
    assert expect[2][0] == [I32_MIN, I32_MAX, -5] and expect[0][0] == [0, 0, 0]
    _run_schedule(config, sched, expect, rng, p_ready=0.5)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_every_breakpoint(config):
    """x on, just below and just above every breakpoint / uniform boundary, both table modes."""
    rng = random.Random(4)
    C, N, T = config.cols, config.pwl_segments, config.pwl_tables
    model = Model(config)
    sched, expect = [], []

    def cfg(word):
        model.apply(word)
        sched.append(("cfg", word))

    cfg(_word(Opcode.CFG_REQUANT, lane=0, count=C, mult=1, shift=0))
    for t in range(T):
        bps = sorted(rng.sample(range(-30000, 30000), N))
        cfg(_word(Opcode.CFG_PWL_HDR, table=t, mode=t % 2, x0=rng.randint(-20000, 0),
                  seg_shift=rng.randint(0, 11), out_shift=6))
        for s in range(N):
            cfg(_word(Opcode.CFG_PWL_SEG, table=t, seg=s, bp=bps[s], k=rng.randint(-300, 300),
                      b=rng.randint(-8000, 8000)))
    for t in range(T):
        xs = _targets(model.tables[t], N)
        for start in range(0, len(xs), C):
            acc = [xs[(start + lane) % len(xs)] for lane in range(C)]
            tag = rng.randrange(256)
            sched.append(("row", acc, 1, t, tag))
            expect.append((model.row(acc, 1, t), 1, tag))
    _run_schedule(config, sched, expect, rng, p_ready=0.7)
