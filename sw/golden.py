"""The golden model: a bit-exact numpy model of the accelerator running a program.

:class:`GoldenModel` executes a program in program order, one vectorized numpy step per
instruction, with the arithmetic of :mod:`neuralmatrix.hw.arith`. Because the units only
synchronize through dependency tokens, this equals the hardware exactly when the program is
race-free; :func:`find_races` checks that. :func:`estimate_cycles` is a discrete-event
schedule of the same program over instructions (not cycles), with its costs in one table,
:data:`CYCLE_COSTS`, to be calibrated against the RTL counters.

State semantics (see also :mod:`neuralmatrix.hw.isa`)
    ``LOAD_SP`` / ``LOAD_ACC`` copy ``nrows`` rows of ``ncols`` int8 / little-endian int32
    elements from ``dram_addr + r * dram_stride`` and zero the rest of each on-chip row.
    ``COMPUTE`` writes ``ACC[c_addr:c_addr+m, :n] = (accumulate ? ACC : 0) + A @ B`` (int32
    wrap) with ``A = SP[a_addr:+m, :k]`` (ws) or ``SP[a_addr:+k, :m].T`` (os) and
    ``B = SP[b_addr:+k, :n]``; it is a no-op if ``m``, ``k`` or ``n`` is 0. ``STORE`` sends
    ``ACC[acc_addr+r, :ncols]`` through the output path (per-lane requantization, optional
    PWL, or raw int32) to ``dram_addr + r * dram_stride``; overlapping rows: the last wins.
"""

from __future__ import annotations

import gc
import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from neuralmatrix.hw.arith import (
    INT16_MAX, INT16_MIN, MAX_SHIFT, MULT_BITS, matmul_int32, pwl_eval, requantize, saturate,
)
from neuralmatrix.hw.isa import (
    _UNIT_CODE, INSN_BYTES, Insn, Opcode, ProgramError, StoreMode, Unit, field_column,
    field_matrix, trace_tokens, validate,
)
from neuralmatrix.hw.params import Dataflow, HwConfig

__all__ = [
    "Access", "footprint", "conflict", "GoldenResult", "GoldenModel", "find_races",
    "CYCLE_COSTS", "CycleEstimate", "estimate_cycles",
]


@contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector around bulk work that makes no reference cycles
    (building or running a program): full collections walk every live object, the compiled
    programs of a whole network included, and would cost more than the work."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# -- memory footprints ---------------------------------------------------------------------

class Access(NamedTuple):
    """A range ``[lo, hi)`` of ``space`` (``"SP"``/``"ACC"`` rows, ``"DRAM"`` bytes)."""

    space: str
    lo: int
    hi: int
    write: bool

    def __str__(self) -> str:
        unit = "bytes" if self.space == "DRAM" else "rows"
        return f"{'writes' if self.write else 'reads'} {self.space} {unit} {self.lo}..{self.hi - 1}"


def footprint(insn: Insn, config: HwConfig | None = None) -> list[Access]:
    """On-chip rows and external-memory bytes *insn* reads and writes.

    Rows are whole on-chip rows; a strided transfer's external range is the hull of its rows
    (conservative). Configuration instructions touch only store-unit state: no footprint.
    *config* gives the dataflow, which decides how many scratchpad rows COMPUTE reads for A
    (``m`` in ws, ``k`` in os); without it the larger of the two is assumed.
    """
    return [Access(_SPACES[s], lo, hi, w) for s, lo, hi, w in _spans(insn, config)]


# The memory spaces of :class:`Access`, in the order of the space indices of :func:`_spans`.
_SPACES = ("SP", "ACC", "DRAM")
_SP, _ACC, _DRAM = range(3)


def _spans(insn: Insn, config: HwConfig | None, *, merge: bool = False,
           dram: bool = True) -> list[tuple[int, int, int, bool]]:
    """:func:`footprint` as ``(space index, lo, hi, write)`` tuples; *merge* leaves out the
    accumulator read of an accumulating COMPUTE (its write covers the same rows), ``dram=False``
    the external-memory ranges."""
    op, a = insn.op, insn.args
    if op == Opcode.COMPUTE:
        m, k = a["m"], a["k"]
        if m == 0 or k == 0 or a["n"] == 0:
            return []
        # A spans m rows (ws) or k rows (os); without the dataflow, take the larger (conservative).
        if config is None:
            a_rows = max(m, k)
        else:
            a_rows = m if config.dataflow is Dataflow.WS else k
        c = a["c_addr"]
        if a["accumulate"] and not merge:
            return [(_SP, a["a_addr"], a["a_addr"] + a_rows, False),
                    (_SP, a["b_addr"], a["b_addr"] + k, False),
                    (_ACC, c, c + m, True), (_ACC, c, c + m, False)]
        return [(_SP, a["a_addr"], a["a_addr"] + a_rows, False),
                (_SP, a["b_addr"], a["b_addr"] + k, False), (_ACC, c, c + m, True)]
    if op in _TRANSFERS:
        nrows, ncols = a["nrows"], a["ncols"]
        if nrows == 0 or ncols == 0:
            return []
        if not dram:
            if op == Opcode.LOAD_SP:
                return [(_SP, a["sp_addr"], a["sp_addr"] + nrows, True)]
            return [(_ACC, a["acc_addr"], a["acc_addr"] + nrows, op == Opcode.LOAD_ACC)]
        lo = a["dram_addr"]
        span = lo + (nrows - 1) * a["dram_stride"]
        if op == Opcode.LOAD_SP:
            return [(_DRAM, lo, span + ncols, False),
                    (_SP, a["sp_addr"], a["sp_addr"] + nrows, True)]
        if op == Opcode.LOAD_ACC:
            return [(_DRAM, lo, span + 4 * ncols, False),
                    (_ACC, a["acc_addr"], a["acc_addr"] + nrows, True)]
        row_bytes = ncols * (4 if a["mode"] == StoreMode.INT32 else 1)
        return [(_ACC, a["acc_addr"], a["acc_addr"] + nrows, False),
                (_DRAM, lo, span + row_bytes, True)]
    return []


