"""One mapping between the experiment config and the library's config dataclasses.

A config section is generated from a dataclass's fields and defaults
(:func:`config_section`) and read back into it field by field
(:func:`from_section`), so a new hyper-parameter is declared once: as a
field of :class:`hdml_jax.config.HDMLConfig` or
:class:`hdml_jax.config.OptimizerConfig`, with its default and its
docstring there. ``renames`` maps a field to a different config key
(``HDMLConfig.hdml`` is ``config.hdml.enabled``); a field given elsewhere is
left out of the section (``HDMLConfig.loss`` is ``config.loss.name``, the
one key that names the method's loss).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

import ml_collections

from hdml_jax.config import HDMLConfig, OptimizerConfig

__all__ = ["HDML_ELSEWHERE", "HDML_KEYS", "config_section", "from_section", "hdml_config", "optimizer_config"]

# HDMLConfig field -> its key under config.hdml (fields not named here keep their name).
HDML_KEYS = {"hdml": "enabled"}
# HDMLConfig fields that live outside config.hdml: field -> the dotted key that holds it.
HDML_ELSEWHERE = {"loss": "loss.name"}


def _optional_type(annotation) -> type | None:
  """``float`` for ``float | None`` (or ``Optional[float]``), else None."""
  if typing.get_origin(annotation) in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(args) == 1 and isinstance(args[0], type):
      return args[0]
  return None


def config_section(cls, *, renames: Mapping[str, str] | None = None,
                   exclude: tuple = ()) -> ml_collections.ConfigDict:
  """A ConfigDict with one key per field of the dataclass ``cls`` (except ``exclude``), holding its default.

  A field whose default is None becomes a typed placeholder (``float | None``
  -> ``placeholder(float)``), so an override is type-checked; a sequence
  default becomes a tuple.
  """
  renames = dict(renames or {})
  hints = typing.get_type_hints(cls)
  section = ml_collections.ConfigDict()
  for field in dataclasses.fields(cls):
    if field.name in exclude:
      continue
    if field.default is dataclasses.MISSING:
      raise ValueError(f"config_section: {cls.__name__}.{field.name} has no default to start a config from.")
    key = renames.get(field.name, field.name)
    value = field.default
    if value is None:
      kind = _optional_type(hints[field.name])
      if kind is None:
        raise ValueError(f"config_section: {cls.__name__}.{field.name} defaults to None, but its type "
                         f"{hints[field.name]} names no single type for a placeholder.")
      value = ml_collections.config_dict.placeholder(kind)
    elif isinstance(value, (list, tuple)):
      value = tuple(value)
    section[key] = value
  return section


def from_section(cls, section: Any, *, renames: Mapping[str, str] | None = None, where: str = "config",
                 given: Mapping[str, Any] | None = None):
  """The dataclass ``cls`` with every field read from ``section`` (keys as in :func:`config_section`).

  Fields in ``given`` take its values instead. A field whose key is missing
  raises ``KeyError`` naming ``where.key``; keys of the section that are not
  fields are left for the caller.
  """
  renames = dict(renames or {})
  values = dict(given or {})
  for field in dataclasses.fields(cls):
    if field.name in values:
      continue
    key = renames.get(field.name, field.name)
    if key not in section:
      raise KeyError(f"{where}.{key} is missing: {cls.__name__}.{field.name} is read from it.")
    value = section[key]
    values[field.name] = tuple(value) if isinstance(value, list) else value
  return cls(**values)


def hdml_config(cfg) -> HDMLConfig:
  """``config.hdml`` as the train step's :class:`~hdml_jax.config.HDMLConfig`."""
  return from_section(HDMLConfig, cfg.hdml, renames=HDML_KEYS, where="config.hdml",
                      given={"loss": cfg.loss.name})


def optimizer_config(cfg) -> OptimizerConfig:
  """``config.optimizer`` as :class:`~hdml_jax.config.OptimizerConfig`."""
  return from_section(OptimizerConfig, cfg.optimizer, where="config.optimizer")
