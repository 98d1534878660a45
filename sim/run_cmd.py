"""``neuralmatrix run``: compile a network, run it on the golden model and on the RTL, compare.

Pipeline: workload (model, calibration data, inputs) -> :func:`~neuralmatrix.sw.compiler.
compile_model` -> :func:`~neuralmatrix.sw.runtime.run_golden` per input -> the Verilator
model (built once per hardware configuration and cached) runs every kernel
(:func:`~neuralmatrix.sim.network.run_network_rtl`) -> bit-exact verdict (or the first
difference), accuracy, and the per-layer report of :mod:`neuralmatrix.sim.report`.

Exit status: 0 bit-exact (or ``--golden-only``), 1 the RTL differs from the golden model,
2 bad input or a model that cannot be compiled, 3 the simulation failed or timed out.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Workload", "add_parser", "load_workload", "read_input_file"]

EXIT_MISMATCH, EXIT_BAD_INPUT, EXIT_SIM_FAILED = 1, 2, 3
BUILTIN = ("digits", "minilm", "resnet50", "efficientnet-lite0")


class RunError(ValueError):
    """Bad input for ``neuralmatrix run`` (names the file or option and the problem)."""


@dataclass
class Workload:
    """What to compile and run.

    Attributes
    ----------
    name : str
    model : str or onnx.ModelProto
    calib : list of dict
        Calibration feeds.
    input_shapes : dict
        Static shapes the model is compiled for.
    feeds : list of dict
        One entry per inference.
    labels : np.ndarray or None
        Digits: the true class of every sample, in feed order (``batch`` per feed).
    expected : list of list of np.ndarray or None
        ONNX test data sets: the expected outputs per feed.
    count : int
        Real samples (the last digits batch may be padded).
    note : str
        Where the inputs came from.
    """

    name: str
    model: object
    calib: list
    input_shapes: dict
    feeds: list
    labels: np.ndarray | None = None
    expected: list | None = None
    count: int = 0
    note: str = ""
    sentences: list = field(default_factory=list)
    seq_len: int = 0


def read_input_file(path: Path) -> np.ndarray:
    """An input tensor from ``.npy`` or an ONNX ``TensorProto`` ``.pb`` file."""
    if not path.exists():
        raise RunError(f"--input {path}: no such file")
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".pb":
        import onnx
        from onnx import numpy_helper

        return numpy_helper.to_array(onnx.load_tensor(str(path)))
    raise RunError(f"--input {path}: expected .npy or .pb (or an image for digits, a .txt for "
                   f"minilm, a test_data_set_* folder for an ONNX model)")


def _digits_image(path: Path) -> np.ndarray:
    """A picture of a digit as the CNN's 8x8 input: grey, ink bright, block-averaged, 0..1."""
    import matplotlib.image as mpimg

    img = np.asarray(mpimg.imread(str(path)), dtype=np.float64)
    if img.dtype.kind in "ui" or img.max() > 1.0:
        img = img / 255.0
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2)
    if img.mean() > 0.5:              # dark ink on a light background
        img = 1.0 - img
    h, w = img.shape
    if h < 8 or w < 8:
        raise RunError(f"--input {path}: image is {w}x{h}, at least 8x8 needed")
    img = img[: h - h % 8, : w - w % 8]
    small = img.reshape(8, img.shape[0] // 8, 8, img.shape[1] // 8).mean(axis=(1, 3))
    small = small / max(small.max(), 1e-9)
    return small.astype(np.float32)[None, None]


def _digits(inputs: list[str], batch: int) -> Workload:
    from neuralmatrix.sw.models.digits import MODEL_PATH, load_split

    train, _ = load_split("train")
    # About 256 training images in full batches (the model is compiled for `batch`).
    calib = [{"input": train[i * batch:(i + 1) * batch]} for i in range(max(1, 256 // batch))]
    labels = None
    if inputs:
        xs = []
        for name in inputs:
            p = Path(name)
            if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"):
                if not p.exists():
                    raise RunError(f"--input {p}: no such file")
                xs.append(_digits_image(p))
            else:
                x = np.asarray(read_input_file(p), dtype=np.float32)
                x = x.reshape(-1, 1, 8, 8) if x.size % 64 == 0 else None
                if x is None:
                    raise RunError(f"--input {p}: digits inputs are 8x8 images, (N, 1, 8, 8) or "
                                   f"(N, 8, 8); this array does not reshape to that")
                xs.append(x)
        x = np.concatenate(xs)
        note = f"{len(x)} input(s) from {', '.join(inputs)}"
    else:
        x, labels = load_split("test")
        note = f"the {len(x)} test digits of scikit-learn's load_digits (held-out split)"
    n = len(x)
    pad = (-n) % batch
    xp = np.concatenate([x, np.zeros((pad, 1, 8, 8), np.float32)]) if pad else x
    feeds = [{"input": xp[i:i + batch]} for i in range(0, len(xp), batch)]
    return Workload("digits", str(MODEL_PATH), calib, {"input": (batch, 1, 8, 8)}, feeds,
                    labels=labels, count=n, note=note)


def _minilm(inputs: list[str], seq_len: int, samples: int, layers: int | None) -> Workload:
    from neuralmatrix.sw.models import minilm

    if inputs:
        sentences = []
        for name in inputs:
            p = Path(name)
            if not p.exists():
                raise RunError(f"--input {p}: no such file")
            sentences += [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
        if not sentences:
            raise RunError(f"--input {', '.join(inputs)}: no sentences (one per line)")
        note = f"{len(sentences)} sentence(s) from {', '.join(inputs)}"
    else:
        sentences = list(minilm.SENTENCES[:samples])
        note = f"the first {len(sentences)} built-in test sentences"
    if layers is not None and not 1 <= layers <= 6:
        raise RunError(f"--layers must be 1..6, got {layers}")
    model = minilm.load_onnx(seq_len) if layers in (None, 6) else \
        minilm.load_encoder_layers(layers, seq_len)
    calib = minilm.calibration_feeds(seq_len)            # disjoint from the test sentences
    toks = minilm.tokenize(sentences, seq_len)
    feeds = [{k: v[i:i + 1] for k, v in toks.items()} for i in range(len(sentences))]
    name = "minilm" if layers in (None, 6) else f"minilm ({layers} encoder layer(s))"
    return Workload(name, model, calib, {k: (1, seq_len) for k in toks}, feeds,
                    count=len(sentences), note=note, sentences=sentences, seq_len=seq_len)


def _resnet50(inputs: list[str], samples: int) -> Workload:
    from neuralmatrix.sw.models import resnet50

    if inputs:
        x = np.concatenate([read_input_file(Path(i)).reshape(-1, 3, 224, 224) for i in inputs])
        note = f"{len(x)} image(s) from {', '.join(inputs)}"
    else:
        x = resnet50.sample_images(samples)
        note = f"{samples} 224x224 crop(s) of scikit-learn's sample photographs"
    calib = [{resnet50.INPUT_NAME: c[None]} for c in resnet50.sample_images(2)]
    feeds = [{resnet50.INPUT_NAME: x[i:i + 1].astype(np.float32)} for i in range(len(x))]
    return Workload("resnet50", resnet50.load_onnx(), calib, {}, feeds, count=len(x), note=note)


def _effnet(inputs: list[str], samples: int) -> Workload:
    from neuralmatrix.sw.compiler import builtin
    from neuralmatrix.sw.models import efficientnet_lite0 as eff
    from neuralmatrix.sw.models import photos

    model, calib, shapes = builtin("efficientnet-lite0")
    if inputs:
        x = np.concatenate([read_input_file(Path(i)).reshape(-1, 3, 224, 224) for i in inputs])
        note = f"{len(x)} normalized 224x224 image(s) from {', '.join(inputs)}"
    else:
        x, labels = photos.test_images()
        if not 1 <= samples <= len(x):
            raise RunError(f"--samples must be 1..{len(x)} for efficientnet-lite0, got {samples}")
        x, labels = x[:samples], labels[:samples]
        note = (f"{samples} test photo view(s) ({', '.join(labels)}); calibration on "
                f"{len(calib)} views of other photos")
    feeds = [{eff.INPUT_NAME: x[i:i + 1].astype(np.float32)} for i in range(len(x))]
    return Workload("efficientnet-lite0", model, calib, shapes, feeds, count=len(x), note=note)


def _onnx(path: str, inputs: list[str], shapes: dict, samples: int,
          calib_data: str | None = None) -> Workload:
    from neuralmatrix.sw.compiler import _load_feeds
    from neuralmatrix.sw.frontend import load_model

    p = Path(path)
    if not p.exists():
        raise RunError(f"{path}: no such file")
    model = load_model(str(p), input_shapes=shapes)
    init = {i.name for i in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in init]
    dims = {vi.name: tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
            for vi in model.graph.input}
    feeds, expected = [], None
    if inputs:
        folders = [Path(i) for i in inputs if Path(i).is_dir()]
        if folders:
            expected = []
            for d in folders:
                ins = sorted(d.glob("input_*.pb"), key=lambda q: int(q.stem.split("_")[1]))
                outs = sorted(d.glob("output_*.pb"), key=lambda q: int(q.stem.split("_")[1]))
                if len(ins) != len(names):
                    raise RunError(f"--input {d}: {len(ins)} input_*.pb file(s), the model has "
                                   f"{len(names)} input(s) ({', '.join(names)})")
                feeds.append({n: read_input_file(q) for n, q in zip(names, ins)})
                expected.append([read_input_file(q) for q in outs])
            note = f"{len(feeds)} ONNX test data set(s)"
        else:
            arrays = [read_input_file(Path(i)) for i in inputs]
            if len(arrays) != len(names):
                raise RunError(f"{len(arrays)} --input file(s) for {len(names)} model input(s) "
                               f"({', '.join(names)}): give one per input, in order")
            feeds.append(dict(zip(names, arrays)))
            note = f"inputs from {', '.join(inputs)}"
        for f in feeds:
            for n, x in f.items():
                if tuple(x.shape) != dims[n]:
                    raise RunError(f"input {n!r}: the model is compiled for shape {dims[n]}, the "
                                   f"file holds {tuple(x.shape)} (set --input-shape)")
    else:
        rng = np.random.default_rng(0)
        feeds = [{n: rng.standard_normal(dims[n]).astype(np.float32) for n in names}
                 for _ in range(samples)]
        note = f"{samples} random standard-normal input(s) (no --input given)"
    if calib_data is not None:
        calib = _load_feeds(calib_data, model)
        for f in calib:
            for n, x in f.items():
                if n not in dims:
                    raise RunError(f"--calib-data {calib_data}: {n!r} is not a model input "
                                   f"({', '.join(names)})")
                if tuple(x.shape) != dims[n]:
                    raise RunError(f"--calib-data {calib_data}: input {n!r} has shape "
                                   f"{tuple(x.shape)}, the model is compiled for {dims[n]}")
        note += f"; calibration on {len(calib)} sample(s) of {calib_data}"
    else:
        calib = feeds[:4] if inputs else feeds
        note += "; calibration on these inputs (give --calib-data for held-out calibration)"
    return Workload(p.stem, model, calib, {}, feeds, expected=expected, count=len(feeds),
                    note=note)


def load_workload(args) -> Workload:
    from neuralmatrix.sw.compiler import _parse_shapes

    inputs = args.input or []
    calib_data = getattr(args, "calib_data", None)
    if calib_data is not None and args.model in BUILTIN:
        raise RunError(f"--calib-data applies to an ONNX model; the built-in {args.model} "
                       f"calibrates on its own held-out data")
    if args.model == "digits":
        if not 1 <= args.batch <= 450:
            raise RunError(f"--batch must be 1..450, got {args.batch}")
        return _digits(inputs, args.batch)
    if args.model == "minilm":
        return _minilm(inputs, args.seq_len, args.samples, getattr(args, "layers", None))
    if args.model == "resnet50":
        return _resnet50(inputs, args.samples)
    if args.model == "efficientnet-lite0":
        return _effnet(inputs, args.samples)
    return _onnx(args.model, inputs, _parse_shapes(args.input_shape), args.samples, calib_data)


# -- command line ------------------------------------------------------------------------------

def add_parser(sub) -> None:
    from neuralmatrix.sw.cli import _add_hw_options

    p = sub.add_parser(
        "run", help="run a network on the RTL and the golden model: bit-exact check, accuracy, "
                    "per-layer report",
        description="Compile a network, run it on the bit-exact golden model and on the "
                    "generated RTL (Verilator through cocotb; the model is built once per "
                    "hardware configuration and reused), and print whether the RTL is "
                    "bit-exact with the golden model (or where it first differs), the accuracy "
                    "and a per-layer table from the RTL performance counters. With no "
                    "arguments: the built-in digits CNN on an 8x8 array, all 450 test digits.")
    p.add_argument("model", nargs="?", default="digits",
                   help="MODEL.onnx, or a built-in network: digits (default), minilm, resnet50 "
                        "(the ResNet-50 graph at 224x224 with seeded synthetic weights), "
                        "efficientnet-lite0 (pretrained, 224x224 photos)")
    _add_hw_options(p)
    p.add_argument("--input", action="append", metavar="FILE",
                   help="input data (repeatable). digits: .npy (N,1,8,8) or images; minilm: "
                        ".txt, one sentence per line; ONNX: .npy/.pb per model input in order, "
                        "or test_data_set_* folders (outputs compared too). Default: the "
                        "digits test split, the built-in sentences, or random inputs")
    p.add_argument("--calib-data", metavar="X.npz|X.npy",
                   help="ONNX models: calibration inputs (as for `neuralmatrix compile`: .npz "
                        "with one array per input, or .npy for the first input; one sample per "
                        "leading index). Default: calibrate on the run's own inputs")
    p.add_argument("--golden-only", action="store_true",
                   help="skip the RTL: golden model only (report from its cycle estimates)")
    p.add_argument("--waves", metavar="FILE.fst",
                   help="also write an FST trace of the kernels that overlap --from-cycle.."
                        "--to-cycle of the first inference (the other kernels run unrecorded)")
    p.add_argument("--from-cycle", type=int, default=0, metavar="A",
                   help="first cycle of the trace window, counted over the first inference's "
                        "kernels back to back (default 0)")
    p.add_argument("--to-cycle", type=int, default=None, metavar="B",
                   help="last cycle of the trace window (default: A + 10,000)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run the inferences in N parallel simulator processes (contiguous "
                        "shards; the cached Verilator build is shared; default 1). With "
                        "--scheduler: the number of shards (default: one per worker thread)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="run the shards on the workers of a Dask distributed scheduler")
    p.add_argument("--report", metavar="FILE",
                   help="write the per-layer report as CSV and JSON (FILE.csv / FILE.json)")
    p.add_argument("--batch", type=int, default=50,
                   help="digits: images per inference (the batch the CNN is compiled for; "
                        "default 50)")
    p.add_argument("--seq-len", type=int, default=16, help="minilm: tokens per sentence (default 16)")
    p.add_argument("--layers", type=int, default=None,
                   help="minilm: run only the embeddings and the first N encoder layers (1..6; "
                        "accuracy then compares the hidden states token by token)")
    p.add_argument("--samples", type=int, default=4,
                   help="minilm: built-in sentences to run; efficientnet-lite0: test photo views; "
                        "ONNX models without --input: random inputs (default 4)")
    p.add_argument("--segments", type=int, default=16,
                   help="PWL segments per nonlinear function (default 16)")
    p.add_argument("--input-shape", action="append", metavar="NAME=DIMS",
                   help="static shape of an ONNX input with dynamic dimensions, e.g. "
                        "input=1x3x224x224")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args) -> int:
    from rich.console import Console

    from neuralmatrix.sw.cli import _config
    from neuralmatrix.sw.compiler import CompileError
    from neuralmatrix.sw.frontend import FrontendError
    from neuralmatrix.sw.lower import LinearizeError

    config = _config(args)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    if args.waves and not str(args.waves).endswith(".fst"):
        print(f"neuralmatrix run: error: --waves must name an .fst file, got {args.waves}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.jobs < 1:
        print(f"neuralmatrix run: error: --jobs must be at least 1, got {args.jobs}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.scheduler and not args.golden_only:
        from .cluster import ClusterError, probe

        try:
            probe(args.scheduler)
        except ClusterError as exc:
            print(f"neuralmatrix run: error: --scheduler: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    to_cycle = args.to_cycle if args.to_cycle is not None else args.from_cycle + 10_000
    if args.from_cycle < 0 or to_cycle < args.from_cycle:
        print(f"neuralmatrix run: error: the trace window must have 0 <= --from-cycle <= "
              f"--to-cycle, got {args.from_cycle}..{to_cycle}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not args.golden_only:
        from .extras import MissingExtra, require

        try:
            require("sim", "neuralmatrix run")
        except MissingExtra as exc:
            print(f"neuralmatrix run: error: {exc} (or --golden-only: the golden model alone)",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        return _run(args, config, console, to_cycle)
    except (RunError, FrontendError, LinearizeError, CompileError) as exc:
        print(f"neuralmatrix run: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, \
        TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True)


def _run(args, config, console, to_cycle: int) -> int:
    from neuralmatrix.sw.compiler import compile_model
    from neuralmatrix.sw.ir import Kernel
    from neuralmatrix.sw.runtime import run_golden

    from .harness import simulation_build
    from .network import KernelRun, dram_size_for, first_difference
    from .report import layer_rows, rich_table, write_report
    from .runner import SimulationFailed
    from .shards import ShardError, run_sharded

    t_all = time.perf_counter()
    try:
        work = load_workload(args)
    except ModuleNotFoundError as exc:      # a built-in model's weights package is missing
        from neuralmatrix.sw.models import minilm

        if exc.name != minilm.PACKAGE:
            raise
        raise RunError(str(exc)) from None
    console.print(f"[bold]{work.name}[/] on a {config.rows}x{config.cols} {config.dataflow} "
                  f"array; inputs: {work.note}")
    with _progress(console) as prog:
        task = prog.add_task("compiling", total=None)
        comp = compile_model(work.model, config, calib_feeds=work.calib,
                             input_shapes=work.input_shapes, segments=args.segments)
        prog.update(task, total=1, completed=1)
    c = comp.compiled
    tot = comp.report["totals"]
    console.print(f"compiled in {comp.seconds:.1f} s: {tot['kernels']} kernels, "
                  f"{tot['useful_macs']:,} useful MACs + {tot['linearization_macs']:,} for "
                  f"linearization ({tot['linearization_pct']}% extra) + {tot['padding_macs']:,} "
                  f"padding, {c.dram_bytes:,} bytes of external memory")
    golden = []
    with _progress(console) as prog:
        task = prog.add_task("golden model", total=len(work.feeds))
        t0 = time.perf_counter()
        for f in work.feeds:
            golden.append(run_golden(c, f, keep=not args.golden_only))
            prog.advance(task)
        golden_s = time.perf_counter() - t0
    console.print(f"golden model: {len(work.feeds)} inference(s) in {golden_s:.1f} s")

    rtl = None
    verdict = 0
    if not args.golden_only:
        with _progress(console) as prog:
            task = prog.add_task("Verilator model", total=None)
            built, _ = simulation_build(config, dram_bytes=dram_size_for(c))
            prog.update(task, total=1, completed=1)
        if built.reused:
            console.print(f"reusing the Verilator model for {config.tag} ({built.directory})")
        else:
            console.print(f"built the Verilator model for {config.tag} in {built.seconds:.0f} s "
                          f"(cached in {built.directory})")
        n_k = sum(1 for _ in c.code)
        with _progress(console) as prog:
            task = prog.add_task("RTL simulation (kernels)", total=n_k * len(work.feeds))
            t0 = time.perf_counter()
            try:
                rtl = run_sharded(c, work.feeds, jobs=args.jobs, scheduler=args.scheduler,
                                  progress=lambda d, t: prog.update(task, completed=d))
            except ShardError as exc:
                raise RunError(str(exc)) from None
            except SimulationFailed as exc:
                console.print(f"[red]simulation failed[/]: {exc}")
                return EXIT_SIM_FAILED
            rtl_s = time.perf_counter() - t0
        cycles = sum(r.cycles for r in rtl)
        where = (f" on the Dask scheduler {args.scheduler}" if args.scheduler
                 else f" in {min(args.jobs, len(work.feeds))} processes" if args.jobs > 1 else "")
        console.print(f"RTL: {len(rtl)} inference(s){where}, {cycles:,} cycles in {rtl_s:.1f} s "
                      f"({cycles / max(rtl_s, 1e-9):,.0f} simulated cycles/s, start-up included)")
        diffs = [(i, first_difference(c, g, r)) for i, (g, r) in enumerate(zip(golden, rtl))]
        diffs = [(i, d) for i, d in diffs if d is not None]
        if diffs:
            i, d = diffs[0]
            console.print(f"[bold red]NOT bit-exact[/]: {len(diffs)} of {len(rtl)} inference(s) "
                          f"differ; first in inference {i}: {d}")
            verdict = EXIT_MISMATCH
        else:
            console.print(f"[bold green]bit-exact[/]: every kernel output of all {len(rtl)} "
                          f"inference(s) is identical on the RTL and the golden model")
    _accuracy(work, golden, rtl, console)

    if rtl is not None:
        rows = layer_rows([r.kernels for r in rtl], config, c.network.kernels)
        source = "RTL counters"
    else:
        order = [s for s in c.steps if isinstance(s, Kernel)]
        runs = [[KernelRun(k.name, s.origin, k.counters, k.est_cycles, 0.0)
                 for k, s in zip(g.kernels, order)] for g in golden]
        rows = layer_rows(runs, config, order, measured=False)
        source = "golden model (utilization and occupancy from its cycle estimate)"
    console.print(rich_table(rows, f"per layer, {len(work.feeds)} inference(s), from the {source}"))
    if args.report:
        meta = {"model": work.name, "config": config.tag, "inferences": len(work.feeds),
                "source": source, "bit_exact": None if rtl is None else verdict == 0}
        paths = write_report(rows, args.report, meta)
        console.print("report: " + ", ".join(str(p) for p in paths))
    if args.waves and rtl is not None:
        verdict = _waves(args, c, rtl[0], work.feeds[0], to_cycle, console) or verdict
    console.print(f"total {time.perf_counter() - t_all:.1f} s")
    return verdict


def _accuracy(work: Workload, golden, rtl, console) -> None:
    from onnx.reference import ReferenceEvaluator

    if work.name == "digits":
        import onnx

        ev = ReferenceEvaluator(onnx.load(work.model))
        x = np.concatenate([f["input"] for f in work.feeds])[:work.count]
        fl = ev.run(None, {"input": x})[0].argmax(1)
        gp = np.concatenate([g.outputs["logits"] for g in golden])[:work.count].argmax(1)
        rp = None if rtl is None else \
            np.concatenate([r.outputs["logits"] for r in rtl])[:work.count].argmax(1)
        if work.labels is not None:
            y = work.labels
            line = (f"top-1 on {work.count} test digits: float {100 * np.mean(fl == y):.2f}%, "
                    f"int8 golden {100 * np.mean(gp == y):.2f}%")
            if rp is not None:
                line += f", RTL {100 * np.mean(rp == y):.2f}%"
            console.print(line)
        else:
            console.print("predictions (float / golden" + (" / RTL" if rp is not None else "")
                          + "): " + ", ".join(
                              f"{a}/{b}" + (f"/{rp[i]}" if rp is not None else "")
                              for i, (a, b) in enumerate(zip(fl, gp))))
    elif work.name == "minilm":
        from neuralmatrix.sw.models import minilm

        ref = minilm.float_embeddings(work.sentences, work.seq_len)
        for label, res in (("golden", golden), ("RTL", rtl)):
            if res is None:
                continue
            emb = np.concatenate([minilm.embed(r.outputs[minilm.OUTPUT_NAME],
                                               f["attention_mask"]) for r, f in zip(res, work.feeds)])
            cos = np.sum(emb * ref, axis=1)
            console.print(f"sentence-embedding cosine vs float, {label}: mean {cos.mean():.4f}, "
                          f"min {cos.min():.4f} over {len(cos)} sentence(s)")
    elif work.name.startswith("minilm ("):
        ev = ReferenceEvaluator(work.model)
        for label, res in (("golden", golden), ("RTL", rtl)):
            if res is None:
                continue
            cos = []
            for r, f in zip(res, work.feeds):
                want = ev.run(None, f)[0][0]
                got = next(iter(r.outputs.values()))[0]
                valid = f["attention_mask"][0].astype(bool)
                w, g = want[valid], got[valid]
                cos += list(np.sum(w * g, 1) / (np.linalg.norm(w, axis=1) * np.linalg.norm(g, axis=1)))
            console.print(f"hidden-state cosine vs float (per token), {label}: mean "
                          f"{np.mean(cos):.4f}, min {np.min(cos):.4f} over {len(cos)} token(s)")
    elif work.name == "resnet50":
        from neuralmatrix.sw.models import resnet50

        ev = ReferenceEvaluator(work.model)
        ref = [ev.run(None, f)[0].ravel() for f in work.feeds]
        for label, res in (("golden", golden), ("RTL", rtl)):
            if res is None:
                continue
            got = [r.outputs[resnet50.OUTPUT_NAME].ravel() for r in res]
            agree = np.mean([a.argmax() == b.argmax() for a, b in zip(ref, got)])
            cos = [float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) for a, b in zip(ref, got)]
            console.print(f"class probabilities vs float, {label}: top-1 agreement "
                          f"{100 * agree:.0f}%, mean cosine {np.mean(cos):.4f} over {len(got)} "
                          f"image(s)")
    elif work.name == "efficientnet-lite0":
        from neuralmatrix.sw.accuracy import classification_figures
        from neuralmatrix.sw.models import efficientnet_lite0 as eff

        fl = eff.float_logits(np.concatenate([f[eff.INPUT_NAME] for f in work.feeds]))
        for label, res in (("golden", golden), ("RTL", rtl)):
            if res is None:
                continue
            q = np.concatenate([r.outputs[eff.OUTPUT_NAME] for r in res])
            m = classification_figures(fl, q)
            console.print(f"logits vs float, {label}: top-1 agreement "
                          f"{100 * m['top1_agreement']:.0f}%, float top-1 in int8 top-5 "
                          f"{100 * m['float_top1_in_int8_top5']:.0f}%, mean cosine "
                          f"{m['cosine_mean']:.4f} over {len(q)} image(s); top-1 float/int8: "
                          + ", ".join(f"{a}/{b}" for a, b in zip(fl.argmax(1), q.argmax(1))))
    elif work.expected is not None:
        for label, res in (("golden", golden), ("RTL", rtl)):
            if res is None:
                continue
            errs = []
            for r, exp in zip(res, work.expected):
                for got, want in zip(r.outputs.values(), exp):
                    errs.append(float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-9)))
            console.print(f"{label} vs the expected outputs: max |error| / max |expected| = "
                          f"{max(errs):.4f}")


def _waves(args, c, first, feeds, to_cycle: int, console) -> int:
    from .network import run_network_rtl

    start, chosen, spans = 0, [], []
    for i, k in enumerate(first.kernels):
        end = start + k.counters["cycles"]
        if start <= to_cycle and end >= args.from_cycle:
            chosen.append(i)
            spans.append((i, k.name, start, end))
        start = end
    if not chosen:
        console.print(f"[yellow]no kernel overlaps cycles {args.from_cycle}..{to_cycle} (the "
                      f"first inference has {start:,} cycles); no trace written[/]")
        return 0
    from .harness import simulation_build
    from .network import dram_size_for

    with _progress(console) as prog:
        task = prog.add_task("tracing", total=None)
        try:
            simulation_build(c.config, dram_bytes=dram_size_for(c), waves=True)
        except RuntimeError as exc:
            console.print(f"[red]waves: {exc}[/]")
            return EXIT_SIM_FAILED
        run_network_rtl(c, [feeds], waves_file=Path(args.waves), kernel_filter=chosen)
        prog.update(task, total=1, completed=1)
    console.print(f"waves: {args.waves}: kernels " + ", ".join(
        f"{i} {n} (cycles {a:,}..{b:,})" for i, n, a, b in spans)
        + "; in the trace they run back to back, each after a 2-cycle reset")
    return 0
