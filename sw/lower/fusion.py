"""Fusion: element-wise chains as one PWL function, linear kernels with what follows them.

A maximal chain of element-wise operators of one tensor (``x * 0.5 * (1 + erf(x / sqrt 2))``,
``x * sigmoid(x)``, clips, ...) is ONE function (:func:`chain`), evaluated in float by the
reference ONNX runtime on a grid (:func:`chain_function`) and fitted by
:mod:`neuralmatrix.sw.pwl`; when the chain follows a linear layer, the table sits on that
layer's output (:func:`emit_linear`; no extra kernel). A PWL output whose columns span decades
is split into column groups with a table each. Element-wise sums of tensors accumulate in
int32 (:func:`emit_sum`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from neuralmatrix.hw.arith import INT8_MAX

from ..ir import Tensor, Term
from ..quantize import double_precision_ops
from .context import ACTIVATIONS, ELEMENTWISE, LinearizeError, attr, prod

__all__ = ["PWL_GROUPS", "chain", "chain_function", "chain_kind", "tail", "emit_linear",
           "emit_sum"]

#: Most column groups a layer's PWL output is split into (:func:`emit_linear`).
PWL_GROUPS = 4


def _coefficients(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer coefficients for ``sum_i w[i, j] * x_i`` per column ``j``: ``q`` (int8, P x n)
    and the accumulator unit ``u`` (n) with ``q * u ~ w``. The largest coefficient of a column
    is 64..127, chosen per column to minimize the worst relative rounding error of all its
    coefficients (operands of very different scales keep their ratio, not 1/127 of it)."""
    w = np.asarray(w, dtype=np.float64)
    top = np.max(np.abs(w), axis=0)
    top = np.where(top > 0, top, 1.0)
    best_q = np.round(w / top * INT8_MAX)
    best_u = top / INT8_MAX
    nz = np.abs(w) > 0
    best_err = np.full(w.shape[1], np.inf)
    for qt in range(64, INT8_MAX + 1):
        u = top / qt
        exact = w / u
        q = np.round(exact)
        rel = np.where(nz, np.abs(q - exact) / np.maximum(np.abs(exact), 1e-30), 0.0)
        rel = np.where(nz & (q == 0), np.inf, rel)
        err = rel.max(axis=0)
        better = err < best_err - 1e-12
        best_err = np.where(better, err, best_err)
        best_q = np.where(better[None, :], q, best_q)
        best_u = np.where(better, u, best_u)
    return best_q.astype(np.int64), best_u


def chain(ctx, x: str):
    """The maximal chain of element-wise nodes computing a function of *x* alone.

    Returns ``(nodes, out_name)`` (``([], None)`` when there is none). A node joins when
    every non-constant input is *x* or a chain output and every constant input is a
    scalar; the chain is cut back until exactly one of its values leaves it.
    """
    inside = {x}
    members: list = []
    for n in ctx.model.graph.node:
        if id(n) in ctx.done or n.op_type not in ELEMENTWISE:
            continue
        ins = [i for i in n.input if i]
        if not any(i in inside for i in ins):
            continue
        if n.op_type in ("Dropout", "Clip"):
            ok = ins[0] in inside and all(i in ctx.consts for i in ins[1:])
        else:
            ok = all(i in inside or (i in ctx.consts and ctx.consts[i].size == 1) for i in ins)
        if ok:
            members.append(n)
            inside.add(n.output[0])
    while members:
        outs = {n.output[0] for n in members}
        leaving = [o for o in outs if o in ctx.graph_outputs
                   or any(c not in members for c in ctx.consumers[o])]
        if len(leaving) == 1:
            out = leaving[0]
            needed, keep = {out}, []
            for n in reversed(members):
                if n.output[0] in needed:
                    keep.append(n)
                    needed.update(i for i in n.input if i)
            keep.reverse()
            if not any(n.op_type not in ("Identity", "Dropout", "Cast") for n in keep):
                return [], None
            return keep, out
        members = members[:-1]
    return [], None


