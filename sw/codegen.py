"""Code generation: memory layout, one program per kernel, the external-memory image.

Every tensor of a :class:`~neuralmatrix.sw.ir.Network` gets a
:class:`~neuralmatrix.sw.gemm_program.MatrixLayout` in external memory (constants first, then
activations, then the programs); every kernel becomes a tiled, double-buffered program
(:func:`~neuralmatrix.sw.gemm_program.matmul_program`) whose all-zero weight blocks are
skipped. In the weight-stationary dataflow a kernel's int32 bias is one more term of the GEMM
(:func:`bias_rows`), computed on the array, instead of a ``LOAD_ACC`` per output tile (which
waits for the accumulator write port while the array writes it), when ``M >= rows``. In the output-stationary dataflow, where the hardware reads ``A`` transposed, each
activation ``A`` operand gets a transposed copy made by a host transfer (constants are stored
transposed). Tensors loaded as ``A`` have column panels of ``rows``, the others of ``cols``;
in the weight-stationary dataflow on a non-square array an ``A`` operand that is also a
kernel's output or a ``B`` operand gets a copy in the ``A`` layout (see
:func:`_operand_copies`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from neuralmatrix.hw.arith import INT8_MAX
from neuralmatrix.hw.isa import FieldProgram, assemble_binary, field_matrix, validate
from neuralmatrix.hw.params import ConfigError, Dataflow, HwConfig

from .gemm_program import MatrixLayout, Operand, chunk_depths, matmul_program
from .golden import estimate_cycles
from .ir import Kernel, Lookup, Network, Tensor, Term, Transfer

__all__ = ["KernelCode", "Compiled", "codegen", "panel_of", "bias_rows", "BIAS_A"]

_ALIGN = 64

#: The ``A`` row of a bias term: ``bias = BIAS_A[:r] @ D`` (:func:`bias_rows`).
BIAS_A = (1,) + (INT8_MAX,) * 255


def bias_rows(bias: np.ndarray, depth: int) -> np.ndarray | None:
    """The int8 rows ``D`` (``r x N``, ``1 <= r <= depth``) of a bias term: ``bias[j] ==
    sum_i BIAS_A[i] * D[i, j]`` exactly (``D[0]`` the remainder, the rest the multiples of
    127), so an ``M x r`` operand of rows ``BIAS_A[:r]`` times ``D`` puts the bias in every
    accumulator row; None when the bias needs more than *depth* rows."""
    b = np.asarray(bias, dtype=np.int64).reshape(-1)
    if not b.size or np.abs(b).max() <= INT8_MAX:
        return b[None, :].copy()
    q = (b + INT8_MAX // 2) // INT8_MAX                  # b - 127 q in -63..63
    n = int(-(-np.abs(q).max() // INT8_MAX))
    if 1 + n > depth:
        return None
    rows = [b - INT8_MAX * q]
    for _ in range(n):
        take = np.clip(q, -INT8_MAX, INT8_MAX)
        rows.append(take)
        q = q - take
    return np.stack(rows)


@dataclass
class KernelCode:
    """A kernel's program and where it lives."""

    kernel: Kernel
    program: FieldProgram       # held as its field matrix; iterating decodes Insns
    addr: int
    size: int
    plan: dict
    macs: int           # MACs the program executes (zero blocks skipped)
    est_cycles: int


@dataclass
class Compiled:
    """A compiled network: layouts, programs and the initial external-memory image.

    Attributes
    ----------
    config : HwConfig
    network : Network
    steps : list
        The network's steps (with os transposes added), each Kernel paired with its
        :class:`KernelCode` in ``code``.
    layouts : dict
        ``id(tensor) -> MatrixLayout``.
    image : np.ndarray of uint8
        Constants and programs; activations are zero.
    """

    config: HwConfig
    network: Network
    steps: list
    layouts: dict[int, MatrixLayout]
    code: dict[int, KernelCode]
    image: np.ndarray
    regions: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def dram_bytes(self) -> int:
        return int(self.image.size)

    def layout(self, t: Tensor) -> MatrixLayout:
        return self.layouts[id(t)]


def panel_of(config: HwConfig, *, a_operand: bool = False) -> int:
    """The column panel of a tensor's layout: ``rows`` for a tensor loaded as the ``A``
    operand (ws: ``A``, whose ``rows``-deep K chunks are ``rows`` wide; os: ``A.T``, whose
    tiles are ``rows`` wide), ``cols`` for everything else (``B`` tiles and stored ``C``
    tiles are ``cols`` wide). Every tile then starts on a panel, so on the bus. Equal on a
    square array, where every tensor can be any operand."""
    return config.rows if a_operand else config.cols


