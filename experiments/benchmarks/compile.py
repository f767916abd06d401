"""Benchmark: compile time of the train step, and what the persistent cache saves.

Runs the same first train step in fresh processes: once with an empty
persistent compilation cache (cold), then again with the cache it filled
(warm), and reports the time to the first finished step of each and their
ratio (medians over ``--rounds`` pairs, each with a new cache). Each process is new, so nothing is cached in memory.

    python -m experiments.benchmarks.compile --backbone small_cnn --image_size 64 --batch 48
"""

from __future__ import annotations

import tempfile
import time

from experiments.benchmarks import harness


def _first_step(args, cache_dir: str) -> float:
  import jax
  import numpy as np

  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  from hdml_jax.config import HDMLConfig
  from hdml_jax.train_state import create_train_state
  from hdml_jax.train_step import make_train_step

  config = HDMLConfig(loss=args.loss, hdml=not args.baseline)
  state = create_train_state(jax.random.key(0), image_shape=(args.image_size, args.image_size, 3),
                             num_classes=args.batch, embedding_dim=128, backbone=args.backbone,
                             config=config)
  p = args.batch // 2
  batch = {"images": np.zeros((args.batch, args.image_size, args.image_size, 3), np.float32),
           "labels": np.concatenate([np.arange(p), np.arange(p)]).astype(np.int32)}
  t0 = time.perf_counter()
  state, metrics = jax.jit(make_train_step(state.networks, config))(state, batch, jax.random.key(0))
  jax.block_until_ready(metrics)
  return time.perf_counter() - t0


def main(argv=None):
  ap = harness.parser(__doc__, rounds=1, out="bench_compile.json")
  ap.add_argument("--backbone", default="small_cnn")
  ap.add_argument("--image_size", type=int, default=64)
  ap.add_argument("--batch", type=int, default=48)
  ap.add_argument("--loss", default="npair")
  ap.add_argument("--baseline", action="store_true")
  args = harness.parse(ap, argv)
  if args._child:
    harness.child_result({"seconds": _first_step(args, args._child)})
    return
  child = ["--backbone", args.backbone, "--image_size", str(args.image_size), "--batch", str(args.batch),
           "--loss", args.loss] + (["--baseline"] if args.baseline else [])

  def pair():   # a new empty cache, then the same cache again
    cache = tempfile.mkdtemp(prefix="hdml_xla_cache_")
    return {label: harness.in_fresh_process(harness.REPO, __file__, [cache, *child])["seconds"]
            for label in ("cold", "warm")}

  rounds = harness.interleaved(args.rounds, {"pair": pair})["pair"]
  times = {label: harness.median([r[label] for r in rounds]) for label in ("cold", "warm")}
  result = {"args": {k: v for k, v in vars(args).items() if not k.startswith("_")}, **times,
            "warm_over_cold": times["warm"] / times["cold"], "rounds": rounds}
  print(f"first step (compile + run): cold cache {times['cold']:.2f} s, warm cache {times['warm']:.2f} s, "
        f"ratio {result['warm_over_cold']:.2f}")
  harness.write_results(args.out, result)


if __name__ == "__main__":
  from experiments.cli import run_main

  run_main(main, "python3 -m experiments.benchmarks.compile")
