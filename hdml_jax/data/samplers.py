"""Batch samplers: deterministic given a seed, resumable from a step number.

Each sampler returns the dataset indices of batch ``step`` as a pure
function of ``(seed, step)``, so a resumed run draws exactly the batches an
uninterrupted one would, and every process of a multi-host run can compute
the same global batch and load only its own rows.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "EpochNPairSampler",
    "MPerClassSampler",
    "NPairSampler",
    "TripletSampler",
    "make_sampler",
]


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


class MPerClassSampler:
  """Class-balanced batches that visit every training image once per epoch.

  A batch holds ``batch_size / m`` distinct classes with ``m`` images each,
  laid out class by class (``[c0 x m, c1 x m, ...]``). Each epoch, every
  class's images are shuffled and cut into chunks of ``m`` (the last chunk
  topped up with other images of that class), and batches take one chunk from
  each of the classes with the most chunks left, so classes stay distinct
  within a batch. When fewer classes than needed still have chunks, the
  batch is filled with random chunks of other classes (images seen again).
  Deterministic in ``(seed, step)``; epochs are planned lazily and cached.
  """

  def __init__(self, labels, *, m: int, batch_size: int, seed: int = 0):
    if m < 1 or batch_size % m:
      raise ValueError(f"MPerClassSampler: batch_size={batch_size} must be a multiple of m={m} >= 1.")
    self._by_class = _class_index(labels, m, "MPerClassSampler")
    self._classes = np.array(sorted(self._by_class))
    self.classes_per_batch = batch_size // m
    if self.classes_per_batch > self._classes.size:
      raise ValueError(
          f"MPerClassSampler: {self.classes_per_batch} distinct classes per batch requested but the "
          f"data has only {self._classes.size} classes.")
    self.m, self.batch_size, self.seed = m, batch_size, seed
    self._epochs: list[np.ndarray] = []   # epoch -> [num_batches, batch_size]

  def _plan(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, 2, epoch])
    chunks = {}
    for c in self._classes:
      idx = rng.permutation(self._by_class[int(c)])
      pad = (-idx.size) % self.m
      if pad:  # top up the last chunk with other images of the class (n_c >= m)
        partial = idx[idx.size - (self.m - pad):]
        idx = np.concatenate([idx, rng.choice(np.setdiff1d(idx, partial), size=pad, replace=False)])
      chunks[int(c)] = list(idx.reshape(-1, self.m))
    batches = []
    while any(chunks.values()):
      order = sorted((c for c in chunks if chunks[c]), key=lambda c: (-len(chunks[c]), rng.random()))
      chosen = order[:self.classes_per_batch]
      rows = [chunks[c].pop() for c in chosen]
      if len(chosen) < self.classes_per_batch:
        others = rng.choice(np.setdiff1d(self._classes, chosen),
                            size=self.classes_per_batch - len(chosen), replace=False)
        rows += [rng.choice(self._by_class[int(c)], size=self.m, replace=False) for c in others]
      batches.append(np.concatenate(rows))
    return np.stack(batches)

  def epoch_of(self, step: int) -> tuple[int, int]:
    """``(epoch, position within it)`` of a global step."""
    epoch = 0
    while True:
      while len(self._epochs) <= epoch:
        self._epochs.append(self._plan(len(self._epochs)))
      n = len(self._epochs[epoch])
      if step < n:
        return epoch, step
      step -= n
      epoch += 1

  def __call__(self, step: int) -> np.ndarray:
    epoch, pos = self.epoch_of(step)
    return self._epochs[epoch][pos]


class EpochNPairSampler:
  """N-pair batches ``[anchors; positives]`` that cover every image once per epoch.

  :class:`MPerClassSampler` with ``m = 2``, rearranged to the N-pair layout.
  """

  groups = 2

  def __init__(self, labels, *, num_pairs: int, seed: int = 0):
    self._inner = MPerClassSampler(labels, m=2, batch_size=2 * num_pairs, seed=seed)
    self.num_pairs, self.batch_size = num_pairs, 2 * num_pairs

  def __call__(self, step: int) -> np.ndarray:
    return self._inner(step).reshape(self.num_pairs, 2).T.reshape(-1)


def make_sampler(loss: str, labels, *, batch_size: int, seed: int = 0, epochs: bool = False,
                 m_per_class: int = 4):
  """The sampler whose layout the registered ``loss`` expects (:data:`hdml_jax.losses.LAYOUTS`), for a global ``batch_size``.

  ``[anchors; positives]`` (``npair``): :class:`NPairSampler`, or with
  ``epochs=True`` :class:`EpochNPairSampler`, which visits every training
  image once per epoch (the default draws classes afresh each step, as the
  reference does); ``[anchors; positives; negatives]`` (``triplet``,
  ``contrastive``): :class:`TripletSampler`; every other loss: an
  :class:`MPerClassSampler` with ``m_per_class`` images of each class (at
  least 2 for a label-based loss, which compares samples of one class).
  """
  from hdml_jax.losses import loss_spec  # the registry names the layout

  layout = loss_spec(loss).layout
  if layout == "pairs":
    if batch_size % 2:
      raise ValueError(f"make_sampler: an N-pair batch size must be even, got {batch_size}.")
    if epochs:
      return EpochNPairSampler(labels, num_pairs=batch_size // 2, seed=seed)
    return NPairSampler(labels, num_pairs=batch_size // 2, seed=seed)
  if epochs:
    raise ValueError(f"make_sampler: epoch coverage is offered for N-pair batches only, not {loss!r}.")
  if layout == "triplets":
    if batch_size % 3:
      raise ValueError(f"make_sampler: a {loss} batch size must be divisible by 3, got {batch_size}.")
    return TripletSampler(labels, num_triplets=batch_size // 3, seed=seed)
  if layout == "classes" and m_per_class < 2:
    raise ValueError(f"make_sampler: a {loss} batch compares samples of one class, so it needs "
                     f"m_per_class >= 2, got {m_per_class}.")
  return MPerClassSampler(labels, m=m_per_class, batch_size=batch_size, seed=seed)
