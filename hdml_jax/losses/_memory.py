"""Cross-batch memory (XBM, Wang et al., CVPR 2020): pair losses against the embeddings of earlier batches.

Embeddings drift slowly once a model has warmed up, so the embeddings of the
last few batches are still good stand-ins for the current model's: XBM
keeps them in a ring buffer of ``size`` rows and compares each new batch
with all of them, giving a pair loss far more pairs than one batch holds.

The memory is a pytree of fixed shape (:class:`CrossBatchMemory`), kept in
the train state and checkpointed with it. One step:

.. code-block:: python

   value, memory = cross_batch_loss(multi_similarity_loss, memory, embeddings, labels)

enqueues the batch (held constant: no gradient reaches the memory) over the
oldest rows, then evaluates the loss of the batch's rows against every
filled row of the memory, the batch's own copies included, except each
row's own copy (as pytorch-metric-learning's ``CrossBatchMemory`` does). The
XBM paper's code adds the plain batch loss to it:
``loss(e, y) + cross_batch_loss(loss, memory, e, y)[0]``.

Every label-based loss of :mod:`hdml_jax.losses` takes the :class:`References` this builds
(``references=``): the columns its rows are compared with and a ``[B, K]``
mask of the pairs that may be formed.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["CrossBatchMemory", "References", "cross_batch_loss", "enqueue", "init_memory", "memory_references"]


class References(NamedTuple):
  """What a pair loss compares its ``[B, E]`` rows with, instead of their own batch.

  Attributes:
    embeddings: ``[K, E]`` the columns (constants: wrap them in
      ``jax.lax.stop_gradient`` unless gradients should reach them).
    labels: ``[K]`` their integer classes.
    mask: ``[B, K]`` bool, the (row, column) pairs that may be formed (a
      row's own copy and empty memory rows are ``False``).
  """

  embeddings: jax.Array
  labels: jax.Array
  mask: jax.Array


class CrossBatchMemory(NamedTuple):
  """A ring buffer of ``size`` embeddings with their labels; a pytree of fixed shape.

  Attributes:
    embeddings: ``[size, E]``.
    labels: ``[size]`` int32.
    filled: ``[size]`` bool, the rows written at least once.
    pointer: ``()`` int32, the row the next batch starts at.
  """

  embeddings: jax.Array
  labels: jax.Array
  filled: jax.Array
  pointer: jax.Array

  @property
  def size(self) -> int:
    return self.embeddings.shape[0]


def init_memory(size: int, embedding_dim: int, dtype=jnp.float32) -> CrossBatchMemory:
  """An empty memory of ``size`` rows of ``embedding_dim``.

  >>> init_memory(8, 4).embeddings.shape
  (8, 4)
  """
  if not isinstance(size, int) or size < 1:
    raise ValueError(f"init_memory: size must be a positive number of rows, got {size!r}.")
  if not isinstance(embedding_dim, int) or embedding_dim < 1:
    raise ValueError(f"init_memory: embedding_dim must be a positive integer, got {embedding_dim!r}.")
  return CrossBatchMemory(jnp.zeros((size, embedding_dim), dtype), jnp.zeros((size,), jnp.int32),
                          jnp.zeros((size,), bool), jnp.zeros((), jnp.int32))


def _check(memory: CrossBatchMemory, embeddings: jax.Array, labels: jax.Array, where: str) -> None:
  b = embeddings.shape[0]
  if embeddings.ndim != 2 or embeddings.shape[1] != memory.embeddings.shape[1]:
    raise ValueError(f"{where}: embeddings must be [B, {memory.embeddings.shape[1]}] for this memory, got "
                     f"{tuple(embeddings.shape)}.")
  if labels.shape != (b,):
    raise ValueError(f"{where}: labels must have shape ({b},) for embeddings {tuple(embeddings.shape)}, got "
                     f"{tuple(labels.shape)}.")
  if b > memory.size:
    raise ValueError(f"{where}: a batch of {b} does not fit a memory of {memory.size} rows (size >= batch).")


def enqueue(memory: CrossBatchMemory, embeddings: jax.Array, labels: jax.Array) -> tuple[CrossBatchMemory, jax.Array]:
  """Writes the batch over the oldest rows: ``(new memory, [B] int32 rows written)``.

  The rows are ``(pointer + i) mod size``; the embeddings are stored as
  constants (``stop_gradient``) in the memory's dtype.

  >>> m, rows = enqueue(init_memory(3, 2), jnp.ones((2, 2)), jnp.array([4, 5]))
  >>> rows.tolist(), m.labels.tolist(), int(m.pointer)
  ([0, 1], [4, 5, 0], 2)
  """
  _check(memory, embeddings, labels, "enqueue")
  b = embeddings.shape[0]
  rows = (memory.pointer + jnp.arange(b, dtype=jnp.int32)) % memory.size
  new = CrossBatchMemory(
      memory.embeddings.at[rows].set(jax.lax.stop_gradient(embeddings).astype(memory.embeddings.dtype)),
      memory.labels.at[rows].set(labels.astype(jnp.int32)),
      memory.filled.at[rows].set(True),
      ((memory.pointer + b) % memory.size).astype(jnp.int32))
  return new, rows


def memory_references(memory: CrossBatchMemory, rows: jax.Array) -> References:
  """The memory as :class:`References` for the batch just written at ``rows``.

  Row ``i`` of the batch may pair with every filled memory row except
  ``rows[i]``, its own copy. The embeddings are constants (``stop_gradient``).
  """
  mask = memory.filled[None, :] & (jnp.arange(memory.size, dtype=jnp.int32)[None, :] != rows[:, None])
  return References(jax.lax.stop_gradient(memory.embeddings), memory.labels, mask)


def cross_batch_loss(loss_fn: Callable, memory: CrossBatchMemory, embeddings: jax.Array, labels: jax.Array,
                     **kwargs) -> tuple[jax.Array, CrossBatchMemory]:
  """``(loss of the batch against the memory, new memory)``: enqueue, then ``loss_fn(..., references=...)``.

  Args:
    loss_fn: a pair loss taking ``references=`` (any of
      the label-based losses of :mod:`hdml_jax.losses`).
    memory: from :func:`init_memory` (or the previous step).
    embeddings, labels: the batch ``[B, E]`` and ``[B]``; gradients reach
      the embeddings through the rows of the loss only.
    kwargs: passed to ``loss_fn``.

  >>> from hdml_jax.losses import multi_similarity_loss
  >>> e, y = jnp.eye(4), jnp.array([0, 0, 1, 1])
  >>> value, memory = cross_batch_loss(multi_similarity_loss, init_memory(8, 4), e, y)
  >>> int(memory.pointer), bool(jnp.isfinite(value))
  (4, True)
  """
  memory, rows = enqueue(memory, embeddings, labels)
  return loss_fn(embeddings, labels, references=memory_references(memory, rows), **kwargs), memory
