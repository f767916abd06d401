"""The adaptive statistics J_avg and J_gen as an explicit pytree.

HDML reads two running averages that are inputs to the step, never
differentiated (reference section 7):

* ``J_avg`` (drives the hardness factor ``exp(-alpha/J_avg)``): the mean of
  the weighted metric loss ``w * J_m`` (weight decay included);
* ``J_gen`` (drives ``w = exp(-beta/J_gen)``): the mean of ``J_gen``;

each over the last *completed* block of ``block_length`` steps (64 by
default). Both start at ``initial_value`` (1e6), so during the first block
augmentation is effectively off and ``w`` is close to 1. Non-finite values
are skipped: they do not enter the block's sum or count (a block with no
finite value keeps the previous mean).

The means of the *first* completed block are kept too (``j_avg_first``,
``j_gen_first``; 0 until that block completes): the optional transfer of
alpha and beta (``HDMLConfig.alpha_relative`` / ``beta_relative``, a
deviation from the reference) expresses both relative to them.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

__all__ = [
    "AdaptiveStatistics",
    "init_statistics",
    "update_statistics",
]


@flax.struct.dataclass
class AdaptiveStatistics:
  """Block-mean state. ``j_avg`` and ``j_gen`` are the values to read.

  Attributes:
    j_avg: mean of ``w * J_m`` over the last completed block.
    j_gen: mean of ``J_gen`` over the last completed block.
    metric_sum, metric_count: the current block's finite ``w * J_m`` values.
    gen_sum, gen_count: the current block's finite ``J_gen`` values.
    steps_in_block: updates seen in the current block.
    j_avg_first, j_gen_first: the means of the first completed block (0
      until it completes).
    block_length: static block length.
  """

  j_avg: jax.Array
  j_gen: jax.Array
  metric_sum: jax.Array
  metric_count: jax.Array
  gen_sum: jax.Array
  gen_count: jax.Array
  steps_in_block: jax.Array
  j_avg_first: jax.Array
  j_gen_first: jax.Array
  block_length: int = flax.struct.field(pytree_node=False, default=64)


def init_statistics(
    *, block_length: int = 64, initial_value: float = 1e6
) -> AdaptiveStatistics:
  """Fresh statistics reading ``initial_value`` until the first block ends.

  >>> s = init_statistics(block_length=2)
  >>> float(s.j_avg), float(s.j_gen)
  (1000000.0, 1000000.0)
  """
  if block_length < 1:
    raise ValueError(f"init_statistics: block_length must be >= 1, got {block_length}.")
  if not initial_value > 0:
    raise ValueError(f"init_statistics: initial_value must be > 0, got {initial_value}.")
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  i32 = lambda v: jnp.asarray(v, jnp.int32)
  return AdaptiveStatistics(
      j_avg=f32(initial_value), j_gen=f32(initial_value),
      metric_sum=f32(0.0), metric_count=i32(0),
      gen_sum=f32(0.0), gen_count=i32(0),
      steps_in_block=i32(0), j_avg_first=f32(0.0), j_gen_first=f32(0.0),
      block_length=block_length,
  )


def update_statistics(
    stats: AdaptiveStatistics, weighted_metric_loss: jax.Array, gen_loss: jax.Array
) -> AdaptiveStatistics:
  """Adds one step's ``w * J_m`` and ``J_gen``; closes the block when full.

  Pure and jit-compatible. Values are stop-gradient'd.

  >>> s = init_statistics(block_length=2)
  >>> s = update_statistics(s, 1.0, 10.0)
  >>> float(s.j_avg)            # block not complete yet
  1000000.0
  >>> s = update_statistics(s, float("nan"), 30.0)
  >>> float(s.j_avg), float(s.j_gen)   # NaN skipped
  (1.0, 20.0)
  """
  m = jax.lax.stop_gradient(jnp.asarray(weighted_metric_loss, jnp.float32))
  g = jax.lax.stop_gradient(jnp.asarray(gen_loss, jnp.float32))
  m_ok = jnp.isfinite(m)
  g_ok = jnp.isfinite(g)
  metric_sum = stats.metric_sum + jnp.where(m_ok, m, 0.0)
  metric_count = stats.metric_count + m_ok.astype(jnp.int32)
  gen_sum = stats.gen_sum + jnp.where(g_ok, g, 0.0)
  gen_count = stats.gen_count + g_ok.astype(jnp.int32)
  steps = stats.steps_in_block + 1
  done = steps >= stats.block_length

  def block_mean(total, count, previous):
    mean = total / jnp.maximum(count, 1).astype(jnp.float32)
    return jnp.where(done & (count > 0), mean, previous)

  def first(total, count, previous_first):
    return jnp.where(done & (count > 0) & (previous_first == 0.0),
                     total / jnp.maximum(count, 1).astype(jnp.float32), previous_first)

  zero_f = jnp.zeros((), jnp.float32)
  zero_i = jnp.zeros((), jnp.int32)
  return stats.replace(
      j_avg=block_mean(metric_sum, metric_count, stats.j_avg),
      j_gen=block_mean(gen_sum, gen_count, stats.j_gen),
      j_avg_first=first(metric_sum, metric_count, stats.j_avg_first),
      j_gen_first=first(gen_sum, gen_count, stats.j_gen_first),
      metric_sum=jnp.where(done, zero_f, metric_sum),
      metric_count=jnp.where(done, zero_i, metric_count),
      gen_sum=jnp.where(done, zero_f, gen_sum),
      gen_count=jnp.where(done, zero_i, gen_count),
      steps_in_block=jnp.where(done, zero_i, steps),
  )
