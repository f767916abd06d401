"""Pretrain a backbone with a softmax classifier on the training classes.

    python -m experiments.pretrain --config experiments/configs/cub100.py --workdir runs/pre \\
        --config.num_steps=1500 --config.pretrain.lr=1e-3
    python -m experiments.main --config experiments/configs/cub100.py --workdir runs/ft \\
        --config.model.pretrained=runs/pre/pretrained.npz

Trains the configured backbone (any registered one, GoogLeNet included) and a
linear classifier with softmax cross-entropy on the *training* classes only:
the held-out selection classes (``dataset.num_val_classes``) and every test
class are never seen. Data pipeline, checkpoints, exact resume after a kill,
logs and progress are those of ``experiments.main`` (the same loop); at every
evaluation step the held-out classes' Recall@K of the L2-normalised backbone
features is logged (``val/...``), for information only.

Writes ``<workdir>/pretrained.npz``: the final backbone variables
(``params/...``, ``batch_stats/...``) and ``meta/`` entries naming the
backbone, its keyword arguments, the input shape, the classes and the whole
resolved config, all plain arrays (never pickled). ``model.pretrained`` loads
it through the usual weight-loading path, which checks the ``meta/`` entries
against the model as well as every array's shape. ``results.json`` records
the file's sha256.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct
from flax.training import train_state

from experiments import checkpoints, datasets, loop, run_config, runtime, selection
from hdml_jax import _checks, weights
from hdml_jax.distances import l2_normalize
from hdml_jax.losses import cross_entropy
from hdml_jax.models import Classifier, get_backbone
from hdml_jax.networks import init_backbone

__all__ = ["PRETRAINED_FILE", "PretrainState", "create_pretrain_state", "pretrain", "pretrain_step",
           "write_pretrained"]

PRETRAINED_FILE = "pretrained.npz"


class PretrainState(train_state.TrainState):
  """Backbone + classifier parameters, the backbone's BatchNorm statistics, one Adam.

  ``apply_fn(params, batch_stats, images)`` gives L2-normalised backbone
  features (inference mode), so the evaluation helpers of ``experiments.selection``
  work on it unchanged.
  """

  batch_stats: Any = None
  backbone: nn.Module | None = struct.field(pytree_node=False, default=None)
  classifier: nn.Module | None = struct.field(pytree_node=False, default=None)


def create_pretrain_state(cfg, data: datasets.Data) -> PretrainState:
  num_classes = data.train.num_classes
  if num_classes < 2:
    raise ValueError(
        f"pretraining needs at least 2 training classes, got {num_classes} (dataset.train_classes="
        f"{tuple(cfg.dataset.train_classes)}, num_val_classes={cfg.dataset.num_val_classes}).")
  if not cfg.pretrain.lr > 0:
    raise ValueError(f"config.pretrain.lr must be > 0, got {cfg.pretrain.lr!r}.")
  backbone = get_backbone(cfg.model.backbone, **cfg.model.backbone_kwargs.to_dict())
  classifier = Classifier(num_classes)
  k_bb, k_cls = jax.random.split(jax.random.key(cfg.seed))
  bb_vars, feature_dim = init_backbone(backbone, k_bb, data.image_shape, where="pretraining")
  if "params" not in bb_vars:
    raise ValueError(f"backbone {cfg.model.backbone!r} has no parameters: nothing to pretrain.")
  cls_vars = classifier.init(k_cls, jnp.zeros((2, feature_dim), jnp.float32))

  @jax.jit
  def embed(params, batch_stats, images):
    y = backbone.apply({"params": params["backbone"], "batch_stats": batch_stats["backbone"]},
                       images, train=False)
    return l2_normalize(y)

  schedule = optax.piecewise_constant_schedule(
      cfg.pretrain.lr, {int(b): cfg.optimizer.metric_decay for b in cfg.optimizer.metric_boundaries})
  return PretrainState.create(
      apply_fn=embed, params={"backbone": bb_vars["params"], "classifier": cls_vars["params"]},
      tx=optax.adam(schedule), batch_stats={"backbone": bb_vars.get("batch_stats", {})},
      backbone=backbone, classifier=classifier)


def pretrain_step(state: PretrainState, batch, rng):
  """One Adam step on softmax cross-entropy over the training classes."""
  del rng
  images, labels = batch["images"], batch["labels"]

  def loss_fn(params):
    y, new = state.backbone.apply(
        {"params": params["backbone"], "batch_stats": state.batch_stats["backbone"]}, images,
        train=True, mutable=["batch_stats"])
    logits = state.classifier.apply({"params": params["classifier"]}, y)
    return cross_entropy(logits, labels), (logits, new.get("batch_stats", {}))

  with _checks.inputs_checked_by_the_caller():   # the loop checks every loss and the state itself
    (loss, (logits, bb_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, axis=1) == labels),
             "grad_norm": optax.tree.norm(grads), "finite": jnp.isfinite(loss)}
  state = state.apply_gradients(grads=grads).replace(batch_stats={"backbone": bb_stats})
  return state, metrics


def write_pretrained(path: str, state: PretrainState, cfg, data: datasets.Data) -> None:
  """The backbone's variables and what they were made for, as a plain ``.npz``."""
  host = runtime.local_copy({"params": state.params["backbone"], "batch_stats": state.batch_stats["backbone"]})
  variables = {"params": host["params"]}
  if host["batch_stats"]:
    variables["batch_stats"] = host["batch_stats"]
  meta = {**run_config.backbone_identity(cfg, data.image_shape),
          "num_classes": data.train.num_classes, "classes": json.dumps(list(data.train.class_names)),
          "step": int(state.step), "config": cfg.to_json_best_effort(sort_keys=True)}
  weights.save_variables(path, variables, meta=meta)


