"""Element-wise operators: activations, PRelu, Add/Sub/Mul/Div.

An element-wise function of one tensor (and the maximal chain of them,
:func:`~neuralmatrix.sw.lower.fusion.chain`) is one PWL kernel; ``a * x + b`` is a scale change
or a GEMM with a bias. Sums of tensors accumulate into the int32 accumulator (each operand
times a diagonal int8 weight that aligns the scales); products with constants are diagonal
weights; products of two tensors are ``A B ((x/A + y/B)^2 - (x/A - y/B)^2) / 4`` with a PWL
square (``A``, ``B`` their calibrated magnitudes); ``a / b`` of two tensors is ``a`` times a
PWL reciprocal of ``b`` (whose calibrated range must not reach 0). A per-channel PRelu is
``relu(x) - a * relu(-x)``.
"""

from __future__ import annotations

import numpy as np

from neuralmatrix.hw.arith import INT8_MAX

from .. import pwl as pwl_lib
from ..ir import Tensor, Term
from .context import LinearizeError, channels_last, per_channel, storage
from .fusion import chain, chain_function, chain_kind, emit_sum
from .rules import rule

__all__ = ["unary", "prelu", "add", "mul"]


def _elementwise_chain(ctx, node) -> bool:
    """Lower *node* and the element-wise chain it starts as one PWL kernel, if it is one."""
    x = next((i for i in node.input if i in ctx.vals), None)
    if x is None:
        return False
    nodes, out = chain(ctx, x)
    if not nodes or node not in nodes:
        return False
    for n in nodes:
        ctx.done.add(id(n))
    t = ctx.vals[x]
    r = ctx.range_of(x)
    f = chain_function(ctx, x, nodes, out)
    kind = chain_kind(nodes, x)
    if kind == "affine":
        # a * x + b: a scale change (a > 0, b = 0: no step) or one GEMM with a bias.
        b = float(f(np.zeros(1))[0])
        a = float(f(np.ones(1))[0]) - b
        names = ", ".join(n.name or n.op_type for n in nodes)
        if a > 0 and b == 0:
            o = ctx.new(out, t.shape, t.perm, t.scale * a)
            o.base, o.colscale = t, t.colscale
            ctx.notes.append(f"{names}: x * {a:g}, folded into the scale")
        else:
            o = ctx.new(out, t.shape, t.perm, ctx.scale_of(out), percol=True)
            ctx.kernel(f"{nodes[0].name or nodes[0].op_type}.affine", names,
                       [Term(t, ctx.diag(t.cols, 1 if a >= 0 else -1))], o,
                       t.scale * t.colw * max(abs(a), 1e-30), bias=np.full(t.cols, b) if b else None,
                       role="linearization")
            ctx.notes.append(f"{names}: x * {a:g} + {b:g}, one GEMM with a bias")
        ctx.vals[out] = o
        return True
    o = ctx.new(out, t.shape, t.perm, ctx.scale_of(out))
    ctx.kernel(f"{nodes[0].name or nodes[0].op_type}.pwl", ",".join(n.name for n in nodes),
               [Term(t, ctx.diag(t.cols, 1))], o, t.scale * t.colw, func=f, pre=(r.lo, r.hi),
               role="linearization", kind=kind)
    ctx.notes.append(f"{', '.join(n.name or n.op_type for n in nodes)}: one PWL ({kind})")
    ctx.vals[out] = o
    return True


@rule("Relu", "LeakyRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
      "Softplus", "Gelu", "Erf", "Exp", "Sqrt", "Reciprocal", "Clip", "Neg", "Pow")
def unary(ctx, node):
    """An element-wise function and the chain it starts: one PWL kernel (a Pow with an
    exponent tensor: :func:`_pow_elements`)."""
    if node.op_type == "Pow" and node.input[1] in ctx.consts and \
            ctx.consts[node.input[1]].size > 1 and node.input[0] in ctx.vals:
        return _pow_elements(ctx, node)
    if not _elementwise_chain(ctx, node):
        raise LinearizeError(f"{node.op_type} (node {node.name!r}): not an element-wise "
                             f"function of one tensor")


#: Most distinct exponents of a Pow with an exponent tensor (one PWL kernel each).
POW_EXPONENTS = 8


