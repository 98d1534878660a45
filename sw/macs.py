"""Honest MAC accounting: what of the array's work the network asked for.

The figures contract (``DESIGN.md``), as implemented here and printed by the compile report
(:func:`neuralmatrix.sw.compiler.report`), the run table (:mod:`neuralmatrix.sim.report`) and
the benchmarks (:mod:`neuralmatrix.sim.benchmarks`):

``executed_macs``
    What the array does: ``sum m * k * n`` over the program's COMPUTE instructions, the
    golden model's count and the RTL's ``macs`` counter (the same number). All-zero weight
    blocks the compiler skips are not executed; a ragged tile edge issues its real ``m``,
    ``k``, ``n`` (its idle PEs show in the cycles, not here).
``useful_macs``
    The MACs of the ONNX model's own Conv, ConvTranspose, MatMul and Gemm nodes, from the
    shapes of the graph before lowering (:func:`model_macs`): a Conv is
    ``N * Cout * prod(out spatial) * (Cin / group) * prod(kernel)`` (depthwise: ``C * kh * kw
    * Ho * Wo`` per image), a ConvTranspose ``N * Cin * prod(in spatial) * (Cout / group) *
    prod(kernel)``, a MatMul ``prod(output shape) * K`` (batch dimensions and broadcasting
    included), a Gemm ``M * K * N``. A node's MACs go to the kernels with role ``"linear"``
    whose ``origin`` is that node, in proportion to their weight-structural work (below, with
    activations taken as dense); kernels of role ``"linearization"`` have none.
``linearization_macs``
    For kernels of role ``"linearization"`` (element-wise ops, nonlinear functions,
    reductions, normalizations, pooling): their structurally nonzero work,
    ``sum_terms sum_k nnz(A[:, k]) * nnz(B[k, :])``, where an entry is structurally zero
    when it is a zero of a constant (a diagonal or block-diagonal weight's off-diagonal
    entries) or an element a host transfer fills with zero (``FILL_ZERO``, e.g. a gathered
    diagonal), followed through views and transfers to their sources; every other entry
    (an activation) counts as nonzero. A diagonal scaling of an ``M x C`` tensor is ``M * C``
    (one MAC per element). Kernels of role ``"linear"`` have none.
``padding_macs``
    ``executed_macs - useful_macs - linearization_macs``: zeros the array multiplies (the
    off-diagonal blocks of block-diagonal and diagonal weights that share a tile with a
    nonzero, whole tiles of a depthwise convolution's block-diagonal weight, K or N padded
    to a layout). It is negative only if the compiler skips blocks the ONNX model counts
    (all-zero weight tiles in the model itself).
``utilization_pct``
    ``100 * useful_macs / (cycles * rows * cols)``.
``occupancy_pct``
    ``100 * executed_macs / (cycles * rows * cols)``.

:func:`account` sets ``Kernel.useful_macs`` and ``Kernel.linearization_macs`` of every
kernel of a :class:`~neuralmatrix.sw.ir.Network`; the compiler calls it after lowering.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .ir import FILL_MIN, FILL_ZERO, Kernel, Lookup, Network, Tensor, Transfer

__all__ = ["MAC_OPS", "FIGURES", "model_macs", "account", "figures", "percentages"]

#: ONNX operators whose MACs are useful work.
MAC_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")

#: The figure names, everywhere they are printed (report JSON, run table CSV/JSON).
FIGURES = ("executed_macs", "useful_macs", "linearization_macs", "padding_macs",
           "utilization_pct", "occupancy_pct")


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _shapes(model) -> dict[str, tuple[int, ...]]:
    g = model.graph
    out = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            out[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    for init in g.initializer:
        out[init.name] = tuple(int(d) for d in init.dims)
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = tuple(int(d) for d in a.t.dims)
    return out


def _attr(node, name, default):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def model_macs(model) -> dict[str, int]:
    """Useful MACs per node name (``""`` for unnamed nodes, summed) of the MAC operators of
    *model* (an ``onnx.ModelProto``), from its shapes (shape inference is run when the graph
    does not carry them). A node whose shapes stay unknown raises ValueError."""
    import onnx

    nodes = [n for n in model.graph.node if n.op_type in MAC_OPS and n.domain in ("", "ai.onnx")]
    shapes = _shapes(model)

    def need(n):
        ins = [i for i in n.input[:2]]
        return [*ins, n.output[0]]

    if any(s not in shapes for n in nodes for s in need(n)):
        shapes = _shapes(onnx.shape_inference.infer_shapes(model))
    out: dict[str, int] = defaultdict(int)
    for n in nodes:
        missing = [s for s in need(n) if s not in shapes]
        if missing:
            raise ValueError(f"{n.op_type} (node {n.name!r}): no static shape for "
                             f"{', '.join(missing)}")
        a, w, y = (shapes[s] for s in need(n))
        if n.op_type == "Conv":
            group = int(_attr(n, "group", 1))
            macs = y[0] * y[1] * _prod(y[2:]) * (a[1] // group) * _prod(w[2:])
        elif n.op_type == "ConvTranspose":
            # w is (Cin, Cout / group, k...): each input element meets Cout / group outputs
            macs = a[0] * a[1] * _prod(a[2:]) * w[1] * _prod(w[2:])
        elif n.op_type == "MatMul":
            K = a[-1]
            macs = _prod(y) * K
        else:                                       # Gemm
            K = a[0] if _attr(n, "transA", 0) else a[-1]
            macs = _prod(y) * K
        out[n.name] += int(macs)
    return dict(out)


class _Masks:
    """Structural nonzero masks of tensors (see the module doc), cached by tensor."""

    def __init__(self, net: Network):
        self.producer: dict[int, object] = {}
        for s in net.steps:
            if isinstance(s, (Transfer, Lookup)):
                self.producer[id(s.out)] = s
        self.cache: dict[int, np.ndarray | None] = {}

    def __call__(self, t: Tensor, *, follow: bool = True) -> np.ndarray | None:
        """Bool ``rows x cols`` mask, or None for "all nonzero" (an activation). With
        ``follow=False`` only constants have structure."""
        if t.const:
            return np.asarray(t.data) != 0
        if not follow:
            return None
        key = id(t)
        if key in self.cache:
            return self.cache[key]
        mask = None
        if t.base is not None:
            base = self(t.base)
            if base is not None:
                mask = base[t.row0:t.row0 + t.rows]
        else:
            s = self.producer.get(id(t))
            if isinstance(s, Transfer):
                idx = np.asarray(s.index)
                srcs = [self(x) for x in s.srcs]
                if (idx == FILL_ZERO).any() or any(m is not None for m in srcs):
                    src = np.concatenate([np.ones(x.rows * x.cols, bool) if m is None
                                          else m.reshape(-1) for x, m in zip(s.srcs, srcs)])
                    mask = np.where(idx >= 0, src[np.clip(idx, 0, None)], idx == FILL_MIN)
                    if mask.all():
                        mask = None
        self.cache[key] = mask
        return mask


def _structural(k: Kernel, masks: _Masks, *, follow: bool) -> int:
    total = 0
    for t in k.terms:
        ma, mb = masks(t.a, follow=follow), masks(t.b, follow=follow)
        ca = np.full(t.a.cols, t.a.rows, np.int64) if ma is None else ma.sum(axis=0)
        rb = np.full(t.b.rows, t.b.cols, np.int64) if mb is None else mb.sum(axis=1)
        total += int(np.dot(ca.astype(np.int64), rb.astype(np.int64)))
    return total


def account(net: Network, useful: dict[str, int]) -> dict[str, int]:
    """Set ``useful_macs`` and ``linearization_macs`` of every kernel of *net* from the
    per-node useful MACs *useful* (:func:`model_macs` of the model before lowering).

    Returns the nodes of *useful* that no ``"linear"`` kernel implements (their MACs are in
    no kernel's ``useful_macs``), with their MACs; a note on *net* names them."""
    masks = _Masks(net)
    linear: dict[str, list[tuple[Kernel, int]]] = defaultdict(list)
    for k in net.kernels:
        if k.role == "linear":
            k.linearization_macs = 0
            linear[k.origin].append((k, _structural(k, masks, follow=False)))
        else:
            k.useful_macs = 0
            k.linearization_macs = _structural(k, masks, follow=True)
    for origin, ks in linear.items():
        total = int(useful.get(origin, 0))
        weights = np.array([w for _, w in ks], dtype=np.float64)
        if weights.sum() <= 0:
            weights = np.ones(len(ks))
        share = total * weights / weights.sum()
        base = np.floor(share).astype(np.int64)
        rest = total - int(base.sum())              # largest remainders: the sum is exact
        for i in np.argsort(-(share - base), kind="stable")[:rest]:
            base[i] += 1
        for (k, _), u in zip(ks, base):
            k.useful_macs = int(u)
    lost = {n: m for n, m in useful.items() if m and n not in linear}
    if lost:
        net.notes.append(f"MAC accounting: {sum(lost.values()):,} MACs of {len(lost)} "
                         f"Conv/MatMul/Gemm node(s) run in no linear kernel (not counted as "
                         f"useful): {', '.join(sorted(lost)[:8])}"
                         + (", ..." if len(lost) > 8 else ""))
    return lost


def figures(executed: int, useful: int, linearization: int, cycles: int | None,
            peak: int) -> dict:
    """The :data:`FIGURES` of some work: MAC counts and the two percentages (None without
    cycles)."""
    return {"executed_macs": int(executed), "useful_macs": int(useful),
            "linearization_macs": int(linearization),
            "padding_macs": int(executed) - int(useful) - int(linearization),
            **percentages(executed, useful, cycles, peak)}


def percentages(executed: int, useful: int, cycles: int | None, peak: int) -> dict:
    """``utilization_pct`` and ``occupancy_pct`` (None without cycles)."""
    if not cycles:
        return {"utilization_pct": None, "occupancy_pct": None}
    return {"utilization_pct": round(100.0 * useful / (cycles * peak), 2),
            "occupancy_pct": round(100.0 * executed / (cycles * peak), 2)}
