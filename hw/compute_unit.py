"""The compute unit: executes COMPUTE instructions on the systolic array.

Pipeline::

    insn --dispatch--> wq -> weight sequencer (ws) --\\
                       aq -> operand sequencer ------> SystolicArray -> writeback (RMW) -> ACC
                       oq ------------------------------------------------^

Dispatch copies each instruction into the queues of the sequencers that need it, so the
weights of the next instruction load while the current one streams (ws), and sequencing runs
ahead of writeback. Writeback reads the accumulator row, registers it, adds (``accumulate``) or
overwrites, and writes the first ``n`` lanes back two cycles after the read; a row written in
the cycle it is read is seen through the transparent read port, one written in the next cycle
is forwarded, so back-to-back instructions accumulating into the same rows see each other's
results. An instruction retires when its last row is written.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from . import isa
from .params import Dataflow, HwConfig
from .readpipe import ReadPipe, SkidBuffer
from .systolic import SystolicArray

__all__ = ["RetireSignature", "ComputeUnit", "sp_read_signature", "acc_read_signature",
           "acc_write_signature", "COUNTER_DSPS"]

#: DSP blocks of the compute unit outside the array: the ``k * n`` (or ``m * n``) of the
#: useful-MAC count of a beat.
COUNTER_DSPS = 1


class RetireSignature(wiring.Signature):
    """A unit's report that an instruction finished: a one-cycle ``valid`` and its push flags."""

    def __init__(self):
        super().__init__({"valid": Out(1), "push_prev": Out(1), "push_next": Out(1)})


def sp_read_signature(config: HwConfig):
    return ReadPort.Signature(addr_width=(config.sp_depth - 1).bit_length(), shape=8 * config.sp_row)


def acc_read_signature(config: HwConfig):
    return ReadPort.Signature(addr_width=(config.acc_depth - 1).bit_length(), shape=32 * config.cols)


def acc_write_signature(config: HwConfig):
    return WritePort.Signature(addr_width=(config.acc_depth - 1).bit_length(),
                               shape=32 * config.cols, granularity=32)


def _lane(word, index: int, width: int):
    return word.word_select(index, width).as_signed()


