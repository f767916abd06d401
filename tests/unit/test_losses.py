import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

from hdml_jax import losses
from tests import reference


def _rand(seed, *shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


class NPairTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("no_reg", 0.0), ("reg", 0.3))
  def test_matches_loops_identity_targets(self, l2_reg):
    a, p = _rand(0, 6, 4), _rand(1, 6, 4)
    got = self.variant(lambda x, y: losses.npair_loss(x, y, l2_reg=l2_reg))(a, p)
    np.testing.assert_allclose(got, reference.npair(a, p, l2_reg=l2_reg), rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_loops_with_repeated_labels(self):
    a, p = _rand(2, 5, 3), _rand(3, 5, 3)
    labels = np.array([0, 1, 0, 2, 1])
    got = self.variant(lambda x, y, l: losses.npair_loss(x, y, labels=l, l2_reg=0.1))(a, p, labels)
    np.testing.assert_allclose(got, reference.npair(a, p, labels, 0.1), rtol=1e-5)

  def test_distinct_labels_equal_identity(self):
    a, p = _rand(4, 4, 3), _rand(5, 4, 3)
    np.testing.assert_allclose(
        losses.npair_loss(a, p, labels=jnp.array([3, 1, 0, 2])), losses.npair_loss(a, p), rtol=1e-6)

  def test_hand_made_value(self):
    a = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    # logits [[1, 0], [0, 1]] -> CE = log(1 + e^-1) for each row.
    np.testing.assert_allclose(losses.npair_loss(a, a), np.log1p(np.exp(-1.0)), rtol=1e-6)

  @pytest.mark.slow
  def test_gradients(self):
    with jax.enable_x64(True):
      a, p = jnp.asarray(_rand(6, 4, 3), jnp.float64), jnp.asarray(_rand(7, 4, 3), jnp.float64)
      check_grads(lambda x, y: losses.npair_loss(x, y, l2_reg=0.2), (a, p), order=2, modes=["rev"])
    g = jax.grad(lambda x: losses.npair_loss(x, x))(jnp.zeros((3, 2)))   # all identical
    chex.assert_tree_all_finite(g)
    g = jax.grad(lambda x: losses.npair_loss(x, x, labels=jnp.zeros(3, jnp.int32)))(jnp.ones((3, 2)))
    chex.assert_tree_all_finite(g)   # one class only

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, r"`anchors` \(4, 3\), `positives` \(5, 3\)"):
      losses.npair_loss(jnp.zeros((4, 3)), jnp.zeros((5, 3)))
    with self.assertRaisesRegex(ValueError, r"`labels` must have shape \(4,\).*\(3,\)"):
      losses.npair_loss(jnp.zeros((4, 3)), jnp.zeros((4, 3)), labels=jnp.zeros(3, jnp.int32))
    with self.assertRaisesRegex(TypeError, "integer class ids"):
      losses.npair_loss(jnp.zeros((4, 3)), jnp.zeros((4, 3)), labels=jnp.zeros(4))
    with self.assertRaisesRegex(TypeError, "floating-point"):
      losses.npair_loss(jnp.zeros((4, 3), jnp.int32), jnp.zeros((4, 3), jnp.int32))
    with self.assertRaisesRegex(ValueError, r"rank 2, got shape \(4, 3, 1\)"):
      losses.npair_loss(jnp.zeros((4, 3, 1)), jnp.zeros((4, 3, 1)))


class SyntheticNPairTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("no_reg", 0.0), ("reg", 0.5))
  def test_matches_loops(self, l2_reg):
    a, c = _rand(0, 4, 3), _rand(1, 4, 4, 3)
    got = self.variant(lambda x, y: losses.synthetic_npair_loss(x, y, l2_reg=l2_reg))(a, c)
    np.testing.assert_allclose(got, reference.synthetic_npair(a, c, l2_reg), rtol=1e-5)

  def test_reduces_to_npair_when_rows_repeat(self):
    a, p = _rand(2, 5, 3), _rand(3, 5, 3)
    c = np.broadcast_to(p, (5, 5, 3))
    np.testing.assert_allclose(
        losses.synthetic_npair_loss(a, c, l2_reg=0.2), losses.npair_loss(a, p, l2_reg=0.2), rtol=1e-5)

  @pytest.mark.slow
  def test_gradients(self):
    with jax.enable_x64(True):
      a, c = jnp.asarray(_rand(4, 3, 2), jnp.float64), jnp.asarray(_rand(5, 3, 3, 2), jnp.float64)
      check_grads(lambda x, y: losses.synthetic_npair_loss(x, y, l2_reg=0.1), (a, c), order=1, modes=["rev"])
    chex.assert_tree_all_finite(jax.grad(losses.synthetic_npair_loss, argnums=(0, 1))(
        jnp.zeros((3, 2)), jnp.zeros((3, 3, 2))))

  def test_p_mismatch(self):
    with self.assertRaisesRegex(ValueError, r"\(P, P, E\) = \(4, 4, 3\).*\(4, 3\).*got \(4, 5, 3\)"):
      losses.synthetic_npair_loss(jnp.zeros((4, 3)), jnp.zeros((4, 5, 3)))
    with self.assertRaisesRegex(ValueError, r"rank 3, got shape \(16, 3\)"):
      losses.synthetic_npair_loss(jnp.zeros((4, 3)), jnp.zeros((16, 3)))


class TripletTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(squared=(True, False), margin=(1.0, 0.2))
  def test_matches_loops(self, squared, margin):
    a, p, n = _rand(0, 6, 3), _rand(1, 6, 3), _rand(2, 6, 3)
    expected = reference.triplet(a, p, n, margin, squared)
    fn = lambda r: self.variant(lambda x, y, z: losses.triplet_loss(
        x, y, z, margin=margin, squared=squared, reduction=r))(a, p, n)
    np.testing.assert_allclose(fn("none"), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fn("sum"), expected.sum(), rtol=1e-5)
    np.testing.assert_allclose(fn("mean"), expected.mean(), rtol=1e-5)

  def test_reference_default_is_squared_margin1_sum(self):
    a, p, n = _rand(3, 4, 2), _rand(4, 4, 2), _rand(5, 4, 2)
    np.testing.assert_allclose(losses.triplet_loss(a, p, n), reference.triplet(a, p, n).sum(), rtol=1e-5)

  def test_gradients_degenerate(self):
    x = jnp.ones((3, 2))
    for squared in (True, False):
      g = jax.grad(lambda a: losses.triplet_loss(a, a, a, squared=squared), argnums=0)(x)
      chex.assert_tree_all_finite(g)
    with jax.enable_x64(True):
      a, p, n = (jnp.asarray(_rand(s, 3, 2), jnp.float64) for s in (6, 7, 8))
      check_grads(lambda *t: losses.triplet_loss(*t, margin=10.0, squared=False), (a, p, n),
                  order=1, modes=["rev"])

  def test_split_and_errors(self):
    a, p, n = losses.split_triplets(jnp.arange(9.0).reshape(9, 1))
    np.testing.assert_array_equal(n.ravel(), [6, 7, 8])
    with self.assertRaisesRegex(ValueError, r"divisible by 3, got shape \(10, 4\)"):
      losses.split_triplets(jnp.zeros((10, 4)))
    with self.assertRaisesRegex(ValueError, "reduction must be"):
      losses.triplet_loss(a, p, n, reduction="max")
    with self.assertRaisesRegex(ValueError, r"`negatives` \(2, 1\)"):
      losses.triplet_loss(a, p, n[:2])


class ContrastiveTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_loops(self):
    x1, x2 = _rand(0, 8, 3) * 0.4, _rand(1, 8, 3) * 0.4
    same = np.array([1, 0, 1, 0, 0, 1, 0, 0])
    got = self.variant(lambda a, b, s: contrastive_loss_none(a, b, s))(x1, x2, same)
    np.testing.assert_allclose(got, reference.contrastive(x1, x2, same, 1.5), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        losses.contrastive_loss(x1, x2, same, margin=1.5, reduction="sum"),
        reference.contrastive(x1, x2, same, 1.5).sum(), rtol=1e-5)
    np.testing.assert_allclose(
        losses.contrastive_loss(x1, x2, same.astype(bool), margin=1.5),
        reference.contrastive(x1, x2, same, 1.5).mean(), rtol=1e-5)

  @pytest.mark.slow
  def test_gradients_at_coincident_points(self):
    x = jnp.ones((2, 3))
    g = jax.grad(lambda a: losses.contrastive_loss(a, x, jnp.array([0, 1])))(x)
    chex.assert_tree_all_finite(g)
    with jax.enable_x64(True):
      x1, x2 = jnp.asarray(_rand(2, 4, 2), jnp.float64), jnp.asarray(_rand(3, 4, 2), jnp.float64)
      check_grads(lambda a, b: losses.contrastive_loss(a, b, jnp.array([1, 0, 1, 0]), margin=5.0),
                  (x1, x2), order=1, modes=["rev"])

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, r"`same` must have shape \(2,\).*\(3,\)"):
      losses.contrastive_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros(3))


