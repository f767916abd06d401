"""The pair-based losses against brute-force NumPy loops (value and gradient), and at their edges."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from hdml_jax import losses as pl
from tests.helpers.library import numeric_grad

# ---------------------------------------------------------------------------
# References: loops over anchors and pairs, in float64, written from the papers' formulas.


def unit(e):
  e = np.asarray(e, np.float64)
  n = np.linalg.norm(e, axis=1, keepdims=True)
  return e / np.maximum(n, 1e-12)


def cos(e):
  u = unit(e)
  return u @ u.T


def pos_neg(y, i):
  """The other rows of row i's class, and the rows of other classes."""
  return ([j for j in range(len(y)) if j != i and y[j] == y[i]], [j for j in range(len(y)) if y[j] != y[i]])


def ref_multi_similarity(e, y, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1, mining=True, similarities=None):
  """Per-row values (None without a positive); ``similarities[i, j]`` replaces cos(e_i, e_j) when given."""
  s = cos(e) if similarities is None else np.asarray(similarities, np.float64)
  rows = []
  for i in range(len(y)):
    p, n = pos_neg(y, i)
    if not p:
      rows.append(None)
      continue
    if mining:
      min_p = min(s[i, j] for j in p)
      max_n = max((s[i, j] for j in n), default=-np.inf)
      n = [j for j in n if s[i, j] + epsilon > min_p]
      p = [j for j in p if s[i, j] - epsilon < max_n]
    pos = np.log(1 + sum(np.exp(-alpha * (s[i, j] - base)) for j in p)) / alpha
    neg = np.log(1 + sum(np.exp(beta * (s[i, j] - base)) for j in n)) / beta
    rows.append(pos + neg)
  return rows


def ref_lifted(e, y, pos_margin=0.0, neg_margin=1.0):
  e = np.asarray(e, np.float64)
  rows = []
  for i in range(len(y)):
    p, n = pos_neg(y, i)
    if not p or not n:
      rows.append(None)
      continue
    d = lambda j: np.sqrt(np.sum((e[i] - e[j]) ** 2))
    value = np.log(sum(np.exp(d(j) - pos_margin) for j in p)) + np.log(sum(np.exp(neg_margin - d(j)) for j in n))
    rows.append(max(0.0, value))
  return rows


def ref_circle(e, y, margin=0.4, gamma=80.0, weights_at=None):
  """``weights_at``: the embeddings the weights a_p, a_n are computed at (held constant, as in the paper)."""
  s = cos(e)
  w = cos(e if weights_at is None else weights_at)
  rows = []
  for i in range(len(y)):
    p, n = pos_neg(y, i)
    if not p or not n:
      rows.append(None)
      continue
    sp = sum(np.exp(-gamma * max(0.0, 1 + margin - w[i, j]) * (s[i, j] - 1 + margin)) for j in p)
    sn = sum(np.exp(gamma * max(0.0, w[i, j] + margin) * (s[i, j] - margin)) for j in n)
    rows.append(np.log1p(sp * sn))
  return rows


def ref_supcon(e, y, temperature=0.1):
  s = cos(e) / temperature
  rows = []
  for i in range(len(y)):
    p, _ = pos_neg(y, i)
    if not p:
      rows.append(None)
      continue
    norm = np.log(sum(np.exp(s[i, k]) for k in range(len(y)) if k != i))
    rows.append(-np.mean([s[i, j] - norm for j in p]))
  return rows


def mean_of(rows):
  kept = [r for r in rows if r is not None]
  return float(np.mean(kept)) if kept else 0.0


CASES = {
    "multi_similarity": (pl.multi_similarity_loss, ref_multi_similarity, {}),
    "multi_similarity_no_mining": (pl.multi_similarity_loss, ref_multi_similarity, {"mining": False}),
    "multi_similarity_params": (pl.multi_similarity_loss, ref_multi_similarity,
                                {"alpha": 3.0, "beta": 20.0, "base": 0.3, "epsilon": 0.2}),
    "lifted": (pl.lifted_structure_loss, ref_lifted, {}),
    "lifted_margins": (pl.lifted_structure_loss, ref_lifted, {"pos_margin": 0.5, "neg_margin": 2.0}),
    "circle": (pl.circle_loss, ref_circle, {}),
    "circle_params": (pl.circle_loss, ref_circle, {"margin": 0.25, "gamma": 32.0}),
    "supcon": (pl.supervised_contrastive_loss, ref_supcon, {}),
    "supcon_t": (pl.supervised_contrastive_loss, ref_supcon, {"temperature": 0.5}),
}


def batch(seed, classes=4, per_class=3, dim=5, scale=1.0):
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(classes), per_class)
  rng.shuffle(y)
  return (scale * rng.normal(size=(len(y), dim))).astype(np.float64), y.astype(np.int32)




