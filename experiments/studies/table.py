"""A study table over any config: every method with its held-out-chosen learning rate, paired seeds, 95 % intervals,
and the untrained backbone's features as row zero.

    python -m experiments.studies.table --config experiments/configs/cub100_imagenet.py:frozen \\
        --workdir runs/imagenet_frozen --record experiments/studies/records/imagenet_frozen

The config is a parameter (a config file, with its ``:argument``); the methods are those of the losses table
(:data:`experiments.studies.cub100_tables.DEFAULT_METHODS`: HDML N-pair, triplet and Multi-Similarity with their
baselines, every library loss, Multi-Similarity with a cross-batch memory). For each method the metric learning
rate of ``--lrs`` with the best R@1 on the held-out training species (first seed, the checkpoint selected there)
is chosen; then every seed of ``--seeds`` trains with it (the same data order and initialisation per seed across
methods). Each finished run writes its record (the selected checkpoint's test metrics and the run's settings) to
``--record``; a method or seed with a record is not run again, so the command resumes where it stopped, and with
every record present it rebuilds ``table.md`` and ``table.json`` from the records alone (no runs, no data).

Row zero (with ``features.backbone`` or ``model.pretrained`` set) is the pretrained backbone's centre-view
features of the test photos, L2-normalised, evaluated as the runs are: no training at all. Each method's row gives its test metrics (mean and
standard deviation over seeds) and its difference from row zero with a 95 % t interval over seeds; HDML's rows
also give the paired difference from their own baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from experiments.studies.common import KEYS, paired_difference, run_one, selected

__all__ = ["main", "row_zero"]


def _make_config(spec: str):
  """A config factory from ``path.py[:argument]`` (as ``--config`` takes it)."""
  import importlib.util

  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"--config {path!r} does not exist.")
  module_spec = importlib.util.spec_from_file_location(f"_study_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return (lambda: module.get_config(arg)) if arg else module.get_config


def _frozen(cfg):
  """``cfg``'s pretrained backbone as the frozen regime's (its centre views only), for row zero."""
  if cfg.features.backbone and not cfg.features.backbone_kwargs.to_dict():
    return cfg
  if cfg.features.backbone:   # a part cached, the rest trained: row zero is the whole backbone's pooled features
    cfg = cfg.copy_and_resolve_references()   # (with the same views: the frozen regime's cache entry, if made)
    cfg.features.backbone_kwargs = {}
    cfg.model.backbone, cfg.model.pretrained, cfg.model.backbone_kwargs = "identity", "", {}
    return cfg
  if not cfg.model.pretrained:
    raise ValueError("row zero needs pretrained weights: features.backbone or model.pretrained.")
  if cfg.model.backbone_kwargs.to_dict():
    raise ValueError(f"row zero builds {cfg.model.backbone!r} by its name alone; model.backbone_kwargs="
                     f"{cfg.model.backbone_kwargs.to_dict()} cannot be passed to the frozen regime.")
  cfg = cfg.copy_and_resolve_references() if hasattr(cfg, "copy_and_resolve_references") else cfg
  cfg.features.backbone, cfg.features.pretrained, cfg.features.views = cfg.model.backbone, cfg.model.pretrained, 0
  cfg.model.backbone, cfg.model.pretrained, cfg.model.backbone_kwargs = "identity", "", {}
  return cfg


def row_zero(make_config) -> dict:
  """The pretrained backbone's test metrics with no training (centre views' pooled features, L2-normalised):
  the frozen regime's features, or ``model.pretrained``'s backbone run the same way."""
  from experiments import datasets
  from hdml_jax import evaluation

  cfg = _frozen(make_config())
  data = datasets.load_data(cfg)
  x = np.asarray(data.model_input(data.prepare(data.test.load(np.arange(len(data.test))), False, None)))
  out = evaluation.evaluate(x, data.test.labels, recall_ks=tuple(cfg.eval.recall_ks), normalize=True,
                            kmeans_backend=cfg.eval.kmeans_backend, kmeans_seed=cfg.seed,
                            kmeans_protocol=cfg.eval.kmeans_protocol)
  return {k: float(v) for k, v in out.items()}


def _record_path(record: str, method: str, seed: int, lr: float | None = None) -> str:
  name = f"seed{seed}" if lr is None else f"lr{lr:g}_seed{seed}"
  return os.path.join(record, method, name + ".json")


def _run(args, make_config, method: str, seed: int, lr: float) -> dict:
  """One run's record (written once it finishes; read back after)."""
  path = _record_path(args.record, method, seed, lr)
  if os.path.exists(path):
    return json.load(open(path))
  workdir = os.path.join(args.workdir, method, f"lr{lr:g}_seed{seed}")
  t = time.time()
  results = run_one(workdir, method, seed, args.num_steps, {"optimizer.metric_lr": lr, **args.overrides},
                    make_config=make_config)
  best = results["best"] or {}
  record = {"method": method, "seed": seed, "lr": lr, "num_steps": args.num_steps,
            "val_recall@1": best.get("value"), "selected_step": best.get("step", results["final"]["step"]),
            "test": {k: selected(results)[k] for k in KEYS}, "wall_seconds": round(time.time() - t, 1)}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=1)
  os.replace(path + ".tmp", path)
  return record


