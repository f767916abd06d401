"""Inference: the L2-normalised embedding of a trained model, in fixed-size batches.

Below the train state (whose ``apply_fn`` is :func:`make_embed_fn`): it
needs the modules only, and any state with ``apply_fn``, ``params`` and
``batch_stats``.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import numpy as np

from hdml_jax.distances import l2_normalize
from hdml_jax.networks import Networks

__all__ = ["embed_in_batches", "make_embed_fn"]


class EmbeddingState(Protocol):
  """What :func:`embed_in_batches` reads of a state (an ``HDMLTrainState`` has it)."""

  apply_fn: Any
  params: Any
  batch_stats: Any


def make_embed_fn(networks: Networks, *, normalize: bool = True):
  """Jitted inference embedding ``(params, batch_stats, images) -> [B, E]``.

  BatchNorm runs in inference mode; the output is L2-normalised unless
  ``normalize=False``.
  """

  @jax.jit
  def embed(params, batch_stats, images):
    y = networks.backbone.apply(
        {"params": params["backbone"], "batch_stats": batch_stats["backbone"]}, images, train=False)
    z = networks.embedding.apply(
        {"params": params["embedding"], "batch_stats": batch_stats["embedding"]}, y, train=False)
    return l2_normalize(z) if normalize else z

  return embed


def embed_in_batches(state: EmbeddingState, images, *, batch_size: int = 256) -> np.ndarray:
  """Embeds a host array of images in fixed-size batches (one compilation).

  The last batch is padded to ``batch_size`` and the padding dropped.
  """
  images = np.asarray(images)
  n = images.shape[0]
  if n == 0:
    raise ValueError("embed_in_batches: no images to embed.")
  out = []
  for start in range(0, n, batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - chunk.shape[0]
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    out.append(np.asarray(state.apply_fn(state.params, state.batch_stats, chunk))[:batch_size - pad])
  return np.concatenate(out)