class AgainstLoopsTest(parameterized.TestCase):

  @parameterized.named_parameters(*[(name, name) for name in CASES])
  def test_value_and_gradient(self, name):
    loss, ref, kwargs = CASES[name]
    with jax.enable_x64(True):
      for seed, (classes, per_class) in enumerate([(4, 3), (3, 2), (2, 5), (6, 2)]):
        e, y = batch(seed, classes, per_class)
        value = float(loss(jnp.asarray(e), jnp.asarray(y), **kwargs))
        np.testing.assert_allclose(value, mean_of(ref(e, y, **kwargs)), rtol=1e-9, atol=1e-12, err_msg=name)
        if seed > 1:
          continue   # the gradient against finite differences on two of the shapes (the loops are slow)
        grad = np.asarray(jax.grad(lambda x: loss(x, jnp.asarray(y), **kwargs))(jnp.asarray(e)))
        held = {"weights_at": e} if ref is ref_circle else {}   # circle's weights carry no gradient
        want = numeric_grad(lambda x: mean_of(ref(x, y, **kwargs, **held)), e)
        np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7, err_msg=name)

  @parameterized.named_parameters(*[(name, name) for name in CASES])
  def test_reductions(self, name):
    loss, ref, kwargs = CASES[name]
    with jax.enable_x64(True):
      e, y = batch(7, 3, 3)
      rows = ref(e, y, **kwargs)
      per_row = np.asarray(loss(jnp.asarray(e), jnp.asarray(y), reduction="none", **kwargs))
      np.testing.assert_allclose(per_row, [0.0 if r is None else r for r in rows], rtol=1e-9, atol=1e-12)
      total = float(loss(jnp.asarray(e), jnp.asarray(y), reduction="sum", **kwargs))
      np.testing.assert_allclose(total, sum(r for r in rows if r is not None), rtol=1e-9)

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_float32(self):
    e, y = batch(3)
    for name, (loss, ref, kwargs) in CASES.items():
      fn = self.variant(lambda x, l, loss=loss, kwargs=kwargs: loss(x, l, **kwargs))
      value = fn(jnp.asarray(e, jnp.float32), jnp.asarray(y))
      self.assertEqual(value.dtype, jnp.float32)
      np.testing.assert_allclose(float(value), mean_of(ref(e, y, **kwargs)), rtol=2e-4, err_msg=name)


class EdgesTest(parameterized.TestCase):

  def _finite(self, loss, e, y, **kwargs):
    value, grad = jax.jit(jax.value_and_grad(lambda x: loss(x, y, **kwargs)))(e)
    chex.assert_tree_all_finite((value, grad))
    return float(value), np.asarray(grad)

  @parameterized.named_parameters(*[(name, name) for name in CASES])
  def test_identical_points_and_zero_rows(self, name):
    loss, _, kwargs = CASES[name]
    y = jnp.array([0, 0, 1, 1, 2, 2])
    self._finite(loss, jnp.zeros((6, 4)), y, **kwargs)
    self._finite(loss, jnp.ones((6, 4)), y, **kwargs)

  @parameterized.named_parameters(*[(name, name) for name in CASES])
  def test_large_scale(self, name):
    loss, ref, kwargs = CASES[name]
    e, y = batch(5, scale=1e3)
    value, _ = self._finite(loss, jnp.asarray(e, jnp.float32), jnp.asarray(y), **kwargs)
    if name.startswith("lifted"):
      return   # distances of order 1e3: the reference's exp overflows; finiteness is the point
    np.testing.assert_allclose(value, mean_of(ref(e, y, **kwargs)), rtol=2e-4)

  @parameterized.named_parameters(*[(name, name) for name in CASES])
  def test_a_single_class_batch(self, name):
    loss, ref, kwargs = CASES[name]
    e, _ = batch(2, 1, 6)
    y = np.zeros(6, np.int32)
    value, grad = self._finite(loss, jnp.asarray(e, jnp.float32), jnp.asarray(y), **kwargs)
    want = mean_of(ref(e, y, **kwargs))
    np.testing.assert_allclose(value, want, rtol=2e-4, atol=1e-6)
    if name.startswith(("lifted", "circle")):   # no negative: no anchor has a valid tuple
      self.assertEqual(value, 0.0)
      np.testing.assert_array_equal(grad, 0.0)

  @parameterized.named_parameters(*[(name, name) for name in CASES])
  def test_no_valid_pair_under_jit_is_zero_with_zero_gradient(self, name):
    loss, _, kwargs = CASES[name]
    value, grad = self._finite(loss, jnp.asarray(batch(1)[0], jnp.float32), jnp.arange(12), **kwargs)
    self.assertEqual(value, 0.0)
    np.testing.assert_array_equal(grad, 0.0)

  @parameterized.named_parameters(*[(name, name) for name in CASES])
  def test_bad_input_is_refused_on_the_host(self, name):
    loss, _, kwargs = CASES[name]
    where = loss.__name__
    with self.assertRaisesRegex(ValueError, rf"^{where}: no class has two samples in this batch"):
      loss(jnp.ones((4, 3)), jnp.arange(4), **kwargs)
    with self.assertRaisesRegex(ValueError, rf"^{where}: labels must have shape \(4,\)"):
      loss(jnp.ones((4, 3)), jnp.zeros(3, jnp.int32), **kwargs)
    with self.assertRaisesRegex(ValueError, rf"^{where}: class \[2\] has a single sample in this batch; every class needs at least two\.$"):
      loss(jnp.ones((5, 3)), jnp.array([0, 0, 1, 1, 2]), require_pairs=True, **kwargs)
    with self.assertRaisesRegex(ValueError, rf"^{where}: reduction must be one of"):
      loss(jnp.ones((4, 3)), jnp.array([0, 0, 1, 1]), reduction="max", **kwargs)


