"""The golden model's cycle estimate against the RTL cycle counters, per layer.

The digits CNN (5 images per inference, as in ``tests/test_network_rtl.py``) on the RTL:
every layer's estimate (its kernels summed) within 5% of the cycles the RTL counted.
``CYCLE_COSTS`` in ``sw/golden.py`` were fitted to such runs (digits at 8x8 and 16x16 in
both dataflows, and GEMMs from 8x8x8 to 64x256x64).
"""

from __future__ import annotations

import pytest

from neuralmatrix.hw.params import HwConfig
from neuralmatrix.sim.network import run_network_rtl
from neuralmatrix.sw.compiler import builtin, compile_model
from neuralmatrix.sw.ir import Kernel
from neuralmatrix.sw.models.digits import load_split

MAX_LAYER_ERROR = 0.05


@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_estimate_within_5_percent_per_layer(dataflow):
    cfg = HwConfig(dataflow=dataflow)
    src, _, _ = builtin("digits")
    x, _ = load_split("train")
    calib = [{"input": x[i:i + 5]} for i in range(0, 100, 5)]
    compiled = compile_model(src, cfg, calib_feeds=calib,
                             input_shapes={"input": (5, 1, 8, 8)}).compiled
    xt, _ = load_split("test")
    run = run_network_rtl(compiled, [{"input": xt[5:10]}])[0]
    layers: dict[str, list[int]] = {}
    kernels = [s for s in compiled.steps if isinstance(s, Kernel)]
    for s, k in zip(kernels, run.kernels):
        total = layers.setdefault(s.origin or s.name, [0, 0])
        total[0] += k.counters["cycles"]
        total[1] += k.est_cycles
    errors = {name: (est - rtl) / rtl for name, (rtl, est) in layers.items()}
    assert len(errors) >= 5
    bad = {n: f"{100 * e:+.1f}%" for n, e in errors.items() if abs(e) > MAX_LAYER_ERROR}
    assert not bad, bad
