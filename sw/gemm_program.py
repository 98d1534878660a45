"""Token-synchronized programs: an auto-synchronizing builder and a tiled int8 GEMM.

:class:`ProgramBuilder` takes instructions in program order (the order that defines their
meaning) and adds the dependency tokens, and zero-sized COMPUTE relays between LOAD and
STORE, that make the program race-free: every instruction waits exactly for the latest
earlier instruction of each other unit whose memory accesses conflict with its own.

:func:`gemm_program` builds ``C = requant(A @ B)`` for shapes larger than the array and the
scratchpad: tiled over M, N and K with accumulate chains, operand tiles double-buffered in
the scratchpad and prefetched ahead of the computes, accumulator tiles double-buffered so
stores overlap the next tile's computes.

:func:`matmul_program` builds its schedule with numpy per loop nest and synchronizes it with
:func:`synchronize`, which gives exactly what :class:`ProgramBuilder` gives instruction by
instruction (tests/test_bulk_emit.py); programs are :class:`~neuralmatrix.hw.isa.FieldProgram`
(held as their field matrix, which the validator, the estimate, the assembler and the golden
model take as it is).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

import numpy as np

from neuralmatrix.hw.arith import matmul_int32, requantize, saturate
from neuralmatrix.hw.isa import (
    _COL, _NCOLS, _UNIT_CODE, UNIT_OF, FieldProgram, Insn, Opcode, StoreMode, Unit,
    assemble_binary, field_matrix, validate,
)
from neuralmatrix.hw.params import Dataflow, HwConfig

from .golden import (_ACC, _DRAM, _SP, _SPACES, CYCLE_COSTS, DigestCache, _cost, _gc_paused,
                     _spans)

__all__ = ["ProgramBuilder", "synchronize", "MatrixLayout", "Operand", "GemmProgram", "matmul_program",
           "chunk_depths", "gemm_program", "random_gemm_image"]

_NONE = (-1, -1, -1)
_LOAD, _COMPUTE, _STORE = int(Unit.LOAD), int(Unit.COMPUTE), int(Unit.STORE)
_UNIT = {op: None if u is None else int(u) for op, u in UNIT_OF.items()}
_OTHERS = ((_COMPUTE, _STORE), (_LOAD, _STORE), (_LOAD, _COMPUTE))


class _Latest:
    """The latest instruction (unit index) that touched each address of one memory space.

    A piecewise-constant map kept as sorted segment starts and their values (-1: none yet);
    painting ``[lo, hi)`` with a newer index replaces the segments under it.
    """

    __slots__ = ("starts", "values")

    def __init__(self):
        self.starts = [-(1 << 63)]
        self.values = [-1]

    def paint(self, lo: int, hi: int, j: int) -> None:
        if lo >= hi:
            return
        s, v = self.starts, self.values
        i = bisect_right(s, lo) - 1              # the segment holding lo
        k = bisect_right(s, hi, i) - 1           # the segment holding hi
        left = i + 1 if s[i] < lo else i
        if s[k] == hi:
            s[left:k] = [lo]
            v[left:k] = [j]
        else:
            after = v[k]
            s[left:k + 1] = [lo, hi]
            v[left:k + 1] = [j, after]

    def copy(self) -> _Latest:
        other = _Latest()
        other.starts, other.values = list(self.starts), list(self.values)
        return other

    def latest(self, lo: int, hi: int) -> int:
        """The largest index painted on any address of ``[lo, hi)`` (-1: none)."""
        if lo >= hi:
            return -1
        s = self.starts
        i = bisect_right(s, lo) - 1
        return max(self.values[i:bisect_left(s, hi, i)])


class ProgramBuilder:
    """Builds a race-free program: appends instructions and adds their dependency tokens.

    Parameters
    ----------
    config : HwConfig, optional
        Gives the dataflow, for exact COMPUTE footprints (conservative without it).
    dram : bool
        Order loads and stores whose external-memory ranges overlap. ``False`` when the
        caller knows that no store writes a byte any load of the program reads (the same
        program, less bookkeeping).

    Attributes
    ----------
    program : list of Insn
        The instructions so far (token flags included).
    relays : int
        Zero-sized COMPUTE instructions added to order LOAD against STORE.

    Notes
    -----
    A new instruction Y waits for the latest earlier instruction X of each other unit whose
    :func:`~neuralmatrix.sw.golden.footprint` conflicts with Y's and is not already ordered
    before Y: X pushes a token toward Y's unit, Y pops it. Every token is pushed by an
    instruction before its popper in program order and popped exactly once, so the program
    runs in program order without deadlock; LOAD and STORE, which share no token queue, are
    ordered through a COMPUTE (an existing one when it already follows X, else a zero-sized one).

    The latest conflicting X is found from two maps per unit and memory space: the latest
    instruction that accessed, and that wrote, each row or byte (a read conflicts with the
    latest write, a write with the latest access).
    """

    def __init__(self, config: HwConfig | None = None, *, dram: bool = True):
        self.config = config
        self._dram = dram
        self.program: list[Insn] = []
        self.relays = 0
        self._members: tuple[list[int], ...] = ([], [], [])     # program index per unit index
        self._clock: tuple[list[tuple], ...] = ([], [], [])
        self._last_push: dict[tuple[int, int], int] = {}
        # Per unit and memory space: the latest access and the latest write of each address
        # (None: the unit has not accessed / written that space).
        self._accessed: tuple[list, ...] = tuple([None] * len(_SPACES) for _ in range(3))
        self._written: tuple[list, ...] = tuple([None] * len(_SPACES) for _ in range(3))

    def emit(self, insn: Insn) -> int:
        """Append *insn* (which must carry no token flags); returns its program index."""
        if insn.pop_prev or insn.pop_next or insn.push_prev or insn.push_next:
            raise ValueError(f"{insn.op.name}: ProgramBuilder sets the token flags itself; "
                             f"got {insn.deps}")
        if insn.op == Opcode.HALT:
            raise ValueError("use ProgramBuilder.finish() to end the program")
        u = _UNIT[insn.op]
        fp = _spans(insn, self.config, merge=True, dram=self._dram)
        need: dict[int, int] = {}
        if fp:
            clocks = self._clock[u]
            prev = clocks[-1] if clocks else _NONE
            for v in _OTHERS[u]:
                accessed, written = self._accessed[v], self._written[v]
                j = -1
                for space, lo, hi, write in fp:
                    # A write conflicts with the latest access, a read with the latest write.
                    latest = accessed[space] if write else written[space]
                    if latest is not None and lo < hi:      # _Latest.latest, inline
                        starts = latest.starts
                        i = bisect_right(starts, lo) - 1
                        jj = max(latest.values[i:bisect_left(starts, hi, i)])
                        if jj > j:
                            j = jj
                if j > prev[v]:
                    need[v] = j
        pops: dict[int, int] = {}
        if u == _COMPUTE:
            pops = need
        else:
            far = _STORE if u == _LOAD else _LOAD
            near = need.get(_COMPUTE)
            if far in need:
                near = self._relay(far, need[far])
            if near is not None:
                pops[_COMPUTE] = near
        return self._append(insn, fp, pops)

    def barrier(self) -> None:
        """Order everything emitted so far before everything emitted next, with zero-sized
        instructions (fences): a COMPUTE that waits for the last LOAD and STORE, then a LOAD
        and a STORE that wait for it."""
        pops = {}
        clock = self._clock[_COMPUTE][-1] if self._clock[_COMPUTE] else _NONE
        for v in (_LOAD, _STORE):
            last = len(self._members[v]) - 1
            if last > clock[v]:
                pops[v] = last
        self._append(Insn(Opcode.COMPUTE), [], pops)
        fence = len(self._members[_COMPUTE]) - 1
        self._append(Insn(Opcode.LOAD_SP), [], {_COMPUTE: fence})
        self._append(Insn(Opcode.STORE), [], {_COMPUTE: fence})

    def finish(self) -> list[Insn]:
        """Append HALT and return the program."""
        self.program.append(Insn(Opcode.HALT))
        return self.program

    # -- internals ------------------------------------------------------------------------

    def _relay(self, far: int, j: int) -> int:
        """Unit index of a COMPUTE that follows *far*'s instruction *j*, adding one if needed."""
        clocks = self._clock[_COMPUTE]
        if clocks and clocks[-1][far] >= j:
            return len(clocks) - 1
        self.relays += 1
        self._append(Insn(Opcode.COMPUTE), [], {far: j})
        return len(self._clock[_COMPUTE]) - 1

    def _append(self, insn: Insn, fp: list[tuple], pops: dict[int, int]) -> int:
        u = _UNIT[insn.op]
        clocks = self._clock[u]
        clock = clocks[-1] if clocks else _NONE
        for v, j in pops.items():
            x = self.program[self._members[v][j]]
            if u > v:
                assert not x.push_next and self._last_push.get((v, u), -1) < j, (x, insn)
                x.push_next = insn.pop_prev = 1
            else:
                assert not x.push_prev and self._last_push.get((v, u), -1) < j, (x, insn)
                x.push_prev = insn.pop_next = 1
            self._last_push[(v, u)] = j
            done = list(self._clock[v][j])
            done[v] = j
            clock = (max(clock[0], done[0]), max(clock[1], done[1]), max(clock[2], done[2]))
        program = self.program
        index = len(program)
        program.append(insn)
        members = self._members[u]
        j = len(members)
        members.append(index)
        clocks.append(clock)
        if fp:
            accessed, written = self._accessed[u], self._written[u]
            for space, lo, hi, write in fp:
                a, w = accessed[space], written[space]
                if a is None:                       # first access: while a unit only writes
                    a = accessed[space] = _Latest()     # a space, one map serves as both
                    if write:
                        written[space] = a
                elif write and w is None:
                    w = written[space] = _Latest()
                elif not write and w is a:
                    written[space] = a.copy()
                a.paint(lo, hi, j)
                if write and w is not None and w is not a:
                    w.paint(lo, hi, j)
        return index


