"""Accuracy of compiled networks on the golden model, against the float models.

``python -m neuralmatrix.sw.accuracy digits|minilm|onnx-cases|pwl|all [--json FILE]`` prints
one table per benchmark (rich) and optionally writes every figure as JSON:

* ``digits``: the digits CNN (:mod:`neuralmatrix.sw.models.digits`), float top-1 (ONNX reference
  evaluator) against the compiled int8 + PWL network on the golden model, on the 450 test
  images; calibration on 256 training images.
* ``minilm``: all-MiniLM-L6-v2 compiled whole (fixed sequence length), sentence embeddings
  (mean pooling over the attention mask, L2 norm) of the golden model against the float graph,
  cosine per sentence; extra MACs and compile time from the compile report. Calibration on
  the 64 sentences of ``minilm.CALIBRATION_SENTENCES``, none of which is a test sentence.
* ``efficientnet-lite0``: the pretrained EfficientNet-Lite0 (:mod:`neuralmatrix.sw.models.
  efficientnet_lite0`) compiled whole at 224x224, golden-model logits against the float
  graph (onnxruntime) on the test photos of :mod:`neuralmatrix.sw.models.photos` (10
  photographs x 8 views; calibration on the views of 8 other photographs): top-1
  agreement, top-5 agreement (same top-5 set; and the mean overlap of the two top-5 sets),
  float top-1 within the int8 top-5, and the logit cosine.
* ``onnx-cases``: every ``pytorch-converted`` / ``pytorch-operator`` case of the onnx wheel
  the compiler supports: compiled (calibrated on the case's input and 7 random inputs with
  its shape, mean and standard deviation) and run on the golden model on the case's input;
  a case passes when every output is within :data:`TOL_LSB` steps of the compiled int8
  output (its scale) of the expected output. Cases whose stored inputs are not data
  (magnitudes above 1e4: some ``test_operator_*`` cases hold uninitialized doubles) are
  reported as ``bad input data``.
* ``onnx-node``: ONNX's own node test cases (``onnx.backend.test.case.node``, built offline),
  parameters baked into initializers, calibrated on the case's own input, compiled and run
  on the golden model; a per-op pass / fail / compile error table (:mod:`.conformance`
  documents the rules and the tolerance). ``--markdown FILE`` writes it for ACCURACY.md;
  ``--case NAME`` / ``--match REGEX`` run a subset; not part of ``all``.
* ``onnx-models``: the onnx wheel's nine light ImageNet CNN files (opset 9, weights from
  ``ConstantOfShape``), compiled at 16x16, golden model vs onnxruntime
  (:mod:`.onnx_models`); not part of ``all``.
* ``pwl``: :func:`neuralmatrix.sw.pwl.error_table` for 8/16/32 segments, uniform against
  curvature-placed breakpoints.

The golden model's integer arithmetic does not depend on the array size (int32 sums are
exact, requantization and PWL tables are per column and per kernel), so ``--rows/--cols``
only change the speed of compiling and running.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from neuralmatrix.hw.params import HwConfig

__all__ = ["TOL_LSB", "digits", "minilm", "efficientnet_lite0", "efficientnet_layers", "onnx_cases", "pwl_table", "main"]

#: onnx-cases tolerance, in int8 steps of the output's range (see the module doc and README).
TOL_LSB = 4.0


def _limit_threads():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                                      # pragma: no cover
        return None
    return threadpool_limits(limits=1, user_api="blas")


def digits(config: HwConfig | None = None, limit: int | None = None,
           segments: int = 16) -> dict:
    """Float vs golden top-1 of the digits CNN on the test split (first *limit* images),
    nonlinear functions with *segments* PWL segments."""
    from onnx.reference import ReferenceEvaluator

    from .compiler import builtin, compile_model
    from .models.digits import MODEL_PATH, load_split
    from .runtime import run_golden

    config = config or HwConfig()
    src, feeds, shapes = builtin("digits")
    comp = compile_model(src, config, calib_feeds=feeds, input_shapes=shapes, segments=segments)
    x, y = load_split("test")
    if limit:
        x, y = x[:limit], y[:limit]
    sess = ReferenceEvaluator(str(MODEL_PATH))
    fl = np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    t0 = time.perf_counter()
    q = np.concatenate([run_golden(comp.compiled, {"input": x[i:i + 1]}).outputs["logits"]
                        for i in range(len(x))])
    run_s = time.perf_counter() - t0
    f_top1 = float(np.mean(fl.argmax(1) == y))
    q_top1 = float(np.mean(q.argmax(1) == y))
    tot = comp.report["totals"]
    return {"images": int(len(x)), "float_top1": f_top1, "int8_top1": q_top1,
            "drop_points": round(100 * (f_top1 - q_top1), 3),
            "agreement": float(np.mean(fl.argmax(1) == q.argmax(1))),
            "linearization_pct": tot["linearization_pct"], "compile_seconds": round(comp.seconds, 2),
            "golden_seconds": round(run_s, 2), "segments": segments,
            "config": f"{config.rows}x{config.cols} {config.dataflow.value}"}


def minilm(config: HwConfig | None = None, sentences: int = 66, seq_len: int = 48,
           calibration: str = "max", segments: int = 16) -> dict:
    """Golden vs float sentence embeddings of all-MiniLM-L6-v2 over *sentences* sentences,
    every nonlinear function fitted with *segments* PWL segments (at most
    ``config.pwl_segments``)."""
    from .compiler import builtin, compile_model
    from .models import minilm as mm
    from .runtime import run_golden

    config = config or HwConfig()
    src, _, shapes = builtin("minilm", seq_len=seq_len)
    feeds = mm.calibration_feeds(seq_len)
    comp = compile_model(src, config, calib_feeds=feeds, input_shapes=shapes,
                         calibration=calibration, segments=segments)
    sents = list(mm.SENTENCES[:sentences])
    toks = mm.tokenize(sents, seq_len)
    ref = mm.float_embeddings(sents, seq_len=seq_len)
    t0 = time.perf_counter()
    got = []
    for i in range(len(sents)):
        f = {k: v[i:i + 1] for k, v in toks.items()}
        r = run_golden(comp.compiled, f)
        got.append(mm.embed(r.outputs[mm.OUTPUT_NAME], f["attention_mask"]))
    run_s = time.perf_counter() - t0
    cos = np.sum(np.concatenate(got) * ref, axis=1)
    tot = comp.report["totals"]
    truncated = int(np.sum(toks["attention_mask"][:, -1] == 1))
    short = toks["attention_mask"].sum(axis=1) <= 8
    return {"sentences": len(sents), "seq_len": seq_len, "truncated_sentences": truncated,
            "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "cosine_median": float(np.median(cos)),
            "calibration_sentences": len(feeds),
            "short_sentences": int(short.sum()),
            "short_cosine_mean": float(cos[short].mean()) if short.any() else None,
            "linearization_pct": tot["linearization_pct"], "useful_macs": tot["useful_macs"],
            "linearization_macs": tot["linearization_macs"],
            "padding_macs": tot["padding_macs"], "kernels": tot["kernels"],
            "compile_seconds": round(comp.seconds, 2), "golden_seconds": round(run_s, 1),
            "calibration": calibration, "segments": segments,
            "config": f"{config.rows}x{config.cols} {config.dataflow.value}",
            "cosines": [round(float(c), 5) for c in cos]}


def minilm_layers(config: HwConfig | None = None, sentence: int = 0, seq_len: int = 48,
                  segments: int = 16, func_segments: dict | None = None) -> dict:
    """Where MiniLM goes wrong on one sentence: the encoder cut after each layer, compiled
    (calibration as :func:`minilm`) and run on the golden model; per layer the hidden-state
    cosine against float over the sentence's tokens (mean, min and the worst token)."""
    import onnxruntime as ort

    from .compiler import compile_model
    from .models import minilm as mm
    from .runtime import run_golden

    config = config or HwConfig()
    toks = mm.tokenize([mm.SENTENCES[sentence]], seq_len)
    feed = {k: v[:1] for k, v in toks.items()}
    keep = feed["attention_mask"][0].astype(bool)
    calib = mm.calibration_feeds(seq_len)
    rows = []
    for layers in range(1, 7):
        m = mm.load_encoder_layers(layers, seq_len)
        out = m.graph.output[0].name
        ref = ort.InferenceSession(m.SerializeToString(),
                                   providers=["CPUExecutionProvider"]).run(None, feed)[0][0]
        comp = compile_model(m, config, calib_feeds=calib, segments=segments,
                             func_segments=func_segments)
        got = run_golden(comp.compiled, feed).outputs[out][0]
        cos = np.sum(got * ref, -1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1))
        cos = np.where(keep, cos, np.inf)
        rows.append({"layer": layers, "cosine_mean": float(cos[keep].mean()),
                     "cosine_min": float(cos.min()), "worst_token": int(cos.argmin())})
    return {"sentence": mm.SENTENCES[sentence], "seq_len": seq_len, "segments": segments,
            "func_segments": func_segments or {}, "layers": rows}


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-x, axis=1, kind="stable")[:, :k]


