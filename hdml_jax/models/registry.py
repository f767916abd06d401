"""Backbones chosen by name, so configs can name them as strings."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn

__all__ = [
    "available_backbones",
    "get_backbone",
    "register_backbone",
]


_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str):
  """Class decorator: makes a backbone constructible as ``get_backbone(name)``.

  A backbone is a Linen module called as ``module(images, train=bool)`` that
  returns ``[B, F]`` pooled features.
  """

  def wrap(factory):
    if name in _BACKBONES:
      raise ValueError(f"register_backbone: the name {name!r} is already registered.")
    _BACKBONES[name] = factory
    return factory

  return wrap


def get_backbone(name: str, **kwargs) -> nn.Module:
  """Builds the backbone registered under ``name`` with ``kwargs``."""
  try:
    factory = _BACKBONES[name]
  except KeyError:
    raise ValueError(
        f"get_backbone: unknown backbone {name!r}; registered: {sorted(_BACKBONES)}."
    ) from None
  try:
    return factory(**kwargs)
  except TypeError as e:
    raise TypeError(f"get_backbone({name!r}): bad arguments {sorted(kwargs)}: {e}") from None


def available_backbones() -> list[str]:
  """The registered backbone names, sorted."""
  return sorted(_BACKBONES)
