"""Whole networks on the RTL: every kernel of a compiled network runs on the Verilator model.

::

    runs = run_network_rtl(compiled, [feeds0, feeds1])
    runs[0].outputs, runs[0].kernels[3].counters["cycles"]
    first_difference(compiled, golden_result, runs[0])   # None when bit-exact

All inferences of one call run in ONE simulator process (:mod:`neuralmatrix.sim.tb_network`).
The testbench executes the same host loop as the golden model
(:func:`neuralmatrix.sw.runtime.network_steps`) on a numpy mirror of the external memory: before
each kernel what the host wrote since the last one is copied into the simulated DRAM through the
C++ back door, the core runs the kernel's program to ``done`` with no Python in the per-cycle
loop, and its output tensor is copied back (only what the host or the kernel changed crosses
the back door). Host transfers (im2col, transposes) and the boundary (de)quantization run
between kernels, exactly as for the golden model.

The compiled network travels to the simulator process as a pickle (fitted PWL functions, which
only the compiler needs, are dropped); results come back as one ``.npz`` per inference.
"""

from __future__ import annotations

import io
import json
import pickle
import tempfile
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neuralmatrix.sw.codegen import Compiled, _tensors
from neuralmatrix.sw.ir import Kernel
from neuralmatrix.sw.runtime import NetworkResult

from . import runner
from .harness import CLOCK_NS, DEFAULT_DRAM_BYTES, ENV_DIR, SimulationTimeout, describe_status, \
    simulation_build
from .runner import SimulationFailed

__all__ = ["KernelRun", "NetworkRun", "Difference", "dram_size_for", "run_network_rtl",
           "first_difference", "kernel_budget", "compiled_bytes", "compiled_from_bytes",
           "dump_compiled", "load_compiled"]

TB_MODULE = "neuralmatrix.sim.tb_network"


@dataclass
class KernelRun:
    """One kernel on the RTL: its counters (:data:`neuralmatrix.hw.counters.COUNTERS`)."""

    name: str
    layer: str
    counters: dict[str, int]
    est_cycles: int
    seconds: float


@dataclass
class NetworkRun:
    """One inference on the RTL.

    Attributes
    ----------
    outputs : dict
        Dequantized network outputs, logical shapes (as :class:`NetworkResult`).
    raw : dict
        int8 output matrices.
    tensors : dict
        Every kernel's output matrix by tensor name (read back after the kernel).
    kernels : list of KernelRun
    seconds : float
        Wall time of the inference inside the simulator.
    """

    outputs: dict[str, np.ndarray]
    raw: dict[str, np.ndarray]
    tensors: dict[str, np.ndarray]
    kernels: list[KernelRun] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def cycles(self) -> int:
        return sum(k.counters["cycles"] for k in self.kernels)


@dataclass
class Difference:
    """Where an RTL run first differs from the golden model."""

    layer: str
    kernel: str
    tensor: str
    index: tuple[int, ...]
    golden: int
    rtl: int
    count: int

    def __str__(self) -> str:
        return (f"layer {self.layer!r}, kernel {self.kernel!r}: tensor {self.tensor!r} at "
                f"{list(self.index)}: golden {self.golden}, RTL {self.rtl} ({self.count} "
                f"element(s) differ)")


def dram_size_for(compiled: Compiled) -> int:
    """The simulated DRAM size: the default, or the next power of two that holds the image."""
    size = DEFAULT_DRAM_BYTES
    while size < compiled.dram_bytes:
        size *= 2
    return size


def kernel_budget(est_cycles: int) -> int:
    """Cycles a kernel may take before it counts as hung: 4x the estimate plus slack."""
    return 4 * int(est_cycles) + 100_000


class _Portable(pickle.Pickler):
    """Pickles a :class:`Compiled` without the fitted float functions of its PWL tables
    (closures that only the compiler uses)."""

    def reducer_override(self, obj):
        if isinstance(obj, types.FunctionType) and "<locals>" in obj.__qualname__:
            return type(None), ()
        return NotImplemented