def classification_figures(fl: np.ndarray, q: np.ndarray) -> dict:
    """Agreement of int8 logits *q* with float logits *fl* (both (N, classes))."""
    f5, q5 = _topk(fl, 5), _topk(q, 5)
    cos = np.sum(fl * q, 1) / (np.linalg.norm(fl, axis=1) * np.linalg.norm(q, axis=1))
    return {
        "top1_agreement": float(np.mean(fl.argmax(1) == q.argmax(1))),
        "top5_agreement": float(np.mean([set(a) == set(b) for a, b in zip(f5, q5)])),
        "top5_overlap": float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(f5, q5)])),
        "float_top1_in_int8_top5": float(np.mean([a in b for a, b in zip(fl.argmax(1), q5)])),
        "int8_top1_in_float_top5": float(np.mean([a in b for a, b in zip(q.argmax(1), f5)])),
        "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
        "cosines": [round(float(c), 5) for c in cos],
    }


def efficientnet_lite0(config: HwConfig | None = None, limit: int | None = None,
                       calibration: str = "max", segments: int = 16,
                       photos: tuple | None = None) -> dict:
    """Golden vs float logits of EfficientNet-Lite0 on the test photos (first *limit*
    images, or the 8 views of *photos*)."""
    from .compiler import builtin, compile_model
    from .models import efficientnet_lite0 as eff
    from .models import photos as ph
    from .runtime import run_golden

    config = config or HwConfig()
    src, feeds, shapes = builtin("efficientnet-lite0")
    comp = compile_model(src, config, calib_feeds=feeds, input_shapes=shapes,
                         calibration=calibration, segments=segments)
    x, labels = ph.test_images(photos or ph.TEST_PHOTOS)
    if limit:
        x, labels = x[:limit], labels[:limit]
    fl = eff.float_logits(x)
    t0 = time.perf_counter()
    q = np.concatenate([run_golden(comp.compiled, {eff.INPUT_NAME: x[i:i + 1]})
                        .outputs[eff.OUTPUT_NAME] for i in range(len(x))])
    run_s = time.perf_counter() - t0
    tot = comp.report["totals"]
    out = {"images": len(x), "labels": labels, "calibration_images": len(feeds),
           "calibration": calibration, "segments": segments}
    out.update(classification_figures(fl, q))
    out["disagreements"] = [
        {"image": lab, "float_top5": _topk(fl[i:i + 1], 5)[0].tolist(),
         "int8_top5": _topk(q[i:i + 1], 5)[0].tolist()}
        for i, lab in enumerate(labels) if fl[i].argmax() != q[i].argmax()]
    out.update({k: tot[k] for k in ("useful_macs", "linearization_macs", "padding_macs",
                                     "executed_macs", "linearization_pct")})
    out.update({
                "kernels": tot["kernels"], "compile_seconds": round(comp.seconds, 2),
                "phase_seconds": comp.report.get("phase_seconds"),
                "golden_seconds": round(run_s, 1),
                "golden_seconds_per_image": round(run_s / max(1, len(x)), 2),
                "config": f"{config.rows}x{config.cols} {config.dataflow.value}"})
    return out