def chain_function(ctx, x: str, nodes, out: str):
    """The chain as a float function of a 1-D array (the reference ONNX runtime)."""
    from onnx.reference import ReferenceEvaluator

    inits, body = {}, []
    for n in nodes:
        for i in n.input:
            if i in ctx.consts:
                inits[i] = numpy_helper.from_array(
                    np.asarray(ctx.consts[i], dtype=np.float64).reshape(()), i)
        if n.op_type in ("Cast", "Dropout", "Identity"):
            n = helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name)
        body.append(n)
    # In double precision: the fit's curvature estimate needs smooth samples.
    graph = helper.make_graph(
        body, "chain",
        [helper.make_tensor_value_info(x, onnx.TensorProto.DOUBLE, [None])],
        [helper.make_tensor_value_info(out, onnx.TensorProto.DOUBLE, [None])],
        list(inits.values()))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ctx.opset)])
    sess = ReferenceEvaluator(m, new_ops=double_precision_ops())

    def f(v):
        v = np.asarray(v, dtype=np.float64)
        r = sess.run(None, {x: v.ravel()})[0]
        return np.asarray(r, dtype=np.float64).reshape(v.shape)

    return f


def chain_kind(nodes, x: str | None = None) -> str:
    """The function kind of a chain of the tensor *x* (its first activation; ``"gelu"`` for
    any Erf or Gelu; ``"square"`` for a product or quotient of two values of the chain,
    ``x * x``, without an activation; ``"affine"`` for none)."""
    ops = [n.op_type for n in nodes if n.op_type in ACTIVATIONS]
    if not ops:
        # Every other input of a chain node is a scalar constant.
        values = {n.output[0] for n in nodes} | {x}
        if any(n.op_type in ("Mul", "Div") and len(n.input) == 2
               and all(i in values for i in n.input) for n in nodes):
            return "square"
        return "affine"
    if "Erf" in ops or "Gelu" in ops:
        return "gelu"
    return ops[0].lower()


def tail(ctx, x: str):
    """What follows a linear layer's output *x*: ``(func, pre_range, out_name, kind)``
    with the chain consumed, or ``(None, None, x, "")``."""
    nodes, out = chain(ctx, x)
    if not nodes:
        return None, None, x, ""
    for n in nodes:
        ctx.done.add(id(n))
    r = ctx.range_of(x)
    kind = chain_kind(nodes, x)
    ctx.chain_input[out] = x
    ctx.notes.append(f"{', '.join(n.name or n.op_type for n in nodes)}: one PWL "
                     f"({kind}) on the output of {x}")
    return chain_function(ctx, x, nodes, out), (r.lo, r.hi), out, kind


def emit_linear(ctx, node, terms, acc_scale, bias, out_name, shape, perm, *, role="linear"):
    """A kernel for a linear node, with the element-wise chain after it fused."""
    func, pre, final, kind = tail(ctx, out_name)
    if func is not None and _groupable(ctx, final, terms, perm):
        return _emit_grouped(ctx, node, terms, acc_scale, bias, final, shape, func, pre,
                             kind, role)
    out = ctx.new(final, ctx.shape_of(final) if final != out_name else shape, perm,
                  ctx.scale_of(final), percol=func is None)
    if prod(out.shape) != prod(shape):
        raise LinearizeError(f"{node.op_type} (node {node.name!r}): fused chain changes the shape")
    out.shape = tuple(shape)
    ctx.kernel(node.name or node.op_type, node.name, terms, out, acc_scale, bias=bias,
               func=func, pre=pre, role=role, kind=kind)
    ctx.vals[final] = out
    return out