# -- bulk synchronization ----------------------------------------------------------------------

def synchronize(fields: np.ndarray, config: HwConfig | None = None, *,
                dram: bool = True) -> tuple[np.ndarray, int]:
    """What :class:`ProgramBuilder` makes of a whole instruction sequence, in bulk.

    Parameters
    ----------
    fields : np.ndarray
        The instructions in program order as a :func:`~neuralmatrix.hw.isa.field_matrix`,
        without token flags and without HALT.
    config, dram
        As for :class:`ProgramBuilder`.

    Returns
    -------
    fields : np.ndarray
        The same program ``ProgramBuilder.emit`` of every row builds (token flags set,
        zero-sized COMPUTE relays inserted), without HALT.
    relays : int

    Notes
    -----
    The builder's latest-conflict queries depend only on the footprints of earlier
    instructions, not on the tokens, so they are answered for all instructions at once
    (:func:`_latest_conflicts`); only the vector clocks that decide which of those conflicts
    need a token, and the relays, are followed instruction by instruction (:func:`_tokens`).
    """
    fields = np.asarray(fields, dtype=np.int64)
    ops = fields[:, 0]
    if (fields[:, 1:5] != 0).any():
        raise ValueError("synchronize sets the token flags itself; got rows with flags")
    units = _UNIT_CODE[ops]
    if (units < 0).any():
        raise ValueError("use ProgramBuilder.finish() to end the program (HALT in fields)")
    latest = _latest_conflicts(fields, units, config, dram)
    if latest is None:                      # too many overlapping ranges: one at a time
        builder = ProgramBuilder(config, dram=dram)
        for insn in FieldProgram(fields):
            builder.emit(insn)
        return field_matrix(builder.program), builder.relays
    return _tokens(fields, units, latest)


def _footprints(fields: np.ndarray, config: HwConfig | None, dram: bool):
    """:func:`~neuralmatrix.sw.golden._spans` (``merge=True``) of every row, as arrays
    ``(row, space, lo, hi, write)`` with the empty ranges left out."""
    ops = fields[:, 0]
    f = [fields[:, c] for c in range(5, 12)]
    out = []

    def add(sel, space, lo, hi, write):
        rows = np.flatnonzero(sel)
        if len(rows):
            out.append((rows, np.full(len(rows), space), lo[rows], hi[rows],
                        np.full(len(rows), write)))

    comp = (ops == Opcode.COMPUTE) & (f[3] != 0) & (f[4] != 0) & (f[5] != 0)
    if comp.any():
        m, k = f[3], f[4]
        if config is None:
            a_rows = np.maximum(m, k)
        else:
            a_rows = m if config.dataflow is Dataflow.WS else k
        add(comp, _SP, f[0], f[0] + a_rows, False)
        add(comp, _SP, f[1], f[1] + k, False)
        add(comp, _ACC, f[2], f[2] + m, True)
    nrows, ncols, lo, stride = f[1], f[2], f[3], f[4]
    live = (nrows != 0) & (ncols != 0)
    span = lo + (nrows - 1) * stride
    for op in (Opcode.LOAD_SP, Opcode.LOAD_ACC, Opcode.STORE):
        sel = live & (ops == op)
        if not sel.any():
            continue
        if op == Opcode.LOAD_SP:
            add(sel, _SP, f[0], f[0] + nrows, True)
            if dram:
                add(sel, _DRAM, lo, span + ncols, False)
        elif op == Opcode.LOAD_ACC:
            add(sel, _ACC, f[0], f[0] + nrows, True)
            if dram:
                add(sel, _DRAM, lo, span + 4 * ncols, False)
        else:
            add(sel, _ACC, f[0], f[0] + nrows, False)
            if dram:
                add(sel, _DRAM, lo, span + ncols * np.where(f[5] == StoreMode.INT32, 4, 1), True)
    if not out:
        return None
    row, space, lo, hi, write = (np.concatenate(x) for x in zip(*out))
    keep = lo < hi
    return row[keep], space[keep], lo[keep], hi[keep], write[keep]


#: Above this many (range, elementary segment) pairs, :func:`synchronize` uses the builder.
_MAX_PIECES = 1 << 25


