"""The 8x8 digits data set and the small CNN trained on it.

The model, ``digits_cnn.onnx`` (next to this file), is a small CNN trained by
:mod:`neuralmatrix.sw.models.train_digits` on scikit-learn's ``load_digits()``
data set (1797 grey-scale 8x8 images of the digits 0-9, pixel values 0..16).

Model interface
---------------
* input ``"input"``: float32 of shape ``(batch, 1, 8, 8)``, the batch dimension
  is dynamic. Pixels are normalized as ``pixel / 16.0``, so they lie in
  ``[0, 1]`` (:func:`load_split` returns them in exactly this form).
* output ``"logits"``: float32 of shape ``(batch, 10)``, raw class scores
  (no softmax); the predicted digit is the arg-max.
* opset 17; only the ops Conv, BatchNormalization, Relu, MaxPool, Flatten and
  Gemm occur.

Only numpy, onnx and scikit-learn are needed here (not PyTorch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["MODEL_PATH", "load_split", "float_accuracy"]

#: The committed ONNX model, shipped as package data next to this module.
MODEL_PATH: Path = Path(__file__).parent / "digits_cnn.onnx"

_SPLITS = ("train", "test")
_TEST_SIZE = 0.25
_RANDOM_STATE = 0
_PIXEL_SCALE = 16.0


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return one split of the scikit-learn 8x8 digits data set.

    The split is fixed and deterministic: ``train_test_split`` with
    ``test_size=0.25``, ``random_state=0`` and stratified by label, giving
    1347 training and 450 test samples.

    Parameters
    ----------
    split : str
        ``"train"`` or ``"test"``.

    Returns
    -------
    images : np.ndarray
        float32 array of shape ``(N, 1, 8, 8)``, pixels normalized as
        ``pixel / 16.0`` (range ``[0, 1]``), as the model expects.
    labels : np.ndarray
        int64 array of shape ``(N,)`` with the digits 0-9.

    Raises
    ------
    ValueError
        If `split` is not ``"train"`` or ``"test"``.
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {_SPLITS}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / _PIXEL_SCALE).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images,
        labels,
        test_size=_TEST_SIZE,
        random_state=_RANDOM_STATE,
        stratify=labels,
    )
    if split == "train":
        return np.ascontiguousarray(x_train), np.ascontiguousarray(y_train)
    return np.ascontiguousarray(x_test), np.ascontiguousarray(y_test)


def float_accuracy(model_path: str | Path = MODEL_PATH, batch_size: int = 150) -> float:
    """Top-1 accuracy of an ONNX model on the test split, in float.

    The model is run with :class:`onnx.reference.ReferenceEvaluator` (pure
    numpy, no onnxruntime), `batch_size` images at a time.

    Parameters
    ----------
    model_path : str or Path, optional
        The ONNX model to evaluate; default :data:`MODEL_PATH`. It must take
        one ``(batch, 1, 8, 8)`` float32 input and return ``(batch, 10)``
        logits as its first output.
    batch_size : int, optional
        Images per evaluator call; must be positive.

    Returns
    -------
    float
        Fraction of the test split classified correctly, in ``[0, 1]``.

    Raises
    ------
    ValueError
        If `batch_size` is not positive.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(model_path))
    evaluator = ReferenceEvaluator(model)
    input_name = model.graph.input[0].name
    images, labels = load_split("test")
    correct = 0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        (logits, *_) = evaluator.run(None, {input_name: batch})
        correct += int(np.sum(np.argmax(logits, axis=1) == labels[start : start + batch_size]))
    return correct / len(images)
