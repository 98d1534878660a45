"""Decomposed LayerNorm (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div, as exporters below
opset 17 write it): found by :func:`neuralmatrix.sw.patterns.find_layer_norms`, lowered as
LayerNormalization, so both spellings compile to the same kernels and the same numbers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from neuralmatrix.sw.compiler import compile_model
from neuralmatrix.sw.patterns import find_layer_norms
from neuralmatrix.sw.runtime import run_golden
from test_compiler import CFG, TOL, feeds_for, make_model, node, steps_off

SHAPE = [1, 12, 32]
RNG = np.random.default_rng(11)
GAMMA = (1 + 0.3 * RNG.standard_normal(32)).astype(np.float32)
BETA = (0.5 * RNG.standard_normal(32)).astype(np.float32)


def decomposed(x, y, name, *, opset, square="pow", divide="div", gamma=True, beta=True,
               eps=1e-5, axes=(-1,)):
    """The nodes and initializers of a decomposed LayerNorm of *x* into *y* (the chain's
    first node takes *name*)."""
    inits = [("eps", np.float32(eps)), ("two", np.float32(2.0))]
    t = lambda s: f"{name}_{s}"  # noqa: E731
    if opset >= 18:
        inits.append(("axes", np.asarray(axes, dtype=np.int64)))

        def mean(i, o, n):
            return helper.make_node("ReduceMean", [i, "axes"], [o], name=n)
    else:
        def mean(i, o, n):
            return helper.make_node("ReduceMean", [i], [o], axes=list(axes), name=n)
    nodes = [mean(x, t("mean"), name), node("Sub", [x, t("mean")], [t("d")])]
    if square == "pow":
        nodes.append(node("Pow", [t("d"), "two"], [t("sq")]))
    else:
        nodes.append(node("Mul", [t("d"), t("d")], [t("sq")]))
    nodes += [mean(t("sq"), t("var"), f"{name}_var"), node("Add", [t("var"), "eps"], [t("ve")]),
              node("Sqrt", [t("ve")], [t("s")])]
    last = t("n") if gamma or beta else y
    if divide == "div":
        nodes.append(node("Div", [t("d"), t("s")], [last]))
    else:
        nodes += [node("Reciprocal", [t("s")], [t("r")]), node("Mul", [t("d"), t("r")], [last])]
    if gamma:
        out = t("g") if beta else y
        nodes.append(node("Mul", [last, "g"], [out]))
        inits.append(("g", GAMMA))
        last = out
    if beta:
        nodes.append(node("Add", ["b", last], [y]))        # constant first: either order
        inits.append(("b", BETA))
    return nodes, inits


def _fused(opset=17):
    return make_model([node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, name="ln")],
                      [("x", SHAPE)], ["y"], [("g", GAMMA), ("b", BETA)], opset=opset)


def _decomposed_model(opset, **kw):
    nodes, inits = decomposed("x", "y", "ln", opset=opset, **kw)
    return make_model(nodes, [("x", SHAPE)], ["y"], inits, opset=opset)


@pytest.mark.parametrize("opset,kw", [
    (14, {}),
    (18, {}),
    (13, {"square": "mul", "divide": "recip"}),
    (14, {"gamma": False, "beta": False}),
    (14, {"beta": False}),
], ids=["opset14", "opset18-axes-input", "mul-reciprocal", "no-affine", "no-beta"])
def test_decomposed_layer_norm_is_found_and_lowered(opset, kw):
    model = _decomposed_model(opset, **kw)
    (p,) = find_layer_norms(model, {"x": tuple(SHAPE)})
    assert (p.x, p.output, p.axis, p.epsilon, p.name) == ("x", "y", 2, pytest.approx(1e-5), "ln")
    assert (p.gamma is None) == (kw.get("gamma") is False)
    assert (p.beta is None) == (kw.get("beta") is False)
    if p.gamma is not None:
        np.testing.assert_array_equal(p.gamma, GAMMA)
    worst, comp = steps_off(model, [("x", SHAPE)], scale=3.0, offset=1.0)
    # The LayerNormalization node with the same gamma and beta: the same error (4.13 steps
    # without beta, where the output range is narrower; one op's TOL otherwise).
    ins = ["x", "g", "b"][:1 + (kw.get("gamma") is not False) + (kw.get("beta") is not False)]
    inits = [("g", GAMMA if kw.get("gamma") is not False else np.ones(32, np.float32))]
    if len(ins) == 3:
        inits.append(("b", BETA))
    fused = make_model([node("LayerNormalization", ins if len(ins) > 1 else ["x", "g"], ["y"],
                             axis=-1, name="ln")], [("x", SHAPE)], ["y"], inits, opset=17)
    assert worst == pytest.approx(steps_off(fused, [("x", SHAPE)], scale=3.0, offset=1.0)[0],
                                  abs=1.0)
    assert worst <= TOL + 0.5
    kernels = comp.compiled.network.kernels
    assert {k.func for k in kernels} >= {"rsqrt"}
    assert any("decomposed LayerNorm" in n for n in comp.compiled.network.notes)


def test_decomposed_compiles_to_the_kernels_of_layer_normalization():
    cal = feeds_for([("x", SHAPE)], 3.0, 1.0, n=8, seed=0)
    test = feeds_for([("x", SHAPE)], 3.0, 1.0, n=1, seed=5)[0]
    runs = {}
    for label, model in (("fused", _fused()), ("decomposed", _decomposed_model(14))):
        comp = compile_model(model, CFG, calib_feeds=cal)
        runs[label] = (comp, run_golden(comp.compiled, test).outputs["y"])

    def shapes(comp):
        return [(k.name, k.out.rows, k.out.cols, k.func) for k in comp.compiled.network.kernels]

    assert shapes(runs["fused"][0]) == shapes(runs["decomposed"][0])
    step = runs["fused"][0].compiled.network.outputs["y"].scale
    # Calibration runs two float spellings of one function: ranges agree to float rounding.
    assert np.max(np.abs(runs["fused"][1] - runs["decomposed"][1])) <= 1.01 * step


@pytest.mark.parametrize("change", ["intermediate-is-output", "eps-is-input", "middle-axis",
                                    "cube"])
def test_other_chains_are_left_alone(change):
    nodes, inits = decomposed("x", "y", "ln", opset=14)
    outputs, inputs = ["y"], [("x", SHAPE)]
    if change == "intermediate-is-output":
        outputs.append("ln_d")
    elif change == "eps-is-input":
        inits = [i for i in inits if i[0] != "eps"]
        inputs.append(("eps", []))
    elif change == "middle-axis":
        for n in nodes:
            if n.op_type == "ReduceMean":
                n.attribute[0].CopyFrom(helper.make_attribute("axes", [1]))
    else:
        inits = [("two", np.float32(3.0)) if i[0] == "two" else i for i in inits]
    model = make_model(nodes, inputs, outputs, inits, opset=14)
    model = onnx.shape_inference.infer_shapes(model)
    assert find_layer_norms(model) == []


def test_minilm_layer_with_decomposed_layer_norms():
    """One MiniLM encoder layer (and the embeddings' LayerNorm) with every LayerNormalization
    rewritten into the opset-14 chain torch.onnx writes: the same kernels and the same
    hidden states, to within a step, as the graph with LayerNormalization nodes."""
    from neuralmatrix.sw.models import minilm as mm

    seq = 16
    fused = mm.load_encoder_layers(1, seq)
    decomposed_model = onnx.ModelProto()
    decomposed_model.CopyFrom(fused)
    g = decomposed_model.graph
    nodes, extra = [], []
    for k, n in enumerate(g.node):
        if n.op_type != "LayerNormalization":
            nodes.append(n)
            continue
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
        chain, inits = decomposed(n.input[0], n.output[0], n.name or f"ln{k}", opset=18,
                                  eps=eps)
        for c in chain:                      # the model's own gamma and beta
            c.input[:] = [{"g": n.input[1], "b": n.input[2]}.get(i, i) for i in c.input]
        for name, value in inits:
            if name in ("eps", "two", "axes"):
                extra.append(numpy_helper.from_array(np.asarray(value), f"{n.name}_{name}"))
                for c in chain:
                    c.input[:] = [f"{n.name}_{name}" if i == name else i for i in c.input]
        nodes += chain
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(extra)
    assert not any(n.op_type == "LayerNormalization" for n in g.node)
    assert len(find_layer_norms(onnx.shape_inference.infer_shapes(decomposed_model))) == 3

    feeds = mm.calibration_feeds(seq)[:16]
    test = feeds[-1]
    out = {}
    for label, model in (("fused", fused), ("decomposed", decomposed_model)):
        comp = compile_model(model, CFG, calib_feeds=feeds[:-1])
        out[label] = (comp, run_golden(comp.compiled, test).outputs)
    names = [[(k.name, k.func) for k in c.compiled.network.kernels] for c, _ in out.values()]
    assert names[0] == names[1]
    (name,) = [o.name for o in fused.graph.output]
    import onnxruntime as ort

    ref = ort.InferenceSession(fused.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, test)[0]
    for label, (comp, got) in out.items():
        cos = np.sum(got[name] * ref, axis=-1) / (np.linalg.norm(got[name], axis=-1)
                                                 * np.linalg.norm(ref, axis=-1))
        assert cos.mean() > 0.99, (label, cos)
    step = out["fused"][0].compiled.network.outputs[name].scale
    assert np.mean(np.abs(out["fused"][1][name] - out["decomposed"][1][name])) <= step
