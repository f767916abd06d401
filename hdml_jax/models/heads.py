"""HDML's heads: the embedding head, the generator and the classifier.

.. code-block:: text

   y [B, F] -- BN1 -- fc1 --> z [B, E]               EmbeddingHead (the "encoder")
   z [N, E] -- fc(512) -- ReLU -- BN_g -- fc(F) --> y~ [N, F]     Generator
   y [B, F] -- fc(C) --> logits [B, C]                Classifier
"""

from __future__ import annotations

import flax.linen as nn
import jax

from hdml_jax.models.layers import BN_EPSILON, BN_MOMENTUM, Dense, batch_norm

__all__ = [
    "Classifier",
    "EmbeddingHead",
    "Generator",
]


class EmbeddingHead(nn.Module):
  """BN1 then fc1: ``[N, F] -> [N, E]``, no normalisation in training.

  The same module (shared weights) re-encodes the generator's synthetic
  features. Inference callers L2-normalise its output.
  """

  embedding_dim: int
  bn_momentum: float = BN_MOMENTUM
  bn_epsilon: float = BN_EPSILON

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
    x = batch_norm(train, momentum=self.bn_momentum, epsilon=self.bn_epsilon, name="bn1")(features)
    return Dense(self.embedding_dim, name="fc1")(x)


class Generator(nn.Module):
  """Decodes embeddings to feature space: ``[N, E] -> [N, F]``.

  fc(E -> hidden) - ReLU - BN_g - fc(hidden -> F); BN_g normalises over all
  rows of the call together (real and synthetic).
  """

  feature_dim: int
  hidden_dim: int = 512
  bn_momentum: float = BN_MOMENTUM
  bn_epsilon: float = BN_EPSILON

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
    x = nn.relu(Dense(self.hidden_dim, name="fc1")(z))
    x = batch_norm(train, momentum=self.bn_momentum, epsilon=self.bn_epsilon, name="bn")(x)
    return Dense(self.feature_dim, name="fc2")(x)


class Classifier(nn.Module):
  """Softmax classifier over the training classes: ``[N, F] -> [N, C]``."""

  num_classes: int

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    return Dense(self.num_classes, name="fc")(features)
