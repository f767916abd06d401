"""Metric losses in the ``loss(embeddings, labels)`` convention.

Any batch in which a class may appear several times works (a class-balanced
sampler giving at least two samples per class is the usual source). Every
function is pure, jit-able and shape-static: tuples are selected with label
masks (``labels[:, None] == labels[None, :]``), never with Python loops or
data-dependent shapes, and a row without a valid tuple (an anchor whose class
appears once, or no negative in the batch) contributes nothing — with a
finite, zero gradient, never NaN.

Distances are Euclidean, computed with a safe square root (finite gradients
at coincident points); ``distance="squared"`` uses squared distances.

When the labels are concrete (outside ``jit``), the inputs are checked on the
host: wrong length or dtype, non-finite embeddings, and — for the losses that
need positive pairs — a batch where no class has two samples, or
(``require_pairs=True``) any class with a single sample, named.

Every loss here takes ``references=`` (:class:`hdml_jax.cross_batch.References`):
its rows are then compared with those columns (a cross-batch memory) under
the references' pair mask instead of with their own batch; the batch then
needs no positive pair of its own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hdml_jax import _checks
from hdml_jax.cross_batch import References
from hdml_jax.distances import pairwise_squared_distances, safe_sqrt

__all__ = [
    "MININGS",
    "REDUCTIONS",
    "contrastive_loss_from_labels",
    "npair_loss_from_labels",
    "triplet_loss_from_labels",
]


#: The ``reduction=`` values of the label losses.
REDUCTIONS = ("mean", "sum", "none")
#: The ``mining=`` values of :func:`triplet_loss_from_labels`.
MININGS = ("all", "batch_hard", "semi_hard")


def _check(embeddings, labels, where: str, *, needs_pairs: bool, require_pairs: bool = False,
           references: References | None = None):
  _checks.check_embeddings(embeddings, "embeddings", where)
  if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
    raise ValueError(f"{where}: labels must have shape ({embeddings.shape[0]},) for embeddings "
                     f"{tuple(embeddings.shape)}, got {tuple(labels.shape)}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"{where}: labels must be integers, got dtype {labels.dtype}.")
  if references is not None:
    _check_references(references, embeddings, where)
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


def _check_references(references, embeddings, where: str) -> None:
  if not isinstance(references, References):
    raise TypeError(f"{where}: references must be a hdml_jax.cross_batch.References, got {type(references).__name__}.")
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


def _pairs(embeddings, labels, references):
  """``(columns, positives, negatives, allowed)``: the rows against their own batch, or against the references."""
  if references is None:
    pos, neg = _masks(labels)
    return embeddings, pos, neg, ~jnp.eye(embeddings.shape[0], dtype=bool)
  same = labels[:, None] == references.labels[None, :]
  mask = references.mask
  return references.embeddings.astype(embeddings.dtype), same & mask, ~same & mask, mask


def _reduce(per_item: jax.Array, valid: jax.Array, reduction: str, where: str) -> jax.Array:
  if reduction not in REDUCTIONS:
    raise ValueError(f"{where}: reduction must be one of {REDUCTIONS}, got {reduction!r}.")
  per_item = jnp.where(valid, per_item, 0.0)
  if reduction == "none":
    return per_item
  if reduction == "sum":
    return jnp.sum(per_item)
  return jnp.sum(per_item) / jnp.maximum(jnp.sum(valid), 1)


def _distances(embeddings, distance: str, where: str, columns=None) -> jax.Array:
  d2 = pairwise_squared_distances(embeddings, embeddings if columns is None else columns)
  if distance == "squared":
    return d2
  if distance == "euclidean":
    return safe_sqrt(d2)
  raise ValueError(f"{where}: distance must be 'euclidean' or 'squared', got {distance!r}.")


def _masks(labels):
  b = labels.shape[0]
  same = labels[:, None] == labels[None, :]
  not_self = ~jnp.eye(b, dtype=bool)
  return same & not_self, ~same


def npair_loss_from_labels(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    l2_reg: float = 0.0,
    reduction: str = "mean",
    require_pairs: bool = False,
    references: References | None = None,
) -> jax.Array:
  r"""Multi-class N-pair loss: each row against all others, its positives as soft targets.

  .. math::

     \ell_i = -\sum_{j \in P(i)} \frac{1}{|P(i)|}
              \log \frac{e^{e_i \cdot e_j}}{\sum_{k \ne i} e^{e_i \cdot e_k}}

  with ``P(i)`` the other rows of ``i``'s class; rows with ``P(i)`` empty
  are left out. ``l2_reg`` adds ``l2_reg * mean_i |e_i|^2`` (to the mean;
  to every row for ``"none"``).

  Args:
    embeddings: ``[B, E]``.
    labels: ``[B]`` integer classes.
    reduction: ``"mean"`` over rows with a positive, ``"sum"``, or
      ``"none"`` (``[B]``, 0 for rows without a positive).

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
  >>> round(float(npair_loss_from_labels(e, jnp.array([0, 0, 1, 1]))), 4)   # log(1 + 2/e)
  0.5514
  """
  where = "npair_loss_from_labels"
  _check(embeddings, labels, where, needs_pairs=True, require_pairs=require_pairs, references=references)
  columns, pos, _, allowed = _pairs(embeddings, labels, references)
  logits = embeddings @ columns.T
  # A row with no allowed column (possible with references only) gets zeros: finite, and left out below.
  logits = jnp.where(allowed, logits, jnp.where(allowed.any(axis=1, keepdims=True), -jnp.inf, 0.0))
  log_p = jax.nn.log_softmax(logits, axis=1)
  n_pos = jnp.sum(pos, axis=1)
  valid = n_pos > 0
  targets = pos / jnp.maximum(n_pos, 1)[:, None]
  per_row = -jnp.sum(jnp.where(pos, targets * log_p, 0.0), axis=1)
  reg = l2_reg * jnp.mean(jnp.sum(jnp.square(embeddings), axis=1))
  out = _reduce(per_row, valid, reduction, where)
  return out + (jnp.where(valid, reg, 0.0) if reduction == "none" else reg)


def triplet_loss_from_labels(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    margin: float = 0.2,
    mining: str = "all",
    distance: str = "euclidean",
    reduction: str = "mean",
    require_pairs: bool = False,
    references: References | None = None,
) -> jax.Array:
  r"""Triplet loss over the batch's valid triplets, with in-batch mining.

  .. math::

     \ell(a, p, n) = \max(0,\; d(a, p) - d(a, n) + m)

  over (a, p) of one class (a != p) and n of another. ``mining``:

  * ``"all"``: every valid triplet; ``"mean"`` averages over them;
  * ``"batch_hard"``: per anchor, its farthest positive and nearest
    negative; ``"mean"`` averages over anchors that have both;
  * ``"semi_hard"``: per positive pair, the nearest negative with
    ``d(a, p) < d(a, n) < d(a, p) + m``; pairs without one are left out;
    ``"mean"`` averages over the pairs kept.

  ``reduction="none"`` returns ``[B]`` per-anchor means (0 where an anchor
  has no valid triplet).

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[0., 0.], [0., 1.], [0., 1.5], [3., 0.]])
  >>> # anchors' (hardest positive, nearest negative): (1, 1.5), (1, 0.5), (3.354, 0.5), (3.354, 3)
  >>> round(float(triplet_loss_from_labels(e, jnp.array([0, 0, 1, 1]), margin=1.0, mining="batch_hard")), 4)
  1.8021
  """
  where = "triplet_loss_from_labels"
  if mining not in MININGS:
    raise ValueError(f"{where}: mining must be one of {MININGS}, got {mining!r}.")
  _check(embeddings, labels, where, needs_pairs=True, require_pairs=require_pairs, references=references)
  columns, pos, neg, _ = _pairs(embeddings, labels, references)
  d = _distances(embeddings, distance, where, columns)
  if mining == "batch_hard":
    hardest_pos = jnp.max(jnp.where(pos, d, -jnp.inf), axis=1)
    hardest_neg = jnp.min(jnp.where(neg, d, jnp.inf), axis=1)
    valid = pos.any(axis=1) & neg.any(axis=1)
    per_anchor = jax.nn.relu(jnp.where(valid, hardest_pos - hardest_neg, 0.0) + margin)
    return _reduce(per_anchor, valid, reduction, where)
  # [a, p, n] margins of every candidate triplet.
  m = d[:, :, None] - d[:, None, :] + margin
  trip = pos[:, :, None] & neg[:, None, :]
  if mining == "semi_hard":
    d_ap, d_an = d[:, :, None], d[:, None, :]
    semi = trip & (d_an > d_ap) & (d_an < d_ap + margin)
    chosen_d = jnp.min(jnp.where(semi, d_an, jnp.inf), axis=2)       # [a, p]
    pair_ok = semi.any(axis=2)
    per_pair = jnp.where(pair_ok, d - jnp.where(pair_ok, chosen_d, 0.0) + margin, 0.0)
    counts = pair_ok.sum(axis=1)
    if reduction == "none":
      return jnp.where(counts > 0, per_pair.sum(axis=1) / jnp.maximum(counts, 1), 0.0)
    return _reduce(per_pair.ravel(), pair_ok.ravel(), reduction, where)
  losses = jax.nn.relu(jnp.where(trip, m, 0.0))
  counts = trip.sum(axis=(1, 2))
  if reduction == "none":
    return jnp.where(counts > 0, jnp.where(trip, losses, 0.0).sum(axis=(1, 2)) / jnp.maximum(counts, 1), 0.0)
  return _reduce(losses.ravel(), trip.ravel(), reduction, where)


def contrastive_loss_from_labels(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    margin: float = 1.0,
    distance: str = "euclidean",
    reduction: str = "mean",
    references: References | None = None,
) -> jax.Array:
  r"""Contrastive loss over all pairs ``i != j`` of the batch.

  .. math::

     \ell_{ij} = [y_i = y_j]\, d_{ij}^2 + [y_i \ne y_j] \max(0, m - d_{ij})^2

  (``distance="squared"`` puts ``d^2`` in place of ``d``). ``"mean"`` is
  over the ``B (B - 1)`` ordered pairs; ``"none"`` gives ``[B]`` per-row
  means over the other rows.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[0., 0.], [0., 0.5], [0., 2.]])
  >>> float(contrastive_loss_from_labels(e, jnp.array([0, 0, 1])))   # (0.25 * 2) / 6
  0.0833...
  """
  where = "contrastive_loss_from_labels"
  _check(embeddings, labels, where, needs_pairs=False, references=references)
  columns, pos, neg, allowed = _pairs(embeddings, labels, references)
  d = _distances(embeddings, distance, where, columns)
  per_pair = jnp.where(pos, jnp.square(d), 0.0) + jnp.where(neg, jnp.square(jax.nn.relu(margin - d)), 0.0)
  if reduction == "none":
    return per_pair.sum(axis=1) / jnp.maximum(allowed.sum(axis=1), 1)
  return _reduce(per_pair.ravel(), allowed.ravel(), reduction, where)
