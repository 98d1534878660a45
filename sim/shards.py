"""Independent inferences of one compiled network, run in parallel on several simulators.

::

    runs = run_sharded(compiled, feeds, jobs=2)                        # local processes
    runs = run_sharded(compiled, feeds, scheduler="tcp://host:8786")   # a Dask cluster

The feeds are cut into contiguous shards, one simulator process each
(:func:`~neuralmatrix.sim.network.run_network_rtl` on the shard's feeds). The compiled network
travels once per shard as the same pickle the single-process run hands its simulator; every
worker on this machine reuses the cached Verilator build (a remote Dask worker builds its own
once, in its own cache). The runs come back in feed order, so the verdict, the accuracy and
the per-layer report are computed exactly as for a single-process run.

A failed shard raises one :class:`~neuralmatrix.sim.runner.SimulationFailed` naming its
inferences (indices into *feeds*) and the failure, and the other shards are cancelled.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from .network import NetworkRun, compiled_bytes, compiled_from_bytes, run_network_rtl
from .runner import SimulationFailed

__all__ = ["ShardError", "shard_bounds", "run_sharded"]


class ShardError(ValueError):
    """Bad sharding parameters (names the option and the problem)."""


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Cut ``range(n)`` into at most *shards* contiguous ``(start, stop)`` ranges whose sizes
    differ by at most one."""
    shards = max(1, min(shards, n))
    base, extra = divmod(n, shards)
    bounds, start = [], 0
    for i in range(shards):
        stop = start + base + (i < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def _run_shard(blob: bytes, feeds: list[dict], first: int, progress_file: str | None,
               max_cycles: int | None = None):
    """Worker side: run one shard; failures come back as ``("error", message)`` (exception
    objects with extra constructor arguments do not survive every pickler)."""
    compiled = compiled_from_bytes(blob)
    report = None
    if progress_file is not None:
        def report(done, _total):
            Path(progress_file).write_text(str(done))
    try:
        return "ok", run_network_rtl(compiled, feeds, progress=report, first_index=first,
                                     max_cycles=max_cycles)
    except SimulationFailed as exc:
        return "error", f"{type(exc).__name__}: {exc}"


def _describe(first: int, stop: int, shard: int, shards: int, names: Sequence[str] | None) -> str:
    what = f"inference {first}" if stop - first == 1 else f"inferences {first}..{stop - 1}"
    if names:
        shown = ", ".join(names[first:min(stop, first + 3)]) + (", ..." if stop - first > 3 else "")
        what += f" ({shown})"
    return f"shard {shard + 1} of {shards}, {what}"


def run_sharded(compiled, feeds: Sequence[dict], *, jobs: int = 1, scheduler: str | None = None,
                progress: Callable[[int, int], None] | None = None,
                names: Sequence[str] | None = None,
                max_cycles: int | None = None) -> list[NetworkRun]:
    """Run *compiled* once per entry of *feeds*, sharded over *jobs* processes or a cluster.

    Parameters
    ----------
    jobs : int
        Local simulator processes (default 1: one shard, the single-process run). With
        *scheduler*: the number of shards (default: one per Dask worker thread).
    scheduler : str, optional
        Address of a Dask distributed scheduler (``tcp://HOST:PORT``).
    progress : callable, optional
        ``progress(kernels_done, kernels_total)`` over all shards.
    names : sequence of str, optional
        A short description of every feed (a file name, a sentence), used in failure messages.
    max_cycles : int, optional
        Cycle budget of every kernel (as :func:`~neuralmatrix.sim.network.run_network_rtl`).

    Raises
    ------
    ShardError
        *jobs* below 1, or the scheduler cannot be reached.
    SimulationFailed
        A shard failed: the message names its inferences.
    """
    from neuralmatrix.sw.ir import Kernel

    feeds = list(feeds)
    if jobs < 1:
        raise ShardError(f"--jobs must be at least 1, got {jobs}")
    if not feeds:
        return []
    if scheduler is None and jobs == 1:
        return run_network_rtl(compiled, feeds, progress=progress, max_cycles=max_cycles)
    n_kernels = sum(1 for s in compiled.steps if isinstance(s, Kernel))
    blob = compiled_bytes(compiled)
    if scheduler is not None:
        return _run_dask(blob, feeds, jobs, scheduler, n_kernels, progress, names, max_cycles)
    return _run_local(blob, feeds, jobs, n_kernels, progress, names, max_cycles)


def _merge(results: dict[int, list[NetworkRun]], bounds) -> list[NetworkRun]:
    return [run for i in range(len(bounds)) for run in results[i]]


def _run_local(blob, feeds, jobs, n_kernels, progress, names, max_cycles) -> list[NetworkRun]:
    import multiprocessing

    bounds = shard_bounds(len(feeds), jobs)
    total = n_kernels * len(feeds)
    results: dict[int, list[NetworkRun]] = {}
    with tempfile.TemporaryDirectory(prefix="nm_shards_") as tmp:
        files = [os.path.join(tmp, f"progress{i}") for i in range(len(bounds))]
        stop = threading.Event()
        watcher = None
        if progress is not None:
            def watch():
                while not stop.wait(0.2):
                    done = 0
                    for f in files:
                        try:
                            done += int(Path(f).read_text() or 0)
                        except (OSError, ValueError):
                            pass
                    progress(done, total)
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
        # Each worker leads its own process group, so a failure can stop it with its simulator.
        pool = ProcessPoolExecutor(max_workers=len(bounds), initializer=os.setpgrp,
                                   mp_context=multiprocessing.get_context("spawn"))
        try:
            pending = {pool.submit(_run_shard, blob, feeds[a:b], a, files[i], max_cycles): i
                       for i, (a, b) in enumerate(bounds)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    status, value = fut.result()
                    if status == "error":
                        a, b = bounds[i]
                        raise SimulationFailed(f"{_describe(a, b, i, len(bounds), names)}: {value}")
                    results[i] = value
        finally:
            stop.set()
            if watcher is not None:
                watcher.join()
            if pending:                     # a shard failed: stop the others and their simulators
                for proc in list((getattr(pool, "_processes", None) or {}).values()):
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            pool.shutdown(wait=True, cancel_futures=True)
    if progress is not None:
        progress(total, total)
    return _merge(results, bounds)


def _run_dask(blob, feeds, jobs, address, n_kernels, progress, names,
              max_cycles) -> list[NetworkRun]:
    from .cluster import ClusterError, connect

    try:
        client = connect(address)
    except ClusterError as exc:
        raise ShardError(f"--scheduler: {exc}") from None
    futures = {}
    try:
        if jobs == 1:
            jobs = max(1, sum(client.nthreads().values()))
        bounds = shard_bounds(len(feeds), jobs)
        from distributed import as_completed

        tag = f"{os.getpid()}-{time.time_ns()}"
        data = client.scatter(blob, broadcast=True)
        for i, (a, b) in enumerate(bounds):
            futures[client.submit(_run_shard, data, feeds[a:b], a, None, max_cycles, pure=False,
                                  key=f"nm-run-shard{i}-{tag}")] = i
        results: dict[int, list[NetworkRun]] = {}
        done = 0
        for fut in as_completed(list(futures)):
            i = futures.pop(fut)
            a, b = bounds[i]
            try:
                status, value = fut.result()
            except Exception as exc:        # a worker died or the task could not run there
                status, value = "error", f"{type(exc).__name__}: {exc}"
            if status == "error":
                raise SimulationFailed(f"{_describe(a, b, i, len(bounds), names)}: {value}")
            results[i] = value
            done += (b - a) * n_kernels
            if progress is not None:
                progress(done, n_kernels * len(feeds))
        return _merge(results, bounds)
    finally:
        if futures:
            client.cancel(list(futures))
        client.close()
