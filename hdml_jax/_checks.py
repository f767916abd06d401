"""Trace-time argument checks shared by the library's public functions.

Every check runs on static shape and dtype information only, so it works the
same inside and outside ``jax.jit`` and never inspects a traced value.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Sequence

import jax.numpy as jnp

__all__ = [
    "check_embeddings",
    "check_float",
    "check_labels",
    "check_rank",
    "check_reduction",
    "check_same_shape",
    "inputs_checked_by_the_caller",
    "nan_unless_finite",
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
  """A floating ``[N, D]`` array with at least one row."""
  check_rank(x, 2, name, where)
  check_float(x, name, where)
  if jnp.shape(x)[0] == 0:
    raise ValueError(f"{where}: `{name}` has no rows (shape {tuple(jnp.shape(x))}); a loss needs at least one.")


def nan_unless_finite(value, *inputs):
  """``value`` unchanged when every entry of ``inputs`` is finite, else NaN everywhere.

  A loss whose masks, maxima or ReLUs pass over a NaN or infinite input would
  otherwise return a finite number; adding 0 changes no finite value, and
  no gradient (the test on the inputs has none).
  """
  if _UNGUARDED.get():
    return value
  ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in inputs]))
  return value + jnp.where(ok, 0.0, jnp.nan).astype(jnp.result_type(value))


_UNGUARDED = contextvars.ContextVar("hdml_jax_losses_unguarded", default=False)


@contextlib.contextmanager
def inputs_checked_by_the_caller():
  """Within it (at trace time), :func:`nan_unless_finite` returns the value as it is.

  The train steps trace their losses inside it: the training loop checks
  every loss and the whole state for NaN and infinities itself, and the
  step then compiles to the same program as before the guard existed, so
  its results are bit-identical to earlier runs.
  """
  token = _UNGUARDED.set(True)
  try:
    yield
  finally:
    _UNGUARDED.reset(token)


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