def _latest_conflicts(fields, units, config, dram) -> np.ndarray | None:
    """Per row and unit v: the unit index (among v's instructions) of the latest earlier
    instruction of v whose footprint conflicts with the row's (a write with any access, a read
    with a write); -1 when none (and for the row's own unit). None when the ranges are too
    many to answer in bulk."""
    n = len(fields)
    out = np.full((n, 3), -1, dtype=np.int64)
    fp = _footprints(fields, config, dram)
    if fp is None:
        return out
    # Unit index of every row within its unit.
    uindex = np.empty(n, dtype=np.int64)
    for u in range(3):
        sel = np.flatnonzero(units == u)
        uindex[sel] = np.arange(len(sel))
    row, space, lo, hi, write = fp
    for s in range(len(_SPACES)):
        sel = np.flatnonzero(space == s)
        if not len(sel):
            continue
        r, a, b, w = row[sel], lo[sel], hi[sel], write[sel]
        # Elementary segments between all range ends: two ranges overlap iff they share one.
        bounds = np.unique(np.concatenate([a, b]))
        s0, s1 = np.searchsorted(bounds, a), np.searchsorted(bounds, b)
        count = s1 - s0
        total = int(count.sum())
        if total > _MAX_PIECES:
            return None
        piece = np.repeat(np.arange(len(r)), count)
        seg = s0[piece] + np.arange(total) - np.repeat(np.cumsum(count) - count, count)
        pr, pw, pu = r[piece], w[piece], units[r[piece]]
        T = n + 1
        key = seg * T + pr                       # ranges sorted by segment, then row
        for v in range(3):
            mine = pu == v
            if not mine.any():
                continue
            others = ~mine
            # A write meets v's latest access, a read v's latest write.
            for query, events in ((others & pw, mine), (others & ~pw, mine & pw)):
                if not query.any() or not events.any():
                    continue
                ek = key[events]
                order = np.argsort(ek, kind="stable")
                ek = ek[order]
                ev = uindex[pr[events][order]]
                qk = key[query]
                at = np.searchsorted(ek, qk) - 1     # the latest event before the row
                hit = at >= 0
                hit[hit] = ek[at[hit]] // T == seg[query][hit]
                np.maximum.at(out[:, v], pr[query][hit], ev[at[hit]])
    return out


#: :func:`_token_structure` results: kernels of one shape (the heads of an attention layer,
#: the layers of a transformer) share one token structure.
_TOKEN_CACHE = DigestCache()


def _tokens(fields: np.ndarray, units: np.ndarray, latest: np.ndarray) -> tuple[np.ndarray, int]:
    """:meth:`ProgramBuilder.emit` of every row, given each row's latest conflicts: the
    token structure (:func:`_token_structure`, a function of *units* and *latest* only,
    cached) applied to *fields*."""
    src, pushers, poppers, nexts, relays = _TOKEN_CACHE.get(
        (units, latest), (), lambda: _token_structure(units, latest))
    out = fields[np.maximum(src, 0)]
    out[src < 0] = 0
    out[src < 0, 0] = int(Opcode.COMPUTE)
    if len(pushers):
        out[poppers, np.where(nexts, 1, 2)] = 1         # pop_prev / pop_next
        out[pushers, np.where(nexts, 4, 3)] = 1         # push_next / push_prev
    return out, relays


def _token_structure(units: np.ndarray, latest: np.ndarray) -> tuple:
    """What :meth:`ProgramBuilder.emit` makes of rows of *units* with the latest conflicts
    *latest*: ``(src, pushers, poppers, nexts, relays)``: per output row the input row it
    copies (-1: a zero-sized COMPUTE relay); per token its pushing and popping output rows
    and whether it goes to the next unit; the number of relays.

    The builder's steps, inline: a row pops each conflict its unit's vector clock does not
    cover yet; LOAD and STORE reach each other through a COMPUTE (the last one when it covers
    the conflict, else a new zero-sized relay). The builder's assertion that a queue's tokens
    are popped in order holds by construction (a popped index always exceeds the popper's
    clock, which covers every earlier pop of that queue); it is checked again at the end.
    """
    NONE = (-1, -1, -1)
    loads, computes, stores = [], [], []        # vector clock per unit index
    members = ([], [], [])                      # output row per unit index
    lmem, cmem, smem = members
    cmap = []                   # compute index of every non-relay COMPUTE
    source = []                 # per output row: input row, -1 for a relay
    pushers, poppers, nexts = [], [], []        # one entry per token
    relays = 0
    for q, u, j0, j1, j2 in zip(range(len(units)), units.tolist(), *latest.T.tolist()):
        if u == 1:
            p0, p1, p2 = computes[-1] if computes else NONE
            c0, c1, c2 = p0, p1, p2
            index = len(source)
            if j0 > p0:
                d = loads[j0]
                pushers.append(lmem[j0])
                poppers.append(index)
                nexts.append(True)
                c0 = j0
                if d[1] > c1:
                    c1 = d[1]
                if d[2] > c2:
                    c2 = d[2]
            if j2 > p2:
                d = stores[j2]
                pushers.append(smem[j2])
                poppers.append(index)
                nexts.append(False)
                if j2 > c2:
                    c2 = j2
                if d[0] > c0:
                    c0 = d[0]
                if d[1] > c1:
                    c1 = d[1]
            source.append(q)
            cmem.append(index)
            cmap.append(len(computes))
            computes.append((c0, c1, c2))
            continue
        clocks = loads if u == 0 else stores
        prev = clocks[-1] if clocks else NONE
        if j1 >= 0:
            j1 = cmap[j1]
        near = j1 if j1 > prev[1] else -1
        far, jf = (2, j2) if u == 0 else (0, j0)
        if jf > prev[far]:
            if not (computes and computes[-1][far] >= jf):
                # A zero-sized COMPUTE that waits for the far unit's instruction.
                relays += 1
                c0, c1, c2 = computes[-1] if computes else NONE
                index = len(source)
                if far == 0:
                    d = loads[jf]
                    c0 = jf
                else:
                    d = stores[jf]
                    c2 = jf
                pushers.append(members[far][jf])
                poppers.append(index)
                nexts.append(far == 0)
                if far != 0 and d[0] > c0:
                    c0 = d[0]
                if d[1] > c1:
                    c1 = d[1]
                if far != 2 and d[2] > c2:
                    c2 = d[2]
                source.append(-1)
                cmem.append(index)
                computes.append((c0, c1, c2))
            near = len(computes) - 1
        index = len(source)
        if near >= 0:
            d = computes[near]
            pushers.append(cmem[near])
            poppers.append(index)
            nexts.append(u == 2)
            clock = (prev[0] if prev[0] > d[0] else d[0], prev[1] if prev[1] > near else near,
                     prev[2] if prev[2] > d[2] else d[2])
        else:
            clock = prev
        source.append(q)
        members[u].append(index)
        clocks.append(clock)
    src = np.array(source, dtype=np.int64)
    pushers = np.array(pushers, dtype=np.int64)
    poppers = np.array(poppers, dtype=np.int64)
    nexts = np.array(nexts, dtype=bool)
    # Every instruction pushes at most one token each way.
    assert len(np.unique(pushers * 8 + np.where(nexts, 4, 3))) == len(pushers)
    for a in (src, pushers, poppers, nexts):
        a.flags.writeable = False
    return src, pushers, poppers, nexts, relays


# -- matrices in external memory -------------------------------------------------------------

def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


