"""The preprocessing's two halves: the host's uint8 crop and flip, and the normalisation that runs on either side."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hdml_jax.data import preprocess as P


def _every_pixel_value():
  x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  return np.concatenate([x, x[:, ::-1], x[:, :, ::-1]], axis=3)   # every value in every channel


@pytest.mark.parametrize("recipe", P.RECIPES)
def test_the_device_normalisation_equals_the_hosts_bit_for_bit(recipe):
  for x in (_every_pixel_value(), np.random.default_rng(0).integers(0, 256, (3, 9, 7, 3)).astype(np.uint8)):
    host = P.normalize(x, recipe)
    assert host.dtype == np.float32
    jitted = np.asarray(jax.jit(lambda x: P.normalize(x, recipe))(jnp.asarray(x)))
    eager = np.asarray(P.normalize(jnp.asarray(x), recipe))
    np.testing.assert_array_equal(jitted, host)
    np.testing.assert_array_equal(eager, host)


@pytest.mark.parametrize("recipe", P.RECIPES)
@pytest.mark.parametrize("train", [True, False])
def test_preprocess_is_the_crop_then_the_normalisation(recipe, train):
  x = np.random.default_rng(1).integers(0, 256, (4, 12, 10, 3)).astype(np.uint8)
  whole = P.preprocess(x, recipe=recipe, crop=8, train=train, rng=np.random.default_rng(2))
  crops = P.crop_and_flip(x, crop=8, train=train, rng=np.random.default_rng(2))
  assert crops.dtype == np.uint8 and crops.shape == (4, 8, 8, 3)
  np.testing.assert_array_equal(P.normalize(crops, recipe), whole)


def test_bad_input_is_refused():
  with pytest.raises(ValueError, match="recipe must be one of"):
    P.normalize(np.zeros((1, 2, 2, 3), np.uint8), "imagenet")
  with pytest.raises(ValueError, match="training needs an rng"):
    P.crop_and_flip(np.zeros((1, 4, 4, 3), np.uint8), crop=2, train=True)
  with pytest.raises(ValueError, match="crop size 5 exceeds the image size 4x4"):
    P.crop_and_flip(np.zeros((1, 4, 4, 3), np.uint8), crop=5, train=False)
