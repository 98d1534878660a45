"""The ``rows x cols`` systolic array, with its input skew and output de-skew inside.

A user feeds plain vectors through ready/valid streams; the array skews them onto the PE grid,
de-skews the results and keeps tiles flowing back to back.

Weight-stationary (``config.dataflow == "ws"``)::

    weights  : rows beats per tile, beat k = row k of the weight tile B (cols int8)
    acts     : one activation vector a (rows int8) per beat; ``last`` marks the tile's last vector
    out      : a @ B (cols int32) per activation vector, in order; ``last`` copied from acts

  The tile's weights must be complete before its first activation enters; the next tile's
  weights load into the other bank while this one computes.

Output-stationary (``config.dataflow == "os"``)::

    operands : per beat, column k of A (rows int8) and row k of B (cols int8); ``last`` marks k = K-1
    out      : the rows x cols tile A @ B, one row (cols int32) per beat, row 0 first; ``last`` on
               the final row

  A tile needs at least ``os_tile_interval`` beats (shorter tiles are accepted, with stalls).

All stalls are global, and the advance enable is a register, so that no path runs from the
output handshake through the enable into the array: the array advances unless the next cycle
could overflow a :data:`OUT_BUFFER`-beat buffer behind its last stage. The buffer is passed
by while empty, so with the output always ready nothing changes cycle by cycle (the latency is
:func:`latency`); under back-pressure the array runs on into the buffer. The enable has two
register copies, one for the control at the edges and one for the datapath (PEs, skew chains),
whose fan-out is most of the array's flip-flops.

Multipliers: the first :meth:`~.params.HwConfig.dsp_pes` PEs in row-major order (PE (0, 0),
(0, 1), ...) multiply on a DSP block, the others in logic (:func:`dsp_grid`); the latency and the
results do not depend on the split.
"""

from __future__ import annotations

import operator
from functools import reduce

from amaranth.hdl import Cat, Const, Module, Mux, ResetSignal, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .params import Dataflow, HwConfig
from .pe import PRODUCT_STAGES, OutputStationaryPE, WeightStationaryPE

__all__ = ["SystolicArray", "array_layouts", "ws_bank_drain", "os_tile_interval", "latency",
           "dsp_grid", "OUT_BUFFER"]

#: Output beats buffered behind the last stage (room for the beat of the cycle after the
#: registered enable was decided, and one more so that a single idle cycle of the consumer
#: does not stall the array).
OUT_BUFFER = 2


def dsp_grid(config: HwConfig, reserved: int = 0) -> list[list[bool]]:
    """``grid[i][j]``: PE (i, j) multiplies on a DSP block. The first
    ``config.dsp_pes(reserved)`` PEs in row-major order do; *reserved* is the DSP blocks of the
    budget that the rest of the top uses."""
    n = config.dsp_pes(reserved)
    return [[i * config.cols + j < n for j in range(config.cols)] for i in range(config.rows)]


def array_layouts(config: HwConfig) -> dict[str, data.Layout]:
    """Payload layouts of the array's streams, by member name (for the RTL and the testbench)."""
    ow, aw = signed(config.operand_width), signed(config.acc_width)
    out = data.StructLayout({"data": data.ArrayLayout(aw, config.cols), "last": 1})
    if config.dataflow is Dataflow.WS:
        return {
            "weights": data.ArrayLayout(ow, config.cols),
            "acts": data.StructLayout({"data": data.ArrayLayout(ow, config.rows), "last": 1}),
            "out": out,
        }
    return {
        "operands": data.StructLayout({
            "a": data.ArrayLayout(ow, config.rows),
            "b": data.ArrayLayout(ow, config.cols),
            "last": 1,
        }),
        "out": out,
    }


def ws_bank_drain(config: HwConfig) -> int:
    """WS: cycles after a tile's last activation enters before its weight bank may be reloaded."""
    return max(config.rows + config.cols - 2, 0)


def os_tile_interval(config: HwConfig) -> int:
    """OS: minimum cycles between the last beats of two tiles (one output row per cycle, and the
    result registers must be read before they are overwritten)."""
    return max(config.rows, config.cols)


