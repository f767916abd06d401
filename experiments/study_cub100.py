"""The accuracy study: HDML against its baselines on the CUB-100 photographs.

Trains every (method, seed) pair from scratch on CPU with the same budget,
through ``experiments/configs/cub100.py`` (the first 50 species train, 5 of
them held out for model selection; the last 50 test), then writes a table of
mean and standard deviation over seeds (test metrics of the checkpoint
selected on the held-out training classes) and plots of exp(-alpha/J_avg)
and w. Finished runs are skipped, so the study can be resumed.

    python -m experiments.study_cub100 --workdir runs/study --seeds 0,1,2 --num_steps 2000
    python -m experiments.study_cub100 --workdir runs/sensitivity --methods npair_hdml \\
        --seeds 0 --sweep hdml.alpha=30,90,270 --sweep hdml.beta=1e3,5e3,2e4
"""

from __future__ import annotations

import argparse
import ast
import json
import os

import numpy as np

METHODS = {"npair_baseline": ("npair", False), "npair_hdml": ("npair", True),
           "triplet_baseline": ("triplet", False), "triplet_hdml": ("triplet", True)}
KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "f1", "map@r")


def run_one(workdir: str, method: str, seed: int, num_steps: int, overrides: dict) -> dict:
  from experiments.configs import cub100
  from experiments.configs.base import override
  from experiments.train import train_and_evaluate

  path = os.path.join(workdir, "results.json")
  if os.path.exists(path):
    return json.load(open(path))
  cfg = cub100.get_config()
  cfg.hdml.loss, cfg.hdml.enabled = METHODS[method]
  cfg.seed, cfg.num_steps = seed, num_steps
  if cfg.hdml.loss == "triplet":
    cfg.batch_size = 60
  for key, value in overrides.items():
    if isinstance(value, str) and not isinstance(cfg[key], str):
      value = ast.literal_eval(value)   # numbers, booleans, tuples
    override(cfg, key, value)
  return train_and_evaluate(cfg, workdir)


def summarise(rows: list[dict]) -> dict:
  out = {}
  for k in KEYS:
    vals = [r["best"][k] if r["best"] else r["final"][k] for r in rows]
    out[k] = (float(np.mean(vals)), float(np.std(vals)))
  return out


def plot_hardness(run_dirs: dict, out_path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from experiments.logs import read_jsonl

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  for name, d in run_dirs.items():
    rows = read_jsonl(os.path.join(d, "metrics.jsonl"))
    for ax, key in zip(axes, ("train/hardness", "train/w")):
      pts = [(r["step"], r[key]) for r in rows if key in r]
      if pts:
        ax.plot(*zip(*pts), label=name, alpha=0.8)
  for ax, title in zip(axes, ("exp(-alpha / J_avg)", "w = exp(-beta / J_gen)")):
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out_path, dpi=110)
  plt.close(fig)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--methods", default=",".join(METHODS))
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--num_steps", type=int, default=2000)
  ap.add_argument("--set", action="append", default=[],
                  help="key=value applied to every run, e.g. dataset.resize=40")
  ap.add_argument("--sweep", action="append", default=[],
                  help="key=v1,v2,...: one run per value (for HDML methods), e.g. hdml.alpha=30,90")
  args = ap.parse_args(argv)
  common = dict(spec.split("=", 1) for spec in args.set)
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
  main()
