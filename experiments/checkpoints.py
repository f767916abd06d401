"""Orbax checkpoints of the train state's arrays (the modules are rebuilt from the config)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


@contextlib.contextmanager
def uninterrupted():
  """Ctrl-C (SIGINT) held back until the block ends, then delivered as it would have been.

  A save is never cut in half: orbax starts its background writer inside
  ``save``, and an interrupt there could leave the writer running while the
  process exits (its half-made checkpoint and a traceback from its thread).
  Outside the main thread, where signals are not handled, the block runs as is.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received = []
  previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if received:
    if callable(previous):
      previous(signal.SIGINT, None)   # Python's own handler raises KeyboardInterrupt
    elif previous == signal.SIG_DFL:
      raise KeyboardInterrupt


def save(manager: ocp.CheckpointManager, step: int, state: HDMLTrainState) -> None:
  """Saves ``state`` as ``step`` (asynchronously; Ctrl-C waits until the save has started: :func:`uninterrupted`)."""
  with uninterrupted():
    manager.save(step, args=ocp.args.StandardSave(state_tree(state)), force=True)


def _param_dicts(tree, keys: frozenset, fn):
  """``tree`` with ``fn`` applied to every dict keyed like the parameters (the optimizer's moments)."""
  if isinstance(tree, dict):
    tree = {k: _param_dicts(v, keys, fn) for k, v in tree.items()}
    return fn(tree) if frozenset(tree) == keys else tree
  if isinstance(tree, tuple) and hasattr(tree, "_fields"):
    return type(tree)(*(_param_dicts(v, keys, fn) for v in tree))
  if isinstance(tree, (tuple, list)):
    return type(tree)(_param_dicts(v, keys, fn) for v in tree)
  return tree


def _with_empty_loss_group(template: HDMLTrainState) -> HDMLTrainState:
  """``template`` as a run of a label-based loss saved it before 2026-12-07: an empty ``params["loss"]`` in the
  parameters and in every optimizer moment, with its own Adam (which held a step count and nothing else)."""
  params = {**template.params, "loss": {}}
  labels = {k: jax.tree_util.tree_map(lambda _, k=k: "loss" if k == "loss" else "rest", v) for k, v in params.items()}
  group = optax.multi_transform({"rest": optax.identity(), "loss": optax.adam(optax.constant_schedule(0.0))},
                                labels).init(params).inner_states["loss"]
  opt = _param_dicts(template.opt_state, frozenset(template.params), lambda d: {**d, "loss": {}})
  return template.replace(params=params, opt_state=opt._replace(inner_states={**opt.inner_states, "loss": group}))


def _without_loss_group(tree: dict, keys: frozenset) -> dict:
  """A state tree read by :func:`_with_empty_loss_group`'s template, with the empty group dropped again."""
  tree["params"] = {k: v for k, v in tree["params"].items() if k != "loss"}
  opt = tree["opt_state"]
  opt = opt._replace(inner_states={k: v for k, v in opt.inner_states.items() if k != "loss"})
  tree["opt_state"] = _param_dicts(opt, keys | {"loss"}, lambda d: {k: v for k, v in d.items() if k != "loss"})
  return tree


def restore(manager: ocp.CheckpointManager, template: HDMLTrainState, step: int | None = None):
  """Restores into ``template`` (same config); ``step`` defaults to the latest.

  A checkpoint of a label-based loss written before 2026-12-07 holds an
  empty ``params["loss"]`` group that today's state leaves out: it is read
  with that group and the group dropped (it trained nothing).
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}.")

  def read(t):
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state_tree(t))
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))

  try:
    tree = read(template)
  except ValueError as e:
    if "loss" in template.params or not hasattr(template.opt_state, "inner_states"):
      raise
    try:
      tree = _without_loss_group(read(_with_empty_loss_group(template)), frozenset(template.params))
    except Exception:
      raise e from None
  return template.replace(**tree)


class DamagedCheckpointError(ValueError):
  """A checkpoint's files cannot be read back (a full disk, a killed copy, a damaged file)."""


def _first_line(e: BaseException, limit: int = 200) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:limit] if text else type(e).__name__


def _root_cause(e: BaseException) -> str:
  """The first line of the innermost cause (TensorStore's own words: which array, which file)."""
  while e.__cause__ is not None:
    e = e.__cause__
  return _first_line(e, limit=320)


def _shapes(tree) -> list:
  """The arrays' shapes, sorted (a scalar saved as a Python number has shape ``()``)."""
  return sorted(tuple(getattr(x, "shape", ())) for x in jax.tree_util.tree_leaves(tree))


def mismatch(manager: ocp.CheckpointManager, template: HDMLTrainState, step: int) -> str | None:
  """How checkpoint ``step`` differs from ``template``'s arrays, from its metadata alone.

  ``None`` when its arrays have the template's shapes; raises
  :class:`DamagedCheckpointError` when its metadata cannot be read.
  """
  item = os.path.join(str(manager.directory), str(step), "default")
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)   # orbax warns of every step-level file an item directory lacks
  try:
    saved = ocp.StandardCheckpointer().metadata(item).item_metadata
    if saved is None:   # orbax's answer when the metadata file does not parse
      raise ValueError(f"no array metadata could be parsed from {item}")
    saved = _shapes(saved)
  except Exception as e:   # any unreadable metadata: a missing, truncated or overwritten file
    raise DamagedCheckpointError(f"checkpoint {step} in {manager.directory} cannot be read: its metadata "
                                 f"is damaged ({_root_cause(e)}).") from e
  finally:
    absl_logger.setLevel(level)
  wanted = _shapes(state_tree(template))
  if saved == wanted:
    return None
  extra = sorted(set(saved) - set(wanted))[:3]
  missing = sorted(set(wanted) - set(saved))[:3]
  return (f"{len(saved)} arrays saved against {len(wanted)} in this config; shapes only in the checkpoint "
          f"{extra}, only in this config {missing}")