def latency(config: HwConfig) -> int:
    """Cycles from accepting an input beat to its first output beat being valid.

    WS: from an activation vector to its result. OS: from a tile's last beat to its row 0.
    Both include the PEs' :data:`~.pe.PRODUCT_STAGES`.
    """
    if config.dataflow is Dataflow.WS:
        return config.rows + config.cols + PRODUCT_STAGES
    return config.cols + 2 + PRODUCT_STAGES


class SystolicArray(wiring.Component):
    """A ``rows x cols`` grid of int8 MAC PEs in the dataflow of ``config``.

    Parameters
    ----------
    config : HwConfig
    dsp_reserved : int
        DSP blocks of ``config.dsp_budget`` used outside the array (``multipliers="auto"``
        only; see :func:`dsp_grid`). 0 when the array is the top.

    Members
    -------
    weights : In(stream.Signature(array_layouts(config)["weights"]))
        WS only. Weight tile rows, ``rows`` beats per tile.
    acts : In(stream.Signature(array_layouts(config)["acts"]))
        WS only. Activation vectors.
    operands : In(stream.Signature(array_layouts(config)["operands"]))
        OS only. One column of A and one row of B per beat.
    out : Out(stream.Signature(array_layouts(config)["out"]))
        int32 result vectors (see the module docstring for their order).
    """

    def __init__(self, config: HwConfig, *, dsp_reserved: int = 0):
        if isinstance(dsp_reserved, bool) or not isinstance(dsp_reserved, int) or dsp_reserved < 0:
            raise TypeError(f"dsp_reserved must be a non-negative integer, not {dsp_reserved!r}")
        self._config = config
        self._dsp = dsp_grid(config, dsp_reserved)
        members = {name: (Out if name == "out" else In)(stream.Signature(layout))
                   for name, layout in array_layouts(config).items()}
        super().__init__(members)

    @property
    def config(self) -> HwConfig:
        return self._config

    def elaborate(self, platform):
        m = Module()
        # Two copies of the registered advance enable (see the module docstring); the PEs'
        # copy is reset-less and takes `| rst` instead, which keeps Yosys from merging them.
        en = Signal(init=1)
        en_pe = Signal(init=1, reset_less=True)
        stage = Signal(self.out.payload.shape(), name="stage")
        stage_valid = Signal()
        if self._config.dataflow is Dataflow.WS:
            self._elaborate_ws(m, en, en_pe, stage, stage_valid)
        else:
            self._elaborate_os(m, en, en_pe, stage, stage_valid)
        self._output_buffer(m, en, en_pe, stage, stage_valid)
        return m

    def _output_buffer(self, m, en, en_pe, stage, stage_valid) -> None:
        """``out`` from the last stage and a buffer of :data:`OUT_BUFFER` beats behind it;
        the next cycle's enable from the buffer's fill."""
        buf = [Signal(stage.shape(), name=f"out_buf{k}", reset_less=True)
               for k in range(OUT_BUFFER)]
        count = Signal(range(OUT_BUFFER + 1))
        count_next = Signal(range(OUT_BUFFER + 1))
        taken = Signal()           # the stage's beat left while the array stood still
        fresh = Signal()
        m.d.comb += [
            fresh.eq(stage_valid & ~taken),
            self.out.valid.eq((count != 0) | fresh),
            self.out.payload.eq(Mux(count != 0, buf[0], stage)),
        ]
        pop = self.out.ready & (count != 0)
        direct = self.out.ready & (count == 0) & fresh
        push = en & fresh & ~direct
        with m.If(en):
            m.d.sync += taken.eq(0)
        with m.Elif(direct):
            m.d.sync += taken.eq(1)
        m.d.comb += count_next.eq(count + push - pop)
        m.d.sync += count.eq(count_next)
        with m.If(pop):
            for k in range(OUT_BUFFER - 1):
                m.d.sync += buf[k].eq(buf[k + 1])
        with m.If(push):
            for k in range(OUT_BUFFER):
                with m.If(count - pop == k):
                    m.d.sync += buf[k].eq(stage)
        # The beat of the next cycle (one at most) must find room.
        go = count_next + 1 <= OUT_BUFFER
        m.d.sync += [en.eq(go), en_pe.eq(go | ResetSignal(allow_reset_less=True))]

    # -- weight-stationary -------------------------------------------------------------------

    def _elaborate_ws(self, m: Module, en, en_pe, stage, stage_valid) -> None:
        cfg = self._config
        R, C, ow, aw = cfg.rows, cfg.cols, cfg.operand_width, cfg.acc_width
        pes = [[WeightStationaryPE(cfg, dsp=self._dsp[i][j]) for j in range(C)] for i in range(R)]
        for i in range(R):
            for j in range(C):
                m.submodules[f"pe_{i}_{j}"] = pes[i][j]

        # Weight banks: `wbank` is being loaded, `abank` is used by incoming activations.
        wbank, wcount, abank = Signal(), Signal(range(R)), Signal()
        loaded = Signal(2)                      # bank complete and not yet retired by `last`
        drain = [Signal(range(ws_bank_drain(cfg) + 1), name=f"drain{b}") for b in range(2)]
        drain_now = Signal(range(ws_bank_drain(cfg) + 1))
        loaded_w, loaded_a = Signal(), Signal()
        m.d.comb += [
            drain_now.eq(Mux(wbank, drain[1], drain[0])),
            loaded_w.eq(loaded.bit_select(wbank, 1)),
            loaded_a.eq(loaded.bit_select(abank, 1)),
            self.weights.ready.eq(en & ~loaded_w & (drain_now == 0)),
            self.acts.ready.eq(en & loaded_a),
        ]
        w_take = self.weights.valid & self.weights.ready
        a_take = self.acts.valid & self.acts.ready

        with m.If(en):
            for b in range(2):
                with m.If(drain[b] != 0):
                    m.d.sync += drain[b].eq(drain[b] - 1)
        set_loaded = Signal(2)
        clr_loaded = Signal(2)
        with m.If(w_take):
            with m.If(wcount == R - 1):
                m.d.sync += [wcount.eq(0), wbank.eq(~wbank)]
                m.d.comb += set_loaded.eq(Const(1, 2) << wbank)
            with m.Else():
                m.d.sync += wcount.eq(wcount + 1)
        with m.If(a_take & self.acts.payload.last):
            m.d.sync += abank.eq(~abank)
            m.d.comb += clr_loaded.eq(Const(1, 2) << abank)
            for b in range(2):
                with m.If(abank == b):
                    m.d.sync += drain[b].eq(ws_bank_drain(cfg))
        m.d.sync += loaded.eq((loaded | set_loaded) & ~clr_loaded)

        # Input stage and skew: array row i holds weight row R-1-i (rows shift in from the
        # top), so it takes activation element R-1-i, delayed by i cycles.
        row_a, row_bank = [], []
        for i in range(R):
            chain_a = [Signal(signed(ow), name=f"skew_a_{i}_{d}", reset_less=True) for d in range(i + 1)]
            chain_b = [Signal(name=f"skew_bank_{i}_{d}", reset_less=True) for d in range(i + 1)]
            with m.If(en_pe):
                m.d.sync += [
                    # Not zeroed between beats: a slot without a beat is never valid at
                    # the output, and every slot's sum starts from 0 at row 0.
                    chain_a[0].eq(self.acts.payload.data[R - 1 - i]),
                    chain_b[0].eq(abank),
                ]
                for d in range(1, i + 1):
                    m.d.sync += [chain_a[d].eq(chain_a[d - 1]), chain_b[d].eq(chain_b[d - 1])]
            row_a.append(chain_a[-1])
            row_bank.append(chain_b[-1])

        for i in range(R):
            for j in range(C):
                pe = pes[i][j]
                m.d.comb += [
                    pe.en.eq(en_pe),
                    pe.a_in.eq(row_a[i] if j == 0 else pes[i][j - 1].a_out),
                    pe.bank_in.eq(row_bank[i] if j == 0 else pes[i][j - 1].bank_out),
                    pe.psum_in.eq(0 if i == 0 else pes[i - 1][j].psum_out),
                    pe.w_in.eq(self.weights.payload[j] if i == 0 else pes[i - 1][j].w_out),
                    pe.w_shift.eq(w_take),
                    pe.w_bank.eq(wbank),
                ]

        # De-skew: column j finishes j cycles before the last column.
        for j in range(C):
            col = pes[R - 1][j].psum_out
            for d in range(C - 1 - j):
                reg = Signal(signed(aw), name=f"deskew_{j}_{d}", reset_less=True)
                with m.If(en_pe):
                    m.d.sync += reg.eq(col)
                col = reg
            m.d.comb += stage.data[j].eq(col)

        self._valid_pipeline(m, en, a_take, self.acts.payload.last, latency(cfg), stage,
                             stage_valid)

    def _valid_pipeline(self, m, en, take, last, depth, stage, stage_valid) -> None:
        """Carry valid/last of accepted beats to the last stage after ``depth`` cycles."""
        prev_v, prev_l = take, take & last
        for d in range(depth):
            v, l = Signal(name=f"vpipe_{d}"), Signal(name=f"lpipe_{d}")
            with m.If(en):
                m.d.sync += [v.eq(prev_v), l.eq(prev_l)]
            prev_v, prev_l = v, l
        m.d.comb += [stage_valid.eq(prev_v), stage.last.eq(prev_l)]

    # -- output-stationary -------------------------------------------------------------------

    def _elaborate_os(self, m: Module, en, en_pe, stage, stage_valid) -> None:
        cfg = self._config
        R, C, ow, aw = cfg.rows, cfg.cols, cfg.operand_width, cfg.acc_width
        pes = [[OutputStationaryPE(cfg, dsp=self._dsp[i][j]) for j in range(C)] for i in range(R)]
        for i in range(R):
            for j in range(C):
                m.submodules[f"pe_{i}_{j}"] = pes[i][j]

        ops = self.operands
        interval = os_tile_interval(cfg)
        cooldown = Signal(range(interval))
        first_pending = Signal(init=1)
        m.d.comb += ops.ready.eq(en & ((cooldown == 0) | ~ops.payload.last))
        take = ops.valid & ops.ready
        take_last = take & ops.payload.last
        with m.If(en):
            with m.If(take_last):
                m.d.sync += cooldown.eq(interval - 1)
            with m.Elif(cooldown != 0):
                m.d.sync += cooldown.eq(cooldown - 1)
        with m.If(take):
            m.d.sync += first_pending.eq(ops.payload.last)

        # Skew: row i of A and column j of B are delayed by i and j cycles; flags ride with A.
        def skewed(value, index, shape, name, reset_less=True):
            chain = [Signal(shape, name=f"{name}_{index}_{d}", reset_less=reset_less)
                     for d in range(index + 1)]
            with m.If(en_pe):
                m.d.sync += chain[0].eq(value)
                for d in range(1, index + 1):
                    m.d.sync += chain[d].eq(chain[d - 1])
            return chain[-1]

        # Cycles without a beat feed zeros, which leave the accumulators unchanged.
        row_a = [skewed(Mux(take, ops.payload.a[i], 0), i, signed(ow), "skew_a") for i in range(R)]
        row_first = [skewed(take & first_pending, i, 1, "skew_first", False) for i in range(R)]
        row_last = [skewed(take_last, i, 1, "skew_last", False) for i in range(R)]
        col_b = [skewed(Mux(take, ops.payload.b[j], 0), j, signed(ow), "skew_b") for j in range(C)]

        for i in range(R):
            for j in range(C):
                pe = pes[i][j]
                left = pes[i][j - 1] if j else None
                m.d.comb += [
                    pe.en.eq(en_pe),
                    pe.a_in.eq(left.a_out if left else row_a[i]),
                    pe.first_in.eq(left.first_out if left else row_first[i]),
                    pe.last_in.eq(left.last_out if left else row_last[i]),
                    pe.b_in.eq(pes[i - 1][j].b_out if i else col_b[j]),
                ]

        # Row i of the tile is complete when the result of `last` is in the right edge PE of
        # row i; rows finish on consecutive cycles, so one row is read out per cycle.
        done = [pes[i][C - 1].done for i in range(R)]
        out_row = [Signal(signed(aw), name=f"out_row_{j}") for j in range(C)]
        out_data = Signal(C * aw, reset_less=True)
        for j in range(C):
            # AND-OR select: at most one `done` is high in a cycle.
            m.d.comb += out_row[j].eq(
                reduce(operator.or_, [Mux(done[i], pes[i][j].result, 0) for i in range(R)]))
        last = Signal()
        with m.If(en):
            m.d.sync += [stage_valid.eq(Cat(*done).any()), last.eq(done[R - 1])]
        with m.If(en_pe):
            m.d.sync += out_data.eq(Cat(*out_row))
        m.d.comb += [stage.data.eq(out_data), stage.last.eq(last)]
