"""Memory back door: bulk load and read a memory of a running Verilator model from cocotb.

Per-element VPI access costs ~5 us a word (a 25 MB image would take minutes); this copies
through ``memcpy`` inside the simulator (GB/s). The C++ side, :data:`SOURCE`, is compiled into
the model::

    runner.build(verilog, top, extra_sources=[backdoor.SOURCE], extra_args=backdoor.BUILD_ARGS,
                 public=[memory_name])

and its functions are reached through ``ctypes.CDLL(None)`` (the simulator executable, which
exports them thanks to ``-rdynamic``). Only usable inside the simulator process (a cocotb test).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

__all__ = ["SOURCE", "BUILD_ARGS", "BackdoorError", "Backdoor"]

#: The C++ back door, to pass as ``extra_sources`` to :func:`neuralmatrix.sim.runner.build`.
SOURCE = Path(__file__).parent / "backdoor.cpp"
#: Build arguments that export the back door's functions from the simulator executable.
BUILD_ARGS = ("-LDFLAGS", "-rdynamic")

_ERRORS = {
    -1: "no public variable matches",
    -2: "more than one public variable matches",
    -3: "the variable is not a one-dimensional memory",
    -4: "the byte range is outside the memory",
    -5: "the model has no scope table (nothing public?)",
}


class BackdoorError(RuntimeError):
    """The back door is missing from the simulator, or the memory or range is wrong."""


def _library():
    lib = ctypes.CDLL(None)
    try:
        lib.nm_mem_info
    except AttributeError:
        raise BackdoorError(
            "the memory back door is not in this simulator: build it with "
            "extra_sources=[neuralmatrix.sim.backdoor.SOURCE] and extra_args="
            "['-LDFLAGS', '-rdynamic'] (Verilator only), and call it from inside the "
            "cocotb test process") from None
    u64, u32, vp, cp = ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_char_p
    lib.nm_mem_info.argtypes = [cp, ctypes.POINTER(u64), ctypes.POINTER(u32), ctypes.POINTER(u32)]
    lib.nm_mem_write.argtypes = [cp, u64, vp, u64]
    lib.nm_mem_read.argtypes = [cp, u64, vp, u64]
    lib.nm_mem_fill.argtypes = [cp, u64, ctypes.c_uint8, u64]
    lib.nm_list_vars.argtypes = [ctypes.c_char_p, u64]
    lib.nm_list_vars.restype = u64
    for f in (lib.nm_mem_info, lib.nm_mem_write, lib.nm_mem_read, lib.nm_mem_fill):
        f.restype = ctypes.c_int
    return lib


def public_names() -> list[str]:
    """Full names of every public variable of the model (for error messages)."""
    lib = _library()
    size = lib.nm_list_vars(None, 0) + 1
    buf = ctypes.create_string_buffer(int(size))
    lib.nm_list_vars(buf, size)
    return buf.value.decode().splitlines()


class Backdoor:
    """Byte-addressed access to the memory whose full name ends with ``.name_suffix``.

    Byte ``b`` of the image is byte ``b % E`` (little-endian) of word ``b // E``, where ``E`` is
    the word width in bytes: the layout of the accelerator's memory bus.

    Attributes
    ----------
    depth : int
        Words.
    word_bits : int
    size : int
        Bytes (``depth * ceil(word_bits / 8)``).
    """

    def __init__(self, name_suffix: str):
        self._lib = _library()
        self.name = name_suffix
        self._cname = name_suffix.encode()
        depth, bits, esize = ctypes.c_uint64(), ctypes.c_uint32(), ctypes.c_uint32()
        rc = self._lib.nm_mem_info(self._cname, depth, bits, esize)
        if rc != 0:
            names = public_names()
            shown = "\n  ".join(names[:40]) + ("\n  ..." if len(names) > 40 else "")
            raise BackdoorError(f"memory '{name_suffix}': {_ERRORS.get(rc, rc)}; public "
                                f"variables ({len(names)}), is it in runner.build(public=...)?"
                                f"\n  {shown}")
        self.depth, self.word_bits = depth.value, bits.value
        self.size = self.depth * ((self.word_bits + 7) // 8)

    def _check(self, rc: int, what: str, offset: int, nbytes: int) -> None:
        if rc != 0:
            raise BackdoorError(f"{what} of {nbytes} bytes at {offset:#x} in '{self.name}' "
                                f"({self.size} bytes): {_ERRORS.get(rc, rc)}")

    def _range(self, offset: int, nbytes: int, what: str) -> None:
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            self._check(-4, what, offset, nbytes)

    def write(self, byte_offset: int, data) -> None:
        """Copy *data* (bytes or an array, taken as raw bytes) to ``byte_offset``."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = np.frombuffer(data, np.uint8)
        arr = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        self._range(byte_offset, arr.nbytes, "write")
        rc = self._lib.nm_mem_write(self._cname, byte_offset, arr.ctypes.data, arr.nbytes)
        self._check(rc, "write", byte_offset, arr.nbytes)

    def read(self, byte_offset: int, nbytes: int) -> np.ndarray:
        """*nbytes* bytes from ``byte_offset`` as a new ``np.uint8`` array."""
        self._range(byte_offset, nbytes, "read")
        out = np.empty(nbytes, dtype=np.uint8)
        rc = self._lib.nm_mem_read(self._cname, byte_offset, out.ctypes.data, nbytes)
        self._check(rc, "read", byte_offset, nbytes)
        return out

    def read_into(self, byte_offset: int, out: np.ndarray) -> None:
        """Fill the contiguous ``np.uint8`` array *out* with bytes from ``byte_offset`` (no
        new array: for repeated read-backs into a mirror of the memory)."""
        if out.dtype != np.uint8 or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("read_into needs a writable, contiguous np.uint8 array")
        self._range(byte_offset, out.nbytes, "read")
        rc = self._lib.nm_mem_read(self._cname, byte_offset, out.ctypes.data, out.nbytes)
        self._check(rc, "read", byte_offset, out.nbytes)

    def fill(self, value: int = 0, byte_offset: int = 0, nbytes: int | None = None) -> None:
        """Set *nbytes* bytes (default: to the end) from ``byte_offset`` to *value*."""
        if nbytes is None:
            nbytes = self.size - byte_offset
        self._range(byte_offset, nbytes, "fill")
        rc = self._lib.nm_mem_fill(self._cname, byte_offset, value & 0xFF, nbytes)
        self._check(rc, "fill", byte_offset, nbytes)

    def zero(self) -> None:
        """Clear the whole memory."""
        self.fill(0)
