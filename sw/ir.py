"""The linear IR: what a network becomes after linearization.

A network is a sequence of **steps** over int8 matrices in external memory:

* :class:`Kernel` -- one accelerator program, ``out = f(requant(bias + sum_t A_t @ B_t))``,
  with ``f`` the identity or one PWL table. Linear layers, reductions (GEMM with a ones
  vector), element-wise sums and scalings (block-diagonal weights) and every nonlinear
  function (the PWL table of the output path) are kernels.
* :class:`Transfer` -- data movement by the host between kernels: a gather of elements
  into a new matrix (im2col, transposes, reshapes, concatenation, slicing, padding,
  embedding lookups). No arithmetic.

Every :class:`Tensor` is a 2-D matrix ``rows x cols`` of int8 (or int32) integers with one
real scale; a logical ONNX tensor of shape ``shape`` is stored as
``x.transpose(perm).reshape(rows, cols)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Tensor", "Term", "Kernel", "Transfer", "Lookup", "Network", "FILL_ZERO", "FILL_MIN"]

#: Transfer index values that write a constant instead of gathering an element.
FILL_ZERO, FILL_MIN = -1, -2


@dataclass(eq=False)
class Tensor:
    """An int8 (``elem=1``) or int32 (``elem=4``) matrix; ``real = value * scale`` (times
    ``colscale[j]`` in column ``j`` when the tensor has per-column scales).

    Attributes
    ----------
    name : str
    rows, cols : int
    scale : float
    elem : int
    data : np.ndarray or None
        The integer values of a constant (weights, identity blocks, ones vectors).
    shape, perm : tuple of int
        The logical (ONNX) shape and the axis order of the storage (see the module doc).
    """

    name: str
    rows: int
    cols: int
    scale: float
    elem: int = 1
    data: np.ndarray | None = None
    shape: tuple[int, ...] = ()
    perm: tuple[int, ...] = ()
    base: Tensor | None = None
    row0: int = 0
    colscale: np.ndarray | None = None

    @property
    def colw(self) -> np.ndarray:
        """Integer multiplier of ``scale`` per storage column (all ones for a per-tensor
        scale): ``real[:, j] = value[:, j] * scale * colw[j]``."""
        if self.colscale is None:
            return np.ones(self.cols)
        return np.asarray(self.colscale, dtype=np.float64)

    def __post_init__(self):
        if not self.shape:
            self.shape = (self.rows, self.cols)
        if not self.perm:
            self.perm = tuple(range(len(self.shape)))
        if self.data is not None:
            self.data = np.asarray(self.data)
            if self.data.shape != (self.rows, self.cols):
                raise ValueError(f"{self.name}: data is {self.data.shape}, tensor "
                                 f"{self.rows}x{self.cols}")

    @property
    def const(self) -> bool:
        return self.data is not None

    def to_matrix(self, x: np.ndarray) -> np.ndarray:
        """Logical array -> storage matrix."""
        return np.transpose(np.asarray(x).reshape(self.shape), self.perm).reshape(self.rows, self.cols)

    def from_matrix(self, m: np.ndarray) -> np.ndarray:
        """Storage matrix -> logical array."""
        stored = tuple(self.shape[p] for p in self.perm)
        return np.transpose(np.asarray(m).reshape(stored), np.argsort(self.perm))

    def __repr__(self) -> str:
        kind = "const " if self.const else ""
        return f"Tensor({kind}{self.name!r}, {self.rows}x{self.cols}, scale={self.scale:.3g})"


@dataclass(eq=False)
class Term:
    """``A @ B``: ``a`` is ``M x K``, ``b`` is ``K x N``."""

    a: Tensor
    b: Tensor


@dataclass(eq=False)
class Kernel:
    """One accelerator program: ``out = f(requant(bias + sum A_t @ B_t))``.

    Attributes
    ----------
    name : str
    origin : str
        The ONNX node(s) it implements.
    terms : list of Term
    out : Tensor
    mult, shift : np.ndarray
        Requantization per output column (to int8, or to the int16 PWL input).
    bias : np.ndarray or None
        int32 per output column, added before the products.
    pwl : PwlTable or None
    role : str
        ``"linear"``: MACs the float network has too; ``"linearization"``: MACs added to
        express a nonlinear or element-wise operation as matrix work.
    func : str
        The function of the PWL table (``""`` when none).
    useful_macs, linearization_macs : int or None
        The kernel's share of the ONNX model's own Conv/ConvTranspose/MatMul/Gemm MACs, and
        the structurally nonzero work of a linearization kernel (see
        :mod:`neuralmatrix.sw.macs`, which sets both after lowering; None before).
    """

    name: str
    origin: str
    terms: list[Term]
    out: Tensor
    mult: np.ndarray
    shift: np.ndarray
    bias: np.ndarray | None = None
    pwl: object | None = None
    role: str = "linear"
    func: str = ""
    useful_macs: int | None = None
    linearization_macs: int | None = None

    @property
    def dense_macs(self) -> int:
        """Dense MACs of the terms, zeros included (the schedule skips all-zero weight
        blocks; see :mod:`neuralmatrix.sw.macs` for the figures that are reported)."""
        return sum(t.a.rows * t.a.cols * t.b.cols for t in self.terms)


@dataclass(eq=False)
class Transfer:
    """Host data movement: ``out[i, j] = concat(src.flat for src in srcs)[index[i, j]]``.

    ``index`` entries :data:`FILL_ZERO` and :data:`FILL_MIN` write 0 and -128 (padding).
    All sources and the output share one scale.
    """

    name: str
    origin: str
    srcs: list[Tensor]
    out: Tensor
    index: np.ndarray

    @property
    def bytes(self) -> int:
        return int(self.index.size) * self.out.elem


@dataclass(eq=False)
class Lookup:
    """Host embedding lookup: ``out[i, :] = table[ids[i], :]`` with ``ids`` a network input
    (data movement indexed by run-time data)."""

    name: str
    origin: str
    table: Tensor
    ids: str
    out: Tensor

    @property
    def bytes(self) -> int:
        return self.out.rows * self.out.cols


@dataclass
class Network:
    """A linearized network.

    Attributes
    ----------
    inputs : dict
        ONNX input name -> Tensor (float inputs, quantized by the host at the boundary) or
        None for integer inputs consumed by :class:`Lookup` steps.
    outputs : dict
        ONNX output name -> Tensor (dequantized by the host at the boundary).
    steps : list of Kernel, Transfer and Lookup
    notes : list of str
        What the lowering decided (folds, fusions, approximations).
    """

    inputs: dict[str, Tensor | None]
    outputs: dict[str, Tensor]
    steps: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def kernels(self) -> list[Kernel]:
        return [s for s in self.steps if isinstance(s, Kernel)]

    def tensors(self) -> list[Tensor]:
        """Every tensor, each once, in order of first appearance."""
        seen: dict[int, Tensor] = {}
        for t in self.inputs.values():
            if t is not None:
                seen.setdefault(id(t), t)
        for s in self.steps:
            if isinstance(s, Kernel):
                ts = [x for term in s.terms for x in (term.a, term.b)] + [s.out]
            elif isinstance(s, Transfer):
                ts = list(s.srcs) + [s.out]
            else:
                ts = [s.table, s.out]
            for t in ts:
                while t is not None:
                    seen.setdefault(id(t), t)
                    t = t.base
        return list(seen.values())
