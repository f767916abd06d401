"""Proxy-based losses: Proxy-NCA, Proxy-Anchor and the normalised-softmax family (NormSoftmax, CosFace, ArcFace).

Every loss here is ``loss(embeddings, labels, proxies)``: ``proxies`` is a
``[C, E]`` array of one learnable vector per training class (the class
weights, for the softmax family), a parameter the caller owns, initialises
(:func:`init_proxies`), optimises (usually with its own learning rate) and
checkpoints with the rest of the model; ``labels`` index its rows. The
conventions of the label-based losses hold otherwise: pure, jit-able,
static shapes, ``reduction`` ``"mean"``, ``"sum"`` or ``"none"``, concrete
inputs checked on the host (labels outside ``[0, C)`` are refused), a row
without a valid term contributes nothing with a finite, zero gradient.

Embeddings and proxies are L2-normalised inside (safely: a zero row stays
zero), as the papers do; similarities are cosines.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from hdml_jax import _checks
from hdml_jax.distances import l2_normalize, safe_sqrt
from hdml_jax.losses._common import REDUCTIONS
from hdml_jax.losses._common import check_batch as _check
from hdml_jax.losses._common import reduce as _reduce

__all__ = [
    "arcface_loss",
    "cosface_loss",
    "init_proxies",
    "normalized_softmax_loss",
    "proxy_anchor_loss",
    "proxy_nca_loss",
]


def init_proxies(key: jax.Array, num_classes: int, embedding_dim: int, dtype=jnp.float32) -> jax.Array:
  """``[num_classes, embedding_dim]`` proxies drawn from a standard normal (they are normalised when used).

  >>> init_proxies(jax.random.key(0), 3, 4).shape
  (3, 4)
  """
  if num_classes < 2 or embedding_dim < 1:
    raise ValueError(f"init_proxies: need at least 2 classes and 1 dimension, got {num_classes} and {embedding_dim}.")
  return jax.random.normal(key, (num_classes, embedding_dim), dtype)


def _check_proxies(embeddings, labels, proxies, where: str) -> None:
  _check(embeddings, labels, where, needs_pairs=False)
  _checks.check_embeddings(proxies, "proxies", where)
  if proxies.shape[1] != embeddings.shape[1]:
    raise ValueError(f"{where}: proxies must be [num_classes, {embeddings.shape[1]}] for embeddings "
                     f"{tuple(embeddings.shape)}, got {tuple(proxies.shape)}.")
  if proxies.shape[0] < 2:
    raise ValueError(f"{where}: proxies must hold at least 2 classes, got {proxies.shape[0]}.")
  if isinstance(labels, jax.core.Tracer) or isinstance(proxies, jax.core.Tracer):
    return
  lab = np.asarray(labels)
  bad = lab[(lab < 0) | (lab >= proxies.shape[0])]
  if bad.size:
    raise ValueError(f"{where}: labels {np.unique(bad)[:10].tolist()} are outside [0, {proxies.shape[0]}) "
                     f"(proxies has {proxies.shape[0]} rows, one per training class).")
  if not np.isfinite(np.asarray(proxies)).all():
    raise ValueError(f"{where}: proxies hold NaN or infinite values.")


def _cosines(embeddings, labels, proxies):
  """``(cos [B, C], one-hot [B, C] bool, label in range [B] bool)``."""
  c = proxies.shape[0]
  cos = l2_normalize(embeddings) @ l2_normalize(proxies).T
  onehot = labels[:, None] == jnp.arange(c)[None, :]
  return cos, onehot, onehot.any(axis=1)


def _softmax_ce(logits, onehot, valid, reduction, where):
  log_p = jax.nn.log_softmax(logits, axis=1)
  return _reduce(-jnp.sum(jnp.where(onehot, log_p, 0.0), axis=1), valid, reduction, where)


def proxy_nca_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    proxies: jax.Array,
    *,
    scale: float = 1.0,
    include_positive: bool = False,
    reduction: str = "mean",
) -> jax.Array:
  r"""Proxy-NCA (Movshovitz-Attias et al., ICCV 2017).

  With unit embeddings ``x_i`` and proxies ``p_c`` and squared distances
  ``d_ic = |x_i - p_c|^2``:

  .. math::

     \ell_i = -\log \frac{e^{-s\, d_{i y_i}}}{\sum_{c \ne y_i} e^{-s\, d_{ic}}}

  ``s = scale`` (the paper: 1). ``include_positive=True`` adds the
  positive proxy to the denominator, a softmax cross-entropy over
  ``-s d`` (pytorch-metric-learning's ``ProxyNCALoss`` and Proxy-NCA++'s
  form); the paper's excludes it, so its loss can be negative.

  >>> import jax.numpy as jnp
  >>> p = jnp.array([[1., 0.], [0., 1.]])
  >>> # d = 0 to its proxy, 2 to the other: -log(e^0 / e^-2) = -2
  >>> float(proxy_nca_loss(jnp.array([[1., 0.]]), jnp.array([0]), p))
  -2.0
  """
  where = "proxy_nca_loss"
  _check_proxies(embeddings, labels, proxies, where)
  cos, onehot, valid = _cosines(embeddings, labels, proxies)
  logits = -scale * jnp.maximum(2.0 - 2.0 * cos, 0.0)   # |x - p|^2 for unit vectors
  if include_positive:
    return _checks.nan_unless_finite(_softmax_ce(logits, onehot, valid, reduction, where), embeddings, proxies)
  pos = jnp.sum(jnp.where(onehot, logits, 0.0), axis=1)
  neg = jax.nn.logsumexp(jnp.where(onehot, -jnp.inf, logits), axis=1)
  return _checks.nan_unless_finite(_reduce(neg - pos, valid, reduction, where), embeddings, proxies)


def proxy_anchor_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    proxies: jax.Array,
    *,
    margin: float = 0.1,
    alpha: float = 32.0,
    reduction: str = "mean",
) -> jax.Array:
  r"""Proxy-Anchor loss (Kim et al., CVPR 2020).

  The proxies are the anchors. With ``s(x, p)`` the cosine, ``X_c^+`` the
  batch rows of class ``c``, ``X_c^-`` the others, ``P^+`` the classes
  present in the batch and ``C`` the number of proxies:

  .. math::

     \ell = \frac{1}{|P^+|} \sum_{c \in P^+} \log\Big(1 + \sum_{x \in X_c^+} e^{-\alpha (s(x, p_c) - \delta)}\Big)
          + \frac{1}{C} \sum_{c} \log\Big(1 + \sum_{x \in X_c^-} e^{\alpha (s(x, p_c) + \delta)}\Big)

  ``delta = margin``; the defaults are the paper's (0.1, 32). The loss is a
  sum over proxies, not rows: ``reduction="none"`` returns the ``[C]``
  per-proxy terms (positive plus negative part), ``"sum"`` their sum, and
  ``"mean"`` the paper's normalisation above.

  >>> import jax.numpy as jnp
  >>> p = jnp.array([[1., 0.], [0., 1.]])
  >>> e = jnp.array([[1., 0.], [0., 1.]])      # each row on its proxy, orthogonal to the other
  >>> # pos: log(1 + e^(-32 (1 - 0.1))) per class; neg: log(1 + e^(32 (0 + 0.1))) per class
  >>> round(float(proxy_anchor_loss(e, jnp.array([0, 1]), p)), 3)
  3.24
  """
  where = "proxy_anchor_loss"
  _check_proxies(embeddings, labels, proxies, where)
  if reduction not in REDUCTIONS:
    raise ValueError(f"{where}: reduction must be one of {REDUCTIONS}, got {reduction!r}.")
  cos, onehot, valid = _cosines(embeddings, labels, proxies)
  pos_mask = onehot & valid[:, None]
  neg_mask = ~onehot & valid[:, None]

  def log1p_sum_exp(x, mask):   # per column: log(1 + sum_{mask} e^x), 0 for an empty column
    peak = jax.lax.stop_gradient(jnp.maximum(jnp.max(jnp.where(mask, x, -jnp.inf), axis=0), 0.0))
    total = jnp.exp(-peak) + jnp.sum(jnp.where(mask, jnp.exp(jnp.where(mask, x, 0.0) - peak), 0.0), axis=0)
    return jnp.log(total) + peak

  present = pos_mask.any(axis=0)
  pos_term = jnp.where(present, log1p_sum_exp(-alpha * (cos - margin), pos_mask), 0.0)
  neg_term = log1p_sum_exp(alpha * (cos + margin), neg_mask)
  if reduction == "none":
    return _checks.nan_unless_finite(pos_term + neg_term, embeddings, proxies)
  if reduction == "sum":
    return _checks.nan_unless_finite(jnp.sum(pos_term) + jnp.sum(neg_term), embeddings, proxies)
  return _checks.nan_unless_finite(jnp.sum(pos_term) / jnp.maximum(jnp.sum(present), 1) + jnp.sum(neg_term) / proxies.shape[0], embeddings, proxies)


def normalized_softmax_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    proxies: jax.Array,
    *,
    temperature: float = 0.05,
    reduction: str = "mean",
) -> jax.Array:
  r"""NormSoftmax (Zhai and Wu, BMVC 2019): softmax cross-entropy over cosines to the class weights.

  .. math::

     \ell_i = -\log \frac{e^{\cos(x_i, w_{y_i}) / T}}{\sum_c e^{\cos(x_i, w_c) / T}}

  ``T = temperature`` (the paper: 0.05); ``proxies`` are the class weights
  ``w`` (no bias).

  >>> import jax.numpy as jnp
  >>> w = jnp.array([[1., 0.], [0., 1.]])
  >>> round(float(normalized_softmax_loss(jnp.array([[1., 0.]]), jnp.array([0]), w, temperature=1.0)), 4)
  0.3133
  """
  where = "normalized_softmax_loss"
  _check_proxies(embeddings, labels, proxies, where)
  cos, onehot, valid = _cosines(embeddings, labels, proxies)
  return _checks.nan_unless_finite(_softmax_ce(cos / temperature, onehot, valid, reduction, where), embeddings, proxies)


def cosface_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    proxies: jax.Array,
    *,
    margin: float = 0.35,
    scale: float = 64.0,
    reduction: str = "mean",
) -> jax.Array:
  r"""CosFace, the large margin cosine loss (Wang et al., CVPR 2018).

  .. math::

     \ell_i = -\log \frac{e^{s (\cos\theta_{i y_i} - m)}}
                          {e^{s (\cos\theta_{i y_i} - m)} + \sum_{c \ne y_i} e^{s \cos\theta_{ic}}}

  ``m = margin``, ``s = scale``; the defaults (0.35, 64) are the paper's.

  >>> import jax.numpy as jnp
  >>> w = jnp.array([[1., 0.], [0., 1.]])
  >>> # -log(e^(1 - 0.5) / (e^(1 - 0.5) + e^0)) with s = 1, m = 0.5
  >>> round(float(cosface_loss(jnp.array([[1., 0.]]), jnp.array([0]), w, margin=0.5, scale=1.0)), 4)
  0.4741
  """
  where = "cosface_loss"
  _check_proxies(embeddings, labels, proxies, where)
  cos, onehot, valid = _cosines(embeddings, labels, proxies)
  return _checks.nan_unless_finite(_softmax_ce(scale * jnp.where(onehot, cos - margin, cos), onehot, valid, reduction, where), embeddings, proxies)


def arcface_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    proxies: jax.Array,
    *,
    margin: float = 0.5,
    scale: float = 64.0,
    reduction: str = "mean",
) -> jax.Array:
  r"""ArcFace, the additive angular margin loss (Deng et al., CVPR 2019).

  .. math::

     \ell_i = -\log \frac{e^{s \cos(\theta_{i y_i} + m)}}
                          {e^{s \cos(\theta_{i y_i} + m)} + \sum_{c \ne y_i} e^{s \cos\theta_{ic}}}

  ``m = margin`` in radians (the paper's 0.5, i.e. 28.6 degrees), ``s =
  scale`` (64). ``cos(theta + m)`` is computed as ``cos(theta) cos(m) -
  sin(theta) sin(m)`` with ``sin(theta) = sqrt(1 - cos^2(theta))``, which is
  the same for ``theta`` in ``[0, pi]`` and keeps the gradient finite where
  an embedding lies on its class weight (no ``arccos'`` at 1). The margin
  applies for every ``theta`` (no fallback past ``pi - m``), as in the
  paper's formula.

  >>> import jax.numpy as jnp
  >>> w = jnp.array([[1., 0.], [0., 1.]])
  >>> x = jnp.array([[1., 1.]])                   # theta = pi/4 to both
  >>> # -log(e^cos(pi/4 + 0.5) / (e^cos(pi/4 + 0.5) + e^cos(pi/4))) with s = 1
  >>> round(float(arcface_loss(x, jnp.array([0]), w, scale=1.0)), 4)
  0.9284
  """
  where = "arcface_loss"
  _check_proxies(embeddings, labels, proxies, where)
  cos, onehot, valid = _cosines(embeddings, labels, proxies)
  cos = jnp.clip(cos, -1.0, 1.0)
  sin = safe_sqrt(jnp.maximum(1.0 - jnp.square(cos), 0.0))
  shifted = cos * math.cos(margin) - sin * math.sin(margin)
  return _checks.nan_unless_finite(_softmax_ce(scale * jnp.where(onehot, shifted, cos), onehot, valid, reduction, where), embeddings, proxies)
