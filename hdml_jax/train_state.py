"""The TrainState that holds everything HDML training changes.

One pytree: the parameters of every part (``backbone``, ``embedding`` =
BN1 + fc1, ``generator``, ``classifier``), BatchNorm statistics, the
optimizer states of the three parameter groups, the adaptive statistics
(J_avg, J_gen) and the step. The modules and the hyper-parameters are
static (not leaves), so checkpoints hold arrays only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from hdml_jax.inference import make_embed_fn
from hdml_jax.models import Classifier, EmbeddingHead, Generator, get_backbone
from hdml_jax.models.layers import BN_EPSILON, BN_MOMENTUM
from hdml_jax.statistics import AdaptiveStatistics, init_statistics

LOSSES = ("npair", "triplet", "contrastive")
BN1_UPDATES = ("both", "real")


@dataclasses.dataclass(frozen=True)
class HDMLConfig:
  """Static hyper-parameters of the train step (reference defaults).

  Attributes:
    loss: ``"npair"`` (batches ``[anchors; positives]``), ``"triplet"`` or
      ``"contrastive"`` (batches ``[anchors; positives; negatives]``; the
      contrastive pairs are (a, p) similar and (a, n) dissimilar).
    hdml: hardness-aware synthesis on; off is the plain baseline (one Adam on
      ``J_m``, no generator, no classifier).
    alpha: hardness temperature in ``exp(-alpha/J_avg)`` (reference 90).
    beta: ``w = exp(-beta/J_gen)`` (reference 1e4 for Cars196, 5e3 CUB).
    lam: the ``lambda`` of ``J_recon`` and ``J_soft`` (reference 0.5).
    softmax_factor: scale of ``J_soft`` (reference 1e4).
    l2_reg: N-pair embedding-norm penalty (reference 3e-3 for Cars196).
    weight_decay: ``wd`` of the ``wd * sum|w|^2 / 2`` term inside ``J_m``
      over the backbone and fc1 kernels and biases (reference 5e-3 Cars196).
    margin: the triplet margin (reference 1, squared distances, summed).
    contrastive_margin: the contrastive margin (mean over pairs).
    bn1_update: ``"both"`` (reference): the real and then the synthetic pass
      through BN1 both update its moving statistics, in that order;
      ``"real"``: only the real pass does. Both passes normalise with their
      own batch statistics either way.
    alpha_relative: 0 (reference): ``alpha`` is used as given. ``> 0``
      (a deviation from the reference, for transfer across batch, feature
      and model sizes): ``alpha = alpha_relative * J_avg_first``, the mean
      of ``w J_m`` over the first completed statistics block, so the
      hardness factor is ``exp(-alpha_relative * J_avg_first / J_avg)``:
      ``exp(-alpha_relative)`` when the block closes, lower as the loss
      falls; 1 (no synthesis hardness) until then. ``alpha`` is ignored.
    beta_relative: 0 (reference): ``beta`` as given. ``> 0`` (a deviation):
      ``beta = beta_relative * J_gen_first``, so
      ``w = exp(-beta_relative * J_gen_first / J_gen)`` starts at
      ``exp(-beta_relative)`` and falls as ``J_gen`` falls, whatever the
      batch and feature sizes that set ``J_gen``'s scale; ``w = 1`` until
      the first block completes. ``beta`` is ignored.
  """

  loss: str = "npair"
  hdml: bool = True
  alpha: float = 90.0
  beta: float = 1e4
  lam: float = 0.5
  softmax_factor: float = 1e4
  l2_reg: float = 3e-3
  weight_decay: float = 5e-3
  margin: float = 1.0
  contrastive_margin: float = 1.0
  bn1_update: str = "both"
  alpha_relative: float = 0.0
  beta_relative: float = 0.0

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"HDMLConfig.loss must be one of {LOSSES}, got {self.loss!r}.")
    if self.bn1_update not in BN1_UPDATES:
      raise ValueError(f"HDMLConfig.bn1_update must be one of {BN1_UPDATES}, got {self.bn1_update!r}.")
    if not 0.0 <= self.lam <= 1.0:
      raise ValueError(f"HDMLConfig.lam must lie in [0, 1], got {self.lam}.")
    for name in ("alpha", "beta", "alpha_relative", "beta_relative", "softmax_factor", "l2_reg", "weight_decay", "margin", "contrastive_margin"):
      if getattr(self, name) < 0:
        raise ValueError(f"HDMLConfig.{name} must be >= 0, got {getattr(self, name)}.")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Three Adam optimizers over disjoint parameter groups.

  Attributes:
    metric_lr: backbone + BN1 + fc1, trained on ``J_metric`` (``J_m`` for the
      baseline). Reference 7e-5.
    metric_boundaries, metric_decay: the metric learning rate is multiplied
      by ``metric_decay`` at each boundary step (reference: x0.5 at 5632 and
      6848).
    generator_lr: the generator, trained on ``J_gen`` (reference 1e-2).
    classifier_lr: the classifier, trained on ``J_cls`` (reference 1e-3).
    generator_boundaries, classifier_boundaries, generator_decay,
      classifier_decay: the same step schedule for the other two groups
      (constant in the reference).
    clip_value: if set, metric gradients are clipped element-wise to
      ``[-clip_value, clip_value]`` (the reference's SOP runs used 2).
  """

  metric_lr: float = 7e-5
  metric_boundaries: Sequence[int] = (5632, 6848)
  metric_decay: float = 0.5
  generator_lr: float = 1e-2
  classifier_lr: float = 1e-3
  generator_boundaries: Sequence[int] = ()
  generator_decay: float = 0.5
  classifier_boundaries: Sequence[int] = ()
  classifier_decay: float = 0.5
  clip_value: float | None = None

  def __post_init__(self):
    for group in ("metric", "generator", "classifier"):
      name = f"{group}_boundaries"
      object.__setattr__(self, name, tuple(int(b) for b in getattr(self, name)))
      if getattr(self, f"{group}_lr") < 0:
        raise ValueError(f"OptimizerConfig.{group}_lr must be >= 0, got {getattr(self, group + '_lr')}.")

  def schedule(self, group: str) -> optax.Schedule:
    """The step schedule of ``group`` (``metric``, ``generator`` or ``classifier``)."""
    lr, decay = getattr(self, f"{group}_lr"), getattr(self, f"{group}_decay")
    return optax.piecewise_constant_schedule(lr, {b: decay for b in getattr(self, f"{group}_boundaries")})


