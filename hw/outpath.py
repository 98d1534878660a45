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
or accepted)::

    S1  p = acc * mult                              (48 bits; mult = 1 for INT32)
    S2  v = sat16(round_shift(p, shift))            (v = acc for INT32, in 32 bits)
    S3  s = segment of v[15:0] in the row's table   (breakpoint count or uniform clamp)
    S4  z = k[s] * x + b[s]  (INT8_PWL), else v     (33 bits)
    S5  o = sat8(round_shift(z, out_shift))         (out_shift = 0 unless INT8_PWL; raw for INT32)
"""

from __future__ import annotations

from amaranth.hdl import Array, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .arith import MULT_BITS
from .isa import Opcode, StoreMode
from .params import HwConfig

__all__ = ["OutputPath", "outpath_layouts", "latency"]

_STAGES = 5
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


def _round_shift(m: Module, value, shift, name: str) -> Signal:
    """``(value + 2**(shift-1)) >> shift`` (no rounding for ``shift == 0``), exact for any shift.

    Computed as ``((2*value >> shift) + 1) >> 1``: for ``shift >= 1`` the floor of
    ``value / 2**(shift-1)`` plus one, halved, is the floor of ``(value + 2**(shift-1)) / 2**shift``;
    for ``shift == 0`` it is ``(2*value + 1) >> 1 = value``. This needs no adder as wide as
    ``2**(max shift - 1)``.
    """
    width = value.shape().width
    res = Signal(signed(width + 1), name=name)
    m.d.comb += res.eq((((value << 1) >> shift) + 1) >> 1)
    return res


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
        accepted, so a row never sees half a configuration change.
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
        m.d.comb += [
            en.eq(~self.o.valid | self.o.ready),
            idle.eq(~valid[0] & ~valid[1] & ~valid[2] & ~valid[3] & ~valid[4]),
            self.idle.eq(idle),
            self.cfg.ready.eq(idle),
            cfg_take.eq(self.cfg.valid & idle),
            self.i.ready.eq(en & ~cfg_take),
            self.o.valid.eq(valid[-1]),
        ]
        i_take = self.i.valid & self.i.ready
        with m.If(en):
            m.d.sync += valid[0].eq(i_take)
            for d in range(1, _STAGES):
                m.d.sync += valid[d].eq(valid[d - 1])

        # -- configuration writes ---------------------------------------------------------------
        word = self.cfg.payload
        req, seg, hh = req_l(word), seg_l(word), hdr_l(word)
        opcode = req.opcode
        with m.If(cfg_take):
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

        # S1: p = acc * mult (mult = 1 for raw rows: p = acc).
        p = [Signal(signed(48), name=f"s1_p_{l}", reset_less=True) for l in range(C)]
        in_raw = self.i.payload.mode[1]
        for l in range(C):
            with m.If(en):
                m.d.sync += p[l].eq(self.i.payload.data[l] * Mux(in_raw, 1, mult[l]))

        # S2: v = sat16(round_shift(p, shift)); raw rows: shift 0, no saturation, v = acc.
        v2 = [Signal(signed(32), name=f"s2_v_{l}", reset_less=True) for l in range(C)]
        for l in range(C):
            r = _round_shift(m, p[l], Mux(raw(0), 0, shift[l]), f"s2_round_{l}")
            with m.If(en):
                m.d.sync += v2[l].eq(Mux(raw(0), r[:32].as_signed(), _saturate(r, 16)))

        # S3: segment index of x = v[15:0] in the row's table.
        t3 = sb[1].table
        h3 = select(hdr, t3, hdr_layout, "s3_hdr")
        bp3 = [select([bp[t][s] for t in range(T)], t3, signed(16), f"s3_bp_{s}")
               for s in range(1, N)]
        v3 = [Signal(signed(32), name=f"s3_v_{l}", reset_less=True) for l in range(C)]
        s3 = [Signal(range(N), name=f"s3_seg_{l}", reset_less=True) for l in range(C)]
        for l in range(C):
            x = v2[l][:16].as_signed()
            count = _popcount([x >= b for b in bp3])
            q = Signal(signed(17), name=f"s3_q_{l}")
            m.d.comb += q.eq((x - h3.x0) >> h3.seg_shift)
            uniform = Mux(q < 0, 0, Mux(q > N - 1, N - 1, q[:seg_bits]))
            with m.If(en):
                m.d.sync += [v3[l].eq(v2[l]), s3[l].eq(Mux(h3.mode, count, uniform))]

        # S4: z = k[s] * x + b[s] for PWL rows, else v.
        t4 = sb[2].table
        k4 = Array(select([kk[t][s] for t in range(T)], t4, signed(16), f"s4_k_{s}")
                   for s in range(N))
        b4 = Array(select([bb[t][s] for t in range(T)], t4, signed(32), f"s4_b_{s}")
                   for s in range(N))
        z4 = [Signal(signed(33), name=f"s4_z_{l}", reset_less=True) for l in range(C)]
        for l in range(C):
            x = v3[l][:16].as_signed()
            with m.If(en):
                m.d.sync += z4[l].eq(Mux(pwl(2), k4[s3[l]] * x + b4[s3[l]], v3[l]))

        # S5 (the output register): sat8(round_shift(z, out_shift)) / sat8(z) / z.
        h5 = select(hdr, sb[3].table, hdr_layout, "s5_hdr")
        for l in range(C):
            r = _round_shift(m, z4[l], Mux(pwl(3), h5.out_shift, 0), f"s5_round_{l}")
            y = Signal(signed(32), name=f"s5_y_{l}", reset_less=True)
            with m.If(en):
                m.d.sync += y.eq(Mux(raw(3), z4[l][:32].as_signed(), _saturate(r, 8)))
            m.d.comb += self.o.payload.data[l].eq(y)
        m.d.comb += [self.o.payload.mode.eq(sb[4].mode), self.o.payload.tag.eq(sb[4].tag)]
        return m
