"""The run's config: validation, the saved config.json, what a resume may change.

``validate_config`` gives clear errors for values the lower layers would
reject late or obscurely; ``check_run_config`` saves the resolved config at
the first start and, on resume, refuses a different run; ``load_run_config``
reads it back (what ``experiments.evaluate`` rebuilds a model from).
"""

from __future__ import annotations

import json
import logging
import os

import jax
import ml_collections

from experiments import checkpoints
from hdml_jax import evaluation

__all__ = ["CONFIG_FILE", "RESUMABLE_KEYS", "SELECTION_SPLITS", "backbone_identity", "check_run_config",
           "load_run_config", "selectable_metrics", "upgrade_saved_config", "validate_config"]

SELECTION_SPLITS = ("val", "test", "none")

def validate_config(cfg: ml_collections.ConfigDict) -> None:
  """Clear errors for values the lower layers would reject late or obscurely."""
  positive = {"batch_size": cfg.batch_size, "num_steps": cfg.num_steps, "log_every": cfg.log_every,
              "eval_every": cfg.eval_every, "checkpoint_every": cfg.checkpoint_every,
              "keep_checkpoints": cfg.keep_checkpoints, "eval.batch_size": cfg.eval.batch_size,
              "model.embedding_dim": cfg.model.embedding_dim, "model.generator_hidden": cfg.model.generator_hidden,
              "data_threads": cfg.data_threads}
  for name, value in positive.items():
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"config.{name} must be a positive integer, got {value!r}.")
  ks = cfg.eval.recall_ks
  if not (isinstance(ks, (tuple, list)) and ks and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1
                                                         for k in ks)):
    raise ValueError(f"config.eval.recall_ks must be positive integers, e.g. '(1, 2, 4, 8)'; got {ks!r}.")
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
  _validate_loss(cfg)
  _validate_features(cfg)
  gb = cfg.dataset.decoded_cache_gb
  if isinstance(gb, bool) or not isinstance(gb, (int, float)) or not gb >= 0:
    raise ValueError(f"config.dataset.decoded_cache_gb must be a number of GiB >= 0 (0: no cache), got {gb!r}.")
  if not isinstance(cfg.num_devices, int) or cfg.num_devices < 0:
    raise ValueError(f"config.num_devices must be 0 (all devices) or a positive count, got {cfg.num_devices!r}.")

def _validate_loss(cfg) -> None:
  from hdml_jax.config import HDML_LOSSES
  from hdml_jax.losses import LOSS_NAMES, TUPLE_LOSSES, loss_spec

  name = cfg.loss.name
  if name == "hdml":   # the method key before 2026-12-07
    raise ValueError("config.loss.name='hdml' is no longer a method: name the loss itself, e.g. "
                     "config.loss.name=npair (what config.hdml.loss was), with config.hdml.enabled=True for HDML's "
                     "synthesis.")
  if name not in LOSS_NAMES:
    raise ValueError(f"config.loss.name={name!r} is not a loss; choose one of {', '.join(LOSS_NAMES)}.")
  if cfg.hdml.enabled and name not in HDML_LOSSES:
    raise ValueError(f"config.hdml.enabled=True, but HDML has no synthesis for config.loss.name={name!r} (it has "
                     f"one for {', '.join(HDML_LOSSES)}): set config.hdml.enabled=False to train it without.")
  _validate_xbm(cfg)
  hyper = cfg.loss.kwargs.to_dict() if hasattr(cfg.loss.kwargs, "to_dict") else cfg.loss.kwargs
  if not isinstance(hyper, dict):
    raise ValueError(f"config.loss.kwargs must be a dict of hyper-parameters, got {hyper!r}.")
  if name in TUPLE_LOSSES:
    if hyper:
      raise ValueError(f"config.loss.kwargs={hyper} sets a label-based or proxy loss's hyper-parameters, but "
                       f"config.loss.name={name!r} reads its own from config.hdml (l2_reg, margin, "
                       "contrastive_margin).")
  else:
    try:
      loss_spec(name, hyper)
    except ValueError as e:
      raise ValueError(f"config.loss.kwargs: {e}") from None
  layout = loss_spec(name).layout
  if layout in ("classes", "any"):   # M-per-class batches
    if cfg.epoch_sampler:
      raise ValueError(f"config.epoch_sampler is for N-pair batches; config.loss.name={name!r} uses the "
                       "M-per-class sampler (set config.epoch_sampler=False).")
    _validate_m_per_class(cfg, f"config.loss.name={name!r}", least=2 if layout == "classes" else 1)
  elif cfg.epoch_sampler and layout != "pairs":
    raise ValueError(f"config.epoch_sampler is for N-pair batches, not config.loss.name={name!r} (set "
                     "config.epoch_sampler=False).")