def compiled_bytes(compiled: Compiled) -> bytes:
    """*compiled* as the pickle the simulator process loads (see :func:`compiled_from_bytes`)."""
    # Layouts and programs are keyed by id(); ship them as (object, value) pairs.
    tensors = [t for t in _tensors(compiled.steps, compiled.network) if id(t) in compiled.layouts]
    kernels = [s for s in compiled.steps if isinstance(s, Kernel)]
    state = (compiled, [(t, compiled.layouts[id(t)]) for t in tensors],
             [(k, compiled.code[id(k)]) for k in kernels])
    buf = io.BytesIO()
    _Portable(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(state)
    return buf.getvalue()


def compiled_from_bytes(blob: bytes) -> Compiled:
    compiled, layouts, code = pickle.loads(blob)
    compiled.layouts = {id(t): lay for t, lay in layouts}
    compiled.code = {id(k): kc for k, kc in code}
    return compiled


def dump_compiled(compiled: Compiled, path: Path) -> None:
    """Pickle *compiled* for the simulator process (see :func:`load_compiled`)."""
    Path(path).write_bytes(compiled_bytes(compiled))


def load_compiled(path: Path) -> Compiled:
    return compiled_from_bytes(Path(path).read_bytes())


def run_network_rtl(compiled: Compiled, feeds: Sequence[dict], *, waves_file=None,
                    progress: Callable[[int, int], None] | None = None,
                    kernel_filter: Sequence[int] | None = None,
                    max_cycles: int | None = None, first_index: int = 0) -> list[NetworkRun]:
    """Run *compiled* on the RTL once per entry of *feeds* (ONNX input name -> array).

    Parameters
    ----------
    waves_file : path, optional
        Write an FST of the whole simulation (build with tracing).
    progress : callable, optional
        Called as ``progress(kernels_done, kernels_total)`` from a watcher thread.
    kernel_filter : sequence of int, optional
        Only with *waves_file*: the kernels (indices in program order) run on the RTL; the
        others run on the golden model, so a trace covers just those kernels.
    max_cycles : int, optional
        Cycle budget of every kernel (default :func:`kernel_budget` of its estimate).
    first_index : int
        The index of ``feeds[0]`` in the whole run (a shard's offset), used in failure
        messages.

    Raises
    ------
    SimulationTimeout
        A kernel did not finish within :func:`kernel_budget` cycles (names the kernel, the
        cycle count and the unit states).
    SimulationFailed
        The core flagged an error or the simulation failed.
    """
    feeds = list(feeds)
    if not feeds:
        return []
    built, memories = simulation_build(compiled.config, dram_bytes=dram_size_for(compiled),
                                       waves=waves_file is not None)
    n_kernels = sum(1 for s in compiled.steps if isinstance(s, Kernel))
    total = n_kernels * len(feeds)
    with tempfile.TemporaryDirectory(prefix="nm_network_") as tmp:
        tmp = Path(tmp)
        dump_compiled(compiled, tmp / "compiled.pkl")
        np.savez(tmp / "feeds.npz", **{f"{i}/{k}": np.asarray(v)
                                      for i, f in enumerate(feeds) for k, v in f.items()})
        spec = {"memory": memories[0], "clear": memories[1:], "clock_ns": CLOCK_NS,
                "cpp_clock": waves_file is None, "runs": len(feeds), "names": [list(f) for f in feeds],
                "kernel_filter": None if kernel_filter is None else [int(i) for i in kernel_filter],
                "max_cycles": max_cycles}
        (tmp / "spec.json").write_text(json.dumps(spec))
        log = tmp / "sim.log"
        stop = threading.Event()
        watcher = None
        if progress is not None:
            def watch():
                while not stop.wait(0.2):
                    try:
                        progress(int((tmp / "progress").read_text() or 0), total)
                    except (OSError, ValueError):
                        pass
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
        try:
            runner.run(built, TB_MODULE, env={ENV_DIR: str(tmp)}, log_file=log,
                       waves_file=waves_file, test_dir=tmp / "run")
        except (SimulationFailed, RuntimeError) as exc:
            failure = tmp / "failure.json"
            if failure.exists():
                raise _failure(json.loads(failure.read_text()), first_index) from None
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise SimulationFailed(f"{exc}\n--- simulator log (tail) ---\n{tail}") from None
        finally:
            stop.set()
            if watcher is not None:
                watcher.join()
        if progress is not None:
            progress(total, total)
        return [_load_run(tmp / f"run{i}.npz", json.loads((tmp / f"run{i}.json").read_text()))
                for i in range(len(feeds))]


def _failure(f: dict, first_index: int = 0) -> SimulationFailed:
    run = f["run"] + first_index
    if f.get("stray"):
        return SimulationFailed(f"inference {run}: the RTL changed external memory outside the "
                                f"kernels' output tensors (constants, programs or other "
                                f"activations)")
    where = f"kernel {f['index']} ({f['kernel']}, layer {f['layer']!r}) of inference {run}"
    if f["timed_out"]:
        busy = {k: v for k, v in f["counters"].items() if v}
        return SimulationTimeout(
            f"{where}: no done after {f['sim_cycles']} cycles (budget {f['max_cycles']}); "
            f"status: {describe_status(f['status'])}; counters: {busy}", [], [f["index"]])
    return SimulationFailed(f"{where}: the core stopped with error code {f['error_code']} at "
                            f"pc {f['error_pc']:#x} (fault={f['fault']}, fault_addr="
                            f"{f['fault_addr']:#x}) after {f['sim_cycles']} cycles")


def _load_run(npz_path: Path, meta: dict) -> NetworkRun:
    with np.load(npz_path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    outputs = {k[4:]: v for k, v in arrays.items() if k.startswith("out/")}
    raw = {k[4:]: v for k, v in arrays.items() if k.startswith("raw/")}
    tensors = {k[4:]: v for k, v in arrays.items() if k.startswith("ten/")}
    kernels = [KernelRun(**k) for k in meta["kernels"]]
    return NetworkRun(outputs, raw, tensors, kernels, meta["seconds"])


def first_difference(compiled: Compiled, golden: NetworkResult, rtl: NetworkRun) -> Difference | None:
    """The first kernel output (in program order) where *rtl* and *golden* (run with
    ``keep=True``) differ, or None when every kernel output and network output is identical."""
    for s in compiled.steps:
        if not isinstance(s, Kernel):
            continue
        name = s.out.name
        if name not in rtl.tensors:
            continue                      # ran on the golden model (kernel_filter)
        want, got = np.asarray(golden.tensors[name]), np.asarray(rtl.tensors[name])
        bad = np.argwhere(want != got)
        if bad.size:
            idx = tuple(int(i) for i in bad[0])
            return Difference(s.origin, s.name, name, idx, int(want[idx]), int(got[idx]), len(bad))
    for name, want in golden.raw.items():
        got = rtl.raw[name]
        bad = np.argwhere(want != got)
        if bad.size:
            idx = tuple(int(i) for i in bad[0])
            return Difference("(network output)", "", name, idx, int(want[idx]), int(got[idx]),
                              len(bad))
    return None
