"""The regime study on CUB-100: one command per table, all in one workdir, resumable.

    python -m experiments.studies.cub100_tables --workdir runs/regime --table lr      # metric lr, pretrained start
    python -m experiments.studies.cub100_tables --workdir runs/regime --table regime  # scratch vs pretrained
    python -m experiments.studies.cub100_tables --workdir runs/regime --table beta    # beta sensitivity
    python -m experiments.studies.cub100_tables --workdir runs/regime --table alpha   # alpha transfer
    # HDML against today's losses (the runs' records committed under experiments/studies/records/losses):
    python -m experiments.studies.cub100_tables --workdir runs/losses --table losses \
        --record experiments/studies/records/losses

Every run gets the same fixed budget, ``--num_steps`` (default 500) after
``--pretrain_steps`` of pretraining (default 800); ``--config.<key>=<value>``
applies to every run and every pretraining (the syntax of
``experiments.main``).

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
* ``losses``: every method of ``--methods`` (HDML N-pair and triplet, their
  baselines, and the library losses through ``hdml_jax.train_step``) at the
  pretrained start; each baseline or loss gets the metric learning rate of
  ``--lrs`` with the best held-out-class R@1 (first seed), HDML its
  baseline's; then every seed, paired (same pretrained file, same data
  order); mean ± std and each method's paired R@1 difference against the
  strongest baseline with a 95 % t interval.

``--record DIR`` keeps each finished run's results, with the settings that
define it, in ``DIR`` (one small JSON per run): the losses table's records
are committed under ``experiments/studies/records/losses`` (with the
learning-rate choices, ``losses_lr_choice.json``), so the table resumes, and is
rebuilt, from a checkout without its run directories. Tables on disjoint
``--methods`` may run at once in one workdir (one process pretrains each
seed's file while the others wait for it).

Nothing selects on test classes: checkpoints and learning rates are chosen on
the held-out training classes; test curves are logged for the plots only.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys

import numpy as np

from experiments.checkpoints import write_json_atomic
from experiments.overrides import split_overrides
from experiments.studies.common import (
  KEYS,
  METHODS,
  XBM_METHOD,
  check_overrides,
  fmt,
  fmt_diff,
  last_value,
  paired_difference,
  plot_curves,
  plot_hardness,
  run_one,
  selected,
  wall_minutes,
)
from hdml_jax.losses import LOSS_NAMES, TUPLE_LOSSES

__all__ = ["TABLES", "chosen_lr", "main", "own_baseline", "pretrained_file", "regime_run"]

# The regime study's fixed budget (2 CPU cores): 48 px crops of 56 px images,
# the cub100 config's small CNN; every fine-tuning / from-scratch run gets the
# same number of steps.
STUDY_SET = {"dataset.resize": 56, "dataset.crop": 48, "eval.test_curves": True, "plots": False}

LOSSES = ("npair", "triplet")

REGIMES = ("pretrained", "scratch")

# --table losses: HDML and its baselines (the reference's tuple losses, then the Multi-Similarity extension),
# then every library loss, then Multi-Similarity with a cross-batch memory.
DEFAULT_METHODS = ("npair_baseline", "triplet_baseline", "npair_hdml", "triplet_hdml",
                   "multi_similarity_baseline", "multi_similarity_hdml") + tuple(
                       n for n in LOSS_NAMES if n not in TUPLE_LOSSES) + ("multi_similarity_xbm",)


def _steps(n: int) -> dict:
  every = max(1, n // 4)
  return {"num_steps": n, "eval_every": every, "checkpoint_every": every, "log_every": min(25, every)}

def pretrained_file(root: str, seed: int, args) -> str:
  """Pretrains (or finds) the backbone of ``seed``; both arms of that seed load this file."""
  from experiments import pretrain
  from experiments.configs import cub100
  from experiments.overrides import apply_overrides

  workdir = os.path.join(root, f"pretrain_seed{seed}")
  path = os.path.join(workdir, pretrain.PRETRAINED_FILE)
  os.makedirs(workdir, exist_ok=True)
  # Tables on disjoint --methods may share a workdir: one process pretrains, the others wait for its file.
  with open(os.path.join(workdir, ".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if os.path.exists(os.path.join(workdir, "results.json")) and os.path.exists(path):
      return path
    cfg = cub100.get_config()
    apply_overrides(cfg, {**STUDY_SET, **_steps(args.pretrain_steps), "eval.test_curves": False,
                          "pretrain.lr": args.pretrain_lr, "seed": seed, **args.common})
    pretrain.pretrain(cfg, workdir)
  return path

def regime_run(root: str, regime: str, method: str, seed: int, args, extra: dict | None = None,
               tag: str = "") -> tuple[str, dict]:
  """One run of the study: ``(workdir, results)``; skipped when already complete.

  With ``--record DIR``, every finished run's results are also kept in
  ``DIR/<regime>/<run>.json`` with the settings that define it (method,
  seed, steps, overrides, pretraining); a run found there is read back
  without training or pretraining, so a table resumes from a checkout that
  holds only the records (the run directories do not land). A record made
  with other settings is refused with both.
  """
  extra = dict(extra or {})
  overrides = {**STUDY_SET, **_steps(args.num_steps), **args.common}
  if regime == "pretrained":
    overrides.setdefault("optimizer.metric_lr", extra.pop("optimizer.metric_lr", None)
                         or args.metric_lr or chosen_lr(root, METHODS[method][0]))
  overrides.update(extra)
  name = f"{method}{tag}_seed{seed}"
  workdir = os.path.join(root, regime, name)
  spec = {"method": method, "seed": seed, "num_steps": args.num_steps, "overrides": dict(sorted(overrides.items()))}
  if regime == "pretrained":
    spec["pretrain"] = {"seed": seed, "steps": args.pretrain_steps, "lr": args.pretrain_lr}
  spec = json.loads(json.dumps(spec))   # as it reads back
  record = os.path.join(args.record, regime, name + ".json") if args.record else None
  if record and os.path.exists(record):
    kept = json.load(open(record))
    if kept["run"] != spec:
      raise ValueError(f"{record} records a run with other settings: {kept['run']}, asked for {spec}; "
                       "remove the record or give another --record directory.")
    return workdir, kept["results"]
  if regime == "pretrained":
    overrides["model.pretrained"] = pretrained_file(root, seed, args)
  results = run_one(workdir, method, seed, args.num_steps, overrides)
  if record:
    os.makedirs(os.path.dirname(record), exist_ok=True)
    write_json_atomic(record, {"run": spec, "results": results})
  return workdir, results

def chosen_lr(root: str, loss: str) -> float:
  path = os.path.join(root, "lr_choice.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: run --table lr first (it picks the metric learning "
                            "rate of the pretrained start on the held-out training classes).")
  return float(json.load(open(path))[loss]["lr"])

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
  lines.append(f"table wall time: {wall_minutes(dirs):.1f} min (pretraining included)")
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
      lines.append(f"| {regime} | {loss} | {k} | {fmt((np.mean(b), np.std(b)))} | "
                   f"{fmt((np.mean(h), np.std(h)))} | {fmt_diff(diff)} |")
  write_json_atomic(os.path.join(root, "regime.json"), out)
  plot_curves(curves, os.path.join(root, "regime_curves.png"))
  plot_hardness(hardness, os.path.join(root, "regime_hardness.png"))
  lines.append("")
  lines.append(f"{len(args.seed_list)} seeds per cell; mean ± std over seeds; the difference is the mean of the "
               "per-seed differences with a 95 % t interval over seeds (n - 1 degrees of freedom).")
  lines.append(f"table wall time: {wall_minutes(dirs):.1f} min (pretraining and the lr table not included)")
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
    w_end = last_value(d, "train/w")
    m = selected(r)
    lines.append(f"| {name} | {args.target_w_list[i // 2]:g} | {w_end:.2f} | "
                 + " | ".join(f"{100 * m[k]:.1f}" for k in KEYS) + " |")
  d_ref, r_ref = regime_run(root, "pretrained", "npair_hdml", seed, args)
  d_base, r_base = regime_run(root, "pretrained", "npair_baseline", seed, args)
  for name, d, r in (("reference beta (config)", d_ref, r_ref), ("baseline", d_base, r_base)):
    m = selected(r)
    w_end = last_value(d, "train/w") if name != "baseline" else float("nan")
    lines.append(f"| {name} | - | {w_end:.2f} | " + " | ".join(f"{100 * m[k]:.1f}" for k in KEYS) + " |")
  plot_hardness(runs, os.path.join(root, "beta_w.png"))
  lines.append("")
  lines.append(f"table wall time: {wall_minutes(dirs):.1f} min")
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
    lines.append(f"| {k} | {fmt((np.mean(b), np.std(b)))} | {fmt((np.mean(h1), np.std(h1)))} | "
                 f"{fmt((np.mean(h2), np.std(h2)))} | {fmt_diff(paired_difference(h2, h1))} | "
                 f"{fmt_diff(paired_difference(h2, b))} |")
  plot_hardness(plot, os.path.join(root, "alpha_hardness.png"))
  lines.append("")
  lines.append(f"table wall time: {wall_minutes(dirs):.1f} min (the alpha_relative runs; the others are the "
               "regime table's)")
  return lines


#: Where the losses table keeps its learning-rate choices (in the workdir, and in the --record directory).
LR_CHOICE_FILE = "losses_lr_choice.json"


def _losses_lr(root: str, args) -> dict:
  """Each method's metric learning rate at the pretrained start, chosen by held-out-class R@1 (first seed).

  The choices are kept in the workdir's ``losses_lr_choice.json`` and, with
  ``--record DIR``, in ``DIR/losses_lr_choice.json`` too, where they are read
  back from: a table rebuilds from its record directory alone.
  """
  paths = [os.path.join(root, LR_CHOICE_FILE)] + ([os.path.join(args.record, LR_CHOICE_FILE)] if args.record else [])

  def read_all() -> dict:
    merged = {}
    for path in reversed(paths):   # the workdir's choice wins over the record's
      if os.path.exists(path):
        merged.update(json.load(open(path)))
    return merged

  choice = read_all()
  for method in args.method_list:
    if method in choice or method.endswith("_hdml"):
      continue
    tried = {}
    for lr in args.lr_list:
      _, r = regime_run(root, "pretrained", method, args.seed_list[0], args, {"optimizer.metric_lr": lr},
                        tag=f"_lr{lr:g}")
      tried[f"{lr:g}"] = r["best"]["value"] if r["best"] else float("nan")
    best = max(tried, key=lambda k: (tried[k] if tried[k] == tried[k] else -1.0))
    choice[method] = {"lr": float(best), "val_recall@1": tried}
    # After every method, merged with what another table process wrote meanwhile: an interrupted table keeps its
    # choices, and tables on disjoint --methods can share a workdir.
    kept = read_all()
    for path in paths:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      write_json_atomic(path, {**kept, method: choice[method]})
  here = paths[0]   # the workdir holds the choices in force, read back or made
  there = json.load(open(here)) if os.path.exists(here) else None
  if there is None or {**there, **choice} != there:
    write_json_atomic(here, {**(there or {}), **choice})
  for method in args.method_list:     # HDML uses the rate chosen for its own baseline
    if method.endswith("_hdml"):
      base = own_baseline(method)
      if base not in choice:
        raise ValueError(f"--methods names {method} without {base}, whose learning rate it uses.")
      choice[method] = {"lr": choice[base]["lr"], "from": base}
  return choice

def own_baseline(method: str) -> str | None:
  """What ``method`` adds to: HDML's baseline (the same step without synthesis), a loss without its memory."""
  if method.endswith("_hdml"):
    return METHODS[method][0] + "_baseline"
  if method.endswith(XBM_METHOD["suffix"]):
    return method[:-len(XBM_METHOD["suffix"])]
  return None

