"""Running a compiled network: the host side of every step, and the golden model.

The host quantizes the inputs (the boundary), performs the transfers and lookups (data
movement only) and dequantizes the outputs; every kernel's program runs on an accelerator.
:func:`run_network` takes the accelerator as a callable, so the same host loop drives the
golden model (:func:`run_golden`) and the RTL (``neuralmatrix.sim``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import numpy as np

from .codegen import Compiled, KernelCode
from .golden import GoldenModel
from .ir import FILL_MIN, FILL_ZERO, Kernel, Lookup, Transfer

__all__ = ["StepResult", "NetworkResult", "quantize_input", "network_steps", "run_network",
           "run_golden"]


@dataclass
class StepResult:
    """What one kernel did: its counters (golden or RTL) and the estimate."""

    name: str
    counters: dict[str, int]
    est_cycles: int


@dataclass
class NetworkResult:
    outputs: dict[str, np.ndarray]            # dequantized, logical shapes
    raw: dict[str, np.ndarray]                # int8 outputs (storage matrices)
    kernels: list[StepResult] = field(default_factory=list)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    host_bytes: int = 0


def quantize_input(x: np.ndarray, scale: float) -> np.ndarray:
    """The host's boundary quantization: ``clip(round(x / scale), -127, 127)``."""
    return np.clip(np.round(np.asarray(x, dtype=np.float64) / scale), -127, 127).astype(np.int64)


def network_steps(c: Compiled, feeds: dict[str, np.ndarray], dram: np.ndarray, *,
                  keep: bool = False) -> Generator[KernelCode, dict[str, int], NetworkResult]:
    """The host loop of :func:`run_network` as a generator, for callers that cannot call a
    kernel synchronously (a cocotb testbench awaits the RTL).

    Yields each kernel's :class:`KernelCode` when *dram* holds its inputs; the caller runs
    the program on *dram* and ``send()``s the counters back. Returns (``StopIteration.value``)
    the :class:`NetworkResult`.
    """
    net = c.network
    for name, t in net.inputs.items():
        if t is None:
            continue
        if name not in feeds:
            raise ValueError(f"missing input {name!r}")
        x = np.asarray(feeds[name])
        if tuple(x.shape) != tuple(t.shape):
            raise ValueError(f"input {name!r} must have shape {t.shape}, got {x.shape}")
        c.layout(t).write(dram, t.to_matrix(quantize_input(x, t.scale)))
    result = NetworkResult({}, {})
    for s in c.steps:
        if isinstance(s, Transfer):
            flat = np.concatenate([c.layout(t).read(dram).ravel() for t in s.srcs]).astype(np.int64)
            idx = s.index
            vals = np.where(idx >= 0, flat[np.maximum(idx, 0)],
                            np.where(idx == FILL_MIN, -128, 0))
            c.layout(s.out).write(dram, vals)
            result.host_bytes += s.bytes
            if keep:
                result.tensors[s.out.name] = vals
        elif isinstance(s, Lookup):
            ids = np.asarray(feeds[s.ids]).reshape(-1).astype(np.int64)
            table = np.asarray(s.table.data)
            if ids.size != s.out.rows or ids.min() < 0 or ids.max() >= table.shape[0]:
                raise ValueError(f"{s.name}: {ids.size} indices in 0..{table.shape[0] - 1} "
                                 f"expected {s.out.rows}")
            c.layout(s.out).write(dram, table[ids])
            result.host_bytes += s.bytes
        elif isinstance(s, Kernel):
            kc = c.code[id(s)]
            counters = yield kc
            result.kernels.append(StepResult(s.name, counters, kc.est_cycles))
            if keep:
                result.tensors[s.out.name] = c.layout(s.out).read(dram)
    for name, t in net.outputs.items():
        m = c.layout(t).read(dram).astype(np.int64)
        result.raw[name] = m
        result.outputs[name] = t.from_matrix(m * (t.scale * t.colw)).astype(np.float32)
    return result


def run_network(c: Compiled, feeds: dict[str, np.ndarray], dram: np.ndarray,
                run_kernel: Callable[[KernelCode], dict[str, int]], *,
                keep: bool = False) -> NetworkResult:
    """Execute *c* with *feeds* on external memory *dram* (uint8, already holding
    ``c.image``); *run_kernel* runs one kernel's program on it and returns its counters."""
    steps = network_steps(c, feeds, dram, keep=keep)
    try:
        kc = next(steps)
        while True:
            kc = steps.send(run_kernel(kc))
    except StopIteration as stop:
        return stop.value


def run_golden(c: Compiled, feeds: dict[str, np.ndarray], *, keep: bool = False) -> NetworkResult:
    """Run *c* on the bit-exact golden model."""
    gm = GoldenModel(c.config, c.dram_bytes)
    gm.load_image(c.image)

    def run_kernel(kc: KernelCode) -> dict[str, int]:
        gm.reset()                  # every program starts from the power-up on-chip state
        r = gm.run(kc.program, check=False)
        return r.counters()

    return run_network(c, feeds, gm.dram, run_kernel, keep=keep)