def _groupable(ctx, name, terms, perm) -> bool:
    """A PWL output can be split by column magnitude when only constant-weight
    MatMul/Gemm layers read it and every term's weights are constant."""
    users = ctx.consumers.get(name, [])
    r = ctx.ranges.get(name)
    if name in ctx.graph_outputs or not users or r is None or r.colmax is None:
        return False
    if tuple(perm) != tuple(range(len(perm))) or not all(t.b.const for t in terms):
        return False
    if not all(u.op_type in ("MatMul", "Gemm") and u.input[0] == name and
               u.input[1] in ctx.consts and ctx.consts[u.input[1]].ndim == 2 and
               not attr(u, "transA", 0) for u in users):
        return False
    cm = r.colmax
    return cm.size == terms[0].b.cols and float(cm.max()) > 4 * float(np.median(cm))


def _emit_grouped(ctx, node, terms, acc_scale, bias, final, shape, func, pre, kind, role):
    """The layer as up to :data:`PWL_GROUPS` kernels over column groups of similar
    magnitude (by calibration), each with its own PWL table and output scale: the
    element-wise function of a layer whose channels span decades (a transformer's GELU)
    keeps the resolution of its small channels. The consumers take one GEMM term per
    group (:func:`~neuralmatrix.sw.lower.linear.linear_grouped`)."""
    cm = ctx.ranges[final].colmax
    N = cm.size
    top = float(cm.max())
    level = np.clip(np.floor(np.log2(top / np.maximum(cm, top * 1e-6))), 0, PWL_GROUPS - 1)
    acc_scale = np.broadcast_to(np.asarray(acc_scale, dtype=np.float64), (N,))
    bias = None if bias is None else np.broadcast_to(np.asarray(bias, dtype=np.float64), (N,))
    r_in = ctx.range_of(ctx.chain_input.get(final, final))
    groups = []
    for g in range(PWL_GROUPS):
        idx = np.nonzero(level == g)[0]
        if idx.size == 0:
            continue
        out = Tensor(ctx.uniq(f"{final}.g{g}"), prod(shape[:-1]), idx.size,
                     max(float(cm[idx].max()), 1e-8) / INT8_MAX)
        gterms = [Term(t.a, ctx.const(f"{t.b.name}.g{g}", np.asarray(t.b.data)[:, idx], 1.0))
                  for t in terms]
        cin = r_in.colmax[idx].max() if r_in.colmax is not None and \
            r_in.colmax.size == N else max(abs(pre[0]), abs(pre[1]))
        gpre = (max(pre[0], -float(cin)), min(pre[1], float(cin)))
        if not gpre[1] > gpre[0]:
            gpre = pre
        ctx.kernel(f"{node.name or node.op_type}.g{g}", node.name, gterms, out,
                   acc_scale[idx], bias=None if bias is None else bias[idx], func=func,
                   pre=gpre, role=role, kind=kind)
        groups.append((idx, out))
    ctx.grouped[final] = (tuple(shape), groups)
    ctx.notes.append(f"{final}: {len(groups)} column groups, one PWL ({kind}) table each")
    return groups[0][1]


def emit_sum(ctx, node, parts, out_name, shape, perm, *, bias=None, fuse=True):
    """``out = sum_i c_i * x_i`` (per-column real coefficients ``c_i``), accumulated in
    int32 with diagonal int8 weights; the element-wise chain after it is fused."""
    n = parts[0][0].cols
    w = np.stack([np.asarray(c, dtype=np.float64) * t.scale * t.colw for t, c in parts])  # P x n
    q, acc = _coefficients(w)
    terms = [Term(t, ctx.diag(n, q[i])) for i, (t, _) in enumerate(parts)]
    if fuse:
        return emit_linear(ctx, node, terms, acc, bias, out_name, shape, perm,
                           role="linearization")
    out = ctx.new(out_name, shape, perm, ctx.scale_of(out_name), percol=True)
    ctx.kernel(node.name or node.op_type, node.name, terms, out, acc, bias=bias,
               role="linearization")
    ctx.vals[out_name] = out
    return out

