"""Benchmark: compile time of the train step, and what the persistent cache saves.

Runs the same first train step in fresh processes: once with an empty
persistent compilation cache (cold), then again with the cache it filled
(warm), and reports the time to the first finished step of each and their
ratio. Each process is new, so nothing is cached in memory.

    python -m experiments.benchmarks.compile --backbone small_cnn --image_size 64 --batch 48
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time


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
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--backbone", default="small_cnn")
  ap.add_argument("--image_size", type=int, default=64)
  ap.add_argument("--batch", type=int, default=48)
  ap.add_argument("--loss", default="npair")
  ap.add_argument("--baseline", action="store_true")
  ap.add_argument("--out", default="bench_compile.json")
  ap.add_argument("--_cache", default=None, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args._cache:
    print(json.dumps({"seconds": _first_step(args, args._cache)}))
    return
  cache = tempfile.mkdtemp(prefix="hdml_xla_cache_")
  child = [sys.executable, "-m", "experiments.benchmarks.compile", "--backbone", args.backbone,
           "--image_size", str(args.image_size), "--batch", str(args.batch), "--loss", args.loss,
           "--_cache", cache] + (["--baseline"] if args.baseline else [])
  times = {}
  for label in ("cold", "warm"):
    out = subprocess.run(child, capture_output=True, text=True, check=True)
    times[label] = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
  result = {"args": {k: v for k, v in vars(args).items() if not k.startswith("_")}, **times,
            "warm_over_cold": times["warm"] / times["cold"]}
  print(f"first step (compile + run): cold cache {times['cold']:.2f} s, warm cache {times['warm']:.2f} s, "
        f"ratio {result['warm_over_cold']:.2f}")
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  from experiments.cli import run_main

  run_main(main, "python3 -m experiments.benchmarks.compile")
