"""``hdml_objective`` term by term against a re-composition from the public functions.

Every loss (N-pair, triplet, contrastive), both BN1 update rules, the
reference and the relative ``alpha``/``beta``, and the baseline: each
metric, the returned value and the new BatchNorm statistics are computed
again here layer by layer, in eager mode (nothing is compiled), with every
hyper-parameter set to a distinct value so that passing the wrong one shows.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from hdml_jax import hardness, losses, objective
from hdml_jax.config import HDMLConfig
from hdml_jax.head import check_batch, hdml_objective, init_hdml_head, synthetic_inputs
from hdml_jax.networks import HDMLHead
from hdml_jax.statistics import init_statistics
from tests.unit.test_pair_losses import ref_multi_similarity

F, E, C, HIDDEN = 12, 6, 5, 16
DISTINCT = dict(alpha=1.5, beta=0.7, lam=0.3, softmax_factor=2.0, l2_reg=0.02, weight_decay=0.01, margin=0.6,
                contrastive_margin=1.7)


def batch(loss, seed=0):
  """Features and labels in the loss's layout, with distinct classes per tuple."""
  rng = np.random.default_rng(seed)
  if loss == "multi_similarity":   # M-per-class with a singleton class (an anchor without a positive)
    labels = np.array([0, 0, 3, 3, 1, 1, 4])
  elif loss == "npair":
    p = 4
    cls = rng.permutation(C)[:p]
    cls[-1] = cls[0]   # a repeated class: the N-pair loss must be told the labels
    labels = np.concatenate([cls, cls])
  else:
    t = 3
    a = rng.permutation(C)[:t]
    n = (a + 1 + rng.integers(0, C - 1, size=t)) % C
    labels = np.concatenate([a, a, n])
  return jnp.asarray(rng.normal(size=(len(labels), F)), jnp.float32), jnp.asarray(labels, jnp.int32)


def statistics(j_avg=2.5, j_gen=1.8, j_avg_first=0.8, j_gen_first=0.6):
  return init_statistics(block_length=4).replace(
      j_avg=jnp.float32(j_avg), j_gen=jnp.float32(j_gen), j_avg_first=jnp.float32(j_avg_first),
      j_gen_first=jnp.float32(j_gen_first))


def decay_by_hand(trees, wd):
  total = 0.0
  for tree in trees:
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      if jax.tree_util.keystr(path).endswith(("['kernel']", "['bias']")):
        total += float(np.sum(np.asarray(leaf, np.float64) ** 2))
  return wd / 2 * total


def ms_by_loop(similarities, labels):
  """Multi-Similarity (paper constants) of row i against column j, from a NumPy loop over the rows."""
  y = np.asarray(labels)
  rows = ref_multi_similarity(None, y, similarities=np.asarray(similarities, np.float64))
  return np.mean([r for r in rows if r is not None])


