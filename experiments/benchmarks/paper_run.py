"""Benchmark: where the time of a short paper-config run goes, against one forward pass.

The run is the paper's configuration (``experiments/configs/paper.py:cub,npair,hdml``:
GoogLeNet, 227 px) cut to ``--steps`` train steps of batch ``--batch`` with one
evaluation at the last step, on an official-layout ``CUB_200_2011`` tree made from
the cub100 photographs (:func:`official_cub_tree`: species 1-50 get class ids 1-50,
species 51-100 ids 101-150, so the builder's 1-100 / 101-200 rule splits them
50 / 50). Each run is a fresh process with an empty compilation cache, and is
split into

* ``setup``: from the start of ``train_and_evaluate`` to the loop's first step
  (data, state, checkpoint manager, jitted step);
* ``train``: the loop without its evaluation callbacks;
* ``evaluation``: the loop's evaluation callbacks, plus everything after the loop
  (the final and best checkpoints' evaluation, results.json, plots).

The reference is one forward pass over the test images, measured in its own fresh
process: GoogLeNet in inference mode, batch ``eval.batch_size``, on images already
decoded and cropped in memory, after one compiling call. The target of the paper
run is ``evaluation <= 1.5 x forward``.

``--other_checkout DIR`` also runs another checkout of this project (an earlier
commit) in the same rounds, interleaved, so that before/after ratios share the
machine's load::

    python -m experiments.benchmarks.paper_run --rounds 1 --other_checkout /tmp/before

Further ``--config.<key>=<value>`` arguments change every run (and the forward pass) alike.

The TFDS dataset is prepared once, before the first round (its time is reported
apart: it is paid once per machine, not per run).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from experiments.benchmarks import harness

REPO = harness.REPO
CUB100 = os.path.join(os.path.dirname(REPO), "shared", "data", "cub100")


def official_cub_tree(root: str, source: str = CUB100) -> str:
  """Lays the cub100 photographs out as the official archive under ``root``; returns the manual_dir.

  The first half of the species get class ids from 1, the rest from 101, so the
  builder's 1-100 / 101-200 rule splits them in halves.

  ``root/CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, images/NNN.Species/...}``,
  space-separated, ids from 1, the photographs linked (not copied). A tree already
  there is reused.
  """
  base = os.path.join(root, "CUB_200_2011")
  if os.path.exists(os.path.join(base, "image_class_labels.txt")):
    return root
  rows = [line.split(",") for line in open(os.path.join(source, "images.txt")) if line.strip()]
  labels = dict(line.split(",") for line in open(os.path.join(source, "image_class_labels.txt")) if line.strip())
  names = dict(line.split(",") for line in open(os.path.join(source, "classes.txt")) if line.strip())
  names = {int(k): v.strip() for k, v in names.items()}
  half = len(names) // 2   # the first half of the species train (ids 1..), the rest test (ids 101..)
  official = {c: (c + 1 if c < half else c - half + 101) for c in sorted(names)}
  images, image_labels = [], []
  for n, (image_id, rel) in enumerate(rows, start=1):
    cls = int(labels[image_id])
    folder = f"{official[cls]:03d}.{names[cls]}"
    os.makedirs(os.path.join(base, "images", folder), exist_ok=True)
    target = os.path.join(base, "images", folder, os.path.basename(rel.strip()))
    if not os.path.exists(target):
      os.symlink(os.path.join(source, "images", rel.strip()), target)
    images.append(f"{n} {folder}/{os.path.basename(rel.strip())}")
    image_labels.append(f"{n} {official[cls]}")
  with open(os.path.join(base, "classes.txt"), "w") as f:
    f.write("".join(f"{official[c]} {official[c]:03d}.{names[c]}\n" for c in sorted(names)))
  with open(os.path.join(base, "images.txt"), "w") as f:
    f.write("\n".join(images) + "\n")
  with open(os.path.join(base, "image_class_labels.txt"), "w") as f:   # written last: the tree is complete
    f.write("\n".join(image_labels) + "\n")
  return root


def _paper_config(overrides: dict):
  from experiments.configs import paper

  cfg = paper.get_config("cub,npair,hdml")
  cfg.unlock()
  harness.overrides_module().apply_overrides(cfg, overrides)
  return cfg


def _driver(workdir: str, overrides: dict) -> dict:
  """Runs inside the measured checkout: times train_and_evaluate's phases by wrapping
  experiments.loop.run_loop (present, with its on_eval callback, in every checkout since the redesign)."""
  t0 = time.perf_counter()
  from experiments import loop, selection, train
  from hdml_jax import evaluation

  cfg = _paper_config(overrides)
  phase = {}
  real = loop.run_loop

  def timed_loop(*args, on_eval=None, step_hook=None, **kwargs):
    phase["loop_start"] = time.perf_counter()
    phase["on_eval"] = 0.0

    def timed_eval(step, state):
      s = time.perf_counter()
      on_eval(step, state)
      phase["on_eval"] += time.perf_counter() - s
    out = real(*args, on_eval=timed_eval if on_eval else None, step_hook=step_hook, **kwargs)
    phase["loop_end"] = time.perf_counter()
    return out

  loop.run_loop = timed_loop
  train.loop.run_loop = timed_loop
  calls = {}

  def count(owner, name, label):
    inner = getattr(owner, name)

    def wrapped(*a, **k):
      s = time.perf_counter()
      try:
        return inner(*a, **k)
      finally:
        n, t = calls.get(label, (0, 0.0))
        calls[label] = (n + 1, t + time.perf_counter() - s)
    setattr(owner, name, wrapped)

  count(selection, "embed_split", "embed_split")
  count(evaluation, "evaluate", "metrics")
  t1 = time.perf_counter()
  results = train.train_and_evaluate(cfg, workdir)
  t2 = time.perf_counter()
  return {"import": t1 - t0, "setup": phase["loop_start"] - t1,
          "train": phase["loop_end"] - phase["loop_start"] - phase["on_eval"],
          "evaluation": phase["on_eval"] + (t2 - phase["loop_end"]), "total": t2 - t0,
          "recall@1": results["final"]["recall@1"], "nmi": results["final"]["nmi"],
          "calls": {k: {"count": n, "seconds": t} for k, (n, t) in calls.items()}}


def _forward(overrides: dict) -> dict:
  """Runs in this checkout: one forward pass of GoogLeNet over the decoded, centre-cropped test images."""
  import jax
  import numpy as np

  from experiments import datasets, runtime

  cfg = _paper_config(overrides)
  s = time.perf_counter()
  data = datasets.load_data(cfg)
  data_s = time.perf_counter() - s
  images = np.concatenate([x for _, x in datasets.eval_batches(data, data.test, cfg.eval.batch_size)])
  prepare = getattr(data, "model_input", lambda x: x)   # uint8 crops normalised on the device, where that is done
  state = runtime.build_state(cfg, data)
  params, stats = jax.device_put((state.params, state.batch_stats))
  b = cfg.eval.batch_size
  pad = (-len(images)) % b
  batches = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
  batches = batches.reshape((-1, b) + images.shape[1:])
  s = time.perf_counter()
  state.apply_fn(params, stats, prepare(batches[0])).block_until_ready()
  first = time.perf_counter() - s
  s = time.perf_counter()
  for chunk in batches:
    out = state.apply_fn(params, stats, prepare(chunk))
  out.block_until_ready()
  return {"forward": time.perf_counter() - s, "first_call": first, "images": len(images), "load_data": data_s}


def main(argv=None):
  ap = harness.parser(__doc__, rounds=1, out="bench_paper_run.json", other_checkout=True, overrides=True)
  ap.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "hdml_paper_run"),
                  help="where the official-layout tree, the TFDS data and the runs go")
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--source", default=CUB100, help="the cub100 folder the tree is made from")
  ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
  args = harness.parse(ap, argv, overrides=True)
  if args._child == "driver":
    harness.child_result(_driver(args.workdir, args.overrides))
    return
  if args._child == "forward":
    harness.child_result(_forward(args.overrides))
    return
  manual = official_cub_tree(os.path.join(args.root, "manual"), args.source)
  tfds_dir = os.path.join(args.root, "tfds")
  overrides = [f"--config.dataset.data_dir={manual}", f"--config.dataset.tfds_data_dir={tfds_dir}",
               f"--config.num_steps={args.steps}", f"--config.batch_size={args.batch}",
               f"--config.eval_every={args.steps}", f"--config.checkpoint_every={args.steps}"]
  overrides += [f"--config.{k}={v}" for k, v in args.overrides.items()]
  _paper_config(harness.overrides_module().split_overrides(overrides)[1])   # a bad key is refused before any run
  env = {**os.environ, "PYTHONPATH": ""}
  t = time.perf_counter()
  forward = harness.in_fresh_process(harness.REPO, __file__, ["forward", *overrides], env=env)
  print(f"dataset ready and one forward pass measured in {time.perf_counter() - t:.0f} s (of which "
        f"{forward['load_data']:.0f} s loading the data: the TFDS build and the decoded cache on first use)")
  checkouts = harness.checkouts(args.other_checkout)

  def case(name, path):
    def one():
      work = tempfile.mkdtemp(dir=args.root, prefix=f"run_{name}_")
      cache = tempfile.mkdtemp(dir=args.root, prefix="xla_")
      return harness.in_fresh_process(path, __file__, ["driver", "--workdir", os.path.join(work, "wd"),
                                                       f"--config.compilation_cache_dir={cache}", *overrides],
                                      env=env)
    return one

  rounds = []

  def report(r, name, row):
    row.update(checkout=name, round=r)
    rounds.append(row)
    print(f"round {r} {name:<6} setup {row['setup']:6.1f} s  train {row['train']:6.1f} s  "
          f"evaluation {row['evaluation']:6.1f} s  total {row['total']:6.1f} s  "
          f"(evaluation / forward {row['evaluation'] / forward['forward']:.2f})", flush=True)

  harness.interleaved(args.rounds, {name: case(name, path) for name, path in checkouts.items()}, report)
  print(f"one forward pass over {forward['images']} test images: {forward['forward']:.1f} s "
        f"(first call {forward['first_call']:.1f} s)")
  harness.write_results(args.out, {"forward": forward, "rounds": rounds, "steps": args.steps,
                                   "batch": args.batch})


if __name__ == "__main__":
  from experiments.cli import run_main

  run_main(main, "python3 -m experiments.benchmarks.paper_run")
