"""The proxy-based losses against brute-force NumPy loops (value, gradient in embeddings and proxies), and at their edges."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from hdml_jax import losses as xl
from tests.helpers.library import numeric_grad

# References in float64, loops written from the papers' formulas.


def unit(v):
  v = np.asarray(v, np.float64)
  return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def cos_matrix(e, p):
  return unit(e) @ unit(p).T


def ref_proxy_nca(e, y, p, scale=1.0, include_positive=False):
  x, q = unit(e), unit(p)
  rows = []
  for i in range(len(y)):
    d = [np.sum((x[i] - q[c]) ** 2) for c in range(len(q))]
    num = np.exp(-scale * d[y[i]])
    den = sum(np.exp(-scale * d[c]) for c in range(len(q)) if include_positive or c != y[i])
    rows.append(-np.log(num / den))
  return rows


def ref_proxy_anchor(e, y, p, margin=0.1, alpha=32.0):
  s = cos_matrix(e, p)
  per_proxy, present = [], []
  for c in range(len(p)):
    pos = [i for i in range(len(y)) if y[i] == c]
    neg = [i for i in range(len(y)) if y[i] != c]
    pos_term = np.log(1 + sum(np.exp(-alpha * (s[i, c] - margin)) for i in pos)) if pos else 0.0
    neg_term = np.log(1 + sum(np.exp(alpha * (s[i, c] + margin)) for i in neg))
    per_proxy.append((pos_term, neg_term))
    present.append(bool(pos))
  return per_proxy, present


def proxy_anchor_value(e, y, p, **kw):
  per_proxy, present = ref_proxy_anchor(e, y, p, **kw)
  return sum(a for a, _ in per_proxy) / max(sum(present), 1) + sum(b for _, b in per_proxy) / len(p)


def ref_softmax_family(e, y, p, logit):
  """``logit(cos, is_target) -> s``: the cross-entropy of each row over its logits."""
  s = cos_matrix(e, p)
  rows = []
  for i in range(len(y)):
    z = [logit(s[i, c], c == y[i]) for c in range(len(p))]
    rows.append(-(z[y[i]] - np.log(sum(np.exp(v) for v in z))))
  return rows


def ref_norm_softmax(e, y, p, temperature=0.05):
  return ref_softmax_family(e, y, p, lambda c, t: c / temperature)


def ref_cosface(e, y, p, margin=0.35, scale=64.0):
  return ref_softmax_family(e, y, p, lambda c, t: scale * (c - margin if t else c))


def ref_arcface(e, y, p, margin=0.5, scale=64.0):
  return ref_softmax_family(e, y, p, lambda c, t: scale * (math.cos(math.acos(c) + margin) if t else c))


ROW_CASES = {
    "proxy_nca": (xl.proxy_nca_loss, ref_proxy_nca, {}),
    "proxy_nca_pml_form": (xl.proxy_nca_loss, ref_proxy_nca, {"include_positive": True, "scale": 3.0}),
    "norm_softmax": (xl.normalized_softmax_loss, ref_norm_softmax, {}),
    "norm_softmax_t": (xl.normalized_softmax_loss, ref_norm_softmax, {"temperature": 0.5}),
    "cosface": (xl.cosface_loss, ref_cosface, {}),
    "cosface_params": (xl.cosface_loss, ref_cosface, {"margin": 0.2, "scale": 10.0}),
    "arcface": (xl.arcface_loss, ref_arcface, {}),
    "arcface_params": (xl.arcface_loss, ref_arcface, {"margin": 0.3, "scale": 8.0}),
}
ALL = [*ROW_CASES, "proxy_anchor", "proxy_anchor_params"]
ANCHOR_KWARGS = {"proxy_anchor": {}, "proxy_anchor_params": {"margin": 0.2, "alpha": 8.0}}


def loss_and_ref(name):
  if name in ROW_CASES:
    loss, ref, kwargs = ROW_CASES[name]
    return loss, (lambda e, y, p, **kw: float(np.mean(ref(e, y, p, **kw)))), kwargs
  return xl.proxy_anchor_loss, proxy_anchor_value, ANCHOR_KWARGS[name]


def batch(seed, classes=4, per_class=3, num_proxies=6, dim=5, scale=1.0):
  rng = np.random.default_rng(seed)
  y = rng.permutation(np.repeat(np.arange(classes), per_class)) % num_proxies
  e = scale * rng.normal(size=(len(y), dim))
  p = rng.normal(size=(num_proxies, dim))
  return e, y.astype(np.int32), p




class AgainstLoopsTest(parameterized.TestCase):

  @parameterized.named_parameters(*[(n, n) for n in ALL])
  @pytest.mark.slow   # finite differences over embeddings and proxies: 5-7 s a case
  def test_value_and_gradients(self, name):
    loss, ref, kwargs = loss_and_ref(name)
    with jax.enable_x64(True):
      for seed, (classes, per_class, num_proxies) in enumerate([(4, 3, 6), (3, 2, 3), (2, 5, 5), (6, 1, 8)]):
        e, y, p = batch(seed, classes, per_class, num_proxies)
        value = float(loss(jnp.asarray(e), jnp.asarray(y), jnp.asarray(p), **kwargs))
        np.testing.assert_allclose(value, ref(e, y, p, **kwargs), rtol=1e-9, atol=1e-12, err_msg=name)
        if seed > 1:
          continue
        ge, gp = jax.grad(lambda a, b: loss(a, jnp.asarray(y), b, **kwargs), argnums=(0, 1))(
            jnp.asarray(e), jnp.asarray(p))
        np.testing.assert_allclose(np.asarray(ge), numeric_grad(lambda x: ref(x, y, p, **kwargs), e),
                                   rtol=1e-5, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(np.asarray(gp), numeric_grad(lambda x: ref(e, y, x, **kwargs), p),
                                   rtol=1e-5, atol=1e-7, err_msg=name)

  @parameterized.named_parameters(*[(n, n) for n in ROW_CASES])
  def test_row_reductions(self, name):
    loss, ref, kwargs = ROW_CASES[name]
    with jax.enable_x64(True):
      e, y, p = batch(7)
      rows = ref(e, y, p, **kwargs)
      args = (jnp.asarray(e), jnp.asarray(y), jnp.asarray(p))
      np.testing.assert_allclose(np.asarray(loss(*args, reduction="none", **kwargs)), rows, rtol=1e-9)
      np.testing.assert_allclose(float(loss(*args, reduction="sum", **kwargs)), sum(rows), rtol=1e-9)

  def test_proxy_anchor_reductions_are_per_proxy(self):
    with jax.enable_x64(True):
      e, y, p = batch(8, classes=3, num_proxies=5)   # proxies 3 and 4 have no positive in the batch
      per_proxy, present = ref_proxy_anchor(e, y, p)
      args = (jnp.asarray(e), jnp.asarray(y), jnp.asarray(p))
      got = np.asarray(xl.proxy_anchor_loss(*args, reduction="none"))
      np.testing.assert_allclose(got, [a + b for a, b in per_proxy], rtol=1e-9)
      self.assertEqual(present, [True, True, True, False, False])
      np.testing.assert_allclose(float(xl.proxy_anchor_loss(*args, reduction="sum")), got.sum(), rtol=1e-12)

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_float32(self):
    e, y, p = batch(3)
    for name in ALL:
      loss, ref, kwargs = loss_and_ref(name)
      fn = self.variant(lambda a, b, c, loss=loss, kwargs=kwargs: loss(a, b, c, **kwargs))
      value = fn(jnp.asarray(e, jnp.float32), jnp.asarray(y), jnp.asarray(p, jnp.float32))
      self.assertEqual(value.dtype, jnp.float32)
      np.testing.assert_allclose(float(value), ref(e, y, p, **kwargs), rtol=2e-4, atol=1e-5, err_msg=name)


class EdgesTest(parameterized.TestCase):

  def _finite(self, loss, e, y, p, **kwargs):
    value, grads = jax.jit(jax.value_and_grad(lambda a, b: loss(a, y, b, **kwargs), argnums=(0, 1)))(e, p)
    chex.assert_tree_all_finite((value, grads))
    return float(value), grads

  @parameterized.named_parameters(*[(n, n) for n in ALL])
  def test_on_the_proxy_identical_points_and_zero_rows(self, name):
    loss, _, kwargs = loss_and_ref(name)
    y = jnp.array([0, 0, 1, 1, 2, 2])
    p = jnp.eye(4)[:3]
    self._finite(loss, jnp.eye(4)[jnp.array([0, 0, 1, 1, 2, 2])], y, p, **kwargs)   # cos = 1 to its proxy
    self._finite(loss, -jnp.eye(4)[jnp.array([0, 0, 1, 1, 2, 2])], y, p, **kwargs)  # cos = -1
    self._finite(loss, jnp.zeros((6, 4)), y, p, **kwargs)
    self._finite(loss, jnp.ones((6, 4)), y, jnp.ones((3, 4)), **kwargs)
    self._finite(loss, jnp.ones((6, 4)), y, jnp.zeros((3, 4)), **kwargs)

  @parameterized.named_parameters(*[(n, n) for n in ALL])
  def test_large_scale_and_a_single_class_batch(self, name):
    loss, ref, kwargs = loss_and_ref(name)
    e, y, p = batch(5, scale=1e3)
    value, _ = self._finite(loss, jnp.asarray(e, jnp.float32), jnp.asarray(y), jnp.asarray(p, jnp.float32), **kwargs)
    np.testing.assert_allclose(value, ref(e, y, p, **kwargs), rtol=2e-4, atol=1e-5)
    y1 = np.zeros(len(y), np.int32)   # proxy losses need no pair: a single-class batch is a valid batch
    value, _ = self._finite(loss, jnp.asarray(e, jnp.float32), jnp.asarray(y1), jnp.asarray(p, jnp.float32), **kwargs)
    np.testing.assert_allclose(value, ref(e, y1, p, **kwargs), rtol=2e-4, atol=1e-5)

  @parameterized.named_parameters(*[(n, n) for n in ALL])
  def test_labels_outside_the_proxies_under_jit_contribute_nothing(self, name):
    loss, _, kwargs = loss_and_ref(name)
    e, y, p = batch(4, num_proxies=6)
    bad = jnp.full(len(y), 9)   # no proxy row: every row invalid
    value, (ge, _) = self._finite(loss, jnp.asarray(e, jnp.float32), bad, jnp.asarray(p, jnp.float32), **kwargs)
    np.testing.assert_array_equal(np.asarray(ge), 0.0)
    if name in ROW_CASES:
      self.assertEqual(value, 0.0)

  @parameterized.named_parameters(*[(n, n) for n in ALL])
  def test_bad_input_is_refused_on_the_host(self, name):
    loss, _, kwargs = loss_and_ref(name)
    where = loss.__name__
    e, p = jnp.ones((4, 3)), jnp.ones((5, 3))
    with self.assertRaisesRegex(ValueError, rf"^{where}: labels \[5, 7\] are outside \[0, 5\)"):
      loss(e, jnp.array([0, 5, 7, 1]), p, **kwargs)
    with self.assertRaisesRegex(ValueError, rf"^{where}: proxies must be \[num_classes, 3\]"):
      loss(e, jnp.array([0, 1, 0, 1]), jnp.ones((5, 4)), **kwargs)
    with self.assertRaisesRegex(ValueError, rf"^{where}: proxies must hold at least 2 classes"):
      loss(e, jnp.array([0, 0, 0, 0]), jnp.ones((1, 3)), **kwargs)
    with self.assertRaisesRegex(ValueError, rf"^{where}: labels must have shape \(4,\)"):
      loss(e, jnp.zeros(3, jnp.int32), p, **kwargs)
    with self.assertRaisesRegex(ValueError, rf"^{where}: proxies hold NaN"):
      loss(e, jnp.array([0, 1, 0, 1]), p.at[0, 0].set(jnp.nan), **kwargs)
    with self.assertRaisesRegex(ValueError, rf"^{where}: reduction must be one of"):
      loss(e, jnp.array([0, 1, 0, 1]), p, reduction="max", **kwargs)

  def test_init_proxies(self):
    p = xl.init_proxies(jax.random.key(0), 5, 3)
    self.assertEqual(p.shape, (5, 3))
    self.assertFalse(np.allclose(np.asarray(p[0]), np.asarray(p[1])))
    with self.assertRaisesRegex(ValueError, "at least 2 classes"):
      xl.init_proxies(jax.random.key(0), 1, 3)


if __name__ == "__main__":
  absltest.main()
