"""Image collections laid out one sub-folder per class, decoded with Pillow.

``root/<class name>/<image>.jpg``: classes are the sub-folders sorted by
name, so "the first 50 classes" is well defined. Greyscale, CMYK, palette
and other modes are converted to RGB (16-bit and float images scaled to
8 bits, see :func:`to_rgb8`).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "decode_image",
    "decode_rgb",
    "list_classes",
    "list_images",
    "load_image_folder",
    "load_images",
    "to_rgb8",
    "unreadable_errors",
]


#: The file extensions read as images (case-insensitive).
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


def unreadable_errors() -> tuple:
  """What Pillow raises for a file that is not a decodable, safe image (a decompression bomb included)."""
  from PIL import Image, UnidentifiedImageError

  return (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


def to_rgb8(img) -> np.ndarray:
  """A Pillow image as ``[H, W, 3] uint8`` RGB, with high-bit-depth modes scaled, not clipped.

  16-bit integer images (modes ``I;16*`` and ``I``, e.g. 16-bit PNGs) are
  read as 0..65535 and divided by 257; floating-point images (mode ``F``,
  e.g. float TIFFs) must hold values in [0, 1] and are multiplied by 255;
  a float image outside [0, 1] raises ``ValueError`` (its scale is unknown).
  Every other mode goes through Pillow's ``convert("RGB")``.
  """
  if img.mode.startswith("I;16") or img.mode == "I":
    a = np.asarray(img, np.float64)
    gray = np.round(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if img.mode == "F":
    a = np.asarray(img, np.float64)
    if not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0:
      raise ValueError(f"a floating-point image must hold values in [0, 1], got [{np.nanmin(a):.4g}, "
                       f"{np.nanmax(a):.4g}] (its scale is unknown; convert it to 8-bit first)")
    gray = np.round(a * 255.0).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  return np.asarray(img.convert("RGB"), np.uint8)


def decode_rgb(source, size: int | None = None) -> np.ndarray:
  """``[H, W, 3] uint8`` RGB from a path or file object; warped (aspect-ignoring) resize to ``size``."""
  from PIL import Image

  with Image.open(source) as img:
    rgb = to_rgb8(img)
  if size is not None and rgb.shape[:2] != (size, size):
    rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), np.uint8)
  return rgb


def decode_image(path: str, size: int | None = None) -> np.ndarray:
  """``[H, W, 3] uint8`` RGB; warped (aspect-ignoring) resize to ``size`` if given.

  Any unreadable file (corrupt, truncated, a decompression bomb, a float
  image outside [0, 1]) raises ``ValueError`` naming it.
  """
  try:
    return decode_rgb(path, size)
  except unreadable_errors() as e:
    raise ValueError(f"cannot decode image {path!r}: {type(e).__name__}: {e}") from e


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
