"""The decoded-image cache: built once, reused only under its key, the same pixels and batches as the JPEG path."""

import json
import os
import tempfile

import numpy as np
import pytest

from experiments import datasets
from experiments.configs import cub100
from hdml_jax.data import image_cache, preprocess
from tests.helpers.photos import make_cub_tree


def _key(count=5, size=4, source="toy/train", files=()):
  return image_cache.cache_key(source=source, count=count, size=size, files=list(files))


class _Decoder:
  def __init__(self, size=4, dtype=np.uint8):
    self.calls, self.size, self.dtype = 0, size, dtype

  def __call__(self, i):
    self.calls += 1
    return np.full((self.size, self.size, 3), i, self.dtype)


def test_built_once_then_memory_mapped():
  path = os.path.join(tempfile.mkdtemp(), "decoded", "train_4px")
  decode = _Decoder()
  images = image_cache.cached_images(path, _key(), decode, threads=2)
  assert decode.calls == 5 and isinstance(images, np.memmap) and images.dtype == np.uint8
  np.testing.assert_array_equal(images[:, 0, 0, 0], np.arange(5))
  again = image_cache.cached_images(path, _key(), decode)
  assert decode.calls == 5   # read, not decoded
  np.testing.assert_array_equal(again, images)
  assert json.load(open(path + ".json")) == _key()
  assert not [f for f in os.listdir(os.path.dirname(path)) if "partial" in f]


@pytest.mark.parametrize("change", [{"count": 6}, {"size": 5}, {"source": "other/train"},
                                    {"files": [["a.array_record", 10, 1]]}])
def test_another_key_rebuilds(change):
  path = os.path.join(tempfile.mkdtemp(), "c")
  image_cache.cached_images(path, _key(), _Decoder())
  key = _key(**change)
  decode = _Decoder(size=key["size"])
  logs = []
  images = image_cache.cached_images(path, key, decode, log=logs.append)
  assert decode.calls == key["count"] and images.shape == (key["count"], key["size"], key["size"], 3)
  assert "stale" in logs[0]
  assert json.load(open(path + ".json")) == key


def test_an_interrupted_build_is_rebuilt_not_read():
  path = os.path.join(tempfile.mkdtemp(), "c")
  image_cache.cached_images(path, _key(), _Decoder())
  os.remove(path + ".json")      # killed after the array, before its key
  np.save(path + ".npy", np.zeros((5, 4, 4, 3), np.uint8))
  decode = _Decoder()
  images = image_cache.cached_images(path, _key(), decode)
  assert decode.calls == 5
  np.testing.assert_array_equal(images[:, 0, 0, 0], np.arange(5))
  open(path + ".json", "w").write("{ not json")   # a damaged key is stale too
  decode = _Decoder()
  image_cache.cached_images(path, _key(), decode, log=lambda m: None)
  assert decode.calls == 5


def test_a_wrong_image_is_named_and_nothing_is_kept():
  path = os.path.join(tempfile.mkdtemp(), "c")
  with pytest.raises(ValueError, match=r"toy/train: image 0 decoded to uint8 \(3, 3, 3\), expected uint8 \(4, 4, 3\)"):
    image_cache.cached_images(path, _key(), _Decoder(size=3))
  with pytest.raises(ValueError, match="image 0 decoded to float32"):
    image_cache.cached_images(path, _key(), _Decoder(dtype=np.float32))
  assert os.listdir(os.path.dirname(path)) == []   # no key, no array, no partial file


def _cub_cfg(manual, gb):
  cfg = cub100.get_config()
  cfg.dataset.name, cfg.dataset.data_dir = "cub", manual
  cfg.dataset.tfds_data_dir = os.path.join(manual, "tfds")
  cfg.dataset.num_val_classes = 0
  cfg.dataset.resize, cfg.dataset.crop, cfg.dataset.preprocess = 40, 32, "paper"
  cfg.dataset.decoded_cache_gb = gb
  cfg.loss.name = "triplet"
  cfg.batch_size, cfg.num_steps = 6, 200
  return cfg


