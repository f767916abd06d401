"""The .caffemodel reader, on files protobuf writes in Caffe's wire format (tests/helpers/caffe.py)."""

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hdml_jax import weights
from hdml_jax.caffemodel import CaffeModelError, caffemodel_blobs, read_caffemodel
from hdml_jax.models import get_backbone, registry
from tests.helpers.caffe import write_caffemodel


def _path(name="net.caffemodel"):
  return os.path.join(tempfile.mkdtemp(), name)


def _layers(rng):
  return [("conv1", "Convolution", [rng.normal(size=(4, 3, 2, 2)), rng.normal(size=4)]),
          ("relu1", "ReLU", []),
          ("fc", "InnerProduct", [rng.normal(size=(5, 16)), rng.normal(size=5)]),
          ("scale_only", "Scale", [rng.normal(size=7)])]


@pytest.mark.parametrize("v1", [False, True])
@pytest.mark.parametrize("double", [False, True])
def test_reads_names_types_and_blobs(v1, double):
  rng = np.random.default_rng(0)
  layers = _layers(rng)
  if v1:   # V1 types are enum numbers
    layers = [(n, str(k), b) for k, (n, _, b) in zip((4, 18, 14, 39), layers)]
  path = _path()
  write_caffemodel(path, layers, v1=v1, double=double)
  got = read_caffemodel(path)
  assert [layer.name for layer in got] == [n for n, _, _ in layers]
  assert [layer.type for layer in got] == ([f"V1:{k}" for _, k, _ in layers] if v1 else [k for _, k, _ in layers])
  for layer, (_, _, blobs) in zip(got, layers):
    assert len(layer.blobs) == len(blobs)
    for a, b in zip(layer.blobs, blobs):
      assert a.dtype == np.float32
      want = b.astype(np.float32)
      if v1:   # legacy shapes are padded to num x channels x height x width
        want = want.reshape((1,) * (4 - b.ndim) + b.shape)
      np.testing.assert_array_equal(a, want)
  blobs = caffemodel_blobs(got)
  assert sorted(blobs) == ["conv1", "conv1_bias", "fc", "fc_bias", "scale_only"]
  assert blobs["conv1_bias"].shape == (4,) and blobs["fc_bias"].shape == (5,)   # legacy 1x1x1xN -> N
  blobs["conv1"][0, 0, 0, 0] = 1.0   # writable copies


@pytest.mark.slow   # compiles a whole network or step
def test_googlenet_caffemodel_maps_to_the_backbone_and_its_conversion_loads_back():
  """A bvlc_googlenet-shaped file: the backbone's blobs, the auxiliary heads and classifier, blob-less layers."""
  net = get_backbone("googlenet")
  params = jax.jit(lambda: net.init(jax.random.key(7), jnp.zeros((1, 35, 35, 3)), train=False))()["params"]
  blobs = weights.params_to_caffe_blobs(params)
  rng = np.random.default_rng(1)
  layers = [("data", "Input", [])]
  for name in sorted(n for n in blobs if not n.endswith("_bias")):
    layers.append((name, "Convolution", [blobs[name], blobs[name + "_bias"]]))
    layers.append((name.replace("/", "/relu_", 1), "ReLU", []))
  layers += [("loss1/conv", "Convolution", [rng.normal(size=(128, 512, 1, 1)), rng.normal(size=128)]),
             ("loss2/fc", "InnerProduct", [rng.normal(size=(8, 4)), rng.normal(size=8)]),
             ("loss3/classifier", "InnerProduct", [rng.normal(size=(10, 1024)), rng.normal(size=10)]),
             ("prob", "Softmax", [])]
  path = _path("bvlc_googlenet.caffemodel")
  write_caffemodel(path, layers)
  mapped = weights.caffe_blobs_to_params(caffemodel_blobs(read_caffemodel(path)), params)
  for (p, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(mapped), jax.tree_util.tree_leaves_with_path(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(p))
  out = os.path.join(os.path.dirname(path), "googlenet.npz")
  converted, meta = registry.convert_weight_source("caffemodel", path)
  weights.save_variables(out, converted, meta=meta)
  loaded = weights.load_variables(out)["params"]
  np.testing.assert_array_equal(loaded["conv1"]["7x7_s2"]["kernel"], np.asarray(params["conv1"]["7x7_s2"]["kernel"]))

  # A layer missing and one mis-shaped: both named in one error.
  broken = [(n, k, b) for n, k, b in layers if n != "inception_4a/5x5"]
  broken = [(n, k, [b[0][:, :2], b[1]] if n == "conv2/3x3" else b) for n, k, b in broken]
  write_caffemodel(path, broken)
  with pytest.raises(weights.WeightMismatchError, match=r"missing \(2\).*inception_4a/5x5.*mis-shaped.*conv2/3x3"):
    weights.caffe_blobs_to_params(caffemodel_blobs(read_caffemodel(path)), params)


def test_damaged_files_are_refused_with_the_place():
  path = _path()
  write_caffemodel(path, _layers(np.random.default_rng(2)))
  data = open(path, "rb").read()
  cut = _path("cut.caffemodel")
  open(cut, "wb").write(data[:len(data) // 2])
  with pytest.raises(CaffeModelError, match=r"cut.caffemodel.*at byte \d+.*truncated"):
    read_caffemodel(cut)
  empty = _path("empty.caffemodel")
  open(empty, "wb").write(b"")
  with pytest.raises(CaffeModelError, match="no layers found"):
    read_caffemodel(empty)
  text = _path("deploy.prototxt")
  open(text, "w").write('name: "GoogleNet"\nlayer {\n  name: "data"\n}\n')
  with pytest.raises(CaffeModelError, match="deploy.prototxt"):
    read_caffemodel(text)


def test_a_blob_whose_shape_disagrees_with_its_data_is_refused():
  from google.protobuf.internal import encoder  # noqa: F401  (protobuf present: the writer's dependency)

  path = _path()
  write_caffemodel(path, [("conv1", "Convolution", [np.ones((2, 3))])])
  layers = read_caffemodel(path)
  assert layers[0].blobs[0].shape == (2, 3)
  # Rewrite the shape's second dim 3 -> 4 (the varint byte after its tag) in the serialised file.
  data = bytearray(open(path, "rb").read())
  marker = bytes([0x3A, 0x04, 0x0A, 0x02, 0x02, 0x03])   # shape (field 7): BlobShape{dim packed [2, 3]}
  at = data.find(marker)
  assert at >= 0
  data[at + 5] = 0x04
  open(path, "wb").write(bytes(data))
  with pytest.raises(CaffeModelError, match=r"layer 'conv1' blob 0: the blob's shape \(2, 4\) holds 8 values, but it stores 6"):
    read_caffemodel(path)


def test_layers_with_more_than_two_blobs_or_repeated_names_are_refused():
  path = _path()
  write_caffemodel(path, [("bn", "BatchNorm", [np.ones(2), np.ones(2), np.ones(1)])])
  with pytest.raises(CaffeModelError, match="'bn' .* 3 blobs"):
    caffemodel_blobs(read_caffemodel(path))
  write_caffemodel(path, [("c", "Convolution", [np.ones((1, 1, 1, 1))]), ("c", "Convolution", [np.ones((1, 1, 1, 1))])])
  with pytest.raises(CaffeModelError, match="'c' appears twice"):
    caffemodel_blobs(read_caffemodel(path))
