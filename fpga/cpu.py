"""Throughput per watt: the accelerator on ECP5 against this machine's CPU (onnxruntime).

CPU side
    onnxruntime (CPU execution provider) on the same ONNX network, fp32 and int8 (dynamic
    quantization, and static quantization calibrated on real inputs) where onnxruntime
    quantizes it; inferences per second at batch 1 and at a batch of :data:`CPU_BATCH`, the
    best of the two counted. CPU watts: measured with RAPL (``/sys/class/powercap``, package
    energy over the timed runs) when readable, else the CPU's stated TDP from :data:`KNOWN_CPUS`
    (by ``/proc/cpuinfo`` vendor, family and model) shared out over the cores this machine has
    of the socket (a virtual machine with 2 of a 64-core part is charged 2/64 of its TDP), or
    ``cpu_watts`` given by the caller. Whichever was used is printed.
Accelerator side
    inferences per second = Fmax / cycles of one inference, the cycles being the golden model's
    estimate of the compiled network (``compile_model(...).report['totals']['est_cycles']``;
    within 0.1% of the RTL's count on tiled GEMMs), at the Fmax of a ``neuralmatrix synth
    --top accelerator`` result, and the watts of :mod:`neuralmatrix.fpga.power` for that
    design (activity measured on the digits CNN). Host work between kernels (the gathers the
    compiler leaves to the host, the input quantization) and external memory are not counted.
"""

from __future__ import annotations

import glob
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from neuralmatrix.hw.params import ConfigError, HwConfig

__all__ = ["KNOWN_CPUS", "CPU_BATCH", "MODELS", "CpuInfo", "cpu_info", "Rapl", "CpuResult",
           "AccelResult", "benchmark_cpu", "accelerator_result", "compare"]

MODELS = ("digits", "minilm")
CPU_BATCH = 32

# (vendor, family, model) -> (name, socket TDP in W, cores per socket); the TDP is the maker's
# stated figure for the part named (for a family with several parts, the one named).
KNOWN_CPUS: dict[tuple[str, int, int], tuple[str, float, int]] = {
    ("AuthenticAMD", 25, 1): ("AMD EPYC 7003 (Zen 3 'Milan'), taken as EPYC 7763", 280.0, 64),
    ("AuthenticAMD", 23, 49): ("AMD EPYC 7002 (Zen 2 'Rome'), taken as EPYC 7742", 225.0, 64),
    ("AuthenticAMD", 25, 17): ("AMD EPYC 9004 (Zen 4 'Genoa'), taken as EPYC 9654", 360.0, 96),
    ("GenuineIntel", 6, 106): ("Intel Xeon 3rd gen (Ice Lake-SP), taken as Platinum 8380",
                               270.0, 40),
    ("GenuineIntel", 6, 143): ("Intel Xeon 4th gen (Sapphire Rapids), taken as Platinum 8480+",
                               350.0, 56),
}


@dataclass
class CpuInfo:
    model_name: str
    vendor: str
    family: int
    model: int
    cores: int                      # usable by this process
    known: tuple | None = None      # the KNOWN_CPUS entry, if any


def cpu_info(path: str = "/proc/cpuinfo") -> CpuInfo:
    """The first processor's identity from *path* and the cores this process may use."""
    fields = {}
    with open(path) as fh:
        for line in fh:
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    vendor = fields.get("vendor_id", "")
    family = int(fields.get("cpu family", "0") or 0)
    model = int(fields.get("model", "0") or 0)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return CpuInfo(fields.get("model name", "unknown"), vendor, family, model, cores,
                   KNOWN_CPUS.get((vendor, family, model)))


class Rapl:
    """Package energy counters of ``/sys/class/powercap/intel-rapl:N`` (AMD exposes the same
    interface). ``available`` is False when none is readable (e.g. in a virtual machine)."""

    def __init__(self, root: str = "/sys/class/powercap"):
        self.files = []
        for d in sorted(glob.glob(os.path.join(root, "intel-rapl:[0-9]*"))):
            if ":" in os.path.basename(d).split("intel-rapl:", 1)[1]:
                continue                                  # a sub-domain (core, dram)
            f = os.path.join(d, "energy_uj")
            try:
                int(Path(f).read_text())
            except (OSError, ValueError):
                continue
            rng = os.path.join(d, "max_energy_range_uj")
            try:
                wrap = int(Path(rng).read_text())
            except (OSError, ValueError):
                wrap = 0
            self.files.append((f, wrap))
        self.available = bool(self.files)

    def read(self) -> list[int]:
        return [int(Path(f).read_text()) for f, _ in self.files]

    def joules(self, before: list[int], after: list[int]) -> float:
        total = 0
        for (f, wrap), b, a in zip(self.files, before, after):
            total += a - b if a >= b else a + wrap - b
        return total * 1e-6


