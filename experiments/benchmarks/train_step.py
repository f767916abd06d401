"""Benchmark: train-step time of the baseline and HDML, measured side by side.

Each variant is compiled first; then the variants are timed in interleaved
rounds (A B C D, A B C D, ...) so that machine noise hits all of them alike,
and the median step time per variant is reported with the HDML/baseline
ratio for each loss. Prints a table and writes JSON.

    python -m experiments.benchmarks.train_step --image_size 64 --batch 48 --rounds 5

The HDML path in isolation (identity backbone on 1024-d "features", the
paper's embedding size and batch): the step is then the embedding head, the
losses and, for HDML, the P + P^2 synthetic rows through the generator and
the re-encoder:

    python -m experiments.benchmarks.train_step --backbone mlp --hidden "" --image_size 1 \
        --channels 1024 --batch 128 --embedding_dim 512

On a GPU (the paper's setting: GoogLeNet, 227 px, batch 128; float32 and
bfloat16, HDML and baseline, 100 timed steps each):

    python -m experiments.benchmarks.train_step --backbone googlenet --image_size 227 \
        --batch 128 --embedding_dim 512 --losses npair --dtypes float32,bfloat16 \
        --steps_per_round 20 --rounds 5 --out bench_gpu.json
"""

from __future__ import annotations

import itertools
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks import harness
from hdml_jax.config import HDMLConfig, OptimizerConfig
from hdml_jax.train_state import create_train_state
from hdml_jax.train_step import make_train_step


def _batch(loss, batch_size, image_size, channels, seed=0):
  rng = np.random.default_rng(seed)
  if loss == "npair":
    p = batch_size // 2
    cls = np.arange(p)
    labels = np.concatenate([cls, cls])
  else:
    t = batch_size // 3
    labels = np.concatenate([np.arange(t), np.arange(t), np.arange(t, 2 * t)])
  images = rng.normal(size=(len(labels), image_size, image_size, channels)).astype(np.float32)
  return {"images": jax.device_put(images), "labels": jax.device_put(labels.astype(np.int32))}


def main(argv=None):
  ap = harness.parser(__doc__, rounds=5, out="bench_train_step.json")
  ap.add_argument("--backbone", default="small_cnn")
  ap.add_argument("--widths", default="32,64,128,256", help="small_cnn stage widths")
  ap.add_argument("--hidden", default="256,256",
                  help="mlp layer widths; '' makes the backbone the identity, so the step is the "
                       "head and the HDML path alone (use --image_size 1 --channels F)")
  ap.add_argument("--image_size", type=int, default=64)
  ap.add_argument("--channels", type=int, default=3)
  ap.add_argument("--batch", type=int, default=48, help="global batch (even for N-pair, /3 for triplet)")
  ap.add_argument("--embedding_dim", type=int, default=128)
  ap.add_argument("--losses", default="npair,triplet")
  ap.add_argument("--dtypes", default="float32",
                  help="backbone compute dtypes, e.g. float32,bfloat16 (googlenet/small_cnn)")
  ap.add_argument("--steps_per_round", type=int, default=5)
  ap.add_argument("--no_donate", action="store_true",
                  help="do not donate the state to the step (to measure what donation saves)")
  ap.add_argument("--hdml_only", action="store_true", help="time the HDML variants alone")
  args = harness.parse(ap, argv)

  kwargs = {}
  if args.backbone == "small_cnn":
    kwargs = {"widths": tuple(int(w) for w in args.widths.split(","))}
  elif args.backbone == "mlp":
    kwargs = {"hidden": tuple(int(w) for w in args.hidden.split(",") if w)}
  variants = {}
  modes = (True,) if args.hdml_only else (False, True)
  for dtype, loss, hdml in itertools.product(args.dtypes.split(","), args.losses.split(","), modes):
      name = f"{loss}/{dtype}/{'hdml' if hdml else 'baseline'}"
      config = HDMLConfig(loss=loss, hdml=hdml)
      bb_kwargs = dict(kwargs)
      if dtype != "float32":
        bb_kwargs["dtype"] = getattr(jnp, dtype)
      state = create_train_state(
          jax.random.key(0), image_shape=(args.image_size, args.image_size, args.channels),
          num_classes=args.batch, embedding_dim=args.embedding_dim, backbone=args.backbone,
          backbone_kwargs=bb_kwargs, config=config, optimizer=OptimizerConfig())
      step = jax.jit(make_train_step(state.networks, config), donate_argnums=() if args.no_donate else 0)
      batch = _batch(loss, args.batch, args.image_size, args.channels)
      t0 = time.perf_counter()
      state, m = step(state, batch, jax.random.key(0))
      jax.block_until_ready(m)
      variants[name] = {"step": step, "state": state, "batch": batch, "compile_s": time.perf_counter() - t0}
      print(f"compiled {name} in {variants[name]['compile_s']:.1f} s", flush=True)

  def steps(v):   # seconds per step of steps_per_round steps, the state carried over rounds
    state = v["state"]
    t0 = time.perf_counter()
    for i in range(args.steps_per_round):
      state, m = v["step"](state, v["batch"], jax.random.key(i))
    jax.block_until_ready((state.params, m))
    v["state"] = state
    return (time.perf_counter() - t0) / args.steps_per_round

  times = harness.interleaved(args.rounds, {name: (lambda v=v: steps(v)) for name, v in variants.items()})
  for name, v in variants.items():
    v["times"] = times[name]

  device_stats = jax.devices()[0].memory_stats() or {}
  results = {"device": str(jax.devices()[0]), "platform": platform.platform(),
             "jax": jax.__version__, "args": vars(args), "variants": {},
             "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             "peak_device_mib": device_stats.get("peak_bytes_in_use", 0) / 2**20 or None}
  print(f"device: {results['device']}  batch {args.batch} at {args.image_size}px, "
        f"backbone {args.backbone} {kwargs}, donation {'off' if args.no_donate else 'on'}; "
        f"peak host RSS {results['peak_rss_mib']:.0f} MiB"
        + (f", peak device memory {results['peak_device_mib']:.0f} MiB" if results["peak_device_mib"] else ""))
  print(f"{'variant':<30}{'compile s':>10}{'step ms':>10}{'img/s':>10}{'vs baseline':>13}")
  for name, v in variants.items():
    med = harness.median(v["times"])
    base_name = name.rsplit('/', 1)[0] + "/baseline"
    base = harness.median(variants[base_name]["times"]) if base_name in variants else float("nan")
    results["variants"][name] = {"compile_s": v["compile_s"], "step_s_median": med,
                                 "step_s_all": v["times"], "images_per_s": args.batch / med,
                                 "ratio_to_baseline": med / base}
    print(f"{name:<30}{v['compile_s']:>10.1f}{med * 1e3:>10.1f}{args.batch / med:>10.1f}{med / base:>13.2f}")
  harness.write_results(args.out, results)


if __name__ == "__main__":
  from experiments.cli import run_main

  run_main(main, "python3 -m experiments.benchmarks.train_step")
