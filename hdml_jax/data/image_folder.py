"""Image collections laid out one sub-folder per class, decoded with Pillow.

``root/<class name>/<image>.jpg``: classes are the sub-folders sorted by
name, so "the first 50 classes" is well defined. Greyscale, CMYK, palette
and other modes are converted to RGB.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def list_classes(root: str) -> list[str]:
  """Sub-folder names of ``root``, sorted."""
  if not os.path.isdir(root):
    raise FileNotFoundError(
        f"image folder {root!r} does not exist: expected root/<class name>/<image files>.")
  classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if not classes:
    raise ValueError(f"image folder {root!r} has no class sub-folders: expected root/<class name>/<image files>.")
  return classes


def list_images(root: str, classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
  """Image paths and class indices (position in ``classes``), sorted by path."""
  paths, labels = [], []
  for label, name in enumerate(classes):
    folder = os.path.join(root, name)
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"class folder {folder!r} does not exist.")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      raise ValueError(f"class folder {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    paths += [os.path.join(folder, f) for f in files]
    labels += [label] * len(files)
  return paths, np.asarray(labels, np.int32)


def decode_image(path: str, size: int | None = None) -> np.ndarray:
  """``[H, W, 3] uint8`` RGB; warped (aspect-ignoring) resize to ``size`` if given."""
  from PIL import Image, UnidentifiedImageError

  try:
    with Image.open(path) as img:
      img = img.convert("RGB")
      if size is not None:
        img = img.resize((size, size), Image.BILINEAR)
      return np.asarray(img, np.uint8)
  except (OSError, UnidentifiedImageError, ValueError) as e:
    raise ValueError(f"cannot decode image {path!r}: {e}") from e


def load_images(
    paths: Sequence[str], *, size: int, skip_unreadable: bool = False, num_threads: int = 8
) -> tuple[np.ndarray, np.ndarray]:
  """Decodes ``paths`` into ``[N, size, size, 3] uint8``.

  Returns the images and the indices (into ``paths``) that were kept. An
  unreadable file raises with its path, unless ``skip_unreadable`` is set,
  in which case it is skipped and the count logged.
  """

  def one(path):
    try:
      return decode_image(path, size)
    except ValueError:
      if skip_unreadable:
        return None
      raise

  with ThreadPoolExecutor(max_workers=num_threads) as pool:
    decoded = list(pool.map(one, paths))
  kept = [i for i, img in enumerate(decoded) if img is not None]
  if len(kept) < len(paths):
    logging.warning("skipped %d unreadable images of %d", len(paths) - len(kept), len(paths))
  if not kept:
    raise ValueError("no readable images.")
  return np.stack([decoded[i] for i in kept]), np.asarray(kept)


def load_image_folder(
    root: str,
    *,
    size: int,
    class_range: tuple[int, int] | None = None,
    skip_unreadable: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Loads the classes ``class_range = (start, stop)`` of ``root`` (sorted order).

  Returns ``(images [N, size, size, 3] uint8, labels [N] int32, class names)``;
  labels index the *returned* class names (0 .. stop - start - 1).
  """
  classes = list_classes(root)
  if class_range is not None:
    start, stop = class_range
    if not 0 <= start < stop <= len(classes):
      raise ValueError(
          f"class range {class_range} is outside the {len(classes)} classes of {root!r}.")
    classes = classes[start:stop]
  paths, labels = list_images(root, classes)
  images, kept = load_images(paths, size=size, skip_unreadable=skip_unreadable)
  return images, labels[kept], classes
