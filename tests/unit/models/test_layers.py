"""The backbones' convolution: a 1x1 stride-1 NHWC convolution as a matrix product, any other one XLA's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hdml_jax.models import get_backbone
from hdml_jax.models.layers import conv_general_dilated

NHWC = ("NHWC", "HWIO", "NHWC")


def _primitives(f, *args):
  return {str(e.primitive) for e in jax.make_jaxpr(f)(*args).eqns}


@pytest.mark.parametrize("padding", ["SAME", "VALID", [(0, 0), (0, 0)], ((0, 0), (0, 0))])
def test_a_pointwise_convolution_is_a_product_with_the_convolutions_values_and_gradients(padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 5, 4, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(1, 1, 6, 7)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(3, 5, 4, 7)), jnp.float32)
  ours = lambda x, w: conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=NHWC)
  xla = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=NHWC)
  assert "dot_general" in _primitives(ours, x, w) and "conv_general_dilated" not in _primitives(ours, x, w)
  np.testing.assert_allclose(ours(x, w), xla(x, w), rtol=1e-6, atol=1e-6)
  grads = [jax.grad(lambda x, w, f=f: jnp.sum(g * f(x, w)), argnums=(0, 1))(x, w) for f in (ours, xla)]
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel, kwargs", [
    ((3, 3), {}),                                              # a 3x3 kernel
    ((1, 1), {"window_strides": (2, 2)}),                      # strided
    ((1, 1), {"padding": [(1, 0), (0, 0)]}),                   # padded
    ((1, 1), {"rhs_dilation": (2, 2)}),                        # a dilated kernel (of one tap: the same)
    ((1, 1), {"lhs_dilation": (2, 1), "padding": [(0, 0), (0, 0)]}),  # a dilated input
    ((1, 1), {"feature_group_count": 2}),                      # grouped
    ((1, 1), {"dimension_numbers": ("NCHW", "OIHW", "NCHW")}),  # another layout
])
def test_any_other_convolution_is_xlas(kernel, kwargs):
  rng = np.random.default_rng(1)
  layout = kwargs.get("dimension_numbers", NHWC)
  x = jnp.asarray(rng.normal(size=(2, 4, 6, 6) if layout[0] == "NCHW" else (2, 6, 6, 4)), jnp.float32)
  groups = kwargs.get("feature_group_count", 1)
  w = jnp.asarray(rng.normal(size=(4, 4 // groups) + kernel if layout[1] == "OIHW" else
                             kernel + (4 // groups, 4)), jnp.float32)
  args = {"window_strides": (1, 1), "padding": "SAME", "dimension_numbers": NHWC, **kwargs}
  ours = lambda x, w: conv_general_dilated(x, w, **args)
  assert "conv_general_dilated" in _primitives(ours, x, w) and "dot_general" not in _primitives(ours, x, w)
  np.testing.assert_array_equal(ours(x, w), jax.lax.conv_general_dilated(x, w, **args))


@pytest.mark.parametrize("name, convolutions", [("googlenet", 20), ("googlenet_bn", 20), ("efficientnet_lite0", 1)])
def test_the_backbones_pointwise_convolutions_are_products(name, convolutions):
  # GoogLeNet keeps its 7x7, 3x3 and 5x5 convolutions (2 + 9 x 2); EfficientNet-Lite0 its stem (its depthwise
  # convolutions are shifted multiply-adds); every 1x1 convolution is a product.
  net = get_backbone(name)
  x = jnp.zeros((1, 64, 64, 3))
  v = jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=False))
  hlo = jax.jit(lambda v, x: net.apply(v, x, train=False)).lower(v, x).as_text()
  assert hlo.count("stablehlo.convolution") == convolutions
  assert hlo.count("dot_general") >= 20
