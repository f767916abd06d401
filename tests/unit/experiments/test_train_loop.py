"""The training loop's checkpointing, selection and resume logic, on a toy state and a scripted step.

No model is built and nothing but the toy step is compiled: each test runs in about a second, so the
mutation run of ``experiments/loop.py``, ``experiments/run_config.py``, ``experiments/selection.py`` and ``experiments/checkpoints.py`` starts with these (the end-to-end
runs in ``test_experiments.py``, ``test_reliability.py`` and ``test_gradient_paths.py`` check the same logic
through real training).
"""

import contextlib
import io
import json
import os
import shutil
import tempfile
import types
from unittest import mock

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import checkpoints, loop, run_config, runtime, selection


@flax.struct.dataclass
class ToyState:
  """The fields ``checkpoints`` stores, as the real train state has them."""
  params: dict
  batch_stats: dict
  opt_state: dict
  stats: dict
  step: jax.Array


def toy_state(step=0, w=0.0):
  return ToyState(params={"w": jnp.full((3,), w, jnp.float32)}, batch_stats={}, opt_state={"m": jnp.zeros(2)},
                  stats={"j_avg": jnp.float32(0.5)}, step=jnp.int32(step))


def toy_step(state, batch, key):
  """Adds the batch to the weights; the loss is the batch (computed on the state before the update)."""
  del key
  loss = jnp.float32(batch)
  new = state.replace(params={"w": state.params["w"] + batch}, step=state.step + 1)
  return new, {"loss": loss, "j_metric": 2.0 * loss, "finite": jnp.isfinite(loss)}


class Batches:
  """Step ``s``'s batch is ``values[s]``; records that it was closed."""

  def __init__(self, values, start=0):
    self._it = iter(list(values)[start:])
    self.closed = False

  def __next__(self):
    return next(self._it)

  def close(self):
    self.closed = True


class Writer:
  """Records rows and flushes (``logs.MetricWriter``'s interface)."""

  def __init__(self):
    self.rows, self.flushes = [], 0

  def write(self, step, scalars):
    self.rows.append((step, dict(scalars)))

  def flush(self):
    self.flushes += 1


def loop_config(num_steps=10, log_every=3, eval_every=5, checkpoint_every=4):
  return ml_collections.ConfigDict({"num_steps": num_steps, "log_every": log_every, "eval_every": eval_every,
                                    "checkpoint_every": checkpoint_every, "batch_size": 8})


def saved(manager):
  return sorted(manager.all_steps())


class CheckpointDirTest(chex.TestCase):
  """A fresh workdir with a checkpoint manager in it."""

  def setUp(self):
    super().setUp()
    self.workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)
    self.ckpt = checkpoints.make_manager(os.path.join(self.workdir, "checkpoints"), max_to_keep=20)
    self.addCleanup(self.ckpt.close)


