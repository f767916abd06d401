"""Image preprocessing on host arrays (numpy), for training and testing.

Three recipes for photographs:

* ``"paper"`` (the reference): images are warped to ``resize`` (256) square,
  training takes a random ``crop`` (227) and a horizontal flip with p = 0.5,
  testing the centre crop; channels BGR, range 0-255 minus the Caffe mean
  ``[104, 117, 123]`` (B, G, R).
* ``"standard"``: RGB scaled to [0, 1], minus the ImageNet mean, divided by
  its standard deviation; same crop and flip rule.
* ``"lite"``: RGB, ``(x - 127) / 128`` on 0-255 pixels (what the ImageNet
  EfficientNet-Lite weights expect); same crop and flip rule.

Inputs are ``[B, H, W, 3] uint8`` RGB already resized to ``resize``.
:func:`preprocess` is :func:`crop_and_flip` (``uint8`` out) then :func:`normalize`
(``float32`` out); the two halves can run apart, the crop on the host and the
normalisation on the device (NumPy or JAX arrays alike, the same values).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CAFFE_MEAN_BGR",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RECIPES",
    "crop_and_flip",
    "normalize",
    "preprocess",
]


#: Caffe's ImageNet mean in BGR order, on 0-255 pixels (the ``"paper"`` recipe).
CAFFE_MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)
#: torchvision's ImageNet mean in RGB order, on 0-1 pixels (the ``"standard"`` recipe).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
#: torchvision's ImageNet standard deviation in RGB order (the ``"standard"`` recipe).
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
#: The preprocessing recipes :func:`preprocess` accepts.
RECIPES = ("paper", "standard", "lite", "unit")


def _crop(images: np.ndarray, crop: int, rng: np.random.Generator | None) -> np.ndarray:
  b, h, w, _ = images.shape
  if crop > h or crop > w:
    raise ValueError(f"crop size {crop} exceeds the image size {h}x{w}.")
  if rng is None:  # centre crop
    top, left = (h - crop) // 2, (w - crop) // 2
    return images[:, top:top + crop, left:left + crop]
  tops = rng.integers(0, h - crop + 1, size=b)
  lefts = rng.integers(0, w - crop + 1, size=b)
  flip = rng.random(b) < 0.5
  out = np.empty((b, crop, crop) + images.shape[3:], images.dtype)
  for i in range(b):   # one strided copy per image: the window, mirrored in the same pass when flipped
    window = images[i, tops[i]:tops[i] + crop, lefts[i]:lefts[i] + crop]
    out[i] = window[:, ::-1] if flip[i] else window
  return out


def _check(images, train: bool, rng) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"preprocess: images must be [B, H, W, C], got shape {images.shape}.")
  if train and rng is None:
    raise ValueError("preprocess: training needs an rng for the random crop and flip.")
  return images


def crop_and_flip(
    images: np.ndarray, *, crop: int, train: bool, rng: np.random.Generator | None = None
) -> np.ndarray:
  """``[B, H, W, C]`` -> ``[B, crop, crop, C]`` of the same dtype: a random crop and horizontal flip with
  p = 0.5 (``train=True``, which needs ``rng``), else the centre crop.

  The host half of :func:`preprocess`: ``preprocess(x, ...) == normalize(crop_and_flip(x, ...), recipe)``.
  """
  images = _check(images, train, rng)
  return _crop(images, crop, rng if train else None)


def normalize(x, recipe: str):
  """``[B, h, w, 3]`` pixels (``uint8``, or any dtype holding 0-255 values) -> ``float32`` model input, by
  ``recipe`` (:data:`RECIPES`).

  Takes NumPy arrays (returns NumPy) or JAX arrays (returns JAX, traceable: the normalisation can run on the
  device, inside a jitted step, from ``uint8`` batches). Both compute the same float32 operations in the same
  order, so they give the same values.
  """
  if recipe not in RECIPES:
    raise ValueError(f"normalize: recipe must be one of {RECIPES}, got {recipe!r}.")
  if isinstance(x, np.ndarray):
    if recipe == "paper":
      return np.subtract(x[..., ::-1], CAFFE_MEAN_BGR, dtype=np.float32)
    if recipe == "lite":
      out = np.subtract(x, np.float32(127.0), dtype=np.float32)
      out /= np.float32(128.0)
      return out
    out = np.divide(x, np.float32(255.0), dtype=np.float32)
    if recipe == "standard":
      out -= IMAGENET_MEAN
      out /= IMAGENET_STD
    return out
  import jax
  import jax.numpy as jnp

  # XLA turns a division by a broadcast value into a product with its reciprocal, which can differ from the
  # division in the last bit: the divisor is broadcast to the whole shape behind an optimisation barrier, so
  # the division stays an element-wise division, as NumPy's is.
  def divide(a, b):
    return a / jax.lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(b, jnp.float32), a.shape))

  x = x.astype(jnp.float32)
  if recipe == "paper":
    return x[..., ::-1] - CAFFE_MEAN_BGR
  if recipe == "lite":
    return divide(x - np.float32(127.0), np.float32(128.0))
  out = divide(x, np.float32(255.0))
  if recipe == "standard":
    out = divide(out - IMAGENET_MEAN, IMAGENET_STD)
  return out


def preprocess(
    images: np.ndarray, *, recipe: str, crop: int, train: bool, rng: np.random.Generator | None = None
) -> np.ndarray:
  """``[B, H, W, 3] uint8`` -> ``[B, crop, crop, 3] float32``.

  ``train=True`` needs ``rng`` (random crop and flip); ``False`` centre-crops.
  ``recipe="unit"`` only scales to [0, 1] (for small grey or synthetic data).
  Each recipe converts to float32 in its first operation (no separate float copy of the batch).
  """
  if recipe not in RECIPES:
    raise ValueError(f"preprocess: recipe must be one of {RECIPES}, got {recipe!r}.")
  return normalize(crop_and_flip(images, crop=crop, train=train, rng=rng), recipe)