class ComputeUnit(wiring.Component):
    """Executes COMPUTE instructions (see :mod:`neuralmatrix.hw.isa` for their semantics).

    Parameters
    ----------
    config : HwConfig
    dsp_reserved : int
        DSP blocks used outside the array, passed to :class:`.systolic.SystolicArray`.

    Members
    -------
    insn : In(stream.Signature(isa.layout(COMPUTE)))
        Instructions whose dependency tokens were already taken.
    retire : Out(RetireSignature())
    busy : Out(1)
        An instruction is in flight.
    sp_a, sp_b : In(ReadPort.Signature)
        Scratchpad read ports (A operand rows / B operand rows).
    acc_rd : In(ReadPort.Signature)
        Accumulator read port, transparent to ``acc_wr``.
    acc_wr : In(WritePort.Signature)
        Accumulator write port (per-lane enables); has priority over other writers.
    beat : Out(1)
        An operand beat entered the array this cycle.
    beat_macs : Out(16)
        Useful MACs of that beat (k*n in ws, m*n in os).
    """

    def __init__(self, config: HwConfig, *, dsp_reserved: int = 0):
        self._config = config
        self._dsp_reserved = dsp_reserved
        super().__init__({
            "insn": In(stream.Signature(isa.layout(isa.Opcode.COMPUTE))),
            "retire": Out(RetireSignature()),
            "busy": Out(1),
            "sp_a": In(sp_read_signature(config)),
            "sp_b": In(sp_read_signature(config)),
            "acc_rd": In(acc_read_signature(config)),
            "acc_wr": In(acc_write_signature(config)),
            "beat": Out(1),
            "beat_macs": Out(16),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        R, C = cfg.rows, cfg.cols
        layout = isa.layout(isa.Opcode.COMPUTE)
        ws = cfg.dataflow is Dataflow.WS

        m.submodules.array = array = SystolicArray(cfg, dsp_reserved=self._dsp_reserved)
        queues = {}
        for name in (("wq", "aq", "oq") if ws else ("aq", "oq")):
            # One bit more than the instruction: "zero-sized" (a no-op), decided at dispatch so
            # that the sequencers and writeback do not compare 16-bit fields in their
            # handshake paths.
            queues[name] = m.submodules[name] = fifo.SyncFIFOBuffered(width=isa.INSN_BITS + 1,
                                                                     depth=4)

        # -- dispatch ------------------------------------------------------------------------
        room = Const(1)
        for q in queues.values():
            room = room & q.w_rdy
        m.d.comb += self.insn.ready.eq(room)
        p = self.insn.payload
        for q in queues.values():
            m.d.comb += [q.w_data.eq(Cat(p.as_value(), (p.m == 0) | (p.k == 0) | (p.n == 0))),
                         q.w_en.eq(self.insn.valid & room)]

        def head(q):
            return data.View(layout, q.r_data[:isa.INSN_BITS])

        def empty_op(q):
            return q.r_data[isa.INSN_BITS]

        # -- weight sequencer (ws): rows beats per instruction, rows >= k zero ---------------
        if ws:
            wq, wi = queues["wq"], head(queues["wq"])
            wseq = ReadPipe(m, self.sp_a, "wseq", {"zero": 1, "n": 8})
            r = Signal(range(R), name="w_row")
            m.d.comb += [
                wseq.req_valid.eq(wq.r_rdy & ~empty_op(wq)),
                wseq.addr.eq(wi.b_addr + r),
                wseq.side_in["zero"].eq(r >= wi.k),
                wseq.side_in["n"].eq(wi.n),
            ]
            with m.If(wq.r_rdy & empty_op(wq)):
                m.d.comb += wq.r_en.eq(1)
            with m.Elif(wseq.taken):
                with m.If(r == R - 1):
                    m.d.sync += r.eq(0)
                    m.d.comb += wq.r_en.eq(1)
                with m.Else():
                    m.d.sync += r.eq(r + 1)
            # A register slice between the read and the array: the array's ready (its global
            # advance) does not reach the scratchpad port and the sequencer.
            wbuf = SkidBuffer(m, array.weights.payload.shape(), "wbuf")
            wrow = data.View(array.weights.payload.shape(), wbuf.up_payload)
            for j in range(C):
                keep = ~wseq.side_out["zero"] & (j < wseq.side_out["n"])
                m.d.comb += wrow[j].eq(Mux(keep, _lane(wseq.data, j, 8), 0))
            m.d.comb += [
                wbuf.up_valid.eq(wseq.out_valid), wseq.out_ready.eq(wbuf.up_ready),
                array.weights.payload.eq(wbuf.down_payload), array.weights.valid.eq(wbuf.down_valid),
                wbuf.down_ready.eq(array.weights.ready),
            ]

        # -- operand sequencer: m act rows (ws) or k operand rows (os) -----------------------
        aq, ai = queues["aq"], head(queues["aq"])
        count = Signal(16, name="a_count")
        length = Signal(16)
        m.d.comb += length.eq(ai.m if ws else ai.k)
        aseq = ReadPipe(m, self.sp_a if not ws else self.sp_b, "aseq",
                        {"last": 1, "m": 16, "k": 16, "n": 8, "macs": 16})
        m.d.comb += [
            aseq.req_valid.eq(aq.r_rdy & ~empty_op(aq)),
            aseq.addr.eq(ai.a_addr + count),
            aseq.side_in["last"].eq(count == length - 1),
            aseq.side_in["m"].eq(ai.m),
            aseq.side_in["k"].eq(ai.k),
            aseq.side_in["n"].eq(ai.n),
            aseq.side_in["macs"].eq((ai.k if ws else ai.m) * ai.n),
        ]
        with m.If(aq.r_rdy & empty_op(aq)):
            m.d.comb += aq.r_en.eq(1)
        with m.Elif(aseq.taken):
            with m.If(count == length - 1):
                m.d.sync += count.eq(0)
                m.d.comb += aq.r_en.eq(1)
            with m.Else():
                m.d.sync += count.eq(count + 1)
        side = aseq.side_out
        # The operand stream also goes through a register slice; it carries the beat's MACs.
        beat = array.acts if ws else array.operands
        abuf_layout = data.StructLayout({"beat": beat.payload.shape(), "macs": 16})
        abuf = SkidBuffer(m, abuf_layout, "abuf")
        up = data.View(abuf_layout, abuf.up_payload)
        down = data.View(abuf_layout, abuf.down_payload)
        m.d.comb += [
            up.macs.eq(side["macs"]),
            abuf.up_valid.eq(aseq.out_valid), aseq.out_ready.eq(abuf.up_ready),
            beat.payload.eq(down.beat), beat.valid.eq(abuf.down_valid),
            abuf.down_ready.eq(beat.ready),
            self.beat.eq(beat.valid & beat.ready),
            self.beat_macs.eq(down.macs),
        ]
        if ws:
            # sp_a serves the weights; activations come through sp_b.
            for i in range(R):
                m.d.comb += up.beat.data[i].eq(Mux(i < side["k"], _lane(aseq.data, i, 8), 0))
            m.d.comb += up.beat.last.eq(side["last"])
        else:
            # The B rows are read through sp_b in lockstep with the A rows on sp_a.
            m.d.comb += [
                self.sp_b.addr.eq(ai.b_addr + count),
                self.sp_b.en.eq(aseq.req_ready),
            ]
            for i in range(R):
                m.d.comb += up.beat.a[i].eq(Mux(i < side["m"], _lane(aseq.data, i, 8), 0))
            for j in range(C):
                m.d.comb += up.beat.b[j].eq(Mux(j < side["n"], _lane(self.sp_b.data, j, 8), 0))
            m.d.comb += [
                up.beat.last.eq(side["last"]),
            ]

        # -- writeback: read-modify-write of the accumulator rows ----------------------------
        oq, oi = queues["oq"], head(queues["oq"])
        expected = Signal(16)
        m.d.comb += expected.eq(oi.m if ws else R)
        row = Signal(16, name="wb_row")
        out = array.out
        m.d.comb += out.ready.eq(oq.r_rdy & ~empty_op(oq))
        take = out.valid & out.ready
        last_row = row == expected - 1

        # Stage B: the accumulator row is being read (its data is on acc_rd.data).
        b_valid = Signal()
        b_addr = Signal.like(self.acc_wr.addr, reset_less=True)
        b_data = Signal(32 * C, reset_less=True)
        b_mask = Signal(C, reset_less=True)
        b_acc = Signal(reset_less=True)
        b_retire = Signal()
        b_push_prev, b_push_next = Signal(reset_less=True), Signal(reset_less=True)

        m.d.comb += [self.acc_rd.addr.eq(oi.c_addr + row), self.acc_rd.en.eq(1)]
        m.d.sync += [b_valid.eq(take & (ws | (row < oi.m))), b_retire.eq(0)]
        with m.If(take):
            m.d.sync += [
                b_addr.eq(oi.c_addr + row),
                b_data.eq(out.payload.data.as_value()),
                b_acc.eq(oi.accumulate),
                b_mask.eq(Cat(*[j < oi.n for j in range(C)])),
                b_push_prev.eq(oi.push_prev),
                b_push_next.eq(oi.push_next),
            ]
            with m.If(last_row):
                m.d.sync += [row.eq(0), b_retire.eq(1)]
                m.d.comb += oq.r_en.eq(1)
            with m.Else():
                m.d.sync += row.eq(row + 1)
        with m.Elif(oq.r_rdy & empty_op(oq)):
            # A zero-sized instruction retires in order, with nothing to write.
            m.d.comb += oq.r_en.eq(1)
            m.d.sync += [b_retire.eq(1), b_push_prev.eq(oi.push_prev), b_push_next.eq(oi.push_next)]

        # Stage C: the old row registered, then added and written. The row written by stage C
        # in the cycle stage B reads it was read too early: its lanes are forwarded. (A write
        # in the cycle of the read itself is seen through the transparent read port.)
        c_valid = Signal()
        c_addr = Signal.like(self.acc_wr.addr, reset_less=True)
        c_old = Signal(32 * C, reset_less=True)
        c_data = Signal(32 * C, reset_less=True)
        c_mask = Signal(C, reset_less=True)
        c_acc = Signal(reset_less=True)
        c_retire = Signal()
        c_push_prev, c_push_next = Signal(reset_less=True), Signal(reset_less=True)
        wdata = Signal(32 * C)
        hit = Signal()
        m.d.comb += hit.eq(c_valid & (c_addr == b_addr))
        m.d.sync += [
            c_valid.eq(b_valid), c_addr.eq(b_addr), c_data.eq(b_data), c_mask.eq(b_mask),
            c_acc.eq(b_acc), c_retire.eq(b_retire), c_push_prev.eq(b_push_prev),
            c_push_next.eq(b_push_next),
        ]
        for j in range(C):
            fwd = hit & c_mask[j]
            m.d.sync += c_old.word_select(j, 32).eq(
                Mux(fwd, wdata.word_select(j, 32), self.acc_rd.data.word_select(j, 32)))
            old, new = _lane(c_old, j, 32), _lane(c_data, j, 32)
            m.d.comb += wdata.word_select(j, 32).eq(Mux(c_acc, old + new, new)[:32])
        m.d.comb += [
            self.acc_wr.data.eq(wdata),
            self.acc_wr.addr.eq(c_addr),
            self.acc_wr.en.eq(Mux(c_valid, c_mask, 0)),
            self.retire.valid.eq(c_retire),
            self.retire.push_prev.eq(c_push_prev),
            self.retire.push_next.eq(c_push_next),
        ]
        inflight = b_valid | b_retire | c_valid | c_retire
        for q in queues.values():
            inflight = inflight | q.r_rdy
        m.d.comb += self.busy.eq(inflight)
        return m