def unit_rows(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def metric_loss(cfg, z, labels):
  if cfg.loss == "multi_similarity":
    u = unit_rows(z)
    return ms_by_loop(u @ u.T, labels)
  if cfg.loss == "npair":
    p = z.shape[0] // 2
    return losses.npair_loss(z[:p], z[p:], labels=labels[:p], l2_reg=cfg.l2_reg)
  t = z.shape[0] // 3
  a, p, n = z[:t], z[t:2 * t], z[2 * t:]
  if cfg.loss == "triplet":
    return losses.triplet_loss(a, p, n, margin=cfg.margin)
  return losses.contrastive_loss(jnp.concatenate([a, a]), jnp.concatenate([p, n]),
                                 jnp.concatenate([jnp.ones(t), jnp.zeros(t)]), margin=cfg.contrastive_margin)


def recompose(head, params, bstats, y, labels, stats, decay_params):
  """Every term of one HDML batch, layer by layer."""
  cfg = head.config
  alpha = cfg.alpha_relative * stats.j_avg_first if cfg.alpha_relative > 0 else cfg.alpha
  beta = cfg.beta_relative * stats.j_gen_first if cfg.beta_relative > 0 else cfg.beta
  b = y.shape[0]
  emb = lambda st, x: head.embedding.apply({"params": params["embedding"], "batch_stats": st}, x, train=True,
                                           mutable=["batch_stats"])
  z, s1 = emb(bstats["embedding"], y)
  decay = decay_by_hand([decay_params or {}, params["embedding"]["fc1"]], cfg.weight_decay)
  j_m = metric_loss(cfg, z, labels) + decay
  out = {"loss": j_m, "j_m": j_m, "weight_decay": decay}
  if not cfg.hdml:
    return j_m, out, {"embedding": s1["batch_stats"]}
  if cfg.loss == "multi_similarity":
    p = b
    syn = hardness.expand_label_tuples(z, labels, alpha=alpha, j_avg=stats.j_avg)
    gen_in = jnp.concatenate([z, syn.anchors, syn.candidates.reshape(p * p, E)])
  elif cfg.loss == "npair":
    p = b // 2
    syn = hardness.expand_npair_tuples(z[:p], z[p:], alpha=alpha, j_avg=stats.j_avg)
    gen_in = jnp.concatenate([z, syn.anchors, syn.candidates.reshape(p * p, E)])
  else:
    t = b // 3
    n_hat = hardness.synthesize_negatives(z[:t], z[t:2 * t], z[2 * t:], alpha=alpha, j_avg=stats.j_avg)
    gen_in = jnp.concatenate([z, z[:t], z[t:2 * t], n_hat])
  decoded, g1 = head.generator.apply({"params": params["generator"], "batch_stats": bstats["generator"]}, gen_in,
                                     train=True, mutable=["batch_stats"])
  second = s1["batch_stats"] if cfg.bn1_update == "both" else bstats["embedding"]
  z_syn, s2 = emb(second, decoded[b:])
  if cfg.loss == "multi_similarity":   # anchor i against its own candidates (i, j)
    j_syn = ms_by_loop(np.einsum("ie,ije->ij", unit_rows(z_syn[:p]), unit_rows(z_syn[p:].reshape(p, p, E))), labels)
  elif cfg.loss == "npair":
    j_syn = losses.synthetic_npair_loss(z_syn[:p], z_syn[p:].reshape(p, p, E), l2_reg=cfg.l2_reg)
  else:
    j_syn = metric_loss(cfg, z_syn, labels)
  w = np.exp(-beta / float(stats.j_gen))
  j_metric = w * j_m + (1 - w) * j_syn
  j_recon = objective.reconstruction_loss(decoded[:b], y, lam=cfg.lam)
  logits = head.classifier.apply({"params": params["classifier"]}, decoded[b:])
  if cfg.loss in ("npair", "multi_similarity"):
    j_soft = objective.soft_loss_npair(logits[:p], logits[p:], labels[:p], lam=cfg.lam,
                                       softmax_factor=cfg.softmax_factor)
  else:
    j_soft = objective.soft_loss_triplet(logits, labels, lam=cfg.lam, softmax_factor=cfg.softmax_factor)
  j_cls = objective.classifier_loss(head.classifier.apply({"params": params["classifier"]}, y), labels)
  out.update(loss=j_metric, j_metric=j_metric, j_syn=j_syn, j_recon=j_recon, j_soft=j_soft,
             j_gen=j_recon + j_soft, j_cls=j_cls, w=w, hardness=np.exp(-alpha / float(stats.j_avg)),
             alpha=alpha, beta=beta)
  new_stats = {"embedding": (s2 if cfg.bn1_update == "both" else s1)["batch_stats"],
               "generator": g1["batch_stats"]}
  return j_metric + j_recon + j_soft + j_cls, out, new_stats


def assert_trees_close(test, got, want, rtol=1e-5, atol=1e-6):
  test.assertEqual(jax.tree_util.tree_structure(got), jax.tree_util.tree_structure(want))
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


class HDMLObjectiveTest(parameterized.TestCase):

  def check(self, config, stats=None, decay_params=None, seed=0):
    head, params, bstats = init_hdml_head(jax.random.key(seed), feature_dim=F, embedding_dim=E, num_classes=C,
                                          config=config, generator_hidden=HIDDEN)
    # BatchNorm statistics away from their initial values, so that using the wrong ones shows.
    bstats = jax.tree_util.tree_map(lambda x: x + 0.3 * jnp.arange(x.size, dtype=x.dtype).reshape(x.shape) / x.size
                                    + 0.2, bstats)
    y, labels = batch(config.loss, seed)
    stats = statistics() if stats is None else stats
    value, out = hdml_objective(head, params, bstats, y, labels, stats, decay_params=decay_params)
    want_value, want, want_stats = recompose(head, params, bstats, y, labels, stats, decay_params)
    self.assertEqual(set(out.metrics), set(want), "metric keys")
    for key in want:
      np.testing.assert_allclose(out.metrics[key], want[key], rtol=2e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(value, want_value, rtol=2e-5, atol=1e-6)
    assert_trees_close(self, out.batch_stats, want_stats)
    return out

  @parameterized.product(loss=("npair", "triplet", "contrastive", "multi_similarity"), bn1_update=("both", "real"))
  @pytest.mark.slow
  def test_every_term_equals_the_recomposition(self, loss, bn1_update):
    out = self.check(HDMLConfig(loss=loss, bn1_update=bn1_update, **DISTINCT),
                     decay_params={"conv": {"kernel": jnp.full((2, 3), 0.5), "bias": jnp.ones(3)},
                                   "bn": {"scale": jnp.full(4, 9.0)}})
    # The terms are all in play: a hardness and a weight strictly inside (0, 1), every loss non-zero.
    for key in ("w", "hardness"):
      self.assertTrue(0.05 < float(out.metrics[key]) < 0.95, key)
    for key in ("j_m", "j_syn", "j_recon", "j_soft", "j_cls"):
      self.assertGreater(float(out.metrics[key]), 1e-4, key)

  @parameterized.parameters("npair", "triplet")
  def test_relative_alpha_and_beta(self, loss):
    cfg = HDMLConfig(loss=loss, alpha_relative=0.7, beta_relative=0.9, **DISTINCT)   # both below 1
    out = self.check(cfg)
    np.testing.assert_allclose(out.metrics["alpha"], 0.7 * 0.8, rtol=1e-6)
    np.testing.assert_allclose(out.metrics["beta"], 0.9 * 0.6, rtol=1e-6)
    # Before the first block closes (firsts 0): hardness factor 1, w = 1.
    out = self.check(cfg, stats=statistics(j_avg_first=0.0, j_gen_first=0.0))
    np.testing.assert_allclose(out.metrics["hardness"], 1.0)
    np.testing.assert_allclose(out.metrics["w"], 1.0)

  @parameterized.parameters("npair", "triplet", "contrastive", "multi_similarity")
  @pytest.mark.slow
  def test_baseline_is_the_metric_loss_with_decay(self, loss):
    out = self.check(HDMLConfig(loss=loss, hdml=False, **DISTINCT), decay_params={"kernel": jnp.ones(3)})
    self.assertEqual(set(out.batch_stats), {"embedding"})
    out = self.check(HDMLConfig(loss=loss, hdml=False, **DISTINCT))   # decay_params None: fc1 alone
    self.assertGreater(float(out.metrics["weight_decay"]), 0.0)

  def test_init_hdml_head(self):
    cfg = HDMLConfig(loss="triplet")
    head, params, bstats = init_hdml_head(jax.random.key(0), feature_dim=F, embedding_dim=E, num_classes=C,
                                          config=cfg, generator_hidden=HIDDEN, bn_momentum=0.8, bn_epsilon=1e-2)
    self.assertIsInstance(head, HDMLHead)
    self.assertIs(head.config, cfg)
    self.assertEqual((head.embedding.embedding_dim, head.embedding.bn_momentum, head.embedding.bn_epsilon),
                     (E, 0.8, 1e-2))
    self.assertEqual((head.generator.feature_dim, head.generator.hidden_dim, head.generator.bn_momentum,
                      head.generator.bn_epsilon), (F, HIDDEN, 0.8, 1e-2))
    self.assertEqual(head.classifier.num_classes, C)
    shapes = jax.tree_util.tree_map(jnp.shape, params)
    self.assertEqual(shapes["embedding"]["fc1"]["kernel"], (F, E))
    self.assertEqual(shapes["generator"]["fc1"]["kernel"], (E, HIDDEN))
    self.assertEqual(shapes["generator"]["fc2"]["kernel"], (HIDDEN, F))
    self.assertEqual(shapes["classifier"]["fc"]["kernel"], (F, C))
    self.assertEqual(set(bstats), {"embedding", "generator"})
    for path, leaf in jax.tree_util.tree_leaves_with_path(bstats):   # inference-mode init: mean 0, var 1
      np.testing.assert_array_equal(leaf, 1.0 if "var" in jax.tree_util.keystr(path) else 0.0)
    # Defaults, and the baseline head.
    head, params, bstats = init_hdml_head(jax.random.key(0), feature_dim=F, embedding_dim=E, num_classes=2,
                                          config=HDMLConfig(hdml=False))
    self.assertIsNone(head.generator)
    self.assertIsNone(head.classifier)
    self.assertEqual(set(params), {"embedding"})
    self.assertEqual(set(bstats), {"embedding"})
    self.assertEqual((head.embedding.bn_momentum, head.embedding.bn_epsilon), (0.99, 1e-3))
    head, _, _ = init_hdml_head(jax.random.key(0), feature_dim=F, embedding_dim=E, num_classes=C)
    self.assertEqual(head.config, HDMLConfig())
    self.assertEqual(head.generator.hidden_dim, 512)
    with self.assertRaisesRegex(ValueError, r"^init_hdml_head: need at least 2 classes, got 1\.$"):
      init_hdml_head(jax.random.key(0), feature_dim=F, embedding_dim=E, num_classes=1)

  def test_seeded_with_a_stream_per_part(self):
    kw = dict(feature_dim=8, embedding_dim=8, num_classes=8, generator_hidden=8)
    _, a, _ = init_hdml_head(jax.random.key(1), **kw)
    _, b, _ = init_hdml_head(jax.random.key(1), **kw)
    _, c, _ = init_hdml_head(jax.random.key(2), **kw)
    assert_trees_close(self, a, b, rtol=0, atol=0)
    kernels = lambda p: [np.asarray(p["embedding"]["fc1"]["kernel"]), np.asarray(p["generator"]["fc1"]["kernel"]),
                         np.asarray(p["classifier"]["fc"]["kernel"])]
    for x, y in zip(kernels(a), kernels(c)):
      self.assertFalse(np.array_equal(x, y))
    e, g, k = kernels(a)
    self.assertFalse(np.allclose(np.abs(e), np.abs(g)) or np.allclose(np.abs(e), np.abs(k)))

  @parameterized.parameters("npair", "triplet")
  def test_synthetic_inputs_default_to_the_configured_alpha(self, loss):
    cfg = HDMLConfig(loss=loss, alpha=1.5)
    y, _ = batch(loss)
    z = y[:, :E]
    default = synthetic_inputs(cfg, z, jnp.float32(2.0))
    np.testing.assert_array_equal(default, synthetic_inputs(cfg, z, jnp.float32(2.0), 1.5))
    self.assertGreater(float(jnp.max(jnp.abs(default - synthetic_inputs(cfg, z, jnp.float32(2.0), 0.1)))), 1e-3)

  @pytest.mark.slow
  def test_alpha_and_beta_metrics_are_float32_under_x64(self):
    # The configured constants are Python floats: the metrics must not become float64 when x64 is on.
    with jax.enable_x64(True):
      head, params, bstats = init_hdml_head(jax.random.key(0), feature_dim=4, embedding_dim=2, num_classes=3,
                                            generator_hidden=4)
      _, out = hdml_objective(head, params, bstats, jnp.ones((4, 4), jnp.float32), jnp.array([0, 1, 0, 1]),
                              init_statistics())
      self.assertEqual((out.metrics["alpha"].dtype, out.metrics["beta"].dtype), (jnp.float32, jnp.float32))

  def test_check_batch_returns_the_tuple_count(self):
    for loss, b, want in (("npair", 8, 4), ("npair", 4, 2), ("triplet", 9, 3), ("contrastive", 12, 4),
                          ("multi_similarity", 7, 7), ("multi_similarity", 2, 2)):
      self.assertEqual(check_batch(HDMLConfig(loss=loss), jnp.zeros((b, 4)), jnp.zeros(b, jnp.int32)), want)
      self.assertIsInstance(check_batch(HDMLConfig(loss=loss), jnp.zeros((b, 4)), jnp.zeros(b, jnp.int32)), int)

  @pytest.mark.slow
  def test_batch_layout_errors(self):
    head, params, bstats = init_hdml_head(jax.random.key(0), feature_dim=4, embedding_dim=2, num_classes=3,
                                          config=HDMLConfig(loss="triplet"), generator_hidden=4)
    stats = init_statistics()
    with self.assertRaisesRegex(ValueError, r"^train_step: a triplet batch \[anchors; positives; negatives\] needs "
                                r"a size divisible by 3, got images \(4, 4\)\.$"):
      hdml_objective(head, params, bstats, jnp.zeros((4, 4)), jnp.zeros(4, jnp.int32), stats)
    with self.assertRaisesRegex(ValueError, r"^train_step: labels must have shape \(6,\) for images \(6, 4\), "
                                r"got \(6, 1\)\.$"):
      hdml_objective(head, params, bstats, jnp.zeros((6, 4)), jnp.zeros((6, 1), jnp.int32), stats)
    head, params, bstats = init_hdml_head(jax.random.key(0), feature_dim=4, embedding_dim=2, num_classes=3,
                                          generator_hidden=4)
    # The smallest layouts are accepted: two N-pair pairs, one triplet.
    value, _ = hdml_objective(head, params, bstats, jnp.ones((4, 4)), jnp.array([0, 1, 0, 1]), stats)
    self.assertTrue(np.isfinite(float(value)))
    thead, tparams, tbstats = init_hdml_head(jax.random.key(0), feature_dim=4, embedding_dim=2, num_classes=3,
                                             config=HDMLConfig(loss="triplet"), generator_hidden=4)
    value, _ = hdml_objective(thead, tparams, tbstats, jnp.eye(3, 4), jnp.array([0, 0, 1]), stats)
    self.assertTrue(np.isfinite(float(value)))
    for b in (2, 5):
      with self.assertRaisesRegex(ValueError, rf"^train_step: an N-pair batch \[anchors; positives\] needs an even "
                                  rf"size >= 4, got images \({b}, 4\)\.$"):
        hdml_objective(head, params, bstats, jnp.zeros((b, 4)), jnp.zeros(b, jnp.int32), stats)


if __name__ == "__main__":
  absltest.main()