def _drop_orbax_read_echoes(previous):
  """After a failed read, orbax leaves one pending coroutine per array whose error Python prints when it is
  collected ("Exception ignored in ..."), often at exit: the same failure as the one raised and reported.
  They are logged at DEBUG level instead; every other unraisable exception goes to ``previous``."""
  def hook(unraisable):
    closed = (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
              and str(unraisable.exc_value) == "Event loop is closed")   # its reader threads, after the failure
    if closed or "_read_array_index_and_device_put" in repr(unraisable.object):
      logging.debug("orbax read: %s", unraisable.exc_value)
    else:
      previous(unraisable)

  hook.drops_orbax_read_echoes = True
  return hook


def _not_an_orbax_read_echo(record) -> bool:
  """asyncio's "exception was never retrieved" for an orbax read task: the failure already raised."""
  if "never retrieved" not in str(record.msg) or not record.exc_info or record.exc_info[2] is None:
    return True
  tb = record.exc_info[2]
  while tb is not None:
    if "orbax" in tb.tb_frame.f_code.co_filename:
      return False
    tb = tb.tb_next
  return True


if not getattr(sys.unraisablehook, "drops_orbax_read_echoes", False):
  sys.unraisablehook = _drop_orbax_read_echoes(sys.unraisablehook)
  logging.getLogger("asyncio").addFilter(_not_an_orbax_read_echo)
  warnings.filterwarnings("ignore", message="coroutine '_read_array_index_and_device_put' was never awaited",
                          category=RuntimeWarning)


def restore_readable(manager: ocp.CheckpointManager, template: HDMLTrainState, step: int) -> HDMLTrainState:
  """Restores ``step``, telling a damaged checkpoint from one of another model.

  Raises :class:`DamagedCheckpointError` when the checkpoint's arrays have
  this config's shapes (or its metadata is unreadable) but its files cannot
  be read, and ``ValueError`` naming the mismatch when it holds another
  model's arrays.
  """
  try:
    return restore(manager, template, step)
  except Exception as e:
    try:
      why = mismatch(manager, template, step)
    except DamagedCheckpointError as damaged:
      raise damaged from e
    if why is None:
      raise DamagedCheckpointError(f"checkpoint {step} in {manager.directory} cannot be read: its arrays are "
                                   f"damaged ({_root_cause(e)}).") from e
    raise ValueError(
        f"{manager.directory} holds checkpoints of a different model (another embedding or hidden "
        f"size, backbone or hdml.enabled): step {step} does not fit this config ({_first_line(e)}). "
        "Use a fresh --workdir for this config.") from e


def set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves damaged checkpoint ``step`` out of the manager's directory (nothing is deleted); returns where."""
  directory = str(manager.directory)
  base = os.path.join(os.path.dirname(directory), f"{os.path.basename(directory)}_damaged", str(step))
  target, suffix = base, 0
  while os.path.exists(target):
    suffix += 1
    target = f"{base}.{suffix}"
  os.makedirs(os.path.dirname(target), exist_ok=True)
  if jax.process_index() == 0:
    os.replace(os.path.join(directory, str(step)), target)
  manager.reload()
  return target


def restore_newest_readable(manager: ocp.CheckpointManager, template: HDMLTrainState) -> HDMLTrainState:
  """The newest checkpoint that reads back; each damaged newer one is named in a warning.

  Raises :class:`DamagedCheckpointError` when none does, ``FileNotFoundError``
  when there is none.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}.")
  damaged = []
  for step in steps:
    try:
      state = restore_readable(manager, template, step)
    except DamagedCheckpointError as e:
      logging.warning("%s", e)
      damaged.append(step)
      continue
    if damaged:
      logging.warning("using checkpoint %d in %s instead of the damaged %s", step, manager.directory, damaged)
    return state
  raise DamagedCheckpointError(f"every checkpoint in {manager.directory} is damaged (steps {damaged}); "
                               "nothing can be read back.")


def restore_latest_finite(manager: ocp.CheckpointManager, template: HDMLTrainState):
  """The newest checkpoint that reads back and whose state is entirely finite, and the steps skipped.

  Checkpoints newer than it hold a NaN or an infinity (written by a version
  that checked only the loss): they are deleted, so the resumed run can
  write those steps again, and returned as ``[(step, leaves), ...]``.
  A damaged newer checkpoint (files that no longer read back) is named in
  a warning and moved to ``<checkpoints>_damaged/<step>`` (nothing is
  deleted), so the run resumes from the newest readable one and writes
  that step again.
  Returns ``(None, skipped)`` when the manager holds no checkpoint; raises
  when none can be resumed (each damaged or non-finite), touching nothing.
  """
  skipped, damaged = [], []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state = restore_readable(manager, template, step)
    except DamagedCheckpointError as e:
      damaged.append((step, e))
      continue
    bad = non_finite_leaves(state)
    if not bad:
      for s, e in damaged:
        logging.warning("%s Moved to %s; resuming from an earlier checkpoint.", e, set_aside(manager, s))
      for s, _ in skipped:
        manager.delete(s)
      return state, skipped
    skipped.append((step, bad))
  if damaged:
    raise DamagedCheckpointError(
        f"no checkpoint in {manager.directory} can be resumed: steps {[s for s, _ in damaged]} are damaged"
        + (f" and steps {[s for s, _ in skipped]} hold non-finite values" if skipped else "")
        + f" (e.g. {damaged[0][1]}). Start again with a fresh --workdir.")
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
