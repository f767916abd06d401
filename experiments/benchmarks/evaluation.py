"""Benchmark: time and peak memory of each evaluation family.

Synthetic clustered, L2-normalised embeddings at two scales:

* ``sop``: 60,502 x 512, 11,316 classes (the Stanford Online Products test set)
* ``cub``: 5,924 x 512, 100 classes (the CUB-200-2011 test set)

Each (scale, family) runs in a fresh subprocess so its peak resident memory
(``ru_maxrss``) is its own. Families: ``retrieval`` (exact kNN + Recall@K,
P@1, R-precision, MAP@R), ``kmeans`` (JAX k-means, k = #classes, the
``"auto"`` protocol: the reference protocol at CUB scale, the fast one at
SOP scale; NMI and F1 from its assignments included), ``nmi_f1`` (NMI and
F1 alone, from random assignments),
``evaluate`` (everything, end to end).

``--peer`` adds, where importable (never dependencies): ``sklearn_kmeans``
(scikit-learn's ``KMeans(n_init=10)``, the paper's protocol, with its NMI),
``faiss_knn`` (faiss's exact ``IndexFlatL2`` search for the same neighbours
as ``retrieval``), ``matmul_limit`` (only the products ``retrieval`` needs, its
arithmetic floor, by the default kNN engine's means: NumPy's BLAS on a CPU, XLA
elsewhere; timed after a warm-up) and ``faiss_kmeans`` (faiss's k-means, 20 iterations, with
its NMI), ``pml_retrieval`` (pytorch-metric-learning's ``AccuracyCalculator``:
P@1, R-precision and MAP@R with the same k as ``retrieval``) and ``pml_clustering``
(its NMI: faiss k-means, 20 iterations; scikit-learn is skipped at SOP
scale, where it would run for hours). Each is timed in its own subprocess, the families in interleaved
rounds (``--rounds``), so the ratios are side by side.

    python -m experiments.benchmarks.evaluation --scales cub,sop
    python -m experiments.benchmarks.evaluation --scales cub --families kmeans --peer --rounds 3

``--other_checkout DIR`` times another checkout of this project (an earlier
commit in a ``git worktree``, say) in the same interleaved rounds, each of its
families right after this checkout's, and prints both checkouts' ratios: a
before/after comparison under the same machine noise.

    git worktree add /tmp/before HEAD~1
    python -m experiments.benchmarks.evaluation --scales sop --families retrieval --peer --rounds 3 \
        --other_checkout /tmp/before
"""

from __future__ import annotations

import resource
import time

import numpy as np

from experiments.benchmarks import harness

SCALES = {"sop": (60502, 11316, 512, (1, 10, 100)), "cub": (5924, 100, 512, (1, 2, 4, 8))}
FAMILIES = ("retrieval", "kmeans", "nmi_f1", "evaluate")
PEERS = {"retrieval": ("faiss_knn", "matmul_limit", "pml_retrieval"),
         "kmeans": ("sklearn_kmeans", "faiss_kmeans", "pml_clustering")}
# scikit-learn's KMeans(n_init=10) at k = 11,316 runs for hours on 2 cores: timed at CUB scale only.
SKIP = {("sop", "sklearn_kmeans")}
PEER_MODULES = {"sklearn": "sklearn", "faiss": "faiss", "matmul": "jax", "pml": "pytorch_metric_learning"}


