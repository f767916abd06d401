import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from hdml_jax import statistics
from tests import reference


class StatisticsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_block_means_match_loop_reference(self):
    rng = np.random.default_rng(0)
    values_m = rng.uniform(1, 100, size=23)
    values_g = rng.uniform(1e3, 1e4, size=23)
    values_m[[3, 9]] = [np.nan, np.inf]
    values_g[[4]] = [-np.inf]
    ref = reference.BlockMeans(block=5, init=1e6)
    state = statistics.init_statistics(block_length=5)
    update = self.variant(statistics.update_statistics)
    for m, g in zip(values_m, values_g):
      state = update(state, jnp.float32(m), jnp.float32(g))
      ref.add(float(np.float32(m)), float(np.float32(g)))
      np.testing.assert_allclose(state.j_avg, ref.j_avg, rtol=1e-5)
      np.testing.assert_allclose(state.j_gen, ref.j_gen, rtol=1e-5)

  def test_first_block_reads_initial_value(self):
    state = statistics.init_statistics()   # defaults: 64, 1e6
    self.assertEqual(state.block_length, 64)
    for _ in range(63):
      state = statistics.update_statistics(state, 5.0, 7.0)
    self.assertEqual(float(state.j_avg), 1e6)
    state = statistics.update_statistics(state, 5.0, 7.0)
    self.assertAlmostEqual(float(state.j_avg), 5.0, places=5)
    self.assertAlmostEqual(float(state.j_gen), 7.0, places=5)
    self.assertEqual(int(state.steps_in_block), 0)

  def test_first_block_means_are_kept(self):
    state = statistics.init_statistics(block_length=2)
    state = statistics.update_statistics(state, 4.0, 40.0)
    self.assertEqual((float(state.j_avg_first), float(state.j_gen_first)), (0.0, 0.0))
    state = statistics.update_statistics(state, 2.0, 20.0)
    self.assertEqual((float(state.j_avg_first), float(state.j_gen_first)), (3.0, 30.0))
    for _ in range(4):    # later blocks move j_avg, never the first-block means
      state = statistics.update_statistics(state, 1.0, 10.0)
    self.assertEqual((float(state.j_avg), float(state.j_gen)), (1.0, 10.0))
    self.assertEqual((float(state.j_avg_first), float(state.j_gen_first)), (3.0, 30.0))

  def test_all_non_finite_block_keeps_previous(self):
    state = statistics.init_statistics(block_length=2, initial_value=3.0)
    state = statistics.update_statistics(state, math.nan, 1.0)
    state = statistics.update_statistics(state, math.inf, 3.0)
    self.assertEqual(float(state.j_avg), 3.0)
    self.assertEqual(float(state.j_gen), 2.0)

  def test_is_a_pytree_and_not_differentiated(self):
    state = statistics.init_statistics(block_length=1)
    leaves = jax.tree_util.tree_leaves(state)
    self.assertEqual(len(leaves), 9)   # block_length is static
    g = jax.grad(lambda x: statistics.update_statistics(state, x, x).j_avg)(2.0)
    self.assertEqual(float(g), 0.0)

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, "block_length must be >= 1, got 0"):
      statistics.init_statistics(block_length=0)
    with self.assertRaisesRegex(ValueError, "initial_value must be > 0"):
      statistics.init_statistics(initial_value=0.0)


class StatisticsDtypeTest(chex.TestCase):

  def test_the_state_keeps_its_dtypes_whatever_the_loss_dtype(self):
    # The statistics live in the train state: a float64 (x64 mode), bfloat16 or integer loss must not
    # change their dtypes (a changed pytree would retrace the step and break a checkpoint restore).
    with jax.enable_x64(True):
      s = statistics.init_statistics(block_length=2)
      for m, g in ((np.float64(1.5), np.float64(2.5)), (jnp.bfloat16(1.5), jnp.bfloat16(2.0)), (3, 4)):
        with self.subTest(dtype=str(jnp.asarray(m).dtype)):
          for _ in range(2):   # through a block boundary
            s2 = statistics.update_statistics(s, m, g)
            chex.assert_trees_all_equal_dtypes(s, s2)
            s = s2

  def test_a_block_with_one_finite_value_takes_that_value(self):
    # Non-finite steps are skipped: one finite value in a block is the block's mean, first block included.
    nan = float("nan")
    s = statistics.init_statistics(block_length=3)
    for m, g in ((nan, 6.0), (2.0, nan), (nan, nan)):
      s = statistics.update_statistics(s, m, g)
    self.assertEqual((float(s.j_avg), float(s.j_gen)), (2.0, 6.0))
    self.assertEqual((float(s.j_avg_first), float(s.j_gen_first)), (2.0, 6.0))
    # A block with no finite value keeps the previous means and the first block's.
    for _ in range(3):
      s = statistics.update_statistics(s, nan, nan)
    self.assertEqual((float(s.j_avg), float(s.j_gen), float(s.j_avg_first)), (2.0, 6.0, 2.0))

  def test_init_statistics_dtypes_and_checks(self):
    with jax.enable_x64(True):   # float32 / int32 even where the default would be 64-bit
      s = statistics.init_statistics(block_length=4, initial_value=0.5)   # any positive initial value
    self.assertEqual(float(s.j_avg), 0.5)
    for name in ("j_avg", "j_gen", "j_avg_first", "j_gen_first", "metric_sum", "gen_sum"):
      self.assertEqual(getattr(s, name).dtype, jnp.float32, name)
    for name in ("metric_count", "gen_count", "steps_in_block"):
      self.assertEqual(getattr(s, name).dtype, jnp.int32, name)
    with self.assertRaisesRegex(ValueError, "initial_value must be > 0, got 0"):
      statistics.init_statistics(initial_value=0)
    with self.assertRaisesRegex(ValueError, "block_length must be >= 1, got 0"):
      statistics.init_statistics(block_length=0)