def _align(x: int, a: int = _ALIGN) -> int:
    return -(-x // a) * a


def _root(t: Tensor) -> Tensor:
    while t.base is not None:
        t = t.base
    return t


def _operand_copies(net: Network, cfg: HwConfig) -> tuple[list, set[int]]:
    """The steps with the ``A`` operands' copies added, and the ids of the root tensors laid
    out for ``A`` (panels of ``rows``; every other tensor has panels of ``cols``).

    os: every ``A`` operand is stored transposed (a host transfer for activations, constants
    stored transposed); the transposed copies are the ``A`` tensors. ws on a square array:
    no copy, one layout serves every operand. ws with ``rows != cols``: no layout has both
    the ``rows``-wide ``A`` tiles and the ``cols``-wide ``B`` / ``C`` tiles on bus
    boundaries (a bus beat holds at least ``max(rows, cols)`` bytes), so an ``A`` operand
    whose tensor is also a kernel's output or a ``B`` operand gets a copy in the ``A``
    layout (a host transfer; a second stored copy for constants); one the host writes (a
    network input, a transfer's or lookup's output, a constant) and only ``A`` reads is laid
    out for ``A`` directly.
    """
    a_roots: set[int] = set()
    if cfg.dataflow is Dataflow.WS:
        if cfg.rows == cfg.cols:
            return list(net.steps), a_roots
        fixed = set()                   # roots a kernel writes or reads as B: cols panels
        for s in net.steps:
            if isinstance(s, Kernel):
                fixed.add(id(_root(s.out)))
                fixed.update(id(_root(t.b)) for t in s.terms)
        for s in net.steps:
            if isinstance(s, Kernel):
                a_roots.update(id(_root(t.a)) for t in s.terms
                               if id(_root(t.a)) not in fixed)

        def copy(a):
            r = _root(a)
            data = a.data if a.data is not None or not r.const else \
                np.asarray(r.data)[a.row0:a.row0 + a.rows] if a.base is r else None
            return Tensor(f"{a.name}.A", a.rows, a.cols, a.scale, a.elem, data,
                          colscale=a.colscale), data is None
    else:
        def copy(a):
            return Tensor(f"{a.name}.T", a.cols, a.rows, a.scale, a.elem,
                          None if a.data is None else np.asarray(a.data).T), a.data is None
    steps, made = [], {}
    for s in net.steps:
        if isinstance(s, Kernel):
            terms = []
            for t in s.terms:
                a = t.a
                key = id(a)
                if id(_root(a)) in a_roots:
                    terms.append(t)
                    continue
                if key not in made:
                    at, transfer = copy(a)
                    if transfer:
                        idx = np.arange(a.rows * a.cols, dtype=np.int64).reshape(a.rows, a.cols)
                        if cfg.dataflow is Dataflow.OS:
                            idx = idx.T
                        steps.append(Transfer(at.name, s.origin, [a], at, np.ascontiguousarray(idx)))
                    made[key] = at
                    a_roots.add(id(at))
                terms.append(Term(made[key], t.b))
            s = dataclasses.replace(s, terms=terms)
        steps.append(s)
    return steps, a_roots


def _tensors(steps, net: Network) -> list[Tensor]:
    seen: dict[int, Tensor] = {}

    def add(t):
        while t is not None:
            seen.setdefault(id(t), t)
            t = t.base

    for t in list(net.inputs.values()) + list(net.outputs.values()):
        add(t)
    for s in steps:
        if isinstance(s, Kernel):
            for term in s.terms:
                add(term.a)
                add(term.b)
            add(s.out)
        elif isinstance(s, Transfer):
            for t in s.srcs:
                add(t)
            add(s.out)
        elif isinstance(s, Lookup):
            add(s.table)
            add(s.out)
    return list(seen.values())


class _DoesNotFit(ValueError):
    """A kernel whose program does not fit the hardware (names the layer and the GEMM)."""


def _program(cfg, s: Kernel, parts, layouts, biases, active, check):
    """``(program, plan, fields)`` of kernel *s*; _DoesNotFit if the hardware is too small."""
    try:
        program, plan = matmul_program(cfg, parts, layouts[id(s.out)], mult=s.mult,
                                       shift=s.shift, bias=biases.get(id(s)), pwl=s.pwl,
                                       active=active, check=False)
        fields = field_matrix(program)          # built once for checks, estimate, binary
        if check:
            validate(program, cfg, fields=fields)
    except ValueError as exc:
        K = sum(t.b.rows for t in s.terms)
        raise _DoesNotFit(f"layer {s.origin or s.name!r} (kernel {s.name!r}, GEMM "
                          f"{s.out.rows}x{K}x{s.out.cols}) does not fit the hardware "
                          f"(sp_depth {cfg.sp_depth}, acc_depth {cfg.acc_depth}, "
                          f"{cfg.rows}x{cfg.cols} {cfg.dataflow.value}): {exc}") from exc
    return program, plan, fields


def codegen(net: Network, config: HwConfig, *, check: bool = True) -> Compiled:
    """Lay out *net* in external memory and generate every kernel's program."""
    cfg = config
    BUS = cfg.bus_bytes
    steps, a_roots = _operand_copies(net, cfg)
    tensors = _tensors(steps, net)
    layouts: dict[int, MatrixLayout] = {}
    pos = 0
    regions = {}

    def place(t: Tensor):
        nonlocal pos
        lay = MatrixLayout.tiled(pos, t.rows, t.cols, panel_of(cfg, a_operand=id(t) in a_roots),
                                 BUS, t.elem)
        layouts[id(t)] = lay
        pos = _align(lay.end)

    start = pos
    for t in tensors:
        if t.base is None and t.const:
            place(t)
    biases: dict[int, MatrixLayout] = {}        # loaded into the accumulator (LOAD_ACC)
    bias_terms: dict[int, tuple[MatrixLayout, np.ndarray]] = {}    # a GEMM term: (B, D)
    for s in steps:
        if isinstance(s, Kernel) and s.bias is not None:
            # A bias term costs one more COMPUTE of max(M, rows) cycles per output tile; a
            # LOAD_ACC of M rows is as cheap when M is below the array's rows.
            use_term = cfg.dataflow is Dataflow.WS and s.out.rows >= cfg.rows
            d = bias_rows(s.bias, cfg.rows) if use_term else None
            if d is not None:
                lay = MatrixLayout.tiled(pos, d.shape[0], s.out.cols, panel_of(cfg), BUS)
                bias_terms[id(s)] = (lay, d)
            else:
                lay = MatrixLayout.tiled(pos, 1, s.out.cols, cfg.cols, BUS, 4)
                biases[id(s)] = lay
            pos = _align(lay.end)
    bias_a = None               # the A operand of every bias term: rows of BIAS_A
    if bias_terms:
        m = max(s.out.rows for s in steps if id(s) in bias_terms)
        bias_a = MatrixLayout.tiled(pos, m, cfg.rows, panel_of(cfg, a_operand=True), BUS)
        pos = _align(bias_a.end)
    regions["constants"] = (start, pos)
    start = pos
    for t in tensors:
        if t.base is None and not t.const:
            place(t)
    regions["activations"] = (start, pos)

    def resolve(t: Tensor) -> MatrixLayout:
        if id(t) in layouts:
            return layouts[id(t)]
        base = resolve(t.base)
        if t.cols != base.cols:
            raise AssertionError(f"view {t.name} has {t.cols} columns, its base {base.cols}")
        lay = MatrixLayout(base.addr + t.row0 * base.pitch, t.rows, t.cols, base.elem,
                           base.panel, base.pitch, base.panel_stride)
        layouts[id(t)] = lay
        return lay

    for t in tensors:
        resolve(t)

    code: dict[int, KernelCode] = {}
    programs = []
    start = pos
    for s in steps:
        if not isinstance(s, Kernel):
            continue
        depths = [t.b.rows for t in s.terms]
        extra = bias_terms.get(id(s))
        if extra is not None:
            depths.append(extra[1].shape[0])
        chunks = chunk_depths(cfg, depths)
        n_tiles = -(-s.out.cols // cfg.cols)
        active = np.ones((len(chunks), n_tiles), dtype=bool)
        for j, (part, k0, k) in enumerate(chunks):
            data = extra[1] if part == len(s.terms) else s.terms[part].b.data
            if data is not None:
                blk = np.asarray(data)[k0:k0 + k]
                nz = np.zeros(n_tiles, dtype=bool)
                cols = np.nonzero(np.any(blk != 0, axis=0))[0]
                nz[np.unique(cols // cfg.cols)] = True
                active[j] = nz
        try:
            parts = [Operand(layouts[id(t.a)], layouts[id(t.b)]) for t in s.terms]
            if extra is not None:
                a = MatrixLayout(bias_a.addr, s.out.rows, extra[1].shape[0], 1, bias_a.panel,
                                 bias_a.pitch, bias_a.panel_stride)
                parts.append(Operand(a, extra[0]))
            program, plan, fields = _program(cfg, s, parts, layouts, biases, active, check)
            estimate = estimate_cycles(program, cfg, fields=fields)   # MACs: HALT is last
            blob = assemble_binary(program, fields=fields)
        except _DoesNotFit:
            raise
        except Exception as exc:  # noqa: BLE001 - reported with the kernel that failed
            raise ValueError(f"layer {s.origin or s.name!r} (kernel {s.name!r}): no program: "
                             f"{type(exc).__name__}: {exc}") from exc
        macs, est = estimate.macs, estimate.total
        kc = KernelCode(s, program, pos, len(blob), plan, macs, est)
        code[id(s)] = kc
        programs.append((pos, blob))
        pos = _align(pos + len(blob))
    regions["programs"] = (start, pos)
    image = np.zeros(max(pos, _ALIGN), dtype=np.uint8)
    for t in tensors:
        if t.base is None and t.const:
            layouts[id(t)].write(image, np.asarray(t.data))
    for s in steps:
        if id(s) in biases:
            biases[id(s)].write(image, np.asarray(s.bias, dtype=np.int64)[None, :])
        if id(s) in bias_terms:
            lay, d = bias_terms[id(s)]
            lay.write(image, d)
    if bias_a is not None:
        bias_a.write(image, np.tile(np.array(BIAS_A[:cfg.rows]), (bias_a.rows, 1)))
    for addr, blob in programs:
        image[addr:addr + len(blob)] = np.frombuffer(blob, dtype=np.uint8)
    return Compiled(cfg, net, steps, layouts, code, image, regions)
