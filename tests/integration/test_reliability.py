"""What a demanding user runs into: resume safety, early errors, logs, strict JSON, evaluate a run."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from unittest import mock

import chex
import numpy as np
import pytest

from experiments import checkpoints, logs
from experiments.evaluate import evaluate_checkpoint
from experiments.train import train_and_evaluate
from hdml_jax import weights
from tests.helpers.library import REPO
from tests.helpers.runs import fast_default, restored_latest, tiny_cub

pytestmark = pytest.mark.slow   # end-to-end runs, subprocesses, packaging


def strict_json(path):
  def refuse(name):
    raise ValueError(f"{path}: non-standard JSON constant {name}")
  with open(path) as f:
    return json.loads(f.read(), parse_constant=refuse)


def rows_of(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  return [json.loads(line) for line in open(path)]


def crash_at(step_to_crash):
  def hook(step, metrics):
    if step == step_to_crash:
      raise KeyboardInterrupt("simulated kill")
  return hook


class ResumeTest(chex.TestCase):

  def test_resume_with_another_config_is_refused_with_a_diff(self):
    workdir = tempfile.mkdtemp()
    train_and_evaluate(fast_default(num_steps=8), workdir)
    saved = strict_json(os.path.join(workdir, "config.json"))
    self.assertEqual(saved["seed"], 0)
    with self.assertRaisesRegex(ValueError, r"(?s)another config.*loss.name: 'npair' in the run, 'triplet' now"
                                r".*seed: 0 in the run, 1 now.*fresh --workdir"):
      train_and_evaluate(fast_default(num_steps=12, seed=1, **{"loss.name": "triplet", "batch_size": 9}),
                         workdir)
    with self.assertRaisesRegex(ValueError, r"optimizer.metric_lr: 0.0003 in the run, 0.001 now"):
      train_and_evaluate(fast_default(num_steps=12, **{"optimizer.metric_lr": 1e-3}), workdir)
    # Extending or observing the run is allowed, and recorded.
    results = train_and_evaluate(fast_default(num_steps=12, log_every=2), workdir)
    self.assertEqual(results["final"]["step"], 12)
    self.assertEqual(results["config_changes"], [{"key": "log_every", "run": 4, "now": 2},
                                                 {"key": "num_steps", "run": 8, "now": 12}])
    self.assertEqual(strict_json(os.path.join(workdir, "config.json"))["num_steps"], 12)
    self.assertEqual(results["config"]["seed"], 0)
    self.assertEqual(results["kmeans_protocol"]["protocol"], "reference")   # 5 test classes: auto -> reference
    # A run saved by an older version lacks keys added since: resuming it is allowed, the keys listed.
    saved = strict_json(os.path.join(workdir, "config.json"))
    del saved["eval"]["kmeans_protocol"]
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(saved, f)
    results = train_and_evaluate(fast_default(num_steps=14, log_every=2), workdir)
    self.assertIn({"key": "eval.kmeans_protocol", "run": "<absent>", "now": "auto"}, results["config_changes"])

  def test_checkpoint_of_another_model_without_a_saved_config(self):
    # A workdir of an older version (no config.json) holding another embedding size.
    workdir = tempfile.mkdtemp()
    train_and_evaluate(fast_default(num_steps=4), workdir)
    os.remove(os.path.join(workdir, "config.json"))
    with self.assertRaisesRegex(ValueError, r"holds checkpoints of a different model .*fresh --workdir"):
      train_and_evaluate(fast_default(num_steps=8, **{"model.embedding_dim": 4}), workdir)

  def test_ctrl_c_during_a_save_finishes_that_save_first(self):
    # The interrupt arrives inside the save of step 8: the save completes (a whole checkpoint, restorable),
    # then the interrupt is raised. Cut in half, the save's writer could outlive the process.
    import orbax.checkpoint as ocp

    workdir = tempfile.mkdtemp()
    real = ocp.CheckpointManager.save

    def interrupted_save(manager, step, *args, **kwargs):
      if step == 8 and manager.directory.name == "checkpoints":
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)   # the signal is handled here, inside the save
      return real(manager, step, *args, **kwargs)

    cfg = fast_default(num_steps=12)
    outside = signal.signal(signal.SIGINT, signal.default_int_handler)   # Python's own, whatever the runner's
    self.addCleanup(signal.signal, signal.SIGINT, outside)
    with mock.patch.object(ocp.CheckpointManager, "save", interrupted_save):
      with self.assertRaises(KeyboardInterrupt):
        train_and_evaluate(cfg, workdir)
    folder = os.path.join(workdir, "checkpoints")
    self.assertEqual(sorted(int(n) for n in os.listdir(folder) if n.isdigit()), [4, 8])
    self.assertEqual(int(restored_latest(cfg, workdir).step), 8)

  def test_metrics_log_has_one_row_per_step_after_a_kill(self):
    cfg = fast_default(log_every=1)
    workdir = tempfile.mkdtemp()
    with self.assertRaises(KeyboardInterrupt):
      train_and_evaluate(cfg, workdir, step_hook=crash_at(9))   # rows 1..9 logged, checkpoint 8
    train_and_evaluate(cfg, workdir)
    train_steps = [r["step"] for r in rows_of(workdir) if "train/loss" in r]
    self.assertEqual(train_steps, list(range(1, 13)))

  def test_rows_up_to_the_checkpoint_survive_a_hard_kill(self):
    # A kill -9 runs no `finally`: what was flushed with the checkpoint must be on disk.
    code = ("import os, sys; sys.path.insert(0, %r)\n"
            "from tests.helpers.runs import fast_default\n"
            "from experiments.train import train_and_evaluate\n"
            "def hook(step, m):\n"
            "  if step == 9: os._exit(9)\n"
            "train_and_evaluate(fast_default(log_every=1), %r, step_hook=hook)\n")
    workdir = tempfile.mkdtemp()
    proc = subprocess.run([sys.executable, "-c", code % (REPO, workdir)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    self.assertEqual(proc.returncode, 9, proc.stderr[-2000:])
    self.assertEqual([r["step"] for r in rows_of(workdir) if "train/loss" in r][:8], list(range(1, 9)))


class EarlyErrorTest(chex.TestCase):

  def test_bad_values_fail_before_the_first_step(self):
    ran = []
    cases = [
        ({"selection.metric": "recall@3", "selection.split": "val", "dataset.num_val_classes": 2,
          "batch_size": 6}, r"selection.metric='recall@3' is not a metric .*recall@1"),
        ({"num_devices": 99}, r"num_devices=99, but 8 cpu device\(s\) are present: use 0 \(all\) or 1..8"),
        ({"num_devices": -1}, r"num_devices must be 0 \(all devices\) or a positive count, got -1"),
        ({"dataset.train_classes": (0, 4, 8)}, r"dataset.train_classes must be two integers .*\(0, 4, 8\)"),
        ({"eval.kmeans_protocol": "sklearn"}, r"eval.kmeans_protocol must be one of \('auto', 'reference', 'fast'\)"),
    ]
    for overrides, message in cases:
      with self.subTest(overrides=overrides), self.assertRaisesRegex(ValueError, message):
        train_and_evaluate(fast_default(**overrides), tempfile.mkdtemp(),
                           step_hook=lambda step, m: ran.append(step))
    self.assertEqual(ran, [])

  def test_truncated_safetensors_names_the_file(self):
    from safetensors.numpy import save_file

    path = os.path.join(tempfile.mkdtemp(), "googlenet.safetensors")
    save_file({"conv1.conv.weight": np.ones((4, 3, 7, 7), np.float32)}, path)
    blob = open(path, "rb").read()
    with open(path, "wb") as f:
      f.write(blob[:len(blob) // 2])
    with self.assertRaisesRegex(ValueError, r"googlenet.safetensors.*not a readable .safetensors"):
      weights.load_torchvision_state(path)


class OutputTest(chex.TestCase):

  def test_json_outputs_are_strict(self):
    path = os.path.join(tempfile.mkdtemp(), "r.json")
    checkpoints.write_json_atomic(path, {"map@r": float("nan"), "x": np.float32(np.inf), "ok": [1.5]})
    self.assertEqual(strict_json(path), {"map@r": None, "x": None, "ok": [1.5]})
    workdir = tempfile.mkdtemp()
    writer = logs.MetricWriter(workdir)
    writer.write(3, {"val/map@r": math.nan, "val/recall@1": 0.5})
    writer.close()
    self.assertEqual(rows_of(workdir), [{"step": 3, "val/map@r": None, "val/recall@1": 0.5}])

  def test_tensorboard_tags_are_legal(self):
    self.assertEqual(logs.tag("val/recall@1"), "val/recall_at_1")
    self.assertEqual(logs.tag("val/num_queries_map@r"), "val/num_queries_map_at_r")
    writer = logs.MetricWriter(tempfile.mkdtemp())
    with self.assertNoLogs("tensorboardX.summary", level="INFO"):
      writer.write(1, {"val/recall@1": 0.5, "test/map@r": 0.1})
    writer.close()


class EvaluateRunTest(chex.TestCase):

  def test_evaluate_reads_the_runs_own_config(self):
    # An image-folder run with command-line overrides: evaluate needs only the workdir.
    cfg = tiny_cub()
    workdir = tempfile.mkdtemp()
    results = train_and_evaluate(cfg, workdir)
    again = evaluate_checkpoint(None, workdir, split="test", which="latest")
    self.assertEqual(again["step"], 4)
    self.assertAlmostEqual(again["recall@1"], results["final"]["recall@1"], places=6)
    best = evaluate_checkpoint(None, workdir, split="val", which="best")
    self.assertEqual(best["step"], results["best"]["step"])
    out = subprocess.run([sys.executable, "-m", "experiments.evaluate", "--workdir", workdir], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    self.assertEqual(out.returncode, 0, out.stderr[-2000:])
    self.assertAlmostEqual(json.loads(out.stdout)["recall@1"], results["final"]["recall@1"], places=6)
    self.assertNotIn("checkpoint_manager", out.stderr)   # orbax's INFO lines stay out of the way
    self.assertNotIn("is illegal", out.stderr)

  def test_evaluate_errors_are_one_line(self):
    workdir = tempfile.mkdtemp()
    train_and_evaluate(fast_default(num_steps=4), workdir)
    out = subprocess.run([sys.executable, "-m", "experiments.evaluate", "--workdir", workdir, "--which", "best"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    self.assertEqual(out.returncode, 2)   # a user error: one line, exit 2 (experiments.cli)
    errors = [l for l in out.stderr.splitlines() if "error" in l.lower()]
    self.assertEqual(len(errors), 1, out.stderr)
    self.assertIn("no best checkpoint", errors[0])
    self.assertIn("use --which latest", errors[0])
    self.assertNotIn("Traceback", out.stderr)
    shutil.rmtree(workdir)
    with self.assertRaisesRegex(FileNotFoundError, "does not exist"):
      evaluate_checkpoint(None, workdir)


def run_cli(*args, entry="experiments.main", cwd=None, timeout=120):
  """Runs an entry point's ``run()`` as ``python3 -m <entry>`` would (argv[0] = the module's file)."""
  argv0 = os.path.join(REPO, *entry.split(".")) + ".py"
  code = f"import sys; sys.argv = {[argv0, *args]!r}; from {entry} import run; run()"
  return subprocess.run([sys.executable, "-c", code], cwd=cwd or tempfile.mkdtemp(), capture_output=True,
                        text=True, timeout=timeout, env=dict(os.environ, PYTHONPATH=REPO))


class CommandLineTest(chex.TestCase):

  def test_unknown_key_is_one_line_with_the_closest_keys(self):
    for entry in ("experiments.main", "experiments.pretrain"):
      with self.subTest(entry):
        out = run_cli("--config.hdml.alfa=1", "--workdir", tempfile.mkdtemp(), entry=entry)
        self.assertEqual(out.returncode, 2)
        self.assertEqual(out.stderr.strip().count("\n"), 0, out.stderr)
        self.assertIn("unknown config key --config.hdml.alfa", out.stderr)
        self.assertIn("did you mean --config.hdml.alpha", out.stderr)

  def test_help_lists_the_flags_and_no_arguments_prints_usage(self):
    for entry in ("experiments.main", "experiments.evaluate", "experiments.pretrain"):
      with self.subTest(entry):
        out = run_cli("--help", entry=entry)
        self.assertEqual(out.returncode, 0, out.stderr[-1000:])
        self.assertIn(f"usage: python3 -m {entry} ", out.stdout)
        self.assertIn("--workdir", out.stdout)
        self.assertIn("--config", out.stdout)
    cwd = tempfile.mkdtemp()
    out = run_cli(cwd=cwd)
    self.assertEqual(out.returncode, 2)
    self.assertIn("usage: python3 -m experiments.main ", out.stderr)
    self.assertEqual(os.listdir(cwd), [])   # no silent training into ./runs/default

  def test_a_finished_run_resumed_prints_no_progress_bar(self):
    self.assertTrue(logs.Progress(80, 80)._bar.disable)
    self.assertFalse(logs.Progress(40, 80)._bar.disable)

  def test_curves_show_the_evaluation_metrics(self):
    from experiments import plots

    rows = [{"step": 4, "train/j_m": 1.0}, {"step": 4, "val/recall@1": 0.5, "val/map@r": 0.2}]
    self.assertEqual(plots._eval_group(rows), ("evaluation", ("val/recall@1", "val/map@r")))
    path = os.path.join(tempfile.mkdtemp(), "metrics.jsonl")
    with open(path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    plots.plot_curves(path, path + ".png")
    self.assertGreater(os.path.getsize(path + ".png"), 1000)
