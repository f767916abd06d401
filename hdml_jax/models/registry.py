"""Backbones chosen by name, so configs can name them as strings, and the weight sources they can start from."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import flax.linen as nn

__all__ = [
    "WeightSource",
    "available_backbones",
    "convert_weight_source",
    "get_backbone",
    "get_weight_source",
    "register_backbone",
    "register_weight_source",
    "weight_sources",
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


# --- the registry of weight sources (each backbone module registers its own) -----------------------------


@dataclasses.dataclass(frozen=True)
class WeightSource:
  """Pretrained weights a backbone can start from: where they come from and how they become its variables.

  Attributes:
    name: the source's name (``convert_weights --source``).
    backbone: the registered backbone the variables are for.
    convert: ``(input path, **options) -> {"params", "batch_stats"?}``.
    locate: ``() -> path`` of the file an installed package ships, or None
      (the source then needs an input file); raises ``FileNotFoundError``
      naming the package to install.
    description: one line for ``--help`` and the docs.
  """

  name: str
  backbone: str
  convert: Callable[..., dict]
  locate: Callable[[], str] | None = None
  description: str = ""


_SOURCES: dict[str, WeightSource] = {}


def register_weight_source(source: WeightSource) -> WeightSource:
  """Adds ``source`` to the registry (each backbone module registers its own); a name is registered once."""
  if source.name in _SOURCES:
    raise ValueError(f"register_weight_source: {source.name!r} is already registered.")
  _SOURCES[source.name] = source
  return source


def weight_sources() -> list[str]:
  """The registered sources' names, sorted (each backbone module registers its own on import)."""
  return sorted(_SOURCES)


def get_weight_source(name: str) -> WeightSource:
  """The :class:`WeightSource` named ``name``; an unknown name is refused with the list."""
  names = weight_sources()
  if name not in _SOURCES:
    raise ValueError(f"unknown weight source {name!r}; choose one of {', '.join(names)}.")
  return _SOURCES[name]


def convert_weight_source(name: str, input_path: str | None = None, **options) -> tuple[dict, dict]:
  """``(variables, meta)`` of source ``name``: the variables for its backbone and what the file records.

  ``input_path`` defaults to the file an installed package ships (the
  source's ``locate``); ``meta`` names the backbone, the source and the
  input's SHA-256, so a config naming the file for another backbone is
  refused at start (:func:`load_pretrained_backbone`).
  """
  source = get_weight_source(name)
  if input_path is None:
    if source.locate is None:
      raise ValueError(f"weight source {name!r} needs an input file (--input).")
    input_path = source.locate()
  if not os.path.exists(input_path):
    raise FileNotFoundError(f"weights file {input_path!r} does not exist.")
  variables = source.convert(input_path, **options)
  from hdml_jax.weights import file_sha256

  meta = {"backbone": source.backbone, "source": name, "input_sha256": file_sha256(input_path)}
  return variables, meta