def _time_session(sess, feeds: dict, seconds: float, batch: int) -> float:
    """Inferences per second: median of 5 windows of about seconds/5 each."""
    sess.run(None, feeds)                                  # warm-up
    rates = []
    for _ in range(5):
        n, t0 = 0, time.perf_counter()
        while True:
            sess.run(None, feeds)
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds / 5:
                break
        rates.append(n * batch / elapsed)
    return statistics.median(rates)


@dataclass
class CpuResult:
    model: str
    precision: str                 # fp32, int8-dynamic, int8-static
    inferences_per_s: float | None
    batch: int | None
    watts: float | None
    watts_source: str
    error: str | None = None
    rates: dict = field(default_factory=dict)      # batch -> inferences/s

    @property
    def per_watt(self):
        if not self.inferences_per_s or not self.watts:
            return None
        return self.inferences_per_s / self.watts


def _model_and_feeds(name: str, seq_len: int):
    """(ONNX bytes, feed names -> one example of batch 1, calibration examples, batch axis
    size function) of a built-in model."""
    import onnx

    if name == "digits":
        from neuralmatrix.sw.models.digits import MODEL_PATH, load_split

        model = onnx.load(str(MODEL_PATH))
        x, _ = load_split("test")
        xt, _ = load_split("train")
        inp = model.graph.input[0].name
        return model, {inp: x[:1].astype(np.float32)}, \
            [{inp: xt[i:i + 1].astype(np.float32)} for i in range(64)]
    if name == "minilm":
        from neuralmatrix.sw.models import minilm

        model = minilm.load_onnx(seq_len)
        names = {i.name for i in model.graph.input}
        toks = minilm.tokenize(minilm.SENTENCES, seq_len)
        toks = {k: v for k, v in toks.items() if k in names}
        n = len(next(iter(toks.values())))
        return model, {k: v[:1] for k, v in toks.items()}, \
            [{k: v[i:i + 1] for k, v in toks.items()} for i in range(min(n, 16))]
    raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {name!r}")


def _batched_model(model, batch: int):
    """The model with a batch dimension of *batch* on every input and output (the built-in
    models are exported with batch 1 as a fixed dimension)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    del m.graph.value_info[:]
    return m


def benchmark_cpu(name: str, *, seconds: float = 3.0, threads: int | None = None,
                  seq_len: int = 16, precisions=("fp32", "int8-dynamic", "int8-static"),
                  cpu_watts: float | None = None, log=print) -> list[CpuResult]:
    """onnxruntime on this CPU: one :class:`CpuResult` per precision (an ``error`` when
    onnxruntime cannot quantize or run that precision)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, QuantType, quantize_dynamic,
                                          quantize_static)

    info = cpu_info()
    threads = threads or info.cores
    rapl = Rapl()
    model, feed1, calib = _model_and_feeds(name, seq_len)
    results = []
    with tempfile.TemporaryDirectory(prefix="nm_cpu_") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        onnx.save(model, str(fp32), save_as_external_data=False)
        for prec in precisions:
            path = Path(tmp) / f"{prec}.onnx"
            try:
                if prec == "fp32":
                    path = fp32
                elif prec == "int8-dynamic":
                    quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
                elif prec == "int8-static":
                    class Reader(CalibrationDataReader):
                        def __init__(self):
                            self.it = iter(calib)

                        def get_next(self):
                            return next(self.it, None)

                    quantize_static(str(fp32), str(path), Reader(),
                                    activation_type=QuantType.QInt8,
                                    weight_type=QuantType.QInt8)
                else:
                    raise ConfigError(f"precision must be fp32, int8-dynamic or int8-static, "
                                      f"got {prec!r}")
                rates = {}
                e0 = rapl.read() if rapl.available else None
                t0 = time.perf_counter()
                for batch in (1, CPU_BATCH):
                    opts = ort.SessionOptions()
                    opts.intra_op_num_threads = threads
                    opts.inter_op_num_threads = 1
                    src = onnx.load(str(path))
                    if batch > 1:
                        src = _batched_model(src, batch)
                    try:
                        sess = ort.InferenceSession(src.SerializeToString(), opts,
                                                    providers=["CPUExecutionProvider"])
                        feeds = {k: np.repeat(v, batch, axis=0) for k, v in feed1.items()}
                        rates[batch] = round(_time_session(sess, feeds, seconds, batch), 2)
                    except Exception as exc:
                        if batch == 1:
                            raise
                        # A graph with the batch size built in (a fixed Reshape): batch 1 only.
                        log(f"cpu {name} {prec}: batch {batch} does not run "
                            f"({type(exc).__name__}); batch 1 only")
                best = max(rates, key=rates.get)
                if e0 is not None:
                    watts = rapl.joules(e0, rapl.read()) / (time.perf_counter() - t0)
                    source = "RAPL package energy, measured over the timed runs"
                else:
                    watts, source = _assumed_cpu_watts(info, threads, cpu_watts)
                if cpu_watts is not None:
                    watts, source = cpu_watts, "given (--cpu-watts)"
                results.append(CpuResult(name, prec, rates[best], best, watts, source,
                                         rates=rates))
                log(f"cpu {name} {prec}: {rates} inferences/s (batch: rate)")
            except ConfigError:
                raise
            except Exception as exc:                 # onnxruntime could not quantize or run
                msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                results.append(CpuResult(name, prec, None, None, None, "", error=msg))
                log(f"cpu {name} {prec}: failed: {msg}")
    return results


