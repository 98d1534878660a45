"""The ONNX backend test cases shipped in the ``onnx`` wheel, as frontend inputs.

The wheel holds ``onnx/backend/test/data/<suite>/<case>/``: a ``model.onnx`` and
``test_data_set_<k>/input_<i>.pb`` / ``output_<i>.pb`` tensors. The suites used here are
the models PyTorch exported (:data:`SUITES`); they are mostly opset 6, so they also
exercise the frontend's opset conversion.

``python -m neuralmatrix.sw.models.onnx_cases`` prints one row per case: its ops after
:func:`neuralmatrix.sw.frontend.load_model` and whether the compiler supports all of them,
then a summary.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from neuralmatrix.sw import frontend

__all__ = ["SUITES", "DATA_DIR", "OnnxCase", "onnx_cases", "load_case", "case_ops", "main"]

#: The suites :func:`onnx_cases` reads by default.
SUITES: tuple[str, ...] = ("pytorch-converted", "pytorch-operator")
#: Where the ``onnx`` wheel keeps its backend test data.
DATA_DIR: Path = Path(onnx.__file__).parent / "backend" / "test" / "data"

Dataset = tuple[list[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class OnnxCase:
    """One backend test case: a model and its reference inputs and outputs.

    Parameters
    ----------
    name : str
        The case folder's name, e.g. ``"test_Conv2d"``.
    suite : str
        ``"pytorch-converted"`` or ``"pytorch-operator"``.
    model_path : Path
        The case's ``model.onnx``.

    Attributes
    ----------
    datasets : list of (list of np.ndarray, list of np.ndarray)
        ``(inputs, outputs)`` per ``test_data_set_*`` folder, in order; read on first use.
        Inputs are in the order of the model's non-initializer graph inputs.
    """

    name: str
    suite: str
    model_path: Path

    @cached_property
    def datasets(self) -> list[Dataset]:
        folders = sorted(self.model_path.parent.glob("test_data_set_*"), key=_number)
        return [(_read_tensors(folder, "input"), _read_tensors(folder, "output"))
                for folder in folders]


def onnx_cases(suites: tuple[str, ...] | list[str] = SUITES) -> list[OnnxCase]:
    """Return the cases of `suites`, sorted by suite order then name.

    Parameters
    ----------
    suites : sequence of str, default :data:`SUITES`
        Suite folder names under :data:`DATA_DIR`.

    Returns
    -------
    list of OnnxCase

    Raises
    ------
    ValueError
        If `suites` is a plain string or names a suite not in :data:`SUITES`.
    FileNotFoundError
        If the installed ``onnx`` wheel has no backend test data for a suite.
    """
    if isinstance(suites, str):
        raise ValueError(f"suites must be a sequence of suite names, not the string {suites!r}")
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown suites {unknown}: expected some of {list(SUITES)}")
    cases = []
    for suite in suites:
        folder = DATA_DIR / suite
        if not folder.is_dir():
            raise FileNotFoundError(f"the onnx wheel has no backend test data at {folder}")
        cases += [OnnxCase(path.parent.name, suite, path)
                  for path in sorted(folder.glob("*/model.onnx"))]
    return cases


def load_case(case: OnnxCase) -> onnx.ModelProto:
    """Run :func:`~neuralmatrix.sw.frontend.load_model` on a case.

    Input shapes come from the case's first data set, so dynamic dimensions get the sizes
    the reference outputs were computed with.

    Raises
    ------
    FrontendError, UnsupportedOpsError
        As :func:`~neuralmatrix.sw.frontend.load_model`.
    """
    model = onnx.load(case.model_path, load_external_data=False)
    constants = {t.name for t in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in constants]
    inputs = case.datasets[0][0] if case.datasets else []
    shapes = {name: array.shape for name, array in zip(names, inputs)}
    return frontend.load_model(case.model_path, input_shapes=shapes)


def case_ops(case: OnnxCase) -> set[str] | None:
    """Op types of a case's model after :func:`load_case`, or None if loading fails.

    Loading fails with :class:`~neuralmatrix.sw.frontend.UnsupportedOpsError` too; the
    ops are then all supported whenever the result is not None.
    """
    try:
        model = load_case(case)
    except frontend.FrontendError:
        return None
    return {node.op_type for node in model.graph.node}


def main(argv: list[str] | None = None) -> int:
    """Print every case's ops and frontend status, then a summary; return 0."""
    parser = argparse.ArgumentParser(
        prog="python -m neuralmatrix.sw.models.onnx_cases",
        description="Frontend status of the onnx wheel's PyTorch backend test cases.")
    parser.add_argument("--suite", action="append", choices=SUITES,
                        help="suite to list (repeatable; default: all)")
    args = parser.parse_args(argv)
    cases = onnx_cases(tuple(args.suite) if args.suite else SUITES)
    statuses = Counter()
    blockers = Counter()
    width = max(len(c.name) for c in cases) if cases else 0
    print(f"{'suite':<18} {'case':<{width}} {'status':<12} ops / problem")
    for case in cases:
        try:
            model = load_case(case)
        except frontend.UnsupportedOpsError as exc:
            status = "unsupported"
            blocked = sorted({op for op, _ in exc.unsupported})
            blockers.update(blocked)
            ops = sorted({n.op_type for n in exc.model.graph.node}) if exc.model else []
            detail = f"{', '.join(ops)}  (not supported: {', '.join(blocked)})"
        except frontend.FrontendError as exc:
            status = "error"
            detail = str(exc).splitlines()[0].replace(str(case.model_path), "model.onnx")
        else:
            status = "supported"
            detail = ", ".join(sorted({n.op_type for n in model.graph.node}))
        statuses[status] += 1
        print(f"{case.suite:<18} {case.name:<{width}} {status:<12} {detail}")
    print()
    print(f"{len(cases)} cases: {statuses['supported']} supported, "
          f"{statuses['unsupported']} unsupported, {statuses['error']} frontend errors")
    if blockers:
        print("blocking ops: " + ", ".join(f"{op} ({n} cases)" if n > 1 else f"{op} (1 case)"
                                           for op, n in blockers.most_common()))
    return 0


def _number(path: Path) -> int:
    match = re.search(r"(\d+)$", path.stem)
    return int(match.group(1)) if match else -1


def _read_tensors(folder: Path, kind: str) -> list[np.ndarray]:
    paths = sorted(folder.glob(f"{kind}_*.pb"), key=_number)
    return [numpy_helper.to_array(onnx.load_tensor(str(path))) for path in paths]


if __name__ == "__main__":
    sys.exit(main())
