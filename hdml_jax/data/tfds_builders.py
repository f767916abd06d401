"""TFDS builders for the HDML benchmarks and for users' own image folders.

Each builder prepares ``array_record`` files from archives or folders that the
user downloaded and unpacked (TFDS ``manual_dir``) and needs no TensorFlow, to
build or to read: images are stored as their original encoded bytes and
decoded with Pillow when read (:mod:`hdml_jax.data.tfds_source`).

Splits are class-disjoint, as in the paper:

=======================  =================================  ==============================
builder                  ``train``                          ``test``
=======================  =================================  ==============================
``cub200_2011_dml``      classes 1-100                      classes 101-200
``cars196_dml``          classes 1-98                       classes 99-196
``sop_dml``              ``Ebay_train.txt``                 ``Ebay_test.txt``
``image_folder_dml``     the first ``num_train_classes``    the rest
=======================  =================================  ==============================

Labels are the dataset's class ids minus one (0-based, over all classes)::

    builder = Cub2002011Dml(data_dir="~/tensorflow_datasets")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir="/data/cub"))
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

__all__ = [
    "BUILDERS",
    "Cars196Dml",
    "Cub2002011Dml",
    "ImageFolderConfig",
    "ImageFolderDml",
    "SopDml",
    "check_manual_dir",
]


def _features(num_classes: int) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(num_classes=num_classes),
      "file_name": tfds.features.Text(),
  })


def check_manual_dir(builder_cls, manual_dir) -> list[str]:
  """Validates ``manual_dir`` against the builder's layout before TFDS touches it."""
  if builder_cls is ImageFolderDml:
    from hdml_jax.data.image_folder import list_classes

    list_classes(str(manual_dir)) if manual_dir else _require(None, [], builder_cls.name, "root/<class>/<image>")
    return []
  return _require(manual_dir, builder_cls.REQUIRED, builder_cls.name, builder_cls.LAYOUT)


def _require(manual_dir, relative: list[str], dataset: str, layout: str) -> list[str]:
  """Absolute paths of the expected files; a clear error naming all missing ones."""
  if manual_dir is None or not os.path.isdir(str(manual_dir)):
    raise FileNotFoundError(
        f"{dataset}: manual_dir {str(manual_dir)!r} does not exist. Download the official "
        f"archive, unpack it and pass its folder as manual_dir; expected layout: {layout}")
  paths = [os.path.join(str(manual_dir), r) for r in relative]
  missing = [r for r, p in zip(relative, paths) if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(
        f"{dataset}: {missing} not found under manual_dir {str(manual_dir)!r}; expected layout: {layout}")
  return paths


def _read_table(path: str, columns: int, dataset: str, header: bool = False) -> list[list[str]]:
  rows = []
  with open(path) as f:
    lines = f.read().splitlines()
  for n, line in enumerate(lines[1:] if header else lines, start=2 if header else 1):
    if not line.strip():
      continue
    parts = line.split()
    if len(parts) != columns:
      raise ValueError(f"{dataset}: {path}:{n}: expected {columns} space-separated fields, got {line!r}.")
    rows.append(parts)
  return rows


def _readable(builder, path: str) -> bool:
  """Checks one image with Pillow; raises naming it unless the builder skips unreadable ones."""
  from hdml_jax.data.image_folder import decode_rgb, unreadable_errors

  if not os.path.isfile(path):
    raise FileNotFoundError(f"{builder.name}: image {path!r} listed in the annotations does not exist.")
  try:
    decode_rgb(path)   # a full decode: what the reader will do later
    return True
  except unreadable_errors() as e:
    if getattr(builder, "skip_unreadable", False):
      builder.skipped = getattr(builder, "skipped", 0) + 1
      logging.warning("%s: skipping unreadable image %s (%d skipped so far): %s",
                      builder.name, path, builder.skipped, e)
      return False
    raise ValueError(f"{builder.name}: cannot read image {path!r}: {e} (pass skip_unreadable=True "
                     "to leave such images out)") from e


class _OfficialBuilder(tfds.core.GeneratorBasedBuilder):
  """Shared parts of the official-layout builders (abstract: not registered).

  Subclasses set ``NUM_CLASSES`` and make items ``(key, path, 1-based class, file name)``.
  """

  VERSION = tfds.core.Version("1.0.0")
  NUM_CLASSES = 0

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=_features(self.NUM_CLASSES),
                                 supervised_keys=("image", "label"))

  def _generate_examples(self, items):
    for key, path, label, rel in items:
      if _readable(self, path):
        yield key, {"image": path, "label": label - 1, "file_name": rel}


class Cub2002011Dml(_OfficialBuilder):
  """CUB-200-2011 from the official ``CUB_200_2011.tgz``, unpacked in manual_dir."""

  name = "cub200_2011_dml"
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Unpack CUB_200_2011.tgz into manual_dir (manual_dir/CUB_200_2011/...)."
  REQUIRED = ["CUB_200_2011/images.txt", "CUB_200_2011/image_class_labels.txt"]
  LAYOUT = ("CUB_200_2011/images.txt ('<id> <path>'), CUB_200_2011/image_class_labels.txt "
            "('<id> <class id>'), CUB_200_2011/images/<class folder>/<file>.jpg; ids from 1")
  NUM_CLASSES = 200

  def _split_generators(self, dl_manager):
    images_txt, labels_txt = _require(dl_manager.manual_dir, self.REQUIRED, self.name, self.LAYOUT)
    paths = dict(_read_table(images_txt, 2, self.name))
    labels = {i: int(c) for i, c in _read_table(labels_txt, 2, self.name)}
    if set(paths) != set(labels):
      raise ValueError(f"{self.name}: images.txt and image_class_labels.txt list different image ids.")
    root = os.path.join(str(dl_manager.manual_dir), "CUB_200_2011", "images")
    items = [(i, os.path.join(root, paths[i]), labels[i], paths[i]) for i in sorted(paths, key=int)]
    return {"train": self._generate_examples([x for x in items if x[2] <= 100]),
            "test": self._generate_examples([x for x in items if x[2] > 100])}


