"""Retrieval and clustering evaluation, exact and bounded in memory.

``evaluate(embeddings, labels)`` returns::

  recall@K      a query counts if any of its K nearest neighbours (itself
                excluded) shares its label (the paper's Recall@K)
  precision@1   the nearest neighbour shares the label (equals recall@1)
  r_precision   mean over queries of |same-label among the R nearest| / R,
                R = the number of other items with the query's label
  map@r         mean over queries of (1/R) sum_{i<=R} P@i * rel_i
                (Musgrave, Belongie and Lim 2020, "A Metric Learning Reality
                Check")
  nmi           2 I(classes; clusters) / (H(classes) + H(clusters)) for a
                k-means clustering with k = the number of classes (by
                default scikit-learn's protocol, greedy k-means++ with 10
                restarts, up to k = 1024: see ``kmeans_settings``)
  f1            pair-counting F-measure between clusters and classes

Neighbours are exact for any finite float32 input: the data are first
centred (on the gallery mean, in float64) and scaled by a power of two, so the
float32 search is well conditioned whatever the offset and scale of
the input (a shift by 1e4 or a scale of 1e-20 or 1e20 changes nothing); it
runs for one chunk of queries at a time (memory ``O(chunk x N)``) and keeps a
few more candidates than asked, selected in two stages (the groups of 16
columns with the smallest minima, then the smallest entries among them:
the same values as a full ``top_k``, several times cheaper on the CPU).
Two engines run that search (``resolve_knn_engine``): XLA on JAX's default
device, and on the CPU backend NumPy's BLAS with ``argpartition`` on host
threads, which is faster there; they return the same neighbours. On the host,
a leave-one-out search (``evaluate``) of at least two tiles of 1,024 items
computes each pair of tiles once (distances are symmetric: half the
products) and keeps each row's candidates under a falling threshold.
Candidates closer to each other than a bound on the float32 error form
runs whose order is uncertain; every run of two or more among the first k
positions has its distances recomputed in float64 as ``sum((q - g)^2)`` on
the original values and is re-ranked (and where the k-th might lie outside
the candidates, the whole gallery is, for that query); elsewhere the
float32 order is provably the exact one. Ties are broken by the smaller
gallery index. ``evaluate`` re-ranks only the runs that mix neighbours of
the query's class with others: the order inside a run of equally relevant
neighbours cannot change any metric. Returned squared distances are float32
in the input's units; if one overflows float32 the call raises (rescale the
embeddings), and distances below float32's range may read as 0 while the
neighbours stay exact.
Queries with no other item of their class (R = 0) are left out of
``r_precision`` and ``map@r``; they still count (as misses) for recall.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import math
import os
import threading
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl

# ---------------------------------------------------------------------------
# Input checks (host side: evaluation inputs are concrete arrays)


def _as_embeddings(x, name: str, where: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{where}: `{name}` must be [N, D], got shape {x.shape}.")
  if not np.issubdtype(x.dtype, np.floating):
    raise TypeError(f"{where}: `{name}` must be floating point, got dtype {x.dtype}.")
  if x.shape[0] == 0:
    raise ValueError(f"{where}: `{name}` is empty.")
  bad = ~np.isfinite(x).all(axis=1)
  if bad.any():
    rows = np.flatnonzero(bad)
    raise ValueError(
        f"{where}: `{name}` has {rows.size} rows with NaN or infinite values "
        f"(first rows: {rows[:5].tolist()})."
    )
  return x.astype(np.float32, copy=False)


def _as_labels(labels, n: int, name: str, where: str) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (n,):
    raise ValueError(f"{where}: `{name}` must have shape ({n},) to match the embeddings, got {labels.shape}.")
  if not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(f"{where}: `{name}` must hold integer class ids, got dtype {labels.dtype}.")
  return labels


# ---------------------------------------------------------------------------
# Exact k-nearest neighbours in chunks


# Columns per group in the two-stage selection of ``_knn_chunk``.
_GROUP = 16


def _smallest(score, k):
  """``(values, columns)`` of the k smallest entries of each row, ascending.

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
    return -neg, idx
  grouped = score.reshape(rows, cols // _GROUP, _GROUP)
  _, groups = jax.lax.top_k(-grouped.min(axis=2), k)
  values = jnp.take_along_axis(grouped, groups[:, :, None], axis=1).reshape(rows, k * _GROUP)
  neg, pos = jax.lax.top_k(-values, k)
  return -neg, jnp.take_along_axis(groups, pos // _GROUP, axis=1) * _GROUP + pos % _GROUP


@functools.partial(jax.jit, static_argnames=("k", "exclude_self"))
def _knn_chunk(queries, query_offset, gallery, gallery_sq, *, k, exclude_self):
  """The k smallest of ``|g|^2 - 2 q.g`` per query row (``|q|^2`` is added on the host: it does not
  change a row's order), the query itself set to +inf when excluded. Returns ``(columns, values)``."""
  prod = jnp.matmul(queries, gallery.T, precision=jax.lax.Precision.HIGHEST)
  score = gallery_sq[None, :] - 2.0 * prod
  if exclude_self:   # an elementwise mask (fused with the score) rather than a scatter
    rows = query_offset + jnp.arange(queries.shape[0])
    score = jnp.where(jnp.arange(gallery.shape[0])[None, :] == rows[:, None], jnp.inf, score)
  values, idx = _smallest(score, k)
  return idx, values


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


def _conditioned(queries: np.ndarray, gallery: np.ndarray):
  """float32 copies ``(x - center) / unit``: centred on the gallery mean, ``unit`` a power of two
  making max |x| <= 1. Returns ``(queries, gallery, center, unit)``."""
  center = gallery.mean(axis=0, dtype=np.float64)
  sets = (queries,) if gallery is queries else (queries, gallery)
  # max |x - c| from the columns' extremes: rounding is monotone, so this is the float64 maximum.
  top = max(max(float(np.max(x.max(axis=0) - center)), float(np.max(center - x.min(axis=0)))) for x in sets)
  unit = 2.0 ** math.ceil(math.log2(top)) if top > 0 else 1.0
  out = []
  for x in sets:   # in blocks of rows: no float64 copy of a whole set
    y = np.empty(x.shape, np.float32)
    for start in range(0, x.shape[0], _CONDITION_ROWS):
      block = np.subtract(x[start:start + _CONDITION_ROWS], center, dtype=np.float64)
      block /= unit
      y[start:start + _CONDITION_ROWS] = block
    out.append(y)
  return out[0], out[-1], center, unit


_CONDITION_ROWS = 4096


def _refine(queries, gallery, candidates, k, rows=128):
  """The k nearest of each row's candidates by float64 distance, ties to the smaller index."""
  idx = np.empty((candidates.shape[0], k), np.int32)
  d2 = np.empty((candidates.shape[0], k), np.float64)
  for start in range(0, candidates.shape[0], rows):
    cand = candidates[start:start + rows]
    dist = _distances64(queries[start:start + rows, None, :], gallery[cand])
    order = np.lexsort((cand, dist), axis=-1)[:, :k]
    idx[start:start + rows] = np.take_along_axis(cand, order, axis=1)
    d2[start:start + rows] = np.take_along_axis(dist, order, axis=1)
  return idx, d2


def _distances64(q, g):
  """``sum((q - g)^2)`` in float64 (float32 operands are widened exactly)."""
  diff = np.subtract(q, g, dtype=np.float64)
  return np.einsum("...d,...d->...", diff, diff)


def _rerank_close(queries, gallery, cand, d, tol, k, relevant=None, pairs=16384):
  """Re-rank, in float64, the runs of candidates whose float32 order is uncertain.

  ``d`` holds each row's candidate distances (ascending, float32 accuracy),
  ``tol`` a bound per row on the error of a difference of two of them. A
  run is a maximal chain of neighbours less than ``tol`` apart: the order
  between runs is exact, the order inside one is not. Every run of two or
  more that starts among the first k positions gets float64 distances
  (``sum((q - g)^2)`` on the original values) and is re-sorted by them,
  ties to the smaller index; other candidates keep their place. With
  ``relevant`` (``[rows, kc]`` bool), only runs that mix relevant and
  irrelevant candidates are re-ranked. Returns ``(cand, d)`` sorted, both
  ``[rows, k]``.
  """
  close = np.diff(d, axis=1) <= tol[:, None]           # [rows, kc - 1]
  run = np.concatenate([np.zeros((d.shape[0], 1), np.int64), np.cumsum(~close, axis=1)], axis=1)
  in_run = np.zeros(d.shape, bool)
  in_run[:, 1:] |= close
  in_run[:, :-1] |= close
  # Runs that start within the first k positions (those behind them cannot enter the top k).
  first_runs = run[:, k - 1:k]
  in_run &= run <= first_runs
  if relevant is not None:   # a run's order matters only if it mixes relevant and irrelevant items
    flat_run = (run + np.arange(d.shape[0])[:, None] * d.shape[1]).ravel()
    size = np.bincount(flat_run, minlength=d.size)
    hits = np.bincount(flat_run, weights=relevant.ravel(), minlength=d.size)
    mixed = (hits > 0) & (hits < size)
    in_run &= mixed[flat_run].reshape(d.shape)
  rows, pos = np.nonzero(in_run)
  if rows.size == 0:
    return cand[:, :k], d[:, :k]
  d = d.copy()
  for start in range(0, rows.size, pairs):
    r, p = rows[start:start + pairs], pos[start:start + pairs]
    d[r, p] = _distances64(queries[r], gallery[cand[r, p]])
  redo = np.unique(rows)
  order = np.lexsort((cand[redo], d[redo], run[redo]), axis=-1)[:, :k]
  cand_k, d_k = cand[:, :k].copy(), d[:, :k]
  cand_k[redo] = np.take_along_axis(cand[redo], order, axis=1)
  d_k[redo] = np.take_along_axis(d[redo], order, axis=1)
  return cand_k, d_k


KNN_ENGINES = ("auto", "device", "host")
_FAR = float(np.finfo(np.float32).max) / 2   # the score of a padding column: finite, above every real one


def resolve_knn_engine(engine: str = "auto") -> str:
  """The engine that computes the float32 candidates of the exact kNN.

  ``"device"``: XLA on JAX's default device (``_knn_chunk``), shapes bucketed
  so that test sets of nearby sizes share one compilation; the host re-ranks
  a chunk while the device searches the next. ``"host"``: NumPy's BLAS
  product and a selection on host threads, no padding to a bucket; on the
  CPU backend XLA's matrix product and ``top_k`` are slower than BLAS and
  ``argpartition`` (see the README's evaluation benchmark). ``"auto"``:
  ``"host"`` when JAX's default backend is the CPU, ``"device"`` otherwise.
  Both return the same neighbours: the float64 re-ranking decides every
  close call. While it runs, the host engine limits BLAS to one thread in
  the whole process (``threadpoolctl``; restored afterwards), so BLAS calls
  from other threads of the process run single-threaded meanwhile.
  """
  if engine not in KNN_ENGINES:
    raise ValueError(f"kNN engine must be one of {KNN_ENGINES}, got {engine!r}.")
  return _auto_engine() if engine == "auto" else engine


def _auto_engine() -> str:
  return "host" if jax.default_backend() == "cpu" else "device"


def _device_candidates(cq, cg, cg_sq, exclude_self, kc, chunk_size):
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


def _smallest_host(score, k):
  """``_smallest`` in NumPy: ``(columns, values)`` of the k smallest entries of each row, ascending.

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


def _wait_all(futures):
  """The results of ``futures``, in order; on the first error (or an interrupt) the ones not yet
  started are cancelled, so a failing search stops instead of running to its end."""
  try:
    return [f.result() for f in futures]
  except BaseException:
    for f in futures:
      f.cancel()
    raise


def _host_threads() -> int:
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:   # not on Linux
    return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _host_pool(threads):
  """A pool of ``threads`` workers, with BLAS limited to one thread in the whole process while it is
  open: each worker runs its own single-threaded BLAS (BLAS's own threads would spin between calls
  and slow the other work down)."""
  limit = threadpoolctl.threadpool_limits(1, user_api="blas") if threads > 1 else contextlib.nullcontext()
  with concurrent.futures.ThreadPoolExecutor(threads) as pool, limit:
    yield pool


def _sq_norms(x):
  """``|x|^2`` of each row, summed in float64 and rounded to float32 once."""
  return np.einsum("nd,nd->n", x, x, dtype=np.float64).astype(np.float32)


def _score_columns(g, g_sq, cols):
  """``[-2 g; |g|^2]`` as ``[D + 1, cols]`` float32 columns, so that ``[q, 1]`` times them is
  ``|g|^2 - 2 q.g``; columns past ``len(g)`` score ``_FAR`` (finite, above every real score)."""
  n, d = g.shape
  out = np.zeros((d + 1, cols), np.float32)
  out[:d, :n] = -2.0 * g.T     # exact: a power of two
  out[d, :n] = g_sq
  out[d, n:] = _FAR
  return out


def _host_candidates(cq, cg, cg_sq, exclude_self, kc, chunk_size):
  """``_device_candidates`` on the host: the scores come from one BLAS product,
  ``[q, 1] . [-2 g, |g|^2]`` (a (D + 1)-term dot product), and each host thread
  computes and selects its own slices of a chunk's rows with a single-threaded
  BLAS, so one thread's selection overlaps another's product (BLAS's own
  threads would spin between calls and slow the selection down). Two chunk
  buffers: the threads work on the next chunk while the caller re-ranks this one."""
  cols = -(-cg.shape[0] // _GROUP) * _GROUP
  gt = _score_columns(cg, cg_sq, cols)
  chunk_size = max(1, min(chunk_size, cq.shape[0]))
  starts = list(range(0, cq.shape[0], chunk_size))
  buffers = [np.empty((chunk_size, cols), np.float32) for _ in starts[:2]]
  threads = _host_threads()

  def part(score, rows):
    np.matmul(np.concatenate([cq[rows], np.ones((score.shape[0], 1), np.float32)], axis=1), gt, out=score)
    if exclude_self:
      r = np.arange(score.shape[0])
      score[r, rows.start + r] = np.inf
    return _smallest_host(score, kc)

  def submit(c):
    m = min(chunk_size, cq.shape[0] - starts[c])
    # Slices of about chunk / (2 x threads) rows: a thread that finishes early takes another.
    bounds = np.linspace(0, m, min(2 * threads, m) + 1).astype(int)
    return [pool.submit(part, buffers[c % 2][a:b], slice(starts[c] + a, starts[c] + b))
            for a, b in zip(bounds[:-1], bounds[1:])]

  with _host_pool(threads) as pool:
    pending = submit(0)
    for c, start in enumerate(starts):
      parts = _wait_all(pending)
      pending = submit(c + 1) if c + 1 < len(starts) else []
      yield start, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# Rows and columns of a tile of the leave-one-out search (``_symmetric_candidates``).
_TILE = 1024


class _Reservoir:
  """The kc smallest scores offered so far for each of ``rows`` rows, kept loosely.

  Offers are appended (up to ``2 kc`` per row); a row that would overflow
  is merged, with its offers, down to its kc smallest, and its threshold
  ``tau`` becomes the largest of them. Callers may drop offers at or above
  a row's ``tau`` (kc kept scores are at or below it), so the kc smallest
  values offered are always kept (among ties, some of equal value).
  """

  def __init__(self, rows, kc):
    self.kc, self.cap = kc, 2 * kc
    self.vals = np.full((rows, self.cap), np.inf, np.float32)
    self.idx = np.zeros((rows, self.cap), np.int32)
    self.fill = np.zeros(rows, np.int64)
    self.tau = np.full(rows, np.inf, np.float32)

  def start(self, v, col0):
    """The first offer, dense: ``v[r, c]`` is the score of column ``col0 + c`` for row r."""
    k = min(self.kc, v.shape[1])
    top = np.argpartition(v, k - 1, axis=1)[:, :k]
    kept = np.take_along_axis(v, top, axis=1)
    self.vals[:, :k] = kept
    self.idx[:, :k] = col0 + top
    self.fill[:] = k
    if k == self.kc:
      self.tau[:] = kept.max(axis=1)

  def offer(self, rr, cc, vv):
    """Offers score ``vv[i]`` of column ``cc[i]`` to row ``rr[i]`` (``rr`` ascending)."""
    if rr.size == 0:
      return
    counts = np.bincount(rr, minlength=self.fill.size)
    rank = np.arange(rr.size) - (np.cumsum(counts) - counts)[rr]   # position among the row's offers
    over = self.fill + counts > self.cap
    if over.any():
      rows = np.flatnonzero(over)
      sel = over[rr]
      self._merge(rows, rr[sel], rank[sel], cc[sel], vv[sel], counts[rows])
      rr, cc, vv, rank = rr[~sel], cc[~sel], vv[~sel], rank[~sel]
      counts[rows] = 0
    pos = self.fill[rr] + rank
    self.vals[rr, pos] = vv
    self.idx[rr, pos] = cc
    self.fill += counts

  def _merge(self, rows, rr, rank, cc, vv, counts):
    stored = int(self.fill[rows].max())
    width = stored + int(counts.max())
    vals = np.full((rows.size, width), np.inf, np.float32)
    idx = np.zeros((rows.size, width), np.int32)
    vals[:, :stored] = self.vals[rows, :stored]
    idx[:, :stored] = self.idx[rows, :stored]
    at = np.searchsorted(rows, rr)
    vals[at, stored + rank] = vv
    idx[at, stored + rank] = cc
    k = min(self.kc, width)
    top = np.argpartition(vals, k - 1, axis=1)[:, :k]
    kept = np.take_along_axis(vals, top, axis=1)
    self.vals[rows] = np.inf
    self.vals[rows, :k] = kept
    self.idx[rows, :k] = np.take_along_axis(idx, top, axis=1)
    self.fill[rows] = k
    if k == self.kc:
      self.tau[rows] = kept.max(axis=1)

  def result(self):
    """``(columns, values)`` of the kc smallest of each row, ascending."""
    top = np.argpartition(self.vals, self.kc - 1, axis=1)[:, :self.kc]
    vals = np.take_along_axis(self.vals, top, axis=1)
    order = np.argsort(vals, axis=1, kind="stable")
    return (np.take_along_axis(np.take_along_axis(self.idx, top, axis=1), order, axis=1),
            np.take_along_axis(vals, order, axis=1))


def _symmetric_candidates(cq, cq_sq, q_sq, kc):
  """The leave-one-out search on the host, at half the products: the squared distances
  ``|q|^2 + |g|^2 - 2 q.g`` are symmetric, so each pair of tiles (i <= j) is computed once,
  as one (D + 2)-term product ``[q, 1, |q|^2] . [-2 g, |g|^2, 1]``, and offered to the rows
  of tile i and, transposed, to those of tile j (each tile's ``_Reservoir`` under its lock).
  Yields ``(start, columns, distances - q_sq)`` per tile, as the other engines yield
  ``|g|^2 - 2 q.g`` (``q_sq``: the float64 ``|q|^2`` the caller adds back)."""
  n, d = cq.shape
  rows = np.empty((n, d + 2), np.float32)
  rows[:, :d], rows[:, d], rows[:, d + 1] = cq, 1.0, cq_sq
  cols = np.empty((d + 2, n), np.float32)
  cols[:d], cols[d], cols[d + 1] = -2.0 * cq.T, cq_sq, 1.0   # -2 g: exact, a power of two
  tiles = list(range(0, n, _TILE))
  keep = [_Reservoir(min(_TILE, n - start), kc) for start in tiles]
  locks = [threading.Lock() for _ in tiles]
  started = [False] * len(tiles)

  def give(t, v, col0, transposed):
    """Offers block ``v`` (``v.T`` if ``transposed``) to the rows of tile t."""
    with locks[t]:
      if not started[t]:
        keep[t].start(np.ascontiguousarray(v.T) if transposed else v, col0)
        started[t] = True
        return
    # Only scores under a row's threshold are offered (read without the lock: a threshold only
    # falls, so one read early lets more through, never fewer).
    block = v.T if transposed else v
    flat = np.flatnonzero(block < keep[t].tau[:, None])   # row by row
    rr, cc = np.divmod(flat, block.shape[1])
    hits = block[rr, cc]
    with locks[t]:
      keep[t].offer(rr, col0 + cc.astype(np.int32), hits)

  def pair(i, j):
    si, sj = tiles[i], tiles[j]
    v = np.matmul(rows[si:si + _TILE], cols[:, sj:sj + _TILE])
    if i == j:
      np.fill_diagonal(v, np.inf)   # the query itself
    give(i, v, sj, False)
    if i != j:
      give(j, v, si, True)

  with _host_pool(_host_threads()) as pool:
    # Diagonal by diagonal: consecutive pairs (i, i + s), (i + 1, i + 1 + s) share no tile, so
    # threads seldom wait for the same lock.
    _wait_all([pool.submit(pair, i, i + s) for s in range(len(tiles)) for i in range(len(tiles) - s)])
  for start, tile in zip(tiles, keep):
    idx, vals = tile.result()
    yield start, idx, vals.astype(np.float64) - q_sq[start:start + idx.shape[0], None]


def nearest_neighbors(
    queries,
    gallery=None,
    *,
    k: int,
    chunk_size: int = 1024,
    return_float64: bool = False,
    engine: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
  """Exact k nearest neighbours by Euclidean distance.

  Args:
    queries: ``[Q, D]``.
    gallery: ``[N, D]``; ``None`` searches ``queries`` among themselves and
      excludes each query itself.
    k: neighbours per query (at most the gallery size, minus one when the
      query itself is excluded).
    chunk_size: queries per device call; memory is ``O(chunk_size * N)``.

    return_float64: return float64 squared distances, exact only where a
      re-ranking was needed and otherwise within float32 accuracy (never
      overflows; ``evaluate`` uses it, as it needs the neighbours only).
      By default the distances of the chosen neighbours are recomputed
      exactly and returned as float32.
    engine: what computes the float32 candidates: ``"auto"``, ``"device"``
      or ``"host"`` (see ``resolve_knn_engine``); the neighbours are the same.

  Returns:
    ``indices [Q, k]`` (int32) and ``squared distances [Q, k]`` (float32,
    or float64), nearest first; ties go to the smaller gallery index.
  """
  where = "nearest_neighbors"
  resolve_knn_engine(engine)
  queries = _as_embeddings(queries, "queries", where)
  exclude_self = gallery is None
  gallery = queries if exclude_self else _as_embeddings(gallery, "gallery", where)
  if gallery.shape[1] != queries.shape[1]:
    raise ValueError(f"{where}: queries {queries.shape} and gallery {gallery.shape} differ in D.")
  available = gallery.shape[0] - (1 if exclude_self else 0)
  if not 1 <= k <= available:
    raise ValueError(
        f"{where}: k={k} neighbours requested but only {available} gallery items are "
        f"available{' (the query itself excluded)' if exclude_self else ''}."
    )
  return _search(queries, gallery, exclude_self, k, chunk_size, return_float64, engine=engine)


def _search(queries, gallery, exclude_self, k, chunk_size, return_float64, labels=None, engine="auto"):
  """``nearest_neighbors`` on checked inputs. With ``labels = (query_labels, gallery_labels)``
  (for the metrics), close runs that are all relevant or all irrelevant are left in float32
  order: a permutation among equally relevant neighbours cannot change any retrieval metric."""
  where = "nearest_neighbors"
  engine = resolve_knn_engine(engine)
  chunk_size = max(1, chunk_size)
  available = gallery.shape[0] - (1 if exclude_self else 0)
  kc = min(available, k + 8 + k // 4)   # spare candidates for the float64 re-ranking
  cq, cg, _, unit = _conditioned(queries, queries if exclude_self else gallery)
  cg_sq = _sq_norms(cg)   # its float32 error is one rounding
  # A bound on the float32 error of the difference of two scores |q|^2 + |g|^2 - 2 q.g on
  # the conditioned data (u = 2^-24; |q|^2 and |g|^2 are float64 sums rounded once). Since
  # 2 |q.g| <= |q|^2 + |g|^2, a score errs by at most gamma_(D+1) (|q|^2 + 2 |g|^2) + u |g|^2
  # when computed as |g|^2 - 2 q.g (device) or as the (D + 1)-term product [q, 1].[-2 g, |g|^2]
  # (host), and by at most (2 D + 5) u (|q|^2 + |g|^2) as the (D + 2)-term product
  # [q, 1, |q|^2].[-2 g, |g|^2, 1] (host, leave-one-out); twice either is within
  # 4 (D + 4) u (|q|^2 + max |g|^2). Orderings decided by more than this are exact; runs
  # of closer calls are re-ranked in float64.
  q_sq = np.sum(cq.astype(np.float64) ** 2, axis=1)
  tol = (cq.shape[1] + 4) * 2.0 ** -22 * (q_sq + float(np.max(cg_sq)))
  idx_out = np.empty((queries.shape[0], k), np.int32)
  d_out = np.empty((queries.shape[0], k), np.float64)
  if engine == "host" and exclude_self and queries.shape[0] >= 2 * _TILE:
    chunks = _symmetric_candidates(cq, cg_sq, q_sq, kc)
  else:
    chunks = (_host_candidates if engine == "host" else _device_candidates)(cq, cg, cg_sq, exclude_self, kc,
                                                                            chunk_size)
  for start, cand, d32 in chunks:
    n = cand.shape[0]
    d32 = np.maximum(np.asarray(d32, np.float64) + q_sq[start:start + n, None], 0.0) * unit ** 2
    rows = slice(start, start + n)
    t = tol[rows] * unit ** 2
    # Might a gallery item outside the candidates belong in the top k?
    outside = (d32[:, kc - 1] - d32[:, k - 1] <= 2 * t) if kc < available else np.zeros(n, bool)
    relevant = None if labels is None else labels[1][cand] == labels[0][rows, None]
    idx_out[rows], d_out[rows] = _rerank_close(queries[rows], gallery, cand, d32, t, k, relevant)
    for i in np.flatnonzero(outside):      # rare: rank the whole gallery in float64
      everyone = np.arange(gallery.shape[0])
      if exclude_self:
        everyone = everyone[everyone != start + i]
      idx_out[start + i], d_out[start + i] = _refine(queries[start + i:start + i + 1], gallery, everyone[None, :], k)
  if not return_float64:   # the exact distances of the chosen neighbours, in the input's units
    for start in range(0, queries.shape[0], chunk_size):   # bounded memory: a chunk of queries at a time
      rows = slice(start, start + chunk_size)
      d_out[rows] = _distances64(queries[rows, None, :], gallery[idx_out[rows]])
    with np.errstate(over="ignore"):
      d32 = d_out.astype(np.float32)
    if not np.isfinite(d32).all():
      raise ValueError(f"{where}: squared distances up to {d_out.max():.3g} exceed the float32 range; "
                       "rescale the embeddings (the neighbours themselves would be exact).")
    d_out = d32
  return idx_out, d_out


# ---------------------------------------------------------------------------
# Retrieval metrics from neighbour labels


def recall_at_k(neighbor_labels: np.ndarray, query_labels: np.ndarray, ks: Sequence[int]) -> dict:
  """``{K: fraction of queries with a same-label item among the first K}``."""
  hits = neighbor_labels == query_labels[:, None]
  out = {}
  for k in ks:
    if not 1 <= k <= neighbor_labels.shape[1]:
      raise ValueError(f"recall_at_k: K={k} exceeds the {neighbor_labels.shape[1]} neighbours given.")
    out[k] = float(np.mean(hits[:, :k].any(axis=1)))
  return out


def r_precision_and_map_at_r(
    neighbor_labels: np.ndarray, query_labels: np.ndarray, num_relevant: np.ndarray
) -> tuple[float, float, int]:
  """R-precision and MAP@R over the queries with ``R >= 1``.

  Args:
    neighbor_labels: ``[Q, k]`` labels of the nearest neighbours, ``k >=
      max(R)``.
    query_labels: ``[Q]``.
    num_relevant: ``[Q]`` R for each query.

  Returns:
    ``(r_precision, map_at_r, number of queries used)``; NaN metrics when no
    query has R >= 1.
  """
  used = num_relevant > 0
  if not used.any():
    return math.nan, math.nan, 0
  nl, ql, r = neighbor_labels[used], query_labels[used], num_relevant[used]
  max_r = int(r.max())
  if nl.shape[1] < max_r:
    raise ValueError(f"r_precision_and_map_at_r: need {max_r} neighbours, got {nl.shape[1]}.")
  rel = (nl[:, :max_r] == ql[:, None])
  within = np.arange(max_r)[None, :] < r[:, None]
  rel = rel & within
  cum = np.cumsum(rel, axis=1)
  precision_at_i = cum / np.arange(1, max_r + 1)[None, :]
  ap = np.sum(precision_at_i * rel, axis=1) / r
  rp = cum[np.arange(len(r)), r - 1] / r
  return float(np.mean(rp)), float(np.mean(ap)), int(used.sum())


def _retrieval_metrics(neighbor_labels, query_labels, ks, num_relevant) -> dict:
  """recall@K, precision@1, r_precision, map@r from the neighbours' labels."""
  out = {f"recall@{k}": v for k, v in recall_at_k(neighbor_labels, query_labels, ks).items()}
  out["precision@1"] = float(np.mean(neighbor_labels[:, 0] == query_labels))
  rp, mapr, used = r_precision_and_map_at_r(neighbor_labels, query_labels, num_relevant)
  out["r_precision"], out["map@r"], out["num_queries_map@r"] = rp, mapr, used
  return out


# ---------------------------------------------------------------------------
# k-means in JAX


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


def _assign_host(x, centers, *, rows=1024):
  """``_assign`` on the host: each task scores ``rows`` points against every centre with one
  BLAS product ``[x, 1] . [-2 c, |c|^2]`` (single-threaded, inside the engine's own threads) and
  takes the row minima. Returns NumPy ``(assignments int32, squared distances float32)``."""
  c = np.asarray(centers, np.float32)
  n = x.shape[0]
  ct = _score_columns(c, _sq_norms(c), c.shape[0])
  idx = np.empty(n, np.int32)
  d2 = np.empty(n, np.float32)

  def task(start):
    xs = x[start:start + rows]
    score = np.matmul(np.concatenate([xs, np.ones((xs.shape[0], 1), np.float32)], axis=1), ct)
    best = np.argmin(score, axis=1)
    idx[start:start + rows] = best
    diff = xs - c[best]   # the distance to the chosen centre directly: no cancellation
    d2[start:start + rows] = np.einsum("nd,nd->n", diff, diff)

  with _host_pool(_host_threads()) as pool:
    _wait_all([pool.submit(task, start) for start in range(0, n, rows)])
  return idx, d2


@functools.partial(jax.jit, static_argnames=("k",))
def _update_centers(x, weights, assign, old_centers, *, k):
  sums = jax.ops.segment_sum(x * weights[:, None], assign, num_segments=k)
  counts = jax.ops.segment_sum(weights, assign, num_segments=k)
  new = sums / jnp.maximum(counts, 1.0)[:, None]
  return jnp.where(counts[:, None] > 0, new, old_centers), counts


def _pad_rows(x: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
  n = x.shape[0]
  pad = (-n) % multiple
  w = np.ones(n + pad, np.float32)
  if pad:
    x = np.concatenate([x, np.repeat(x[:1], pad, axis=0)])
    w[n:] = 0.0
  return x, w


def _d2_to(x, x_sq, weights, idx):
  """``[len(idx), n]`` squared distances from the points ``idx`` to every point, zero for padding rows."""
  dot = jnp.matmul(x[idx], x.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(x_sq[idx][:, None] + x_sq[None, :] - 2.0 * dot, 0.0) * weights[None, :]


@functools.partial(jax.jit, static_argnames=("k", "per_round"))
def _kmeans_pp_init(x, weights, key, *, k, per_round):
  """Plain k-means++ (D^2 sampling) on device, ``per_round`` centres per round: indices of the k centres.

  Each round draws ``per_round`` distinct points with probability
  proportional to their squared distance to the nearest centre so far
  (Gumbel top-k: sampling without replacement); points at distance zero are
  drawn only when no other point is left, a point already chosen and the
  padding rows never.
  """
  n = x.shape[0]
  x_sq = jnp.sum(jnp.square(x), axis=1)
  key, sub = jax.random.split(key)
  first = jax.random.choice(sub, n, p=weights / jnp.sum(weights)).astype(jnp.int32)
  closest = _d2_to(x, x_sq, weights, first[None])[0]
  rounds = -(-(k - 1) // per_round)
  chosen = jnp.zeros((1 + rounds * per_round,), jnp.int32).at[0].set(first)
  free = (weights > 0).at[first].set(False)   # real points not yet chosen

  def body(r, carry):
    closest, chosen, free, key = carry
    key, sub = jax.random.split(key)
    g = jax.random.gumbel(sub, (n,), jnp.float32)
    score = jnp.where(closest > 0, jnp.log(jnp.where(closest > 0, closest, 1.0)) + g, g - 1e4)
    _, picks = jax.lax.top_k(jnp.where(free, score, -jnp.inf), per_round)
    closest = jnp.minimum(closest, jnp.min(_d2_to(x, x_sq, weights, picks), axis=0))
    chosen = jax.lax.dynamic_update_slice(chosen, picks.astype(jnp.int32), (1 + r * per_round,))
    return closest, chosen, free.at[picks].set(False), key

  _, chosen, _, _ = jax.lax.fori_loop(0, rounds, body, (closest, chosen, free, key))
  return chosen[:k]


@functools.partial(jax.jit, static_argnames=("k", "trials"))
def _greedy_kmeans_pp_init(x, weights, key, *, k, trials):
  """Greedy k-means++ (scikit-learn's ``_kmeans_plusplus``) on device: indices of the k centres.

  The first centre is drawn with probability proportional to the weight;
  every next one from ``trials`` candidates drawn by D^2 sampling, keeping
  the candidate that lowers the total potential most.
  """
  n = x.shape[0]
  x_sq = jnp.sum(jnp.square(x), axis=1)
  d2_to = functools.partial(_d2_to, x, x_sq, weights)

  key, sub = jax.random.split(key)
  first = jax.random.choice(sub, n, p=weights / jnp.sum(weights))
  closest = d2_to(first[None])[0]
  chosen = jnp.zeros((k,), jnp.int32).at[0].set(first.astype(jnp.int32))

  def body(c, carry):
    closest, chosen, key = carry
    key, sub = jax.random.split(key)
    cumulative = jnp.cumsum(closest)
    r = jax.random.uniform(sub, (trials,), closest.dtype) * cumulative[-1]
    cand = jnp.minimum(jnp.searchsorted(cumulative, r), n - 1).astype(jnp.int32)
    cand_d2 = jnp.minimum(closest[None, :], d2_to(cand))
    best = jnp.argmin(jnp.sum(cand_d2, axis=1))
    return cand_d2[best], chosen.at[c].set(cand[best]), key

  _, chosen, _ = jax.lax.fori_loop(1, k, body, (closest, chosen, key))
  return chosen


def _relocate_empty(x, assign, d2, centers, counts, n):
  """scikit-learn's rule for empty clusters: each takes one of the points farthest from their centres."""
  empty = np.flatnonzero(counts == 0)
  if empty.size == 0:
    return centers
  centers, counts = np.array(centers), np.array(counts)
  far = np.argsort(-d2[:n], kind="stable")[:empty.size]
  for cluster, i in zip(empty, far):
    old = assign[i]
    if counts[old] > 1:   # the point leaves its cluster: that centre's mean without it
      centers[old] = (centers[old] * counts[old] - x[i]) / (counts[old] - 1)
      counts[old] -= 1
    centers[cluster] = x[i]
    counts[cluster] = 1
  return centers


KMEANS_INITS = ("greedy-k-means++", "k-means++", "random")


def _lloyd(x, xp, xj, wj, centers, n, *, chunk, max_iter, tol_abs, engine):
  """Lloyd iterations with scikit-learn's stopping rule. Returns ``(assign, centers, inertia, iters)``.
  ``engine``: where the assignment step's products run (``"host"``: ``_assign_host`` on ``xp``)."""
  k = centers.shape[0]
  if engine == "host":
    assign_step = lambda c: tuple(jnp.asarray(a) for a in _assign_host(xp, c))
  else:
    assign_step = lambda c: _assign(xj, c, chunk=chunk)
  assign_prev, it = None, 0
  for it in range(1, max_iter + 1):
    assign, d2 = assign_step(centers)
    new_centers, counts = _update_centers(xj, wj, assign, centers, k=k)
    counts = np.asarray(counts)
    if (counts == 0).any():
      new_centers = jnp.asarray(_relocate_empty(x, np.asarray(assign), np.asarray(d2),
                                                np.asarray(new_centers), counts, n))
    shift = float(jnp.sum(jnp.square(new_centers - centers)))
    centers = new_centers
    if assign_prev is not None and bool(jnp.all(assign[:n] == assign_prev[:n])):
      break
    if shift <= tol_abs:
      break
    assign_prev = assign
  assign, d2 = assign_step(centers)   # the labels of the final centres (scikit-learn's last E-step)
  return assign, centers, float(jnp.sum(d2 * wj)), it


def kmeans(
    x,
    k: int,
    *,
    seed: int = 0,
    n_init: int = 1,
    max_iter: int = 300,
    init: str = "greedy-k-means++",
    init_per_round: int | None = None,
    tol: float = 1e-4,
    chunk_size: int = 2048,
    return_info: bool = False,
    engine: str = "auto",
):
  """Lloyd's k-means on device, chunked so memory stays ``O(chunk x k)``.

  Initialisation (seeded): ``"greedy-k-means++"`` (scikit-learn's: each
  centre is the best of ``2 + floor(ln k)`` D^2-sampled candidates, the one
  lowering the potential most), ``"k-means++"`` (plain D^2 sampling; to keep
  large k affordable, ``init_per_round`` centres are drawn per D^2 round, by
  default ``max(1, k // 256)``: exact k-means++ for k < 512) or ``"random"``
  (k distinct points, Forgy). Stops as scikit-learn's Lloyd does: when no
  point changes cluster, or when the squared centre shift summed over
  centres is at most ``tol`` times the mean per-feature variance, or after
  ``max_iter`` iterations; the labels returned are those of the final
  centres. An empty cluster is moved to the point farthest from its centre
  (scikit-learn's rule). ``n_init`` restarts from different seeds keep the
  run with the lowest inertia (``n_init=10`` with the greedy init is the
  protocol of the paper's scikit-learn ``KMeans``). ``engine`` (as for
  the kNN, ``resolve_knn_engine``): where Lloyd's assignment step runs,
  XLA on the device or BLAS on host threads (the default on a CPU backend);
  the initialisation and the centre updates run on the device either way.

  Returns:
    ``(assignments [N] int32, centres [k, D])``; with ``return_info``, a
    third item ``{"inertia", "n_iter", "best_init"}``.
  """
  where = "kmeans"
  x = _as_embeddings(x, "x", where)
  n = x.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f"{where}: k={k} must lie in [1, {n}] (the number of points).")
  if init not in KMEANS_INITS:
    raise ValueError(f"{where}: init must be one of {KMEANS_INITS}, got {init!r}.")
  if not isinstance(n_init, (int, np.integer)) or n_init < 1:
    raise ValueError(f"{where}: n_init must be a positive integer, got {n_init!r}.")
  if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
    raise ValueError(f"{where}: max_iter must be a positive integer, got {max_iter!r}.")
  engine = resolve_knn_engine(engine)
  # Centred and scaled by a power of two: any finite offset or scale clusters alike.
  x, _, center, unit = _conditioned(x, x)
  chunk = min(chunk_size, bucket(n))   # device shapes depend on the bucket of n only
  xp, w = _pad_rows(x, chunk)
  xj, wj = jnp.asarray(xp), jnp.asarray(w)
  tol_abs = tol * float(np.mean(np.var(x.astype(np.float64), axis=0)))
  best = None
  for run in range(n_init):
    run_seed = seed if n_init == 1 else np.random.SeedSequence([seed, run]).generate_state(1)[0]
    if init == "random":
      centers = x[np.random.default_rng(run_seed).choice(n, size=k, replace=False)]
    elif init == "k-means++":
      idx = _kmeans_pp_init(xj, wj, jax.random.key(int(run_seed)), k=k,
                            per_round=min(k, init_per_round or max(1, k // 256)))
      centers = xp[np.asarray(idx)]
    else:
      idx = _greedy_kmeans_pp_init(xj, wj, jax.random.key(int(run_seed)), k=k, trials=2 + int(np.log(k)))
      centers = xp[np.asarray(idx)]
    assign, centers, inertia, iters = _lloyd(x, xp, xj, wj, jnp.asarray(centers, jnp.float32), n, chunk=chunk,
                                             max_iter=max_iter, tol_abs=tol_abs, engine=engine)
    if best is None or inertia < best[2]:
      best = (assign, centers, inertia, iters, run)
  assign, centers, inertia, iters, run = best
  out = (np.asarray(assign)[:n], (np.asarray(centers, np.float64) * unit + center).astype(np.float32))
  if return_info:
    return (*out, {"inertia": inertia * unit ** 2, "n_iter": iters, "best_init": run})
  return out


# ---------------------------------------------------------------------------
# Clustering metrics from the (sparse) contingency table


def contingency(labels_true, labels_pred):
  """The non-zero cells of the class x cluster table and both marginals.

  Never materialises the dense table nor any N x N pair matrix.

  Returns:
    ``(cell_counts, cell_class, cell_cluster, class_counts, cluster_counts)``
    where ``cell_class``/``cell_cluster`` index the marginals.
  """
  labels_true = np.asarray(labels_true)
  labels_pred = np.asarray(labels_pred)
  if labels_true.shape != labels_pred.shape or labels_true.ndim != 1 or labels_true.size == 0:
    raise ValueError(f"contingency: label arrays must be 1-D, non-empty and of one length, got "
                     f"{labels_true.shape} and {labels_pred.shape}.")
  _, t = np.unique(labels_true, return_inverse=True)
  _, p = np.unique(labels_pred, return_inverse=True)
  width = int(p.max()) + 1
  codes, cells = np.unique(t.astype(np.int64) * width + p, return_counts=True)
  return cells, codes // width, codes % width, np.bincount(t), np.bincount(p)


def _entropy(counts: np.ndarray) -> float:
  p = counts[counts > 0] / counts.sum()
  return float(-np.sum(p * np.log(p)))


def normalized_mutual_information(labels_true, labels_pred) -> float:
  """NMI with arithmetic normalisation, ``2 I / (H_true + H_pred)``.

  Both labelings constant: 1.0 (they agree perfectly), as in scikit-learn.
  """
  cells, ti, pi, a, b = contingency(labels_true, labels_pred)
  n = float(a.sum())
  h_t, h_p = _entropy(a), _entropy(b)
  if h_t == 0.0 and h_p == 0.0:
    return 1.0
  mi = float(np.sum(cells / n * (np.log(cells * n) - np.log(a[ti].astype(np.float64) * b[pi]))))
  return float(min(1.0, max(0.0, 2.0 * mi / (h_t + h_p))))  # clip rounding


def _pairs(c: np.ndarray) -> float:
  c = c.astype(np.float64)
  return float(np.sum(c * (c - 1) / 2))


def pair_f1(labels_true, labels_pred) -> float:
  """Pair-counting F1: precision and recall of "same cluster" vs "same class".

  ``TP = sum_ij C(n_ij, 2)``, precision ``TP / sum_j C(n_.j, 2)``, recall
  ``TP / sum_i C(n_i., 2)``. A side with no pairs has precision (or recall)
  0; F1 is 0 when both are 0.
  """
  cells, _, _, a, b = contingency(labels_true, labels_pred)
  tp = _pairs(cells)
  pred_pairs, true_pairs = _pairs(b), _pairs(a)
  precision = tp / pred_pairs if pred_pairs else 0.0
  recall = tp / true_pairs if true_pairs else 0.0
  return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------
# The entry points


KMEANS_PROTOCOLS = ("auto", "reference", "fast")
REFERENCE_MAX_K = 1024   # "auto" uses the reference protocol up to this many clusters
FAST_MAX_ITER = 20       # the "fast" protocol's Lloyd budget: that of faiss's k-means in pytorch-metric-learning


def kmeans_settings(protocol: str, k: int) -> dict:
  """The k-means settings of a protocol for ``k`` clusters (``"auto"`` resolved).

  ``"reference"``: scikit-learn's ``KMeans`` of the paper's time, greedy
  k-means++ with ``n_init=10``, ``max_iter=300``, ``tol=1e-4``. ``"fast"``:
  one plain k-means++ run whose D^2 sampling draws ``max(1, k // 256)``
  centres per round (for SOP-scale k), then at most 20 Lloyd iterations
  (the budget of faiss's k-means as pytorch-metric-learning runs it; at SOP
  scale scikit-learn's tolerance is not reached within hundreds). ``"auto"``: reference for
  ``k <= 1024`` (CUB, Cars), fast above (SOP, k = 11,316).
  """
  if protocol not in KMEANS_PROTOCOLS:
    raise ValueError(f"kmeans_protocol must be one of {KMEANS_PROTOCOLS}, got {protocol!r}.")
  if protocol == "auto":
    protocol = "reference" if k <= REFERENCE_MAX_K else "fast"
  if protocol == "reference":
    return {"protocol": "reference", "init": "greedy-k-means++", "n_init": 10, "max_iter": 300}
  return {"protocol": "fast", "init": "k-means++", "n_init": 1, "max_iter": FAST_MAX_ITER}


def evaluate(
    embeddings,
    labels,
    *,
    recall_ks: Sequence[int] = (1, 2, 4, 8),
    normalize: bool = False,
    clustering: bool = True,
    kmeans_backend: str = "jax",
    kmeans_seed: int = 0,
    kmeans_protocol: str = "auto",
    chunk_size: int = 1024,
    knn_engine: str = "auto",
) -> dict:
  """Every retrieval and clustering metric of one test set (leave-one-out).

  Args:
    embeddings: ``[N, D]`` finite floats.
    labels: ``[N]`` integer classes; at least two distinct.
    recall_ks: the K of ``recall@K``; each must be ``<= N - 1``.
    normalize: L2-normalise the embeddings first.
    clustering: compute ``nmi`` and ``f1`` (k-means with k = #classes).
    kmeans_backend: ``"jax"`` (this module) or ``"sklearn"`` (scikit-learn's
      ``KMeans`` with the same protocol, for cross-checking).
    kmeans_seed: the clustering's seed.
    kmeans_protocol: ``"auto"``, ``"reference"`` or ``"fast"``
      (see ``kmeans_settings``).
    chunk_size: queries per kNN step (memory ``O(chunk_size * N)``); the
      host engine's leave-one-out search of 2,048 items or more works in
      tiles of 1,024 instead (memory ``O(N * k)``).
    knn_engine: ``"auto"``, ``"device"`` or ``"host"`` (see
      ``resolve_knn_engine``): the same neighbours, found at different speeds;
      also where the k-means assignment step runs.

  Returns:
    ``{"recall@K": ..., "precision@1", "r_precision", "map@r", "nmi", "f1",
    "num_queries_map@r"}`` as Python floats.
  """
  where = "evaluate"
  x = _as_embeddings(embeddings, "embeddings", where)
  y = _as_labels(labels, x.shape[0], "labels", where)
  classes, inverse, class_sizes = np.unique(y, return_inverse=True, return_counts=True)
  if classes.size < 2:
    raise ValueError(f"{where}: need at least 2 classes to evaluate, got {classes.size}.")
  ks = sorted(set(int(k) for k in recall_ks))
  if ks and (ks[0] < 1 or ks[-1] > x.shape[0] - 1):
    raise ValueError(
        f"{where}: recall K values {ks} must lie in [1, {x.shape[0] - 1}] (N - 1 = the "
        f"gallery without the query)."
    )
  resolve_knn_engine(knn_engine)   # a bad engine or protocol fails before the search
  if clustering:
    kmeans_settings(kmeans_protocol, int(classes.size))
  if normalize:
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  num_relevant = class_sizes[inverse] - 1
  k = max([1] + ks + [int(num_relevant.max())])
  idx, _ = _search(x, x, True, k, chunk_size, True, labels=(y, y), engine=knn_engine)
  neighbor_labels = y[idx]
  out = _retrieval_metrics(neighbor_labels, y, ks, num_relevant)
  if clustering:
    out.update(cluster_metrics(x, y, backend=kmeans_backend, seed=kmeans_seed, protocol=kmeans_protocol,
                               engine=knn_engine))
  return out


def cluster_metrics(x, y, *, backend: str = "jax", seed: int = 0, protocol: str = "auto",
                    engine: str = "auto") -> dict:
  """``nmi`` and ``f1`` of a k-means clustering with k = number of classes (``protocol``: see ``kmeans_settings``;
  ``engine``: that of ``kmeans``)."""
  k = int(np.unique(y).size)
  settings = kmeans_settings(protocol, k)
  if backend == "jax":
    assign, _ = kmeans(x, k, seed=seed, init=settings["init"], n_init=settings["n_init"],
                       max_iter=settings["max_iter"], engine=engine)
  elif backend == "sklearn":
    from sklearn.cluster import KMeans
    assign = KMeans(n_clusters=k, n_init=settings["n_init"], max_iter=settings["max_iter"],
                    random_state=seed).fit_predict(np.asarray(x))
  else:
    raise ValueError(f"cluster_metrics: backend must be 'jax' or 'sklearn', got {backend!r}.")
  return {"nmi": normalized_mutual_information(y, assign), "f1": pair_f1(y, assign)}


def evaluate_query_gallery(
    queries, query_labels, gallery, gallery_labels, *,
    recall_ks: Sequence[int] = (1, 10, 20, 30, 40, 50), normalize: bool = False,
    chunk_size: int = 1024, knn_engine: str = "auto",
) -> dict:
  """Retrieval metrics with separate query and gallery sets (In-Shop style).

  No item is excluded: a query's neighbours come from the gallery only. R is
  the number of gallery items with the query's label. ``knn_engine``: as in ``evaluate``.
  """
  where = "evaluate_query_gallery"
  q = _as_embeddings(queries, "queries", where)
  g = _as_embeddings(gallery, "gallery", where)
  ql = _as_labels(query_labels, q.shape[0], "query_labels", where)
  gl = _as_labels(gallery_labels, g.shape[0], "gallery_labels", where)
  resolve_knn_engine(knn_engine)
  ks = sorted(set(int(k) for k in recall_ks))
  if ks and (ks[0] < 1 or ks[-1] > g.shape[0]):
    raise ValueError(f"{where}: recall K values {ks} must lie in [1, {g.shape[0]}] (the gallery size).")
  if normalize:
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
  g_classes, g_counts = np.unique(gl, return_counts=True)
  lookup = dict(zip(g_classes.tolist(), g_counts.tolist()))
  num_relevant = np.array([lookup.get(int(c), 0) for c in ql])
  k = max([1] + ks + [int(num_relevant.max())])
  idx, _ = _search(q, g, False, min(k, g.shape[0]), chunk_size, True, labels=(ql, gl), engine=knn_engine)
  neighbor_labels = gl[idx]
  out = _retrieval_metrics(neighbor_labels, ql, ks, num_relevant)
  return out