def _pow_elements(ctx, node):
    """``x ** e`` with a constant exponent tensor *e*: one PWL kernel per distinct exponent
    (over all of ``x``, at the output's scale), and a host transfer picking each element
    from the kernel of its exponent."""
    shape = tuple(ctx.shape_of(node.output[0]))
    x = ctx.val(node.input[0], node)
    e = np.asarray(ctx.consts[node.input[1]], dtype=np.float64)
    if np.broadcast_shapes(e.shape, shape) != shape:
        raise LinearizeError(f"Pow (node {node.name!r}): the exponent must broadcast to "
                             f"the output")
    x = _broadcast_to(ctx, x, shape, x.perm, node.name)
    levels, code = np.unique(np.broadcast_to(e, shape), return_inverse=True)
    if levels.size > POW_EXPONENTS:
        raise LinearizeError(f"Pow (node {node.name!r}): {levels.size} distinct exponents; "
                             f"at most {POW_EXPONENTS} (one PWL table each)")
    r = ctx.range_of(node.input[0])
    scale = ctx.scale_of(node.output[0])
    parts = []
    for j, p in enumerate(levels):
        o = ctx.new(f"{node.output[0]}.pow{j}", shape, x.perm, scale)
        ctx.kernel(f"{node.name or 'Pow'}.pow{j}", node.name, [Term(x, ctx.diag(x.cols, 1))],
                   o, x.scale, func=lambda v, p=float(p): np.power(np.asarray(v, np.float64), p),
                   pre=(r.lo, r.hi), role="linearization", kind="pow")
        parts.append(o)
    code = code.reshape(shape)
    ctx.vals[node.output[0]] = ctx.gather(node.output[0], node.name, parts,
                                          lambda *idx: np.choose(code, idx), x.perm)
    ctx.notes.append(f"{node.name or 'Pow'}: {levels.size} exponents, a PWL table each")


@rule("PRelu")
def prelu(ctx, node):
    """PRelu: with a scalar slope a PWL function; per channel ``relu(x) - a * relu(-x)``."""
    if ctx.scalar(node.input[1]) is not None:
        return unary(ctx, node)
    # Per-channel slope: relu(x) - a * relu(-x), two PWL kernels and a sum.
    x = ctx.val(node.input[0], node)
    a = ctx.consts.get(node.input[1])
    if a is None:
        raise LinearizeError(f"PRelu (node {node.name!r}): slope must be constant")
    r = ctx.range_of(node.input[0])
    rank = len(x.shape)
    if rank >= 3:                                # per-channel slope: channels last
        x = ctx.relayout(x, channels_last(rank), node.name)
    n = x.cols
    v = per_channel(a, rank, n, 1 if rank >= 3 else -1)
    if v is None and a.ndim == 1 and rank >= 3 and a.size == n != x.shape[-1]:
        v = a.astype(np.float64)     # opset < 7 exports: a 1-D slope is per channel
    if v is None:
        raise LinearizeError(f"PRelu (node {node.name!r}): slope must be a scalar or one "
                             f"value per channel")
    a = v
    pos = ctx.new(node.output[0] + ".pos", x.shape, x.perm, max(r.hi, 1e-6) / INT8_MAX)
    neg = ctx.new(node.output[0] + ".neg", x.shape, x.perm, max(-r.lo, 1e-6) / INT8_MAX)
    ctx.kernel(f"{node.name}.pos", node.name, [Term(x, ctx.diag(n, 1))], pos, x.scale,
               func=pwl_lib.relu, pre=(r.lo, r.hi), role="linearization", kind="relu")
    ctx.kernel(f"{node.name}.neg", node.name, [Term(x, ctx.diag(n, -1))], neg, x.scale,
               func=pwl_lib.relu, pre=(-r.hi, -r.lo), role="linearization", kind="relu")
    emit_sum(ctx, node, [(pos, np.ones(n)), (neg, -a)], node.output[0], x.shape, x.perm)


def _binary_operands(ctx, node):
    a, b = node.input[:2]
    out_shape = ctx.shape_of(node.output[0])
    return a, b, out_shape


def _broadcast_to(ctx, t: Tensor, shape, perm, origin) -> Tensor:
    if tuple(t.shape) == tuple(shape):
        return ctx.relayout(t, perm, origin)
    return ctx.gather(f"{t.name}.bcast", origin, [t],
                      lambda i: np.broadcast_to(i.reshape((1,) * (len(shape) - i.ndim) + i.shape),
                                                shape), perm)


