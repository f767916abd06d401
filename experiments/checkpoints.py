"""Orbax checkpoints of the train state's arrays (the modules are rebuilt from the config)."""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from hdml_jax.train_state import HDMLTrainState

_FIELDS = ("params", "batch_stats", "opt_state", "stats", "step")


def state_tree(state: HDMLTrainState) -> dict:
  return {k: getattr(state, k) for k in _FIELDS}


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


def write_json_atomic(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=_jsonable)
  os.replace(tmp, path)


def _jsonable(x):
  try:
    return x.item()
  except AttributeError:
    return str(x)
