"""The accuracy study: HDML against its baselines on the CUB-100 photographs.

Trains every (method, seed) pair on CPU with the same budget, through
``experiments/configs/cub100.py`` (the first 50 species train, 5 of them held
out for model selection; the last 50 test), then writes a table of mean and
standard deviation over seeds (test metrics of the checkpoint selected on the
held-out training classes) and plots of exp(-alpha/J_avg) and w. Finished
runs are skipped, so an interrupted study resumes where it stopped.

Generic mode (methods x seeds x sweeps, from scratch):

    python -m experiments.studies.cub100 --workdir runs/study --seeds 0,1,2 --num_steps 2000
    python -m experiments.studies.cub100 --workdir runs/sensitivity --methods npair_hdml \
        --seeds 0 --sweep hdml.alpha=30,90,270 --sweep hdml.beta=1e3,5e3,2e4

The regime study (``--table``; one command per table, all in one workdir):

    python -m experiments.studies.cub100 --workdir runs/regime --table lr      # metric lr, pretrained start
    python -m experiments.studies.cub100 --workdir runs/regime --table regime  # scratch vs pretrained
    python -m experiments.studies.cub100 --workdir runs/regime --table beta    # beta sensitivity
    python -m experiments.studies.cub100 --workdir runs/regime --table alpha   # alpha transfer

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

from experiments.checkpoints import write_json_atomic

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
  for key, value in _parsed(cfg, overrides).items():
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


# --- the regime study (--table) -------------------------------------------------

# The regime study's fixed budget (2 CPU cores): 48 px crops of 56 px images,
# the cub100 config's small CNN; every fine-tuning / from-scratch run gets the
# same number of steps.
STUDY_SET = {"dataset.resize": 56, "dataset.crop": 48, "eval.test_curves": True, "plots": False}
LOSSES = ("npair", "triplet")
REGIMES = ("pretrained", "scratch")
CURVE_KEYS = ("test/recall@1", "test/map@r")


def _steps(n: int) -> dict:
  every = max(1, n // 4)
  return {"num_steps": n, "eval_every": every, "checkpoint_every": every, "log_every": min(25, every)}


def pretrained_file(root: str, seed: int, args) -> str:
  """Pretrains (or finds) the backbone of ``seed``; both arms of that seed load this file."""
  from experiments import pretrain
  from experiments.configs import cub100
  from experiments.configs.base import override

  workdir = os.path.join(root, f"pretrain_seed{seed}")
  path = os.path.join(workdir, pretrain.PRETRAINED_FILE)
  if os.path.exists(os.path.join(workdir, "results.json")) and os.path.exists(path):
    return path
  cfg = cub100.get_config()
  for key, value in {**STUDY_SET, **_steps(args.pretrain_steps), "eval.test_curves": False,
                     "pretrain.lr": args.pretrain_lr, "seed": seed, **_parsed(cfg, args.common)}.items():
    override(cfg, key, value)
  pretrain.pretrain(cfg, workdir)
  return path


def _parsed(cfg, overrides: dict) -> dict:
  """``--set`` values as the config's types: strings are parsed (numbers, booleans, tuples) for non-string keys."""
  out = {}
  for key, value in overrides.items():
    node = cfg
    for part in key.split("."):
      node = node[part]
    if isinstance(value, str) and not isinstance(node, str):
      value = ast.literal_eval(value)
    out[key] = value
  return out


def regime_run(root: str, regime: str, method: str, seed: int, args, extra: dict | None = None,
               tag: str = "") -> tuple[str, dict]:
  """One run of the study: ``(workdir, results)``; skipped when already complete."""
  extra = dict(extra or {})
  overrides = {**STUDY_SET, **_steps(args.num_steps), **args.common}
  if regime == "pretrained":
    overrides["model.pretrained"] = pretrained_file(root, seed, args)
    overrides.setdefault("optimizer.metric_lr", extra.pop("optimizer.metric_lr", None)
                         or args.metric_lr or chosen_lr(root, METHODS[method][0]))
  overrides.update(extra)
  workdir = os.path.join(root, regime, f"{method}{tag}_seed{seed}")
  return workdir, run_one(workdir, method, seed, args.num_steps, overrides)


def chosen_lr(root: str, loss: str) -> float:
  path = os.path.join(root, "lr_choice.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: run --table lr first (it picks the metric learning "
                            "rate of the pretrained start on the held-out training classes).")
  return float(json.load(open(path))[loss]["lr"])


def selected(results: dict) -> dict:
  """Test metrics of the checkpoint selected on held-out training classes (else the last)."""
  return results["best"] if results["best"] else results["final"]


def paired_difference(hdml: list[float], base: list[float]) -> dict:
  """Mean of the per-seed differences and its 95 % t interval over seeds."""
  from scipy import stats

  d = np.asarray(hdml, np.float64) - np.asarray(base, np.float64)
  n = d.size
  mean = float(d.mean())
  if n < 2:
    return {"mean": mean, "ci95": [float("nan"), float("nan")], "n": n}
  half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n))
  return {"mean": mean, "ci95": [mean - half, mean + half], "n": n}


