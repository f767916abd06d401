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


def plot_curves(metrics_path: str, out_path: str) -> None:
  """Loss terms, ``w`` and ``exp(-alpha/J_avg)`` against the step."""
  rows = read_jsonl(metrics_path)
  fig, axes = plt.subplots(1, len(CURVE_GROUPS), figsize=(4.2 * len(CURVE_GROUPS), 3.4))
  for ax, (title, keys) in zip(axes, CURVE_GROUPS):
    for key in keys:
      pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
      if pts:
        s, v = zip(*pts)
        ax.plot(s, v, label=key.split("/", 1)[1])
    if title != "hardness" and ax.has_data():
      ax.set_yscale("log")
    if title == "hardness":
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


def plot_projection(embeddings: np.ndarray, labels: np.ndarray, out_path: str, title: str = "") -> None:
  xy = project_2d(embeddings)
  fig, ax = plt.subplots(figsize=(5.5, 5))
  ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab20" if np.unique(labels).size > 10 else "tab10",
             s=6, alpha=0.8)
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
  plot_projection(test_embeddings, data.test.labels, out[-1])
  if data.is_image:
    out.append(os.path.join(workdir, "retrieval_grid.png"))
    plot_retrieval_grid(data.test.load, data.test.labels, test_embeddings, out[-1])
  return out