def make_data(scale: str, seed: int = 0, noise: float = 1.2):
  n, c, d, _ = SCALES[scale]
  rng = np.random.default_rng(seed)
  y = rng.integers(0, c, n)
  centers = rng.normal(size=(c, d)).astype(np.float32)
  x = centers[y] + noise * rng.normal(size=(n, d)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  return x, y


def run_one(scale: str, family: str, noise: str = "1.2") -> dict:
  from hdml_jax import evaluation as ev

  x, y = make_data(scale, noise=float(noise))
  ks = SCALES[scale][3]
  base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  t0 = time.perf_counter()
  if family == "retrieval":
    metrics = ev.evaluate(x, y, recall_ks=ks, clustering=False)
  elif family == "kmeans":
    k = int(np.unique(y).size)
    settings = ev.kmeans_settings("auto", k)
    assign, _ = ev.kmeans(x, k, init=settings["init"], n_init=settings["n_init"], max_iter=settings["max_iter"])
    metrics = {"protocol": settings["protocol"], "clusters_used": int(np.unique(assign).size),
               "nmi": ev.normalized_mutual_information(y, assign), "f1": ev.pair_f1(y, assign)}
  elif family == "matmul_limit":
    # The arithmetic floor of exact kNN: the same [1024, D] x [D, N] products, nothing else, by what the
    # default kNN engine uses on this backend (BLAS on a CPU, XLA elsewhere); timed after a warm-up.
    import jax
    import jax.numpy as jnp
    if ev.resolve_knn_engine() == "host":
      g = np.ascontiguousarray(np.concatenate([x, np.ones((x.shape[0], 1), np.float32)], 1).T)
      out = np.empty((1024, x.shape[0]), np.float32)
      mm = lambda q: np.matmul(np.concatenate([q, np.ones((q.shape[0], 1), np.float32)], 1), g, out=out)
    else:
      g = jnp.asarray(x)
      xla = jax.jit(lambda q, g: jnp.max(jnp.matmul(q, g.T, precision=jax.lax.Precision.HIGHEST), axis=1))
      mm = lambda q: xla(jnp.asarray(q), g).block_until_ready()
    mm(x[:1024])
    t0 = time.perf_counter()
    for start in range(0, x.shape[0], 1024):
      q = x[start:start + 1024]
      if q.shape[0] < 1024:
        q = np.concatenate([q, np.zeros((1024 - q.shape[0], q.shape[1]), np.float32)])
      mm(q)
    metrics = {"gflop": 2.0 * x.shape[0] * x.shape[0] * x.shape[1] / 1e9, "engine": ev.resolve_knn_engine()}
  elif family == "sklearn_kmeans":
    from sklearn.cluster import KMeans
    assign = KMeans(n_clusters=int(np.unique(y).size), n_init=10, random_state=0).fit_predict(x)
    metrics = {"nmi": ev.normalized_mutual_information(y, assign)}
  elif family == "faiss_knn":
    import faiss
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, idx = index.search(x, max(ks) + 1)
    metrics = {"recall@1": float(np.mean(y[idx[:, 1]] == y))}   # column 0 is the query itself
  elif family == "faiss_kmeans":
    import faiss
    km = faiss.Kmeans(x.shape[1], int(np.unique(y).size), niter=20, seed=0)
    km.train(x)
    assign = km.index.search(x, 1)[1][:, 0]
    metrics = {"nmi": ev.normalized_mutual_information(y, assign)}
  elif family == "pml_retrieval":
    # pytorch-metric-learning's AccuracyCalculator (faiss exact search inside), same k as `retrieval`.
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    k = max(max(ks), int(np.bincount(y).max()) - 1)
    calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"), k=k,
                              device=torch.device("cpu"))
    metrics = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(y))
  elif family == "pml_clustering":
    # pytorch-metric-learning's NMI: faiss k-means (20 iterations), k = the number of classes.
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    calc = AccuracyCalculator(include=("NMI",), device=torch.device("cpu"))
    metrics = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(y))
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
  ap = harness.parser(__doc__, rounds=1, out="bench_evaluation.json", other_checkout=True)
  ap.add_argument("--scales", default="cub,sop")
  ap.add_argument("--families", default=",".join(FAMILIES))
  ap.add_argument("--peer", action="store_true", help="also time scikit-learn / faiss where importable")
  ap.add_argument("--noise", type=float, default=1.2,
                  help="spread of the synthetic classes (1.2: Recall@1 near 1 at both scales; 3.5: about 0.03 "
                       "at SOP scale, about 0.6 at CUB scale)")
  args = harness.parse(ap, argv)
  if args._child:
    harness.child_result(run_one(*args._child.split(":")))
    return
  import importlib.util

  families = args.families.split(",")
  if args.peer:
    for family in list(families):
      for peer in PEERS.get(family, ()):
        module = PEER_MODULES[peer.split("_")[0]]
        if importlib.util.find_spec(module) is None:
          print(f"--peer: {module} is not installed; {peer} skipped")
        else:
          families.append(peer)
  checkouts = harness.checkouts(args.other_checkout)
  cases = {}
  for scale in args.scales.split(","):
    for family in families:
      if (scale, family) in SKIP:
        continue
      # A peer does not depend on the checkout: timed once per round, with this one's data.
      for name, path in (checkouts.items() if family in FAMILIES else [("this", harness.REPO)]):
        cases[(name, scale, family)] = (lambda path=path, scale=scale, family=family: harness.in_fresh_process(
            path, __file__, [f"{scale}:{family}:{args.noise}"]))
  print(f"{'round':<6}{'checkout':<9}{'scale':<6}{'family':<15}{'seconds':>9}{'peak MiB':>10}  metrics")
  rows = []

  def report(r, case, out):
    row = {"round": r, "checkout": case[0], **out}
    rows.append(row)
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in row["metrics"].items()}
    print(f"{r:<6}{case[0]:<9}{case[1]:<6}{case[2]:<15}{row['seconds']:>9.1f}{row['peak_rss_mib']:>10.0f}  "
          f"{shown}", flush=True)

  harness.interleaved(args.rounds, cases, report)
  for scale in args.scales.split(","):
    for name in checkouts:
      median = {f: harness.median([x["seconds"] for x in rows if x["scale"] == scale and x["family"] == f
                                   and x["checkout"] == (name if f in FAMILIES else "this")])
                for f in families if (scale, f) not in SKIP}
      for family, peers in PEERS.items():
        for peer in peers:
          if family in median and peer in median:
            print(f"{scale}, {name} checkout: {family} / {peer} = {median[family] / median[peer]:.2f} "
                  f"(median seconds {median[family]:.2f} / {median[peer]:.2f})")
  harness.write_results(args.out, rows)


if __name__ == "__main__":
  from experiments.cli import run_main

  run_main(main, "python3 -m experiments.benchmarks.evaluation")