def _fmt(mean_std) -> str:
  return f"{100 * mean_std[0]:.1f} ± {100 * mean_std[1]:.1f}"


def _fmt_diff(d) -> str:
  lo, hi = d["ci95"]
  ci = "" if not np.isfinite(lo) else f" [{100 * lo:+.1f}, {100 * hi:+.1f}]"
  return f"{100 * d['mean']:+.1f}{ci}"


def _wall(dirs) -> float:
  total = 0.0
  for d in dirs:
    path = os.path.join(d, "results.json")
    if os.path.exists(path):
      total += json.load(open(path)).get("wall_seconds", 0.0)
  return total


def table_lr(root: str, args) -> list[str]:
  """The metric learning rate of the pretrained start, chosen on held-out classes with the baseline."""
  lines = ["| loss | metric lr | held-out R@1 (selected step) |", "|---|---|---|"]
  choice, dirs = {}, [os.path.join(root, f"pretrain_seed{s}") for s in args.seed_list]
  for s in args.seed_list:
    pretrained_file(root, s, args)
  for loss in args.loss_list:
    for lr in args.lr_list:
      d, r = regime_run(root, "pretrained", f"{loss}_baseline", args.seed_list[0], args,
                        {"optimizer.metric_lr": lr}, tag=f"_lr{lr:g}")
      dirs.append(d)
      value = r["best"]["value"] if r["best"] else float("nan")
      lines.append(f"| {loss} | {lr:g} | {100 * value:.1f} ({r['best']['step'] if r['best'] else '-'}) |")
      if loss not in choice or value > choice[loss]["val_recall@1"]:
        choice[loss] = {"lr": lr, "val_recall@1": value}
  write_json_atomic(os.path.join(root, "lr_choice.json"), choice)
  lines.append("")
  lines.append("chosen: " + ", ".join(f"{k} {v['lr']:g}" for k, v in choice.items()))
  lines.append(f"table wall time: {_wall(dirs) / 60:.1f} min (pretraining included)")
  return lines


def table_regime(root: str, args) -> list[str]:
  cells, dirs, curves, hardness = {}, [], {}, {}
  for regime in args.regime_list:
    for loss in args.loss_list:
      arms = {}
      for arm in ("baseline", "hdml"):
        method = f"{loss}_{arm}"
        runs = [regime_run(root, regime, method, s, args) for s in args.seed_list]
        dirs += [d for d, _ in runs]
        arms[arm] = [selected(r) for _, r in runs]
        curves[(regime, loss, arm)] = [d for d, _ in runs]
        if arm == "hdml":
          hardness[f"{regime} {loss}"] = runs[0][0]
      cells[(regime, loss)] = arms
  lines = ["| regime | loss | metric | baseline | HDML | HDML - baseline [95 % CI] |", "|---|---|---|---|---|---|"]
  out = {}
  for (regime, loss), arms in cells.items():
    for k in KEYS:
      b = [r[k] for r in arms["baseline"]]
      h = [r[k] for r in arms["hdml"]]
      diff = paired_difference(h, b)
      out[f"{regime}/{loss}/{k}"] = {"baseline": b, "hdml": h, "difference": diff}
      lines.append(f"| {regime} | {loss} | {k} | {_fmt((np.mean(b), np.std(b)))} | "
                   f"{_fmt((np.mean(h), np.std(h)))} | {_fmt_diff(diff)} |")
  write_json_atomic(os.path.join(root, "regime.json"), out)
  plot_curves(curves, os.path.join(root, "regime_curves.png"))
  plot_hardness(hardness, os.path.join(root, "regime_hardness.png"))
  lines.append("")
  lines.append(f"{len(args.seed_list)} seeds per cell; mean ± std over seeds; the difference is the mean of the "
               "per-seed differences with a 95 % t interval over seeds (n - 1 degrees of freedom).")
  lines.append(f"table wall time: {_wall(dirs) / 60:.1f} min (pretraining and the lr table not included)")
  return lines


def _pilot_path(root: str, args) -> tuple[float, float]:
  """J_gen of the reference-beta HDML N-pair run (pretrained, first seed): first block and end."""
  _, r = regime_run(root, "pretrained", "npair_hdml", args.seed_list[0], args)
  stats = r["statistics"]
  if not stats["j_gen_first"] > 0:
    raise ValueError("the reference-beta run completed no statistics block: run it longer.")
  return stats["j_gen_first"], stats["j_gen"]