class RunLoopTest(CheckpointDirTest):

  def run_loop(self, cfg, values, state=None, last_finite=None, step=None, **kwargs):
    state = toy_state() if state is None else state
    self.batches = Batches(values, start=int(state.step))
    self.writer = Writer()
    step = jax.jit(toy_step) if step is None else step
    return loop.run_loop(cfg, self.workdir, state, step, self.batches, jax.random.key(0),
                          ckpt=self.ckpt, last_finite=last_finite, writer=self.writer, **kwargs)

  def test_at_most_two_steps_are_in_flight(self):
    # Past two dispatched steps whose metrics are not fetched yet, the loop waits for the oldest but two.
    produced, waited = [], []
    jitted, real_wait = jax.jit(toy_step), jax.block_until_ready

    def step(state, batch, key):
      new, metrics = jitted(state, batch, key)
      produced.append(metrics)
      return new, metrics

    def wait(x):
      waited.append(x)
      return real_wait(x)

    with mock.patch.object(jax, "block_until_ready", wait):
      self.run_loop(loop_config(num_steps=6, log_every=100, eval_every=100, checkpoint_every=100), [1.0] * 6,
                    step=step)
    on_metrics = [x for x in waited if any(x is m for m in produced)]
    self.assertEqual(len(on_metrics), 4)   # after steps 2..5, on the metrics of steps 0..3
    for got, want in zip(on_metrics, produced):
      self.assertIs(got, want)

  def test_metrics_are_fetched_at_log_eval_and_checkpoint_steps_or_every_step_with_a_hook(self):
    real = runtime.local_copy
    for hook, want in ((None, [3, 1, 1, 1, 2, 1, 1]), (lambda s, m: None, [1] * 10)):
      fetched = []

      def spy(tree):
        if isinstance(tree, list):   # the pending steps' metrics
          fetched.append(len(tree))
        return real(tree)

      with mock.patch.object(loop, "local_copy", spy):
        self.run_loop(loop_config(), np.arange(1.0, 11.0), step_hook=hook)
      # Fetches after steps 3 (log), 4 (checkpoint, held), 5 (eval; the held state is written), 6 (log),
      # 8 (checkpoint), 9 (log) and 10 (the end); with a hook, after every step.
      self.assertEqual(fetched, want, hook)
      for step in saved(self.ckpt):
        self.ckpt.delete(step)

  def test_no_evaluation_after_a_non_finite_loss(self):
    # A loss that is NaN while the state stays finite: the evaluation at step 2 must not run.
    def finite_state_step(state, batch, key):
      del key
      loss = jnp.float32(batch)
      return state.replace(step=state.step + 1), {"loss": loss, "j_metric": loss, "finite": jnp.isfinite(loss)}

    evaluated = []
    with self.assertRaises(loop.NonFiniteLossError) as cm:
      self.run_loop(loop_config(num_steps=4, log_every=100, eval_every=2, checkpoint_every=100),
                    [np.nan, 1.0, 1.0, 1.0], step=jax.jit(finite_state_step), on_eval=lambda s, st: evaluated.append(s))
    self.assertIn("at step 0", str(cm.exception))
    self.assertEqual(evaluated, [])

  def test_throughput_counts_steps_over_the_training_time_of_the_window(self):
    # A clock that advances 2 s per reading. Window starts: the loop's start, each log line, and the end of
    # each evaluation or checkpoint (whose time is not training).
    ticks = iter(range(0, 1000, 2))
    clock = types.SimpleNamespace(perf_counter=lambda: float(next(ticks)))
    with mock.patch.object(loop, "time", clock):
      self.run_loop(loop_config(num_steps=6, log_every=2, eval_every=3, checkpoint_every=100), [1.0] * 6)
    # Readings: 0 (start); 2 at step 2's log (2 steps / 2 s); 4 after step 3's evaluation; 6 at step 4's log
    # (1 step / 2 s); 8 at step 6's log (2 steps / 2 s).
    rates = {step: row["perf/steps_per_second"] for step, row in self.writer.rows}
    self.assertEqual(rates, {2: 1.0, 4: 0.5, 6: 1.0})
    self.assertEqual([row["perf/images_per_second"] for _, row in self.writer.rows], [8.0, 4.0, 8.0])

  def restored(self, step):
    return checkpoints.restore(self.ckpt, toy_state(), step)

  def test_checkpoints_every_n_steps_and_at_the_final_step(self):
    values = np.arange(1.0, 11.0)
    evaluated = []
    final = self.run_loop(loop_config(), values, on_eval=lambda s, st: evaluated.append((s, float(st.params["w"][0]))))
    self.assertEqual(int(final.step), 10)
    self.assertEqual(float(final.params["w"][0]), values.sum())
    self.assertEqual(saved(self.ckpt), [4, 8, 10])
    for step in (4, 8, 10):   # each checkpoint holds the state after that many steps
      got = self.restored(step)
      self.assertEqual(int(got.step), step)
      np.testing.assert_array_equal(got.params["w"], np.full(3, values[:step].sum(), np.float32))
      np.testing.assert_array_equal(got.stats["j_avg"], 0.5)
    self.assertEqual(evaluated, [(5, values[:5].sum()), (10, values.sum())])
    self.assertTrue(self.batches.closed)

  def test_logged_rows_are_window_means_at_log_steps_and_the_end(self):
    values = np.arange(1.0, 11.0)
    self.run_loop(loop_config(), values)
    self.assertEqual([s for s, _ in self.writer.rows], [3, 6, 9, 10])
    windows = {3: values[0:3], 6: values[3:6], 9: values[6:9], 10: values[9:10]}
    for step, row in self.writer.rows:
      self.assertEqual(set(row), {"train/loss", "train/j_metric", "train/finite", "perf/steps_per_second",
                                  "perf/images_per_second"})
      self.assertAlmostEqual(row["train/loss"], windows[step].mean(), places=5)
      self.assertAlmostEqual(row["train/j_metric"], 2 * windows[step].mean(), places=5)
      self.assertEqual(row["train/finite"], 1.0)
      self.assertGreater(row["perf/steps_per_second"], 0.0)
      self.assertAlmostEqual(row["perf/images_per_second"], 8 * row["perf/steps_per_second"], places=3)
    self.assertGreaterEqual(self.writer.flushes, 3 + 1)   # at each checkpoint and at the end

  def test_the_progress_bar_is_shown_by_the_main_process_only(self):
    for kwargs, shown in (({}, True), ({"is_main": False}, False)):
      err = io.StringIO()
      with contextlib.redirect_stderr(err):
        self.run_loop(loop_config(num_steps=3), [1.0] * 3, state=None, **kwargs)
      self.assertEqual("3/3" in err.getvalue(), shown, (kwargs, err.getvalue()))
      self.ckpt.delete(3)

  def test_step_hook_sees_every_step_in_order(self):
    seen = []
    self.run_loop(loop_config(num_steps=7), np.arange(7.0), step_hook=lambda s, m: seen.append((s, m["loss"])))
    self.assertEqual(seen, [(s, float(s)) for s in range(7)])

  def test_a_state_is_checkpointed_only_once_its_own_loss_is_finite(self):
    # Step 4's loss (computed on the state after 4 steps) is NaN: that state must not be written, and the
    # error names step 4 and the state it would have made.
    values = [1.0, 2.0, 3.0, 4.0, np.nan, 6.0, 7.0, 8.0, 9.0, 10.0]
    with self.assertRaises(loop.NonFiniteLossError) as cm:
      self.run_loop(loop_config(log_every=100, eval_every=100), values)
    message = str(cm.exception)
    self.assertTrue(message.startswith("a loss is not finite at step 4 (the step that would make step 5): "),
                    message)
    self.assertIn("'loss': nan", message)
    self.assertIn("'j_metric': nan", message)
    self.assertNotIn("finite", message.split(":", 2)[2])   # only the losses are listed
    self.assertTrue(message.endswith(f"No checkpoint had been written yet in {self.workdir}/checkpoints."),
                    message)
    self.assertEqual(saved(self.ckpt), [])
    self.assertTrue(self.batches.closed)

  def test_divergence_after_a_checkpoint_names_it(self):
    values = [1.0] * 6 + [np.inf] + [1.0] * 3
    with self.assertRaises(loop.NonFiniteLossError) as cm:
      self.run_loop(loop_config(log_every=1, eval_every=100), values, last_finite=None)
    self.assertTrue(str(cm.exception).endswith(
        f"The last finite checkpoint (step 4) is kept in {self.workdir}/checkpoints."), str(cm.exception))
    self.assertEqual(saved(self.ckpt), [4])
    self.assertEqual([s for s, _ in self.writer.rows], [1, 2, 3, 4, 5, 6])   # the diverged step is never logged

  def test_a_non_finite_final_state_is_never_written(self):
    # The last step's loss is finite but its update makes the weights infinite.
    values = [1.0, 2.0, np.float32(3e38), np.float32(3e38)]
    with self.assertRaises(loop.NonFiniteStateError) as cm:
      self.run_loop(loop_config(num_steps=4, checkpoint_every=2, eval_every=100), values)
    self.assertEqual(str(cm.exception),
                     "the train state after step 4 holds non-finite values (['params']['w']): the update at "
                     f"step 3 diverged and was not checkpointed. The last finite checkpoint (step 2) is kept in "
                     f"{self.workdir}/checkpoints.")
    self.assertEqual(saved(self.ckpt), [2])

  def test_a_non_finite_state_is_never_evaluated(self):
    values = [1.0, np.float32(3e38), np.float32(3e38), 1.0]
    evaluated = []
    with self.assertRaises(loop.NonFiniteStateError) as cm:
      self.run_loop(loop_config(num_steps=4, eval_every=3, checkpoint_every=100), values,
                    on_eval=lambda s, st: evaluated.append(s))
    self.assertIn("after step 3 holds non-finite values", str(cm.exception))
    self.assertEqual(evaluated, [])

  def test_four_bad_leaves_are_listed_whole(self):
    for count, tail in ((4, "['params']['w3']): "), (5, "['params']['w3'], ...): ")):
      bad = toy_state().replace(params={f"w{i}": jnp.full((2,), jnp.nan) for i in range(count)})

      def nan_step(state, batch, key, bad=bad):
        return bad.replace(step=state.step + 1), {"loss": jnp.float32(1.0), "finite": jnp.bool_(True)}

      with self.assertRaises(loop.NonFiniteStateError) as cm:
        loop.run_loop(loop_config(num_steps=1), self.workdir, toy_state(), nan_step, Batches([0.0]),
                       jax.random.key(0), ckpt=self.ckpt, last_finite=None, writer=Writer())
      self.assertIn(tail + "the update at step 0 diverged", str(cm.exception))

  def test_more_than_four_bad_leaves_are_abbreviated(self):
    bad = toy_state().replace(params={f"w{i}": jnp.full((2,), jnp.nan) for i in range(6)})
    leaves = checkpoints.non_finite_leaves(bad)
    self.assertEqual(leaves, [f"['params']['w{i}']" for i in range(6)])
    ckpt_dir = os.path.join(self.workdir, "checkpoints")

    def nan_step(state, batch, key):
      return bad.replace(step=state.step + 1), {"loss": jnp.float32(1.0), "finite": jnp.bool_(True)}

    with self.assertRaises(loop.NonFiniteStateError) as cm:
      loop.run_loop(loop_config(num_steps=1), self.workdir, toy_state(), nan_step, Batches([0.0]),
                     jax.random.key(0), ckpt=self.ckpt, last_finite=None, writer=Writer())
    self.assertEqual(str(cm.exception),
                     "the train state after step 1 holds non-finite values (['params']['w0'], ['params']['w1'], "
                     "['params']['w2'], ['params']['w3'], ...): the update at step 0 diverged and was not "
                     f"checkpointed. No checkpoint had been written yet in {ckpt_dir}.")

  def test_resumed_loop_runs_the_remaining_steps_and_names_the_resumed_checkpoint(self):
    values = np.arange(1.0, 11.0)
    start = toy_state(step=6, w=values[:6].sum())
    seen = []
    final = self.run_loop(loop_config(), values, state=start, last_finite=6,
                          step_hook=lambda s, m: seen.append(s))
    self.assertEqual(seen, [6, 7, 8, 9])
    self.assertEqual(float(final.params["w"][0]), values.sum())
    self.assertEqual(saved(self.ckpt), [8, 10])
    values = list(values[:9]) + [np.nan]   # step 8's own loss is finite: checkpoint 8 is written
    self.ckpt.delete(8)
    self.ckpt.delete(10)
    with self.assertRaises(loop.NonFiniteLossError) as cm:
      self.run_loop(loop_config(), values, state=start, last_finite=6)
    self.assertTrue(str(cm.exception).endswith(
        f"The last finite checkpoint (step 8) is kept in {self.workdir}/checkpoints."), str(cm.exception))
    self.ckpt.delete(8)
    with self.assertRaises(loop.NonFiniteLossError) as cm:   # step 8's own loss is NaN: the resumed one
      self.run_loop(loop_config(), values[:8] + [np.nan] * 2, state=start, last_finite=6)
    self.assertEqual(saved(self.ckpt), [])
    self.assertTrue(str(cm.exception).endswith(
        f"The last finite checkpoint (step 6) is kept in {self.workdir}/checkpoints."), str(cm.exception))

  def test_a_finished_run_runs_nothing(self):
    final = self.run_loop(loop_config(num_steps=4), [1.0] * 4, state=toy_state(step=4, w=4.0), last_finite=4)
    self.assertEqual(int(final.step), 4)
    self.assertEqual(saved(self.ckpt), [])
    self.assertEqual(self.writer.rows, [])
    self.assertTrue(self.batches.closed)


