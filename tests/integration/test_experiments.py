"""End-to-end runs of experiments/ on tiny settings."""

import json
import os
import subprocess
import sys
import tempfile

import chex
import jax
import numpy as np
import pytest

from experiments import checkpoints, datasets
from experiments.configs import cub100, paper
from experiments.evaluate import evaluate_checkpoint
from experiments.loop import NonFiniteLossError, NonFiniteStateError
from experiments.runtime import file_sha256
from experiments.train import train_and_evaluate
from tests.helpers.library import REPO, max_abs_diff
from tests.helpers.runs import RESULT_KEYS, fast_default, restored_latest, saved_steps, tiny_cub

pytestmark = pytest.mark.slow   # end-to-end runs, subprocesses, packaging


class ExperimentsTest(chex.TestCase):

  def test_default_end_to_end_results_and_plots(self):
    workdir = tempfile.mkdtemp()
    cfg = fast_default(plots=True)
    results = train_and_evaluate(cfg, workdir)
    on_disk = json.load(open(os.path.join(workdir, "results.json")))
    self.assertEqual(on_disk["final"]["step"], 12)
    self.assertLessEqual(RESULT_KEYS, set(on_disk["final"]))
    for k in RESULT_KEYS:
      self.assertTrue(0.0 <= on_disk["final"][k] <= 1.0, k)
    self.assertIsNone(on_disk["best"])   # the default selects nothing (no validation classes)
    self.assertEqual(on_disk["config"]["loss"]["name"], "npair")
    self.assertGreater(on_disk["wall_seconds"], 0)
    self.assertEqual(results["final"], on_disk["final"])
    for name in ("curves.png", "embedding_projection.png"):
      path = os.path.join(workdir, name)
      self.assertTrue(os.path.getsize(path) > 1000, name)
      with open(path, "rb") as f:
        self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
    rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    self.assertEqual([r["step"] for r in rows], [4, 8, 12])
    self.assertLessEqual({"train/j_m", "train/j_syn", "train/j_gen", "train/w", "train/hardness",
                          "train/stat/j_avg"}, set(rows[0]))
    self.assertTrue(os.listdir(os.path.join(workdir, "tensorboard")))
    # The evaluate entry point reproduces the final metrics from the checkpoint.
    again = evaluate_checkpoint(cfg, workdir, split="test", which="latest")
    self.assertEqual(again["step"], 12)
    self.assertAlmostEqual(again["recall@1"], results["final"]["recall@1"], places=6)
    self.assertAlmostEqual(again["map@r"], results["final"]["map@r"], places=6)
    with self.assertRaisesRegex(FileNotFoundError, "no best checkpoint .*selection.split='none'"):
      evaluate_checkpoint(cfg, workdir, which="best")
    self.assertFalse(os.path.exists(os.path.join(workdir, "best")))   # no empty folder either
    with self.assertRaisesRegex(FileNotFoundError, r"no checkpoint at step 5 .*saved steps: \[8, 12\]"):
      evaluate_checkpoint(cfg, workdir, which="5")
    with self.assertRaisesRegex(ValueError, "--which must be"):
      evaluate_checkpoint(cfg, workdir, which="newest")

  def test_resume_after_a_crash_matches_an_uninterrupted_run(self):
    cfg = fast_default()
    straight = tempfile.mkdtemp()
    train_and_evaluate(cfg, straight)

    crashed = tempfile.mkdtemp()

    def crash(step, metrics):
      if step == 9:    # steps 0..9 ran; the last checkpoint holds step 8
        raise KeyboardInterrupt("simulated kill")

    with self.assertRaises(KeyboardInterrupt):
      train_and_evaluate(cfg, crashed, step_hook=crash)
    self.assertEqual(int(restored_latest(cfg, crashed).step), 8)
    train_and_evaluate(cfg, crashed)
    a, b = restored_latest(cfg, straight), restored_latest(cfg, crashed)
    self.assertEqual(int(a.step), 12)
    self.assertEqual(int(b.step), 12)
    self.assertLess(max_abs_diff(a.params, b.params), 1e-6)
    self.assertLess(max_abs_diff(a.opt_state, b.opt_state), 1e-6)
    self.assertLess(max_abs_diff(a.stats, b.stats), 1e-6)

  def test_best_checkpoint_on_held_out_training_classes(self):
    cfg = fast_default(**{"dataset.num_val_classes": 2, "selection.split": "val", "batch_size": 6})
    workdir = tempfile.mkdtemp()
    results = train_and_evaluate(cfg, workdir)
    best = json.load(open(os.path.join(workdir, "best.json")))
    self.assertIn(best["step"], (6, 12))
    self.assertEqual(results["best"]["selection"], "val/recall@1")
    self.assertLessEqual(RESULT_KEYS, set(results["best"]))
    rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    self.assertTrue(any("val/recall@1" in r for r in rows))
    evaluated = evaluate_checkpoint(cfg, workdir, split="val", which="best")
    self.assertEqual(evaluated["step"], best["step"])
    self.assertAlmostEqual(evaluated["recall@1"], best["value"], places=6)

  def test_non_finite_loss_stops_with_the_step_named(self):
    # lr 1e30: the first update gives weights of about 1e30 (finite), and the
    # loss computed on them is not. That state must never be checkpointed.
    cfg = fast_default(**{"optimizer.metric_lr": 1e30, "checkpoint_every": 1})
    workdir = tempfile.mkdtemp()
    with self.assertRaisesRegex(NonFiniteLossError,
                                r"not finite at step 1 .*No checkpoint had been written yet"):
      train_and_evaluate(cfg, workdir)
    self.assertEqual(saved_steps(workdir), [])

  def test_an_update_to_inf_is_never_checkpointed(self):
    # lr 1e39 is inf in float32: the update of step 0 makes the weights inf
    # while step 0's own loss was finite. A one-step run must refuse to write
    # its final checkpoint and name the arrays.
    cfg = fast_default(**{"optimizer.metric_lr": 1e39, "num_steps": 1, "checkpoint_every": 1})
    workdir = tempfile.mkdtemp()
    with self.assertRaisesRegex(NonFiniteStateError,
                                r"after step 1 holds non-finite values \(\['params'\].*No checkpoint"):
      train_and_evaluate(cfg, workdir)
    self.assertEqual(saved_steps(workdir), [])
    cfg = fast_default(**{"optimizer.metric_lr": 1e39, "checkpoint_every": 1})
    with self.assertRaisesRegex(NonFiniteLossError, r"No checkpoint had been written yet"):
      train_and_evaluate(cfg, workdir)
    self.assertEqual(saved_steps(workdir), [])

  def test_an_exploding_schedule_keeps_only_checkpoints_that_train_on(self):
    # The metric learning rate jumps by 1e34 at step 14: the update of step
    # 14 gives finite weights of about 1e30, and the loss of step 15 on them
    # is NaN. Checkpoint 15 (finite, but useless: every resume would diverge
    # again) must not be written; the error names checkpoint 14.
    cfg = fast_default(**{"optimizer.metric_boundaries": (14,), "optimizer.metric_decay": 1e34,
                          "num_steps": 20, "checkpoint_every": 1, "eval_every": 100,
                          "keep_checkpoints": 30})
    workdir = tempfile.mkdtemp()
    with self.assertRaisesRegex(NonFiniteLossError, r"not finite at step 15 .*last finite checkpoint \(step 14\)"):
      train_and_evaluate(cfg, workdir)
    self.assertEqual(saved_steps(workdir), list(range(1, 15)))
    state = restored_latest(cfg, workdir)
    chex.assert_tree_all_finite(state.params)
    self.assertLess(max(float(np.max(np.abs(x))) for x in jax.tree_util.tree_leaves(state.params)), 10.0)

  def test_resume_skips_a_non_finite_checkpoint_of_an_older_version(self):
    cfg = fast_default()
    straight = tempfile.mkdtemp()
    train_and_evaluate(cfg, straight)
    workdir = tempfile.mkdtemp()
    train_and_evaluate(fast_default(num_steps=8), workdir)
    # What a version that checked only the loss could leave behind: a newer
    # checkpoint whose weights are NaN.
    good = restored_latest(cfg, workdir)
    bad = good.replace(step=good.step + 4, params=jax.tree_util.tree_map(lambda x: x * np.nan, good.params))
    mgr = checkpoints.make_manager(os.path.join(workdir, "checkpoints"), max_to_keep=10)
    checkpoints.save(mgr, 12, bad)
    mgr.wait_until_finished()
    mgr.close()
    self.assertEqual(saved_steps(workdir), [4, 8, 12])
    with self.assertLogs(level="WARNING") as logged:
      train_and_evaluate(cfg, workdir)
    self.assertTrue(any("checkpoint 12" in m and "non-finite" in m for m in logged.output), logged.output)
    resumed = restored_latest(cfg, workdir)
    self.assertEqual(int(resumed.step), 12)
    self.assertLess(max_abs_diff(resumed.params, restored_latest(cfg, straight).params), 1e-6)

  def test_divergence_inside_a_block_of_unfetched_steps(self):
    # Metrics are fetched in blocks of 4 steps; the learning rate jumps to
    # 1e30 at step 6, so the loss diverges inside the block 4..7. The error
    # must name that step, and the checkpoint at 8 must never be written.
    cfg = fast_default(**{"optimizer.metric_boundaries": (6,), "optimizer.metric_decay": 1e34,
                          "eval_every": 100})
    workdir = tempfile.mkdtemp()
    with self.assertRaisesRegex(NonFiniteLossError, r"not finite at step [67] .*step 4\)"):
      train_and_evaluate(cfg, workdir)
    state = restored_latest(cfg, workdir)
    self.assertEqual(int(state.step), 4)
    chex.assert_tree_all_finite(state.params)
    rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    self.assertEqual([r["step"] for r in rows], [4])   # the diverged block is never logged

  def test_fetching_metrics_in_blocks_changes_nothing(self):
    # A step_hook makes the loop fetch every step; without one it fetches
    # every log_every steps. Same parameters, same logged means.
    cfg = fast_default()
    seen = []
    per_step, blocks = tempfile.mkdtemp(), tempfile.mkdtemp()
    train_and_evaluate(cfg, per_step, step_hook=lambda step, m: seen.append(step))
    train_and_evaluate(cfg, blocks)
    self.assertEqual(seen, list(range(12)))
    self.assertEqual(max_abs_diff(restored_latest(cfg, per_step).params,
                                  restored_latest(cfg, blocks).params), 0.0)
    load = lambda d: [{k: v for k, v in json.loads(l).items() if not k.startswith("perf/")}
                      for l in open(os.path.join(d, "metrics.jsonl"))]
    self.assertEqual(load(per_step), load(blocks))
    self.assertGreater(json.loads(open(os.path.join(blocks, "metrics.jsonl")).readline())
                       ["perf/steps_per_second"], 0.0)

  def test_config_errors(self):
    with self.assertRaisesRegex(ValueError, "batch_size must be a positive integer"):
      train_and_evaluate(fast_default(batch_size=0), tempfile.mkdtemp())
    with self.assertRaisesRegex(ValueError, "selection.split='val' needs"):
      train_and_evaluate(fast_default(**{"selection.split": "val"}), tempfile.mkdtemp())
    with self.assertRaisesRegex(ValueError, "HDML has no synthesis for config.loss.name='arcface'"):
      train_and_evaluate(fast_default(**{"loss.name": "arcface"}), tempfile.mkdtemp())
    with self.assertRaisesRegex(ValueError, "dataset.name must be"):
      train_and_evaluate(fast_default(**{"dataset.name": "mnist"}), tempfile.mkdtemp())
    with self.assertRaisesRegex(ValueError, "config string must be"):
      paper.get_config("imagenet,npair,hdml")
    # The command line rejects unknown keys (the config is locked).
    out = subprocess.run(
        [sys.executable, "-m", "experiments.main", "--workdir", tempfile.mkdtemp(),
         "--config.hdml.alfa=3"], cwd=REPO, capture_output=True, text=True, timeout=120)
    self.assertNotEqual(out.returncode, 0)
    self.assertIn("alfa", out.stderr)

  def test_image_folder_run_writes_a_retrieval_grid(self):
    cfg = tiny_cub(num_steps=3, log_every=3, eval_every=3, checkpoint_every=3, plots=True)
    workdir = tempfile.mkdtemp()
    results = train_and_evaluate(cfg, workdir)
    self.assertEqual(results["final"]["step"], 3)
    self.assertTrue(os.path.getsize(os.path.join(workdir, "retrieval_grid.png")) > 1000)
    data = datasets.load_data(cfg)
    self.assertEqual(data.train.num_classes, 4)
    self.assertEqual(data.val.num_classes, 2)
    self.assertEqual(data.test.num_classes, 3)
    self.assertEqual(data.train.load(np.arange(3)).dtype, np.uint8)
    self.assertEqual(data.image_shape, (16, 16, 3))
    cfg.dataset.test_classes = (5, 8)
    with self.assertRaisesRegex(ValueError, "overlap"):
      datasets.load_data(cfg)

  def test_persistent_compilation_cache_is_written(self):
    cache = tempfile.mkdtemp()
    cfg = fast_default(compilation_cache_dir=cache, num_steps=2, log_every=1, eval_every=2,
                       checkpoint_every=2)
    try:
      train_and_evaluate(cfg, tempfile.mkdtemp())
      self.assertTrue(os.listdir(cache))
    finally:
      jax.config.update("jax_compilation_cache_dir", None)


