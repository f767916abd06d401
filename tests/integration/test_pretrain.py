"""experiments.pretrain: the pretrained start of the regime study."""

import json
import os
import tempfile

import chex
import numpy as np
import pytest
from flax import traverse_util

from experiments import datasets, pretrain
from experiments.runtime import build_state, file_sha256
from experiments.train import train_and_evaluate
from hdml_jax import weights
from tests.helpers.library import max_abs_diff
from tests.helpers.runs import fast_default, tiny_cub

pytestmark = pytest.mark.slow   # end-to-end runs, subprocesses, packaging


def npz_arrays(path):
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


class PretrainTest(chex.TestCase):

  def test_digits_pretrain_file_loads_into_both_arms(self):
    workdir = tempfile.mkdtemp()
    results = pretrain.pretrain(fast_default(), workdir)
    path = os.path.join(workdir, "pretrained.npz")
    self.assertEqual(results["pretrained"], {"path": path, "sha256": file_sha256(path)})
    self.assertEqual(results["step"], 12)
    self.assertEqual(results["train_classes"], 5)   # digits 0-4
    arrays = npz_arrays(path)   # a plain archive: readable without pickle
    meta = weights.read_meta(weights.load_variables(path))
    self.assertEqual(meta["backbone"], "mlp")
    self.assertEqual(tuple(meta["image_shape"]), (8, 8, 1))
    self.assertEqual(json.loads(meta["config"])["model"]["backbone"], "mlp")
    self.assertTrue(any(k.startswith("params/") for k in arrays))
    self.assertFalse(any(k.startswith("params/classifier") for k in arrays))
    shas = []
    for enabled in (True, False):   # HDML and its baseline start from the same file
      cfg = fast_default(**{"model.pretrained": path, "hdml.enabled": enabled, "num_steps": 2,
                            "checkpoint_every": 2, "eval_every": 2})
      state = build_state(cfg, datasets.load_data(cfg))
      loaded = {f"params/{'/'.join(k)}": v
                for k, v in traverse_util.flatten_dict(state.params["backbone"]).items()}
      for key, value in loaded.items():
        np.testing.assert_array_equal(value, arrays[key])
      run = train_and_evaluate(cfg, tempfile.mkdtemp())
      shas.append(run["pretrained"]["sha256"])
    self.assertEqual(shas, [results["pretrained"]["sha256"]] * 2)

  def test_resume_after_a_kill_gives_the_same_file(self):
    cfg = fast_default()
    straight = tempfile.mkdtemp()
    pretrain.pretrain(cfg, straight)
    crashed = tempfile.mkdtemp()

    def crash(step, metrics):
      if step == 9:
        raise KeyboardInterrupt("simulated kill")

    with self.assertRaises(KeyboardInterrupt):
      pretrain.pretrain(cfg, crashed, step_hook=crash)
    self.assertFalse(os.path.exists(os.path.join(crashed, "pretrained.npz")))
    pretrain.pretrain(cfg, crashed)
    a, b = (npz_arrays(os.path.join(d, "pretrained.npz")) for d in (straight, crashed))
    self.assertEqual(set(a), set(b))
    self.assertLess(max(float(np.max(np.abs(a[k] - b[k]))) for k in a if k.startswith(("params", "batch"))),
                    1e-6)

  def test_cub100_pretrain_excludes_held_out_and_test_classes(self):
    cfg = tiny_cub()
    workdir = tempfile.mkdtemp()
    results = pretrain.pretrain(cfg, workdir)
    self.assertEqual(results["train_classes"], 4)   # 6 training species, the last 2 held out
    self.assertIsNotNone(results["val"])            # held-out Recall@K logged, for information
    meta = weights.read_meta(weights.load_variables(os.path.join(workdir, "pretrained.npz")))
    data = datasets.load_data(cfg)
    self.assertEqual(json.loads(meta["classes"]), list(data.train.class_names))
    self.assertFalse(set(json.loads(meta["classes"])) & set(data.val.class_names))
    self.assertFalse(set(json.loads(meta["classes"])) & set(data.test.class_names))
    path = os.path.join(workdir, "pretrained.npz")
    ft = tiny_cub(**{"model.pretrained": path})
    state = build_state(ft, datasets.load_data(ft))
    self.assertGreater(max_abs_diff(state.params["backbone"], build_state(tiny_cub(), data).params["backbone"]),
                       0.0)
    # Another input size or another backbone: the mismatching arrays are named.
    with self.assertRaisesRegex(weights.WeightMismatchError, r"meta/image_shape is \(16, 16, 3\) in the file, "
                                r"the model has \(12, 12, 3\)"):
      other = tiny_cub(**{"model.pretrained": path, "dataset.crop": 12})
      build_state(other, datasets.load_data(other))
    with self.assertRaisesRegex(weights.WeightMismatchError, r"meta/backbone_kwargs"):
      other = tiny_cub(**{"model.pretrained": path, "model.backbone_kwargs.widths": (4, 16)})
      build_state(other, datasets.load_data(other))
    with self.assertRaisesRegex(weights.WeightMismatchError, r"meta/backbone is 'small_cnn' in the file, "
                                r"the model has 'mlp'"):
      other = tiny_cub(**{"model.pretrained": path, "model.backbone": "mlp",
                          "model.backbone_kwargs": {"hidden": (8,)}})
      build_state(other, datasets.load_data(other))

  def test_file_without_meta_still_checked_by_array(self):
    # A file for other shapes (written without meta/): every mis-shaped array is named.
    cfg = tiny_cub()
    workdir = tempfile.mkdtemp()
    path = os.path.join(workdir, "other.npz")
    other = build_state(tiny_cub(**{"model.backbone_kwargs.widths": (4, 16)}), datasets.load_data(cfg))
    weights.save_variables(path, {"params": other.params["backbone"],
                                  "batch_stats": other.batch_stats["backbone"]})
    with self.assertRaisesRegex(weights.WeightMismatchError, r"mis-shaped .*kernel is"):
      build_state(tiny_cub(**{"model.pretrained": path}), datasets.load_data(cfg))

  def test_bad_input_is_refused_at_start(self):
    missing = os.path.join(tempfile.mkdtemp(), "nope.npz")
    with self.assertRaisesRegex(FileNotFoundError, "nope.npz"):
      cfg = fast_default(**{"model.pretrained": missing})
      train_and_evaluate(cfg, tempfile.mkdtemp())
    truncated = os.path.join(tempfile.mkdtemp(), "cut.npz")
    workdir = tempfile.mkdtemp()
    pretrain.pretrain(fast_default(num_steps=1, checkpoint_every=1), workdir)
    with open(os.path.join(workdir, "pretrained.npz"), "rb") as f:
      blob = f.read()
    with open(truncated, "wb") as f:
      f.write(blob[: len(blob) // 2])
    with self.assertRaisesRegex(ValueError, "cut.npz.*not a readable .npz"):
      cfg = fast_default(**{"model.pretrained": truncated})
      build_state(cfg, datasets.load_data(cfg))
    with self.assertRaisesRegex(ValueError, "at least 2 training classes, got 1"):
      pretrain.pretrain(tiny_cub(**{"dataset.train_classes": (0, 1), "dataset.num_val_classes": 0,
                                    "selection.split": "none", "batch_size": 2}), tempfile.mkdtemp())
    with self.assertRaisesRegex(ValueError, "model.pretrained must be empty"):
      pretrain.pretrain(fast_default(**{"model.pretrained": truncated}), tempfile.mkdtemp())