def efficientnet_layers(config: HwConfig | None = None, image: int = 0,
                        calibration: str = "max", segments: int = 16) -> dict:
    """Where EfficientNet-Lite0 loses accuracy on one test image: every kernel output of the
    golden model (dequantized) against the same tensor of the float graph (onnxruntime):
    cosine and relative RMS error, and the tensor's int8 step against its float range."""
    import onnx
    import onnxruntime as ort

    from .compiler import builtin, compile_model
    from .ir import Kernel
    from .models import efficientnet_lite0 as eff
    from .models import photos as ph
    from .runtime import run_golden

    config = config or HwConfig()
    src, feeds, shapes = builtin("efficientnet-lite0")
    comp = compile_model(src, config, calib_feeds=feeds, input_shapes=shapes,
                         calibration=calibration, segments=segments)
    x, labels = ph.test_images()
    feed = {eff.INPUT_NAME: x[image:image + 1]}
    res = run_golden(comp.compiled, feed, keep=True)
    kernels = [s for s in comp.compiled.steps if isinstance(s, Kernel)]
    m = onnx.ModelProto()
    m.CopyFrom(src)
    values = {o for n in m.graph.node for o in n.output}
    names = [k.out.name for k in kernels if k.out.name in values and k.out.name != eff.OUTPUT_NAME]
    m.graph.output.extend([onnx.helper.make_empty_tensor_value_info(n) for n in names])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [eff.OUTPUT_NAME] + names
    ref = dict(zip(outs, sess.run(outs, feed)))
    rows = []
    for k in kernels:
        t = k.out
        if t.name not in ref or t.name not in res.tensors:
            continue
        want = ref[t.name].astype(np.float64).ravel()
        got = t.from_matrix(res.tensors[t.name].astype(np.int64) * (t.scale * t.colw)).ravel()
        if got.size != want.size:
            continue
        cos = float(got @ want / max(np.linalg.norm(got) * np.linalg.norm(want), 1e-30))
        rel = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))
        step = float(t.scale * np.max(t.colw))
        ideal = np.clip(np.round(want / step), -127, 127) * step     # float, requantized only
        rows.append({"kernel": k.name, "tensor": t.name, "cosine": cos, "rel_rms_error": rel,
                     "requant_only_rel_rms_error":
                         float(np.linalg.norm(ideal - want) / max(np.linalg.norm(want), 1e-30)),
                     "float_absmax": float(np.max(np.abs(want))),
                     "float_rms": float(np.sqrt(np.mean(want ** 2))), "int8_step": step,
                     "clipped_pct": float(100 * np.mean(np.abs(want) > 127.5 * step))})
    return {"image": labels[image], "calibration": calibration, "segments": segments,
            "layers": rows}


