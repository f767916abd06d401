"""One process of the two-process test (run by tests/test_parallel.py)."""

import os
import sys


def main(port, pid, out_dir, loss, batch_size):
  import jax

  from hdml_jax import parallel

  parallel.initialize_distributed(f"127.0.0.1:{port}", num_processes=2, process_id=pid)

  import numpy as np

  from hdml_jax.train_step import make_train_step
  from tests.helpers.library import synthetic_batches, tiny_state

  assert jax.process_count() == 2 and jax.device_count() == 2, (jax.process_count(), jax.devices())
  mesh = parallel.make_data_mesh()
  state = parallel.replicate_state(tiny_state(loss=loss, num_classes=16), mesh)
  step = parallel.jit_train_step(make_train_step(state.networks, state.config), mesh)
  rows = parallel.process_rows(batch_size)
  for i, batch in enumerate(synthetic_batches(loss, batch_size, steps=3)):
    local = {k: v[rows] for k, v in batch.items()}
    state, metrics = step(state, parallel.shard_batch(local, mesh, global_batch_size=batch_size),
                          jax.random.key(i))
  params = {jax.tree_util.keystr(k): np.asarray(v.addressable_data(0))
            for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
  np.savez(os.path.join(out_dir, f"params_{pid}.npz"), **params)
  print("process", pid, "done, loss", float(np.asarray(metrics["loss"].addressable_data(0))))


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]))
