"""Retrieval metrics from the neighbours' labels; clustering metrics from a sparse contingency table."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["contingency", "normalized_mutual_information", "pair_f1", "r_precision_and_map_at_r", "recall_at_k"]


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
