"""ONNX frontend: read a model and bring it into the static form the compiler lowers.

:func:`load_model` runs these stages in order; each failure raises :class:`FrontendError`
naming the source and the problem:

1. **Read** a path (external data is loaded from the file's folder) or copy a
   ``ModelProto``; local functions are inlined.
2. **Opset**: the default-domain opset is read as is in ``MIN_OPSET..MAX_OPSET``; a newer
   model is converted down to ``MAX_OPSET`` and an older one up to ``CONVERT_TO_OPSET`` with
   ``onnx.version_converter`` (tested on opsets 7..28); a conversion that fails is one
   error naming the opset and the op that blocked it.
3. **Check** with ``onnx.checker.check_model``.
4. **Static inputs**: every graph input gets a fully static shape, from ``input_shapes`` or
   with ``default_dim`` for each unknown dimension. Graph inputs that are also initializers
   (old exporters) stop being inputs.
5. **Shape inference** (strict, with data propagation).
6. **Constant folding and cleanup**, repeated until nothing changes: nodes whose inputs are
   all constant, whatever their op, are evaluated (``onnx.reference``, onnxruntime where
   the reference fails) into initializers, ``Shape``/``Size`` of a
   static tensor become constants (so exporters' shape arithmetic disappears),
   ``Identity``/``Dropout`` are bypassed, dead nodes and unused initializers are dropped.
   Outputs larger than ``MAX_FOLD_ELEMENTS`` are not folded.
7. **Operator check**: nodes left whose op is not in :data:`SUPPORTED_OPS` raise one
   :class:`UnsupportedOpsError` listing all of them. Finally every tensor must have a
   static shape.

The result's ``graph.value_info`` (with ``graph.input``/``graph.output``) holds the static
shape of every tensor.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import (
    external_data_helper, helper, inliner, numpy_helper, shape_inference, version_converter,
)
from onnx.reference import ReferenceEvaluator

__all__ = [
    "SUPPORTED_OPS",
    "MIN_OPSET",
    "MAX_OPSET",
    "CONVERT_TO_OPSET",
    "MAX_FOLD_ELEMENTS",
    "FrontendError",
    "UnsupportedOpsError",
    "load_model",
    "unsupported_ops",
]

#: ONNX (default-domain) operator types the compiler accepts. Shape arithmetic and mask ops
#: (Shape, Cast, Equal, Where, ConstantOfShape, ...) are listed because they occur in
#: exported models; most of them fold away in :func:`load_model`.
SUPPORTED_OPS: frozenset[str] = frozenset({
    # linear algebra
    "Conv", "Gemm", "MatMul",
    # element-wise arithmetic
    "Add", "Sub", "Mul", "Div", "Neg", "Pow", "Reciprocal", "Sqrt", "Exp", "Erf", "Clip",
    # activations
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Softplus", "Gelu",
    # normalization, softmax, reductions
    "BatchNormalization", "LayerNormalization", "Softmax", "LogSoftmax",
    "ReduceMean", "ReduceSum",
    # pooling
    "MaxPool", "AveragePool", "GlobalAveragePool", "LRN",
    # data movement
    "Flatten", "Reshape", "Transpose", "Concat", "Split", "Slice", "Gather", "Squeeze",
    "Unsqueeze", "Expand", "Pad",
    # pass-through, shape arithmetic and masks
    "Identity", "Dropout", "Cast", "Shape", "Constant", "ConstantOfShape", "Equal", "Where",
    # attention-mask arithmetic (lowered only as a key-padding mask of a softmax)
    "And", "Or", "Not", "GatherND", "IsNaN",
})

#: Oldest and newest default-domain opset read as is.
MIN_OPSET = 11
MAX_OPSET = 21
#: Opset that models older than :data:`MIN_OPSET` are converted to.
CONVERT_TO_OPSET = 17
#: Constant folding leaves a node alone if its outputs would hold more elements than this
#: (128 Mi: VGG-19's first FC weight, 25088 x 4096, is made by ConstantOfShape in old files).
MAX_FOLD_ELEMENTS = 128 * 2**20
#: Ops that exist only to compute constants: one left after folding is an error.
_FOLD_ONLY_OPS = frozenset({"Constant", "ConstantOfShape", "Shape", "Size"})

_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
_NONDETERMINISTIC_OPS = frozenset({
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
    "Multinomial", "Bernoulli",
})
# Ops whose output can be far larger than their inputs: folded only when the output size is
# known beforehand.
_EXPANDING_OPS = frozenset({
    "ConstantOfShape", "Expand", "Tile", "Range", "Pad", "Resize", "Upsample", "OneHot",
    "EyeLike",
})
_GRAPH_ATTRIBUTE_TYPES = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
_MAX_LISTED_TENSORS = 20
_INFER_VALUE_LIMIT = 4096

Shape = tuple[int, ...]


class FrontendError(ValueError):
    """A model the frontend cannot read, check, convert or make static.

    The message names the model (its path, or ``model 'graph name'`` for a ``ModelProto``)
    and the problem.
    """


class UnsupportedOpsError(FrontendError):
    """The folded model still contains operators the compiler does not support.

    Parameters
    ----------
    source : str
        The model's path or label, as it starts the message.
    unsupported : list of (str, str)
        ``(op_type, node name)`` per offending node, as :func:`unsupported_ops` returns.
    model : onnx.ModelProto, optional
        The model after folding, in which those nodes remain.

    Attributes
    ----------
    unsupported : list of (str, str)
        ``(op_type, node name)`` of every unsupported node, in graph order. Ops of other
        domains read ``"domain:op_type"``; unnamed nodes read ``"#<node index>"``.
    model : onnx.ModelProto or None
        The folded model, for tools that want to show what is left.
    """

    def __init__(self, source: str, unsupported: list[tuple[str, str]],
                 model: onnx.ModelProto | None = None):
        self.source = source
        self.unsupported = list(unsupported)
        self.model = model
        count = len(self.unsupported)
        lines = [
            f"{source}: {count} unsupported operator{'s' if count != 1 else ''} "
            f"(the compiler supports {len(SUPPORTED_OPS)} ONNX operators, listed in "
            f"neuralmatrix.sw.frontend.SUPPORTED_OPS):"
        ]
        lines += [f"  {op} ({_describe_node_name(name)})" for op, name in self.unsupported]
        super().__init__("\n".join(lines))

    def __reduce__(self):
        return type(self), (self.source, self.unsupported, self.model)


def load_model(src: str | os.PathLike | onnx.ModelProto, *,
               input_shapes: Mapping[str, Iterable[int]] | None = None,
               default_dim: int = 1) -> onnx.ModelProto:
    """Read an ONNX model and return it static, folded and checked for supported ops.

    Parameters
    ----------
    src : str, os.PathLike or onnx.ModelProto
        Path of an ``.onnx`` file (external data is read relative to its folder), or a
        model, which is copied, never modified.
    input_shapes : mapping of str to tuple of int, optional
        Full static shape per graph input name; must agree with the input's declared rank
        and static dimensions.
    default_dim : int, default 1
        Value for every input dimension still symbolic or unknown.

    Returns
    -------
    onnx.ModelProto
        Opset ``MIN_OPSET..MAX_OPSET``, only :data:`SUPPORTED_OPS`, no constant
        subgraphs, dead nodes, ``Dropout`` or ``Identity`` (except one passing a graph
        input or constant straight to a graph output), and a static shape for every
        tensor in ``graph.input``, ``graph.value_info`` or ``graph.output``.

    Raises
    ------
    UnsupportedOpsError
        If operators outside :data:`SUPPORTED_OPS` remain after folding; lists every one.
    FrontendError
        If the file is missing or not ONNX, the opset is too new or cannot be converted,
        the checker or shape inference fails, `input_shapes` does not fit the inputs, or a
        tensor's shape stays unknown.
    TypeError, ValueError
        If `src`, `input_shapes` or `default_dim` have the wrong type or value.
    """
    _check_dim("default_dim", default_dim)
    model, label = _read(src)
    model = _convert_opset(model, label)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise FrontendError(f"{label}: the ONNX checker rejects the model: {exc}") from exc
    if model.functions:
        model = inliner.inline_local_functions(model)
    _make_inputs_static(model.graph, input_shapes or {}, default_dim, label)
    model.ir_version = max(model.ir_version, 4)  # initializers need not be inputs from IR 4
    del model.graph.value_info[:]  # exporters' hints, possibly symbolic; inferred anew
    _sums_to_adds(model.graph)
    model = _infer_shapes(model, label)
    model = _fold(model, label)
    _check_folded(model.graph, label)
    unsupported = unsupported_ops(model)
    if unsupported:
        raise UnsupportedOpsError(label, unsupported, model)
    _check_static_shapes(model.graph, label)
    return model


def _sums_to_adds(graph: onnx.GraphProto) -> None:
    """Rewrite every n-input ``Sum`` as a chain of n - 1 ``Add`` nodes (one input: Identity),
    so the linearizer's element-wise sums serve it."""
    nodes = []
    for node in graph.node:
        if node.op_type != "Sum":
            nodes.append(node)
            continue
        ins, out = list(node.input), node.output[0]
        if len(ins) == 1:
            nodes.append(onnx.helper.make_node("Identity", ins, [out], name=node.name))
            continue
        acc = ins[0]
        for k, x in enumerate(ins[1:], 1):
            dst = out if k == len(ins) - 1 else f"{out}__sum{k}"
            nodes.append(onnx.helper.make_node("Add", [acc, x], [dst], name=f"{node.name}/add{k}"))
            acc = dst
    del graph.node[:]
    graph.node.extend(nodes)