_TRANSFERS = frozenset((Opcode.LOAD_SP, Opcode.LOAD_ACC, Opcode.STORE))


def conflict(a: list[Access], b: list[Access]) -> tuple[Access, Access] | None:
    """The first pair of overlapping accesses of which at least one writes, or None."""
    for x in a:
        for y in b:
            if (x.space == y.space and (x.write or y.write)
                    and x.lo < y.hi and y.lo < x.hi):
                return x, y
    return None


# -- the model -----------------------------------------------------------------------------

@dataclass
class GoldenResult:
    """Counts of one run, comparable to the RTL counters (:mod:`neuralmatrix.hw.counters`).

    Attributes
    ----------
    insns : int
        Instructions executed, HALT included.
    macs : int
        Sum of ``m * k * n`` over the executed COMPUTEs.
    pwl_evals : int
        Sum of ``nrows * ncols`` over mode-1 STOREs.
    bytes_read : int
        ``insn_bytes_read + load_bytes_read``.
    insn_bytes_read : int
        16 bytes per instruction executed (HALT included). The RTL fetches whole bursts and
        may read ahead of HALT, so its counter can be larger.
    load_bytes_read : int
        Whole bus beats read by loads: ``nrows * beats_per_row * bus_bytes``.
    bytes_written : int
        Bytes stored: ``nrows * ncols`` (int8 modes) or ``4 * nrows * ncols`` (int32).
    estimate : CycleEstimate or None
        :func:`estimate_cycles` of the program, when ``run(..., estimate=True)``.
    """

    insns: int = 0
    macs: int = 0
    pwl_evals: int = 0
    insn_bytes_read: int = 0
    load_bytes_read: int = 0
    bytes_written: int = 0
    estimate: CycleEstimate | None = None

    @property
    def bytes_read(self) -> int:
        return self.insn_bytes_read + self.load_bytes_read

    def counters(self) -> dict[str, int]:
        """The counts under the names of :data:`neuralmatrix.hw.counters.COUNTERS`."""
        return {"insns": self.insns, "macs": self.macs, "pwl_evals": self.pwl_evals,
                "bytes_read": self.bytes_read, "bytes_written": self.bytes_written}


