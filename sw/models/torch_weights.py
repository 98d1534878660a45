"""Read a PyTorch state dict (``torch.save`` file) into numpy arrays, without torch.

Both of torch's on-disk formats are read:

* the zip format (torch >= 1.6): ``<root>/data.pkl`` plus one raw little-endian file per
  storage, ``<root>/data/<key>``;
* the legacy format (what ``efficientnet-lite0-57934424.pth`` is): five pickles back to back
  in one stream (magic number, protocol version, system info, the object itself, the list of
  storage keys), then every storage as an int64 element count and its raw bytes, in the
  order of that list.

The object pickle is read by a restricted unpickler that knows only what a state dict is
made of: ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` (and
``_rebuild_parameter``), the typed storage classes (``torch.FloatStorage`` and friends) and
storages by persistent id. Every other global (``os.system``, ``builtins.eval``, any class)
is refused with :class:`UnsafePickleError` before anything is called: a weights file is never
a way to run code.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["UnsafePickleError", "load_state_dict", "STORAGE_DTYPES"]

#: torch storage class name -> numpy dtype (little-endian).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"), "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"), "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"), "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks for a global that a state dict does not need (it is not loaded)."""


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return STORAGE_DTYPES[self.name]


class _Storage:
    """A storage referenced by the pickle; its data is filled in once read."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: np.ndarray | None = None


@dataclass
class _LazyTensor:
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple

    def materialize(self) -> np.ndarray:
        flat = self.storage.data
        if flat is None:
            raise pickle.UnpicklingError(f"storage {self.storage.key} was never read")
        if not self.size:
            return np.array(flat[self.offset])
        need = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
        if min(self.size) > 0 and need > flat.size:
            raise pickle.UnpicklingError(f"tensor of shape {self.size} runs past its storage "
                                         f"{self.storage.key} ({flat.size} elements)")
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size,
            strides=[s * flat.itemsize for s in self.stride], writeable=False)
        return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise UnsafePickleError("_rebuild_tensor_v2 called on something that is not a storage")
    return _LazyTensor(storage, int(storage_offset), tuple(int(n) for n in size),
                       tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafePickleError(f"refused to load global {module}.{name}: a state dict holds "
                                f"only tensors, storages and OrderedDicts")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"unknown persistent id {pid!r:.80}")
        stype, key, _location, numel = pid[1:5]
        if not isinstance(stype, _StorageType):
            raise UnsafePickleError(f"storage of an unknown type {stype!r:.80}")
        key = str(key)
        st = self._storages.get(key)
        if st is None:
            st = self._storages[key] = _Storage(key, stype.dtype, int(numel))
        view = pid[5] if len(pid) > 5 else None
        if view is not None:                     # legacy storage views: (key, offset, size)
            raise UnsafePickleError("storage views (torch < 0.4 files) are not supported")
        return st


def _materialize(obj):
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        out = type(obj)((k, _materialize(v)) for k, v in obj.items())
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


class _SafeLoader(pickle.Unpickler):
    """For the legacy header pickles: plain data only, no globals at all."""

    def find_class(self, module, name):
        raise UnsafePickleError(f"refused to load global {module}.{name} in a file header")


def _load_legacy(f) -> dict:
    magic = _SafeLoader(f).load()
    if magic != _LEGACY_MAGIC:
        raise pickle.UnpicklingError("not a torch.save file (wrong magic number)")
    _SafeLoader(f).load()                                  # protocol version
    sys_info = _SafeLoader(f).load()
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise pickle.UnpicklingError("big-endian torch files are not supported")
    storages: dict[str, _Storage] = {}
    obj = _StateDictUnpickler(f, storages).load()
    keys = _SafeLoader(f).load()
    for key in keys:
        st = storages[str(key)]
        (numel,) = struct.unpack("<q", f.read(8))
        raw = f.read(numel * st.dtype.itemsize)
        if len(raw) != numel * st.dtype.itemsize:
            raise pickle.UnpicklingError(f"storage {key}: file ends early")
        st.data = np.frombuffer(raw, dtype=st.dtype)
    return _materialize(obj)


def _load_zip(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise pickle.UnpicklingError(f"{path}: expected one data.pkl, found {len(pkl)}")
        root = pkl[0][:-len("data.pkl")]
        if f"{root}byteorder" in names and z.read(f"{root}byteorder").strip() != b"little":
            raise pickle.UnpicklingError("big-endian torch files are not supported")
        storages: dict[str, _Storage] = {}
        obj = _StateDictUnpickler(io.BytesIO(z.read(pkl[0])), storages).load()
        for key, st in storages.items():
            raw = z.read(f"{root}data/{key}")
            st.data = np.frombuffer(raw, dtype=st.dtype)[:st.numel]
    return _materialize(obj)


def load_state_dict(path) -> "collections.OrderedDict[str, np.ndarray]":
    """The tensors of a ``torch.save``'d state dict as numpy arrays, in file order.

    Raises :class:`UnsafePickleError` for any global a state dict does not need, and
    :class:`pickle.UnpicklingError` for a damaged or unknown file.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        obj = _load_zip(path)
    else:
        with open(path, "rb") as f:
            obj = _load_legacy(f)
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return collections.OrderedDict(obj)


if __name__ == "__main__":                               # pragma: no cover
    sd = load_state_dict(sys.argv[1])
    for k, v in sd.items():
        print(k, v.dtype, v.shape)
