"""The onnx wheel's model files through the whole compiler, on the golden model.

``python -m neuralmatrix.sw.accuracy onnx-models [--rows R --cols C] [--json FILE]`` (or
:func:`onnx_models` here) compiles every model of ``onnx/backend/test/data/light/`` (nine
classic ImageNet CNNs written by older exporters at opset 9: AlexNet, DenseNet-121,
Inception v1/v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet-512; inputs nobody here
wrote), runs it on the golden model and compares it with onnxruntime.

These are the "light" versions ONNX ships for its own backend tests: every weight tensor is
a ``ConstantOfShape`` of 0.02, so the figures say whether the *graph* compiles and computes
what onnxruntime computes, not how accurate a trained network is (for that, see
``accuracy efficientnet-lite0``). Calibration uses :data:`CALIB_SAMPLES` random normal
images, the comparison one more (held out). A row is ``pass`` when the golden model's
output is within :data:`~neuralmatrix.sw.accuracy.TOL_LSB` int8 steps of onnxruntime's
(the step of the compiled output's scale), ``fail`` when it is not, ``compile error`` with
the compiler's one-line error otherwise; any other exception is a bug and is reported as
``crash`` with its type, never swallowed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from neuralmatrix.hw.params import HwConfig

__all__ = ["CALIB_SAMPLES", "light_models", "onnx_models", "print_models"]

#: Random normal images the light models are calibrated on.
CALIB_SAMPLES = 4


def light_models() -> list[Path]:
    """The onnx wheel's ``light_*.onnx`` model files, by name."""
    import onnx

    return sorted((Path(onnx.__file__).parent / "backend/test/data/light").glob("light_*.onnx"))


def _feeds(model, n: int, seed: int) -> list[dict]:
    init = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    specs = [(vi.name, [d.dim_value for d in vi.type.tensor_type.shape.dim])
             for vi in model.graph.input if vi.name not in init]
    return [{name: rng.standard_normal(shape).astype(np.float32) for name, shape in specs}
            for _ in range(n)]


def _one(path: Path, config: HwConfig, tol_lsb: float) -> dict:
    import onnxruntime as ort

    from .compiler import compile_model
    from .conformance import project_errors
    from .frontend import load_model
    from .runtime import run_golden

    row = {"model": path.stem.removeprefix("light_")}
    t0 = time.perf_counter()
    try:
        model = load_model(path)
        feeds = _feeds(model, CALIB_SAMPLES + 1, seed=0)
        comp = compile_model(model, config, calib_feeds=feeds[:CALIB_SAMPLES])
        row["compile_s"] = round(time.perf_counter() - t0, 1)
        t1 = time.perf_counter()
        res = run_golden(comp.compiled, feeds[-1])
        row["golden_s"] = round(time.perf_counter() - t1, 1)
    except project_errors() as exc:
        msg = " ".join(str(exc).replace(f"{path}: ", "").split())
        return row | {"status": "compile error", "detail": msg[:240]}
    except Exception as exc:  # noqa: BLE001 - a bug: reported, never swallowed
        return row | {"status": "crash", "detail": f"{type(exc).__name__}: {exc}"[:200]}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds[-1])))
    worst, cos = 0.0, 1.0
    for name, exp in ref.items():
        got = res.outputs[name].reshape(exp.shape).astype(np.float64)
        lsb = comp.compiled.network.outputs[name].scale
        worst = max(worst, float(np.max(np.abs(got - exp))) / lsb)
        denom = float(np.linalg.norm(got) * np.linalg.norm(exp))
        cos = min(cos, float(np.dot(got.ravel(), exp.ravel())) / denom if denom else 1.0)
    tot = comp.report["totals"]
    return row | {"status": "pass" if worst <= tol_lsb else "fail", "err_lsb": round(worst, 2),
                  "cosine": round(cos, 5), "kernels": tot["kernels"],
                  "useful_macs": tot["useful_macs"], "executed_macs": tot["executed_macs"],
                  "utilization_pct": tot["utilization_pct"],
                  "occupancy_pct": tot["occupancy_pct"]}


def onnx_models(config: HwConfig | None = None) -> dict:
    """Compile, run and compare every light model; one row each."""
    from .accuracy import TOL_LSB

    config = config or HwConfig(rows=16, cols=16)
    rows = [_one(p, config, TOL_LSB) for p in light_models()]
    counts = {s: sum(r["status"] == s for r in rows)
              for s in ("pass", "fail", "compile error", "crash")}
    return {"config": f"{config.rows}x{config.cols} {config.dataflow.value}",
            "tolerance_lsb": TOL_LSB, "calibration": f"{CALIB_SAMPLES} random normal images",
            "counts": counts, "models": rows}


def print_models(r: dict, console) -> None:
    from rich.table import Table

    t = Table(title=f"onnx wheel light models, {r['config']}, golden vs onnxruntime "
                    f"(tolerance {r['tolerance_lsb']:g} int8 steps; weights all 0.02)")
    for c in ("model", "status", "err (steps)", "cosine", "useful MACs", "util. %", "occ. %",
              "compile s"):
        t.add_column(c)
    for row in r["models"]:
        t.add_row(row["model"], row["status"],
                  f"{row['err_lsb']:.2f}" if "err_lsb" in row else "",
                  f"{row['cosine']:.5f}" if "cosine" in row else "",
                  f"{row['useful_macs']:,}" if "useful_macs" in row else "",
                  f"{row['utilization_pct']}" if "utilization_pct" in row else "",
                  f"{row['occupancy_pct']}" if "occupancy_pct" in row else "",
                  f"{row.get('compile_s', '')}")
    console.print(t)
    for row in r["models"]:
        if row.get("detail"):
            console.print(f"  {row['model']}: {row['detail']}", soft_wrap=True)
    console.print(", ".join(f"{k} {v}" for k, v in r["counts"].items()))
