"""GoogLeNet (Inception v1) backbones: the paper-faithful one and torchvision's.

``googlenet`` follows the HDML reference (Caffe BVLC GoogLeNet as ported to
TensorFlow): no BatchNorm, no dropout, no auxiliary heads; LRN after pool1
and conv2 with depth radius 5, alpha 1e-4, beta 0.75, bias 1 (``lrn="tf"``),
or Caffe's exact LRN (window 5, alpha divided by the window; ``lrn="caffe"``);
Caffe's ceil-mode stride-2 max pools emulated by one row and column of zero
padding at the bottom/right (227 -> 114 -> 57 -> 28 -> 14 -> 7 -> 1). Input:
``[B, 227, 227, 3]`` BGR 0-255 minus the Caffe mean; output: the ``[B,
1024]`` 7x7-average-pooled feature.

Parameter paths mirror the Caffe blob names: blob ``inception_3a/3x3_reduce``
is ``params["inception_3a"]["3x3_reduce"]["kernel"]`` (HWIO) and
``inception_3a/3x3_reduce_bias`` its ``["bias"]``.

``googlenet_bn`` matches torchvision's ``GoogLeNet`` (BatchNorm after every
convolution, no LRN, the "5x5" branch built from 3x3 convolutions, a 2x2
pool4, ImageNet-normalised RGB input with torchvision's optional
``transform_input``), so torchvision weights load into it.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hdml_jax.models.layers import Conv
from hdml_jax.models.registry import get_backbone, register_backbone

__all__ = [
    "INCEPTION_SPECS",
    "STAGES",
    "BasicConv",
    "GoogLeNet",
    "GoogLeNetBN",
    "Inception",
    "InceptionBN",
    "ceil_max_pool",
    "lrn",
    "max_pool_3x3",
]


# name: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj)
#: Each inception block's widths: 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection.
INCEPTION_SPECS = {
    "inception_3a": (64, 96, 128, 16, 32, 32),
    "inception_3b": (128, 128, 192, 32, 96, 64),
    "inception_4a": (192, 96, 208, 16, 48, 64),
    "inception_4b": (160, 112, 224, 24, 64, 64),
    "inception_4c": (128, 128, 256, 24, 64, 64),
    "inception_4d": (112, 144, 288, 32, 64, 64),
    "inception_4e": (256, 160, 320, 32, 128, 128),
    "inception_5a": (256, 160, 320, 32, 128, 128),
    "inception_5b": (384, 192, 384, 48, 128, 128),
}
#: The inception blocks of each stage, in order (a max-pool between stages).
STAGES = (("inception_3a", "inception_3b"),
          ("inception_4a", "inception_4b", "inception_4c", "inception_4d", "inception_4e"),
          ("inception_5a", "inception_5b"))


def lrn(x: jax.Array, *, mode: str = "tf") -> jax.Array:
  """Local response normalisation across channels (NHWC).

  ``"tf"``: ``x / (1 + 1e-4 * sum_{|c'-c| <= 5} x_c'^2)^0.75`` (the
  reference's ``tf.nn.local_response_normalization(depth_radius=5, ...)``).
  ``"caffe"``: window 5 (radius 2) and ``alpha / 5``, Caffe's ACROSS_CHANNELS
  LRN.
  """
  radius, alpha = {"tf": (5, 1e-4), "caffe": (2, 1e-4 / 5)}[mode]
  sq = jnp.square(x)
  padded = jnp.pad(sq, [(0, 0)] * (x.ndim - 1) + [(radius, radius)])
  window = jax.lax.reduce_window(padded, 0.0, jax.lax.add, (1,) * (x.ndim - 1) + (2 * radius + 1,),
                                 (1,) * x.ndim, "VALID")
  return x / jnp.power(1.0 + alpha * window, 0.75)


def _max_pool_3x3(x: jax.Array) -> jax.Array:
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))


def max_pool_3x3(x: jax.Array) -> jax.Array:
  """The inception modules' 3x3 stride-1 max pool of ``[B, H, W, C]``, padded by one row and column of -inf on
  each side: ``nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))``, the same values.

  Its gradient is written as nine shifted comparisons of the padded input with the output: each window's
  output gradient goes to the first of its positions, in row-major order, that holds the window's maximum,
  as XLA's ``select_and_scatter`` routes it (the same gradient, up to the order in which a position's
  contributions are summed), forward + backward 2.5x faster than it on a CPU (batch 32, 28x28x256;
  ``experiments.benchmarks.depthwise --max_pool``).
  Reverse mode only (a ``custom_vjp``): ``jax.jvp`` through it is refused by JAX.

  >>> x = jnp.array([[1., 5., 5.], [0., 2., 1.], [3., 0., 4.]])[None, :, :, None]
  >>> max_pool_3x3(x)[0, :, :, 0]
  Array([[5., 5., 5.],
         [5., 5., 5.],
         [3., 4., 4.]], dtype=float32)
  >>> jax.grad(lambda x: max_pool_3x3(x).sum())(x)[0, :, :, 0]   # ties go to the first 5
  Array([[0., 6., 0.],
         [0., 0., 0.],
         [1., 0., 2.]], dtype=float32)
  """
  return _shifted_max_pool_3x3(x)


@jax.custom_vjp
def _shifted_max_pool_3x3(x):
  return _max_pool_3x3(x)


def _max_pool_3x3_fwd(x):
  y = _max_pool_3x3(x)
  return y, (x, y)


def _max_pool_3x3_bwd(residuals, g):
  x, y = residuals
  h, w = x.shape[1], x.shape[2]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  taken = jnp.zeros(y.shape, bool)   # windows whose maximum has been found
  grad = jnp.zeros(padded.shape, g.dtype)
  zero = jnp.zeros((), g.dtype)
  for i in range(3):
    for j in range(3):   # row-major: the first maximum of a window takes its gradient
      hit = (padded[:, i:i + h, j:j + w] == y) & ~taken
      taken = taken | hit
      grad = grad.at[:, i:i + h, j:j + w].add(jnp.where(hit, g, zero))
  return (grad[:, 1:1 + h, 1:1 + w],)


_shifted_max_pool_3x3.defvjp(_max_pool_3x3_fwd, _max_pool_3x3_bwd)


def ceil_max_pool(x: jax.Array, window: int = 3, stride: int = 2) -> jax.Array:
  """Caffe ceil-mode max pool for non-negative inputs: zero-pad bottom/right by one."""
  x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding="VALID")


class _Conv(nn.Module):
  """A named group of ReLU convolutions (``conv1``, ``conv2``)."""

  layers: Sequence[tuple]   # (name, features, kernel, stride, pad)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for name, feat, k, s, p in self.layers:
      x = nn.relu(Conv(feat, (k, k), strides=(s, s), padding=((p, p), (p, p)), dtype=self.dtype,
                       name=name)(x))
    return x


class _PoolNorm(nn.Module):
  """Ceil-mode max pool, then optionally LRN (``pool1`` = pool + norm1)."""

  lrn_mode: str | None

  @nn.compact
  def __call__(self, x):
    x = ceil_max_pool(x)
    return lrn(x, mode=self.lrn_mode) if self.lrn_mode else x


class Inception(nn.Module):
  """One Inception v1 module; children named as the Caffe blobs."""

  spec: tuple
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c1, c3r, c3, c5r, c5, pp = self.spec

    def conv(feat, k, name, inp):
      return nn.relu(Conv(feat, (k, k), padding=((k // 2, k // 2),) * 2, dtype=self.dtype, name=name)(inp))

    b1 = conv(c1, 1, "1x1", x)
    b2 = conv(c3, 3, "3x3", conv(c3r, 1, "3x3_reduce", x))
    b3 = conv(c5, 5, "5x5", conv(c5r, 1, "5x5_reduce", x))
    b4 = conv(pp, 1, "pool_proj", max_pool_3x3(x))
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


@register_backbone("googlenet")
class GoogLeNet(nn.Module):
  """The paper's backbone: ``[B, H, W, 3] -> [B, 1024]`` (227 px in the paper).

  ``dtype=jnp.bfloat16`` computes the convolutions in bfloat16 (parameters
  stay float32; the pooled feature is returned in float32), for accelerators.
  """

  lrn: str = "tf"   # "tf" (reference) | "caffe"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    del train  # no BatchNorm, no dropout
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"GoogLeNet: images must be [B, H, W, 3], got shape {tuple(images.shape)}.")
    if self.lrn not in ("tf", "caffe"):
      raise ValueError(f"GoogLeNet: lrn must be 'tf' or 'caffe', got {self.lrn!r}.")
    x = _Conv((("7x7_s2", 64, 7, 2, 3),), dtype=self.dtype, name="conv1")(images.astype(self.dtype))
    x = _PoolNorm(self.lrn, name="pool1")(x)
    x = _Conv((("3x3_reduce", 64, 1, 1, 0), ("3x3", 192, 3, 1, 1)), dtype=self.dtype, name="conv2")(x)
    x = lrn(x, mode=self.lrn)
    x = _PoolNorm(None, name="pool2")(x)
    for i, stage in enumerate(STAGES):
      for name in stage:
        x = Inception(INCEPTION_SPECS[name], dtype=self.dtype, name=name)(x)
      if i < len(STAGES) - 1:
        x = _PoolNorm(None, name=f"pool{i + 3}")(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))   # the 7x7 average pool at 227/224 px


# --- torchvision's GoogLeNet ---------------------------------------------------


class BasicConv(nn.Module):
  """Convolution without bias, BatchNorm (eps 1e-3), ReLU: torchvision's BasicConv2d."""

  features: int
  kernel: int
  stride: int = 1
  pad: int = 0

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
             padding=((self.pad, self.pad),) * 2, use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