def _assumed_cpu_watts(info: CpuInfo, threads: int, given: float | None) -> tuple[float, str]:
    if given is not None:
        return given, "given (--cpu-watts)"
    if info.known is None:
        raise ConfigError(f"cpu_watts: RAPL is not readable and the CPU ({info.vendor} family "
                          f"{info.family} model {info.model}, '{info.model_name}') is not in "
                          f"KNOWN_CPUS; give its power with --cpu-watts")
    name, tdp, cores = info.known
    used = min(threads, info.cores)
    watts = tdp * used / cores
    return watts, (f"no RAPL; TDP of {name}: {tdp:g} W for {cores} cores, {used} of them here: "
                   f"{watts:.2f} W (assumption)")


@dataclass
class AccelResult:
    model: str
    config: str
    fmax_mhz: float
    cycles: int
    inferences_per_s: float
    watts: float
    watts_low: float
    watts_high: float
    executed_macs: int = 0      # all MACs the array executes (neuralmatrix.sw.macs)
    useful_macs: int = 0        # the ONNX model's own Conv/MatMul/Gemm MACs

    @property
    def per_watt(self):
        return self.inferences_per_s / self.watts


def accelerator_result(name: str, config: HwConfig, fmax_mhz: float, power, *,
                       seq_len: int = 16) -> AccelResult:
    """The accelerator's throughput on built-in network *name* (golden-model cycle estimate of
    the compiled network at *fmax_mhz*) with *power* (a PowerEstimate)."""
    from neuralmatrix.sw.compiler import builtin, compile_model

    src, feeds, shapes = builtin(name, seq_len=seq_len)
    rep = compile_model(src, config, calib_feeds=feeds, input_shapes=shapes).report
    cycles = int(rep["totals"]["est_cycles"])
    tot = rep["totals"]
    return AccelResult(name, config.tag, fmax_mhz, cycles, fmax_mhz * 1e6 / cycles,
                       power.total_w, power.low_w, power.high_w,
                       int(tot["executed_macs"]), int(tot["useful_macs"]))


def compare(accel: AccelResult, cpu: list[CpuResult]) -> list[dict]:
    """One row per CPU precision: both throughputs, per watt, and the ratio accelerator/CPU
    (with the power model's bounds)."""
    rows = []
    for c in cpu:
        row = {"model": accel.model, "cpu_precision": c.precision,
               "cpu_inf_s": c.inferences_per_s, "cpu_batch": c.batch, "cpu_w": c.watts,
               "cpu_inf_s_w": c.per_watt, "acc_config": accel.config,
               "acc_fmax_mhz": accel.fmax_mhz, "acc_cycles": accel.cycles,
               "acc_inf_s": accel.inferences_per_s, "acc_w": accel.watts,
               "acc_inf_s_w": accel.per_watt, "ratio": None, "ratio_low": None,
               "ratio_high": None, "error": c.error, "cpu_w_source": c.watts_source}
        if c.per_watt:
            row["ratio"] = accel.per_watt / c.per_watt
            row["ratio_low"] = accel.inferences_per_s / accel.watts_high / c.per_watt
            row["ratio_high"] = accel.inferences_per_s / accel.watts_low / c.per_watt
        rows.append(row)
    return rows


def as_dicts(objs) -> list[dict]:
    return [asdict(o) for o in objs]
