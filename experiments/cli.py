"""What every command line of experiments/ shares: help, usage and override-key checks.

absl's ``--help`` lists only the flags of the script's own ``__main__``
module, which is not the module defining the flags when ``run()`` is
called from elsewhere (a test, a wrapper); and an unknown
``--config.<key>`` fails deep inside
ml_collections with a long chained traceback. ``run_app`` answers both
before absl parses anything.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from typing import Callable

from experiments.overrides import config_keys


def _config_path(argv: list[str], default: str | None) -> str | None:
  path = default
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
  return path


def _load_config(spec: str):
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_hdml_cli_config", path)
  if module_spec is None or not os.path.exists(path):
    return None     # absl reports a missing config file itself
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def unknown_override(argv: list[str], default_config: str | None) -> str | None:
  """A one-line message for the first ``--config.<key>`` the config does not have, else None."""
  overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if not overrides:
    return None
  spec = _config_path(argv, default_config)
  if spec is None:
    return None
  try:
    cfg = _load_config(spec)
  except Exception:   # a broken config file: absl's own loader reports it in full
    return None
  if cfg is None:
    return None
  known = config_keys(cfg)
  for key in overrides:
    if key not in known:
      close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
      hint = f"; did you mean {', '.join('--config.' + c for c in close)}?" if close else ""
      return f"unknown config key --config.{key} (not in {spec}){hint}"
  return None


def prog_name(argv0: str) -> str:
  """How the user called the command: ``python3 -m experiments.<name>`` for this folder's scripts."""
  path = os.path.abspath(argv0)
  if argv0.endswith(".py") and os.path.dirname(path) == os.path.dirname(os.path.abspath(__file__)):
    return f"python3 -m experiments.{os.path.basename(path)[:-3]}"
  return os.path.basename(argv0)


def exit_on_unknown_override(default_config: str | None, argv: list[str] | None = None) -> None:
  """Call before ``DEFINE_config_file``, which applies the overrides as it is defined."""
  argv = list(sys.argv if argv is None else argv)
  message = unknown_override(argv[1:], default_config)
  if message:
    prog = prog_name(argv[0]) if argv else "hdml_jax"
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def run_app(main: Callable, *, module: str, summary: str, default_config: str | None,
            argv: list[str] | None = None) -> None:
  """``app.run(main)`` with a real ``--help``, usage on no arguments, and one-line key errors."""
  from absl import app, flags

  argv = list(sys.argv if argv is None else argv)
  prog = prog_name(argv[0]) if argv else module
  usage = f"usage: {prog} [--config=<config.py>] --workdir=<dir> [--config.<key>=<value> ...]\n\n{summary}\n"
  if len(argv) == 1 or any(a in ("--help", "-h", "--helpshort") for a in argv[1:]):
    print(usage + flags.FLAGS.module_help(module), file=sys.stdout if len(argv) > 1 else sys.stderr)
    sys.exit(0 if len(argv) > 1 else 2)
  exit_on_unknown_override(default_config, argv)
  app.run(main, argv=argv)