def _recorded(args, method: str, seed: int, lr: float) -> dict | None:
  path = _record_path(args.record, method, seed, lr)
  return json.load(open(path)) if os.path.exists(path) else None


def _choose_lr(args, make_config, method: str) -> float | None:
  seed = args.seed_list[0]
  if args.from_records:
    tried = [_recorded(args, method, seed, lr) for lr in args.lr_list]
    if any(r is None for r in tried):
      return None
  else:
    tried = [_run(args, make_config, method, seed, lr) for lr in args.lr_list]
  return max(tried, key=lambda r: (r["val_recall@1"] if r["val_recall@1"] is not None else -1.0, -r["lr"]))["lr"]


def _t_interval(values: list[float]) -> dict:
  return paired_difference(values, [0.0] * len(values))


def _table(args, zero: dict | None, rows: dict) -> tuple[list[str], dict]:
  out = {"row_zero": zero, "methods": {}}
  lines = ["| method | lr | seeds | R@1 | R@2 | R@4 | R@8 | NMI | F1 | MAP@R | R@1 - row 0 [95 % CI] | "
           "HDML - baseline R@1 [95 % CI] |", "|" + "---|" * 12]
  if zero is not None:
    lines.append("| row 0: untrained features | - | - | " + " | ".join(f"{100 * zero[k]:.1f}" for k in KEYS)
                 + " | - | - |")
  for method, recs in rows.items():
    if not recs:
      continue
    seeds = [r["seed"] for r in recs]
    vals = {k: [r["test"][k] for r in recs] for k in KEYS}
    entry = {"lr": recs[0]["lr"], "seeds": seeds, **{k: {"mean": float(np.mean(v)), "std": float(np.std(v))}
                                                    for k, v in vals.items()}}
    cells = [f"{100 * np.mean(vals[k]):.1f} ± {100 * np.std(vals[k]):.1f}" for k in KEYS]
    vs_zero = "-"
    if zero is not None:
      d = _t_interval([v - zero["recall@1"] for v in vals["recall@1"]])
      entry["recall@1_minus_row_zero"] = d
      vs_zero = _fmt(d)
    vs_base = "-"
    if method.endswith("_hdml") and rows.get(method.replace("_hdml", "_baseline")):
      base = {r["seed"]: r["test"]["recall@1"] for r in rows[method.replace("_hdml", "_baseline")]}
      common = [r for r in recs if r["seed"] in base]
      if common:
        d = paired_difference([r["test"]["recall@1"] for r in common], [base[r["seed"]] for r in common])
        entry["recall@1_minus_baseline"] = d
        vs_base = _fmt(d)
    out["methods"][method] = entry
    lines.append(f"| {method} | {recs[0]['lr']:g} | {len(seeds)} | " + " | ".join(cells) + f" | {vs_zero} | "
                 f"{vs_base} |")
  return lines, out