class InceptionBN(nn.Module):
  spec: tuple

  @nn.compact
  def __call__(self, x, *, train: bool):
    c1, c3r, c3, c5r, c5, pp = self.spec
    b1 = BasicConv(c1, 1, name="branch1")(x, train=train)
    b2 = BasicConv(c3, 3, pad=1, name="branch2_1")(BasicConv(c3r, 1, name="branch2_0")(x, train=train), train=train)
    # torchvision's "5x5" branch uses a 3x3 convolution (kept for its weights).
    b3 = BasicConv(c5, 3, pad=1, name="branch3_1")(BasicConv(c5r, 1, name="branch3_0")(x, train=train), train=train)
    pooled = max_pool_3x3(x)
    b4 = BasicConv(pp, 1, name="branch4_1")(pooled, train=train)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


def _torch_ceil_pool(x, window, stride):
  """PyTorch ``MaxPool2d(window, stride, ceil_mode=True)`` for non-negative inputs."""
  h, w = x.shape[1:3]
  out_h = -(-(h - window) // stride) + 1
  out_w = -(-(w - window) // stride) + 1
  pad_h = max(0, (out_h - 1) * stride + window - h)
  pad_w = max(0, (out_w - 1) * stride + window - w)
  x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding="VALID")


@register_backbone("googlenet_bn")
class GoogLeNetBN(nn.Module):
  """torchvision's GoogLeNet without its aux heads and classifier: ``-> [B, 1024]``.

  Input: RGB normalised with the ImageNet mean and std (the ``standard``
  preprocessing). ``transform_input=True`` applies torchvision's conversion
  for weights trained on inputs scaled to [-1, 1] (its pretrained weights).
  """

  transform_input: bool = True

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"GoogLeNetBN: images must be [B, H, W, 3], got shape {tuple(images.shape)}.")
    x = images
    if self.transform_input:
      mean = jnp.array([0.485, 0.456, 0.406])
      std = jnp.array([0.229, 0.224, 0.225])
      x = x * (std / 0.5) + (mean - 0.5) / 0.5
    x = BasicConv(64, 7, stride=2, pad=3, name="conv1")(x, train=train)
    x = _torch_ceil_pool(x, 3, 2)
    x = BasicConv(64, 1, name="conv2")(x, train=train)
    x = BasicConv(192, 3, pad=1, name="conv3")(x, train=train)
    x = _torch_ceil_pool(x, 3, 2)
    for i, stage in enumerate(STAGES):
      for name in stage:
        x = InceptionBN(INCEPTION_SPECS[name], name=name.replace("inception_", "inception"))(x, train=train)
      if i == 0:
        x = _torch_ceil_pool(x, 3, 2)
      elif i == 1:
        x = _torch_ceil_pool(x, 2, 2)
    return jnp.mean(x, axis=(1, 2))


