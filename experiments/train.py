"""The training loop: ``train_and_evaluate(config, workdir) -> results``.

Data order and random streams are pure functions of ``(seed, step)`` and the
whole train state is checkpointed, so a run killed at any point resumes from
its last checkpoint and reaches the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from typing import Callable

import jax
import ml_collections
import numpy as np

from experiments import checkpoints, datasets, logs
from hdml_jax import evaluation, parallel, weights
from hdml_jax.config import HDMLConfig, OptimizerConfig
from hdml_jax.inference import embed_in_batches
from hdml_jax.train_state import create_train_state
from hdml_jax.train_step import make_train_step

SELECTION_SPLITS = ("val", "test", "none")


# Steps dispatched ahead of the device: enough to overlap the host's batch
# preparation with the device's compute, few enough to bound queued batches.
_MAX_STEPS_IN_FLIGHT = 2


class NonFiniteLossError(FloatingPointError):
  """A loss stopped being finite; the last finite checkpoint is kept."""


class NonFiniteStateError(NonFiniteLossError):
  """An update made the train state non-finite; it is never checkpointed."""


def validate_config(cfg: ml_collections.ConfigDict) -> None:
  """Clear errors for values the lower layers would reject late or obscurely."""
  positive = {"batch_size": cfg.batch_size, "num_steps": cfg.num_steps, "log_every": cfg.log_every,
              "eval_every": cfg.eval_every, "checkpoint_every": cfg.checkpoint_every,
              "keep_checkpoints": cfg.keep_checkpoints, "eval.batch_size": cfg.eval.batch_size,
              "model.embedding_dim": cfg.model.embedding_dim, "data_threads": cfg.data_threads}
  for name, value in positive.items():
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"config.{name} must be a positive integer, got {value!r}.")
  if cfg.selection.split not in SELECTION_SPLITS:
    raise ValueError(f"config.selection.split must be one of {SELECTION_SPLITS}, got {cfg.selection.split!r}.")
  if cfg.selection.split == "val" and cfg.dataset.num_val_classes < 2:
    raise ValueError(
        "config.selection.split='val' needs config.dataset.num_val_classes >= 2 held-out "
        "training classes (or choose selection.split='test' or 'none').")
  if cfg.eval.kmeans_backend not in ("jax", "sklearn"):
    raise ValueError(f"config.eval.kmeans_backend must be 'jax' or 'sklearn', got {cfg.eval.kmeans_backend!r}.")
  if cfg.eval.kmeans_protocol not in evaluation.KMEANS_PROTOCOLS:
    raise ValueError(f"config.eval.kmeans_protocol must be one of {evaluation.KMEANS_PROTOCOLS}, "
                     f"got {cfg.eval.kmeans_protocol!r}.")
  metrics = selectable_metrics(cfg)
  if cfg.selection.split != "none" and cfg.selection.metric not in metrics:
    raise ValueError(f"config.selection.metric={cfg.selection.metric!r} is not a metric the evaluation "
                     f"produces; choose one of {metrics} (recall@K for K in config.eval.recall_ks).")
  for key in ("train_classes", "test_classes"):
    value = cfg.dataset[key]
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
      raise ValueError(f"config.dataset.{key} must be two integers (start, stop), e.g. '(0, 50)'; "
                       f"got {tuple(value) if isinstance(value, (tuple, list)) else value!r}.")
  if not isinstance(cfg.num_devices, int) or cfg.num_devices < 0:
    raise ValueError(f"config.num_devices must be 0 (all devices) or a positive count, got {cfg.num_devices!r}.")


def selectable_metrics(cfg) -> list[str]:
  """The names ``evaluate`` reports, hence what ``selection.metric`` may name."""
  return [f"recall@{int(k)}" for k in cfg.eval.recall_ks] + ["precision@1", "r_precision", "map@r", "nmi", "f1"]


# Keys that only extend or observe a run: a resume may change them (recorded).
RESUMABLE_KEYS = ("num_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "plots",
                  "data_threads", "prefetch", "compilation_cache_dir", "eval.batch_size", "eval.test_curves")
CONFIG_FILE = "config.json"


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) and v:
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def check_run_config(cfg, workdir: str, *, resuming: bool) -> list[dict]:
  """Saves the resolved config at the first start; on resume, refuses a different run.

  Returns the allowed changes (``RESUMABLE_KEYS``) as ``[{key, run, now}]``;
  any other difference raises ``ValueError`` with a readable diff. The
  workdir's ``config.json`` then holds the config in force (what
  ``experiments.evaluate`` rebuilds the model from) and ``config_changes.jsonl``
  the history of allowed changes.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  now = json.loads(cfg.to_json_best_effort(sort_keys=True))
  changes = []
  if resuming and os.path.exists(path):
    run = json.load(open(path))
    a, b = _flat(run), _flat(now)
    diffs = [(k, a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b))
             if a.get(k, "<absent>") != b.get(k, "<absent>")]
    # A key the run's config lacks was added by a newer version: allowed, and listed as a change.
    refused = [d for d in diffs if d[0] not in RESUMABLE_KEYS and d[1] != "<absent>"]
    if refused:
      lines = "\n".join(f"  {k}: {old!r} in the run, {new!r} now" for k, old, new in refused)
      raise ValueError(
          f"{workdir} holds a run with another config; resuming it would continue that run under new "
          f"settings. Differences:\n{lines}\nUse a fresh --workdir, or resume with the run's own config "
          f"({path}). Only {', '.join(RESUMABLE_KEYS)} may change on resume.")
    changes = [{"key": k, "run": old, "now": new} for k, old, new in diffs]
    if changes:
      logging.warning("resuming %s with changed %s", workdir,
                      ", ".join(f"{c['key']} {c['run']!r} -> {c['now']!r}" for c in changes))
      if jax.process_index() == 0:
        with open(os.path.join(workdir, "config_changes.jsonl"), "a") as f:
          f.write(json.dumps({"changes": changes}) + "\n")
  elif resuming:
    logging.warning("%s has no %s (written by an older version): the config cannot be compared; "
                    "saving the current one", workdir, CONFIG_FILE)
  if jax.process_index() == 0:
    checkpoints.write_json_atomic(path, now)
  return changes


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in its workdir (lists back to tuples), locked."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: {workdir} is not a run of this version "
                            "(give its config with --config).")

  def tuples(x):
    if isinstance(x, dict):
      return {k: tuples(v) for k, v in x.items()}
    return tuple(tuples(v) for v in x) if isinstance(x, list) else x

  from experiments.configs.base import get_base_config, override

  saved = tuples(json.load(open(path)))
  cfg = get_base_config()
  cfg.model.backbone_kwargs = ml_collections.ConfigDict(saved["model"].pop("backbone_kwargs"))
  for key, value in _flat(saved).items():
    override(cfg, key, value)
  cfg.lock()
  return cfg


