"""Host side of the board's UART protocol (see :mod:`neuralmatrix.fpga.board`).

:class:`Host` drives any pyserial-like byte stream (``write(bytes)``, ``read(n)``); the
``encode_*`` / ``decode_query`` functions are the protocol itself, shared with the tests that
run it against the board top in amaranth.sim. Command line (needs ``pyserial``)::

    python -m neuralmatrix.fpga.host --port /dev/ttyUSB0 ping
    python -m neuralmatrix.fpga.host --port /dev/ttyUSB0 gemm --rows 8 --cols 8 -M 16 -K 16 -N 16
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from dataclasses import dataclass

import numpy as np

from .board import (ACK, BUSY, CMD_PING, CMD_QUERY, CMD_READ, CMD_START, CMD_WRITE,
                    QUERY_BYTES)

__all__ = ["HostError", "Status", "encode_write", "encode_read", "encode_start",
           "encode_query", "encode_ping", "decode_query", "Host", "gemm_image"]


class HostError(RuntimeError):
    """The board answered something else than the protocol allows (or nothing)."""


@dataclass
class Status:
    done: bool
    error: bool
    running: bool
    error_code: int
    error_pc: int
    cycles: int
    macs: int


def encode_write(addr: int, data: bytes) -> bytes:
    return bytes([CMD_WRITE]) + struct.pack("<II", addr, len(data)) + bytes(data)


def encode_read(addr: int, n: int) -> bytes:
    return bytes([CMD_READ]) + struct.pack("<II", addr, n)


def encode_start(insn_addr: int) -> bytes:
    return bytes([CMD_START]) + struct.pack("<I", insn_addr)


def encode_query() -> bytes:
    return bytes([CMD_QUERY])


def encode_ping() -> bytes:
    return bytes([CMD_PING])


def decode_query(reply: bytes) -> Status:
    if len(reply) != QUERY_BYTES:
        raise HostError(f"query: expected {QUERY_BYTES} bytes, got {len(reply)}")
    flags, code = reply[0], reply[1] & 0xF
    pc = struct.unpack("<I", reply[2:6])[0]
    cycles = int.from_bytes(reply[6:12], "little")
    macs = int.from_bytes(reply[12:18], "little")
    return Status(bool(flags & 1), bool(flags & 2), bool(flags & 4), code, pc, cycles, macs)


class Host:
    """The protocol over *port* (pyserial-like: ``write``, ``read(n)`` returning up to n bytes
    before its time-out)."""

    def __init__(self, port, *, chunk: int = 4096):
        self.port = port
        self.chunk = chunk

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            got = self.port.read(n - len(data))
            if not got:
                raise HostError(f"the board sent {len(data)} of {n} bytes, then nothing")
            data += got
        return data

    def _ack(self, what: str) -> None:
        reply = self._read(1)
        if reply[0] == BUSY:
            raise HostError(f"{what}: a program is running")
        if reply[0] != ACK:
            raise HostError(f"{what}: expected 'K', got {reply!r}")

    def ping(self) -> None:
        self.port.write(encode_ping())
        self._ack("ping")

    def write(self, addr: int, data: bytes) -> None:
        for off in range(0, len(data), self.chunk):
            self.port.write(encode_write(addr + off, data[off:off + self.chunk]))
            self._ack(f"write at {addr + off:#x}")

    def read(self, addr: int, n: int) -> bytes:
        out = b""
        for off in range(0, n, self.chunk):
            size = min(self.chunk, n - off)
            self.port.write(encode_read(addr + off, size))
            out += self._read(size)
        return out

    def start(self, insn_addr: int) -> None:
        self.port.write(encode_start(insn_addr))
        self._ack("start")

    def query(self) -> Status:
        self.port.write(encode_query())
        return decode_query(self._read(QUERY_BYTES))

    def run(self, insn_addr: int, *, timeout_s: float = 10.0, poll_s: float = 0.01) -> Status:
        """Start the program at *insn_addr* and wait for ``done``."""
        self.start(insn_addr)
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.query()
            if st.done and not st.running:
                return st
            if time.monotonic() > deadline:
                raise HostError(f"no done after {timeout_s} s: {st}")
            time.sleep(poll_s)


def gemm_image(config, M: int, K: int, N: int, *, seed: int = 0, align: int = 64):
    """A small int8 GEMM program with random operands: ``(image, insn_addr, gp, a, b)``
    (:func:`neuralmatrix.sw.gemm_program.random_gemm_image`)."""
    from neuralmatrix.sw.gemm_program import random_gemm_image

    return random_gemm_image(config, M, K, N, seed=seed, shift=6, align=align)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m neuralmatrix.fpga.host",
                                description="Drive the accelerator on the board over its UART.")
    p.add_argument("--port", required=True, help="serial device, e.g. /dev/ttyUSB0")
    p.add_argument("--baud", type=int, default=115200)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ping")
    sub.add_parser("query")
    g = sub.add_parser("gemm", help="run a random int8 GEMM and check it against numpy")
    g.add_argument("--rows", type=int, default=8)
    g.add_argument("--cols", type=int, default=8)
    g.add_argument("--dataflow", default="ws")
    for dim in "MKN":
        g.add_argument(f"-{dim}", type=int, default=16)
    args = p.parse_args(argv)
    try:
        import serial
    except ImportError:
        print("the host script needs pyserial: pip install pyserial", file=sys.stderr)
        return 2
    host = Host(serial.Serial(args.port, args.baud, timeout=2))
    if args.cmd == "ping":
        host.ping()
        print("ok")
    elif args.cmd == "query":
        print(host.query())
    else:
        from neuralmatrix.hw.params import HwConfig

        cfg = HwConfig(rows=args.rows, cols=args.cols, dataflow=args.dataflow)
        image, insn_addr, gp, a, b = gemm_image(cfg, args.M, args.K, args.N)
        host.write(0, image.tobytes())
        st = host.run(insn_addr)
        final = image.copy()
        final[gp.c.addr:gp.c.end] = np.frombuffer(host.read(gp.c.addr, gp.c.end - gp.c.addr),
                                                  np.uint8)
        ok = np.array_equal(gp.result(final), gp.expected(a, b))
        print(f"{'bit-exact' if ok else 'MISMATCH'}; {st.cycles} cycles, {st.macs} MACs, "
              f"error={st.error}")
        return 0 if ok and not st.error else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