# --- the weight sources of the two GoogLeNets (experiments.convert_weights --source ...) ---------------------


def _googlenet_template(name: str, **kwargs):
  net = get_backbone(name, **kwargs)
  return jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 227, 227, 3)), train=False))


def _from_caffe(kind: str):
  def convert(path: str, lrn: str = "tf") -> dict:
    from hdml_jax import weights

    if kind == "caffemodel":
      from hdml_jax.caffemodel import caffemodel_blobs, read_caffemodel

      blobs = caffemodel_blobs(read_caffemodel(path))
    else:
      blobs = weights.load_caffe_mat(path) if kind == "caffe_mat" else weights.load_npz(path)
    return {"params": weights.caffe_blobs_to_params(blobs, _googlenet_template("googlenet", lrn=lrn)["params"])}
  return convert


def _from_torchvision(path: str) -> dict:
  from hdml_jax import weights

  return weights.torchvision_to_variables(weights.load_torchvision_state(path), _googlenet_template("googlenet_bn"))


def _register_sources() -> None:
  from hdml_jax.models.registry import WeightSource, register_weight_source

  for kind, what in (("caffemodel", "the BVLC GoogLeNet .caffemodel (read without Caffe)"),
                     ("caffe_mat", "Caffe blobs in a MATLAB .mat file"),
                     ("caffe_npz", "Caffe blobs in an .npz file")):
    register_weight_source(WeightSource(kind, "googlenet", _from_caffe(kind), description=what))
  register_weight_source(WeightSource("torchvision", "googlenet_bn", _from_torchvision,
                                      description="torchvision's GoogLeNet (.safetensors or .pth, read without torch)"))


_register_sources()
