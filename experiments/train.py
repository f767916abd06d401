"""Training and evaluation of one run: ``train_and_evaluate(config, workdir) -> results``.

Data order and random streams are pure functions of ``(seed, step)`` and the
whole train state is checkpointed, so a run killed at any point resumes from
its last checkpoint and reaches the same parameters as an uninterrupted run.
The pieces live in their own modules: the set-up in
:mod:`experiments.runtime`, the loop in :mod:`experiments.loop`, the model
selection in :mod:`experiments.selection`, the config checks in
:mod:`experiments.run_config`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

import jax
import ml_collections
import numpy as np

from experiments import checkpoints, loop, runtime, selection
from hdml_jax import evaluation
from hdml_jax.train_step import make_train_step

__all__ = ["train_and_evaluate"]


def train_and_evaluate(
    cfg: ml_collections.ConfigDict,
    workdir: str,
    *,
    step_hook: Callable[[int, dict], None] | None = None,
) -> dict:
  """Trains, checkpoints, selects, evaluates; writes ``results.json`` and plots.

  Args:
    cfg: a config from ``experiments/configs``.
    workdir: checkpoints, metrics, results and plots go here; an existing
      checkpoint there is resumed.
    step_hook: called as ``step_hook(step, metrics)`` after each step (for
      tests and callers that monitor the run).

  Returns:
    The ``results.json`` content.
  """
  t_start = time.time()
  selected = None

  def open_selection(_):
    nonlocal selected
    if cfg.selection.split != "none":
      selected = selection.BestCheckpoint(workdir, selection.selection_name(cfg), is_main=jax.process_index() == 0)

  run = runtime.prepare_run(cfg, workdir, make_template=runtime.build_state,
                            make_step=lambda state: make_train_step(
                                state.networks, state.config, hyper=cfg.loss.kwargs.to_dict(),
                                xbm_start=cfg.loss.xbm_start, xbm_weight=cfg.loss.xbm_weight),
                            before_resume=open_selection)
  data, writer = run.data, run.writer
  pretrained = None
  if cfg.model.pretrained:   # the file both arms of a comparison must share
    path = os.path.abspath(runtime.pretrained_path(cfg.model.pretrained))
    pretrained = {"path": path, "sha256": runtime.file_sha256(path)}
  evals = selection.Evaluations(cfg, data, run.mesh)   # each (step, split) embedded once, over the mesh

  def maybe_select(step_done: int, state):
    if cfg.eval.test_curves:   # learning curves only: never read by the selection below
      curve = evals.metrics(step_done, state, "test", clustering=False)
      writer.write(step_done, {f"test/{k}": v for k, v in curve.items()})
    if cfg.selection.split == "none":
      return
    clustering = cfg.selection.metric in ("nmi", "f1")
    metrics = evals.metrics(step_done, state, cfg.selection.split, clustering=clustering)
    writer.write(step_done, {f"{cfg.selection.split}/{k}": v for k, v in metrics.items()})
    selected.offer(step_done, metrics[cfg.selection.metric], state)

  state = loop.run_loop(cfg, workdir, run.state, run.step_fn, run.batches, run.key, ckpt=run.ckpt,
                        last_finite=run.last_finite, writer=writer, on_eval=maybe_select, step_hook=step_hook,
                        is_main=run.is_main)

  train_seconds = time.time() - t_start
  final_step = int(state.step)
  final = evals.metrics(final_step, state, "test")
  results = {"final": {"step": final_step, **final}, "best": None,
             "train_wall_seconds": train_seconds}
  if selected is not None and selected.best is not None:
    # Restored only when its test embeddings are not known already (the final step, or the last evaluations').
    results["best"] = {**selected.best,
                       **evals.metrics(selected.best["step"], lambda: selected.restore(run.template), "test")}
  results["wall_seconds"] = time.time() - t_start
  results["devices"] = {"count": len(run.devices), "kind": run.devices[0].device_kind,
                        "processes": jax.process_count()}
  results["config"] = json.loads(cfg.to_json_best_effort())
  if pretrained is not None:
    results["pretrained"] = pretrained
  if run.changes:
    results["config_changes"] = run.changes
  stats = runtime.local_copy(state.stats)
  results["kmeans_protocol"] = {**evaluation.kmeans_settings(cfg.eval.kmeans_protocol,
                                                              int(np.unique(data.test.labels).size)),
                                 "backend": cfg.eval.kmeans_backend, "seed": cfg.seed}
  results["statistics"] = {k: float(getattr(stats, k)) for k in ("j_avg", "j_gen", "j_avg_first", "j_gen_first")}
  if run.is_main:
    checkpoints.write_json_atomic(os.path.join(workdir, "results.json"), results)
    if cfg.plots:
      from experiments import plots
      plots.write_all(workdir, data, evals.embeddings(final_step, state, "test"))
  run.ckpt.close()
  if selected is not None:
    selected.close()
  writer.close()
  return results
