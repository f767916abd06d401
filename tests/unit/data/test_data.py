"""Builders on small trees in the official layouts, made from real cub100 photographs."""

import os
import shutil
import tempfile

import chex
import numpy as np
from absl.testing import parameterized
from PIL import Image
from scipy.io import savemat

from hdml_jax.data import (
  EpochNPairSampler,
  MPerClassSampler,
  NPairSampler,
  TripletSampler,
  image_folder,
  make_sampler,
  preprocess,
  tfds_source,
)
from tests.helpers.library import CUB100
from tests.helpers.photos import make_cub_tree, photos, pil_rgb


class BuildersTest(chex.TestCase):

  def _build(self, name, manual_dir, **kw):
    return tfds_source.prepare(name, data_dir=tempfile.mkdtemp(), manual_dir=manual_dir, **kw)

  def test_cub_official_layout(self):
    manual = tempfile.mkdtemp()
    sources = make_cub_tree(manual)
    builder = self._build("cub200_2011_dml", manual)
    train, test = tfds_source.open_split(builder, "train"), tfds_source.open_split(builder, "test")
    self.assertEqual((len(train), len(test)), (6, 6))
    self.assertEqual(sorted(set(train.labels.tolist())), [0, 1])
    self.assertEqual(sorted(set(test.labels.tolist())), [100, 101])
    record = train.source[0]
    rel = record["file_name"].decode() if isinstance(record["file_name"], bytes) else record["file_name"]
    np.testing.assert_array_equal(train.images([0], size=32)[0], pil_rgb(sources[rel], 32))
    # The labels are cached beside the data and reused.
    self.assertTrue(os.path.exists(os.path.join(builder.data_dir, "train_labels.npy")))
    np.testing.assert_array_equal(tfds_source.open_split(builder, "train").labels, train.labels)

  def test_cars_official_layout(self):
    manual = tempfile.mkdtemp()
    os.makedirs(os.path.join(manual, "car_ims"))
    rows, n = [], 1
    for cid, (_, paths) in zip((1, 2, 99, 100), photos(4, 2)):
      for p in paths:
        rel = f"car_ims/{n:06d}.jpg"
        shutil.copy(p, os.path.join(manual, rel))
        rows.append((rel, 1, 1, 50, 50, cid, 0))
        n += 1
    annos = np.zeros((1, len(rows)), dtype=[(f, "O") for f in (
        "relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")])
    for i, r in enumerate(rows):
      annos[0, i] = tuple(np.array([[v]]) if not isinstance(v, str) else np.array([v]) for v in r)
    savemat(os.path.join(manual, "cars_annos.mat"), {"annotations": annos})
    builder = self._build("cars196_dml", manual)
    train, test = tfds_source.open_split(builder, "train"), tfds_source.open_split(builder, "test")
    self.assertEqual(sorted(train.labels.tolist()), [0, 0, 1, 1])
    self.assertEqual(sorted(test.labels.tolist()), [98, 98, 99, 99])
    self.assertEqual(train.images([1], size=24).shape, (1, 24, 24, 3))

  def test_sop_official_layout(self):
    manual = tempfile.mkdtemp()
    base = os.path.join(manual, "Stanford_Online_Products")
    os.makedirs(os.path.join(base, "bicycle_final"))
    header = "image_id class_id super_class_id path"
    train_rows, test_rows, n = [header], [header], 1
    for cid, (_, paths) in zip((1, 2, 11319, 11320), photos(4, 2)):
      for p in paths:
        rel = f"bicycle_final/{n}_0.JPG"
        shutil.copy(p, os.path.join(base, rel))
        (train_rows if cid <= 2 else test_rows).append(f"{n} {cid} 1 {rel}")
        n += 1
    open(os.path.join(base, "Ebay_train.txt"), "w").write("\n".join(train_rows) + "\n")
    open(os.path.join(base, "Ebay_test.txt"), "w").write("\n".join(test_rows) + "\n")
    builder = self._build("sop_dml", manual)
    self.assertEqual(sorted(set(tfds_source.open_split(builder, "test").labels.tolist())), [11318, 11319])
    self.assertEqual(len(tfds_source.open_split(builder, "train")), 4)

  def test_image_folder_builder_on_cub100_slice_with_grey_and_cmyk(self):
    manual = tempfile.mkdtemp()
    for species, paths in photos(4, 3):
      os.makedirs(os.path.join(manual, species))
      for p in paths:
        shutil.copy(p, os.path.join(manual, species, os.path.basename(p)))
    first = photos(1, 1)[0][1][0]
    with Image.open(first) as img:
      img.convert("L").save(os.path.join(manual, photos(1)[0][0], "zz_grey.jpg"))
      img.convert("CMYK").save(os.path.join(manual, photos(1)[0][0], "zz_cmyk.jpg"))
    builder = self._build("image_folder_dml", manual, num_train_classes=2)
    train = tfds_source.open_split(builder, "train")
    self.assertEqual(len(train), 3 + 2 + 3)
    self.assertEqual(sorted(set(tfds_source.open_split(builder, "test").labels.tolist())), [2, 3])
    decoded = train.images(np.arange(len(train)), size=20)
    self.assertEqual(decoded.shape, (8, 20, 20, 3))

  def test_errors_name_what_is_expected(self):
    with self.assertRaisesRegex(FileNotFoundError, r"manual_dir .* does not exist.*CUB_200_2011/images.txt"):
      self._build("cub200_2011_dml", os.path.join(tempfile.mkdtemp(), "nowhere"))
    manual = tempfile.mkdtemp()
    make_cub_tree(manual)
    os.remove(os.path.join(manual, "CUB_200_2011", "image_class_labels.txt"))
    with self.assertRaisesRegex(FileNotFoundError, r"\['CUB_200_2011/image_class_labels.txt'\] not found"):
      self._build("cub200_2011_dml", manual)
    with self.assertRaisesRegex(FileNotFoundError, r"Ebay_train.txt.*Ebay_test.txt"):
      self._build("sop_dml", tempfile.mkdtemp())
    with self.assertRaisesRegex(ValueError, "unknown dataset 'coco'"):
      tfds_source.make_builder("coco", data_dir=tempfile.mkdtemp())

  def test_unreadable_image_named_or_skipped_on_request(self):
    manual = tempfile.mkdtemp()
    make_cub_tree(manual)
    bad = os.path.join(manual, "CUB_200_2011", "images",
                       sorted(os.listdir(os.path.join(manual, "CUB_200_2011", "images")))[0])
    bad = os.path.join(bad, sorted(os.listdir(bad))[0])
    open(bad, "wb").write(b"not a jpeg at all")
    with self.assertRaisesRegex(ValueError, "cannot read image .*" + os.path.basename(bad)):
      self._build("cub200_2011_dml", manual)
    with self.assertLogs(level="WARNING") as logs:
      builder = self._build("cub200_2011_dml", manual, skip_unreadable=True)
    self.assertEqual(builder.skipped, 1)
    self.assertIn("1 skipped", "\n".join(logs.output))
    self.assertEqual(len(tfds_source.open_split(builder, "train")), 5)


