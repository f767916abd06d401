"""Config -> class-disjoint splits, and a grain pipeline of training batches.

A :class:`Split` holds labels and a ``load(indices)`` function returning the
stored images (float32 digits, or uint8 RGB warped to ``dataset.resize``),
so that large datasets (TFDS array_record) stream from disk and small ones
(digits, image folders read into memory) share the same path.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable

import grain
import numpy as np

from hdml_jax.data import digits, image_folder, make_sampler, preprocess

TFDS_NAMES = {"cub": "cub200_2011_dml", "cars": "cars196_dml", "sop": "sop_dml",
              "tfds_image_folder": "image_folder_dml"}


@dataclasses.dataclass
class Split:
  labels: np.ndarray                      # int32, 0 .. num_classes - 1 within the split
  class_names: list
  load: Callable[[np.ndarray], np.ndarray]

  @property
  def num_classes(self) -> int:
    return int(np.unique(self.labels).size)

  def __len__(self) -> int:
    return len(self.labels)

  def subset(self, mask: np.ndarray) -> "Split":
    rows = np.flatnonzero(mask)
    kept = np.unique(self.labels[rows])
    names = [self.class_names[c] for c in kept] if len(self.class_names) > int(kept.max()) else []
    return Split(_dense(self.labels[rows]), names, lambda idx: self.load(rows[np.asarray(idx)]))


@dataclasses.dataclass
class Data:
  train: Split
  val: Split | None
  test: Split
  prepare: Callable          # (stored images, train: bool, rng) -> model input (uint8 when normalize is set)
  image_shape: tuple
  is_image: bool             # RGB photographs (retrieval grids make sense)
  #: ``uint8 batch -> float32 model input``, on the device (jitted; traceable inside a step), when ``prepare``
  #: gives ``uint8`` crops (``dataset.normalize_on_device``); None when ``prepare`` gives the model input itself.
  normalize: Callable | None = None

  def model_input(self, images):
    """``prepare``'s output as the model takes it (normalised on the device when ``normalize`` is set)."""
    return images if self.normalize is None else self.normalize(images)


def _dense(labels: np.ndarray) -> np.ndarray:
  _, inv = np.unique(labels, return_inverse=True)
  return inv.astype(np.int32)


def in_memory(images: np.ndarray, labels: np.ndarray, names: list) -> Split:
  return Split(_dense(labels), list(names), lambda idx: images[np.asarray(idx)])


def _split_val(train: Split, num_val: int) -> tuple[Split, Split | None]:
  if num_val <= 0:
    return train, None
  classes = np.unique(train.labels)
  if num_val > classes.size - 2:
    raise ValueError(
        f"dataset.num_val_classes={num_val} leaves fewer than 2 of the {classes.size} "
        "training classes for training.")
  is_val = np.isin(train.labels, classes[-num_val:])
  return train.subset(~is_val), train.subset(is_val)


def _tfds_splits(d, threads: int):
  from hdml_jax.data import tfds_source

  builder = tfds_source.prepare(TFDS_NAMES[d.name], data_dir=d.tfds_data_dir, manual_dir=d.data_dir or None,
                                num_train_classes=d.num_train_classes,
                                skip_unreadable=d.skip_unreadable)
  out = []
  for split in ("train", "test"):
    src = tfds_source.open_split(builder, split)
    names = [str(c) for c in np.unique(src.labels)]
    cached = _decoded(d, builder, split, src, threads)
    if cached is not None:
      load = lambda idx, images=cached: np.asarray(images[np.asarray(idx)])
    else:
      load = lambda idx, src=src: src.images(np.asarray(idx), size=d.resize)
    out.append(Split(_dense(src.labels), names, load))
  return out


def _decoded(d, builder, split: str, src, threads: int):
  """The split's decoded-image cache (built on first use), or None when it would exceed ``decoded_cache_gb``."""
  from hdml_jax.data import image_cache

  gib = len(src) * d.resize * d.resize * 3 / 2**30
  if gib > d.decoded_cache_gb:
    if d.decoded_cache_gb > 0:
      logging.info("%s: decoded cache (%.1f GiB) over dataset.decoded_cache_gb=%s: decoding JPEGs per batch",
                   src.name, gib, d.decoded_cache_gb)
    return None
  key = image_cache.cache_key(source=src.name, count=len(src), size=d.resize,
                              files=image_cache.file_fingerprint(src.files))
  return image_cache.cached_images(os.path.join(builder.data_dir, "decoded", f"{split}_{d.resize}px"), key,
                                   lambda i: src.decode(i, d.resize), threads=threads)


