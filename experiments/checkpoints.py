"""Orbax checkpoints of the train state's arrays (the modules are rebuilt from the config)."""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from hdml_jax.train_state import HDMLTrainState

_FIELDS = ("params", "batch_stats", "opt_state", "stats", "memory", "step")


def state_tree(state: HDMLTrainState) -> dict:
  """The checkpointed arrays; fields a state does not have (or holds as None) are left out."""
  return {k: getattr(state, k) for k in _FIELDS if getattr(state, k, None) is not None}


@jax.jit
def _leaf_finite(tree):
  return jax.tree_util.tree_map(
      lambda x: jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True),
      tree)


def non_finite_leaves(state) -> list[str]:
  """Paths of the checkpointed arrays (parameters, BatchNorm statistics,
  optimizer moments, adaptive statistics) that hold a NaN or an infinity.

  Empty when the whole state is finite; one device-to-host transfer.
  """
  tree = state_tree(state)
  flags = jax.device_get(jax.tree_util.tree_map(
      lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, _leaf_finite(tree)))
  return [jax.tree_util.keystr(path) for path, ok in jax.tree_util.tree_leaves_with_path(flags)
          if not bool(np.asarray(ok))]


def make_manager(directory: str, *, max_to_keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def save(manager: ocp.CheckpointManager, step: int, state: HDMLTrainState) -> None:
  manager.save(step, args=ocp.args.StandardSave(state_tree(state)), force=True)


def restore(manager: ocp.CheckpointManager, template: HDMLTrainState, step: int | None = None):
  """Restores into ``template`` (same config); ``step`` defaults to the latest."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}.")
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state_tree(template))
  tree = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  return template.replace(**tree)


def restore_latest_finite(manager: ocp.CheckpointManager, template: HDMLTrainState):
  """The newest checkpoint whose state is entirely finite, and the steps skipped.

  Checkpoints newer than it hold a NaN or an infinity (written by a version
  that checked only the loss): they are deleted, so the resumed run can
  write those steps again, and returned as ``[(step, leaves), ...]``.
  Returns ``(None, skipped)`` when the manager holds no checkpoint; raises
  when every checkpoint is non-finite.
  """
  skipped = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state = restore(manager, template, step)
    except (ValueError, KeyError, TypeError) as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise ValueError(
          f"{manager.directory} holds checkpoints of a different model (another embedding or hidden "
          f"size, backbone or hdml.enabled): step {step} does not fit this config ({first[:200]}). "
          "Use a fresh --workdir for this config.") from e
    bad = non_finite_leaves(state)
    if not bad:
      for s, _ in skipped:
        manager.delete(s)
      return state, skipped
    skipped.append((step, bad))
  if skipped:
    raise FloatingPointError(
        f"every checkpoint in {manager.directory} holds non-finite values "
        f"(steps {[s for s, _ in skipped]}; e.g. {skipped[0][1][:3]}): nothing finite to resume. "
        "Start again with a fresh --workdir (and a smaller learning rate).")
  return None, skipped


def json_safe(obj):
  """``obj`` with NaN and infinities as ``None`` (JSON ``null``: the metric is undefined)."""
  if isinstance(obj, dict):
    return {k: json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_safe(v) for v in obj]
  if hasattr(obj, "item") and np.ndim(obj) == 0:
    obj = obj.item()
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


def write_json_atomic(path: str, obj) -> None:
  """Strict JSON (non-finite numbers written as ``null``), written to a temporary name and renamed."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(json_safe(obj), f, indent=2, default=_jsonable, allow_nan=False)
  os.replace(tmp, path)


def _jsonable(x):
  try:
    return x.item()
  except AttributeError:
    return str(x)
