"""What every command line of experiments/ shares: help, usage, override-key checks and error delivery.

A user error — a bad value, a missing or damaged file, an unwritable
workdir, a diverging run: the exceptions in :data:`USER_ERRORS` — is printed
as one line, ``<command>: error: <what is wrong and where>``, and the command
exits 2; a traceback is printed only for a bug (any other exception), or for
every error with ``--verbose`` or ``HDML_VERBOSE=1``. Ctrl-C exits 130 with
one line naming the newest checkpoint in the workdir.

absl's ``--help`` lists only the flags of the script's own ``__main__``
module, which is not the module defining the flags when ``run()`` is
called from elsewhere (a test, a wrapper); and an unknown
``--config.<key>`` fails deep inside
ml_collections with a long chained traceback. ``run_app`` answers both
before absl parses anything.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Callable

from experiments.overrides import closest_keys, config_keys

#: The exceptions a user's input or machine causes (a bad config value, a file that is missing, damaged or
#: unwritable, a diverging run): printed as one line, exit status 2. Any other exception is a bug and keeps
#: its traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError)
#: Set to 1 (or pass ``--verbose``) to see the traceback of a user error too.
VERBOSE_ENV = "HDML_VERBOSE"


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
      return f"unknown config key --config.{key} (not in {spec}){closest_keys(key, known)}"
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


def _verbose() -> bool:
  return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def one_line(e: BaseException) -> str:
  """The exception's message on one line (its lines joined with "; "), or its type's name when it has none."""
  lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
  text = "; ".join(lines)
  if isinstance(e, KeyError) and len(e.args) == 1:
    text = str(e.args[0])
  return text or type(e).__name__


def newest_checkpoint(workdir: str | None) -> str:
  """A phrase naming the newest checkpoint under ``workdir``/checkpoints, or saying there is none."""
  if not workdir:
    return "no workdir"
  folder = os.path.join(workdir, "checkpoints")
  steps = sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []
  if not steps:
    return f"no checkpoint was written in {folder}"
  return f"the newest checkpoint is step {steps[-1]} in {folder}; run the same command to resume from it"


def _not_an_interrupt(record) -> bool:
  """A library's log of a Ctrl-C that reached it (orbax's checkpoint thread): the one line of
  :func:`deliver_errors` says it instead."""
  return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


def deliver_errors(main: Callable, prog: str, *, workdir: Callable[[], str | None] | None = None) -> Callable:
  """``main`` that prints a user error as one line and exits 2, and Ctrl-C as one line and exits 130.

  ``workdir``: called on Ctrl-C for the run's workdir (its newest checkpoint is named).
  """
  import logging

  if not _verbose():
    for name in ("absl", ""):
      if _not_an_interrupt not in logging.getLogger(name).filters:
        logging.getLogger(name).addFilter(_not_an_interrupt)

  def guarded(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except KeyboardInterrupt:
      if _verbose():
        raise
      where = newest_checkpoint(workdir()) if workdir else "nothing was lost"
      print(f"{prog}: interrupted: {where}.", file=sys.stderr)
      sys.exit(130)
    except USER_ERRORS as e:
      if _verbose():
        raise
      print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
      sys.exit(2)

  return guarded


def strip_verbose(argv: list[str]) -> list[str]:
  """``argv`` without ``--verbose``, which sets :data:`VERBOSE_ENV` for this process."""
  if "--verbose" in argv[1:]:
    os.environ[VERBOSE_ENV] = "1"
  return [a for i, a in enumerate(argv) if i == 0 or a != "--verbose"]


def run_main(main: Callable, prog: str, argv: list[str] | None = None, **kwargs):
  """Runs a script's ``main(argv)`` (the studies and benchmarks, argparse) with :func:`deliver_errors`."""
  argv = strip_verbose(list(sys.argv if argv is None else argv))
  return deliver_errors(main, prog, **kwargs)(argv[1:])


def run_app(main: Callable, *, module: str, summary: str, default_config: str | None,
            argv: list[str] | None = None, workdir: Callable[[], str | None] | None = None) -> None:
  """``app.run(main)`` with a real ``--help``, usage on no arguments, one-line key errors, and
  :func:`deliver_errors` (``workdir``: where a Ctrl-C looks for the newest checkpoint)."""
  from absl import app, flags

  argv = strip_verbose(list(sys.argv if argv is None else argv))
  prog = prog_name(argv[0]) if argv else module
  usage = f"usage: {prog} [--config=<config.py>] --workdir=<dir> [--config.<key>=<value> ...]\n\n{summary}\n"
  if len(argv) == 1 or any(a in ("--help", "-h", "--helpshort") for a in argv[1:]):
    print(usage + flags.FLAGS.module_help(module), file=sys.stdout if len(argv) > 1 else sys.stderr)
    sys.exit(0 if len(argv) > 1 else 2)
  exit_on_unknown_override(default_config, argv)
  app.run(deliver_errors(main, prog, workdir=workdir), argv=argv)
