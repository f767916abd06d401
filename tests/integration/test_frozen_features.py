"""The frozen-backbone regime: features computed once and cached under a key that names everything they depend
on, then trained on through the same loop, with the centre view for evaluation."""

import json
import os
import tempfile
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import datasets, features
from experiments.run_config import validate_config
from hdml_jax import weights
from hdml_jax.models import get_backbone
from tests.helpers.runs import tiny_cub

pytestmark = pytest.mark.slow


def _weights(folder, backbone="small_cnn", seed=0):
  """A small CNN's random variables saved as a converted weights file (what convert_weights writes)."""
  net = get_backbone(backbone, widths=(4, 8), depth=1) if backbone == "small_cnn" else get_backbone(backbone)
  variables = net.init(jax.random.key(seed), jnp.zeros((1, 16, 16, 3)), train=False)
  path = os.path.join(folder, f"{backbone}-{seed}.npz")
  weights.save_variables(path, variables, meta={"backbone": backbone, "source": "test"})
  return path


def _cfg(folder, **overrides):
  return tiny_cub(**{"features.backbone": "small_cnn", "features.pretrained": _weights(folder),
                     "features.views": 2, "features.batch_size": 5, "features.cache_dir": os.path.join(folder, "cache"),
                     "model.backbone": "identity", "model.backbone_kwargs": {}, **overrides})


def _small_cnn(monkeypatch):
  # The tiny config's CNN has non-default widths: the features backbone is built by name, so register the
  # widths it was saved with.
  from hdml_jax.models import registry

  original = registry._BACKBONES["small_cnn"]
  monkeypatch.setitem(registry._BACKBONES, "small_cnn",
                      lambda **kw: original(**({"widths": (4, 8), "depth": 1} | kw)))


def test_features_are_cached_and_read_back(monkeypatch):
  _small_cnn(monkeypatch)
  folder = tempfile.mkdtemp()
  cfg = _cfg(folder)
  validate_config(cfg)
  data = datasets.load_data(cfg)
  assert data.image_shape == (8,) and not data.is_image
  (entry,) = os.listdir(cfg.features.cache_dir)
  stored = np.load(os.path.join(cfg.features.cache_dir, entry, "train.npy"))
  assert stored.shape == (len(data.train) + len(data.val), 3, 8)   # centre view + 2 augmented views
  key = json.load(open(os.path.join(cfg.features.cache_dir, entry, "key.json")))
  assert key["backbone"] == "small_cnn" and key["views"] == 2 and key["crop"] == 16
  # The centre view equals the backbone on the centre crop, in inference mode.
  variables = {k: v for k, v in weights.load_variables(cfg.features.pretrained).items() if k != weights.META}
  images = data.test.load(np.arange(3))
  rows = data.prepare(images, False, None)
  want = get_backbone("small_cnn").apply(variables, _centre(cfg, np.arange(3)), train=False)
  np.testing.assert_allclose(rows, want, rtol=1e-5, atol=1e-6)
  # Training takes one augmented view per row (never the centre), drawn from the step's rng.
  train_rows = data.train.load(np.arange(4))
  picked = data.prepare(train_rows, True, np.random.default_rng(0))
  for i in range(4):
    assert any(np.array_equal(picked[i], train_rows[i, v]) for v in (1, 2))
  # A second load reads the cache: nothing is computed.
  with mock.patch.object(features, "_embed", side_effect=AssertionError("recomputed")):
    again = datasets.load_data(cfg)
  np.testing.assert_array_equal(again.test.load(np.arange(3)), data.test.load(np.arange(3)))
  # Another view count, other weights or another crop is another entry.
  datasets.load_data(_cfg(folder, **{"features.views": 1, "features.cache_dir": cfg.features.cache_dir}))
  assert len(os.listdir(cfg.features.cache_dir)) == 2