class GoldenModel:
    """Bit-exact model of one accelerator and its external memory.

    Parameters
    ----------
    config : HwConfig
    dram_bytes : int
        Size of the external memory.

    Attributes
    ----------
    dram : np.ndarray of uint8, shape (dram_bytes,)
    sp : np.ndarray of int8, shape (sp_depth, sp_row)
    acc : np.ndarray of int32, shape (acc_depth, cols)
    mult, shift : np.ndarray of int64, shape (cols,)
        Requantization state per lane.
    pwl_header : np.ndarray of int64, shape (pwl_tables, 4)
        ``mode, x0, seg_shift, out_shift`` per table.
    pwl_bp, pwl_k, pwl_b : np.ndarray of int64, shape (pwl_tables, pwl_segments)
    """

    def __init__(self, config: HwConfig, dram_bytes: int):
        if dram_bytes <= 0:
            raise ValueError(f"dram_bytes must be positive, got {dram_bytes}")
        self.config = config
        self.dram = np.zeros(dram_bytes, dtype=np.uint8)
        self.reset()

    def reset(self) -> None:
        """Zero the on-chip state (scratchpad, accumulator, output-path configuration)."""
        c = self.config
        self.sp = np.zeros((c.sp_depth, c.sp_row), dtype=np.int8)
        self.acc = np.zeros((c.acc_depth, c.cols), dtype=np.int32)
        self.mult = np.zeros(c.cols, dtype=np.int64)
        self.shift = np.zeros(c.cols, dtype=np.int64)
        self.pwl_header = np.zeros((c.pwl_tables, 4), dtype=np.int64)
        self.pwl_bp = np.zeros((c.pwl_tables, c.pwl_segments), dtype=np.int64)
        self.pwl_k = np.zeros_like(self.pwl_bp)
        self.pwl_b = np.zeros_like(self.pwl_bp)

    def load_image(self, image: np.ndarray, offset: int = 0) -> None:
        """Copy *image* (bytes or uint8 array) into external memory at *offset*."""
        image = np.frombuffer(bytes(image), np.uint8) if isinstance(image, (bytes, bytearray)) \
            else np.asarray(image, dtype=np.uint8)
        if offset < 0 or offset + image.size > self.dram.size:
            raise ValueError(f"image of {image.size} bytes at {offset} does not fit in "
                             f"{self.dram.size} bytes of external memory")
        self.dram[offset:offset + image.size] = image

    def run(self, program: list[Insn], *, check: bool = True,
            estimate: bool = False) -> GoldenResult:
        """Execute *program* in program order up to its HALT.

        Parameters
        ----------
        program : list of Insn
        check : bool
            :func:`~neuralmatrix.hw.isa.validate` it first (raises ProgramError).
        estimate : bool
            Also fill ``result.estimate`` with :func:`estimate_cycles`.
        """
        fields = field_matrix(program)
        if check:
            validate(program, self.config, dram_bytes=self.dram.size, fields=fields)
        result = GoldenResult()
        if fields is None:
            for insn in program:
                result.insns += 1
                result.insn_bytes_read += INSN_BYTES
                if insn.op == Opcode.HALT:
                    break
                self._execute(insn, result)
        else:
            with _gc_paused():
                self._run_fields(program, fields, result)
        if estimate:
            result.estimate = estimate_cycles(program, self.config, fields=fields)
        return result

    def _run_fields(self, program: list[Insn], fields: np.ndarray, result: GoldenResult) -> None:
        """:meth:`run`'s loop on the pre-decoded fields, with LOAD, COMPUTE and STORE inline:
        the operations of :meth:`_execute`, which takes the rest (configuration, rows or bytes
        out of range, overlapping stored rows, negative fields).

        During the loop the scratchpad is held as float64 and the accumulator as int64 (both
        written back at the end, and around every instruction :meth:`_execute` takes).
        COMPUTE multiplies in float64: products and sums of int8 operands over ``k < 2**16``
        are integers below ``2**31`` in magnitude, so exact. The int64 accumulator holds the
        int32 value modulo ``2**32``; it is wrapped (as
        :func:`~neuralmatrix.hw.arith.matmul_int32` wraps) whenever it is read, and every
        ``2**20`` accumulations, so every int64 and float64 sum stays exact.
        """
        cfg = self.config
        dram = self.dram
        sp_f = self.sp.astype(np.float64)
        acc64 = self.acc.astype(np.int64)
        size, sp_depth, sp_row, acc_depth, cols = (dram.size, cfg.sp_depth, cfg.sp_row,
                                                   cfg.acc_depth, cfg.cols)
        bus = cfg.bus_bytes
        ws = cfg.dataflow is Dataflow.WS
        mult, shift = self.mult, self.shift
        LOAD_SP, LOAD_ACC, COMPUTE, STORE, HALT = (int(Opcode.LOAD_SP), int(Opcode.LOAD_ACC),
                                                   int(Opcode.COMPUTE), int(Opcode.STORE),
                                                   int(Opcode.HALT))
        INT8, INT32 = int(StoreMode.INT8), int(StoreMode.INT32)
        CFG_REQUANT = int(Opcode.CFG_REQUANT)
        requant = None                  # _requant_terms of the current lane configuration

        def write_back():
            self.sp[...] = sp_f
            self.acc[...] = acc64.astype(np.int32)          # wraps modulo 2**32

        def general(i):
            nonlocal held, requant
            requant = None
            write_back()
            held = False                # if it raises, the state is what _execute left
            self._execute(program[i], result)
            sp_f[...] = self.sp
            acc64[...] = self.acc
            held = True

        # Negative fields (no valid program has them) take the general path.
        odd = ((fields[:, 5:] < 0).any(axis=1) & (fields[:, 0] <= STORE)).tolist()
        executed = 0
        macs = load_bytes = 0
        unwrapped = 0                   # accumulations since acc64 was last wrapped
        held = True                     # sp_f / acc64 hold the state
        try:
            for i, row in enumerate(fields.tolist()):
                executed += 1
                op = row[0]
                if op == COMPUTE:
                    a0, b0, c0, m, k, n, accumulate = row[5:12]
                    if m == 0 or k == 0 or n == 0:
                        continue
                    if (a0 + (m if ws else k) > sp_depth or b0 + k > sp_depth
                            or c0 + m > acc_depth or (k if ws else m) > sp_row or n > cols
                            or odd[i]):
                        general(i)
                        continue
                    a = sp_f[a0:a0 + m, :k] if ws else sp_f[a0:a0 + k, :m].T
                    p = a @ sp_f[b0:b0 + k, :n]
                    if accumulate:
                        c = acc64[c0:c0 + m, :n]
                        np.add(c, p, out=c, casting="unsafe")
                        unwrapped += 1
                        if unwrapped == 1 << 20:
                            acc64[...] = acc64.astype(np.int32)
                            unwrapped = 0
                    else:
                        acc64[c0:c0 + m, :n] = p
                    macs += m * k * n
                elif op == LOAD_SP:
                    s0, nrows, ncols, addr, stride = row[5:10]
                    if nrows == 0:
                        continue
                    if (s0 + nrows > sp_depth or not 0 < ncols <= sp_row
                            or addr + (nrows - 1) * stride + ncols > size or odd[i]):
                        general(i)
                        continue
                    sp_f[s0:s0 + nrows, :ncols] = np.ndarray((nrows, ncols), np.int8, dram,
                                                             addr, (stride, 1))
                    if ncols < sp_row:
                        sp_f[s0:s0 + nrows, ncols:] = 0
                    load_bytes += nrows * bus
                elif op == STORE:
                    a0, nrows, ncols, addr, stride, mode, table = row[5:12]
                    row_bytes = 4 * ncols if mode == INT32 else ncols
                    if (nrows == 0 or a0 + nrows > acc_depth or not 0 < ncols <= cols
                            or nrows > 1 and stride < row_bytes
                            or addr + (nrows - 1) * stride + row_bytes > size or odd[i]):
                        general(i)
                        continue
                    if mode != INT32:
                        if requant is None:
                            requant = _requant_terms(mult, shift)
                        if ncols > requant[0]:
                            general(i)              # requantize raises for those lanes
                            continue
                    x = acc64[a0:a0 + nrows, :ncols].astype(np.int32)
                    if mode == INT32:
                        np.ndarray((nrows, ncols), "<i4", dram, addr, (stride, 4))[...] = x
                    else:
                        # requantize: sat(round_shift(acc * mult, shift)), half up
                        x = (x * mult[:ncols] + requant[1][:ncols]) >> shift[:ncols]
                        if mode == INT8:
                            y = np.clip(x, -128, 127)       # sat8(sat16(.)) = sat8(.)
                        else:
                            x = np.clip(x, INT16_MIN, INT16_MAX)
                            pmode, x0, seg_shift, out_shift = self.pwl_header[table].tolist()
                            y = pwl_eval(x, pmode, self.pwl_bp[table], self.pwl_k[table],
                                         self.pwl_b[table], x0, seg_shift, out_shift)
                            result.pwl_evals += nrows * ncols
                        np.ndarray((nrows, ncols), np.int8, dram, addr, (stride, 1))[...] = y
                    result.bytes_written += nrows * row_bytes
                elif op == HALT:
                    break
                elif op == LOAD_ACC:
                    r0, nrows, ncols, addr, stride = row[5:10]
                    if nrows == 0:
                        continue
                    if (r0 + nrows > acc_depth or not 0 < ncols <= cols
                            or addr + (nrows - 1) * stride + 4 * ncols > size or odd[i]):
                        general(i)
                        continue
                    acc64[r0:r0 + nrows, :ncols] = np.ndarray((nrows, ncols), "<i4", dram,
                                                              addr, (stride, 4))
                    if ncols < cols:
                        acc64[r0:r0 + nrows, ncols:] = 0
                    load_bytes += nrows * -(-4 * ncols // bus) * bus
                elif op == CFG_REQUANT:
                    lane, count, m_, s_ = row[5:9]
                    mult[lane:lane + count] = m_
                    shift[lane:lane + count] = s_
                    requant = None
                else:
                    self._execute(program[i], result)        # configuration: no sp / acc
        finally:
            if held:
                write_back()
        result.insns += executed
        result.insn_bytes_read += executed * INSN_BYTES
        result.macs += macs
        result.load_bytes_read += load_bytes

    # -- instructions ---------------------------------------------------------------------

    def _execute(self, insn: Insn, result: GoldenResult) -> None:
        op = insn.op
        if op == Opcode.LOAD_SP:
            self._load_sp(insn, result)
        elif op == Opcode.LOAD_ACC:
            self._load_acc(insn, result)
        elif op == Opcode.COMPUTE:
            self._compute(insn, result)
        elif op == Opcode.STORE:
            self._store(insn, result)
        elif op == Opcode.CFG_REQUANT:
            self.mult[insn.lane:insn.lane + insn.count] = insn.mult
            self.shift[insn.lane:insn.lane + insn.count] = insn.shift
        elif op == Opcode.CFG_PWL_SEG:
            t, s = insn.table, insn.seg
            self.pwl_bp[t, s], self.pwl_k[t, s], self.pwl_b[t, s] = insn.bp, insn.k, insn.b
        elif op == Opcode.CFG_PWL_HDR:
            self.pwl_header[insn.table] = (insn.mode, insn.x0, insn.seg_shift, insn.out_shift)
        else:
            raise ProgramError([f"{op.name}: not executable"])

    def _row_index(self, insn: Insn, row_bytes: int) -> np.ndarray:
        """Byte addresses (nrows, row_bytes) of a transfer's rows, bounds-checked."""
        start = insn.dram_addr + np.arange(insn.nrows, dtype=np.int64)[:, None] * insn.dram_stride
        idx = start + np.arange(row_bytes, dtype=np.int64)[None, :]
        if idx.size and (idx.min() < 0 or idx.max() >= self.dram.size):
            raise ProgramError([f"{insn.op.name}: bytes {idx.min()}..{idx.max()} outside "
                                f"external memory of {self.dram.size} bytes"])
        return idx

    def _load_sp(self, insn: Insn, result: GoldenResult) -> None:
        if insn.nrows == 0:
            return
        rows = slice(insn.sp_addr, insn.sp_addr + insn.nrows)
        self.sp[rows] = 0
        self.sp[rows, :insn.ncols] = self.dram[self._row_index(insn, insn.ncols)].view(np.int8)
        result.load_bytes_read += insn.nrows * self.config.bus_bytes

    def _load_acc(self, insn: Insn, result: GoldenResult) -> None:
        if insn.nrows == 0:
            return
        raw = np.ascontiguousarray(self.dram[self._row_index(insn, 4 * insn.ncols)])
        rows = slice(insn.acc_addr, insn.acc_addr + insn.nrows)
        self.acc[rows] = 0
        self.acc[rows, :insn.ncols] = raw.view("<i4")
        beats = -(-4 * insn.ncols // self.config.bus_bytes)
        result.load_bytes_read += insn.nrows * beats * self.config.bus_bytes

    def _compute(self, insn: Insn, result: GoldenResult) -> None:
        m, k, n = insn.m, insn.k, insn.n
        if 0 in (m, k, n):
            return
        if self.config.dataflow is Dataflow.WS:
            a = self.sp[insn.a_addr:insn.a_addr + m, :k]
        else:
            a = self.sp[insn.a_addr:insn.a_addr + k, :m].T
        b = self.sp[insn.b_addr:insn.b_addr + k, :n]
        c = self.acc[insn.c_addr:insn.c_addr + m, :n]
        self.acc[insn.c_addr:insn.c_addr + m, :n] = matmul_int32(
            a, b, c if insn.accumulate else None)
        result.macs += m * k * n

    def _store(self, insn: Insn, result: GoldenResult) -> None:
        nrows, ncols = insn.nrows, insn.ncols
        if nrows == 0:
            return
        acc = self.acc[insn.acc_addr:insn.acc_addr + nrows, :ncols]
        mode = insn.mode
        if mode == StoreMode.INT32:
            data = np.ascontiguousarray(acc.astype("<i4")).view(np.uint8).reshape(nrows, 4 * ncols)
        else:
            x = requantize(acc, self.mult[:ncols], self.shift[:ncols], bits=16)
            if mode == StoreMode.INT8:
                y = saturate(x, 8)
            else:
                t = insn.table
                pmode, x0, seg_shift, out_shift = (int(v) for v in self.pwl_header[t])
                y = pwl_eval(x, pmode, self.pwl_bp[t], self.pwl_k[t], self.pwl_b[t],
                             x0, seg_shift, out_shift)
                result.pwl_evals += nrows * ncols
            data = y.astype(np.int8).view(np.uint8)
        idx = self._row_index(insn, data.shape[1])
        flat_idx, flat = idx.ravel(), data.ravel()
        if nrows > 1 and insn.dram_stride < data.shape[1]:
            # Overlapping rows: the last row written wins, as in the hardware.
            _, first_rev = np.unique(flat_idx[::-1], return_index=True)
            keep = flat_idx.size - 1 - first_rev
            flat_idx, flat = flat_idx[keep], flat[keep]
        self.dram[flat_idx] = flat
        result.bytes_written += data.size


def _requant_terms(mult: np.ndarray, shift: np.ndarray) -> tuple[int, np.ndarray]:
    """(lanes before the first one :func:`~neuralmatrix.hw.arith.requantize` rejects, the
    rounding term ``2**(shift - 1)`` (0 for shift 0) of every lane)."""
    bad = (mult < 0) | (mult >= 1 << MULT_BITS) | (shift < 0) | (shift > MAX_SHIFT)
    good = int(np.argmax(bad)) if bad.any() else len(mult)
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.clip(shift - 1, 0, 62)), 0)
    return good, half


