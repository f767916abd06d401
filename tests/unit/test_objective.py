import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from hdml_jax import objective
from tests import reference


def _rand(seed, *shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


class ObjectiveTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_weight_and_metric_objective(self):
    w = self.variant(lambda j: objective.metric_weight(j, beta=5e3))(2e4)
    np.testing.assert_allclose(w, math.exp(-5e3 / 2e4), rtol=1e-6)
    np.testing.assert_allclose(objective.metric_objective(3.0, 7.0, w), w * 3 + (1 - w) * 7, rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_reconstruction_is_a_sum(self):
    y1, y2 = _rand(0, 4, 6), _rand(1, 4, 6)
    got = self.variant(lambda a, b: objective.reconstruction_loss(a, b, lam=0.3))(y1, y2)
    want = 0.7 * sum(reference.sq_dist(u, v) for u, v in zip(y1, y2))
    np.testing.assert_allclose(got, want, rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_soft_npair_labels(self):
    p, c = 3, 5
    anc, cand = _rand(2, p, c), _rand(3, p * p, c)
    labels = np.array([4, 0, 2])
    got = self.variant(lambda x, y, l: objective.soft_loss_npair(x, y, l, lam=0.5, softmax_factor=10.0))(
        anc, cand, labels)
    cand_labels = [labels[j] for i in range(p) for j in range(p)]   # label of positive j
    want = 10.0 * 0.5 * (reference.cross_entropy(cand, cand_labels) + reference.cross_entropy(anc, labels))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    got3 = objective.soft_loss_npair(anc, cand.reshape(p, p, c), labels, lam=0.5, softmax_factor=10.0)
    np.testing.assert_allclose(got3, want, rtol=1e-5)

  def test_soft_triplet_and_classifier(self):
    logits, labels = _rand(4, 6, 3), np.array([0, 1, 2, 0, 1, 2])
    np.testing.assert_allclose(
        objective.soft_loss_triplet(logits, labels, lam=0.5), 1e4 * 0.5 * reference.cross_entropy(logits, labels),
        rtol=1e-5)
    np.testing.assert_allclose(objective.classifier_loss(logits, labels),
                               reference.cross_entropy(logits, labels), rtol=1e-5)

  def test_weight_decay_subtree(self):
    params = {
        "backbone": {"conv": {"kernel": _rand(5, 3, 3), "bias": _rand(6, 3)}},
        "embedding": {"bn1": {"scale": _rand(7, 3), "bias": _rand(8, 3)},
                      "fc1": {"kernel": _rand(9, 3, 2), "bias": _rand(10, 2)}},
    }
    want = 0.0
    for leaf in (params["backbone"]["conv"]["kernel"], params["backbone"]["conv"]["bias"],
                 params["embedding"]["fc1"]["kernel"], params["embedding"]["fc1"]["bias"]):
      want += sum(float(v) ** 2 for v in np.ravel(leaf))
    include = lambda path: (path[-1].key in ("kernel", "bias")) and "bn1" not in [k.key for k in path]
    got = objective.weight_decay(params, wd=1e-3, include=include)
    np.testing.assert_allclose(got, 1e-3 * want / 2, rtol=1e-5)
    self.assertEqual(float(objective.weight_decay({}, wd=1.0)), 0.0)
    g = jax.grad(lambda p: objective.weight_decay(p, wd=2.0))({"kernel": jnp.ones(2)})
    np.testing.assert_allclose(g["kernel"], [2.0, 2.0])

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, r"`candidate_logits` must have shape \(9, 5\) or \(3, 3, 5\).*got \(8, 5\)"):
      objective.soft_loss_npair(jnp.zeros((3, 5)), jnp.zeros((8, 5)), jnp.zeros(3, jnp.int32), lam=0.5)
    with self.assertRaisesRegex(ValueError, r"`reconstructed` \(2, 3\), `features` \(2, 4\)"):
      objective.reconstruction_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4)), lam=0.5)


