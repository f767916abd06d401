"""The train step: ``(state, batch, rng) -> (state, metrics)``, for every registered loss, with or without HDML.

One pure function, jit-compiled once. ``config.loss`` names any loss of
:data:`hdml_jax.losses.LOSS_NAMES` (the reference's ``npair``, ``triplet``,
``contrastive``; the label-based and proxy losses); ``config.hdml`` turns on
HDML's hardness-aware synthesis where the loss has a form
(:data:`hdml_jax.head.HDML_FORMS`). Built on
:func:`hdml_jax.head.hdml_objective` (HDML for any loop). With HDML, three
losses, each training its own parameter group, at the same parameter values
(one gradient of their sum, which stop-gradients keep apart):

* ``J_metric = w J_m + (1 - w) J_syn`` -> backbone + BN1 + fc1 (and the
  loss's own parameters); its gradient flows through the synthesis, the
  generator and the shared re-encoder (the generator's parameters are
  constants there);
* ``J_gen = J_recon + J_soft`` -> the generator only;
* ``J_cls`` (the classifier on the real features) -> the classifier only.

Without HDML the step trains ``J_m`` (the loss plus the weight-decay term)
with one Adam per group (a proxy loss's proxies have their own).

Batches are dicts ``{"images": [B, ...], "labels": [B]}`` in the loss's
layout (:data:`hdml_jax.losses.LAYOUTS`): ``[anchors; positives]`` (N-pair,
``B = 2P``), ``[anchors; positives; negatives]`` (triplet, contrastive;
``B = 3T``), classes repeated (an M-per-class sampler, ``m >= 2``: the
label-based losses), or any batch (the proxy losses).

A label-based loss can also compare each batch with a cross-batch memory
(XBM, :class:`hdml_jax.losses.CrossBatchMemory`): build the state with
``memory=init_memory(size, E)`` and the step adds ``xbm_weight`` times the
loss of the batch against the memory, from step ``xbm_start`` on (the memory
is filled from then on too, as the XBM paper's code does).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hdml_jax import _checks
from hdml_jax import losses as _losses
from hdml_jax.config import HDMLConfig
from hdml_jax.head import check_batch, hdml_objective, metric_loss_spec
from hdml_jax.networks import Networks
from hdml_jax.statistics import update_statistics
from hdml_jax.train_state import HDMLTrainState

__all__ = ["Batch", "StepFn", "make_train_step"]

#: A batch: ``{"images": [B, ...], "labels": [B]}``.
Batch = dict[str, jax.Array]
#: The train step's type: ``(state, batch, rng) -> (state, metrics)``.
StepFn = Callable[[HDMLTrainState, Batch, jax.Array], tuple[HDMLTrainState, dict]]


def make_train_step(
    networks: Networks,
    config: HDMLConfig,
    *,
    axis_name: str | None = None,
    hyper: dict | None = None,
    xbm_start: int = 0,
    xbm_weight: float = 1.0,
) -> StepFn:
  """Builds the pure train step for ``networks`` and ``config``.

  Args:
    networks: the modules (``state.networks``).
    config: static hyper-parameters (``state.config``): ``config.loss`` names
      the loss, ``config.hdml`` turns the synthesis on.
    axis_name: set when the step runs under ``jax.pmap``: gradients, the
      BatchNorm moving statistics and the loss values fed to the adaptive
      statistics are averaged over that axis. Under pmap the tuples
      (N-pair pairs, triplets, the P^2 synthetic candidates) are formed per
      device from the device's own sub-batch, and BatchNorm normalises with
      per-device batch statistics. Leave it None under ``jax.jit``: there the
      step sees the global batch whatever the device count.
    hyper: the loss's hyper-parameters, replacing its paper's defaults
      (:func:`hdml_jax.losses.hyper_parameters`); the reference tuple losses
      read theirs from ``config`` (:func:`hdml_jax.head.metric_loss_spec`).
    xbm_start, xbm_weight: the cross-batch memory's start step and weight,
      when the state holds one (``create_train_state(...,
      memory=losses.init_memory(size, E))``, label-based losses without
      HDML): the loss is ``L(batch) + xbm_weight * L(batch against the
      memory)`` from step ``xbm_start`` on, when the memory also starts to be
      filled; before, the plain batch loss. Refused under ``pmap`` (each
      device would keep its own memory).

  Returns:
    ``step(state, batch, rng) -> (state, metrics)``. ``metrics`` holds every
    loss term (``loss``, ``j_m``, ``weight_decay``; with HDML ``w``,
    ``hardness`` = ``exp(-alpha/J_avg)`` and the terms of ``J_metric``,
    ``J_gen``, ``J_cls``; with a memory ``xbm_loss``), the statistics read
    this step (``stat/j_avg``, ``stat/j_gen``), per-group gradient norms and
    ``finite`` (all losses finite). A non-finite loss is never replaced: the
    caller stops on ``finite == False``.
  """
  if config.hdml and (networks.generator is None or networks.classifier is None):
    raise ValueError("make_train_step: HDML needs networks built with hdml=True.")
  spec = metric_loss_spec(config, hyper)
  if xbm_start < 0 or xbm_weight < 0:
    raise ValueError(f"make_train_step: xbm_start and xbm_weight must be >= 0, got {xbm_start} and {xbm_weight}.")

  def pmean(tree):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

  head = dataclasses.replace(networks.head, config=config)
  name = config.loss

  def step(state: HDMLTrainState, batch: Batch, rng: jax.Array):
    images, labels = batch["images"], batch["labels"]
    check_batch(config, images, labels)
    if state.config is not None and state.config.hdml != config.hdml:
      raise ValueError(f"make_train_step: the state was built with hdml={state.config.hdml}, the step with "
                       f"hdml={config.hdml}.")
    if spec.proxies and "proxies" not in state.params.get("loss", {}):
      raise ValueError(f"make_train_step: loss {name!r} needs params['loss']['proxies'] "
                       "(create_train_state(..., loss_params=init_loss_params(...))).")
    if spec.needs_pairs and not isinstance(labels, jax.core.Tracer):   # concrete labels: check them here
      _, counts = np.unique(np.asarray(labels), return_counts=True)
      if not (counts >= 2).any():
        raise ValueError(f"make_train_step: loss {name!r}: no class has two samples in this batch, so "
                         "there is no positive pair (use an M-per-class sampler with m >= 2).")
    memory = state.memory
    if memory is not None:
      if not spec.needs_pairs:
        raise ValueError(f"make_train_step: loss {name!r} is not a label-based loss; a cross-batch memory "
                         "serves the label-based losses only.")
      if config.hdml:
        raise ValueError("make_train_step: a cross-batch memory serves training without HDML's synthesis.")
      if axis_name is not None:
        raise ValueError("make_train_step: a cross-batch memory is not supported under pmap (axis_name set); "
                         "use jax.jit over a device mesh, which sees the global batch.")
    bstats, stats = state.batch_stats, state.stats

    def total(params):
      y, bb_new = networks.backbone.apply(
          {"params": params["backbone"], "batch_stats": bstats["backbone"]}, images,
          train=True, mutable=["batch_stats"])
      head_params = {k: v for k, v in params.items() if k != "backbone"}
      head_stats = {k: v for k, v in bstats.items() if k != "backbone"}

      def memory_loss(z, y):   # xbm_weight * L(batch against the memory), from xbm_start on
        active = state.step >= xbm_start
        value, new_memory = _losses.cross_batch_loss(
            lambda e, y, references: spec.fn(params.get("loss", {}), e, y, jax.random.fold_in(rng, 1), references),
            memory, z, y)
        value = jnp.where(active, value, 0.0)
        new_memory = jax.tree_util.tree_map(lambda new, old: jnp.where(active, new, old), new_memory, memory)
        return xbm_weight * value, {"memory": new_memory, "xbm_loss": value}

      value, out = hdml_objective(head, head_params, head_stats, y, labels, stats,
                                  decay_params=params["backbone"], rng=rng, hyper=hyper,
                                  extra_loss=memory_loss if memory is not None else None)
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
    if memory is not None:
      metrics["xbm_loss"] = out.extra["xbm_loss"]
    for key, g in grads.items():
      metrics[f"grad_norm/{key}"] = optax.tree.norm(g)
    metrics["finite"] = jnp.all(jnp.isfinite(jnp.stack([metrics["loss"]] + (
        [metrics["j_gen"], metrics["j_cls"]] if config.hdml else []))))
    new_state = state.apply_gradients(grads=grads).replace(batch_stats={**bstats, **new_bstats}, stats=new_stats)
    if memory is not None:
      new_state = new_state.replace(memory=out.extra["memory"])
    return new_state, metrics

  return step