def _fmt(d: dict) -> str:
  lo, hi = d["ci95"]
  ci = "" if not np.isfinite(lo) else f" [{100 * lo:+.1f}, {100 * hi:+.1f}]"
  return f"{100 * d['mean']:+.1f}{ci}"


def main(argv=None):
  from experiments.overrides import split_overrides
  from experiments.studies.cub100_tables import DEFAULT_METHODS

  argv, overrides = split_overrides(list(argv or []))
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", required=True, help="a config file, with its :argument")
  ap.add_argument("--workdir", required=True, help="the runs' workdirs")
  ap.add_argument("--record", required=True, help="the records (one JSON per run) and the table")
  ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
  ap.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9")
  ap.add_argument("--lrs", default="3e-4,1e-3,3e-3", help="the metric learning rates to choose from")
  ap.add_argument("--num_steps", type=int, default=300)
  ap.add_argument("--seed_blocks", type=int, default=2, help="run the seeds in this many blocks over all methods")
  ap.add_argument("--from_records", action="store_true",
                  help="run nothing: the table of the records there are (a method or seed without one is left out "
                       "and named)")
  args = ap.parse_args(argv)
  args.overrides = overrides
  args.seed_list = [int(s) for s in args.seeds.split(",")]
  args.lr_list = [float(v) for v in args.lrs.split(",")]
  methods = args.methods.split(",")
  unknown = [m for m in methods if m not in DEFAULT_METHODS]
  if unknown:
    raise ValueError(f"--methods: unknown {unknown}; choose from {', '.join(DEFAULT_METHODS)}.")
  make_config = None if args.from_records else _make_config(args.config)
  from experiments.studies.common import check_overrides

  if overrides and not args.from_records:
    check_overrides(ap, overrides)
  t0 = time.time()
  os.makedirs(args.record, exist_ok=True)
  zero_path = os.path.join(args.record, "row_zero.json")
  zero = None
  if os.path.exists(zero_path):
    zero = json.load(open(zero_path))
  elif not args.from_records and ((start := make_config()).features.backbone or start.model.pretrained):
    zero = row_zero(make_config)
    with open(zero_path, "w") as f:
      json.dump(zero, f, indent=1)
  choice = {m: _choose_lr(args, make_config, m) for m in methods}
  if not args.from_records:
    blocks = np.array_split(np.array(args.seed_list), max(1, args.seed_blocks))
    for block in blocks:   # every method's first seeds before anyone's later ones: partial tables stay balanced
      for m in methods:
        for s in block:
          _run(args, make_config, m, int(s), choice[m])
  rows, absent = {}, []
  for m in methods:
    recs = [_recorded(args, m, s, choice[m]) for s in args.seed_list] if choice[m] is not None else []
    rows[m] = [r for r in recs if r is not None]
    if len(rows[m]) < len(args.seed_list):
      absent.append(f"{m} ({len(rows[m])} of {len(args.seed_list)} seeds)")
  lines, table = _table(args, zero, rows)
  runs = [r for recs in rows.values() for r in recs]
  lines.append("")
  if absent:
    lines.append(f"Not complete: {', '.join(absent)}.")
    lines.append("")
  table["incomplete"] = absent
  lines.append(f"Up to {len(args.seed_list)} seeds per method, {args.num_steps} steps, the metric learning rate chosen "
               f"from {args.lrs} on the held-out species (first seed); test metrics of the checkpoint selected on "
               "the held-out species. Training time of the table's runs (the learning-rate runs of other rates "
               f"not included): {sum(r['wall_seconds'] for r in runs) / 60:.1f} min.")
  table["config"] = args.config
  table["num_steps"] = args.num_steps
  with open(os.path.join(args.record, "table.json"), "w") as f:
    json.dump(table, f, indent=1, sort_keys=True)
  with open(os.path.join(args.record, "table.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  print(f"command wall time: {(time.time() - t0) / 60:.1f} min")


def run():
  """Command-line entry point (``python3 -m experiments.studies.table``)."""
  from experiments.cli import run_main

  run_main(main, "python3 -m experiments.studies.table")


if __name__ == "__main__":
  run()
