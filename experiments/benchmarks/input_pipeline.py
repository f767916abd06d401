"""Benchmark: training images per second delivered by the input pipeline.

Builds the ``tfds_image_folder`` dataset (array_record) from a folder of
class sub-folders once (default: ``../shared/data/cub100/images``, the first
half of the classes for training), then times the grain pipeline that the
training loop uses (sample, read, Pillow-decode, resize, crop, flip,
normalise) at the paper's size (256 -> 227, "paper" preprocessing) and at the
CPU configuration's (72 -> 64, "standard"), and the in-memory image-folder
path at the CPU size for comparison.

    python -m experiments.benchmarks.input_pipeline --threads 4 --batches 20
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from experiments import datasets
from experiments.configs import cub100


def _time(cfg, data, batches: int) -> float:
  it = datasets.train_batches(cfg, data, start_step=0, rows=slice(None))
  next(it)  # start the workers
  t0 = time.perf_counter()
  for _ in range(batches):
    b = next(it)
  seconds = time.perf_counter() - t0
  assert b["images"].shape[0] == cfg.batch_size
  return batches * cfg.batch_size / seconds


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--images", default=cub100.get_config().dataset.data_dir)
  ap.add_argument("--tfds_data_dir", default=os.path.join(tempfile.gettempdir(), "hdml_bench_tfds"))
  ap.add_argument("--batch", type=int, default=120, help="a triplet batch (the reference: 120)")
  ap.add_argument("--batches", type=int, default=20)
  ap.add_argument("--threads", type=int, default=4)
  ap.add_argument("--out", default="bench_input_pipeline.json")
  args = ap.parse_args(argv)
  rows = []
  print(f"{'source':<26}{'size':>10}{'threads':>9}{'img/s':>10}")
  settings = [("tfds array_record", "tfds_image_folder", 256, 227, "paper"),
              ("tfds array_record", "tfds_image_folder", 72, 64, "standard"),
              ("in-memory image folder", "image_folder", 72, 64, "standard")]
  for label, name, resize, crop, recipe in settings:
    cfg = cub100.get_config()
    cfg.dataset.name, cfg.dataset.data_dir = name, args.images
    cfg.dataset.tfds_data_dir, cfg.dataset.num_train_classes = args.tfds_data_dir, 50
    cfg.dataset.num_val_classes = 0
    cfg.dataset.resize, cfg.dataset.crop, cfg.dataset.preprocess = resize, crop, recipe
    cfg.hdml.loss = "triplet"
    cfg.batch_size, cfg.num_steps, cfg.data_threads = args.batch, args.batches + 1, args.threads
    t0 = time.perf_counter()
    data = datasets.load_data(cfg)
    load_s = time.perf_counter() - t0
    ips = _time(cfg, data, args.batches)
    rows.append({"source": label, "resize": resize, "crop": crop, "threads": args.threads,
                 "images_per_s": ips, "load_s": load_s})
    print(f"{label:<26}{f'{resize}->{crop}':>10}{args.threads:>9}{ips:>10.0f}   (setup {load_s:.1f} s)",
          flush=True)
  with open(args.out, "w") as f:
    json.dump(rows, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
