"""The device kNN engine: XLA on JAX's default device, shapes bucketed.

Searches one chunk of queries per call (``_knn_chunk``: one matrix product
and the two-stage selection), with the next chunk dispatched while the host
re-ranks the current one; Lloyd's assignment step of k-means on the device
(``_assign``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hdml_jax.evaluation import _select

__all__ = ["bucket"]


@functools.partial(jax.jit, static_argnames=("k", "exclude_self"))
def _knn_chunk(queries, query_offset, gallery, gallery_sq, *, k, exclude_self):
  """The k smallest of ``|g|^2 - 2 q.g`` per query row (``|q|^2`` is added on the host: it does not
  change a row's order), the query itself set to +inf when excluded. Returns ``(columns, values)``."""
  prod = jnp.matmul(queries, gallery.T, precision=jax.lax.Precision.HIGHEST)
  score = gallery_sq[None, :] - 2.0 * prod
  if exclude_self:   # an elementwise mask (fused with the score) rather than a scatter
    rows = query_offset + jnp.arange(queries.shape[0])
    score = jnp.where(jnp.arange(gallery.shape[0])[None, :] == rows[:, None], jnp.inf, score)
  return _select._smallest(score, k)


def bucket(n: int) -> int:
  """The padded size of ``n`` rows: the smallest ``2^j`` or ``3 * 2^(j-1)`` >= n (at least 8).

  Device shapes depend only on the bucket, not on the number of test
  images, so evaluations of sets of nearby sizes share one compilation
  (and the persistent compilation cache serves new processes); padding
  wastes at most a third of the rows.
  """
  size = 8
  while size < n:
    half = size // 2
    size = size + half if (size & (size - 1)) == 0 else size + size // 3   # 8, 12, 16, 24, 32, ...
  return size


def _device_candidates(cq, cg, cg_sq, *, exclude_self, kc, chunk_size):
  """Yields ``(start, columns, scores)`` for each chunk of queries: the kc smallest
  ``|g|^2 - 2 q.g`` of each row, ascending, searched by ``_knn_chunk`` on the default device."""
  chunk_size = max(1, min(chunk_size, bucket(cq.shape[0])))
  # Padded to a bucket with rows at infinite distance: never chosen, since kc <= the real rows available.
  pad = bucket(cg.shape[0]) - cg.shape[0]
  g = jnp.asarray(np.concatenate([cg, np.zeros((pad, cg.shape[1]), np.float32)]))
  g_sq = jnp.asarray(np.concatenate([cg_sq, np.full(pad, np.inf, np.float32)]))
  starts = list(range(0, cq.shape[0], chunk_size))

  def dispatch(start):
    chunk = cq[start:start + chunk_size]
    if chunk.shape[0] < chunk_size:  # pad: one compiled shape for every chunk
      chunk = np.concatenate([chunk, np.zeros((chunk_size - chunk.shape[0], chunk.shape[1]), np.float32)])
    return _knn_chunk(jnp.asarray(chunk), start, g, g_sq, k=kc, exclude_self=exclude_self)

  # The next chunk is dispatched before the caller re-ranks this one, so device and host work overlap.
  pending = [dispatch(start) for start in starts[:2]]
  for c, start in enumerate(starts):
    cand, d32 = pending[c]
    pending[c] = None
    if c + 2 < len(starts):
      pending.append(dispatch(starts[c + 2]))
    n = min(chunk_size, cq.shape[0] - start)
    yield start, np.asarray(cand)[:n], np.asarray(d32)[:n]


@functools.partial(jax.jit, static_argnames=("chunk",))
def _assign(x, centers, *, chunk):
  """Nearest centre of every point, computed ``chunk`` points at a time."""
  c_sq = jnp.sum(jnp.square(centers), axis=1)

  def one(xc):
    d2 = c_sq[None, :] - 2.0 * jnp.matmul(xc, centers.T, precision=jax.lax.Precision.HIGHEST)
    idx = jnp.argmin(d2, axis=1)
    best = jnp.take_along_axis(d2, idx[:, None], axis=1)[:, 0] + jnp.sum(jnp.square(xc), axis=1)
    return idx.astype(jnp.int32), jnp.maximum(best, 0.0)

  n, d = x.shape
  xs = x.reshape(n // chunk, chunk, d)
  idx, d2 = jax.lax.map(one, xs)
  return idx.reshape(n), d2.reshape(n)
