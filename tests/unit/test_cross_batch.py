"""The cross-batch memory: the ring buffer, and every pair loss against references row by row."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from hdml_jax import losses as ll
from hdml_jax import losses as pl
from hdml_jax import losses as xb
from tests.helpers.library import numeric_grad

# Every pair loss that takes references=, with its keyword arguments (reduction "none": one value per row).
LOSSES = {
    "npair": (ll.npair_loss_from_labels, {}),
    "triplet_all": (ll.triplet_loss_from_labels, {"mining": "all", "margin": 0.5}),
    "triplet_batch_hard": (ll.triplet_loss_from_labels, {"mining": "batch_hard", "margin": 0.5}),
    "triplet_semi_hard": (ll.triplet_loss_from_labels, {"mining": "semi_hard", "margin": 1.5}),
    "contrastive": (ll.contrastive_loss_from_labels, {"margin": 2.0}),
    "multi_similarity": (pl.multi_similarity_loss, {}),
    "multi_similarity_no_mining": (pl.multi_similarity_loss, {"mining": False}),
    "lifted_structure": (pl.lifted_structure_loss, {}),
    "circle": (pl.circle_loss, {}),
    "supervised_contrastive": (pl.supervised_contrastive_loss, {}),
    "margin_all_triplets": (pl.margin_loss, {}),
}


def data(seed=0, b=6, k=10, e=4):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, e)).astype(np.float32)
  y = np.array([0, 0, 1, 2, 3, 4])[:b]
  c = rng.normal(size=(k, e)).astype(np.float32)
  yc = rng.integers(0, 5, size=k)
  mask = rng.uniform(size=(b, k)) < 0.7
  return x, y, c, yc, mask


class MemoryTest(chex.TestCase):

  def test_the_ring_buffer_wraps_and_fills(self):
    m = xb.init_memory(5, 2)
    seen = []
    for step in range(4):   # batches of 3 into 5 rows: rows 0-2, 3-4+0, 1-3, 4+0-1
      e = jnp.full((3, 2), float(step))
      m, rows = xb.enqueue(m, e, jnp.arange(3) + 10 * step)
      seen.append(rows.tolist())
    self.assertEqual(seen, [[0, 1, 2], [3, 4, 0], [1, 2, 3], [4, 0, 1]])
    self.assertEqual(int(m.pointer), 2)
    np.testing.assert_array_equal(m.filled, True)
    np.testing.assert_array_equal(m.labels, [31, 32, 21, 22, 30])
    np.testing.assert_array_equal(m.embeddings[:, 0], [3, 3, 2, 2, 3])

  def test_references_leave_out_own_copies_and_empty_rows(self):
    m, rows = xb.enqueue(xb.init_memory(5, 2), jnp.ones((2, 2)), jnp.array([1, 2]))
    refs = xb.memory_references(m, rows)
    np.testing.assert_array_equal(refs.mask, [[False, True, False, False, False], [True, False, False, False, False]])

  def test_no_gradient_reaches_the_memory(self):
    x, y = jnp.asarray(data()[0]), jnp.asarray(data()[1])
    m, _ = xb.enqueue(xb.init_memory(12, 4), x[::-1] * 2, y[::-1])

    def value(mem_embeddings, e):
      return xb.cross_batch_loss(pl.multi_similarity_loss, m._replace(embeddings=mem_embeddings), e, y)[0]

    g_mem, g_e = jax.grad(value, argnums=(0, 1))(m.embeddings, x)
    np.testing.assert_array_equal(g_mem, 0.0)
    self.assertGreater(float(jnp.abs(g_e).sum()), 0.0)

  def test_bad_input_is_refused(self):
    m = xb.init_memory(4, 3)
    with self.assertRaisesRegex(ValueError, r"^enqueue: a batch of 5 does not fit a memory of 4 rows"):
      xb.enqueue(m, jnp.zeros((5, 3)), jnp.zeros(5, jnp.int32))
    with self.assertRaisesRegex(ValueError, r"^enqueue: embeddings must be \[B, 3\] for this memory, got \(2, 2\)"):
      xb.enqueue(m, jnp.zeros((2, 2)), jnp.zeros(2, jnp.int32))
    with self.assertRaisesRegex(ValueError, r"^init_memory: size must be a positive number of rows, got 0"):
      xb.init_memory(0, 3)
    refs = xb.References(jnp.zeros((4, 2)), jnp.zeros(4, jnp.int32), jnp.ones((3, 4), bool))
    with self.assertRaisesRegex(ValueError, r"^multi_similarity_loss: references.embeddings must be \[K, 3\]"):
      pl.multi_similarity_loss(jnp.zeros((3, 3)), jnp.zeros(3, jnp.int32), references=refs)
    refs = xb.References(jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32), jnp.ones((2, 4), bool))
    with self.assertRaisesRegex(ValueError, r"^circle_loss: references.mask must be a \[3, 4\] bool array"):
      pl.circle_loss(jnp.zeros((3, 3)), jnp.zeros(3, jnp.int32), references=refs)
    with self.assertRaisesRegex(TypeError, r"references must be a hdml_jax.losses.References, got tuple"):
      ll.triplet_loss_from_labels(jnp.zeros((3, 3)), jnp.zeros(3, jnp.int32), references=(1, 2, 3))


class ReferencesTest(parameterized.TestCase):

  @parameterized.named_parameters(*[(n, n) for n in LOSSES])
  def test_each_row_equals_the_loss_of_that_row_against_its_allowed_columns(self, name):
    loss, kwargs = LOSSES[name]
    x, y, c, yc, mask = data()
    refs = xb.References(jnp.asarray(c), jnp.asarray(yc, jnp.int32), jnp.asarray(mask))
    got = np.asarray(loss(jnp.asarray(x), jnp.asarray(y, jnp.int32), references=refs, reduction="none", **kwargs))
    for i in range(len(x)):   # row i against its own batch [x_i; allowed columns]: row 0 of the batch loss
      cols = np.flatnonzero(mask[i])
      if not (yc[cols] == y[i]).any():
        self.assertEqual(got[i], 0.0, f"row {i} has no positive among its columns")
        continue
      small = jnp.asarray(np.concatenate([x[i:i + 1], c[cols]]))
      want = loss(small, jnp.asarray(np.concatenate([[y[i]], yc[cols]]), jnp.int32), reduction="none", **kwargs)
      np.testing.assert_allclose(got[i], want[0], rtol=2e-5, atol=1e-6, err_msg=f"row {i}")

  @parameterized.named_parameters(*[(n, n) for n in LOSSES])
  def test_the_batch_as_its_own_references_is_the_plain_loss(self, name):
    loss, kwargs = LOSSES[name]
    x, y = jnp.asarray(data(1)[0]), jnp.asarray(data(1)[1], jnp.int32)
    refs = xb.References(x, y, ~jnp.eye(6, dtype=bool))
    np.testing.assert_allclose(loss(x, y, references=refs, **kwargs), loss(x, y, **kwargs), rtol=1e-5, atol=1e-7)

  @parameterized.named_parameters(*[(n, n) for n in LOSSES])
  def test_empty_memory_rows_and_identical_points_keep_gradients_finite(self, name):
    loss, kwargs = LOSSES[name]
    x = jnp.ones((4, 3))
    y = jnp.array([0, 0, 1, 1])
    m, _ = xb.enqueue(xb.init_memory(16, 3), x, y)            # 12 rows never written
    g = jax.grad(lambda e: xb.cross_batch_loss(loss, m, e, y, **kwargs)[0])(x)
    chex.assert_tree_all_finite(g)
    no_pairs = xb.References(x, y, jnp.zeros((4, 4), bool))   # no pair at all: zero, with a zero gradient
    value, g = jax.value_and_grad(lambda e: loss(e, y, references=no_pairs, **kwargs))(x)
    self.assertEqual(float(value), 0.0)
    np.testing.assert_array_equal(g, 0.0)

  # Not the circle loss: its pair weights are held constant (the paper's stop-gradient), so its gradient is
  # not the finite difference of its value (test_pair_losses checks it against the detached-weight formula).
  @parameterized.named_parameters(*[(n, n) for n in LOSSES if n != "circle"])
  @pytest.mark.slow
  def test_the_gradient_against_references_matches_finite_differences(self, name):
    loss, kwargs = LOSSES[name]
    x, y, c, yc, mask = data(3)
    with jax.enable_x64(True):
      refs = xb.References(jnp.asarray(c, jnp.float64), jnp.asarray(yc, jnp.int32), jnp.asarray(mask))
      f = lambda e: loss(e, jnp.asarray(y, jnp.int32), references=refs, **kwargs)
      got = np.asarray(jax.grad(f)(jnp.asarray(x, jnp.float64)))
      want = numeric_grad(lambda e: float(f(jnp.asarray(e))), np.asarray(x, np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)

  def test_distance_weighted_sampling_draws_negatives_among_the_references(self):
    x, y, c, yc, mask = data(2)
    refs = xb.References(jnp.asarray(c), jnp.asarray(yc, jnp.int32), jnp.asarray(mask))
    neg = np.asarray(pl.distance_weighted_sampling(jax.random.key(0), jnp.asarray(x), jnp.asarray(y, jnp.int32),
                                                   references=refs))
    self.assertEqual(neg.shape, (6, 10))
    for i in range(6):
      allowed = set(np.flatnonzero(mask[i] & (yc != y[i])).tolist())
      if allowed:
        self.assertTrue(set(neg[i].tolist()) <= allowed, f"row {i}")
    value = pl.margin_loss(jnp.asarray(x), jnp.asarray(y, jnp.int32), negatives=jnp.asarray(neg), references=refs)
    self.assertTrue(np.isfinite(float(value)))

  def test_a_batch_without_positives_may_find_them_in_memory(self):
    y = jnp.arange(4)   # no class twice in the batch: refused without references ...
    with self.assertRaisesRegex(ValueError, "no class has two samples"):
      pl.multi_similarity_loss(jnp.eye(4), y)
    m, _ = xb.enqueue(xb.init_memory(8, 4), jnp.eye(4) * 0.5 + 0.1, y)   # ... but an earlier batch holds them
    value, _ = xb.cross_batch_loss(pl.multi_similarity_loss, m, jnp.eye(4), y, mining=False)
    self.assertGreater(float(value), 0.0)


if __name__ == "__main__":
  absltest.main()
