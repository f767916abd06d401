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

A pair loss can also compare each batch with a cross-batch memory (XBM,
:mod:`hdml_jax.cross_batch`): build the state with
``memory=init_memory(size, E)`` and the step adds ``xbm_weight`` times the
loss of the batch against the memory, from step ``xbm_start`` on (the memory
is filled from then on too, as the XBM paper's code does).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hdml_jax import cross_batch, label_losses, pair_losses, proxy_losses
from hdml_jax.networks import Networks
from hdml_jax.train_state import HDMLTrainState

__all__ = ["LOSS_NAMES", "PAIR_LOSSES", "PROXY_LOSSES", "LossSpec", "hyper_parameters", "init_loss_params",
           "loss_spec", "make_loss_train_step"]


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """A library loss as the step calls it: ``fn(loss_params, embeddings, labels, rng, references=None) -> scalar``.

  ``references`` (:class:`hdml_jax.cross_batch.References`) is accepted by
  the pair losses only (``needs_pairs``).
  """

  name: str
  fn: Callable
  proxies: bool          # owns [C, E] proxies (needs the number of training classes)
  needs_pairs: bool      # needs classes repeated in the batch


def _pair(fn, **kwargs):
  return lambda params, e, y, rng, references=None: fn(e, y, references=references, **kwargs)


def _proxy(fn, **kwargs):
  def loss(params, e, y, rng, references=None):
    if references is not None:
      raise ValueError(f"{fn.__name__} compares embeddings with proxies, not with a cross-batch memory.")
    return fn(e, y, params["proxies"], **kwargs)
  return loss


_SAMPLING = ("cutoff", "nonzero_loss_cutoff")   # the margin loss's keys that go to its sampling


def _margin(**kwargs):
  sampling = {k: kwargs.pop(k) for k in _SAMPLING if k in kwargs}

  def loss(params, e, y, rng, references=None):
    negatives = pair_losses.distance_weighted_sampling(rng, e, y, references=references, **sampling)
    return pair_losses.margin_loss(e, y, negatives=negatives, references=references, **kwargs)
  return loss


# name -> (wrapper, the loss functions whose keywords it takes, fixed keywords, owns proxies, needs pairs)
_SPECS = {
    "npair_labels": (_pair, (label_losses.npair_loss_from_labels,), {}, False, True),
    "triplet_all": (_pair, (label_losses.triplet_loss_from_labels,), {"mining": "all"}, False, True),
    "triplet_batch_hard": (_pair, (label_losses.triplet_loss_from_labels,), {"mining": "batch_hard"}, False, True),
    "triplet_semi_hard": (_pair, (label_losses.triplet_loss_from_labels,), {"mining": "semi_hard"}, False, True),
    "contrastive_labels": (_pair, (label_losses.contrastive_loss_from_labels,), {}, False, True),
    "multi_similarity": (_pair, (pair_losses.multi_similarity_loss,), {}, False, True),
    "lifted_structure": (_pair, (pair_losses.lifted_structure_loss,), {}, False, True),
    "circle": (_pair, (pair_losses.circle_loss,), {}, False, True),
    "supervised_contrastive": (_pair, (pair_losses.supervised_contrastive_loss,), {}, False, True),
    "margin": (None, (pair_losses.margin_loss, pair_losses.distance_weighted_sampling), {}, False, True),
    "proxy_nca": (_proxy, (proxy_losses.proxy_nca_loss,), {}, True, False),
    "proxy_anchor": (_proxy, (proxy_losses.proxy_anchor_loss,), {}, True, False),
    "normalized_softmax": (_proxy, (proxy_losses.normalized_softmax_loss,), {}, True, False),
    "cosface": (_proxy, (proxy_losses.cosface_loss,), {}, True, False),
    "arcface": (_proxy, (proxy_losses.arcface_loss,), {}, True, False),
}
# Keywords the step sets itself (or that change what a loss returns): never hyper-parameters.
_RESERVED = ("reduction", "require_pairs", "references", "negatives", "key")

#: Every loss :func:`make_loss_train_step` trains, by name.
LOSS_NAMES = tuple(_SPECS)
#: The losses that own proxies (and need the number of training classes).
PROXY_LOSSES = tuple(n for n, spec in _SPECS.items() if spec[3])
#: The losses that need classes repeated within a batch.
PAIR_LOSSES = tuple(n for n, spec in _SPECS.items() if spec[4])


def hyper_parameters(name: str) -> dict:
  """The hyper-parameters loss ``name`` takes, with their defaults (its paper's).

  >>> hyper_parameters("multi_similarity")
  {'alpha': 2.0, 'beta': 50.0, 'base': 0.5, 'epsilon': 0.1, 'mining': True}
  >>> sorted(hyper_parameters("margin"))
  ['beta', 'cutoff', 'margin', 'nonzero_loss_cutoff']
  """
  if name not in _SPECS:
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}.")
  _, fns, fixed, _, _ = _SPECS[name]
  out = {}
  for fn in fns:
    for p in inspect.signature(fn).parameters.values():
      if p.kind is p.KEYWORD_ONLY and p.name not in _RESERVED and p.name not in fixed:
        out[p.name] = p.default
  return out