class TfdsExperimentTest(chex.TestCase):

  def test_cub_official_layout_streams_through_a_run(self):
    from tests.helpers.photos import make_cub_tree

    manual = tempfile.mkdtemp()
    make_cub_tree(manual, class_ids=(1, 2, 3, 101, 102))
    cfg = cub100.get_config()
    cfg.dataset.name, cfg.dataset.data_dir = "cub", manual
    cfg.dataset.tfds_data_dir = tempfile.mkdtemp()
    cfg.dataset.num_val_classes = 0
    cfg.dataset.resize, cfg.dataset.crop = 20, 16
    cfg.selection.split = "none"
    cfg.epoch_sampler = True
    cfg.model.backbone_kwargs = {"widths": (4, 8), "depth": 1}
    cfg.model.embedding_dim, cfg.model.generator_hidden = 8, 16
    cfg.batch_size, cfg.num_steps, cfg.num_devices = 6, 4, 1
    cfg.log_every = cfg.eval_every = cfg.checkpoint_every = 2
    cfg.eval.batch_size = 4            # 6 test images: two streamed batches, the last padded
    cfg.compilation_cache_dir = ""
    workdir = tempfile.mkdtemp()
    results = train_and_evaluate(cfg, workdir)
    self.assertEqual(results["final"]["step"], 4)
    data = datasets.load_data(cfg)
    self.assertEqual((len(data.train), len(data.test)), (9, 6))
    self.assertEqual(data.test.num_classes, 2)
    self.assertTrue(os.path.exists(os.path.join(workdir, "retrieval_grid.png")))


