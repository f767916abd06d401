"""The margin loss and distance-weighted sampling (Wu et al. 2017) against NumPy loops, and at their edges."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hdml_jax import losses as pl
from tests.helpers.library import numeric_grad


def unit(e):
  e = np.asarray(e, np.float64)
  return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def dist(e):
  u = unit(e)
  return np.sqrt(np.maximum(2 - 2 * u @ u.T, 0))


def ref_margin(e, y, beta=1.2, margin=0.2, negatives=None, reduction="mean"):
  """Loops over the triplets (a, p, n): every negative per positive pair, or n = negatives[a, p]."""
  d, terms, rows = dist(e), [], np.zeros(len(y))
  for a in range(len(y)):
    b = beta[y[a]] if np.ndim(beta) else beta
    for p in range(len(y)):
      if p == a or y[p] != y[a]:
        continue
      ns = [n for n in range(len(y)) if y[n] != y[a]] if negatives is None else [negatives[a, p]]
      for n in ns:
        if y[n] == y[a]:
          continue
        t = (max(0.0, margin + d[a, p] - b), max(0.0, margin + b - d[a, n]))
        terms += t
        rows[a] += sum(t)
  if reduction == "none":
    return rows
  total = sum(terms)
  return total if reduction == "sum" else total / max(1, sum(t > 0 for t in terms))


def batch(seed, classes=4, per_class=3, dim=5, scale=1.0):
  rng = np.random.default_rng(seed)
  y = rng.permutation(np.repeat(np.arange(classes), per_class)).astype(np.int32)
  return scale * rng.normal(size=(len(y), dim)), y




@pytest.mark.slow   # finite differences: about 6 s a case
@pytest.mark.parametrize("sampled", [False, True])
@pytest.mark.parametrize("per_class_beta", [False, True])
def test_value_and_gradients_against_loops(sampled, per_class_beta):
  with jax.enable_x64(True):
    for seed, (classes, per_class) in enumerate([(4, 3), (3, 2), (2, 5)]):
      e, y = batch(seed, classes, per_class, scale=0.6)
      beta = np.linspace(0.9, 1.3, classes) if per_class_beta else 1.1
      neg = (np.asarray(pl.distance_weighted_sampling(jax.random.key(seed), jnp.asarray(e), jnp.asarray(y)))
             if sampled else None)
      kw = dict(negatives=None if neg is None else jnp.asarray(neg))
      for reduction in ("mean", "sum", "none"):
        got = np.asarray(pl.margin_loss(jnp.asarray(e), jnp.asarray(y), beta=jnp.asarray(beta), reduction=reduction, **kw))
        np.testing.assert_allclose(got, ref_margin(e, y, beta, negatives=neg, reduction=reduction), rtol=1e-9, atol=1e-12)
      if seed:
        continue
      ge, gb = jax.grad(lambda a, b: pl.margin_loss(a, jnp.asarray(y), beta=b, **kw), argnums=(0, 1))(
          jnp.asarray(e), jnp.asarray(beta))
      np.testing.assert_allclose(np.asarray(ge), numeric_grad(lambda x: ref_margin(x, y, beta, negatives=neg), e),
                                 rtol=1e-5, atol=1e-7)
      want_b = numeric_grad(lambda b: ref_margin(e, y, b if per_class_beta else float(b), negatives=neg),
                            np.asarray(beta, np.float64))
      np.testing.assert_allclose(np.asarray(gb), want_b, rtol=1e-5, atol=1e-7)


def dwsampling_probabilities(e, y, cutoff=0.5, nonzero_loss_cutoff=1.4):
  """The paper's sampling distribution per anchor, by NumPy loops."""
  n = e.shape[1]
  d = np.maximum(dist(e), cutoff)
  probs = np.zeros((len(y), len(y)))
  for a in range(len(y)):
    negs = [j for j in range(len(y)) if y[j] != y[a]]
    w = {j: d[a, j] ** (2 - n) * (1 - d[a, j] ** 2 / 4) ** (-(n - 3) / 2) for j in negs if d[a, j] < nonzero_loss_cutoff}
    if not w:
      w = {j: 1.0 for j in negs}
    total = sum(w.values())
    for j, v in w.items():
      probs[a, j] = v / total
  return probs


