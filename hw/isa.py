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
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from .params import Dataflow, HwConfig

__all__ = [
    "INSN_BITS", "INSN_BYTES", "HEADER_BITS", "Opcode", "Unit", "UNIT_OF", "Field", "HEADER",
    "FIELDS", "StoreMode", "layout", "Insn", "encode", "decode", "assemble_binary",
    "disassemble_binary", "field_matrix", "field_column", "FieldProgram",
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

# Lookup tables derived from HEADER and FIELDS for the hot paths (Insn construction, encoding,
# bulk checks); they restate nothing. Columns of the field matrix (:func:`field_matrix`): the
# header fields, then the opcode's fields in order, zero-padded to the longest opcode.
_OPCODE_OF = {int(_op): _op for _op in Opcode}
_NAMES = {_op: tuple(f.name for f in _fields) for _op, _fields in FIELDS.items()}
_NAME_SET = {_op: frozenset(_names) for _op, _names in _NAMES.items()}
_ZEROS = {_op: dict.fromkeys(_names, 0) for _op, _names in _NAMES.items()}
_NCOLS = len(HEADER) + max(len(_fields) for _fields in FIELDS.values())


def _column_tables():
    """Per opcode and matrix column: bit offset, width, minimum and maximum (padding: width 0)."""
    shape = (max(_OPCODE_OF) + 1, _NCOLS)
    off, width = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    lo, hi = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    for op, fields_ in FIELDS.items():
        offset = 0
        for c, f in enumerate(HEADER + fields_):
            off[op, c], width[op, c], lo[op, c], hi[op, c] = offset, f.width, f.min, f.max
            offset += f.width
    return off, width, lo, hi


_COL_OFFSET, _COL_WIDTH, _COL_MIN, _COL_MAX = _column_tables()


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
        self.op = op = op if op.__class__ is Opcode else Opcode(op)
        if not _NAME_SET[op].issuperset(args):
            unknown = set(args) - _NAME_SET[op]
            raise ValueError(f"{self.op.name} has no field(s) {', '.join(sorted(unknown))}; "
                             f"fields: {', '.join(f.name for f in FIELDS[self.op]) or 'none'}")
        self.args = values = _ZEROS[op].copy()           # every field, in FIELDS order
        for name, v in args.items():
            values[name] = v if v.__class__ is int else int(v)
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


class FieldProgram(Sequence):
    """A program held as its :func:`field_matrix` (what the compiler emits in bulk).

    A read-only sequence of :class:`Insn`: indexing and iteration decode rows into new
    :class:`Insn` objects (changing those does not change the program). Every function that
    takes a program takes this too, and :func:`field_matrix` returns *fields* itself.

    Parameters
    ----------
    fields : np.ndarray
        One row per instruction, as :func:`field_matrix` lays them out (copied to int64).
    """

    __slots__ = ("fields",)

    def __init__(self, fields: np.ndarray):
        fields = np.array(fields, dtype=np.int64, ndmin=2)
        if fields.shape[1:] != (_NCOLS,):
            raise ValueError(f"fields must have {_NCOLS} columns, got shape {fields.shape}")
        fields.flags.writeable = False
        self.fields = fields

    def __len__(self) -> int:
        return len(self.fields)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [_row_insn(row) for row in self.fields[index].tolist()]
        return _row_insn(self.fields[index].tolist())

    def __iter__(self):
        return map(_row_insn, self.fields.tolist())

    def __eq__(self, other) -> bool:
        if isinstance(other, FieldProgram):
            return np.array_equal(self.fields, other.fields)
        if isinstance(other, list):
            return list(self) == other
        return NotImplemented

    def __reduce__(self):
        return FieldProgram, (self.fields,)


def _row_insn(row: list[int]) -> Insn:
    op = _OPCODE_OF[row[0]]
    names = _NAMES[op]
    return Insn(op, *row[1:5], **dict(zip(names, row[5:5 + len(names)])))


def field_matrix(program) -> np.ndarray | None:
    """The instructions as an int64 matrix, for bulk work over whole programs.

    One row per instruction: ``opcode, pop_prev, pop_next, push_prev, push_next``, then the
    opcode's fields in :data:`FIELDS` order (:func:`field_column`), zero-padded. None when
    some entry is not an :class:`Insn` or some value is not an integer that fits int64 (the
    per-instruction code paths then report it). A :class:`FieldProgram` gives its own
    (read-only) matrix.
    """
    if isinstance(program, FieldProgram):
        return program.fields
    pad = (0,) * _NCOLS
    values: list = []
    extend = values.extend
    try:
        for i in program:
            a = i.args
            if tuple(a) != _NAMES[i.op]:
                return None
            extend((i.op, i.pop_prev, i.pop_next, i.push_prev, i.push_next, *a.values(),
                    *pad[5 + len(a):]))
    except (AttributeError, KeyError, TypeError):
        return None
    if not values:
        return np.zeros((0, _NCOLS), np.int64)
    try:
        m = np.array(values)
    except (ValueError, TypeError, OverflowError):
        return None
    if m.dtype.kind != "i":                 # floats, objects (huge ints), strings
        return None
    return m.astype(np.int64, copy=False).reshape(-1, _NCOLS)


def field_column(op: Opcode, name: str) -> int:
    """Column of *op*'s field *name* in :func:`field_matrix`."""
    return len(HEADER) + _NAMES[op].index(name)


def _out_of_range(m: np.ndarray) -> np.ndarray:
    """Per row of a field matrix: some field outside its range."""
    ops = m[:, 0]
    return ((m < _COL_MIN[ops]) | (m > _COL_MAX[ops])).any(axis=1)


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


def assemble_binary(program: list[Insn], *, fields: np.ndarray | None = None) -> bytes:
    """The program as bytes, 16 per instruction, little-endian.

    *fields*: the program's :func:`field_matrix`, when the caller has it already.
    """
    m = field_matrix(program) if fields is None else fields
    if m is None or _out_of_range(m).any():
        return b"".join(encode(i).to_bytes(INSN_BYTES, "little") for i in program)
    # The same packing as encode, on two 64-bit halves of every instruction at once.
    ops = m[:, 0]
    off, width = _COL_OFFSET[ops], _COL_WIDTH[ops]
    v = (m & ((np.int64(1) << width) - 1)).astype(np.uint64)
    low = np.where(off < 64, v << np.minimum(off, 63).astype(np.uint64), 0)
    high = np.where(off >= 64, v << np.maximum(off - 64, 0).astype(np.uint64),
                    np.where(off + width > 64, v >> np.clip(64 - off, 0, 63).astype(np.uint64), 0))
    words = np.empty((len(m), 2), dtype="<u8")
    words[:, 0] = np.bitwise_or.reduce(low.astype(np.uint64), axis=1)
    words[:, 1] = np.bitwise_or.reduce(high.astype(np.uint64), axis=1)
    return words.tobytes()


def disassemble_binary(blob: bytes) -> list[Insn]:
    """Inverse of :func:`assemble_binary`."""
    if len(blob) % INSN_BYTES:
        raise ValueError(f"program length {len(blob)} is not a multiple of {INSN_BYTES} bytes")
    return [decode(int.from_bytes(blob[i:i + INSN_BYTES], "little"))
            for i in range(0, len(blob), INSN_BYTES)]


# ==========================================================================================
# Program checking, text form and documentation (additions; the encoding above is unchanged)
# ==========================================================================================


__all__ += [
    "TOKEN_DEPTH", "OPCODE_DOC", "ProgramError", "TokenTrace", "trace_tokens", "validate",
    "validate_binary", "format_insn", "format_program", "parse_program", "markdown_table",
]

#: Capacity of each token queue between adjacent units (each direction).
TOKEN_DEPTH = 255

#: One line per opcode, for documentation.
OPCODE_DOC: dict[Opcode, str] = {
    Opcode.LOAD_SP: "external memory -> input scratchpad rows (int8)",
    Opcode.LOAD_ACC: "external memory -> accumulator rows (int32)",
    Opcode.COMPUTE: "scratchpad x scratchpad -> accumulator, on the systolic array",
    Opcode.STORE: "accumulator rows -> output path -> external memory",
    Opcode.CFG_REQUANT: "set the requantization multiplier/shift of a range of lanes",
    Opcode.CFG_PWL_SEG: "set one segment of a PWL table",
    Opcode.CFG_PWL_HDR: "set the header of a PWL table",
    Opcode.HALT: "stop fetching; done when all units are idle",
}

_FLAGS = ("pop_prev", "pop_next", "push_prev", "push_next")
# (flag, other unit's offset in the chain LOAD -> COMPUTE -> STORE)
_FLAG_DIR = {"pop_prev": -1, "pop_next": +1, "push_prev": -1, "push_next": +1}


class ProgramError(ValueError):
    """A program (or its text / binary form) is not valid; ``problems`` lists every problem.

    Parameters
    ----------
    problems : list of str
        One message per problem, each naming the instruction (or line), opcode and field.
    """

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        n = len(self.problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} in program:\n"
                         + "\n".join(f"  - {p}" for p in self.problems))