@dataclasses.dataclass(frozen=True)
class Networks:
  """The Linen modules of one model (static; parameters live in the state)."""

  backbone: nn.Module
  embedding: EmbeddingHead
  generator: Generator | None
  classifier: Classifier | None


GROUP_OF = {"backbone": "metric", "embedding": "metric", "generator": "generator", "classifier": "classifier"}


def make_optimizer(optimizer: OptimizerConfig, *, hdml: bool) -> optax.GradientTransformation:
  """``optax.multi_transform`` of one Adam per parameter group, each with its schedule."""
  metric = optax.adam(optimizer.schedule("metric"))
  if optimizer.clip_value is not None:
    metric = optax.chain(optax.clip(optimizer.clip_value), metric)
  transforms = {"metric": metric}
  if hdml:
    transforms["generator"] = optax.adam(optimizer.schedule("generator"))
    transforms["classifier"] = optax.adam(optimizer.schedule("classifier"))
  labels = lambda params: {k: jax.tree_util.tree_map(lambda _: GROUP_OF[k], v) for k, v in params.items()}
  return optax.multi_transform(transforms, labels)


class HDMLTrainState(train_state.TrainState):
  """``TrainState`` plus BatchNorm statistics and the adaptive statistics.

  ``apply_fn(params, batch_stats, images)`` is the inference embedding
  (BN in inference mode, L2-normalised), see
  :func:`hdml_jax.train_step.make_embed_fn`.
  """

  batch_stats: Any = None
  stats: AdaptiveStatistics | None = None
  networks: Networks | None = struct.field(pytree_node=False, default=None)
  config: HDMLConfig | None = struct.field(pytree_node=False, default=None)


