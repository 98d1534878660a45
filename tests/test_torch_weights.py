"""The torch state-dict reader (no torch): the EfficientNet-Lite0 file, the zip format, and
refusal of every global a state dict does not need."""

from __future__ import annotations

import io
import os
import pickle
import sys
import types
import zipfile

import numpy as np
import pytest

from neuralmatrix.sw.models import efficientnet_lite0 as eff
from neuralmatrix.sw.models.torch_weights import UnsafePickleError, load_state_dict

MAGIC = 0x1950A86A20F9469CFC6C


def _legacy_file(path, payload: bytes):
    with open(path, "wb") as f:
        for obj in (MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(payload)
        pickle.dump([], f, protocol=2)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_efficientnet_lite0_file():
    sd = load_state_dict(eff.weights_path())
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert sd["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert sd["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert sd["_fc.weight"].shape == (1000, 1280) and sd["_fc.bias"].shape == (1000,)
    assert sd["_bn0.num_batches_tracked"].dtype == np.int64
    floats = [v for v in sd.values() if v.dtype == np.float32]
    assert len(floats) == 296 - 49                         # 49 BatchNorms' int64 counters
    assert sum(v.size for v in floats) == 4_694_024
    assert all(np.all(np.isfinite(v)) for v in floats)
    assert np.all(sd["_bn1.running_var"] > 0)


def test_refuses_os_system_legacy(tmp_path):
    p = tmp_path / "evil.pth"
    _legacy_file(p, pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(UnsafePickleError, match=r"os\.system|posix\.system"):
        load_state_dict(p)


def test_refuses_builtins_eval_zip(tmp_path):
    p = tmp_path / "evil.pt"
    payload = b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1q\x00\x85R."
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("archive/data.pkl", payload)
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        load_state_dict(p)


def test_refuses_globals_in_header(tmp_path):
    p = tmp_path / "evil_header.pth"
    p.write_bytes(pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(UnsafePickleError):
        load_state_dict(p)


def test_zip_format_roundtrip(tmp_path, monkeypatch):
    """A zip-format state dict as torch writes it (persistent storage ids, _rebuild_tensor_v2
    with strides and an offset), produced here with stand-in torch globals."""
    torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):                           # pragma: no cover (never called)
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    FloatStorage = type("FloatStorage", (), {"__module__": "torch"})
    torch_mod.FloatStorage, torch_mod._utils = FloatStorage, utils_mod
    monkeypatch.setitem(sys.modules, "torch", torch_mod)
    monkeypatch.setitem(sys.modules, "torch._utils", utils_mod)

    class _Ref:
        def __init__(self, key, numel):
            self.key, self.numel = key, numel

    class _T:
        def __init__(self, st, offset, size, stride):
            self.args = (st, offset, size, stride, False, __import__("collections").OrderedDict())

        def __reduce__(self):
            return (_rebuild_tensor_v2, self.args)

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Ref):
                return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
            return None

    data = np.arange(12, dtype="<f4")
    st = _Ref("0", 12)
    import collections
    obj = collections.OrderedDict([("w", _T(st, 0, (3, 4), (4, 1))),
                                   ("wt", _T(st, 0, (4, 3), (1, 4))),
                                   ("b", _T(st, 2, (5,), (2,)))])
    buf = io.BytesIO()
    P(buf, protocol=2).dump(obj)
    p = tmp_path / "sd.pt"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", data.tobytes())
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.delitem(sys.modules, "torch._utils")
    sd = load_state_dict(p)
    assert list(sd) == ["w", "wt", "b"]
    np.testing.assert_array_equal(sd["w"], data.reshape(3, 4))
    np.testing.assert_array_equal(sd["wt"], data.reshape(3, 4).T)
    np.testing.assert_array_equal(sd["b"], data[2::2][:5])


def test_legacy_storage_truncated(tmp_path):
    good = eff.weights_path().read_bytes()
    p = tmp_path / "cut.pth"
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(pickle.UnpicklingError):
        load_state_dict(p)
