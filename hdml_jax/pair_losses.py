"""Pair-based losses of the current literature, in the ``loss(embeddings, labels)`` convention.

The conventions of :mod:`hdml_jax.label_losses` hold here too: pure,
jit-able, static shapes; pairs are chosen with label masks; a row without a
valid pair contributes nothing, with a finite, zero gradient; ``reduction``
is ``"mean"`` (over the rows that have a valid pair), ``"sum"`` or ``"none"``
(``[B]``, 0 for the other rows); concrete inputs are checked on the host.

Similarity-based losses (:func:`multi_similarity_loss`, :func:`circle_loss`,
:func:`supervised_contrastive_loss`) use the cosine similarity: the rows are
L2-normalised inside (safely: a zero row stays zero), as their papers do.
:func:`lifted_structure_loss` uses Euclidean distances on the embeddings as
given.

Every masked log-sum-exp here is taken over finite stand-ins for the
excluded entries, so no ``inf - inf`` or ``0 * inf`` reaches a gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hdml_jax.distances import safe_sqrt
from hdml_jax.label_losses import _check, _distances, _masks, _reduce

__all__ = [
    "circle_loss",
    "lifted_structure_loss",
    "multi_similarity_loss",
    "supervised_contrastive_loss",
]


def _cosine(embeddings: jax.Array) -> jax.Array:
  norms = safe_sqrt(jnp.sum(jnp.square(embeddings), axis=1, keepdims=True))
  unit = embeddings / jnp.maximum(norms, 1e-12)
  return unit @ unit.T


def _masked_lse(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(log sum_{mask} exp(x), any(mask))`` per row; rows with an empty mask get 0 (and ``False``)."""
  any_ = mask.any(axis=1)
  peak = jnp.max(jnp.where(mask, x, -jnp.inf), axis=1)
  peak = jax.lax.stop_gradient(jnp.where(any_, peak, 0.0))
  safe = jnp.where(mask, x, peak[:, None])          # excluded entries: a finite stand-in
  total = jnp.sum(jnp.where(mask, jnp.exp(safe - peak[:, None]), 0.0), axis=1)
  return jnp.where(any_, jnp.log(jnp.where(any_, total, 1.0)) + peak, 0.0), any_


def _log1p_sum_exp(x: jax.Array, mask: jax.Array) -> jax.Array:
  """``log(1 + sum_{mask} exp(x))`` per row (0 for an empty mask): a log-sum-exp with a 0 term added."""
  b = x.shape[0]
  ones = jnp.ones((b, 1), bool)
  value, _ = _masked_lse(jnp.concatenate([jnp.zeros((b, 1), x.dtype), x], axis=1),
                         jnp.concatenate([ones, mask], axis=1))
  return value


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
  _check(embeddings, labels, where, needs_pairs=True, require_pairs=require_pairs)
  s = _cosine(embeddings)
  pos, neg = _masks(labels)
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
  _check(embeddings, labels, where, needs_pairs=True, require_pairs=require_pairs)
  d = _distances(embeddings, distance, where)
  pos, neg = _masks(labels)
  pos_lse, has_pos = _masked_lse(d - pos_margin, pos)
  neg_lse, has_neg = _masked_lse(neg_margin - d, neg)
  valid = has_pos & has_neg
  return _reduce(jax.nn.relu(pos_lse + neg_lse), valid, reduction, where)


def circle_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    margin: float = 0.4,
    gamma: float = 80.0,
    reduction: str = "mean",
    require_pairs: bool = False,
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
  _check(embeddings, labels, where, needs_pairs=True, require_pairs=require_pairs)
  s = _cosine(embeddings)
  pos, neg = _masks(labels)
  a_p = jax.lax.stop_gradient(jax.nn.relu(1.0 + margin - s))
  a_n = jax.lax.stop_gradient(jax.nn.relu(s + margin))
  pos_lse, has_pos = _masked_lse(-gamma * a_p * (s - (1.0 - margin)), pos)
  neg_lse, has_neg = _masked_lse(gamma * a_n * (s - margin), neg)
  valid = has_pos & has_neg
  return _reduce(jax.nn.softplus(pos_lse + neg_lse), valid, reduction, where)


def supervised_contrastive_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    temperature: float = 0.1,
    reduction: str = "mean",
    require_pairs: bool = False,
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
  _check(embeddings, labels, where, needs_pairs=True, require_pairs=require_pairs)
  b = embeddings.shape[0]
  logits = _cosine(embeddings) / temperature
  pos, _ = _masks(labels)
  others = ~jnp.eye(b, dtype=bool)
  log_norm, _ = _masked_lse(logits, others)
  n_pos = jnp.sum(pos, axis=1)
  per_row = -jnp.sum(jnp.where(pos, logits - log_norm[:, None], 0.0), axis=1) / jnp.maximum(n_pos, 1)
  return _reduce(per_row, n_pos > 0, reduction, where)
