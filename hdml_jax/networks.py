"""The modules of one HDML model and their initialisation, shared by the train state and the own-loop head.

A model is a backbone (images -> ``[B, F]`` features) and HDML's head on top
of it (:class:`HDMLHead`: the embedding head BN1 + fc1, and with HDML the
generator and the classifier, with the static hyper-parameters). Modules are
static; their variables are returned to the caller, who keeps them in a
train state or in its own loop.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hdml_jax.config import HDMLConfig
from hdml_jax.models import Classifier, EmbeddingHead, Generator, get_backbone
from hdml_jax.models.layers import BN_EPSILON, BN_MOMENTUM

__all__ = ["HDMLHead", "Networks", "build_head", "build_networks", "init_backbone", "init_head_variables"]


@dataclasses.dataclass(frozen=True)
class HDMLHead:
  """The modules HDML adds on top of a backbone (static), and its hyper-parameters.

  Attributes:
    embedding: BN1 + fc1 (``[B, F] -> [B, E]``), which also re-encodes the
      synthetic features.
    generator: ``[N, E] -> [N, F]``; ``None`` for the baseline.
    classifier: ``[B, F] -> [B, C]``; ``None`` for the baseline.
    config: the static hyper-parameters.
  """

  embedding: EmbeddingHead
  generator: Generator | None
  classifier: Classifier | None
  config: HDMLConfig


@dataclasses.dataclass(frozen=True)
class Networks:
  """The Linen modules of one model (static; parameters live in the state): a backbone and a head."""

  backbone: nn.Module
  head: HDMLHead

  @property
  def embedding(self) -> EmbeddingHead:
    return self.head.embedding

  @property
  def generator(self) -> Generator | None:
    return self.head.generator

  @property
  def classifier(self) -> Classifier | None:
    return self.head.classifier


def build_head(
    *,
    feature_dim: int,
    embedding_dim: int,
    num_classes: int,
    config: HDMLConfig = HDMLConfig(),
    generator_hidden: int = 512,
    bn_momentum: float = BN_MOMENTUM,
    bn_epsilon: float = BN_EPSILON,
) -> HDMLHead:
  """The head's modules for ``feature_dim``-wide backbone features (generator and classifier with HDML)."""
  if num_classes < 2:
    raise ValueError(f"build_head: need at least 2 classes, got {num_classes}.")
  bn = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon)
  return HDMLHead(
      embedding=EmbeddingHead(embedding_dim, **bn),
      generator=Generator(feature_dim, generator_hidden, **bn) if config.hdml else None,
      classifier=Classifier(num_classes) if config.hdml else None,
      config=config)


def init_head_variables(head: HDMLHead, keys: Sequence[jax.Array], *, feature_dim: int) -> tuple[dict, dict]:
  """``(params, batch_stats)`` of the head, from three keys (embedding, generator, classifier).

  ``params`` is keyed ``embedding`` and, with HDML, ``generator`` and
  ``classifier``; ``batch_stats`` ``embedding`` (and ``generator``).
  """
  k_emb, k_gen, k_cls = keys
  y = jnp.zeros((2, feature_dim), jnp.float32)
  emb_vars = head.embedding.init(k_emb, y, train=False)
  params = {"embedding": emb_vars["params"]}
  batch_stats = {"embedding": emb_vars["batch_stats"]}
  if head.config.hdml:
    gen_vars = head.generator.init(k_gen, jnp.zeros((2, head.embedding.embedding_dim)), train=False)
    params["generator"] = gen_vars["params"]
    batch_stats["generator"] = gen_vars["batch_stats"]
    params["classifier"] = head.classifier.init(k_cls, y)["params"]
  return params, batch_stats


def init_backbone(backbone: nn.Module, rng: jax.Array, image_shape: Sequence[int], *,
                  where: str = "init_backbone") -> tuple[dict, int]:
  """``(variables, feature_dim)``: the backbone initialised (in inference mode) on ``image_shape`` inputs.

  Raises ``ValueError`` naming ``where`` unless the backbone returns
  ``[B, F]`` features.
  """
  dummy = jnp.zeros((2,) + tuple(int(s) for s in image_shape), jnp.float32)
  variables = backbone.init(rng, dummy, train=False)
  features = jax.eval_shape(lambda v: backbone.apply(v, dummy, train=False), variables)
  if len(features.shape) != 2:
    raise ValueError(f"{where}: the backbone must return [B, F] features, got {features.shape}.")
  return variables, int(features.shape[1])


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
  """The modules of one model; ``feature_dim`` must be the backbone's output width.

  The head carries ``HDMLConfig(hdml=hdml)``; :func:`build_head` takes a whole config.
  """
  if isinstance(backbone, str):
    backbone = get_backbone(backbone, **(backbone_kwargs or {}))
  return Networks(backbone=backbone, head=build_head(
      feature_dim=feature_dim, embedding_dim=embedding_dim, num_classes=num_classes, config=HDMLConfig(hdml=hdml),
      generator_hidden=generator_hidden, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon))
