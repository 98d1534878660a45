"""The output path: int32 accumulator rows -> requantized int8, PWL-activated int8 or raw int32.

The store unit sends each accumulator row (``cols`` int32 lanes) through :class:`OutputPath` on
its way to external memory. Per lane, in the row's ``mode`` (:class:`~.isa.StoreMode`)::

    INT8      y = sat8(requantize(acc, mult[l], shift[l], bits=16))
    INT8_PWL  y = pwl_eval(requantize(acc, mult[l], shift[l], bits=16), table[row.table])
    INT32     y = acc

exactly as :mod:`.arith` defines them. int8 results are sign-extended into the 32-bit lane.

Configuration (raw ``CFG_REQUANT`` / ``CFG_PWL_SEG`` / ``CFG_PWL_HDR`` instructions on ``cfg``)
is accepted only while no row is in the pipeline, so it never changes under a row in flight.

Pipeline, one row per cycle; all stalls are global (the pipeline advances when ``o`` is empty
or accepted). Every stage is one register level with at most one multiplier, one carry chain
or one wide select in front of it, so that it meets 150 MHz on ECP5::

    S1   the row's lanes and m = mult (1 for INT32) registered
    S2   p_lo = acc[15:0] * m, p_hi = acc[31:16] * m      (two 17x17 products: one DSP each)
    S3   p = p_hi * 2**16 + p_lo                         (48 bits)
    S4   t = (2 * p) >> shift                            (shift = 0 for INT32)
    S5   r = (t + 1) >> 1                                (= round_shift(p, shift))
    S6   v = sat16(r)                                    (v = acc for INT32, in 32 bits)
    S7   x = v[15:0]: x >= bp[t] for every breakpoint, q = (x - x0) >> seg_shift
    S8   s = segment of x in the row's table              (breakpoint count or clamped q)
    S9   k[s], b[s] of the row's table
    S10  k[s] * x                                         (one DSP)
    S11  z = k[s] * x + b[s] (INT8_PWL), else v           (33 bits)
    S12  t = (2 * z) >> out_shift                         (out_shift = 0 unless INT8_PWL)
    S13  r = (t + 1) >> 1                                (= round_shift(z, out_shift))
    S14  o = sat8(r) (INT8, INT8_PWL), r = z (INT32)
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .arith import MULT_BITS
from .isa import Opcode, StoreMode
from .params import HwConfig

__all__ = ["OutputPath", "outpath_layouts", "latency", "dsp_blocks"]


def dsp_blocks(config: HwConfig) -> int:
    """Multipliers of the output path, each one DSP block (MULT18X18D on ECP5): per lane the
    two 17x17 products of S2 and the ``k[s] * x`` of S10."""
    return 3 * config.cols

_STAGES = 14
_TAG_BITS = 8


def latency(config: HwConfig) -> int:
    """Cycles from a row being accepted on ``i`` to its result being valid on ``o``.

    A row accepted in cycle ``t`` (``i.valid & i.ready``) is valid on ``o`` in cycle
    ``t + latency(config)`` when ``o`` has not stalled in between.
    """
    return _STAGES


def outpath_layouts(config: HwConfig) -> dict[str, data.Layout]:
    """Payload layouts of the ``i`` and ``o`` streams, by member name."""
    lanes = data.ArrayLayout(signed(config.acc_width), config.cols)
    store = {f.name: f.shape for f in isa.FIELDS[Opcode.STORE]}
    return {
        "i": data.StructLayout({"data": lanes, "mode": store["mode"], "table": store["table"],
                                "tag": _TAG_BITS}),
        "o": data.StructLayout({"data": lanes, "mode": store["mode"], "tag": _TAG_BITS}),
    }


def _saturate(value, bits: int):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(value < lo, lo, Mux(value > hi, hi, value))


def _popcount(bits: list):
    """Balanced adder tree over 1-bit values."""
    if not bits:
        return Const(0, 1)
    level = list(bits)
    while len(level) > 1:
        nxt = [level[i] + level[i + 1] for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


class OutputPath(wiring.Component):
    """Requantization and piecewise-linear activation of accumulator rows (see module docstring).

    Parameters
    ----------
    config : HwConfig
        Uses ``cols``, ``acc_width``, ``pwl_segments`` and ``pwl_tables``.

    Members
    -------
    i : In(stream.Signature(outpath_layouts(config)["i"]))
        Accumulator rows: ``data`` (``cols`` int32), ``mode`` (:class:`~.isa.StoreMode`),
        ``table`` (PWL table of mode ``INT8_PWL``, 3 bits as in ``STORE``) and an opaque
        ``tag`` passed through to ``o``. ``i.ready`` is low in a cycle in which ``cfg`` is
        accepted and in the next (when the configuration is written), so a row never sees
        half a configuration change.
    o : Out(stream.Signature(outpath_layouts(config)["o"]))
        Results in order: ``data`` (``cols`` lanes, int8 sign-extended or int32), with ``mode``
        and ``tag`` of their row.
    cfg : In(stream.Signature(isa.INSN_BITS))
        A raw ``CFG_REQUANT``, ``CFG_PWL_SEG`` or ``CFG_PWL_HDR`` instruction; other opcodes are
        consumed and ignored. ``cfg.ready`` is ``idle``.
    idle : Out(1)
        No row in the pipeline.

    Notes
    -----
    Configuration state, all reset to 0: per lane ``mult`` (unsigned 16) and ``shift`` (6 bits);
    per table a header (``mode``, ``x0``, ``seg_shift``, ``out_shift``) and ``pwl_segments``
    entries (``bp`` int16, ``k`` int16, ``b`` int32; ``bp[0]`` is never used, so not stored).

    Beyond the contract of :mod:`.arith`: shifts of 48..63 compute the same exact formula;
    ``CFG_REQUANT`` lanes ``>= cols`` are ignored; ``CFG_PWL_SEG`` / ``CFG_PWL_HDR`` for a table
    ``>= pwl_tables`` or a segment ``>= pwl_segments`` are ignored; a row in mode ``INT8_PWL``
    naming a table ``>= pwl_tables`` reads an all-zero table (result 0); mode 3 behaves as
    ``INT32``.
    """

    def __init__(self, config: HwConfig):
        if not isinstance(config, HwConfig):
            raise TypeError(f"config must be a HwConfig, got {config!r}")
        self._config = config
        layouts = outpath_layouts(config)
        super().__init__({
            "i": In(stream.Signature(layouts["i"])),
            "o": Out(stream.Signature(layouts["o"])),
            "cfg": In(stream.Signature(isa.INSN_BITS)),
            "idle": Out(1),
        })

    @property
    def config(self) -> HwConfig:
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        C, N, T = cfg.cols, cfg.pwl_segments, cfg.pwl_tables
        seg_bits = (N - 1).bit_length()

        # -- configuration state ----------------------------------------------------------------
        req_l = isa.layout(Opcode.CFG_REQUANT)
        seg_l = isa.layout(Opcode.CFG_PWL_SEG)
        hdr_l = isa.layout(Opcode.CFG_PWL_HDR)
        f_req = {f.name: f for f in isa.FIELDS[Opcode.CFG_REQUANT]}
        f_seg = {f.name: f for f in isa.FIELDS[Opcode.CFG_PWL_SEG]}
        f_hdr = {f.name: f for f in isa.FIELDS[Opcode.CFG_PWL_HDR]}
        assert f_req["mult"].width == MULT_BITS

        mult = [Signal(f_req["mult"].shape, name=f"mult_{l}") for l in range(C)]
        shift = [Signal(f_req["shift"].shape, name=f"shift_{l}") for l in range(C)]
        hdr_layout = data.StructLayout({name: f_hdr[name].shape
                                        for name in ("mode", "x0", "seg_shift", "out_shift")})
        hdr = [Signal(hdr_layout, name=f"hdr_{t}") for t in range(T)]
        bp = [[Signal(f_seg["bp"].shape, name=f"bp_{t}_{s}") for s in range(N)] for t in range(T)]
        kk = [[Signal(f_seg["k"].shape, name=f"k_{t}_{s}") for s in range(N)] for t in range(T)]
        bb = [[Signal(f_seg["b"].shape, name=f"b_{t}_{s}") for s in range(N)] for t in range(T)]

        # -- pipeline control -------------------------------------------------------------------
        valid = [Signal(name=f"valid_{d}") for d in range(1, _STAGES + 1)]
        en = Signal()
        idle = Signal()
        cfg_take = Signal()
        # An accepted configuration word is registered and written into the configuration
        # state in the next cycle (its decode and write enables start from registers); rows
        # wait during that cycle too.
        cfg_word = Signal(isa.INSN_BITS, reset_less=True)
        cfg_pending = Signal()
        m.d.comb += [
            en.eq(~self.o.valid | self.o.ready),
            idle.eq(~Cat(*valid).any()),
            self.idle.eq(idle & ~cfg_pending),
            self.cfg.ready.eq(idle),
            cfg_take.eq(self.cfg.valid & idle),
            self.i.ready.eq(en & ~cfg_take & ~cfg_pending),
            self.o.valid.eq(valid[-1]),
        ]
        m.d.sync += cfg_pending.eq(cfg_take)
        with m.If(cfg_take):
            m.d.sync += cfg_word.eq(self.cfg.payload)
        i_take = self.i.valid & self.i.ready
        with m.If(en):
            m.d.sync += valid[0].eq(i_take)
            for d in range(1, _STAGES):
                m.d.sync += valid[d].eq(valid[d - 1])

        # -- configuration writes ---------------------------------------------------------------
        word = cfg_word
        req, seg, hh = req_l(word), seg_l(word), hdr_l(word)
        opcode = req.opcode
        with m.If(cfg_pending):
            with m.Switch(opcode):
                with m.Case(Opcode.CFG_REQUANT):
                    end = Signal(f_req["lane"].width + 1)
                    m.d.comb += end.eq(req.lane + req.count)
                    for l in range(C):
                        with m.If((req.lane <= l) & (l < end)):
                            m.d.sync += [mult[l].eq(req.mult), shift[l].eq(req.shift)]
                with m.Case(Opcode.CFG_PWL_SEG):
                    for t in range(T):
                        for s in range(N):
                            with m.If((seg.table == t) & (seg.seg == s)):
                                if s:
                                    m.d.sync += bp[t][s].eq(seg.bp)
                                m.d.sync += [kk[t][s].eq(seg.k), bb[t][s].eq(seg.b)]
                with m.Case(Opcode.CFG_PWL_HDR):
                    for t in range(T):
                        with m.If(hh.table == t):
                            m.d.sync += [hdr[t].mode.eq(hh.mode), hdr[t].x0.eq(hh.x0),
                                         hdr[t].seg_shift.eq(hh.seg_shift),
                                         hdr[t].out_shift.eq(hh.out_shift)]

        # -- per-row side band, carried with the data -------------------------------------------
        side = data.StructLayout({"mode": 2, "table": outpath_layouts(cfg)["i"]["table"].shape,
                                  "tag": _TAG_BITS})
        sb = [Signal(side, name=f"side_{d}", reset_less=True) for d in range(1, _STAGES + 1)]
        with m.If(en):
            m.d.sync += [sb[0].mode.eq(self.i.payload.mode), sb[0].table.eq(self.i.payload.table),
                         sb[0].tag.eq(self.i.payload.tag)]
            for d in range(1, _STAGES):
                m.d.sync += sb[d].eq(sb[d - 1])

        def raw(d):   # INT32 (and reserved mode 3): lanes pass unchanged
            return sb[d].mode[1]

        def pwl(d):
            return sb[d].mode == StoreMode.INT8_PWL

        def select(items, index, shape, name):
            """items[index] for index < len(items), else 0 (a per-row table select)."""
            sig = Signal(shape, name=name)
            with m.Switch(index):
                for n, item in enumerate(items):
                    with m.Case(n):
                        m.d.comb += sig.eq(item)
            return sig

        def held(items, d, shape, name):
            """items[table of the row held in stage d's registers], as a register: selected
            from the row's side band one stage earlier and registered with it, so the stage
            after d starts from a register instead of a table select that fans out to every
            lane. (The configuration changes only while the pipeline is idle.)"""
            reg = Signal(shape, name=name, reset_less=True)
            with m.If(en):
                m.d.sync += reg.eq(select(items, sb[d - 2].table, shape, f"{name}_sel"))
            return reg

        def stage(shape, name, value):
            """One pipeline register per lane: ``value(l)`` registered (advances with ``en``)."""
            regs = [Signal(shape, name=f"{name}_{l}", reset_less=True) for l in range(C)]
            with m.If(en):
                m.d.sync += [regs[l].eq(value(l)) for l in range(C)]
            return regs

        # Requantization. The side band of the row held in stage d's registers is sb[d - 1].
        # round_shift(p, shift) = (p + 2**(shift-1)) >> shift is computed as
        # ((2*p >> shift) + 1) >> 1: for shift >= 1 the floor of p / 2**(shift-1) plus one,
        # halved, is the floor of (p + 2**(shift-1)) / 2**shift; for shift == 0 it is p. No
        # adder as wide as 2**(max shift - 1) is needed.
        in_raw = self.i.payload.mode[1]
        d1 = stage(signed(32), "s1_acc", lambda l: self.i.payload.data[l])
        m1 = stage(unsigned(MULT_BITS), "s1_mult", lambda l: Mux(in_raw, 1, mult[l]))
        plo = stage(unsigned(32), "s2_plo", lambda l: d1[l][:16] * m1[l])
        phi = stage(signed(33), "s2_phi", lambda l: d1[l][16:].as_signed() * m1[l])
        p3 = stage(signed(48), "s3_p", lambda l: ((phi[l] << 16) + plo[l])[:48].as_signed())
        t4 = stage(signed(49), "s4_t",
                   lambda l: (p3[l] << 1) >> Mux(raw(2), 0, shift[l]))
        r5 = stage(signed(49), "s5_r", lambda l: ((t4[l] + 1) >> 1)[:49].as_signed())
        v6 = stage(signed(32), "s6_v",
                   lambda l: Mux(raw(4), r5[l][:32].as_signed(), _saturate(r5[l], 16)))

        # S7: compares of x = v[15:0] with the breakpoints of the row's table, and the
        # uniform segment before clamping.
        h7 = held(hdr, 6, hdr_layout, "s7_hdr")
        bp7 = [held([bp[t][s] for t in range(T)], 6, signed(16), f"s7_bp_{s}")
               for s in range(1, N)]
        ge7 = stage(unsigned(max(N - 1, 1)), "s7_ge",
                    lambda l: Cat(*[v6[l][:16].as_signed() >= b for b in bp7]))
        q7 = stage(signed(17), "s7_q",
                   lambda l: ((v6[l][:16].as_signed() - h7.x0) >> h7.seg_shift)[:17].as_signed())
        v7 = stage(signed(32), "s7_v", lambda l: v6[l])

        # S8: the segment.
        h8 = held(hdr, 7, hdr_layout, "s8_hdr")

        def segment(l):
            count = _popcount([ge7[l][i] for i in range(N - 1)])
            q = q7[l]
            uniform = Mux(q < 0, 0, Mux(q > N - 1, N - 1, q[:seg_bits]))
            return Mux(h8.mode, count, uniform)
        s8 = stage(range(N), "s8_seg", segment)
        v8 = stage(signed(32), "s8_v", lambda l: v7[l])

        # S9: k[s], b[s] of the row's table.
        k9 = Array(held([kk[t][s] for t in range(T)], 8, signed(16), f"s9_ksel_{s}")
                   for s in range(N))
        b9 = Array(held([bb[t][s] for t in range(T)], 8, signed(32), f"s9_bsel_{s}")
                   for s in range(N))
        kr = stage(signed(16), "s9_k", lambda l: k9[s8[l]])
        br = stage(signed(32), "s9_b", lambda l: b9[s8[l]])
        v9 = stage(signed(32), "s9_v", lambda l: v8[l])

        # S10: k[s] * x; S11: z.
        kx = stage(signed(32), "s10_kx", lambda l: kr[l] * v9[l][:16].as_signed())
        b10 = stage(signed(32), "s10_b", lambda l: br[l])
        v10 = stage(signed(32), "s10_v", lambda l: v9[l])
        z11 = stage(signed(33), "s11_z", lambda l: Mux(pwl(9), kx[l] + b10[l], v10[l]))

        # S12..S14: sat8(round_shift(z, out_shift)) / sat8(z) / z.
        h12 = held(hdr, 11, hdr_layout, "s12_hdr")
        t12 = stage(signed(34), "s12_t",
                    lambda l: (z11[l] << 1) >> Mux(pwl(10), h12.out_shift, 0))
        r13 = stage(signed(34), "s13_r", lambda l: ((t12[l] + 1) >> 1)[:34].as_signed())
        y14 = stage(signed(32), "s14_y",
                    lambda l: Mux(raw(12), r13[l][:32].as_signed(), _saturate(r13[l], 8)))
        for l in range(C):
            m.d.comb += self.o.payload.data[l].eq(y14[l])
        m.d.comb += [self.o.payload.mode.eq(sb[-1].mode), self.o.payload.tag.eq(sb[-1].tag)]
        return m