def test_distance_weighted_sampling_draws_the_papers_distribution():
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(3), 4).astype(np.int32)
  e = rng.normal(size=(12, 4)) * 0.3 + np.eye(4)[y % 4] * 0.8   # distances spread over (0.5, 1.4) and beyond
  want = dwsampling_probabilities(e, y)
  draws = [np.asarray(pl.distance_weighted_sampling(jax.random.key(k), jnp.asarray(e, jnp.float32), jnp.asarray(y)))
           for k in range(40)]
  counts = np.zeros((12, 12))
  for d in draws:
    for a in range(12):
      np.add.at(counts[a], d[a], 1)
  n = counts.sum(axis=1, keepdims=True)   # 40 x 12 draws per anchor
  assert np.all(counts[want == 0] == 0)   # never a positive, itself, or a zero-weight negative
  keep = want > 0
  chi2 = np.sum((counts[keep] - (n * want)[keep]) ** 2 / (n * want)[keep])
  dof = keep.sum() - 12
  assert chi2 < dof + 6 * np.sqrt(2 * dof), (chi2, dof)


def test_sampling_falls_back_to_uniform_and_marks_anchors_without_negatives():
  # Classes at opposite poles: every negative at d = 2 >= 1.4, so the draw is uniform over the negatives.
  e = jnp.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
  y = jnp.array([0, 0, 1, 1])
  draws = np.stack([np.asarray(pl.distance_weighted_sampling(jax.random.key(k), e, y)) for k in range(200)])
  assert set(np.unique(draws[:, :2])) == {2, 3} and set(np.unique(draws[:, 2:])) == {0, 1}
  assert abs((draws[:, 0] == 2).mean() - 0.5) < 0.1
  # A single-class batch: no negative, each row names the anchor itself, and the loss has no triplet.
  one = jnp.zeros(4, jnp.int32)
  neg = pl.distance_weighted_sampling(jax.random.key(0), e, one)
  np.testing.assert_array_equal(np.asarray(neg), np.repeat(np.arange(4)[:, None], 4, axis=1))
  value, grad = jax.value_and_grad(lambda x: pl.margin_loss(x, one, negatives=neg))(e)
  assert float(value) == 0.0 and np.all(np.asarray(grad) == 0.0)


def test_edges_have_finite_gradients():
  y = jnp.array([0, 0, 1, 1, 2, 2])
  for e in (jnp.zeros((6, 4)), jnp.ones((6, 4)), jnp.asarray(batch(1, 3, 2)[0] * 1e3, jnp.float32)):
    for sampled in (False, True):
      def f(x, b):
        neg = pl.distance_weighted_sampling(jax.random.key(0), x, y) if sampled else None
        return pl.margin_loss(x, y, beta=b, negatives=neg)
      value, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(e, jnp.asarray(1.2))
      chex.assert_tree_all_finite((value, grads))
  # No valid pair under jit: zero, with a zero gradient.
  value, grad = jax.jit(jax.value_and_grad(lambda x: pl.margin_loss(x, jnp.arange(6))))(jnp.ones((6, 4)))
  assert float(value) == 0.0 and np.all(np.asarray(grad) == 0.0)


def test_bad_input_is_refused():
  e = jnp.ones((4, 3))
  with pytest.raises(ValueError, match=r"^margin_loss: no class has two samples"):
    pl.margin_loss(e, jnp.arange(4))
  with pytest.raises(ValueError, match=r"^margin_loss: beta has 2 per-class values, but labels range over \[0, 3\]"):
    pl.margin_loss(e, jnp.array([0, 0, 3, 3]), beta=jnp.ones(2))
  with pytest.raises(ValueError, match=r"^margin_loss: beta must be a number or a \[num_classes\] array"):
    pl.margin_loss(e, jnp.array([0, 0, 1, 1]), beta=jnp.ones((2, 2)))
  with pytest.raises(ValueError, match=r"^margin_loss: negatives must be \[4, 4\]"):
    pl.margin_loss(e, jnp.array([0, 0, 1, 1]), negatives=jnp.zeros((4, 3), jnp.int32))
  with pytest.raises(ValueError, match=r"^margin_loss: reduction must be one of"):
    pl.margin_loss(e, jnp.array([0, 0, 1, 1]), reduction="max")
  with pytest.raises(ValueError, match=r"^distance_weighted_sampling: labels must have shape \(4,\)"):
    pl.distance_weighted_sampling(jax.random.key(0), e, jnp.zeros(3, jnp.int32))
