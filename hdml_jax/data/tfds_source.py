"""Preparing and reading the TFDS builders' array_record splits without TensorFlow.

``open_split`` returns a random-access :class:`TfdsSplit`: ``len``, the
label of every record (read once, cached beside the dataset as ``.npy``) and
``images(indices, size)``, which decodes the stored bytes with Pillow
(greyscale, CMYK and palette images become RGB) and warps them to ``size``;
an image that cannot be decoded raises with its file name.
"""

from __future__ import annotations

import glob
import io
import os

import numpy as np
import tensorflow_datasets as tfds

from hdml_jax.data.tfds_builders import BUILDERS, ImageFolderDml, check_manual_dir

__all__ = [
    "TfdsSplit",
    "make_builder",
    "open_split",
    "prepare",
]


def make_builder(name: str, *, data_dir: str, num_train_classes: int = 0):
  """The builder ``name`` (see :data:`BUILDERS`) writing array_record under ``data_dir``."""
  if name not in BUILDERS:
    raise ValueError(f"unknown dataset {name!r}; available: {sorted(BUILDERS)}.")
  kwargs = {"data_dir": os.path.expanduser(data_dir), "file_format": "array_record"}
  if name == ImageFolderDml.name:
    kwargs["config"] = ImageFolderDml.config_for(num_train_classes)
  return BUILDERS[name](**kwargs)


def prepare(name: str, *, data_dir: str, manual_dir: str | None, num_train_classes: int = 0,
            skip_unreadable: bool = False):
  """Builds the dataset once (a no-op when already prepared) and returns the builder.

  Every image is checked with Pillow while building: an unreadable one raises
  with its path, or, with ``skip_unreadable``, is left out and counted in the
  log.
  """
  builder = make_builder(name, data_dir=data_dir, num_train_classes=num_train_classes)
  builder.skip_unreadable = skip_unreadable
  if not builder.is_prepared():
    check_manual_dir(type(builder), os.path.expanduser(manual_dir) if manual_dir else None)
  config = tfds.download.DownloadConfig(manual_dir=os.path.expanduser(manual_dir) if manual_dir else None)
  builder.download_and_prepare(download_config=config)
  return builder


class TfdsSplit:
  """One split of a prepared builder, read with ``data_source``; ``files`` are its array_record shards."""

  def __init__(self, builder, split: str):
    self.name = f"{builder.name}/{split}"
    self.source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    cache = os.path.join(builder.data_dir, f"{split}_labels.npy")
    if os.path.exists(cache):
      self.labels = np.load(cache)
    else:
      self.labels = np.asarray([int(self.source[i]["label"]) for i in range(len(self.source))], np.int32)
      np.save(cache, self.labels)
    if len(self.labels) != len(self.source):
      raise ValueError(f"{self.name}: the label cache {cache} is stale; delete it.")
    self.files = sorted(glob.glob(os.path.join(builder.data_dir, f"{builder.name}-{split}.array_record*")))

  def __len__(self) -> int:
    return len(self.source)

  def decode(self, index: int, size: int | None) -> np.ndarray:
    """One image as ``[H, W, 3] uint8`` RGB, warped to ``size`` if given."""
    from hdml_jax.data.image_folder import decode_rgb, unreadable_errors

    record = self.source[int(index)]
    try:
      return decode_rgb(io.BytesIO(record["image"]), size)
    except unreadable_errors() as e:
      name = record["file_name"]
      name = name.decode() if isinstance(name, bytes) else name
      raise ValueError(f"{self.name}: cannot decode image {name!r} (record {index}): {e}") from e

  def images(self, indices, *, size: int) -> np.ndarray:
    """``[len(indices), size, size, 3] uint8``."""
    out = np.empty((len(indices), size, size, 3), np.uint8)
    for row, idx in enumerate(indices):
      out[row] = self.decode(idx, size)
    return out


def open_split(builder, split: str, **kwargs) -> TfdsSplit:
  """The :class:`TfdsSplit` reader of ``split`` of a prepared ``builder`` (keyword arguments go to it)."""
  return TfdsSplit(builder, split, **kwargs)