class ResumeTest(CheckpointDirTest):

  def save(self, step, w):
    checkpoints.save(self.ckpt, step, toy_state(step=step, w=w))
    self.ckpt.wait_until_finished()

  def test_no_checkpoint_resumes_from_the_template(self):
    template = toy_state(w=7.0)
    state, last = runtime.resume(self.ckpt, template, self.workdir)
    self.assertIs(state, template)
    self.assertIsNone(last)

  def test_the_newest_finite_checkpoint_is_resumed(self):
    self.save(2, 2.0)
    self.save(4, 4.0)
    with self.assertLogs(level="INFO") as logged:
      state, last = runtime.resume(self.ckpt, toy_state(), self.workdir)
    self.assertEqual((int(state.step), last), (4, 4))
    np.testing.assert_array_equal(state.params["w"], [4.0] * 3)
    self.assertIn(f"INFO:root:resumed from step 4 in {self.workdir}", logged.output)
    self.assertEqual(saved(self.ckpt), [2, 4])

  def test_non_finite_newer_checkpoints_are_skipped_and_deleted(self):
    self.save(2, 2.0)
    self.save(4, np.nan)
    self.save(6, np.inf)
    with self.assertLogs(level="WARNING") as logged:
      state, last = runtime.resume(self.ckpt, toy_state(), self.workdir)
    self.assertEqual((int(state.step), last), (2, 2))
    np.testing.assert_array_equal(state.params["w"], [2.0] * 3)
    self.assertEqual(saved(self.ckpt), [2])
    warnings = [m for m in logged.output if m.startswith("WARNING")]
    self.assertEqual(len(warnings), 2)
    self.assertIn(f"checkpoint 6 in {self.workdir} holds non-finite values (['params']['w']); deleted, "
                  "resuming from an earlier finite one", warnings[0])
    self.assertIn("checkpoint 4 in", warnings[1])

  def test_the_warning_names_the_first_three_bad_arrays(self):
    template = toy_state().replace(params={f"w{i}": jnp.zeros((2,)) for i in range(5)})
    checkpoints.save(self.ckpt, 2, template.replace(step=jnp.int32(2)))
    bad = template.replace(step=jnp.int32(4), params={f"w{i}": jnp.full((2,), jnp.nan) for i in range(5)})
    checkpoints.save(self.ckpt, 4, bad)
    self.ckpt.wait_until_finished()
    with self.assertLogs(level="WARNING") as logged:
      state, last = runtime.resume(self.ckpt, template, self.workdir)
    self.assertEqual(last, 2)
    self.assertEqual(logged.output, [
        f"WARNING:root:checkpoint 4 in {self.workdir} holds non-finite values (['params']['w0'], "
        "['params']['w1'], ['params']['w2']); deleted, resuming from an earlier finite one"])

  def test_every_checkpoint_non_finite_is_an_error(self):
    four = lambda step, bad: toy_state(step=step).replace(
        params={f"w{i}": jnp.full((2,), np.nan if i in bad else 0.0) for i in range(4)})
    checkpoints.save(self.ckpt, 2, four(2, {3}))
    checkpoints.save(self.ckpt, 4, four(4, {0, 1, 2, 3}))
    self.ckpt.wait_until_finished()
    with self.assertRaises(FloatingPointError) as cm:
      checkpoints.restore_latest_finite(self.ckpt, four(0, set()))
    self.assertEqual(str(cm.exception),   # the newest checkpoint's first three bad arrays
                     f"every checkpoint in {self.ckpt.directory} holds non-finite values (steps [4, 2]; e.g. "
                     "[\"['params']['w0']\", \"['params']['w1']\", \"['params']['w2']\"]): nothing finite to "
                     "resume. Start again with a fresh --workdir (and a smaller learning rate).")
    self.ckpt.delete(2)
    self.ckpt.delete(4)
    self.save(2, np.nan)
    self.save(4, np.nan)
    with self.assertRaises(FloatingPointError) as cm:
      checkpoints.restore_latest_finite(self.ckpt, toy_state())
    self.assertEqual(str(cm.exception),
                     f"every checkpoint in {self.ckpt.directory} holds non-finite values (steps [4, 2]; e.g. "
                     "[\"['params']['w']\"]): nothing finite to resume. Start again with a fresh --workdir (and a "
                     "smaller learning rate).")
    self.assertEqual(saved(self.ckpt), [2, 4])   # nothing deleted when nothing can be resumed

  def test_restore_reads_the_latest_or_a_given_step(self):
    with self.assertRaises(FileNotFoundError) as cm:
      checkpoints.restore(self.ckpt, toy_state())
    self.assertEqual(str(cm.exception), f"no checkpoint in {self.ckpt.directory}.")
    self.save(2, 2.0)
    self.save(4, 4.0)
    self.assertEqual(int(checkpoints.restore(self.ckpt, toy_state()).step), 4)
    got = checkpoints.restore(self.ckpt, toy_state(), 2)
    np.testing.assert_array_equal(got.params["w"], [2.0] * 3)
    self.assertEqual(checkpoints.state_tree(got).keys(), {"params", "batch_stats", "opt_state", "stats", "step"})

  def test_restore_latest_finite_reports_what_it_skipped(self):
    self.assertEqual(checkpoints.restore_latest_finite(self.ckpt, toy_state()), (None, []))
    self.save(2, 2.0)
    self.save(4, np.nan)
    state, skipped = checkpoints.restore_latest_finite(self.ckpt, toy_state())
    self.assertEqual(int(state.step), 2)
    self.assertEqual(skipped, [(4, ["['params']['w']"])])

  def test_a_checkpoint_of_another_model_is_refused(self):
    self.save(2, 2.0)
    other = toy_state().replace(params={"w": jnp.zeros((5,), jnp.float32)})
    with self.assertRaises(ValueError) as cm:
      checkpoints.restore_latest_finite(self.ckpt, other)
    self.assertTrue(str(cm.exception).startswith(
        f"{self.ckpt.directory} holds checkpoints of a different model (another embedding or hidden size, "
        "backbone or hdml.enabled): step 2 does not fit this config ("), str(cm.exception))
    cause = str(cm.exception.__cause__).strip().splitlines()[0]
    self.assertGreater(len(cause), 200)
    self.assertTrue(str(cm.exception).endswith(f"({cause[:200]}). Use a fresh --workdir for this config."),
                    str(cm.exception))

  def test_an_error_without_a_message_is_named_by_its_type(self):
    self.save(2, 2.0)
    # A checkpoint whose arrays do not fit (else a failed read is a damaged checkpoint: DamagedCheckpointTest).
    with mock.patch.object(checkpoints, "restore", side_effect=KeyError()), \
         mock.patch.object(checkpoints, "mismatch", return_value="3 arrays saved against 4"):
      with self.assertRaises(ValueError) as cm:
        checkpoints.restore_latest_finite(self.ckpt, toy_state())
    self.assertIn("step 2 does not fit this config (KeyError). Use a fresh --workdir", str(cm.exception))

  def test_only_inexact_leaves_are_checked(self):
    state = toy_state().replace(opt_state={"count": jnp.int32(3), "m": jnp.zeros(2)})
    self.assertEqual(checkpoints.non_finite_leaves(state), [])
    state = state.replace(stats={"j_avg": jnp.float32(np.inf)}, batch_stats={"bn": {"mean": jnp.full(2, np.nan)}})
    self.assertEqual(checkpoints.non_finite_leaves(state), ["['batch_stats']['bn']['mean']", "['stats']['j_avg']"])

  def test_fields_a_state_lacks_or_holds_as_none_are_not_stored(self):
    state = types.SimpleNamespace(params={"w": jnp.ones(2)}, batch_stats=None, step=jnp.int32(3))   # no opt_state, stats
    tree = checkpoints.state_tree(state)
    self.assertEqual(sorted(tree), ["params", "step"])
    self.assertEqual(checkpoints.non_finite_leaves(state), [])
    self.assertEqual(sorted(checkpoints.state_tree(toy_state())), ["batch_stats", "opt_state", "params", "stats",
                                                                    "step"])


