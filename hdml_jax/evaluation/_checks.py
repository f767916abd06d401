"""Input checks of the evaluation entry points (host side: their inputs are concrete arrays)."""

from __future__ import annotations

import numpy as np

__all__: list[str] = []


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
