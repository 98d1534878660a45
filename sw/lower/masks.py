"""Attention masks: the float key-padding mask a BERT export computes from its integer
``attention_mask`` input, and the ``Where(IsNaN(p), 0, p)`` guard after softmax.

The mask arithmetic (Cast, GatherND, And, Where, ...) is found before any rule runs
(:func:`find_masks`), checked on probes to be a key-padding mask and becomes one GEMM term of
the softmax kernels (:func:`mask_term`, a lookup of the mask row); the IsNaN guard is the
identity (the lowered softmax never gives NaN).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from neuralmatrix.hw.arith import INT8_MAX

from ..ir import Lookup, Term
from .context import LinearizeError
from .rules import rule

__all__ = ["find_masks", "mask_term", "isnan"]


def find_masks(ctx):
    """Find the float tensors computed from integer inputs alone (the attention-mask
    arithmetic of a BERT export: Cast, GatherND, And, Where, ...), check that each is a
    key-padding mask (0 where the index input is non-zero, a large negative value where it
    is zero, along the last axis) and mark its nodes done. Softmax lowers the mask as one
    rank-``n`` GEMM term (:func:`mask_term`)."""
    g = ctx.model.graph
    int_inputs = {vi.name for vi in g.input if vi.name not in ctx.consts and
                  vi.type.tensor_type.elem_type in (onnx.TensorProto.INT64,
                                                    onnx.TensorProto.INT32)}
    derived, nodes = set(int_inputs), []
    for n in g.node:
        ins = [i for i in n.input if i]
        if not any(i in derived for i in ins):
            continue
        if n.op_type == "Gather" and n.input[0] in ctx.consts and n.input[1] in int_inputs:
            continue                                     # embedding lookup
        if all(i in derived or i in ctx.consts for i in ins):
            nodes.append(n)
            derived.update(n.output)
    if not nodes:
        return
    produced = {o for n in nodes for o in n.output}
    inner = {id(n) for n in nodes}
    outs = [o for o in produced if o in ctx.graph_outputs or
            any(id(c) not in inner for c in ctx.consumers[o])]
    for o in outs:
        ctx.masks[o] = _check_mask(ctx, o, nodes, int_inputs)
    for n in nodes:
        ctx.done.add(id(n))


def _check_mask(ctx, name, nodes, int_inputs) -> tuple[str, int]:
    from onnx.reference import ReferenceEvaluator

    needed, body = {name}, []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            body.append(n)
            needed.update(i for i in n.input if i)
    body.reverse()
    ids = sorted(needed & int_inputs)
    where = f"attention mask {name!r} (nodes {', '.join(n.name for n in body)})"
    if len(ids) != 1:
        raise LinearizeError(f"{where}: computed from {len(ids)} integer inputs, expected one")
    ids = ids[0]
    shape = ctx.shapes[ids]
    if len(shape) != 2 or shape[0] != 1:
        raise LinearizeError(f"{where}: index input {ids!r} must be [1, L], is {list(shape)}")
    L = shape[1]
    elem = next(vi.type.tensor_type.elem_type for vi in ctx.model.graph.input if vi.name == ids)
    inits = [numpy_helper.from_array(np.asarray(ctx.consts[i]), i)
             for i in sorted({i for n in body for i in n.input if i in ctx.consts})]
    graph = helper.make_graph(body, "mask", [helper.make_tensor_value_info(ids, elem, shape)],
                              [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)],
                              inits)
    sess = ReferenceEvaluator(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ctx.opset)]))
    rng = np.random.default_rng(0)
    probes = [np.ones(L, dtype=np.int64)] + [rng.integers(0, 2, L) for _ in range(4)]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
    for p in probes:
        p[0] = 1
        bias = np.asarray(sess.run(None, {ids: p.reshape(1, L).astype(dtype)})[0])
        if bias.ndim < 1 or bias.shape[-1] != L:
            raise LinearizeError(f"{where}: last axis is {bias.shape}, expected {L} keys")
        keep = np.broadcast_to(p != 0, bias.shape)
        if not (np.all(bias[keep] == 0) and np.all(bias[~keep] <= -1e4)):
            raise LinearizeError(f"{where}: not a key-padding mask (0 for kept keys, a "
                                 f"large negative value for masked keys)")
    ctx.notes.append(f"{where}: key-padding mask from {ids!r}, one GEMM term in softmax")
    return ids, L


def mask_term(ctx, mask: str, rows: int, acc_unit: float, need: float) -> Term:
    """``ones(rows, n) @ mask_rows(n, L)``: adds at most ``-need`` (real, in units of
    *acc_unit*) to every masked key of every row, nothing to the others. The mask row
    (``-127`` masked, ``0`` kept) is an embedding lookup of the index input."""
    ids, L = ctx.masks[mask]
    key = ("maskrow", mask)
    if key not in ctx.cache:
        table = ctx.const(f"{mask}.table", np.array([[-INT8_MAX], [0]]), 1.0)
        col = ctx.new(f"{mask}.col", (L, 1), (0, 1), 1.0)
        ctx.steps.append(Lookup(col.name, mask, table, ids, col))
        ctx.cache[key] = col
    col = ctx.cache[key]
    n = max(1, math.ceil(need / (INT8_MAX * INT8_MAX * acc_unit)))
    key = ("maskrows", mask, n)
    if key not in ctx.cache:
        ctx.cache[key] = ctx.gather(f"{mask}.rows{n}", mask, [col],
                                    lambda i: np.broadcast_to(i.reshape(1, L), (n, L)))
    return Term(ctx.ones(rows, n, INT8_MAX), ctx.cache[key])


@rule("IsNaN")
def isnan(ctx, node):
    """``Where(IsNaN(p), c, p)`` after a softmax (exports guard fully masked rows): the
    lowered softmax never gives NaN, so the pair is the identity."""
    x = node.input[0]
    users = ctx.consumers[node.output[0]]
    if node.output[0] in ctx.graph_outputs or not users or not all(
            u.op_type == "Where" and u.input[0] == node.output[0] and u.input[2] == x
            and u.input[1] in ctx.consts for u in users):
        raise LinearizeError(f"IsNaN (node {node.name!r}): only Where(IsNaN(x), c, x) is "
                             f"supported")
    for u in users:
        ctx.done.add(id(u))
        ctx.vals[u.output[0]] = ctx.val(x, node)
    ctx.notes.append(f"{node.name}: Where(IsNaN(x), c, x) is x (no NaN on the accelerator)")
