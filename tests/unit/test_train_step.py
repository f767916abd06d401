import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from hdml_jax.config import HDMLConfig, OptimizerConfig
from hdml_jax.data import load_digits_split, make_sampler
from hdml_jax.head import synthetic_inputs
from hdml_jax.inference import embed_in_batches
from hdml_jax.train_state import create_train_state
from hdml_jax.train_step import make_train_step
from tests.helpers.library import digits_batch, max_abs_diff, recall_at_1, tiny_state


def _run(state, batches):
  step = jax.jit(make_train_step(state.networks, state.config))
  metrics = []
  for i, batch in enumerate(batches):
    state, m = step(state, batch, jax.random.key(i))
    metrics.append(m)
  return state, metrics


class TrainStepTest(chex.TestCase):

  def test_compiles_once(self):
    state = tiny_state()
    step = make_train_step(state.networks, state.config)
    traced = jax.jit(chex.assert_max_traces(step, n=1))
    for i in range(3):
      state, m = traced(state, digits_batch(step=i), jax.random.key(i))
    self.assertEqual(int(state.step), 3)
    self.assertTrue(bool(m["finite"]))

  @parameterized.parameters("npair", "triplet")
  @pytest.mark.slow
  def test_relative_alpha_and_beta_follow_the_first_block(self, loss):
    # Statistics blocks of 4 steps. Hand computation from the logged values:
    # the first block's means J_avg_first = mean(w J_m), J_gen_first =
    # mean(J_gen) over steps 0-3 set alpha = 0.5 J_avg_first and beta =
    # 0.2 J_gen_first; until then alpha = beta = 0 (hardness 1, w 1).
    state = tiny_state(loss=loss, alpha=90.0, beta=1e4, alpha_relative=0.5, beta_relative=0.2)
    state, ms = _run(state, [digits_batch(loss, step=i) for i in range(12)])
    ms = [{k: float(v) for k, v in m.items()} for m in ms]
    for m in ms[:4]:
      self.assertEqual((m["alpha"], m["beta"], m["hardness"], m["w"]), (0.0, 0.0, 1.0, 1.0))
      self.assertAlmostEqual(m["loss"], m["j_m"], places=5)
    first_avg = np.mean([m["w"] * m["j_m"] for m in ms[:4]])
    first_gen = np.mean([m["j_gen"] for m in ms[:4]])
    second_avg = np.mean([m["w"] * m["j_m"] for m in ms[4:8]])
    second_gen = np.mean([m["j_gen"] for m in ms[4:8]])
    for m in ms[4:8]:    # the statistics read the first block: exp(-0.5), exp(-0.2)
      np.testing.assert_allclose([m["alpha"], m["beta"]], [0.5 * first_avg, 0.2 * first_gen], rtol=1e-5)
      np.testing.assert_allclose([m["hardness"], m["w"]], [np.exp(-0.5), np.exp(-0.2)], rtol=1e-5)
    for m in ms[8:]:     # then the second block, against the same first-block constants
      np.testing.assert_allclose(m["hardness"], np.exp(-0.5 * first_avg / second_avg), rtol=1e-5)
      np.testing.assert_allclose(m["w"], np.exp(-0.2 * first_gen / second_gen), rtol=1e-5)
    np.testing.assert_allclose([state.stats.j_avg_first, state.stats.j_gen_first], [first_avg, first_gen],
                               rtol=1e-5)
    # Off (the default) the reference's constants are used as given.
    _, ref = _run(tiny_state(loss=loss, alpha=90.0, beta=1e4), [digits_batch(loss, step=i) for i in range(5)])
    self.assertEqual((float(ref[4]["alpha"]), float(ref[4]["beta"])), (90.0, 1e4))

  def test_relative_constants_must_be_non_negative(self):
    with self.assertRaisesRegex(ValueError, "alpha_relative must be >= 0"):
      tiny_state(alpha_relative=-1.0)

  @parameterized.product(loss=("npair", "triplet", "contrastive", "multi_similarity"), hdml=(True, False))
  @pytest.mark.slow
  def test_every_loss_runs_and_reports(self, loss, hdml):
    state = tiny_state(loss=loss, hdml=hdml)
    state, metrics = _run(state, [digits_batch(loss, step=i) for i in range(2)])
    m = metrics[-1]
    expected = {"loss", "j_m", "weight_decay", "finite", "stat/j_avg", "stat/j_gen",
                "grad_norm/backbone", "grad_norm/embedding"}
    if hdml:
      expected |= {"j_syn", "j_metric", "j_recon", "j_soft", "j_gen", "j_cls", "w", "hardness",
                   "alpha", "beta", "grad_norm/generator", "grad_norm/classifier"}
    self.assertEqual(set(m), expected)
    self.assertTrue(bool(m["finite"]))
    chex.assert_tree_all_finite({k: v for k, v in m.items() if k != "finite"})
    if hdml:
      # First block: statistics at 1e6, so w = exp(-beta/1e6) and hardness ~ 1.
      np.testing.assert_allclose(m["w"], np.exp(-1e4 / 1e6), rtol=1e-6)
      np.testing.assert_allclose(m["loss"], m["w"] * m["j_m"] + (1 - m["w"]) * m["j_syn"], rtol=1e-5)
      np.testing.assert_allclose(m["j_gen"], m["j_recon"] + m["j_soft"], rtol=1e-5)

  def test_statistics_follow_block_means(self):
    state = tiny_state()   # block length 4
    state, metrics = _run(state, [digits_batch(step=i) for i in range(5)])
    expected_avg = np.mean([float(m["w"] * m["j_m"]) for m in metrics[:4]])
    expected_gen = np.mean([float(m["j_gen"]) for m in metrics[:4]])
    np.testing.assert_allclose(metrics[4]["stat/j_avg"], expected_avg, rtol=1e-5)
    np.testing.assert_allclose(metrics[4]["stat/j_gen"], expected_gen, rtol=1e-5)
    np.testing.assert_allclose(state.stats.j_avg, expected_avg, rtol=1e-5)
    self.assertEqual(float(metrics[3]["stat/j_avg"]), 1e6)

  def _only_groups_change(self, optimizer, changed):
    state = tiny_state(optimizer=optimizer)
    new, _ = _run(state, [digits_batch(step=0)])
    for group in state.params:
      diff = max_abs_diff(state.params[group], new.params[group])
      if group in changed:
        self.assertGreater(diff, 0.0, group)
      else:
        self.assertEqual(diff, 0.0, group)

  @pytest.mark.slow
  def test_each_group_changes_only_through_its_own_optimizer(self):
    self._only_groups_change(OptimizerConfig(metric_lr=1e-3, generator_lr=0.0, classifier_lr=0.0),
                             {"backbone", "embedding"})
    self._only_groups_change(OptimizerConfig(metric_lr=0.0, generator_lr=1e-3, classifier_lr=0.0),
                             {"generator"})
    self._only_groups_change(OptimizerConfig(metric_lr=0.0, generator_lr=0.0, classifier_lr=1e-3),
                             {"classifier"})

  @pytest.mark.slow
  def test_each_group_learns_from_its_own_loss(self):
    batch = digits_batch(step=0)
    base, _ = _run(tiny_state(lam=0.5, softmax_factor=1e4), [batch])
    # J_soft and J_recon scale only J_gen: the metric and classifier updates must not move.
    other, _ = _run(tiny_state(lam=0.2, softmax_factor=10.0), [batch])
    for group in ("backbone", "embedding", "classifier"):
      self.assertEqual(max_abs_diff(base.params[group], other.params[group]), 0.0, group)
    self.assertGreater(max_abs_diff(base.params["generator"], other.params["generator"]), 0.0)
    # beta only enters J_metric: the generator and classifier updates must not move.
    other, _ = _run(tiny_state(beta=1e7), [batch])
    for group in ("generator", "classifier"):
      self.assertEqual(max_abs_diff(base.params[group], other.params[group]), 0.0, group)
    self.assertGreater(max_abs_diff(base.params["backbone"], other.params["backbone"]), 0.0)

  def test_metric_gradient_flows_through_generator(self):
    batch = digits_batch(step=0)
    state = tiny_state(beta=1e7)   # w = exp(-10): J_metric is mostly J_syn
    step = jax.jit(make_train_step(state.networks, state.config))
    _, m1 = step(state, batch, jax.random.key(0))
    gen = jax.tree_util.tree_map(lambda x: 1.5 * x, state.params["generator"])
    perturbed = state.replace(params={**state.params, "generator": gen})
    _, m2 = step(perturbed, batch, jax.random.key(0))
    self.assertNotAlmostEqual(float(m1["grad_norm/backbone"]), float(m2["grad_norm/backbone"]), places=4)
    # The baseline metric gradient does not depend on any generator.
    base = tiny_state(hdml=False)
    _, mb = jax.jit(make_train_step(base.networks, base.config))(base, batch, jax.random.key(0))
    self.assertTrue(np.isfinite(float(mb["grad_norm/backbone"])))

  @pytest.mark.slow
  def test_bn1_update_rule(self):
    batch = digits_batch(step=0)
    both, _ = _run(tiny_state(bn1_update="both"), [batch])
    real, _ = _run(tiny_state(bn1_update="real"), [batch])
    base, _ = _run(tiny_state(hdml=False), [batch])
    # "real": BN1's moving statistics see the real batch only, as in the baseline.
    self.assertLess(max_abs_diff(real.batch_stats["embedding"], base.batch_stats["embedding"]), 1e-6)
    self.assertGreater(max_abs_diff(both.batch_stats["embedding"], real.batch_stats["embedding"]), 1e-6)
    # "both": the synthetic pass's update follows the real pass's one.
    mean_real = np.asarray(real.batch_stats["embedding"]["bn1"]["mean"])
    mean_both = np.asarray(both.batch_stats["embedding"]["bn1"]["mean"])
    # Recompute the synthetic features by hand: "both" must equal one more EMA
    # update, 0.99 * mean_after_real + 0.01 * mean(y_syn).
    state = tiny_state(bn1_update="both")
    nets, p, bs = state.networks, state.params, state.batch_stats
    y, _ = nets.backbone.apply({"params": p["backbone"], "batch_stats": bs["backbone"]},
                               batch["images"], train=True, mutable=["batch_stats"])
    z, _ = nets.embedding.apply({"params": p["embedding"], "batch_stats": bs["embedding"]},
                                y, train=True, mutable=["batch_stats"])
    syn = synthetic_inputs(state.config, z, state.stats.j_avg)
    out, _ = nets.generator.apply({"params": p["generator"], "batch_stats": bs["generator"]},
                                  jnp.concatenate([z, syn]), train=True, mutable=["batch_stats"])
    y_syn = out[z.shape[0]:]
    expected = 0.99 * mean_real + 0.01 * np.asarray(jnp.mean(y_syn, axis=0))
    np.testing.assert_allclose(mean_both, expected, rtol=1e-4, atol=1e-6)

  def test_nonfinite_loss_is_flagged_not_hidden(self):
    state = tiny_state()
    batch = digits_batch(step=0)
    batch = {"images": batch["images"].copy(), "labels": batch["labels"]}
    batch["images"][0, 0, 0, 0] = np.nan
    _, m = _run(state, [batch])
    self.assertFalse(bool(m[0]["finite"]))
    self.assertFalse(np.isfinite(float(m[0]["loss"])))

  def test_backbone_batch_norm_statistics_carry_over_steps(self):
    # Each step's backbone statistics are one EMA update of the previous step's (not of the initial ones):
    # the first step alone cannot tell, since the initial mean is zero.
    batches = [digits_batch(step=i) for i in range(2)]
    state = tiny_state()
    step = jax.jit(make_train_step(state.networks, state.config))
    states = [state]
    for i, batch in enumerate(batches):
      states.append(step(states[-1], batch, jax.random.key(i))[0])
    nets = state.networks
    for before, after, batch in zip(states, states[1:], batches):
      _, want = nets.backbone.apply({"params": before.params["backbone"], "batch_stats": before.batch_stats["backbone"]},
                                    batch["images"], train=True, mutable=["batch_stats"])
      self.assertLess(max_abs_diff(after.batch_stats["backbone"], want["batch_stats"]), 1e-5)
    self.assertGreater(max_abs_diff(states[2].batch_stats["backbone"], states[1].batch_stats["backbone"]), 1e-4)

  @pytest.mark.slow
  def test_a_nonfinite_generator_or_classifier_loss_is_flagged(self):
    # A NaN classifier leaves J_metric finite but makes J_soft (so J_gen) and J_cls NaN: still flagged.
    state = tiny_state()
    bad = jax.tree_util.tree_map(lambda x: jnp.full_like(x, jnp.nan), state.params["classifier"])
    state = state.replace(params={**state.params, "classifier": bad})
    _, m = _run(state, [digits_batch(step=0)])
    self.assertTrue(np.isfinite(float(m[0]["loss"])))
    self.assertFalse(np.isfinite(float(m[0]["j_gen"])) or np.isfinite(float(m[0]["j_cls"])))
    self.assertFalse(bool(m[0]["finite"]))

  def test_hdml_step_needs_the_generator_and_the_classifier(self):
    state = tiny_state()
    base = tiny_state(hdml=False)
    message = r"^make_train_step: HDML needs networks built with hdml=True\.$"
    without = lambda part: dataclasses.replace(
        state.networks, head=dataclasses.replace(state.networks.head, **{part: None}))
    for networks in (base.networks, without("generator"), without("classifier")):
      with self.assertRaisesRegex(ValueError, message):
        make_train_step(networks, state.config)
    make_train_step(base.networks, base.config)   # the baseline needs neither

  def test_bad_batches(self):
    state = tiny_state()
    step = make_train_step(state.networks, state.config)
    images, labels = load_digits_split("train")
    with self.assertRaisesRegex(ValueError, r"even size >= 4, got images \(7, 8, 8, 1\)"):
      step(state, {"images": images[:7], "labels": labels[:7]}, jax.random.key(0))
    with self.assertRaisesRegex(ValueError, r"labels must have shape \(8,\).*got \(6,\)"):
      step(state, {"images": images[:8], "labels": labels[:6]}, jax.random.key(0))
    tstate = tiny_state(loss="triplet")
    tstep = make_train_step(tstate.networks, tstate.config)
    with self.assertRaisesRegex(ValueError, r"divisible by 3, got images \(8, 8, 8, 1\)"):
      tstep(tstate, {"images": images[:8], "labels": labels[:8]}, jax.random.key(0))
    with self.assertRaisesRegex(ValueError, r"unknown loss 'arcfce'; choose one of npair, "):
      tiny_state(loss="arcfce", hdml=False)
    with self.assertRaisesRegex(ValueError, "HDML has no synthesis for loss 'arcface'.*set hdml=False"):
      HDMLConfig(loss="arcface")
    with self.assertRaisesRegex(ValueError, "bn1_update must be one of"):
      HDMLConfig(bn1_update="never")

  def test_embedding_function(self):
    state = tiny_state()
    images, _ = load_digits_split("test")
    e = embed_in_batches(state, images[:50], batch_size=16)
    chex.assert_shape(e, (50, 6))
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    # Inference-mode BatchNorm: an image's embedding does not depend on its batch.
    e2 = embed_in_batches(state, images[:50][::-1], batch_size=7)[::-1]
    np.testing.assert_allclose(e, e2, atol=1e-5)