class BestCheckpointTest(chex.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)

  def best(self, is_main=True):
    best = selection.BestCheckpoint(self.workdir, "val/recall@1", is_main=is_main)
    self.addCleanup(best.close)
    return best

  def test_first_offer_is_kept_then_only_strictly_better_ones(self):
    best = self.best()
    self.assertIsNone(best.best)
    self.assertFalse(os.path.exists(os.path.join(self.workdir, "best.json")))
    offers = [(2, 0.3, True), (4, 0.5, True), (6, 0.5, False), (8, 0.4, False), (10, 0.6, True)]
    for step, value, kept in offers:
      self.assertEqual(best.offer(step, value, toy_state(step=step, w=step)), kept, step)
    want = {"step": 10, "value": 0.6, "selection": "val/recall@1"}
    self.assertEqual(best.best, want)
    self.assertEqual(json.load(open(os.path.join(self.workdir, "best.json"))), want)
    restored = best.restore(toy_state())
    self.assertEqual(int(restored.step), 10)
    np.testing.assert_array_equal(restored.params["w"], [10.0] * 3)
    self.assertEqual(saved(best.manager), [10])   # only the best is kept

  def test_a_tie_keeps_the_earlier_step(self):
    best = self.best()
    best.offer(4, 0.5, toy_state(step=4, w=4.0))
    self.assertFalse(best.offer(8, 0.5, toy_state(step=8, w=8.0)))
    self.assertEqual(best.best["step"], 4)
    np.testing.assert_array_equal(best.restore(toy_state()).params["w"], [4.0] * 3)

  def test_a_nan_value_never_wins_and_any_number_beats_it(self):
    # A metric can be NaN (no query with a relevant item in the selection split): a first NaN offer is kept,
    # so that there is something to restore, but the first number replaces it; NaN never replaces a number.
    best = self.best()
    self.assertTrue(best.offer(2, float("nan"), toy_state(step=2, w=2.0)))
    self.assertFalse(best.offer(4, float("nan"), toy_state(step=4, w=4.0)))   # the earlier NaN stays
    self.assertTrue(best.offer(6, 0.1, toy_state(step=6, w=6.0)))
    self.assertFalse(best.offer(8, float("nan"), toy_state(step=8, w=8.0)))
    self.assertEqual(best.best, {"step": 6, "value": 0.1, "selection": "val/recall@1"})
    np.testing.assert_array_equal(best.restore(toy_state()).params["w"], [6.0] * 3)

  def test_a_resumed_run_whose_best_was_nan_goes_on(self):
    first = selection.BestCheckpoint(self.workdir, "val/recall@1")
    first.offer(2, float("nan"), toy_state(step=2, w=2.0))
    first.close()
    with open(os.path.join(self.workdir, "best.json")) as f:
      self.assertIsNone(json.load(f)["value"])   # strict JSON: NaN is written as null
    best = self.best()
    self.assertFalse(best.offer(4, float("nan"), toy_state(step=4, w=4.0)))
    self.assertTrue(best.offer(6, 0.2, toy_state(step=6, w=6.0)))
    self.assertEqual(best.best["step"], 6)

  def test_a_resumed_run_compares_with_the_best_found_before(self):
    first = selection.BestCheckpoint(self.workdir, "val/recall@1")
    first.offer(4, 0.7, toy_state(step=4, w=4.0))
    first.close()
    best = self.best()
    self.assertEqual(best.best, {"step": 4, "value": 0.7, "selection": "val/recall@1"})
    self.assertFalse(best.offer(6, 0.6, toy_state(step=6, w=6.0)))
    np.testing.assert_array_equal(best.restore(toy_state()).params["w"], [4.0] * 3)
    self.assertTrue(best.offer(8, 0.8, toy_state(step=8, w=8.0)))
    self.assertEqual(json.load(open(os.path.join(self.workdir, "best.json")))["step"], 8)

  def test_a_kill_between_the_checkpoint_and_best_json_loses_nothing(self):
    # Step 8's checkpoint was saved (replacing step 4's) but the run was killed before best.json said so.
    first = selection.BestCheckpoint(self.workdir, "val/recall@1")
    first.offer(4, 0.5, toy_state(step=4, w=4.0))
    checkpoints.save(first.manager, 8, toy_state(step=8, w=8.0))
    first.manager.wait_until_finished()
    first.close()
    with self.assertLogs(level="WARNING") as logged:
      best = self.best()
    path = os.path.join(self.workdir, "best.json")
    self.assertEqual(logged.output, [f"WARNING:root:{path} names step 4, but the best checkpoint kept is step 8 "
                                     "(saved just before an interruption); keeping it, with the recorded value 0.5 "
                                     "as a lower bound of its own"])
    want = {"step": 8, "value": 0.5, "selection": "val/recall@1"}
    self.assertEqual(best.best, want)
    self.assertEqual(json.load(open(os.path.join(self.workdir, "best.json"))), want)
    np.testing.assert_array_equal(best.restore(toy_state()).params["w"], [8.0] * 3)
    self.assertFalse(best.offer(10, 0.5, toy_state(step=10)))   # the recorded value still has to be beaten
    self.assertTrue(best.offer(12, 0.6, toy_state(step=12, w=12.0)))

  def test_best_json_without_its_checkpoint_starts_the_selection_over(self):
    with open(os.path.join(self.workdir, "best.json"), "w") as f:
      json.dump({"step": 4, "value": 0.9, "selection": "val/recall@1"}, f)
    with self.assertLogs(level="WARNING") as logged:
      best = self.best()
    path = os.path.join(self.workdir, "best.json")
    self.assertEqual(logged.output, [f"WARNING:root:{path} names step 4, but {best.manager.directory} holds no "
                                     "checkpoint: the selection starts over"])
    self.assertIsNone(best.best)
    self.assertTrue(best.offer(2, 0.1, toy_state(step=2)))

  def test_a_resumed_run_may_keep_an_earlier_step_than_the_best_so_far(self):
    # Best at step 8, then the run resumed from its step-4 checkpoint: its evaluation at step 6 wins with
    # another data order or a changed metric, and must replace step 8 although 6 < 8.
    first = selection.BestCheckpoint(self.workdir, "val/recall@1")
    first.offer(8, 0.5, toy_state(step=8, w=8.0))
    first.close()
    best = self.best()
    self.assertTrue(best.offer(6, 0.7, toy_state(step=6, w=6.0)))
    self.assertEqual(saved(best.manager), [6])
    np.testing.assert_array_equal(best.restore(toy_state()).params["w"], [6.0] * 3)

  def test_only_the_main_process_writes_best_json(self):
    best = self.best(is_main=False)
    self.assertTrue(best.offer(4, 0.5, toy_state(step=4)))
    self.assertFalse(os.path.exists(os.path.join(self.workdir, "best.json")))
    self.assertEqual(saved(best.manager), [4])

  def test_restore_before_any_offer_is_an_error(self):
    with self.assertRaises(FileNotFoundError) as cm:
      self.best().restore(toy_state())
    self.assertEqual(str(cm.exception),
                     f"no best checkpoint yet ({os.path.join(self.workdir, 'best.json')} does not exist).")

  def test_selection_names(self):
    cfg = ml_collections.ConfigDict({"selection": {"split": "val", "metric": "map@r"}})
    self.assertEqual(selection.selection_name(cfg), "val/map@r")
    cfg.selection.split = "test"
    self.assertEqual(selection.selection_name(cfg), "test/map@r (the reference's rule: selects on the test set)")


