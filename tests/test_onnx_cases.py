"""The onnx wheel's PyTorch backend cases through the frontend."""

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from neuralmatrix.sw import frontend
from neuralmatrix.sw.models.onnx_cases import (
    SUITES, OnnxCase, case_ops, load_case, main, onnx_cases,
)

CASES = onnx_cases()


def _outcome(case: OnnxCase):
    """The loaded model, or whatever exception loading raised."""
    try:
        return load_case(case)
    except Exception as exc:  # noqa: BLE001 - the test below checks the type
        return exc


@pytest.fixture(scope="module")
def outcomes():
    return {case: _outcome(case) for case in CASES}


def test_cases_are_found():
    names = {(c.suite, c.name) for c in CASES}
    assert len(CASES) > 100
    assert {c.suite for c in CASES} == set(SUITES)
    assert ("pytorch-converted", "test_Conv2d") in names
    assert ("pytorch-operator", "test_operator_conv") in names
    assert all(c.model_path.is_file() for c in CASES)


def test_datasets_are_read():
    case = next(c for c in CASES if c.name == "test_Conv2d")
    [(inputs, outputs)] = case.datasets
    assert len(inputs) == 1 and len(outputs) == 1
    assert inputs[0].ndim == 4 and outputs[0].ndim == 4


def test_unknown_suite():
    with pytest.raises(ValueError, match="unknown suites"):
        onnx_cases(["node"])


def test_every_case_loads_or_raises_a_frontend_error(outcomes):
    for case, result in outcomes.items():
        assert isinstance(result, (onnx.ModelProto, frontend.FrontendError)), (case.name, result)
    loaded = [c for c, r in outcomes.items() if isinstance(r, onnx.ModelProto)]
    assert len(loaded) > 0.8 * len(CASES)
    for case, result in outcomes.items():
        if isinstance(result, frontend.UnsupportedOpsError):
            assert result.unsupported, case.name
            assert {op for op, _ in result.unsupported}.isdisjoint(frontend.SUPPORTED_OPS)


def test_loaded_cases_match_reference_outputs(outcomes):
    for case, model in outcomes.items():
        if not isinstance(model, onnx.ModelProto):
            continue
        assert {n.op_type for n in model.graph.node} <= frontend.SUPPORTED_OPS, case.name
        for inputs, outputs in case.datasets:
            feeds = {vi.name: x for vi, x in zip(model.graph.input, inputs)}
            got = ReferenceEvaluator(model).run(None, feeds)
            for g, want in zip(got, outputs):
                np.testing.assert_allclose(g, want, rtol=1e-3, atol=1e-4, equal_nan=True,
                                           err_msg=case.name)


def test_conv2d_cases_load():
    conv2d = [c for c in CASES if c.name.startswith("test_Conv2d")]
    assert len(conv2d) >= 5
    for case in conv2d:
        assert case_ops(case) == {"Conv"}, case.name


def test_case_ops_is_none_when_unsupported(outcomes):
    case = next(c for c in CASES if c.name == "test_ConvTranspose2d")
    assert case_ops(case) is None
    assert isinstance(outcomes[case], frontend.UnsupportedOpsError)


def test_table(capsys):
    assert main(["--suite", "pytorch-operator"]) == 0
    out = capsys.readouterr().out
    assert "test_operator_conv" in out and "supported" in out
    assert "test_operator_convtranspose" in out and "not supported: ConvTranspose" in out
    assert "cases:" in out and "blocking ops: " in out