def table_losses(root: str, args) -> list[str]:
  """Every method at the pretrained start with its own held-out-chosen rate, paired seeds, against the best baseline."""
  choice = _losses_lr(root, args)
  results, wall = {}, 0.0
  for method in args.method_list:
    runs = [regime_run(root, "pretrained", method, s, args, {"optimizer.metric_lr": choice[method]["lr"]},
                       tag=f"_lr{choice[method]['lr']:g}") for s in args.seed_list]
    wall += sum(r.get("wall_seconds", 0.0) for _, r in runs)
    results[method] = [selected(r) for _, r in runs]
  baselines = [m for m in args.method_list if not m.endswith("_hdml")]
  strongest = max(baselines, key=lambda m: np.mean([r["recall@1"] for r in results[m]]))
  lines = ["| method | metric lr | " + " | ".join(KEYS) + f" | R@1 - {strongest} [95 % CI] | R@1 - own baseline |",
           "|---|---|" + "---|" * len(KEYS) + "---|---|"]
  out = {"strongest_baseline": strongest, "lr": choice, "methods": {}}
  r1 = lambda m: [r["recall@1"] for r in results[m]]
  for method in args.method_list:
    rows = results[method]
    cells = [fmt((np.mean([r[k] for r in rows]), np.std([r[k] for r in rows]))) for k in KEYS]
    diff = None if method == strongest else paired_difference(r1(method), r1(strongest))
    base = own_baseline(method)
    own = paired_difference(r1(method), r1(base)) if base in results else None
    out["methods"][method] = {k: [r[k] for r in rows] for k in KEYS}
    out["methods"][method]["recall@1_minus_strongest"] = diff
    out["methods"][method]["recall@1_minus_own_baseline"] = None if own is None else {**own, "baseline": base}
    lines.append(f"| {method} | {choice[method]['lr']:g} | " + " | ".join(cells) + " | "
                 + ("(reference)" if diff is None else fmt_diff(diff)) + " | "
                 + ("" if own is None else f"{fmt_diff(own)} ({base})") + " |")
  write_json_atomic(os.path.join(root, "losses.json"), out)
  lines.append("")
  lines.append(f"{len(args.seed_list)} paired seeds per method (one pretrained file and one data order per seed); "
               "mean ± std over seeds; the last two columns are the mean per-seed difference in R@1 with a 95 % t "
               f"interval, against the strongest baseline ({strongest}, by mean R@1) and, for HDML and a cross-batch "
               "memory, against the same method without it (when in the table). Learning rates chosen per method on the "
               "held-out training classes (first seed); HDML uses its baseline's.")
  lines.append(f"table wall time: {wall / 60:.1f} min (pretraining and the learning-rate runs not included)")
  return lines