def test_a_killed_feature_computation_resumes_where_it_stopped():
  # 10 photos in batches of 3 (4 batches), 2 augmented views: killed during the third batch, the second
  # call computes the third and fourth batches only, and the file equals an uninterrupted computation's.
  photos = np.arange(10 * 4, dtype=np.float32).reshape(10, 2, 2, 1)

  def prepare(images, train, rng):
    return images + (rng.normal(size=images.shape).astype(np.float32) if train else 0.0)

  calls = []

  def apply(x, fail_at=None):
    calls.append(1)
    if len(calls) == fail_at:
      raise KeyboardInterrupt("killed")
    return x.reshape(len(x), -1) * 2.0

  folder = tempfile.mkdtemp()
  whole = os.path.join(folder, "whole.npy")
  features._embed(apply, lambda idx: photos[idx], 10, prepare, 3, 2, "whole", whole)
  assert len(calls) == 12 and not os.path.exists(whole + ".partial.npy")
  path = os.path.join(folder, "train.npy")
  calls.clear()
  with pytest.raises(KeyboardInterrupt):
    features._embed(lambda x: apply(x, fail_at=8), lambda idx: photos[idx], 10, prepare, 3, 2, "killed", path)
  assert not os.path.exists(path) and json.load(open(path + ".partial.json"))["done"] == 2
  calls.clear()
  features._embed(apply, lambda idx: photos[idx], 10, prepare, 3, 2, "resumed", path)
  assert len(calls) == 6   # batches 3 and 4, 3 views each
  np.testing.assert_array_equal(np.load(path), np.load(whole))
  assert sorted(os.listdir(folder)) == ["train.npy", "whole.npy"]
  # A partial file of another plan (here another batch size) is not continued: computed from the start.
  calls.clear()
  with pytest.raises(KeyboardInterrupt):
    features._embed(lambda x: apply(x, fail_at=5), lambda idx: photos[idx], 10, prepare, 3, 2, "killed",
                    path + "2")
  calls.clear()
  features._embed(apply, lambda idx: photos[idx], 10, prepare, 5, 2, "another plan", path + "2")
  assert len(calls) == 6   # 2 batches of 5, 3 views each: all of them
  assert np.load(path + "2")[:, 0].tolist() == np.load(whole)[:, 0].tolist()   # the centre views agree


def _centre(cfg, idx):
  from hdml_jax.data import image_folder, preprocess

  x, _, _ = image_folder.load_image_folder(cfg.dataset.data_dir, size=cfg.dataset.resize,
                                           class_range=tuple(cfg.dataset.test_classes))
  return preprocess.preprocess(x[idx], recipe=cfg.dataset.preprocess, crop=cfg.dataset.crop, train=False)


def test_a_run_trains_on_the_features_with_hdml_and_resumes(monkeypatch):
  from experiments.train import train_and_evaluate

  _small_cnn(monkeypatch)
  folder = tempfile.mkdtemp()
  cfg = _cfg(folder, num_steps=4)
  results = train_and_evaluate(cfg, os.path.join(folder, "run"))
  assert results["final"]["step"] == 4 and 0 <= results["final"]["recall@1"] <= 1
  assert results["best"] is not None   # selection on the held-out species' centre views
  more = train_and_evaluate(_cfg(folder, num_steps=6, **{"features.cache_dir": cfg.features.cache_dir}),
                            os.path.join(folder, "run"))
  assert more["final"]["step"] == 6


def test_bad_settings_are_refused_in_one_line(monkeypatch):
  folder = tempfile.mkdtemp()
  with pytest.raises(ValueError, match=r"set config.model.backbone='identity' \(got 'small_cnn'\)"):
    validate_config(_cfg(folder, **{"model.backbone": "small_cnn"}))
  with pytest.raises(ValueError, match="config.features.pretrained is empty"):
    validate_config(_cfg(folder, **{"features.pretrained": ""}))
  with pytest.raises(ValueError, match=r"config.features.backbone='resnet' is not a backbone"):
    validate_config(_cfg(folder, **{"features.backbone": "resnet"}))
  with pytest.raises(ValueError, match=r"config.features.views must be an integer >= 0"):
    validate_config(_cfg(folder, **{"features.views": -1}))
  with pytest.raises(ValueError, match="with config.features.backbone the weights are config.features.pretrained"):
    validate_config(_cfg(folder, **{"model.pretrained": "x.npz"}))
  other = _weights(folder, backbone="tiny")
  with pytest.raises(ValueError, match=r"holds weights for the tiny backbone, not features.backbone='small_cnn'"):
    features.load_backbone_variables("small_cnn", other)