def pretrain(cfg: ml_collections.ConfigDict, workdir: str, *, step_hook=None) -> dict:
  """Pretrains, checkpoints, resumes; writes ``pretrained.npz`` and ``results.json``."""
  run_config.validate_config(cfg)
  if cfg.model.pretrained:
    raise ValueError("config.model.pretrained must be empty for pretraining (it would be ignored).")
  t_start = time.time()
  run = runtime.prepare_run(cfg, workdir, make_template=create_pretrain_state, make_step=lambda _: pretrain_step)
  data, writer, ckpt, devices, is_main = run.data, run.writer, run.ckpt, run.devices, run.is_main
  val = []

  def on_eval(step_done, state):
    if data.val is None:
      return
    metrics = selection.evaluate_split(cfg, state, data, data.val, clustering=False)
    writer.write(step_done, {f"val/{k}": v for k, v in metrics.items()})
    val.append({"step": step_done, **metrics})

  state = loop.run_loop(cfg, workdir, run.state, run.step_fn, run.batches, run.key, ckpt=ckpt,
                        last_finite=run.last_finite, writer=writer, on_eval=on_eval, step_hook=step_hook,
                        is_main=is_main)
  ckpt.close()
  writer.close()
  path = os.path.join(workdir, PRETRAINED_FILE)
  results = {"pretrained": None, "step": int(state.step), "val": val[-1] if val else None,
             "train_classes": data.train.num_classes, "wall_seconds": None,
             "devices": {"count": len(devices), "kind": devices[0].device_kind}}
  if is_main:
    write_pretrained(path, state, cfg, data)
    results["pretrained"] = {"path": os.path.abspath(path), "sha256": runtime.file_sha256(path)}
  results["wall_seconds"] = time.time() - t_start
  results["config"] = json.loads(cfg.to_json_best_effort())
  if is_main:
    checkpoints.write_json_atomic(os.path.join(workdir, "results.json"), results)
  return results


def main(argv):
  import logging

  from absl import app, flags

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.getLogger("absl").setLevel(logging.WARNING)
  results = pretrain(flags.FLAGS.config, flags.FLAGS.workdir)
  print(json.dumps({k: results[k] for k in ("pretrained", "step", "val", "wall_seconds")}, indent=2))


def run():
  """Command-line entry point (``python3 -m experiments.pretrain``, from the checkout)."""
  import logging
  import sys

  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  from absl import flags
  from ml_collections import config_flags

  from experiments.cli import exit_on_unknown_override, run_app

  default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")
  exit_on_unknown_override(default)   # before DEFINE_config_file, which applies the overrides
  config_flags.DEFINE_config_file("config", default, "Config file (ml_collections).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints, logs and pretrained.npz go.", required=True)
  run_app(main, module=__name__ if __name__ != "__main__" else sys.argv[0], summary=__doc__.strip(),
          default_config=default, workdir=lambda: flags.FLAGS.workdir)


if __name__ == "__main__":
  run()