# -- races ---------------------------------------------------------------------------------

def find_races(program: list[Insn], *, config: HwConfig | None = None) -> list[str]:
    """Pairs of instructions of different units that may run concurrently and conflict.

    Happens-before comes from the token protocol (:func:`~neuralmatrix.hw.isa.trace_tokens`):
    X happens before Y when a chain of tokens orders X's completion before Y's start. Two
    unordered instructions race when one writes an on-chip row or external byte range the
    other reads or writes (:func:`footprint`). Raises ProgramError if the program deadlocks.

    Parameters
    ----------
    program : list of Insn
    config : HwConfig, optional
        Gives the dataflow (exact COMPUTE footprints) and the instruction-queue depth.
    """
    trace = trace_tokens(program, queue_depth=config.queue_depth if config else None)
    if trace.deadlocked:
        raise ProgramError(["deadlock: " + "; ".join(trace.blocked)])
    members: dict[Unit, list[int]] = {u: [] for u in Unit}
    for i, insn in enumerate(program):
        if trace.unit_index[i] >= 0:
            members[insn.unit].append(i)
    fps = [footprint(insn, config) for insn in program]
    races = []
    for u in Unit:
        for v in Unit:
            if v <= u or not members[u] or not members[v]:
                continue
            qv = members[v]
            # S(Y)[u] is non-decreasing along v's queue.
            col = np.array([trace.clock[y][u] for y in qv])
            busy_v = np.array([j for j, y in enumerate(qv) if fps[y]], dtype=np.int64)
            for iu, x in enumerate(members[u]):
                if not fps[x]:
                    continue
                lo = trace.clock[x][v] + 1                   # Y at or before this precede X
                hi = int(np.searchsorted(col, iu, side="left"))  # Y from here follow X
                if lo >= hi:
                    continue
                for j in busy_v[np.searchsorted(busy_v, lo):np.searchsorted(busy_v, hi)]:
                    y = qv[j]
                    pair = conflict(fps[x], fps[y])
                    if pair:
                        a, b = sorted((x, y))
                        pa, pb = (pair if a == x else pair[::-1])
                        races.append((a, b, f"insn {a} {program[a].op.name} ({program[a].unit.name}) and "
                                     f"insn {b} {program[b].op.name} ({program[b].unit.name}) are "
                                     f"not ordered by tokens: insn {a} {pa}, insn {b} {pb}"))
    return [msg for _, _, msg in sorted(races)]


