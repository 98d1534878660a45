"""Design-space sweep: every array configuration through the FPGA flow, resumable, in parallel.

:func:`run_sweep` takes a list of :class:`~neuralmatrix.hw.params.HwConfig` (see
:func:`plan_configs` for the cartesian product the command line builds) and runs each through
:func:`neuralmatrix.fpga.synth.synthesize` on local processes
(:class:`concurrent.futures.ProcessPoolExecutor`) or on a Dask distributed cluster. For each
configuration it also estimates the cycles of a workload (:func:`workload_cycles`; the golden
model's schedule, no simulation) and so the throughput at the achieved Fmax.

Files in the output directory:

``results.jsonl``
    One JSON line per finished configuration, appended and synced to disk as each finishes.
    A line's ``key`` hashes every parameter of the run that produced it (all of HwConfig,
    target, device, top, seed, router, target clock, yowasp tool versions) and the hardware
    generator itself (:func:`~neuralmatrix.hw.generate.generator_digest`: a changed design is
    run again); a configuration whose key is already there is not run again. The last line
    for a key wins. A half-written last line (the process was killed while writing) is
    dropped and its configuration runs again. Error lines are retried on the next run unless
    ``retry_errors=False``. The workload is not part of the key: a finished configuration
    whose workload differs gets only its workload figures recomputed.
``results.csv``
    One row per configuration of this sweep (columns: :data:`CSV_COLUMNS`), rewritten from the
    JSON lines at the end.
``resources.<fmt>``, ``fmax.<fmt>``, ``throughput.<fmt>``, ``throughput_per_watt.<fmt>``
    Plots against array size, one line per dataflow (the last only with a power model).
``runs/<tag>-<key>/``
    The flow's work directory of each configuration (Verilog, netlist, logs).

CSV columns:

=====================  ========================================================================
``rows, cols``         array size
``dataflow``           ``ws`` or ``os``
``target, device``     FPGA family and device short name; ``top``: ``array`` or ``accelerator``
``seed``               nextpnr placement seed
``router``             nextpnr router
``flow``               ``place and route``, or ``synthesis only, no timing`` (target ``xilinx``:
                       Yosys counts only; no Fmax, no device capacity, ``fits`` is ``n/a``)
``counted``            what the resource counts cover (synthesis-only rows; e.g. hierarchical,
                       identical PE modules merged: :mod:`neuralmatrix.fpga.synth_only`)
``luts, ffs, dsps,     LUT, FF, DSP and BRAM of the top (Yosys; also known when it does not
brams``                fit): LUT4 on ECP5/iCE40, LUT1..LUT6 cells on xilinx
``*_pct``              the same as a percentage of the device's capacity
``fits``               ``yes``, ``no`` (a result, not an error: ``overflow`` says what), ``n/a``
                       (synthesis only), or empty after an error
``overflow``           each exceeded resource, ``used of available``
``fmax_mhz``           achieved Fmax after routing
``workload``           e.g. ``gemm:256x256x256``; ``useful_macs`` (the workload's own MACs,
                       ``M * K * N`` for a GEMM; :mod:`neuralmatrix.sw.macs`) and ``cycles``
                       of it on this configuration (:func:`workload_cycles`)
``gops``               ``2 * useful_macs * Fmax / cycles``, in 1e9 operations per second
``power_w``            from the power model passed to :func:`run_sweep` (or registered with
                       :func:`register_power_model`); empty without one
``gops_per_w``         ``gops / power_w``
``synth_seconds``      wall time of the flow for this configuration
``error``              why the flow (or the workload estimate) failed
=====================  ========================================================================
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import itertools
import json
import math
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from neuralmatrix.hw.generate import generator_digest, top_module_name
from neuralmatrix.hw.params import ConfigError, HwConfig

from . import synth as _synth
from .synth import (DEFAULT_ROUTER, SYNTH_ONLY_TARGETS, DoesNotFit, check_parameters,
                    check_tools, synthesize)
from .synth_only import FLOW_LABEL, FLOW_PNR

__all__ = [
    "CSV_COLUMNS", "DEFAULT_WORKLOAD", "PLOT_FORMATS", "SweepError", "SweepReport",
    "parse_int_list", "parse_name_list", "plan_configs", "config_key",
    "register_workload", "check_workload", "workload_cycles",
    "register_power_model", "PowerModel", "run_sweep", "write_csv", "plot_sweep",
]

DEFAULT_WORKLOAD = "gemm:256x256x256"
PLOT_FORMATS = ("png", "svg", "pdf")

CSV_COLUMNS = (
    "rows", "cols", "dataflow", "target", "device", "top", "seed", "router", "flow", "counted",
    "luts", "ffs", "dsps", "brams", "luts_pct", "ffs_pct", "dsps_pct", "brams_pct",
    "fits", "overflow", "fmax_mhz", "workload", "useful_macs", "cycles", "gops",
    "power_w", "gops_per_w", "synth_seconds", "error",
)

# CSV column -> resource key of SynthResult.resources.
_RESOURCE_COLUMNS = {"luts": "LUT4", "ffs": "FF", "dsps": "DSP", "brams": "BRAM"}
# The same, for the synthesis-only targets (Xilinx LUT1..LUT6).
_SYNTH_ONLY_COLUMNS = {"luts": "LUT", "ffs": "FF", "dsps": "DSP", "brams": "BRAM"}

JSONL_NAME = "results.jsonl"
CSV_NAME = "results.csv"

# (config, CSV row without the power columns) -> watts, or None when it has no estimate.
PowerModel = Callable[[HwConfig, dict], "float | None"]


class SweepError(RuntimeError):
    """The sweep cannot run (e.g. the Dask scheduler cannot be reached, or another sweep holds
    the output directory)."""


# --------------------------------------------------------------------------------------------
# What to run

def parse_int_list(text: str, name: str) -> list[int]:
    """``"2,4,8"`` -> ``[2, 4, 8]`` (duplicates dropped, order kept)."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{name} must be a comma-separated list of integers, got {text!r}") \
            from None
    if not values:
        raise ConfigError(f"{name} must list at least one value, got {text!r}")
    return list(dict.fromkeys(values))


