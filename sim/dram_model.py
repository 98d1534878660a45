"""Simulated external memory for the accelerator's :class:`~neuralmatrix.hw.dram.DramSignature`
port, and the simulation top that puts a core next to it.

:class:`DramModel` is synthesizable Amaranth, so a whole program runs inside Verilator with no
Python in the per-cycle loop. Its storage is one :class:`~amaranth.lib.memory.Memory` of
``8 * bus_bytes``-bit words; testbenches load and read it through the C++ back door
(:mod:`neuralmatrix.sim.backdoor`), by the flattened name :func:`sim_verilog` reports.

Timing (cycle ``c0`` = the cycle a read request is accepted, ``rd_req.valid & rd_req.ready``):

* the first beat of a read burst is valid in cycle ``c0 + dram_latency``, the others follow one
  per cycle while ``rd_data.ready`` is high; a request accepted while another burst is being
  issued starts issuing right after it, so back-to-back bursts stream without gaps;
* ``rd_req.ready`` is high whenever the model is idle or issuing the last beat of a burst;
* write requests queue (``WRITE_QUEUE`` deep); the data beats of the head request are accepted
  from the cycle after it was accepted, one per cycle, each written with its byte strobes at the
  clock edge that accepts it (so a read requested afterwards sees it);
* no ready depends combinationally on any valid, and vice versa.

A request with ``len == 0``, an address not aligned to ``bus_bytes`` or a range beyond the memory
sets the sticky ``fault`` (and ``fault_addr`` to the first faulting request's address); such a
read still returns ``len`` beats (from the wrapped address) so the core does not hang, such a
write consumes its beats without writing.
"""

from __future__ import annotations

import contextlib

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from neuralmatrix.hw.counters import control_members
from neuralmatrix.hw.dram import ADDR_BITS, LEN_BITS, DramSignature
from neuralmatrix.hw.params import HwConfig

__all__ = ["WRITE_QUEUE", "DramModel", "SimTop", "SIM_TOP_NAME", "sim_verilog",
           "flattened_verilog", "zero_meminit_skipped"]

WRITE_QUEUE = 4          # write requests accepted ahead of their data
SIM_TOP_NAME = "nm_simtop"