def _lite0_part_cfg(folder, **overrides):
  """The last_stage regime at 16 px: EfficientNet-Lite0 (random weights) cached after block 14, block 15 on."""
  net = get_backbone("efficientnet_lite0")
  variables = net.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
  path = os.path.join(folder, "lite0.npz")
  weights.save_variables(path, variables, meta={"backbone": "efficientnet_lite0", "source": "test"})
  return tiny_cub(**{"features.backbone": "efficientnet_lite0", "features.pretrained": path,
                     "features.backbone_kwargs": {"last_block": 14}, "features.views": 1,
                     "features.batch_size": 16, "features.cache_dir": os.path.join(folder, "cache"),
                     "model.backbone": "efficientnet_lite0", "model.pretrained": path,
                     "model.backbone_kwargs": {"first_block": 15, "frozen_bn": True}, **overrides})


def test_the_last_stage_trains_on_cached_activations_from_the_same_weights():
  from experiments import runtime
  from experiments.train import train_and_evaluate

  folder = tempfile.mkdtemp()
  cfg = _lite0_part_cfg(folder, num_steps=3)
  validate_config(cfg)
  data = datasets.load_data(cfg)
  assert data.image_shape == (1, 1, 192)   # 16 px: the activation entering block 15
  (entry,) = os.listdir(cfg.features.cache_dir)
  key = json.load(open(os.path.join(cfg.features.cache_dir, entry, "key.json")))
  assert key["backbone_kwargs"] == {"last_block": 14}
  # The state starts from the file's block 15 and head (the blocks before it are left out), and its
  # features of a cached row equal the whole network's of the photo.
  file_vars = {k: v for k, v in weights.load_variables(cfg.model.pretrained).items() if k != weights.META}
  state = runtime.build_state(cfg, data)
  assert set(state.params["backbone"]) == {"block15", "head_conv", "head_bn"}
  np.testing.assert_array_equal(state.params["backbone"]["block15"]["project_conv"]["conv"]["kernel"],
                                file_vars["params"]["block15"]["project_conv"]["conv"]["kernel"])
  rows = data.prepare(data.test.load(np.arange(3)), False, None)
  part = get_backbone("efficientnet_lite0", first_block=15).apply(
      {"params": state.params["backbone"], "batch_stats": state.batch_stats["backbone"]}, rows, train=False)
  want = get_backbone("efficientnet_lite0").apply(file_vars, _centre(cfg, np.arange(3)), train=False)
  np.testing.assert_allclose(part, want, rtol=1e-5, atol=1e-6)
  results = train_and_evaluate(cfg, os.path.join(folder, "run"))
  assert results["final"]["step"] == 3 and 0 <= results["final"]["recall@1"] <= 1
  # Another part cached is another entry of the cache.
  datasets.load_data(_lite0_part_cfg(folder, **{"features.backbone_kwargs": {"last_block": 13},
                                                "model.backbone_kwargs": {"first_block": 14},
                                                "features.cache_dir": cfg.features.cache_dir}))
  assert len(os.listdir(cfg.features.cache_dir)) == 2
  # A weights file without the part's variables (the blocks before it only) is refused, naming them.
  for col in file_vars:
    file_vars[col] = {k: v for k, v in file_vars[col].items() if k != "block15"}
  weights.save_variables(cfg.model.pretrained, file_vars, meta={"backbone": "efficientnet_lite0"})
  with pytest.raises(weights.WeightMismatchError, match="block15"):
    runtime.build_state(cfg, data)


def test_a_part_that_does_not_continue_the_cached_one_is_refused():
  folder = tempfile.mkdtemp()
  with pytest.raises(ValueError, match=r"caches 'efficientnet_lite0''s activations after block 14: the model must "
                                       r"train the rest, config.model.backbone='efficientnet_lite0' with "
                                       r"config.model.backbone_kwargs.first_block=15 \(got 'efficientnet_lite0' "
                                       r"with \{'first_block': 14\}\)"):
    validate_config(_lite0_part_cfg(folder, **{"model.backbone_kwargs": {"first_block": 14}}))
  with pytest.raises(ValueError, match=r"got 'identity' with \{\}"):
    validate_config(_lite0_part_cfg(folder, **{"model.backbone": "identity", "model.backbone_kwargs": {}}))
  with pytest.raises(ValueError, match=r"config.model.pretrained must be config.features.pretrained"):
    validate_config(_lite0_part_cfg(folder, **{"model.pretrained": "other.npz"}))
  with pytest.raises(ValueError, match=r"must name only last_block \(an integer\)"):
    validate_config(_lite0_part_cfg(folder, **{"features.backbone_kwargs": {"first_block": 3}}))