def hdml_config(cfg) -> HDMLConfig:
  h = cfg.hdml
  return HDMLConfig(loss=h.loss, hdml=h.enabled, alpha=h.alpha, beta=h.beta, lam=h.lam,
                    softmax_factor=h.softmax_factor, l2_reg=h.l2_reg, weight_decay=h.weight_decay,
                    margin=h.margin, contrastive_margin=h.contrastive_margin, bn1_update=h.bn1_update,
                    alpha_relative=h.alpha_relative, beta_relative=h.beta_relative)


def optimizer_config(cfg) -> OptimizerConfig:
  o = cfg.optimizer
  return OptimizerConfig(
      metric_lr=o.metric_lr, metric_boundaries=tuple(o.metric_boundaries), metric_decay=o.metric_decay,
      generator_lr=o.generator_lr, generator_boundaries=tuple(o.generator_boundaries),
      generator_decay=o.generator_decay, classifier_lr=o.classifier_lr,
      classifier_boundaries=tuple(o.classifier_boundaries), classifier_decay=o.classifier_decay,
      clip_value=o.clip_value)


def backbone_identity(cfg, image_shape) -> dict:
  """What a pretrained file must agree with: recorded by ``experiments.pretrain``, checked on load."""
  return {"backbone": cfg.model.backbone, "image_shape": tuple(int(s) for s in image_shape),
          "backbone_kwargs": json.dumps(cfg.model.backbone_kwargs.to_dict(), sort_keys=True)}


