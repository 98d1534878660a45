"""cocotb verification IP for ``amaranth.lib.stream`` ports, packed by their Amaranth layouts.

A stream member ``name`` of a component appears in its Verilog as ``name__payload``,
``name__valid`` and ``name__ready``. Payloads are packed and unpacked with the same
:class:`amaranth.lib.data.Layout` the RTL was generated from, so field offsets are never restated.

Timing discipline: every source/sink sets its outputs just after a rising edge and samples the
handshake at the falling edge, when all combinational paths have settled; a transfer sampled
there is the one the DUT sees at the next rising edge.
"""

from __future__ import annotations

import random
from collections import deque

from amaranth.hdl import Shape
from amaranth.lib import data

__all__ = ["pack", "unpack", "StreamSource", "StreamSink"]


def pack(layout, value) -> int:
    """Pack *value* (int, dict for struct layouts, sequence for array layouts) into an integer."""
    if isinstance(layout, data.Layout):
        if isinstance(value, dict):
            items = value.items()
        else:
            items = enumerate(value)
        bits = 0
        for key, item in items:
            f = layout[key]
            bits |= pack(f.shape, item) << f.offset
        return bits
    shape = Shape.cast(layout)
    value = int(value)
    lo, hi = (-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed \
        else (0, (1 << shape.width) - 1)
    if not lo <= value <= hi:
        raise ValueError(f"{value} does not fit {shape}")
    return value & ((1 << shape.width) - 1)


def unpack(layout, bits: int):
    """Inverse of :func:`pack`: dicts for struct layouts, lists for array layouts, else int."""
    if isinstance(layout, data.ArrayLayout):
        return [unpack(layout[i].shape, bits >> layout[i].offset) for i in range(layout.length)]
    if isinstance(layout, data.Layout):
        return {name: unpack(f.shape, bits >> f.offset) for name, f in layout}
    shape = Shape.cast(layout)
    value = bits & ((1 << shape.width) - 1)
    if shape.signed and value >> (shape.width - 1):
        value -= 1 << shape.width
    return value


class StreamSource:
    """Drives beats into a DUT stream input, with optional random idle cycles.

    Parameters
    ----------
    dut : cocotb handle of the top level
    name : str
        Stream member name (``acts`` for ``acts__payload`` ...).
    layout : amaranth layout of the payload
    idle : float
        Probability of holding ``valid`` low in a cycle where a beat is waiting.
    rng : random.Random
    """

    def __init__(self, dut, name: str, layout, *, idle: float = 0.0, rng=None):
        self.payload = getattr(dut, f"{name}__payload")
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.layout, self.idle, self.rng = layout, idle, rng or random.Random(0)
        self.queue: deque = deque()
        self.sent = 0
        self.accept_cycles: list[int] = []
        self.stall_cycles = 0          # cycles with valid high and ready low
        self._offered = False
        self.valid.value = 0

    def send(self, beats) -> None:
        self.queue.extend(beats)

    def drive(self) -> None:
        self._offered = bool(self.queue) and not (self.idle and self.rng.random() < self.idle)
        self.valid.value = int(self._offered)
        if self._offered:
            self.payload.value = pack(self.layout, self.queue[0])

    def sample(self, cycle: int) -> None:
        if not self._offered:
            return
        if int(self.ready.value):
            self.queue.popleft()
            self.sent += 1
            self.accept_cycles.append(cycle)
        else:
            self.stall_cycles += 1

    @property
    def idle_now(self) -> bool:
        return not self.queue


class StreamSink:
    """Collects beats from a DUT stream output, with optional random back-pressure."""

    def __init__(self, dut, name: str, layout, *, backpressure: float = 0.0, rng=None):
        self.payload = getattr(dut, f"{name}__payload")
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.layout, self.backpressure, self.rng = layout, backpressure, rng or random.Random(1)
        self.beats: list = []
        self.cycles: list[int] = []
        self._ready = False
        self.ready.value = 0

    def drive(self) -> None:
        self._ready = not (self.backpressure and self.rng.random() < self.backpressure)
        self.ready.value = int(self._ready)

    def sample(self, cycle: int) -> None:
        if self._ready and int(self.valid.value):
            self.beats.append(unpack(self.layout, int(self.payload.value)))
            self.cycles.append(cycle)
