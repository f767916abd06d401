"""The bugs a reimplementation most easily has and the rest of the suite would not see."""


import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import hdml_jax as hd
from hdml_jax import objective
from hdml_jax.config import HDMLConfig
from hdml_jax.train_step import make_train_step
from tests.helpers.library import digits_batch, tiny_state


def _tuple_loss(cfg, a, p, n):
  """The triplet or contrastive loss of ``(a, p, n)`` rows, from the public losses."""
  if cfg.loss == "triplet":
    return hd.triplet_loss(a, p, n, margin=cfg.margin)
  same = jnp.concatenate([jnp.ones(a.shape[0]), jnp.zeros(a.shape[0])])
  return hd.contrastive_loss(jnp.concatenate([a, a]), jnp.concatenate([p, n]), same,
                             margin=cfg.contrastive_margin)


def recomposed_metric_objective(state, batch, *, cut=None):
  """``J_metric`` of an HDML step (N-pair, triplet or contrastive) written again from the public functions.

  Independent of ``make_train_step``: every layer is applied by hand, in
  training mode, and the synthesis is differentiated end to end. ``cut``
  names the bug to catch, a stop-gradient on the synthetic path:
  ``"input"`` on the whole synthetic generator input, ``"synthesis"`` on
  the synthesised rows only (the N-pair candidates, the triplets' n^).
  """
  nets, cfg, stats = state.networks, state.config, state.stats
  images, labels = batch["images"], batch["labels"]
  sg = jax.lax.stop_gradient

  def objective_of(metric_params):
    y, _ = nets.backbone.apply({"params": metric_params["backbone"],
                                "batch_stats": state.batch_stats["backbone"]}, images,
                               train=True, mutable=["batch_stats"])
    z, _ = nets.embedding.apply({"params": metric_params["embedding"],
                                 "batch_stats": state.batch_stats["embedding"]}, y, train=True,
                                mutable=["batch_stats"])
    decay = objective.weight_decay({"backbone": metric_params["backbone"],
                                    "fc1": metric_params["embedding"]["fc1"]}, wd=cfg.weight_decay)
    if cfg.loss == "npair":
      p = z.shape[0] // 2
      j_m = hd.npair_loss(z[:p], z[p:], labels=labels[:p], l2_reg=cfg.l2_reg)
      tuples = hd.expand_npair_tuples(z[:p], z[p:], alpha=cfg.alpha, j_avg=stats.j_avg)
      candidates = tuples.candidates.reshape(p * p, -1)
      synthetic = jnp.concatenate([tuples.anchors, sg(candidates) if cut == "synthesis" else candidates])
    else:
      a, p_, n = hd.split_triplets(z)
      j_m = _tuple_loss(cfg, a, p_, n)
      n_hat = hd.synthesize_negatives(a, p_, n, alpha=cfg.alpha, j_avg=stats.j_avg)
      synthetic = jnp.concatenate([a, p_, sg(n_hat) if cut == "synthesis" else n_hat])
    decoded, _ = nets.generator.apply({"params": state.params["generator"],
                                       "batch_stats": state.batch_stats["generator"]},
                                      jnp.concatenate([z, sg(synthetic) if cut == "input" else synthetic]),
                                      train=True, mutable=["batch_stats"])
    z_syn, _ = nets.embedding.apply({"params": metric_params["embedding"],
                                     "batch_stats": state.batch_stats["embedding"]}, decoded[z.shape[0]:],
                                    train=True, mutable=["batch_stats"])
    if cfg.loss == "npair":
      p = z.shape[0] // 2
      j_syn = hd.synthetic_npair_loss(z_syn[:p], z_syn[p:].reshape(p, p, -1), l2_reg=cfg.l2_reg)
    else:
      j_syn = _tuple_loss(cfg, *hd.split_triplets(z_syn))
    w = objective.metric_weight(stats.j_gen, beta=cfg.beta)
    return w * (j_m + decay) + (1.0 - w) * j_syn

  return objective_of


