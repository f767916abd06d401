"""What the CUB-100 study tools share: the methods, one run, the tables' statistics and plots.

Used by :mod:`experiments.studies.cub100_grid` (methods x seeds x sweeps)
and :mod:`experiments.studies.cub100_tables` (the regime study).
"""

from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["CURVE_KEYS", "KEYS", "METHODS", "XBM_METHOD", "check_overrides", "fmt", "fmt_diff", "last_value", "paired_difference", "plot_curves",
           "plot_hardness", "run_one", "selected", "summarise", "wall_minutes"]

#: HDML (``*_hdml``) and its baseline (the same step without synthesis): ``(loss.name, hdml.enabled)``.
#: ``multi_similarity_*`` is the extension beyond the reference's losses (M-per-class batches).
METHODS = {"npair_baseline": ("npair", False), "npair_hdml": ("npair", True),
           "triplet_baseline": ("triplet", False), "triplet_hdml": ("triplet", True),
           "multi_similarity_baseline": ("multi_similarity", False),
           "multi_similarity_hdml": ("multi_similarity", True)}

#: Library losses with a cross-batch memory: ``<loss>_xbm`` (``loss.xbm_size`` rows, from ``loss.xbm_start``).
XBM_METHOD = {"suffix": "_xbm", "loss.xbm_size": 512, "loss.xbm_start": 50}

CURVE_KEYS = ("test/recall@1", "test/map@r")   # the learning curves plot_curves draws
KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "f1", "map@r")

def check_overrides(parser, overrides: dict) -> None:
  """Refuses, before any run starts, an override the cub100 config lacks or a value that does not parse.

  ``parser.error`` prints the one-line reason and exits with status 2.
  """
  from experiments.configs import cub100
  from experiments.overrides import apply_overrides

  try:
    apply_overrides(cub100.get_config(), overrides)
  except (KeyError, ValueError) as e:
    parser.error(str(e.args[0]))


def run_one(workdir: str, method: str, seed: int, num_steps: int, overrides: dict, make_config=None) -> dict:
  """Trains (or reads back) one run of ``method`` with ``seed``: its ``results.json``.

  ``method`` is one of :data:`METHODS` (HDML or its baseline, with the
  reference's tuple losses or Multi-Similarity), a library loss's name
  (``hdml_jax.losses.LOSS_NAMES``), or a library pair loss's name with
  ``_xbm`` (a cross-batch memory, :data:`XBM_METHOD`).

  The library losses' rows train without the weight-decay term
  (``hdml.weight_decay=0``), as the losses table's records were trained;
  HDML and its baselines keep cub100's. ``overrides``
  (``{key: value or text}``) are applied after the method's own settings, text parsed as on the command line
  (:func:`experiments.overrides.apply_overrides`). A finished run is read,
  not run again. ``make_config`` builds the study's config (default: cub100's).
  """
  from experiments.configs import cub100
  from experiments.overrides import apply_overrides
  from experiments.train import train_and_evaluate

  path = os.path.join(workdir, "results.json")
  if os.path.exists(path):
    return json.load(open(path))
  cfg = (make_config or cub100.get_config)()
  if method in METHODS:
    cfg.loss.name, cfg.hdml.enabled = METHODS[method]
  elif method.endswith(XBM_METHOD["suffix"]):   # a library pair loss with a cross-batch memory
    cfg.loss.name, cfg.hdml.enabled = method[:-len(XBM_METHOD["suffix"])], False
    cfg.loss.xbm_size, cfg.loss.xbm_start = XBM_METHOD["loss.xbm_size"], XBM_METHOD["loss.xbm_start"]
    cfg.hdml.weight_decay = 0.0
  else:   # a library loss (hdml_jax.losses.LOSS_NAMES), without synthesis, on M-per-class batches
    cfg.loss.name, cfg.hdml.enabled = method, False
    cfg.hdml.weight_decay = 0.0
  cfg.seed, cfg.num_steps = seed, num_steps
  if cfg.loss.name == "triplet" and method in METHODS:
    cfg.batch_size = 60
  apply_overrides(cfg, overrides)
  return train_and_evaluate(cfg, workdir)

def summarise(rows: list[dict]) -> dict:
  """``{metric: (mean, std)}`` over the runs (the selected checkpoint's test metrics, else the last)."""
  out = {}
  for k in KEYS:
    vals = [r["best"][k] if r["best"] else r["final"][k] for r in rows]
    out[k] = (float(np.mean(vals)), float(np.std(vals)))
  return out

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

def fmt(mean_std) -> str:
  """``(mean, std)`` as percentages, ``'53.1 ± 1.2'``."""
  return f"{100 * mean_std[0]:.1f} ± {100 * mean_std[1]:.1f}"

def fmt_diff(d) -> str:
  """A :func:`paired_difference` as percentage points with its interval, ``'+1.2 [-0.3, +2.7]'``."""
  lo, hi = d["ci95"]
  ci = "" if not np.isfinite(lo) else f" [{100 * lo:+.1f}, {100 * hi:+.1f}]"
  return f"{100 * d['mean']:+.1f}{ci}"

def wall_minutes(dirs) -> float:
  """The runs' summed wall time (their ``results.json``), in minutes."""
  total = 0.0
  for d in dirs:
    path = os.path.join(d, "results.json")
    if os.path.exists(path):
      total += json.load(open(path)).get("wall_seconds", 0.0)
  return total / 60

def last_value(workdir: str, key: str) -> float:
  """The last logged value of ``key`` in the run's ``metrics.jsonl`` (NaN if never logged)."""
  from experiments.logs import read_jsonl

  vals = [r[key] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if key in r]
  return float(vals[-1]) if vals else float("nan")

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