def _case_feeds(case, inputs, n: int = 8, seed: int = 0) -> list[dict]:
    import onnx

    model = onnx.load(case.model_path, load_external_data=False)
    init = {t.name for t in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in init]
    rng = np.random.default_rng(seed)
    feeds = [dict(zip(names, inputs))]
    for _ in range(n - 1):
        feeds.append({name: (rng.standard_normal(x.shape) * max(float(np.std(x)), 1e-3)
                             + float(np.mean(x))).astype(x.dtype)
                      for name, x in zip(names, inputs)})
    return feeds, names


def onnx_cases(config: HwConfig | None = None) -> dict:
    """Compile and run every supported onnx-wheel case; pass/fail per case."""
    from .compiler import compile_model
    from .frontend import FrontendError
    from .lower import LinearizeError
    from .models.onnx_cases import load_case, onnx_cases as all_cases
    from .runtime import run_golden

    config = config or HwConfig()
    rows = []
    for case in all_cases():
        try:
            model = load_case(case)
        except FrontendError as exc:
            rows.append({"suite": case.suite, "case": case.name, "status": "unsupported",
                         "detail": str(exc).splitlines()[0][:120]})
            continue
        inputs, outputs = case.datasets[0]
        if any(x.dtype.kind == "f" and (not np.all(np.isfinite(x)) or np.max(np.abs(x)) > 1e4)
               for x in inputs):
            rows.append({"suite": case.suite, "case": case.name, "status": "bad input data",
                         "detail": "stored input magnitudes above 1e4 (uninitialized)"})
            continue
        feeds, names = _case_feeds(case, inputs)
        row = {"suite": case.suite, "case": case.name,
               "ops": sorted({n.op_type for n in model.graph.node})}
        try:
            comp = compile_model(model, config, calib_feeds=feeds)
            res = run_golden(comp.compiled, dict(zip(names, inputs)))
        except (LinearizeError, ValueError) as exc:
            row.update(status="compile error", detail=str(exc).splitlines()[0][:160])
            rows.append(row)
            continue
        worst, ok = 0.0, True
        for o, exp in zip(model.graph.output, outputs):
            got = res.outputs[o.name].reshape(exp.shape)
            lsb = comp.compiled.network.outputs[o.name].scale
            err = float(np.max(np.abs(got - exp))) if exp.size else 0.0
            worst = max(worst, err / lsb)
            ok &= err <= TOL_LSB * lsb
        row.update(status="pass" if ok else "fail", err_lsb=round(worst, 2),
                   linearization_pct=comp.report["totals"]["linearization_pct"])
        rows.append(row)
    count = {s: sum(r["status"] == s for r in rows)
             for s in ("pass", "fail", "compile error", "bad input data", "unsupported")}
    return {"tolerance_lsb": TOL_LSB, "counts": count, "cases": rows}


