"""Metric-learning losses: N-pair, synthetic N-pair, triplet, contrastive.

All functions are pure: arrays in, a ``jax.Array`` out. Hyper-parameters are
keyword-only. Shapes and dtypes are checked at trace time, so a wrong input
fails with a message that names the shapes, inside or outside ``jax.jit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from hdml_jax import _checks
from hdml_jax.distances import rowwise_squared_distances, safe_sqrt

__all__ = [
    "contrastive_batch_loss",
    "contrastive_loss",
    "contrastive_triplet_loss",
    "cross_entropy",
    "npair_batch_loss",
    "npair_loss",
    "split_triplets",
    "synthetic_npair_loss",
    "triplet_batch_loss",
    "triplet_loss",
]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels.

  Args:
    logits: ``[N, C]`` unnormalised scores.
    labels: ``[N]`` integer class ids in ``[0, C)``.

  Returns:
    A scalar: ``mean_i -log softmax(logits_i)[labels_i]``.

  >>> import jax.numpy as jnp
  >>> round(float(cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3]))), 4)
  1.3863
  """
  where = "cross_entropy"
  _checks.check_rank(logits, 2, "logits", where)
  _checks.check_float(logits, "logits", where)
  _checks.check_labels(labels, logits.shape[0], "labels", where)
  return _checks.nan_unless_finite(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels)), logits)


def npair_loss(
    anchors: jax.Array,
    positives: jax.Array,
    *,
    labels: jax.Array | None = None,
    l2_reg: float = 0.0,
) -> jax.Array:
  """The N-pair loss (Sohn 2016) in the form the HDML reference uses.

  Logits are raw inner products ``S = a p^T`` (no normalisation, no
  temperature). Targets are the same-label matrix, row-normalised (the
  identity when ``labels`` is None, i.e. every pair is its own class).

  .. math::
     L = \\frac{1}{P}\\sum_i CE(S_i, t_i) + \\frac{\\lambda}{4}\\Big(
         \\frac{1}{P}\\sum_i\\lVert a_i\\rVert^2 +
         \\frac{1}{P}\\sum_i\\lVert p_i\\rVert^2\\Big)

  Args:
    anchors: ``[P, E]`` anchor embeddings.
    positives: ``[P, E]`` positive embeddings; row ``i`` shares anchor ``i``'s
      class.
    labels: optional ``[P]`` integer class of each pair.
    l2_reg: ``lambda`` of the embedding-norm penalty.

  Returns:
    A scalar (reduced over the P pairs).

  >>> import jax.numpy as jnp
  >>> a = jnp.array([[1., 0.], [0., 1.]])
  >>> round(float(npair_loss(a, a)), 4)   # log(1 + e^-1)
  0.3133
  """
  where = "npair_loss"
  _checks.check_embeddings(anchors, "anchors", where)
  _checks.check_embeddings(positives, "positives", where)
  _checks.check_same_shape([anchors, positives], ["anchors", "positives"], where)
  num_pairs = anchors.shape[0]
  if labels is None:
    targets = jnp.eye(num_pairs, dtype=anchors.dtype)
  else:
    _checks.check_labels(labels, num_pairs, "labels", where)
    same = (labels[:, None] == labels[None, :]).astype(anchors.dtype)
    targets = same / jnp.sum(same, axis=1, keepdims=True)
  logits = jnp.matmul(anchors, positives.T)
  xent = jnp.mean(optax.softmax_cross_entropy(logits, targets))
  reg = 0.25 * l2_reg * (
      jnp.mean(jnp.sum(jnp.square(anchors), axis=1))
      + jnp.mean(jnp.sum(jnp.square(positives), axis=1))
  )
  return _checks.nan_unless_finite(xent + reg, anchors, positives)


