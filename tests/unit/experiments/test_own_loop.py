"""HDML in a loop of one's own (hdml_jax.head) equals make_train_step."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from experiments.examples import own_loop
from hdml_jax import HDMLConfig, OptimizerConfig, create_train_state, init_statistics, make_train_step
from hdml_jax.data import load_digits_split, make_sampler
from hdml_jax.head import hdml_objective, init_hdml_head
from tests.helpers.library import max_abs_diff


def digits_batch(loss, size, step):
  images, labels = load_digits_split("train")
  idx = make_sampler(loss, labels, batch_size=size, seed=0)(step)
  return {"images": jnp.asarray(images[idx]), "labels": jnp.asarray(labels[idx])}


class OwnLoopTest(chex.TestCase):

  @pytest.mark.slow
  def test_example_first_step_equals_make_train_step(self):
    backbone, head, params, head_stats = own_loop.init(jax.random.key(0), num_classes=5)
    tx = own_loop.make_optimizer()
    opt_state, stats = tx.init(params), init_statistics(block_length=16)
    batch = digits_batch("npair", 10, 0)
    new_params, _, new_head_stats, new_stats, metrics = own_loop.make_step(backbone, head, tx)(
        params, opt_state, head_stats, stats, batch)

    # The same model, parameters and optimizers in this project's state and step.
    state = create_train_state(
        jax.random.key(1), image_shape=(8, 8, 1), num_classes=5, embedding_dim=16, backbone=backbone,
        generator_hidden=128, config=own_loop.CONFIG,
        optimizer=OptimizerConfig(metric_lr=3e-4, metric_boundaries=(), generator_lr=1e-3, classifier_lr=1e-3),
        stats_block_length=16)
    state = state.replace(params=params, batch_stats={"backbone": {}, **head_stats},
                          opt_state=state.tx.init(params))
    ref, ref_metrics = jax.jit(make_train_step(state.networks, state.config))(state, batch, jax.random.key(0))
    self.assertLess(max_abs_diff(new_params, ref.params), 1e-6)
    self.assertLess(max_abs_diff(new_head_stats, {k: v for k, v in ref.batch_stats.items() if k != "backbone"}),
                    1e-6)
    self.assertLess(max_abs_diff(new_stats, ref.stats), 1e-6)
    for key in ("loss", "j_m", "j_syn", "j_gen", "j_cls", "w", "hardness"):
      np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-6, err_msg=key)

  def test_example_runs_and_learns(self):
    history = own_loop.main(num_steps=40)
    self.assertEqual(len(history), 40)
    chex.assert_tree_all_finite(history)
    self.assertLess(np.mean([h["j_cls"] for h in history[-10:]]), np.mean([h["j_cls"] for h in history[:10]]))

  @parameterized.parameters("npair", "triplet", "contrastive")
  @pytest.mark.slow
  def test_each_term_reaches_only_its_own_group(self, loss):
    config = HDMLConfig(loss=loss, beta=1e3)
    head, params, head_stats = init_hdml_head(jax.random.key(0), feature_dim=12, embedding_dim=6,
                                              num_classes=5, config=config, generator_hidden=16)
    size = 10 if loss == "npair" else 9
    features = jax.random.normal(jax.random.key(1), (size, 12))
    labels = digits_batch(loss, size, 0)["labels"]
    stats = init_statistics(block_length=4)

    def term(name):
      def fn(p, y):
        _, out = hdml_objective(head, p, head_stats, y, labels, stats)
        return out.metrics[name]
      return jax.grad(fn, argnums=(0, 1))(params, features)

    def nonzero(tree):
      return float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree_util.tree_leaves(tree))) > 0

    g_total = jax.grad(lambda p, y: hdml_objective(head, p, head_stats, y, labels, stats)[0],
                       argnums=(0, 1))(params, features)
    (g_metric, gy_metric), (g_gen, gy_gen), (g_cls, gy_cls) = (term("j_metric"), term("j_gen"), term("j_cls"))
    # Each loss reaches its own group and nothing else (features: J_metric only).
    self.assertTrue(nonzero(g_metric["embedding"]) and nonzero(gy_metric))
    self.assertFalse(nonzero(g_metric["generator"]) or nonzero(g_metric["classifier"]))
    self.assertTrue(nonzero(g_gen["generator"]))
    self.assertFalse(nonzero(g_gen["embedding"]) or nonzero(g_gen["classifier"]) or nonzero(gy_gen))
    self.assertTrue(nonzero(g_cls["classifier"]))
    self.assertFalse(nonzero(g_cls["embedding"]) or nonzero(g_cls["generator"]) or nonzero(gy_cls))
    # So one gradient of the sum gives every group the gradient of its own loss.
    for group, own in (("embedding", g_metric), ("generator", g_gen), ("classifier", g_cls)):
      self.assertLess(max_abs_diff(g_total[0][group], own[group]), 1e-5, group)
    self.assertLess(max_abs_diff(g_total[1], gy_metric), 1e-5)

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, "need at least 2 classes"):
      init_hdml_head(jax.random.key(0), feature_dim=4, embedding_dim=2, num_classes=1)
    head, params, head_stats = init_hdml_head(jax.random.key(0), feature_dim=4, embedding_dim=2, num_classes=3)
    with self.assertRaisesRegex(ValueError, "an even size >= 4"):
      hdml_objective(head, params, head_stats, jnp.zeros((5, 4)), jnp.zeros(5, jnp.int32),
                     init_statistics())
