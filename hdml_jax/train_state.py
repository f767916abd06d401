"""The TrainState that holds everything HDML training changes.

One pytree: the parameters of every part (``backbone``, ``embedding`` =
BN1 + fc1, ``generator``, ``classifier``), BatchNorm statistics, the
optimizer states of the three parameter groups, the adaptive statistics
(J_avg, J_gen) and the step. The modules and the hyper-parameters are
static (not leaves), so checkpoints hold arrays only.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
from flax import struct
from flax.training import train_state

from hdml_jax.config import HDMLConfig, OptimizerConfig
from hdml_jax.inference import make_embed_fn
from hdml_jax.losses import CrossBatchMemory, loss_spec
from hdml_jax.models import get_backbone
from hdml_jax.models.layers import BN_EPSILON, BN_MOMENTUM
from hdml_jax.networks import Networks, build_head, init_backbone, init_head_variables
from hdml_jax.optimizers import make_optimizer
from hdml_jax.statistics import AdaptiveStatistics, init_statistics

__all__ = ["HDMLTrainState", "create_train_state"]


class HDMLTrainState(train_state.TrainState):
  """``TrainState`` plus BatchNorm statistics and the adaptive statistics.

  ``apply_fn(params, batch_stats, images)`` is the inference embedding
  (BN in inference mode, L2-normalised), see
  :func:`hdml_jax.inference.make_embed_fn`. ``memory`` is a library pair
  loss's cross-batch memory (a :class:`~hdml_jax.losses.CrossBatchMemory`), or None.
  """

  batch_stats: Any = None
  stats: AdaptiveStatistics | None = None
  memory: CrossBatchMemory | None = None
  networks: Networks | None = struct.field(pytree_node=False, default=None)
  config: HDMLConfig | None = struct.field(pytree_node=False, default=None)


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
    loss_params: dict | None = None,
    memory: CrossBatchMemory | None = None,
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
    loss_params: the parameters the loss owns (a proxy loss's proxies,
      :func:`hdml_jax.losses.init_loss_params`), kept as
      ``params["loss"]`` with their own optimizer group; needs ``config.hdml``
      off.
    memory: a cross-batch memory (:func:`hdml_jax.losses.init_memory`)
      for a label-based loss in :func:`hdml_jax.train_step.make_train_step`; needs
      ``config.hdml`` off and ``memory.embeddings`` of width ``embedding_dim``.
  """
  if num_classes < 2:
    raise ValueError(f"create_train_state: need at least 2 classes, got {num_classes}.")
  loss_spec(config.loss)   # an unknown loss is refused here, naming the choices
  if isinstance(backbone, str):
    backbone = get_backbone(backbone, **(backbone_kwargs or {}))
  k_bb, k_emb, k_gen, k_cls = jax.random.split(rng, 4)
  bb_vars, feature_dim = init_backbone(backbone, k_bb, image_shape, where="create_train_state")
  networks = Networks(backbone=backbone, head=build_head(
      feature_dim=feature_dim, embedding_dim=embedding_dim, num_classes=num_classes, config=config,
      generator_hidden=generator_hidden, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon))
  head_params, head_stats = init_head_variables(networks.head, (k_emb, k_gen, k_cls), feature_dim=feature_dim)
  # A backbone may have no parameters (identity on precomputed features).
  params = {"backbone": bb_vars.get("params", {}), **head_params}
  if loss_params is not None:
    if config.hdml:
      raise ValueError("create_train_state: loss_params belong to a library loss, which trains without HDML's "
                       "synthesis (config.hdml=False).")
    params["loss"] = loss_params
  if memory is not None:
    if config.hdml:
      raise ValueError("create_train_state: a cross-batch memory serves a library pair loss, which trains without "
                       "HDML's synthesis (config.hdml=False).")
    if memory.embeddings.shape[1] != embedding_dim:
      raise ValueError(f"create_train_state: the memory holds embeddings of width {memory.embeddings.shape[1]}, "
                       f"but embedding_dim is {embedding_dim}.")
  batch_stats = {"backbone": bb_vars.get("batch_stats", {}), **head_stats}
  return HDMLTrainState.create(
      apply_fn=make_embed_fn(networks),
      params=params,
      tx=make_optimizer(optimizer, hdml=config.hdml, loss_params=loss_params is not None),
      batch_stats=batch_stats,
      stats=init_statistics(block_length=stats_block_length, initial_value=stats_initial_value),
      memory=memory,
      networks=networks,
      config=config,
  )