class DramModel(wiring.Component):
    """The memory side of :class:`DramSignature`.

    Members
    -------
    bus : In(DramSignature(config))
        Connect the core's ``dram`` port here.
    fault : Out(1)
        Sticky: a request was unaligned, of length 0 or out of range.
    fault_addr : Out(32)
        Address of the first faulting request.
    """

    def __init__(self, config: HwConfig, size_bytes: int):
        B = config.bus_bytes
        if size_bytes % B or size_bytes < B or (size_bytes // B) & (size_bytes // B - 1):
            raise ValueError(f"size_bytes must be a power-of-two number of {B}-byte words, "
                             f"got {size_bytes}")
        if size_bytes > 1 << ADDR_BITS:
            raise ValueError(f"size_bytes must be at most 2**{ADDR_BITS}, got {size_bytes}")
        self._config = config
        self.size_bytes = size_bytes
        self.depth = size_bytes // B
        super().__init__({
            "bus": In(DramSignature(config)),
            "fault": Out(1),
            "fault_addr": Out(ADDR_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        B = cfg.bus_bytes
        OFF = (B - 1).bit_length()                   # log2(bus_bytes)
        ABITS = max(1, (self.depth - 1).bit_length())  # word address bits
        L = cfg.dram_latency
        CAP = L + 1                                  # read beats outstanding (issued, not consumed)
        bus = self.bus

        m.submodules.mem = mem = Memory(shape=8 * B, depth=self.depth, init=[])
        rport = mem.read_port(domain="sync")         # not transparent: old data on a collision
        wport = mem.write_port(granularity=8)

        def check(req):
            """1 when a request is bad (only meaningful when it is accepted)."""
            end = Signal(ADDR_BITS + LEN_BITS + 1)
            m.d.comb += end.eq(req.addr + (req.len << OFF))
            return (req.addr[:OFF] != 0) | (req.len == 0) | (end > self.size_bytes)

        faults = []   # (condition, address)

        # ---- read side: issue stage -> L-1 address delay registers -> memory -> output FIFO ----
        rd_req = bus.rd_req
        busy = Signal()
        baddr = Signal(ABITS)
        brem = Signal(LEN_BITS)
        outstanding = Signal(range(CAP + 2))
        can = Signal()
        m.d.comb += can.eq(outstanding < CAP)
        issue = Signal()
        issue_addr = Signal(ABITS)
        req_addr = Signal(ABITS)
        m.d.comb += req_addr.eq(rd_req.payload.addr[OFF:OFF + ABITS])

        with m.If(busy):
            m.d.comb += rd_req.ready.eq((brem == 1) & can)
            with m.If(can):
                m.d.comb += [issue.eq(1), issue_addr.eq(baddr)]
                m.d.sync += [baddr.eq(baddr + 1), brem.eq(brem - 1)]
                with m.If(brem == 1):
                    m.d.sync += busy.eq(0)
        with m.Else():
            m.d.comb += rd_req.ready.eq(1)
        rd_fire = rd_req.valid & rd_req.ready
        faults.append((rd_fire & check(rd_req.payload), rd_req.payload.addr))
        with m.If(rd_fire):
            with m.If(rd_req.payload.len != 0):
                with m.If(~busy & can):
                    m.d.comb += [issue.eq(1), issue_addr.eq(req_addr)]
                    m.d.sync += [baddr.eq(req_addr + 1), brem.eq(rd_req.payload.len - 1),
                                 busy.eq(rd_req.payload.len != 1)]
                with m.Else():
                    m.d.sync += [baddr.eq(req_addr), brem.eq(rd_req.payload.len), busy.eq(1)]

        # Address delay line: stage i holds the beat issued i cycles ago.
        valid_d, addr_d = issue, issue_addr
        for i in range(L - 1):
            v, a = Signal(name=f"rd_v{i}"), Signal(ABITS, name=f"rd_a{i}")
            m.d.sync += [v.eq(valid_d), a.eq(addr_d)]
            valid_d, addr_d = v, a
        mem_valid = Signal()
        m.d.comb += rport.addr.eq(addr_d)
        m.d.sync += mem_valid.eq(valid_d)

        m.submodules.rd_fifo = rd_fifo = fifo.SyncFIFO(width=8 * B, depth=CAP)
        rd_data = bus.rd_data
        m.d.comb += [
            rd_data.valid.eq(rd_fifo.r_rdy | mem_valid),
            rd_data.payload.eq(Mux(rd_fifo.r_rdy, rd_fifo.r_data, rport.data)),
            rd_fifo.r_en.eq(rd_data.ready),
            rd_fifo.w_data.eq(rport.data),
            rd_fifo.w_en.eq(mem_valid & (rd_fifo.r_rdy | ~rd_data.ready)),
        ]
        consume = rd_data.valid & rd_data.ready
        m.d.sync += outstanding.eq(outstanding + issue - consume)

        # ---- write side: request queue -> beats of the head request ----
        wr_req, wr_data = bus.wr_req, bus.wr_data
        m.submodules.wr_queue = wq = fifo.SyncFIFO(width=ABITS + LEN_BITS + 1, depth=WRITE_QUEUE)
        w_bad = Signal()
        m.d.comb += [
            wr_req.ready.eq(wq.w_rdy),
            wq.w_en.eq(wr_req.valid),
            wq.w_data.eq(Cat(wr_req.payload.addr[OFF:OFF + ABITS], wr_req.payload.len, w_bad)),
        ]
        m.d.comb += w_bad.eq(check(wr_req.payload))
        faults.append((wr_req.valid & wr_req.ready & w_bad, wr_req.payload.addr))
        h_addr = wq.r_data[:ABITS]
        h_len = wq.r_data[ABITS:ABITS + LEN_BITS]
        h_bad = wq.r_data[ABITS + LEN_BITS]
        widx = Signal(LEN_BITS)
        m.d.comb += wr_data.ready.eq(wq.r_rdy & (h_len != 0))
        accept = wr_data.valid & wr_data.ready
        m.d.comb += [
            wport.addr.eq(h_addr + widx),
            wport.data.eq(wr_data.payload.data),
            wport.en.eq(Mux(accept & ~h_bad, wr_data.payload.strb, 0)),
        ]
        with m.If(accept):
            with m.If(widx == h_len - 1):
                m.d.sync += widx.eq(0)
                m.d.comb += wq.r_en.eq(1)
            with m.Else():
                m.d.sync += widx.eq(widx + 1)
        with m.If(wq.r_rdy & (h_len == 0)):
            m.d.comb += wq.r_en.eq(1)

        # ---- sticky fault ----
        for cond, addr in faults:
            with m.If(cond & ~self.fault):
                m.d.sync += [self.fault.eq(1), self.fault_addr.eq(addr)]
        return m


class SimTop(wiring.Component):
    """A core (anything with the accelerator's signature) next to a :class:`DramModel`.

    Exposes the core's control and observation ports, plus the memory model's ``fault`` and
    ``fault_addr``. The DRAM storage is ``dram.mem`` in the hierarchy.
    """

    def __init__(self, config: HwConfig, core_factory, dram_bytes: int):
        self._config = config
        self._core_factory = core_factory
        self._dram_bytes = dram_bytes
        super().__init__({
            **control_members(),
            "fault": Out(1),
            "fault_addr": Out(ADDR_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self._core_factory(self._config)
        m.submodules.dram = dram = DramModel(self._config, self._dram_bytes)
        wiring.connect(m, core.dram, dram.bus)
        m.d.comb += [
            core.start.eq(self.start),
            core.insn_addr.eq(self.insn_addr),
            self.done.eq(core.done),
            self.error.eq(core.error),
            self.error_code.eq(core.error_code),
            self.error_pc.eq(core.error_pc),
            self.counters.eq(core.counters),
            self.status.eq(core.status),
            self.fault.eq(dram.fault),
            self.fault_addr.eq(dram.fault_addr),
        ]
        return m


@contextlib.contextmanager
def zero_meminit_skipped():
    """While active, Amaranth's RTLIL backend emits no ``$meminit`` cell for an all-zero
    memory initialiser.

    Amaranth 0.5 writes the initialiser of every memory as one RTLIL net per *bit*, even when it
    is all zeros: a 32 MiB memory becomes 268 M nets and exhausts the RAM. Verilator starts with
    zeroed memories anyway, so nothing is lost. The original method is restored on exit.
    """
    from amaranth.back import rtlil

    original = rtlil.ModuleEmitter.emit_memory

    def emit_memory(self, cell_idx, cell):
        if any(cell.init):
            return original(self, cell_idx, cell)
        return None

    rtlil.ModuleEmitter.emit_memory = emit_memory
    try:
        yield
    finally:
        rtlil.ModuleEmitter.emit_memory = original


_SHRUNK_DEPTH = 2


def flattened_verilog(component, name: str, memory_module: str, memory_words: int,
                      memory_width: int, memory: str = "mem"):
    """Simulation Verilog of *component* (flattened by :func:`rtlil_to_sim_verilog`), with a big
    zero-initialised memory handled so that neither Amaranth nor Yosys ever sees its contents.

    *memory_module* is the RTLIL module holding the memory (``nm_simtop.dram``), *memory* its
    name there. Two things would otherwise blow up:

    * Amaranth writes an all-zero initialiser as one net per bit (:func:`zero_meminit_skipped`);
    * Yosys' ``opt_merge`` hashes the ``INIT`` parameter of the collected memory, one state per
      bit: 25 s and gigabytes for 32 MiB. So the memory is declared with ``_SHRUNK_DEPTH`` words
      in the RTLIL handed to Yosys (its ports keep their full address width), and the declaration
      in the Verilog is put back to the real depth.

    Returns ``(verilog_text, memory_name)``, the latter as Verilog/Verilator spell the flattened
    memory (e.g. ``dram.mem``).
    """
    import re

    from amaranth.back import rtlil

    from neuralmatrix.hw.generate import rtlil_to_sim_verilog

    with zero_meminit_skipped():
        text = rtlil.convert(component, name=name, emit_src=False)
    # 1. shrink the declaration inside its module
    module_re = re.compile(rf"^module \\{re.escape(memory_module)}\n(.*?)^end\n", re.M | re.S)
    mod = module_re.search(text)
    if not mod:
        raise RuntimeError(f"RTLIL module {memory_module} not found")
    decl = f"memory width {memory_width} size {memory_words} \\{memory}\n"
    body = mod.group(1)
    if body.count(decl) != 1:
        raise RuntimeError(f"memory {memory} ({memory_words} x {memory_width}) not found in RTLIL "
                           f"module {memory_module}")
    body = body.replace(decl, f"memory width {memory_width} size {_SHRUNK_DEPTH} \\{memory}\n")
    text = text[:mod.start(1)] + body + text[mod.end(1):]
    verilog_text = rtlil_to_sim_verilog(text)
    # 2. restore the depth in the flattened Verilog
    suffix = memory_module.split(".", 1)[1] + "." + memory if "." in memory_module else memory
    decl_re = re.compile(rf"^(\s*reg \[{memory_width - 1}:0\] )(\\\S+|\w+) +"
                         rf"\[{_SHRUNK_DEPTH - 1}:0\];$", re.M)
    hits = [h for h in decl_re.finditer(verilog_text) if h.group(2).lstrip("\\") == suffix]
    if len(hits) != 1:
        raise RuntimeError(f"cannot find the memory {suffix} in the flattened Verilog "
                           f"({len(hits)} declarations)")
    h = hits[0]
    verilog_text = (verilog_text[:h.start()] + f"{h.group(1)}{h.group(2)} [{memory_words - 1}:0];"
                    + verilog_text[h.end():])
    mem_ref = re.escape(h.group(2))
    if re.search(rf"^\s*{mem_ref} *\[\d+\] *= ", verilog_text, re.M):
        raise RuntimeError(f"the flattened Verilog initialises {suffix} (an initial block)")
    return verilog_text, suffix


def sim_verilog(config: HwConfig, core_factory, dram_bytes: int):
    """Simulation Verilog of ``SimTop(config, core_factory, dram_bytes)``.

    Returns ``(verilog_text, toplevel_name, public_names)``; *public_names* holds the flattened
    name of the DRAM storage (``dram.mem``) first, then those of the core's memories named in
    its ``POWER_UP_ZERO`` attribute (``core.sp`` ...), for ``runner.build(public=...)`` and
    :class:`~neuralmatrix.sim.backdoor.Backdoor`.
    """
    top = SimTop(config, core_factory, dram_bytes)
    text, mem = flattened_verilog(top, SIM_TOP_NAME, f"{SIM_TOP_NAME}.dram",
                                  dram_bytes // config.bus_bytes, 8 * config.bus_bytes)
    # On-chip memories of the core that start every program from their power-up (zero) state.
    cleared = [f"core.{name}" for name in getattr(core_factory, "POWER_UP_ZERO", ())]
    return text, SIM_TOP_NAME, [mem, *cleared]
