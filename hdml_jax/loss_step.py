"""Training with any of the library's registered losses (no synthesis): the losses people compare HDML against.

The losses are named in :data:`hdml_jax.losses.LOSS_NAMES`; a loss's own
parameters (:func:`hdml_jax.losses.init_loss_params`) are kept by
:func:`hdml_jax.train_state.create_train_state` as ``params["loss"]``
with their own optimizer group (``OptimizerConfig.loss_lr``), so they are
checkpointed and resumed with the model. :func:`make_loss_train_step` is the
step: backbone and embedding in training mode, the loss on the embeddings
(each loss normalises them or not, as its paper does), one Adam per group.

Batches are ``{"images", "labels"}`` with classes repeated for the pair
losses (an M-per-class sampler, ``m >= 2``); any batch suits a proxy loss.

A pair loss can also compare each batch with a cross-batch memory (XBM,
:class:`hdml_jax.losses.CrossBatchMemory`): build the state with
``memory=init_memory(size, E)`` and the step adds ``xbm_weight`` times the
loss of the batch against the memory, from step ``xbm_start`` on (the memory
is filled from then on too, as the XBM paper's code does).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hdml_jax import _checks
from hdml_jax import losses as _losses
from hdml_jax.networks import Networks
from hdml_jax.train_state import HDMLTrainState

__all__ = ["make_loss_train_step"]


def make_loss_train_step(networks: Networks, name: str, *, axis_name: str | None = None, xbm_start: int = 0,
                         xbm_weight: float = 1.0, hyper: dict | None = None):
  """``step(state, batch, rng) -> (state, metrics)`` training backbone, embedding and the loss's own parameters.

  ``state`` comes from :func:`~hdml_jax.train_state.create_train_state`
  with ``config.hdml`` off and ``loss_params=init_loss_params(name, ...)``.
  ``metrics`` holds ``loss`` (also as ``j_m``), per-group gradient norms and
  ``finite``; ``axis_name`` as for :func:`hdml_jax.train_step.make_train_step`.
  ``hyper`` replaces the loss's default hyper-parameters
  (:func:`hdml_jax.losses.hyper_parameters`).

  With a cross-batch memory in the state (``create_train_state(...,
  memory=losses.init_memory(size, E))``, pair losses only), the loss is
  ``L(batch) + xbm_weight * L(batch against the memory)`` from step
  ``xbm_start`` on, when the memory also starts to be filled; before, the
  plain batch loss. ``metrics`` adds ``xbm_loss`` (0 before ``xbm_start``).
  Under ``pmap`` (``axis_name`` set) a memory is refused: each device would
  keep its own.
  """
  spec = _losses.loss_spec(name, hyper)
  if xbm_start < 0 or xbm_weight < 0:
    raise ValueError(f"make_loss_train_step: xbm_start and xbm_weight must be >= 0, got {xbm_start} and {xbm_weight}.")

  def pmean(tree):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

  def step(state: HDMLTrainState, batch, rng: jax.Array):
    images, labels = batch["images"], batch["labels"]
    if state.config is not None and state.config.hdml:
      raise ValueError(f"make_loss_train_step: loss {name!r} trains without synthesis; the state was built "
                       "with config.hdml=True.")
    if spec.proxies and "proxies" not in state.params.get("loss", {}):
      raise ValueError(f"make_loss_train_step: loss {name!r} needs params['loss']['proxies'] "
                       "(create_train_state(..., loss_params=init_loss_params(...))).")
    if spec.needs_pairs and not isinstance(labels, jax.core.Tracer):   # concrete labels: check them here
      _, counts = np.unique(np.asarray(labels), return_counts=True)
      if not (counts >= 2).any():
        raise ValueError(f"make_loss_train_step: loss {name!r}: no class has two samples in this batch, so "
                         "there is no positive pair (use an M-per-class sampler with m >= 2).")
    memory = state.memory
    if memory is not None:
      if not spec.needs_pairs:
        raise ValueError(f"make_loss_train_step: loss {name!r} is a proxy loss; a cross-batch memory serves the "
                         "pair losses only.")
      if axis_name is not None:
        raise ValueError("make_loss_train_step: a cross-batch memory is not supported under pmap (axis_name set); "
                         "use jax.jit over a device mesh, which sees the global batch.")
    bstats = state.batch_stats

    def total(params):
      y, bb_new = networks.backbone.apply(
          {"params": params["backbone"], "batch_stats": bstats["backbone"]}, images, train=True,
          mutable=["batch_stats"])
      z, emb_new = networks.embedding.apply(
          {"params": params["embedding"], "batch_stats": bstats["embedding"]}, y, train=True,
          mutable=["batch_stats"])
      value = spec.fn(params.get("loss", {}), z, labels, rng)
      aux = {"batch_stats": {"backbone": bb_new.get("batch_stats", {}), "embedding": emb_new.get("batch_stats", {})}}
      if memory is not None:
        active = state.step >= xbm_start
        xbm_value, new_memory = _losses.cross_batch_loss(
            lambda e, y, references: spec.fn(params.get("loss", {}), e, y, jax.random.fold_in(rng, 1), references),
            memory, z, labels)
        xbm_value = jnp.where(active, xbm_value, 0.0)
        value = value + xbm_weight * xbm_value
        aux["memory"] = jax.tree_util.tree_map(lambda new, old: jnp.where(active, new, old), new_memory, memory)
        aux["xbm_loss"] = xbm_value
      return value, aux

    with _checks.inputs_checked_by_the_caller():   # the loop checks every loss and the state itself
      (value, aux), grads = jax.value_and_grad(total, has_aux=True)(state.params)
    grads, new_bstats, value = pmean(grads), pmean(aux["batch_stats"]), pmean(value)
    metrics = {"loss": value, "j_m": value, "finite": jnp.isfinite(value)}
    if memory is not None:
      metrics["xbm_loss"] = aux["xbm_loss"]
    for key, g in grads.items():
      metrics[f"grad_norm/{key}"] = optax.tree.norm(g)
    new_state = state.apply_gradients(grads=grads).replace(batch_stats={**bstats, **new_bstats})
    if memory is not None:
      new_state = new_state.replace(memory=aux["memory"])
    return new_state, metrics

  return step
