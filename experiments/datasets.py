"""Config -> in-memory splits, and a grain pipeline of training batches."""

from __future__ import annotations

import dataclasses
from typing import Callable

import grain
import numpy as np

from hdml_jax.data import digits, image_folder, make_sampler, preprocess


@dataclasses.dataclass
class Split:
  images: np.ndarray        # stored form: float32 (digits) or uint8 [N, resize, resize, 3]
  labels: np.ndarray        # int32, 0 .. num_classes - 1 within the split
  class_names: list

  @property
  def num_classes(self) -> int:
    return int(np.unique(self.labels).size)


@dataclasses.dataclass
class Data:
  train: Split
  val: Split | None
  test: Split
  prepare: Callable          # (stored images, train: bool, rng) -> float32 model input
  image_shape: tuple
  is_image: bool             # RGB photographs (retrieval grids make sense)


def _dense(labels: np.ndarray) -> np.ndarray:
  _, inv = np.unique(labels, return_inverse=True)
  return inv.astype(np.int32)


def _split_val(train: Split, num_val: int) -> tuple[Split, Split | None]:
  if num_val <= 0:
    return train, None
  classes = np.unique(train.labels)
  if num_val > classes.size - 2:
    raise ValueError(
        f"dataset.num_val_classes={num_val} leaves fewer than 2 of the {classes.size} "
        "training classes for training.")
  val_cls = classes[-num_val:]
  is_val = np.isin(train.labels, val_cls)
  names = np.asarray(train.class_names, dtype=object)
  tr = Split(train.images[~is_val], _dense(train.labels[~is_val]), list(names[classes[:-num_val]]))
  va = Split(train.images[is_val], _dense(train.labels[is_val]), list(names[val_cls]))
  return tr, va


def load_data(cfg) -> Data:
  """Loads the splits named by ``cfg.dataset`` (class-disjoint train/val/test)."""
  d = cfg.dataset
  if d.name == "digits":
    xtr, ytr = digits.load_digits_split("train")
    xte, yte = digits.load_digits_split("test")
    train = Split(xtr, _dense(ytr), [str(c) for c in digits.TRAIN_CLASSES])
    test = Split(xte, _dense(yte), [str(c) for c in digits.TEST_CLASSES])
    prepare = lambda images, train, rng: images
    shape, is_image = xtr.shape[1:], False
  elif d.name == "image_folder":
    if not d.data_dir:
      raise ValueError("dataset.data_dir must name a folder of class sub-folders for image_folder.")
    load = lambda rng_: image_folder.load_image_folder(
        d.data_dir, size=d.resize, class_range=tuple(rng_), skip_unreadable=d.skip_unreadable)
    xtr, ytr, ntr = load(d.train_classes)
    xte, yte, nte = load(d.test_classes)
    if set(ntr) & set(nte):
      raise ValueError(f"dataset.train_classes {tuple(d.train_classes)} and test_classes "
                       f"{tuple(d.test_classes)} overlap: the protocol is class-disjoint.")
    train, test = Split(xtr, ytr, ntr), Split(xte, yte, nte)
    recipe, crop = d.preprocess, d.crop
    prepare = lambda images, train, rng: preprocess.preprocess(
        images, recipe=recipe, crop=crop, train=train, rng=rng)
    shape, is_image = (d.crop, d.crop, 3), True
  else:
    raise ValueError(f"dataset.name must be 'digits' or 'image_folder', got {d.name!r}.")
  train, val = _split_val(train, d.num_val_classes)
  return Data(train, val, test, prepare, tuple(shape), is_image)


class _MakeBatch:
  """Step number -> batch; a pure function of (seed, step)."""

  def __init__(self, data: Data, sampler, seed: int, rows: slice):
    self.data, self.sampler, self.seed, self.rows = data, sampler, seed, rows

  def __call__(self, step: int) -> dict:
    idx = self.sampler(step)[self.rows]
    rng = np.random.default_rng([self.seed, 1, step])
    images = self.data.prepare(self.data.train.images[idx], True, rng)
    return {"images": np.ascontiguousarray(images, np.float32), "labels": self.data.train.labels[idx]}


def train_batches(cfg, data: Data, *, start_step: int, rows: slice):
  """Iterator over batches ``start_step .. num_steps - 1`` (grain, threaded, prefetched).

  ``rows`` selects this process's rows of each global batch.
  """
  sampler = make_sampler(cfg.hdml.loss, data.train.labels, batch_size=cfg.batch_size, seed=cfg.seed)
  ds = grain.MapDataset.range(start_step, cfg.num_steps).map(_MakeBatch(data, sampler, cfg.seed, rows))
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.data_threads,
                                                   prefetch_buffer_size=cfg.prefetch)))