class RunConfigTest(chex.TestCase):
  """``check_run_config``: the config saved at the first start, and what a resume may change."""

  def setUp(self):
    super().setUp()
    self.workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)

  def cfg(self, **changes):
    cfg = ml_collections.ConfigDict({"num_steps": 10, "log_every": 2, "seed": 0,
                                     "hdml": {"margin": 1.0, "lam": 0.5}, "loss": {"name": "npair"},
                                     "eval": {"batch_size": 64}})
    for key, value in changes.items():
      node = cfg
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
    return cfg

  def saved(self):
    with open(os.path.join(self.workdir, run_config.CONFIG_FILE)) as f:
      return json.load(f)

  def history(self):
    path = os.path.join(self.workdir, "config_changes.jsonl")
    if not os.path.exists(path):
      return []
    with open(path) as f:
      return [json.loads(line) for line in f]

  def test_flat_joins_nested_keys_with_dots(self):
    self.assertEqual(run_config._flat({"a": 1, "b": {"c": 2, "d": {"e": 3}}, "f": {}}),
                     {"a": 1, "b.c": 2, "b.d.e": 3, "f": {}})   # an empty dict is a value, not a level

  def test_first_start_saves_the_config(self):
    self.assertEqual(run_config.check_run_config(self.cfg(), self.workdir, resuming=False), [])
    self.assertEqual(self.saved(), json.loads(self.cfg().to_json_best_effort()))
    # A fresh start (no checkpoint) in a workdir that holds a config replaces it without comparing.
    self.assertEqual(run_config.check_run_config(self.cfg(seed=3), self.workdir, resuming=False), [])
    self.assertEqual(self.saved()["seed"], 3)
    self.assertEqual(self.history(), [])

  def test_resuming_under_the_same_config_changes_nothing(self):
    run_config.check_run_config(self.cfg(), self.workdir, resuming=False)
    self.assertEqual(run_config.check_run_config(self.cfg(), self.workdir, resuming=True), [])
    self.assertEqual(self.history(), [])

  def test_resumable_keys_may_change_and_are_recorded(self):
    run_config.check_run_config(self.cfg(), self.workdir, resuming=False)
    with self.assertLogs(level="WARNING") as logged:
      changes = run_config.check_run_config(self.cfg(num_steps=20, **{"eval.batch_size": 32}), self.workdir,
                                       resuming=True)
    self.assertEqual(changes, [{"key": "eval.batch_size", "run": 64, "now": 32},
                               {"key": "num_steps", "run": 10, "now": 20}])
    self.assertEqual(logged.records[0].getMessage(),
                     f"resuming {self.workdir} with changed eval.batch_size 64 -> 32, num_steps 10 -> 20")
    self.assertEqual(self.saved()["num_steps"], 20)   # the config in force
    run_config.check_run_config(self.cfg(num_steps=30, **{"eval.batch_size": 32}), self.workdir, resuming=True)
    self.assertEqual(self.history(), [{"changes": changes},
                                      {"changes": [{"key": "num_steps", "run": 20, "now": 30}]}])

  def test_other_keys_refuse_the_resume_with_a_readable_diff(self):
    run_config.check_run_config(self.cfg(), self.workdir, resuming=False)
    path = os.path.join(self.workdir, run_config.CONFIG_FILE)
    with self.assertRaises(ValueError) as cm:
      run_config.check_run_config(self.cfg(num_steps=20, seed=1, **{"loss.name": "triplet"}), self.workdir,
                             resuming=True)
    self.assertEqual(str(cm.exception),
                     f"{self.workdir} holds a run with another config; resuming it would continue that run under "
                     "new settings. Differences:\n"
                     "  loss.name: 'npair' in the run, 'triplet' now\n"
                     "  seed: 0 in the run, 1 now\n"
                     f"Use a fresh --workdir, or resume with the run's own config ({path}). Only "
                     f"{', '.join(run_config.RESUMABLE_KEYS)} may change on resume.")
    self.assertEqual(self.saved(), json.loads(self.cfg().to_json_best_effort()))   # the run's config kept
    self.assertEqual(self.history(), [])

  def test_a_key_the_run_lacks_is_allowed_one_it_had_is_not(self):
    run_config.check_run_config(self.cfg(), self.workdir, resuming=False)
    newer = self.cfg()
    newer.hdml.new_option = "x"   # added by a newer version of the code
    self.assertEqual(run_config.check_run_config(newer, self.workdir, resuming=True),
                     [{"key": "hdml.new_option", "run": "<absent>", "now": "x"}])
    older = self.cfg()   # the saved run now has the option; a config without it would drop a setting
    with self.assertRaisesRegex(ValueError, r"hdml.new_option: 'x' in the run, '<absent>' now"):
      run_config.check_run_config(older, self.workdir, resuming=True)

  def test_keys_whose_value_is_none(self):
    # None is a value like any other: a new key set to None is a change, a key of value None dropped is refused.
    run_config.check_run_config(self.cfg(), self.workdir, resuming=False)
    newer = self.cfg()
    newer.hdml.cap = None
    self.assertEqual(run_config.check_run_config(newer, self.workdir, resuming=True),
                     [{"key": "hdml.cap", "run": "<absent>", "now": None}])
    with self.assertRaisesRegex(ValueError, r"hdml.cap: None in the run, '<absent>' now"):
      run_config.check_run_config(self.cfg(), self.workdir, resuming=True)

  def test_the_saved_config_lists_its_keys_sorted(self):
    # Sorted at every level, so that two runs' config.json files compare line by line.
    run_config.check_run_config(self.cfg(), self.workdir, resuming=False)
    with open(os.path.join(self.workdir, run_config.CONFIG_FILE)) as f:
      text = f.read()
    saved = json.loads(text)
    self.assertEqual(list(saved), sorted(saved))
    self.assertEqual(list(saved["hdml"]), ["lam", "margin"])
    self.assertLess(text.index('"eval"'), text.index('"num_steps"'))

  def test_a_config_saved_before_the_one_method_key_is_read_in_todays_keys(self):
    # Until 2026-12-07 loss.name='hdml' chose HDML's step and hdml.loss its loss; a library loss trained
    # without the weight-decay term.
    hdml_run = {"loss": {"name": "hdml"}, "hdml": {"loss": "triplet", "weight_decay": 1e-3}}
    self.assertEqual(run_config.upgrade_saved_config(hdml_run),
                     {"loss": {"name": "triplet"}, "hdml": {"weight_decay": 1e-3}})
    library_run = {"loss": {"name": "circle"}, "hdml": {"loss": "npair", "weight_decay": 1e-3}}
    self.assertEqual(run_config.upgrade_saved_config(library_run),
                     {"loss": {"name": "circle"}, "hdml": {"weight_decay": 0.0}})
    older = {"hdml": {"loss": "npair"}}   # before config.loss existed
    self.assertEqual(run_config.upgrade_saved_config(older), {"loss": {"name": "npair"}, "hdml": {}})
    today = {"loss": {"name": "npair"}, "hdml": {"lam": 0.5}}
    self.assertEqual(run_config.upgrade_saved_config(dict(today)), today)
    # Resuming such a run compares in today's keys: the same run resumes, a changed one is refused naming the key.
    with open(os.path.join(self.workdir, run_config.CONFIG_FILE), "w") as f:
      json.dump({**json.loads(self.cfg().to_json_best_effort()), "loss": {"name": "hdml"},
                 "hdml": {"margin": 1.0, "lam": 0.5, "loss": "npair"}}, f)
    self.assertEqual(run_config.check_run_config(self.cfg(), self.workdir, resuming=True), [])
    with self.assertRaisesRegex(ValueError, r"loss.name: 'npair' in the run, 'triplet' now"):
      run_config.check_run_config(self.cfg(**{"loss.name": "triplet"}), self.workdir, resuming=True)

  def test_a_run_without_a_saved_config_saves_the_current_one(self):
    with self.assertLogs(level="WARNING") as logged:
      self.assertEqual(run_config.check_run_config(self.cfg(), self.workdir, resuming=True), [])
    self.assertEqual(logged.records[0].getMessage(),
                     f"{self.workdir} has no {run_config.CONFIG_FILE} (written by an older version): the config cannot "
                     "be compared; saving the current one")
    self.assertEqual(self.saved(), json.loads(self.cfg().to_json_best_effort()))

  def test_only_the_main_process_writes(self):
    run_config.check_run_config(self.cfg(), self.workdir, resuming=False)
    with mock.patch.object(jax, "process_index", return_value=1):
      with self.assertLogs(level="WARNING"):
        changes = run_config.check_run_config(self.cfg(num_steps=20), self.workdir, resuming=True)
      os.remove(os.path.join(self.workdir, run_config.CONFIG_FILE))
      run_config.check_run_config(self.cfg(), self.workdir, resuming=False)
    self.assertEqual(changes, [{"key": "num_steps", "run": 10, "now": 20}])   # still compared and returned
    self.assertFalse(os.path.exists(os.path.join(self.workdir, run_config.CONFIG_FILE)))
    self.assertEqual(self.history(), [])


