"""Train the digits CNN and export it to ONNX.

Run as::

    python -m neuralmatrix.sw.models.train_digits [--epochs N] [--seed S] [-o PATH]

Needs PyTorch (CPU) besides numpy, onnx and scikit-learn; the rest of
NeuralMatrix does not. Training is deterministic given the seed (single
thread, deterministic algorithms, seeded shuffling). The exported model is
checked before it is written: its op types must be a subset of
:data:`ALLOWED_OPS` (with a BatchNormalization node kept in the graph), and
its outputs, computed with :class:`onnx.reference.ReferenceEvaluator`, must
match PyTorch's on the test split to within :data:`MAX_ABS_DIFF`.

Architecture (about 10k parameters)::

    Conv(1->8, 3x3, pad 1) -> BatchNorm -> ReLU
    -> Conv(8->16, 3x3, pad 1) -> ReLU -> MaxPool 2x2
    -> Flatten -> Gemm(256->32) -> ReLU -> Gemm(32->10)   (logits)
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator
from torch import nn

from neuralmatrix.sw.models.digits import MODEL_PATH, load_split

__all__ = [
    "ALLOWED_OPS",
    "MAX_ABS_DIFF",
    "OPSET",
    "DigitsCNN",
    "train",
    "accuracy",
    "export_onnx",
    "main",
]

#: The only ONNX op types the exported graph may contain.
ALLOWED_OPS: frozenset[str] = frozenset(
    {"Conv", "BatchNormalization", "Relu", "MaxPool", "Flatten", "Gemm"}
)
#: Largest tolerated |ONNX - torch| difference of any logit on the test split.
MAX_ABS_DIFF: float = 1e-4
#: ONNX opset of the exported model.
OPSET: int = 17


class DigitsCNN(nn.Module):
    """The small CNN for 8x8 digits: ``(N, 1, 8, 8)`` -> ``(N, 10)`` logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits for a batch of ``(N, 1, 8, 8)`` images."""
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        return self.fc2(x)


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of `model` (put in eval mode) on `images`/`labels`.

    Parameters
    ----------
    model : nn.Module
        The network to evaluate.
    images : np.ndarray
        float32 ``(N, 1, 8, 8)`` inputs.
    labels : np.ndarray
        int64 ``(N,)`` targets.

    Returns
    -------
    float
        Fraction classified correctly.
    """
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    return float(np.mean(pred == labels))


def train(epochs: int = 60, seed: int = 0, batch_size: int = 32, lr: float = 3e-3) -> DigitsCNN:
    """Train a :class:`DigitsCNN` on the train split, deterministically.

    Parameters
    ----------
    epochs : int, optional
        Passes over the training split.
    seed : int, optional
        Seed for the initial weights and the shuffling.
    batch_size : int, optional
        Mini-batch size.
    lr : float, optional
        Peak Adam learning rate (cosine-annealed to zero).

    Returns
    -------
    DigitsCNN
        The trained model, in eval mode.
    """
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    images, labels = load_split("train")
    x = torch.from_numpy(images)
    y = torch.from_numpy(labels)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        scheduler.step()
        if (epoch + 1) % 10 == 0 or epoch == epochs - 1:
            print(f"epoch {epoch + 1:3d}/{epochs}: loss {total / len(x):.4f}")
    model.eval()
    return model


def export_onnx(model: DigitsCNN) -> onnx.ModelProto:
    """Export `model` (in eval mode) to an opset-17 ONNX model and check it.

    The legacy TorchScript exporter is used with ``TrainingMode.PRESERVE`` on
    the eval-mode model, so batch norm stays a ``BatchNormalization`` node
    (inference form) instead of being folded into the preceding Conv. The
    batch dimension of input ``"input"`` and output ``"logits"`` is dynamic.

    Parameters
    ----------
    model : DigitsCNN
        The trained network.

    Returns
    -------
    onnx.ModelProto
        The checked model.

    Raises
    ------
    RuntimeError
        If the graph has an op outside :data:`ALLOWED_OPS`, lacks a
        ``BatchNormalization`` node, or its outputs differ from PyTorch's on
        the test split by more than :data:`MAX_ABS_DIFF`.
    """
    model.eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        buffer,
        dynamo=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
    )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.doc_string = "8x8 digits CNN; input pixel/16.0, (batch,1,8,8) -> (batch,10) logits"
    onnx.checker.check_model(proto, full_check=True)

    op_types = [node.op_type for node in proto.graph.node]
    print(f"ONNX opset {proto.opset_import[0].version}, ops: {op_types}")
    unexpected = set(op_types) - ALLOWED_OPS
    if unexpected:
        raise RuntimeError(f"exported graph has disallowed op types {sorted(unexpected)}")
    if "BatchNormalization" not in op_types:
        raise RuntimeError("exported graph lost its BatchNormalization node")

    images, _ = load_split("test")
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    (got,) = ReferenceEvaluator(proto).run(None, {"input": images})
    diff = float(np.max(np.abs(got - expected)))
    print(f"max |onnx - torch| on the test split: {diff:.3e}")
    if not diff <= MAX_ABS_DIFF:
        raise RuntimeError(f"ONNX output differs from torch by {diff:.3e} > {MAX_ABS_DIFF:g}")
    return proto


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: train, report accuracies, export, write.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status (0 on success; failures raise).
    """
    parser = argparse.ArgumentParser(
        prog="python -m neuralmatrix.sw.models.train_digits",
        description="Train the 8x8 digits CNN and export it to ONNX.",
    )
    parser.add_argument("--epochs", type=int, default=60, help="training epochs (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "-o", "--output", type=Path, default=MODEL_PATH, help=f"ONNX file to write (default {MODEL_PATH})"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be positive, got {args.epochs}")

    model = train(epochs=args.epochs, seed=args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params}")
    for split in ("train", "test"):
        print(f"{split} accuracy (torch): {accuracy(model, *load_split(split)):.4f}")
    proto = export_onnx(model)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(args.output))
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
