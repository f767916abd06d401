"""The two-stage selection of each row's k smallest scores, in XLA and in NumPy.

Both helpers return ``(columns, values)``, ascending by value. They rank only
the ``k * _GROUP`` entries of the k groups of ``_GROUP`` columns with the
smallest minima (those groups hold k smallest entries), which is several
times cheaper on the CPU than a full ``top_k``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__: list[str] = []

# Columns per group in the two-stage selection of ``_knn_chunk``.
_GROUP = 16


def _smallest(score, k):
  """``(columns, values)`` of the k smallest entries of each row, ascending (XLA).

  In two stages when the row is wide: the k groups of ``_GROUP`` columns
  with the smallest minima hold k smallest entries (a group holding one of
  them has its minimum at or below the k-th smallest value, and at most k
  groups can), so only those ``k * _GROUP`` entries are ranked. On the CPU
  this is several times cheaper than ``top_k`` over the whole row; the
  values are the same, ties may resolve to other columns (the callers
  re-rank close calls).
  """
  rows, cols = score.shape
  if cols % _GROUP or cols // _GROUP < 4 * k:
    neg, idx = jax.lax.top_k(-score, k)
    return idx, -neg
  grouped = score.reshape(rows, cols // _GROUP, _GROUP)
  _, groups = jax.lax.top_k(-grouped.min(axis=2), k)
  values = jnp.take_along_axis(grouped, groups[:, :, None], axis=1).reshape(rows, k * _GROUP)
  neg, pos = jax.lax.top_k(-values, k)
  return jnp.take_along_axis(groups, pos // _GROUP, axis=1) * _GROUP + pos % _GROUP, -neg


def _smallest_host(score, k):
  """``_smallest`` in NumPy: the same ``(columns, values)`` of the k smallest entries of each row.

  Groups are strided (group j holds columns j, j + G', j + 2 G', ... for
  ``G' = cols / _GROUP``), so their minima are one reduction over a middle
  axis; ``argpartition`` (introselect) replaces ``top_k``.
  """
  rows, cols = score.shape
  groups = cols // _GROUP
  if cols % _GROUP or groups < 4 * k:
    idx = np.argpartition(score, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(score, idx, axis=1)
  else:
    minima = score.reshape(rows, _GROUP, groups).min(axis=1)
    chosen = np.argpartition(minima, k - 1, axis=1)[:, :k]
    members = (chosen[:, :, None] + groups * np.arange(_GROUP)).reshape(rows, k * _GROUP)
    values = np.take_along_axis(score, members, axis=1)
    pos = np.argpartition(values, k - 1, axis=1)[:, :k]
    idx = np.take_along_axis(members, pos, axis=1)
    values = np.take_along_axis(values, pos, axis=1)
  order = np.argsort(values, axis=1, kind="stable")
  return np.take_along_axis(idx, order, axis=1), np.take_along_axis(values, order, axis=1)
