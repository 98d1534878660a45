"""The compute unit: executes COMPUTE instructions on the systolic array.

Pipeline::

    insn --dispatch--> wq -> weight sequencer (ws) --\\
                       aq -> operand sequencer ------> SystolicArray -> writeback (RMW) -> ACC
                       oq ------------------------------------------------^

Dispatch copies each instruction into the queues of the sequencers that need it, so the
weights of the next instruction load while the current one streams (ws), and sequencing runs
ahead of writeback. Writeback reads the accumulator row, adds (``accumulate``) or overwrites,
and writes the first ``n`` lanes back one cycle later; the read port is transparent to the
write port, so back-to-back instructions accumulating into the same rows see each other's
results. An instruction retires when its last row is written.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from . import isa
from .params import Dataflow, HwConfig
from .readpipe import ReadPipe
from .systolic import SystolicArray

__all__ = ["RetireSignature", "ComputeUnit", "sp_read_signature", "acc_read_signature",
           "acc_write_signature"]


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

    def __init__(self, config: HwConfig):
        self._config = config
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

        m.submodules.array = array = SystolicArray(cfg)
        queues = {}
        for name in (("wq", "aq", "oq") if ws else ("aq", "oq")):
            queues[name] = m.submodules[name] = fifo.SyncFIFOBuffered(width=isa.INSN_BITS, depth=4)

        # -- dispatch ------------------------------------------------------------------------
        room = Const(1)
        for q in queues.values():
            room = room & q.w_rdy
        m.d.comb += self.insn.ready.eq(room)
        for q in queues.values():
            m.d.comb += [q.w_data.eq(self.insn.payload.as_value()), q.w_en.eq(self.insn.valid & room)]

        def head(q):
            return data.View(layout, q.r_data)

        def empty_op(i):
            return (i.m == 0) | (i.k == 0) | (i.n == 0)

        # -- weight sequencer (ws): rows beats per instruction, rows >= k zero ---------------
        if ws:
            wq, wi = queues["wq"], head(queues["wq"])
            wseq = ReadPipe(m, self.sp_a, "wseq", {"zero": 1, "n": 8})
            r = Signal(range(R), name="w_row")
            m.d.comb += [
                wseq.req_valid.eq(wq.r_rdy & ~empty_op(wi)),
                wseq.addr.eq(wi.b_addr + r),
                wseq.side_in["zero"].eq(r >= wi.k),
                wseq.side_in["n"].eq(wi.n),
            ]
            with m.If(wq.r_rdy & empty_op(wi)):
                m.d.comb += wq.r_en.eq(1)
            with m.Elif(wseq.taken):
                with m.If(r == R - 1):
                    m.d.sync += r.eq(0)
                    m.d.comb += wq.r_en.eq(1)
                with m.Else():
                    m.d.sync += r.eq(r + 1)
            for j in range(C):
                keep = ~wseq.side_out["zero"] & (j < wseq.side_out["n"])
                m.d.comb += array.weights.payload[j].eq(Mux(keep, _lane(wseq.data, j, 8), 0))
            m.d.comb += [array.weights.valid.eq(wseq.out_valid), wseq.out_ready.eq(array.weights.ready)]

        # -- operand sequencer: m act rows (ws) or k operand rows (os) -----------------------
        aq, ai = queues["aq"], head(queues["aq"])
        count = Signal(16, name="a_count")
        length = Signal(16)
        m.d.comb += length.eq(ai.m if ws else ai.k)
        aseq = ReadPipe(m, self.sp_a if not ws else self.sp_b, "aseq",
                        {"last": 1, "m": 16, "k": 16, "n": 8})
        m.d.comb += [
            aseq.req_valid.eq(aq.r_rdy & ~empty_op(ai)),
            aseq.addr.eq(ai.a_addr + count),
            aseq.side_in["last"].eq(count == length - 1),
            aseq.side_in["m"].eq(ai.m),
            aseq.side_in["k"].eq(ai.k),
            aseq.side_in["n"].eq(ai.n),
        ]
        with m.If(aq.r_rdy & empty_op(ai)):
            m.d.comb += aq.r_en.eq(1)
        with m.Elif(aseq.taken):
            with m.If(count == length - 1):
                m.d.sync += count.eq(0)
                m.d.comb += aq.r_en.eq(1)
            with m.Else():
                m.d.sync += count.eq(count + 1)
        side = aseq.side_out
        if ws:
            # sp_a serves the weights; activations come through sp_b.
            acts = array.acts
            for i in range(R):
                m.d.comb += acts.payload.data[i].eq(Mux(i < side["k"], _lane(aseq.data, i, 8), 0))
            m.d.comb += [
                acts.payload.last.eq(side["last"]),
                acts.valid.eq(aseq.out_valid),
                aseq.out_ready.eq(acts.ready),
                self.beat.eq(acts.valid & acts.ready),
                self.beat_macs.eq(side["k"] * side["n"]),
            ]
        else:
            # The B rows are read through sp_b in lockstep with the A rows on sp_a.
            ops = array.operands
            m.d.comb += [
                self.sp_b.addr.eq(ai.b_addr + count),
                self.sp_b.en.eq(aseq.req_ready),
            ]
            for i in range(R):
                m.d.comb += ops.payload.a[i].eq(Mux(i < side["m"], _lane(aseq.data, i, 8), 0))
            for j in range(C):
                m.d.comb += ops.payload.b[j].eq(Mux(j < side["n"], _lane(self.sp_b.data, j, 8), 0))
            m.d.comb += [
                ops.payload.last.eq(side["last"]),
                ops.valid.eq(aseq.out_valid),
                aseq.out_ready.eq(ops.ready),
                self.beat.eq(ops.valid & ops.ready),
                self.beat_macs.eq(side["m"] * side["n"]),
            ]

        # -- writeback: read-modify-write of the accumulator rows ----------------------------
        oq, oi = queues["oq"], head(queues["oq"])
        expected = Signal(16)
        m.d.comb += expected.eq(oi.m if ws else R)
        row = Signal(16, name="wb_row")
        out = array.out
        m.d.comb += out.ready.eq(oq.r_rdy & ~empty_op(oi))
        take = out.valid & out.ready
        last_row = row == expected - 1

        # Stage B registers (the write, one cycle after the read).
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
        with m.Elif(oq.r_rdy & empty_op(oi)):
            # A zero-sized instruction retires in order, with nothing to write.
            m.d.comb += oq.r_en.eq(1)
            m.d.sync += [b_retire.eq(1), b_push_prev.eq(oi.push_prev), b_push_next.eq(oi.push_next)]

        for j in range(C):
            old, new = _lane(self.acc_rd.data, j, 32), _lane(b_data, j, 32)
            m.d.comb += self.acc_wr.data.word_select(j, 32).eq(
                Mux(b_acc, old + new, new)[:32])
        m.d.comb += [
            self.acc_wr.addr.eq(b_addr),
            self.acc_wr.en.eq(Mux(b_valid, b_mask, 0)),
            self.retire.valid.eq(b_retire),
            self.retire.push_prev.eq(b_push_prev),
            self.retire.push_next.eq(b_push_next),
        ]
        inflight = b_valid | b_retire
        for q in queues.values():
            inflight = inflight | q.r_rdy
        m.d.comb += self.busy.eq(inflight)
        return m
