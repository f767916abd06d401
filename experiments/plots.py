"""PNG plots of a run: training curves, a 2-D embedding projection, a retrieval grid."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.logs import read_jsonl  # noqa: E402

CURVE_GROUPS = (
    ("metric losses", ("train/j_m", "train/j_syn", "train/loss")),
    ("generator losses", ("train/j_gen", "train/j_recon", "train/j_soft")),
    ("classifier", ("train/j_cls",)),
    ("hardness", ("train/w", "train/hardness")),
)


EVAL_KEYS = ("recall@1", "map@r", "nmi", "f1")


def _eval_group(rows) -> tuple[str, tuple[str, ...]]:
  present = [f"{split}/{k}" for split in ("val", "test") for k in EVAL_KEYS
             if any(f"{split}/{k}" in r for r in rows)]
  return "evaluation", tuple(present)


def plot_curves(metrics_path: str, out_path: str) -> None:
  """Loss terms, ``w`` and ``exp(-alpha/J_avg)``, and the evaluation metrics, against the step."""
  rows = read_jsonl(metrics_path)
  evaluation = _eval_group(rows)
  groups = CURVE_GROUPS + ((evaluation,) if evaluation[1] else ())   # a run may evaluate only at the end
  fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4))
  for ax, (title, keys) in zip(axes, groups):
    for key in keys:
      pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
      if pts:
        s, v = zip(*pts)
        ax.plot(s, v, label=key if title == "evaluation" else key.split("/", 1)[1],
                marker="o" if title == "evaluation" else None, ms=3)
    if title not in ("hardness", "evaluation") and ax.has_data():
      ax.set_yscale("log")
    if title in ("hardness", "evaluation"):
      ax.set_ylim(-0.05, 1.05)
    ax.set_title(title)
    ax.set_xlabel("step")
    if ax.has_data():
      ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out_path, dpi=110)
  plt.close(fig)


def project_2d(embeddings: np.ndarray) -> np.ndarray:
  """PCA to two dimensions (an SVD of the centred embeddings)."""
  x = embeddings - embeddings.mean(0)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  return x @ vt[:2].T


def plot_projection(embeddings: np.ndarray, labels: np.ndarray, out_path: str, title: str = "",
                    class_names=None) -> None:
  xy = project_2d(embeddings)
  classes = np.unique(labels)
  fig, ax = plt.subplots(figsize=(6.5, 5))
  cmap = plt.get_cmap("tab20" if classes.size > 10 else "tab10")
  for i, c in enumerate(classes):
    mask = labels == c
    ax.scatter(xy[mask, 0], xy[mask, 1], color=cmap(i % cmap.N), s=6, alpha=0.8,
               label=str(class_names[c]) if class_names is not None and len(class_names) > c else str(c))
  shown = classes.size if classes.size <= 20 else 20
  handles, names = ax.get_legend_handles_labels()
  ax.legend(handles[:shown], names[:shown], title="class" + ("" if classes.size <= 20 else
            f" (first 20 of {classes.size})"), fontsize=6, title_fontsize=7, markerscale=2,
            loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
  ax.set_title(title or "test embeddings (PCA), coloured by class")
  ax.set_xticks([])
  ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(out_path, dpi=110)
  plt.close(fig)


def plot_retrieval_grid(load, labels: np.ndarray, embeddings: np.ndarray, out_path: str,
                        *, num_queries: int = 6, k: int = 5, seed: int = 0) -> None:
  """Queries (left) and their k nearest neighbours; green frame right, red wrong.

  ``load(indices)`` returns the stored images (uint8 RGB or [0, 1] floats).
  """
  rng = np.random.default_rng(seed)
  queries = rng.choice(len(labels), size=min(num_queries, len(labels)), replace=False)
  fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.6 * (k + 1), 1.6 * len(queries)))
  axes = np.atleast_2d(axes)
  for row, q in enumerate(queries):
    d = np.sum((embeddings - embeddings[q]) ** 2, axis=1)
    d[q] = np.inf
    nbrs = np.argsort(d, kind="stable")[:k]
    for col, idx in enumerate([q] + list(nbrs)):
      ax = axes[row, col]
      img = load(np.array([idx]))[0]
      ax.imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None)
      ax.set_xticks([])
      ax.set_yticks([])
      color = "black" if col == 0 else ("limegreen" if labels[idx] == labels[q] else "red")
      for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(4 if col else 2)
      if row == 0:
        ax.set_title("query" if col == 0 else f"#{col}", fontsize=9)
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)


def write_all(workdir: str, data, test_embeddings: np.ndarray) -> list[str]:
  """Writes every plot of a finished run; returns the paths."""
  out = []
  metrics = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(metrics):
    out.append(os.path.join(workdir, "curves.png"))
    plot_curves(metrics, out[-1])
  out.append(os.path.join(workdir, "embedding_projection.png"))
  plot_projection(test_embeddings, data.test.labels, out[-1], class_names=data.test.class_names)
  if data.is_image:
    out.append(os.path.join(workdir, "retrieval_grid.png"))
    plot_retrieval_grid(data.test.load, data.test.labels, test_embeddings, out[-1])
  return out
