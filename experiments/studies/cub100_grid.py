"""The CUB-100 accuracy grid: methods x seeds x sweeps, trained from scratch with one budget.

Trains every (method, seed) pair on CPU with the same budget, through
``experiments/configs/cub100.py`` (the first 50 species train, 5 of them held
out for model selection; the last 50 test), then writes a table of mean and
standard deviation over seeds (test metrics of the checkpoint selected on the
held-out training classes) and plots of exp(-alpha/J_avg) and w. Finished
runs are skipped, so an interrupted grid resumes where it stopped.

    python -m experiments.studies.cub100_grid --workdir runs/study --seeds 0,1,2 --num_steps 2000
    python -m experiments.studies.cub100_grid --workdir runs/sensitivity --methods npair_hdml \
        --seeds 0 --sweep hdml.alpha=30,90,270 --sweep hdml.beta=1e3,5e3,2e4 --config.dataset.resize=56

``--config.<key>=<value>`` applies to every run (the syntax of
``experiments.main``). Writes ``study.json``, ``study.md`` and
``hardness.png`` in ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from experiments.overrides import split_overrides
from experiments.studies.common import KEYS, METHODS, check_overrides, plot_hardness, run_one, summarise

__all__ = ["main"]


def main(argv=None):
  """Runs the grid (``argv``: the command line without the program name)."""
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                               epilog="--config.<key>=<value>: an override applied to every run.")
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--methods", default=",".join(METHODS))
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--num_steps", type=int, default=2000, help="steps of every run (default 2000)")
  ap.add_argument("--sweep", action="append", default=[],
                  help="key=v1,v2,...: one run per value (for HDML methods), e.g. hdml.alpha=30,90")
  argv, common = split_overrides(sys.argv[1:] if argv is None else argv)
  args = ap.parse_args(argv)
  check_overrides(ap, common)
  grid = [({}, "")]
  for spec in args.sweep:
    key, values = spec.split("=", 1)
    grid = [({**o, key: v}, f"{tag}{key.split('.')[-1]}={v},") for o, tag in grid for v in values.split(",")]
  table, hardness_dirs = {}, {}
  for method in args.methods.split(","):
    if method not in METHODS:
      raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}.")
    for overrides, tag in grid:
      if overrides and not METHODS[method][1]:
        continue
      name = f"{method}{'(' + tag.rstrip(',') + ')' if tag else ''}"
      rows = []
      for seed in (int(s) for s in args.seeds.split(",")):
        d = os.path.join(args.workdir, f"{method}_{tag.replace('=', '').replace(',', '_')}seed{seed}")
        rows.append(run_one(d, method, seed, args.num_steps, {**common, **overrides}))
        if METHODS[method][1] and seed == int(args.seeds.split(",")[0]):
          hardness_dirs[name] = d
      table[name] = {"seeds": len(rows), **summarise(rows)}
  lines = ["| method | seeds | " + " | ".join(KEYS) + " |", "|---|---|" + "---|" * len(KEYS)]
  for name, row in table.items():
    cells = " | ".join(f"{100 * row[k][0]:.1f} ± {100 * row[k][1]:.1f}" for k in KEYS)
    lines.append(f"| {name} | {row['seeds']} | {cells} |")
  print("\n".join(lines))
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "study.json"), "w") as f:
    json.dump(table, f, indent=2)
  with open(os.path.join(args.workdir, "study.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  if hardness_dirs:
    plot_hardness(hardness_dirs, os.path.join(args.workdir, "hardness.png"))


if __name__ == "__main__":
  from experiments.cli import run_main

  run_main(main, "python3 -m experiments.studies.cub100_grid")
