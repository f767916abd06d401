"""What every benchmark shares: its common flags, interleaved rounds, medians, fresh processes, other checkouts
and the JSON report.

A benchmark builds its ``argparse`` parser with :func:`parser` (``--rounds``, ``--out`` and, where it
compares checkouts, ``--other_checkout``), reads ``--config.<key>=<value>`` overrides with :func:`parse`
(the one syntax of :mod:`experiments.overrides`), times its cases with :func:`interleaved` (every case once
per round, so the machine's noise hits all of them alike), reports :func:`median` times, and writes its
results with :func:`write_results`.

A measurement in a fresh process (:func:`in_fresh_process`) runs *this* checkout's benchmark file against
another checkout's library (``--other_checkout DIR``, an earlier commit in a ``git worktree`` say): the
process starts in that checkout with it first on the path, the file's ``main`` is called with the child's
arguments, and its result is the last line it prints (:func:`child_result`, JSON). The other checkout
needs no benchmark of its own, nor this module.

This module imports nothing of the project at import time (the children load it before the measured
checkout's packages).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Mapping, Sequence

__all__ = ["REPO", "checkouts", "child_result", "in_fresh_process", "interleaved", "median", "overrides_module",
           "parse", "parser", "timed", "write_results"]

#: This checkout.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Runs in a fresh process: this harness under its own name, then the benchmark file's main(argv).
_BOOT = """
import importlib.util, runpy, sys
harness_file, script, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
spec = importlib.util.spec_from_file_location("experiments.benchmarks.harness", harness_file)
harness = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = harness
spec.loader.exec_module(harness)
sys.argv = [script] + argv
runpy.run_path(script, run_name="__benchmark_child__")["main"](argv)
"""


def parser(doc: str, *, rounds: int, out: str, other_checkout: bool = False,
           overrides: bool = False) -> argparse.ArgumentParser:
  """An ``argparse`` parser with the benchmark's description (``doc``'s first line) and the shared flags:
  ``--rounds`` (default ``rounds``), ``--out`` (default ``out``) and, with ``other_checkout``,
  ``--other_checkout``."""
  ap = argparse.ArgumentParser(
      description=doc.strip().splitlines()[0],
      epilog="--config.<key>=<value>: a config override (as in experiments.main)." if overrides else None)
  ap.add_argument("--rounds", type=int, default=rounds, help=f"interleaved rounds of every case (default {rounds})")
  ap.add_argument("--out", default=out, help=f"the JSON report (default {out})")
  if other_checkout:
    ap.add_argument("--other_checkout", default=None,
                    help="another checkout of this project, measured in the same interleaved rounds")
  ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  return ap


def parse(ap: argparse.ArgumentParser, argv: Sequence[str] | None, *, overrides: bool = False) -> argparse.Namespace:
  """The parsed arguments; with ``overrides``, ``--config.<key>=<value>`` arguments go to ``args.overrides``
  (``{key: text}``), anything else unknown is refused by ``ap``. ``--rounds`` below 1 is refused."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if overrides:
    argv, found = overrides_module().split_overrides(argv)
  args = ap.parse_args(argv)
  if overrides:
    args.overrides = found
  if args.rounds < 1:
    ap.error(f"--rounds must be at least 1, got {args.rounds}")
  return args


def overrides_module():
  """This checkout's :mod:`experiments.overrides`, loaded by path (a child measuring an older checkout uses
  the same syntax as the parent)."""
  name = "_benchmark_overrides"
  if name not in sys.modules:
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "experiments", "overrides.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
  return sys.modules[name]


def checkouts(other: str | None) -> dict[str, str]:
  """``{"this": REPO}``, and ``"other"``: ``other``'s absolute path, refused unless it holds ``hdml_jax``."""
  out = {"this": REPO}
  if other:
    path = os.path.abspath(other)
    if not os.path.isdir(os.path.join(path, "hdml_jax")):
      raise ValueError(f"--other_checkout {other!r} is not a checkout of this project (no hdml_jax/ in {path}).")
    out["other"] = path
  return out


def in_fresh_process(checkout: str, script: str, args: Sequence[str], *, env: Mapping[str, str] | None = None,
                     timeout: float | None = None) -> Any:
  """Runs ``main(["--_child", ...args])`` of the benchmark file ``script`` in a new Python process started in
  ``checkout`` with it first on the path; returns the JSON of the last line it printed.

  Raises ``RuntimeError`` with the end of its error output if it fails.
  """
  env = dict(os.environ if env is None else env)
  env["PYTHONPATH"] = checkout + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
  cmd = [sys.executable, "-c", _BOOT, os.path.abspath(__file__), os.path.abspath(script), "--_child", *args]
  proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, timeout=timeout)
  lines = proc.stdout.strip().splitlines()
  if proc.returncode or not lines:
    raise RuntimeError(f"{os.path.basename(script)} {' '.join(args)} failed in {checkout} (exit "
                       f"{proc.returncode}):\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1])


def child_result(value: Any) -> None:
  """Prints a child's result as the last line of its output (read by :func:`in_fresh_process`)."""
  print(json.dumps(value), flush=True)


def timed(fn: Callable[[], Any]) -> float:
  """Seconds one call of ``fn`` takes (wall clock)."""
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def interleaved(rounds: int, cases: Mapping[str, Callable[[], Any]],
                report: Callable[[int, str, Any], None] | None = None) -> dict[str, list]:
  """``{case: [value of each round]}``: every case called once per round, in order (A B C, A B C, ...).

  A case returns what it measured (seconds, a rate, a dict); ``report(round, case, value)`` is called after
  each call (to print progress).
  """
  values = {name: [] for name in cases}
  for r in range(rounds):
    for name, fn in cases.items():
      values[name].append(fn())
      if report is not None:
        report(r, name, values[name][-1])
  return values


def median(values: Sequence[float]) -> float:
  """The median of one case's values over the rounds."""
  if not len(values):
    raise ValueError("median of no values: no round ran.")
  return float(statistics.median(values))


def write_results(path: str, results: Any) -> None:
  """Writes ``results`` as indented JSON to ``path`` (whole or not at all) and says so."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(results, f, indent=2)
  os.replace(path + ".tmp", path)
  print(f"wrote {path}")