def parse_name_list(text: str, name: str) -> list[str]:
    """``"ws, os"`` -> ``["ws", "os"]`` (lower case, duplicates dropped, order kept)."""
    values = [v.strip().lower() for v in str(text).split(",") if v.strip()]
    if not values:
        raise ConfigError(f"{name} must list at least one value, got {text!r}")
    return list(dict.fromkeys(values))


def plan_configs(rows: Sequence[int], cols: Sequence[int], dataflows: Sequence[str], *,
                 square: bool = False) -> list[HwConfig]:
    """Every ``rows x cols x dataflow`` combination (only ``rows == cols`` with *square*).

    Raises
    ------
    ConfigError
        If any combination is not a valid HwConfig; the message lists every bad one with the
        reason, so nothing runs until all are fixed.
    """
    combos = [(r, c, d) for r, c, d in itertools.product(rows, cols, dataflows)
              if not square or r == c]
    if not combos:
        raise ConfigError(f"square: no rows value equals a cols value (rows {list(rows)}, "
                          f"cols {list(cols)})")
    configs, bad = [], []
    for r, c, d in combos:
        try:
            configs.append(HwConfig(rows=r, cols=c, dataflow=d))
        except ConfigError as exc:
            bad.append(f"  {d} {r}x{c}: {exc}")
    if bad:
        raise ConfigError(f"{len(bad)} of {len(combos)} configurations are invalid "
                          f"(nothing was run):\n" + "\n".join(bad))
    return configs


# --------------------------------------------------------------------------------------------
# Workloads: cycles of a piece of work on a configuration

_WORKLOADS: dict[str, tuple[Callable[[str], object], Callable[[HwConfig, object], tuple]]] = {}


def register_workload(kind: str, parse: Callable[[str], object],
                      cycles: Callable[[HwConfig, object], tuple[int, int]]) -> None:
    """Make ``KIND:ARGS`` workload specs available.

    *parse* turns ``ARGS`` into parameters (raising :class:`ConfigError` for bad ones, before
    anything runs); *cycles* returns ``(useful_macs, cycles)`` of the workload on a configuration.
    Both must be importable module-level functions (they run in worker processes).
    """
    _WORKLOADS[kind] = (parse, cycles)


def _split_workload(spec: str) -> tuple[tuple, object]:
    kind, _, args = str(spec).partition(":")
    if kind not in _WORKLOADS:
        raise ConfigError(f"workload must be KIND:ARGS with KIND one of "
                          f"{', '.join(sorted(_WORKLOADS))}, got {spec!r}")
    parse, cycles = _WORKLOADS[kind]
    return (parse, cycles), parse(args)


def check_workload(spec: str) -> None:
    """Raise :class:`ConfigError` if *spec* is not a known, well-formed workload."""
    _split_workload(spec)


def workload_cycles(config: HwConfig, spec: str) -> tuple[int, int]:
    """``(useful_macs, cycles)`` of workload *spec* (e.g. ``"gemm:256x256x256"``) on *config*."""
    (_, cycles), params = _split_workload(spec)
    return cycles(config, params)


