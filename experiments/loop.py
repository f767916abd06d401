"""The training loop: steps, logs, periodic evaluation and checkpoints, never a non-finite state saved."""

from __future__ import annotations

import time

import jax
import numpy as np

from experiments import checkpoints, logs
from experiments.runtime import local_copy

__all__ = ["NonFiniteLossError", "NonFiniteStateError", "run_loop"]

# Steps dispatched ahead of the device: enough to overlap the host's batch
# preparation with the device's compute, few enough to bound queued batches.
_MAX_STEPS_IN_FLIGHT = 2

class NonFiniteLossError(FloatingPointError):
  """A loss stopped being finite; the last finite checkpoint is kept."""

class NonFiniteStateError(NonFiniteLossError):
  """An update made the train state non-finite; it is never checkpointed."""

def _copy(tree):
  return jax.tree_util.tree_map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)

def run_loop(cfg, workdir: str, state, step_fn, batches, key, *, ckpt, last_finite, writer,
             on_eval=None, step_hook=None, is_main=True):
  """Steps ``state.step .. cfg.num_steps``; logs, evaluates and checkpoints; returns the state.

  ``step_fn(state, batch, key) -> (state, metrics)`` (metrics with ``loss``
  and ``finite``); ``batches`` yields the step's batch on the mesh;
  ``on_eval(step_done, state)`` runs at every evaluation step.

  Steps are dispatched asynchronously and their metrics fetched in blocks
  (at each log line, evaluation or checkpoint, or every step when a
  ``step_hook`` is set), so the host prepares the next batches while the
  device computes. What is checkpointed is safe to resume from: the state of
  step ``s`` is written only once the loss computed *on it* (step ``s``'s
  own loss) is known to be finite, and only if every array it holds is
  finite; the final state, which no later loss checks, must be entirely
  finite. A divergence raises :class:`NonFiniteLossError` naming the step
  and the last checkpoint written.
  """
  start = int(state.step)
  progress = logs.Progress(start, cfg.num_steps, enabled=is_main)
  window = []       # host metrics since the last log line; logged as means
  pending = []      # (step, device metrics) dispatched but not yet fetched
  held = None       # (step, copy of the state) to checkpoint once its own loss is seen finite

  def last_finite_text() -> str:
    if last_finite is None:
      return f"No checkpoint had been written yet in {workdir}/checkpoints."
    return f"The last finite checkpoint (step {last_finite}) is kept in {workdir}/checkpoints."

  def check_finite(step_done: int, st):
    bad = checkpoints.non_finite_leaves(st)
    if bad:
      raise NonFiniteStateError(
          f"the train state after step {step_done} holds non-finite values ({', '.join(bad[:4])}"
          f"{', ...' if len(bad) > 4 else ''}): the update at step {step_done - 1} diverged and was not "
          f"checkpointed. {last_finite_text()}")

  def save(step_done: int, st):
    nonlocal last_finite
    check_finite(step_done, st)
    checkpoints.save(ckpt, step_done, st)
    writer.flush()   # the log holds every row up to the checkpoint (a resume drops later ones)
    last_finite = step_done

  def fetch_pending():
    fetched = local_copy([m for _, m in pending])
    for (step, _), values in zip(pending, fetched):
      host = {k: float(v) for k, v in values.items()}
      if not host["finite"]:
        raise NonFiniteLossError(
            f"a loss is not finite at step {step} (the step that would make step {step + 1}): "
            f"{ {k: v for k, v in host.items() if k.startswith('j_') or k == 'loss'} }. "
            f"{last_finite_text()}")
      window.append(host)
      if step_hook is not None:
        step_hook(step, host)
    pending.clear()

  window_start = (start, time.perf_counter())
  try:
    for step in range(start, cfg.num_steps):
      state, metrics = step_fn(state, next(batches), key)
      done = step + 1
      pending.append((step, metrics))
      if len(pending) > _MAX_STEPS_IN_FLIGHT:   # bounds the batches queued on the device
        jax.block_until_ready(pending[-1 - _MAX_STEPS_IN_FLIGHT][1])
      log_now = done % cfg.log_every == 0 or done == cfg.num_steps
      eval_now = done % cfg.eval_every == 0 or done == cfg.num_steps
      save_now = done % cfg.checkpoint_every == 0 or done == cfg.num_steps
      if step_hook is not None or log_now or eval_now or save_now or held is not None:
        fetch_pending()
      if held is not None:     # step `held[0]`'s own loss was finite: its state may be kept
        save(*held)
        held = None
      if log_now:
        means = {f"train/{k}": float(np.mean([h[k] for h in window])) for k in window[0]}
        now = time.perf_counter()
        steps_per_s = (done - window_start[0]) / (now - window_start[1])
        means["perf/steps_per_second"] = steps_per_s
        means["perf/images_per_second"] = steps_per_s * cfg.batch_size
        window_start = (done, now)
        writer.write(done, means)
        progress.update(done, means["train/loss"])
        window = []
      if eval_now and on_eval is not None:
        check_finite(done, state)    # nothing non-finite is evaluated or selected
        on_eval(done, state)
      if save_now:
        if done == cfg.num_steps:
          save(done, state)
        else:
          held = (done, _copy(state))   # the state is donated to the next step
      if eval_now or save_now:
        window_start = (done, time.perf_counter())   # throughput counts training alone
  finally:
    batches.close()
    progress.close()
    ckpt.wait_until_finished()
    writer.flush()
  return state
