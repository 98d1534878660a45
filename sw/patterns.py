"""Subgraphs that the compiler lowers as one operator.

Exporters write some operators as a chain of primitive nodes. The decomposed LayerNorm is
the one that matters: ``torch.onnx.export`` below opset 17, TensorFlow and Keras converters
and many hand-written models spell LayerNormalization as::

    mean = ReduceMean(x, axes)            # the trailing axes, keepdims=1
    d    = Sub(x, mean)
    sq   = Pow(d, 2)                      # or Mul(d, d)
    var  = ReduceMean(sq, axes)
    s    = Sqrt(Add(var, epsilon))        # epsilon a constant
    y    = Div(d, s)                      # or Mul(d, Reciprocal(s))
    y    = Mul(y, gamma)                  # optional, gamma constant
    y    = Add(y, beta)                   # optional, beta constant

:func:`find_layer_norms` finds each such chain whose intermediate tensors are used only
inside it, and describes it as a :class:`LayerNormPattern`. Calibration records the same
intermediate statistics for it as for a LayerNormalization node, and the linearizer lowers
it exactly as LayerNormalization, so both spellings of one network compile to the same
program. Anything else in the chain (another consumer of an intermediate, a non-constant
epsilon, reductions over other axes) leaves the nodes as they are.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["LayerNormPattern", "find_layer_norms"]


@dataclass(frozen=True)
class LayerNormPattern:
    """One decomposed LayerNorm.

    Attributes
    ----------
    x, output : str
        Input tensor and the tensor the chain computes (after gamma and beta when present).
    axis : int
        First normalized axis (non-negative); every axis from it on is normalized.
    epsilon : float
    gamma, beta : np.ndarray or None
        The constant scale and shift, None when the chain has none.
    nodes : tuple of onnx.NodeProto
        Every node of the chain, in graph order; the first one (``ReduceMean`` of *x*) is
        where the lowering happens.
    """

    x: str
    output: str
    axis: int
    epsilon: float
    gamma: np.ndarray | None
    beta: np.ndarray | None
    nodes: tuple

    @property
    def name(self) -> str:
        """A name for messages and kernels: the name of the chain's first node."""
        first = self.nodes[0]
        return first.name or first.output[0]


def find_layer_norms(model: onnx.ModelProto, shapes: dict[str, tuple] | None = None
                     ) -> list[LayerNormPattern]:
    """Every decomposed LayerNorm of *model*'s graph (see the module docstring).

    Parameters
    ----------
    model : onnx.ModelProto
        Static shapes are needed to check the axes: *shapes* (tensor name -> shape), else
        the graph's inputs, outputs and value_info.
    """
    g = model.graph
    consts = {t.name: t for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    if shapes is None:
        shapes = {}
        for vi in [*g.input, *g.value_info, *g.output]:
            dims = vi.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                shapes[vi.name] = tuple(d.dim_value for d in dims)
    users: dict[str, list] = defaultdict(list)
    for node in g.node:
        for i in dict.fromkeys(node.input):             # Mul(d, d) uses d once
            users[i].append(node)
    outputs = {o.name for o in g.output}
    order = {id(n): k for k, n in enumerate(g.node)}

    def const(name):
        t = consts.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def only_user(name, op_types):
        """The one consumer of *name* if it is of one of *op_types* and *name* is internal."""
        us = users.get(name, [])
        if name in outputs or len(us) != 1 or us[0].op_type not in op_types:
            return None
        return us[0]

    def other_input(node, name):
        a, b = node.input[0], node.input[1]
        return b if a == name else a if b == name else None

    def reduce_axes(node, rank):
        if node.op_type != "ReduceMean":
            return None
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("keepdims", 1) != 1:
            return None
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = const(node.input[1])
            axes = None if axes is None else axes.reshape(-1).tolist()
        if not axes:
            return None
        axes = sorted(int(a) % rank for a in axes)
        if axes != list(range(axes[0], rank)):
            return None
        return axes[0]

    def scalar(name, value=None):
        c = const(name)
        if c is None or c.size != 1:
            return None
        c = float(c.reshape(()))
        return c if value is None or c == value else None

    def per_axis(c, shape, axis):
        """*c* broadcast over the normalized axes only (constant along the others)."""
        if c is None or c.ndim > len(shape):
            return None
        vs = (1,) * (len(shape) - c.ndim) + tuple(c.shape)
        if any(d != 1 for d in vs[:axis]):
            return None
        try:
            return np.broadcast_to(c.reshape(vs[axis:]), tuple(shape[axis:])).reshape(-1)
        except ValueError:
            return None

    found = []
    for mean in g.node:
        x = mean.input[0] if mean.input else None
        shape = shapes.get(x)
        if shape is None or not shape:
            continue
        axis = reduce_axes(mean, len(shape))
        if axis is None:
            continue
        sub = only_user(mean.output[0], ("Sub",))
        if sub is None or list(sub.input) != [x, mean.output[0]]:
            continue
        d = sub.output[0]
        d_users = users.get(d, [])
        if d in outputs or len(d_users) != 2:
            continue
        sq = next((u for u in d_users if (u.op_type == "Pow" and u.input[0] == d
                                          and scalar(u.input[1], 2.0) is not None)
                   or (u.op_type == "Mul" and list(u.input) == [d, d])), None)
        if sq is None:
            continue
        norm = next((u for u in d_users if u is not sq), None)
        var = only_user(sq.output[0], ("ReduceMean",))
        if var is None or reduce_axes(var, len(shape)) != axis:
            continue
        add = only_user(var.output[0], ("Add",))
        eps = None if add is None else scalar(other_input(add, var.output[0]))
        if eps is None or eps < 0:
            continue
        sqrt = only_user(add.output[0], ("Sqrt",))
        if sqrt is None:
            continue
        chain = [mean, sub, sq, var, add, sqrt]
        if norm.op_type == "Div" and list(norm.input) == [d, sqrt.output[0]]:
            if only_user(sqrt.output[0], ("Div",)) is not norm:
                continue
        elif norm.op_type == "Mul":
            recip = only_user(sqrt.output[0], ("Reciprocal",))
            if recip is None or other_input(norm, d) != recip.output[0] or \
                    only_user(recip.output[0], ("Mul",)) is not norm:
                continue
            chain.append(recip)
        else:
            continue
        chain.append(norm)
        out, affine = norm.output[0], {}
        for op in ("Mul", "Add"):                   # optional gamma, then optional beta
            nxt = only_user(out, (op,))
            c = None if nxt is None else per_axis(const(other_input(nxt, out)), shape, axis)
            if c is not None:
                affine[op] = c
                chain.append(nxt)
                out = nxt.output[0]
        gamma, beta = affine.get("Mul"), affine.get("Add")
        if shapes.get(out, shape) != shape:
            continue
        found.append(LayerNormPattern(x, out, axis, eps, gamma, beta,
                                      tuple(sorted(chain, key=lambda n: order[id(n)]))))
    return found
