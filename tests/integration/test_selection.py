"""Model selection through real training: ties keep the earlier step, a resume keeps the best, the final step is saved.

End-to-end (``train_and_evaluate`` on the digits), hence in the slow tier.
"""

import json
import os
import tempfile
from unittest import mock

import chex
import pytest

pytestmark = pytest.mark.slow


def fast(**overrides):
  from tests.helpers import fast_default

  return fast_default(**{"dataset.num_val_classes": 2, "selection.split": "val", "batch_size": 6,
                         **overrides})


class SelectionAndCheckpointTest(chex.TestCase):

  def test_resume_keeps_the_best_checkpoint_found_before_the_interruption(self):
    from experiments.train import train_and_evaluate

    cfg = fast(eval_every=2, checkpoint_every=2, num_steps=8)
    workdir = tempfile.mkdtemp()

    def crash(step, metrics):
      if step == 5:
        raise KeyboardInterrupt("simulated kill")

    with self.assertRaises(KeyboardInterrupt):
      train_and_evaluate(cfg, workdir, step_hook=crash)
    path = os.path.join(workdir, "best.json")
    best = json.load(open(path))
    best["value"] = 2.0          # unbeatable: no later evaluation may replace it
    json.dump(best, open(path, "w"))
    results = train_and_evaluate(cfg, workdir)
    self.assertEqual(results["best"]["step"], best["step"])
    self.assertEqual(json.load(open(path)), best)

  def test_equal_selection_metrics_keep_the_earlier_checkpoint(self):
    from experiments import selection, train

    real = selection.evaluate_split

    def constant_on_val(cfg, state, data, split, **kwargs):
      out = real(cfg, state, data, split, **kwargs)
      if split is data.val:
        out["recall@1"] = 0.5    # every evaluation ties
      return out

    with mock.patch.object(selection, "evaluate_split", constant_on_val):
      results = train.train_and_evaluate(fast(eval_every=4, num_steps=12), tempfile.mkdtemp())
    self.assertEqual(results["best"]["step"], 4)

  def test_the_final_step_is_always_checkpointed(self):
    from experiments.train import train_and_evaluate
    from tests.helpers import fast_default, restored_latest, saved_steps

    cfg = fast_default(num_steps=10, checkpoint_every=4, keep_checkpoints=5)
    workdir = tempfile.mkdtemp()
    train_and_evaluate(cfg, workdir)
    self.assertEqual(saved_steps(workdir), [4, 8, 10])
    self.assertEqual(int(restored_latest(cfg, workdir).step), 10)