if __name__ == "__main__":
  from absl.testing import absltest
  absltest.main()


def _largest_array_file(step_dir):
  data = os.path.join(step_dir, "default", "ocdbt.process_0", "d")   # the arrays' data files
  return max((os.path.join(data, f) for f in os.listdir(data)), key=os.path.getsize)


def _overwrite_half(path):   # a damaged copy: the second half of one array file is zeros
  n = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(n // 2)
    f.write(b"\0" * (n - n // 2))


def _truncate_half(path):    # a full disk: the file stops halfway
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


# How a checkpoint's files get damaged: (name, what to do to the step's directory).
DAMAGES = (
    ("an array file half overwritten", lambda d: _overwrite_half(_largest_array_file(d))),
    ("an array file cut short (full disk)", lambda d: _truncate_half(_largest_array_file(d))),
    ("an array file missing (killed copy)", lambda d: os.remove(_largest_array_file(d))),
    ("the arrays' index empty (full disk)", lambda d: open(os.path.join(d, "default", "manifest.ocdbt"), "w").close()),
    ("the metadata cut short", lambda d: _truncate_half(os.path.join(d, "default", "_METADATA"))),
)


def big_state(step=0, w=0.0):
  """A toy state with one array too large to be stored inline in the checkpoint's index (over 1 KiB)."""
  noise = np.random.default_rng(step).normal(size=(32, 64)).astype(np.float32)
  return toy_state(step=step, w=w).replace(batch_stats={"noise": jnp.asarray(noise)})


class DamagedCheckpointTest(CheckpointDirTest):
  """A checkpoint whose files no longer read back costs only the steps since the one before it."""

  def save(self, step, w):
    checkpoints.save(self.ckpt, step, big_state(step=step, w=w))
    self.ckpt.wait_until_finished()

  def damage(self, step, how):
    how(os.path.join(self.workdir, "checkpoints", str(step)))

  def test_resume_uses_the_newest_readable_checkpoint_and_keeps_the_damaged_one_aside(self):
    for name, how in DAMAGES:
      with self.subTest(name):
        for s in saved(self.ckpt):
          self.ckpt.delete(s)
        shutil.rmtree(os.path.join(self.workdir, "checkpoints_damaged"), ignore_errors=True)
        self.save(2, 2.0)
        self.save(4, 4.0)
        self.damage(4, how)
        with self.assertLogs(level="WARNING") as logged:
          state, last = runtime.resume(self.ckpt, big_state(), self.workdir)
        self.assertEqual((int(state.step), last), (2, 2))
        np.testing.assert_array_equal(state.params["w"], [2.0] * 3)
        aside = os.path.join(self.workdir, "checkpoints_damaged", "4")
        self.assertEqual(len(logged.output), 1, logged.output)
        self.assertRegex(logged.output[0], f"checkpoint 4 in {self.ckpt.directory} cannot be read: its "
                         r"(arrays are|metadata is) damaged \(\w+")
        self.assertIn(f"Moved to {aside}; resuming from an earlier checkpoint.", logged.output[0])
        self.assertEqual(saved(self.ckpt), [2])
        self.assertTrue(os.path.isdir(aside))      # nothing deleted
        self.save(4, 5.0)                          # the resumed run writes step 4 again
        np.testing.assert_array_equal(checkpoints.restore(self.ckpt, big_state(), 4).params["w"], [5.0] * 3)

  def test_a_second_damaged_copy_of_a_step_is_kept_beside_the_first(self):
    for w in (4.0, 6.0):
      self.save(2, 2.0) if not saved(self.ckpt) else None
      self.save(4, w)
      self.damage(4, DAMAGES[0][1])
      with self.assertLogs(level="WARNING"):
        runtime.resume(self.ckpt, big_state(), self.workdir)
    self.assertEqual(sorted(os.listdir(os.path.join(self.workdir, "checkpoints_damaged"))), ["4", "4.1"])

  def test_nothing_readable_is_an_error_that_moves_nothing(self):
    self.save(2, 2.0)
    self.save(4, np.nan)
    self.save(6, 6.0)
    self.damage(2, DAMAGES[0][1])
    self.damage(6, DAMAGES[2][1])
    with self.assertRaises(checkpoints.DamagedCheckpointError) as cm:
      checkpoints.restore_latest_finite(self.ckpt, big_state())
    self.assertTrue(str(cm.exception).startswith(
        f"no checkpoint in {self.ckpt.directory} can be resumed: steps [6, 2] are damaged and steps [4] hold "
        f"non-finite values (e.g. checkpoint 6 in {self.ckpt.directory} cannot be read"), str(cm.exception))
    self.assertTrue(str(cm.exception).endswith("Start again with a fresh --workdir."), str(cm.exception))
    self.assertEqual(saved(self.ckpt), [2, 4, 6])
    self.assertFalse(os.path.exists(os.path.join(self.workdir, "checkpoints_damaged")))

  def test_a_damaged_newest_checkpoint_is_passed_over_by_evaluation_with_a_warning(self):
    self.save(2, 2.0)
    self.save(4, 4.0)
    self.save(6, 6.0)
    self.damage(6, DAMAGES[0][1])
    self.damage(4, DAMAGES[4][1])
    with self.assertLogs(level="WARNING") as logged:
      state = checkpoints.restore_newest_readable(self.ckpt, big_state())
    self.assertEqual(int(state.step), 2)
    self.assertIn("checkpoint 6 in", logged.output[0])
    self.assertIn("checkpoint 4 in", logged.output[1])
    self.assertIn(f"using checkpoint 2 in {self.ckpt.directory} instead of the damaged [6, 4]", logged.output[2])
    self.assertEqual(saved(self.ckpt), [2, 4, 6])   # evaluation reads only
    with self.assertRaisesRegex(checkpoints.DamagedCheckpointError, "^checkpoint 6 in .* cannot be read"):
      checkpoints.restore_readable(self.ckpt, big_state(), 6)
    self.damage(2, DAMAGES[1][1])
    with self.assertLogs(level="WARNING"), self.assertRaisesRegex(
        checkpoints.DamagedCheckpointError, r"every checkpoint in .* is damaged \(steps \[6, 4, 2\]\)"):
      checkpoints.restore_newest_readable(self.ckpt, big_state())

  def test_a_readable_checkpoint_of_another_model_is_not_called_damaged(self):
    self.save(2, 2.0)
    other = big_state().replace(params={"w": jnp.zeros((5,), jnp.float32)})
    self.assertIsNone(checkpoints.mismatch(self.ckpt, big_state(), 2))
    self.assertEqual(checkpoints.mismatch(self.ckpt, other, 2),
                     "5 arrays saved against 5 in this config; shapes only in the checkpoint [(3,)], only in this "
                     "config [(5,)]")
    with self.assertRaisesRegex(ValueError, "holds checkpoints of a different model") as cm:
      checkpoints.restore_readable(self.ckpt, other, 2)
    self.assertNotIsInstance(cm.exception, checkpoints.DamagedCheckpointError)


class LegacyCheckpointTest(CheckpointDirTest):
  """A label-based loss's checkpoint written before 2026-12-07 (an empty ``params["loss"]`` group) resumes."""

  def state(self, loss_params):
    from hdml_jax.config import HDMLConfig, OptimizerConfig
    from hdml_jax.train_state import create_train_state

    return create_train_state(jax.random.key(0), image_shape=(8, 8, 1), num_classes=5, embedding_dim=6,
                              backbone="small_cnn", backbone_kwargs=dict(widths=(4, 8)),
                              config=HDMLConfig(loss="multi_similarity", hdml=False),
                              optimizer=OptimizerConfig(clip_value=1.0), loss_params=loss_params)

  def test_the_empty_loss_group_is_read_and_dropped(self):
    old = self.state({})
    old = old.replace(step=jnp.int32(7), params=jax.tree_util.tree_map(lambda x: x + 1.0, old.params))
    old = old.replace(opt_state=old.tx.init(old.params))
    checkpoints.save(self.ckpt, 7, old)
    self.ckpt.wait_until_finished()
    template = self.state(None)
    self.assertNotIn("loss", template.params)
    state = checkpoints.restore_readable(self.ckpt, template, 7)
    self.assertEqual(int(state.step), 7)
    self.assertEqual(jax.tree_util.tree_structure(state.params), jax.tree_util.tree_structure(template.params))
    self.assertEqual(jax.tree_util.tree_structure(state.opt_state),
                     jax.tree_util.tree_structure(template.opt_state))
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(old.params)):
      np.testing.assert_array_equal(a, b)
    # Another model's checkpoint is still refused as one.
    other = self.state(None)
    with self.assertRaisesRegex(ValueError, "holds checkpoints of a different model"):
      checkpoints.restore_readable(self.ckpt, other.replace(params={**other.params, "extra": {"w": jnp.ones(3)}}), 7)


class UninterruptedTest(chex.TestCase):
  """Ctrl-C held back while a checkpoint is written, then delivered as it would have been."""

  def test_an_interrupt_is_delivered_when_the_block_ends(self):
    import signal
    import threading
    import time

    order = []
    outside = signal.signal(signal.SIGINT, signal.default_int_handler)   # Python's own, whatever the runner's
    self.addCleanup(signal.signal, signal.SIGINT, outside)
    with self.assertRaises(KeyboardInterrupt):
      with checkpoints.uninterrupted():
        with checkpoints.uninterrupted():   # nested: the outer block delivers it
          os.kill(os.getpid(), signal.SIGINT)
          time.sleep(0.1)
          order.append("inner")
        order.append("outer")
    self.assertEqual(order, ["inner", "outer"])
    self.assertIs(signal.getsignal(signal.SIGINT), signal.default_int_handler)   # restored
    # Ignored before, ignored after; no interrupt, nothing raised.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
      with checkpoints.uninterrupted():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
    finally:
      signal.signal(signal.SIGINT, previous)
    with checkpoints.uninterrupted():
      order.append("quiet")
    # Outside the main thread (no signal handlers there) the block runs as is.
    done = []

    def in_a_thread():
      with checkpoints.uninterrupted():   # signal.signal would raise ValueError here
        done.append(threading.current_thread().name)

    worker = threading.Thread(target=in_a_thread, name="worker")
    worker.start()
    worker.join()
    self.assertEqual(done, ["worker"])
