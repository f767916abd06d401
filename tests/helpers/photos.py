"""Photographs and official-layout trees written by the tests."""

import os
import shutil

import numpy as np
from PIL import Image

from tests.helpers.library import CUB100


def photos(n_classes=4, per_class=3):
  """``[(species folder, [paths])]`` of real photographs."""
  classes = sorted(os.listdir(CUB100))[:n_classes]
  return [(c, [os.path.join(CUB100, c, f) for f in sorted(os.listdir(os.path.join(CUB100, c)))[:per_class]])
          for c in classes]


def pil_rgb(path, size):
  with Image.open(path) as img:
    return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))


def make_cub_tree(root, class_ids=(1, 2, 101, 102)):
  base = os.path.join(root, "CUB_200_2011")
  lines_img, lines_lab, sources = [], [], {}
  image_id = 1
  for cid, (species, paths) in zip(class_ids, photos(len(class_ids))):
    folder = f"{cid:03d}.{species}"
    os.makedirs(os.path.join(base, "images", folder))
    for p in paths:
      rel = f"{folder}/{os.path.basename(p)}"
      shutil.copy(p, os.path.join(base, "images", rel))
      lines_img.append(f"{image_id} {rel}")
      lines_lab.append(f"{image_id} {cid}")
      sources[rel] = p
      image_id += 1
  open(os.path.join(base, "images.txt"), "w").write("\n".join(lines_img) + "\n")
  open(os.path.join(base, "image_class_labels.txt"), "w").write("\n".join(lines_lab) + "\n")
  # The archive's other tables (the builders do not read them: the DML split is by class).
  open(os.path.join(base, "classes.txt"), "w").write(
      "".join(f"{cid} {cid:03d}.{species}\n" for cid, (species, _) in zip(class_ids, photos(len(class_ids)))))
  open(os.path.join(base, "train_test_split.txt"), "w").write(
      "".join(f"{i} {i % 2}\n" for i in range(1, image_id)))
  return sources
