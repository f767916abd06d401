"""Label-based losses against loops over every tuple."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from hdml_jax import losses as ll


def dist(a, b, kind):
  d2 = sum((float(x) - float(y)) ** 2 for x, y in zip(a, b))
  return d2 if kind == "squared" else math.sqrt(d2)


def brute_npair(e, y, l2_reg=0.0):
  rows = []
  for i in range(len(y)):
    pos = [j for j in range(len(y)) if j != i and y[j] == y[i]]
    if not pos:
      continue
    logits = {j: float(np.dot(e[i], e[j])) for j in range(len(y)) if j != i}
    top = max(logits.values())
    log_z = top + math.log(sum(math.exp(v - top) for v in logits.values()))
    rows.append(-sum((logits[j] - log_z) / len(pos) for j in pos))
  return sum(rows) / len(rows) + l2_reg * np.mean([float(np.dot(v, v)) for v in e])


def brute_triplet(e, y, margin, mining, kind):
  items = brute_rows(e, y, "triplet", margin=margin, mining=mining, kind=kind)[1]
  return items.mean() if len(items) else 0.0


def brute_contrastive(e, y, margin, kind):
  return brute_rows(e, y, "contrastive", margin=margin, kind=kind)[1].mean()


def batch(seed=0, b=12, e=5, classes=4):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, classes, b)
  x = rng.normal(size=(b, e)).astype(np.float32)
  return x, y.astype(np.int32)


class LabelLossesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(0, 1, 2)
  def test_npair_matches_loops(self, seed):
    x, y = batch(seed)
    fn = self.variant(lambda x, y: ll.npair_loss_from_labels(x, y, l2_reg=0.01))
    np.testing.assert_allclose(fn(x, y), brute_npair(x, y, 0.01), rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(mining=ll.MININGS, kind=("euclidean", "squared"), seed=(0, 3))
  def test_triplet_matches_loops(self, mining, kind, seed):
    x, y = batch(seed)
    margin = 0.7 if kind == "euclidean" else 2.0
    fn = self.variant(lambda x, y: ll.triplet_loss_from_labels(x, y, margin=margin, mining=mining,
                                                               distance=kind))
    np.testing.assert_allclose(fn(x, y), brute_triplet(x, y, margin, mining, kind), rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("euclidean", "squared")
  def test_contrastive_matches_loops(self, kind):
    x, y = batch(4)
    fn = self.variant(lambda x, y: ll.contrastive_loss_from_labels(x, y, margin=2.5, distance=kind))
    np.testing.assert_allclose(fn(x, y), brute_contrastive(x, y, 2.5, kind), rtol=1e-5)

  def test_reductions(self):
    x, y = batch(5)
    for fn in (lambda **k: ll.npair_loss_from_labels(x, y, **k),
               lambda **k: ll.triplet_loss_from_labels(x, y, mining="batch_hard", **k),
               lambda **k: ll.contrastive_loss_from_labels(x, y, **k)):
      per_row = fn(reduction="none")
      chex.assert_shape(per_row, (12,))
      self.assertGreaterEqual(float(fn(reduction="sum")), float(fn(reduction="mean")))
    with self.assertRaisesRegex(ValueError, "reduction must be one of"):
      ll.npair_loss_from_labels(x, y, reduction="avg")

  @parameterized.parameters(*ll.MININGS)
  def test_rows_without_a_valid_triplet_give_finite_zero_gradients(self, mining):
    # Class 2 appears once (no positive); rows 0 and 1 coincide (zero distance).
    x = jnp.array([[0., 0.], [0., 0.], [1., 1.], [1., 1.], [5., 5.]])
    y = jnp.array([0, 0, 1, 1, 2])
    grad = jax.jit(jax.grad(lambda x: ll.triplet_loss_from_labels(x, y, margin=1.0, mining=mining)))(x)
    chex.assert_tree_all_finite(grad)
    np.testing.assert_array_equal(grad[4], [0.0, 0.0]) if mining != "all" else None
    # A batch where no triplet is valid at all (one class): 0, finite gradient.
    one = jnp.array([0, 0, 0, 0, 0])
    value, g = jax.jit(jax.value_and_grad(lambda x: ll.triplet_loss_from_labels(x, one, mining=mining)))(x)
    self.assertEqual(float(value), 0.0)
    chex.assert_tree_all_finite(g)

  @pytest.mark.slow
  def test_npair_and_contrastive_gradients_finite_at_coincident_points(self):
    x = jnp.zeros((4, 3))
    y = jnp.array([0, 0, 1, 2])
    for fn in (ll.npair_loss_from_labels, ll.contrastive_loss_from_labels):
      chex.assert_tree_all_finite(jax.grad(lambda x: fn(x, y))(x))

  def test_bad_input_is_named(self):
    x, y = batch(0)
    with self.assertRaisesRegex(ValueError, r"labels must have shape \(12,\)"):
      ll.triplet_loss_from_labels(x, y[:5])
    with self.assertRaisesRegex(TypeError, "labels must be integers"):
      ll.npair_loss_from_labels(x, y.astype(np.float32))
    with self.assertRaisesRegex(ValueError, r"NaN or infinite values \(rows \[3\]\)"):
      bad = x.copy()
      bad[3, 1] = np.nan
      ll.contrastive_loss_from_labels(bad, y)
    with self.assertRaisesRegex(ValueError, "no class has two samples"):
      ll.npair_loss_from_labels(x[:3], np.array([0, 1, 2], np.int32))
    with self.assertRaisesRegex(ValueError, r"class \[7\] has a single sample"):
      ll.triplet_loss_from_labels(x[:5], np.array([0, 0, 1, 1, 7], np.int32), require_pairs=True)
    with self.assertRaisesRegex(ValueError, "mining must be one of"):
      ll.triplet_loss_from_labels(x, y, mining="hardest")


def brute_rows(e, y, loss, *, margin=None, mining="all", kind="euclidean", l2_reg=0.0):
  """Per-row (anchor) losses and the individual items the reductions run over, by loops."""
  b = len(y)
  d = [[dist(e[i], e[j], kind) for j in range(b)] for i in range(b)]
  rows, items = [], []
  for a in range(b):
    positives = [p for p in range(b) if p != a and y[p] == y[a]]
    negatives = [n for n in range(b) if y[n] != y[a]]
    if loss == "npair":
      if not positives:
        rows.append(0.0)
        continue
      logits = {j: float(np.dot(e[a], e[j])) for j in range(b) if j != a}
      log_z = math.log(sum(math.exp(v) for v in logits.values()))
      mine = [-sum((logits[j] - log_z) / len(positives) for j in positives)]
    elif loss == "contrastive":
      mine = [d[a][j] ** 2 if y[j] == y[a] else max(0.0, margin - d[a][j]) ** 2 for j in range(b) if j != a]
      items += mine
      rows.append(sum(mine) / (b - 1))
      continue
    elif mining == "batch_hard":
      mine = ([max(0.0, max(d[a][p] for p in positives) - min(d[a][n] for n in negatives) + margin)]
              if positives and negatives else [])
    elif mining == "all":
      mine = [max(0.0, d[a][p] - d[a][n] + margin) for p in positives for n in negatives]
    else:
      mine = []
      for p in positives:
        semi = [d[a][n] for n in negatives if d[a][p] < d[a][n] < d[a][p] + margin]
        if semi:
          mine.append(d[a][p] - min(semi) + margin)
    items += mine
    rows.append(sum(mine) / len(mine) if mine else 0.0)
  return np.array(rows), np.array(items)


class ReductionsAndDefaultsTest(chex.TestCase):
  """Every reduction of every loss against loops, the reference defaults, and the errors' wording."""

  @parameterized.parameters(("all", "euclidean"), ("semi_hard", "euclidean"), ("batch_hard", "euclidean"),
                            ("all", "squared"), ("semi_hard", "squared"), ("batch_hard", "squared"))
  def test_triplet_reductions(self, mining, kind):
    x, y = batch(6, b=14)
    y[13] = 9                   # a class with a single sample: a row without a valid triplet
    margin = 0.9 if kind == "euclidean" else 3.0
    rows, items = brute_rows(x, y, "triplet", margin=margin, mining=mining, kind=kind)
    fn = jax.jit(lambda x, r: ll.triplet_loss_from_labels(x, y, margin=margin, mining=mining, distance=kind,
                                                          reduction=r), static_argnums=1)
    np.testing.assert_allclose(fn(x, "none"), rows, rtol=1e-5, atol=1e-6)
    self.assertEqual(rows[13], 0.0)
    np.testing.assert_allclose(fn(x, "sum"), items.sum(), rtol=1e-5)
    np.testing.assert_allclose(fn(x, "mean"), items.mean(), rtol=1e-5)

  def test_npair_and_contrastive_reductions(self):
    x, y = batch(7, b=10)
    y[9] = 9
    rows, _ = brute_rows(x, y, "npair")
    reg = 0.05 * np.mean(np.sum(x.astype(np.float64) ** 2, axis=1))
    got = ll.npair_loss_from_labels(x, y, l2_reg=0.05, reduction="none")
    np.testing.assert_allclose(got, np.where(np.arange(10) == 9, 0.0, rows + reg), rtol=1e-5)
    np.testing.assert_allclose(ll.npair_loss_from_labels(x, y, l2_reg=0.05, reduction="sum"), rows.sum() + reg,
                               rtol=1e-5)
    for kind in ("euclidean", "squared"):
      rows, items = brute_rows(x, y, "contrastive", margin=1.7, kind=kind)
      fn = lambda r: ll.contrastive_loss_from_labels(x, y, margin=1.7, distance=kind, reduction=r)
      np.testing.assert_allclose(fn("none"), rows, rtol=1e-5)
      np.testing.assert_allclose(fn("sum"), items.sum(), rtol=1e-5)

  def test_defaults(self):
    x, y = batch(8)
    np.testing.assert_allclose(ll.triplet_loss_from_labels(x, y),
                               brute_rows(x, y, "triplet", margin=0.2)[1].mean(), rtol=1e-5)
    np.testing.assert_allclose(ll.contrastive_loss_from_labels(x, y),
                               brute_rows(x, y, "contrastive", margin=1.0)[1].mean(), rtol=1e-5)
    np.testing.assert_allclose(ll.npair_loss_from_labels(x, y), brute_npair(x, y), rtol=1e-5)

  def test_semi_hard_window_is_open_at_both_ends(self):
    # 1-D integer points, squared distances: d(a, n) equals d(a, p) and d(a, p) + margin exactly.
    x = np.array([[0.0], [1.0], [-1.0], [2.0], [3.0], [3.5]], np.float32)
    y = np.array([0, 0, 1, 1, 2, 2], np.int32)
    # anchor 0, positive 1 (d = 1): negatives at d = 1 (row 2), 4 (row 3), 9, 12.25; margin 3 -> window (1, 4).
    rows, items = brute_rows(x, y, "triplet", margin=3.0, mining="semi_hard", kind="squared")
    got = ll.triplet_loss_from_labels(x, y, margin=3.0, mining="semi_hard", distance="squared", reduction="none")
    np.testing.assert_allclose(got, rows, atol=1e-6)
    self.assertEqual(float(got[0]), 0.0)    # neither boundary negative counts for anchor 0
    self.assertGreater(len(items), 0)
    np.testing.assert_allclose(
        ll.triplet_loss_from_labels(x, y, margin=3.0, mining="semi_hard", distance="squared"), items.mean())

  def test_errors_name_the_function(self):
    x, y = batch(0)
    for name, fn in (("npair_loss_from_labels", ll.npair_loss_from_labels),
                     ("triplet_loss_from_labels", ll.triplet_loss_from_labels),
                     ("contrastive_loss_from_labels", ll.contrastive_loss_from_labels)):
      with self.subTest(name):
        with self.assertRaisesRegex(ValueError, rf"^{name}: reduction must be one of"):
          fn(x, y, reduction="avg")
        with self.assertRaisesRegex(ValueError, rf"^{name}: labels must have shape \(12,\)"):
          fn(x, y[:3])
        with self.assertRaisesRegex(TypeError, rf"^{name}: labels must be integers"):
          fn(x, y.astype(np.float32))
        with self.assertRaisesRegex(ValueError, rf"^{name}: `embeddings` must have rank 2"):
          fn(x[0], y)
        if name != "npair_loss_from_labels":
          with self.assertRaisesRegex(ValueError, rf"^{name}: distance must be 'euclidean' or 'squared'"):
            fn(x, y, distance="cosine")
    with self.assertRaisesRegex(ValueError, r"^triplet_loss_from_labels: mining must be one of"):
      ll.triplet_loss_from_labels(x, y, mining="hard")
    for mining in ll.MININGS:
      with self.assertRaisesRegex(ValueError, r"^triplet_loss_from_labels: reduction must be one of"):
        ll.triplet_loss_from_labels(x, y, mining=mining, reduction="avg")


