"""The registry of losses the train step trains by name (``loss.name``), with named fields.

:data:`LOSS_NAMES` names every loss the train step trains: the reference's
tuple losses (``npair``, ``triplet``, ``contrastive``, on batches laid out
as tuples) and every label-based, pair-based and proxy-based loss, each with
its reference's default hyper-parameters and the batch layout it expects
(:data:`LAYOUTS`); :func:`hyper_parameters`
lists a loss's keywords and defaults; :func:`loss_spec` gives the
:class:`LossSpec` the step calls; :func:`init_loss_params` makes the
parameters a loss owns (the ``[C, E]`` proxies of a proxy loss; none for the
others), which :func:`hdml_jax.train_state.create_train_state` keeps as
``params["loss"]`` with their own optimizer group.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import jax

from hdml_jax.losses import _label, _tuple
from hdml_jax.losses import _proxy as _proxy_losses

__all__ = ["LAYOUTS", "LOSS_NAMES", "PAIR_LOSSES", "PROXY_LOSSES", "TUPLE_LOSSES", "LossSpec", "hyper_parameters",
           "init_loss_params", "loss_spec"]

#: The batch layouts a loss may expect: ``pairs`` (``[anchors; positives]``, ``B = 2P``, the pairs' classes
#: distinct), ``triplets`` (``[anchors; positives; negatives]``, ``B = 3T``), ``classes`` (any order, classes
#: repeated: an M-per-class batch with ``m >= 2``), ``any`` (any batch: the proxy losses).
LAYOUTS = ("pairs", "triplets", "classes", "any")


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """A library loss as the step calls it: ``fn(loss_params, embeddings, labels, rng, references=None) -> scalar``.

  ``references`` (:class:`~hdml_jax.losses.References`) is accepted by
  the pair losses only (``needs_pairs``).
  """

  name: str
  fn: Callable
  proxies: bool          # owns [C, E] proxies (needs the number of training classes)
  needs_pairs: bool      # needs classes repeated in the batch (layout "classes")
  layout: str = "classes"   # one of LAYOUTS


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One row of the registry: how the step calls a loss, and where its hyper-parameters come from."""

  wrap: Callable | None  # (loss function, **keywords) -> LossSpec.fn; None: the entry builds its own (margin)
  functions: tuple       # the loss functions whose keyword-only arguments are its hyper-parameters
  fixed: dict            # keywords the entry sets itself (e.g. the triplet mining)
  proxies: bool
  needs_pairs: bool
  layout: str


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
    negatives = _label.distance_weighted_sampling(rng, e, y, references=references, **sampling)
    return _label.margin_loss(e, y, negatives=negatives, references=references, **kwargs)
  return loss


def _tuple_loss(fn, **kwargs):
  def loss(params, e, y, rng, references=None):
    if references is not None:
      raise ValueError(f"{fn.__name__} scores the tuples of its batch layout, not a cross-batch memory.")
    return fn(e, y, **kwargs)
  return loss