def table_beta(root: str, args) -> list[str]:
  j_first, j_end = _pilot_path(root, args)
  seed = args.seed_list[0]
  variants = {}
  for w in args.target_w_list:
    variants[f"beta={-np.log(w) * j_end:.4g}"] = {"hdml.beta": float(-np.log(w) * j_end)}
    variants[f"beta_relative={-np.log(w) * j_end / j_first:.3g}"] = {
        "hdml.beta_relative": float(-np.log(w) * j_end / j_first)}
  lines = [f"pilot (reference beta, seed {seed}): J_gen {j_first:.4g} after the first block, "
           f"{j_end:.4g} at the end", "",
           "| variant | target final w | final w | " + " | ".join(KEYS) + " |",
           "|---|---|---|" + "---|" * len(KEYS)]
  dirs, runs = [], {}
  for i, (name, extra) in enumerate(variants.items()):
    d, r = regime_run(root, "pretrained", "npair_hdml", seed, args, extra, tag="_" + name.replace("=", ""))
    dirs.append(d)
    runs[name] = d
    w_end = _last(d, "train/w")
    m = selected(r)
    lines.append(f"| {name} | {args.target_w_list[i // 2]:g} | {w_end:.2f} | "
                 + " | ".join(f"{100 * m[k]:.1f}" for k in KEYS) + " |")
  d_ref, r_ref = regime_run(root, "pretrained", "npair_hdml", seed, args)
  d_base, r_base = regime_run(root, "pretrained", "npair_baseline", seed, args)
  for name, d, r in (("reference beta (config)", d_ref, r_ref), ("baseline", d_base, r_base)):
    m = selected(r)
    w_end = _last(d, "train/w") if name != "baseline" else float("nan")
    lines.append(f"| {name} | - | {w_end:.2f} | " + " | ".join(f"{100 * m[k]:.1f}" for k in KEYS) + " |")
  plot_hardness(runs, os.path.join(root, "beta_w.png"))
  lines.append("")
  lines.append(f"table wall time: {_wall(dirs) / 60:.1f} min")
  return lines


def table_alpha(root: str, args) -> list[str]:
  base, ref, rel, dirs, plot = [], [], [], [], {}
  for s in args.seed_list:
    d0, r0 = regime_run(root, "pretrained", "npair_baseline", s, args)
    d1, r1 = regime_run(root, "pretrained", "npair_hdml", s, args)
    d2, r2 = regime_run(root, "pretrained", "npair_hdml", s, args,
                        {"hdml.alpha_relative": args.alpha_relative}, tag=f"_alpha_relative{args.alpha_relative:g}")
    dirs.append(d2)
    base.append(selected(r0)), ref.append(selected(r1)), rel.append(selected(r2))
    if s == args.seed_list[0]:
      plot = {"reference alpha": d1, f"alpha_relative={args.alpha_relative:g}": d2}
  lines = ["| metric | baseline | HDML, reference alpha | HDML, alpha_relative | relative - reference [95 % CI] "
           "| relative - baseline [95 % CI] |", "|---|---|---|---|---|---|"]
  for k in KEYS:
    b, h1, h2 = ([r[k] for r in rows] for rows in (base, ref, rel))
    lines.append(f"| {k} | {_fmt((np.mean(b), np.std(b)))} | {_fmt((np.mean(h1), np.std(h1)))} | "
                 f"{_fmt((np.mean(h2), np.std(h2)))} | {_fmt_diff(paired_difference(h2, h1))} | "
                 f"{_fmt_diff(paired_difference(h2, b))} |")
  plot_hardness(plot, os.path.join(root, "alpha_hardness.png"))
  lines.append("")
  lines.append(f"table wall time: {_wall(dirs) / 60:.1f} min (the alpha_relative runs; the others are the "
               "regime table's)")
  return lines


def _last(workdir: str, key: str) -> float:
  from experiments.logs import read_jsonl

  vals = [r[key] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if key in r]
  return float(vals[-1]) if vals else float("nan")


def plot_curves(curves: dict, out_path: str) -> None:
  """Test R@1 and MAP@R against step, both arms of every (regime, loss), seeds thin, mean thick."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from experiments.logs import read_jsonl

  panels = sorted({(r, l) for r, l, _ in curves})
  fig, axes = plt.subplots(len(CURVE_KEYS), len(panels), figsize=(3.6 * len(panels), 5.5), squeeze=False)
  for col, (regime, loss) in enumerate(panels):
    for arm, color in (("baseline", "tab:blue"), ("hdml", "tab:red")):
      for row, key in enumerate(CURVE_KEYS):
        ax = axes[row, col]
        series = []
        for d in curves.get((regime, loss, arm), []):
          pts = [(r["step"], r[key]) for r in read_jsonl(os.path.join(d, "metrics.jsonl")) if key in r]
          if pts:
            ax.plot(*zip(*pts), color=color, alpha=0.25, lw=0.8)
            series.append(pts)
        if series and len({len(p) for p in series}) == 1:
          steps = [p[0] for p in series[0]]
          ax.plot(steps, np.mean([[v for _, v in p] for p in series], axis=0), color=color, lw=2,
                  label=arm)
        ax.set_title(f"{regime}, {loss}: {key}", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
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
