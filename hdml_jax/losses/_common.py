"""What every loss shares: the checks, the label masks, the one reduction, distances, cosines and a masked
log-sum-exp whose excluded entries never reach a gradient as ``inf - inf`` or ``0 * inf``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hdml_jax import _checks
from hdml_jax.distances import l2_normalize, pairwise_squared_distances, safe_sqrt
from hdml_jax.losses._memory import References

__all__ = ["REDUCTIONS", "check_batch", "check_references", "cosine", "distances", "log1p_sum_exp", "masked_lse",
           "masks", "pairs", "reduce"]

#: The ``reduction=`` values of every loss.
REDUCTIONS = ("mean", "sum", "none")


def check_batch(embeddings, labels, where: str, *, needs_pairs: bool, require_pairs: bool = False,
                references: References | None = None):
  """The checks every ``loss(embeddings, labels)`` makes: shapes and dtypes at trace time; on concrete inputs,
  finite embeddings and (``needs_pairs``) a positive pair, or (``require_pairs``) two samples of every class."""
  _checks.check_embeddings(embeddings, "embeddings", where)
  if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
    raise ValueError(f"{where}: labels must have shape ({embeddings.shape[0]},) for embeddings "
                     f"{tuple(embeddings.shape)}, got {tuple(labels.shape)}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"{where}: labels must be integers, got dtype {labels.dtype}.")
  if references is not None:
    check_references(references, embeddings, where)
    needs_pairs = require_pairs = False   # positives may come from the references
  if isinstance(labels, jax.core.Tracer) or isinstance(embeddings, jax.core.Tracer):
    return   # traced: the masks handle every case; nothing to inspect
  e = np.asarray(embeddings)
  if not np.isfinite(e).all():
    rows = np.flatnonzero(~np.isfinite(e).all(axis=1))
    raise ValueError(f"{where}: embeddings hold NaN or infinite values (rows {rows[:5].tolist()}).")
  if needs_pairs:
    classes, counts = np.unique(np.asarray(labels), return_counts=True)
    if not (counts >= 2).any():
      raise ValueError(f"{where}: no class has two samples in this batch, so there is no positive pair "
                       f"(use a sampler that draws at least two samples per class).")
    if require_pairs and (counts < 2).any():
      single = classes[counts < 2]
      raise ValueError(f"{where}: class{'es' if single.size > 1 else ''} {single[:10].tolist()} "
                       f"{'have' if single.size > 1 else 'has'} a single sample in this batch; every class "
                       "needs at least two.")


def check_references(references, embeddings, where: str) -> None:
  """``references`` is a :class:`~hdml_jax.losses.References` whose shapes fit ``[B, E]`` embeddings."""
  if not isinstance(references, References):
    raise TypeError(f"{where}: references must be a hdml_jax.losses.References, got {type(references).__name__}.")
  b, e = embeddings.shape
  r, lab, mask = references
  if r.ndim != 2 or r.shape[1] != e:
    raise ValueError(f"{where}: references.embeddings must be [K, {e}] for embeddings {tuple(embeddings.shape)}, "
                     f"got {tuple(r.shape)}.")
  k = r.shape[0]
  if lab.shape != (k,) or not jnp.issubdtype(lab.dtype, jnp.integer):
    raise ValueError(f"{where}: references.labels must be [{k}] integers, got {tuple(lab.shape)} {lab.dtype}.")
  if mask.shape != (b, k) or mask.dtype != jnp.bool_:
    raise ValueError(f"{where}: references.mask must be a [{b}, {k}] bool array, got {tuple(mask.shape)} "
                     f"{mask.dtype}.")


def pairs(embeddings, labels, references):
  """``(columns, positives, negatives, allowed)``: the rows against their own batch, or against the references."""
  if references is None:
    pos, neg = masks(labels)
    return embeddings, pos, neg, ~jnp.eye(embeddings.shape[0], dtype=bool)
  same = labels[:, None] == references.labels[None, :]
  mask = references.mask
  return references.embeddings.astype(embeddings.dtype), same & mask, ~same & mask, mask


def reduce(per_item: jax.Array, valid: jax.Array, reduction: str, where: str) -> jax.Array:
  """The one reduction of every loss: ``"none"`` (``per_item``, 0 where not ``valid``), ``"sum"``, or ``"mean"``
  over the valid items."""
  if reduction not in REDUCTIONS:
    raise ValueError(f"{where}: reduction must be one of {REDUCTIONS}, got {reduction!r}.")
  per_item = jnp.where(valid, per_item, 0.0)
  if reduction == "none":
    return per_item
  if reduction == "sum":
    return jnp.sum(per_item)
  return jnp.sum(per_item) / jnp.maximum(jnp.sum(valid), 1)


def distances(embeddings, distance: str, where: str, columns=None) -> jax.Array:
  """``[B, K]`` Euclidean (safe square root) or squared distances to ``columns`` (default: the rows)."""
  d2 = pairwise_squared_distances(embeddings, embeddings if columns is None else columns)
  if distance == "squared":
    return d2
  if distance == "euclidean":
    return safe_sqrt(d2)
  raise ValueError(f"{where}: distance must be 'euclidean' or 'squared', got {distance!r}.")


def masks(labels):
  """``(positives, negatives)`` ``[B, B]`` masks of a batch against itself (a row is not its own positive)."""
  b = labels.shape[0]
  same = labels[:, None] == labels[None, :]
  not_self = ~jnp.eye(b, dtype=bool)
  return same & not_self, ~same


def cosine(embeddings: jax.Array, columns: jax.Array | None = None) -> jax.Array:
  """``[B, K]`` cosine similarities of the rows with ``columns`` (default: the rows themselves)."""
  unit = l2_normalize(embeddings)
  return unit @ (unit if columns is None else l2_normalize(columns)).T


def masked_lse(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(log sum_{mask} exp(x), any(mask))`` per row; rows with an empty mask get 0 (and ``False``)."""
  any_ = mask.any(axis=1)
  peak = jnp.max(jnp.where(mask, x, -jnp.inf), axis=1)
  peak = jax.lax.stop_gradient(jnp.where(any_, peak, 0.0))
  safe = jnp.where(mask, x, peak[:, None])          # excluded entries: a finite stand-in
  total = jnp.sum(jnp.where(mask, jnp.exp(safe - peak[:, None]), 0.0), axis=1)
  return jnp.where(any_, jnp.log(jnp.where(any_, total, 1.0)) + peak, 0.0), any_


def log1p_sum_exp(x: jax.Array, mask: jax.Array) -> jax.Array:
  """``log(1 + sum_{mask} exp(x))`` per row (0 for an empty mask): a log-sum-exp with a 0 term added."""
  b = x.shape[0]
  ones = jnp.ones((b, 1), bool)
  value, _ = masked_lse(jnp.concatenate([jnp.zeros((b, 1), x.dtype), x], axis=1),
                         jnp.concatenate([ones, mask], axis=1))
  return value