def unsupported_ops(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """List the nodes of `model`'s graph whose op is not in :data:`SUPPORTED_OPS`.

    Parameters
    ----------
    model : onnx.ModelProto
        Usually the result of folding, as inside :func:`load_model`.

    Returns
    -------
    list of (str, str)
        ``(op_type, node name)`` in graph order; ops of other domains read
        ``"domain:op_type"``, unnamed nodes ``"#<node index>"``.
    """
    found = []
    for index, node in enumerate(model.graph.node):
        if node.domain in _DEFAULT_DOMAINS and node.op_type in SUPPORTED_OPS:
            continue
        op = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}:{node.op_type}"
        found.append((op, node.name or f"#{index}"))
    return found


# -- reading and opset ---------------------------------------------------------------------


def _read(src) -> tuple[onnx.ModelProto, str]:
    """Return a private copy of the model and the label that starts error messages."""
    if isinstance(src, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(src)
        label = f"model {src.graph.name!r}" if src.graph.name else "model"
    elif isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        label = str(path)
        if not os.path.exists(path):
            raise FrontendError(f"{label}: no such file")
        if not os.path.isfile(path):
            raise FrontendError(f"{label}: not a file")
        try:
            model = onnx.load(path, load_external_data=False)
        except (DecodeError, OSError, ValueError) as exc:
            raise FrontendError(f"{label}: not an ONNX model (unreadable protobuf: {exc})") from exc
        if not model.HasField("graph") or model.ir_version <= 0:
            raise FrontendError(f"{label}: not an ONNX model (no graph or IR version)")
        try:
            external_data_helper.load_external_data_for_model(model, os.path.dirname(path) or ".")
        except (OSError, ValueError) as exc:
            raise FrontendError(f"{label}: cannot read the model's external data: {exc}") from exc
    else:
        raise TypeError(f"model must be a path or an onnx.ModelProto, not {type(src).__name__}")
    if not model.HasField("graph"):
        raise FrontendError(f"{label}: not an ONNX model (no graph)")
    return model, label


def _default_opset(model: onnx.ModelProto, label: str) -> int:
    versions = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise FrontendError(f"{label}: the model imports no default-domain (ai.onnx) opset")
    return max(versions)


def _convert_opset(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """Bring the model into ``MIN_OPSET..MAX_OPSET``: a newer one is converted down to
    ``MAX_OPSET``, an older one up to ``CONVERT_TO_OPSET``, with ``onnx.version_converter``."""
    opset = _default_opset(model, label)
    if MIN_OPSET <= opset <= MAX_OPSET:
        return model
    target = MAX_OPSET if opset > MAX_OPSET else CONVERT_TO_OPSET
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as exc:  # the C++ converter raises several unrelated types
        blocking = _blocking_ops(model, opset, target, str(exc))
        which = (f"; blocked by {', '.join(blocking)}" if blocking else "")
        raise FrontendError(
            f"{label}: converting opset {opset} to opset {target} (the frontend reads "
            f"{MIN_OPSET}..{MAX_OPSET}) failed{which}: {_first_line(exc)}") from None
    # The converter keeps the IR version, which may be too old for what it produced
    # (e.g. initializers that are not graph inputs need IR >= 4).
    needed = helper.find_min_ir_version_for(list(converted.opset_import), ignore_unknown=True)
    converted.ir_version = max(converted.ir_version, needed)
    return converted


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _blocking_ops(model: onnx.ModelProto, opset: int, target: int, message: str) -> list[str]:
    """The op(s) a failed opset conversion stopped at: the one the converter names, else
    every op of the graph whose definition at *opset* does not exist at *target*."""
    ops = list(dict.fromkeys(n.op_type for n in model.graph.node if n.domain in _DEFAULT_DOMAINS))
    named = [op for op in ops if f" {op} " in f" {message} " or f" of {op} " in message]
    if named:
        return [f"{op} (node {_node_of(model, op)!r})" for op in named]
    found = []
    for op in ops:
        try:
            since = onnx.defs.get_schema(op, opset).since_version
            older = onnx.defs.get_schema(op, target).since_version if since > target else since
        except onnx.defs.SchemaError:
            found.append(op)
            continue
        if since > target and older == since:
            found.append(op)
    return [f"{op} (node {_node_of(model, op)!r})" for op in found]


def _node_of(model: onnx.ModelProto, op: str) -> str:
    for index, node in enumerate(model.graph.node):
        if node.op_type == op:
            return node.name or f"#{index}"
    return ""


# -- static input shapes and shape inference -----------------------------------------------


def _check_dim(what: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, not {value!r}")


def _make_inputs_static(graph: onnx.GraphProto, input_shapes: Mapping[str, Iterable[int]],
                        default_dim: int, label: str) -> None:
    constant_names = {t.name for t in graph.initializer}
    inputs = [vi for vi in graph.input if vi.name not in constant_names]
    if len(inputs) != len(graph.input):
        del graph.input[:]
        graph.input.extend(inputs)
    names = [vi.name for vi in inputs]
    strangers = sorted(set(input_shapes) - set(names))
    if strangers:
        raise FrontendError(
            f"{label}: input_shapes names {strangers}, which are not graph inputs "
            f"(the inputs are {names})")
    for vi in inputs:
        if not vi.type.HasField("tensor_type"):
            raise FrontendError(f"{label}: input {vi.name!r} is not a tensor")
        shape = vi.type.tensor_type.shape
        if vi.name in input_shapes:
            given = tuple(input_shapes[vi.name])
            for dim in given:
                _check_dim(f"input_shapes[{vi.name!r}] dimensions", dim)
            if vi.type.tensor_type.HasField("shape"):
                declared = tuple(d.dim_value if d.HasField("dim_value") else None
                                 for d in shape.dim)
                if len(declared) != len(given) or any(
                        d is not None and d != g for d, g in zip(declared, given)):
                    shown = tuple("?" if d is None else d for d in declared)
                    raise FrontendError(
                        f"{label}: input_shapes gives input {vi.name!r} the shape {given}, "
                        f"which does not fit its declared shape {shown}")
            shape.Clear()
            for dim in given:
                shape.dim.add().dim_value = int(dim)
        elif not vi.type.tensor_type.HasField("shape"):
            raise FrontendError(
                f"{label}: input {vi.name!r} has no declared shape; give it in input_shapes")
        else:
            for dim in shape.dim:
                if not dim.HasField("dim_value"):
                    dim.dim_value = default_dim


def _infer_shapes(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """Fill ``graph.value_info`` and the output types of `model` (in place) and return it.

    Shape inference serializes the model, so it runs on a copy in which initializers larger
    than ``_INFER_VALUE_LIMIT`` elements are typed graph inputs: their shapes matter, their
    values do not (shape arithmetic only reads small tensors).
    """
    graph = model.graph
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    light.graph.name = graph.name
    light.graph.node.extend(graph.node)
    light.graph.input.extend(graph.input)
    light.graph.output.extend(graph.output)
    light.graph.value_info.extend(graph.value_info)
    light.graph.sparse_initializer.extend(graph.sparse_initializer)
    for tensor in graph.initializer:
        if math.prod(tensor.dims) > _INFER_VALUE_LIMIT:
            light.graph.input.append(
                helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        else:
            light.graph.initializer.append(tensor)
    try:
        inferred = shape_inference.infer_shapes(light, strict_mode=True, data_prop=True)
    except (shape_inference.InferenceError, onnx.checker.ValidationError, ValueError) as exc:
        raise FrontendError(f"{label}: shape inference failed: {exc}") from exc
    del graph.value_info[:]
    graph.value_info.extend(inferred.graph.value_info)
    del graph.output[:]
    graph.output.extend(inferred.graph.output)
    return model


def _static_shape(type_proto: onnx.TypeProto) -> Shape | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    dims = type_proto.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return tuple(d.dim_value for d in dims)


def _value_infos(graph: onnx.GraphProto) -> Iterator[onnx.ValueInfoProto]:
    yield from graph.input
    yield from graph.value_info
    yield from graph.output


def _check_static_shapes(graph: onnx.GraphProto, label: str) -> None:
    shapes = {vi.name: _static_shape(vi.type) for vi in _value_infos(graph)}
    constants = {t.name for t in graph.initializer}
    unknown = [f"{vi.name!r} (graph input)" for vi in graph.input if shapes.get(vi.name) is None]
    for index, node in enumerate(graph.node):
        unknown += [
            f"{name!r} (output of {node.op_type} {_describe_node_name(node.name or f'#{index}')})"
            for name in node.output
            if name and name not in constants and shapes.get(name) is None]
    if unknown:
        listed = ", ".join(unknown[:_MAX_LISTED_TENSORS])
        hidden = len(unknown) - _MAX_LISTED_TENSORS
        more = f" and {hidden} more" if hidden > 0 else ""
        raise FrontendError(
            f"{label}: {len(unknown)} tensor shape{'s' if len(unknown) != 1 else ''} still "
            f"unknown after shape inference and constant folding: {listed}{more}")


def _describe_node_name(name: str) -> str:
    return f"unnamed node {name}" if name.startswith("#") else f'node "{name}"'


# -- constant folding and cleanup ----------------------------------------------------------


def _fold(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """Fold constants, bypass pass-through nodes and drop dead code until nothing changes."""
    opset = _default_opset(model, label)
    while True:
        changed = _fold_constants(model.graph, opset)
        changed |= _bypass_passthrough(model.graph)
        changed |= _remove_dead(model.graph)
        if not changed:
            return model
        del model.graph.value_info[:]
        model = _infer_shapes(model, label)


class _Constants:
    """Initializer values by name, converted to numpy on first use."""

    def __init__(self, graph: onnx.GraphProto):
        self._graph = graph
        self._protos = {t.name: t for t in graph.initializer}
        self._arrays: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._protos

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self._protos[name])
        return self._arrays[name]

    def shape(self, name: str) -> Shape:
        return tuple(self._protos[name].dims)

    def add(self, name: str, value: np.ndarray) -> None:
        proto = numpy_helper.from_array(value, name)
        self._graph.initializer.append(proto)
        self._protos[name] = self._graph.initializer[-1]
        self._arrays[name] = value


def _fold_constants(graph: onnx.GraphProto, opset: int) -> bool:
    """Replace every node computable from constants by initializers; True if any was."""
    constants = _Constants(graph)
    infos = {vi.name: vi.type for vi in _value_infos(graph)}
    kept = []
    for node in graph.node:
        values = _evaluate(node, constants, infos, opset)
        if values is None:
            kept.append(node)
            continue
        for name, value in zip(node.output, values):
            if name:
                constants.add(name, value)
    if len(kept) == len(graph.node):
        return False
    del graph.node[:]
    graph.node.extend(kept)
    return True


def _evaluate(node: onnx.NodeProto, constants: _Constants, infos: dict[str, onnx.TypeProto],
              opset: int) -> list[np.ndarray] | None:
    """Output values of `node` if it can and may be folded, else None."""
    if (node.domain not in _DEFAULT_DOMAINS or node.op_type in _NONDETERMINISTIC_OPS
            or any(a.type in _GRAPH_ATTRIBUTE_TYPES for a in node.attribute)):
        return None

    def shape_of(name: str) -> Shape | None:
        if name in constants:
            return constants.shape(name)
        return _static_shape(infos[name]) if name in infos else None

    if node.op_type in ("Shape", "Size") and node.input[0] not in constants:
        dims = shape_of(node.input[0])
        if dims is None:
            return None
        if node.op_type == "Size":
            return [np.array(math.prod(dims), dtype=np.int64)]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return [np.array(dims[attrs.get("start", 0):attrs.get("end", len(dims))], dtype=np.int64)]

    inputs = [name for name in node.input if name]
    if not all(name in constants for name in inputs):
        return None
    out_shapes = [shape_of(name) for name in node.output if name]
    if node.op_type == "Constant":
        pass  # its value is in the model already
    elif all(s is not None for s in out_shapes):
        if sum(math.prod(s) for s in out_shapes) > MAX_FOLD_ELEMENTS:
            return None
    elif node.op_type in _EXPANDING_OPS:
        if _expanded_elements(node, constants) > MAX_FOLD_ELEMENTS:
            return None
    results = _run_node(node, {name: constants[name] for name in inputs}, opset)
    if results is None:
        return None
    values = []
    for name, result in zip(node.output, results):
        value = np.asarray(result)
        if name in infos and infos[name].tensor_type.elem_type:
            dtype = helper.tensor_dtype_to_np_dtype(infos[name].tensor_type.elem_type)
            if value.dtype != dtype:
                value = value.astype(dtype)
        expected = shape_of(name)
        too_big = value.size > MAX_FOLD_ELEMENTS and node.op_type != "Constant"
        if too_big or (expected is not None and value.shape != expected):
            return None
        values.append(value)
    return values if len(values) == len(node.output) else None


def _run_node(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opset: int) -> list | None:
    """Evaluate one node on constant inputs: ``onnx.reference`` first (what folding has
    always used, so folded values stay as they were), onnxruntime where the reference
    fails (it is wrong on some ops exporters emit on constants, e.g. ``GatherElements``);
    None when neither can run it (the node then stays in the graph)."""
    try:
        return list(ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds))
    except Exception:  # noqa: BLE001 - any evaluator failure: try the next evaluator
        pass
    try:
        import onnxruntime as ort

        graph = helper.make_graph(
            [node], "fold",
            [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
             for k, v in feeds.items()],
            [helper.make_empty_tensor_value_info(name) for name in node.output if name])
        mini = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        mini.ir_version = min(mini.ir_version, 10)
        mini = shape_inference.infer_shapes(mini)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(mini.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        return list(session.run(None, feeds))
    except Exception:  # noqa: BLE001 - neither evaluator can run it: not foldable
        return None


def _check_folded(graph: onnx.GraphProto, label: str) -> None:
    """One error listing every constant-only op (ConstantOfShape, Shape, ...) that folding
    could not evaluate, with the reason."""
    constants = {t.name for t in graph.initializer}
    infos = {vi.name: vi.type for vi in _value_infos(graph)}
    problems = []
    for index, node in enumerate(graph.node):
        if node.domain not in _DEFAULT_DOMAINS or node.op_type not in _FOLD_ONLY_OPS:
            continue
        name = _describe_node_name(node.name or f"#{index}")
        runtime = [i for i in node.input if i and i not in constants]
        shape = _static_shape(infos[node.output[0]]) if node.output[0] in infos else None
        if node.op_type in ("Shape", "Size") or not runtime:
            size = math.prod(shape) if shape is not None else None
            why = (f"its output of {size:,} elements is above the folding limit "
                   f"MAX_FOLD_ELEMENTS ({MAX_FOLD_ELEMENTS:,})"
                   if size is not None and size > MAX_FOLD_ELEMENTS
                   else "no evaluator could compute it")
        else:
            why = f"its input {runtime[0]!r} is computed at run time"
        problems.append(f"  {node.op_type} ({name}): not folded to a constant: {why}")
    if problems:
        raise FrontendError(f"{label}: {len(problems)} constant-only operator"
                            f"{'s' if len(problems) != 1 else ''} left after folding:\n"
                            + "\n".join(problems))


def _expanded_elements(node: onnx.NodeProto, constants: _Constants) -> float:
    """Upper estimate of the output size of an expanding op with constant inputs."""
    if node.op_type == "ConstantOfShape":
        return math.prod(int(d) for d in constants[node.input[0]].reshape(-1))
    if node.op_type == "Expand":
        data, shape = constants[node.input[0]], constants[node.input[1]]
        try:
            return math.prod(np.broadcast_shapes(data.shape, tuple(int(d) for d in shape)))
        except ValueError:
            return math.inf
    if node.op_type == "Tile":
        data, repeats = constants[node.input[0]], constants[node.input[1]]
        return data.size * math.prod(int(r) for r in repeats.reshape(-1))
    return math.inf  # other expanding ops fold only once inference knows their shape


def _is_passthrough(node: onnx.NodeProto, graph: onnx.GraphProto, consumed: set[str]) -> bool:
    if node.domain not in _DEFAULT_DOMAINS:
        return False
    if node.op_type == "Identity":
        return True
    if node.op_type != "Dropout":
        return False
    mask_used = len(node.output) > 1 and node.output[1] in consumed
    training = node.input[2] if len(node.input) > 2 else ""
    if training:
        values = {t.name: t for t in graph.initializer}
        if training not in values or bool(numpy_helper.to_array(values[training])):
            return False
    return not mask_used


def _bypass_passthrough(graph: onnx.GraphProto) -> bool:
    """Remove Identity and inference-mode Dropout nodes; True if any was removed."""
    outputs = {o.name for o in graph.output}
    fixed = outputs | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    consumed = set(_consumed_names(graph.node)) | outputs
    producers = {name: node for node in graph.node for name in node.output if name}
    removed = []
    for node in graph.node:
        if not _is_passthrough(node, graph, consumed):
            continue
        source, target = node.input[0], node.output[0]
        if target not in outputs:
            _rename_uses(graph.node, target, source)
        elif source not in fixed and source in producers:
            # The graph output keeps its name: the producer writes it directly.
            producer = producers.pop(source)
            producer.output[list(producer.output).index(source)] = target
            _rename_uses(graph.node, source, target)
            producers[target] = producer
        else:
            continue  # an input or constant straight to a graph output: keep the node
        removed.append(node)
    if not removed:
        return False
    kept = [node for node in graph.node if not any(node is r for r in removed)]
    del graph.node[:]
    graph.node.extend(kept)
    return True


def _rename_uses(nodes: Iterable[onnx.NodeProto], old: str, new: str) -> None:
    """Make every consumer of `old`, in subgraphs too, read `new` instead."""
    for node in nodes:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new
        for subgraph in _subgraphs(node):
            _rename_uses(subgraph.node, old, new)
            for output in subgraph.output:
                if output.name == old:
                    output.name = new


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            yield from attribute.graphs


def _consumed_names(nodes: Iterable[onnx.NodeProto]) -> Iterator[str]:
    """Every tensor name read by `nodes`, including outer-scope reads of their subgraphs."""
    for node in nodes:
        yield from (name for name in node.input if name)
        for subgraph in _subgraphs(node):
            yield from _consumed_names(subgraph.node)
            yield from (o.name for o in subgraph.output)


def _remove_dead(graph: onnx.GraphProto) -> bool:
    """Drop nodes and initializers that no graph output depends on; True if any."""
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output if name):
            live.append(node)
            needed.update(_consumed_names([node]))
    live.reverse()
    unused = [i for i, t in enumerate(graph.initializer) if t.name not in needed]
    if len(live) == len(graph.node) and not unused:
        return False
    if len(live) != len(graph.node):
        del graph.node[:]
        graph.node.extend(live)
    for index in reversed(unused):  # deleting in place: the weights are not copied
        del graph.initializer[index]
    return True
