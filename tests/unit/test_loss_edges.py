"""Every loss at the edges of its input: NaN or infinite entries never give a finite loss, empty inputs are
refused at trace time naming the argument, and finite inputs give exactly what they gave before the guard."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hdml_jax.losses as L

LABELS = jnp.array([0, 0, 1, 1, 2, 2, 3, 3])


def _embeddings(seed=0, n=8, d=4):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, d)), jnp.float32)


# name -> (the loss as f(e, proxies) on an [8, 4] batch with LABELS, whether it reads proxies)
def _registered(name):
  spec = L.loss_spec(name)
  return lambda e, proxies: spec.fn({"proxies": proxies}, e, LABELS, jax.random.key(0))


CASES = {name: _registered(name) for name in L.LOSS_NAMES if name not in L.TUPLE_LOSSES}   # those: below
CASES.update({
    "npair_loss": lambda e, proxies: L.npair_loss(e[:4], e[4:]),
    "synthetic_npair_loss": lambda e, proxies: L.synthetic_npair_loss(e[:4], jnp.stack([e[4:]] * 4, axis=1)),
    "triplet_loss": lambda e, proxies: L.triplet_loss(e[:3], e[3:6], e[5:8]),   # reads every row
    "triplet_loss/euclidean": lambda e, proxies: L.triplet_loss(e[:3], e[3:6], e[5:8], squared=False),
    "contrastive_loss": lambda e, proxies: L.contrastive_loss(e[:4], e[4:], jnp.array([1.0, 0.0, 1.0, 0.0])),
    "cross_entropy": lambda e, proxies: L.cross_entropy(e, LABELS % 4),
    "multi_similarity_from_similarities": lambda e, proxies: L.multi_similarity_from_similarities(
        e @ e.T, LABELS[:, None] == LABELS[None, :], LABELS[:, None] != LABELS[None, :]),
})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_non_finite_embedding_never_gives_a_finite_loss(name, bad):
  proxies = _embeddings(seed=1, n=4)
  loss = jax.jit(CASES[name])
  for row in range(8):   # the bad entry in every row: a mask, a max or a ReLU may pass over some rows
    got = np.asarray(loss(_embeddings().at[row, 2].set(bad), proxies))
    assert not np.isfinite(got).all(), (name, row, got)


@pytest.mark.parametrize("name", sorted(n for n in L.LOSS_NAMES if n in L.PROXY_LOSSES))
def test_a_non_finite_proxy_never_gives_a_finite_loss(name):
  got = jax.jit(CASES[name])(_embeddings(), _embeddings(seed=1, n=4).at[3, 0].set(np.nan))
  assert not np.isfinite(np.asarray(got)).all()


@pytest.mark.parametrize("name", sorted(CASES))
def test_finite_inputs_give_finite_losses_and_gradients(name):
  proxies = _embeddings(seed=1, n=4)
  value, grad = jax.value_and_grad(lambda e: jnp.sum(CASES[name](e, proxies)))(_embeddings())
  assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all()


def test_the_guard_changes_no_finite_value_and_no_gradient():
  from hdml_jax import _checks

  x = _embeddings()
  f = lambda e: jnp.sum(jnp.sin(e) ** 2)
  guarded = lambda e: _checks.nan_unless_finite(f(e), e)
  assert float(guarded(x)) == float(f(x))
  np.testing.assert_array_equal(jax.grad(guarded)(x), jax.grad(f)(x))
  assert np.isnan(float(guarded(x.at[0, 0].set(np.inf))))


@pytest.mark.parametrize("call,argument", [
    (lambda: L.npair_loss(jnp.zeros((0, 4)), jnp.zeros((0, 4))), "anchors"),
    (lambda: L.triplet_loss(jnp.zeros((0, 4)), jnp.zeros((0, 4)), jnp.zeros((0, 4))), "anchors"),
    (lambda: L.contrastive_loss(jnp.zeros((0, 4)), jnp.zeros((0, 4)), jnp.zeros((0,))), "x1"),
    (lambda: L.synthetic_npair_loss(jnp.zeros((0, 4)), jnp.zeros((0, 0, 4))), "anchors"),
    (lambda: L.multi_similarity_loss(jnp.zeros((0, 4)), jnp.zeros((0,), jnp.int32)), "embeddings"),
    (lambda: L.proxy_anchor_loss(jnp.zeros((0, 4)), jnp.zeros((0,), jnp.int32), jnp.ones((3, 4))), "embeddings"),
])
def test_zero_rows_are_refused_at_trace_time_naming_the_argument(call, argument):
  with pytest.raises(ValueError, match=rf"`{argument}` has no rows \(shape \(0, 4\)\)"):
    call()
  with pytest.raises(ValueError, match=rf"`{argument}` has no rows"):
    jax.jit(call)()


def test_the_train_steps_trace_their_losses_unguarded():
  # The loop checks every loss and the whole state itself; the step compiles as before the guard existed.
  from hdml_jax import _checks

  x = _embeddings().at[0, 0].set(np.nan)
  with _checks.inputs_checked_by_the_caller():
    assert _checks.nan_unless_finite(jnp.float32(2.0), x) == 2.0
  assert np.isnan(float(_checks.nan_unless_finite(jnp.float32(2.0), x)))
