"""The store unit: STORE and the output-path configuration instructions.

STORE reads accumulator rows, sends them through the :class:`~neuralmatrix.hw.outpath.OutputPath`
(requantization, PWL, or raw int32) and writes them out: one write burst per row, requests
issued ahead of the data. ``CFG_*`` instructions wait until the output path is empty, so a
configuration never changes under rows in flight.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .compute_unit import RetireSignature, acc_read_signature
from .dram import request_layout, write_layout
from .outpath import OutputPath
from .params import HwConfig
from .readpipe import ReadPipe

__all__ = ["StoreUnit"]


class StoreUnit(wiring.Component):
    """Executes STORE, CFG_REQUANT, CFG_PWL_SEG and CFG_PWL_HDR (see :mod:`neuralmatrix.hw.isa`).

    Members
    -------
    insn : In(stream.Signature(128))
        Raw instructions whose tokens were taken.
    retire : Out(RetireSignature())
    busy : Out(1)
    acc_rd : In(ReadPort.Signature)
        Accumulator read port.
    wr_req : Out(stream of request_layout())
    wr_data : Out(stream of write_layout(config))
    pwl_evals : Out(8)
        Elements evaluated by the PWL unit this cycle.
    bytes_written : Out(16)
        Bytes written to external memory this cycle.
    """

    def __init__(self, config: HwConfig):
        self._config = config
        super().__init__({
            "insn": In(stream.Signature(isa.INSN_BITS)),
            "retire": Out(RetireSignature()),
            "busy": Out(1),
            "acc_rd": In(acc_read_signature(config)),
            "wr_req": Out(stream.Signature(request_layout())),
            "wr_data": Out(stream.Signature(write_layout(config))),
            "pwl_evals": Out(8),
            "bytes_written": Out(16),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        B, C = cfg.bus_bytes, cfg.cols
        beats_i32 = cfg.acc_row_beats
        m.submodules.outpath = op = OutputPath(cfg)

        raw = self.insn.payload
        opcode = raw[:4]
        is_store = opcode == isa.Opcode.STORE
        cur = Signal(isa.layout(isa.Opcode.STORE))
        active = Signal()
        read_rows = Signal(17)      # rows sent into the output path
        req_rows = Signal(17)       # write requests accepted
        done_rows = Signal(17)      # rows whose data was written
        req_addr = Signal(32)
        beats = Signal(8)
        cfg_retire = Signal()
        cfg_push_prev = Signal()
        ahead = Signal()            # req_rows > done_rows (a register, off the ready paths)
        req_inc, done_inc = Signal(), Signal()

        # -- accept an instruction ---------------------------------------------------------
        m.d.comb += [
            op.cfg.payload.eq(raw),
            op.cfg.valid.eq(self.insn.valid & ~active & ~is_store),
            self.insn.ready.eq(~active & (is_store | op.cfg.ready)),
        ]
        m.d.sync += cfg_retire.eq(0)
        with m.If(self.insn.valid & self.insn.ready):
            with m.If(is_store):
                view = data.View(isa.layout(isa.Opcode.STORE), raw)
                m.d.sync += [
                    cur.eq(raw), active.eq(1), read_rows.eq(0), req_rows.eq(0),
                    done_rows.eq(0), req_addr.eq(view.dram_addr),
                    beats.eq(Mux(view.mode == isa.StoreMode.INT32,
                                 (4 * view.ncols + B - 1) >> (B.bit_length() - 1), 1)),
                ]
            with m.Else():
                header = data.View(isa.layout(isa.Opcode.CFG_REQUANT), raw)
                m.d.sync += [cfg_retire.eq(1), cfg_push_prev.eq(header.push_prev)]

        # -- read accumulator rows into the output path --------------------------------------
        rd = ReadPipe(m, self.acc_rd, "st_rd")
        m.d.comb += [
            rd.req_valid.eq(active & (read_rows < cur.nrows)),
            rd.addr.eq(cur.acc_addr + read_rows),
            op.i.valid.eq(rd.out_valid),
            op.i.payload.data.eq(rd.data),
            op.i.payload.mode.eq(cur.mode),
            op.i.payload.table.eq(cur.table),
            rd.out_ready.eq(op.i.ready),
        ]
        with m.If(rd.taken):
            m.d.sync += read_rows.eq(read_rows + 1)

        # -- write requests, ahead of the data ----------------------------------------------
        m.d.comb += [
            self.wr_req.valid.eq(active & (req_rows < cur.nrows)),
            self.wr_req.payload.addr.eq(req_addr),
            self.wr_req.payload.len.eq(beats),
        ]
        with m.If(self.wr_req.valid & self.wr_req.ready):
            m.d.sync += [req_addr.eq(req_addr + cur.dram_stride), req_rows.eq(req_rows + 1)]
            m.d.comb += req_inc.eq(1)

        # -- data: int8 rows are one beat; int32 rows `beats` beats ------------------------
        row_bytes = Signal(8 * B * beats_i32)
        int8_row = Signal(8 * B)
        for j in range(C):
            m.d.comb += int8_row.word_select(j, 8).eq(op.o.payload.data[j][:8])
        is_i32 = op.o.payload.mode == isa.StoreMode.INT32
        m.d.comb += row_bytes.eq(Mux(is_i32, op.o.payload.data.as_value(), int8_row))
        beat = Signal(range(beats_i32 + 1))
        nbytes = Signal(16)
        m.d.comb += nbytes.eq(Mux(is_i32, 4 * cur.ncols, cur.ncols))
        strb = Signal(B)
        for b in range(B):
            m.d.comb += strb[b].eq((beat * B + b) < nbytes)
        last_beat = beat == beats - 1
        m.d.comb += [
            # Data for a row goes out only once its request was accepted.
            self.wr_data.valid.eq(op.o.valid & ahead),
            self.wr_data.payload.data.eq(row_bytes.word_select(beat, 8 * B)),
            self.wr_data.payload.strb.eq(strb),
            op.o.ready.eq(self.wr_data.ready & ahead & last_beat),
        ]
        with m.If(self.wr_data.valid & self.wr_data.ready):
            with m.If(last_beat):
                m.d.sync += [beat.eq(0), done_rows.eq(done_rows + 1)]
                m.d.comb += done_inc.eq(1)
                m.d.comb += [
                    self.bytes_written.eq(nbytes),
                    self.pwl_evals.eq(Mux(op.o.payload.mode == isa.StoreMode.INT8_PWL, cur.ncols, 0)),
                ]
            with m.Else():
                m.d.sync += beat.eq(beat + 1)

        # Both counts grow by at most one per cycle and restart together at 0.
        with m.If(self.insn.valid & self.insn.ready & is_store):
            m.d.sync += ahead.eq(0)
        with m.Else():
            m.d.sync += ahead.eq((req_rows + req_inc) != (done_rows + done_inc))
        store_retire = Signal()
        m.d.comb += store_retire.eq(active & (done_rows == cur.nrows) & (req_rows == cur.nrows)
                                    & (read_rows == cur.nrows))
        with m.If(store_retire):
            m.d.sync += active.eq(0)
        m.d.comb += [
            self.retire.valid.eq(store_retire | cfg_retire),
            self.retire.push_prev.eq(Mux(cfg_retire, cfg_push_prev, cur.push_prev)),
            self.retire.push_next.eq(0),
            self.busy.eq(active | cfg_retire | ~op.idle),
        ]
        return m