def test_the_study_table_runs_resumes_and_rebuilds_from_its_records(monkeypatch):
  from experiments.studies import table

  _small_cnn(monkeypatch)
  folder = tempfile.mkdtemp()
  weights_file = _weights(folder)
  config_file = os.path.join(folder, "study_config.py")
  with open(config_file, "w") as f:
    f.write("from tests.helpers.runs import tiny_cub\n\n"
            "def get_config(regime='frozen'):\n"
            f"  return tiny_cub(**{{'features.backbone': 'small_cnn', 'features.pretrained': {weights_file!r},\n"
            "                     'features.views': 1, 'features.batch_size': 8, 'model.backbone': 'identity',\n"
            f"                     'model.backbone_kwargs': {{}}, 'features.cache_dir': {folder + '/cache'!r}}})\n")
  record = os.path.join(folder, "record")
  args = ["--config", config_file + ":frozen", "--workdir", os.path.join(folder, "runs"), "--record", record,
          "--methods", "npair_baseline,npair_hdml", "--seeds", "0,1", "--lrs", "1e-3", "--num_steps", "2",
          "--config.batch_size=6"]
  table.main(args)
  first = open(os.path.join(record, "table.md")).read()
  assert "row 0: untrained features" in first and "| npair_hdml | 0.001 | 2 |" in first
  assert sorted(os.listdir(os.path.join(record, "npair_hdml"))) == ["lr0.001_seed0.json", "lr0.001_seed1.json"]
  with mock.patch("experiments.studies.table.run_one", side_effect=AssertionError("ran again")):
    table.main(args)                               # every record present: nothing runs
    table.main(args + ["--from_records"])          # nor from the records alone
  assert open(os.path.join(record, "table.md")).read().split("Training time")[0] == first.split("Training time")[0]
  os.remove(os.path.join(record, "npair_hdml", "lr0.001_seed1.json"))
  table.main(args + ["--from_records"])
  assert "Not complete: npair_hdml (1 of 2 seeds)" in open(os.path.join(record, "table.md")).read()


def test_the_gpu_imagenet_script_at_toy_size():
  # The GPU script's command line on CPU, with the model and data made tiny (a "pretrained" tiny backbone).
  import subprocess

  from tests.helpers.library import REPO

  out, workdir = tempfile.mkdtemp(), tempfile.mkdtemp()
  env = dict(os.environ, OUT=out, WORKDIR=workdir, SEEDS="0", STEPS="2", LRS="1e-4",
             METHODS="npair_baseline,npair_hdml")
  toy = ["--config.model.backbone=tiny", f"--config.model.pretrained={_weights(workdir, backbone='tiny')}",
         "--config.model.embedding_dim=8", "--config.model.generator_hidden=16",
         "--config.dataset.resize=20", "--config.dataset.crop=16", "--config.dataset.train_classes=(0, 8)",
         "--config.dataset.num_val_classes=2", "--config.dataset.test_classes=(50, 53)", "--config.batch_size=8",
         "--config.num_devices=1", "--config.data_threads=2", "--config.compilation_cache_dir=",
         "--config.hdml.stats_block_length=2", "--config.eval_every=2", "--config.checkpoint_every=2",
         "--config.eval.batch_size=16", f"--config.features.cache_dir={workdir}/cache"]
  proc = subprocess.run(["bash", os.path.join(REPO, "experiments", "studies", "gpu_imagenet.sh"), *toy], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, open(os.path.join(out, "gpu_imagenet.log")).read()[-3000:]
  assert "row 0: untrained features" in proc.stdout and "| npair_hdml | 0.0001 | 1 |" in proc.stdout
  table = json.load(open(os.path.join(out, "table.json")))
  assert set(table["methods"]) == {"npair_baseline", "npair_hdml"} and table["row_zero"]["recall@1"] > 0
