"""Small backbones for CPU work and tests (the paper's GoogLeNet is separate).

Each is registered by name and returns pooled ``[B, F]`` features from
``[B, H, W, C]`` images (``[B, D]`` vectors are accepted by ``mlp``/``tiny``).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hdml_jax.models.layers import BN_EPSILON, BN_MOMENTUM, Conv, Dense
from hdml_jax.models.registry import register_backbone

__all__ = [
    "MLPBackbone",
    "SmallConvNet",
    "TinyBackbone",
]


@register_backbone("small_cnn")
class SmallConvNet(nn.Module):
  """A VGG-style network sized for CPU work, for 28 to 128 px inputs.

  ``len(widths)`` stages; each has ``depth`` 3x3 convolutions (no bias: the
  BatchNorm that follows would cancel it) with BatchNorm and ReLU, then a 2x2 max pool (skipped once the map is 1x1). Global
  average pooling gives ``F = widths[-1]`` non-negative features, like the
  pooled GoogLeNet feature.
  """

  widths: Sequence[int] = (32, 64, 128, 256)
  depth: int = 1
  bn_momentum: float = BN_MOMENTUM
  bn_epsilon: float = BN_EPSILON
  dtype: Any = jnp.float32   # compute dtype (bfloat16 on accelerators); parameters stay float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    if images.ndim != 4:
      raise ValueError(
          f"SmallConvNet: images must be [B, H, W, C], got shape {tuple(images.shape)}."
      )
    if self.depth < 1 or not self.widths:
      raise ValueError(f"SmallConvNet: need depth >= 1 and widths, got {self.depth}, {self.widths}.")
    x = images.astype(self.dtype)
    for s, width in enumerate(self.widths):
      for d in range(self.depth):
        x = Conv(width, (3, 3), use_bias=False, dtype=self.dtype, name=f"conv{s}_{d}")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                         epsilon=self.bn_epsilon, dtype=self.dtype, name=f"bn{s}_{d}")(x)
        x = nn.relu(x)
      if x.shape[1] > 1 and x.shape[2] > 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


@register_backbone("mlp")
class MLPBackbone(nn.Module):
  """Flatten then ``Dense-ReLU`` layers: for small vector-like inputs (digits)."""

  hidden: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    del train
    x = images.reshape(images.shape[0], -1)
    for i, width in enumerate(self.hidden):
      x = nn.relu(Dense(width, name=f"fc{i}")(x))
    return x


@register_backbone("tiny")
class TinyBackbone(nn.Module):
  """One ``Dense-ReLU`` layer on flattened inputs: for fast tests."""

  features: int = 16

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    del train
    return nn.relu(Dense(self.features, name="fc")(images.reshape(images.shape[0], -1)))


@register_backbone("identity")
class IdentityBackbone(nn.Module):
  """No parameters: the inputs ``[B, F]`` are the features (precomputed by a frozen backbone)."""

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    del train
    if images.ndim != 2:
      raise ValueError(f"IdentityBackbone: inputs must be [B, F] features, got shape {tuple(images.shape)}.")
    return images
