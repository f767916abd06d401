import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

from hdml_jax import hardness
from tests import reference


def _rand(seed, *shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


class SynthesizeTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("soft", 90.0, 50.0), ("hard", 90.0, 20.0), ("off", 90.0, 1e6))
  def test_matches_loops(self, alpha, j_avg):
    z, zp, zn = _rand(0, 16, 4), _rand(1, 16, 4), _rand(2, 16, 4)
    got = self.variant(lambda a, p, n, j: hardness.synthesize_negatives(a, p, n, alpha=alpha, j_avg=j))(
        z, zp, zn, j_avg)
    want = np.stack([reference.synthesize_one(z[i], zp[i], zn[i], alpha, j_avg) for i in range(16)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  def test_invariants(self):
    z, zp, zn = _rand(3, 64, 5), _rand(4, 64, 5), _rand(5, 64, 5) * 2
    alpha, j_avg = 90.0, 60.0
    out = np.asarray(hardness.synthesize_negatives(z, zp, zn, alpha=alpha, j_avg=j_avg))
    d_pos = np.linalg.norm(z - zp, axis=1)
    d_neg = np.linalg.norm(z - zn, axis=1)
    harder = d_neg > d_pos
    self.assertTrue(harder.any() and (~harder).any(), "the case must exercise both branches")
    factor = math.exp(-alpha / j_avg)
    new_d = np.linalg.norm(out - z, axis=1)
    np.testing.assert_allclose(new_d[harder], (d_pos + (d_neg - d_pos) * factor)[harder], rtol=1e-5)
    np.testing.assert_array_equal(out[~harder], zn[~harder])
    # On the anchor-to-negative segment: out - z = t (zn - z) with 0 <= t <= 1.
    t = np.sum((out - z) * (zn - z), axis=1) / np.sum((zn - z) ** 2, axis=1)
    np.testing.assert_allclose(out[harder], (z + t[:, None] * (zn - z))[harder], atol=1e-5)
    self.assertTrue(np.all((t[harder] >= 0) & (t[harder] <= 1 + 1e-6)))
    # Harder: never farther than the original.
    self.assertTrue(np.all(new_d <= d_neg + 1e-5))

  def test_tends_to_original_as_j_avg_grows(self):
    z, zp, zn = _rand(6, 8, 3), _rand(7, 8, 3), _rand(8, 8, 3) * 3
    gaps = [float(jnp.max(jnp.abs(hardness.synthesize_negatives(z, zp, zn, alpha=90.0, j_avg=j) - zn)))
            for j in (10.0, 100.0, 1e4, 1e7)]
    self.assertTrue(all(a > b for a, b in zip(gaps, gaps[1:])), gaps)
    self.assertLess(gaps[-1], 1e-4)

  def test_gradients_finite_at_coincident_points(self):
    z = jnp.array([[1.0, 2.0], [0.0, 0.0], [3.0, 3.0]])
    cases = {
        "anchor==positive": (z, z, z + 1.0),
        "anchor==negative": (z, z + 1.0, z),
        "all equal": (z, z, z),
    }
    for name, (a, p, n) in cases.items():
      fn = lambda a, p, n: jnp.sum(hardness.synthesize_negatives(a, p, n, alpha=90.0, j_avg=30.0) ** 2)
      grads = jax.grad(fn, argnums=(0, 1, 2))(a, p, n)
      chex.assert_tree_all_finite(grads)
      chex.assert_tree_all_finite(hardness.synthesize_negatives(a, p, n, alpha=90.0, j_avg=30.0))
      self.assertTrue(name)

  @pytest.mark.slow
  def test_no_stop_gradient(self):
    # The output depends on the anchor and the positive through d+ (harder branch).
    z, zp, zn = jnp.zeros((1, 2)), jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 4.0]])
    f = lambda a, p, n: jnp.sum(hardness.synthesize_negatives(a, p, n, alpha=90.0, j_avg=90.0))
    ga, gp, gn = jax.grad(f, argnums=(0, 1, 2))(z, zp, zn)
    self.assertGreater(float(jnp.abs(gp).sum()), 0.0)
    self.assertGreater(float(jnp.abs(ga).sum()), 0.0)
    self.assertGreater(float(jnp.abs(gn).sum()), 0.0)
    with jax.enable_x64(True):
      a, p, n = (jnp.asarray(_rand(s, 5, 3), jnp.float64) for s in (9, 10, 11))
      n = n * 3  # mostly the harder branch, away from the d- = d+ switch
      check_grads(lambda a, p, n: hardness.synthesize_negatives(a, p, n, alpha=90.0, j_avg=70.0),
                  (a, p, n), order=1, modes=["rev"])

  def test_errors(self):
    ok = jnp.zeros((4, 3))
    with self.assertRaisesRegex(ValueError, r"`negatives` \(5, 3\)"):
      hardness.synthesize_negatives(ok, ok, jnp.zeros((5, 3)), alpha=1.0, j_avg=1.0)
    with self.assertRaisesRegex(ValueError, "`j_avg` must be a scalar"):
      hardness.synthesize_negatives(ok, ok, ok, alpha=1.0, j_avg=jnp.ones(2))
    with self.assertRaisesRegex(TypeError, "floating-point"):
      hardness.synthesize_negatives(ok.astype(jnp.int32), ok, ok, alpha=1.0, j_avg=1.0)


class NPairTuplesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_loops(self):
    p_, e = 5, 3
    a, p = _rand(0, p_, e), _rand(1, p_, e) * 2
    alpha, j_avg = 90.0, 45.0
    tuples = self.variant(lambda x, y: hardness.expand_npair_tuples(x, y, alpha=alpha, j_avg=j_avg))(a, p)
    chex.assert_shape(tuples.anchors, (p_, e))
    chex.assert_shape(tuples.candidates, (p_, p_, e))
    for i in range(p_):
      for j in range(p_):
        want = reference.synthesize_one(a[i], p[i], p[j], alpha, j_avg)
        np.testing.assert_allclose(tuples.candidates[i, j], want, rtol=1e-5, atol=1e-5)
    # The diagonal is each anchor's own positive, unchanged.
    np.testing.assert_array_equal(np.asarray(tuples.candidates)[np.arange(p_), np.arange(p_)], p)

  def test_flat_layout_and_labels(self):
    a, p = _rand(2, 3, 2), _rand(3, 3, 2)
    t = hardness.expand_npair_tuples(a, p, alpha=90.0, j_avg=30.0)
    flat = t.flat()
    chex.assert_shape(flat, (3 + 9, 2))
    np.testing.assert_array_equal(flat[:3], a)
    np.testing.assert_array_equal(flat[3 + 1 * 3 + 2], t.candidates[1, 2])
    back = t.unflatten(flat)
    np.testing.assert_array_equal(back.candidates, t.candidates)
    labels = jnp.array([4, 8, 6])
    syn = hardness.npair_synthetic_labels(labels)
    np.testing.assert_array_equal(syn[3 + 1 * 3 + 2], labels[2])   # label of positive j
    np.testing.assert_array_equal(syn[:3], labels)
    with self.assertRaisesRegex(ValueError, r"expected shape \(12, F\) for P=3, got \(11, 2\)"):
      t.unflatten(flat[:11])

  @pytest.mark.slow
  def test_gradients_finite_identical_embeddings(self):
    x = jnp.ones((4, 3))
    fn = lambda a, p: jnp.sum(hardness.expand_npair_tuples(a, p, alpha=90.0, j_avg=10.0).flat() ** 2)
    chex.assert_tree_all_finite(jax.grad(fn, argnums=(0, 1))(x, x))
    chex.assert_tree_all_finite(jax.grad(fn, argnums=(0, 1))(jnp.zeros((4, 3)), x))

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, r"`anchors` \(4, 3\), `positives` \(3, 3\)"):
      hardness.expand_npair_tuples(jnp.zeros((4, 3)), jnp.zeros((3, 3)), alpha=1.0, j_avg=1.0)


class LabelTuplesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("soft", 45.0), ("hard", 5.0), ("at_d_plus", 1e-9))
  def test_matches_loops(self, j_avg):
    z = _rand(0, 9, 3) * 2
    y = np.array([0, 0, 0, 1, 1, 2, 2, 3, 4])   # classes of 3, 2, 2 and two singletons (no positive)
    alpha = 10.0
    t = self.variant(lambda e, lab: hardness.expand_label_tuples(e, lab, alpha=alpha, j_avg=j_avg))(z, y)
    chex.assert_shape(t.candidates, (9, 9, 3))
    np.testing.assert_array_equal(t.anchors, z)
    for i in range(9):
      positives = [j for j in range(9) if j != i and y[j] == y[i]]
      for j in range(9):
        if positives and y[j] != y[i]:
          far = max(positives, key=lambda k: reference.dist(z[i], z[k]))   # d+ of the farthest positive
          want = reference.synthesize_one(z[i], z[far], z[j], alpha, j_avg)
        else:   # same class, the anchor itself, or an anchor without a positive: unchanged
          want = z[j]
        np.testing.assert_allclose(t.candidates[i, j], want, rtol=1e-5, atol=1e-5, err_msg=f"({i}, {j})")

  def test_flat_layout_keeps_the_source_labels(self):
    t = hardness.expand_label_tuples(_rand(1, 4, 2), jnp.array([5, 5, 7, 7]), alpha=1.0, j_avg=1.0)
    chex.assert_shape(t.flat(), (4 + 16, 2))
    np.testing.assert_array_equal(hardness.npair_synthetic_labels(jnp.array([5, 5, 7, 7]))[4 + 2 * 4 + 1], 5)

  @pytest.mark.slow
  def test_gradients_finite_at_identical_and_zero_points(self):
    y = jnp.array([0, 0, 1, 1])
    fn = lambda e: jnp.sum(hardness.expand_label_tuples(e, y, alpha=90.0, j_avg=10.0).flat() ** 2)
    for x in (jnp.ones((4, 3)), jnp.zeros((4, 3)), jnp.array([[0., 0.], [0., 0.], [1., 0.], [1., 0.]])):
      chex.assert_tree_all_finite(jax.grad(fn)(x))

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, r"^expand_label_tuples: labels must have shape \(4,\) for embeddings "
                                r"\(4, 3\), got \(3,\)\.$"):
      hardness.expand_label_tuples(jnp.zeros((4, 3)), jnp.zeros(3, jnp.int32), alpha=1.0, j_avg=1.0)
    with self.assertRaisesRegex(ValueError, r"`j_avg` must be a scalar"):
      hardness.expand_label_tuples(jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32), alpha=1.0, j_avg=jnp.ones(2))


