"""What the tests share: builders, fixtures, brute-force references (no test module imports another)."""

import itertools
import os
import shutil
import threading
from unittest import mock

import jax
import numpy as np
import threadpoolctl
from PIL import Image

from experiments import checkpoints, datasets
from experiments.configs import cub100, default
from experiments.configs.base import override
from experiments.runtime import build_state
from hdml_jax import evaluation as ev
from hdml_jax.config import HDMLConfig, OptimizerConfig
from hdml_jax.data import (
  load_digits_split,
  make_sampler,
)
from hdml_jax.evaluation import _device as ev_device
from hdml_jax.evaluation import _exact as ev_exact
from hdml_jax.evaluation import _host as ev_host
from hdml_jax.train_state import create_train_state


def tiny_state(loss="npair", hdml=True, seed=0, optimizer=None, num_classes=10, **config_kwargs):
  config = HDMLConfig(loss=loss, hdml=hdml, **config_kwargs)
  return create_train_state(
      jax.random.key(seed), image_shape=(8, 8, 1), num_classes=num_classes, embedding_dim=6,
      backbone="small_cnn", backbone_kwargs=dict(widths=(4, 8)), generator_hidden=16,
      config=config, optimizer=optimizer or OptimizerConfig(metric_lr=1e-3, generator_lr=1e-3),
      stats_block_length=4)


def digits_batch(loss="npair", batch_size=None, step=0, seed=0):
  images, labels = load_digits_split("train")
  batch_size = batch_size or (8 if loss in ("npair", "multi_similarity") else 9)
  idx = make_sampler(loss, labels, batch_size=batch_size, seed=seed)(step)
  return {"images": images[idx], "labels": labels[idx]}


def recall_at_1(embeddings, labels):
  """Brute force: the nearest other point shares the label."""
  e = np.asarray(embeddings, np.float64)
  hits = 0
  for i in range(len(e)):
    d = np.sum((e - e[i]) ** 2, axis=1)
    d[i] = np.inf
    hits += labels[int(np.argmin(d))] == labels[i]
  return hits / len(e)


def max_abs_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the checkout
CUB100 = os.path.join(os.path.dirname(REPO), "shared", "data", "cub100", "images")


def tiny_cub(**overrides):
  """The cub100 config on 6 + 3 species at 16 px with a tiny CNN (keys overridable, dotted)."""
  from experiments.configs.base import override

  cfg = cub100.get_config()
  cfg.dataset.data_dir = CUB100
  cfg.dataset.train_classes, cfg.dataset.test_classes = (0, 6), (50, 53)
  cfg.dataset.num_val_classes = 2
  cfg.dataset.resize, cfg.dataset.crop = 20, 16
  cfg.model.backbone_kwargs = {"widths": (4, 8), "depth": 1}
  cfg.model.embedding_dim, cfg.model.generator_hidden = 8, 16
  cfg.batch_size, cfg.num_steps = 8, 4
  cfg.log_every = cfg.eval_every = cfg.checkpoint_every = 2
  cfg.compilation_cache_dir = ""
  cfg.num_devices = 1
  cfg.plots = False
  for key, value in overrides.items():
    override(cfg, key, value)
  return cfg


# --- evaluation: brute-force references, data and engine settings


def brute_neighbors(q, g, exclude_self):
  """Sorted by (distance, index) with plain loops."""
  out = []
  for i in range(len(q)):
    cands = []
    for j in range(len(g)):
      if exclude_self and i == j:
        continue
      d = sum((float(a) - float(b)) ** 2 for a, b in zip(q[i], g[j]))
      cands.append((d, j))
    cands.sort()
    out.append([j for _, j in cands])
  return out


def brute_metrics(x, y, ks):
  nbrs = brute_neighbors(x, x, True)
  rec = {k: np.mean([any(y[j] == y[i] for j in nb[:k]) for i, nb in enumerate(nbrs)]) for k in ks}
  rps, aps = [], []
  for i, nb in enumerate(nbrs):
    r = sum(1 for j in range(len(y)) if j != i and y[j] == y[i])
    if r == 0:
      continue
    hits, ap = 0, 0.0
    for pos, j in enumerate(nb[:r], start=1):
      if y[j] == y[i]:
        hits += 1
        ap += hits / pos
    rps.append(hits / r)
    aps.append(ap / r)
  return rec, np.mean(rps), np.mean(aps), len(aps)


