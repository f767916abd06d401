"""Small shared builders for the tests."""

import os

import jax
import numpy as np

from hdml_jax.data import load_digits_split, make_sampler
from hdml_jax.config import HDMLConfig, OptimizerConfig
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
  batch_size = batch_size or (8 if loss == "npair" else 9)
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


CUB100 = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "shared", "data", "cub100", "images")


def tiny_cub(**overrides):
  """The cub100 config on 6 + 3 species at 16 px with a tiny CNN (keys overridable, dotted)."""
  from experiments.configs import cub100
  from experiments.configs.base import override

  cfg = cub100.get_config()
  cfg.dataset.data_dir = CUB100
  cfg.dataset.train_classes, cfg.dataset.test_classes = (0, 6), (50, 53)
  cfg.dataset.num_val_classes = 2
  cfg.dataset.resize, cfg.dataset.crop = 20, 16
  cfg.model.backbone_kwargs = {"widths": (4, 8), "depth": 1}
  cfg.model.embedding_dim, cfg.model.generator_hidden = 8, 16
  cfg.batch_size, cfg.num_steps = 8, 4
  cfg.log_every = cfg.eval_every = cfg.checkpoint_every = 2
  cfg.compilation_cache_dir = ""
  cfg.num_devices = 1
  cfg.plots = False
  for key, value in overrides.items():
    override(cfg, key, value)
  return cfg