@dataclass(frozen=True)
class MatrixLayout:
    """Where a ``rows x cols`` matrix lives in external memory.

    The matrix is cut into column panels of ``panel`` elements; element ``(i, j)`` is at
    ``addr + (j // panel) * panel_stride + i * pitch + (j % panel) * elem``. With
    ``panel_stride == panel * elem`` this is plain row-major with row pitch ``pitch``.
    Every tile the GEMM loads or stores starts on a panel, so its address is bus aligned.
    """

    addr: int
    rows: int
    cols: int
    elem: int
    panel: int
    pitch: int
    panel_stride: int

    @classmethod
    def tiled(cls, addr: int, rows: int, cols: int, panel: int, bus_bytes: int,
              elem: int = 1) -> MatrixLayout:
        """Row-major (pitch rounded up to the bus) when panels fall on bus boundaries, else
        panel-major (each panel a block of ``rows`` bus-aligned rows)."""
        if addr % bus_bytes:
            raise ValueError(f"matrix address must be a multiple of bus_bytes = {bus_bytes}, "
                             f"got {addr}")
        if cols <= panel or (panel * elem) % bus_bytes == 0:
            return cls(addr, rows, cols, elem, panel, _round_up(cols * elem, bus_bytes), panel * elem)
        pitch = _round_up(panel * elem, bus_bytes)
        return cls(addr, rows, cols, elem, panel, pitch, rows * pitch)

    @property
    def row_major(self) -> bool:
        return self.cols <= self.panel or self.panel_stride == self.panel * self.elem

    def offset(self, i: int, j: int) -> int:
        """Byte address of element ``(i, j)``."""
        return self.addr + (j // self.panel) * self.panel_stride + i * self.pitch \
            + (j % self.panel) * self.elem

    @property
    def end(self) -> int:
        """One past the last byte of the matrix."""
        return self.offset(self.rows - 1, self.cols - 1) + self.elem

    def _index(self) -> np.ndarray:
        i = np.arange(self.rows, dtype=np.int64)[:, None]
        j = np.arange(self.cols, dtype=np.int64)[None, :]
        base = self.addr + (j // self.panel) * self.panel_stride + i * self.pitch \
            + (j % self.panel) * self.elem
        return base[..., None] + np.arange(self.elem, dtype=np.int64)

    def write(self, image: np.ndarray, x: np.ndarray) -> None:
        """Store matrix *x* (int8 or int32 values per ``elem``) into *image* (uint8)."""
        x = np.asarray(x)
        if x.shape != (self.rows, self.cols):
            raise ValueError(f"matrix must be {self.rows}x{self.cols}, got {x.shape}")
        dtype = np.int8 if self.elem == 1 else np.dtype("<i4")
        raw = np.ascontiguousarray(x.astype(dtype)).view(np.uint8).reshape(self.rows, self.cols, self.elem)
        image[self._index()] = raw

    def read(self, image: np.ndarray) -> np.ndarray:
        """The matrix stored in *image* (int8 or int32)."""
        raw = np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[self._index()])
        dtype = np.int8 if self.elem == 1 else np.dtype("<i4")
        return raw.view(dtype).reshape(self.rows, self.cols)


# -- the GEMM ----------------------------------------------------------------------------------

@dataclass
class GemmProgram:
    """A GEMM program and where its operands live.

    Attributes
    ----------
    program : FieldProgram
    a : MatrixLayout
        ``A`` (``M x K``) in ws; ``A.T`` (``K x M``) in os.
    b : MatrixLayout
        ``B`` (``K x N``).
    c : MatrixLayout
        ``C`` (``M x N``): int8 (``out="int8"``) or int32.
    mult, shift : np.ndarray
        Requantization per output column.
    plan : dict
        The tiling chosen (block sizes, buffer counts), for reports.
    """

    config: HwConfig
    M: int
    K: int
    N: int
    program: FieldProgram
    a: MatrixLayout
    b: MatrixLayout
    c: MatrixLayout
    out: str
    mult: np.ndarray
    shift: np.ndarray
    plan: dict = field(default_factory=dict)

    def place(self, image: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        """Write the operands ``A`` (``M x K``) and ``B`` (``K x N``) into *image*."""
        a = np.asarray(a)
        self.a.write(image, a if self.config.dataflow is Dataflow.WS else a.T)
        self.b.write(image, b)

    def result(self, image: np.ndarray) -> np.ndarray:
        """``C`` as stored in *image*."""
        return self.c.read(image)

    def expected(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``C`` by numpy and :mod:`neuralmatrix.hw.arith`."""
        acc = matmul_int32(a, b)
        if self.out == "int32":
            return acc
        return saturate(requantize(acc, self.mult, self.shift, bits=16), 8).astype(np.int8)

    def binary(self) -> bytes:
        """The program's binary (16 bytes per instruction)."""
        return assemble_binary(self.program)

    @property
    def regions(self) -> list[tuple[str, int, int]]:
        """``(name, start, end)`` of A, B and C in external memory; the program binary must
        be placed outside them."""
        return [("A", self.a.addr, self.a.end), ("B", self.b.addr, self.b.end),
                ("C", self.c.addr, self.c.end)]


def _per_column(value, N: int, name: str) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(value, dtype=np.int64), (N,)).copy() if np.ndim(value) == 0 \
        else np.asarray(value, dtype=np.int64)
    if arr.shape != (N,):
        raise ValueError(f"{name} must be a scalar or have N = {N} entries, got shape {arr.shape}")
    return arr


@dataclass
class _Plan:
    mb_rows: int        # M rows per block
    n_blocks: int
    group: int          # os: row panels per block (ws: 1)
    kc: int             # K per compute
    kt: int             # K chunks
    nt: int             # N tiles
    a_bufs: int         # scratchpad A blocks (1 or 2); 0: A tiles stream through a ring
    a_block: int        # scratchpad rows of one A block, or of one A ring slot
    b_slots: int        # scratchpad B ring slots
    b_rows: int         # scratchpad rows per B slot
    acc_slots: int
    acc_rows: int       # accumulator rows per slot
    n_group: int = 1    # N tiles accumulated together (2 * n_group accumulator slots)
    a_slots: int = 0    # A streamed: ring slots (each A tile serves the steps of one group)


def _ws_grouped(cfg: HwConfig, M: int, kt: int, nt: int, resident: _Plan | None,
                active: np.ndarray | None = None) -> _Plan | None:
    """ws with several A blocks: *resident* (each block's A stays while every N tile streams
    its B tiles, so B is loaded once per block), or A tiles streamed once per group of N
    tiles that accumulate together (B loaded once per block of up to ``acc_depth / 2``
    rows, A once per group), whichever keeps the busier of the load and compute units less
    busy (by the estimate's costs). *resident* None (K too long for a resident A block):
    the grouped plan, or None when its ring does not fit. *active* (chunks x N tiles, see
    :func:`matmul_program`) counts only the steps and A tiles the program issues (a
    diagonal weight uses each A tile once, so a resident A gains nothing)."""
    R = cfg.rows
    b_slots, a_slots = 4, 3
    mb_max = min((cfg.sp_depth - b_slots * R) // a_slots, cfg.acc_depth // 2, 0xFFFF)
    if mb_max < R:
        return resident
    n_blocks = -(-M // mb_max)
    mb = -(-M // n_blocks)
    group = max(1, min(nt, cfg.acc_depth // (2 * mb)))

    def occupancy(insn):                         # as the estimate has it
        return _cost(insn, cfg, CYCLE_COSTS)[0]

    act = np.ones((kt, nt), dtype=bool) if active is None else np.asarray(active, dtype=bool)
    used = int(act.any(axis=1).sum())                   # chunks a resident block loads
    per_block = int(act.sum())                          # steps per block

    def busy(n_blocks, mb, a_loads):
        steps = n_blocks * per_block
        load = (steps * occupancy(Insn(Opcode.LOAD_SP, nrows=R, ncols=1))
                + n_blocks * a_loads * occupancy(Insn(Opcode.LOAD_SP, nrows=mb, ncols=1)))
        compute = steps * occupancy(Insn(Opcode.COMPUTE, m=mb, k=R, n=R))
        return max(load, compute)

    a_grouped = sum(int(act[:, g0:g0 + group].any(axis=1).sum()) for g0 in range(0, nt, group))
    mine = busy(n_blocks, mb, a_grouped)
    if resident is not None and mine >= busy(resident.n_blocks, resident.mb_rows, used):
        return resident
    return _Plan(mb, n_blocks, 1, R, kt, nt, 0, mb, b_slots, R, 2 * group, mb, group, a_slots)


def _plan(cfg: HwConfig, M: int, K: int, N: int, active: np.ndarray | None = None) -> _Plan:
    R, C = cfg.rows, cfg.cols
    nt = -(-N // C)
    if cfg.dataflow is Dataflow.WS:
        kc = R
        kt = -(-K // kc)
        b_rows = kc
        b_slots = 4 if 4 * b_rows + kt <= cfg.sp_depth else 2
        room = cfg.sp_depth - b_slots * b_rows

        def block_max(bufs):
            return min(room // (bufs * kt), cfg.acc_depth // 2, 0xFFFF)

        if block_max(1) < min(M, R):
            # K too long to keep A resident: stream A tiles, each once per group of N tiles
            # that accumulate together, or (when that ring does not fit) with every B tile.
            grouped = _ws_grouped(cfg, M, kt, nt, None, active)
            if grouped is not None:
                return grouped
            b_slots = 2
            mb = min(M, cfg.sp_depth // b_slots - b_rows, cfg.acc_depth // 2, 0xFFFF)
            if mb < 1:
                raise ValueError(f"sp_depth = {cfg.sp_depth} is too small for rows = {R}")
            n_blocks = -(-M // mb)
            mb = -(-M // n_blocks)
            return _Plan(mb, n_blocks, 1, kc, kt, nt, 0, mb, b_slots, b_rows, 2, mb, 1, b_slots)
        if M <= block_max(1):
            bufs, n_blocks = 1, 1
        else:
            bufs = 2 if block_max(2) >= 2 * R else 1
            n_blocks = -(-M // block_max(bufs))
        mb = -(-M // n_blocks)
        plan = _Plan(mb, n_blocks, 1, kc, kt, nt, bufs, mb * kt, b_slots, b_rows, 2, mb)
        return plan if n_blocks == 1 else _ws_grouped(cfg, M, kt, nt, plan, active)
    # os: one compute per row panel, k as long as the scratchpad allows.
    kc = min(K, 0xFFFF) if 3 * K <= cfg.sp_depth else (cfg.sp_depth - K) // 2
    if kc < min(K, 2 * cfg.sp_row):
        # K too long to keep A^T panels resident: stream A chunks with the B chunks.
        b_slots = 3
        kc = min(K, cfg.sp_depth // (2 * b_slots), 0xFFFF)
        kt = -(-K // kc)
        mt = -(-M // R)
        return _Plan(R, mt, 1, kc, kt, nt, 0, kc, b_slots, kc, 2, R, 1, b_slots)
    kt = -(-K // kc)
    b_slots = next(s for s in (4, 3, 2) if K + s * kc <= cfg.sp_depth)
    room = cfg.sp_depth - b_slots * kc
    mt = -(-M // R)

    def group_max(bufs):
        return min(room // (bufs * K), cfg.acc_depth // (2 * R), mt)

    if mt <= group_max(1):
        bufs, n_blocks = 1, 1
    else:
        bufs = 2 if group_max(2) >= 2 else 1
        n_blocks = -(-mt // group_max(bufs))
    g = -(-mt // n_blocks)
    n_blocks = -(-mt // g)
    return _Plan(g * R, n_blocks, g, kc, kt, nt, bufs, g * K, b_slots, kc, 2, g * R)


@dataclass(frozen=True)
class Operand:
    """One term ``A @ B`` of a :func:`matmul_program`.

    ``a`` holds ``A`` (``M x K``) in ws and ``A.T`` (``K x M``) in os; ``b`` holds ``B``
    (``K x N``); both int8. Every tile the program loads starts on a panel of its layout
    (``rows`` for A in ws / ``rows``-wide panels of A.T in os, ``cols`` for B)."""

    a: MatrixLayout
    b: MatrixLayout


@dataclass(frozen=True)
class _Chunk:
    part: int
    k0: int         # first row of B (column of A) within the part
    k: int          # depth
    koff: int       # offset of this chunk within the concatenated K


def _matmul_program(config: HwConfig, parts: list[Operand], c: MatrixLayout, *, mult, shift,
                    out: str, bias: MatrixLayout | None, pwl, active: np.ndarray | None,
                    check: bool) -> tuple[FieldProgram, dict]:
    """:func:`matmul_program` (its body): the schedule built in bulk, then synchronized in bulk."""
    fields, apart, plan = _matmul_fields(config, parts, c, mult=mult, shift=shift, out=out,
                                         bias=bias, pwl=pwl, active=active)
    fields, relays = synchronize(fields, config, dram=not apart)
    program = FieldProgram(np.concatenate([fields, _HALT_ROW]))
    if check:
        validate(program, config)
    plan["relays"] = relays
    return program, plan


_HALT_ROW = np.zeros((1, _NCOLS), dtype=np.int64)
_HALT_ROW[0, 0] = int(Opcode.HALT)


def _offsets(lays: list[MatrixLayout], which: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """:meth:`MatrixLayout.offset` ``(i, j)`` in layout ``lays[which]``, elementwise."""
    if len(lays) == 1:
        def attr(name):
            return getattr(lays[0], name)
    else:
        def attr(name):
            return np.array([getattr(lay, name) for lay in lays], dtype=np.int64)[which]

    panel = attr("panel")
    return attr("addr") + (j // panel) * attr("panel_stride") + i * attr("pitch") \
        + (j % panel) * attr("elem")


def _rows(op: Opcode, count: int, /, **columns) -> np.ndarray:
    """*count* field-matrix rows of *op* (no flags) from per-field arrays or scalars."""
    m = np.zeros((count, _NCOLS), dtype=np.int64)
    m[:, 0] = int(op)
    for name, value in columns.items():
        m[:, _COL[op][name]] = value
    return m


def _matmul_fields(config: HwConfig, parts: list[Operand], c: MatrixLayout, *, mult, shift,
                   out: str, bias: MatrixLayout | None, pwl, active: np.ndarray | None
                   ) -> tuple[np.ndarray, bool, dict]:
    """The instructions of :func:`matmul_program` in program order, before synchronization:
    ``(field matrix without flags or HALT, whether C lies apart from the sources, plan)``.
    The schedule of :func:`_matmul_program_reference`, built with numpy per loop nest."""
    if out not in ("int8", "int32"):
        raise ValueError(f"out must be 'int8' or 'int32', got {out!r}")
    if not parts:
        raise ValueError("matmul_program needs at least one operand")
    cfg = config
    ws = cfg.dataflow is Dataflow.WS
    R, C = cfg.rows, cfg.cols
    M, N = c.rows, c.cols
    for i, p in enumerate(parts):
        m_p = p.a.rows if ws else p.a.cols
        k_p = p.a.cols if ws else p.a.rows
        if m_p != M or p.b.cols != N or k_p != p.b.rows:
            raise ValueError(f"operand {i}: A is {p.a.rows}x{p.a.cols}, B {p.b.rows}x{p.b.cols}; "
                             f"C is {M}x{N} ({cfg.dataflow} stores A{'' if ws else '.T'})")
    K = sum(p.b.rows for p in parts)
    if min(M, K, N) < 1:
        raise ValueError(f"M, K and N must be >= 1, got {M}, {K}, {N}")
    if pwl is not None and out != "int8":
        raise ValueError("a PWL output needs out='int8'")
    mult_c, shift_c = _per_column(mult, N, "mult"), _per_column(shift, N, "shift")
    chunks = _chunks(cfg, [p.b.rows for p in parts])
    nt_count = -(-N // C)
    if active is None:
        active = np.ones((len(chunks), nt_count), dtype=bool)
    active = np.asarray(active, dtype=bool)
    if active.shape != (len(chunks), nt_count):
        raise ValueError(f"active must be {len(chunks)} chunks x {nt_count} N tiles, "
                         f"got {active.shape}")
    p = _plan(cfg, M, len(chunks) * R if ws else K, N, active if ws else None)
    ch_part = np.array([ch.part for ch in chunks], dtype=np.int64)
    ch_k0 = np.array([ch.k0 for ch in chunks], dtype=np.int64)
    ch_k = np.array([ch.k for ch in chunks], dtype=np.int64)
    ch_koff = np.array([ch.koff for ch in chunks], dtype=np.int64)
    n_of = np.minimum(C, N - np.arange(nt_count) * C)
    a_lays, b_lays = [q.a for q in parts], [q.b for q in parts]
    a_pitch = np.array([lay.pitch for lay in a_lays], dtype=np.int64)
    b_pitch = np.array([lay.pitch for lay in b_lays], dtype=np.int64)

    # A row groups (m0, m) per block: one (ws) or one per row panel (os).
    panels = []
    for mb in range(p.n_blocks):
        if ws:
            m0 = mb * p.mb_rows
            panels.append([(m0, min(p.mb_rows, M - m0))])
        else:
            first = mb * p.group
            panels.append([(q * R, min(R, M - q * R))
                           for q in range(first, min(first + p.group, -(-M // R)))])
    n_panels = np.array([len(g) for g in panels], dtype=np.int64)
    block_rows = np.array([sum(m for _, m in g) for g in panels], dtype=np.int64)
    block_m0 = np.array([g[0][0] for g in panels], dtype=np.int64)
    P = int(n_panels.max())

    # The steps: per block, per group of N tiles, per chunk, the group's tiles for which the
    # chunk is active (every tile at least one chunk, so every tile is written).
    G = p.n_group
    act = active.copy()
    act[0, ~act.any(axis=0)] = True
    pat = [np.nonzero(act[:, g0:g0 + G]) for g0 in range(0, nt_count, G)]
    pat_nt = np.concatenate([g0 * G + t for g0, (_, t) in enumerate(pat)])
    pat_j = np.concatenate([j for j, _ in pat])
    pat_grp = np.concatenate([np.full(len(j), g0) for g0, (j, _) in enumerate(pat)])
    L = len(pat_nt)
    S = p.n_blocks * L
    s_i = np.arange(S)
    s_mb = np.repeat(np.arange(p.n_blocks), L)
    s_nt, s_j = np.tile(pat_nt, p.n_blocks), np.tile(pat_j, p.n_blocks)
    s_grp = s_mb * len(pat) + np.tile(pat_grp, p.n_blocks)      # group sequence number
    block_start = np.arange(p.n_blocks + 1) * L
    tile_id = s_mb * nt_count + s_nt
    first = np.zeros(S, dtype=bool)
    first[np.unique(tile_id, return_index=True)[1]] = True
    last = np.zeros(S, dtype=bool)
    last[S - 1 - np.unique(tile_id[::-1], return_index=True)[1]] = True
    acc_base = ((s_grp % 2) * G + s_nt % G) * p.acc_rows
    stream = p.a_bufs == 0
    b_base = p.a_bufs * p.a_block
    b_sp = b_base + (s_i % p.b_slots) * p.b_rows
    early = np.maximum(0, s_i - p.b_slots + 1)
    # Streamed A: one tile per (block, group, chunk), in a ring of a_slots.
    a_new = np.ones(S, dtype=bool)
    a_new[1:] = (s_grp[1:] != s_grp[:-1]) | (s_j[1:] != s_j[:-1])
    a_seq = np.cumsum(a_new) - 1
    a_first = np.flatnonzero(a_new)

    def a_sp(i, mb, g, j):
        if stream:                              # A ring after the B ring
            return b_base + p.b_slots * p.b_rows + (a_seq[i] % p.a_slots) * p.a_block
        base = (mb % p.a_bufs) * p.a_block
        return base + j * p.mb_rows if ws else base + g * K + ch_koff[j]

    def a_load(sp, m0, m, j):
        part, k0, k = ch_part[j], ch_k0[j], ch_k[j]
        if ws:
            return _rows(Opcode.LOAD_SP, len(sp), sp_addr=sp, nrows=m, ncols=k,
                         dram_addr=_offsets(a_lays, part, m0, k0), dram_stride=a_pitch[part])
        return _rows(Opcode.LOAD_SP, len(sp), sp_addr=sp, nrows=k, ncols=m,
                     dram_addr=_offsets(a_lays, part, k0, m0), dram_stride=a_pitch[part])

    # Every instruction with its sort key (position, group, need / sub-position, order):
    # loads (group 0) by (vpos, need, creation order) before the items of step vpos (group 1).
    blocks, keys = [], []

    def add(rows, k1, k2, k3, k4, k5=0):
        blocks.append(rows)
        keys.append(np.broadcast_arrays(*(np.asarray(k, dtype=np.int64)
                                          for k in (k1, k2, k3, k4, k5)),
                                        np.zeros(len(rows), np.int64))[:5])

    if pwl is not None:
        pre = field_matrix(pwl.instructions(0, cfg))
        add(pre, -1, 0, np.arange(len(pre)), 0)
    # B tiles, one per step.
    part = ch_part[s_j]
    add(_rows(Opcode.LOAD_SP, S, sp_addr=b_sp, nrows=ch_k[s_j], ncols=n_of[s_nt],
              dram_addr=_offsets(b_lays, part, ch_k0[s_j], s_nt * C), dram_stride=b_pitch[part]),
        early, 0, s_i, s_i * (P + 2))
    if stream:
        # Each A tile loaded while the a_slots - 1 tiles before it are in use.
        vpos = a_first[np.maximum(0, np.arange(len(a_first)) - p.a_slots + 1)]
        for g in range(P):
            sel = np.flatnonzero(n_panels[s_mb[a_first]] > g)
            i = a_first[sel]
            mb, j = s_mb[i], s_j[i]
            m0 = np.array([panels[b][g][0] if g < len(panels[b]) else 0 for b in range(p.n_blocks)])
            m = np.array([panels[b][g][1] if g < len(panels[b]) else 0 for b in range(p.n_blocks)])
            add(a_load(a_sp(i, mb, g, j), m0[mb], m[mb], j), vpos[sel], 0, i, i * (P + 2) + 1 + g)
    else:
        used = np.unique(pat_j)
        first_pos = {int(j): int(np.argmax(pat_j == j)) for j in used}
        last_pos = {int(j): L - 1 - int(np.argmax(pat_j[::-1] == j)) for j in used}
        rows_i, rows_mb, rows_g, rows_j, rows_v = [], [], [], [], []
        for mb in range(p.n_blocks):
            tiles = panels[mb]
            for rank, j in enumerate(used.tolist()):
                i = int(block_start[mb]) + first_pos[j]
                for g in range(len(tiles)):
                    if mb == 0:
                        vpos = int(early[i])
                    elif p.a_bufs == 2:
                        # Spread the next block's A loads over the current block.
                        t = rank * len(tiles) + g
                        total = len(used) * len(tiles)
                        vpos = int(block_start[mb - 1]) + (t + 1) * L // (total + 1)
                    else:
                        # One A buffer: after the previous block's last use of these rows.
                        vpos = int(block_start[mb - 1]) + last_pos[j] + 1
                    rows_i.append(i)
                    rows_mb.append(mb)
                    rows_g.append(g)
                    rows_j.append(j)
                    rows_v.append(min(vpos, i))
        i, mb, g, j = (np.array(x, dtype=np.int64) for x in (rows_i, rows_mb, rows_g, rows_j))
        m0 = np.array([panels[b][gg][0] for b, gg in zip(rows_mb, rows_g)], dtype=np.int64)
        m = np.array([panels[b][gg][1] for b, gg in zip(rows_mb, rows_g)], dtype=np.int64)
        add(a_load(a_sp(i, mb, g, j), m0, m, j), rows_v, 0, i, i * (P + 2) + 1 + g)
    # Bias rows into the accumulator before the first COMPUTE of each output tile. (Loaded
    # earlier, while the tile before computes, it gains nothing on the RTL: the load then
    # shares the accumulator with the computes.)
    if bias is not None:
        sel = np.flatnonzero(first)
        nt = s_nt[sel]
        add(_rows(Opcode.LOAD_ACC, len(sel), acc_addr=acc_base[sel], nrows=block_rows[s_mb[sel]],
                  ncols=n_of[nt], dram_addr=_offsets([bias], np.zeros_like(nt), 0, nt * C),
                  dram_stride=0), sel, 1, 0, 0)
    # One COMPUTE per step and A row group.
    for g in range(P):
        sel = np.flatnonzero(n_panels[s_mb] > g)
        i, mb, j, nt = s_i[sel], s_mb[sel], s_j[sel], s_nt[sel]
        m = np.array([panels[b][g][1] if g < len(panels[b]) else 0 for b in range(p.n_blocks)])
        add(_rows(Opcode.COMPUTE, len(sel), a_addr=a_sp(i, mb, g, j), b_addr=b_sp[sel],
                  c_addr=acc_base[sel] + (0 if ws else g * R), m=m[mb], k=ch_k[j], n=n_of[nt],
                  accumulate=(bias is not None) | ~first[sel]), i, 1, 1 + g, 0)
    # After the last step of each tile: the lanes' requantization, then the STORE.
    sel = np.flatnonzero(last)
    nt = s_nt[sel]
    if out == "int8":
        lanes = [None] * C                   # (mult, shift) configured per lane
        mult_shift = list(zip(mult_c.tolist(), shift_c.tolist()))
        cfg_i, cfg_sub, cfg_vals = [], [], []
        for i, t in zip(sel.tolist(), nt.tolist()):
            n0, n = t * C, int(n_of[t])
            want = mult_shift[n0:n0 + n]
            if lanes[:n] == want:
                continue
            lane = 0
            while lane < n:
                end = lane
                while end < n and want[end] == want[lane]:
                    end += 1
                if lanes[lane:end] != want[lane:end]:
                    # Widen a uniform run to every lane when all of this tile's lanes agree.
                    count = C if (lane == 0 and end == n) else end - lane
                    cfg_i.append(i)
                    cfg_sub.append(len(cfg_sub))
                    cfg_vals.append((lane, count, *want[lane]))
                    lanes[lane:lane + count] = [want[lane]] * count
                lane = end
        if cfg_i:
            v = np.array(cfg_vals, dtype=np.int64)
            add(_rows(Opcode.CFG_REQUANT, len(v), lane=v[:, 0], count=v[:, 1], mult=v[:, 2],
                      shift=v[:, 3]), cfg_i, 1, P + 1, cfg_sub)
    mode = StoreMode.INT32 if out == "int32" else StoreMode.INT8 if pwl is None else StoreMode.INT8_PWL
    add(_rows(Opcode.STORE, len(sel), acc_addr=acc_base[sel], nrows=block_rows[s_mb[sel]],
              ncols=n_of[nt], dram_addr=_offsets([c], np.zeros_like(nt), block_m0[s_mb[sel]], nt * C),
              dram_stride=c.pitch, mode=int(mode), table=0), sel, 1, P + 2, 0)
    fields = np.concatenate(blocks)
    k1, k2, k3, k4, k5 = (np.concatenate(k) for k in zip(*keys))
    fields = fields[np.lexsort((k5, k4, k3, k2, k1))]

    # Loads read A, B and the bias; stores write C: with C apart from the rest, no store can
    # conflict with a load through external memory.
    sources = [(lay.addr, lay.end) for q in parts for lay in (q.a, q.b)]
    if bias is not None:
        sources.append((bias.addr, bias.end))
    apart = all(hi <= c.addr or c.end <= lo for lo, hi in sources)
    plan = {"dataflow": cfg.dataflow.value, "block_rows": p.mb_rows, "blocks": p.n_blocks,
            "row_panels_per_block": p.group, "k_chunks": len(chunks),
            "k_steps": S, "n_tiles": nt_count, "a_buffers": p.a_bufs,
            "a_streamed": stream, "b_slots": p.b_slots, "acc_slots": p.acc_slots,
            "n_tiles_per_group": G, "a_slots": p.a_slots}
    return fields, apart, plan


def _matmul_program_reference(config: HwConfig, parts: list[Operand], c: MatrixLayout, *,
                              mult=1, shift=0, out: str = "int8",
                              bias: MatrixLayout | None = None, pwl=None,
                              active: np.ndarray | None = None,
                              check: bool = True) -> tuple[list[Insn], dict]:
    """:func:`matmul_program` with the schedule synchronized one instruction at a time by
    :class:`ProgramBuilder`: the reference :func:`synchronize` must equal
    (tests/test_bulk_emit.py)."""
    fields, apart, plan = _matmul_fields(config, parts, c, mult=mult, shift=shift, out=out,
                                         bias=bias, pwl=pwl, active=active)
    builder = ProgramBuilder(config, dram=not apart)
    for insn in FieldProgram(fields):
        builder.emit(insn)
    program = builder.finish()
    if check:
        validate(program, config)
    plan["relays"] = builder.relays
    return program, plan


def matmul_program(config: HwConfig, parts: list[Operand], c: MatrixLayout, *, mult=1, shift=0,
                   out: str = "int8", bias: MatrixLayout | None = None, pwl=None,
                   active: np.ndarray | None = None, check: bool = True) -> tuple[FieldProgram, dict]:
    """A tiled, double-buffered, token-synchronized program for
    ``C = out(bias + sum_p A_p @ B_p)``.

    Parameters
    ----------
    config : HwConfig
    parts : list of Operand
        The terms; all have the same ``M`` and ``N``; their depths ``K_p`` may differ. Their
        K chunks are concatenated (a chunk never straddles two terms).
    c : MatrixLayout
        ``C`` (``M x N``), int8 (``elem=1``) or int32 (``elem=4``, ``out="int32"``).
    mult, shift : int or array of N ints
        Requantization per output column (ignored for ``out="int32"``).
    out : {"int8", "int32"}
    bias : MatrixLayout, optional
        A ``1 x N`` int32 row (``elem=4``, panels of ``cols``) loaded into the accumulator
        (broadcast to every row by a stride-0 ``LOAD_ACC``) before the first COMPUTE of each
        output tile.
    pwl : PwlTable, optional
        ``out="int8"`` through this PWL table (STORE mode 1, table 0): ``C = pwl(requant16)``.
    active : bool array (chunks x N tiles), optional
        ``active[j, t]`` False skips chunk ``j`` for output tile ``t`` (its B block is zero:
        block-diagonal and other structured weights). Chunks are ``rows`` deep (ws) or as
        planned (os); :func:`chunk_depths` gives them.
    check : bool
        Validate the program.

    Returns
    -------
    program : FieldProgram
        The instructions, held as their field matrix.
    plan : dict
        The tiling chosen, for reports.
    """
    with _gc_paused():
        return _matmul_program(config, parts, c, mult=mult, shift=shift, out=out, bias=bias,
                               pwl=pwl, active=active, check=check)


def chunk_depths(config: HwConfig, depths: list[int]) -> list[tuple[int, int, int]]:
    """``(part, k0, k)`` of the K chunks :func:`matmul_program` uses for terms of these depths
    (ws: ``rows`` deep; os: as deep as the scratchpad plan allows)."""
    return [(c.part, c.k0, c.k) for c in _chunks(config, depths)]


def _chunks(cfg: HwConfig, depths: list[int]) -> list[_Chunk]:
    if cfg.dataflow is Dataflow.WS:
        kc = cfg.rows
    else:
        # The os plan's chunk depth for the whole K (a chunk never straddles two terms).
        kc = _plan(cfg, cfg.rows, sum(depths), cfg.cols).kc
    out, koff = [], 0
    for part, d in enumerate(depths):
        for k0 in range(0, d, kc):
            k = min(kc, d - k0)
            out.append(_Chunk(part, k0, k, koff))
            koff += k
    return out


def gemm_program(config: HwConfig, M: int, K: int, N: int, *, a_addr: int, b_addr: int,
                 c_addr_dram: int, mult=1, shift=0, out: str = "int8",
                 check: bool = True) -> GemmProgram:
    """A tiled, double-buffered, token-synchronized program for ``C = requant(A @ B)``.

    Parameters
    ----------
    config : HwConfig
    M, K, N : int
        ``A`` is ``M x K`` int8, ``B`` is ``K x N`` int8.
    a_addr, b_addr, c_addr_dram : int
        External addresses (multiples of ``bus_bytes``) of ``A`` (ws: ``M x K``; os: stored
        transposed, ``K x M``), ``B`` (``K x N``) and ``C`` (``M x N``). Each is row-major
        when its tiles fall on bus boundaries (tile width a multiple of ``bus_bytes``, e.g.
        16x16 with 16-byte beats), else panel-major; see :class:`MatrixLayout` and the
        returned layouts, whose ``write``/``read`` place and fetch the matrices.
    mult, shift : int or array of N ints
        Requantization (per output column) for ``out="int8"``.
    out : {"int8", "int32"}
        ``C`` requantized to int8 (STORE mode 0) or the raw int32 accumulators (mode 2).
    check : bool
        Validate the program (:func:`~neuralmatrix.hw.isa.validate`).

    Notes
    -----
    This is :func:`matmul_program` with one term. ws: per block of ``mb`` rows of A, the A
    block (all K chunks) stays in the scratchpad while every N tile streams its ``rows``-deep
    B tiles through a ring; each COMPUTE streams ``mb`` rows (``m = mb``, ``k <= rows``) and
    the K chunks accumulate. os: per block of row panels, the A^T panels stay resident; each
    COMPUTE covers one ``rows x cols`` output tile with ``k`` as long as the scratchpad
    allows. A blocks are double-buffered when two fit (the next block's A loads spread over
    the current block), B tiles are loaded up to ``b_slots - 1`` steps ahead, and accumulator
    tiles alternate between two slots. When K is too long for a resident A block, A tiles
    stream through a ring like the B tiles (no A reuse across N tiles: load-bound, but any K
    works). ws, when A would need several resident blocks (so B is loaded once per block):
    if it loads less, blocks of up to ``acc_depth / 2`` rows instead, each A tile streamed
    once per group of N tiles that accumulate together (``2 x group`` accumulator slots).
    """
    if min(M, K, N) < 1:
        raise ValueError(f"M, K and N must be >= 1, got {M}, {K}, {N}")
    if out not in ("int8", "int32"):
        raise ValueError(f"out must be 'int8' or 'int32', got {out!r}")
    cfg = config
    ws = cfg.dataflow is Dataflow.WS
    R, C, BUS = cfg.rows, cfg.cols, cfg.bus_bytes
    mult_c, shift_c = _per_column(mult, N, "mult"), _per_column(shift, N, "shift")
    a_lay = (MatrixLayout.tiled(a_addr, M, K, R, BUS) if ws
             else MatrixLayout.tiled(a_addr, K, M, R, BUS))
    b_lay = MatrixLayout.tiled(b_addr, K, N, C, BUS)
    c_lay = MatrixLayout.tiled(c_addr_dram, M, N, C, BUS, elem=1 if out == "int8" else 4)
    regions = sorted([(a_lay.addr, a_lay.end, "A"), (b_lay.addr, b_lay.end, "B"),
                      (c_lay.addr, c_lay.end, "C")])
    for (lo0, hi0, n0), (lo1, hi1, n1) in zip(regions, regions[1:]):
        if lo1 < hi0:
            raise ValueError(f"{n0} ({lo0}..{hi0 - 1}) and {n1} ({lo1}..{hi1 - 1}) overlap")
    program, plan = matmul_program(cfg, [Operand(a_lay, b_lay)], c_lay, mult=mult_c,
                                   shift=shift_c, out=out, check=check)
    return GemmProgram(cfg, M, K, N, program, a_lay, b_lay, c_lay, out, mult_c, shift_c, plan)


def random_gemm_image(config: HwConfig, M: int, K: int, N: int, *, seed: int = 0, shift: int = 6,
                      align: int = 64):
    """An external-memory image running one int8 ``M x K x N`` GEMM on random operands.

    Returns ``(image, insn_addr, gp, a, b)``: A, B and the program are in ``image`` (C's space
    is zero); after the run ``gp.result(image)`` reads C back and ``gp.expected(a, b)`` is
    what it must be.
    """
    def up(x):
        return -(-x // align) * align

    a_addr = align
    b_addr = a_addr + up(M * K) + align
    c_addr = b_addr + up(K * N) + align
    insn_addr = c_addr + up(4 * M * N) + align
    gp = gemm_program(config, M, K, N, a_addr=a_addr, b_addr=b_addr, c_addr_dram=c_addr,
                      mult=1, shift=shift)
    binary = np.frombuffer(assemble_binary(gp.program), np.uint8)
    image = np.zeros(insn_addr + binary.size, np.uint8)
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (M, K))
    b = rng.integers(-128, 128, (K, N))
    gp.place(image, a, b)
    image[insn_addr:] = binary
    return image, insn_addr, gp, a, b