def brute_pair_f1(y, c):
  tp = fp = fn = 0
  for i, j in itertools.combinations(range(len(y)), 2):
    same_class, same_cluster = y[i] == y[j], c[i] == c[j]
    tp += same_class and same_cluster
    fp += same_cluster and not same_class
    fn += same_class and not same_cluster
  p = tp / (tp + fp) if tp + fp else 0.0
  r = tp / (tp + fn) if tp + fn else 0.0
  return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def blobs(seed=0, n=120, classes=6, d=5, spread=0.6):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, classes, n)
  centers = rng.normal(size=(classes, d)) * 3
  return (centers[y] + spread * rng.normal(size=(n, d))).astype(np.float32), y


def numpy_neighbors(q, g, exclude_self, k):
  """Float64 brute force, sorted by (distance, index)."""
  d = ((q.astype(np.float64)[:, None, :] - g.astype(np.float64)[None]) ** 2).sum(-1)
  if exclude_self:
    np.fill_diagonal(d, np.inf)
  index = np.broadcast_to(np.arange(g.shape[0]), d.shape)
  return np.lexsort((index, d), axis=-1)[:, :k]


def metrics_from_neighbors(nbrs, yq, yg, ks, exclude_self):
  """Recall@K, R-precision and MAP@R from exact neighbour lists, by plain loops."""
  rec = {k: np.mean([any(yg[j] == yq[i] for j in nb[:k]) for i, nb in enumerate(nbrs)]) for k in ks}
  rps, aps = [], []
  for i, nb in enumerate(nbrs):
    r = int(np.sum(yg == yq[i])) - (1 if exclude_self else 0)
    if r == 0:
      continue
    rel = [yg[j] == yq[i] for j in nb[:r]]
    rps.append(sum(rel) / r)
    aps.append(sum(sum(rel[:p + 1]) / (p + 1) for p in range(r) if rel[p]) / r)
  return rec, np.mean(rps), np.mean(aps)


def near_ties(n, seed, d=16, clusters=6, grid=12):
  """Clusters on an integer grid plus offsets on a 2^-grid grid: many exact and near ties,
  closer than float32's |q|^2 + |g|^2 - 2 q.g can separate (all values exact in float32)."""
  rng = np.random.default_rng(seed)
  centers = rng.integers(-3, 4, size=(clusters, d))
  offsets = rng.integers(-4, 5, size=(n, d)) * 2.0 ** -grid
  return (centers[rng.integers(0, clusters, n)] + offsets).astype(np.float32)


class OnDevice:
  """Mixed into a test class: its searches use the device engine (XLA, what ``"auto"`` picks on an
  accelerator), where the class itself runs with what ``"auto"`` picks here (the host engine on a CPU)."""

  def setUp(self):
    super().setUp()
    patcher = mock.patch.object(ev_exact, "_auto_engine", return_value="device")
    patcher.start()
    self.addCleanup(patcher.stop)

  def test_the_searches_run_on_the_device_engine(self):
    calls = []
    real = ev_device._knn_chunk
    with mock.patch.object(ev_device, "_knn_chunk", lambda *a, **kw: calls.append(1) or real(*a, **kw)):
      ev.nearest_neighbors(blobs()[0], k=3)
    self.assertNotEqual(calls, [])


class SmallTiles:
  """Mixed into a test class: leave-one-out searches on the host take the symmetric path
  (``_symmetric_candidates``) with tiles of 16 rows, so that test sets of a few hundred items
  have many tiles, first offers narrower than the candidates, and many merges."""

  def setUp(self):
    super().setUp()
    patcher = mock.patch.object(ev_host, "_TILE", 16)
    patcher.start()
    self.addCleanup(patcher.stop)

  def test_the_searches_take_the_symmetric_path(self):
    calls = []
    real = ev_host._symmetric_candidates
    with mock.patch.object(ev_host, "_symmetric_candidates", lambda *a: calls.append(1) or real(*a)):
      ev.nearest_neighbors(blobs()[0], k=3, engine="host")
    self.assertEqual(calls, [1])