class HingeTest(absltest.TestCase):

  def test_lifted_is_zero_with_zero_gradient_on_separated_classes(self):
    e = jnp.array([[0.0, 0.0], [0.0, 0.5], [4.0, 0.0], [4.0, 0.5], [0.0, 4.0], [0.5, 4.0]])
    y = jnp.array([0, 0, 1, 1, 2, 2])
    rows = ref_lifted(np.asarray(e), np.asarray(y))
    self.assertEqual(rows, [0.0] * 6)   # every anchor's log-sum-exps add up below 0
    value, grad = jax.value_and_grad(lambda x: pl.lifted_structure_loss(x, y))(e)
    self.assertEqual(float(value), 0.0)
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


class MiningTest(absltest.TestCase):

  def test_the_miner_drops_easy_pairs(self):
    # Anchor 0: positives at similarity 0.99 and 0.2; negatives at -0.9 (easy) and 0.5 (hard).
    e = jnp.array([[1.0, 0.0, 0.0], [0.99, 0.141, 0.0], [0.2, 0.98, 0.0],
                   [-0.9, 0.436, 0.0], [0.5, 0.0, 0.866], [-0.5, -0.5, 0.707]])
    y = jnp.array([0, 0, 0, 1, 1, 1])
    mined = pl.multi_similarity_loss(e, y, reduction="none")
    full = pl.multi_similarity_loss(e, y, mining=False, reduction="none")
    self.assertLess(float(mined[0]), float(full[0]))
    np.testing.assert_allclose(np.asarray(mined), ref_multi_similarity(np.asarray(e), np.asarray(y)), rtol=1e-5)


if __name__ == "__main__":
  absltest.main()


class MultiSimilarityFromSimilaritiesTest(chex.TestCase):

  def test_equals_the_embedding_form_and_a_loop_on_any_columns(self):
    rng = np.random.default_rng(3)
    e, y = rng.normal(size=(8, 5)), np.array([0, 0, 1, 1, 2, 2, 3, 4])
    pos = (y[:, None] == y[None, :]) & ~np.eye(8, dtype=bool)
    s = cos(e)
    got = pl.multi_similarity_from_similarities(jnp.asarray(s), jnp.asarray(pos), jnp.asarray(y[:, None] != y[None, :]))
    np.testing.assert_allclose(got, pl.multi_similarity_loss(jnp.asarray(e, jnp.float32), jnp.asarray(y)), rtol=1e-5)
    # Columns of another set (here each row against its own 6 candidates), masks given as they are.
    s2 = rng.uniform(-1, 1, size=(8, 6))
    p2 = rng.uniform(size=(8, 6)) < 0.3
    n2 = ~p2 & (rng.uniform(size=(8, 6)) < 0.8)
    want = []
    for i in range(8):   # the loop of ref_multi_similarity with row i's own masks
      p, n = list(np.flatnonzero(p2[i])), list(np.flatnonzero(n2[i]))
      if not p:
        continue
      min_p, max_n = min(s2[i, p]), max(s2[i, n], default=-np.inf)
      n = [j for j in n if s2[i, j] + 0.1 > min_p]
      p = [j for j in p if s2[i, j] - 0.1 < max_n]
      want.append(np.log(1 + sum(np.exp(-2 * (s2[i, j] - 0.5)) for j in p)) / 2
                  + np.log(1 + sum(np.exp(50 * (s2[i, j] - 0.5)) for j in n)) / 50)
    got = pl.multi_similarity_from_similarities(jnp.asarray(s2), jnp.asarray(p2), jnp.asarray(n2))
    np.testing.assert_allclose(got, np.mean(want), rtol=1e-5)

  def test_bad_masks_are_refused(self):
    s = jnp.zeros((2, 3))
    with self.assertRaisesRegex(ValueError, r"^multi_similarity_from_similarities: similarities must be \[B, K\]"):
      pl.multi_similarity_from_similarities(s, jnp.zeros((2, 2), bool), jnp.zeros((2, 3), bool))
    with self.assertRaisesRegex(TypeError, r"must be boolean masks, got float32"):
      pl.multi_similarity_from_similarities(s, jnp.zeros((2, 3)), jnp.zeros((2, 3), bool))