def _validate_features(cfg) -> None:
  from hdml_jax.models import available_backbones

  f = cfg.features
  if not f.backbone:
    return
  if f.backbone not in available_backbones() or f.backbone == "identity":
    raise ValueError(f"config.features.backbone={f.backbone!r} is not a backbone; choose one of "
                     f"{', '.join(b for b in available_backbones() if b != 'identity')}.")
  if not f.pretrained:
    raise ValueError("config.features.backbone is set but config.features.pretrained is empty: name its weights "
                     f"(a converted file, or the weight source {f.backbone!r} where it is one).")
  part = f.backbone_kwargs.to_dict()
  if part:
    _validate_feature_part(cfg, part)
  elif cfg.model.backbone != "identity":
    raise ValueError(f"config.features.backbone={f.backbone!r} trains on cached features: set "
                     f"config.model.backbone='identity' (got {cfg.model.backbone!r}).")
  elif cfg.model.pretrained:
    raise ValueError("config.model.pretrained is for a backbone that trains; with config.features.backbone the "
                     "weights are config.features.pretrained.")
  if cfg.dataset.name == "digits":
    raise ValueError("config.features.backbone needs photographs (dataset.name image_folder, cub, cars, sop or "
                     "tfds_image_folder), not digits.")
  for key in ("views", "batch_size"):
    value = f[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "views" else 1):
      raise ValueError(f"config.features.{key} must be an integer >= {0 if key == 'views' else 1}, got {value!r}.")

def _validate_feature_part(cfg, part: dict) -> None:
  """Cached activations of a part of the backbone (``features.backbone_kwargs``): the model must be the same
  backbone from the next block on, with the same weights."""
  f, m = cfg.features, cfg.model
  last = part.get("last_block")
  if set(part) != {"last_block"} or not isinstance(last, int) or isinstance(last, bool):
    raise ValueError(f"config.features.backbone_kwargs={part} must name only last_block (an integer): the block "
                     "after which the activations are cached.")
  first = m.backbone_kwargs.to_dict().get("first_block") if m.backbone == f.backbone else None
  if first != last + 1:
    raise ValueError(f"config.features.backbone_kwargs caches {f.backbone!r}'s activations after block {last}: "
                     f"the model must train the rest, config.model.backbone={f.backbone!r} with "
                     f"config.model.backbone_kwargs.first_block={last + 1} (got {m.backbone!r} with "
                     f"{m.backbone_kwargs.to_dict()}).")
  if m.pretrained != f.pretrained:
    raise ValueError(f"config.model.pretrained must be config.features.pretrained ({f.pretrained!r}): the blocks "
                     f"from {last + 1} on start from the weights whose activations are cached (got "
                     f"{m.pretrained!r}).")


def _validate_m_per_class(cfg, who: str, least: int) -> None:
  """M-per-class batches for ``who``: ``least`` images of each class, the batch a whole number of classes."""
  m = cfg.loss.m_per_class
  if not isinstance(m, int) or isinstance(m, bool) or m < least:
    raise ValueError(f"config.loss.m_per_class={m!r}: {who} "
                     + ("compares samples of one class, so a batch needs at least 2 per class."
                        if least == 2 else "needs at least 1 image per class."))
  if cfg.batch_size % m:
    raise ValueError(f"config.batch_size={cfg.batch_size} is not a multiple of config.loss.m_per_class={m}.")