class InputChecksTest(chex.TestCase):

  def test_messages(self):
    x, y = batch(0)
    bad = x.copy()
    bad[[1, 2, 4, 6, 8, 10, 11], 0] = np.inf
    with self.assertRaisesRegex(ValueError, r"^npair_loss_from_labels: embeddings hold NaN or infinite values "
                                            r"\(rows \[1, 2, 4, 6, 8\]\)\.$"):
      ll.npair_loss_from_labels(bad, y)
    pairs = np.array([0, 0, 1, 1, 2, 2], np.int32)   # exactly two per class: enough
    ll.triplet_loss_from_labels(x[:6], pairs, require_pairs=True)
    ll.npair_loss_from_labels(x[:6], pairs, require_pairs=True)
    with self.assertRaisesRegex(ValueError, r"^npair_loss_from_labels: class \[7\] has a single sample in this "
                                            r"batch; every class needs at least two\.$"):
      ll.npair_loss_from_labels(x[:5], np.array([0, 0, 1, 1, 7], np.int32), require_pairs=True)
    with self.assertRaisesRegex(ValueError, r"^triplet_loss_from_labels: classes \[5, 7\] have a single sample"):
      ll.triplet_loss_from_labels(x[:4], np.array([0, 0, 5, 7], np.int32), require_pairs=True)
    many = np.concatenate([[0, 0], np.arange(1, 12)]).astype(np.int32)   # 11 singletons: the first 10 named
    with self.assertRaisesRegex(ValueError, r"classes \[1, 2, 3, 4, 5, 6, 7, 8, 9, 10\] have a single sample"):
      ll.triplet_loss_from_labels(np.zeros((13, 2), np.float32), many, require_pairs=True)

  def test_contrastive_needs_no_positive_pair(self):
    x, _ = batch(1, b=4)
    y = np.array([0, 1, 2, 3], np.int32)
    np.testing.assert_allclose(ll.contrastive_loss_from_labels(x, y, margin=4.0),
                               brute_contrastive(x, y, 4.0, "euclidean"), rtol=1e-5)

  def test_mean_over_a_single_item(self):
    # One positive pair (0 -> 1) has a semi-hard negative (row 2); the reverse pair has none.
    x = np.array([[0.0], [1.0], [1.5]], np.float32)
    y = np.array([0, 0, 1], np.int32)
    got = ll.triplet_loss_from_labels(x, y, margin=1.0, mining="semi_hard")
    np.testing.assert_allclose(got, 1.0 - 1.5 + 1.0, rtol=1e-6)

  def test_rows_with_a_single_item(self):
    # Anchors 0 and 1 have exactly one triplet each; a batch of two has one pair per row.
    x = np.array([[0.0], [1.0], [3.0]], np.float32)
    y = np.array([0, 0, 1], np.int32)
    got = ll.triplet_loss_from_labels(x, y, margin=2.5, reduction="none")
    np.testing.assert_allclose(got, [1.0 - 3.0 + 2.5, 1.0 - 2.0 + 2.5, 0.0], rtol=1e-6)
    two = ll.contrastive_loss_from_labels(x[:2], np.array([0, 1], np.int32), margin=3.0, reduction="none")
    np.testing.assert_allclose(two, [4.0, 4.0], rtol=1e-6)
