"""The board top: UART, host protocol and on-chip memory in amaranth.sim (the host script's
encoders against the real top, bit by bit on the UART lines), and (slow) the ULX3S bitstream
with the yowasp flow."""

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import Out
from amaranth.sim import Simulator

from neuralmatrix.fpga import host as hostmod
from neuralmatrix.fpga.board import BoardCore, OnChipMemory
from neuralmatrix.fpga.uart import UARTRx, UARTTx
from neuralmatrix.hw.counters import control_members
from neuralmatrix.hw.dram import DramSignature
from neuralmatrix.hw.params import ConfigError, HwConfig

DIV = 4          # clock cycles per UART bit in the tests


class Line:
    """Bit-level UART driver and monitor for a testbench (8N1, DIV cycles per bit)."""

    def __init__(self, ctx, rx, tx):
        self.ctx, self.rx, self.tx = ctx, rx, tx

    async def send(self, data: bytes):
        for byte in data:
            for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                self.ctx.set(self.rx, bit)
                await self.ctx.tick().repeat(DIV)

    async def recv(self, n: int, timeout: int = 200_000) -> bytes:
        out = bytearray()
        waited = 0
        while len(out) < n:
            while self.ctx.get(self.tx):
                await self.ctx.tick()
                waited += 1
                if waited > timeout:
                    raise TimeoutError(f"received {bytes(out)!r}, then nothing")
            await self.ctx.tick().repeat(DIV // 2)        # middle of the start bit
            byte = 0
            for i in range(8):
                await self.ctx.tick().repeat(DIV)
                byte |= self.ctx.get(self.tx) << i
            await self.ctx.tick().repeat(DIV)
            assert self.ctx.get(self.tx) == 1, "stop bit"
            out.append(byte)
        return bytes(out)


def test_uart_loopback_with_back_pressure():
    m = Module()
    m.submodules.rx = rx = UARTRx(DIV)
    m.submodules.tx = tx = UARTTx(DIV)
    m.d.comb += rx.rx.eq(tx.tx)
    sim = Simulator(m)
    sim.add_clock(1e-6)
    sent = bytes([0x00, 0xFF, 0x55, 0xA5, 0x01, 0x80])
    got = []

    async def producer(ctx):
        for b in sent:
            ctx.set(tx.data.payload, b)
            ctx.set(tx.data.valid, 1)
            await ctx.tick().until(tx.data.ready)
        ctx.set(tx.data.valid, 0)

    async def consumer(ctx):
        for _ in range(2000):
            ctx.set(rx.data.ready, 1)
            await ctx.tick()
            if ctx.get(rx.data.valid) and ctx.get(rx.data.ready):
                got.append(ctx.get(rx.data.payload))
            if len(got) == len(sent):
                break

    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    assert bytes(got) == sent


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_bad_parameters():
    with pytest.raises(TypeError, match="UART divisor must be an integer >= 4"):
        UARTRx(2)
    with pytest.raises(ConfigError, match="mem_bytes must be a power of two"):
        OnChipMemory(HwConfig(2, 2), 1000)
    with pytest.raises(TypeError, match="config must be a HwConfig"):
        BoardCore("2x2")


def test_query_decoding():
    reply = bytes([0b101, 0x3]) + (0x40).to_bytes(4, "little") + (123).to_bytes(6, "little") \
        + (456).to_bytes(6, "little")
    st = hostmod.decode_query(reply)
    assert (st.done, st.error, st.running, st.error_code, st.error_pc, st.cycles, st.macs) == \
        (True, False, True, 3, 0x40, 123, 456)
    with pytest.raises(hostmod.HostError, match="expected 18 bytes"):
        hostmod.decode_query(b"\0")


@pytest.mark.parametrize("dataflow", ["ws", pytest.param("os", marks=pytest.mark.slow)])
def test_gemm_over_the_uart(dataflow):
    """The host protocol against BoardCore: ping, load a GEMM program and its operands, start,
    poll until done, read C back: bit-exact with numpy; an unknown command answers '?'."""
    cfg = HwConfig(2, 2, dataflow)
    image, insn_addr, gp, a, b = hostmod.gemm_image(cfg, 4, 4, 4, align=16)
    dut = BoardCore(cfg, mem_bytes=4096, divisor=DIV)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    out = {}

    async def bench(ctx):
        line = Line(ctx, dut.rx, dut.tx)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(10)
        await line.send(hostmod.encode_ping())
        out["ping"] = await line.recv(1)
        await line.send(b"x")
        out["unknown"] = await line.recv(1)
        # Only the non-zero part of the image: the memory starts zeroed.
        nz = np.flatnonzero(image)
        lo, hi = int(nz.min()), int(nz.max()) + 1
        await line.send(hostmod.encode_write(lo, image[lo:hi].tobytes()))
        out["write"] = await line.recv(1)
        await line.send(hostmod.encode_read(lo, 8))
        out["readback"] = await line.recv(8)
        await line.send(hostmod.encode_start(insn_addr))
        out["start"] = await line.recv(1)
        for _ in range(200):
            await line.send(hostmod.encode_query())
            st = hostmod.decode_query(await line.recv(hostmod.QUERY_BYTES))
            if st.done and not st.running:
                break
        out["status"] = st
        n = gp.c.end - gp.c.addr
        await line.send(hostmod.encode_read(gp.c.addr, n))
        out["c"] = await line.recv(n)

    sim.add_testbench(bench)
    sim.run()
    assert out["ping"] == b"K" and out["unknown"] == b"?" and out["write"] == b"K"
    assert out["readback"] == image[lo_hi_start(image):][:8].tobytes()
    assert out["start"] == b"K"
    st = out["status"]
    assert st.done and not st.error and st.macs == 4 * 4 * 4 and st.cycles > 0
    final = image.copy()
    final[gp.c.addr:gp.c.end] = np.frombuffer(out["c"], np.uint8)
    assert np.array_equal(gp.result(final), gp.expected(a, b))


def lo_hi_start(image):
    return int(np.flatnonzero(image).min())


class NeverDone(wiring.Component):
    """A core that starts and never finishes."""

    def __init__(self, config):
        super().__init__({"dram": Out(DramSignature(config)), **control_members()})

    def elaborate(self, platform):
        return Module()


def test_start_while_running_is_refused():
    dut = BoardCore(HwConfig(2, 2), mem_bytes=1024, divisor=DIV, core_factory=NeverDone)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    out = []

    async def bench(ctx):
        line = Line(ctx, dut.rx, dut.tx)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(10)
        for msg, n in ((hostmod.encode_start(0x40), 1), (hostmod.encode_start(0x40), 1),
                       (hostmod.encode_query(), hostmod.QUERY_BYTES)):
            await line.send(msg)
            out.append(await line.recv(n))

    sim.add_testbench(bench)
    sim.run()
    assert out[0] == b"K" and out[1] == b"B"
    st = hostmod.decode_query(out[2])
    assert st.running and not st.done


def test_ulx3s_top_elaborates_on_the_platform():
    """amaranth-boards' ULX3S 85F platform prepares the build of the top: the UART on the
    FTDI pins, the 25 MHz clock, the Trellis flow (what `neuralmatrix bitstream` runs)."""
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    from neuralmatrix.fpga.board import ULX3STop

    top = ULX3STop(HwConfig(2, 2), mem_bytes=16 * 1024)
    assert top.divisor == 217                                # 25 MHz / 115200 baud
    plan = ULX3S_85F_Platform().prepare(top, name="nm_ulx3s")
    lpf = plan.files["nm_ulx3s.lpf"]
    for pin in ('"uart_0__rx__io" SITE "M1"', '"uart_0__tx__io" SITE "L4"',
                '"clk25_0__io" SITE "G2"'):
        assert pin in lpf
    script = plan.files["build_nm_ulx3s.sh"]
    assert "--85k --package CABGA381" in script and "$ECPPACK" in script


def test_build_does_not_need_the_board_programmer():
    """amaranth-boards' ULX3S platform lists openFPGALoader among its required tools, which
    stopped every build on a machine without it; the build-only platform drops just that one."""
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    from neuralmatrix.fpga.board import _build_only

    assert "openFPGALoader" in ULX3S_85F_Platform().required_tools
    tools = _build_only(ULX3S_85F_Platform)().required_tools
    assert "openFPGALoader" not in tools
    assert {"yosys", "nextpnr-ecp5", "ecppack"} <= set(tools)


def test_bitstream_passes_seed_and_router_to_nextpnr(tmp_path, monkeypatch):
    from neuralmatrix.fpga import board
    from neuralmatrix.hw.params import ConfigError

    seen = {}

    class Recording:
        def build(self, top, **kwargs):
            seen.update(kwargs)
            (tmp_path / "b" / "nm_ulx3s.bit").write_bytes(b"bit")

    monkeypatch.setattr(board, "_build_only", lambda platform: Recording)
    bit = board.build_bitstream(HwConfig(2, 2), tmp_path / "b", mem_bytes=16 * 1024, seed=7,
                                router="router2")
    assert bit.name == "nm_ulx3s.bit" and not seen["do_program"]
    assert seen["nextpnr_opts"].split() == ["--seed", "7", "--router", "router2",
                                            "--timing-allow-fail"]
    with pytest.raises(ConfigError, match="router must be one of router1, router2"):
        board.build_bitstream(HwConfig(2, 2), tmp_path / "c", router="fast")
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_ulx3s_bitstream(tmp_path):
    """The whole flow: amaranth-boards' ULX3S 85F platform, Yosys, nextpnr-ecp5 and ecppack
    from yowasp; a 2x2 accelerator with 16 KiB of memory (tens of minutes)."""
    from neuralmatrix.fpga.board import build_bitstream

    bit = build_bitstream(HwConfig(2, 2, "ws"), tmp_path / "build", mem_bytes=16 * 1024)
    data = bit.read_bytes()
    assert len(data) > 100_000
    assert b"\xff\x00" in data[:64]             # ECP5 bitstream preamble area
