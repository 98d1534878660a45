"""Whole-network programs stay byte-identical: a snapshot of what the compiler emits.

Each case is compiled on the default hardware and written with
:func:`~neuralmatrix.sw.compiler.write_output`; the digest is the SHA-256 of ``image.bin``
(constants and programs), ``program.bin``, ``network.json`` (tensors, layouts, steps),
``quant.json`` (scales, requantization, PWL tables) and the host gather indices of
``transfers.npz``. The digests were recorded on the lowering before it became the
:mod:`neuralmatrix.sw.lower` package (``sw/linearize.py``); a refactoring of the lowering must
leave every one unchanged. A deliberate change of the emitted programs updates them (the
``pattern:*`` digests: LayerNorm's row-length margin, :func:`~neuralmatrix.sw.lower.layernorm.
square_margin`, for their 32-element rows): run
``NM_SNAPSHOT_PRINT=1 pytest -q tests/test_lowering_snapshot.py -s`` and paste the printed
table.

Coverage: the digits CNN (Conv, pooling, Gemm), MiniLM (2 encoder layers at 16 tokens:
embedding lookups, attention masks, fused score MatMul and softmax, GELU column groups,
LayerNormalization, per-column scales), one MiniLM layer with decomposed LayerNorms, the
ResNet-50-class CNN (BatchNorm folding, residual sums, max and average pooling, Gemm,
Softmax), the decomposed-LayerNorm spellings of tests/test_patterns.py, onnx-wheel backend
cases of every op family, and small graphs for what those do not reach (division of two
tensors, Expand, constant-index Gather, Concat of two scales, a Gemm of two activations,
broadcast batched MatMul into Softmax, LayerNormalization over two axes, ReduceMean over
inner axes).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from onnx import numpy_helper

from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sw.compiler import builtin, compile_model, write_output
from test_compiler import feeds_for, make_model, node
from test_patterns import SHAPE, decomposed

CFG = HwConfig()

# -- digests (recorded on the code before the lowering refactor) -------------------------------

DIGESTS = {
    "digits": "07b3240810e3b0248fbb1d517d20ca9e386498cf4feacd7cf4cbef93ae190291",
    "minilm": "7416aeb83901301eca21e04f7bcf8cab2827171ebdc867ee28309dcf49f9ce55",
    "minilm-decomposed": "2246bc17121449b053a00b91d51c5e29aa83dbcb0809c5c7c26afd696c31dc11",
    "resnet50": "52dd8e939b3f07dd90982acd8f19a95712c2a4decc6fb7e11395a151e933e3fa",
    "pattern:opset14": "a2ae6f7e4c3cc25e5f10a10f9e676b10e2cbd203dd44f79eea904a614ca5bb28",
    "pattern:opset18-axes-input": "a2ae6f7e4c3cc25e5f10a10f9e676b10e2cbd203dd44f79eea904a614ca5bb28",
    "pattern:mul-reciprocal": "a2ae6f7e4c3cc25e5f10a10f9e676b10e2cbd203dd44f79eea904a614ca5bb28",
    "pattern:no-affine": "3b551a3baf61ef2ae222399e253225eee9b541d2c47d9613f89312841c5fed61",
    "pattern:no-beta": "cadb7ed21d9d87d67b728d0555cccd80023eca0dbfda6e944801c884ad5e41eb",
    "graph:div-expand": "5cb92fe5681dcf878409d204b111227041e1378e825d84101fc9d403ccfadd73",
    "graph:gather-concat-gemm": "2c9854a90d10742092c4d84c17fc0b78908484f0f6b2876f76d5c93cd82f15a8",
    "graph:matmul-softmax": "8230776a2a03f6c3acc62a5fe621bc30ec2ff1bf7af8ea554f2f24580d0d26f5",
    "graph:layernorm2-reduce-gelu": "dcca498ad8b7cd1568e593a3b550e6dd80361ba41207ddd2da49f6534bd2bc9e",
    "onnx:test_AvgPool1d_stride": "0d62f8313de621e93e59c6bcf118cba403c93beb0f47106509c5f62da636aed1",
    "onnx:test_AvgPool2d": "64283ce15d14b7e324fd0dc28e72c3e6af941fb674b9dc7e066a4ee735f413c3",
    "onnx:test_AvgPool2d_stride": "f1f5cdbc023a639e9306df053b0c71993346656a78cd9531dc05cc1fd90e9d1c",
    "onnx:test_BatchNorm1d_3d_input_eval": "e7c3265b318b7ce23d48332aa9d6eeed969c8951c6aa6ca49cb9611029fc92f3",
    "onnx:test_BatchNorm2d_eval": "ec36f3262e094de2591b5217169a5b6e775255f1bdb81567605d1bb859b32c87",
    "onnx:test_Conv1d_groups": "232726146ce858b8e74af46c976f11af62e61ea1b937978545b2c9f0129a7610",
    "onnx:test_Conv1d_pad2": "79667c01a8c1273e1daec9ed6c173b68d48659a9ed68e7e3331d0555e17d4617",
    "onnx:test_Conv2d_depthwise_strided": "ab3c8b7adea7ad44b5c3ccf60c47f18693a9e7d9a0a3ed2eb660f5995df74a0c",
    "onnx:test_Conv2d_dilated": "6e4b0fe2effd262c01e116e9c1e1a4bc5fd792b86ab6be5f3c594bf60ae20007",
    "onnx:test_Conv2d_groups": "289c157fe1d8ef6f3c1c115754a1aa269c3ffa043676ac6a3c5c1e87d408337f",
    "onnx:test_Conv2d_padding": "34a131347e99cd72958cb0267df786f6d819efaca48edf0ea8286710701dfb82",
    "onnx:test_operator_conv": "353204c310fff6aa7deac7981183ded4cabb8cfe448f590aae532d82efd0a4c6",
    "onnx:test_ELU": "b3c43bed14432434d400afaaca3c947988e8e691edb6b699126383a9ed4ee767",
    "onnx:test_LeakyReLU_with_negval": "6e87ee179a7c6522d090b285e6032235c3622d2f2784dc78bb33380fa96c3e90",
    "onnx:test_SELU": "c20ac9a6a4bf07fcb79cfa0acd3c0ae643b2dafb800a02f53bb83b6f9e4b2350",
    "onnx:test_Softplus": "52b10b23ba037b0944ac21ca6a86a9d15d727a6b5b39a38ae73694d5581f87f0",
    "onnx:test_Tanh": "23c3b04c3e5b4c3a454583f5eb9d152970e863ff3d90296e2933422cc6a711d0",
    "onnx:test_Sigmoid": "c1ae635e98db9a0934f81337868462ce76cebc91548d1fae4486a7e87727b61f",
    "onnx:test_operator_basic": "09a8b95f0d39fc0a79ff7dc625bfa8c318e7a211ac085c4c38130f065f708e03",
    "onnx:test_operator_clip": "217eff76224f429dd15e4314520cc52d549c8b3278598e2619cbf44813a47202",
    "onnx:test_operator_exp": "751375bfb44eec49723cd0270ff0e38450377677d45881f13cc6d01991045bc0",
    "onnx:test_operator_symbolic_override_nested": "cb58b84b44ec5d9b4314448ea67a506c90cb3937ab20abbe32c7bc078277c189",
    "onnx:test_operator_add_size1_broadcast": "c122124c19fac6bb18c0b1ca3267faf37e5541c4d43ed12e1f2b7d8f01e125a3",
    "onnx:test_Embedding": "2216c92ae78ae8c80ac5aa09e7e7917f28f612528c05516da090d04f3487acb6",
    "onnx:test_GLU": "eefee3716c28fa4fbd7abb56673761dda4ff1dd96246569d786c229a1abe46a3",
    "onnx:test_GLU_dim": "c522798fd8f4704200e8dcc7f9b36a7fda1a2e262bd5a5a945c354d8f6d6152d",
    "onnx:test_operator_chunk": "3d5269e385d0d7779407b343af9dda964c76a6ee06ca1317f1296047cbf73761",
    "onnx:test_Linear": "f3de64b88468b24803eeab22934a8451fbba56c09beb6c6c048fc532ef0ba748",
    "onnx:test_Linear_no_bias": "aa790a62ea0260cf7c1b07d8b40e43963dd63fed965db9725247fbb0e77563be",
    "onnx:test_operator_mm": "1b09bc27fb6f5da8eb5d31b7755e21ac9a95bfc5d87a230565b952ec5b1903cd",
    "onnx:test_LogSoftmax": "9d3f914bd6c12df0e7c59c62a4ced178767f27244d41911eaa7f004ce2a17eb6",
    "onnx:test_log_softmax_dim3": "e55f17914442bdb9be6973b7e04efe04bf7bb8d1504cca1034a78f9dd11c4065",
    "onnx:test_softmax_lastdim": "795b09f4c9886ce7c05b2427b934c32ea24b6c6da1622a7dbb5bcddc4744402a",
    "onnx:test_Softmin": "b9cd99912fb84c77bc10f3c05181c62471bad483b4bb23aed18b564815064709",
    "onnx:test_softmax_functional_dim3": "2882c78c620e18c6ec0c487e4ae0a541f802931e648386474c2a35fa8ad3a331",
    "onnx:test_MaxPool1d_stride_padding_dilation": "1eaf9aa84e4f035c729f8c67a6e85247fd82296430a27992c3084037e963c379",
    "onnx:test_MaxPool2d": "9a842578839ad4eeca6ae417c768c4a0cd660cb6e0ae46e723e34ec45d474a1f",
    "onnx:test_operator_maxpool": "1455f8407b44a370fb5592e6a07ed4eb6f805c4ee9447c2ed2c3058d83d767d9",
    "onnx:test_PReLU_1d": "05f20028b9c5ba5f3015a0beaf15110f36846564bd72051ed91ae9da53ce14a8",
    "onnx:test_PReLU_2d_multiparam": "c9e0bf76b9f8cb5e207dd8cd9a883b7d1ba82d10e891a4b44bedc155411f72d4",
    "onnx:test_PReLU_3d_multiparam": "9a20da0d616f67059c49bdaf9f682c4db70d0d0ff69cda8ded976fd6ed663082",
    "onnx:test_PixelShuffle": "2d2b98cf1dfc7306ae244c30e10a388a4d64f35f45af4e3cdd2d86b974a0cc14",
    "onnx:test_ReflectionPad2d": "0780edc87499fa9f6af5f50c491f6fc260bfeee66a8c62efa6aa6bd9160b1a14",
    "onnx:test_ReplicationPad2d": "b0f01f6be29c92ba78e3b5c803c5d6d3bcc60631fba043fb4adc1ffd59603666",
    "onnx:test_ZeroPad2d": "604952b01a4976808e98aa387888aae7216df749a76beb0095ae300df78e2a0b",
    "onnx:test_operator_pad": "457a38f39f5605fdc1e76eaf96c734b4ed6d0a3953560b9b88fa14fdc08641ff",
    "onnx:test_operator_concat2": "f05865ed6b07d4ba23ef541c1a51dc8519efb26b890627bdfe54e8684efd5170",
    "onnx:test_operator_index": "a08a862da9b2614292eb05564e9734d408dd7216e9afa5b8bdd57731fded9f79",
    "onnx:test_operator_flatten": "c16c800e8b27dad43bba138e9822e8ac04b8ce328aa306c6b5ea755ec2fb7ef3",
    "onnx:test_operator_permute2": "190d4d830edbadca46838e13f89f18776d352e0d566f0241fdddc70a9c6fdca7",
    "onnx:test_operator_reduced_mean_keepdim": "d11db97231f0cc1cf5446bfc7693c57dab58cba24de5d18959bb17e895247395",
    "onnx:test_operator_reduced_sum": "00d499ddc2766465fe6643f3034f4f726a66555bd1ee6916b9950cddd246bb4d",
}

# -- the cases --------------------------------------------------------------------------------

ONNX_CASES = [
    "test_AvgPool1d_stride", "test_AvgPool2d", "test_AvgPool2d_stride",
    "test_BatchNorm1d_3d_input_eval", "test_BatchNorm2d_eval",
    "test_Conv1d_groups", "test_Conv1d_pad2", "test_Conv2d_depthwise_strided",
    "test_Conv2d_dilated", "test_Conv2d_groups", "test_Conv2d_padding", "test_operator_conv",
    "test_ELU", "test_LeakyReLU_with_negval", "test_SELU", "test_Softplus", "test_Tanh",
    "test_Sigmoid", "test_operator_basic", "test_operator_clip", "test_operator_exp",
    "test_operator_symbolic_override_nested", "test_operator_add_size1_broadcast",
    "test_Embedding", "test_GLU", "test_GLU_dim", "test_operator_chunk",
    "test_Linear", "test_Linear_no_bias", "test_operator_mm",
    "test_LogSoftmax", "test_log_softmax_dim3", "test_softmax_lastdim", "test_Softmin",
    "test_softmax_functional_dim3",
    "test_MaxPool1d_stride_padding_dilation", "test_MaxPool2d", "test_operator_maxpool",
    "test_PReLU_1d", "test_PReLU_2d_multiparam", "test_PReLU_3d_multiparam",
    "test_PixelShuffle", "test_ReflectionPad2d", "test_ReplicationPad2d", "test_ZeroPad2d",
    "test_operator_pad", "test_operator_concat2", "test_operator_index", "test_operator_flatten",
    "test_operator_permute2", "test_operator_reduced_mean_keepdim", "test_operator_reduced_sum",
]

PATTERNS = {  # tests/test_patterns.py's decomposed-LayerNorm spellings
    "opset14": (14, {}),
    "opset18-axes-input": (18, {}),
    "mul-reciprocal": (13, {"square": "mul", "divide": "recip"}),
    "no-affine": (14, {"gamma": False, "beta": False}),
    "no-beta": (14, {"beta": False}),
}

def _small_graphs():
    """``name -> (model, calibration feeds)`` of the hand-built graphs."""
    rng = np.random.default_rng(3)   # fresh per call: digests must not depend on test order
    w = rng.standard_normal((16, 24)).astype(np.float32)
    out = {}
    # a / b of two tensors (b bounded away from 0), then a constant product and Expand.
    m = make_model([node("Exp", ["b"], ["eb"]), node("Div", ["a", "eb"], ["q"]),
                    node("Mul", ["q", "k"], ["qk"]), node("Expand", ["qk", "shape"], ["y"])],
                   [("a", [1, 8]), ("b", [1, 8])], ["y"],
                   [("k", rng.uniform(0.5, 2.0, 8)), ("shape", np.array([3, 8], np.int64))])
    out["div-expand"] = (m, feeds_for([("a", [1, 8]), ("b", [1, 8])], n=8))
    # Gather with constant indices, Concat of two scales, Gemm of two activations.
    m = make_model([node("Gather", ["x", "idx"], ["g"], axis=1),
                    node("Mul", ["x", "three"], ["x3"]),
                    node("Concat", ["g", "x3"], ["c"], axis=1),
                    node("Gemm", ["c", "z"], ["y"], transB=1, alpha=0.5)],
                   [("x", [4, 6]), ("z", [5, 10])], ["y"],
                   [("idx", np.array([0, 2, -1, 3], np.int64)), ("three", np.float32(-3.0))])
    out["gather-concat-gemm"] = (m, feeds_for([("x", [4, 6]), ("z", [5, 10])], n=8))
    # Broadcast batched MatMul of two activations into a Softmax, then a weight MatMul.
    m = make_model([node("MatMul", ["p", "q"], ["s"]), node("Softmax", ["s"], ["sm"], axis=-1),
                    node("MatMul", ["sm", "w"], ["y"])],
                   [("p", [2, 3, 4, 8]), ("q", [1, 8, 16])], ["y"], [("w", w)])
    out["matmul-softmax"] = (m, feeds_for([("p", [2, 3, 4, 8]), ("q", [1, 8, 16])], n=8))
    # LayerNormalization over two axes; ReduceMean over an inner axis; GELU after a MatMul.
    gamma = (1 + 0.2 * rng.standard_normal((4, 6))).astype(np.float32)
    m = make_model([node("LayerNormalization", ["x", "g"], ["ln"], axis=1),
                    node("ReduceMean", ["ln", "ax"], ["r"], keepdims=0),
                    node("MatMul", ["x", "w2"], ["h"]), node("Gelu", ["h"], ["y"])],
                   [("x", [3, 4, 6])], ["r", "y"],
                   [("g", gamma), ("ax", np.array([1], np.int64)), ("w2", rng.standard_normal((6, 5)).astype(np.float32))],
                   opset=20)
    out["layernorm2-reduce-gelu"] = (m, feeds_for([("x", [3, 4, 6])], 2.0, 0.5, n=8))
    return out


def _decomposed_minilm_layer(seq):
    """One MiniLM encoder layer with its LayerNormalization nodes as opset-18 chains (as in
    tests/test_patterns.py)."""
    from neuralmatrix.sw.models import minilm as mm

    model = mm.load_encoder_layers(1, seq)
    g = model.graph
    nodes, extra = [], []
    for k, n in enumerate(g.node):
        if n.op_type != "LayerNormalization":
            nodes.append(n)
            continue
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
        chain, inits = decomposed(n.input[0], n.output[0], n.name or f"ln{k}", opset=18, eps=eps)
        for c in chain:
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
    return model


def _case(name):
    """``(model, calib_feeds, input_shapes)`` of a snapshot case."""
    kind, _, arg = name.partition(":")
    if kind == "digits":
        return builtin("digits")
    if kind == "minilm":
        from neuralmatrix.sw.models import minilm as mm

        return mm.load_encoder_layers(2, 16), mm.calibration_feeds(16)[:16], None
    if kind == "minilm-decomposed":
        from neuralmatrix.sw.models import minilm as mm

        return _decomposed_minilm_layer(16), mm.calibration_feeds(16)[:16], None
    if kind == "resnet50":
        from neuralmatrix.sw.models import resnet50

        x = resnet50.sample_images(2)
        return resnet50.load_onnx(), [{resnet50.INPUT_NAME: x[i:i + 1]} for i in range(2)], None
    if kind == "pattern":
        opset, kw = PATTERNS[arg]
        nodes, inits = decomposed("x", "y", "ln", opset=opset, **kw)
        model = make_model(nodes, [("x", SHAPE)], ["y"], inits, opset=opset)
        return model, feeds_for([("x", SHAPE)], 3.0, 1.0, n=8, seed=0), None
    if kind == "onnx":
        from neuralmatrix.sw.accuracy import _case_feeds
        from neuralmatrix.sw.models.onnx_cases import load_case, onnx_cases

        case = next(c for c in onnx_cases() if c.name == arg)
        feeds, _ = _case_feeds(case, case.datasets[0][0])
        return load_case(case), feeds, None
    if kind == "graph":
        model, feeds = _small_graphs()[arg]
        return model, feeds, None
    raise KeyError(name)


CASES = (["digits", "minilm", "minilm-decomposed", "resnet50"]
         + [f"pattern:{p}" for p in PATTERNS]
         + [f"graph:{g}" for g in ("div-expand", "gather-concat-gemm", "matmul-softmax",
                                   "layernorm2-reduce-gelu")]
         + [f"onnx:{c}" for c in ONNX_CASES])


def digest(out_dir) -> str:
    """SHA-256 over the program, the image, the manifests and the transfer indices."""
    h = hashlib.sha256()
    for f in ("image.bin", "program.bin", "network.json", "quant.json"):
        data = (out_dir / f).read_bytes()
        h.update(f"{f}:{len(data)}:".encode())
        h.update(data)
    with np.load(out_dir / "transfers.npz") as idx:
        for k in sorted(idx.files):
            a = idx[k]
            h.update(f"{k}:{a.dtype}:{a.shape}:".encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _compile_digest(name, tmp_path) -> str:
    model, feeds, shapes = _case(name)
    comp = compile_model(model, CFG, calib_feeds=feeds, input_shapes=shapes)
    out = write_output(comp, tmp_path / "out")
    # The manifests must not depend on anything but the program (no timing, no paths).
    json.loads((out / "network.json").read_text())
    return digest(out)


@pytest.mark.parametrize("name", CASES)
def test_program_is_unchanged(name, tmp_path):
    got = _compile_digest(name, tmp_path)
    if os.environ.get("NM_SNAPSHOT_PRINT"):
        print(f'\n    "{name}": "{got}",')
        return
    assert name in DIGESTS, f"no recorded digest for {name}: {got}"
    assert got == DIGESTS[name], f"{name}: the emitted program changed"


def test_every_case_has_a_digest():
    assert set(DIGESTS) == set(CASES)