def build_networks(
    *,
    feature_dim: int,
    embedding_dim: int,
    num_classes: int,
    backbone: str | nn.Module = "small_cnn",
    backbone_kwargs: dict | None = None,
    generator_hidden: int = 512,
    hdml: bool = True,
    bn_momentum: float = BN_MOMENTUM,
    bn_epsilon: float = BN_EPSILON,
) -> Networks:
  """The modules of one model; ``feature_dim`` must be the backbone's output width."""
  if isinstance(backbone, str):
    backbone = get_backbone(backbone, **(backbone_kwargs or {}))
  bn = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon)
  return Networks(
      backbone=backbone,
      embedding=EmbeddingHead(embedding_dim, **bn),
      generator=Generator(feature_dim, generator_hidden, **bn) if hdml else None,
      classifier=Classifier(num_classes) if hdml else None,
  )


def create_train_state(
    rng: jax.Array,
    *,
    image_shape: Sequence[int],
    num_classes: int,
    embedding_dim: int,
    backbone: str | nn.Module = "small_cnn",
    backbone_kwargs: dict | None = None,
    generator_hidden: int = 512,
    config: HDMLConfig = HDMLConfig(),
    optimizer: OptimizerConfig = OptimizerConfig(),
    stats_block_length: int = 64,
    stats_initial_value: float = 1e6,
    bn_momentum: float = BN_MOMENTUM,
    bn_epsilon: float = BN_EPSILON,
) -> HDMLTrainState:
  """Initialises every part and the three optimizers.

  Args:
    rng: a ``jax.random.key``.
    image_shape: one input's shape without the batch axis, e.g. ``(64, 64, 3)``.
    num_classes: training classes (the classifier's width).
    embedding_dim: ``E``.
    backbone: a registered name or a module; ``backbone_kwargs`` configure it.
    config, optimizer: static hyper-parameters.
    stats_block_length, stats_initial_value: the adaptive statistics.
  """
  if num_classes < 2:
    raise ValueError(f"create_train_state: need at least 2 classes, got {num_classes}.")
  if isinstance(backbone, str):
    backbone = get_backbone(backbone, **(backbone_kwargs or {}))
  image_shape = tuple(int(s) for s in image_shape)
  dummy = jnp.zeros((2,) + image_shape, jnp.float32)
  k_bb, k_emb, k_gen, k_cls = jax.random.split(rng, 4)
  bb_vars = backbone.init(k_bb, dummy, train=False)
  features = jax.eval_shape(lambda v: backbone.apply(v, dummy, train=False), bb_vars)
  if len(features.shape) != 2:
    raise ValueError(
        f"create_train_state: the backbone must return [B, F] features, got {features.shape}."
    )
  feature_dim = features.shape[1]
  networks = build_networks(
      feature_dim=feature_dim, embedding_dim=embedding_dim, num_classes=num_classes,
      backbone=backbone, generator_hidden=generator_hidden, hdml=config.hdml,
      bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
  )
  y = jnp.zeros((2, feature_dim), jnp.float32)
  emb_vars = networks.embedding.init(k_emb, y, train=False)
  # A backbone may have no parameters (identity on precomputed features).
  params = {"backbone": bb_vars.get("params", {}), "embedding": emb_vars["params"]}
  batch_stats = {"backbone": bb_vars.get("batch_stats", {}), "embedding": emb_vars["batch_stats"]}
  if config.hdml:
    gen_vars = networks.generator.init(k_gen, jnp.zeros((2, embedding_dim)), train=False)
    params["generator"] = gen_vars["params"]
    batch_stats["generator"] = gen_vars["batch_stats"]
    params["classifier"] = networks.classifier.init(k_cls, y)["params"]
  return HDMLTrainState.create(
      apply_fn=make_embed_fn(networks),
      params=params,
      tx=make_optimizer(optimizer, hdml=config.hdml),
      batch_stats=batch_stats,
      stats=init_statistics(block_length=stats_block_length, initial_value=stats_initial_value),
      networks=networks,
      config=config,
  )