class StudyScriptTest(chex.TestCase):

  def test_study_runs_resumes_and_tabulates(self):
    from experiments.studies import cub100_grid

    workdir = tempfile.mkdtemp()
    argv = ["--workdir", workdir, "--methods", "npair_hdml,npair_baseline", "--seeds", "0",
            "--num_steps", "2", "--config.dataset.resize=20", "--config.dataset.crop=16",
            "--config.dataset.train_classes=(0, 10)", "--config.dataset.test_classes=(50, 54)",
            "--config.num_devices=1", "--config.compilation_cache_dir=", "--config.plots=False",
            "--config.eval_every=2", "--config.checkpoint_every=2", "--config.batch_size=8",
            "--config.model.embedding_dim=8", "--config.model.generator_hidden=16"]
    cub100_grid.main(argv)
    table = json.load(open(os.path.join(workdir, "study.json")))
    self.assertEqual(set(table), {"npair_hdml", "npair_baseline"})
    self.assertEqual(len(table["npair_hdml"]["recall@1"]), 2)   # mean, std
    self.assertTrue(os.path.exists(os.path.join(workdir, "hardness.png")))
    mtime = os.path.getmtime(os.path.join(workdir, "npair_hdml_seed0", "results.json"))
    cub100_grid.main(argv)   # finished runs are skipped
    self.assertEqual(os.path.getmtime(os.path.join(workdir, "npair_hdml_seed0", "results.json")), mtime)


