"""The accuracy study: HDML against its baselines on the CUB-100 photographs.

Trains every (method, seed) pair on CPU with the same budget, through
``experiments/configs/cub100.py`` (the first 50 species train, 5 of them held
out for model selection; the last 50 test), then writes a table of mean and
standard deviation over seeds (test metrics of the checkpoint selected on the
held-out training classes) and plots of exp(-alpha/J_avg) and w. Finished
runs are skipped, so an interrupted study resumes where it stopped.

Generic mode (methods x seeds x sweeps, from scratch):

    python -m experiments.study_cub100 --workdir runs/study --seeds 0,1,2 --num_steps 2000
    python -m experiments.study_cub100 --workdir runs/sensitivity --methods npair_hdml \
        --seeds 0 --sweep hdml.alpha=30,90,270 --sweep hdml.beta=1e3,5e3,2e4

The regime study (``--table``; one command per table, all in one workdir):

    python -m experiments.study_cub100 --workdir runs/regime --table lr      # metric lr, pretrained start
    python -m experiments.study_cub100 --workdir runs/regime --table regime  # scratch vs pretrained
    python -m experiments.study_cub100 --workdir runs/regime --table beta    # beta sensitivity
    python -m experiments.study_cub100 --workdir runs/regime --table alpha   # alpha transfer

* ``lr``: pretrains the backbone once per seed (``experiments.pretrain``, the
  45 training classes that are not held out) and picks the metric learning
  rate of the pretrained start with the *baseline* (seed 0, each loss) by
  held-out-class Recall@1; HDML then uses the same rate.
* ``regime``: from scratch and from the pretrained file, N-pair and triplet,
  HDML against its baseline, every seed's two arms paired (same pretrained
  file, same data order); mean ± std and the paired difference HDML -
  baseline with a 95 % t interval over seeds; learning curves and w /
  hardness plots.
* ``beta``: HDML N-pair at the pretrained start, beta chosen so that the
  final w lands near each ``--target_w`` (read off the reference-beta run's
  J_gen path), given as absolute beta and as ``hdml.beta_relative``.
* ``alpha``: ``hdml.alpha_relative`` against the reference alpha, every seed.

Nothing selects on test classes: checkpoints and learning rates are chosen on
the held-out training classes; test curves are logged for the plots only.
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
  """Per HDML run: exp(-alpha/J_avg), w, and the real and synthetic metric losses, against step."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from experiments.logs import read_jsonl

  fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
  for i, (name, d) in enumerate(run_dirs.items()):
    color = plt.get_cmap("tab10")(i % 10)
    rows = read_jsonl(os.path.join(d, "metrics.jsonl"))
    for ax, key in zip(axes[:2], ("train/hardness", "train/w")):
      pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
      if pts:
        ax.plot(*zip(*pts), label=name, alpha=0.8, color=color)
    for key, style in (("train/j_m", "-"), ("train/j_syn", "--")):
      pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
      if pts:
        axes[2].plot(*zip(*pts), style, color=color, alpha=0.8,
                     label=f"{name}: {key.split('/')[1]}")
  for ax, title in zip(axes, ("exp(-alpha / J_avg)", "w = exp(-beta / J_gen)",
                              "J_m (solid) and J_syn (dashed)")):
    ax.set_title(title)
    ax.set_xlabel("step")
    if ax.has_data():
      ax.legend(fontsize=6)
  if axes[2].has_data():
    axes[2].set_yscale("log")
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
  ap.add_argument("--table", choices=("lr", "regime", "beta", "alpha"),
                  help="a table of the regime study (see the module docstring)")
  ap.add_argument("--pretrain_steps", type=int, default=800)
  ap.add_argument("--pretrain_lr", type=float, default=1e-3)
  ap.add_argument("--lrs", default="3e-5,1e-4,3e-4", help="--table lr: the metric learning rates tried")
  ap.add_argument("--target_w", default="0.95,0.8,0.65,0.5", help="--table beta: final w aimed at")
  ap.add_argument("--alpha_relative", type=float, default=0.5, help="--table alpha")
  ap.add_argument("--losses", default=",".join(LOSSES), help="--table lr/regime: the losses")
  ap.add_argument("--regimes", default="pretrained,scratch", help="--table regime: the regimes")
  ap.add_argument("--metric_lr", type=float, default=None,
                  help="the pretrained start's metric lr, given instead of the lr table's choice")
  args = ap.parse_args(argv)
  common = dict(spec.split("=", 1) for spec in args.set)
  if args.table:
    args.common = common
    args.seed_list = [int(x) for x in args.seeds.split(",")]
    args.lr_list = [float(x) for x in args.lrs.split(",")]
    args.target_w_list = [float(x) for x in args.target_w.split(",")]
    args.loss_list = [x for x in args.losses.split(",") if x]
    args.regime_list = [x for x in args.regimes.split(",") if x]
    for name, got, allowed in (("losses", args.loss_list, LOSSES), ("regimes", args.regime_list, REGIMES)):
      if not got or set(got) - set(allowed):
        ap.error(f"--{name} must be a comma-separated subset of {','.join(allowed)}, got {got}")
    if args.num_steps == ap.get_default("num_steps"):
      args.num_steps = 500    # the regime study's fixed budget
    lines = {"lr": table_lr, "regime": table_regime, "beta": table_beta, "alpha": table_alpha}[args.table](
        args.workdir, args)
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, f"table_{args.table}.md"), "w") as f:
      f.write(text)
    return
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