@rule("Add", "Sub")
def add(ctx, node):
    """Add/Sub: an attention mask into the scores (recorded for the softmax), an
    element-wise chain, an int32 sum of two tensors, or a constant addend (a bias when it is
    one value per column, else two-digit constant operands)."""
    sign = -1.0 if node.op_type == "Sub" else 1.0
    if sign > 0 and (node.input[0] in ctx.masks or node.input[1] in ctx.masks):
        mask, scores = node.input[:2] if node.input[0] in ctx.masks else node.input[1::-1]
        users = ctx.consumers[node.output[0]]
        if node.output[0] in ctx.graph_outputs or not users or \
                any(u.op_type not in ("Softmax", "LogSoftmax") for u in users):
            raise LinearizeError(f"Add (node {node.name!r}): an attention mask must feed "
                                 f"a Softmax only")
        if tuple(ctx.shape_of(node.output[0])) != tuple(ctx.shape_of(scores)):
            raise LinearizeError(f"Add (node {node.name!r}): the mask must broadcast to "
                                 f"the scores")
        ctx.val(scores, node)
        ctx.masked[node.output[0]] = (scores, mask)
        return
    if _elementwise_chain(ctx, node):
        return
    a, b, shape = _binary_operands(ctx, node)
    if a in ctx.vals and b in ctx.vals:
        ta, tb = ctx.val(a, node, percol=True), ctx.val(b, node, percol=True)
        lead = ta if tuple(ta.shape) == tuple(shape) else tb
        perm = lead.perm
        parts = []
        for name, t, c in ((a, ta, 1.0), (b, tb, sign)):
            for p in ctx.split.get(name, [t]):
                p = _broadcast_to(ctx, p, shape, perm, node.name)
                parts.append((p, c * np.ones(p.cols)))
        emit_sum(ctx, node, parts, node.output[0], shape, perm)
        return
    x_name, c_name = (a, b) if a in ctx.vals else (b, a)
    x = ctx.val(x_name, node, percol=True)
    c = ctx.consts[c_name].astype(np.float64)
    coef = 1.0 if (x_name == a or sign > 0) else -1.0
    csign = sign if x_name == a else 1.0
    if tuple(x.shape) != tuple(shape):
        x = _broadcast_to(ctx, x, shape, x.perm, node.name)
    n = x.cols
    vs = [1] * (len(shape) - c.ndim) + list(c.shape)
    per_col = all(d == 1 for i, d in enumerate(vs) if i != x.perm[-1])
    if per_col:
        bias = csign * np.broadcast_to(c.reshape(-1), (n,))
        emit_sum(ctx, node, [(x, coef * np.ones(n))], node.output[0], shape, x.perm, bias=bias)
        return
    # A constant tensor: operands of its own in the int32 sum (two int8 digits per
    # element, per-column scales: about 14 bits).
    full = np.broadcast_to(c.reshape(vs), shape)
    probe = Tensor("probe", *storage(shape, x.perm), 1.0, 1, None, tuple(shape), x.perm)
    parts = [(x, coef * np.ones(n))]
    for t in ctx.digits(c_name, probe.to_matrix(full), tuple(shape), x.perm):
        parts.append((t, csign * np.ones(n)))
    emit_sum(ctx, node, parts, node.output[0], shape, x.perm)


@rule("Mul", "Div")
def mul(ctx, node):
    """Mul/Div: an element-wise chain, a product of two tensors (:func:`_product`), a
    quotient of two tensors (:func:`_quotient`), or a constant factor (the scale, or a
    diagonal weight)."""
    div = node.op_type == "Div"
    if _elementwise_chain(ctx, node):
        return
    a, b, shape = _binary_operands(ctx, node)
    if a in ctx.vals and b in ctx.vals and not div:
        return _product(ctx, node, ctx.val(a, node), ctx.val(b, node), shape)
    if div and b in ctx.vals:
        return _quotient(ctx, node, a, b, shape)
    x_name, c_name = (a, b) if a in ctx.vals else (b, a)
    x = ctx.val(x_name, node, percol=True)
    c = ctx.consts[c_name].astype(np.float64)
    if div:
        c = 1.0 / c
    if c.size == 1 and float(c.reshape(())) > 0 and tuple(x.shape) == tuple(shape):
        # A positive scalar only changes the scale: no step.
        out = ctx.new(node.output[0], x.shape, x.perm, x.scale * float(c.reshape(())))
        out.base, out.colscale = x, x.colscale
        ctx.vals[node.output[0]] = out
        ctx.notes.append(f"{node.name or node.op_type}: scalar folded into the scale")
        return
    if tuple(x.shape) != tuple(shape):
        x = _broadcast_to(ctx, x, shape, x.perm, node.name)
    n = x.cols
    vs = [1] * (len(shape) - c.ndim) + list(c.shape)
    if not all(d == 1 for i, d in enumerate(vs) if i != x.perm[-1]):
        raise LinearizeError(f"{node.op_type} (node {node.name!r}): constant must be a scalar "
                             f"or per-{'channel' if len(shape) > 2 else 'column'} vector")
    emit_sum(ctx, node, [(x, np.broadcast_to(c.reshape(-1), (n,)))], node.output[0], shape, x.perm)