class MetricGradientPathTest(parameterized.TestCase):

  # The triplet batch of step 0 has no active triplet (a zero gradient): step 1's has.
  @parameterized.parameters(("npair", 0), ("triplet", 1), ("contrastive", 0))
  @pytest.mark.slow
  def test_metric_gradient_reaches_the_backbone_through_the_synthesis(self, loss, step):
    # beta = 3e6 gives w = exp(-3) in the first block: J_syn carries 95 % of
    # J_metric, so a cut anywhere on the synthetic path (before the
    # synthesis, inside it, or at the generator input) changes the gradient.
    state = tiny_state(loss=loss, alpha=1.0, beta=3e6)
    batch = {k: jnp.asarray(v) for k, v in digits_batch(loss=loss, step=step).items()}
    metric_params = {"backbone": state.params["backbone"], "embedding": state.params["embedding"]}
    fn = jax.jit(recomposed_metric_objective(state, batch))
    value, grads = jax.jit(jax.value_and_grad(fn))(metric_params)

    _, m = jax.jit(make_train_step(state.networks, state.config))(state, batch, jax.random.key(0))
    # 1. The re-composition is the step's own forward function ...
    np.testing.assert_allclose(value, m["loss"], rtol=1e-5)
    # ... and its gradient is that function's derivative (a central finite
    # difference along a random direction, independent of any autodiff).
    leaves, treedef = jax.tree_util.tree_flatten(metric_params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    v = jax.tree_util.tree_unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    norm = optax.tree.norm(v)
    v = jax.tree_util.tree_map(lambda x: x / norm, v)
    eps = 1e-3   # the synthesis is only piecewise smooth: small steps
    shifted = lambda s: fn(jax.tree_util.tree_map(lambda a, d: a + s * eps * d, metric_params, v))
    fd = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
    directional = sum(jnp.sum(g * d) for g, d in zip(jax.tree_util.tree_leaves(grads),
                                                     jax.tree_util.tree_leaves(v)))
    np.testing.assert_allclose(fd, directional, rtol=1e-2)
    # 2. The step applies exactly that gradient, group by group.
    for group in ("backbone", "embedding"):
      want = float(optax.tree.norm(grads[group]))
      np.testing.assert_allclose(m[f"grad_norm/{group}"], want, rtol=1e-4, err_msg=group)
    # 3. The check has power: with the synthetic path cut (the whole generator
    # input, or only the synthesised rows), the backbone's gradient norm moves
    # by far more than the tolerance above.
    full_norm = float(optax.tree.norm(grads["backbone"]))
    for cut in ("input", "synthesis"):
      cut_grads = jax.jit(jax.grad(recomposed_metric_objective(state, batch, cut=cut)))(metric_params)
      cut_norm = float(optax.tree.norm(cut_grads["backbone"]))
      self.assertGreater(abs(cut_norm - full_norm) / full_norm, 1e-2, cut)


class ConfigCheckTest(parameterized.TestCase):

  @parameterized.parameters(-0.1, 1.5)
  def test_lam_outside_the_unit_interval_is_refused(self, lam):
    with self.assertRaisesRegex(ValueError, r"HDMLConfig.lam must lie in \[0, 1\]"):
      HDMLConfig(lam=lam)
    for ok in (0.0, 0.5, 1.0):
      self.assertEqual(HDMLConfig(lam=ok).lam, ok)


class WeightDecayTest(chex.TestCase):

  def test_auto_named_batchnorm_of_a_user_backbone_is_not_decayed(self):
    import flax.linen as nn

    class UserBackbone(nn.Module):   # Flax names these BatchNorm_0 and Dense_0
      @nn.compact
      def __call__(self, x, train=False):
        x = nn.BatchNorm(use_running_average=not train)(x)
        return nn.Dense(3)(x)

    variables = UserBackbone().init(jax.random.key(0), jnp.ones((2, 4)))
    params = jax.tree_util.tree_map(lambda x: jnp.full_like(x, 2.0), variables["params"])
    self.assertIn("BatchNorm_0", params)
    # Only Dense_0 decays: kernel 4x3 and bias 3, every entry 2.
    self.assertAlmostEqual(float(objective.weight_decay(params, wd=0.1)), 0.1 * 0.5 * 4.0 * (12 + 3), places=5)
