"""Batch samplers: deterministic given a seed, resumable from a step number.

Each sampler returns the dataset indices of batch ``step`` as a pure
function of ``(seed, step)``, so a resumed run draws exactly the batches an
uninterrupted one would, and every process of a multi-host run can compute
the same global batch and load only its own rows.
"""

from __future__ import annotations

import numpy as np


def _class_index(labels: np.ndarray, min_count: int, where: str) -> dict[int, np.ndarray]:
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0:
    raise ValueError(f"{where}: labels must be a non-empty 1-D array, got shape {labels.shape}.")
  classes, counts = np.unique(labels, return_counts=True)
  small = classes[counts < min_count]
  if small.size:
    raise ValueError(
        f"{where}: every class needs at least {min_count} images; classes "
        f"{small[:10].tolist()}{'...' if small.size > 10 else ''} have fewer "
        f"(counts {counts[counts < min_count][:10].tolist()})."
    )
  return {int(c): np.flatnonzero(labels == c) for c in classes}


class NPairSampler:
  """``P`` distinct classes, two images each, laid out ``[anchors; positives]``.

  Row ``i`` and row ``P + i`` share a class; the P classes are distinct.
  """

  groups = 2

  def __init__(self, labels, *, num_pairs: int, seed: int = 0):
    self._by_class = _class_index(labels, 2, "NPairSampler")
    self._classes = np.array(sorted(self._by_class))
    if num_pairs < 2:
      raise ValueError(f"NPairSampler: num_pairs must be >= 2, got {num_pairs}.")
    if num_pairs > self._classes.size:
      raise ValueError(
          f"NPairSampler: num_pairs={num_pairs} distinct classes requested but the "
          f"data has only {self._classes.size} classes."
      )
    self.num_pairs, self.seed = num_pairs, seed
    self.batch_size = 2 * num_pairs

  def __call__(self, step: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, step])
    chosen = rng.choice(self._classes, size=self.num_pairs, replace=False)
    pairs = np.array([rng.choice(self._by_class[int(c)], size=2, replace=False) for c in chosen])
    return np.concatenate([pairs[:, 0], pairs[:, 1]])


class TripletSampler:
  """``[anchors; positives; negatives]``, ``T`` triplets.

  The anchor classes are ``min(T, C // 2)`` distinct classes (cycled over the
  triplets); anchor and positive are two distinct images of the anchor
  class; each negative comes from a class outside the anchor classes, so
  every negative's class differs from every anchor's class (the reference
  layout).
  """

  groups = 3

  def __init__(self, labels, *, num_triplets: int, seed: int = 0):
    self._by_class = _class_index(labels, 2, "TripletSampler")
    self._classes = np.array(sorted(self._by_class))
    if num_triplets < 1:
      raise ValueError(f"TripletSampler: num_triplets must be >= 1, got {num_triplets}.")
    if self._classes.size < 2:
      raise ValueError(
          f"TripletSampler: needs at least 2 classes, the data has {self._classes.size}.")
    self.num_triplets, self.seed = num_triplets, seed
    self.batch_size = 3 * num_triplets
    self._num_anchor_classes = max(1, min(num_triplets, self._classes.size // 2))

  def __call__(self, step: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, step])
    perm = rng.permutation(self._classes)
    anchor_classes = perm[:self._num_anchor_classes]
    negative_pool = perm[self._num_anchor_classes:]
    t = self.num_triplets
    a_cls = np.resize(anchor_classes, t)
    pairs = np.array([rng.choice(self._by_class[int(c)], size=2, replace=False) for c in a_cls])
    n_cls = rng.choice(negative_pool, size=t, replace=True)
    negatives = np.array([rng.choice(self._by_class[int(c)]) for c in n_cls])
    return np.concatenate([pairs[:, 0], pairs[:, 1], negatives])


def make_sampler(loss: str, labels, *, batch_size: int, seed: int = 0):
  """The sampler whose layout ``loss`` expects, for a global ``batch_size``."""
  if loss == "npair":
    if batch_size % 2:
      raise ValueError(f"make_sampler: an N-pair batch size must be even, got {batch_size}.")
    return NPairSampler(labels, num_pairs=batch_size // 2, seed=seed)
  if loss in ("triplet", "contrastive"):
    if batch_size % 3:
      raise ValueError(f"make_sampler: a {loss} batch size must be divisible by 3, got {batch_size}.")
    return TripletSampler(labels, num_triplets=batch_size // 3, seed=seed)
  raise ValueError(f"make_sampler: unknown loss {loss!r}.")
