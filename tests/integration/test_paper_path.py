"""The paper's path end to end, at toy size: an official-layout CUB tree, a .caffemodel, convert, train, evaluate.

The commands a user runs, as subprocesses: ``experiments.convert_weights
--source caffemodel`` on a ``bvlc_googlenet``-shaped file (the backbone's
blobs, the auxiliary heads, the classifier), then ``experiments.main`` with
``paper.py:cub,npair,hdml`` and the converted weights, and
``experiments.evaluate`` on the best checkpoint. Only the sizes are
overridden (35 px crops, 4-image batches, 2 steps).
"""

import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.runtime import file_sha256
from hdml_jax import weights
from hdml_jax.models import get_backbone
from tests.helpers.caffe import write_caffemodel
from tests.helpers.library import REPO
from tests.helpers.photos import make_cub_tree

pytestmark = pytest.mark.slow


def _googlenet_caffemodel(path):
  net = get_backbone("googlenet")
  params = jax.jit(lambda: net.init(jax.random.key(11), jnp.zeros((1, 35, 35, 3)), train=False))()["params"]
  blobs = weights.params_to_caffe_blobs(params)
  rng = np.random.default_rng(0)
  layers = [(n, "Convolution", [blobs[n], blobs[n + "_bias"]]) for n in sorted(blobs) if not n.endswith("_bias")]
  layers += [("loss3/classifier", "InnerProduct", [rng.normal(size=(10, 1024)), rng.normal(size=10)]),
             ("prob", "Softmax", [])]
  write_caffemodel(path, layers)
  return params


def _run(*argv, timeout=900):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                        env=env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stdout


def test_caffemodel_to_paper_config_run_and_evaluation():
  root = tempfile.mkdtemp()
  manual = os.path.join(root, "manual")
  make_cub_tree(manual, class_ids=(1, 2, 3, 101, 102))
  params = _googlenet_caffemodel(os.path.join(root, "bvlc_googlenet.caffemodel"))
  converted = os.path.join(root, "weights", "googlenet.npz")
  assert "wrote" in _run("experiments.convert_weights", "--source", "caffemodel", "--input",
                         os.path.join(root, "bvlc_googlenet.caffemodel"), "--output", converted)
  np.testing.assert_array_equal(weights.load_variables(converted)["params"]["inception_5b"]["pool_proj"]["kernel"],
                                np.asarray(params["inception_5b"]["pool_proj"]["kernel"]))
  workdir = os.path.join(root, "run")
  _run("experiments.main", "--workdir", workdir, "--config", "experiments/configs/paper.py:cub,npair,hdml",
       f"--config.dataset.data_dir={manual}", f"--config.dataset.tfds_data_dir={os.path.join(root, 'tfds')}",
       "--config.dataset.resize=40", "--config.dataset.crop=35", f"--config.model.pretrained={converted}",
       "--config.num_steps=2", "--config.batch_size=4", "--config.eval_every=2", "--config.checkpoint_every=2",
       "--config.log_every=1", "--config.eval.batch_size=4", "--config.num_devices=1",
       "--config.compilation_cache_dir=", "--config.data_threads=2")
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["final"]["step"] == 2
  assert results["best"]["step"] == 2 and results["best"]["selection"].startswith("test/nmi (the reference's rule")
  assert results["best"]["recall@1"] == results["final"]["recall@1"]   # the same state, evaluated once
  assert results["pretrained"] == {"path": converted, "sha256": file_sha256(converted)}
  cfg = results["config"]
  assert (cfg["model"]["backbone"], cfg["model"]["embedding_dim"], cfg["loss"]["name"], cfg["hdml"]["enabled"]) == (
      "googlenet", 256, "npair", True)
  assert cfg["dataset"]["preprocess"] == "paper" and cfg["optimizer"]["metric_lr"] == 6e-5
  decoded = os.path.join(root, "tfds", "cub200_2011_dml", "1.0.0", "decoded")
  assert sorted(os.listdir(decoded)) == ["test_40px.json", "test_40px.npy", "train_40px.json", "train_40px.npy"]
  for png in ("embedding_projection.png", "retrieval_grid.png"):
    assert os.path.getsize(os.path.join(workdir, png)) > 1000
  out = json.loads(_run("experiments.evaluate", "--workdir", workdir, "--which", "best"))
  assert out["step"] == 2
  for key in ("recall@1", "recall@2", "map@r", "nmi", "f1"):
    assert out[key] == pytest.approx(results["best"][key], abs=1e-6), key


