"""Training with any of the library's losses (no synthesis): the losses people compare HDML against.

:data:`LOSS_NAMES` names every label-based, pair-based and proxy-based loss
of the library with its reference's default hyper-parameters.
:func:`init_loss_params` makes the parameters a loss owns (the ``[C, E]``
proxies of a proxy loss; none for the others), which
:func:`hdml_jax.train_state.create_train_state` keeps as ``params["loss"]``
with their own optimizer group (``OptimizerConfig.loss_lr``), so they are
checkpointed and resumed with the model. :func:`make_loss_train_step` is the
step: backbone and embedding in training mode, the loss on the embeddings
(each loss normalises them or not, as its paper does), one Adam per group.

Batches are ``{"images", "labels"}`` with classes repeated for the pair
losses (an M-per-class sampler, ``m >= 2``); any batch suits a proxy loss.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hdml_jax import label_losses, pair_losses, proxy_losses
from hdml_jax.networks import Networks
from hdml_jax.train_state import HDMLTrainState

__all__ = ["LOSS_NAMES", "PAIR_LOSSES", "PROXY_LOSSES", "LossSpec", "init_loss_params", "loss_spec",
           "make_loss_train_step"]


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """A library loss as the step calls it: ``fn(loss_params, embeddings, labels, rng) -> scalar``."""

  name: str
  fn: Callable
  proxies: bool          # owns [C, E] proxies (needs the number of training classes)
  needs_pairs: bool      # needs classes repeated in the batch


def _pair(fn, **kwargs):
  return lambda params, e, y, rng: fn(e, y, **kwargs)


def _proxy(fn, **kwargs):
  return lambda params, e, y, rng: fn(e, y, params["proxies"], **kwargs)


def _margin(params, e, y, rng):
  return pair_losses.margin_loss(e, y, negatives=pair_losses.distance_weighted_sampling(rng, e, y))


_SPECS = {
    "npair_labels": (_pair(label_losses.npair_loss_from_labels), False, True),
    "triplet_all": (_pair(label_losses.triplet_loss_from_labels, mining="all"), False, True),
    "triplet_batch_hard": (_pair(label_losses.triplet_loss_from_labels, mining="batch_hard"), False, True),
    "triplet_semi_hard": (_pair(label_losses.triplet_loss_from_labels, mining="semi_hard"), False, True),
    "contrastive_labels": (_pair(label_losses.contrastive_loss_from_labels), False, True),
    "multi_similarity": (_pair(pair_losses.multi_similarity_loss), False, True),
    "lifted_structure": (_pair(pair_losses.lifted_structure_loss), False, True),
    "circle": (_pair(pair_losses.circle_loss), False, True),
    "supervised_contrastive": (_pair(pair_losses.supervised_contrastive_loss), False, True),
    "margin": (_margin, False, True),
    "proxy_nca": (_proxy(proxy_losses.proxy_nca_loss), True, False),
    "proxy_anchor": (_proxy(proxy_losses.proxy_anchor_loss), True, False),
    "normalized_softmax": (_proxy(proxy_losses.normalized_softmax_loss), True, False),
    "cosface": (_proxy(proxy_losses.cosface_loss), True, False),
    "arcface": (_proxy(proxy_losses.arcface_loss), True, False),
}

#: Every loss :func:`make_loss_train_step` trains, by name.
LOSS_NAMES = tuple(_SPECS)
#: The losses that own proxies (and need the number of training classes).
PROXY_LOSSES = tuple(n for n, (_, p, _) in _SPECS.items() if p)
#: The losses that need classes repeated within a batch.
PAIR_LOSSES = tuple(n for n, (_, _, pairs) in _SPECS.items() if pairs)


def loss_spec(name: str) -> LossSpec:
  """The :class:`LossSpec` of ``name``; an unknown name is refused with the list of names."""
  if name not in _SPECS:
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}.")
  fn, proxies, needs_pairs = _SPECS[name]
  return LossSpec(name, fn, proxies, needs_pairs)


def init_loss_params(name: str, key: jax.Array, *, embedding_dim: int, num_classes: int | None = None) -> dict:
  """The parameters loss ``name`` owns: ``{"proxies": [num_classes, embedding_dim]}`` or ``{}``.

  >>> init_loss_params("proxy_anchor", jax.random.key(0), embedding_dim=4, num_classes=3)["proxies"].shape
  (3, 4)
  >>> init_loss_params("multi_similarity", jax.random.key(0), embedding_dim=4)
  {}
  """
  spec = loss_spec(name)
  if not spec.proxies:
    return {}
  if num_classes is None or num_classes < 2:
    raise ValueError(f"loss {name!r} learns one proxy per training class: it needs num_classes >= 2, "
                     f"got {num_classes!r}.")
  return {"proxies": proxy_losses.init_proxies(key, num_classes, embedding_dim)}


def make_loss_train_step(networks: Networks, name: str, *, axis_name: str | None = None):
  """``step(state, batch, rng) -> (state, metrics)`` training backbone, embedding and the loss's own parameters.

  ``state`` comes from :func:`~hdml_jax.train_state.create_train_state`
  with ``config.hdml`` off and ``loss_params=init_loss_params(name, ...)``.
  ``metrics`` holds ``loss`` (also as ``j_m``), per-group gradient norms and
  ``finite``; ``axis_name`` as for :func:`hdml_jax.train_step.make_train_step`.
  """
  spec = loss_spec(name)

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
    bstats = state.batch_stats

    def total(params):
      y, bb_new = networks.backbone.apply(
          {"params": params["backbone"], "batch_stats": bstats["backbone"]}, images, train=True,
          mutable=["batch_stats"])
      z, emb_new = networks.embedding.apply(
          {"params": params["embedding"], "batch_stats": bstats["embedding"]}, y, train=True,
          mutable=["batch_stats"])
      value = spec.fn(params.get("loss", {}), z, labels, rng)
      return value, {"backbone": bb_new.get("batch_stats", {}), "embedding": emb_new.get("batch_stats", {})}

    (value, new_bstats), grads = jax.value_and_grad(total, has_aux=True)(state.params)
    grads, new_bstats, value = pmean(grads), pmean(new_bstats), pmean(value)
    metrics = {"loss": value, "j_m": value, "finite": jnp.isfinite(value)}
    for key, g in grads.items():
      metrics[f"grad_norm/{key}"] = optax.tree.norm(g)
    new_state = state.apply_gradients(grads=grads).replace(batch_stats={**bstats, **new_bstats})
    return new_state, metrics

  return step