_P, _X, _T = _pair, _proxy, _tuple_loss
_SPECS = {
    "npair": _Entry(_T, (_tuple.npair_batch_loss,), {}, proxies=False, needs_pairs=False, layout="pairs"),
    "triplet": _Entry(_T, (_tuple.triplet_batch_loss,), {}, proxies=False, needs_pairs=False, layout="triplets"),
    "contrastive": _Entry(_T, (_tuple.contrastive_batch_loss,), {}, proxies=False, needs_pairs=False,
                          layout="triplets"),
    "npair_labels": _Entry(_P, (_label.npair_loss_from_labels,), {}, proxies=False, needs_pairs=True, layout="classes"),
    "triplet_all": _Entry(_P, (_label.triplet_loss_from_labels,), {"mining": "all"},
                          proxies=False, needs_pairs=True, layout="classes"),
    "triplet_batch_hard": _Entry(_P, (_label.triplet_loss_from_labels,), {"mining": "batch_hard"}, proxies=False,
                                 needs_pairs=True, layout="classes"),
    "triplet_semi_hard": _Entry(_P, (_label.triplet_loss_from_labels,), {"mining": "semi_hard"}, proxies=False,
                                needs_pairs=True, layout="classes"),
    "contrastive_labels": _Entry(_P, (_label.contrastive_loss_from_labels,), {},
                                 proxies=False, needs_pairs=True, layout="classes"),
    "multi_similarity": _Entry(_P, (_label.multi_similarity_loss,), {},
                               proxies=False, needs_pairs=True, layout="classes"),
    "lifted_structure": _Entry(_P, (_label.lifted_structure_loss,), {},
                               proxies=False, needs_pairs=True, layout="classes"),
    "circle": _Entry(_P, (_label.circle_loss,), {}, proxies=False, needs_pairs=True, layout="classes"),
    "supervised_contrastive": _Entry(_P, (_label.supervised_contrastive_loss,), {},
                                     proxies=False, needs_pairs=True, layout="classes"),
    "margin": _Entry(None, (_label.margin_loss, _label.distance_weighted_sampling), {}, proxies=False,
                     needs_pairs=True, layout="classes"),
    "proxy_nca": _Entry(_X, (_proxy_losses.proxy_nca_loss,), {}, proxies=True, needs_pairs=False, layout="any"),
    "proxy_anchor": _Entry(_X, (_proxy_losses.proxy_anchor_loss,), {}, proxies=True, needs_pairs=False, layout="any"),
    "normalized_softmax": _Entry(_X, (_proxy_losses.normalized_softmax_loss,), {},
                                 proxies=True, needs_pairs=False, layout="any"),
    "cosface": _Entry(_X, (_proxy_losses.cosface_loss,), {}, proxies=True, needs_pairs=False, layout="any"),
    "arcface": _Entry(_X, (_proxy_losses.arcface_loss,), {}, proxies=True, needs_pairs=False, layout="any"),
}
# Keywords the step sets itself (or that change what a loss returns): never hyper-parameters.
_RESERVED = ("reduction", "require_pairs", "references", "negatives", "key")

#: Every loss :func:`hdml_jax.train_step.make_train_step` trains, by name.
LOSS_NAMES = tuple(_SPECS)
#: The reference's tuple losses (batches laid out as tuples; their hyper-parameters are fields of
#: :class:`hdml_jax.config.HDMLConfig`, which HDML's synthetic loss shares).
TUPLE_LOSSES = tuple(n for n, entry in _SPECS.items() if entry.layout in ("pairs", "triplets"))
#: The losses that own proxies (and need the number of training classes).
PROXY_LOSSES = tuple(n for n, entry in _SPECS.items() if entry.proxies)
#: The losses that need classes repeated within a batch.
PAIR_LOSSES = tuple(n for n, entry in _SPECS.items() if entry.needs_pairs)


def hyper_parameters(name: str) -> dict:
  """The hyper-parameters loss ``name`` takes, with their defaults (its paper's).

  >>> hyper_parameters("multi_similarity")
  {'alpha': 2.0, 'beta': 50.0, 'base': 0.5, 'epsilon': 0.1, 'mining': True}
  >>> sorted(hyper_parameters("margin"))
  ['beta', 'cutoff', 'margin', 'nonzero_loss_cutoff']
  """
  if name not in _SPECS:
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}.")
  entry = _SPECS[name]
  out = {}
  for fn in entry.functions:
    for p in inspect.signature(fn).parameters.values():
      if p.kind is p.KEYWORD_ONLY and p.name not in _RESERVED and p.name not in entry.fixed:
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
  entry = _SPECS[name]
  fn = _margin(**hyper) if entry.wrap is None else entry.wrap(entry.functions[0], **entry.fixed, **hyper)
  return LossSpec(name, fn, entry.proxies, entry.needs_pairs, entry.layout)


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
  return {"proxies": _proxy_losses.init_proxies(key, num_classes, embedding_dim)}
