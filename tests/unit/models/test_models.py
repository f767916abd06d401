import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hdml_jax import models
from tests.helpers.library import tiny_state


class ModelsTest(chex.TestCase):

  def test_registry(self):
    self.assertLessEqual({"small_cnn", "mlp", "tiny"}, set(models.available_backbones()))
    with self.assertRaisesRegex(ValueError, "unknown backbone 'nope'.*registered"):
      models.get_backbone("nope")
    with self.assertRaisesRegex(TypeError, "bad arguments"):
      models.get_backbone("tiny", widths=3)
    with self.assertRaisesRegex(ValueError, "already registered"):
      models.register_backbone("tiny")(object)

  @pytest.mark.slow
  def test_small_cnn_sizes(self):
    net = models.get_backbone("small_cnn", widths=(8, 16, 32), depth=2)
    for size in (28, 64, 128):
      x = jnp.zeros((2, size, size, 3))
      variables = net.init(jax.random.key(0), x, train=False)
      y = net.apply(variables, x, train=False)
      chex.assert_shape(y, (2, 32))
    with self.assertRaisesRegex(ValueError, r"\[B, H, W, C\], got shape \(2, 28\)"):
      net.init(jax.random.key(0), jnp.zeros((2, 28)), train=False)

  def test_heads_shapes_and_reference_init(self):
    head = models.EmbeddingHead(5)
    v = head.init(jax.random.key(0), jnp.ones((3, 7)), train=False)
    self.assertEqual(head.bn_momentum, 0.99)
    self.assertEqual(head.bn_epsilon, 1e-3)
    np.testing.assert_array_equal(v["params"]["fc1"]["bias"], 0.0)
    # Glorot uniform: |w| <= sqrt(6 / (fan_in + fan_out)).
    limit = np.sqrt(6 / (7 + 5))
    self.assertLessEqual(float(jnp.max(jnp.abs(v["params"]["fc1"]["kernel"]))), limit)
    gen = models.Generator(feature_dim=7, hidden_dim=4)
    gv = gen.init(jax.random.key(1), jnp.ones((3, 5)), train=False)
    chex.assert_shape(gen.apply(gv, jnp.ones((3, 5)), train=False), (3, 7))
    cls = models.Classifier(4)
    cv = cls.init(jax.random.key(2), jnp.ones((3, 7)))
    chex.assert_shape(cls.apply(cv, jnp.ones((3, 7))), (3, 4))

  def test_per_group_schedules(self):
    from hdml_jax.config import OptimizerConfig
    from hdml_jax.optimizers import schedule
    opt = OptimizerConfig(metric_lr=1.0, metric_boundaries=(10, 20), generator_lr=2.0,
                          generator_boundaries=(5,), generator_decay=0.1, classifier_lr=3.0)
    m, g, c = (schedule(opt, k) for k in ("metric", "generator", "classifier"))
    np.testing.assert_allclose([m(0), m(10), m(20)], [1.0, 0.5, 0.25])   # the reference's halvings
    np.testing.assert_allclose([g(4), g(5)], [2.0, 0.2])
    np.testing.assert_allclose([c(0), c(10 ** 6)], [3.0, 3.0])
    with self.assertRaisesRegex(ValueError, "generator_lr must be >= 0"):
      OptimizerConfig(generator_lr=-1.0)

  def test_train_state_groups(self):
    state = tiny_state()
    self.assertEqual(set(state.params), {"backbone", "embedding", "generator", "classifier"})
    self.assertEqual(set(state.batch_stats), {"backbone", "embedding", "generator"})
    self.assertEqual(float(state.stats.j_avg), 1e6)
    base = tiny_state(hdml=False)
    self.assertEqual(set(base.params), {"backbone", "embedding"})

  @pytest.mark.slow
  def test_parameterless_backbone_trains_on_precomputed_features(self):
    # mlp with no hidden layers is the identity on flattened inputs: the
    # state has an empty backbone group and the step trains the rest.
    from hdml_jax.config import HDMLConfig, OptimizerConfig
    from hdml_jax.train_state import create_train_state
    from hdml_jax.train_step import make_train_step

    config = HDMLConfig(loss="npair", hdml=True)
    state = create_train_state(jax.random.key(0), image_shape=(1, 1, 12), num_classes=4,
                               embedding_dim=5, backbone="mlp", backbone_kwargs={"hidden": ()},
                               generator_hidden=8, config=config, optimizer=OptimizerConfig())
    self.assertEqual(state.params["backbone"], {})
    batch = {"images": np.random.default_rng(0).normal(size=(8, 1, 1, 12)).astype(np.float32),
             "labels": np.array([0, 1, 2, 3, 0, 1, 2, 3], np.int32)}
    new, metrics = jax.jit(make_train_step(state.networks, config))(state, batch, jax.random.key(1))
    self.assertTrue(bool(metrics["finite"]))
    self.assertGreater(float(jnp.abs(new.params["embedding"]["fc1"]["kernel"]
                                     - state.params["embedding"]["fc1"]["kernel"]).max()), 0.0)
    # The empty statistics group and the state's structure are kept.
    self.assertEqual(new.batch_stats["backbone"], {})
    self.assertEqual(jax.tree_util.tree_structure(new), jax.tree_util.tree_structure(state))
