"""The entry points: every metric of a leave-one-out test set, of a query-gallery split, of a clustering."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hdml_jax.evaluation import _exact, _metrics
from hdml_jax.evaluation._checks import _as_embeddings, _as_labels
from hdml_jax.evaluation._exact import resolve_knn_engine
from hdml_jax.evaluation._kmeans import kmeans, kmeans_settings
from hdml_jax.evaluation._metrics import normalized_mutual_information, pair_f1

__all__ = ["cluster_metrics", "evaluate", "evaluate_query_gallery"]


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
  idx, _ = _exact._search(x, x, exclude_self=True, k=k, chunk_size=chunk_size, return_float64=True,
                         labels=(y, y), engine=knn_engine)
  neighbor_labels = y[idx]
  out = _metrics._retrieval_metrics(neighbor_labels, y, ks, num_relevant)
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
  if q.shape[1] != g.shape[1]:
    raise ValueError(f"{where}: queries and gallery must have the same width, got queries {q.shape} and "
                     f"gallery {g.shape}.")
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
  idx, _ = _exact._search(q, g, exclude_self=False, k=min(k, g.shape[0]), chunk_size=chunk_size,
                         return_float64=True, labels=(ql, gl), engine=knn_engine)
  neighbor_labels = gl[idx]
  out = _metrics._retrieval_metrics(neighbor_labels, ql, ks, num_relevant)
  return out
