"""The label-based losses, ``loss(embeddings, labels)``, with their mining.

N-pair, triplet (every, batch-hard or semi-hard triplets) and contrastive
losses over the labels of a batch, and the pair losses of the current
literature: Multi-Similarity, lifted structure, circle, supervised
contrastive and margin (with distance-weighted sampling).

Any batch in which a class may appear several times works (a class-balanced
sampler giving at least two samples per class is the usual source). Every
function is pure, jit-able and shape-static: tuples are selected with label
masks (``labels[:, None] == labels[None, :]``), never with Python loops or
data-dependent shapes, and a row without a valid tuple (an anchor whose class
appears once, or no negative in the batch) contributes nothing — with a
finite, zero gradient, never NaN. ``reduction`` is ``"mean"`` (over the rows
that have a valid tuple), ``"sum"`` or ``"none"``.

Distances are Euclidean, computed with a safe square root (finite gradients
at coincident points); ``distance="squared"`` uses squared distances.
Similarity-based losses (:func:`multi_similarity_loss`, :func:`circle_loss`,
:func:`supervised_contrastive_loss`) use the cosine similarity: the rows are
L2-normalised inside (safely: a zero row stays zero), as their papers do.
Every masked log-sum-exp is taken over finite stand-ins for the excluded
entries, so no ``inf - inf`` or ``0 * inf`` reaches a gradient.

When the labels are concrete (outside ``jit``), the inputs are checked on the
host: wrong length or dtype, non-finite embeddings, and — for the losses that
need positive pairs — a batch where no class has two samples, or
(``require_pairs=True``) any class with a single sample, named.

Every loss here takes ``references=`` (:class:`~hdml_jax.losses.References`):
its rows are then compared with those columns (a cross-batch memory) under
the references' pair mask instead of with their own batch; the batch then
needs no positive pair of its own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hdml_jax import _checks
from hdml_jax.distances import safe_sqrt
from hdml_jax.losses._common import check_batch as _check
from hdml_jax.losses._common import cosine as _cosine
from hdml_jax.losses._common import distances as _distances
from hdml_jax.losses._common import log1p_sum_exp as _log1p_sum_exp
from hdml_jax.losses._common import masked_lse as _masked_lse
from hdml_jax.losses._common import pairs as _pairs
from hdml_jax.losses._common import reduce as _reduce
from hdml_jax.losses._memory import References

__all__ = [
    "MININGS",
    "circle_loss",
    "contrastive_loss_from_labels",
    "distance_weighted_sampling",
    "lifted_structure_loss",
    "margin_loss",
    "multi_similarity_from_similarities",
    "multi_similarity_loss",
    "npair_loss_from_labels",
    "supervised_contrastive_loss",
    "triplet_loss_from_labels",
]


#: The ``mining=`` values of :func:`triplet_loss_from_labels`.
MININGS = ("all", "batch_hard", "semi_hard")


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
  return _checks.nan_unless_finite(out + (jnp.where(valid, reg, 0.0) if reduction == "none" else reg), embeddings)


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
    return _checks.nan_unless_finite(_reduce(per_anchor, valid, reduction, where), embeddings)
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
      return _checks.nan_unless_finite(jnp.where(counts > 0, per_pair.sum(axis=1) / jnp.maximum(counts, 1), 0.0), embeddings)
    return _checks.nan_unless_finite(_reduce(per_pair.ravel(), pair_ok.ravel(), reduction, where), embeddings)
  losses = jax.nn.relu(jnp.where(trip, m, 0.0))
  counts = trip.sum(axis=(1, 2))
  if reduction == "none":
    return _checks.nan_unless_finite(jnp.where(counts > 0, jnp.where(trip, losses, 0.0).sum(axis=(1, 2)) / jnp.maximum(counts, 1), 0.0), embeddings)
  return _checks.nan_unless_finite(_reduce(losses.ravel(), trip.ravel(), reduction, where), embeddings)


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
    return _checks.nan_unless_finite(per_pair.sum(axis=1) / jnp.maximum(allowed.sum(axis=1), 1), embeddings)
  return _checks.nan_unless_finite(_reduce(per_pair.ravel(), allowed.ravel(), reduction, where), embeddings)


def multi_similarity_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    epsilon: float = 0.1,
    mining: bool = True,
    reduction: str = "mean",
    require_pairs: bool = False,
    references: References | None = None,
) -> jax.Array:
  r"""Multi-Similarity loss with its pair mining (Wang et al., CVPR 2019).

  With ``S`` the cosine similarities, per anchor ``i``:

  .. math::

     \ell_i = \frac{1}{\alpha} \log\Big(1 + \sum_{p \in \tilde P_i} e^{-\alpha (S_{ip} - \lambda)}\Big)
            + \frac{1}{\beta} \log\Big(1 + \sum_{n \in \tilde N_i} e^{\beta (S_{in} - \lambda)}\Big)

  ``lambda`` is ``base``. With ``mining`` (the paper's), a negative is kept
  when ``S_in + epsilon > min_p S_ip`` and a positive when
  ``S_ip - epsilon < max_n S_in``; without, every pair is kept. The
  defaults are the paper's (alpha 2, beta 50, lambda 0.5, epsilon 0.1).
  ``"mean"`` averages over the anchors that have a positive in the batch.

  Args:
    embeddings: ``[B, E]`` (normalised inside).
    labels: ``[B]`` integer classes.
    alpha, beta, base, epsilon: the paper's constants.
    mining: keep only the informative pairs (the paper's miner).
    reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``[B]``).
    require_pairs: refuse (outside ``jit``) a batch with a single-sample class.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])   # S = 1 within a class, 0 across
  >>> # log(1 + e^(-2 (1 - 0.5))) / 2 + log(1 + 2 e^(50 (0 - 0.5))) / 50
  >>> round(float(multi_similarity_loss(e, jnp.array([0, 0, 1, 1]), mining=False)), 4)
  0.1566
  """
  where = "multi_similarity_loss"
  _check(embeddings, labels, where, needs_pairs=True, require_pairs=require_pairs, references=references)
  columns, pos, neg, _ = _pairs(embeddings, labels, references)
  return _checks.nan_unless_finite(_multi_similarity(_cosine(embeddings, columns if references is not None else None), pos, neg, alpha, beta, base, epsilon, mining, reduction, where), embeddings)


def multi_similarity_from_similarities(
    similarities: jax.Array,
    positives: jax.Array,
    negatives: jax.Array,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    epsilon: float = 0.1,
    mining: bool = True,
    reduction: str = "mean",
) -> jax.Array:
  r"""The Multi-Similarity loss of :func:`multi_similarity_loss` on given similarities and pair masks.

  For row ``i`` the pairs are ``similarities[i, j]`` with ``positives[i, j]``
  or ``negatives[i, j]`` set; the columns need not be the rows' own batch.
  HDML's synthesis on Multi-Similarity (:func:`hdml_jax.hardness.expand_label_tuples`)
  compares each anchor with its own synthetic candidates this way. The
  formula, mining and reduction are those of :func:`multi_similarity_loss`.

  Args:
    similarities: ``[B, K]`` (cosine similarities for the paper's loss).
    positives, negatives: ``[B, K]`` boolean masks of the pairs (disjoint).
    alpha, beta, base, epsilon, mining, reduction: as in :func:`multi_similarity_loss`.

  >>> import jax.numpy as jnp
  >>> s = jnp.array([[1.0, 0.0]]); p = jnp.array([[True, False]]); n = ~p
  >>> round(float(multi_similarity_from_similarities(s, p, n, mining=False)), 4)   # as the 4-point example
  0.1566
  """
  where = "multi_similarity_from_similarities"
  s, pos, neg = similarities, positives, negatives
  if s.ndim != 2 or pos.shape != s.shape or neg.shape != s.shape:
    raise ValueError(f"{where}: similarities must be [B, K] with positives and negatives of the same shape, got "
                     f"{tuple(s.shape)}, {tuple(pos.shape)} and {tuple(neg.shape)}.")
  if pos.dtype != jnp.bool_ or neg.dtype != jnp.bool_:
    raise TypeError(f"{where}: positives and negatives must be boolean masks, got {pos.dtype} and {neg.dtype}.")
  return _checks.nan_unless_finite(_multi_similarity(s, pos, neg, alpha, beta, base, epsilon, mining, reduction, where), similarities)


def _multi_similarity(s, pos, neg, alpha, beta, base, epsilon, mining, reduction, where):
  if mining:
    hardest_pos = jnp.min(jnp.where(pos, s, jnp.inf), axis=1, keepdims=True)
    hardest_neg = jnp.max(jnp.where(neg, s, -jnp.inf), axis=1, keepdims=True)
    neg_kept = neg & (s + epsilon > hardest_pos)
    pos_kept = pos & (s - epsilon < hardest_neg)
  else:
    neg_kept, pos_kept = neg, pos
  pos_term = _log1p_sum_exp(-alpha * (s - base), pos_kept) / alpha
  neg_term = _log1p_sum_exp(beta * (s - base), neg_kept) / beta
  return _reduce(pos_term + neg_term, pos.any(axis=1), reduction, where)


def lifted_structure_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    distance: str = "euclidean",
    reduction: str = "mean",
    require_pairs: bool = False,
    references: References | None = None,
) -> jax.Array:
  r"""The generalised lifted structure loss (Hermans, Beyer and Leibe 2017; Oh Song et al. 2016).

  Per anchor ``i`` with a positive and a negative in the batch:

  .. math::

     \ell_i = \Big[\log \sum_{p \in P_i} e^{d_{ip} - m_+} + \log \sum_{n \in N_i} e^{m_- - d_{in}}\Big]_+

  with Euclidean distances ``d`` (``distance="squared"``: squared ones),
  ``m_+ = pos_margin`` and ``m_- = neg_margin``. ``"mean"`` averages over
  the anchors that have both.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[0., 0.], [0., 0.5], [3., 0.], [3., 0.5]])   # d_ip = 0.5, every d_in >= 3
  >>> float(lifted_structure_loss(e, jnp.array([0, 0, 1, 1])))    # log e^0.5 + log(e^-2 + e^-2.04) < 0
  0.0
  """
  where = "lifted_structure_loss"
  _check(embeddings, labels, where, needs_pairs=True, require_pairs=require_pairs, references=references)
  columns, pos, neg, _ = _pairs(embeddings, labels, references)
  d = _distances(embeddings, distance, where, columns)
  pos_lse, has_pos = _masked_lse(d - pos_margin, pos)
  neg_lse, has_neg = _masked_lse(neg_margin - d, neg)
  valid = has_pos & has_neg
  return _checks.nan_unless_finite(_reduce(jax.nn.relu(pos_lse + neg_lse), valid, reduction, where), embeddings)


def circle_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    margin: float = 0.4,
    gamma: float = 80.0,
    reduction: str = "mean",
    require_pairs: bool = False,
    references: References | None = None,
) -> jax.Array:
  r"""Circle loss (Sun et al., CVPR 2020), pair-based form.

  With ``S`` the cosine similarities, ``m = margin``, weights
  ``a_p = [1 + m - S_ip]_+`` and ``a_n = [S_in + m]_+`` (held constant, as
  in the paper), per anchor ``i`` with a positive and a negative:

  .. math::

     \ell_i = \log\Big(1 + \sum_{n \in N_i} e^{\gamma a_n (S_{in} - m)}
                           \sum_{p \in P_i} e^{-\gamma a_p (S_{ip} - 1 + m)}\Big)

  The defaults (``m = 0.4``, ``gamma = 80``) are the paper's fine-grained
  image retrieval setting. ``"mean"`` averages over the anchors that have both.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
  >>> # per anchor log(1 + 2 e^(80 * 0.4 * (0 - 0.4)) e^(-80 * 0.4 * (1 - 0.6))) = log(1 + 2 e^-25.6)
  >>> float(circle_loss(e, jnp.array([0, 0, 1, 1]))) < 1e-10
  True
  """
  where = "circle_loss"
  _check(embeddings, labels, where, needs_pairs=True, require_pairs=require_pairs, references=references)
  columns, pos, neg, _ = _pairs(embeddings, labels, references)
  s = _cosine(embeddings, columns if references is not None else None)
  a_p = jax.lax.stop_gradient(jax.nn.relu(1.0 + margin - s))
  a_n = jax.lax.stop_gradient(jax.nn.relu(s + margin))
  pos_lse, has_pos = _masked_lse(-gamma * a_p * (s - (1.0 - margin)), pos)
  neg_lse, has_neg = _masked_lse(gamma * a_n * (s - margin), neg)
  valid = has_pos & has_neg
  return _checks.nan_unless_finite(_reduce(jax.nn.softplus(pos_lse + neg_lse), valid, reduction, where), embeddings)


def supervised_contrastive_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    temperature: float = 0.1,
    reduction: str = "mean",
    require_pairs: bool = False,
    references: References | None = None,
) -> jax.Array:
  r"""Supervised contrastive loss (Khosla et al., NeurIPS 2020; NT-Xent over labels).

  With ``S`` the cosine similarities and ``tau = temperature``, per anchor
  ``i`` with a positive (its ``L_out`` form):

  .. math::

     \ell_i = -\frac{1}{|P_i|} \sum_{p \in P_i}
              \log \frac{e^{S_{ip} / \tau}}{\sum_{k \ne i} e^{S_{ik} / \tau}}

  With one positive per anchor this is NT-Xent (SimCLR's loss). The default
  temperature is the paper's (0.1). ``"mean"`` averages over the anchors
  that have a positive.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
  >>> round(float(supervised_contrastive_loss(e, jnp.array([0, 0, 1, 1]), temperature=1.0)), 4)  # log(1 + 2/e)
  0.5514
  """
  where = "supervised_contrastive_loss"
  _check(embeddings, labels, where, needs_pairs=True, require_pairs=require_pairs, references=references)
  columns, pos, _, others = _pairs(embeddings, labels, references)
  logits = _cosine(embeddings, columns if references is not None else None) / temperature
  log_norm, _ = _masked_lse(logits, others)
  n_pos = jnp.sum(pos, axis=1)
  per_row = -jnp.sum(jnp.where(pos, logits - log_norm[:, None], 0.0), axis=1) / jnp.maximum(n_pos, 1)
  return _checks.nan_unless_finite(_reduce(per_row, n_pos > 0, reduction, where), embeddings)


def _unit_distances(embeddings: jax.Array, columns: jax.Array | None = None) -> jax.Array:
  return safe_sqrt(jnp.maximum(2.0 - 2.0 * _cosine(embeddings, columns), 0.0))


def distance_weighted_sampling(
    key: jax.Array,
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
    references: References | None = None,
) -> jax.Array:
  r"""Distance-weighted negative sampling (Wu et al., ICCV 2017): one negative per (anchor, column).

  On the unit sphere in ``n`` dimensions pairwise distances have the density
  ``q(d) \propto d^{n-2} (1 - d^2/4)^{(n-3)/2}``; sampling a negative with
  probability proportional to ``1 / q(d)`` spreads the negatives over all
  distances instead of the concentrated ones. As in the paper, ``d`` is
  clipped from below at ``cutoff`` (0.5), and negatives at
  ``d >= nonzero_loss_cutoff`` (1.4, where the margin loss is zero anyway) get
  weight 0; an anchor whose negatives all have weight 0 draws uniformly
  among its negatives, as the paper's code does.

  Returns:
    ``[B, B] int32`` (``[B, K]`` with ``references``, indices into them):
    entry ``(i, j)`` is a negative of anchor ``i`` drawn independently for
    each ``j`` (:func:`margin_loss` pairs it with the positive ``j``). Rows of
    an anchor without any negative hold ``i`` (``min(i, K - 1)``).

  >>> import jax, jax.numpy as jnp
  >>> e = jnp.array([[1., 0.], [1., 0.1], [0., 1.], [0.1, 1.]])
  >>> neg = distance_weighted_sampling(jax.random.key(0), e, jnp.array([0, 0, 1, 1]))
  >>> bool(jnp.all(neg[:2] >= 2) and jnp.all(neg[2:] <= 1))   # every draw is of the other class
  True
  """
  where = "distance_weighted_sampling"
  _check(embeddings, labels, where, needs_pairs=False, references=references)
  b, n = embeddings.shape
  columns, _, neg, _ = _pairs(embeddings, labels, references)
  k = columns.shape[0]
  d = jax.lax.stop_gradient(jnp.maximum(_unit_distances(embeddings, columns if references is not None else None),
                                        cutoff))
  # log(1 / q(d)); 1 - d^2/4 is kept positive (d = 2 is past nonzero_loss_cutoff and weighs 0 anyway)
  log_w = (2.0 - n) * jnp.log(d) - ((n - 3.0) / 2.0) * jnp.log(jnp.maximum(1.0 - 0.25 * jnp.square(d), 1e-12))
  weighted = neg & (d < nonzero_loss_cutoff)
  has_weighted = weighted.any(axis=1, keepdims=True)
  has_neg = neg.any(axis=1, keepdims=True)
  logits = jnp.where(has_weighted, jnp.where(weighted, log_w, -jnp.inf),        # the paper's weights
                     jnp.where(has_neg, jnp.where(neg, 0.0, -jnp.inf), 0.0))    # uniform; no negative: any
  draws = jax.random.categorical(key, logits[:, None, :], axis=-1, shape=(b, k))
  return jnp.where(has_neg, draws, jnp.minimum(jnp.arange(b), k - 1)[:, None]).astype(jnp.int32)


def margin_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    beta: float | jax.Array = 1.2,
    margin: float = 0.2,
    negatives: jax.Array | None = None,
    reduction: str = "mean",
    require_pairs: bool = False,
    references: References | None = None,
) -> jax.Array:
  r"""The margin loss of "Sampling Matters in Deep Embedding Learning" (Wu et al., ICCV 2017).

  With ``D`` the Euclidean distances of the L2-normalised embeddings, each
  positive pair ``(i, p)`` and negative pair ``(i, n)`` costs

  .. math::

     [\alpha + D_{ip} - \beta_i]_+ \qquad\text{and}\qquad [\alpha + \beta_i - D_{in}]_+

  ``alpha = margin`` (0.2); ``beta`` is the boundary (1.2): a number, or a
  learnable ``[C]`` array of one boundary per class (the paper's
  ``beta_0 + beta_c``, owned and optimised by the caller) indexed by the
  anchor's label. The pairs are triplets ``(i, p, n)``: with ``negatives``
  (from :func:`distance_weighted_sampling`), one per positive pair, ``n =
  negatives[i, p]``; without, every negative of ``i`` with every positive.
  ``"mean"`` divides the sum over all triplets' two terms by the number of
  terms that are non-zero (the paper's code); ``"none"`` returns each
  anchor's sum.

  >>> import jax.numpy as jnp
  >>> e = jnp.array([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])   # D = 0 within a class, sqrt(2) across
  >>> float(margin_loss(e, jnp.array([0, 0, 1, 1])))            # [0.2 + 0 - 1.2]_+ and [0.2 + 1.2 - 1.41]_+
  0.0
  """
  where = "margin_loss"
  _check(embeddings, labels, where, needs_pairs=True, require_pairs=require_pairs, references=references)
  if reduction not in ("mean", "sum", "none"):
    raise ValueError(f"{where}: reduction must be one of ('mean', 'sum', 'none'), got {reduction!r}.")
  beta = jnp.asarray(beta, embeddings.dtype)
  if beta.ndim == 1:
    if not isinstance(labels, jax.core.Tracer):
      lab = jnp.asarray(labels)
      if int(lab.min()) < 0 or int(lab.max()) >= beta.shape[0]:
        raise ValueError(f"{where}: beta has {beta.shape[0]} per-class values, but labels range over "
                         f"[{int(lab.min())}, {int(lab.max())}].")
    beta_i = beta[jnp.clip(labels, 0, beta.shape[0] - 1)][:, None]
  elif beta.ndim == 0:
    beta_i = beta
  else:
    raise ValueError(f"{where}: beta must be a number or a [num_classes] array, got shape {beta.shape}.")
  columns, pos, neg, _ = _pairs(embeddings, labels, references)
  d = _unit_distances(embeddings, columns if references is not None else None)
  pos_loss = jax.nn.relu(margin + d - beta_i)                                # [B, B], entry (i, p)
  if negatives is not None:
    if negatives.shape != pos.shape:
      raise ValueError(f"{where}: negatives must be [{pos.shape[0]}, {pos.shape[1]}] (from "
                       f"distance_weighted_sampling), got {tuple(negatives.shape)}.")
    d_n = jnp.take_along_axis(d, negatives, axis=1)                          # (i, p) -> D[i, n(i, p)]
    is_neg = jnp.take_along_axis(neg, negatives, axis=1)
    valid = pos & is_neg
    neg_loss = jax.nn.relu(margin + beta_i - d_n)
    pos_terms, neg_terms = jnp.where(valid, pos_loss, 0.0), jnp.where(valid, neg_loss, 0.0)
    active = jnp.sum((pos_terms > 0) & valid) + jnp.sum((neg_terms > 0) & valid)
    per_row = jnp.sum(pos_terms + neg_terms, axis=1)
  else:   # every triplet (i, p, n): each positive term counted once per negative, and the reverse
    neg_loss = jax.nn.relu(margin + beta_i - d)
    n_neg, n_pos = jnp.sum(neg, axis=1, keepdims=True), jnp.sum(pos, axis=1, keepdims=True)
    pos_terms, neg_terms = jnp.where(pos, pos_loss, 0.0) * n_neg, jnp.where(neg, neg_loss, 0.0) * n_pos
    active = jnp.sum(jnp.where(pos & (pos_loss > 0), n_neg, 0)) + jnp.sum(jnp.where(neg & (neg_loss > 0), n_pos, 0))
    per_row = jnp.sum(pos_terms + neg_terms, axis=1)
  if reduction == "none":
    return _checks.nan_unless_finite(per_row, embeddings)
  total = jnp.sum(per_row)
  return _checks.nan_unless_finite(total if reduction == "sum" else total / jnp.maximum(active, 1), embeddings)