# -- cycle estimate ------------------------------------------------------------------------

#: Costs of the cycle estimate, in cycles. Fitted to the RTL cycle counters (digits CNN layers
#: and GEMMs from 8x8x8 to 64x256x64, at 8x8 and 16x16 in both dataflows; every layer within
#: 5%, tests/test_estimate_rtl.py).
CYCLE_COSTS: dict[str, int] = {
    "fetch_start": 15,         # after dram_latency, until the first instruction reaches its unit
    "dispatch": 2,             # fetch -> unit queue -> unit
    "load_overhead": 2,        # accept + retire of a load (beyond dram_latency and beats)
    "load_fetch_share": 2,     # per load and instruction beat: fetch bursts share the read channel
    "compute_overhead": 1,     # per compute beyond its beats
    "compute_latency": 6,      # operand read + writeback beyond the array fill (rows + cols)
    "store_latency": 17,       # accumulator read + output path + write request
    "cfg": 1,                  # CFG_* instructions
    "fence": 1,                # zero-sized instructions
    "halt": 1,                 # from the last completion to done
}


@dataclass
class CycleEstimate:
    """Result of :func:`estimate_cycles`.

    Attributes
    ----------
    total : int
        Estimated cycles from start to done.
    start, end : np.ndarray of int64
        Per instruction: cycle it starts executing and cycle it completes (pushes its
        tokens); -1 for HALT.
    busy : dict of str to int
        Cycles each unit is occupied.
    macs : int
    peak_macs_per_cycle : int
    """

    total: int
    start: np.ndarray
    end: np.ndarray
    busy: dict[str, int] = field(default_factory=dict)
    macs: int = 0
    peak_macs_per_cycle: int = 1

    @property
    def occupancy(self) -> float:
        """Executed MACs over ``total * rows * cols`` (the occupancy of the figures contract,
        :mod:`neuralmatrix.sw.macs`; zeros the program multiplies count too)."""
        return self.macs / max(1, self.total * self.peak_macs_per_cycle)


