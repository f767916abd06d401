"""Flax Linen modules: backbones (by name) and HDML's heads."""

from hdml_jax.models import backbones as _backbones  # noqa: F401  (registers the backbones)
from hdml_jax.models.heads import Classifier, EmbeddingHead, Generator
from hdml_jax.models.layers import BN_EPSILON, BN_MOMENTUM
from hdml_jax.models.registry import (
    WeightSource,
    available_backbones,
    convert_weight_source,
    get_backbone,
    get_weight_source,
    register_backbone,
    register_weight_source,
    weight_sources,
)

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "Classifier",
    "EmbeddingHead",
    "Generator",
    "WeightSource",
    "available_backbones",
    "convert_weight_source",
    "get_backbone",
    "get_weight_source",
    "register_backbone",
    "register_weight_source",
    "weight_sources",
]

from hdml_jax.models import efficientnet as _efficientnet  # noqa: E402, F401  (registers efficientnet_lite0/1/2)
from hdml_jax.models import googlenet as _googlenet  # noqa: E402, F401  (registers googlenet, googlenet_bn)
