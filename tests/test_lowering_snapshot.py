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

# -- digests (recorded on the code before the lowering refactor; re-recorded where a change named
# in its commit changed programs: latest, the config fields multipliers/dsp_budget in
# network.json, conv weight rounding + bias correction, softmax/LayerNorm schedules) ----------

DIGESTS = {
    "digits": "5277326ffeb42a39e05e4f31b6c0fb861d788f1d6c7e3629dd223a2976fc82cf",
    "minilm": "cccdc6acb0392dfc2816677f97a2b6bc9077c442fced28903a2dc3db664ea295",
    "minilm-decomposed": "672c5f8ef9291c5dc6a39aa722204e766633ac0a9e20721cc502a02b67148d96",
    "resnet50": "21e99ca94b26cdea60a7de0a7e8f4d08787a69555c44fede8858ed7766c1df27",
    "pattern:opset14": "9fddd926491943f11536aa7309839c801332fb3413792eb5eefc9bd0c7a0fa91",
    "pattern:opset18-axes-input": "9fddd926491943f11536aa7309839c801332fb3413792eb5eefc9bd0c7a0fa91",
    "pattern:mul-reciprocal": "9fddd926491943f11536aa7309839c801332fb3413792eb5eefc9bd0c7a0fa91",
    "pattern:no-affine": "b69f210ecad851b86175cd2081af745bb66522bfd99669258c453b70b0d8a388",
    "pattern:no-beta": "1430b9e0e99bbd1603bb0e74e5dc2023f7fcac9a2141c15af930b6d833f3c2be",
    "graph:div-expand": "89eeb4978060a9d0fbcca06a98ada0ce5c31735f1bc1ab7fd4dca21205384c9d",
    "graph:gather-concat-gemm": "7719fa0e08d6162f2056284ffe58f4fd85ceaa94fe02edee8fa4825d0d947265",
    "graph:matmul-softmax": "357b019955ad24ccb6b4dc46730e80903fac6c547fe076dc25ff2a488d2ff700",
    "graph:layernorm2-reduce-gelu": "bbac8908cefa5f2acf7058dcfcbf553e3428471a742346ff6695a652d1a9068e",
    "onnx:test_AvgPool1d_stride": "45564ae5870c0039e6995d754ba43f88964bc7690329204228e0b38e7cc3eb7f",
    "onnx:test_AvgPool2d": "e94115d087b032c49dcd21ba8645106d36ef284ba6e6ea13c94e6a62f434a910",
    "onnx:test_AvgPool2d_stride": "72c953bb9c9c67c1b66287d71e30c9a1fc8df525aaa4e4db8082085d49a566c0",
    "onnx:test_BatchNorm1d_3d_input_eval": "dfcf9e97454835111038ba7c54444d20f4723bf3a9b8fbc91eed0b7cb68893b6",
    "onnx:test_BatchNorm2d_eval": "cdd72a3cc7cc9a128109982c141c41f8ad0841d2df1bc693a8e79b86429f570d",
    "onnx:test_Conv1d_groups": "b8f84620f7977e9df714fa207fd82cb4674b009028a6c5916d4fee2f71b76d97",
    "onnx:test_Conv1d_pad2": "cb71151b8ef3b24cbe37f63cd64d906077d3fa2944385695a2fa9ca4a114d794",
    "onnx:test_Conv2d_depthwise_strided": "ccaa1bec3870913d1bd57d9527ed1f5eda84aabeb3695d7cbc205aed0b7fac3c",
    "onnx:test_Conv2d_dilated": "5bc3d64450be36593b2d5e41e5491cc9fbd3c5b37f283d3629f0742a6a322c45",
    "onnx:test_Conv2d_groups": "9c042c831d0daef8a6608fcc14dc1d7aa203f1673d5f8c668810585b04ece2cd",
    "onnx:test_Conv2d_padding": "79c9384c25db533a721d64c92d9c38f26eb59524808607bb9645c713476f3deb",
    "onnx:test_operator_conv": "bdc3f242817dcb4517b2d9cc650bc083d88f823a361b5b4b68530daec7b0e587",
    "onnx:test_ELU": "d5ecf6f42753909d63c8a5837e8d4d0bbf7989d24db074b6e6d7b7e9229f6752",
    "onnx:test_LeakyReLU_with_negval": "d630ad757ce712467eec996fad3a65b2465329eb5241b32562ae533da7031ae3",
    "onnx:test_SELU": "fcaf0913f38391051f7050e031ea0d08ff9daab283d28cf2f18a0c10c871928b",
    "onnx:test_Softplus": "21b487ad1b5daec5ea6afc2a5b566ec77c3cbe677c20aa63ce722f8cd68bcb45",
    "onnx:test_Tanh": "d31189cd8c6bbf105c3157eb44967513d1f4e20972f3e2aed2892ed8210eaf29",
    "onnx:test_Sigmoid": "08fde398a1dc92331ca6ba919e3d1d063d03e74c8bb77da9d0a69beb33bc6152",
    "onnx:test_operator_basic": "4c45f7202ca62ba23e718fa549fd0c2059d77c23274ffd77f0e9834c131fa19c",
    "onnx:test_operator_clip": "dfd4afdf0056a563a0b3db1df159ca0030f40991adec0794fef249568d494f63",
    "onnx:test_operator_exp": "a0cb8c554cd1d7d797822a6c81c7e3532202c9f3d1a0ce2f5417fde587dcc5b1",
    "onnx:test_operator_symbolic_override_nested": "d1590a20da4c51f00c7a7e83306fdadadc40586dc1c009755d469887d5bdf036",
    "onnx:test_operator_add_size1_broadcast": "e904e2ad9a66527e4024b03dbac6acbcdf2f46bb763ccf73eab9fb638797e171",
    "onnx:test_Embedding": "e7ee6ccf168b5fb52096e428616f01198cd5d164a802d90dc8b2be49eaf1e655",
    "onnx:test_GLU": "a688727eb0d2333ae91600e5c9d5b962da2e2f469b585153137718ae1d973c41",
    "onnx:test_GLU_dim": "30111ac1c334a3c3c72c3341d2d47ebe35789f11a325f7f6814f4bb0feaed767",
    "onnx:test_operator_chunk": "64c01417e81ef5fe88cd312569d6a3098a8e8888b5147274710af6d5d130c2f3",
    "onnx:test_Linear": "140165d58fa4754f48d8e9f8a69b8f0c4da94a542caffd2c7de7668a9370648a",
    "onnx:test_Linear_no_bias": "c663b70454256b2ba172d3de5bfb275ca2ea2a91ecb6f2bab6af7bee7d083619",
    "onnx:test_operator_mm": "c0a12047cde8915f30074de3b4eb34f4874d9d0f6a0e3dec5954cb86b3b70f61",
    "onnx:test_LogSoftmax": "b06117b9d4e6780f4f161d32aac7a41702579642e987095f80627556b4472e3a",
    "onnx:test_log_softmax_dim3": "aa97c2d715801feefd2cfe0be8beb61241857abac7601451c188a1e3417ae742",
    "onnx:test_softmax_lastdim": "2afb11c40dcfb655caa259ac0024a89f02fde2c2d644c7b60727fb611acc42f4",
    "onnx:test_Softmin": "339a56b9a0b8b7593778b49d1416808aa0791e0aecbf8236e6947744706aa5d5",
    "onnx:test_softmax_functional_dim3": "9b75446a111fee2ff2bdbe5986518f71210e7d1c176f6ce8e05a632ace6d7610",
    "onnx:test_MaxPool1d_stride_padding_dilation": "07ceba3dd65ac62d395078a8cdd8aeb955b48260347382f79b67c7b247461d0e",
    "onnx:test_MaxPool2d": "48eb78a4d90a1960a237e9adf43d256fc13e340bb905a5694e71d544241557dd",
    "onnx:test_operator_maxpool": "c075ae6a25f03dd546982af9c5bc016de936877a3857bd59827859b9c6c8efd7",
    "onnx:test_PReLU_1d": "362c4d0835b852aea0a192f2cb988c0edd7cba335c85f5ff48b4b1a20ce22530",
    "onnx:test_PReLU_2d_multiparam": "a542621ab7b8c3b6b110aae14438fb6556abf60579a45ad8f5c2831dda51d975",
    "onnx:test_PReLU_3d_multiparam": "027d92341602150031103cc65972abb85626b50d9946d35207ac7b9cbc9c8dab",
    "onnx:test_PixelShuffle": "9e1d2954138ef03171099fe6ff15b444a334cff6fceeaa4ca93467684fb3f8b9",
    "onnx:test_ReflectionPad2d": "994504603f692eb5ea02fefa67632088bca4247c7989807ad082592eccb0d290",
    "onnx:test_ReplicationPad2d": "66f408417c3f5289cb871ae80b77c6ceb9e0222791b635e17b877c833a2c21bd",
    "onnx:test_ZeroPad2d": "dbbbe22f2fda7742708a39a5a6978e523525fe84fa319cc1920303fc3125227f",
    "onnx:test_operator_pad": "203de910dfce3b8e2ee2cc61d1ef9b608937c495ab6ee1e8cda599ae0aba4606",
    "onnx:test_operator_concat2": "80e999328af8edab42238e2540e3e20caee110baeddaf33655b89c8d2c1c06c6",
    "onnx:test_operator_index": "fdb8cb39f6216927d551620f8d42ed179a0a57bb0e97a2e1c644a55666056168",
    "onnx:test_operator_flatten": "fefbea1b08f05acf9b20c0d1b712b5fea3da1a0664cc5ef86ca6f37de28323c4",
    "onnx:test_operator_permute2": "79dd8f74556b225b7a274bfb6315291130782ba1a30f15dc3fbc55201ef66432",
    "onnx:test_operator_reduced_mean_keepdim": "210339af2e66da91a8d5e7f3fbcc7ff1f13569bba30831a42ea276ff5f7c1226",
    "onnx:test_operator_reduced_sum": "1d650c48300fc6c9a1bee839822cb4d811e20119a5ce3bc35bbe7e126a677c50",
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