def _cost(insn: Insn, config: HwConfig, costs: dict[str, int]) -> tuple[int, int]:
    """(occupancy, extra latency) of *insn*: the unit is free after the first, the instruction
    completes after both."""
    op, B = insn.op, config.bus_bytes
    if op in (Opcode.LOAD_SP, Opcode.LOAD_ACC):
        if insn.nrows == 0:
            return costs["fence"], 0
        beats = 1 if op == Opcode.LOAD_SP else -(-4 * insn.ncols // B)
        return (config.dram_latency + insn.nrows * beats + costs["load_overhead"]
                + costs["load_fetch_share"] * max(1, INSN_BYTES // B), 0)
    if op == Opcode.COMPUTE:
        if 0 in (insn.m, insn.k, insn.n):
            return costs["fence"], 0
        if config.dataflow is Dataflow.WS:
            occupancy = max(insn.m, config.rows)        # weight preload hides behind m rows
        else:
            occupancy = max(insn.k, config.sp_row)      # drain hides behind k beats
        return (occupancy + costs["compute_overhead"],
                config.rows + config.cols + costs["compute_latency"])
    if op == Opcode.STORE:
        if insn.nrows == 0:
            return costs["fence"], 0
        beats = -(-4 * insn.ncols // B) if insn.mode == StoreMode.INT32 else 1
        return insn.nrows * beats + costs["store_latency"], 0
    return costs["cfg"], 0


def estimate_cycles(program: list[Insn], config: HwConfig, *,
                    costs: dict[str, int] | None = None,
                    fields: np.ndarray | None = None) -> CycleEstimate:
    """Discrete-event schedule of *program* over instructions.

    Fetch delivers one instruction every ``max(1, 16 // bus_bytes)`` cycles after
    ``dram_latency``, and stalls while the target unit's queue holds ``queue_depth``
    instructions. Each unit takes its instructions in order; one starts when the unit is
    free, it has been fetched, and the tokens it pops were pushed (a token is available when
    its pushing instruction completes). Costs come from :data:`CYCLE_COSTS` (override
    entries with *costs*). *fields*: the program's :func:`~neuralmatrix.hw.isa.field_matrix`,
    when the caller has it already.
    """
    costs = {**CYCLE_COSTS, **(costs or {})}
    fast = _estimate_in_order(program, config, costs, fields)
    return fast if fast is not None else _estimate_any_order(program, config, costs)


def _costs(m: np.ndarray, config: HwConfig, costs: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_cost` of every row of a :func:`~neuralmatrix.hw.isa.field_matrix`."""
    B = config.bus_bytes
    ops = m[:, 0]
    occ = np.full(len(m), costs["cfg"], dtype=np.int64)
    lat = np.zeros(len(m), dtype=np.int64)
    col = {(op, name): m[:, field_column(op, name)] for op in Opcode for name in _COST_FIELDS[op]}
    for op in (Opcode.LOAD_SP, Opcode.LOAD_ACC, Opcode.STORE):
        nrows, ncols = col[(op, "nrows")], col[(op, "ncols")]
        load = (config.dram_latency + costs["load_overhead"]
                + costs["load_fetch_share"] * max(1, INSN_BYTES // B))
        if op == Opcode.LOAD_SP:
            t = load + nrows
        elif op == Opcode.LOAD_ACC:
            t = load + nrows * -(-4 * ncols // B)
        else:
            beats = np.where(col[(op, "mode")] == StoreMode.INT32, -(-4 * ncols // B), 1)
            t = nrows * beats + costs["store_latency"]
        sel = ops == op
        occ[sel] = np.where(nrows == 0, costs["fence"], t)[sel]
    sel = ops == Opcode.COMPUTE
    mm, k, n = col[(Opcode.COMPUTE, "m")], col[(Opcode.COMPUTE, "k")], col[(Opcode.COMPUTE, "n")]
    if config.dataflow is Dataflow.WS:
        occupancy = np.maximum(mm, config.rows)
    else:
        occupancy = np.maximum(k, config.sp_row)
    empty = (mm == 0) | (k == 0) | (n == 0)
    occ[sel] = np.where(empty, costs["fence"], occupancy + costs["compute_overhead"])[sel]
    lat[sel] = np.where(empty, 0, config.rows + config.cols + costs["compute_latency"])[sel]
    return occ, lat


_COST_FIELDS = {Opcode.LOAD_SP: ("nrows", "ncols"), Opcode.LOAD_ACC: ("nrows", "ncols"),
                Opcode.STORE: ("nrows", "ncols", "mode"), Opcode.COMPUTE: ("m", "k", "n")}
_COST_FIELDS.update({op: () for op in Opcode if op not in _COST_FIELDS})


def _estimate_in_order(program: list[Insn], config: HwConfig, costs: dict[str, int],
                       fields: np.ndarray | None = None) -> CycleEstimate | None:
    """:func:`estimate_cycles` in one pass in program order; None (use the general schedule)
    when some instruction pops a token that no earlier instruction pushed.

    Every time the schedule assigns depends only on earlier instructions of the same unit,
    earlier fetches and the pushers of the tokens taken, so computing them in program order
    gives the same schedule whenever each pusher comes before its popper. The n-th pop of a
    token queue takes the n-th push, so who waits for whom is known before the pass.
    """
    m = field_matrix(program) if fields is None else fields
    if m is None:
        return None
    n = len(m)
    ops = m[:, 0]
    halts = np.flatnonzero(ops == Opcode.HALT)
    stop = int(halts[0]) if len(halts) else n
    interval = max(1, INSN_BYTES // config.bus_bytes)
    occ, lat = _costs(m[:stop], config, costs)
    unit = _UNIT_CODE[ops[:stop]]
    flags = m[:stop, 1:5].astype(bool)
    # The instruction whose token each pop takes (-1: no pop), per pop flag.
    src = np.full((stop, 2), -1, dtype=np.int64)
    for u, v in ((0, 1), (1, 0), (1, 2), (2, 1)):        # token queue u -> v
        pushers = np.flatnonzero(flags[:, 3 if v > u else 2] & (unit == u))
        poppers = np.flatnonzero(flags[:, 0 if u < v else 1] & (unit == v))
        if len(poppers) > len(pushers) or (pushers[:len(poppers)] > poppers).any():
            return None
        src[poppers, 0 if u < v else 1] = pushers[:len(poppers)]
    # Fetch waits until the instruction queue_depth places earlier in the same unit started.
    wait = np.full(stop, -1, dtype=np.int64)
    qd = config.queue_depth
    for u in range(3):
        idx = np.flatnonzero(unit == u)
        if len(idx) > qd:
            wait[idx[qd:]] = idx[:len(idx) - qd]
    dispatch = costs["dispatch"]
    fetch0 = config.dram_latency + costs["fetch_start"] - interval
    start_a, end_a, fetch_t = _SCHEDULE_CACHE.get(
        (unit, wait, src, occ, lat), (n, interval, dispatch, fetch0),
        lambda: _in_order_schedule(n, stop, unit, wait, src, occ, lat, interval, dispatch,
                                   fetch0))
    computes = m[:stop][ops[:stop] == Opcode.COMPUTE]
    macs = int((computes[:, field_column(Opcode.COMPUTE, "m")]
                * computes[:, field_column(Opcode.COMPUTE, "k")]
                * computes[:, field_column(Opcode.COMPUTE, "n")]).sum())
    total = int(max(int(end_a.max(initial=0)), int(fetch_t))) + costs["halt"]
    busy = {u.name: int(occ[unit == u].sum()) for u in Unit}
    return CycleEstimate(total=total, start=start_a.copy(), end=end_a.copy(), busy=busy,
                         macs=macs, peak_macs_per_cycle=config.rows * config.cols)


class DigestCache:
    """Results of a pure function of integer arrays (and a few scalars), by a digest of them:
    the kernels of one shape share their token structure and their schedule. Bounded; the
    oldest entry goes first. Cached values must not be changed (return copies, or read-only
    arrays)."""

    def __init__(self, size: int = 4096):
        self.size = size
        self.entries: dict[bytes, object] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()

    def get(self, arrays, scalars, compute):
        h = hashlib.blake2b(repr(tuple(scalars)).encode(), digest_size=32)
        for a in arrays:
            a = np.ascontiguousarray(a, dtype=np.int64)
            h.update(repr(a.shape).encode())
            h.update(a.tobytes())
        key = h.digest()
        value = self.entries.get(key)
        if value is None:
            value = compute()
            if len(self.entries) >= self.size:
                del self.entries[next(iter(self.entries))]
            self.entries[key] = value
        return value


#: :func:`_in_order_schedule` results (kernels of one shape share one schedule).
_SCHEDULE_CACHE = DigestCache()


def _in_order_schedule(n, stop, unit, wait, src, occ, lat, interval, dispatch, fetch_t):
    """The pass of :func:`_estimate_in_order` over the first *stop* of *n* instructions (unit,
    fetch wait, token sources, occupancy and latency of each): ``(start, end, fetch time)``."""
    start = [-1] * n
    end = [-1] * n
    free = [0, 0, 0]
    last_end = [0, 0, 0]
    for i, u, w, s1, s2, o, extra in zip(range(stop), unit.tolist(), wait.tolist(),
                                          src[:, 0].tolist(), src[:, 1].tolist(), occ.tolist(),
                                          lat.tolist()):
        t = fetch_t + interval
        if w >= 0 and start[w] > t:
            t = start[w]
        fetch_t = t
        t += dispatch
        if free[u] > t:
            t = free[u]
        if s1 >= 0 and end[s1] > t:
            t = end[s1]
        if s2 >= 0 and end[s2] > t:
            t = end[s2]
        e = t + o + extra
        if last_end[u] > e:
            e = last_end[u]
        start[i] = t
        end[i] = last_end[u] = e
        free[u] = t + o
    if stop < n:
        fetch_t += interval                 # HALT is fetched too
    start_a, end_a = np.array(start, dtype=np.int64), np.array(end, dtype=np.int64)
    start_a.flags.writeable = end_a.flags.writeable = False
    return start_a, end_a, fetch_t


def _estimate_any_order(program: list[Insn], config: HwConfig,
                        costs: dict[str, int]) -> CycleEstimate:
    """:func:`estimate_cycles` for any token order: event rounds until nothing can start."""
    n = len(program)
    stop = next((i for i, insn in enumerate(program) if insn.op == Opcode.HALT), n)
    interval = max(1, INSN_BYTES // config.bus_bytes)
    queues: dict[Unit, list[int]] = {u: [] for u in Unit}
    for i in range(stop):
        queues[program[i].unit].append(i)
    pos = {i: k for q in queues.values() for k, i in enumerate(q)}
    arrive = np.full(n, -1, dtype=np.int64)
    start = np.full(n, -1, dtype=np.int64)
    end = np.full(n, -1, dtype=np.int64)
    pushed: dict[tuple[Unit, Unit], list[int]] = {
        (a, b): [] for a in Unit for b in Unit if abs(a - b) == 1}
    popped = {q: 0 for q in pushed}
    nxt = {u: 0 for u in Unit}
    free = {u: 0 for u in Unit}
    last_end = {u: 0 for u in Unit}
    busy = {u.name: 0 for u in Unit}
    pc, fetch_t = 0, config.dram_latency + costs["fetch_start"] - interval
    macs = 0
    progress = True
    while progress:
        progress = False
        while pc <= min(stop, n - 1):
            t = fetch_t + interval
            if pc < stop:
                u = program[pc].unit
                k = pos[pc] - config.queue_depth
                if k >= 0:
                    waiting_for = queues[u][k]
                    if start[waiting_for] < 0:
                        break
                    t = max(t, int(start[waiting_for]))
            arrive[pc] = fetch_t = t
            pc += 1
            progress = True
        for u in Unit:
            while nxt[u] < len(queues[u]):
                i = queues[u][nxt[u]]
                if arrive[i] < 0:
                    break
                insn = program[i]
                ready = [free[u], int(arrive[i]) + costs["dispatch"]]
                takes = []
                for flag, v in (("pop_prev", u - 1), ("pop_next", u + 1)):
                    if getattr(insn, flag) and 0 <= v <= 2:
                        q = (Unit(v), u)
                        if popped[q] >= len(pushed[q]):
                            break
                        ready.append(pushed[q][popped[q]])
                        takes.append(q)
                else:
                    t0 = max(ready)
                    occupancy, latency = _cost(insn, config, costs)
                    start[i] = t0
                    end[i] = last_end[u] = max(t0 + occupancy + latency, last_end[u])
                    free[u] = t0 + occupancy
                    busy[u.name] += occupancy
                    for q in takes:
                        popped[q] += 1
                    for flag, v in (("push_prev", u - 1), ("push_next", u + 1)):
                        if getattr(insn, flag) and 0 <= v <= 2:
                            pushed[(u, Unit(v))].append(int(end[i]))
                    if insn.op == Opcode.COMPUTE:
                        macs += insn.m * insn.k * insn.n
                    nxt[u] += 1
                    progress = True
                    continue
                break
    if pc <= min(stop, n - 1) or any(nxt[u] < len(queues[u]) for u in Unit):
        raise ProgramError(["deadlock: the cycle estimate could not schedule every instruction "
                            "(see neuralmatrix.hw.isa.validate)"])
    total = int(max([int(end.max(initial=0)), int(fetch_t)])) + costs["halt"]
    return CycleEstimate(total=total, start=start, end=end, busy=busy, macs=macs,
                         peak_macs_per_cycle=config.rows * config.cols)
