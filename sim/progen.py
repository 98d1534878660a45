"""Random valid programs with their memory images, for RTL-against-golden regressions.

:func:`random_program` draws a program of a few tens of instructions that exercises every
instruction and corner the ISA has: GEMMs of random shapes in the configured dataflow with
accumulate chains and int32 bias preloads, loads with broadcast (stride 0), padded strides
and partial rows, requantization with extreme multipliers and shifts, PWL tables in both
modes, stores in all three modes (overlapping rows included), zero-sized transfers as fences
and round trips through external memory. Instructions are emitted in program order through
:class:`~neuralmatrix.sw.gemm_program.ProgramBuilder`, which adds the dependency tokens; every
program is checked with :func:`~neuralmatrix.hw.isa.validate` and
:func:`~neuralmatrix.sw.golden.find_races` before it is returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuralmatrix.hw.arith import INT16_MAX, INT16_MIN, MAX_SHIFT
from neuralmatrix.hw.isa import INSN_BYTES, Insn, Opcode, StoreMode, assemble_binary, validate
from neuralmatrix.hw.params import Dataflow, HwConfig
from neuralmatrix.sw.gemm_program import ProgramBuilder
from neuralmatrix.sw.golden import GoldenModel, GoldenResult, find_races

__all__ = ["ProgramCase", "random_program"]

_I32_EDGES = np.array([-2**31, -2**31 + 1, -1, 0, 1, 2**31 - 1], dtype=np.int64)
_MULT_EDGES = (0, 1, 65535)
_SHIFT_EDGES = (0, 1, 31, MAX_SHIFT)


@dataclass
class ProgramCase:
    """One random program and its external memory.

    Attributes
    ----------
    config : HwConfig
    program : list of Insn
    image : np.ndarray of uint8
        Initial external memory, ``dram_bytes`` long, the program's binary at ``insn_addr``.
    insn_addr : int
    outputs : list of (int, int)
        ``(addr, nbytes)`` of every byte range the program's STOREs write.
    """

    config: HwConfig
    program: list[Insn]
    image: np.ndarray
    insn_addr: int
    outputs: list[tuple[int, int]]

    @property
    def dram_bytes(self) -> int:
        return int(self.image.size)

    def golden(self) -> tuple[np.ndarray, GoldenResult]:
        """Final external memory and counts from :class:`~neuralmatrix.sw.golden.GoldenModel`."""
        model = GoldenModel(self.config, self.dram_bytes)
        model.load_image(self.image)
        result = model.run(self.program)
        return model.dram, result

    def output_bytes(self, dram: np.ndarray) -> list[np.ndarray]:
        """The bytes of each output range in *dram*."""
        return [np.asarray(dram[a:a + n]) for a, n in self.outputs]


class _Gen:
    """State of one generation: memory allocator, builder and random source."""

    def __init__(self, config: HwConfig, rng: np.random.Generator, dram_bytes: int,
                 max_insns: int):
        self.c = config
        self.rng = rng
        self.B = config.bus_bytes
        self.max_insns = max_insns
        align = max(INSN_BYTES, self.B)
        self.insn_addr = align * int(rng.integers(0, 4))
        self.next_free = -(-(self.insn_addr + max_insns * INSN_BYTES) // self.B) * self.B
        self.dram_bytes = dram_bytes
        self.image = rng.integers(0, 256, dram_bytes, dtype=np.uint8)
        self.builder = ProgramBuilder(config)
        self.outputs: list[tuple[int, int]] = []
        self.written: list[tuple[int, int]] = []      # output buffers already stored to

    # -- helpers ----------------------------------------------------------------------------

    def pick(self, *choices):
        return choices[int(self.rng.integers(len(choices)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def alloc(self, nbytes: int) -> int:
        addr = self.next_free
        self.next_free = addr + -(-max(nbytes, 1) // self.B) * self.B + self.B * int(self.rng.integers(0, 2))
        if self.next_free > self.dram_bytes:
            raise MemoryError("out of external memory")
        return addr

    def emit(self, op, **args) -> None:
        self.builder.emit(Insn(op, **args))

    def stride(self, row_bytes: int, nrows: int) -> int:
        """Row stride: 0 (broadcast), tight, or padded; always bus aligned."""
        tight = -(-row_bytes // self.B) * self.B
        if nrows > 1 and self.chance(0.15):
            return 0
        return tight + self.B * int(self.pick(0, 0, 1, 3))

    def int8_buffer(self, nrows: int, ncols: int, stride: int) -> int:
        """A DRAM buffer of int8 rows with extremes sprinkled in; returns its address."""
        span = (nrows - 1) * stride + ncols
        addr = self.alloc(span)
        region = self.image[addr:addr + span]
        mask = self.rng.random(span) < 0.15
        region[mask] = self.rng.choice(np.array([0x80, 0x7F, 0xFF, 0x00], np.uint8), int(mask.sum()))
        return addr

    def int32_buffer(self, nrows: int, ncols: int, stride: int) -> int:
        span = (nrows - 1) * stride + 4 * ncols
        addr = self.alloc(span)
        for r in range(nrows):
            vals = self.rng.integers(-2**31, 2**31, ncols, dtype=np.int64)
            mask = self.rng.random(ncols) < 0.3
            vals[mask] = self.rng.choice(_I32_EDGES, int(mask.sum()))
            row = addr + r * stride
            self.image[row:row + 4 * ncols] = vals.astype("<i4").view(np.uint8)
        return addr

    # -- blocks -----------------------------------------------------------------------------

    def load_sp(self, sp_addr: int, nrows: int, ncols: int) -> None:
        """Fill scratchpad rows, sometimes in two loads, sometimes with short rows or
        from data a STORE wrote earlier."""
        c = self.c
        if nrows == 0:
            return
        if nrows > 1 and self.chance(0.25):
            split = int(self.rng.integers(1, nrows))
            self.load_sp(sp_addr, split, ncols)
            self.load_sp(sp_addr + split, nrows - split, ncols)
            return
        width = ncols if self.chance(0.8) else int(self.rng.integers(1, c.sp_row + 1))
        if self.written and self.chance(0.15):
            addr, nbytes = self.written[int(self.rng.integers(len(self.written)))]
            stride = self.pick(0, self.B)
            if (nrows - 1) * stride + width <= nbytes:
                self.emit(Opcode.LOAD_SP, sp_addr=sp_addr, nrows=nrows, ncols=width,
                          dram_addr=addr, dram_stride=stride)
                return
        stride = self.stride(width, nrows)
        addr = self.int8_buffer(nrows, width, stride)
        self.emit(Opcode.LOAD_SP, sp_addr=sp_addr, nrows=nrows, ncols=width, dram_addr=addr,
                  dram_stride=stride)

    def gemm(self) -> None:
        """Operand loads, an accumulate chain (optionally on a bias), and stores."""
        c, rng = self.c, self.rng
        ws = c.dataflow is Dataflow.WS
        max_long = max(1, min(40, c.sp_depth // 4))
        m = int(rng.integers(1, max_long + 1)) if ws else int(rng.integers(1, c.rows + 1))
        k = int(rng.integers(1, c.rows + 1)) if ws else int(rng.integers(1, max_long + 1))
        m = min(m, c.acc_depth)
        n = int(rng.integers(1, c.cols + 1))
        a_rows, a_cols = (m, k) if ws else (k, m)
        c_addr = int(rng.integers(0, c.acc_depth - m + 1))
        chain = int(rng.integers(1, 4))
        if self.chance(0.3):
            nrows = m
            ncols = int(rng.integers(1, c.cols + 1))
            stride = self.stride(4 * ncols, nrows)
            addr = self.int32_buffer(nrows, ncols, stride)
            self.emit(Opcode.LOAD_ACC, acc_addr=c_addr, nrows=nrows, ncols=ncols, dram_addr=addr,
                      dram_stride=stride)
            first_acc = 1
        else:
            first_acc = 0
        for step in range(chain):
            a_sp = int(rng.integers(0, c.sp_depth - a_rows + 1))
            b_sp = int(rng.integers(0, c.sp_depth - k + 1))
            if step == 0 or self.chance(0.6):
                self.load_sp(a_sp, a_rows, a_cols)
                self.load_sp(b_sp, k, n)
            else:                                  # reuse the previous operands
                a_sp, b_sp = prev
            prev = (a_sp, b_sp)
            self.emit(Opcode.COMPUTE, a_addr=a_sp, b_addr=b_sp, c_addr=c_addr, m=m, k=k, n=n,
                      accumulate=first_acc if step == 0 else 1)
        for _ in range(int(rng.integers(1, 3))):
            self.store(c_addr, m)

    def store(self, acc_addr: int, rows: int) -> None:
        c, rng = self.c, self.rng
        r0 = int(rng.integers(0, rows))
        nrows = int(rng.integers(1, rows - r0 + 1))
        ncols = int(rng.integers(1, c.cols + 1))
        mode = int(rng.integers(0, 3))
        row_bytes = ncols * (4 if mode == StoreMode.INT32 else 1)
        stride = self.stride(row_bytes, nrows)
        if stride and self.chance(0.1) and row_bytes > self.B:
            stride = self.B                         # overlapping rows: the last one wins
        span = (nrows - 1) * stride + row_bytes
        addr = self.alloc(span)
        self.emit(Opcode.STORE, acc_addr=acc_addr + r0, nrows=nrows, ncols=ncols, dram_addr=addr,
                  dram_stride=stride, mode=mode, table=int(rng.integers(0, c.pwl_tables)))
        self.outputs.append((addr, span))
        self.written.append((addr, span))

    def requant(self) -> None:
        c, rng = self.c, self.rng
        lane = int(rng.integers(0, c.cols))
        count = int(rng.integers(0, c.cols - lane + 1)) if self.chance(0.2) else c.cols - lane
        mult = self.pick(*_MULT_EDGES) if self.chance(0.3) else int(rng.integers(0, 1 << 16))
        shift = self.pick(*_SHIFT_EDGES) if self.chance(0.3) else int(rng.integers(0, 24))
        self.emit(Opcode.CFG_REQUANT, lane=lane, count=count, mult=mult, shift=shift)

    def pwl(self) -> None:
        c, rng = self.c, self.rng
        table = int(rng.integers(0, c.pwl_tables))
        S = c.pwl_segments
        bp = np.sort(rng.choice(np.arange(INT16_MIN, INT16_MAX + 1), S, replace=False))
        if self.chance(0.3):
            bp = np.sort(rng.integers(-600, 600, S))          # dense, possibly repeated
        for s in range(S):
            if self.chance(0.1):
                continue                                      # leave a segment as it was
            k = self.pick(INT16_MIN, INT16_MAX, 0) if self.chance(0.2) else int(rng.integers(-512, 512))
            b = int(self.pick(*_I32_EDGES)) if self.chance(0.15) else int(rng.integers(-2**20, 2**20))
            self.emit(Opcode.CFG_PWL_SEG, table=table, seg=s, bp=int(bp[s]), k=k, b=b)
        self.emit(Opcode.CFG_PWL_HDR, table=table, mode=int(rng.integers(0, 2)),
                  x0=int(rng.integers(INT16_MIN, INT16_MAX + 1)) if self.chance(0.5)
                  else int(rng.integers(-256, 256)),
                  seg_shift=int(rng.integers(0, 16)),
                  out_shift=self.pick(0, MAX_SHIFT) if self.chance(0.2) else int(rng.integers(0, 12)))

    def fence(self) -> None:
        """Zero-sized transfers / computes: standalone, or a full barrier."""
        if self.chance(0.5):
            self.builder.barrier()
            return
        op = self.pick(Opcode.LOAD_SP, Opcode.LOAD_ACC, Opcode.STORE, Opcode.COMPUTE)
        if op == Opcode.COMPUTE:
            self.emit(op, m=0, k=self.pick(0, 1), n=self.pick(0, 1))
        else:
            self.emit(op, nrows=0, ncols=int(self.rng.integers(0, 2)))


def random_program(config: HwConfig, rng: np.random.Generator, *, dram_bytes: int = 1 << 16,
                   max_insns: int = 128) -> ProgramCase:
    """A random valid, race-free program and its initial external memory.

    Parameters
    ----------
    config : HwConfig
    rng : np.random.Generator
    dram_bytes : int
        Size of the external memory image.
    max_insns : int
        Upper bound of the program length (HALT included); the program area is reserved for it.
    """
    for _ in range(20):
        gen = _Gen(config, rng, dram_bytes, max_insns)
        target = int(rng.integers(8, max(9, max_insns // 2)))
        try:
            if gen.chance(0.7):
                gen.requant()
            if gen.chance(0.5):
                gen.pwl()
            while len(gen.builder.program) < target:
                gen.pick(gen.gemm, gen.gemm, gen.gemm, gen.requant, gen.pwl, gen.fence)()
        except MemoryError:
            continue
        program = gen.builder.finish()
        if len(program) > max_insns:
            continue
        break
    else:
        raise ValueError(f"could not fit a program into {dram_bytes} bytes and {max_insns} "
                         f"instructions for {config.tag}")
    binary = np.frombuffer(assemble_binary(program), np.uint8)
    gen.image[gen.insn_addr:gen.insn_addr + binary.size] = binary
    validate(program, config, dram_bytes=dram_bytes,
             program_range=(gen.insn_addr, gen.insn_addr + binary.size))
    races = find_races(program, config=config)
    assert not races, "generator produced a racy program:\n" + "\n".join(races)
    return ProgramCase(config, program, gen.image, gen.insn_addr, gen.outputs)
