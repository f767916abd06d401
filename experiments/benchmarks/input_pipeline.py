"""Benchmark: training images per second delivered by the input pipeline, from JPEG and from the decoded cache.

Builds the ``tfds_image_folder`` dataset (array_record) from a folder of
class sub-folders once (default: ``../shared/data/cub100/images``, the first
half of the classes for training), then times the grain pipeline that the
training loop uses (sample, read, crop, flip, normalise) at the paper's size
(256 -> 227, "paper" preprocessing) and at the CPU configuration's (72 -> 64,
"standard"), from the stored JPEGs (``dataset.decoded_cache_gb=0``: a Pillow
decode and resize per image) and from the decoded-image cache (a gather), with
1 thread (the rate per core) and with ``--threads``, and with the normalisation on
the host (float32 batches, ``dataset.normalize_on_device=False``) or left to the
device (uint8 batches, the default; ``--normalize``); the settings run in
interleaved rounds and each reports its median. The paper-size rates are set
against what an accelerator stepping GoogLeNet at batch 128 in 25.9 ms
consumes (128 / 0.0259 s = 4,942 images/s).

    python -m experiments.benchmarks.input_pipeline --threads 2 --batches 20 --rounds 3
"""

from __future__ import annotations

import os
import tempfile
import time

from experiments import datasets
from experiments.benchmarks import harness
from experiments.configs import cub100

#: Images per second a 25.9 ms GoogLeNet step of batch 128 consumes.
ACCELERATOR_RATE = 128 / 0.0259


def _time(cfg, data, batches: int) -> float:
  it = datasets.train_batches(cfg, data, start_step=0, rows=slice(None))
  for _ in range(cfg.prefetch + 1):   # start the workers and drain the read-ahead: time the steady state
    next(it)
  t0 = time.perf_counter()
  for _ in range(batches):
    b = next(it)
  seconds = time.perf_counter() - t0
  assert b["images"].shape[0] == cfg.batch_size
  return batches * cfg.batch_size / seconds


def _config(args, resize, crop, recipe, cache_gb, threads, normalize):
  cfg = cub100.get_config()
  cfg.dataset.name, cfg.dataset.data_dir = "tfds_image_folder", args.images
  cfg.dataset.tfds_data_dir, cfg.dataset.num_train_classes = args.tfds_data_dir, 0   # half
  cfg.dataset.num_val_classes = 0
  cfg.dataset.resize, cfg.dataset.crop, cfg.dataset.preprocess = resize, crop, recipe
  cfg.dataset.decoded_cache_gb = cache_gb
  cfg.dataset.normalize_on_device = normalize == "device"
  cfg.loss.name = "triplet"
  cfg.batch_size, cfg.num_steps, cfg.data_threads = args.batch, args.batches + cfg.prefetch + 1, threads
  return cfg


def main(argv=None):
  ap = harness.parser(__doc__, rounds=3, out="bench_input_pipeline.json")
  ap.add_argument("--images", default=cub100.get_config().dataset.data_dir)
  ap.add_argument("--tfds_data_dir", default=os.path.join(tempfile.gettempdir(), "hdml_bench_tfds"))
  ap.add_argument("--batch", type=int, default=120, help="a triplet batch (the reference: 120)")
  ap.add_argument("--batches", type=int, default=20)
  ap.add_argument("--threads", type=int, default=4)
  ap.add_argument("--sizes", default="paper,cpu", help="paper (256 -> 227) and/or cpu (72 -> 64)")
  ap.add_argument("--normalize", default="host,device",
                  help="host (float32 batches) and/or device (uint8 batches, normalised in the step)")
  args = harness.parse(ap, argv)
  where = args.normalize.split(",")
  if not where or set(where) - {"host", "device"}:
    ap.error(f"--normalize must name host and/or device, got {args.normalize!r}")
  sizes = {"paper": (256, 227, "paper"), "cpu": (72, 64, "standard")}
  chosen = args.sizes.split(",")
  if not chosen or set(chosen) - set(sizes):
    ap.error(f"--sizes must name some of {sorted(sizes)}, got {args.sizes!r}")
  settings = []
  for size, (resize, crop, recipe) in ((k, sizes[k]) for k in chosen):
    for source, gb in (("jpeg", 0.0), ("decoded cache", 8.0)):
      for threads in sorted({1, args.threads}):
        for normalize in where:
          settings.append({"size": size, "resize": resize, "crop": crop, "source": source, "threads": threads,
                           "normalize": normalize, "cfg": _config(args, resize, crop, recipe, gb, threads, normalize),
                           "rates": []})
  for row in settings:   # prepares the dataset and builds the caches once, outside the timed rounds
    t0 = time.perf_counter()
    row["data"] = datasets.load_data(row["cfg"])
    row["setup_s"] = time.perf_counter() - t0
  rates = harness.interleaved(args.rounds, {i: (lambda row=row: _time(row["cfg"], row["data"], args.batches))
                                             for i, row in enumerate(settings)})
  for i, row in enumerate(settings):
    row["rates"] = rates[i]
  out = []
  print(f"{'size':<7}{'source':<15}{'normalise':<11}{'threads':>8}{'img/s':>9}{'per thread':>11}{'vs 4,942/s':>11}")
  for row in settings:
    ips = harness.median(row["rates"])
    rec = {k: row[k] for k in ("size", "resize", "crop", "source", "threads", "normalize", "rates", "setup_s")}
    rec.update(images_per_s=ips, per_thread=ips / row["threads"], accelerator_fraction=ips / ACCELERATOR_RATE)
    out.append(rec)
    print(f"{row['size']:<7}{row['source']:<15}{row['normalize']:<11}{row['threads']:>8}{ips:>9.0f}"
          f"{ips / row['threads']:>11.0f}{ips / ACCELERATOR_RATE:>10.2f}x   (setup {row['setup_s']:.1f} s)", flush=True)
  for size in chosen:
    for threads in sorted({1, args.threads}):
      for normalize in where:
        rate = {r["source"]: r["images_per_s"] for r in out
                if r["size"] == size and r["threads"] == threads and r["normalize"] == normalize}
        print(f"{size}, {threads} thread(s), normalised on the {normalize}: cache / JPEG = "
              f"{rate['decoded cache'] / rate['jpeg']:.1f}x")
      if len(where) == 2:
        rate = {r["normalize"]: r["images_per_s"] for r in out
                if r["size"] == size and r["threads"] == threads and r["source"] == "decoded cache"}
        print(f"{size}, {threads} thread(s), decoded cache: device / host normalisation = "
              f"{rate['device'] / rate['host']:.1f}x")
  harness.write_results(args.out, {"rows": out, "batch": args.batch, "batches": args.batches, "rounds": args.rounds,
                                   "cpu_count": os.cpu_count(), "accelerator_rate": ACCELERATOR_RATE})


if __name__ == "__main__":
  from experiments.cli import run_main

  run_main(main, "python3 -m experiments.benchmarks.input_pipeline")
