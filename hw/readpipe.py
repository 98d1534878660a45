"""A synchronous memory read port turned into a ready/valid stream."""

from __future__ import annotations

from amaranth.hdl import Module, Signal

__all__ = ["ReadPipe"]


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