def pwl_table() -> dict:
    from . import pwl

    return {"rows": pwl.error_table(segment_counts=(8, 16, 32), methods=("uniform", "curvature"))}


# -- printing ---------------------------------------------------------------------------------

def _print_digits(r, console):
    from rich.table import Table

    t = Table(title=f"digits CNN, {r['images']} test images ({r['config']}, "
                    f"{r['segments']} PWL segments)")
    for c in ("float top-1", "int8+PWL top-1 (golden)", "drop (points)", "argmax agreement",
              "linearization MACs (% of useful)", "compile"):
        t.add_column(c, justify="right")
    t.add_row(f"{100 * r['float_top1']:.2f}%", f"{100 * r['int8_top1']:.2f}%",
              f"{r['drop_points']:.2f}", f"{100 * r['agreement']:.2f}%",
              f"{r['linearization_pct']:.1f}%", f"{r['compile_seconds']:.1f} s")
    console.print(t)


def _print_minilm(r, console):
    from rich.table import Table

    t = Table(title=f"all-MiniLM-L6-v2, {r['sentences']} sentences, seq {r['seq_len']} "
                    f"({r['config']}, {r['segments']} PWL segments, calibration "
                    f"{r['calibration']} on {r['calibration_sentences']} other sentences)")
    for c in ("mean cosine", "median", "min cosine",
              f"mean of the {r['short_sentences']} sentences of <= 8 tokens",
              "linearization MACs (% of useful)", "kernels", "compile", "golden run"):
        t.add_column(c, justify="right")
    short = "" if r["short_cosine_mean"] is None else f"{r['short_cosine_mean']:.4f}"
    t.add_row(f"{r['cosine_mean']:.4f}", f"{r['cosine_median']:.4f}", f"{r['cosine_min']:.4f}", short,
              f"{r['linearization_pct']:.2f}%", str(r["kernels"]), f"{r['compile_seconds']:.1f} s",
              f"{r['golden_seconds']:.0f} s")
    console.print(t)


