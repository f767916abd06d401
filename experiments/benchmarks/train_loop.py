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
import os
import tempfile
import time

from experiments.benchmarks import harness


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
  harness.overrides_module().apply_overrides(cfg, overrides)
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
  return harness.in_fresh_process(checkout, __file__, [mode, "--steps", str(steps), "--config",
                                                       os.path.abspath(args.config)]
                                  + [f"--config.{k}={v}" for k, v in args.overrides.items()])


def main(argv=None):
  ap = harness.parser(__doc__, rounds=3, out="bench_train_loop.json", other_checkout=True, overrides=True)
  ap.add_argument("--config", default="experiments/configs/default.py")
  ap.add_argument("--short", type=int, default=100)
  ap.add_argument("--long", type=int, default=500)
  ap.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
  args = harness.parse(ap, argv, overrides=True)

  if args._child:
    harness.child_result(_loop_seconds(args) if args._child == "loop" else _step_seconds(args))
    return

  _config(args.config, args.overrides, args.long)   # a bad key or value is refused here, before any round
  checkouts = harness.checkouts(args.other_checkout)

  def case(path):
    def one():
      long_s = _run(path, "loop", args.long, args)
      short_s = _run(path, "loop", args.short, args)
      return {"loop": (long_s - short_s) / (args.long - args.short),
              "step": _run(path, "step", args.long - args.short, args)}
    return one

  def report(r, name, value):
    print(f"round {r}: {name} loop {value['loop'] * 1e3:.2f} ms/step, step {value['step'] * 1e3:.2f} ms",
          flush=True)

  rounds = harness.interleaved(args.rounds, {name: case(path) for name, path in checkouts.items()}, report)

  import jax

  results = {"device": str(jax.devices()[0]), "config": args.config, "overrides": args.overrides,
             "short": args.short, "long": args.long, "checkouts": {}}
  print(f"\n{'checkout':<10}{'loop ms/step':>14}{'step ms':>10}{'loop/step':>11}  path")
  for name, path in checkouts.items():
    times = {kind: [v[kind] for v in rounds[name]] for kind in ("loop", "step")}
    loop, step = harness.median(times["loop"]), harness.median(times["step"])
    results["checkouts"][name] = {"path": path, "loop_s_median": loop, "step_s_median": step,
                                  "loop_over_step": loop / step, **times}
    print(f"{name:<10}{loop * 1e3:>14.2f}{step * 1e3:>10.2f}{loop / step:>11.2f}  {path}")
  if "other" in checkouts:
    ratio = results["checkouts"]["this"]["loop_s_median"] / results["checkouts"]["other"]["loop_s_median"]
    results["this_over_other_loop"] = ratio
    print(f"loop time, this / other: {ratio:.2f}")
  harness.write_results(args.out, results)


if __name__ == "__main__":
  from experiments.cli import run_main

  run_main(main, "python3 -m experiments.benchmarks.train_loop")