def _product(ctx, node, ta, tb, shape, absmax=None):
    """``x * y = A B ((x/A + y/B)^2 - (x/A - y/B)^2) / 4`` with two PWL squares, ``A, B``
    the magnitudes of ``x`` and ``y`` (*absmax*; default: the calibrated ranges of the
    node's two inputs): both operands enter the squares at full int8 resolution, however
    different their sizes."""
    perm = ta.perm if tuple(ta.shape) == tuple(shape) else tb.perm
    ta = _broadcast_to(ctx, ta, shape, perm, node.name)
    tb = _broadcast_to(ctx, tb, shape, perm, node.name)
    n = ta.cols
    if absmax is None:
        absmax = (ctx.range_of(node.input[0]).absmax, ctx.range_of(node.input[1]).absmax)
    A, B = (max(float(v), 1e-12) for v in absmax)
    sq = []
    for tag, sgn in (("sum", 1.0), ("diff", -1.0)):
        w = np.array([ta.scale / A, sgn * tb.scale / B])
        top = np.max(np.abs(w))
        q = np.round(w / top * INT8_MAX).astype(np.int64)
        o = ctx.new(f"{node.output[0]}.{tag}2", shape, perm, 4.0 / INT8_MAX)
        ctx.kernel(f"{node.name}.{tag}2", node.name,
                   [Term(ta, ctx.diag(n, q[0])), Term(tb, ctx.diag(n, q[1]))], o,
                   top / INT8_MAX, func=lambda v: np.asarray(v) ** 2, pre=(-2.0, 2.0),
                   role="linearization", kind="square")
        sq.append(o)
    emit_sum(ctx, node, [(sq[0], 0.25 * A * B * np.ones(n)), (sq[1], -0.25 * A * B * np.ones(n))],
             node.output[0], shape, perm)


def _quotient(ctx, node, a, b, shape):
    """``a / b`` of two tensors: a PWL reciprocal of *b* on its calibrated range (which
    must not reach 0; the table's range reduction covers one that spans decades), then
    the product :func:`_product`."""
    ta, tb = ctx.val(a, node), ctx.val(b, node)
    rb = ctx.range_of(b)
    if rb.lo <= 0.0 <= rb.hi:
        raise LinearizeError(
            f"Div (node {node.name!r}): the divisor {b!r} takes values in "
            f"[{rb.lo:.4g}, {rb.hi:.4g}] on the calibration inputs, which reach 0: a "
            f"reciprocal needs a divisor of one sign, bounded away from 0")
    small = min(abs(rb.lo), abs(rb.hi))
    recip = ctx.new(f"{node.output[0]}.recip", tb.shape, tb.perm, 1.0 / small / INT8_MAX)
    ctx.kernel(f"{node.name or 'Div'}.recip", node.name,
               [Term(tb, ctx.diag(tb.cols, 1))], recip, tb.scale * tb.colw,
               func=lambda v: 1.0 / np.asarray(v, dtype=np.float64), pre=(rb.lo, rb.hi),
               role="linearization", kind="reciprocal")
    ctx.notes.append(f"{node.name or 'Div'}: a / b as a * (1/b), a PWL reciprocal of "
                     f"{b} on [{rb.lo:.4g}, {rb.hi:.4g}]")
    _product(ctx, node, ta, recip, shape, absmax=(ctx.range_of(a).absmax, 1.0 / small))