def _print_effnet(r, console):
    from rich.table import Table

    t = Table(title=f"EfficientNet-Lite0, {r['images']} test images of {len(set(l.split('/')[0] for l in r['labels']))} "
                    f"photos ({r['config']}, {r['segments']} PWL segments, calibration "
                    f"{r['calibration']} on {r['calibration_images']} images of other photos)")
    for c in ("top-1 agreement", "top-5 agreement (same set)", "top-5 overlap",
              "float top-1 in int8 top-5", "logit cosine mean", "min", "compile",
              "golden run"):
        t.add_column(c, justify="right")
    t.add_row(f"{100 * r['top1_agreement']:.2f}%", f"{100 * r['top5_agreement']:.2f}%",
              f"{100 * r['top5_overlap']:.2f}%", f"{100 * r['float_top1_in_int8_top5']:.2f}%",
              f"{r['cosine_mean']:.4f}", f"{r['cosine_min']:.4f}",
              f"{r['compile_seconds']:.1f} s", f"{r['golden_seconds']:.0f} s")
    console.print(t)
    for d in r["disagreements"]:
        console.print(f"  top-1 differs on {d['image']}: float top-5 {d['float_top5']}, "
                      f"int8 top-5 {d['int8_top5']}")


def _print_cases(r, console):
    from rich.table import Table

    t = Table(title=f"onnx wheel cases (tolerance {r['tolerance_lsb']:g} steps of the int8 "
                    f"output)")
    for c in ("suite", "case", "status", "max error (steps)", "ops / detail"):
        t.add_column(c)
    for row in r["cases"]:
        if row["status"] == "unsupported":
            continue
        t.add_row(row["suite"], row["case"], row["status"],
                  f"{row['err_lsb']:.2f}" if "err_lsb" in row else "",
                  ", ".join(row.get("ops", [])) if "detail" not in row else row["detail"])
    console.print(t)
    c = r["counts"]
    console.print(f"pass {c['pass']}, fail {c['fail']}, compile error {c['compile error']}, "
                  f"bad input data {c['bad input data']}, unsupported by the frontend "
                  f"{c['unsupported']}")


def _print_pwl(r, console):
    from rich.table import Table

    rows = r["rows"]
    t = Table(title="PWL int8 tables: max error in output LSB (rms)")
    t.add_column("function")
    keys = [(s, m) for s in (8, 16, 32) for m in ("uniform", "curvature")]
    for s, m in keys:
        t.add_column(f"{s} {m}", justify="right")
    for f in dict.fromkeys(row["function"] for row in rows):
        cells = []
        for s, m in keys:
            row = next(x for x in rows if x["function"] == f and x["segments"] == s
                       and x["method"] == m)
            cells.append(f"{row['int8_max_lsb']:.2f} ({row['int8_rms_lsb']:.2f})")
        t.add_row(f, *cells)
    console.print(t)


