"""The load unit: LOAD_SP and LOAD_ACC, external memory -> scratchpad / accumulator rows.

Read requests (one burst per row) are issued ahead of the data, so rows stream at one beat
per cycle once the memory latency is paid. Scratchpad rows are one beat; accumulator rows
(``cols`` int32) are assembled from ``ceil(4 * ncols / bus_bytes)`` beats. Lanes at and beyond
``ncols`` are written as zero. Accumulator writes yield to the compute unit (``acc_grant``).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import In, Out

from . import isa
from .compute_unit import RetireSignature, acc_write_signature
from .dram import request_layout
from .params import HwConfig

__all__ = ["LoadUnit"]


class LoadUnit(wiring.Component):
    """Executes LOAD_SP / LOAD_ACC (see :mod:`neuralmatrix.hw.isa`).

    Members
    -------
    insn : In(stream.Signature(isa.layout(LOAD_SP)))
        Instructions whose tokens were taken (LOAD_ACC shares the layout).
    retire : Out(RetireSignature())
    busy : Out(1)
    rd_req : Out(stream of request_layout())
    rd_data : In(stream of 8 * bus_bytes bits)
    sp_wr : In(WritePort.Signature)
        Scratchpad write port.
    acc_wr : In(WritePort.Signature)
        Accumulator write port (per-lane enables), used when ``acc_grant`` is high.
    acc_grant : In(1)
    """

    def __init__(self, config: HwConfig):
        self._config = config
        super().__init__({
            "insn": In(stream.Signature(isa.layout(isa.Opcode.LOAD_SP))),
            "retire": Out(RetireSignature()),
            "busy": Out(1),
            "rd_req": Out(stream.Signature(request_layout())),
            "rd_data": In(stream.Signature(8 * config.bus_bytes)),
            "sp_wr": In(WritePort.Signature(addr_width=(config.sp_depth - 1).bit_length(),
                                            shape=8 * config.sp_row)),
            "acc_wr": In(acc_write_signature(config)),
            "acc_grant": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        B, C, W = cfg.bus_bytes, cfg.cols, cfg.sp_row
        max_beats = cfg.acc_row_beats
        cur = Signal(isa.layout(isa.Opcode.LOAD_SP))
        active = Signal()
        to_acc = Signal()
        issued = Signal(17)
        received = Signal(17)
        addr = Signal(32)
        beats = Signal(8)
        beat = Signal(range(max_beats + 1))
        row_buf = Signal(8 * B * max_beats, reset_less=True)

        m.d.comb += [self.insn.ready.eq(~active), self.busy.eq(active)]
        with m.If(self.insn.valid & ~active):
            insn = self.insn.payload
            m.d.sync += [
                cur.eq(insn), active.eq(1), issued.eq(0), received.eq(0), beat.eq(0),
                addr.eq(insn.dram_addr),
                to_acc.eq(insn.opcode == isa.Opcode.LOAD_ACC),
                beats.eq(Mux(insn.opcode == isa.Opcode.LOAD_ACC,
                             (4 * insn.ncols + B - 1) >> (B.bit_length() - 1), 1)),
            ]

        # Requests: one burst per row, ahead of the data.
        m.d.comb += [
            self.rd_req.valid.eq(active & (issued < cur.nrows)),
            self.rd_req.payload.addr.eq(addr),
            self.rd_req.payload.len.eq(beats),
        ]
        with m.If(self.rd_req.valid & self.rd_req.ready):
            m.d.sync += [addr.eq(addr + cur.dram_stride), issued.eq(issued + 1)]

        # Data.
        last_beat = beat == beats - 1
        lane_keep = Signal(max(W, C))
        for i in range(max(W, C)):
            m.d.comb += lane_keep[i].eq(i < cur.ncols)
        beat_data = self.rd_data.payload
        sp_row = Signal(8 * W)
        for i in range(W):
            m.d.comb += sp_row.word_select(i, 8).eq(Mux(lane_keep[i], beat_data.word_select(i, 8), 0))
        assembled = Signal(8 * B * max_beats)
        for b in range(max_beats):
            m.d.comb += assembled.word_select(b, 8 * B).eq(
                Mux(beat == b, beat_data, row_buf.word_select(b, 8 * B)))
        acc_row = Signal(32 * C)
        for j in range(C):
            m.d.comb += acc_row.word_select(j, 32).eq(Mux(lane_keep[j], assembled.word_select(j, 32), 0))

        can_take = active & (received < cur.nrows) & (~to_acc | ~last_beat | self.acc_grant)
        m.d.comb += self.rd_data.ready.eq(can_take)
        take = self.rd_data.valid & can_take
        m.d.comb += [
            self.sp_wr.addr.eq(cur.sp_addr + received),
            self.sp_wr.data.eq(sp_row),
            self.sp_wr.en.eq(take & ~to_acc),
            self.acc_wr.addr.eq(cur.sp_addr + received),   # acc_addr shares sp_addr's bits
            self.acc_wr.data.eq(acc_row),
            self.acc_wr.en.eq(Mux(take & to_acc & last_beat, (1 << C) - 1, 0)),
        ]
        with m.If(take):
            m.d.sync += row_buf.eq(assembled)
            with m.If(last_beat):
                m.d.sync += [beat.eq(0), received.eq(received + 1)]
            with m.Else():
                m.d.sync += beat.eq(beat + 1)

        retire = Signal()
        m.d.comb += retire.eq(active & (received == cur.nrows) & (issued == cur.nrows))
        with m.If(retire):
            m.d.sync += active.eq(0)
        m.d.comb += [
            self.retire.valid.eq(retire),
            self.retire.push_prev.eq(cur.push_prev),
            self.retire.push_next.eq(cur.push_next),
        ]
        return m
