"""A ResNet-50-class CNN at 224x224: the real ResNet-50 graph with seeded synthetic weights.

The ``onnx`` wheel ships the ResNet-50 graph (``backend/test/data/light/light_resnet50.onnx``:
53 convolutions with BatchNormalization, 16 residual sums, max and average pooling, the
1000-class Gemm and Softmax) with "light" weights: every tensor a constant 0.02. Pretrained
weights cannot be downloaded here, so :func:`load_onnx` keeps the graph and draws the weights
from a seeded generator: He-normal convolutions, BatchNormalization statistics near identity
(the last one of every residual branch scaled down, as in "zero-gamma" initialization, so the
residual stream stays in range through 16 blocks), a 1000-class Gemm. The result is a network
with ResNet-50's exact shapes, MACs (4.1 G) and data flow; its outputs are not ImageNet
classes, so accuracy is measured as agreement with the float model on the same weights.

The inputs of :func:`sample_images` are real photographs (scikit-learn's bundled
``china.jpg`` and ``flower.jpg``), cropped, resized to 224x224 and normalized with the
ImageNet mean and standard deviation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["SOURCE_PATH", "INPUT_NAME", "OUTPUT_NAME", "load_onnx", "sample_images"]

#: The light ResNet-50 graph in the onnx wheel.
SOURCE_PATH: Path = Path(onnx.__file__).parent / "backend/test/data/light/light_resnet50.onnx"
INPUT_NAME = "gpu_0/data_0"
OUTPUT_NAME = "gpu_0/softmax_1"
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _weights(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if name.endswith("_bn_s_0"):                      # gamma
        last = "branch2c" in name
        return rng.uniform(0.15, 0.3, shape) if last else rng.uniform(0.8, 1.2, shape)
    if name.endswith("_bn_b_0"):                      # beta
        return rng.normal(0.0, 0.05, shape)
    if name.endswith("_bn_rm_0"):                     # running mean
        return rng.normal(0.0, 0.05, shape)
    if name.endswith("_bn_riv_0"):                    # running variance
        return rng.uniform(0.8, 1.2, shape)
    if name == "gpu_0/pred_w_0":
        return rng.normal(0.0, 4.0 / np.sqrt(shape[1]), shape)    # logits of spread ~4
    if name == "gpu_0/pred_b_0":
        return np.zeros(shape)
    if len(shape) == 4:                               # convolution weights, He-normal
        fan_in = shape[1] * shape[2] * shape[3]
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    raise ValueError(f"no weight rule for {name} {shape}")


def load_onnx(seed: int = 0, batch: int = 1) -> onnx.ModelProto:
    """The ResNet-50 graph with weights drawn from ``numpy.random.default_rng(seed)``.

    Parameters
    ----------
    seed : int
    batch : int
        Images per inference (the input is ``(batch, 3, 224, 224)``).
    """
    if not SOURCE_PATH.is_file():
        raise FileNotFoundError(f"{SOURCE_PATH}: the onnx wheel's light ResNet-50 is missing")
    src = onnx.load(str(SOURCE_PATH))
    rng = np.random.default_rng(seed)
    inits = {i.name: numpy_helper.to_array(i) for i in src.graph.initializer}
    tensors: dict[str, np.ndarray] = {}
    nodes = []
    for node in src.graph.node:
        if node.op_type == "ConstantOfShape":
            shape = tuple(int(d) for d in inits[node.input[0]])
            tensors[node.output[0]] = _weights(node.output[0], shape, rng)
        else:
            nodes.append(node)
    used = {i for n in nodes for i in n.input}
    for name, value in inits.items():
        if name.endswith("__SHAPE") or name in tensors or name not in used:
            continue
        if value.dtype.kind == "f" and name != INPUT_NAME:
            tensors[name] = _weights(name, value.shape, rng)
        elif value.dtype.kind == "i" and value.tolist() == [1, 2048]:    # the Reshape's shape
            tensors[name] = np.array([batch, 2048], value.dtype)
        else:
            tensors[name] = value
    initializers = [numpy_helper.from_array(np.asarray(v, np.float32 if v.dtype.kind == "f"
                                                       else v.dtype), k)
                    for k, v in tensors.items() if k in used]
    x = helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, [batch, 3, 224, 224])
    outputs = list(src.graph.output)
    graph = helper.make_graph(nodes, "resnet50_synthetic", [x], outputs, initializers)
    model = helper.make_model(graph, opset_imports=list(src.opset_import),
                              producer_name="neuralmatrix.sw.models.resnet50")
    model.ir_version = 8             # initializers need not be graph inputs (IR >= 4)
    onnx.checker.check_model(model)
    return model


def sample_images(n: int = 4) -> np.ndarray:
    """*n* real 224x224 crops of scikit-learn's two sample photographs, ImageNet-normalized,
    float32 ``(n, 3, 224, 224)``: alternating photographs, crops stepping across each."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images          # two (427, 640, 3) uint8
    out = []
    for i in range(n):
        img = photos[i % len(photos)].astype(np.float32) / 255.0
        h, w, _ = img.shape
        side = min(h, w)
        step = (w - side) // max(1, (n + 1) // 2)
        x0 = min(w - side, (i // len(photos)) * step)
        crop = img[:side, x0:x0 + side]
        idx = (np.arange(224) * side / 224).astype(int)          # nearest-neighbour resize
        small = crop[idx][:, idx]
        out.append(((small - _MEAN) / _STD).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)
