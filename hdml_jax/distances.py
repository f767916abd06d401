"""Pairwise and row-wise distances with finite gradients everywhere.

The Euclidean norm ``sqrt(x)`` has an infinite derivative at ``x = 0``, which
is exactly where metric learning often sits (an anchor equal to its positive,
a point compared with itself). Every square root here goes through
:func:`safe_sqrt`, whose value is exact and whose gradient at zero is zero
(the subgradient of ``|.|`` at the origin), so no ``NaN`` or ``Inf`` reaches
the parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hdml_jax import _checks

__all__ = [
    "l2_normalize",
    "pairwise_distances",
    "pairwise_squared_distances",
    "rowwise_distances",
    "rowwise_squared_distances",
    "safe_sqrt",
]


def safe_sqrt(x: jax.Array) -> jax.Array:
  """``sqrt(max(x, 0))`` with a zero gradient where ``x <= 0``.

  Both branches of the ``where`` are finite, so the gradient of the unused
  branch is never ``NaN`` (the "double where" construction).

  >>> import jax, jax.numpy as jnp
  >>> float(safe_sqrt(jnp.array(4.0)))
  2.0
  >>> float(jax.grad(safe_sqrt)(jnp.array(0.0)))
  0.0
  """
  positive = x > 0
  safe_x = jnp.where(positive, x, 1.0)
  return jnp.where(positive, jnp.sqrt(safe_x), 0.0)


def rowwise_squared_distances(x: jax.Array, y: jax.Array) -> jax.Array:
  """Squared distances between matching rows, ``[N, D] x [N, D] -> [N]``.

  .. math:: d_i^2 = \\lVert x_i - y_i \\rVert_2^2

  >>> import jax.numpy as jnp
  >>> rowwise_squared_distances(jnp.array([[0., 0.], [1., 1.]]),
  ...                           jnp.array([[3., 4.], [1., 1.]]))
  Array([25.,  0.], dtype=float32)
  """
  where = "rowwise_squared_distances"
  _checks.check_embeddings(x, "x", where)
  _checks.check_embeddings(y, "y", where)
  _checks.check_same_shape([x, y], ["x", "y"], where)
  return jnp.sum(jnp.square(x - y), axis=-1)


def rowwise_distances(x: jax.Array, y: jax.Array) -> jax.Array:
  """Euclidean distances between matching rows, ``[N, D] x [N, D] -> [N]``.

  Finite gradient (zero) where ``x_i == y_i``.

  >>> import jax.numpy as jnp
  >>> rowwise_distances(jnp.array([[0., 0.]]), jnp.array([[3., 4.]]))
  Array([5.], dtype=float32)
  """
  return safe_sqrt(rowwise_squared_distances(x, y))


def pairwise_squared_distances(x: jax.Array, y: jax.Array | None = None) -> jax.Array:
  """All squared Euclidean distances, ``[N, D] x [M, D] -> [N, M]``.

  Computed as ``|x|^2 + |y|^2 - 2 x.y`` (one matrix product) and clipped at
  zero, since rounding can make the expansion slightly negative for
  coincident points. ``y=None`` compares ``x`` with itself, and then the
  diagonal is exactly zero.

  .. math:: D_{ij} = \\lVert x_i - y_j \\rVert_2^2

  >>> import jax.numpy as jnp
  >>> x = jnp.array([[0., 0.], [3., 4.]])
  >>> pairwise_squared_distances(x)
  Array([[ 0., 25.],
         [25.,  0.]], dtype=float32)
  """
  where = "pairwise_squared_distances"
  _checks.check_embeddings(x, "x", where)
  self_distances = y is None
  if self_distances:
    y = x
  _checks.check_embeddings(y, "y", where)
  if x.shape[1] != y.shape[1]:
    raise ValueError(
        f"{where}: `x` {tuple(x.shape)} and `y` {tuple(y.shape)} must have the "
        "same embedding dimension."
    )
  x_sq = jnp.sum(jnp.square(x), axis=1)
  y_sq = jnp.sum(jnp.square(y), axis=1)
  prod = jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)
  d2 = jnp.maximum(x_sq[:, None] + y_sq[None, :] - 2.0 * prod, 0.0)
  if self_distances:
    d2 = d2 * (1.0 - jnp.eye(x.shape[0], dtype=d2.dtype))
  return d2


def pairwise_distances(x: jax.Array, y: jax.Array | None = None, *, squared: bool = False) -> jax.Array:
  """All Euclidean distances, ``[N, D] x [M, D] -> [N, M]``.

  Values and gradients stay finite at coincident points (the gradient of a
  zero distance is zero). ``squared=True`` returns
  :func:`pairwise_squared_distances`.

  >>> import jax.numpy as jnp
  >>> pairwise_distances(jnp.array([[0., 0.]]), jnp.array([[3., 4.], [0., 0.]]))
  Array([[5., 0.]], dtype=float32)
  """
  d2 = pairwise_squared_distances(x, y)
  return d2 if squared else safe_sqrt(d2)


def l2_normalize(x: jax.Array, *, epsilon: float = 1e-12) -> jax.Array:
  """Rows of ``x`` (``[..., D]``: the last axis) divided by their norm, at least ``epsilon`` (a zero row stays
  zero, with a finite gradient). The one normaliser of the library: the inference embedding and every loss that
  compares cosines use it.

  >>> import jax.numpy as jnp
  >>> l2_normalize(jnp.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
  [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
  """
  return x / jnp.maximum(safe_sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True)), epsilon)