def loss_spec(name: str, hyper: dict | None = None) -> LossSpec:
  """The :class:`LossSpec` of ``name``, with ``hyper`` (a subset of :func:`hyper_parameters`) replacing defaults.

  An unknown name, or a hyper-parameter the loss does not take, is refused
  with the list of choices.
  """
  allowed = hyper_parameters(name)
  hyper = dict(hyper or {})
  unknown = sorted(set(hyper) - set(allowed))
  if unknown:
    raise ValueError(f"loss {name!r} takes no hyper-parameter {', '.join(map(repr, unknown))}; its "
                     f"hyper-parameters are {', '.join(f'{k}={v!r}' for k, v in allowed.items())}.")
  wrap, fns, fixed, proxies, needs_pairs = _SPECS[name]
  fn = _margin(**hyper) if wrap is None else wrap(fns[0], **fixed, **hyper)
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


def make_loss_train_step(networks: Networks, name: str, *, axis_name: str | None = None, xbm_start: int = 0,
                         xbm_weight: float = 1.0, hyper: dict | None = None):
  """``step(state, batch, rng) -> (state, metrics)`` training backbone, embedding and the loss's own parameters.

  ``state`` comes from :func:`~hdml_jax.train_state.create_train_state`
  with ``config.hdml`` off and ``loss_params=init_loss_params(name, ...)``.
  ``metrics`` holds ``loss`` (also as ``j_m``), per-group gradient norms and
  ``finite``; ``axis_name`` as for :func:`hdml_jax.train_step.make_train_step`.
  ``hyper`` replaces the loss's default hyper-parameters
  (:func:`hyper_parameters`).

  With a cross-batch memory in the state (``create_train_state(...,
  memory=cross_batch.init_memory(size, E))``, pair losses only), the loss is
  ``L(batch) + xbm_weight * L(batch against the memory)`` from step
  ``xbm_start`` on, when the memory also starts to be filled; before, the
  plain batch loss. ``metrics`` adds ``xbm_loss`` (0 before ``xbm_start``).
  Under ``pmap`` (``axis_name`` set) a memory is refused: each device would
  keep its own.
  """
  spec = loss_spec(name, hyper)
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
        xbm_value, new_memory = cross_batch.cross_batch_loss(
            lambda e, y, references: spec.fn(params.get("loss", {}), e, y, jax.random.fold_in(rng, 1), references),
            memory, z, labels)
        xbm_value = jnp.where(active, xbm_value, 0.0)
        value = value + xbm_weight * xbm_value
        aux["memory"] = jax.tree_util.tree_map(lambda new, old: jnp.where(active, new, old), new_memory, memory)
        aux["xbm_loss"] = xbm_value
      return value, aux

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