def eval_data(seed=0, n=40, classes=4, d=3, spread=1.0):
  rng = np.random.default_rng(seed)
  y = np.arange(n) % classes
  centers = rng.normal(size=(classes, d)) * 3
  return (centers[y] + spread * rng.normal(size=(n, d))).astype(np.float32), y


def blas_threads(info=None):
  return {i["num_threads"] for i in (info or threadpoolctl.threadpool_info()) if i["user_api"] == "blas"}


class ProductSpy:
  """Stands in for ``np.matmul(a, b)``: records the BLAS threads and the worker thread of each product,
  checks that both operands are float32 (and ``check(a, b)`` if given), and computes it."""

  def __init__(self, test, check=None):
    self.test, self.check, self.real = test, check, np.matmul
    self.seen, self.workers = [], set()

  def __call__(self, a, b):
    self.seen.append(blas_threads())
    self.workers.add(threading.get_ident())
    self.test.assertEqual((a.dtype, b.dtype), (np.float32, np.float32))
    if self.check:
      self.check(a, b)
    return self.real(a, b)


# --- experiments: fast runs and what they leave on disk


RESULT_KEYS = {"recall@1", "recall@2", "recall@4", "recall@8", "precision@1", "r_precision",
               "map@r", "nmi", "f1"}


def fast_default(**overrides):
  c = default.get_config()
  c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 12, 4, 6, 4
  c.compilation_cache_dir = ""
  c.plots = False
  c.num_devices = 1   # the suite runs with 8 fake devices; these batches are small
  for key, value in overrides.items():
    override(c, key, value)
  return c


def restored_latest(cfg, workdir):
  data = datasets.load_data(cfg)
  mgr = checkpoints.make_manager(os.path.join(workdir, "checkpoints"), max_to_keep=10)
  state = checkpoints.restore(mgr, build_state(cfg, data))
  mgr.close()
  return state


def saved_steps(workdir):
  mgr = checkpoints.make_manager(os.path.join(workdir, "checkpoints"), max_to_keep=100)
  steps = sorted(mgr.all_steps())
  mgr.close()
  return steps


# --- data: photographs and official-layout trees written by the tests


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


# --- parallel: batches for the sharding tests