class ObjectiveDetailsTest(chex.TestCase):
  """Which leaves decay, the default factors and dtypes, and the errors' wording."""

  def test_is_decayed_leaf(self):
    cases = {
        ("conv", "kernel"): True, ("conv", "bias"): True, ("fc1", "kernel"): True,
        ("conv", "scale"): False, ("conv", "embedding"): False,
        ("bn1", "bias"): False, ("BN_x", "kernel"): False, ("Bn2", "bias"): False,
        ("BatchNorm_0", "bias"): False, ("block", "batchnorm", "kernel"): False,
        ("model", "bn", "bias"): False,                  # a BatchNorm below the top level
        ("model", "block", "BatchNorm_3", "bias"): False,
        ("bn_stack", "BatchNorm_1", "Dense_0", "kernel"): False,
    }
    for names, want in cases.items():
      for make in (jax.tree_util.DictKey, jax.tree_util.GetAttrKey, str):   # dict keys, attributes, names
        with self.subTest(names=names, key=make.__name__):
          self.assertEqual(objective.is_decayed_leaf(tuple(make(n) for n in names)), want)

  def test_default_decay_follows_is_decayed_leaf(self):
    params = {"conv": {"kernel": jnp.full((2,), 2.0), "bias": jnp.ones(3)},
              "BatchNorm_0": {"scale": jnp.ones(5), "bias": jnp.ones(7)},
              "bn1": {"bias": jnp.ones(11)}}
    self.assertAlmostEqual(float(objective.weight_decay(params, wd=0.5)), 0.5 * 0.5 * (8.0 + 3.0), places=6)

  def test_float32_results_under_x64(self):
    with jax.enable_x64(True):
      self.assertEqual(objective.weight_decay({}, wd=1.0).dtype, jnp.float32)
      self.assertEqual(objective.metric_weight(2e4, beta=5e3).dtype, jnp.float32)

  def test_soft_loss_npair_default_factor_is_the_reference_1e4(self):
    p, c = 3, 4
    anc, cand, labels = _rand(11, p, c), _rand(12, p * p, c), np.array([1, 3, 0])
    got = objective.soft_loss_npair(anc, cand, labels, lam=0.5)
    want = 1e4 * 0.5 * (reference.cross_entropy(cand, [labels[j] for _ in range(p) for j in range(p)])
                        + reference.cross_entropy(anc, labels))
    np.testing.assert_allclose(got, want, rtol=1e-6)

  def test_errors_name_the_function_and_argument(self):
    with self.assertRaisesRegex(ValueError, r"^reconstruction_loss: `reconstructed` must have rank 2"):
      objective.reconstruction_loss(jnp.zeros(3), jnp.zeros((2, 3)), lam=0.5)
    with self.assertRaisesRegex(ValueError, r"^reconstruction_loss: `features` must have rank 2"):
      objective.reconstruction_loss(jnp.zeros((2, 3)), jnp.zeros(3), lam=0.5)
    with self.assertRaisesRegex(ValueError, r"^reconstruction_loss: shapes must match"):
      objective.reconstruction_loss(jnp.zeros((2, 3)), jnp.zeros((3, 3)), lam=0.5)
    with self.assertRaisesRegex(TypeError, r"^reconstruction_loss: `reconstructed` must be a floating"):
      objective.reconstruction_loss(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3)), lam=0.5)
    with self.assertRaisesRegex(TypeError, r"^reconstruction_loss: `features` must be a floating"):
      objective.reconstruction_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32), lam=0.5)
    with self.assertRaisesRegex(ValueError, r"^soft_loss_npair: `anchor_logits` must have rank 2"):
      objective.soft_loss_npair(jnp.zeros(3), jnp.zeros((9, 5)), jnp.zeros(3, jnp.int32), lam=0.5)
    with self.assertRaisesRegex(ValueError, r"^soft_loss_npair: `anchor_labels` must have shape \(3,\)"):
      objective.soft_loss_npair(jnp.zeros((3, 5)), jnp.zeros((9, 5)), jnp.zeros(4, jnp.int32), lam=0.5)
