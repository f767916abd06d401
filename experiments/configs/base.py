"""Every key a run reads, with the reference's values where it has them.

Config files start from ``get_base_config()`` and change what differs; the
returned ConfigDict is locked, so a mistyped key (``--config.hdml.alfa``)
fails instead of being ignored.
"""

import ml_collections

from experiments.config_mapping import HDML_ELSEWHERE, HDML_KEYS, config_section
from experiments.overrides import apply_overrides
from hdml_jax.config import HDMLConfig, OptimizerConfig


def override(cfg: ml_collections.ConfigDict, key: str, value) -> None:
  """Sets the dotted ``key`` (``"dataset.resize"``) as ``--config.<key>`` would (one setter:
  :func:`experiments.overrides.apply_overrides`); a missing key raises ``KeyError`` naming the closest ones."""
  apply_overrides(cfg, {key: value}, parse_text=False)


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "digits"            # digits | image_folder | cub | cars | sop | tfds_image_folder
  c.dataset.data_dir = ""              # image_folder: root/<class>/<images>; cub/cars/sop: the manual_dir
  c.dataset.tfds_data_dir = "~/tensorflow_datasets"   # where the TFDS builders write array_record
  c.dataset.num_train_classes = 0      # tfds_image_folder: the first N classes train (0: half)
  c.dataset.train_classes = (0, 0)     # image_folder: [start, stop) of the sorted classes
  c.dataset.test_classes = (0, 0)
  c.dataset.num_val_classes = 0        # held out from the END of the training classes
  c.dataset.resize = 256               # images are warped to resize x resize
  c.dataset.crop = 227                 # then cropped (random for training, centre for testing)
  c.dataset.preprocess = "paper"       # paper | standard | lite | unit
  c.dataset.skip_unreadable = False
  c.dataset.decoded_cache_gb = 8.0     # TFDS datasets: decode each split once into a uint8 cache beside the
                                       # TFDS files when it takes at most this many GiB (CUB 2.3, Cars196 3.2,
                                       # SOP 23 at 256 px); 0 decodes JPEGs per batch
  c.dataset.normalize_on_device = True  # photos: uint8 crops go to the device and are normalised there
                                        # (the same values as on the host; False normalises on the host)

  c.model = ml_collections.ConfigDict()
  c.model.backbone = "small_cnn"
  c.model.backbone_kwargs = ml_collections.ConfigDict({"widths": (32, 64, 128, 256), "depth": 1})
  c.model.embedding_dim = 128
  c.model.generator_hidden = 512
  c.model.pretrained = ""              # a params file from experiments.convert_weights, or a weight source's
                                       # name (efficientnet_lite0, ...: the installed package's, converted)

  c.features = ml_collections.ConfigDict()   # the frozen-backbone regime (experiments/features.py)
  c.features.backbone = ""             # set (e.g. efficientnet_lite0): train on its cached pooled features,
                                       # with model.backbone="identity"
  c.features.pretrained = ""           # its weights: a converted file or a weight source's name
  c.features.backbone_kwargs = ml_collections.ConfigDict()   # the part of it that runs (default: all, pooled),
                                       # e.g. {"last_block": 14}: its activations there are cached, and
                                       # model.backbone (the same, from {"first_block": 15}) fine-tunes the rest
  c.features.views = 8                 # augmented views of each training photo (plus its centre view)
  c.features.batch_size = 64           # photos per batch when computing the features
  c.features.cache_dir = "~/.cache/hdml_jax/features"

  # The hyper-parameters of the train step and its optimizers: one key per field of
  # hdml_jax.config.HDMLConfig (hdml.enabled is its `hdml`; its `loss` is loss.name) and
  # OptimizerConfig, with their defaults (the reference's values) and their documentation there.
  c.hdml = config_section(HDMLConfig, renames=HDML_KEYS, exclude=tuple(HDML_ELSEWHERE))
  c.hdml.stats_block_length = 64       # the adaptive statistics' block (create_train_state)
  c.hdml.stats_initial_value = 1e6
  c.optimizer = config_section(OptimizerConfig)

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "npair"                # the method's loss, any of hdml_jax.losses.LOSS_NAMES: the reference's
                                       # npair | triplet | contrastive, or a label-based or proxy loss
                                       # (multi_similarity, proxy_anchor, ...); hdml.enabled adds HDML's
                                       # synthesis (npair, triplet, contrastive, multi_similarity)
  c.loss.m_per_class = 4               # losses on M-per-class batches (all but npair, triplet, contrastive):
                                       # images per class in a batch (label-based losses need >= 2)
  c.loss.kwargs = ml_collections.ConfigDict()   # the label-based and proxy losses: hyper-parameters replacing
                                       # the paper's defaults, e.g. "{'alpha': 1.0}"
                                       # (hdml_jax.losses.hyper_parameters lists them); the reference tuple
                                       # losses read hdml.l2_reg, hdml.margin, hdml.contrastive_margin
  c.loss.xbm_size = 0                  # label-based losses: rows of a cross-batch memory (XBM; 0: none,
                                       # else >= batch_size); each batch is also compared with the memory
  c.loss.xbm_start = 0                 # the step from which the memory is filled and its loss added
  c.loss.xbm_weight = 1.0              # the memory loss's weight beside the batch loss

  c.batch_size = 128                   # global: 2P for N-pair, 3T for triplet/contrastive, a multiple of
                                       # loss.m_per_class for the other losses
  c.epoch_sampler = False              # N-pair: visit every training image once per epoch
  c.num_steps = 8000
  c.seed = 0
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  c.data_threads = 4                   # grain threads assembling batches
  c.prefetch = 4

  c.pretrain = ml_collections.ConfigDict()   # experiments.pretrain only
  c.pretrain.lr = 1e-3                 # Adam on softmax cross-entropy; metric_boundaries/decay apply

  c.selection = ml_collections.ConfigDict()
  c.selection.split = "val"            # val (held-out training classes) | test (reference rule) | none
  c.selection.metric = "recall@1"

  c.eval = ml_collections.ConfigDict()
  c.eval.recall_ks = (1, 2, 4, 8)
  c.eval.batch_size = 256
  c.eval.kmeans_backend = "jax"        # jax | sklearn
  c.eval.kmeans_protocol = "auto"      # NMI/F1 clustering: reference (greedy k-means++, n_init 10, as the
                                       # paper's scikit-learn KMeans) | fast (one k-means++ run) | auto
                                       # (reference up to k = 1024 classes, fast above: SOP)
  c.eval.test_curves = False           # also log test Recall@K / MAP@R at every evaluation
                                       # (learning curves; never used for selection)

  c.num_devices = 0                    # 0: all devices of all processes
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""   # set (host:port) for multi-host runs
  c.distributed.num_processes = 1
  c.distributed.process_id = 0

  c.compilation_cache_dir = "~/.cache/hdml_jax/xla"   # "" disables the persistent cache
  c.plots = True
  return c