def synthetic_batches(loss, batch_size, steps, seed=0, num_classes=16):
  """Random 8x8 'images' with tuple layouts valid for ``loss``."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(steps):
    if loss == "npair":
      p = batch_size // 2
      cls = rng.permutation(num_classes)[:p]
      labels = np.concatenate([cls, cls])
    else:
      t = batch_size // 3
      cls = rng.permutation(num_classes)
      labels = np.concatenate([cls[:t], cls[:t], cls[t:2 * t]])
    images = rng.normal(size=(batch_size, 8, 8, 1)).astype(np.float32) + labels[:, None, None, None] * 0.1
    out.append({"images": images, "labels": labels.astype(np.int32)})
  return out


# --- caffemodel: files in Caffe's wire format, written by protobuf (an encoder independent of the reader)


def _caffe_messages():
  """Message classes for the subset of ``caffe.proto`` a ``.caffemodel``'s weights use (same field numbers)."""
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

  F = descriptor_pb2.FieldDescriptorProto
  fdp = descriptor_pb2.FileDescriptorProto(name="hdml_test_caffe.proto", package="hdml_test_caffe", syntax="proto2")

  def message(name, *fields):
    m = fdp.message_type.add(name=name)
    for fname, number, ftype, label, packed, type_name in fields:
      f = m.field.add(name=fname, number=number, type=ftype, label=label)
      if type_name:
        f.type_name = ".hdml_test_caffe." + type_name
      if packed:
        f.options.packed = True

  rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
  message("BlobShape", ("dim", 1, F.TYPE_INT64, rep, True, ""))
  for name, packed in (("BlobProto", True), ("BlobProtoUnpacked", False)):
    message(name, ("shape", 7, F.TYPE_MESSAGE, opt, False, "BlobShape"),
            ("data", 5, F.TYPE_FLOAT, rep, packed, ""), ("diff", 6, F.TYPE_FLOAT, rep, packed, ""),
            ("double_data", 8, F.TYPE_DOUBLE, rep, packed, ""),
            ("num", 1, F.TYPE_INT32, opt, False, ""), ("channels", 2, F.TYPE_INT32, opt, False, ""),
            ("height", 3, F.TYPE_INT32, opt, False, ""), ("width", 4, F.TYPE_INT32, opt, False, ""))
  message("LayerParameter", ("name", 1, F.TYPE_STRING, opt, False, ""), ("type", 2, F.TYPE_STRING, opt, False, ""),
          ("bottom", 3, F.TYPE_STRING, rep, False, ""), ("top", 4, F.TYPE_STRING, rep, False, ""),
          ("loss_weight", 5, F.TYPE_FLOAT, rep, False, ""),
          ("blobs", 7, F.TYPE_MESSAGE, rep, False, "BlobProto"),
          ("phase", 10, F.TYPE_INT32, opt, False, ""),
          ("convolution_param", 106, F.TYPE_BYTES, opt, False, ""))
  message("V1LayerParameter", ("bottom", 2, F.TYPE_STRING, rep, False, ""), ("top", 3, F.TYPE_STRING, rep, False, ""),
          ("name", 4, F.TYPE_STRING, opt, False, ""), ("type", 5, F.TYPE_INT32, opt, False, ""),
          ("blobs", 6, F.TYPE_MESSAGE, rep, False, "BlobProtoUnpacked"),
          ("blobs_lr", 7, F.TYPE_FLOAT, rep, False, ""))
  message("NetParameter", ("name", 1, F.TYPE_STRING, opt, False, ""),
          ("layers", 2, F.TYPE_MESSAGE, rep, False, "V1LayerParameter"),
          ("input", 3, F.TYPE_STRING, rep, False, ""), ("input_dim", 4, F.TYPE_INT32, rep, False, ""),
          ("layer", 100, F.TYPE_MESSAGE, rep, False, "LayerParameter"))
  pool = descriptor_pool.DescriptorPool()
  pool.Add(fdp)
  return {m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"hdml_test_caffe.{m.name}"))
          for m in fdp.message_type}


def write_caffemodel(path, layers, *, v1=False, double=False):
  """Writes ``[(name, type, [arrays])]`` as a ``.caffemodel``.

  Current format: ``layer`` (field 100) with string types and ``BlobShape``
  shapes. ``v1=True``: the legacy ``layers`` (field 2) with enum types, blobs
  unpacked, shapes as ``num/channels/height/width`` (padded to 4-D, as Caffe
  saved them). ``double=True`` stores ``double_data``.
  """
  m = _caffe_messages()
  net = m["NetParameter"](name="test_net", input=["data"], input_dim=[10, 3, 227, 227])
  for i, (name, kind, blobs) in enumerate(layers):
    layer = (net.layers.add(name=name, type=int(kind) if str(kind).isdigit() else 4, bottom=["x"], top=[name])
             if v1 else net.layer.add(name=name, type=kind, bottom=["x"], top=[name], phase=1,
                                      convolution_param=b"\x08\x40\x10\x01"))
    for b in blobs:
      b = np.asarray(b)
      blob = layer.blobs.add()
      if double:
        blob.double_data.extend(b.astype(np.float64).ravel().tolist())
      else:
        blob.data.extend(b.astype(np.float32).ravel().tolist())
      if v1:
        shape = (1,) * (4 - b.ndim) + b.shape
        blob.num, blob.channels, blob.height, blob.width = shape
      else:
        blob.shape.dim.extend(b.shape)
  with open(path, "wb") as f:
    f.write(net.SerializeToString())


# --- gradients by central finite differences (for checks against NumPy loops)


def numeric_grad(f, x, h=1e-6):
  """The gradient of the scalar ``f`` at the float64 array ``x`` by central differences, entry by entry."""
  g = np.zeros_like(x)
  for idx in np.ndindex(*x.shape):
    up, down = x.copy(), x.copy()
    up[idx] += h
    down[idx] -= h
    g[idx] = (f(up) - f(down)) / (2 * h)
  return g