class ImageFolderLoaderTest(chex.TestCase):

  def test_loads_sorted_classes_and_errors(self):
    images, labels, names = image_folder.load_image_folder(CUB100, size=16, class_range=(0, 2))
    self.assertEqual(names, sorted(os.listdir(CUB100))[:2])
    self.assertEqual(images.shape[1:], (16, 16, 3))
    self.assertEqual(sorted(set(labels.tolist())), [0, 1])
    with self.assertRaisesRegex(FileNotFoundError, "does not exist"):
      image_folder.load_image_folder("/nonexistent/folder", size=16)
    empty = tempfile.mkdtemp()
    os.makedirs(os.path.join(empty, "a"))
    with self.assertRaisesRegex(ValueError, "holds no images"):
      image_folder.load_image_folder(empty, size=16)
    with self.assertRaisesRegex(ValueError, r"class range \(0, 500\) is outside"):
      image_folder.load_image_folder(CUB100, size=16, class_range=(0, 500))
    bad = tempfile.mkdtemp()
    os.makedirs(os.path.join(bad, "a"))
    open(os.path.join(bad, "a", "x.jpg"), "wb").write(b"junk")
    shutil.copy(photos(1, 1)[0][1][0], os.path.join(bad, "a", "y.jpg"))
    with self.assertRaisesRegex(ValueError, "cannot decode image .*x.jpg"):
      image_folder.load_image_folder(bad, size=8)
    with self.assertLogs(level="WARNING"):
      imgs, labs, _ = image_folder.load_image_folder(bad, size=8, skip_unreadable=True)
    self.assertEqual(len(labs), 1)


