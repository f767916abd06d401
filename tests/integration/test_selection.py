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
  from tests.helpers.runs import fast_default

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
    from tests.helpers.runs import fast_default, restored_latest, saved_steps

    cfg = fast_default(num_steps=10, checkpoint_every=4, keep_checkpoints=5)
    workdir = tempfile.mkdtemp()
    train_and_evaluate(cfg, workdir)
    self.assertEqual(saved_steps(workdir), [4, 8, 10])
    self.assertEqual(int(restored_latest(cfg, workdir).step), 10)


class EvaluationsShareEmbeddingsTest(chex.TestCase):

  def _embedded(self, cfg):
    """``(results, [(split size, state step)] of every embedding)`` of a run."""
    from experiments import selection, train

    calls, real = [], selection.embed_split

    def counting(state, data, split, batch_size, mesh=None):
      calls.append((len(split), int(state.step)))
      return real(state, data, split, batch_size, mesh=mesh)

    with mock.patch.object(selection, "embed_split", counting):
      results = train.train_and_evaluate(cfg, tempfile.mkdtemp())
    return results, calls

  def test_the_reference_rule_at_the_last_step_embeds_the_test_split_once(self):
    # The paper's setting: test/nmi selection, one evaluation at the last step, plots on.
    cfg = fast(**{"selection.split": "test", "selection.metric": "nmi", "dataset.num_val_classes": 0,
                  "eval_every": 12, "num_steps": 12, "plots": True})
    results, calls = self._embedded(cfg)
    self.assertEqual(calls, [(results["final"]["num_queries_map@r"], 12)])
    self.assertEqual(results["best"]["step"], 12)
    self.assertEqual({k: v for k, v in results["best"].items() if k not in ("step", "value", "selection")},
                     {k: v for k, v in results["final"].items() if k != "step"})

  def test_a_best_among_the_last_two_evaluations_is_not_restored_or_embedded_again(self):
    cfg = fast(**{"selection.split": "test", "selection.metric": "recall@1", "dataset.num_val_classes": 0,
                  "eval_every": 6, "num_steps": 12})
    results, calls = self._embedded(cfg)
    n = results["final"]["num_queries_map@r"]
    self.assertEqual(calls, [(n, 6), (n, 12)])
    # A val selection: the test split is embedded for the final state, and for a best at another step.
    results, calls = self._embedded(fast(eval_every=4, num_steps=12))
    test_calls = [c for c in calls if c[0] == results["final"]["num_queries_map@r"]]
    expected = [(test_calls[0][0], 12)] + ([] if results["best"]["step"] == 12 else
                                           [(test_calls[0][0], results["best"]["step"])])
    self.assertEqual(test_calls, expected)
