"""The one override syntax of every command line here: ``--config.<key>=<value>``.

``experiments.main``, ``experiments.evaluate`` and ``experiments.pretrain``
read overrides through ml_collections' config flags; the study and benchmark
scripts, which run many configs, take the same arguments and apply them
with :func:`apply_overrides`, by the same rules: a value is read as the
type of the key it replaces (numbers, booleans, tuples and dicts as Python
literals; a string key takes the text as it is), and an unknown key is
refused with the closest known ones.

This module imports nothing else of the project: the benchmarks load it by
path when they measure another checkout.
"""

from __future__ import annotations

import ast
import difflib
from typing import Any, Mapping, Sequence

__all__ = ["PREFIX", "RENAMED_KEYS", "UnknownKeyError", "apply_overrides", "closest_keys", "config_keys", "parse_value", "split_overrides"]

PREFIX = "--config."
#: Keys that were renamed: old key -> the key that holds its value now.
RENAMED_KEYS = {"hdml.loss": "loss.name"}


class UnknownKeyError(KeyError, ValueError):
  """A ``--config.<key>`` the config does not have (a user error: the command line prints it as one line)."""


def split_overrides(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
  """``(other arguments, {key: text})`` from ``--config.<key>=<value>`` or ``--config.<key> <value>``.

  Later overrides of a key replace earlier ones, as on the main command line.
  """
  rest, overrides = [], {}
  argv = list(argv)
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(PREFIX):
      body = arg[len(PREFIX):]
      if "=" in body:
        key, value = body.split("=", 1)
      elif i + 1 < len(argv):
        key, value = body, argv[i + 1]
        i += 1
      else:
        raise ValueError(f"{arg} has no value: write {arg}=<value>.")
      if not key:
        raise ValueError(f"{arg!r} names no config key.")
      overrides[key] = value
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def config_keys(cfg, prefix: str = "") -> list[str]:
  """Every dotted key of ``cfg``, sections included."""
  out = []
  for key, value in cfg.items():
    out.append(prefix + key)
    if hasattr(value, "items"):
      out += config_keys(value, f"{prefix}{key}.")
  return out


def closest_keys(key: str, known: Sequence[str]) -> str:
  """The one "did you mean": ``"; did you mean --config.a, --config.b?"`` for the keys closest to ``key``, or ``""``.

  A renamed key (:data:`RENAMED_KEYS`) names its new key instead.
  """
  if key in RENAMED_KEYS:
    return f"; it is now {PREFIX}{RENAMED_KEYS[key]}"
  close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
  return f"; did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""


def _node(cfg, key: str):
  node = cfg
  for part in key.split("."):
    node = node[part]
  return node


_BOOLEANS = {"true": True, "false": False}


def parse_value(current: Any, text: str) -> Any:
  """``text`` as a value for a key that now holds ``current``.

  A string key takes ``text`` unchanged; ``true``/``false`` are booleans in
  any case; anything else is a Python literal (``3``, ``1e-4``, ``(0, 50)``,
  ``{'widths': (4, 8)}``, ``None``).
  """
  if isinstance(current, str):
    return text
  if text.lower() in _BOOLEANS:
    return _BOOLEANS[text.lower()]
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise ValueError(f"{text!r} is not a literal of the key's type ({type(current).__name__}); "
                     "write numbers, booleans, tuples or dicts as Python literals.") from None


def apply_overrides(cfg, overrides: Mapping[str, Any], *, parse_text: bool = True) -> None:
  """Sets each ``key`` of ``overrides`` in ``cfg`` (text values parsed as :func:`parse_value` does, unless
  ``parse_text`` is False: then every value is set as it is).

  Raises :class:`UnknownKeyError` (a ``KeyError``) for a key the config does not have, naming the closest
  keys, and ``ValueError`` for a value that does not parse.
  """
  known = config_keys(cfg)
  for key, value in overrides.items():
    if key not in known:
      raise UnknownKeyError(f"unknown config key {PREFIX}{key}{closest_keys(key, known)}")
    *parents, leaf = key.split(".")
    node = _node(cfg, ".".join(parents)) if parents else cfg
    if parse_text and isinstance(value, str):
      try:
        value = parse_value(node[leaf], value)
      except ValueError as e:
        raise ValueError(f"{PREFIX}{key}: {e}") from None
    node[leaf] = value