def toy_study_overrides(cache):
  """The study tables' overrides at toy size (a tiny CNN on a few cub100 classes)."""
  return ["--config.dataset.resize=20", "--config.dataset.crop=16",
          "--config.dataset.train_classes=(0, 12)", "--config.dataset.test_classes=(50, 54)",
          "--config.num_devices=1", f"--config.compilation_cache_dir={cache}", "--config.batch_size=12",
          "--config.model.embedding_dim=8", "--config.model.generator_hidden=16",
          "--config.model.backbone_kwargs.widths=(4, 8)", "--config.hdml.stats_block_length=2"]


class RegimeStudyTest(chex.TestCase):

  def test_regime_tables_run_resume_and_never_select_on_test(self):
    from experiments.studies import cub100_tables

    workdir, cache = tempfile.mkdtemp(), tempfile.mkdtemp()
    common = ["--workdir", workdir, "--seeds", "0,1", "--num_steps", "4", "--pretrain_steps", "4",
              "--lrs", "1e-4,3e-4", "--target_w", "0.9", "--losses", "npair",
              *toy_study_overrides(cache)]
    try:
      with self.assertRaisesRegex(FileNotFoundError, "run --table lr first"):
        cub100_tables.main(common + ["--table", "regime", "--regimes", "pretrained"])
      cub100_tables.main(common + ["--table", "lr"])
      choice = json.load(open(os.path.join(workdir, "lr_choice.json")))
      # Chosen on held-out training classes: the best val R@1 of the baseline runs.
      vals = {lr: json.load(open(os.path.join(workdir, "pretrained", f"npair_baseline_lr{lr}_seed0",
                                              "best.json")))["value"] for lr in ("0.0001", "0.0003")}
      self.assertEqual(choice["npair"]["val_recall@1"], max(vals.values()))
      cub100_tables.main(common + ["--table", "regime"])
      table = json.load(open(os.path.join(workdir, "regime.json")))
      cell = table["pretrained/npair/recall@1"]
      diffs = np.subtract(cell["hdml"], cell["baseline"])
      self.assertAlmostEqual(cell["difference"]["mean"], float(np.mean(diffs)), places=9)
      # Every run of a seed loads that seed's file, and records its hash.
      for seed in (0, 1):
        pre = os.path.join(workdir, f"pretrain_seed{seed}", "pretrained.npz")
        for arm in ("baseline", "hdml"):
          r = json.load(open(os.path.join(workdir, "pretrained", f"npair_{arm}_seed{seed}", "results.json")))
          self.assertEqual(r["pretrained"]["sha256"], file_sha256(pre))
          self.assertEqual(r["best"]["selection"], "val/recall@1")
          rows = [json.loads(l) for l in open(os.path.join(workdir, "pretrained", f"npair_{arm}_seed{seed}",
                                                           "metrics.jsonl"))]
          self.assertTrue(any("test/recall@1" in row for row in rows))   # learning curves
      self.assertTrue(os.path.getsize(os.path.join(workdir, "regime_curves.png")) > 1000)
      cub100_tables.main(common + ["--table", "alpha"])
      cub100_tables.main(common + ["--table", "beta"])
      text = open(os.path.join(workdir, "table_beta.md")).read()
      self.assertIn("beta_relative=", text)
      self.assertTrue(os.path.exists(os.path.join(workdir, "beta_w.png")))
      mtime = os.path.getmtime(os.path.join(workdir, "pretrained", "npair_hdml_seed1", "results.json"))
      cub100_tables.main(common + ["--table", "regime"])   # complete runs are skipped
      self.assertEqual(os.path.getmtime(os.path.join(workdir, "pretrained", "npair_hdml_seed1",
                                                     "results.json")), mtime)
    finally:
      jax.config.update("jax_compilation_cache_dir", None)

  def test_gpu_regime_script_at_toy_size(self):
    # The GPU script's command line, on CPU, with the model and data made tiny.
    out, workdir = tempfile.mkdtemp(), tempfile.mkdtemp()
    env = dict(os.environ, OUT=out, WORKDIR=workdir, SEEDS="0,1", STEPS="2", PRETRAIN_STEPS="2")
    toy = ["--config.model.backbone=small_cnn", "--config.model.backbone_kwargs={'widths': (4, 8), 'depth': 1}",
           "--config.model.embedding_dim=8", "--config.model.generator_hidden=16",
           "--config.dataset.resize=20", "--config.dataset.crop=16", "--config.dataset.preprocess=standard",
           "--config.dataset.train_classes=(0, 8)", "--config.dataset.test_classes=(50, 54)",
           "--config.batch_size=12", "--config.num_devices=1", "--config.data_threads=2",
           "--config.compilation_cache_dir=", "--config.hdml.stats_block_length=2"]
    proc = subprocess.run(["bash", os.path.join(REPO, "experiments", "studies", "gpu_regime.sh"), *toy], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    self.assertEqual(proc.returncode, 0, open(os.path.join(out, "gpu_regime.log")).read()[-3000:])
    self.assertIn("| pretrained | npair | recall@1 |", proc.stdout)
    table = json.load(open(os.path.join(out, "regime.json")))
    self.assertEqual(len(table["pretrained/npair/recall@1"]["hdml"]), 2)
    r = json.load(open(os.path.join(workdir, "pretrained", "npair_hdml_seed1", "results.json")))
    self.assertIsNone(r["best"])                       # nothing selected: the final step is reported
    self.assertEqual(r["config"]["optimizer"]["metric_lr"], 6e-5)
    self.assertEqual(r["config"]["hdml"]["beta"], 5e3)
    pre = json.load(open(os.path.join(workdir, "pretrain_seed1", "results.json")))
    self.assertEqual(pre["train_classes"], 8)          # all training classes, none held out

  def test_paired_difference_interval_by_hand(self):
    from experiments.studies.common import paired_difference

    d = paired_difference([0.5, 0.7, 0.6], [0.4, 0.5, 0.6])   # differences 0.1, 0.2, 0.0
    # mean 0.1, sd 0.1, t(0.975, 2) = 4.302653, half-width 4.302653 * 0.1 / sqrt(3)
    self.assertAlmostEqual(d["mean"], 0.1, places=12)
    np.testing.assert_allclose(d["ci95"], [0.1 - 0.2484138, 0.1 + 0.2484138], rtol=1e-6)


class LossesTableTest(chex.TestCase):

  def test_losses_table_chooses_rates_on_held_out_classes_pairs_seeds_and_resumes(self):
    from experiments.studies import cub100_tables

    workdir, cache = tempfile.mkdtemp(), tempfile.mkdtemp()
    argv = ["--workdir", workdir, "--table", "losses", "--seeds", "0,1", "--num_steps", "2", "--pretrain_steps", "2",
            "--lrs", "1e-4,3e-4", "--methods", "npair_baseline,npair_hdml,multi_similarity,proxy_anchor,multi_similarity_xbm",
            *toy_study_overrides(cache)]
    try:
      cub100_tables.main(argv)
      out = json.load(open(os.path.join(workdir, "losses.json")))
      self.assertEqual(set(out["methods"]), {"npair_baseline", "npair_hdml", "multi_similarity", "proxy_anchor",
                                             "multi_similarity_xbm"})
      self.assertIn(out["strongest_baseline"], {"npair_baseline", "multi_similarity", "proxy_anchor",
                                                "multi_similarity_xbm"})
      xbm = json.load(open(os.path.join(workdir, "pretrained", f"multi_similarity_xbm_lr"
                                        f"{out['lr']['multi_similarity_xbm']['lr']:g}_seed1", "results.json")))
      self.assertEqual((xbm["config"]["loss"]["name"], xbm["config"]["loss"]["xbm_size"]), ("multi_similarity", 512))
      for method in ("npair_baseline", "multi_similarity", "proxy_anchor"):
        tried = out["lr"][method]["val_recall@1"]
        self.assertEqual(set(tried), {"0.0001", "0.0003"})
        vals = {lr: json.load(open(os.path.join(workdir, "pretrained", f"{method}_lr{lr}_seed0", "best.json")))["value"]
                for lr in ("0.0001", "0.0003")}
        self.assertEqual(tried, {"0.0001": vals["0.0001"], "0.0003": vals["0.0003"]})   # held-out R@1 only
        self.assertEqual(out["lr"][method]["lr"], float(max(vals, key=vals.get)))
      self.assertEqual(out["lr"]["npair_hdml"], {"lr": out["lr"]["npair_baseline"]["lr"], "from": "npair_baseline"})
      r = json.load(open(os.path.join(workdir, "pretrained",
                                      f"proxy_anchor_lr{out['lr']['proxy_anchor']['lr']:g}_seed1", "results.json")))
      self.assertEqual(r["config"]["loss"]["name"], "proxy_anchor")
      self.assertEqual(r["best"]["selection"], "val/recall@1")
      self.assertEqual(r["pretrained"]["path"], os.path.join(workdir, "pretrain_seed1", "pretrained.npz"))
      strongest = out["strongest_baseline"]
      for method, cell in out["methods"].items():
        if method == strongest:
          self.assertIsNone(cell["recall@1_minus_strongest"])
        else:
          diffs = np.subtract(cell["recall@1"], out["methods"][strongest]["recall@1"])
          self.assertAlmostEqual(cell["recall@1_minus_strongest"]["mean"], float(np.mean(diffs)), places=9)
      for method, base in (("npair_hdml", "npair_baseline"), ("multi_similarity_xbm", "multi_similarity")):
        own = out["methods"][method]["recall@1_minus_own_baseline"]
        diffs = np.subtract(out["methods"][method]["recall@1"], out["methods"][base]["recall@1"])
        self.assertEqual(own["baseline"], base)
        self.assertAlmostEqual(own["mean"], float(np.mean(diffs)), places=9)
      self.assertIsNone(out["methods"]["proxy_anchor"]["recall@1_minus_own_baseline"])
      text = open(os.path.join(workdir, "table_losses.md")).read()
      self.assertIn("| proxy_anchor |", text)
      self.assertIn("table wall time:", text)
      mtime = os.path.getmtime(os.path.join(workdir, "losses_lr_choice.json"))
      cub100_tables.main(argv)   # complete runs and choices are read back, not redone
      self.assertEqual(os.path.getmtime(os.path.join(workdir, "losses_lr_choice.json")), mtime)
      with self.assertRaises(SystemExit):
        cub100_tables.main(argv + ["--methods", "npair_baseline,multisim"])   # the last --methods counts
    finally:
      jax.config.update("jax_compilation_cache_dir", None)

  def test_losses_table_resumes_from_its_records_alone_and_refuses_a_record_of_other_settings(self):
    from experiments.studies import cub100_tables

    workdir, record, cache = tempfile.mkdtemp(), tempfile.mkdtemp(), tempfile.mkdtemp()
    argv = ["--workdir", workdir, "--table", "losses", "--seeds", "0,1", "--num_steps", "2", "--pretrain_steps", "2",
            "--lrs", "1e-4", "--methods", "proxy_anchor", "--record", record, *toy_study_overrides(cache)]
    try:
      cub100_tables.main(argv)
      first = json.load(open(os.path.join(workdir, "losses.json")))
      kept = json.load(open(os.path.join(record, "pretrained", "proxy_anchor_lr0.0001_seed1.json")))
      self.assertEqual(kept["results"], json.load(open(os.path.join(workdir, "pretrained",
                                                                    "proxy_anchor_lr0.0001_seed1", "results.json"))))
      self.assertEqual((kept["run"]["seed"], kept["run"]["overrides"]["optimizer.metric_lr"]), (1, 1e-4))
      fresh = tempfile.mkdtemp()   # the records only: no run directory, pretrained file or learning-rate choice
      cub100_tables.main(["--workdir", fresh, *argv[2:]])
      self.assertEqual(json.load(open(os.path.join(fresh, "losses.json"))), first)
      self.assertEqual(sorted(os.listdir(fresh)), ["losses.json", "losses_lr_choice.json", "table_losses.md"])
      with self.assertRaisesRegex(ValueError, "records a run with other settings"):
        cub100_tables.main(["--workdir", fresh, *argv[2:6], "--num_steps", "3", *argv[8:]])
    finally:
      jax.config.update("jax_compilation_cache_dir", None)

  def test_losses_table_reads_its_learning_rate_choices_from_the_record_directory(self):
    # The record directory alone rebuilds the table, even where the runs of an unchosen rate were never recorded.
    from experiments.studies import cub100_tables

    workdir, record, cache = tempfile.mkdtemp(), tempfile.mkdtemp(), tempfile.mkdtemp()
    argv = ["--table", "losses", "--seeds", "0", "--num_steps", "2", "--pretrain_steps", "2", "--lrs", "1e-4,3e-4",
            "--methods", "proxy_anchor", "--record", record, *toy_study_overrides(cache)]
    try:
      cub100_tables.main(["--workdir", workdir, *argv])
      first = json.load(open(os.path.join(workdir, "losses.json")))
      choice = json.load(open(os.path.join(record, cub100_tables.LR_CHOICE_FILE)))
      self.assertEqual(choice, json.load(open(os.path.join(workdir, cub100_tables.LR_CHOICE_FILE))))
      chosen = choice["proxy_anchor"]["lr"]
      other = ({1e-4, 3e-4} - {chosen}).pop()
      os.remove(os.path.join(record, "pretrained", f"proxy_anchor_lr{other:g}_seed0.json"))
      fresh = os.path.join(tempfile.mkdtemp(), "not_yet_made")
      cub100_tables.main(["--workdir", fresh, *argv])
      self.assertEqual(json.load(open(os.path.join(fresh, "losses.json"))), first)
      self.assertEqual(sorted(os.listdir(fresh)), ["losses.json", "losses_lr_choice.json", "table_losses.md"])
    finally:
      jax.config.update("jax_compilation_cache_dir", None)


def test_a_run_normalising_on_the_device_equals_one_normalising_on_the_host():
  # The same photos, steps and evaluations: uint8 crops to the device change no number of the run.
  results = {}
  for on_device in (False, True):
    cfg = tiny_cub(**{"dataset.normalize_on_device": on_device, "dataset.preprocess": "standard"})
    results[on_device] = train_and_evaluate(cfg, tempfile.mkdtemp())
  for key in ("final", "best"):
    assert results[True][key] == results[False][key], key
  assert results[True]["final"]["step"] == 4
