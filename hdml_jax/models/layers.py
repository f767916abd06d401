"""Layer defaults shared by every module: the reference's initialisers and BN.

``Dense`` and ``Conv`` (internal) are Flax's layers with Glorot-uniform weights and zero
biases, as in the reference; :func:`batch_norm` is BatchNorm with the reference's defaults.
"""

from __future__ import annotations

import functools

import flax.linen as nn

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "batch_norm",
]


#: BatchNorm's moving-average momentum: TensorFlow's default, which the reference inherits.
BN_MOMENTUM = 0.99
#: BatchNorm's epsilon: TensorFlow's default, which the reference inherits.
BN_EPSILON = 1e-3

# Glorot-uniform weights and zero biases, as in the reference.
Dense = functools.partial(
    nn.Dense, kernel_init=nn.initializers.glorot_uniform(), bias_init=nn.initializers.zeros
)
Conv = functools.partial(
    nn.Conv, kernel_init=nn.initializers.glorot_uniform(), bias_init=nn.initializers.zeros
)


def batch_norm(train: bool, *, momentum: float, epsilon: float, name: str | None = None):
  """``nn.BatchNorm`` normalising with batch statistics when ``train``, with the moving ones otherwise."""
  return nn.BatchNorm(
      use_running_average=not train, momentum=momentum, epsilon=epsilon, name=name
  )