def main(argv: list[str] | None = None, prog: str = "python -m neuralmatrix.sw.accuracy") -> int:
    from rich.console import Console

    p = argparse.ArgumentParser(prog=prog,
                                description="Accuracy of compiled networks on the golden model.")
    p.add_argument("what", choices=("digits", "minilm", "minilm-layers", "efficientnet-lite0",
                                    "efficientnet-lite0-layers", "onnx-cases", "onnx-node",
                                    "onnx-models", "pwl", "all"))
    p.add_argument("--rows", type=int, default=None, help="array rows (default: per benchmark)")
    p.add_argument("--cols", type=int, default=None)
    p.add_argument("--sentences", type=int, default=66, help="minilm: sentences (default 66)")
    p.add_argument("--seq-len", type=int, default=48, help="minilm: tokens (default 48)")
    p.add_argument("--calibration", default="max",
                   help="minilm, efficientnet-lite0: calibration method (max, percentile, mse)")
    p.add_argument("--images", type=int, default=None,
                   help="efficientnet-lite0: only the first N test images (default all 80)")
    p.add_argument("--segments", type=int, default=16,
                   help="digits, minilm: PWL segments per nonlinear function (default 16; the "
                        "hardware's tables are sized to match when larger)")
    p.add_argument("--image", type=int, default=0,
                   help="efficientnet-lite0-layers: index of the test image (default 0)")
    p.add_argument("--sentence", type=int, default=0,
                   help="minilm-layers: index of the test sentence (default 0)")
    p.add_argument("--func-segments", default=None, metavar="KIND=N[,KIND=N...]",
                   help="minilm-layers: segments of some function kinds (as for compile)")
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    from .conformance import add_arguments as _conformance_arguments

    _conformance_arguments(p)
    args = p.parse_args(argv)
    args.argv = None if argv is None else list(argv)
    console = Console()
    limits = _limit_threads()
    out = {}
    what = ("digits", "minilm", "onnx-cases", "pwl") if args.what == "all" else (args.what,)

    def cfg(default):
        r = args.rows or default
        tables = HwConfig().pwl_segments
        while tables < args.segments:
            tables *= 2
        return HwConfig(rows=r, cols=args.cols or r, pwl_segments=tables)

    try:
        if "digits" in what:
            out["digits"] = digits(cfg(8), segments=args.segments)
            _print_digits(out["digits"], console)
        if "minilm" in what:
            # 32x32 by default: the same integers as 8x8, 16x fewer instructions to run.
            out["minilm"] = minilm(cfg(32), args.sentences, args.seq_len, args.calibration,
                                   args.segments)
            _print_minilm(out["minilm"], console)
        if "minilm-layers" in what:
            from .compiler import _parse_func_segments

            r = minilm_layers(cfg(32), args.sentence, args.seq_len, args.segments,
                              _parse_func_segments(args.func_segments))
            out["minilm_layers"] = r
            console.print(f"{r['sentence']!r}, {r['seq_len']} tokens, {r['segments']} segments "
                          f"{r['func_segments'] or ''}")
            for row in r["layers"]:
                console.print(f"  after layer {row['layer']}: hidden-state cosine mean "
                              f"{row['cosine_mean']:.4f}, min {row['cosine_min']:.4f} "
                              f"(token {row['worst_token']})")
        if "efficientnet-lite0" in what:
            # 32x32 by default: the same integers as 8x8, fewer instructions to run.
            out["efficientnet_lite0"] = efficientnet_lite0(cfg(32), args.images, args.calibration,
                                                           args.segments)
            _print_effnet(out["efficientnet_lite0"], console)
        if "efficientnet-lite0-layers" in what:
            r = efficientnet_layers(cfg(32), args.image, args.calibration, args.segments)
            out["efficientnet_lite0_layers"] = r
            console.print(f"{r['image']}: golden vs float per kernel output "
                          f"(calibration {r['calibration']}, {r['segments']} segments)")
            for row in r["layers"]:
                console.print(f"  {row['tensor']:26s} cos {row['cosine']:.5f} rel.err "
                              f"{row['rel_rms_error']:.4f} (requant alone "
                              f"{row['requant_only_rel_rms_error']:.4f}) rms {row['float_rms']:.3f}"
                              f" |max| {row['float_absmax']:.2f} step {row['int8_step']:.4g} "
                              f"clip {row['clipped_pct']:.2f}%", soft_wrap=True)
        if "onnx-cases" in what:
            out["onnx_cases"] = onnx_cases(cfg(8))
            _print_cases(out["onnx_cases"], console)
        if "onnx-node" in what:
            from .conformance import run_cli

            out["onnx_node"] = run_cli(args, console)
        if "onnx-models" in what:
            from .onnx_models import onnx_models, print_models

            out["onnx_models"] = onnx_models(cfg(16))
            print_models(out["onnx_models"], console)
        if "pwl" in what:
            out["pwl"] = pwl_table()
            _print_pwl(out["pwl"], console)
    finally:
        if limits is not None:
            limits.restore_original_limits()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