def _labels(seed=0, n=300, classes=20):
  return np.random.default_rng(seed).integers(0, classes, n)


class ImageDecodingTest(chex.TestCase):

  def test_sixteen_bit_png_is_scaled_not_clipped(self):
    from hdml_jax.data.image_folder import decode_image

    path = os.path.join(tempfile.mkdtemp(), "deep.png")
    values = np.array([[0, 257, 32768], [40000, 65280, 65535]], np.uint16)
    Image.fromarray(values).save(path)
    with Image.open(path) as img:
      self.assertTrue(img.mode.startswith("I"), img.mode)   # really a 16-bit image
    rgb = decode_image(path)
    self.assertEqual(rgb.dtype, np.uint8)
    np.testing.assert_array_equal(rgb[..., 0], np.round(values / 257.0).astype(np.uint8))
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])

  def test_float_tiff_is_scaled_or_refused_with_its_path(self):
    from hdml_jax.data.image_folder import decode_image

    folder = tempfile.mkdtemp()
    values = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    good, bad = os.path.join(folder, "unit.tif"), os.path.join(folder, "hdr.tif")
    Image.fromarray(values, mode="F").save(good)
    Image.fromarray(values * 300.0, mode="F").save(bad)
    np.testing.assert_array_equal(decode_image(good)[..., 1], [[0, 64], [128, 255]])
    with self.assertRaisesRegex(ValueError, r"hdr.tif.*values in \[0, 1\]"):
      decode_image(bad)

  def test_decompression_bomb_is_an_unreadable_image(self):
    from hdml_jax.data.image_folder import decode_image, load_images

    folder = tempfile.mkdtemp()
    bomb, fine = os.path.join(folder, "bomb.png"), os.path.join(folder, "fine.png")
    Image.fromarray(np.zeros((120, 120, 3), np.uint8)).save(bomb)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(fine)
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 5000    # 14,400 pixels is over twice the limit: Pillow's bomb error
    try:
      with self.assertRaisesRegex(ValueError, r"bomb.png.*DecompressionBombError"):
        decode_image(bomb)
      images, kept = load_images([bomb, fine], size=8, skip_unreadable=True)
      self.assertEqual(kept.tolist(), [1])
      self.assertEqual(images.shape, (1, 8, 8, 3))
    finally:
      Image.MAX_IMAGE_PIXELS = limit


