"""The whole accelerator: fetch, three decoupled units, scratchpad, accumulator, memory port.

::

                  +-> load queue ---[tokens]--> LoadUnit ----> scratchpad, accumulator
    fetch --------+-> compute queue -[tokens]-> ComputeUnit --> systolic array -> accumulator
     (external    +-> store queue --[tokens]--> StoreUnit ---> output path -> external memory
      memory)

The fetch unit reads instructions in bursts from ``insn_addr`` until HALT and dispatches each
to its unit's queue. A unit takes its head instruction once the dependency tokens it pops are
available (see :mod:`neuralmatrix.hw.isa`); a retiring instruction pushes its tokens. The
accelerator is done when fetch has stopped and every queue and unit is empty. An illegal
instruction stops fetching and raises ``error`` with ``error_code`` and ``error_pc``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import Out

from . import isa
from .compute_unit import COUNTER_DSPS, ComputeUnit
from .counters import COUNTERS, control_members
from .dram import DramSignature, request_layout
from .load_unit import LoadUnit
from .outpath import dsp_blocks as outpath_dsp_blocks
from .params import HwConfig
from .store_unit import StoreUnit

__all__ = ["Accelerator", "ErrorCode", "FETCH_BURST_INSNS", "dsps_outside_array"]

FETCH_BURST_INSNS = 16      # instructions per fetch burst
_ROUTE_DEPTH = 16           # read bursts in flight


def dsps_outside_array(config: HwConfig) -> int:
    """DSP blocks the accelerator uses besides the PEs: the output path's multipliers and the
    compute unit's MAC counter. ``multipliers="auto"`` leaves them out of the PEs' budget."""
    return outpath_dsp_blocks(config) + COUNTER_DSPS


class ErrorCode:
    """Values of ``error_code``."""

    NONE = 0
    ILLEGAL_OPCODE = 1       #: opcode 0 or unknown
    ILLEGAL_TOKENS = 2       #: a token flag the unit does not have (e.g. LOAD pop_prev)
    MISALIGNED_PROGRAM = 3   #: insn_addr not a multiple of max(16, bus_bytes)


class Accelerator(wiring.Component):
    """The NeuralMatrix accelerator for one :class:`HwConfig`.

    Members
    -------
    dram : Out(DramSignature(config))
        External memory port.
    start : In(1)
        One-cycle pulse: clear state and counters, fetch from ``insn_addr``.
    insn_addr : In(32)
    done : Out(1)
        The program finished (HALT reached and all units idle), or stopped on an error.
    error : Out(1)
    error_code : Out(4)
    error_pc : Out(32)
    counters : Out(counter_layout())
    status : Out(status_layout())
    """

    #: Memories whose contents the golden model takes as zero when a program starts (as after
    #: power-up or FPGA configuration); a simulation harness running several programs in one
    #: process restores that state between them.
    POWER_UP_ZERO = ("sp", "acc")

    def __init__(self, config: HwConfig):
        self._config = config
        super().__init__({
            "dram": Out(DramSignature(config)),
            **control_members(),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        B = cfg.bus_bytes

        # -- memories ---------------------------------------------------------------------
        m.submodules.sp = sp = Memory(shape=8 * cfg.sp_row, depth=cfg.sp_depth, init=[])
        m.submodules.acc = acc = Memory(shape=32 * cfg.cols, depth=cfg.acc_depth, init=[])
        sp_w = sp.write_port()
        sp_ra, sp_rb = sp.read_port(), sp.read_port()
        acc_w = acc.write_port(granularity=32)
        acc_rmw = acc.read_port(transparent_for=(acc_w,))
        acc_st = acc.read_port()

        m.submodules.load = load = LoadUnit(cfg)
        m.submodules.compute = compute = ComputeUnit(cfg, dsp_reserved=dsps_outside_array(cfg))
        m.submodules.store = store = StoreUnit(cfg)

        def attach_read(port, iface):
            m.d.comb += [port.addr.eq(iface.addr), port.en.eq(iface.en), iface.data.eq(port.data)]

        attach_read(sp_ra, compute.sp_a)
        attach_read(sp_rb, compute.sp_b)
        attach_read(acc_rmw, compute.acc_rd)
        attach_read(acc_st, store.acc_rd)
        m.d.comb += [sp_w.addr.eq(load.sp_wr.addr), sp_w.data.eq(load.sp_wr.data),
                     sp_w.en.eq(load.sp_wr.en)]
        # The accumulator write port: compute first, the load unit when compute is not writing.
        compute_writes = compute.acc_wr.en.any()
        m.d.comb += [
            load.acc_grant.eq(~compute_writes),
            acc_w.addr.eq(Mux(compute_writes, compute.acc_wr.addr, load.acc_wr.addr)),
            acc_w.data.eq(Mux(compute_writes, compute.acc_wr.data, load.acc_wr.data)),
            acc_w.en.eq(Mux(compute_writes, compute.acc_wr.en, load.acc_wr.en)),
        ]

        # -- run control ------------------------------------------------------------------
        running = Signal()
        fetching = Signal()
        error = Signal()
        m.d.comb += [self.error.eq(error)]

        # -- fetch and dispatch -----------------------------------------------------------
        queues = {u: fifo.SyncFIFOBuffered(width=isa.INSN_BITS, depth=cfg.queue_depth) for u in isa.Unit}
        for u, q in queues.items():
            m.submodules[f"{u.name.lower()}_queue"] = q
        pc = Signal(32)                 # address of the next instruction to dispatch
        req_addr = Signal(32)           # address of the next fetch burst
        pending = Signal(16)            # fetch beats requested and not yet received
        fetch_rd_req = stream.Signature(request_layout()).create()
        fetch_rd_data = stream.Signature(8 * B).create()

        if B <= isa.INSN_BYTES:
            beats_per_insn, insns_per_beat = isa.INSN_BYTES // B, 1
        else:
            beats_per_insn, insns_per_beat = 1, B // isa.INSN_BYTES
        burst_beats = FETCH_BURST_INSNS * beats_per_insn // insns_per_beat
        burst_bytes = burst_beats * B

        # Fetched beats land in a buffer with room reserved for every outstanding burst, so
        # instruction data never blocks the shared read channel (load data queued behind it)
        # when a unit's queue is full.
        m.submodules.fetch_buffer = fbuf = fifo.SyncFIFOBuffered(width=8 * B, depth=2 * burst_beats)
        m.d.comb += [
            fetch_rd_req.valid.eq(fetching & (fbuf.level + pending + burst_beats <= 2 * burst_beats)),
            fetch_rd_req.payload.addr.eq(req_addr),
            fetch_rd_req.payload.len.eq(burst_beats),
            fbuf.w_data.eq(fetch_rd_data.payload),
            fbuf.w_en.eq(fetch_rd_data.valid),
            fetch_rd_data.ready.eq(1),          # space was reserved when the burst was requested
        ]
        arrived = fetch_rd_data.valid & fetch_rd_data.ready
        with m.If(fetch_rd_req.valid & fetch_rd_req.ready):
            m.d.sync += req_addr.eq(req_addr + burst_bytes)
        m.d.sync += pending.eq(pending + Mux(fetch_rd_req.valid & fetch_rd_req.ready, burst_beats, 0)
                               - arrived)
        fbeat = stream.Signature(8 * B).create()
        m.d.comb += [fbeat.valid.eq(fbuf.r_rdy), fbeat.payload.eq(fbuf.r_data),
                     fbuf.r_en.eq(fbeat.valid & fbeat.ready)]
        got_beat = fbeat.valid & fbeat.ready

        # Assemble instructions from beats.
        insn = Signal(isa.INSN_BITS)
        insn_valid = Signal()
        dispatch = Signal()
        if insns_per_beat == 1:
            part = Signal(range(beats_per_insn + 1))
            m.d.comb += fbeat.ready.eq(~insn_valid | dispatch | ~fetching)
            with m.If(dispatch):
                m.d.sync += insn_valid.eq(0)
            with m.If(got_beat & fetching):
                if beats_per_insn == 1:
                    m.d.sync += [insn.eq(fbeat.payload), insn_valid.eq(1)]
                else:
                    # Little-endian: the first beat ends up in the low bits.
                    m.d.sync += insn.eq(Cat(insn[8 * B:], fbeat.payload))
                    with m.If(part == beats_per_insn - 1):
                        m.d.sync += [part.eq(0), insn_valid.eq(1)]
                    with m.Else():
                        m.d.sync += part.eq(part + 1)
        else:
            beat_buf = Signal(8 * B)
            slot = Signal(range(insns_per_beat))
            m.d.comb += [
                fbeat.ready.eq(~insn_valid | (dispatch & (slot == insns_per_beat - 1)) | ~fetching),
                insn.eq(beat_buf.word_select(slot, isa.INSN_BITS)),
            ]
            with m.If(got_beat & fetching):
                m.d.sync += [beat_buf.eq(fbeat.payload), insn_valid.eq(1), slot.eq(0)]
            with m.Elif(dispatch):
                with m.If(slot == insns_per_beat - 1):
                    m.d.sync += insn_valid.eq(0)
                with m.Else():
                    m.d.sync += slot.eq(slot + 1)

        header = data.View(isa.layout(isa.Opcode.HALT), insn)
        opcode = header.opcode
        unit_of = Signal(2)
        legal = Signal()
        tokens_ok = Signal()
        with m.Switch(opcode):
            for op, unit in isa.UNIT_OF.items():
                with m.Case(op):
                    m.d.comb += legal.eq(1)
                    if unit is not None:
                        m.d.comb += unit_of.eq(unit)
        m.d.comb += tokens_ok.eq(
            ~((unit_of == isa.Unit.LOAD) & (header.pop_prev | header.push_prev))
            & ~((unit_of == isa.Unit.STORE) & (header.pop_next | header.push_next)))
        is_halt = opcode == isa.Opcode.HALT
        room = Signal()
        with m.Switch(unit_of):
            for u, q in queues.items():
                with m.Case(u):
                    m.d.comb += room.eq(q.w_rdy)
        m.d.comb += dispatch.eq(fetching & insn_valid & legal & tokens_ok & ~is_halt & room)
        for u, q in queues.items():
            m.d.comb += [q.w_data.eq(insn), q.w_en.eq(dispatch & (unit_of == u))]
        fetched = Signal()
        m.d.comb += fetched.eq(dispatch | (fetching & insn_valid & is_halt & legal & tokens_ok))
        with m.If(dispatch):
            m.d.sync += pc.eq(pc + isa.INSN_BYTES)
        with m.If(fetching & insn_valid):
            with m.If(~legal):
                m.d.sync += [error.eq(1), self.error_code.eq(ErrorCode.ILLEGAL_OPCODE),
                             self.error_pc.eq(pc), fetching.eq(0)]
            with m.Elif(~tokens_ok):
                m.d.sync += [error.eq(1), self.error_code.eq(ErrorCode.ILLEGAL_TOKENS),
                             self.error_pc.eq(pc), fetching.eq(0)]
            with m.Elif(is_halt):
                m.d.sync += [fetching.eq(0), insn_valid.eq(0)]

        # -- dependency tokens --------------------------------------------------------------
        # tok[(a, b)]: tokens given by unit a to unit b, not yet taken.
        pairs = [(isa.Unit.LOAD, isa.Unit.COMPUTE), (isa.Unit.COMPUTE, isa.Unit.LOAD),
                 (isa.Unit.COMPUTE, isa.Unit.STORE), (isa.Unit.STORE, isa.Unit.COMPUTE)]
        tok = {p: Signal(9, name=f"tok_{p[0].name.lower()}_{p[1].name.lower()}") for p in pairs}
        inc = {p: Signal(name=f"inc_{p[0].name.lower()}_{p[1].name.lower()}") for p in pairs}
        dec = {p: Signal(name=f"dec_{p[0].name.lower()}_{p[1].name.lower()}") for p in pairs}
        units = {isa.Unit.LOAD: load, isa.Unit.COMPUTE: compute, isa.Unit.STORE: store}
        waiting = {}
        for u, unit in units.items():
            q = queues[u]
            h = data.View(isa.layout(isa.Opcode.HALT), q.r_data)
            prev, nxt = isa.Unit(u - 1) if u > 0 else None, isa.Unit(u + 1) if u < 2 else None
            ok = Const(1)
            if prev is not None:
                ok = ok & (~h.pop_prev | (tok[(prev, u)] != 0))
            if nxt is not None:
                ok = ok & (~h.pop_next | (tok[(nxt, u)] != 0))
            take = q.r_rdy & ok & unit.insn.ready
            m.d.comb += [
                unit.insn.valid.eq(q.r_rdy & ok),
                unit.insn.payload.eq(q.r_data),
                q.r_en.eq(take),
            ]
            waiting[u] = q.r_rdy & ~ok
            if prev is not None:
                m.d.comb += dec[(prev, u)].eq(take & h.pop_prev)
                m.d.comb += inc[(u, prev)].eq(unit.retire.valid & unit.retire.push_prev)
            if nxt is not None:
                m.d.comb += dec[(nxt, u)].eq(take & h.pop_next)
                m.d.comb += inc[(u, nxt)].eq(unit.retire.valid & unit.retire.push_next)
        for p in pairs:
            m.d.sync += tok[p].eq(tok[p] + inc[p] - dec[p])

        # -- external memory: reads from fetch and load, routed back in order -----------------
        m.submodules.route = route = fifo.SyncFIFOBuffered(width=9, depth=_ROUTE_DEPTH)
        rd_req, rd_data = self.dram.rd_req, self.dram.rd_data
        pick_load = Signal()
        m.d.comb += pick_load.eq(load.rd_req.valid)      # data before instructions
        chosen = Mux(pick_load, load.rd_req.payload.as_value(), fetch_rd_req.payload.as_value())
        m.d.comb += [
            rd_req.valid.eq((load.rd_req.valid | fetch_rd_req.valid) & route.w_rdy),
            rd_req.payload.eq(chosen),
            load.rd_req.ready.eq(pick_load & rd_req.ready & route.w_rdy),
            fetch_rd_req.ready.eq(~pick_load & rd_req.ready & route.w_rdy),
            route.w_en.eq(rd_req.valid & rd_req.ready),
            route.w_data.eq(Cat(pick_load, rd_req.payload.len)),
        ]
        route_to_load = route.r_data[0]
        route_len = route.r_data[1:]
        got = Signal(8)
        m.d.comb += [
            load.rd_data.payload.eq(rd_data.payload),
            fetch_rd_data.payload.eq(rd_data.payload),
            load.rd_data.valid.eq(rd_data.valid & route.r_rdy & route_to_load),
            fetch_rd_data.valid.eq(rd_data.valid & route.r_rdy & ~route_to_load),
            rd_data.ready.eq(route.r_rdy & Mux(route_to_load, load.rd_data.ready, fetch_rd_data.ready)),
        ]
        beat_in = rd_data.valid & rd_data.ready
        with m.If(beat_in):
            with m.If(got == route_len - 1):
                m.d.sync += got.eq(0)
                m.d.comb += route.r_en.eq(1)
            with m.Else():
                m.d.sync += got.eq(got + 1)
        m.d.comb += [
            self.dram.wr_req.valid.eq(store.wr_req.valid),
            self.dram.wr_req.payload.eq(store.wr_req.payload),
            store.wr_req.ready.eq(self.dram.wr_req.ready),
            self.dram.wr_data.valid.eq(store.wr_data.valid),
            self.dram.wr_data.payload.eq(store.wr_data.payload),
            store.wr_data.ready.eq(self.dram.wr_data.ready),
        ]

        # -- start / done -----------------------------------------------------------------
        idle = Signal()
        all_empty = Const(1)
        for q in queues.values():
            all_empty = all_empty & ~q.r_rdy & q.w_rdy & (q.level == 0)
        m.d.comb += idle.eq(~fetching & all_empty & ~load.busy & ~compute.busy & ~store.busy
                            & (pending == 0) & ~fbuf.r_rdy & ~route.r_rdy)
        with m.If(self.start):
            aligned = (self.insn_addr & (max(B, isa.INSN_BYTES) - 1)) == 0
            m.d.sync += [
                running.eq(1), self.done.eq(0), pc.eq(self.insn_addr), req_addr.eq(self.insn_addr),
                insn_valid.eq(0), error.eq(~aligned), fetching.eq(aligned),
                self.error_code.eq(Mux(aligned, ErrorCode.NONE, ErrorCode.MISALIGNED_PROGRAM)),
                self.error_pc.eq(self.insn_addr),
            ]
        with m.Elif(running & (idle | error)):
            m.d.sync += [running.eq(0), self.done.eq(1)]

        # -- counters and status ------------------------------------------------------------
        increments = {
            "cycles": running,
            "insns": fetched,
            "load_busy": load.busy, "load_stall": waiting[isa.Unit.LOAD],
            "compute_busy": compute.busy, "compute_stall": waiting[isa.Unit.COMPUTE],
            "store_busy": store.busy, "store_stall": waiting[isa.Unit.STORE],
            "array_active": compute.beat,
            "macs": Mux(compute.beat, compute.beat_macs, 0),
            "pwl_evals": store.pwl_evals,
            "bytes_read": Mux(beat_in, B, 0),
            "bytes_written": store.bytes_written,
        }
        assert set(increments) == set(COUNTERS)
        for name, inc_value in increments.items():
            counter = self.counters[name]
            with m.If(self.start):
                m.d.sync += counter.eq(0)
            with m.Elif(running):
                m.d.sync += counter.eq(counter + inc_value)
        st = self.status
        m.d.comb += [
            st.fetching.eq(fetching), st.pc.eq(pc),
            st.load_busy.eq(load.busy), st.compute_busy.eq(compute.busy), st.store_busy.eq(store.busy),
            st.load_waiting.eq(waiting[isa.Unit.LOAD]),
            st.compute_waiting.eq(waiting[isa.Unit.COMPUTE]),
            st.store_waiting.eq(waiting[isa.Unit.STORE]),
            st.load_queue.eq(queues[isa.Unit.LOAD].level),
            st.compute_queue.eq(queues[isa.Unit.COMPUTE].level),
            st.store_queue.eq(queues[isa.Unit.STORE].level),
        ]
        return m