def load_data(cfg) -> Data:
  """Loads the splits named by ``cfg.dataset`` (class-disjoint train/val/test)."""
  d = cfg.dataset
  normalize = None
  if d.name == "digits":
    xtr, ytr = digits.load_digits_split("train")
    xte, yte = digits.load_digits_split("test")
    train = in_memory(xtr, ytr, [str(c) for c in digits.TRAIN_CLASSES])
    test = in_memory(xte, yte, [str(c) for c in digits.TEST_CLASSES])
    prepare = lambda images, train, rng: images
    shape, is_image = xtr.shape[1:], False
  elif d.name in ("image_folder",) + tuple(TFDS_NAMES):
    if d.name == "image_folder":
      if not d.data_dir:
        raise ValueError("dataset.data_dir must name a folder of class sub-folders for image_folder.")
      load = lambda r: image_folder.load_image_folder(
          d.data_dir, size=d.resize, class_range=tuple(r), skip_unreadable=d.skip_unreadable)
      xtr, ytr, ntr = load(d.train_classes)
      xte, yte, nte = load(d.test_classes)
      if set(ntr) & set(nte):
        raise ValueError(f"dataset.train_classes {tuple(d.train_classes)} and test_classes "
                         f"{tuple(d.test_classes)} overlap: the protocol is class-disjoint.")
      train, test = in_memory(xtr, ytr, ntr), in_memory(xte, yte, nte)
    else:
      train, test = _tfds_splits(d, cfg.data_threads)
    recipe, crop = d.preprocess, d.crop
    prepare = lambda images, train, rng: preprocess.preprocess(
        images, recipe=recipe, crop=crop, train=train, rng=rng)
    shape, is_image = (d.crop, d.crop, 3), True
    if cfg.features.backbone:   # the frozen-backbone regime: cached features stand for the photos
      from experiments import features

      train, test, prepare, shape = features.frozen_splits(cfg, train, test, prepare)
      is_image = False
    elif d.normalize_on_device:   # the host crops and flips uint8; the device normalises
      prepare = lambda images, train, rng: preprocess.crop_and_flip(images, crop=crop, train=train, rng=rng)
      normalize = _device_normalize(recipe)
  else:
    raise ValueError(f"dataset.name must be one of {('digits', 'image_folder') + tuple(TFDS_NAMES)}, "
                     f"got {d.name!r}.")
  train, val = _split_val(train, d.num_val_classes)
  return Data(train, val, test, prepare, tuple(shape), is_image, normalize)


_NORMALIZERS: dict = {}


def _device_normalize(recipe: str) -> Callable:
  """The jitted :func:`hdml_jax.data.preprocess.normalize` of ``recipe`` (one per recipe and process, so each
  evaluation reuses its compilations)."""
  if recipe not in _NORMALIZERS:
    import functools

    import jax

    _NORMALIZERS[recipe] = jax.jit(functools.partial(preprocess.normalize, recipe=recipe))
  return _NORMALIZERS[recipe]


class _MakeBatch:
  """Step number -> batch; a pure function of (seed, step)."""

  def __init__(self, data: Data, sampler, seed: int, rows: slice):
    self.data, self.sampler, self.seed, self.rows = data, sampler, seed, rows

  def __call__(self, step: int) -> dict:
    idx = self.sampler(step)[self.rows]
    rng = np.random.default_rng([self.seed, 1, step])
    images = self.data.prepare(self.data.train.load(idx), True, rng)
    dtype = np.uint8 if self.data.normalize is not None else np.float32
    return {"images": np.ascontiguousarray(images, dtype), "labels": self.data.train.labels[idx]}


def train_batches(cfg, data: Data, *, start_step: int, rows: slice):
  """Iterator over batches ``start_step .. num_steps - 1`` (grain, threaded, prefetched).

  ``rows`` selects this process's rows of each global batch.
  """
  sampler = make_sampler(cfg.loss.name, data.train.labels, batch_size=cfg.batch_size, seed=cfg.seed,
                         epochs=cfg.epoch_sampler, m_per_class=cfg.loss.m_per_class)
  ds = grain.MapDataset.range(start_step, cfg.num_steps).map(_MakeBatch(data, sampler, cfg.seed, rows))
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.data_threads,
                                                   prefetch_buffer_size=cfg.prefetch)))


def eval_batches(data: Data, split: Split, batch_size: int):
  """``(start, prepared images)`` chunks of a split, in order (``uint8`` crops when ``data.normalize`` is set:
  :meth:`Data.model_input` gives the model's input)."""
  for start in range(0, len(split), batch_size):
    idx = np.arange(start, min(start + batch_size, len(split)))
    yield start, data.prepare(split.load(idx), False, None)
