"""The exact search: conditioning, the float32 error bound, the float64 re-ranking.

``_search`` conditions the data (centred on the gallery mean in float64 and
scaled by a power of two), has an engine (``_device`` or ``_host``) find each
query's float32 candidates, and re-ranks in float64 every run of candidates
closer than the bound on the float32 error (``_rerank_close``); where the
k-th neighbour might lie outside the candidates, the whole gallery is ranked
in float64 for that query (``_refine``).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from hdml_jax.evaluation import _device, _host
from hdml_jax.evaluation._checks import _as_embeddings

__all__ = ["KNN_ENGINES", "nearest_neighbors", "resolve_knn_engine"]


#: The engines that compute the exact kNN's float32 candidates (see :func:`resolve_knn_engine`).
KNN_ENGINES = ("auto", "device", "host")


def resolve_knn_engine(engine: str = "auto") -> str:
  """The engine that computes the float32 candidates of the exact kNN.

  ``"device"``: XLA on JAX's default device (``_knn_chunk``), shapes bucketed
  so that test sets of nearby sizes share one compilation; the host re-ranks
  a chunk while the device searches the next. ``"host"``: NumPy's BLAS
  product and a selection on host threads, no padding to a bucket; on the
  CPU backend XLA's matrix product and ``top_k`` are slower than BLAS and
  ``argpartition`` (see the benchmarks page of the docs). ``"auto"``:
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
  return _search(queries, gallery, exclude_self=exclude_self, k=k, chunk_size=chunk_size,
                 return_float64=return_float64, engine=engine)


def _search(queries, gallery, *, exclude_self, k, chunk_size, return_float64, labels=None, engine="auto"):
  """``nearest_neighbors`` on checked inputs. With ``labels = (query_labels, gallery_labels)``
  (for the metrics), close runs that are all relevant or all irrelevant are left in float32
  order: a permutation among equally relevant neighbours cannot change any retrieval metric."""
  where = "nearest_neighbors"
  engine = resolve_knn_engine(engine)
  chunk_size = max(1, chunk_size)
  available = gallery.shape[0] - (1 if exclude_self else 0)
  kc = min(available, k + 8 + k // 4)   # spare candidates for the float64 re-ranking
  cq, cg, _, unit = _conditioned(queries, queries if exclude_self else gallery)
  cg_sq = _host._sq_norms(cg)   # its float32 error is one rounding
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
  if engine == "host" and exclude_self and queries.shape[0] >= 2 * _host._TILE:
    chunks = _host._symmetric_candidates(cq, cg_sq, q_sq, kc)
  else:
    candidates = _host._host_candidates if engine == "host" else _device._device_candidates
    chunks = candidates(cq, cg, cg_sq, exclude_self=exclude_self, kc=kc, chunk_size=chunk_size)
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
