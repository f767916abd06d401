"""The HDML train step: ``(state, batch, rng) -> (state, metrics)``.

One pure function, jit-compiled once, for HDML with N-pair, triplet or
contrastive losses and for the plain baseline, built on
:func:`hdml_jax.head.hdml_objective` (HDML for any loop). Three losses, each
training its own parameter group, at the same parameter values (one gradient
of their sum, which stop-gradients keep apart):

* ``J_metric = w J_m + (1 - w) J_syn`` -> backbone + BN1 + fc1; its gradient
  flows through the synthesis, the generator and the shared re-encoder (the
  generator's parameters are constants there);
* ``J_gen = J_recon + J_soft`` -> the generator only;
* ``J_cls`` (the classifier on the real features) -> the classifier only.

Batches are dicts ``{"images": [B, ...], "labels": [B]}`` laid out
``[anchors; positives]`` (N-pair, ``B = 2P``) or
``[anchors; positives; negatives]`` (triplet, contrastive; ``B = 3T``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from hdml_jax import _checks
from hdml_jax.config import HDMLConfig
from hdml_jax.head import check_batch, hdml_objective
from hdml_jax.networks import Networks
from hdml_jax.statistics import update_statistics
from hdml_jax.train_state import HDMLTrainState

__all__ = ["Batch", "StepFn", "make_train_step"]

#: A batch: ``{"images": [B, ...], "labels": [B]}``.
Batch = dict[str, jax.Array]
#: The train step's type: ``(state, batch, rng) -> (state, metrics)``.
StepFn = Callable[[HDMLTrainState, Batch, jax.Array], tuple[HDMLTrainState, dict]]


def make_train_step(
    networks: Networks, config: HDMLConfig, *, axis_name: str | None = None
) -> StepFn:
  """Builds the pure train step for ``networks`` and ``config``.

  Args:
    networks: the modules (``state.networks``).
    config: static hyper-parameters (``state.config``).
    axis_name: set when the step runs under ``jax.pmap``: gradients, the
      BatchNorm moving statistics and the loss values fed to the adaptive
      statistics are averaged over that axis. Under pmap the tuples
      (N-pair pairs, triplets, the P^2 synthetic candidates) are formed per
      device from the device's own sub-batch, and BatchNorm normalises with
      per-device batch statistics. Leave it None under ``jax.jit``: there the
      step sees the global batch whatever the device count.

  Returns:
    ``step(state, batch, rng) -> (state, metrics)``. ``metrics`` holds every
    loss term, ``w``, ``hardness`` = ``exp(-alpha/J_avg)``, the statistics
    read this step (``stat/j_avg``, ``stat/j_gen``), per-group gradient norms
    and ``finite`` (all losses finite). A non-finite loss is never replaced:
    the caller stops on ``finite == False``.
  """
  if config.hdml and (networks.generator is None or networks.classifier is None):
    raise ValueError("make_train_step: HDML needs networks built with hdml=True.")

  def pmean(tree):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

  head = dataclasses.replace(networks.head, config=config)

  def step(state: HDMLTrainState, batch: Batch, rng: jax.Array):
    del rng  # No stochastic layer; kept so every step has one signature.
    images, labels = batch["images"], batch["labels"]
    check_batch(config, images, labels)
    bstats, stats = state.batch_stats, state.stats

    def total(params):
      y, bb_new = networks.backbone.apply(
          {"params": params["backbone"], "batch_stats": bstats["backbone"]}, images,
          train=True, mutable=["batch_stats"])
      head_params = {k: v for k, v in params.items() if k != "backbone"}
      head_stats = {k: v for k, v in bstats.items() if k != "backbone"}
      value, out = hdml_objective(head, head_params, head_stats, y, labels, stats,
                                  decay_params=params["backbone"])
      return value, (bb_new.get("batch_stats", {}), out)

    # One gradient of J_metric + J_gen + J_cls: each term reaches only its own group.
    with _checks.inputs_checked_by_the_caller():   # the loop checks every loss and the state itself
      (_, (bb_stats, out)), grads = jax.value_and_grad(total, has_aux=True)(state.params)
    grads = pmean(grads)
    new_bstats = pmean({"backbone": bb_stats, **out.batch_stats})
    metrics = pmean(out.metrics)
    new_stats = stats
    if config.hdml:
      new_stats = update_statistics(stats, metrics["w"] * metrics["j_m"], metrics["j_gen"])
    metrics["stat/j_avg"] = stats.j_avg
    metrics["stat/j_gen"] = stats.j_gen
    for key, g in grads.items():
      metrics[f"grad_norm/{key}"] = optax.tree.norm(g)
    metrics["finite"] = jnp.all(jnp.isfinite(jnp.stack([metrics["loss"]] + (
        [metrics["j_gen"], metrics["j_cls"]] if config.hdml else []))))
    new_state = state.apply_gradients(grads=grads).replace(batch_stats=new_bstats, stats=new_stats)
    return new_state, metrics

  return step