# -- abstract execution of the token protocol ----------------------------------------------

class TokenTrace(NamedTuple):
    """Result of :func:`trace_tokens`.

    Attributes
    ----------
    unit_index : list of int
        Per instruction: its position in its unit's queue (-1 for HALT and unreached ones).
    clock : list of tuple or None
        Per instruction: its start vector clock ``(l, c, s)``: the instructions of LOAD,
        COMPUTE and STORE with unit index ``<= l, c, s`` are guaranteed to have *completed*
        before it starts. ``None`` for instructions that never start (deadlock) and HALT.
    order : list of int
        Program indices in the order the abstract execution started them.
    blocked : list of str
        Empty if every instruction up to the first HALT ran; otherwise why each unit (and
        fetch) is stuck.
    """

    unit_index: list[int]
    clock: list[tuple[int, int, int] | None]
    order: list[int]
    blocked: list[str]

    @property
    def deadlocked(self) -> bool:
        return bool(self.blocked)


def _unit_flags(insn: Insn) -> dict[str, int]:
    """The token flags the unit of *insn* actually has (illegal ones dropped)."""
    unit = insn.unit
    flags = dict(insn.deps)
    if unit is None:
        return {f: 0 for f in _FLAGS}
    if unit == Unit.LOAD:
        flags["pop_prev"] = flags["push_prev"] = 0
    if unit == Unit.STORE:
        flags["pop_next"] = flags["push_next"] = 0
    return flags


