"""The accelerator's instruction set: the one place its encoding is defined.

Instructions are 128 bits, little-endian in memory (16 bytes each). Bits 0..7 are a common
header: a 4-bit opcode and four dependency-token flags; the remaining fields depend on the
opcode and follow from ``FIELDS`` in order, least significant first. The RTL decoder views an
instruction through :func:`layout`, the assembler and the golden model go through
:class:`Insn`; both are generated from the same table.

Units and queues (as in VTA)
    The fetch unit reads instructions from external memory and dispatches each to the queue of
    the unit that executes it: LOAD (``LOAD_SP``, ``LOAD_ACC``), COMPUTE (``COMPUTE``) or STORE
    (``STORE``, ``CFG_REQUANT``, ``CFG_PWL_SEG``, ``CFG_PWL_HDR``). The units run concurrently;
    order between them exists only through dependency tokens. ``HALT`` stops fetching; the
    accelerator reports done when every queue is empty and every unit idle.

Dependency tokens
    The units form a chain LOAD -> COMPUTE -> STORE. For each adjacent pair there is a token
    queue in each direction. ``pop_prev`` / ``pop_next``: before executing, wait for (and take)
    a token from the previous / next unit. ``push_prev`` / ``push_next``: after executing, give
    a token to the previous / next unit. LOAD has no previous unit and STORE no next one.
    Zero-sized transfers and computes execute nothing but still wait for and give tokens, so
    they serve as fences.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

__all__ = [
    "INSN_BITS", "INSN_BYTES", "HEADER_BITS", "Opcode", "Unit", "UNIT_OF", "Field", "HEADER",
    "FIELDS", "StoreMode", "layout", "Insn", "encode", "decode", "assemble_binary",
    "disassemble_binary",
]

INSN_BITS = 128
INSN_BYTES = INSN_BITS // 8


class Opcode(enum.IntEnum):
    """Operation codes (4 bits). Code 0 and codes above ``HALT`` are illegal."""

    LOAD_SP = 1        #: external memory -> input scratchpad rows (int8)
    LOAD_ACC = 2       #: external memory -> accumulator rows (int32)
    COMPUTE = 3        #: scratchpad x scratchpad -> accumulator, on the systolic array
    STORE = 4          #: accumulator rows -> output path -> external memory
    CFG_REQUANT = 5    #: set the requantization multiplier/shift of a range of lanes
    CFG_PWL_SEG = 6    #: set one segment of a PWL table
    CFG_PWL_HDR = 7    #: set the header of a PWL table
    HALT = 8           #: stop fetching; done when all units are idle


class Unit(enum.IntEnum):
    """Execution units, in token-chain order."""

    LOAD = 0
    COMPUTE = 1
    STORE = 2


UNIT_OF: dict[Opcode, Unit | None] = {
    Opcode.LOAD_SP: Unit.LOAD, Opcode.LOAD_ACC: Unit.LOAD, Opcode.COMPUTE: Unit.COMPUTE,
    Opcode.STORE: Unit.STORE, Opcode.CFG_REQUANT: Unit.STORE, Opcode.CFG_PWL_SEG: Unit.STORE,
    Opcode.CFG_PWL_HDR: Unit.STORE, Opcode.HALT: None,
}


class StoreMode(enum.IntEnum):
    """What ``STORE`` writes per element."""

    INT8 = 0       #: int8 = sat8(requantize(acc))
    INT8_PWL = 1   #: int8 = pwl(sat16(requantize(acc)))
    INT32 = 2      #: the raw int32 accumulator


@dataclass(frozen=True)
class Field:
    """One instruction field: *width* bits, two's complement if *signed*."""

    name: str
    width: int
    signed: bool = False
    doc: str = ""

    @property
    def shape(self):
        return signed(self.width) if self.signed else unsigned(self.width)

    @property
    def min(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1


HEADER = (
    Field("opcode", 4, doc="operation code"),
    Field("pop_prev", 1, doc="wait for a token from the previous unit"),
    Field("pop_next", 1, doc="wait for a token from the next unit"),
    Field("push_prev", 1, doc="give a token to the previous unit when done"),
    Field("push_next", 1, doc="give a token to the next unit when done"),
)
HEADER_BITS = sum(f.width for f in HEADER)

_TRANSFER = (
    Field("nrows", 16, doc="rows to transfer (0 = none)"),
    Field("ncols", 8, doc="elements per row: int8 for the scratchpad, int32 for the "
                          "accumulator; the rest of the on-chip row is zero-filled on loads"),
    Field("dram_addr", 32, doc="byte address of the first row; a multiple of bus_bytes"),
    Field("dram_stride", 24, doc="bytes from one row to the next; a multiple of bus_bytes "
                                 "(0 repeats one row)"),
)

FIELDS: dict[Opcode, tuple[Field, ...]] = {
    Opcode.LOAD_SP: (Field("sp_addr", 16, doc="first scratchpad row"),) + _TRANSFER,
    Opcode.LOAD_ACC: (Field("acc_addr", 16, doc="first accumulator row"),) + _TRANSFER,
    Opcode.COMPUTE: (
        Field("a_addr", 16, doc="scratchpad row of the first A operand row"),
        Field("b_addr", 16, doc="scratchpad row of the first B operand row"),
        Field("c_addr", 16, doc="first accumulator row written"),
        Field("m", 16, doc="output rows: any (ws), <= rows (os)"),
        Field("k", 16, doc="reduction depth: <= rows (ws), any (os)"),
        Field("n", 8, doc="output columns, <= cols"),
        Field("accumulate", 1, doc="1: add to the accumulator rows; 0: overwrite them"),
    ),
    Opcode.STORE: (Field("acc_addr", 16, doc="first accumulator row read"),) + _TRANSFER + (
        Field("mode", 2, doc="0: int8 requantized, 1: int8 requantized then PWL, 2: int32"),
        Field("table", 3, doc="PWL table used by mode 1"),
    ),
    Opcode.CFG_REQUANT: (
        Field("lane", 8, doc="first output lane (column) configured"),
        Field("count", 8, doc="number of lanes from `lane` set to the same values"),
        Field("mult", 16, doc="unsigned multiplier"),
        Field("shift", 6, doc="right shift, 0..47, rounding half up"),
    ),
    Opcode.CFG_PWL_SEG: (
        Field("table", 3, doc="PWL table"),
        Field("seg", 6, doc="segment index, < pwl_segments"),
        Field("bp", 16, signed=True, doc="lower breakpoint of the segment (unused for 0)"),
        Field("k", 16, signed=True, doc="slope, fixed point with out_shift fraction bits"),
        Field("b", 32, signed=True, doc="intercept, fixed point with out_shift fraction bits"),
    ),
    Opcode.CFG_PWL_HDR: (
        Field("table", 3, doc="PWL table"),
        Field("mode", 1, doc="0: uniform segments from x0 / seg_shift, 1: breakpoints"),
        Field("x0", 16, signed=True, doc="uniform mode: input where segment 0 starts"),
        Field("seg_shift", 4, doc="uniform mode: log2 of the segment width"),
        Field("out_shift", 6, doc="right shift of k*x + b, 0..47, rounding half up"),
    ),
    Opcode.HALT: (),
}

for _op, _fields in FIELDS.items():
    assert HEADER_BITS + sum(f.width for f in _fields) <= INSN_BITS, _op


def layout(opcode: Opcode) -> data.StructLayout:
    """The 128-bit layout of *opcode*'s instructions, for viewing them in the RTL."""
    members = {f.name: f.shape for f in HEADER + FIELDS[opcode]}
    used = sum(f.width for f in HEADER + FIELDS[opcode])
    if used < INSN_BITS:
        members["_reserved"] = unsigned(INSN_BITS - used)
    return data.StructLayout(members)


@dataclass
class Insn:
    """One instruction: an opcode, its fields and its dependency flags.

    Fields missing from *args* are zero. ``Insn(Opcode.COMPUTE, m=16, k=16, n=16,
    push_next=1)``.
    """

    op: Opcode
    args: dict[str, int] = field(default_factory=dict)
    pop_prev: int = 0
    pop_next: int = 0
    push_prev: int = 0
    push_next: int = 0

    def __init__(self, op, /, pop_prev=0, pop_next=0, push_prev=0, push_next=0, **args):
        self.op = Opcode(op)
        names = {f.name for f in FIELDS[self.op]}
        unknown = set(args) - names
        if unknown:
            raise ValueError(f"{self.op.name} has no field(s) {', '.join(sorted(unknown))}; "
                             f"fields: {', '.join(f.name for f in FIELDS[self.op]) or 'none'}")
        self.args = {f.name: int(args.get(f.name, 0)) for f in FIELDS[self.op]}
        self.pop_prev, self.pop_next = int(pop_prev), int(pop_next)
        self.push_prev, self.push_next = int(push_prev), int(push_next)

    def __getattr__(self, name):
        try:
            return self.__dict__["args"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def unit(self) -> Unit | None:
        return UNIT_OF[self.op]

    @property
    def deps(self) -> dict[str, int]:
        return {"pop_prev": self.pop_prev, "pop_next": self.pop_next,
                "push_prev": self.push_prev, "push_next": self.push_next}


def encode(insn: Insn) -> int:
    """The 128-bit integer of *insn*; raises ValueError for a field value that does not fit."""
    values = {"opcode": int(insn.op), **insn.deps, **insn.args}
    word, offset = 0, 0
    for f in HEADER + FIELDS[insn.op]:
        v = values[f.name]
        if not f.min <= v <= f.max:
            raise ValueError(f"{insn.op.name}.{f.name} must be {f.min}..{f.max}, got {v}")
        word |= (v & ((1 << f.width) - 1)) << offset
        offset += f.width
    return word


def decode(word: int) -> Insn:
    """Inverse of :func:`encode`; raises ValueError for an illegal opcode."""
    code = word & 0xF
    try:
        op = Opcode(code)
    except ValueError:
        raise ValueError(f"illegal opcode {code}") from None
    values, offset = {}, 0
    for f in HEADER + FIELDS[op]:
        v = (word >> offset) & ((1 << f.width) - 1)
        if f.signed and v >> (f.width - 1):
            v -= 1 << f.width
        values[f.name] = v
        offset += f.width
    del values["opcode"]
    return Insn(op, **values)


def assemble_binary(program: list[Insn]) -> bytes:
    """The program as bytes, 16 per instruction, little-endian."""
    return b"".join(encode(i).to_bytes(INSN_BYTES, "little") for i in program)


def disassemble_binary(blob: bytes) -> list[Insn]:
    """Inverse of :func:`assemble_binary`."""
    if len(blob) % INSN_BYTES:
        raise ValueError(f"program length {len(blob)} is not a multiple of {INSN_BYTES} bytes")
    return [decode(int.from_bytes(blob[i:i + INSN_BYTES], "little"))
            for i in range(0, len(blob), INSN_BYTES)]
