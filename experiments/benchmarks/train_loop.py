"""Benchmark: the training loop's time per step against the bare step's.

The loop (``experiments.train.train_and_evaluate``) adds batch assembly,
host-to-device transfer, metric fetching, logging and checkpointing to the
jitted step. This measures, in fresh processes, both

* ``loop``: seconds per step of the whole loop, as (T(long) - T(short)) /
  (long - short) steps of two runs, so the load, compile and final
  evaluation cancel out;
* ``step``: seconds per step of the same jitted step called back to back on
  one fixed device batch (no host work at all),

and their ratio: how much the loop costs beyond the step. With
``--other_checkout DIR`` the same measurement of another checkout of this
project (say, an earlier commit in a git worktree) runs in interleaved
rounds, so both see the same machine noise: a before/after comparison.

    python -m experiments.benchmarks.train_loop --config experiments/configs/default.py --config.batch_size=20
    git worktree add /tmp/before HEAD~1
    python -m experiments.benchmarks.train_loop --other_checkout /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def _overrides_module():
  """``experiments/overrides.py`` of this checkout, loaded by path: the measured checkout may predate it."""
  import importlib.util

  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "overrides.py")
  spec = importlib.util.spec_from_file_location("bench_overrides", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _config(path: str, overrides: dict, num_steps: int):
  import importlib.util

  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config()
  cfg.num_steps = num_steps
  cfg.checkpoint_every = num_steps
  cfg.eval_every = num_steps
  cfg.selection.split = "none"
  cfg.plots = False
  _overrides_module().apply_overrides(cfg, overrides)
  return cfg


def _loop_seconds(args) -> float:
  from experiments.train import train_and_evaluate

  cfg = _config(args.config, args.overrides, args.steps)
  with tempfile.TemporaryDirectory() as workdir:
    t0 = time.perf_counter()
    train_and_evaluate(cfg, workdir)
    return time.perf_counter() - t0


def _step_seconds(args) -> float:
  import jax

  from experiments import datasets
  from experiments.runtime import build_state
  from hdml_jax import parallel
  from hdml_jax.train_step import make_train_step

  cfg = _config(args.config, args.overrides, args.steps)
  data = datasets.load_data(cfg)
  devices = jax.devices() if not cfg.num_devices else jax.devices()[:cfg.num_devices]
  mesh = parallel.make_data_mesh(devices)
  state = parallel.replicate_state(build_state(cfg, data), mesh)
  step = parallel.jit_train_step(make_train_step(state.networks, state.config), mesh)
  batches = datasets.train_batches(cfg, data, start_step=0, rows=parallel.process_rows(cfg.batch_size))
  batch = parallel.shard_batch(next(batches), mesh, global_batch_size=cfg.batch_size)
  state, m = step(state, batch, jax.random.key(0))
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for i in range(args.steps):
    state, m = step(state, batch, jax.random.key(i))
  jax.block_until_ready((state.params, m))
  return (time.perf_counter() - t0) / args.steps


def _run(checkout: str, mode: str, steps: int, args) -> float:
  # This file runs with the other checkout first on the path, so it measures that checkout's loop.
  cmd = [sys.executable, os.path.abspath(__file__), "--_one", mode, "--steps", str(steps),
         "--config", os.path.abspath(args.config)] + [f"--config.{k}={v}" for k, v in args.overrides.items()]
  env = dict(os.environ, PYTHONPATH=checkout)
  out = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
  if out.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed in {checkout}:\n{out.stderr[-3000:]}")
  return float(out.stdout.strip().splitlines()[-1])


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                               epilog="--config.<key>=<value>: a config override (as in experiments.main).")
  ap.add_argument("--config", default="experiments/configs/default.py")
  ap.add_argument("--short", type=int, default=100)
  ap.add_argument("--long", type=int, default=500)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--other_checkout", default=None,
                  help="another checkout of this project, measured in the same interleaved rounds")
  ap.add_argument("--out", default="bench_train_loop.json")
  ap.add_argument("--_one", default=None, help=argparse.SUPPRESS)
  ap.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
  argv, overrides = _overrides_module().split_overrides(sys.argv[1:] if argv is None else argv)
  args = ap.parse_args(argv)
  args.overrides = overrides

  if args._one:
    print(_loop_seconds(args) if args._one == "loop" else _step_seconds(args))
    return

  _config(args.config, args.overrides, args.long)   # a bad key or value is refused here, before any round
  here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the checkout
  checkouts = {"this": here}
  if args.other_checkout:
    checkouts["other"] = os.path.abspath(args.other_checkout)
  times = {name: {"loop": [], "step": []} for name in checkouts}
  for r in range(args.rounds):
    for name, path in checkouts.items():
      long_s = _run(path, "loop", args.long, args)
      short_s = _run(path, "loop", args.short, args)
      times[name]["loop"].append((long_s - short_s) / (args.long - args.short))
      times[name]["step"].append(_run(path, "step", args.long - args.short, args))
      print(f"round {r}: {name} loop {times[name]['loop'][-1] * 1e3:.2f} ms/step, "
            f"step {times[name]['step'][-1] * 1e3:.2f} ms", flush=True)

  import jax

  results = {"device": str(jax.devices()[0]), "config": args.config, "overrides": args.overrides,
             "short": args.short, "long": args.long, "checkouts": {}}
  print(f"\n{'checkout':<10}{'loop ms/step':>14}{'step ms':>10}{'loop/step':>11}  path")
  for name, path in checkouts.items():
    loop, step = float(np.median(times[name]["loop"])), float(np.median(times[name]["step"]))
    results["checkouts"][name] = {"path": path, "loop_s_median": loop, "step_s_median": step,
                                  "loop_over_step": loop / step, **times[name]}
    print(f"{name:<10}{loop * 1e3:>14.2f}{step * 1e3:>10.2f}{loop / step:>11.2f}  {path}")
  if "other" in checkouts:
    ratio = results["checkouts"]["this"]["loop_s_median"] / results["checkouts"]["other"]["loop_s_median"]
    results["this_over_other_loop"] = ratio
    print(f"loop time, this / other: {ratio:.2f}")
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  from experiments.cli import run_main

  run_main(main, "python3 -m experiments.benchmarks.train_loop")
