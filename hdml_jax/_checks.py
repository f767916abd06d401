"""Trace-time argument checks shared by the library's public functions.

Every check runs on static shape and dtype information only, so it works the
same inside and outside ``jax.jit`` and never inspects a traced value.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

__all__ = [
    "check_embeddings",
    "check_float",
    "check_labels",
    "check_rank",
    "check_reduction",
    "check_same_shape",
    "reduce",
]


def check_float(x, name: str, where: str) -> None:
  """Raises ``TypeError`` unless ``x`` has a floating-point dtype."""
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f"{where}: `{name}` must be a floating-point array, got dtype {dtype} "
        f"with shape {tuple(jnp.shape(x))}."
    )


def check_rank(x, rank: int, name: str, where: str) -> None:
  """Raises ``ValueError`` unless ``x`` has exactly ``rank`` dimensions."""
  shape = tuple(jnp.shape(x))
  if len(shape) != rank:
    raise ValueError(
        f"{where}: `{name}` must have rank {rank}, got shape {shape}."
    )


def check_embeddings(x, name: str, where: str) -> None:
  """A floating ``[N, D]`` array."""
  check_rank(x, 2, name, where)
  check_float(x, name, where)


def check_same_shape(arrays: Sequence, names: Sequence[str], where: str) -> None:
  """Raises ``ValueError`` unless all arrays share one shape."""
  shapes = [tuple(jnp.shape(a)) for a in arrays]
  if any(s != shapes[0] for s in shapes[1:]):
    described = ", ".join(f"`{n}` {s}" for n, s in zip(names, shapes))
    raise ValueError(f"{where}: shapes must match, got {described}.")


def check_labels(labels, n: int, name: str, where: str) -> None:
  """An integer ``[n]`` label vector."""
  shape = tuple(jnp.shape(labels))
  if shape != (n,):
    raise ValueError(
        f"{where}: `{name}` must have shape ({n},) to match the embeddings, "
        f"got shape {shape}."
    )
  dtype = jnp.result_type(labels)
  if not (jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_):
    raise TypeError(
        f"{where}: `{name}` must hold integer class ids, got dtype {dtype}."
    )


def check_reduction(reduction: str, where: str) -> None:
  if reduction not in ("sum", "mean", "none"):
    raise ValueError(
        f"{where}: reduction must be 'sum', 'mean' or 'none', got {reduction!r}."
    )


def reduce(values, reduction: str):
  """Applies a validated reduction to per-example values."""
  if reduction == "sum":
    return jnp.sum(values)
  if reduction == "mean":
    return jnp.mean(values)
  return values