def synthetic_npair_loss(
    anchors: jax.Array,
    candidates: jax.Array,
    *,
    l2_reg: float = 0.0,
) -> jax.Array:
  """Per-anchor N-pair loss on synthetic tuples (HDML's ``J_syn``).

  Anchor ``i`` is scored against its own row of ``P`` candidates only (not a
  ``P x P^2`` matrix); candidate ``i`` of row ``i`` is its positive.

  .. math::
     L = \\frac{1}{P}\\sum_i CE\\big([a_i\\cdot c_{i,0},\\dots,a_i\\cdot
         c_{i,P-1}],\\ i\\big) + \\frac{\\lambda}{4}\\Big(
         \\frac{1}{P}\\sum_i\\lVert a_i\\rVert^2 +
         \\frac{1}{P^2}\\sum_{i,j}\\lVert c_{ij}\\rVert^2\\Big)

  Args:
    anchors: ``[P, E]`` (re-encoded) anchors.
    candidates: ``[P, P, E]``; ``candidates[i, j]`` is anchor ``i``'s
      candidate built from positive ``j``.
    l2_reg: ``lambda`` of the embedding-norm penalty.

  Returns:
    A scalar.

  >>> import jax.numpy as jnp
  >>> a = jnp.array([[1., 0.], [0., 1.]])
  >>> c = jnp.stack([a, a])            # every row holds the same two candidates
  >>> round(float(synthetic_npair_loss(a, c)), 4)
  0.3133
  """
  where = "synthetic_npair_loss"
  _checks.check_embeddings(anchors, "anchors", where)
  _checks.check_rank(candidates, 3, "candidates", where)
  _checks.check_float(candidates, "candidates", where)
  num_pairs, dim = anchors.shape
  if candidates.shape != (num_pairs, num_pairs, dim):
    raise ValueError(
        f"{where}: `candidates` must have shape (P, P, E) = "
        f"({num_pairs}, {num_pairs}, {dim}) for `anchors` {tuple(anchors.shape)}, "
        f"got {tuple(candidates.shape)}."
    )
  logits = jnp.einsum("ie,ije->ij", anchors, candidates)
  xent = jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(num_pairs))
  )
  reg = 0.25 * l2_reg * (
      jnp.mean(jnp.sum(jnp.square(anchors), axis=-1))
      + jnp.mean(jnp.sum(jnp.square(candidates), axis=-1))
  )
  return _checks.nan_unless_finite(xent + reg, anchors, candidates)


