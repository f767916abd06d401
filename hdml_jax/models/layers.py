"""Layer defaults shared by every module: the reference's initialisers and BN.

``Dense`` and ``Conv`` (internal) are Flax's layers with Glorot-uniform weights and zero
biases, as in the reference; :func:`batch_norm` is BatchNorm with the reference's defaults.
Every convolution of the backbones runs through :func:`conv_general_dilated`, which computes a
1x1 stride-1 convolution as the matrix product it is.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "batch_norm",
    "conv_general_dilated",
]


def _ones(values) -> bool:
  return values is None or all(v == 1 for v in values)


def _pointwise(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
               feature_group_count, batch_group_count) -> bool:
  if lhs.ndim != 4 or rhs.shape[:2] != (1, 1) or feature_group_count != 1 or batch_group_count != 1:
    return False
  if not (_ones(window_strides) and _ones(lhs_dilation) and _ones(rhs_dilation)):
    return False
  if not (isinstance(padding, str) or all(tuple(p) == (0, 0) for p in padding)):
    return False
  nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  return jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
  """:func:`jax.lax.conv_general_dilated`, with a 1x1 stride-1 unpadded NHWC convolution (HWIO kernel) written as
  the matrix product it is: ``einsum("bhwc,cd->bhwd", x, kernel[0, 0])``.

  The same values (the same products and sums; XLA's CPU backend runs its convolution of a 1x1 kernel, and that
  convolution's gradients, 2-3x slower than the product: ``experiments.benchmarks.depthwise --pointwise``), and
  its gradients are the product's. Any other convolution is passed to :func:`jax.lax.conv_general_dilated`
  unchanged. Flax's ``nn.Conv`` takes it as ``conv_general_dilated=``.
  """
  if _pointwise(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                feature_group_count, batch_group_count):
    return jnp.einsum("bhwc,cd->bhwd", lhs, rhs[0, 0], precision=precision,
                      preferred_element_type=preferred_element_type)
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                      feature_group_count=feature_group_count,
                                      batch_group_count=batch_group_count, precision=precision,
                                      preferred_element_type=preferred_element_type)


#: BatchNorm's moving-average momentum: TensorFlow's default, which the reference inherits.
BN_MOMENTUM = 0.99
#: BatchNorm's epsilon: TensorFlow's default, which the reference inherits.
BN_EPSILON = 1e-3

# Glorot-uniform weights and zero biases, as in the reference.
Dense = functools.partial(
    nn.Dense, kernel_init=nn.initializers.glorot_uniform(), bias_init=nn.initializers.zeros
)
Conv = functools.partial(
    nn.Conv, kernel_init=nn.initializers.glorot_uniform(), bias_init=nn.initializers.zeros,
    conv_general_dilated=conv_general_dilated,
)


def batch_norm(train: bool, *, momentum: float, epsilon: float, name: str | None = None):
  """``nn.BatchNorm`` normalising with batch statistics when ``train``, with the moving ones otherwise."""
  return nn.BatchNorm(
      use_running_average=not train, momentum=momentum, epsilon=epsilon, name=name
  )