def build_state(cfg, data: datasets.Data):
  state = _fresh_state(cfg, data)
  if cfg.model.pretrained:
    state = weights.load_pretrained_backbone(state, os.path.expanduser(cfg.model.pretrained),
                                             expect=backbone_identity(cfg, data.image_shape))
  return state


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _fresh_state(cfg, data: datasets.Data):
  return create_train_state(
      jax.random.key(cfg.seed), image_shape=data.image_shape, num_classes=data.train.num_classes,
      embedding_dim=cfg.model.embedding_dim, backbone=cfg.model.backbone,
      backbone_kwargs=cfg.model.backbone_kwargs.to_dict(), generator_hidden=cfg.model.generator_hidden,
      config=hdml_config(cfg), optimizer=optimizer_config(cfg),
      stats_block_length=cfg.hdml.stats_block_length, stats_initial_value=cfg.hdml.stats_initial_value)


def setup_runtime(cfg) -> None:
  """Multi-host start and the persistent compilation cache (call once, first)."""
  if cfg.distributed.coordinator_address and not getattr(setup_runtime, "_distributed", False):
    parallel.initialize_distributed(cfg.distributed.coordinator_address,
                                    cfg.distributed.num_processes, cfg.distributed.process_id)
    setup_runtime._distributed = True
  if cfg.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cfg.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def local_copy(tree):
  """Host copy of a replicated pytree (works on every process of a multi-host run).

  One ``jax.device_get`` for the whole tree, so its transfers overlap.
  """
  return jax.device_get(jax.tree_util.tree_map(
      lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree))


def embed_split(state, data: datasets.Data, split: datasets.Split, batch_size: int) -> np.ndarray:
  """Embeddings of a whole split, streamed in fixed-size batches."""
  state = local_copy(state)
  out = [embed_in_batches(state, images, batch_size=batch_size)
         for _, images in datasets.eval_batches(data, split, batch_size)]
  return np.concatenate(out)


def evaluate_split(cfg, state, data, split, *, clustering: bool = True) -> dict:
  emb = embed_split(state, data, split, cfg.eval.batch_size)
  ks = [k for k in cfg.eval.recall_ks if k <= len(split.labels) - 1]
  return evaluation.evaluate(emb, split.labels, recall_ks=ks, clustering=clustering,
                             kmeans_backend=cfg.eval.kmeans_backend, kmeans_seed=cfg.seed,
                             kmeans_protocol=cfg.eval.kmeans_protocol)


