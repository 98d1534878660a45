"""8N1 UART receiver and transmitter with byte streams (Amaranth).

Both sample on the module's ``sync`` clock; ``divisor`` is clock cycles per bit
(``round(f_clk / baud)``).
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTRx", "UARTTx", "check_divisor"]


def check_divisor(divisor) -> int:
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 4:
        raise TypeError(f"UART divisor must be an integer >= 4 (clock cycles per bit), "
                        f"not {divisor!r}")
    return divisor


class UARTRx(wiring.Component):
    """8N1 receiver.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (>= 4).

    Members
    -------
    rx : In(1)
        The serial line (idle high); synchronized inside.
    data : Out(stream.Signature(8))
        One payload per received byte. A byte that arrives while the previous one has not been
        taken is dropped and counted in ``overrun``.
    overrun : Out(1)
        Pulses when a byte is dropped.
    framing_error : Out(1)
        Pulses when a stop bit is low (the byte is dropped).
    """

    def __init__(self, divisor: int):
        self._divisor = check_divisor(divisor)
        super().__init__({"rx": In(1, init=1), "data": Out(stream.Signature(8)),
                          "overrun": Out(1), "framing_error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        d = self._divisor
        rx = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, rx, init=1)
        timer = Signal(range(2 * d))
        bits = Signal(range(10))
        shift = Signal(8)
        m.d.comb += [self.overrun.eq(0), self.framing_error.eq(0)]

        with m.If(self.data.ready):
            m.d.sync += self.data.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += timer.eq(d // 2 - 1)      # to the middle of the start bit
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    with m.If(rx):
                        m.next = "IDLE"                    # a glitch, not a start bit
                    with m.Else():
                        m.d.sync += [timer.eq(d - 1), bits.eq(0)]
                        m.next = "DATA"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shift.eq(shift >> 1 | rx << 7), timer.eq(d - 1),
                                 bits.eq(bits + 1)]
                    with m.If(bits == 7):
                        m.next = "STOP"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(~rx):
                        m.d.comb += self.framing_error.eq(1)
                    with m.Elif(self.data.valid & ~self.data.ready):
                        m.d.comb += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [self.data.payload.eq(shift), self.data.valid.eq(1)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
        return m


class UARTTx(wiring.Component):
    """8N1 transmitter.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (>= 4).

    Members
    -------
    data : In(stream.Signature(8))
        Bytes to send, taken one at a time.
    tx : Out(1)
        The serial line (idle high).
    """

    def __init__(self, divisor: int):
        self._divisor = check_divisor(divisor)
        super().__init__({"data": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        d = self._divisor
        timer = Signal(range(d))
        frame = Signal(10, init=0x3FF)
        left = Signal(range(11))
        m.d.comb += self.tx.eq(frame[0])
        with m.If(left == 0):
            m.d.comb += self.data.ready.eq(1)
            with m.If(self.data.valid):
                m.d.sync += [frame.eq(1 << 9 | self.data.payload << 1), left.eq(10),
                             timer.eq(d - 1)]
        with m.Elif(timer == 0):
            m.d.sync += [frame.eq(frame >> 1 | 1 << 9), left.eq(left - 1), timer.eq(d - 1)]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
        return m
