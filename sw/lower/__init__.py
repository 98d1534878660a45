"""Lowering: an ONNX graph becomes GEMM kernels, PWL tables and host data movement.

This is the NeuralMatrix step. Every ONNX node is lowered onto :mod:`neuralmatrix.sw.ir` by
the rule registered for its operator (:data:`RULES`; :func:`~.rules.rule`), one module per
op family, all sharing one :class:`~.context.Context` (tensors, scales, constants, emitted
steps):

* :mod:`.linear` -- Conv (im2col times a block-diagonal weight matrix), Gemm, MatMul (constant
  or activation operands); BatchNormalization and constant per-channel arithmetic folded into
  the weights and the int32 bias.
* :mod:`.elementwise` -- activations and element-wise chains (one PWL table, fused onto the
  preceding linear layer's output by :mod:`.fusion`), PRelu, Add/Sub (int32 sums), Mul/Div
  (diagonal weights, PWL squares for products of tensors, a PWL reciprocal for quotients).
* :mod:`.pool` -- ReduceMean/ReduceSum and GlobalAveragePool (GEMM with a ones vector),
  AveragePool (sum of shifted views), MaxPool (a tree of ``a + relu(b - a)``).
* :mod:`.softmax` -- Softmax and LogSoftmax: a max tree, exp, a log-sum and a final exp.
* :mod:`.layernorm` -- LayerNormalization and its decomposed form
  (:mod:`~neuralmatrix.sw.patterns`).
* :mod:`.masks` -- the key-padding attention mask of BERT exports, the IsNaN guard.
* :mod:`.movement` -- Reshape, Transpose, Concat, Split, Slice, Pad, Expand, Gather, ...:
  host gathers, embedding lookups.

Quantization decisions (activation scales from calibration, per-column scales where every
consumer folds them, per-channel weight scales, int32 biases, requantization multipliers)
are made here, with :mod:`neuralmatrix.sw.quantize`. Adding an operator is adding a rule in
its family's module.
"""

from __future__ import annotations

import numpy as np
import onnx

from neuralmatrix.hw.params import HwConfig

from ..ir import Network, Tensor
from ..quantize import Range
from . import elementwise, layernorm, linear, masks, movement, pool, softmax  # noqa: F401
from .context import ELEMENTWISE, FUNCTION_KINDS, Context, LinearizeError, channels_last
from .rules import RULES, apply, rule

__all__ = ["LinearizeError", "ELEMENTWISE", "FUNCTION_KINDS", "SUPPORTED_OPS", "RULES", "rule",
           "Context", "linearize"]

#: The ONNX operators with a lowering rule. (The frontend also accepts the shape and mask
#: arithmetic that folds away or that :func:`~.masks.find_masks` takes whole.)
SUPPORTED_OPS: frozenset[str] = frozenset(RULES)

_CONV_READERS = ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "BatchNormalization")


