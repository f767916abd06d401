"""CUB-100 photographs on CPU, through the image-folder dataset.

    python -m experiments.main --config experiments/configs/cub100.py --workdir runs/cub100

Reads ``../shared/data/cub100/images`` (one sub-folder per species, sorted
by name): classes 0-49 train (the last 5 of them held out for model
selection), 50-99 test. Small images (warped to 72 px, random 64 px crops)
and the small CNN keep it CPU-sized. The same config trains on any folder of
class sub-folders:

    python -m experiments.main --config experiments/configs/cub100.py --workdir runs/mine \\
        --config.dataset.data_dir=/data/my_images \\
        --config.dataset.train_classes='(0, 80)' --config.dataset.test_classes='(80, 160)' \\
        --config.loss.name=triplet --config.batch_size=60 --config.hdml.enabled=False

Trained from scratch (no ImageNet weights), so the paper's CUB numbers (R@1
53.7 with a pretrained GoogLeNet) are not the target; the study page of the docs
(docs/study_cub100.md) gives what this configuration reaches.
"""

import os

from experiments.configs.base import get_base_config

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_config():
  c = get_base_config()
  c.dataset.name = "image_folder"
  c.dataset.data_dir = os.path.join(os.path.dirname(_REPO), "shared", "data", "cub100", "images")
  c.dataset.train_classes = (0, 50)
  c.dataset.test_classes = (50, 100)
  c.dataset.num_val_classes = 5
  c.dataset.resize = 72
  c.dataset.crop = 64
  c.dataset.preprocess = "standard"
  c.model.backbone = "small_cnn"
  c.model.backbone_kwargs = {"widths": (32, 64, 128, 256), "depth": 1}
  c.model.embedding_dim = 128
  c.model.generator_hidden = 512
  c.loss.name = "npair"
  c.hdml.beta = 5e3            # the reference's CUB value
  c.hdml.l2_reg = 1.5e-2
  c.hdml.weight_decay = 1e-4
  c.hdml.stats_block_length = 32
  c.optimizer.metric_lr = 3e-4
  c.optimizer.metric_boundaries = (1500, 1800)
  c.batch_size = 64            # P = 32 pairs
  c.num_steps = 2000
  c.log_every = 25
  c.eval_every = 250
  c.checkpoint_every = 250
  c.selection.split = "val"
  c.selection.metric = "recall@1"
  return c
