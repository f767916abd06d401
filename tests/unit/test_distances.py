import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from jax.test_util import check_grads

from hdml_jax import distances
from tests import reference


class DistancesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("squared", True), ("euclidean", False))
  def test_pairwise_matches_loops(self, squared):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    y = rng.normal(size=(4, 3)).astype(np.float32)
    fn = self.variant(lambda a, b: distances.pairwise_distances(a, b, squared=squared))
    np.testing.assert_allclose(fn(x, y), reference.pairwise(x, y, squared), rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_self_distances_have_zero_diagonal(self):
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32) * 100
    d = self.variant(distances.pairwise_distances)(x)
    np.testing.assert_array_equal(np.diag(d), 0.0)
    np.testing.assert_allclose(d, reference.pairwise(x, x, False), rtol=1e-4, atol=1e-3)

  @chex.variants(with_jit=True, without_jit=True)
  def test_rowwise_matches_loops(self):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(2, 7, 3)).astype(np.float32)
    d = self.variant(distances.rowwise_distances)(x, y)
    np.testing.assert_allclose(d, [reference.dist(a, b) for a, b in zip(x, y)], rtol=1e-5)

  def test_gradients_finite_at_coincident_points(self):
    x = jnp.array([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]])
    for fn in (
        lambda v: jnp.sum(distances.pairwise_distances(v)),
        lambda v: jnp.sum(distances.pairwise_distances(v, v)),
        lambda v: jnp.sum(distances.pairwise_squared_distances(v)),
        lambda v: jnp.sum(distances.rowwise_distances(v, v)),
    ):
      g = jax.grad(fn)(x)
      chex.assert_tree_all_finite(g)
    # A zero distance has a zero gradient (the subgradient of |.| at 0).
    g = jax.grad(lambda v: jnp.sum(distances.rowwise_distances(v, x)))(x)
    np.testing.assert_array_equal(g, 0.0)

  def test_check_grads_away_from_zero(self):
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
      x = jnp.asarray(rng.normal(size=(4, 3)))
      y = jnp.asarray(rng.normal(size=(3, 3)))
      check_grads(lambda a, b: distances.pairwise_distances(a, b), (x, y), order=2, modes=["rev"])
      check_grads(lambda a, b: distances.rowwise_distances(a, b), (x, x[::-1]), order=1, modes=["rev"])

  def test_safe_sqrt_values_and_grad(self):
    x = jnp.array([0.0, -1.0, 4.0])
    np.testing.assert_array_equal(distances.safe_sqrt(x), [0.0, 0.0, 2.0])
    g = jax.grad(lambda v: jnp.sum(distances.safe_sqrt(v)))(x)
    np.testing.assert_allclose(g, [0.0, 0.0, 0.25])

  def test_errors_name_shapes(self):
    with self.assertRaisesRegex(ValueError, r"same embedding dimension.*\(2, 3\).*\(2, 4\)|\(2, 3\).*\(2, 4\)"):
      distances.pairwise_distances(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with self.assertRaisesRegex(ValueError, r"rank 2, got shape \(3,\)"):
      distances.pairwise_distances(jnp.zeros(3))
    with self.assertRaisesRegex(TypeError, "floating-point.*int32"):
      distances.pairwise_distances(jnp.zeros((2, 3), jnp.int32))
    with self.assertRaisesRegex(ValueError, r"shapes must match.*\(2, 3\).*\(3, 3\)"):
      distances.rowwise_distances(jnp.zeros((2, 3)), jnp.zeros((3, 3)))


class DistanceErrorsTest(chex.TestCase):
  """Every bad input is named: the function, the argument, what is wrong."""

  def test_errors_name_the_function_and_the_argument(self):
    good, vec, ints = jnp.ones((3, 2)), jnp.ones((3,)), jnp.ones((3, 2), jnp.int32)
    for name in ("rowwise_squared_distances", "rowwise_distances", "pairwise_squared_distances",
                 "pairwise_distances"):
      fn = getattr(distances, name)
      where = "rowwise_squared_distances" if name == "rowwise_distances" else (
          "pairwise_squared_distances" if name == "pairwise_distances" else name)
      with self.subTest(name):
        with self.assertRaisesRegex(ValueError, rf"^{where}: `x` must have rank 2, got shape \(3,\)\.$"):
          fn(vec, good)
        with self.assertRaisesRegex(ValueError, rf"^{where}: `y` must have rank 2, got shape \(3,\)\.$"):
          fn(good, vec)
        with self.assertRaisesRegex(TypeError, rf"^{where}: `x` must be a floating-point array, got dtype int32"):
          fn(ints, good)
        with self.assertRaisesRegex(TypeError, rf"^{where}: `y` must be a floating-point array, got dtype int32"):
          fn(good, ints)
    for name in ("rowwise_squared_distances", "rowwise_distances"):
      with self.assertRaisesRegex(ValueError, r"^rowwise_squared_distances: shapes must match, got `x` \(3, 2\), "
                                  r"`y` \(4, 2\)\.$"):
        getattr(distances, name)(good, jnp.ones((4, 2)))
    for name in ("pairwise_squared_distances", "pairwise_distances"):
      with self.assertRaisesRegex(ValueError, r"^pairwise_squared_distances: `x` \(3, 2\) and `y` \(3, 4\) must "
                                  r"have the same embedding dimension\.$"):
        getattr(distances, name)(good, jnp.ones((3, 4)))

  def test_dtypes_are_kept(self):
    x = jnp.array([[0., 0.], [3., 4.]], jnp.bfloat16)
    for d in (distances.pairwise_squared_distances(x), distances.pairwise_distances(x),
              distances.pairwise_squared_distances(x, x), distances.rowwise_distances(x, x[::-1])):
      self.assertEqual(d.dtype, jnp.bfloat16)
    np.testing.assert_allclose(np.asarray(distances.pairwise_distances(x), np.float32), [[0, 5], [5, 0]])
