"""Benchmark: time and peak memory of each evaluation family.

Synthetic clustered, L2-normalised embeddings at two scales:

* ``sop``: 60,502 x 512, 11,316 classes (the Stanford Online Products test set)
* ``cub``: 5,924 x 512, 100 classes (the CUB-200-2011 test set)

Each (scale, family) runs in a fresh subprocess so its peak resident memory
(``ru_maxrss``) is its own. Families: ``retrieval`` (exact kNN + Recall@K,
P@1, R-precision, MAP@R), ``kmeans`` (JAX k-means, k = #classes),
``nmi_f1`` (from the assignments), ``evaluate`` (everything, end to end).

    python -m experiments.benchmarks.evaluation --scales cub,sop
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

SCALES = {"sop": (60502, 11316, 512, (1, 10, 100)), "cub": (5924, 100, 512, (1, 2, 4, 8))}
FAMILIES = ("retrieval", "kmeans", "nmi_f1", "evaluate")


def make_data(scale: str, seed: int = 0, noise: float = 1.2):
  n, c, d, _ = SCALES[scale]
  rng = np.random.default_rng(seed)
  y = rng.integers(0, c, n)
  centers = rng.normal(size=(c, d)).astype(np.float32)
  x = centers[y] + noise * rng.normal(size=(n, d)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  return x, y


def run_one(scale: str, family: str) -> dict:
  from hdml_jax import evaluation as ev

  x, y = make_data(scale)
  ks = SCALES[scale][3]
  base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  t0 = time.perf_counter()
  if family == "retrieval":
    metrics = ev.evaluate(x, y, recall_ks=ks, clustering=False)
  elif family == "kmeans":
    assign, _ = ev.kmeans(x, int(np.unique(y).size))
    metrics = {"clusters_used": int(np.unique(assign).size)}
  elif family == "nmi_f1":
    assign = np.random.default_rng(1).integers(0, int(np.unique(y).size), y.size)
    metrics = {"nmi": ev.normalized_mutual_information(y, assign), "f1": ev.pair_f1(y, assign)}
  else:
    metrics = ev.evaluate(x, y, recall_ks=ks)
  seconds = time.perf_counter() - t0
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return {"scale": scale, "family": family, "seconds": seconds,
          "peak_rss_mib": peak / 1024, "data_rss_mib": base_rss / 1024, "metrics": metrics}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--scales", default="cub,sop")
  ap.add_argument("--families", default=",".join(FAMILIES))
  ap.add_argument("--out", default="bench_evaluation.json")
  ap.add_argument("--_one", default=None, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args._one:
    print(json.dumps(run_one(*args._one.split(":"))))
    return
  rows = []
  print(f"{'scale':<6}{'family':<11}{'seconds':>9}{'peak MiB':>10}  metrics")
  for scale in args.scales.split(","):
    for family in args.families.split(","):
      out = subprocess.run([sys.executable, "-m", "experiments.benchmarks.evaluation", "--_one",
                            f"{scale}:{family}"], capture_output=True, text=True, check=False)
      if out.returncode:
        raise RuntimeError(f"{scale}/{family} failed:\n{out.stderr[-3000:]}")
      row = json.loads(out.stdout.strip().splitlines()[-1])
      rows.append(row)
      shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in row["metrics"].items()}
      print(f"{scale:<6}{family:<11}{row['seconds']:>9.1f}{row['peak_rss_mib']:>10.0f}  {shown}",
            flush=True)
  with open(args.out, "w") as f:
    json.dump(rows, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
