"""The embedded default run: HDML N-pair on scikit-learn's digits, on CPU.

    python -m experiments.main --config experiments/configs/default.py --workdir runs/default

Classes 0-4 train, 5-9 test (class-disjoint); a small MLP backbone; about
15 s on 2 CPU cores (14 s measured for the whole command, 9 s of training). The digits are 8x8 grey images, so this run is a
smoke test of the whole system, not a replication: the quickstart page of the docs
(docs/quickstart.md) gives what it reaches.
"""

from experiments.configs.base import get_base_config


def get_config():
  c = get_base_config()
  c.dataset.name = "digits"
  c.dataset.num_val_classes = 0
  c.model.backbone = "mlp"
  c.model.backbone_kwargs = {"hidden": (128,)}
  c.model.embedding_dim = 16
  c.model.generator_hidden = 128
  c.loss.name = "npair"
  c.hdml.beta = 1e3
  c.hdml.weight_decay = 1e-3
  c.hdml.stats_block_length = 16
  c.optimizer.metric_lr = 3e-4
  c.optimizer.metric_boundaries = ()
  c.optimizer.generator_lr = 1e-3
  c.batch_size = 10                    # P = 5 pairs: all five training classes
  c.num_steps = 600
  c.log_every = 20
  c.eval_every = 100
  c.checkpoint_every = 100
  c.eval.batch_size = 512
  c.selection.split = "none"
  return c