def _parse_gemm(args: str) -> tuple[int, int, int]:
    try:
        m, k, n = (int(v) for v in args.lower().split("x"))
    except ValueError:
        raise ConfigError(f"workload gemm must be gemm:MxKxN (e.g. {DEFAULT_WORKLOAD}), "
                          f"got 'gemm:{args}'") from None
    if min(m, k, n) < 1:
        raise ConfigError(f"workload gemm: M, K and N must be >= 1, got 'gemm:{args}'")
    return m, k, n


def _gemm_cycles(config: HwConfig, mkn: tuple[int, int, int]) -> tuple[int, int]:
    """The tiled GEMM program's MACs and its golden-model cycle estimate."""
    from neuralmatrix.sw.gemm_program import MatrixLayout, gemm_program
    from neuralmatrix.sw.golden import estimate_cycles

    m, k, n = mkn
    bus, r, c = config.bus_bytes, config.rows, config.cols
    # The addresses do not change the estimate; the regions only need to be apart. Sizes are
    # bounded by both orientations of A and int32 elements for C.
    size_a = max(MatrixLayout.tiled(0, m, k, r, bus).end, MatrixLayout.tiled(0, k, m, r, bus).end)
    size_b = MatrixLayout.tiled(0, k, n, c, bus).end
    a_addr = 0
    b_addr = -(-size_a // 4096) * 4096
    c_addr = b_addr + -(-size_b // 4096) * 4096
    program = gemm_program(config, m, k, n, a_addr=a_addr, b_addr=b_addr, c_addr_dram=c_addr,
                           check=False)
    est = estimate_cycles(program.program, config)
    return m * k * n, est.total


register_workload("gemm", _parse_gemm, _gemm_cycles)


# --------------------------------------------------------------------------------------------
# Power

_POWER: list[PowerModel] = []


def register_power_model(model: PowerModel | None) -> None:
    """Use *model* for the ``power_w`` column when :func:`run_sweep` gets none (None: remove).

    ``model(config, row)`` gets the HwConfig and the CSV row of a configuration that fits (its
    resources, Fmax, workload MACs and cycles) and returns watts, or None.
    """
    _POWER.clear()
    if model is not None:
        _POWER.append(model)


# --------------------------------------------------------------------------------------------
# Keys and the results file

def config_key(params: dict) -> str:
    """Key of one run: a hash of every parameter in *params* (see :func:`_params`)."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _params(config: HwConfig, target: str, device: str, top: str, seed: int, router: str,
            freq_mhz: float, tools: dict, design: str) -> dict:
    return {"config": config.as_dict(), "target": target, "device": device, "top": top,
            "seed": seed, "router": router, "freq_mhz": freq_mhz,
            "tools": dict(sorted(tools.items())), "design": design}


def _load_results(path: Path) -> tuple[dict[str, dict], int]:
    """Records by key (last line wins) and the number of unreadable lines dropped.

    A last line without its newline is an interrupted write: it is cut off the file, so the
    next append starts on a line of its own.
    """
    if not path.exists():
        return {}, 0
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    dropped = 0
    if cut < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())
        dropped += 1
    records = {}
    for line in data[:cut].splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            records[rec["key"]] = rec
        except (ValueError, KeyError, TypeError):
            dropped += 1
    return records, dropped


def _append(fh, record: dict) -> None:
    fh.write(json.dumps(record, sort_keys=True) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


# --------------------------------------------------------------------------------------------
# One configuration (runs in a worker process or a Dask worker)

@dataclass(frozen=True)
class _Task:
    key: str
    params: dict
    config: HwConfig
    timeout_s: float | None
    workload: str
    workdir: str
    synth: Callable | None          # None: reuse `previous`'s synthesis, redo the workload only
    previous: dict | None = None


_BUSY = False
_PARENT = None


def _worker_init() -> None:
    """Local workers: Ctrl-C stops the task running (its tool is killed), an idle worker
    ignores it (the main process shuts the pool down). Each worker leads its own process
    group, so the main process can stop a worker together with the tools it started."""
    global _PARENT
    _PARENT = os.getppid()
    os.setpgrp()
    signal.signal(signal.SIGINT, _on_sigint)
    signal.signal(signal.SIGTERM, _on_sigint)
    _interrupt_when_parent_dies()


def _interrupt_when_parent_dies() -> None:
    """Linux: SIGINT to this worker when the sweep's process dies (even by SIGKILL), so a
    running tool is stopped rather than orphaned. Elsewhere a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGINT), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _on_sigint(signum, frame):
    if os.getppid() != _PARENT:
        # The sweep's process is gone: end this worker and the tools of its group.
        os.killpg(0, signal.SIGKILL)
    if _BUSY:
        raise KeyboardInterrupt


def _run_task(task: _Task) -> dict:
    """The JSON record of one configuration: synthesis figures and workload figures."""
    global _BUSY
    _BUSY = True
    try:
        if task.synth is None:
            rec = dict(task.previous)
        else:
            rec = {"key": task.key, "params": task.params, "tag": task.config.tag,
                   **_synth_figures(task)}
        if rec["status"] == "error":
            rec.update(workload=None, useful_macs=None, cycles=None, workload_error=None)
        else:
            rec.update(_workload_figures(task))
        rec["host"] = socket.gethostname()
        rec["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return rec
    finally:
        _BUSY = False


def _synth_figures(task: _Task) -> dict:
    p = task.params
    work = Path(task.workdir)
    shutil.rmtree(work, ignore_errors=True)
    out = {"status": "ok", "resources": {}, "capacity": {}, "utilization": {}, "fmax_mhz": None,
           "overflows": [], "error": None, "seconds": {}, "workdir": str(work),
           "flow": _flow(p["target"]), "counted": ""}
    t0 = time.monotonic()
    try:
        r = task.synth(task.config, target=p["target"], device=p["device"], top=p["top"],
                       freq_mhz=p["freq_mhz"], workdir=work, seed=p["seed"],
                       router=p["router"], timeout_s=task.timeout_s)
        out.update(resources=dict(r.resources), capacity=dict(r.capacity),
                   utilization=dict(r.utilization), fmax_mhz=r.fmax_mhz,
                   seconds=dict(r.seconds), flow=r.flow, counted=r.counted,
                   modules=dict(r.modules))
    except DoesNotFit as exc:
        out.update(status="does_not_fit", overflows=list(exc.overflows), message=str(exc),
                   **_unfit_figures(work, p["target"], p["device"], p["top"]))
    except Exception as exc:                  # a tool crash is a row, not the end of the sweep
        out.update(status="error", error=f"{type(exc).__name__}: {exc}")
    out["synth_seconds"] = round(time.monotonic() - t0, 2)
    return out


def _flow(target: str) -> str:
    return FLOW_LABEL if target in SYNTH_ONLY_TARGETS else FLOW_PNR


def _unfit_figures(work: Path, target: str, device: str, top: str) -> dict:
    """Resources (from Yosys) and their share of the device (from nextpnr's log) of a design
    that did not fit, read back from the flow's files; empty where a file is missing."""
    dev = _synth.resolve_device(target, device)
    try:
        stat = json.loads((work / "stat.json").read_text())
        resources = _synth._resources(dev, _synth._module_cells(stat, top_module_name(top)))
    except (OSError, ValueError, _synth.SynthError):
        return {}
    usage = _synth._utilisation(_synth._read(work / "nextpnr.log"))
    capacity, utilization = {}, {}
    for key, line in _synth._CAPACITY_LINE[target].items():
        if key in resources and line in usage and usage[line]["available"]:
            capacity[key] = usage[line]["available"]
            utilization[key] = round(100.0 * resources[key] / capacity[key], 2)
    return {"resources": resources, "capacity": capacity, "utilization": utilization}


def _workload_figures(task: _Task) -> dict:
    t0 = time.monotonic()
    try:
        macs, cycles = workload_cycles(task.config, task.workload)
        return {"workload": task.workload, "useful_macs": int(macs), "cycles": int(cycles),
                "workload_error": None, "workload_seconds": round(time.monotonic() - t0, 2)}
    except Exception as exc:
        return {"workload": task.workload, "useful_macs": None, "cycles": None,
                "workload_error": f"workload {task.workload}: {type(exc).__name__}: {exc}"}


def _outcome(task: _Task, fut) -> dict:
    """A finished future's record, or the crash record when its worker failed."""
    try:
        return fut.result()
    except Exception as exc:
        return _crash_record(task, exc)


def _crash_record(task: _Task, exc: BaseException) -> dict:
    """The record of a task whose worker itself failed (e.g. killed, or lost by Dask)."""
    return {"key": task.key, "params": task.params, "tag": task.config.tag, "status": "error",
            "error": f"worker failed: {type(exc).__name__}: {exc}", "resources": {},
            "capacity": {}, "utilization": {}, "fmax_mhz": None, "overflows": [],
            "workload": None, "useful_macs": None, "cycles": None, "synth_seconds": None}


# --------------------------------------------------------------------------------------------
# Executors: each yields (task, record) as configurations finish

def _run_local(tasks: list[_Task], jobs: int) -> Iterator[tuple[_Task, dict]]:
    pool = ProcessPoolExecutor(max_workers=max(1, min(jobs, len(tasks))),
                               initializer=_worker_init)
    pending = {pool.submit(_run_task, t): t for t in tasks}
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                task = pending.pop(fut)
                yield task, _outcome(task, fut)
    finally:
        workers = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        if pending:
            # Interrupted: stop the running tasks too, with the tools they started.
            _stop_groups([p for p in workers if p.is_alive()])
        pool.shutdown(wait=True)


def _stop_groups(procs: list, grace_s: float = 10.0) -> None:
    """SIGINT to the process group of each worker process in *procs* (the task stops and
    kills its tool), then SIGKILL to every group after *grace_s* or once the workers are gone
    (for a tool that outlived or ignored it)."""
    def signal_groups(sig):
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    signal_groups(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(p.is_alive() for p in procs):
        time.sleep(0.2)
    signal_groups(signal.SIGKILL)


def _run_dask(tasks: list[_Task], address: str) -> Iterator[tuple[_Task, dict]]:
    from neuralmatrix.sim.cluster import ClusterError, connect

    try:
        client = connect(address)
    except ClusterError as exc:
        raise SweepError(f"scheduler: {exc}") from None
    from distributed import as_completed

    futures = {}
    try:
        for t in tasks:
            futures[client.submit(_run_task, t, pure=False, key=f"nm-sweep-{t.config.tag}-"
                                  f"{t.key}-{os.getpid()}-{time.time_ns()}")] = t
        for fut in as_completed(list(futures)):
            task = futures.pop(fut)
            yield task, _outcome(task, fut)
    finally:
        if futures:
            client.cancel(list(futures))
        client.close()


# --------------------------------------------------------------------------------------------
# The sweep

@dataclass
class SweepReport:
    """Outcome of :func:`run_sweep`.

    Attributes
    ----------
    rows : list of dict
        One CSV row (:data:`CSV_COLUMNS`) per finished configuration, in sweep order.
    total : int
        Configurations in the sweep.
    reused : int
        Finished ones found in ``results.jsonl`` at the start.
    ran : int
        Configurations that finished during this call.
    errors : int
        Rows with an error.
    interrupted : bool
        Ctrl-C stopped the sweep; running it again resumes.
    out_dir, jsonl, csv : Path
    plots : list of Path
    seconds : float
        Wall time of this call.
    """

    rows: list[dict] = field(default_factory=list)
    total: int = 0
    reused: int = 0
    ran: int = 0
    errors: int = 0
    interrupted: bool = False
    out_dir: Path | None = None
    jsonl: Path | None = None
    csv: Path | None = None
    plots: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def run_sweep(configs: Sequence[HwConfig], *, out_dir: str | Path, target: str = "ecp5",
              device: str | None = None, top: str = "array", seed: int = 1,
              router: str = DEFAULT_ROUTER, freq_mhz: float | None = None,
              timeout_s: float | None = 3600.0,
              workload: str = DEFAULT_WORKLOAD, jobs: int | None = None,
              scheduler: str | None = None, retry_errors: bool = True,
              plots: Sequence[str] = ("png",), synth: Callable = synthesize,
              power: PowerModel | None = None,
              log: Callable[[str], None] = print) -> SweepReport:
    """Run every configuration of *configs* through *synth* and report them.

    Parameters
    ----------
    configs : sequence of HwConfig
    out_dir : path
        Where ``results.jsonl``, ``results.csv``, the plots and the per-run work directories go
        (created). Running again with the same directory resumes.
    target, device, top, seed, router, freq_mhz, timeout_s
        As for :func:`~neuralmatrix.fpga.synth.synthesize`, the same for every configuration.
    workload : str
        ``KIND:ARGS`` (:func:`workload_cycles`), e.g. ``"gemm:256x256x256"``.
    jobs : int, optional
        Local worker processes (default ``os.cpu_count()``). Ignored with *scheduler*.
    scheduler : str, optional
        Address of a Dask distributed scheduler: one task per configuration on its workers,
        which need this package installed and *out_dir* at the same path.
    retry_errors : bool
        Run configurations whose recorded result is an error again.
    plots : sequence of {"png", "svg", "pdf"}
        Image formats of the plots (empty: none).
    synth : callable
        The flow, called like :func:`~neuralmatrix.fpga.synth.synthesize`; must be importable
        by the workers (a module-level function or a :func:`functools.partial` of one).
    power : callable, optional
        Power model for ``power_w`` (default: the one registered with
        :func:`register_power_model`, else none and the column stays empty).
    log : callable
        Receives the progress lines.

    Raises
    ------
    ConfigError
        A bad parameter, before anything runs.
    SweepError
        The scheduler cannot be reached or another sweep is writing to *out_dir*.
    """
    t_start = time.monotonic()
    configs = list(dict.fromkeys(configs))
    if not configs:
        raise ConfigError("the sweep has no configuration")
    for c in configs:
        if not isinstance(c, HwConfig):
            raise TypeError(f"configs must be HwConfig, got {type(c).__name__}")
    dev, freq = check_parameters(configs[0], target, device, top, freq_mhz, seed, timeout_s,
                                 router)
    check_workload(workload)
    plots = list(dict.fromkeys(plots))
    for fmt in plots:
        if fmt not in PLOT_FORMATS:
            raise ConfigError(f"plots must be among {', '.join(PLOT_FORMATS)}, got {fmt!r}")
    if scheduler is None:
        if jobs is None:
            jobs = os.cpu_count() or 1
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ConfigError(f"jobs must be a positive integer, got {jobs!r}")
    tools = check_tools(target)
    if power is None and _POWER:
        power = _POWER[0]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise SweepError(f"another sweep is writing to {out}") from None
    report = SweepReport(total=len(configs), out_dir=out, jsonl=out / JSONL_NAME,
                         csv=out / CSV_NAME)
    restore = _sigterm_as_interrupt()
    try:
        try:
            records = _sweep(report, configs, dev.name, target, top, seed, router, freq,
                             timeout_s, workload, jobs, scheduler, retry_errors, synth, tools,
                             log)
        finally:
            restore()
        report.rows = _csv_rows(records, power)
        write_csv(report.rows, report.csv)
        if report.rows and plots:
            report.plots = plot_sweep(report.rows, out, plots,
                                      capacity=_first_capacity(records))
    finally:
        lock.close()
    report.errors = sum(1 for r in report.rows if r["error"])
    report.seconds = round(time.monotonic() - t_start, 1)
    return report


def _sigterm_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM (``kill PID``) stop the sweep as Ctrl-C does, keeping what is done; returns
    the function restoring the previous handler. Only in the main thread (else a no-op)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _nothing():
    yield from ()


def _sweep(report, configs, device, target, top, seed, router, freq, timeout_s, workload, jobs,
           scheduler, retry_errors, synth, tools, log) -> list[dict]:
    """Run what is not in the results file yet; the records of *configs* that are done."""
    design = generator_digest()
    params = {c: _params(c, target, device, top, seed, router, freq, tools, design)
              for c in configs}
    keys = {c: config_key(params[c]) for c in configs}
    known, dropped = _load_results(report.jsonl)
    if dropped:
        log(f"ignored {dropped} unreadable line(s) of {report.jsonl} (an interrupted write); "
            f"their configurations run again")
    done, tasks, workload_only = {}, [], 0
    for c in configs:
        rec = known.get(keys[c])
        if rec is not None and (rec["status"] != "error" or not retry_errors):
            done[c] = rec
            if rec["status"] != "error" and (rec.get("workload") != workload
                                             or rec.get("cycles") is None):
                workload_only += 1
                tasks.append(_Task(keys[c], params[c], c, timeout_s, workload,
                                   rec.get("workdir", ""), None, rec))
            continue
        tasks.append(_Task(keys[c], params[c], c, timeout_s, workload,
                           str(report.out_dir / "runs" / f"{c.tag}-{keys[c]}"), synth))
    report.reused = len(done)
    # Largest first: the long runs start early, so the workers finish close together.
    tasks.sort(key=lambda t: -(t.config.rows * t.config.cols))
    where = (f"Dask scheduler {scheduler}" if scheduler is not None
             else f"{min(jobs, max(1, len(tasks)))} local process(es)")
    log(f"sweep: {len(configs)} configuration(s), {target} {device}, top {top}, seed {seed}, "
        f"{router}, "
        f"workload {workload}; results in {report.jsonl}")
    if done:
        extra = (f"; recomputing the workload figures of {workload_only} ({workload})"
                 if workload_only else "")
        log(f"resuming: {len(done)} of {len(configs)} done{extra}")
    n_synth = sum(1 for t in tasks if t.synth is not None)
    if n_synth:
        log(f"running {n_synth} configuration(s) on {where}")
    elif tasks:
        log(f"estimating the workload on {where}")
    finished = dict(done)
    runner = (_nothing() if not tasks else _run_dask(tasks, scheduler)
              if scheduler is not None else _run_local(tasks, jobs))
    try:
        with open(report.jsonl, "a") as fh:
            for task, rec in runner:
                _append(fh, rec)
                finished[task.config] = rec
                if task.synth is not None:
                    report.ran += 1
                what = "" if task.synth is not None else "workload only: "
                log(f"[{len(finished)}/{len(configs)}] {what}{_progress_line(rec)}")
    except KeyboardInterrupt:
        runner.close()
        report.interrupted = True
        n_done = sum(1 for c in configs if c in finished)
        log(f"interrupted: {n_done} of {len(configs)} configurations done and kept in "
            f"{report.jsonl}; run the same command again (same output directory) to resume")
    return [finished[c] for c in configs if c in finished]


def _progress_line(rec: dict) -> str:
    head = f"{rec['tag']}:"
    if rec["status"] == "error":
        return f"{head} error: {rec['error']}"
    secs = "" if rec.get("synth_seconds") is None else f" ({rec['synth_seconds']:.0f} s)"
    res = rec.get("resources") or {}
    figures = ", ".join(f"{res[k]:,} {k}" for k in ("LUT4", "LUT", "FF", "DSP", "BRAM")
                        if k in res)
    if rec["status"] == "does_not_fit":
        over = "; ".join(f"{o['resource']} {o['used']:,} of {o['available']:,}"
                         for o in rec["overflows"])
        return f"{head} does not fit ({over}){secs}"
    fmax = "" if rec.get("fmax_mhz") is None else f", {rec['fmax_mhz']:.1f} MHz"
    gops = _gops(rec.get("useful_macs"), rec.get("cycles"), rec.get("fmax_mhz"))
    thr = "" if gops is None else f", {gops:.2f} GOPS"
    werr = f"; {rec['workload_error']}" if rec.get("workload_error") else ""
    return f"{head} {figures}{fmax}{thr}{secs}{werr}"


# --------------------------------------------------------------------------------------------
# Report: CSV and plots

def _gops(macs, cycles, fmax_mhz) -> float | None:
    if not macs or not cycles or not fmax_mhz:
        return None
    return round(2 * macs * fmax_mhz / cycles / 1000.0, 4)


def _csv_rows(records: list[dict], power: PowerModel | None) -> list[dict]:
    rows = []
    for rec in records:
        p, cfg = rec["params"], rec["params"]["config"]
        res, util = rec.get("resources") or {}, rec.get("utilization") or {}
        status = rec["status"]
        synth_only = p["target"] in SYNTH_ONLY_TARGETS
        columns = _SYNTH_ONLY_COLUMNS if synth_only else _RESOURCE_COLUMNS
        fits = {"ok": "n/a" if synth_only else "yes", "does_not_fit": "no"}.get(status, "")
        row = {
            "rows": cfg["rows"], "cols": cfg["cols"], "dataflow": cfg["dataflow"],
            "target": p["target"], "device": p["device"], "top": p["top"], "seed": p["seed"],
            "router": p.get("router", DEFAULT_ROUTER),
            "flow": rec.get("flow") or _flow(p["target"]), "counted": rec.get("counted") or "",
            **{col: res.get(key) for col, key in columns.items()},
            **{f"{col}_pct": util.get(key) for col, key in columns.items()},
            "fits": fits,
            "overflow": "; ".join(f"{o['resource']} {o['used']} of {o['available']}"
                                  for o in rec.get("overflows") or []),
            "fmax_mhz": rec.get("fmax_mhz"),
            "workload": rec.get("workload"), "useful_macs": rec.get("useful_macs"),
            "cycles": rec.get("cycles"),
            "gops": _gops(rec.get("useful_macs"), rec.get("cycles"), rec.get("fmax_mhz"))
            if status == "ok" else None,
            "power_w": None, "gops_per_w": None,
            "synth_seconds": rec.get("synth_seconds"),
            "error": rec.get("error") or rec.get("workload_error"),
        }
        if power is not None and status == "ok" and not synth_only:
            watts = power(HwConfig(**cfg), dict(row))
            if watts is not None and watts > 0 and math.isfinite(watts):
                row["power_w"] = round(float(watts), 4)
                if row["gops"] is not None:
                    row["gops_per_w"] = round(row["gops"] / watts, 4)
        rows.append(row)
    return rows


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """Write *rows* with :data:`CSV_COLUMNS` (empty cells for None), atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    tmp.replace(path)
    return path


def _first_capacity(records: list[dict]) -> dict:
    for rec in records:
        if rec.get("capacity"):
            return dict(rec["capacity"])
    return {}


def plot_sweep(rows: list[dict], out_dir: str | Path, formats: Sequence[str] = ("png",), *,
               capacity: dict | None = None) -> list[Path]:
    """Resources, Fmax and throughput (and throughput per watt, with power figures) against
    array size, one line per dataflow; returns the files written.

    Uses matplotlib's object API (no pyplot, no global backend change; Agg canvas).
    """
    from matplotlib.figure import Figure

    out = Path(out_dir)
    capacity = capacity or {}
    square = all(r["rows"] == r["cols"] for r in rows)
    sizes = sorted({(r["rows"] * r["cols"], r["rows"], r["cols"]) for r in rows})
    ticks = sorted({s[0] for s in sizes})
    if square:
        labels = {pes: f"{r}x{c}" for pes, r, c in sizes}
    else:
        labels = {pes: str(pes) for pes in ticks}
    xlabel = "array size (rows x cols)" if square else "array size (PEs = rows x cols)"
    dataflows = list(dict.fromkeys(r["dataflow"] for r in rows))
    first = rows[0]
    where = f"{first['top']} on {first['target']} {first['device']}"
    synth_only = first.get("flow") == FLOW_LABEL
    if synth_only:
        where += f" ({FLOW_LABEL}; hierarchical counts)"

    def series(key, df):
        pts = sorted(((r["rows"] * r["cols"], r["rows"], r[key], r["fits"] == "no")
                      for r in rows if r["dataflow"] == df and r.get(key) is not None))
        return [p[0] for p in pts], [p[2] for p in pts], [p[3] for p in pts]

    def draw(ax, key, ylabel, cap=None):
        any_point, top_y = False, 0
        for df in dataflows:
            xs, ys, unfit = series(key, df)
            if not xs:
                continue
            any_point, top_y = True, max(top_y, *ys)
            ax.plot(xs, ys, marker="o", label=df)
            bad = [(x, y) for x, y, u in zip(xs, ys, unfit) if u]
            if bad:
                ax.scatter(*zip(*bad), marker="x", s=80, color="red", zorder=3,
                           label=f"{df}: does not fit")
        if cap and top_y >= 0.2 * cap:      # else the line would flatten the data
            ax.axhline(cap, color="grey", ls="--", lw=0.8, label=f"device: {cap:,}")
        elif cap:
            ylabel = f"{ylabel} (device: {cap:,})"
        ax.set_ylim(bottom=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [labels[t] for t in ticks], rotation=45 if len(ticks) > 6 else 0)
        ax.minorticks_off()
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if any_point:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)

    figures = []
    fig = Figure(figsize=(10, 7), layout="constrained")
    columns = _SYNTH_ONLY_COLUMNS if synth_only else _RESOURCE_COLUMNS
    for ax, (col, key) in zip(fig.subplots(2, 2).flat, columns.items()):
        draw(ax, col, "LUT (LUT1..LUT6)" if key == "LUT" else key, capacity.get(key))
        ax.set_xlabel(xlabel)
    fig.suptitle(f"Resources vs array size: {where}")
    figures.append(("resources", fig))
    if synth_only:        # no Fmax: no timing or throughput plots
        return _save(figures, out, formats)

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    draw(ax, "fmax_mhz", "Fmax (MHz)")
    ax.set_xlabel(xlabel)
    ax.set_title(f"Fmax vs array size: {where}")
    figures.append(("fmax", fig))

    workload = next((r["workload"] for r in rows if r.get("workload")), "")
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    draw(ax, "gops", "throughput (GOPS, 2 ops per MAC)")
    ax.set_xlabel(xlabel)
    ax.set_title(f"Throughput of {workload} at Fmax: {where}")
    figures.append(("throughput", fig))

    if any(r.get("gops_per_w") is not None for r in rows):
        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.subplots()
        draw(ax, "gops_per_w", "GOPS / W")
        ax.set_xlabel(xlabel)
        ax.set_title(f"Throughput per watt of {workload}: {where}")
        figures.append(("throughput_per_watt", fig))

    return _save(figures, out, formats)


def _save(figures: list, out: Path, formats: Sequence[str]) -> list[Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    written = []
    for name, fig in figures:
        FigureCanvasAgg(fig)
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            tmp = out / f"{name}.tmp.{fmt}"
            fig.savefig(tmp, dpi=110)
            tmp.replace(path)
            written.append(path)
    return written