def test_cached_splits_equal_the_jpeg_path_pixel_for_pixel_and_batch_for_batch():
  manual = tempfile.mkdtemp()
  make_cub_tree(manual, class_ids=(1, 2, 3, 101, 102))
  jpeg = datasets.load_data(_cub_cfg(manual, 0))
  cached = datasets.load_data(_cub_cfg(manual, 8.0))
  decoded_dir = os.path.join(manual, "tfds", "cub200_2011_dml", "1.0.0", "decoded")
  assert sorted(os.listdir(decoded_dir)) == ["test_40px.json", "test_40px.npy", "train_40px.json", "train_40px.npy"]
  for name in ("train", "test"):
    a, b = getattr(jpeg, name), getattr(cached, name)
    np.testing.assert_array_equal(a.labels, b.labels)
    idx = np.random.default_rng(0).permutation(len(a))
    np.testing.assert_array_equal(a.load(idx), b.load(idx))
  # The same training batches: the same crops and flips of the same pixels.
  cfg = _cub_cfg(manual, 8.0)
  for step in (0, 7):
    x = datasets._MakeBatch(jpeg, _sampler(cfg, jpeg), cfg.seed, slice(None))(step)
    y = datasets._MakeBatch(cached, _sampler(cfg, cached), cfg.seed, slice(None))(step)
    np.testing.assert_array_equal(x["images"], y["images"])
    np.testing.assert_array_equal(x["labels"], y["labels"])
  # A size over the limit streams JPEGs; the key names the source files, so a rebuilt dataset is re-decoded.
  tight = datasets.load_data(_cub_cfg(manual, 1e-9))
  np.testing.assert_array_equal(tight.test.load([0]), jpeg.test.load([0]))
  key = json.load(open(os.path.join(decoded_dir, "train_40px.json")))
  assert key["source"] == "cub200_2011_dml/train" and key["count"] == len(jpeg.train)
  assert key["files"] and all(f[0].startswith("cub200_2011_dml-train.array_record") for f in key["files"])


def _sampler(cfg, data):
  from hdml_jax.data import make_sampler

  return make_sampler(cfg.loss.name, data.train.labels, batch_size=cfg.batch_size, seed=cfg.seed)


def test_random_crop_and_flip_statistics():
  """Offsets uniform over every position, flips at p = 0.5, and each crop the pixels of its window."""
  h, crop, n = 12, 8, 4000
  rows = np.arange(h, dtype=np.uint8)
  image = np.broadcast_to((rows[:, None] * 16 + rows[None, :])[None, :, :, None], (n, h, h, 3)).copy()
  rng = np.random.default_rng(3)
  out = preprocess._crop(image, crop, rng)
  top = out[:, 0, :, 0].min(axis=1) // 16
  left_edge = out[:, 0, 0, 0] % 16
  right_edge = out[:, 0, -1, 0] % 16
  flipped = left_edge > right_edge
  left = np.where(flipped, right_edge, left_edge)
  for offsets in (top, left):
    counts = np.bincount(offsets, minlength=h - crop + 1)
    assert counts.size == h - crop + 1
    expected = n / (h - crop + 1)
    assert np.sum((counts - expected) ** 2 / expected) < 20.5   # chi-square, 4 dof, p ~ 4e-4
  assert abs(flipped.mean() - 0.5) < 4 * np.sqrt(0.25 / n)
  for i in range(0, n, 397):
    window = image[i, top[i]:top[i] + crop, left[i]:left[i] + crop]
    np.testing.assert_array_equal(out[i], window[:, ::-1] if flipped[i] else window)
  # The same rng draws the same crops (the cache path and the JPEG path share this function).
  np.testing.assert_array_equal(preprocess._crop(image, crop, np.random.default_rng(3)), out)