def trace_tokens(program: list[Insn], *, queue_depth: int | None = None) -> TokenTrace:
    """Execute *program*'s token protocol abstractly and derive happens-before clocks.

    Fetch dispatches instructions in program order up to the first ``HALT`` into one queue per
    unit (at most *queue_depth* waiting per unit; ``None``: unbounded). Each unit takes its
    queue in order: an instruction starts once every token it pops is available (taking them),
    and completes by pushing its tokens, waiting while a token queue holds ``TOKEN_DEPTH``.
    Since every token queue and instruction queue has one producer and one consumer, the
    outcome (finish or deadlock) does not depend on the interleaving explored.

    The n-th pop of a token queue takes the token of its n-th push; the start clock of an
    instruction is the join of its unit predecessor's clock and the completion clocks of the
    instructions whose tokens it took.
    """
    n = len(program)
    end = next((i for i, insn in enumerate(program) if insn.op == Opcode.HALT), n)
    unit_index = [-1] * n
    queues: dict[Unit, list[int]] = {u: [] for u in Unit}
    for i in range(end):
        u = program[i].unit
        unit_index[i] = len(queues[u])
        queues[u].append(i)
    clock: list[tuple[int, int, int] | None] = [None] * n
    tokens: dict[tuple[Unit, Unit], deque] = {
        (a, b): deque() for a in Unit for b in Unit if abs(a - b) == 1}
    fetched = {u: 0 for u in Unit}
    started = {u: 0 for u in Unit}
    completed = {u: 0 for u in Unit}
    last = {u: (-1, -1, -1) for u in Unit}
    pc = 0
    order: list[int] = []

    def join(a, b):
        return tuple(max(x, y) for x, y in zip(a, b))

    progress = True
    while progress:
        progress = False
        while pc < end:
            u = program[pc].unit
            if queue_depth is not None and fetched[u] - started[u] >= queue_depth:
                break
            fetched[u] += 1
            pc += 1
            progress = True
        for u in Unit:
            while True:
                if started[u] > completed[u]:       # started, waiting to push
                    i = queues[u][completed[u]]
                    flags = _unit_flags(program[i])
                    pushes = [Unit(u + _FLAG_DIR[f]) for f in ("push_prev", "push_next") if flags[f]]
                    if any(len(tokens[(u, v)]) >= TOKEN_DEPTH for v in pushes):
                        break
                    done = list(clock[i])
                    done[u] = unit_index[i]
                    for v in pushes:
                        tokens[(u, v)].append(tuple(done))
                    completed[u] += 1
                    progress = True
                    continue
                if started[u] >= fetched[u]:
                    break
                i = queues[u][started[u]]
                flags = _unit_flags(program[i])
                pops = [Unit(u + _FLAG_DIR[f]) for f in ("pop_prev", "pop_next") if flags[f]]
                if any(not tokens[(v, u)] for v in pops):
                    break
                c = last[u]
                for v in pops:
                    c = join(c, tokens[(v, u)].popleft())
                clock[i] = last[u] = c
                started[u] += 1
                order.append(i)
                progress = True

    blocked = []
    if pc < end or any(completed[u] < len(queues[u]) for u in Unit):
        for u in Unit:
            q = queues[u]
            if completed[u] == len(q):
                blocked.append(f"{u.name} finished")
            elif started[u] > completed[u]:
                i = q[completed[u]]
                flags = _unit_flags(program[i])
                full = [Unit(u + _FLAG_DIR[f]).name for f in ("push_prev", "push_next")
                        if flags[f] and len(tokens[(u, Unit(u + _FLAG_DIR[f]))]) >= TOKEN_DEPTH]
                blocked.append(f"{u.name} blocked at insn {i} {program[i].op.name}: waiting to "
                               f"push a token to {', '.join(full)} (token queue full, "
                               f"{TOKEN_DEPTH} tokens)")
            elif started[u] < fetched[u]:
                i = q[started[u]]
                flags = _unit_flags(program[i])
                missing = [f"{Unit(u + _FLAG_DIR[f]).name} ({f})" for f in ("pop_prev", "pop_next")
                           if flags[f] and not tokens[(Unit(u + _FLAG_DIR[f]), u)]]
                blocked.append(f"{u.name} blocked at insn {i} {program[i].op.name}: waiting for "
                               f"a token from {' and '.join(missing)}")
            else:
                blocked.append(f"{u.name} idle, waiting for fetch")
        if pc < end:
            u = program[pc].unit
            blocked.append(f"fetch blocked at insn {pc} {program[pc].op.name}: {u.name} "
                           f"queue full ({queue_depth} instructions waiting)")
    return TokenTrace(unit_index, clock, order, blocked)