def _cub100_like(root, n_classes=4, per_class=3):
  """A folder in cub100's own format (comma-separated tables, ids from 0), of real photographs."""
  import shutil

  from tests.helpers.photos import photos

  os.makedirs(os.path.join(root, "images"))
  images, labels, classes, n = [], [], [], 0
  for c, (species, paths) in enumerate(photos(n_classes, per_class)):
    os.makedirs(os.path.join(root, "images", species))
    classes.append(f"{c}, {species}")
    for p in paths:
      shutil.copy(p, os.path.join(root, "images", species, os.path.basename(p)))
      images.append(f"{n}, {species}/{os.path.basename(p)}")
      labels.append(f"{n}, {c}")
      n += 1
  for name, rows in (("images.txt", images), ("image_class_labels.txt", labels), ("classes.txt", classes)):
    open(os.path.join(root, name), "w").write("\n".join(rows) + "\n")
  return root


def test_gpu_check_paper_stages_at_toy_size():
  """The GPU script's paper stages on CPU: input pipeline, phases against a forward pass, the full run."""
  root = tempfile.mkdtemp()
  source = _cub100_like(os.path.join(root, "cub100"))
  out, paper_root = os.path.join(root, "out"), os.path.join(root, "paper")
  tiny = ("--config.model.backbone=small_cnn --config.model.backbone_kwargs={'widths':(4,8),'depth':1} "
          "--config.model.embedding_dim=8 --config.model.generator_hidden=16 --config.dataset.resize=20 "
          "--config.dataset.crop=16 --config.eval.batch_size=4 --config.num_devices=1 --config.data_threads=2")
  env = {**os.environ, "OUT": out, "CUB100": source, "PAPER_ROOT": paper_root, "PAPER_STEPS": "2",
         "PAPER_BATCH": "4", "PAPER_ARGS": tiny, "INPUT_ARGS": "--threads 2 --batches 2 --rounds 1 --sizes cpu --batch 6",
         "PAPER_FULL_S": "300", "JAX_PLATFORMS": "cpu",
         "PAPER_FULL_ARGS": "--config.num_steps=2 --config.eval_every=2 --config.checkpoint_every=2 "
                            "--config.batch_size=4 --config.compilation_cache_dir="}
  proc = subprocess.run(["bash", os.path.join(REPO, "experiments", "benchmarks", "gpu_check.sh"), "paper_"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=900)
  log = open(os.path.join(out, "gpu_check.log")).read()
  assert proc.returncode == 0, log[-4000:]
  for stage in ("paper_input", "paper_phases", "paper_full"):
    assert f"=== {stage}: exit 0" in log, log[-4000:]
  assert "bench_googlenet" not in log   # only the stages named
  phases = json.load(open(os.path.join(out, "bench_paper_run.json")))
  (row,) = phases["rounds"]
  assert row["checkout"] == "this" and min(row["setup"], row["train"], row["evaluation"]) > 0
  assert phases["forward"]["images"] == 6 and phases["forward"]["forward"] > 0
  rows = json.load(open(os.path.join(out, "bench_input_pipeline.json")))["rows"]
  assert {(r["source"], r["threads"]) for r in rows} == {("jpeg", 1), ("jpeg", 2), ("decoded cache", 1),
                                                         ("decoded cache", 2)}
  assert all(r["images_per_s"] > 0 for r in rows)
  full = json.load(open(os.path.join(out, "paper_full_results.json")))
  assert full["final"]["step"] == 2 and full["config"]["hdml"]["beta"] == 5e3
