"""Hardness-aware synthesis of negatives (HDML, section 3.2 of the paper).

From each negative ``z-`` of an anchor ``z`` with positive ``z+`` a harder
negative is made by moving ``z-`` along the segment towards ``z``:

.. math::
   \\hat z^- = z + \\big[d^+ + (d^- - d^+) e^{-\\alpha / J_{avg}}\\big]
               \\frac{z^- - z}{d^-}\\quad\\text{if } d^- > d^+,
   \\qquad \\hat z^- = z^-\\ \\text{otherwise,}

with Euclidean ``d+ = |z - z+|`` and ``d- = |z - z-|``. As the running metric
loss ``J_avg`` falls, ``exp(-alpha/J_avg)`` falls and negatives are pulled
closer to the positive's distance. Gradients flow through every term (no
stop-gradient); the division only happens where ``d- > d+ >= 0``, and both
branches of each ``where`` are finite, so values and gradients stay finite
when an anchor coincides with its positive or its negative.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from hdml_jax import _checks
from hdml_jax.distances import safe_sqrt

__all__ = [
    "NPairTuples",
    "expand_label_tuples",
    "expand_npair_tuples",
    "hardness_factor",
    "npair_synthetic_labels",
    "synthesize_negatives",
]


def hardness_factor(j_avg: jax.Array, *, alpha: float) -> jax.Array:
  """``exp(-alpha / J_avg)``: 1 leaves negatives in place, 0 moves them to d+.

  >>> round(float(hardness_factor(90.0, alpha=90.0)), 4)
  0.3679
  """
  return jnp.exp(-alpha / jnp.asarray(j_avg, dtype=jnp.float32))


def _norm(x: jax.Array) -> jax.Array:
  return safe_sqrt(jnp.sum(jnp.square(x), axis=-1))


def _synthesize(anchors, positives, negatives, factor):
  """Broadcasting core of the formula; the last axis is the embedding."""
  d_pos = _norm(anchors - positives)
  direction = negatives - anchors
  d_neg = _norm(direction)
  harder = d_neg > d_pos
  safe_d_neg = jnp.where(harder, d_neg, 1.0)
  new_dist = d_pos + (d_neg - d_pos) * factor
  moved = anchors + (new_dist / safe_d_neg)[..., None] * direction
  return jnp.where(harder[..., None], moved, negatives)


def synthesize_negatives(
    anchors: jax.Array,
    positives: jax.Array,
    negatives: jax.Array,
    *,
    alpha: float,
    j_avg: jax.Array | float,
) -> jax.Array:
  """One hardness-augmented negative per tuple (the triplet form).

  Args:
    anchors: ``[T, E]`` anchors ``z``.
    positives: ``[T, E]`` positives ``z+`` (only ``d+`` is used).
    negatives: ``[T, E]`` negatives ``z-``.
    alpha: the hardness temperature (reference 90).
    j_avg: the running average metric loss ``J_avg`` (a scalar; an input,
      not differentiated by the train step).

  Returns:
    ``[T, E]`` augmented negatives; row ``i`` lies on the segment from
    ``anchors[i]`` to ``negatives[i]`` at distance
    ``d+ + (d- - d+) exp(-alpha/J_avg)`` where ``d- > d+``, and equals
    ``negatives[i]`` elsewhere.

  >>> import jax.numpy as jnp
  >>> z = jnp.zeros((1, 2)); zp = jnp.array([[1., 0.]]); zn = jnp.array([[0., 3.]])
  >>> synthesize_negatives(z, zp, zn, alpha=1.0, j_avg=1e9)   # factor ~ 1
  Array([[0., 3.]], dtype=float32)
  >>> synthesize_negatives(z, zp, zn, alpha=1e9, j_avg=1.0)   # factor 0: at d+
  Array([[0., 1.]], dtype=float32)
  """
  where = "synthesize_negatives"
  for name, x in (("anchors", anchors), ("positives", positives), ("negatives", negatives)):
    _checks.check_embeddings(x, name, where)
  _checks.check_same_shape(
      [anchors, positives, negatives], ["anchors", "positives", "negatives"], where
  )
  if jnp.ndim(j_avg) != 0:
    raise ValueError(f"{where}: `j_avg` must be a scalar, got shape {jnp.shape(j_avg)}.")
  factor = hardness_factor(j_avg, alpha=alpha).astype(anchors.dtype)
  return _synthesize(anchors, positives, negatives, factor)


class NPairTuples(NamedTuple):
  """The synthetic N-pair tuples of one batch, all shapes static.

  Attributes:
    anchors: ``[P, E]`` the anchors, unchanged.
    candidates: ``[P, P, E]``; ``candidates[i, j]`` is positive ``j`` made
      harder for anchor ``i`` (``candidates[i, i]`` is anchor ``i``'s own
      positive, unchanged).
  """

  anchors: jax.Array
  candidates: jax.Array

  @property
  def num_pairs(self) -> int:
    return self.anchors.shape[0]

  def flat(self) -> jax.Array:
    """``[P + P^2, E]``: anchors then candidates row by row (generator input)."""
    p, e = self.anchors.shape
    return jnp.concatenate([self.anchors, self.candidates.reshape(p * p, e)], axis=0)

  def unflatten(self, flat: jax.Array) -> "NPairTuples":
    """Inverse of :meth:`flat` for any trailing width (``[P + P^2, F]``)."""
    p = self.num_pairs
    if flat.ndim != 2 or flat.shape[0] != p + p * p:
      raise ValueError(
          f"NPairTuples.unflatten: expected shape ({p + p * p}, F) for P={p}, "
          f"got {tuple(flat.shape)}."
      )
    return NPairTuples(flat[:p], flat[p:].reshape(p, p, flat.shape[1]))


def expand_npair_tuples(
    anchors: jax.Array,
    positives: jax.Array,
    *,
    alpha: float,
    j_avg: jax.Array | float,
) -> NPairTuples:
  """Pairs every anchor with all P positives as hardness-augmented negatives.

  For anchor ``i`` and positive ``j``, the negative ``p_j`` is synthesised
  with ``d+ = |a_i - p_i|``; the diagonal ``j = i`` has ``d- = d+`` and is
  left unchanged. This yields P anchors and P^2 candidates (4096 for the
  reference P = 64).

  Args:
    anchors: ``[P, E]``.
    positives: ``[P, E]``; row ``i`` shares anchor ``i``'s class.
    alpha, j_avg: as in :func:`synthesize_negatives`.

  Returns:
    :class:`NPairTuples` with ``anchors [P, E]`` and ``candidates [P, P, E]``.

  >>> import jax.numpy as jnp
  >>> a = jnp.zeros((2, 2)); p = jnp.array([[1., 0.], [0., 4.]])
  >>> t = expand_npair_tuples(a, p, alpha=1e9, j_avg=1.0)
  >>> t.candidates[0].tolist()   # p_1 moved to |a_0 - p_0| = 1; p_0 unchanged
  [[1.0, 0.0], [0.0, 1.0]]
  >>> t.flat().shape
  (6, 2)
  """
  where = "expand_npair_tuples"
  _checks.check_embeddings(anchors, "anchors", where)
  _checks.check_embeddings(positives, "positives", where)
  _checks.check_same_shape([anchors, positives], ["anchors", "positives"], where)
  if jnp.ndim(j_avg) != 0:
    raise ValueError(f"{where}: `j_avg` must be a scalar, got shape {jnp.shape(j_avg)}.")
  factor = hardness_factor(j_avg, alpha=alpha).astype(anchors.dtype)
  a = anchors[:, None, :]        # [P, 1, E]
  p_own = positives[:, None, :]  # [P, 1, E] (d+ for row i)
  p_all = positives[None, :, :]  # [1, P, E]
  candidates = _synthesize(a, p_own, jnp.broadcast_to(p_all, (anchors.shape[0],) + positives.shape), factor)
  return NPairTuples(anchors, candidates)


def npair_synthetic_labels(labels: jax.Array) -> jax.Array:
  """Labels of the generator's synthetic rows ``[P + P^2]`` for N-pair tuples.

  Anchor ``i`` keeps ``labels[i]``; candidate ``(i, j)`` carries the label of
  positive ``j`` (the class it was made from).

  >>> import jax.numpy as jnp
  >>> npair_synthetic_labels(jnp.array([7, 9])).tolist()
  [7, 9, 7, 9, 7, 9]
  """
  if jnp.ndim(labels) != 1:
    raise ValueError(
        f"npair_synthetic_labels: `labels` must be [P], got shape {jnp.shape(labels)}."
    )
  p = labels.shape[0]
  return jnp.concatenate([labels, jnp.tile(labels, p)])


def expand_label_tuples(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    alpha: float,
    j_avg: jax.Array | float,
) -> NPairTuples:
  """Every sample of a labelled batch as a hardness-augmented negative of every anchor (pair-based losses).

  The construction of :func:`expand_npair_tuples` for a batch with classes
  repeated (an M-per-class batch), as HDML's synthesis on a pair-based loss
  such as Multi-Similarity needs it (an extension beyond the reference's
  N-pair, triplet and contrastive forms). Each row ``i`` is an anchor; for
  each other-class row ``j``, ``candidates[i, j]`` is ``z_j`` pulled
  towards ``z_i`` by the rule of :func:`synthesize_negatives` with ``d+`` the
  distance from ``z_i`` to its *farthest* positive (the one Multi-Similarity's
  mining measures negatives against), so as the loss falls the negatives
  approach the hardest positive's distance. Same-class rows, the anchor
  itself and the rows of an anchor without a positive are left unchanged.

  Args:
    embeddings: ``[B, E]``.
    labels: ``[B]`` integer classes.
    alpha, j_avg: as in :func:`synthesize_negatives`.

  Returns:
    :class:`NPairTuples` with ``anchors [B, E]`` (the rows) and
    ``candidates [B, B, E]``; candidate ``(i, j)`` keeps the label of row
    ``j``.

  >>> import jax.numpy as jnp
  >>> z = jnp.array([[0., 0.], [1., 0.], [0., 3.]])
  >>> t = expand_label_tuples(z, jnp.array([0, 0, 1]), alpha=1e9, j_avg=1.0)   # factor 0
  >>> t.candidates[0].tolist()   # row 2 moved to d+ = 1 from row 0; rows 0, 1 unchanged
  [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
  """
  where = "expand_label_tuples"
  _checks.check_embeddings(embeddings, "embeddings", where)
  b = embeddings.shape[0]
  if labels.shape != (b,):
    raise ValueError(f"{where}: labels must have shape ({b},) for embeddings {tuple(embeddings.shape)}, "
                     f"got {tuple(labels.shape)}.")
  if jnp.ndim(j_avg) != 0:
    raise ValueError(f"{where}: `j_avg` must be a scalar, got shape {jnp.shape(j_avg)}.")
  factor = hardness_factor(j_avg, alpha=alpha).astype(embeddings.dtype)
  same = labels[:, None] == labels[None, :]
  positives = same & ~jnp.eye(b, dtype=bool)
  direction = embeddings[None, :, :] - embeddings[:, None, :]        # [i, j]: z_j - z_i
  d = _norm(direction)
  d_pos = jnp.max(jnp.where(positives, d, 0.0), axis=1, keepdims=True)   # farthest positive, 0 if none
  harder = (~same) & positives.any(axis=1, keepdims=True) & (d > d_pos)
  safe_d = jnp.where(harder, d, 1.0)
  moved = embeddings[:, None, :] + ((d_pos + (d - d_pos) * factor) / safe_d)[..., None] * direction
  candidates = jnp.where(harder[..., None], moved, jnp.broadcast_to(embeddings[None], (b,) + embeddings.shape))
  return NPairTuples(embeddings, candidates)
