"""Flax Linen modules: backbones (by name) and HDML's heads."""

from hdml_jax.models import backbones as _backbones  # noqa: F401  (registers the backbones)
from hdml_jax.models.heads import Classifier, EmbeddingHead, Generator
from hdml_jax.models.layers import BN_EPSILON, BN_MOMENTUM
from hdml_jax.models.registry import available_backbones, get_backbone, register_backbone

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "Classifier",
    "EmbeddingHead",
    "Generator",
    "available_backbones",
    "get_backbone",
    "register_backbone",
]

from hdml_jax.models import googlenet as _googlenet  # noqa: E402, F401  (registers googlenet, googlenet_bn)
