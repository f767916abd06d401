"""The experiments' fast runs and what they leave on disk (for the tests of ``experiments``)."""

import os

from experiments import checkpoints, datasets
from experiments.configs import cub100, default
from experiments.configs.base import override
from experiments.runtime import build_state
from tests.helpers.library import CUB100


def tiny_cub(**overrides):
  """The cub100 config on 6 + 3 species at 16 px with a tiny CNN (keys overridable, dotted)."""
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


RESULT_KEYS = {"recall@1", "recall@2", "recall@4", "recall@8", "precision@1", "r_precision",
               "map@r", "nmi", "f1"}


def fast_default(**overrides):
  c = default.get_config()
  c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 12, 4, 6, 4
  c.compilation_cache_dir = ""
  c.plots = False
  c.num_devices = 1   # the suite runs with 8 fake devices; these batches are small
  for key, value in overrides.items():
    override(c, key, value)
  return c


def restored_latest(cfg, workdir):
  data = datasets.load_data(cfg)
  mgr = checkpoints.make_manager(os.path.join(workdir, "checkpoints"), max_to_keep=10)
  state = checkpoints.restore(mgr, build_state(cfg, data))
  mgr.close()
  return state


def saved_steps(workdir):
  mgr = checkpoints.make_manager(os.path.join(workdir, "checkpoints"), max_to_keep=100)
  steps = sorted(mgr.all_steps())
  mgr.close()
  return steps
