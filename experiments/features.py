"""The frozen-backbone regime: a pretrained backbone's pooled features, computed once and cached, as the dataset.

With ``features.backbone`` set (e.g. ``efficientnet_lite0``) and
``features.pretrained`` naming its weights (a file from
``experiments.convert_weights``, or a registered weight source such as
``efficientnet_lite0``, converted in memory), :func:`frozen_splits` replaces
the image splits by features:

* every training photo gets ``1 + features.views`` rows: its centre view
  (row 0) and ``features.views`` augmented views (the dataset's random crop
  and flip, drawn from a fixed seed); a training batch takes one augmented
  view per image, drawn from the step's seed, so a run stays a pure function
  of ``(seed, step)``; evaluation reads the centre view;
* every test photo gets its centre view.

The model then trains ``model.backbone="identity"`` (no parameters) under the
same loop, losses, HDML synthesis, selection and evaluation.

A part of the backbone may be cached instead and the rest fine-tuned: with
``features.backbone_kwargs`` stopping the backbone early (EfficientNet-Lite's
``{"last_block": 14}``: the ``[7, 7, 192]`` activation entering its last
stage at 224 px), the rows are those activations, and the model trains the
same backbone from where they stop (``model.backbone`` the same,
``model.backbone_kwargs`` ``{"first_block": 15, ...}``, ``model.pretrained``
the same weights, of which it takes the variables of its part). The features are
computed in inference mode (BatchNorm's moving statistics), in batches of
``features.batch_size`` with a progress bar, and cached under
``features.cache_dir/<key>``, where the key is the SHA-256 of the weights
file, the backbone, the input recipe (resize, crop, preprocessing), the view
count and the photos themselves (their pixels and labels): any change makes
a new entry, and a second run reads the cache. A computation killed part way
resumes at its first batch not yet written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Callable

import numpy as np

__all__ = ["VIEW_SEED", "cache_key", "frozen_splits", "load_backbone_variables"]

#: The seed of the training views' crops and flips (fixed: the views are part of the cached dataset).
VIEW_SEED = 20261207


def load_backbone_variables(backbone: str, pretrained: str) -> tuple[dict, str]:
  """``(variables, sha256)`` of ``pretrained``: a converted ``.npz`` or a registered weight source's name.

  A source's name is resolved as ``model.pretrained`` resolves it
  (:func:`experiments.runtime.pretrained_path`: converted once into a cached
  file). The file's recorded backbone must be ``backbone`` (one line naming
  both otherwise); ``sha256`` identifies the weights (a source's input file,
  or the file itself).
  """
  from experiments.runtime import pretrained_path
  from hdml_jax import weights

  path = pretrained_path(pretrained)
  variables = weights.load_variables(path)
  meta = weights.read_meta(variables)
  variables = {k: v for k, v in variables.items() if k != weights.META}
  if meta.get("backbone", backbone) != backbone:
    raise ValueError(f"features.pretrained={pretrained!r} holds weights for the {meta['backbone']} backbone, "
                     f"not features.backbone={backbone!r}.")
  digest = meta["input_sha256"] if meta.get("source") == pretrained else weights.file_sha256(path)
  return variables, digest


def _digest(arrays) -> str:
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(str((a.dtype.str, a.shape)).encode())
    h.update(memoryview(a).cast("B"))
  return h.hexdigest()


def cache_key(*, weights_sha256: str, backbone: str, recipe: dict, views: int, photos: dict,
              backbone_kwargs: dict | None = None) -> str:
  """The cache entry's name: a SHA-256 over everything the features depend on (``photos``: split -> digest;
  ``backbone_kwargs``: the part of the backbone that runs, named only when not empty)."""
  named = {"weights": weights_sha256, "backbone": backbone, "recipe": recipe, "views": views,
           "view_seed": VIEW_SEED, "photos": photos, "format": 1}
  if backbone_kwargs:
    named["backbone_kwargs"] = backbone_kwargs
  return hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()[:32]


def _embed(apply: Callable, load: Callable, n: int, prepare: Callable, batch_size: int, views: int,
           desc: str, path: str) -> None:
  """Writes ``path``: ``[n, 1 + views, ...]`` float32, the centre view, then ``views`` augmented ones, in batches
  of photos with a progress bar.

  Resumable: the rows are written into ``path.partial.npy`` as they come, and ``path.partial.json`` counts
  the batches done (written after the batch's rows are flushed); a computation killed part way continues from
  the first batch not counted (each batch's views are drawn from its own seed, so the rows are those of an
  uninterrupted computation). The finished file is renamed to ``path``.
  """
  from numpy.lib.format import open_memmap
  from tqdm import tqdm

  from experiments.checkpoints import write_json_atomic

  if n == 0:
    raise ValueError(f"features: no photos to compute for {path}.")
  partial, progress = path + ".partial.npy", path + ".partial.json"
  plan = {"n": n, "views": views, "batch_size": batch_size, "view_seed": VIEW_SEED}
  out, done = None, 0
  if os.path.exists(partial) and os.path.exists(progress):
    saved = json.load(open(progress))
    if {k: saved.get(k) for k in plan} == plan:
      out, done = open_memmap(partial, mode="r+"), int(saved["done"])
      logging.info("features: %s resumes at batch %d of %d", path, done, -(-n // batch_size))
  starts = range(0, n, batch_size)
  with tqdm(total=len(starts) * (1 + views), initial=done * (1 + views), desc=desc, unit="batch",
            mininterval=5.0) as bar:
    for b, start in enumerate(starts):
      if b < done:
        continue
      idx = np.arange(start, min(start + batch_size, n))
      images = load(idx)
      for v in range(1 + views):
        rng = None if v == 0 else np.random.default_rng([VIEW_SEED, v, start])
        f = np.asarray(apply(prepare(images, v > 0, rng)), np.float32)
        if out is None:
          out = open_memmap(partial, mode="w+", dtype=np.float32, shape=(n, 1 + views) + f.shape[1:])
        out[idx, v] = f
        bar.update(1)
      out.flush()
      write_json_atomic(progress, {**plan, "done": b + 1})
  del out
  os.replace(partial, path)
  os.remove(progress)


def frozen_splits(cfg, train, test, prepare: Callable):
  """``(train, test, prepare, feature shape)``: the image splits as cached features of ``cfg.features``.

  ``train`` and ``test`` are :class:`experiments.datasets.Split` of stored
  images; the returned splits load ``[n, 1 + views, F]`` rows, and
  ``prepare(rows, train, rng)`` picks one augmented view per row for
  training (from ``rng``) and the centre view otherwise.
  """
  import jax

  from experiments.datasets import Split
  from hdml_jax.models import get_backbone

  f, d = cfg.features, cfg.dataset
  kwargs = f.backbone_kwargs.to_dict()
  variables, digest = load_backbone_variables(f.backbone, f.pretrained)
  all_train, all_test = np.arange(len(train)), np.arange(len(test))
  photos = {"train": _digest([train.load(all_train), train.labels]),
            "test": _digest([test.load(all_test), test.labels])}
  key = cache_key(weights_sha256=digest, backbone=f.backbone,
                  recipe={"resize": d.resize, "crop": d.crop, "preprocess": d.preprocess}, views=f.views,
                  photos=photos, backbone_kwargs=kwargs)
  folder = os.path.join(os.path.expanduser(f.cache_dir), key)
  paths = {name: os.path.join(folder, f"{name}.npy") for name in ("train", "test")}
  net = get_backbone(f.backbone, **kwargs)
  apply = jax.jit(lambda x: net.apply(variables, x, train=False))
  os.makedirs(folder, exist_ok=True)
  for name, split, views in (("train", train, f.views), ("test", test, 0)):
    if os.path.exists(paths[name]):
      logging.info("features: %s read from the cache %s", name, paths[name])
      continue
    _embed(apply, split.load, len(split), prepare, f.batch_size, views, f"{f.backbone} features, {name}",
           paths[name])
  with open(os.path.join(folder, "key.json"), "w") as out:
    json.dump({"backbone": f.backbone, "backbone_kwargs": kwargs, "pretrained": f.pretrained, "weights_sha256": digest, "views": f.views,
               "resize": d.resize, "crop": d.crop, "preprocess": d.preprocess, "photos": photos}, out, indent=1)
  stored = {name: np.load(paths[name], mmap_mode="r") for name in paths}
  for name, split in (("train", train), ("test", test)):
    if stored[name].shape[0] != len(split):
      raise ValueError(f"the feature cache {paths[name]} holds {stored[name].shape[0]} rows for {len(split)} "
                       "photos (damaged): delete it and run again.")
  views = stored["train"].shape[1] - 1

  def prepare_features(rows: np.ndarray, training: bool, rng):
    rows = np.asarray(rows)
    if not training:
      return np.ascontiguousarray(rows[:, 0])
    pick = rng.integers(1, views + 1, size=rows.shape[0]) if views else np.zeros(rows.shape[0], np.int64)
    return np.ascontiguousarray(rows[np.arange(rows.shape[0]), pick])

  def loader(array):
    return lambda idx: np.asarray(array[np.asarray(idx)])

  return (Split(train.labels, train.class_names, loader(stored["train"])),
          Split(test.labels, test.class_names, loader(stored["test"])),
          prepare_features, tuple(stored["train"].shape[2:]))
