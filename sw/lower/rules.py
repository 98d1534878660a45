"""The rule table: ONNX operator -> the function that lowers one node of it.

A rule is ``rule_fn(ctx, node)`` (a :class:`~neuralmatrix.sw.lower.context.Context` and an
``onnx.NodeProto``) that emits steps and records the node's outputs in ``ctx.vals``. It is
registered for the operators it lowers with :func:`rule`::

    @rule("Add", "Sub")
    def add(ctx, node): ...

:func:`apply` runs a rule and turns whatever it raises into one
:class:`~neuralmatrix.sw.lower.context.LinearizeError` naming the node, its operator and the
reason.
"""

from __future__ import annotations

from typing import Callable

from .context import LinearizeError

__all__ = ["RULES", "rule", "apply"]

#: ONNX operator type -> its rule.
RULES: dict[str, Callable] = {}


def rule(*ops: str):
    """Register the decorated function as the rule of each operator in *ops*."""
    if not ops or not all(isinstance(op, str) and op for op in ops):
        raise TypeError(f"rule() takes one or more ONNX operator names, not {ops!r}")

    def register(fn):
        for op in ops:
            if op in RULES:
                raise ValueError(f"operator {op} already has a rule: {RULES[op].__module__}."
                                 f"{RULES[op].__name__}")
            RULES[op] = fn
        return fn

    return register


def apply(fn, ctx, node) -> None:
    """``fn(ctx, node)``; any failure becomes a LinearizeError that names the node.

    A LinearizeError whose message does not name the node gets ``OP (node 'NAME'): ``
    prefixed; any other exception (a bug or an input the rule did not anticipate) becomes a
    LinearizeError with the node, the operator and the original message, the original kept
    as ``__cause__``.
    """
    where = f"{node.op_type} (node {node.name!r})"
    try:
        fn(ctx, node)
    except LinearizeError as exc:
        if exc.node is None:
            exc.node, exc.op = node.name, node.op_type
        if f"(node {node.name!r})" in str(exc):
            raise
        raise LinearizeError(f"{where}: {exc}", node=node.name, op=node.op_type) from exc
    except Exception as exc:  # noqa: BLE001 - every failure is reported as one error
        raise LinearizeError(f"{where}: cannot be lowered: {type(exc).__name__}: {exc}",
                             node=node.name, op=node.op_type) from exc
