"""Stand-in cores with the accelerator's signature, for testing the program harness alone.

:class:`CopyCore` reads a 16-byte descriptor at ``insn_addr`` (four little-endian 32-bit words:
``src``, ``dst``, ``nbeats``, ``flags``), copies ``nbeats`` bus beats from ``src`` to ``dst`` with
read and write bursts of up to 16 beats (reads run ahead of writes through a 64-beat buffer), then
writes one partial-strobe beat at ``dst + nbeats * bus_bytes`` (bytes with an even index become
``PARTIAL_BYTE``, the odd ones are left alone), then raises ``done``.

``flags``: bit 0 ``HANG`` never raises done; bit 1 ``ERROR`` raises ``error`` with
``error_code = flags[4:8]`` and ``error_pc = insn_addr``.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import Out

from neuralmatrix.hw.counters import COUNTERS, control_members
from neuralmatrix.hw.dram import DramSignature
from neuralmatrix.hw.params import HwConfig

HANG = 1
ERROR = 2
PARTIAL_BYTE = 0xA5
MAX_BURST = 16
BUFFER = 64


def descriptor(src: int, dst: int, nbeats: int, flags: int = 0) -> np.ndarray:
    """The 16 descriptor bytes."""
    return np.array([src, dst, nbeats, flags], dtype="<u4").view(np.uint8)


def partial_strobe(bus_bytes: int) -> int:
    return sum(1 << i for i in range(0, bus_bytes, 2))


class CopyCore(wiring.Component):
    def __init__(self, config: HwConfig):
        self._config = config
        super().__init__({
            "dram": Out(DramSignature(config)),
            **control_members(),
        })

    def elaborate(self, platform):
        m = Module()
        B = self._config.bus_bytes
        W = 8 * B
        nd = max(1, 16 // B)                   # descriptor beats
        port = self.dram
        cnt = self.counters

        desc = Signal(max(128, W))
        dcount = Signal(range(nd + 1))
        src, dst, nbeats, flags = (desc[32 * i:32 * (i + 1)] for i in range(4))

        m.submodules.buf = buf = fifo.SyncFIFO(width=W, depth=BUFFER)
        raddr = Signal(32)
        waddr = Signal(32)
        rremain = Signal(32)
        wremain = Signal(32)
        reserved = Signal(range(BUFFER + 1))    # beats requested and not yet written out
        wactive = Signal()
        wbeats = Signal(range(MAX_BURST + 1))
        running = Signal()

        with m.If(running):
            m.d.sync += cnt.cycles.eq(cnt.cycles + 1)

        m.d.comb += [self.status.pc.eq(raddr), self.status.load_queue.eq(buf.level),
                     self.status.load_busy.eq(rremain != 0),
                     self.status.store_busy.eq(wactive)]

        rlen = Mux(rremain > MAX_BURST, MAX_BURST, rremain)[:8]
        wlen = Mux(wremain > MAX_BURST, MAX_BURST, wremain)[:8]
        rd_fire = port.rd_req.valid & port.rd_req.ready
        rd_beat = port.rd_data.valid & port.rd_data.ready
        wr_fire = port.wr_req.valid & port.wr_req.ready
        wr_beat = port.wr_data.valid & port.wr_data.ready
        with m.If(rd_beat):
            m.d.sync += cnt.bytes_read.eq(cnt.bytes_read + B)
        with m.If(wr_beat):
            m.d.sync += cnt.bytes_written.eq(cnt.bytes_written + B)

        fill = Const(int.from_bytes(bytes([PARTIAL_BYTE]) * B, "little"), W)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [self.done.eq(0), self.error.eq(0), self.error_code.eq(0),
                                 self.error_pc.eq(0), dcount.eq(0), running.eq(1),
                                 raddr.eq(self.insn_addr)]
                    m.d.sync += [getattr(cnt, name).eq(0) for name in COUNTERS]
                    m.next = "DESC_REQ"
            with m.State("DESC_REQ"):
                m.d.comb += [self.status.fetching.eq(1), port.rd_req.valid.eq(1),
                             port.rd_req.payload.addr.eq(raddr), port.rd_req.payload.len.eq(nd)]
                with m.If(rd_fire):
                    m.next = "DESC_DATA"
            with m.State("DESC_DATA"):
                m.d.comb += [self.status.fetching.eq(1), port.rd_data.ready.eq(1)]
                with m.If(rd_beat):
                    if W >= 128:
                        m.d.sync += desc.eq(port.rd_data.payload)
                    else:
                        m.d.sync += desc.eq(Cat(desc[W:128], port.rd_data.payload))
                    m.d.sync += dcount.eq(dcount + 1)
                    with m.If(dcount == nd - 1):
                        m.d.sync += cnt.insns.eq(1)
                        m.next = "SETUP"
            with m.State("SETUP"):
                m.d.sync += [raddr.eq(src), waddr.eq(dst), rremain.eq(nbeats),
                             wremain.eq(nbeats), reserved.eq(0), wactive.eq(0)]
                m.next = "COPY"
            with m.State("COPY"):
                # reader: bursts of up to 16 beats while the buffer has room for them
                with m.If((rremain != 0) & (reserved + rlen <= BUFFER)):
                    m.d.comb += [port.rd_req.valid.eq(1), port.rd_req.payload.addr.eq(raddr),
                                 port.rd_req.payload.len.eq(rlen)]
                with m.If(rremain != 0):
                    m.d.sync += cnt.load_busy.eq(cnt.load_busy + 1)
                m.d.comb += [port.rd_data.ready.eq(1), buf.w_en.eq(rd_beat),
                             buf.w_data.eq(port.rd_data.payload)]
                with m.If(rd_fire):
                    m.d.sync += [raddr.eq(raddr + rlen * B), rremain.eq(rremain - rlen)]
                # writer: a burst once all its beats are buffered
                with m.If(~wactive):
                    with m.If((wremain != 0) & (buf.level >= wlen)):
                        m.d.comb += [port.wr_req.valid.eq(1), port.wr_req.payload.addr.eq(waddr),
                                     port.wr_req.payload.len.eq(wlen)]
                        with m.If(wr_fire):
                            m.d.sync += [wactive.eq(1), wbeats.eq(wlen),
                                         waddr.eq(waddr + wlen * B), wremain.eq(wremain - wlen)]
                    with m.If((wremain == 0) & (rremain == 0)):
                        m.next = "PARTIAL_REQ"
                with m.Else():
                    m.d.sync += cnt.store_busy.eq(cnt.store_busy + 1)
                    m.d.comb += [port.wr_data.valid.eq(buf.r_rdy),
                                 port.wr_data.payload.data.eq(buf.r_data),
                                 port.wr_data.payload.strb.eq((1 << B) - 1),
                                 buf.r_en.eq(port.wr_data.ready)]
                    with m.If(wr_beat):
                        m.d.sync += wbeats.eq(wbeats - 1)
                        with m.If(wbeats == 1):
                            m.d.sync += wactive.eq(0)
                r_in = Mux(rd_fire, rlen, 0)
                r_out = Mux(wr_beat, 1, 0)
                m.d.sync += reserved.eq(reserved + r_in - r_out)
            with m.State("PARTIAL_REQ"):
                m.d.comb += [port.wr_req.valid.eq(1), port.wr_req.payload.addr.eq(waddr),
                             port.wr_req.payload.len.eq(1)]
                with m.If(wr_fire):
                    m.next = "PARTIAL_DATA"
            with m.State("PARTIAL_DATA"):
                m.d.comb += [port.wr_data.valid.eq(1),
                             port.wr_data.payload.data.eq(fill),
                             port.wr_data.payload.strb.eq(partial_strobe(B))]
                with m.If(wr_beat):
                    m.next = "FINISH"
            with m.State("FINISH"):
                with m.If(~flags[0]):
                    m.d.sync += [self.done.eq(1), running.eq(0)]
                    with m.If(flags[1]):
                        m.d.sync += [self.error.eq(1), self.error_code.eq(flags[4:8]),
                                     self.error_pc.eq(self.insn_addr)]
                    m.next = "IDLE"
        return m
