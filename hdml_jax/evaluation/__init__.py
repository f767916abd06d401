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

from hdml_jax.evaluation._api import cluster_metrics, evaluate, evaluate_query_gallery
from hdml_jax.evaluation._device import bucket
from hdml_jax.evaluation._exact import KNN_ENGINES, nearest_neighbors, resolve_knn_engine
from hdml_jax.evaluation._kmeans import (
    FAST_MAX_ITER,
    KMEANS_INITS,
    KMEANS_PROTOCOLS,
    REFERENCE_MAX_K,
    kmeans,
    kmeans_settings,
)
from hdml_jax.evaluation._metrics import (
    contingency,
    normalized_mutual_information,
    pair_f1,
    r_precision_and_map_at_r,
    recall_at_k,
)

__all__ = [
    "FAST_MAX_ITER",
    "KMEANS_INITS",
    "KMEANS_PROTOCOLS",
    "KNN_ENGINES",
    "REFERENCE_MAX_K",
    "bucket",
    "cluster_metrics",
    "contingency",
    "evaluate",
    "evaluate_query_gallery",
    "kmeans",
    "kmeans_settings",
    "nearest_neighbors",
    "normalized_mutual_information",
    "pair_f1",
    "r_precision_and_map_at_r",
    "recall_at_k",
    "resolve_knn_engine",
]
