"""The accelerator's external-memory port: ready/valid read and write channels with bursts.

Addresses are byte addresses, aligned to ``bus_bytes``; a burst of ``len`` beats covers
``len * bus_bytes`` consecutive bytes. Read data returns in request order. Write data beats
follow their requests in order and carry byte strobes.
"""

from __future__ import annotations

from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .params import HwConfig

__all__ = ["ADDR_BITS", "LEN_BITS", "request_layout", "write_layout", "DramSignature"]

ADDR_BITS = 32
LEN_BITS = 8          # beats per burst, 1..255 (0 is not a valid request)


def request_layout() -> data.StructLayout:
    return data.StructLayout({"addr": ADDR_BITS, "len": LEN_BITS})


def write_layout(config: HwConfig) -> data.StructLayout:
    return data.StructLayout({"data": 8 * config.bus_bytes, "strb": config.bus_bytes})


class DramSignature(wiring.Signature):
    """The memory port as seen from the accelerator (the initiator).

    Members
    -------
    rd_req : Out(stream) of ``request_layout()``
    rd_data : In(stream) of ``8 * bus_bytes`` bits
    wr_req : Out(stream) of ``request_layout()``
    wr_data : Out(stream) of ``write_layout(config)``
    """

    def __init__(self, config: HwConfig):
        super().__init__({
            "rd_req": Out(stream.Signature(request_layout())),
            "rd_data": In(stream.Signature(8 * config.bus_bytes)),
            "wr_req": Out(stream.Signature(request_layout())),
            "wr_data": Out(stream.Signature(write_layout(config))),
        })