TABLES = {"lr": table_lr, "regime": table_regime, "beta": table_beta, "alpha": table_alpha, "losses": table_losses}


def main(argv=None):
  """Builds one table (``argv``: the command line without the program name)."""
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                               epilog="--config.<key>=<value>: an override applied to every run.")
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--table", required=True, choices=tuple(TABLES), help="which table (see the module docstring)")
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--num_steps", type=int, default=500, help="steps of every fine-tuning or from-scratch run "
                  "(default 500, the study's fixed budget)")
  ap.add_argument("--pretrain_steps", type=int, default=800)
  ap.add_argument("--pretrain_lr", type=float, default=1e-3)
  ap.add_argument("--lrs", default="3e-5,1e-4,3e-4", help="--table lr: the metric learning rates tried")
  ap.add_argument("--target_w", default="0.95,0.8,0.65,0.5", help="--table beta: final w aimed at")
  ap.add_argument("--alpha_relative", type=float, default=0.5, help="--table alpha")
  ap.add_argument("--losses", default=",".join(LOSSES), help="--table lr/regime: the losses")
  ap.add_argument("--regimes", default="pretrained,scratch", help="--table regime: the regimes")
  ap.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                  help="--table losses: HDML and baseline methods and library losses (default: all)")
  ap.add_argument("--record", default=None,
                  help="a directory where every finished run's results and settings are kept, and read back "
                       "instead of running again (the losses table resumes from it alone; the other tables' plots "
                       "and wall times read the run directories)")
  ap.add_argument("--metric_lr", type=float, default=None,
                  help="the pretrained start's metric lr, given instead of the lr table's choice")
  argv, common = split_overrides(sys.argv[1:] if argv is None else argv)
  args = ap.parse_args(argv)
  check_overrides(ap, common)
  args.common = common
  args.seed_list = [int(x) for x in args.seeds.split(",")]
  args.lr_list = [float(x) for x in args.lrs.split(",")]
  args.target_w_list = [float(x) for x in args.target_w.split(",")]
  args.loss_list = [x for x in args.losses.split(",") if x]
  args.regime_list = [x for x in args.regimes.split(",") if x]
  args.method_list = [x for x in args.methods.split(",") if x]
  for name, got, allowed in (("losses", args.loss_list, LOSSES), ("regimes", args.regime_list, REGIMES),
                             ("methods", args.method_list, DEFAULT_METHODS)):
    if not got or set(got) - set(allowed):
      ap.error(f"--{name} must be a comma-separated subset of {','.join(allowed)}, got {got}")
  os.makedirs(args.workdir, exist_ok=True)   # a table rebuilt from its records alone trains nothing here
  lines = TABLES[args.table](args.workdir, args)
  text = "\n".join(lines) + "\n"
  print(text)
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, f"table_{args.table}.md"), "w") as f:
    f.write(text)


if __name__ == "__main__":
  from experiments.cli import run_main

  run_main(main, "python3 -m experiments.studies.cub100_tables")