class TupleLayoutAndErrorsTest(chex.TestCase):

  def test_flat_and_unflatten_are_inverse(self):
    a, p = jnp.arange(6.0).reshape(3, 2), jnp.arange(6.0, 12.0).reshape(3, 2)
    t = hardness.expand_npair_tuples(a, p, alpha=0.0, j_avg=1.0)
    back = t.unflatten(t.flat())
    chex.assert_trees_all_equal(back.anchors, t.anchors)
    chex.assert_trees_all_equal(back.candidates, t.candidates)
    wide = t.unflatten(jnp.ones((3 + 9, 5)))        # any trailing width
    chex.assert_shape((wide.anchors, wide.candidates), ((3, 5), (3, 3, 5)))
    with self.assertRaisesRegex(ValueError, r"NPairTuples.unflatten: expected shape \(12, F\) for P=3, got \(11, 5\)"):
      t.unflatten(jnp.ones((11, 5)))

  def test_errors_name_the_function_and_the_argument(self):
    ok, vec = jnp.ones((3, 2)), jnp.ones((3,))
    with self.assertRaisesRegex(ValueError, r"^expand_npair_tuples: `anchors` must have rank 2, got shape \(3,\)"):
      hardness.expand_npair_tuples(vec, ok, alpha=1.0, j_avg=1.0)
    with self.assertRaisesRegex(ValueError, r"^expand_npair_tuples: `positives` must have rank 2"):
      hardness.expand_npair_tuples(ok, vec, alpha=1.0, j_avg=1.0)
    with self.assertRaisesRegex(ValueError, r"^expand_npair_tuples: shapes must match, got `anchors` \(3, 2\), "
                                r"`positives` \(4, 2\)"):
      hardness.expand_npair_tuples(ok, jnp.ones((4, 2)), alpha=1.0, j_avg=1.0)
    with self.assertRaisesRegex(ValueError, r"^expand_npair_tuples: `j_avg` must be a scalar, got shape \(2,\)"):
      hardness.expand_npair_tuples(ok, ok, alpha=1.0, j_avg=jnp.ones(2))
    with self.assertRaisesRegex(ValueError, r"^npair_synthetic_labels: `labels` must be \[P\], got shape \(2, 2\)"):
      hardness.npair_synthetic_labels(jnp.ones((2, 2), jnp.int32))
    for name in ("anchors", "positives", "negatives"):
      args = {"anchors": ok, "positives": ok, "negatives": ok, name: vec}
      with self.assertRaisesRegex(ValueError, rf"^synthesize_negatives: `{name}` must have rank 2"):
        hardness.synthesize_negatives(args["anchors"], args["positives"], args["negatives"], alpha=1.0, j_avg=1.0)

  @pytest.mark.slow
  def test_synthesize_negatives_errors_and_dtypes(self):
    ok = jnp.ones((3, 2))
    with self.assertRaisesRegex(ValueError, r"^synthesize_negatives: shapes must match, got `anchors` \(3, 2\), "
                                r"`positives` \(3, 2\), `negatives` \(4, 2\)"):
      hardness.synthesize_negatives(ok, ok, jnp.ones((4, 2)), alpha=1.0, j_avg=1.0)
    with self.assertRaisesRegex(ValueError, r"^synthesize_negatives: `j_avg` must be a scalar, got shape \(3,\)"):
      hardness.synthesize_negatives(ok, ok, ok, alpha=1.0, j_avg=jnp.ones(3))
    # The embeddings' dtype is kept (bfloat16 stays bfloat16); the factor is float32 even in x64 mode.
    b = jnp.arange(6.0, dtype=jnp.bfloat16).reshape(3, 2)
    self.assertEqual(hardness.synthesize_negatives(b, b + 1, b + 3, alpha=1.0, j_avg=2.0).dtype, jnp.bfloat16)
    self.assertEqual(hardness.expand_npair_tuples(b, b + 1, alpha=1.0, j_avg=2.0).candidates.dtype, jnp.bfloat16)
    with jax.enable_x64(True):
      self.assertEqual(hardness.hardness_factor(np.float64(2.0), alpha=1.0).dtype, jnp.float32)
      x = np.ones((3, 2), np.float32)
      self.assertEqual(hardness.synthesize_negatives(x, x + 1, x + 3, alpha=1.0, j_avg=np.float64(2.0)).dtype,
                       jnp.float32)
