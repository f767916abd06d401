"""Layer defaults shared by every module: the reference's initialisers and BN."""

from __future__ import annotations

import functools

import flax.linen as nn

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "Conv",
    "Dense",
    "batch_norm",
]


# TensorFlow's BatchNorm defaults, which the reference inherits (Flax's differ).
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3

# Glorot-uniform weights and zero biases, as in the reference.
Dense = functools.partial(
    nn.Dense, kernel_init=nn.initializers.glorot_uniform(), bias_init=nn.initializers.zeros
)
Conv = functools.partial(
    nn.Conv, kernel_init=nn.initializers.glorot_uniform(), bias_init=nn.initializers.zeros
)


def batch_norm(train: bool, *, momentum: float, epsilon: float, name: str | None = None):
  return nn.BatchNorm(
      use_running_average=not train, momentum=momentum, epsilon=epsilon, name=name
  )