# -- validation ----------------------------------------------------------------------------

def _check_fields(i: int, insn: Insn, out: list[str]) -> None:
    name = insn.op.name
    for flag, v in insn.deps.items():
        if v not in (0, 1):
            out.append(f"insn {i} {name}: {flag} must be 0 or 1, got {v}")
    for f in FIELDS[insn.op]:
        v = insn.args[f.name]
        if not f.min <= v <= f.max:
            out.append(f"insn {i} {name}: {f.name} must be {f.min}..{f.max}, got {v}")


def _check_flags(i: int, insn: Insn, out: list[str]) -> None:
    name = insn.op.name
    bad = []
    if insn.unit is None:
        bad = [f for f in _FLAGS if getattr(insn, f)]
        why = "HALT has no token flags"
    elif insn.unit == Unit.LOAD:
        bad = [f for f in ("pop_prev", "push_prev") if getattr(insn, f)]
        why = "the LOAD unit has no previous unit"
    elif insn.unit == Unit.STORE:
        bad = [f for f in ("pop_next", "push_next") if getattr(insn, f)]
        why = "the STORE unit has no next unit"
    for f in bad:
        out.append(f"insn {i} {name}: {f} must be 0 ({why}), got {getattr(insn, f)}")


def _le(out, where, what, value, limit, limit_name, suffix=""):
    if value > limit:
        out.append(f"{where}: {what} must be <= {limit_name} = {limit}{suffix}, got {value}")


def _transfer_span(insn: Insn, row_bytes: int) -> tuple[int, int]:
    """Byte range [lo, hi) covered by the rows of a transfer (nrows > 0)."""
    lo = insn.dram_addr
    return lo, lo + (insn.nrows - 1) * insn.dram_stride + row_bytes


