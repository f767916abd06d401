"""Sharded (jit over a mesh), pmap and multi-process runs of the train step."""

import os
import socket
import subprocess
import sys
import tempfile

import chex
import jax
import numpy as np
import pytest
from absl.testing import parameterized

from hdml_jax import parallel
from hdml_jax.train_step import make_train_step
from tests.helpers.library import REPO, max_abs_diff, synthetic_batches, tiny_state


def run_on_mesh(devices, loss, batches):
  mesh = parallel.make_data_mesh(devices)
  state = parallel.replicate_state(tiny_state(loss=loss, num_classes=16), mesh)
  step = parallel.jit_train_step(make_train_step(state.networks, state.config), mesh)
  for i, batch in enumerate(batches):
    state, metrics = step(state, parallel.shard_batch(batch, mesh), jax.random.key(i))
  return jax.device_get(state.params), jax.device_get(state.batch_stats), jax.device_get(metrics)


class ParallelTest(chex.TestCase):

  def test_eight_fake_devices_are_available(self):
    self.assertGreaterEqual(jax.device_count(), 8)

  @parameterized.named_parameters(("npair", "npair", 16), ("triplet", "triplet", 24))
  @pytest.mark.slow
  def test_one_and_eight_devices_agree(self, loss, batch_size):
    batches = synthetic_batches(loss, batch_size, steps=3)
    p1, s1, m1 = run_on_mesh(jax.devices()[:1], loss, batches)
    p8, s8, m8 = run_on_mesh(jax.devices()[:8], loss, batches)
    self.assertLess(max_abs_diff(p1, p8), 1e-4)
    self.assertLess(max_abs_diff(s1, s8), 1e-4)
    for key in ("loss", "j_gen", "j_cls", "grad_norm/backbone"):
      self.assertTrue(np.isfinite(m1[key]), key)
      np.testing.assert_allclose(m1[key], m8[key], rtol=1e-4, err_msg=key)

  def test_sharded_step_really_shards_the_batch(self):
    mesh = parallel.make_data_mesh(jax.devices()[:8])
    batch = parallel.shard_batch(synthetic_batches("npair", 16, 1)[0], mesh)
    self.assertEqual(len(batch["images"].sharding.device_set), 8)
    self.assertEqual(batch["images"].addressable_shards[0].data.shape, (2, 8, 8, 1))
    with self.assertRaisesRegex(ValueError, "batch size 12 is not divisible by 8"):
      parallel.shard_batch(synthetic_batches("npair", 12, 1)[0], mesh)

  @pytest.mark.slow
  def test_pmap_keeps_replicas_identical(self):
    n = 8
    state = tiny_state(num_classes=16)
    step = parallel.pmap_train_step(make_train_step(state.networks, state.config,
                                                    axis_name=parallel.PMAP_AXIS))
    devices = jax.local_devices()[:n]
    rstate = parallel.replicate_for_pmap(state, devices)
    for i, batch in enumerate(synthetic_batches("npair", 32, 3)):
      local = parallel.split_for_devices(batch, n, groups=2)
      # Each device's sub-batch keeps the [anchors; positives] layout.
      np.testing.assert_array_equal(local["labels"][3][:2], local["labels"][3][2:])
      keys = jax.random.split(jax.random.key(i), n)
      rstate, metrics = step(rstate, local, keys)
    self.assertTrue(np.all(np.asarray(metrics["finite"])))
    for leaf in jax.tree_util.tree_leaves((rstate.params, rstate.batch_stats, rstate.opt_state, rstate.stats)):
      leaf = np.asarray(leaf)
      for r in range(1, n):
        np.testing.assert_array_equal(leaf[r], leaf[0])
    self.assertEqual(int(parallel.unreplicate(rstate).step), 3)

  def test_split_for_devices_errors(self):
    with self.assertRaisesRegex(ValueError, "batch size 10 is not divisible by 8"):
      parallel.split_for_devices({"x": np.zeros((10, 2))}, 4, groups=2)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class MeshPrefetcherTest(chex.TestCase):

  def test_yields_the_sharded_batches_in_order(self):
    mesh = parallel.make_data_mesh()
    host = [{"images": np.random.default_rng(i).normal(size=(16, 3)).astype(np.float32),
             "labels": np.arange(16, dtype=np.int32) + i} for i in range(5)]
    with parallel.MeshPrefetcher(iter(host), mesh, size=2) as it:
      got = list(it)
    self.assertLen(got, 5)
    for want, batch in zip(host, got):
      self.assertEqual(batch["images"].sharding, parallel.data_sharded(mesh))
      self.assertLen(batch["images"].addressable_shards, 8)
      np.testing.assert_array_equal(np.asarray(batch["images"]), want["images"])
      np.testing.assert_array_equal(np.asarray(batch["labels"]), want["labels"])
    with self.assertRaises(StopIteration):
      next(it)

  def test_source_errors_reach_the_consumer_after_the_good_batches(self):
    mesh = parallel.make_data_mesh(jax.devices()[:1])

    def source():
      yield {"x": np.zeros((2, 1))}
      raise OSError("image 17 is unreadable")

    it = parallel.MeshPrefetcher(source(), mesh)
    self.assertEqual(next(it)["x"].shape, (2, 1))
    with self.assertRaisesRegex(OSError, "image 17 is unreadable"):
      next(it)
    it.close()
    # A transfer error (rows not divisible by the devices) is raised the same way.
    bad = parallel.MeshPrefetcher(iter([{"x": np.zeros((3, 1))}]), parallel.make_data_mesh())
    with self.assertRaisesRegex(ValueError, "not divisible by 8"):
      next(bad)
    bad.close()

  def test_close_stops_a_thread_blocked_on_a_full_queue(self):
    def endless():
      while True:
        yield {"x": np.zeros((8, 2))}

    it = parallel.MeshPrefetcher(endless(), parallel.make_data_mesh(), size=1)
    next(it)
    it.close()
    self.assertFalse(it._thread.is_alive())
    with self.assertRaisesRegex(ValueError, "size must be >= 1"):
      parallel.MeshPrefetcher(endless(), parallel.make_data_mesh(), size=0)


@pytest.mark.slow   # two processes
class MultiProcessTest(chex.TestCase):
  """Two processes on loopback under jax.distributed, CPU collectives."""

  def test_two_processes_match_one(self):
    loss, batch_size = "npair", 16
    batches = synthetic_batches(loss, batch_size, steps=3)
    single, _, _ = run_on_mesh(jax.devices()[:2], loss, batches)
    port = _free_port()
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    out_dir = tempfile.mkdtemp()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.multiprocess_worker", str(port), str(pid), out_dir, loss,
             str(batch_size)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for pid in range(2)
    ]
    logs = []
    for p in procs:
      try:
        out, _ = p.communicate(timeout=240)
      except subprocess.TimeoutExpired:
        for q in procs:
          q.kill()
        raise
      logs.append(out.decode(errors="replace"))
      self.assertEqual(p.returncode, 0, "\n".join(logs))
    got = dict(np.load(os.path.join(out_dir, "params_0.npz")))
    other = dict(np.load(os.path.join(out_dir, "params_1.npz")))
    flat = {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(single)}
    self.assertEqual(set(flat), set(got))
    for k in flat:
      np.testing.assert_allclose(got[k], flat[k], atol=1e-4, err_msg=k)
      np.testing.assert_array_equal(got[k], other[k])
