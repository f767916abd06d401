"""The configs, the optimizer and the state: validation, defaults, groups and initial values.

Fast (nothing here compiles a train step): these are the contracts of
``hdml_jax.train_state`` on their own, with Adam checked against a plain
NumPy recurrence.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from hdml_jax.config import HDMLConfig, OptimizerConfig
from hdml_jax.networks import build_networks
from hdml_jax.optimizers import GROUP_OF, make_optimizer, schedule
from hdml_jax.statistics import AdaptiveStatistics
from hdml_jax.train_state import HDMLTrainState, create_train_state
from tests.helpers.library import tiny_state

NON_NEGATIVE = ("alpha", "beta", "alpha_relative", "beta_relative", "softmax_factor", "l2_reg", "weight_decay",
                "margin", "contrastive_margin")


def adam_updates(grads, lr, b1=0.9, b2=0.999, eps=1e-8):
  """Plain Adam in NumPy: the update for each gradient of a sequence (one scalar parameter)."""
  m = v = 0.0
  out = []
  for t, g in enumerate(grads, start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    out.append(-lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps))
  return np.array(out)


def scalar_params(groups):
  return {g: {"w": jnp.zeros(())} for g in groups}


def run_optimizer(tx, params, grads_per_step):
  """The updates of each step, per group, for gradients given per step as {group: scalar}."""
  opt_state = tx.init(params)
  history = {g: [] for g in params}
  for grads in grads_per_step:
    updates, opt_state = tx.update({g: {"w": jnp.float32(grads[g])} for g in params}, opt_state, params)
    for g in params:
      history[g].append(float(updates[g]["w"]))
  return {g: np.array(h) for g, h in history.items()}


class HDMLConfigTest(parameterized.TestCase):

  def test_defaults_are_the_reference_values(self):
    c = HDMLConfig()
    self.assertEqual(
        (c.loss, c.hdml, c.alpha, c.beta, c.lam, c.softmax_factor, c.l2_reg, c.weight_decay, c.margin,
         c.contrastive_margin, c.bn1_update, c.alpha_relative, c.beta_relative),
        ("npair", True, 90.0, 1e4, 0.5, 1e4, 3e-3, 5e-3, 1.0, 1.0, "both", 0.0, 0.0))

  @parameterized.parameters("npair", "triplet", "contrastive")
  def test_every_loss_is_accepted(self, loss):
    self.assertEqual(HDMLConfig(loss=loss).loss, loss)

  def test_unknown_loss_and_bn1_update_are_refused_with_the_choices(self):
    with self.assertRaisesRegex(
        ValueError, r"^HDMLConfig: HDML has no synthesis for loss 'lifted' \(it has one for npair, triplet, "
        r"contrastive, multi_similarity\); set hdml=False to train it without synthesis\.$"):
      HDMLConfig(loss="lifted")
    with self.assertRaisesRegex(ValueError, r"^unknown loss 'lifted'; choose one of npair, triplet, contrastive, "):
      tiny_state(loss="lifted", hdml=False)
    with self.assertRaisesRegex(
        ValueError, r"^HDMLConfig\.bn1_update must be one of \('both', 'real'\), got 'none'\.$"):
      HDMLConfig(bn1_update="none")
    self.assertEqual(HDMLConfig(bn1_update="real").bn1_update, "real")

  @parameterized.parameters(0.0, 1.0, 0.25)
  def test_lam_on_the_closed_unit_interval_is_accepted(self, lam):
    self.assertEqual(HDMLConfig(lam=lam).lam, lam)

  @parameterized.parameters(-1e-6, 1.0 + 1e-6, 2.0)
  def test_lam_outside_the_unit_interval_is_refused(self, lam):
    with self.assertRaisesRegex(ValueError, rf"^HDMLConfig\.lam must lie in \[0, 1\], got {lam}\.$"):
      HDMLConfig(lam=lam)

  @parameterized.parameters(*NON_NEGATIVE)
  def test_each_constant_must_be_non_negative(self, name):
    self.assertEqual(getattr(HDMLConfig(**{name: 0.0}), name), 0.0)   # zero is allowed
    with self.assertRaisesRegex(ValueError, rf"^HDMLConfig\.{name} must be >= 0, got -0\.5\.$"):
      HDMLConfig(**{name: -0.5})


class OptimizerConfigTest(parameterized.TestCase):

  def test_defaults_are_the_reference_values(self):
    o = OptimizerConfig()
    self.assertEqual(
        (o.metric_lr, o.metric_boundaries, o.metric_decay, o.generator_lr, o.classifier_lr,
         o.generator_boundaries, o.generator_decay, o.classifier_boundaries, o.classifier_decay, o.clip_value),
        (7e-5, (5632, 6848), 0.5, 1e-2, 1e-3, (), 0.5, (), 0.5, None))

  def test_boundaries_become_tuples_of_int_for_every_group(self):
    o = OptimizerConfig(metric_boundaries=[10.0, np.int64(20)], generator_boundaries=np.array([3, 4]),
                        classifier_boundaries=[7.0])
    for name, want in (("metric_boundaries", (10, 20)), ("generator_boundaries", (3, 4)),
                       ("classifier_boundaries", (7,))):
      got = getattr(o, name)
      self.assertEqual(got, want)
      self.assertIsInstance(got, tuple)
      self.assertTrue(all(type(b) is int for b in got), name)
    hash(o)   # static: usable as a jit argument

  @parameterized.parameters("metric", "generator", "classifier")
  def test_each_learning_rate_must_be_non_negative(self, group):
    self.assertEqual(getattr(OptimizerConfig(**{f"{group}_lr": 0.0}), f"{group}_lr"), 0.0)
    with self.assertRaisesRegex(ValueError, rf"^OptimizerConfig\.{group}_lr must be >= 0, got -1\.0\.$"):
      OptimizerConfig(**{f"{group}_lr": -1.0})

  def test_each_group_has_its_own_schedule(self):
    o = OptimizerConfig(metric_lr=1.0, metric_boundaries=(2,), metric_decay=0.5,
                        generator_lr=2.0, generator_boundaries=(3, 5), generator_decay=0.1,
                        classifier_lr=4.0, classifier_boundaries=(1,), classifier_decay=0.25)
    steps = np.arange(7)
    want = {"metric": [1, 1, .5, .5, .5, .5, .5], "generator": [2, 2, 2, .2, .2, .02, .02],
            "classifier": [4, 1, 1, 1, 1, 1, 1]}
    for group, values in want.items():
      np.testing.assert_allclose([float(schedule(o, group)(s)) for s in steps], values, rtol=1e-6, err_msg=group)


class MakeOptimizerTest(parameterized.TestCase):

  def test_each_group_steps_with_its_own_adam_and_schedule(self):
    o = OptimizerConfig(metric_lr=0.1, metric_boundaries=(2,), metric_decay=0.5, generator_lr=0.2,
                        generator_boundaries=(1,), generator_decay=0.1, classifier_lr=0.3,
                        classifier_boundaries=(3,), classifier_decay=0.5, loss_lr=0.4, loss_boundaries=(1,),
                        loss_decay=0.25)
    params = scalar_params(["backbone", "embedding", "generator", "classifier", "loss"])
    grads = [{"backbone": g, "embedding": -g, "generator": 2 * g, "classifier": 3 * g, "loss": 4 * g}
             for g in (1.0, 0.5, -2.0, 1.5)]
    got = run_optimizer(make_optimizer(o, hdml=True, loss_params=True), params, grads)
    lr = {"metric": [0.1, 0.1, 0.05, 0.05], "generator": [0.2, 0.02, 0.02, 0.02],
          "classifier": [0.3, 0.3, 0.3, 0.15], "loss": [0.4, 0.1, 0.1, 0.1]}
    for name, g in GROUP_OF.items():
      # Adam with a step-dependent rate: the unit-rate update times that step's rate.
      want = adam_updates([s[name] for s in grads], 1.0) * np.array(lr[g])
      np.testing.assert_allclose(got[name], want, rtol=1e-4, err_msg=name)

  def test_clip_value_clips_the_metric_gradients_only(self):
    o = OptimizerConfig(metric_lr=1.0, metric_boundaries=(), generator_lr=1.0, classifier_lr=1.0, clip_value=2.0)
    params = scalar_params(["backbone", "embedding", "generator", "classifier"])
    grads = [{k: g for k in params} for g in (10.0, 1.0, -7.0)]
    got = run_optimizer(make_optimizer(o, hdml=True), params, grads)
    clipped = adam_updates([2.0, 1.0, -2.0], 1.0)
    plain = adam_updates([10.0, 1.0, -7.0], 1.0)
    self.assertGreater(np.max(np.abs(clipped - plain)), 0.1)   # the two differ
    for name in ("backbone", "embedding"):
      np.testing.assert_allclose(got[name], clipped, rtol=1e-4, err_msg=name)
    for name in ("generator", "classifier"):
      np.testing.assert_allclose(got[name], plain, rtol=1e-4, err_msg=name)
    # Without clip_value nothing is clipped.
    o = OptimizerConfig(metric_lr=1.0, metric_boundaries=())
    got = run_optimizer(make_optimizer(o, hdml=False), scalar_params(["backbone", "embedding"]), grads)
    np.testing.assert_allclose(got["backbone"], plain, rtol=1e-4)

  def test_the_baseline_optimizer_has_no_generator_or_classifier_group(self):
    tx = make_optimizer(OptimizerConfig(), hdml=False)
    tx.init(scalar_params(["backbone", "embedding"]))
    with self.assertRaisesRegex(ValueError, r"(?s)no corresponding transformation.*labels: \['generator', 'metric'\]"):
      tx.init(scalar_params(["backbone", "embedding", "generator"]))

  def test_every_leaf_of_a_group_gets_the_group_label(self):
    o = OptimizerConfig(metric_lr=0.5, metric_boundaries=(), generator_lr=0.25, classifier_lr=0.125)
    params = {"backbone": {"a": {"kernel": jnp.zeros(2)}, "b": jnp.zeros(())},
              "embedding": {"fc1": {"kernel": jnp.zeros((2, 2))}},
              "generator": {"x": jnp.zeros(3)}, "classifier": {"y": jnp.zeros(1)}}
    tx = make_optimizer(o, hdml=True)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    want = {"backbone": -0.5, "embedding": -0.5, "generator": -0.25, "classifier": -0.125}
    for group, tree in updates.items():
      for leaf in jax.tree_util.tree_leaves(tree):
        np.testing.assert_allclose(leaf, want[group], rtol=1e-5, err_msg=group)


class Flatten(nn.Module):

  @nn.compact
  def __call__(self, x, *, train):
    del train
    return x.reshape(x.shape[0], -1)


class Spatial(nn.Module):

  @nn.compact
  def __call__(self, x, *, train):
    del train
    return x


class WithDropout(nn.Module):
  """A backbone with a stochastic layer in training mode: it needs a 'dropout' key only when ``train``."""

  @nn.compact
  def __call__(self, x, *, train):
    x = nn.Dense(4)(x.reshape(x.shape[0], -1))
    return nn.Dropout(0.5, deterministic=not train)(x)


class NetworksAndStateTest(parameterized.TestCase):

  def test_the_backbone_is_initialised_and_measured_in_inference_mode(self):
    # Initialisation runs the backbone with train=False: no 'dropout' key is needed.
    state = create_train_state(jax.random.key(0), image_shape=(2, 3, 1), num_classes=3, embedding_dim=2,
                               backbone=WithDropout(), generator_hidden=4)
    self.assertEqual(state.params["backbone"]["Dense_0"]["kernel"].shape, (6, 4))
    self.assertEqual(state.networks.generator.feature_dim, 4)

  def test_build_networks(self):
    nets = build_networks(feature_dim=7, embedding_dim=3, num_classes=5, backbone="small_cnn",
                          backbone_kwargs={"widths": (2, 4)}, generator_hidden=9, bn_momentum=0.9, bn_epsilon=1e-4)
    self.assertEqual(nets.backbone.widths, (2, 4))
    self.assertEqual((nets.embedding.embedding_dim, nets.embedding.bn_momentum, nets.embedding.bn_epsilon),
                     (3, 0.9, 1e-4))
    self.assertEqual((nets.generator.feature_dim, nets.generator.hidden_dim, nets.generator.bn_momentum,
                      nets.generator.bn_epsilon), (7, 9, 0.9, 1e-4))
    self.assertEqual(nets.classifier.num_classes, 5)
    base = build_networks(feature_dim=7, embedding_dim=3, num_classes=5, backbone=Flatten(), hdml=False)
    self.assertIsInstance(base.backbone, Flatten)
    self.assertIsNone(base.generator)
    self.assertIsNone(base.classifier)
    defaults = build_networks(feature_dim=7, embedding_dim=3, num_classes=5)
    self.assertEqual((defaults.embedding.bn_momentum, defaults.embedding.bn_epsilon), (0.99, 1e-3))
    self.assertEqual(defaults.generator.hidden_dim, 512)
    self.assertEqual(type(defaults.backbone).__name__, "SmallConvNet")

  @pytest.mark.slow
  def test_state_holds_every_part_with_its_shapes_and_initial_values(self):
    config = HDMLConfig(loss="triplet", beta=5e3)
    opt = OptimizerConfig(metric_lr=0.1, metric_boundaries=(), generator_lr=0.1, classifier_lr=0.1)
    state = create_train_state(jax.random.key(0), image_shape=[2, 3, 1], num_classes=4, embedding_dim=5,
                               backbone=Flatten(), generator_hidden=8, config=config, optimizer=opt,
                               stats_block_length=3, stats_initial_value=7.0, bn_momentum=0.8, bn_epsilon=1e-2)
    self.assertIsInstance(state, HDMLTrainState)
    self.assertIs(state.config, config)
    self.assertEqual(int(state.step), 0)
    p = state.params
    self.assertEqual(set(p), {"backbone", "embedding", "generator", "classifier"})
    self.assertEqual(p["backbone"], {})
    self.assertEqual(p["embedding"]["fc1"]["kernel"].shape, (6, 5))
    self.assertEqual(p["generator"]["fc1"]["kernel"].shape, (5, 8))
    self.assertEqual(p["generator"]["fc2"]["kernel"].shape, (8, 6))
    self.assertEqual(p["classifier"]["fc"]["kernel"].shape, (6, 4))
    self.assertEqual(set(state.batch_stats), {"backbone", "embedding", "generator"})
    # BatchNorm statistics start at mean 0 and variance 1 (initialised in inference mode, not from a batch).
    for part in ("embedding", "generator"):
      for name, leaf in jax.tree_util.tree_leaves_with_path(state.batch_stats[part]):
        want = 1.0 if "var" in jax.tree_util.keystr(name) else 0.0
        np.testing.assert_array_equal(leaf, want, err_msg=f"{part}{jax.tree_util.keystr(name)}")
    self.assertEqual(state.batch_stats["embedding"]["bn1"]["mean"].shape, (6,))
    self.assertEqual(state.batch_stats["generator"]["bn"]["mean"].shape, (8,))
    self.assertIsInstance(state.stats, AdaptiveStatistics)
    self.assertEqual(float(state.stats.j_avg), 7.0)
    self.assertEqual(float(state.stats.j_gen), 7.0)
    self.assertEqual(int(state.stats.block_length), 3)
    self.assertEqual((state.networks.embedding.bn_momentum, state.networks.embedding.bn_epsilon), (0.8, 1e-2))
    self.assertEqual((state.networks.generator.bn_momentum, state.networks.generator.bn_epsilon), (0.8, 1e-2))
    self.assertEqual(state.networks.generator.feature_dim, 6)
    # The optimizer is the configured one: a unit gradient moves every group by its first Adam step.
    grads = jax.tree_util.tree_map(jnp.ones_like, p)
    new = state.apply_gradients(grads=grads)
    delta = jax.tree_util.tree_map(lambda a, b: np.asarray(a - b), new.params, p)
    for leaf in jax.tree_util.tree_leaves(delta):
      np.testing.assert_allclose(leaf, -0.1, rtol=1e-4)
    # apply_fn is the inference embedding: unit rows of width E.
    z = state.apply_fn(state.params, state.batch_stats, jnp.ones((3, 2, 3, 1)))
    self.assertEqual(z.shape, (3, 5))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(z), axis=1), 1.0, rtol=1e-5)

  @pytest.mark.slow
  def test_defaults_of_the_state(self):
    state = create_train_state(jax.random.key(0), image_shape=(8, 8, 1), num_classes=3, embedding_dim=4,
                               backbone_kwargs={"widths": (2, 4)})
    self.assertEqual(type(state.networks.backbone).__name__, "SmallConvNet")
    self.assertEqual(state.networks.backbone.widths, (2, 4))
    self.assertEqual(state.config, HDMLConfig())
    self.assertEqual(state.networks.generator.hidden_dim, 512)
    self.assertEqual((state.networks.embedding.bn_momentum, state.networks.embedding.bn_epsilon), (0.99, 1e-3))
    self.assertEqual(float(state.stats.j_avg), 1e6)
    self.assertEqual(int(state.stats.block_length), 64)
    self.assertGreater(len(state.batch_stats["backbone"]), 0)   # the CNN's own BatchNorms
    # The default optimizer: the first Adam step moves the metric group by 7e-5, the generator by 1e-2.
    grads = jax.tree_util.tree_map(jnp.ones_like, state.params)
    new = state.apply_gradients(grads=grads)
    np.testing.assert_allclose(new.params["embedding"]["fc1"]["bias"], -7e-5, rtol=1e-4)
    np.testing.assert_allclose(new.params["generator"]["fc2"]["bias"] - state.params["generator"]["fc2"]["bias"],
                               -1e-2, rtol=1e-4)
    np.testing.assert_allclose(new.params["classifier"]["fc"]["bias"] - state.params["classifier"]["fc"]["bias"],
                               -1e-3, rtol=1e-4)

  def test_the_baseline_state_has_no_generator_or_classifier(self):
    state = create_train_state(jax.random.key(0), image_shape=(2, 3, 1), num_classes=4, embedding_dim=5,
                               backbone=Flatten(), config=HDMLConfig(hdml=False))
    self.assertEqual(set(state.params), {"backbone", "embedding"})
    self.assertEqual(set(state.batch_stats), {"backbone", "embedding"})
    self.assertIsNone(state.networks.generator)
    self.assertIsNone(state.networks.classifier)

  def test_initialisation_is_seeded_and_each_part_gets_its_own_key(self):
    kw = dict(image_shape=(8, 8, 1), num_classes=4, embedding_dim=8, backbone_kwargs={"widths": (2, 8)},
              generator_hidden=8)
    a = create_train_state(jax.random.key(3), **kw)
    b = create_train_state(jax.random.key(3), **kw)
    c = create_train_state(jax.random.key(4), **kw)
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
      np.testing.assert_array_equal(x, y)
    kernels = lambda s: [s.params["embedding"]["fc1"]["kernel"], s.params["generator"]["fc1"]["kernel"],
                         s.params["classifier"]["fc"]["kernel"]]
    for x, y in zip(kernels(a), kernels(c)):
      self.assertFalse(np.array_equal(x, y))
    # The three 8 x 8 kernels are drawn from different keys.
    e, g, k = (np.asarray(x).ravel()[:32] for x in kernels(a))
    self.assertFalse(np.allclose(np.abs(e), np.abs(g)) or np.allclose(np.abs(e), np.abs(k[:len(e)])))

  def test_bad_arguments_are_refused(self):
    with self.assertRaisesRegex(ValueError, r"^create_train_state: need at least 2 classes, got 1\.$"):
      create_train_state(jax.random.key(0), image_shape=(2, 3, 1), num_classes=1, embedding_dim=5,
                         backbone=Flatten())
    state = create_train_state(jax.random.key(0), image_shape=(2, 3, 1), num_classes=2, embedding_dim=5,
                               backbone=Flatten())
    self.assertEqual(state.params["classifier"]["fc"]["kernel"].shape, (6, 2))
    with self.assertRaisesRegex(
        ValueError, r"^create_train_state: the backbone must return \[B, F\] features, got \(2, 2, 3, 1\)\.$"):
      create_train_state(jax.random.key(0), image_shape=(2, 3, 1), num_classes=4, embedding_dim=5,
                         backbone=Spatial())


if __name__ == "__main__":
  absltest.main()