def _validate_xbm(cfg) -> None:
  from hdml_jax.losses import PAIR_LOSSES

  size, start, weight = cfg.loss.xbm_size, cfg.loss.xbm_start, cfg.loss.xbm_weight
  for key, value in (("xbm_size", size), ("xbm_start", start)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise ValueError(f"config.loss.{key} must be an integer >= 0, got {value!r}.")
  if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
    raise ValueError(f"config.loss.xbm_weight must be a number >= 0, got {weight!r}.")
  if not size:
    return
  if cfg.loss.name not in PAIR_LOSSES:
    raise ValueError(f"config.loss.xbm_size={size}: a cross-batch memory serves the label-based losses "
                     f"({', '.join(PAIR_LOSSES)}), not config.loss.name={cfg.loss.name!r}.")
  if cfg.hdml.enabled:
    raise ValueError(f"config.loss.xbm_size={size}: a cross-batch memory serves training without HDML's "
                     "synthesis (set config.hdml.enabled=False).")
  if size < cfg.batch_size:
    raise ValueError(f"config.loss.xbm_size={size} is smaller than config.batch_size={cfg.batch_size}: the memory "
                     "must hold at least one batch.")

def selectable_metrics(cfg) -> list[str]:
  """The names ``evaluate`` reports, hence what ``selection.metric`` may name."""
  return [f"recall@{int(k)}" for k in cfg.eval.recall_ks] + ["precision@1", "r_precision", "map@r", "nmi", "f1"]

# Keys that only extend or observe a run: a resume may change them (recorded).
RESUMABLE_KEYS = ("num_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "plots",
                  "data_threads", "prefetch", "compilation_cache_dir",
                  "dataset.decoded_cache_gb", "dataset.normalize_on_device", "eval.batch_size", "eval.test_curves")

CONFIG_FILE = "config.json"


def _read_json(path: str):
  """A run's saved config; a damaged file is named in a ``ValueError``."""
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}): the run's saved config is damaged; give the run's "
                     "config with --config, or use a fresh --workdir.") from None

def upgrade_saved_config(saved: dict) -> dict:
  """A ``config.json`` written before 2026-12-07 in today's keys (in place; returned).

  Then the method was chosen by ``loss.name`` (``"hdml"``: HDML's step) and
  ``hdml.loss`` (its loss); now ``loss.name`` names the loss whatever the
  method. A run of a library loss (``loss.name`` another name) trained
  without the weight-decay term, so its ``hdml.weight_decay`` becomes 0.
  """
  hdml = saved.get("hdml", {})
  if "loss" not in hdml:
    return saved
  old = hdml.pop("loss")
  loss = saved.setdefault("loss", {})
  if loss.get("name", "hdml") == "hdml":
    loss["name"] = old
  else:
    hdml["weight_decay"] = 0.0
  return saved

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
    run = upgrade_saved_config(_read_json(path))
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

  saved = tuples(upgrade_saved_config(_read_json(path)))
  cfg = get_base_config()
  cfg.model.backbone_kwargs = ml_collections.ConfigDict(saved["model"].pop("backbone_kwargs"))
  cfg.loss.kwargs = ml_collections.ConfigDict(saved.get("loss", {}).pop("kwargs", {}))   # absent before #27
  for key, value in _flat(saved).items():
    override(cfg, key, value)
  cfg.lock()
  return cfg

def backbone_identity(cfg, image_shape) -> dict:
  """What a pretrained file must agree with: recorded by ``experiments.pretrain``, checked on load."""
  return {"backbone": cfg.model.backbone, "image_shape": tuple(int(s) for s in image_shape),
          "backbone_kwargs": json.dumps(cfg.model.backbone_kwargs.to_dict(), sort_keys=True)}