def split_triplets(embeddings: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Splits a ``[3T, E]`` batch laid out ``[anchors; positives; negatives]``.

  >>> import jax.numpy as jnp
  >>> a, p, n = split_triplets(jnp.arange(6.).reshape(6, 1))
  >>> a.ravel().tolist(), n.ravel().tolist()
  ([0.0, 1.0], [4.0, 5.0])
  """
  where = "split_triplets"
  _checks.check_embeddings(embeddings, "embeddings", where)
  batch = embeddings.shape[0]
  if batch % 3:
    raise ValueError(
        f"{where}: a triplet batch [anchors; positives; negatives] needs a size "
        f"divisible by 3, got shape {tuple(embeddings.shape)}."
    )
  t = batch // 3
  return embeddings[:t], embeddings[t:2 * t], embeddings[2 * t:]


def triplet_loss(
    anchors: jax.Array,
    positives: jax.Array,
    negatives: jax.Array,
    *,
    margin: float = 1.0,
    squared: bool = True,
    reduction: str = "sum",
) -> jax.Array:
  """Triplet margin loss; the reference uses squared distances, margin 1, sum.

  .. math:: L_i = \\max(d(a_i, p_i) - d(a_i, n_i) + m,\\ 0)

  where ``d`` is the squared (default) or plain Euclidean distance.

  Args:
    anchors, positives, negatives: ``[T, E]`` each.
    margin: ``m``.
    squared: use squared distances (reference) or Euclidean ones.
    reduction: ``"sum"`` (reference), ``"mean"`` or ``"none"`` (per triplet,
      ``[T]``).

  >>> import jax.numpy as jnp
  >>> a = jnp.zeros((2, 2)); p = jnp.array([[1., 0.], [0., 0.]])
  >>> n = jnp.array([[0., 1.], [0., 3.]])
  >>> triplet_loss(a, p, n, reduction="none")   # [1 - 1 + 1, 0 - 9 + 1]
  Array([1., 0.], dtype=float32)
  """
  where = "triplet_loss"
  _checks.check_reduction(reduction, where)
  for name, x in (("anchors", anchors), ("positives", positives), ("negatives", negatives)):
    _checks.check_embeddings(x, name, where)
  _checks.check_same_shape(
      [anchors, positives, negatives], ["anchors", "positives", "negatives"], where
  )
  d_pos = rowwise_squared_distances(anchors, positives)
  d_neg = rowwise_squared_distances(anchors, negatives)
  if not squared:
    d_pos, d_neg = safe_sqrt(d_pos), safe_sqrt(d_neg)
  return _checks.nan_unless_finite(_checks.reduce(jax.nn.relu(d_pos - d_neg + margin), reduction), anchors, positives, negatives)


def contrastive_loss(
    x1: jax.Array,
    x2: jax.Array,
    same: jax.Array,
    *,
    margin: float = 1.0,
    reduction: str = "mean",
) -> jax.Array:
  """Contrastive loss (Hadsell, Chopra and LeCun 2006), per pair.

  .. math:: L_i = s_i d_i^2 + (1 - s_i)\\max(0, m - d_i)^2,
            \\quad d_i = \\lVert x_{1,i} - x_{2,i}\\rVert

  Args:
    x1, x2: ``[N, E]`` paired embeddings.
    same: ``[N]`` 1 (or True) where the pair shares a class, else 0.
    margin: ``m``.
    reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (``[N]``).

  >>> import jax.numpy as jnp
  >>> x1 = jnp.zeros((2, 2)); x2 = jnp.array([[0.5, 0.], [0.5, 0.]])
  >>> contrastive_loss(x1, x2, jnp.array([1, 0]), reduction="none")
  Array([0.25, 0.25], dtype=float32)
  """
  where = "contrastive_loss"
  _checks.check_reduction(reduction, where)
  _checks.check_embeddings(x1, "x1", where)
  _checks.check_embeddings(x2, "x2", where)
  _checks.check_same_shape([x1, x2], ["x1", "x2"], where)
  if tuple(jnp.shape(same)) != (x1.shape[0],):
    raise ValueError(
        f"{where}: `same` must have shape ({x1.shape[0]},) to match `x1` "
        f"{tuple(x1.shape)}, got {tuple(jnp.shape(same))}."
    )
  same = jnp.asarray(same).astype(x1.dtype)
  d2 = rowwise_squared_distances(x1, x2)
  d = safe_sqrt(d2)
  per_pair = same * d2 + (1.0 - same) * jnp.square(jax.nn.relu(margin - d))
  return _checks.nan_unless_finite(_checks.reduce(per_pair, reduction), x1, x2)


# The reference tuple losses on a laid-out batch, ``loss(embeddings, labels)`` (what the registry trains by name).

def npair_batch_loss(embeddings: jax.Array, labels: jax.Array, *, l2_reg: float = 3e-3) -> jax.Array:
  """:func:`npair_loss` of a batch laid out ``[anchors; positives]`` (``B = 2P``), the pairs' labels from ``labels[:P]``.

  ``l2_reg`` defaults to the reference's Cars196 value.
  """
  p = embeddings.shape[0] // 2
  return npair_loss(embeddings[:p], embeddings[p:], labels=labels[:p], l2_reg=l2_reg)


def triplet_batch_loss(embeddings: jax.Array, labels: jax.Array, *, margin: float = 1.0) -> jax.Array:
  """:func:`triplet_loss` (squared distances, summed) of a batch laid out ``[anchors; positives; negatives]``."""
  del labels   # the layout says which rows pair up
  a, p, n = split_triplets(embeddings)
  return triplet_loss(a, p, n, margin=margin)


def contrastive_triplet_loss(anchors: jax.Array, positives: jax.Array, negatives: jax.Array, *,
                             margin: float = 1.0) -> jax.Array:
  """:func:`contrastive_loss` over the pairs ``(a, p)`` (similar) and ``(a, n)`` (dissimilar) of triplets, a mean."""
  x2 = jnp.concatenate([positives, negatives])
  same = jnp.concatenate([jnp.ones(anchors.shape[0]), jnp.zeros(anchors.shape[0])])
  return contrastive_loss(jnp.concatenate([anchors, anchors]), x2, same, margin=margin)


def contrastive_batch_loss(embeddings: jax.Array, labels: jax.Array, *, margin: float = 1.0) -> jax.Array:
  """:func:`contrastive_triplet_loss` of a batch laid out ``[anchors; positives; negatives]``."""
  del labels
  return contrastive_triplet_loss(*split_triplets(embeddings), margin=margin)