class BestCheckpoint:
  """The checkpoint the selection keeps: ``workdir/best`` (one checkpoint) and ``workdir/best.json``.

  ``offer(step, value, state)`` keeps the state if ``value`` is strictly
  higher than the best so far (the first offer always wins): on a tie the
  earlier step stays. A NaN value (a metric with no query to average over)
  never beats anything, and any number beats a NaN best, so a first NaN
  offer is kept only until a number comes. ``best.json`` (``{"step",
  "value", "selection"}``, a NaN written as ``null``) is written atomically
  once the checkpoint is on disk, and read back when a run is resumed, so
  an interrupted run goes on comparing with the best it had found.
  """

  def __init__(self, workdir: str, selection: str, *, is_main: bool = True):
    self.path = os.path.join(workdir, "best.json")
    self.selection = selection
    self.is_main = is_main
    self.manager = checkpoints.make_manager(os.path.join(workdir, "best"), max_to_keep=1)
    self.best = json.load(open(self.path)) if os.path.exists(self.path) else None
    steps = self.manager.all_steps()
    if self.best is not None and self.best["step"] not in steps:
      # A kill between saving a new best checkpoint (which replaces the old one) and writing its
      # best.json: the checkpoint kept is the newer one, whose value beat the one recorded.
      if not steps:
        logging.warning("%s names step %d, but %s holds no checkpoint: the selection starts over",
                        self.path, self.best["step"], self.manager.directory)
        self.best = None
      else:
        logging.warning("%s names step %d, but the best checkpoint kept is step %d (saved just before an "
                        "interruption); keeping it, with the recorded value %s as a lower bound of its own",
                        self.path, self.best["step"], max(steps), self.best["value"])
        self.best = {**self.best, "step": max(steps)}
        if is_main:
          checkpoints.write_json_atomic(self.path, self.best)

  def offer(self, step: int, value: float, state) -> bool:
    """Keeps ``state`` if ``value`` beats the best so far; returns whether it did."""
    if self.best is not None:
      best = self.best["value"]
      if best is None or math.isnan(best):   # null in best.json is a NaN written as strict JSON
        if math.isnan(value):
          return False
      elif not value > best:
        return False
    self.best = {"step": step, "value": value, "selection": self.selection}
    checkpoints.save(self.manager, step, state)
    self.manager.wait_until_finished()
    if self.is_main:
      checkpoints.write_json_atomic(self.path, self.best)
    return True

  def restore(self, template):
    """The kept state (restored into ``template``)."""
    if self.best is None:
      raise FileNotFoundError(f"no best checkpoint yet ({self.path} does not exist).")
    return checkpoints.restore(self.manager, template, self.best["step"])

  def close(self) -> None:
    self.manager.close()


def _selection_name(cfg) -> str:
  if cfg.selection.split == "test":
    return f"test/{cfg.selection.metric} (the reference's rule: selects on the test set)"
  return f"{cfg.selection.split}/{cfg.selection.metric}"


def make_mesh(cfg):
  """The ('data',) mesh over ``config.num_devices`` devices (0: all)."""
  present = jax.devices()
  if cfg.num_devices < 0 or cfg.num_devices > len(present):
    raise ValueError(f"config.num_devices={cfg.num_devices}, but {len(present)} {present[0].platform} "
                     f"device(s) are present: use 0 (all) or 1..{len(present)}.")
  devices = present if not cfg.num_devices else present[:cfg.num_devices]
  if cfg.batch_size % len(devices):
    raise ValueError(f"config.batch_size={cfg.batch_size} is not divisible by the {len(devices)} devices.")
  return parallel.make_data_mesh(devices), devices


def resume(ckpt, template, workdir: str):
  """``(state, last finite checkpoint step or None)``: the newest finite checkpoint, else ``template``."""
  state, skipped = checkpoints.restore_latest_finite(ckpt, template)
  for step, leaves in skipped:
    logging.warning("checkpoint %d in %s holds non-finite values (%s); deleted, resuming from an "
                    "earlier finite one", step, workdir, ", ".join(leaves[:3]))
  if state is None:
    return template, None
  logging.info("resumed from step %d in %s", int(state.step), workdir)
  return state, int(state.step)