class SamplersTest(chex.TestCase):

  def test_npair_layout_determinism_and_resume(self):
    labels = _labels()
    s = NPairSampler(labels, num_pairs=8, seed=3)
    for step in range(20):
      b = s(step)
      a, p = labels[b[:8]], labels[b[8:]]
      np.testing.assert_array_equal(a, p)             # pairs share a class
      self.assertEqual(len(set(a.tolist())), 8)        # distinct classes
      self.assertEqual(len(set(b.tolist())), 16)       # two different images per pair
    fresh = NPairSampler(labels, num_pairs=8, seed=3)
    np.testing.assert_array_equal(fresh(17), s(17))    # resumable from a step number
    self.assertFalse(np.array_equal(NPairSampler(labels, num_pairs=8, seed=4)(17), s(17)))

  def test_triplet_class_rules(self):
    labels = _labels(1)
    s = TripletSampler(labels, num_triplets=10, seed=0)
    for step in range(20):
      b = s(step)
      a, p, n = labels[b[:10]], labels[b[10:20]], labels[b[20:]]
      np.testing.assert_array_equal(a, p)
      self.assertFalse(set(n.tolist()) & set(a.tolist()))   # no negative shares any anchor's class
      self.assertTrue(np.all(b[:10] != b[10:20]))
    np.testing.assert_array_equal(TripletSampler(labels, num_triplets=10, seed=0)(7), s(7))

  @parameterized.parameters(2, 4)
  def test_m_per_class_epoch_coverage(self, m):
    labels = _labels(2, n=250, classes=15)
    s = MPerClassSampler(labels, m=m, batch_size=4 * m, seed=0)
    epoch, _ = s.epoch_of(0)
    n_batches = len(s._epochs[0])
    seen = np.concatenate([s(i) for i in range(n_batches)])
    self.assertEqual(set(seen.tolist()), set(range(len(labels))))   # every image once per epoch
    for i in range(n_batches):
      cls = labels[s(i)].reshape(4, m)
      self.assertTrue(np.all(cls == cls[:, :1]))                       # m images per class
      self.assertEqual(len(set(cls[:, 0].tolist())), 4)                # distinct classes
    self.assertEqual(s.epoch_of(n_batches), (1, 0))
    resumed = MPerClassSampler(labels, m=m, batch_size=4 * m, seed=0)
    np.testing.assert_array_equal(resumed(n_batches + 3), s(n_batches + 3))

  def test_epoch_npair_layout(self):
    labels = _labels(3)
    s = make_sampler("npair", labels, batch_size=12, seed=0, epochs=True)
    self.assertIsInstance(s, EpochNPairSampler)
    b = s(4)
    np.testing.assert_array_equal(labels[b[:6]], labels[b[6:]])

  def test_errors(self):
    labels = np.array([0, 0, 1, 1, 2])
    with self.assertRaisesRegex(ValueError, r"at least 2 images; classes \[2\] have fewer"):
      NPairSampler(labels, num_pairs=2)
    with self.assertRaisesRegex(ValueError, "num_pairs=3 distinct classes requested but the data has only 2"):
      NPairSampler(labels[:4], num_pairs=3)
    with self.assertRaisesRegex(ValueError, "only 2 classes"):
      MPerClassSampler(labels[:4], m=2, batch_size=6)
    with self.assertRaisesRegex(ValueError, "divisible by 3"):
      make_sampler("triplet", labels, batch_size=10)
    with self.assertRaisesRegex(ValueError, "N-pair batches only"):
      make_sampler("triplet", labels, batch_size=9, epochs=True)


class PreprocessTest(chex.TestCase):

  def test_paper_recipe_values_and_crops(self):
    img = np.zeros((1, 8, 8, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 30     # R, G, B
    img[0, 2, 2] = (200, 200, 200)                           # marks the centre crop's corner
    out = preprocess.preprocess(img, recipe="paper", crop=4, train=False)
    self.assertEqual(out.shape, (1, 4, 4, 3))
    np.testing.assert_allclose(out[0, 1, 1], [30 - 104, 20 - 117, 10 - 123])   # BGR minus mean
    np.testing.assert_allclose(out[0, 0, 0], [200 - 104, 200 - 117, 200 - 123])
    std = preprocess.preprocess(img, recipe="standard", crop=8, train=False)
    np.testing.assert_allclose(std[0, 0, 0], (np.array([10, 20, 30]) / 255 - preprocess.IMAGENET_MEAN)
                               / preprocess.IMAGENET_STD, rtol=1e-5)

  def test_random_crop_and_flip(self):
    img = np.arange(2 * 6 * 6 * 3, dtype=np.uint8).reshape(2, 6, 6, 3)
    a = preprocess.preprocess(img, recipe="unit", crop=4, train=True, rng=np.random.default_rng(0))
    b = preprocess.preprocess(img, recipe="unit", crop=4, train=True, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    flips = [preprocess.preprocess(img[:1], recipe="unit", crop=6, train=True, rng=np.random.default_rng(s))
             for s in range(20)]
    plain = img[0].astype(np.float32) / 255.0
    kinds = {bool(np.array_equal(f[0], plain)) for f in flips}
    self.assertEqual(kinds, {True, False})   # both flipped and unflipped occur
    for f in flips:
      self.assertTrue(np.array_equal(f[0], plain) or np.array_equal(f[0], plain[:, ::-1]))

  def test_errors(self):
    img = np.zeros((1, 8, 8, 3), np.uint8)
    with self.assertRaisesRegex(ValueError, "crop size 9 exceeds the image size 8x8"):
      preprocess.preprocess(img, recipe="paper", crop=9, train=False)
    with self.assertRaisesRegex(ValueError, "recipe must be one of"):
      preprocess.preprocess(img, recipe="vgg", crop=4, train=False)
    with self.assertRaisesRegex(ValueError, "needs an rng"):
      preprocess.preprocess(img, recipe="paper", crop=4, train=True)