def linearize(model: onnx.ModelProto, config: HwConfig, ranges: dict[str, Range], *,
              segments: int = 16, calibration: str = "max", pwl_method: str = "curvature",
              func_segments: dict[str, int] | None = None) -> Network:
    """Lower *model* (from :func:`~neuralmatrix.sw.frontend.load_model`: static shapes,
    constants folded) onto kernels and transfers.

    Parameters
    ----------
    config : HwConfig
        The hardware (PWL table size, array shape).
    ranges : dict
        :func:`~neuralmatrix.sw.quantize.calibrate` of the same model.
    segments : int
        PWL segments per function (at most ``config.pwl_segments``).
    calibration : str
        Threshold method of :func:`~neuralmatrix.sw.quantize.threshold`.
    pwl_method : str
        Breakpoint placement of :func:`neuralmatrix.sw.pwl.fit` (``uniform`` is fitted over
        the same range, placed uniformly, and stored as breakpoints).
    func_segments : dict, optional
        Segment count per function kind (``"exp"``, ``"gelu"``, ``"rsqrt"``, ...) overriding
        *segments*.

    Raises
    ------
    LinearizeError
        An operator use no rule can map, naming the node, its operator and the reason (also
        for any unexpected failure inside a rule, which is kept as ``__cause__``).
    """
    try:
        ctx = Context(model, config, ranges, segments, calibration, pwl_method,
                      func_segments or {})
        inputs = _inputs(ctx)
        masks.find_masks(ctx)
        ctx.find_percol()
    except LinearizeError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported as one error, the original as cause
        raise LinearizeError(f"graph analysis before lowering failed: {type(exc).__name__}: "
                             f"{exc}") from exc
    g = model.graph
    for node in g.node:
        if id(node) in ctx.done:
            continue
        if id(node) in ctx.layer_norms:
            apply(layernorm.lower_chain, ctx, node)
            continue
        fn = RULES.get(node.op_type)
        if fn is None:
            raise LinearizeError(f"{node.op_type} (node {node.name!r}) has no lowering",
                                 node=node.name, op=node.op_type)
        if all(i in ctx.consts or not i for i in node.input):
            continue                         # constant subgraph left by the frontend
        if not _empty(ctx, node):
            apply(fn, ctx, node)
    outputs = {}
    for o in g.output:
        if o.name not in ctx.vals:
            raise LinearizeError(f"graph output {o.name!r} is a constant or was not computed")
        outputs[o.name] = ctx.vals[o.name]
    return Network(inputs, outputs, ctx.steps, ctx.notes)


#: Ops whose rule takes an empty activation input and still has a non-empty output.
_EMPTY_INPUT_OK = frozenset({"Concat"})


def _empty(ctx: Context, node) -> bool:
    """Tensors with a zero dimension. A node whose outputs are all empty computes nothing:
    its outputs become empty tensors (no step), and True is returned. A node that reads an
    empty activation into a non-empty output (a reduction over no elements, whose result is
    a constant) is one clear error, except for the ops of :data:`_EMPTY_INPUT_OK`."""
    shapes = {o: ctx.shapes.get(o) for o in node.output if o}
    if shapes and all(s is not None and 0 in tuple(s) for s in shapes.values()):
        src = next((ctx.vals[i] for i in node.input if i in ctx.vals), None)
        if src is None:
            return False
        for o, shape in shapes.items():
            ctx.vals[o] = ctx.gather(o, node.name, [src],
                                     lambda i, shape=shape: np.zeros(shape, dtype=np.int64))
        return True
    if node.op_type in _EMPTY_INPUT_OK:
        return False
    for name in node.input:
        shape = ctx.shapes.get(name) if name and name not in ctx.consts else None
        if shape is not None and 0 in tuple(shape):
            raise LinearizeError(f"{node.op_type} (node {node.name!r}): input {name!r} has "
                                 f"shape {tuple(shape)}, no elements, and the output has "
                                 f"some: an op over an empty tensor (its result a constant) "
                                 f"is not supported", node=node.name, op=node.op_type)
    return False


def _inputs(ctx: Context) -> dict[str, Tensor | None]:
    """The graph's activation inputs as tensors (channels last when a convolution or pooling
    reads them); integer inputs (indices for lookups) as None."""
    inputs: dict[str, Tensor | None] = {}
    for vi in ctx.model.graph.input:
        if vi.name in ctx.consts:
            continue
        elem = vi.type.tensor_type.elem_type
        if elem in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            inputs[vi.name] = None           # indices: consumed by Lookup steps
            continue
        shape = ctx.shapes[vi.name]
        conv = any(n.op_type in _CONV_READERS for n in ctx.consumers[vi.name])
        perm = channels_last(len(shape)) if conv else tuple(range(len(shape)))
        t = ctx.new(vi.name, shape, perm, ctx.scale_of(vi.name))
        ctx.vals[vi.name] = t
        inputs[vi.name] = t
    return inputs