def jit_step_with_rng(train_step, mesh):
  """``(state, batch, key) -> (state, metrics)`` jitted over ``mesh``.

  The step's rng is ``fold_in(key, state.step)``, derived on the device (a
  separate host call would cost a dispatch every step).
  """
  def step_at(state, batch, key):
    return train_step(state, batch, jax.random.fold_in(key, state.step))

  return parallel.jit_train_step(step_at, mesh)


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
  validate_config(cfg)
  setup_runtime(cfg)
  t_start = time.time()
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  data = datasets.load_data(cfg)
  mesh, devices = make_mesh(cfg)

  template = build_state(cfg, data)
  pretrained = None
  if cfg.model.pretrained:   # the file both arms of a comparison must share
    path = os.path.abspath(os.path.expanduser(cfg.model.pretrained))
    pretrained = {"path": path, "sha256": file_sha256(path)}
  ckpt = checkpoints.make_manager(os.path.join(workdir, "checkpoints"), max_to_keep=cfg.keep_checkpoints)
  selected = (BestCheckpoint(workdir, _selection_name(cfg), is_main=is_main)
              if cfg.selection.split != "none" else None)
  changes = check_run_config(cfg, workdir, resuming=bool(ckpt.all_steps()))
  state, last_finite = resume(ckpt, template, workdir)
  start = int(state.step)

  state = parallel.replicate_state(state, mesh)
  step_fn = jit_step_with_rng(make_train_step(state.networks, state.config), mesh)
  rows = parallel.process_rows(cfg.batch_size)
  batches = parallel.MeshPrefetcher(datasets.train_batches(cfg, data, start_step=start, rows=rows),
                                    mesh, size=2, global_batch_size=cfg.batch_size)
  key = jax.device_put(jax.random.key(cfg.seed), parallel.replicated(mesh))
  writer = logs.MetricWriter(workdir, enabled=is_main, resume_step=start)
  selection_split = {"val": data.val, "test": data.test}.get(cfg.selection.split)

  def maybe_select(step_done: int, state):
    if cfg.eval.test_curves:   # learning curves only: never read by the selection below
      curve = evaluate_split(cfg, state, data, data.test, clustering=False)
      writer.write(step_done, {f"test/{k}": v for k, v in curve.items()})
    if selection_split is None:
      return
    clustering = cfg.selection.metric in ("nmi", "f1")
    metrics = evaluate_split(cfg, state, data, selection_split, clustering=clustering)
    writer.write(step_done, {f"{cfg.selection.split}/{k}": v for k, v in metrics.items()})
    selected.offer(step_done, metrics[cfg.selection.metric], state)

  state = run_loop(cfg, workdir, state, step_fn, batches, key, ckpt=ckpt, last_finite=last_finite,
                   writer=writer, on_eval=maybe_select, step_hook=step_hook, is_main=is_main)

  train_seconds = time.time() - t_start
  final = evaluate_split(cfg, state, data, data.test)
  results = {"final": {"step": int(state.step), **final}, "best": None,
             "train_wall_seconds": train_seconds}
  if selected is not None and selected.best is not None:
    results["best"] = {**selected.best, **evaluate_split(cfg, selected.restore(template), data, data.test)}
  results["wall_seconds"] = time.time() - t_start
  results["devices"] = {"count": len(devices), "kind": devices[0].device_kind, "processes": jax.process_count()}
  results["config"] = json.loads(cfg.to_json_best_effort())
  if pretrained is not None:
    results["pretrained"] = pretrained
  if changes:
    results["config_changes"] = changes
  stats = local_copy(state.stats)
  results["kmeans_protocol"] = {**evaluation.kmeans_settings(cfg.eval.kmeans_protocol,
                                                              int(np.unique(data.test.labels).size)),
                                 "backend": cfg.eval.kmeans_backend, "seed": cfg.seed}
  results["statistics"] = {k: float(getattr(stats, k)) for k in ("j_avg", "j_gen", "j_avg_first", "j_gen_first")}
  if is_main:
    checkpoints.write_json_atomic(os.path.join(workdir, "results.json"), results)
    if cfg.plots:
      from experiments import plots
      plots.write_all(workdir, data, embed_split(state, data, data.test, cfg.eval.batch_size))
  ckpt.close()
  if selected is not None:
    selected.close()
  writer.close()
  return results
