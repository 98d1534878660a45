"""A synchronous memory read port turned into a ready/valid stream, and a register slice."""

from __future__ import annotations

from amaranth.hdl import Module, Signal

__all__ = ["ReadPipe", "SkidBuffer"]


class ReadPipe:
    """Reads ``port`` at ``addr`` whenever a request is taken and presents the data as a stream.

    One request per cycle; the data of a taken request is valid the next cycle and holds (the
    port is disabled) while the consumer is not ready. Sideband values given with a request are
    delayed with it.

    Parameters
    ----------
    m : Module
    port : amaranth.lib.memory.ReadPort (synchronous)
    name : str
    sideband : dict[str, shape]
        Extra values travelling with each request (``self.side_in[name]`` ->
        ``self.side_out[name]``).

    Attributes
    ----------
    req_valid, req_ready : Signal
        Request handshake (drive ``req_valid``/``addr``/``side_in``; ``req_ready`` is driven).
    addr : Signal
    out_valid, out_ready : Signal
        Data handshake (``out_ready`` is driven by the consumer).
    data : Value
        The port's read data.
    """

    def __init__(self, m: Module, port, name: str, sideband: dict | None = None):
        self.req_valid = Signal(name=f"{name}_req_valid")
        self.req_ready = Signal(name=f"{name}_req_ready")
        self.addr = Signal(len(port.addr), name=f"{name}_addr")
        self.out_valid = Signal(name=f"{name}_out_valid")
        self.out_ready = Signal(name=f"{name}_out_ready")
        self.data = port.data
        self.side_in = {k: Signal(shape, name=f"{name}_{k}_in") for k, shape in (sideband or {}).items()}
        self.side_out = {k: Signal(shape, name=f"{name}_{k}", reset_less=True)
                         for k, shape in (sideband or {}).items()}
        stall = Signal(name=f"{name}_stall")
        m.d.comb += [
            stall.eq(self.out_valid & ~self.out_ready),
            self.req_ready.eq(~stall),
            port.en.eq(~stall),
            port.addr.eq(self.addr),
        ]
        with m.If(~stall):
            m.d.sync += self.out_valid.eq(self.req_valid)
            for k in self.side_in:
                m.d.sync += self.side_out[k].eq(self.side_in[k])

    @property
    def taken(self):
        """A request is taken this cycle."""
        return self.req_valid & self.req_ready


class SkidBuffer:
    """A register slice for a ready/valid stream whose upstream ``ready`` is a register.

    It cuts the combinational ``ready`` path from consumer to producer (and the data path
    through it): the producer sees ``up_ready = ~full``; one beat of buffering absorbs the cycle
    in which the consumer stops. Full throughput; one cycle of latency.

    Parameters
    ----------
    m : Module
    shape : shape of the payload
    name : str

    Attributes
    ----------
    up_valid, up_payload : Signal
        Driven by the producer; ``up_ready`` is driven (a register output).
    down_valid, down_payload : Signal
        Driven (registers); ``down_ready`` is driven by the consumer.
    """

    def __init__(self, m: Module, shape, name: str):
        self.up_valid = Signal(name=f"{name}_up_valid")
        self.up_ready = Signal(name=f"{name}_up_ready")
        self.up_payload = Signal(shape, name=f"{name}_up_payload")
        self.down_valid = Signal(name=f"{name}_down_valid")
        self.down_ready = Signal(name=f"{name}_down_ready")
        self.down_payload = Signal(shape, name=f"{name}_down_payload", reset_less=True)
        skid = Signal(shape, name=f"{name}_skid", reset_less=True)
        full = Signal(name=f"{name}_full")
        m.d.comb += self.up_ready.eq(~full)
        take = self.up_valid & ~full
        with m.If(~self.down_valid | self.down_ready):
            # The output register is free: refill it from the skid register, else upstream.
            with m.If(full):
                m.d.sync += [self.down_payload.eq(skid), self.down_valid.eq(1), full.eq(0)]
            with m.Else():
                m.d.sync += [self.down_payload.eq(self.up_payload), self.down_valid.eq(take)]
        with m.Elif(take):
            m.d.sync += [skid.eq(self.up_payload), full.eq(1)]