def contrastive_loss_none(a, b, s):
  return losses.contrastive_loss(a, b, s, margin=1.5, reduction="none")


class CrossEntropyTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_loops(self):
    logits, labels = _rand(0, 5, 4), np.array([0, 3, 1, 1, 2])
    got = self.variant(losses.cross_entropy)(logits, labels)
    np.testing.assert_allclose(got, reference.cross_entropy(logits, labels), rtol=1e-5)

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, r"`labels` must have shape \(5,\)"):
      losses.cross_entropy(jnp.zeros((5, 4)), jnp.zeros(4, jnp.int32))


class LossErrorsTest(chex.TestCase):
  """Every bad input of every loss: the message names the function, the argument and what is wrong."""

  def test_each_message_in_full(self):
    ok, vec, ints = jnp.ones((3, 2)), jnp.ones((3,)), jnp.ones((3, 2), jnp.int32)
    lab = jnp.arange(3)
    cases = [
        (lambda: losses.cross_entropy(vec, lab), ValueError,
         r"^cross_entropy: `logits` must have rank 2, got shape \(3,\)\.$"),
        (lambda: losses.cross_entropy(ints, lab), TypeError,
         r"^cross_entropy: `logits` must be a floating-point array, got dtype int32"),
        (lambda: losses.cross_entropy(ok, jnp.arange(4)), ValueError,
         r"^cross_entropy: `labels` must have shape \(3,\) to match the embeddings, got shape \(4,\)\.$"),
        (lambda: losses.cross_entropy(ok, jnp.ones(3)), TypeError,
         r"^cross_entropy: `labels` must hold integer class ids, got dtype float32\.$"),
        (lambda: losses.npair_loss(vec, ok), ValueError, r"^npair_loss: `anchors` must have rank 2"),
        (lambda: losses.npair_loss(ok, vec), ValueError, r"^npair_loss: `positives` must have rank 2"),
        (lambda: losses.npair_loss(ok, jnp.ones((4, 2))), ValueError,
         r"^npair_loss: shapes must match, got `anchors` \(3, 2\), `positives` \(4, 2\)\.$"),
        (lambda: losses.npair_loss(ok, ok, labels=jnp.arange(2)), ValueError,
         r"^npair_loss: `labels` must have shape \(3,\)"),
        (lambda: losses.synthetic_npair_loss(vec, jnp.ones((3, 3, 2))), ValueError,
         r"^synthetic_npair_loss: `anchors` must have rank 2"),
        (lambda: losses.synthetic_npair_loss(ok, ok), ValueError,
         r"^synthetic_npair_loss: `candidates` must have rank 3, got shape \(3, 2\)\.$"),
        (lambda: losses.synthetic_npair_loss(ok, jnp.ones((3, 3, 2), jnp.int32)), TypeError,
         r"^synthetic_npair_loss: `candidates` must be a floating-point array"),
        (lambda: losses.synthetic_npair_loss(ok, jnp.ones((3, 2, 2))), ValueError,
         r"^synthetic_npair_loss: `candidates` must have shape \(P, P, E\) = \(3, 3, 2\) for `anchors` \(3, 2\), "
         r"got \(3, 2, 2\)\.$"),
        (lambda: losses.split_triplets(vec), ValueError, r"^split_triplets: `embeddings` must have rank 2"),
        (lambda: losses.split_triplets(jnp.ones((4, 2))), ValueError,
         r"^split_triplets: a triplet batch \[anchors; positives; negatives\] needs a size divisible by 3, "
         r"got shape \(4, 2\)\.$"),
        (lambda: losses.triplet_loss(ok, ok, ok, reduction="max"), ValueError,
         r"^triplet_loss: reduction must be 'sum', 'mean' or 'none', got 'max'\.$"),
        (lambda: losses.triplet_loss(ok, ok, jnp.ones((4, 2))), ValueError,
         r"^triplet_loss: shapes must match, got `anchors` \(3, 2\), `positives` \(3, 2\), `negatives` \(4, 2\)"),
        (lambda: losses.contrastive_loss(ok, ok, jnp.ones(3), reduction="avg"), ValueError,
         r"^contrastive_loss: reduction must be 'sum', 'mean' or 'none', got 'avg'\.$"),
        (lambda: losses.contrastive_loss(vec, ok, jnp.ones(3)), ValueError,
         r"^contrastive_loss: `x1` must have rank 2"),
        (lambda: losses.contrastive_loss(ok, vec, jnp.ones(3)), ValueError,
         r"^contrastive_loss: `x2` must have rank 2"),
        (lambda: losses.contrastive_loss(ok, jnp.ones((4, 2)), jnp.ones(3)), ValueError,
         r"^contrastive_loss: shapes must match, got `x1` \(3, 2\), `x2` \(4, 2\)\.$"),
        (lambda: losses.contrastive_loss(ok, ok, jnp.ones(4)), ValueError,
         r"^contrastive_loss: `same` must have shape \(3,\) to match `x1` \(3, 2\), got \(4,\)\.$"),
    ]
    for name in ("anchors", "positives", "negatives"):
      args = {"anchors": ok, "positives": ok, "negatives": ok, name: vec}
      cases.append((lambda a=args: losses.triplet_loss(a["anchors"], a["positives"], a["negatives"]),
                    ValueError, rf"^triplet_loss: `{name}` must have rank 2"))
    for i, (call, error, message) in enumerate(cases):
      with self.subTest(i=i, message=message[:40]), self.assertRaisesRegex(error, message):
        call()

  def test_split_triplets_returns_the_three_thirds(self):
    x = jnp.arange(12.0).reshape(6, 2)
    a, p, n = losses.split_triplets(x)
    chex.assert_trees_all_equal((a, p, n), (x[:2], x[2:4], x[4:]))

  def test_reference_defaults_and_dtypes(self):
    # triplet_loss defaults to the reference: squared distances, margin 1, summed.
    a, p = jnp.zeros((2, 2)), jnp.array([[1., 0.], [0., 0.]])
    n = jnp.array([[0., 1.], [0., 3.]])
    self.assertEqual(float(losses.triplet_loss(a, p, n)), 1.0)          # (1 - 1 + 1) + max(0 - 9 + 1, 0)
    self.assertEqual(float(losses.triplet_loss(a, p, n, squared=False, reduction="mean")), 0.5)
    # contrastive_loss keeps the embeddings' dtype (a boolean `same` does not promote bfloat16).
    x1 = jnp.zeros((2, 2), jnp.bfloat16)
    x2 = jnp.array([[0.5, 0.], [0., 0.5]], jnp.bfloat16)
    out = losses.contrastive_loss(x1, x2, jnp.array([True, False]), reduction="none")
    self.assertEqual(out.dtype, jnp.bfloat16)
    np.testing.assert_allclose(np.asarray(out, np.float32), [0.25, 0.25])   # d^2, then (1 - d)^2

  def test_npair_defaults_and_dtypes(self):
    a = jnp.array([[1., 0.], [0., 1.]])
    c = jnp.stack([a, a])                        # every anchor against both candidates
    # No embedding penalty unless asked: log(1 + e^-1) for each anchor.
    self.assertAlmostEqual(float(losses.synthetic_npair_loss(a, c)), math.log(1 + math.exp(-1)), places=6)
    self.assertAlmostEqual(float(losses.npair_loss(a, a)), math.log(1 + math.exp(-1)), places=6)
    # bfloat16 embeddings give a bfloat16 loss (targets take the embeddings' dtype), labels or not.
    b = a.astype(jnp.bfloat16)
    self.assertEqual(losses.npair_loss(b, b).dtype, jnp.bfloat16)
    self.assertEqual(losses.npair_loss(b, b, labels=jnp.array([0, 1])).dtype, jnp.bfloat16)
