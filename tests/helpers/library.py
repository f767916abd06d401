"""Builders of tiny library objects, batches, paths and finite differences: the library's own tests use these
(nothing here imports ``experiments``)."""

import os

import jax
import numpy as np

from hdml_jax.config import HDMLConfig, OptimizerConfig
from hdml_jax.data import (
  load_digits_split,
  make_sampler,
)
from hdml_jax.train_state import create_train_state


def tiny_state(loss="npair", hdml=True, seed=0, optimizer=None, num_classes=10, **config_kwargs):
  config = HDMLConfig(loss=loss, hdml=hdml, **config_kwargs)
  return create_train_state(
      jax.random.key(seed), image_shape=(8, 8, 1), num_classes=num_classes, embedding_dim=6,
      backbone="small_cnn", backbone_kwargs=dict(widths=(4, 8)), generator_hidden=16,
      config=config, optimizer=optimizer or OptimizerConfig(metric_lr=1e-3, generator_lr=1e-3),
      stats_block_length=4)


def digits_batch(loss="npair", batch_size=None, step=0, seed=0):
  images, labels = load_digits_split("train")
  batch_size = batch_size or (8 if loss in ("npair", "multi_similarity") else 9)
  idx = make_sampler(loss, labels, batch_size=batch_size, seed=seed)(step)
  return {"images": images[idx], "labels": labels[idx]}


def recall_at_1(embeddings, labels):
  """Brute force: the nearest other point shares the label."""
  e = np.asarray(embeddings, np.float64)
  hits = 0
  for i in range(len(e)):
    d = np.sum((e - e[i]) ** 2, axis=1)
    d[i] = np.inf
    hits += labels[int(np.argmin(d))] == labels[i]
  return hits / len(e)


def max_abs_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the checkout
CUB100 = os.path.join(os.path.dirname(REPO), "shared", "data", "cub100", "images")


def synthetic_batches(loss, batch_size, steps, seed=0, num_classes=16):
  """Random 8x8 'images' with tuple layouts valid for ``loss``."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(steps):
    if loss == "npair":
      p = batch_size // 2
      cls = rng.permutation(num_classes)[:p]
      labels = np.concatenate([cls, cls])
    else:
      t = batch_size // 3
      cls = rng.permutation(num_classes)
      labels = np.concatenate([cls[:t], cls[:t], cls[t:2 * t]])
    images = rng.normal(size=(batch_size, 8, 8, 1)).astype(np.float32) + labels[:, None, None, None] * 0.1
    out.append({"images": images, "labels": labels.astype(np.int32)})
  return out


def numeric_grad(f, x, h=1e-6):
  """The gradient of the scalar ``f`` at the float64 array ``x`` by central differences, entry by entry."""
  g = np.zeros_like(x)
  for idx in np.ndindex(*x.shape):
    up, down = x.copy(), x.copy()
    up[idx] += h
    down[idx] -= h
    g[idx] = (f(up) - f(down)) / (2 * h)
  return g