def _check_bounds(i: int, insn: Insn, cfg: HwConfig, dram_bytes, program_range,
                  out: list[str]) -> None:
    op, a = insn.op, insn.args
    where = f"insn {i} {op.name}"
    B = cfg.bus_bytes
    if op in (Opcode.LOAD_SP, Opcode.LOAD_ACC, Opcode.STORE):
        for f in ("dram_addr", "dram_stride"):
            if a[f] % B:
                out.append(f"{where}: {f} must be a multiple of bus_bytes = {B}, got {a[f]}")
        if a["nrows"] > 0 and a["ncols"] == 0:
            out.append(f"{where}: ncols must be >= 1 when nrows > 0, got 0")
    if op == Opcode.LOAD_SP:
        _le(out, where, "sp_addr + nrows", a["sp_addr"] + a["nrows"], cfg.sp_depth, "sp_depth")
        _le(out, where, "ncols", a["ncols"], cfg.sp_row, "sp_row")
    elif op in (Opcode.LOAD_ACC, Opcode.STORE):
        _le(out, where, "acc_addr + nrows", a["acc_addr"] + a["nrows"], cfg.acc_depth, "acc_depth")
        _le(out, where, "ncols", a["ncols"], cfg.cols, "cols")
    if op == Opcode.STORE:
        _le(out, where, "mode", a["mode"], int(StoreMode.INT32), "INT32")
        _le(out, where, "table", a["table"], cfg.pwl_tables - 1, "pwl_tables - 1")
    elif op == Opcode.COMPUTE:
        df = cfg.dataflow.value
        if cfg.dataflow is Dataflow.WS:
            _le(out, where, "k", a["k"], cfg.rows, "rows", f" in {df}")
            a_rows = a["m"]
        else:
            _le(out, where, "m", a["m"], cfg.rows, "rows", f" in {df}")
            a_rows = a["k"]
        _le(out, where, "n", a["n"], cfg.cols, "cols")
        _le(out, where, "a_addr + " + ("m" if cfg.dataflow is Dataflow.WS else "k"),
            a["a_addr"] + a_rows, cfg.sp_depth, "sp_depth", f" in {df}")
        _le(out, where, "b_addr + k", a["b_addr"] + a["k"], cfg.sp_depth, "sp_depth")
        _le(out, where, "c_addr + m", a["c_addr"] + a["m"], cfg.acc_depth, "acc_depth")
    elif op == Opcode.CFG_REQUANT:
        _le(out, where, "lane + count", a["lane"] + a["count"], cfg.cols, "cols")
        _le(out, where, "shift", a["shift"], 47, "MAX_SHIFT")
    elif op == Opcode.CFG_PWL_SEG:
        _le(out, where, "seg", a["seg"], cfg.pwl_segments - 1, "pwl_segments - 1")
        _le(out, where, "table", a["table"], cfg.pwl_tables - 1, "pwl_tables - 1")
    elif op == Opcode.CFG_PWL_HDR:
        _le(out, where, "table", a["table"], cfg.pwl_tables - 1, "pwl_tables - 1")
        _le(out, where, "out_shift", a["out_shift"], 47, "MAX_SHIFT")
        _le(out, where, "seg_shift", a["seg_shift"], 15, "15")

    if op in (Opcode.LOAD_SP, Opcode.LOAD_ACC, Opcode.STORE) and a["nrows"] > 0 and a["ncols"] > 0:
        if op == Opcode.LOAD_SP:
            row_bytes = B                                       # one beat per row
        elif op == Opcode.LOAD_ACC:
            row_bytes = -(-4 * a["ncols"] // B) * B             # whole beats are read
        else:
            row_bytes = a["ncols"] * (4 if a["mode"] == StoreMode.INT32 else 1)
        lo, hi = _transfer_span(insn, row_bytes)
        verb = "writes" if op == Opcode.STORE else "reads"
        if dram_bytes is not None and hi > dram_bytes:
            out.append(f"{where}: dram_addr/dram_stride/nrows: {verb} bytes {lo}..{hi - 1}, "
                       f"beyond dram_bytes = {dram_bytes}")
        if op == Opcode.STORE and program_range is not None:
            p_lo, p_hi = program_range
            starts = lo + np.arange(a["nrows"], dtype=np.int64) * a["dram_stride"]
            hit = (starts < p_hi) & (starts + row_bytes > p_lo)
            if hit.any():
                r = int(np.argmax(hit))
                out.append(f"{where}: dram_addr/dram_stride: row {r} writes bytes "
                           f"{starts[r]}..{starts[r] + row_bytes - 1} inside the program "
                           f"({p_lo}..{p_hi - 1})")


_COL = {op: {n: len(HEADER) + c for c, n in enumerate(names)} for op, names in _NAMES.items()}
_FLAG_COLS = slice(1, 5)                       # pop_prev, pop_next, push_prev, push_next
#: Token flags each opcode's unit has (pop_prev, pop_next, push_prev, push_next).
_HAS_FLAG = np.zeros((max(_OPCODE_OF) + 1, 4), dtype=bool)
_UNIT_CODE = np.full(max(_OPCODE_OF) + 1, -1, dtype=np.int64)     # -1: HALT (fetch)
for _op, _unit in UNIT_OF.items():
    if _unit is not None:
        _HAS_FLAG[_op] = (_unit != Unit.LOAD, _unit != Unit.STORE) * 2
        _UNIT_CODE[_op] = _unit


def _quick_ok(program: list, config: HwConfig, dram_bytes, program_range, fields=None) -> bool:
    """True when *program* certainly has none of the problems :func:`_problems` reports.

    Bulk numpy checks over the field matrix; False means "look closer" (the per-instruction
    checks then find and word every problem). Deadlock freedom is shown by running the token
    protocol in program order (each instruction pops tokens pushed before it and never fills
    a token queue): that is one complete execution, and as the protocol is deterministic
    (one producer and one consumer per queue) :func:`trace_tokens` then finishes too.
    """
    m = field_matrix(program) if fields is None else fields
    n = 0 if m is None else len(m)
    if n == 0:
        return False
    ops = m[:, 0]
    if _out_of_range(m).any() or (m[:, _FLAG_COLS].astype(bool) & ~_HAS_FLAG[ops]).any():
        return False
    halt = ops == Opcode.HALT
    if not halt[-1] or halt[:-1].any():
        return False
    cfg, B = config, config.bus_bytes

    def sel(op):
        rows = m[ops == op]
        return rows, (lambda name: rows[:, _COL[op][name]])

    bad = False
    for op in (Opcode.LOAD_SP, Opcode.LOAD_ACC, Opcode.STORE):
        rows, f = sel(op)
        if not len(rows):
            continue
        nrows, ncols, addr, stride = f("nrows"), f("ncols"), f("dram_addr"), f("dram_stride")
        bad |= ((addr % B != 0) | (stride % B != 0) | ((nrows > 0) & (ncols == 0))).any()
        if op == Opcode.LOAD_SP:
            bad |= ((f("sp_addr") + nrows > cfg.sp_depth) | (ncols > cfg.sp_row)).any()
            row_bytes = np.full(len(rows), B)
        else:
            bad |= ((f("acc_addr") + nrows > cfg.acc_depth) | (ncols > cfg.cols)).any()
            if op == Opcode.LOAD_ACC:
                row_bytes = -(-4 * ncols // B) * B
            else:
                mode = f("mode")
                bad |= ((mode > int(StoreMode.INT32)) | (f("table") > cfg.pwl_tables - 1)).any()
                row_bytes = ncols * np.where(mode == StoreMode.INT32, 4, 1)
        live = (nrows > 0) & (ncols > 0)
        lo = addr
        hi = addr + (nrows - 1) * stride + row_bytes
        if dram_bytes is not None:
            bad |= (live & (hi > dram_bytes)).any()
        if op == Opcode.STORE and program_range is not None:
            p_lo, p_hi = program_range
            bad |= (live & (lo < p_hi) & (hi > p_lo)).any()      # the hull: conservative
    rows, f = sel(Opcode.COMPUTE)
    if len(rows):
        mm, k, nn = f("m"), f("k"), f("n")
        ws = cfg.dataflow is Dataflow.WS
        a_rows = mm if ws else k
        bad |= (((k if ws else mm) > cfg.rows) | (nn > cfg.cols)
                | (f("a_addr") + a_rows > cfg.sp_depth) | (f("b_addr") + k > cfg.sp_depth)
                | (f("c_addr") + mm > cfg.acc_depth)).any()
    rows, f = sel(Opcode.CFG_REQUANT)
    if len(rows):
        bad |= ((f("lane") + f("count") > cfg.cols) | (f("shift") > 47)).any()
    rows, f = sel(Opcode.CFG_PWL_SEG)
    if len(rows):
        bad |= ((f("seg") > cfg.pwl_segments - 1) | (f("table") > cfg.pwl_tables - 1)).any()
    rows, f = sel(Opcode.CFG_PWL_HDR)
    if len(rows):
        bad |= ((f("table") > cfg.pwl_tables - 1) | (f("out_shift") > 47)
                | (f("seg_shift") > 15)).any()
    if bad:
        return False
    # The token protocol in program order: per queue, tokens waiting before each instruction.
    unit = _UNIT_CODE[ops]
    flags = m[:, _FLAG_COLS]
    for u, v in ((0, 1), (1, 0), (1, 2), (2, 1)):
        push = flags[:, 3 if v > u else 2] * (unit == u)          # push_next / push_prev
        pop = flags[:, 0 if u < v else 1] * (unit == v)           # pop_prev / pop_next
        waiting = np.cumsum(push - pop) - (push - pop)
        if ((pop > 0) & (waiting < 1)).any() or ((push > 0) & (waiting >= TOKEN_DEPTH)).any():
            return False
    return True


def _problems(program: list, config: HwConfig, dram_bytes, program_range,
              fields=None) -> list[str]:
    """Every problem of *program*; entries that are strings are decode errors."""
    if _quick_ok(program, config, dram_bytes, program_range, fields):
        return []
    return _all_problems(program, config, dram_bytes, program_range)


def _all_problems(program: list, config: HwConfig, dram_bytes, program_range) -> list[str]:
    """:func:`_problems` instruction by instruction (finds and words every problem)."""
    out: list[str] = []
    halts = []
    for i, insn in enumerate(program):
        if isinstance(insn, str):
            out.append(f"insn {i}: {insn}")
            continue
        _check_fields(i, insn, out)
        _check_flags(i, insn, out)
        _check_bounds(i, insn, config, dram_bytes, program_range, out)
        if insn.op == Opcode.HALT:
            halts.append(i)
    if not halts:
        out.append(f"program: must end with HALT, found none in {len(program)} instructions")
    else:
        if len(halts) > 1:
            out.append(f"program: exactly one HALT allowed, found {len(halts)} "
                       f"(insns {', '.join(map(str, halts))})")
        if halts[-1] != len(program) - 1 or halts[0] != len(program) - 1:
            out.append(f"insn {halts[0]} HALT: must be the last instruction "
                       f"(program has {len(program)})")
    legal = [insn for insn in program if not isinstance(insn, str)]
    if len(legal) == len(program):
        trace = trace_tokens(program, queue_depth=config.queue_depth)
        if trace.deadlocked:
            out.append("deadlock: " + "; ".join(trace.blocked))
    return out


def validate(program: list[Insn], config: HwConfig, *, dram_bytes: int | None = None,
             program_range: tuple[int, int] | None = None,
             fields: np.ndarray | None = None) -> None:
    """Check *program* against *config*; raise one :class:`ProgramError` listing every problem.

    Parameters
    ----------
    program : list of Insn
    config : HwConfig
    dram_bytes : int, optional
        Size of external memory; every transfer must stay inside it (loads are checked on
        the whole beats they read).
    program_range : (int, int), optional
        Byte range ``[start, end)`` holding the program; no ``STORE`` may write into it.
    fields : np.ndarray, optional
        The program's :func:`field_matrix`, when the caller has it already.

    Checks: field ranges; bus alignment of ``dram_addr``/``dram_stride``; scratchpad,
    accumulator and compute bounds (per dataflow); lane, segment, table and shift limits;
    token flags each unit has; exactly one ``HALT``, last; memory ranges; and that the token
    protocol does not deadlock (:func:`trace_tokens` with ``config.queue_depth``).
    """
    if not isinstance(program, FieldProgram):
        program = list(program)
    problems = _problems(program, config, dram_bytes, program_range, fields)
    if problems:
        raise ProgramError(problems)


def validate_binary(blob: bytes, config: HwConfig, *, dram_bytes: int | None = None,
                    program_range: tuple[int, int] | None = None) -> list[Insn]:
    """Decode and :func:`validate` a binary program; returns the instructions.

    Illegal opcodes are reported with their instruction index, together with every other
    problem, in one :class:`ProgramError`.
    """
    blob = bytes(blob)
    if len(blob) % INSN_BYTES:
        raise ProgramError([f"program: length {len(blob)} is not a multiple of {INSN_BYTES} bytes"])
    entries: list = []
    for i in range(0, len(blob), INSN_BYTES):
        try:
            entries.append(decode(int.from_bytes(blob[i:i + INSN_BYTES], "little")))
        except ValueError as exc:
            entries.append(str(exc))
    problems = _problems(entries, config, dram_bytes, program_range)
    if problems:
        raise ProgramError(problems)
    return entries


# -- text form -----------------------------------------------------------------------------

def format_insn(insn: Insn) -> str:
    """One line of assembly: ``OPCODE field=value ... [flags]``; every field is written."""
    parts = [insn.op.name]
    parts += [f"{f.name}={insn.args[f.name]}" for f in FIELDS[insn.op]]
    parts += [f if v == 1 else f"{f}={v}" for f, v in insn.deps.items() if v]
    return " ".join(parts)


def format_program(program: list[Insn]) -> str:
    """:func:`format_insn` of each instruction, one per line."""
    return "".join(format_insn(insn) + "\n" for insn in program)


def _parse_line(text: str, where: str, out: list[str]) -> Insn | None:
    words = text.split()
    try:
        op = Opcode[words[0].upper()]
    except KeyError:
        names = ", ".join(o.name for o in Opcode)
        out.append(f"{where}: unknown opcode {words[0]!r} (opcodes: {names})")
        return None
    names = {f.name for f in FIELDS[op]}
    values: dict[str, int] = {}
    ok = True
    for word in words[1:]:
        key, eq, raw = word.partition("=")
        if key not in names and key not in _FLAGS:
            fields_ = ", ".join([f.name for f in FIELDS[op]] + list(_FLAGS)) or "none"
            out.append(f"{where}: {op.name} has no field {key!r} (fields: {fields_})")
            ok = False
            continue
        if key in values:
            out.append(f"{where}: {op.name}: field {key!r} given twice")
            ok = False
            continue
        if not eq:
            if key not in _FLAGS:
                out.append(f"{where}: {op.name}: field {key!r} needs a value ({key}=...)")
                ok = False
                continue
            values[key] = 1
            continue
        try:
            values[key] = int(raw, 0)
        except ValueError:
            out.append(f"{where}: {op.name}: {key} must be an integer, got {raw!r}")
            ok = False
    return Insn(op, **values) if ok else None


def parse_program(text: str) -> list[Insn]:
    """Inverse of :func:`format_program`: one instruction per line, ``#`` starts a comment.

    Fields not given are 0; flags are written bare (``pop_prev``) or as ``pop_prev=1``.
    Unknown opcodes and fields raise one :class:`ProgramError` naming every bad line.
    Values are checked by :func:`validate`, not here.
    """
    program: list[Insn] = []
    out: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        insn = _parse_line(body, f"line {lineno}", out)
        if insn is not None:
            program.append(insn)
    if out:
        raise ProgramError(out)
    return program


# -- documentation -------------------------------------------------------------------------

def _field_rows(fields_, offset: int):
    for f in fields_:
        yield f, offset
        offset += f.width


def markdown_table() -> str:
    """The instruction set as markdown (the content of ``hw/ISA.md``), generated from the tables."""
    lines = [
        "# NeuralMatrix instruction set",
        "",
        "Generated by `neuralmatrix.hw.isa.markdown_table()`; do not edit "
        "(`tests/test_isa.py` checks that this file is up to date).",
        "",
        f"Instructions are {INSN_BITS} bits, {INSN_BYTES} bytes little-endian in memory. "
        "Fields are packed least significant first; bits not listed are reserved (0). "
        "Signed fields are two's complement. Token flags: see `neuralmatrix.hw.isa`; "
        f"each token queue holds at most {TOKEN_DEPTH} tokens.",
        "",
        "## Opcodes",
        "",
        "| opcode | code | unit | meaning |",
        "|---|---|---|---|",
    ]
    for op in Opcode:
        unit = UNIT_OF[op].name if UNIT_OF[op] is not None else "fetch"
        lines.append(f"| `{op.name}` | {int(op)} | {unit} | {OPCODE_DOC[op]} |")
    lines += ["", "## Fields", "", "| opcode | field | bits | width | signed | meaning |",
              "|---|---|---|---|---|---|"]
    for f, off in _field_rows(HEADER, 0):
        lines.append(f"| (all) | `{f.name}` | {off}..{off + f.width - 1} | {f.width} | "
                     f"{'yes' if f.signed else 'no'} | {f.doc} |")
    for op in Opcode:
        for f, off in _field_rows(FIELDS[op], HEADER_BITS):
            lines.append(f"| `{op.name}` | `{f.name}` | {off}..{off + f.width - 1} | {f.width} | "
                         f"{'yes' if f.signed else 'no'} | {f.doc} |")
    return "\n".join(lines) + "\n"
