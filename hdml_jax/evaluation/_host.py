"""The host kNN engine: NumPy's BLAS and ``argpartition`` on host threads.

The default on a CPU backend, where XLA's matrix product and ``top_k`` are
slower than BLAS and ``argpartition``. Each host thread runs a
single-threaded BLAS on its own slice of rows (``_host_pool``). A query
chunk's scores come from one product ``[q, 1] . [-2 g, |g|^2]``
(``_host_candidates``); the leave-one-out search of large sets computes each
pair of tiles once (``_symmetric_candidates``) and keeps each row's
candidates in a ``_Reservoir``. Lloyd's assignment step of k-means runs here
too (``_assign_host``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading

import numpy as np
import threadpoolctl

from hdml_jax.evaluation import _select

__all__: list[str] = []


_FAR = float(np.finfo(np.float32).max) / 2   # the score of a padding column: finite, above every real one


class _Tasks:
  """A thread pool whose tasks stop at the first failure. Once a task has raised (or the waiting
  caller has been interrupted), the tasks not yet started return at once without running: the
  workers see it themselves, so a failing search stops however late the caller wakes up."""

  def __init__(self, pool: concurrent.futures.ThreadPoolExecutor):
    self._pool = pool
    self._failed = threading.Event()

  def _run(self, fn, args):
    if self._failed.is_set():
      return None   # never read: ``wait_all`` raises the failure first (tasks start in order)
    try:
      return fn(*args)
    except BaseException:
      self._failed.set()
      raise

  def submit(self, fn, *args) -> concurrent.futures.Future:
    return self._pool.submit(self._run, fn, args)

  def wait_all(self, futures):
    """The results of ``futures``, in order; the first error is raised, and the tasks not yet
    started are cancelled."""
    try:
      return [f.result() for f in futures]
    except BaseException:
      self._failed.set()
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
  """A pool of ``threads`` workers (as ``_Tasks``), with BLAS limited to one thread in the whole process while it is
  open: each worker runs its own single-threaded BLAS (BLAS's own threads would spin between calls
  and slow the other work down)."""
  limit = threadpoolctl.threadpool_limits(1, user_api="blas") if threads > 1 else contextlib.nullcontext()
  with concurrent.futures.ThreadPoolExecutor(threads) as pool, limit:
    yield _Tasks(pool)


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


def _host_candidates(cq, cg, cg_sq, *, exclude_self, kc, chunk_size):
  """``_device_candidates`` on the host: the scores come from one BLAS product,
  ``[q, 1] . [-2 g, |g|^2]`` (a (D + 1)-term dot product), and each host thread
  computes and selects its own slices of a chunk's rows with a single-threaded
  BLAS, so one thread's selection overlaps another's product (BLAS's own
  threads would spin between calls and slow the selection down). Two chunk
  buffers: the threads work on the next chunk while the caller re-ranks this one."""
  cols = -(-cg.shape[0] // _select._GROUP) * _select._GROUP
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
    return _select._smallest_host(score, kc)

  def submit(c):
    m = min(chunk_size, cq.shape[0] - starts[c])
    # Slices of about chunk / (2 x threads) rows: a thread that finishes early takes another.
    bounds = np.linspace(0, m, min(2 * threads, m) + 1).astype(int)
    return [pool.submit(part, buffers[c % 2][a:b], slice(starts[c] + a, starts[c] + b))
            for a, b in zip(bounds[:-1], bounds[1:])]

  with _host_pool(threads) as pool:
    pending = submit(0)
    for c, start in enumerate(starts):
      parts = pool.wait_all(pending)
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
    pool.wait_all([pool.submit(pair, i, i + s) for s in range(len(tiles)) for i in range(len(tiles) - s)])
  for start, tile in zip(tiles, keep):
    idx, vals = tile.result()
    yield start, idx, vals.astype(np.float64) - q_sq[start:start + idx.shape[0], None]


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
    pool.wait_all([pool.submit(task, start) for start in range(0, n, rows)])
  return idx, d2
