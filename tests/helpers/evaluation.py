"""Brute-force references of the evaluation, its data, and engine settings."""

import itertools
import threading
from unittest import mock

import numpy as np
import threadpoolctl

from hdml_jax import evaluation as ev
from hdml_jax.evaluation import _device as ev_device
from hdml_jax.evaluation import _exact as ev_exact
from hdml_jax.evaluation import _host as ev_host


def brute_neighbors(q, g, exclude_self):
  """Sorted by (distance, index) with plain loops."""
  out = []
  for i in range(len(q)):
    cands = []
    for j in range(len(g)):
      if exclude_self and i == j:
        continue
      d = sum((float(a) - float(b)) ** 2 for a, b in zip(q[i], g[j]))
      cands.append((d, j))
    cands.sort()
    out.append([j for _, j in cands])
  return out


def brute_metrics(x, y, ks):
  nbrs = brute_neighbors(x, x, True)
  rec = {k: np.mean([any(y[j] == y[i] for j in nb[:k]) for i, nb in enumerate(nbrs)]) for k in ks}
  rps, aps = [], []
  for i, nb in enumerate(nbrs):
    r = sum(1 for j in range(len(y)) if j != i and y[j] == y[i])
    if r == 0:
      continue
    hits, ap = 0, 0.0
    for pos, j in enumerate(nb[:r], start=1):
      if y[j] == y[i]:
        hits += 1
        ap += hits / pos
    rps.append(hits / r)
    aps.append(ap / r)
  return rec, np.mean(rps), np.mean(aps), len(aps)


def brute_pair_f1(y, c):
  tp = fp = fn = 0
  for i, j in itertools.combinations(range(len(y)), 2):
    same_class, same_cluster = y[i] == y[j], c[i] == c[j]
    tp += same_class and same_cluster
    fp += same_cluster and not same_class
    fn += same_class and not same_cluster
  p = tp / (tp + fp) if tp + fp else 0.0
  r = tp / (tp + fn) if tp + fn else 0.0
  return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def blobs(seed=0, n=120, classes=6, d=5, spread=0.6):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, classes, n)
  centers = rng.normal(size=(classes, d)) * 3
  return (centers[y] + spread * rng.normal(size=(n, d))).astype(np.float32), y


def numpy_neighbors(q, g, exclude_self, k):
  """Float64 brute force, sorted by (distance, index)."""
  d = ((q.astype(np.float64)[:, None, :] - g.astype(np.float64)[None]) ** 2).sum(-1)
  if exclude_self:
    np.fill_diagonal(d, np.inf)
  index = np.broadcast_to(np.arange(g.shape[0]), d.shape)
  return np.lexsort((index, d), axis=-1)[:, :k]


def metrics_from_neighbors(nbrs, yq, yg, ks, exclude_self):
  """Recall@K, R-precision and MAP@R from exact neighbour lists, by plain loops."""
  rec = {k: np.mean([any(yg[j] == yq[i] for j in nb[:k]) for i, nb in enumerate(nbrs)]) for k in ks}
  rps, aps = [], []
  for i, nb in enumerate(nbrs):
    r = int(np.sum(yg == yq[i])) - (1 if exclude_self else 0)
    if r == 0:
      continue
    rel = [yg[j] == yq[i] for j in nb[:r]]
    rps.append(sum(rel) / r)
    aps.append(sum(sum(rel[:p + 1]) / (p + 1) for p in range(r) if rel[p]) / r)
  return rec, np.mean(rps), np.mean(aps)


def near_ties(n, seed, d=16, clusters=6, grid=12):
  """Clusters on an integer grid plus offsets on a 2^-grid grid: many exact and near ties,
  closer than float32's |q|^2 + |g|^2 - 2 q.g can separate (all values exact in float32)."""
  rng = np.random.default_rng(seed)
  centers = rng.integers(-3, 4, size=(clusters, d))
  offsets = rng.integers(-4, 5, size=(n, d)) * 2.0 ** -grid
  return (centers[rng.integers(0, clusters, n)] + offsets).astype(np.float32)


class OnDevice:
  """Mixed into a test class: its searches use the device engine (XLA, what ``"auto"`` picks on an
  accelerator), where the class itself runs with what ``"auto"`` picks here (the host engine on a CPU)."""

  def setUp(self):
    super().setUp()
    patcher = mock.patch.object(ev_exact, "_auto_engine", return_value="device")
    patcher.start()
    self.addCleanup(patcher.stop)

  def test_the_searches_run_on_the_device_engine(self):
    calls = []
    real = ev_device._knn_chunk
    with mock.patch.object(ev_device, "_knn_chunk", lambda *a, **kw: calls.append(1) or real(*a, **kw)):
      ev.nearest_neighbors(blobs()[0], k=3)
    self.assertNotEqual(calls, [])


class SmallTiles:
  """Mixed into a test class: leave-one-out searches on the host take the symmetric path
  (``_symmetric_candidates``) with tiles of 16 rows, so that test sets of a few hundred items
  have many tiles, first offers narrower than the candidates, and many merges."""

  def setUp(self):
    super().setUp()
    patcher = mock.patch.object(ev_host, "_TILE", 16)
    patcher.start()
    self.addCleanup(patcher.stop)

  def test_the_searches_take_the_symmetric_path(self):
    calls = []
    real = ev_host._symmetric_candidates
    with mock.patch.object(ev_host, "_symmetric_candidates", lambda *a: calls.append(1) or real(*a)):
      ev.nearest_neighbors(blobs()[0], k=3, engine="host")
    self.assertEqual(calls, [1])


def eval_data(seed=0, n=40, classes=4, d=3, spread=1.0):
  rng = np.random.default_rng(seed)
  y = np.arange(n) % classes
  centers = rng.normal(size=(classes, d)) * 3
  return (centers[y] + spread * rng.normal(size=(n, d))).astype(np.float32), y


def blas_threads(info=None):
  return {i["num_threads"] for i in (info or threadpoolctl.threadpool_info()) if i["user_api"] == "blas"}


class ProductSpy:
  """Stands in for ``np.matmul(a, b)``: records the BLAS threads and the worker thread of each product,
  checks that both operands are float32 (and ``check(a, b)`` if given), and computes it."""

  def __init__(self, test, check=None):
    self.test, self.check, self.real = test, check, np.matmul
    self.seen, self.workers = [], set()

  def __call__(self, a, b):
    self.seen.append(blas_threads())
    self.workers.add(threading.get_ident())
    self.test.assertEqual((a.dtype, b.dtype), (np.float32, np.float32))
    if self.check:
      self.check(a, b)
    return self.real(a, b)