class LearningTest(chex.TestCase):
  """On digits (classes 0-4 train, 5-9 held out), both methods learn."""

  @parameterized.named_parameters(("baseline", False), ("hdml", True))
  @pytest.mark.slow
  def test_losses_fall_and_held_out_recall_rises(self, hdml):
    xtr, ytr = load_digits_split("train")
    xte, yte = load_digits_split("test")
    state = create_train_state(
        jax.random.key(0), image_shape=(8, 8, 1), num_classes=10, embedding_dim=4,
        backbone="mlp", backbone_kwargs=dict(hidden=(32,)), generator_hidden=64,
        config=HDMLConfig(loss="npair", hdml=hdml, beta=1e3, weight_decay=1e-3),
        optimizer=OptimizerConfig(metric_lr=1e-3, generator_lr=1e-3), stats_block_length=16)
    sampler = make_sampler("npair", ytr, batch_size=10, seed=0)
    recall_before = recall_at_1(embed_in_batches(state, xte), yte)
    step = jax.jit(make_train_step(state.networks, state.config))
    history = []
    for i in range(150):
      idx = sampler(i)
      state, m = step(state, {"images": xtr[idx], "labels": ytr[idx]}, jax.random.key(i))
      history.append({k: float(v) for k, v in m.items()})
    recall_after = recall_at_1(embed_in_batches(state, xte), yte)
    first = lambda k: np.mean([h[k] for h in history[:16]])
    last = lambda k: np.mean([h[k] for h in history[-16:]])
    self.assertLess(last("j_m"), 0.5 * first("j_m"))
    if hdml:
      self.assertLess(last("j_gen"), first("j_gen"))
      self.assertLess(last("j_cls"), first("j_cls"))
      self.assertLess(history[-1]["hardness"], 1.0)   # synthesis switched on
    self.assertGreater(recall_after, recall_before + 0.03, (recall_before, recall_after))
