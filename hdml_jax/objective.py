"""HDML's objective terms as pure functions (reference section 6).

.. code-block:: text

   w        = exp(-beta / J_gen)
   J_metric = w * J_m + (1 - w) * J_syn
   J_recon  = (1 - lambda) * sum (y' - y)^2          (a sum over B x F)
   J_soft   = s * lambda * [CE(c(y~_neg), label of p_j) + CE(c(y~_anc), label)]   N-pair
   J_soft   = s * lambda * CE(c(y~), labels)                                      triplet
   J_gen    = J_recon + J_soft
   J_cls    = CE(c(y), labels)                       (real features only)

``s`` is the reference's softmax factor (1e4) and ``lambda`` its trade-off
(0.5). The paper writes ``J_gen = J_recon + lambda J_soft``; the reference
code, reproduced here, is as above.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from hdml_jax import _checks
from hdml_jax.losses import cross_entropy

__all__ = [
    "classifier_loss",
    "is_decayed_leaf",
    "metric_objective",
    "metric_weight",
    "reconstruction_loss",
    "soft_loss_npair",
    "soft_loss_triplet",
    "weight_decay",
]


def metric_weight(j_gen: jax.Array | float, *, beta: float) -> jax.Array:
  """``w = exp(-beta / J_gen)``, the weight of the real-sample loss.

  >>> round(float(metric_weight(1e6, beta=1e4)), 4)   # first block: w ~ 0.99
  0.99
  """
  return jnp.exp(-beta / jnp.asarray(j_gen, dtype=jnp.float32))


def metric_objective(j_m: jax.Array, j_syn: jax.Array, w: jax.Array) -> jax.Array:
  """``J_metric = w J_m + (1 - w) J_syn``.

  >>> float(metric_objective(2.0, 4.0, 0.25))
  3.5
  """
  return w * j_m + (1.0 - w) * j_syn


def reconstruction_loss(
    reconstructed: jax.Array, features: jax.Array, *, lam: float
) -> jax.Array:
  """``J_recon = (1 - lambda) * sum((y' - y)^2)`` over all ``B x F`` entries.

  Args:
    reconstructed: ``[B, F]`` generator outputs ``y'`` for the real ``z``.
    features: ``[B, F]`` backbone features ``y``.
    lam: the trade-off ``lambda`` (reference 0.5).

  >>> import jax.numpy as jnp
  >>> float(reconstruction_loss(jnp.ones((2, 3)), jnp.zeros((2, 3)), lam=0.5))
  3.0
  """
  where = "reconstruction_loss"
  _checks.check_embeddings(reconstructed, "reconstructed", where)
  _checks.check_embeddings(features, "features", where)
  _checks.check_same_shape([reconstructed, features], ["reconstructed", "features"], where)
  return (1.0 - lam) * jnp.sum(jnp.square(reconstructed - features))


def soft_loss_npair(
    anchor_logits: jax.Array,
    candidate_logits: jax.Array,
    anchor_labels: jax.Array,
    *,
    lam: float,
    softmax_factor: float = 1e4,
) -> jax.Array:
  """``J_soft`` for N-pair tuples: label-preservation of the synthetic features.

  Args:
    anchor_logits: ``[P, C]`` classifier logits of the decoded anchors.
    candidate_logits: ``[P * P, C]`` (or ``[P, P, C]``) logits of the decoded
      candidates; candidate ``(i, j)`` must keep the label of positive ``j``.
    anchor_labels: ``[P]`` class of each pair.
    lam, softmax_factor: ``lambda`` and ``s`` above.

  Returns:
    ``s * lambda * (CE(candidates) + CE(anchors))``, each CE a mean.
  """
  where = "soft_loss_npair"
  _checks.check_rank(anchor_logits, 2, "anchor_logits", where)
  p, c = anchor_logits.shape
  _checks.check_labels(anchor_labels, p, "anchor_labels", where)
  if candidate_logits.shape not in ((p * p, c), (p, p, c)):
    raise ValueError(
        f"{where}: `candidate_logits` must have shape ({p * p}, {c}) or "
        f"({p}, {p}, {c}) for `anchor_logits` {tuple(anchor_logits.shape)}, "
        f"got {tuple(candidate_logits.shape)}."
    )
  candidate_logits = candidate_logits.reshape(p * p, c)
  candidate_labels = jnp.tile(anchor_labels, p)
  return softmax_factor * lam * (
      cross_entropy(candidate_logits, candidate_labels)
      + cross_entropy(anchor_logits, anchor_labels)
  )


def soft_loss_triplet(
    logits: jax.Array, labels: jax.Array, *, lam: float, softmax_factor: float = 1e4
) -> jax.Array:
  """``J_soft`` for triplets: ``s * lambda * CE(c(y~), labels)`` (mean CE).

  Args:
    logits: ``[B, C]`` logits of the decoded ``[a; p; n^]`` features.
    labels: ``[B]`` the batch labels (the augmented negative keeps its class).
  """
  return softmax_factor * lam * cross_entropy(logits, labels)


def classifier_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """``J_cls``: mean cross-entropy of the classifier on the real features."""
  return cross_entropy(logits, labels)


def _key_name(entry) -> str:
  return str(getattr(entry, "key", getattr(entry, "name", entry)))


def is_decayed_leaf(path) -> bool:
  """Weights and biases of dense and convolution layers decay.

  A leaf decays when it is named ``kernel`` or ``bias`` and no enclosing
  module is a BatchNorm (named ``bn...`` or ``BatchNorm_...``): BatchNorm
  scales and offsets never decay.
  """
  names = [_key_name(p) for p in path]
  if names[-1] not in ("kernel", "bias"):
    return False
  return not any(n.lower().startswith("bn") or "batchnorm" in n.lower() for n in names[:-1])


def weight_decay(
    params: Any,
    *,
    wd: float,
    include: Callable[[tuple], bool] = is_decayed_leaf,
) -> jax.Array:
  """The reference weight-decay term ``wd * sum ||w||^2 / 2``.

  It is a loss term added to ``J_m`` (so it is scaled by ``w`` in
  ``J_metric``), not decoupled AdamW decay. Pass the parameter subtree it
  covers (the reference: backbone weights and biases and fc1, not BN1, the
  generator or the classifier). ``include(path)`` selects leaves; by default
  :func:`is_decayed_leaf` (kernels and biases outside BatchNorm layers).

  >>> import jax.numpy as jnp
  >>> p = {"fc1": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
  ...      "bn": {"scale": jnp.ones(2), "bias": jnp.ones(2)}}
  >>> float(weight_decay(p, wd=0.1))   # 0.1 * (4 + 2) / 2; "bn" is skipped
  0.3
  """
  leaves = [
      leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params) if include(path)
  ]
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return wd * 0.5 * sum(jnp.sum(jnp.square(leaf)) for leaf in leaves)