class Cars196Dml(_OfficialBuilder):
  """Cars196 from the official ``car_ims.tgz`` and ``cars_annos.mat`` in manual_dir."""

  name = "cars196_dml"
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put cars_annos.mat and the unpacked car_ims/ folder in manual_dir."
  REQUIRED = ["cars_annos.mat"]
  LAYOUT = ("cars_annos.mat (struct 'annotations' with relative_im_path and class, classes "
            "1-196) and car_ims/<file>.jpg")
  NUM_CLASSES = 196

  def _split_generators(self, dl_manager):
    from scipy.io import loadmat

    (annos,) = _require(dl_manager.manual_dir, self.REQUIRED, self.name, self.LAYOUT)
    mat = loadmat(annos)
    if "annotations" not in mat:
      raise ValueError(f"{self.name}: {annos} has no 'annotations' struct; expected layout: {self.LAYOUT}")
    items = []
    for n, a in enumerate(mat["annotations"].ravel()):
      try:
        rel, label = str(np.asarray(a["relative_im_path"]).ravel()[0]), int(np.asarray(a["class"]).ravel()[0])
      except (ValueError, IndexError) as e:
        raise ValueError(f"{self.name}: annotation {n} in {annos} lacks relative_im_path or class: {e}")
      items.append((n, os.path.join(str(dl_manager.manual_dir), rel), label, rel))
    return {"train": self._generate_examples([x for x in items if x[2] <= 98]),
            "test": self._generate_examples([x for x in items if x[2] > 98])}


class SopDml(_OfficialBuilder):
  """Stanford Online Products from the official ``Stanford_Online_Products.zip``."""

  name = "sop_dml"
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Unzip Stanford_Online_Products.zip into manual_dir."
  REQUIRED = ["Stanford_Online_Products/Ebay_train.txt", "Stanford_Online_Products/Ebay_test.txt"]
  LAYOUT = ("Stanford_Online_Products/Ebay_train.txt and Ebay_test.txt (header, then "
            "'<image_id> <class_id> <super_class_id> <path>'), images under Stanford_Online_Products/")
  NUM_CLASSES = 22634

  def _split_generators(self, dl_manager):
    train_txt, test_txt = _require(dl_manager.manual_dir, self.REQUIRED, self.name, self.LAYOUT)
    root = os.path.dirname(train_txt)
    split = lambda txt: [(int(r[0]), os.path.join(root, r[3]), int(r[1]), r[3])
                         for r in _read_table(txt, 4, self.name, header=True)]
    return {"train": self._generate_examples(split(train_txt)),
            "test": self._generate_examples(split(test_txt))}


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
  """``num_train_classes``: the first classes (sorted folder names) form ``train``."""

  num_train_classes: int = 0


class ImageFolderDml(tfds.core.GeneratorBasedBuilder):
  """Any folder with one sub-folder per class (manual_dir/<class>/<image>).

  Build with ``ImageFolderDml(config=ImageFolderDml.config_for(n), data_dir=...)``;
  the first ``n`` classes in sorted order are ``train``, the rest ``test``.
  """

  name = "image_folder_dml"
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Point manual_dir at a folder of class sub-folders."
  BUILDER_CONFIGS = [ImageFolderConfig(name="half", num_train_classes=0)]

  @staticmethod
  def config_for(num_train_classes: int) -> ImageFolderConfig:
    return ImageFolderConfig(name=f"train{num_train_classes}", num_train_classes=num_train_classes)

  def _classes(self, manual_dir) -> list[str]:
    from hdml_jax.data.image_folder import list_classes

    if manual_dir is None:
      raise FileNotFoundError(f"{self.name}: manual_dir is required: a folder of class sub-folders.")
    return list_classes(str(manual_dir))

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            # The class count is only known once manual_dir is read, so a plain int.
            "label": tfds.features.Scalar(np.int64),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    from hdml_jax.data.image_folder import list_images

    classes = self._classes(dl_manager.manual_dir)
    n_train = self.builder_config.num_train_classes or len(classes) // 2
    if not 1 <= n_train < len(classes):
      raise ValueError(f"{self.name}: num_train_classes={n_train} must lie in [1, {len(classes) - 1}] "
                       f"for the {len(classes)} classes of {dl_manager.manual_dir}.")
    paths, labels = list_images(str(dl_manager.manual_dir), classes)
    items = list(zip(paths, labels.tolist()))
    return {"train": self._generate_examples([x for x in items if x[1] < n_train]),
            "test": self._generate_examples([x for x in items if x[1] >= n_train])}

  def _generate_examples(self, items):
    for path, label in items:
      rel = os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))
      if _readable(self, path):
        yield rel, {"image": path, "label": label, "file_name": rel}


#: Each builder class by its TFDS name.
BUILDERS = {b.name: b for b in (Cub2002011Dml, Cars196Dml, SopDml, ImageFolderDml)}
