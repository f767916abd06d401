"""The metric losses against pytorch-metric-learning, value and gradient.

A comparison script, not a test and not a dependency: it needs torch and
pytorch-metric-learning installed by hand (``pip install torch
pytorch-metric-learning``) and exits with a message when they are not.

For random class-balanced batches (several seeds, batch shapes and scales,
float64 on both sides) it computes each loss and its gradient with respect
to the embeddings in hdml_jax and in PML, configured so that both compute
the same quantity, and prints the largest differences (relative to the
value's scale). Where the two libraries define a loss differently the
PML side is composed from PML's own parts to the project's definition, and
the table says so:

Every PML distance is given ``normalize_embeddings=False`` (PML
L2-normalises by default; the project's losses take the embeddings as they
are, as the reference does).

* N-pair: ``hdml_jax.losses.npair_loss(a, p)`` (anchors against positives,
  raw inner products) is PML's ``NPairsLoss`` on ``[a; p]``. ``npair_loss_from_labels`` also
  contrasts each row with the other anchors (multi-class, soft targets) and
  has no PML counterpart; it is checked against NumPy in the tests.
* triplet, ``mining="all"``: ``TripletMarginLoss`` (``LpDistance`` without
  normalisation, ``MeanReducer``: the mean over every valid triplet, zero
  ones included).
* triplet, ``"batch_hard"``: ``BatchHardMiner`` + ``TripletMarginLoss``.
* triplet, ``"semi_hard"``: ``TripletMarginMiner(type_of_triplets=
  "semihard")`` keeps *every* triplet with ``0 < d(a,n) - d(a,p) <= m``;
  the project keeps, per positive pair, the *nearest* such negative (the
  FaceNet rule), so PML's mined triplets are reduced to that one per pair
  before its ``TripletMarginLoss``.
* contrastive: the project's is Hadsell et al.'s squared form,
  ``d^2`` for positives and ``max(0, m - d)^2`` for negatives, averaged
  over all ``B (B - 1)`` ordered pairs; PML's ``ContrastiveLoss`` uses
  ``max(0, d - m_pos)`` and ``max(0, m_neg - d)`` unsquared and averages
  positives and negatives apart. PML's per-pair losses
  (``DoNothingReducer``) are squared and averaged over all pairs.
* Multi-Similarity, lifted structure, circle, supervised contrastive
  (``hdml_jax.losses``): PML's ``MultiSimilarityMiner`` +
  ``MultiSimilarityLoss``, ``GeneralizedLiftedStructureLoss`` (unnormalised
  ``LpDistance``), ``CircleLoss`` and ``SupConLoss``, each with the same
  constants (the papers' defaults: alpha 2, beta 50, base 0.5, epsilon 0.1;
  margins 0 and 1; m 0.4, gamma 80; temperature 0.1) and its own default
  reducer: in these class-balanced batches every anchor has a valid pair, so
  PML's mean over anchors (or over non-zero anchors) is the project's.

* Proxy losses (``hdml_jax.losses``): the proxies (PML's ``proxies``,
  or the class weights ``W`` transposed, for the softmax family) are set to
  the same random ``[classes + 2, dim]`` array, so two proxies have no row in
  the batch, and the gradient is compared for the embeddings and the
  proxies alike: ``ProxyAnchorLoss`` (margin 0.1, alpha 32),
  ``ProxyNCALoss`` (PML's softmax includes the positive proxy: the
  project's ``include_positive=True``; softmax scale 1),
  ``NormalizedSoftmaxLoss`` (temperature 0.05), ``CosFaceLoss`` (0.35, 64)
  and ``ArcFaceLoss`` (margin given in degrees: 0.5 rad, scale 64).
* Margin loss: ``MarginLoss`` (margin 0.2, beta 1.2, nu 0) on every triplet,
  and on the triplets of the project's ``distance_weighted_sampling`` passed
  to PML as its ``indices_tuple``; with ``learn_beta`` and one beta per class
  the beta's gradient is compared too. The sampling itself is random on
  both sides, so it is compared in distribution: the total-variation
  distance between the negatives the project draws and those PML's
  ``DistanceWeightedMiner`` draws (cutoff 0.5, non-zero loss cutoff 1.4),
  next to the distance between two PML runs of the same size.

* Cross-batch memory: ``hdml_jax.losses.cross_batch_loss`` against
  PML's ``CrossBatchMemory`` wrapping the same loss (and, for
  Multi-Similarity, its miner), over sequences of batches that fill the
  memory and wrap around it; value and embedding gradient at every step.

    python3 -m experiments.benchmarks.compare_pml                 # prints the table
    python3 -m experiments.benchmarks.compare_pml --out compare_pml.json
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from experiments.benchmarks import harness


def _batches(seeds, shapes, scales):
  for seed in seeds:
    for classes, per_class, dim in shapes:
      for scale in scales:
        rng = np.random.default_rng(seed)
        labels = np.repeat(np.arange(classes), per_class)
        rng.shuffle(labels)
        centres = rng.normal(size=(classes, dim))
        x = scale * (centres[labels] + rng.normal(size=(labels.size, dim)))
        yield {"seed": seed, "classes": classes, "per_class": per_class, "dim": dim, "scale": scale}, x, labels


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--seeds", default="0,1,2,3,4")
  ap.add_argument("--margin", type=float, default=0.5)
  ap.add_argument("--out", default=None, help="also write the results as JSON")
  args = ap.parse_args(argv)
  try:
    import pytorch_metric_learning
    import torch
    from pytorch_metric_learning import distances, losses, miners, reducers
  except ImportError as e:
    sys.exit(f"compare_pml: {e.name} is not installed; this script needs torch and "
             "pytorch-metric-learning (pip install torch pytorch-metric-learning).")
  import jax

  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp

  from hdml_jax import losses as hl

  m = args.margin
  lp = lambda: distances.LpDistance(normalize_embeddings=False, p=2, power=1)

  def ours(name):
    return {
        "npair (a, p layout)": lambda e, y: hl.npair_loss(e[: e.shape[0] // 2], e[e.shape[0] // 2:]),
        "triplet all": lambda e, y: hl.triplet_loss_from_labels(e, y, margin=m, mining="all"),
        "triplet all, sum": lambda e, y: hl.triplet_loss_from_labels(
            e, y, margin=m, mining="all", reduction="sum"),
        "triplet batch_hard": lambda e, y: hl.triplet_loss_from_labels(e, y, margin=m,
                                                                                 mining="batch_hard"),
        "triplet semi_hard": lambda e, y: hl.triplet_loss_from_labels(e, y, margin=m,
                                                                                mining="semi_hard"),
        "contrastive": lambda e, y: hl.contrastive_loss_from_labels(e, y, margin=m),
        "multi-similarity": lambda e, y: hl.multi_similarity_loss(e, y),
        "multi-similarity, no mining": lambda e, y: hl.multi_similarity_loss(e, y, mining=False),
        "lifted structure": lambda e, y: hl.lifted_structure_loss(e, y),
        "circle": lambda e, y: hl.circle_loss(e, y),
        "supervised contrastive": lambda e, y: hl.supervised_contrastive_loss(e, y),
        "margin, all triplets": lambda e, y: hl.margin_loss(e, y),
    }[name]

  proxy_ours = {
      "proxy-anchor": lambda e, y, p: hl.proxy_anchor_loss(e, y, p),
      "proxy-NCA (positive in the softmax)": lambda e, y, p: hl.proxy_nca_loss(e, y, p, include_positive=True),
      "normalized softmax": lambda e, y, p: hl.normalized_softmax_loss(e, y, p),
      "CosFace": lambda e, y, p: hl.cosface_loss(e, y, p),
      "ArcFace": lambda e, y, p: hl.arcface_loss(e, y, p),
      # the per-class beta plays the proxies' part: compared value, embedding and beta gradients
      "margin, sampled triplets, per-class beta": None,
  }

  def proxy_theirs(name, num_classes, dim, proxies):
    import math

    if name == "proxy-anchor":
      loss = losses.ProxyAnchorLoss(num_classes, dim, margin=0.1, alpha=32)
      param = "proxies"
    elif name.startswith("proxy-NCA"):
      loss = losses.ProxyNCALoss(num_classes, dim, softmax_scale=1)
      param = "proxies"
    elif name == "normalized softmax":
      loss, param = losses.NormalizedSoftmaxLoss(num_classes, dim, temperature=0.05), "W"
    elif name == "CosFace":
      loss, param = losses.CosFaceLoss(num_classes, dim, margin=0.35, scale=64), "W"
    elif name == "ArcFace":
      loss, param = losses.ArcFaceLoss(num_classes, dim, margin=math.degrees(0.5), scale=64), "W"
    else:
      raise KeyError(name)
    loss = loss.double()
    value = torch.tensor(proxies.T if param == "W" else proxies, dtype=torch.float64)
    getattr(loss, param).data = value.clone()
    tensor = getattr(loss, param)
    grad = lambda: tensor.grad.numpy().T if param == "W" else tensor.grad.numpy()
    return loss, grad

  def sampled_triplets(neg, y):
    a, p = np.nonzero((y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool))
    n = neg[a, p]
    keep = y[n] != y[a]
    return tuple(torch.as_tensor(t[keep]) for t in (a, p, n))

  def nearest_negative_per_pair(e, triplets):
    a, p, n = (t.numpy() for t in triplets)
    if a.size == 0:
      return triplets
    d_an = torch.cdist(e, e).detach().numpy()[a, n]
    keep = {}
    for i in np.lexsort((n, d_an)):       # nearest first, then the smaller index
      keep.setdefault((a[i], p[i]), i)
    idx = np.array(sorted(keep.values()))
    return tuple(torch.as_tensor(t[idx]) for t in (a, p, n))

  def theirs(name):
    mean, total = reducers.MeanReducer(), reducers.SumReducer()
    if name == "npair (a, p layout)":
      loss = losses.NPairsLoss(distance=distances.DotProductSimilarity(normalize_embeddings=False))
      return lambda e, y: loss(e, y)
    if name in ("triplet all", "triplet all, sum"):
      loss = losses.TripletMarginLoss(margin=m, distance=lp(), reducer=mean if name == "triplet all" else total)
      return lambda e, y: loss(e, y)
    if name == "triplet batch_hard":
      miner, loss = miners.BatchHardMiner(distance=lp()), losses.TripletMarginLoss(margin=m, distance=lp(),
                                                                                   reducer=mean)
      return lambda e, y: loss(e, y, miner(e, y))
    if name == "triplet semi_hard":
      miner = miners.TripletMarginMiner(margin=m, type_of_triplets="semihard", distance=lp())
      loss = losses.TripletMarginLoss(margin=m, distance=lp(), reducer=mean)
      return lambda e, y: loss(e, y, nearest_negative_per_pair(e, miner(e, y)))
    if name == "contrastive":
      loss = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=m, distance=lp(), reducer=reducers.DoNothingReducer())

      def contrastive(e, y):
        out = loss(e, y)   # {"pos_loss": per positive pair, "neg_loss": per negative pair}
        b = e.shape[0]
        return (torch.sum(out["pos_loss"]["losses"] ** 2) + torch.sum(out["neg_loss"]["losses"] ** 2)) / (b * (b - 1))
      return contrastive
    if name == "multi-similarity":
      miner, loss = miners.MultiSimilarityMiner(epsilon=0.1), losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
      return lambda e, y: loss(e, y, miner(e, y))
    if name == "multi-similarity, no mining":
      loss = losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
      return lambda e, y: loss(e, y)
    if name == "lifted structure":
      loss = losses.GeneralizedLiftedStructureLoss(neg_margin=1.0, pos_margin=0.0, distance=lp())
      return lambda e, y: loss(e, y)
    if name == "circle":
      loss = losses.CircleLoss(m=0.4, gamma=80)
      return lambda e, y: loss(e, y)
    if name == "supervised contrastive":
      loss = losses.SupConLoss(temperature=0.1)
      return lambda e, y: loss(e, y)
    if name == "margin, all triplets":
      loss = losses.MarginLoss(margin=0.2, nu=0.0, beta=1.2).double()
      loss.beta.data = torch.tensor([1.2], dtype=torch.float64)   # PML stores beta as float32 (1.2000000477)
      return lambda e, y: loss(e, y)
    raise KeyError(name)

  names = ["npair (a, p layout)", "triplet all", "triplet all, sum", "triplet batch_hard", "triplet semi_hard",
           "contrastive", "multi-similarity", "multi-similarity, no mining", "lifted structure", "circle",
           "supervised contrastive", "margin, all triplets"]
  shapes = [(8, 2, 16), (8, 4, 16), (16, 4, 64), (5, 6, 8)]
  seeds = [int(s) for s in args.seeds.split(",")]
  rows = {n: {"cases": 0, "max_rel_value": 0.0, "max_rel_grad": 0.0, "value_range": [np.inf, -np.inf]}
          for n in names + list(proxy_ours)}
  for n in proxy_ours:
    rows[n]["max_rel_grad_proxies"] = 0.0

  def record(name, v_ours, v_theirs, grads):
    r = rows[name]
    r["cases"] += 1
    r["max_rel_value"] = max(r["max_rel_value"], abs(v_ours - v_theirs) / max(abs(v_theirs), 1e-12))
    for key, (g_ours, g_theirs) in grads.items():
      r[key] = max(r[key], float(np.abs(g_ours - g_theirs).max() / max(np.abs(g_theirs).max(), 1e-12)))
    r["value_range"] = [min(r["value_range"][0], v_ours), max(r["value_range"][1], v_ours)]
  for case, x, y in _batches(seeds, shapes, scales=(0.1, 1.0, 3.0)):
    for name in names:
      if name.startswith("npair"):
        if case["per_class"] != 2:
          continue
        order = np.argsort(y, kind="stable")            # [a; p]: the first of each class, then the second
        order = np.concatenate([order[0::2], order[1::2]])
        xe, ye = x[order], y[order]
      else:
        xe, ye = x, y
      f = ours(name)
      v_ours, g_ours = jax.value_and_grad(lambda e: f(e, jnp.asarray(ye)))(jnp.asarray(xe))
      et = torch.tensor(xe, dtype=torch.float64, requires_grad=True)
      v_theirs = theirs(name)(et, torch.as_tensor(ye))
      v_theirs.backward()
      g_theirs = et.grad.numpy()
      record(name, float(v_ours), v_theirs.item(), {"max_rel_grad": (np.asarray(g_ours), g_theirs)})
    num_classes = case["classes"] + 2
    proxies = np.random.default_rng(case["seed"] + 100).normal(size=(num_classes, case["dim"]))
    for name, f in proxy_ours.items():
      et = torch.tensor(x, dtype=torch.float64, requires_grad=True)
      if f is None:   # the margin loss on sampled triplets, one beta per class
        beta = 1.0 + 0.1 * np.arange(num_classes)
        neg = np.asarray(hl.distance_weighted_sampling(jax.random.key(case["seed"]), jnp.asarray(x),
                                                                jnp.asarray(y)))
        (v_ours, (g_ours, gp_ours)) = jax.value_and_grad(
            lambda e, b: hl.margin_loss(e, jnp.asarray(y), beta=b, negatives=jnp.asarray(neg)),
            argnums=(0, 1))(jnp.asarray(x), jnp.asarray(beta))
        loss = losses.MarginLoss(margin=0.2, nu=0.0, beta=1.0, learn_beta=True, num_classes=num_classes).double()
        loss.beta.data = torch.tensor(beta, dtype=torch.float64)
        v_theirs = loss(et, torch.as_tensor(y), sampled_triplets(neg, y))
        v_theirs.backward()
        gp_theirs = loss.beta.grad.numpy()
      else:
        (v_ours, (g_ours, gp_ours)) = jax.value_and_grad(lambda e, p: f(e, jnp.asarray(y), p), argnums=(0, 1))(
            jnp.asarray(x), jnp.asarray(proxies))
        loss, proxy_grad = proxy_theirs(name, num_classes, case["dim"], proxies)
        v_theirs = loss(et, torch.as_tensor(y))
        v_theirs.backward()
        gp_theirs = proxy_grad()
      record(name, float(v_ours), v_theirs.item(), {"max_rel_grad": (np.asarray(g_ours), et.grad.numpy()),
                                                    "max_rel_grad_proxies": (np.asarray(gp_ours), gp_theirs)})
  print(f"pytorch-metric-learning {pytorch_metric_learning.__version__}, torch {torch.__version__}, "
        f"jax {jax.__version__}; float64; margin {m}; seeds {seeds}; batches (classes, per class, dim) "
        f"{shapes} at scales 0.1, 1, 3")
  print("| loss | PML side | batches | loss values | max relative difference, value | "
        "max relative difference, gradient |")
  print("|---|---|---|---|---|---|")
  pml_side = {"npair (a, p layout)": "NPairsLoss, unnormalised dot product", "triplet all": "TripletMarginLoss, MeanReducer",
              "triplet all, sum": "TripletMarginLoss, SumReducer",
              "triplet batch_hard": "BatchHardMiner + TripletMarginLoss",
              "triplet semi_hard": "TripletMarginMiner(semihard), nearest negative per pair, + TripletMarginLoss",
              "contrastive": "ContrastiveLoss per pair, squared, mean over all pairs",
              "multi-similarity": "MultiSimilarityMiner + MultiSimilarityLoss",
              "multi-similarity, no mining": "MultiSimilarityLoss", "lifted structure": "GeneralizedLiftedStructureLoss",
              "circle": "CircleLoss", "supervised contrastive": "SupConLoss",
              "margin, all triplets": "MarginLoss (beta 1.2)",
              "proxy-anchor": "ProxyAnchorLoss", "proxy-NCA (positive in the softmax)": "ProxyNCALoss",
              "normalized softmax": "NormalizedSoftmaxLoss", "CosFace": "CosFaceLoss", "ArcFace": "ArcFaceLoss",
              "margin, sampled triplets, per-class beta": "MarginLoss(learn_beta, num_classes) on our sampled triplets"}
  for name, r in rows.items():
    lo, hi = r["value_range"]
    extra = f" (proxies / beta: {r['max_rel_grad_proxies']:.1e})" if "max_rel_grad_proxies" in r else ""
    print(f"| {name} | {pml_side[name]} | {r['cases']} | {lo:.3g} to {hi:.3g} | {r['max_rel_value']:.1e} | "
          f"{r['max_rel_grad']:.1e}{extra} |")
  sampling = _compare_sampling(jax, jnp, torch, miners, hl)
  print(f"distance-weighted sampling, {sampling['draws']} draws per anchor on each side: total-variation distance "
        f"project vs PML {sampling['tv_project_pml']:.3f}, PML vs PML {sampling['tv_pml_pml']:.3f} (sampling noise)")
  xbm = _compare_xbm(jax, jnp, torch, losses, miners, reducers, distances, seeds)
  print("\ncross-batch memory (cross_batch_loss vs CrossBatchMemory, memory 30 rows, batches of 12, 5 steps a case):")
  print("| loss | cases | steps | max relative difference, value | max relative difference, gradient |")
  print("|---|---|---|---|---|")
  for name, r in xbm.items():
    print(f"| {name} | {r['cases']} | {r['steps']} | {r['max_rel_value']:.1e} | {r['max_rel_grad']:.1e} |")
  if args.out:
    harness.write_results(args.out, {"pml": pytorch_metric_learning.__version__, "margin": m, "rows": rows,
                                     "sampling": sampling, "cross_batch_memory": xbm})


def _compare_xbm(jax, jnp, torch, losses, miners, reducers, distances, seeds, steps: int = 5) -> dict:
  """Cross-batch memory: ``cross_batch_loss`` against PML's ``CrossBatchMemory``, step by step, value and gradient.

  Each case feeds ``steps`` class-balanced batches of 12 (4 classes x 3)
  into a memory of 30 rows (filled at step 3, then wrapping); both sides
  enqueue the batch and compare it with the memory, own copies left out.
  """
  from hdml_jax import losses as hl

  lp = lambda: distances.LpDistance(normalize_embeddings=False, p=2, power=1)

  def contrastive_theirs():
    loss = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0, distance=lp(), reducer=reducers.DoNothingReducer())

    # The project's squared contrastive loss, mean over the pairs formed (named so CrossBatchMemory accepts it).
    class ContrastiveLoss(torch.nn.Module):
      def forward(self, e, y, indices_tuple, ref_emb, ref_labels):
        out = loss(e, y, indices_tuple, ref_emb, ref_labels)
        pos, neg = out["pos_loss"]["losses"], out["neg_loss"]["losses"]
        return (torch.sum(pos ** 2) + torch.sum(neg ** 2)) / (len(indices_tuple[0]) + len(indices_tuple[2]))
    return ContrastiveLoss()

  cases = {
      "multi-similarity": (hl.multi_similarity_loss, {},
                           lambda: (losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5),
                                    miners.MultiSimilarityMiner(epsilon=0.1))),
      "multi-similarity, no mining": (hl.multi_similarity_loss, {"mining": False},
                                      lambda: (losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), None)),
      "triplet all": (hl.triplet_loss_from_labels, {"margin": 0.5},
                      lambda: (losses.TripletMarginLoss(margin=0.5, distance=lp(), reducer=reducers.MeanReducer()),
                               None)),
      "contrastive": (hl.contrastive_loss_from_labels, {"margin": 1.0}, lambda: (contrastive_theirs(), None)),
      "lifted structure": (hl.lifted_structure_loss, {},
                           lambda: (losses.GeneralizedLiftedStructureLoss(neg_margin=1.0, pos_margin=0.0,
                                                                          distance=lp()), None)),
      "circle": (hl.circle_loss, {}, lambda: (losses.CircleLoss(m=0.4, gamma=80), None)),
      "supervised contrastive": (hl.supervised_contrastive_loss, {},
                                 lambda: (losses.SupConLoss(temperature=0.1), None)),
  }
  out = {}
  for name, (ours, kwargs, make) in cases.items():
    row = {"cases": 0, "steps": 0, "max_rel_value": 0.0, "max_rel_grad": 0.0}
    for seed in seeds:
      for scale in (0.3, 1.0):
        rng = np.random.default_rng(seed)
        theirs, miner = make()
        xbm = losses.CrossBatchMemory(theirs, 8, memory_size=30, miner=miner)
        xbm.embedding_memory = xbm.embedding_memory.double()
        memory = hl.init_memory(30, 8, jnp.float64)
        for _ in range(steps):
          y = np.repeat(rng.choice(10, size=4, replace=False), 3)
          x = scale * (np.eye(10, 8)[y] * 2 + rng.normal(size=(12, 8)))
          (v, new_memory), g = jax.value_and_grad(
              lambda e: hl.cross_batch_loss(ours, memory, e, jnp.asarray(y), **kwargs), has_aux=True)(
              jnp.asarray(x))
          memory = new_memory
          et = torch.tensor(x, dtype=torch.float64, requires_grad=True)
          vt = xbm(et, torch.as_tensor(y))
          vt.backward()
          row["steps"] += 1
          row["max_rel_value"] = max(row["max_rel_value"], abs(float(v) - vt.item()) / max(abs(vt.item()), 1e-12))
          gt = et.grad.numpy()
          row["max_rel_grad"] = max(row["max_rel_grad"],
                                    float(np.abs(np.asarray(g) - gt).max() / max(np.abs(gt).max(), 1e-12)))
        row["cases"] += 1
    out[name] = row
  return out


def _compare_sampling(jax, jnp, torch, miners, hl, draws: int = 400):
  """Mean over anchors of the total-variation distance between sampled-negative frequencies."""
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(4), 4)
  x = rng.normal(size=(16, 8)) * 0.4 + np.eye(8)[y] * 0.7
  b = len(y)

  def pml_counts(seed):
    np.random.seed(seed)
    miner = miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
    counts = np.zeros((b, b))
    et = torch.tensor(x, dtype=torch.float64)
    while counts.sum(axis=1).min() < draws * 3:   # each (anchor, positive) pair draws one negative
      a, _, n = (t.numpy() for t in miner(et, torch.as_tensor(y)))
      np.add.at(counts, (a, n), 1)
    return counts

  counts = np.zeros((b, b))
  for k in range(draws):
    neg = np.asarray(hl.distance_weighted_sampling(jax.random.key(k), jnp.asarray(x), jnp.asarray(y)))
    pos = (y[:, None] == y[None, :]) & ~np.eye(b, dtype=bool)
    for a in range(b):
      np.add.at(counts[a], neg[a][pos[a]], 1)
  freq = lambda c: c / c.sum(axis=1, keepdims=True)
  tv = lambda p, q: float(np.mean(0.5 * np.abs(p - q).sum(axis=1)))
  first, second = freq(pml_counts(1)), freq(pml_counts(2))
  return {"draws": draws * 3, "tv_project_pml": tv(freq(counts), first), "tv_pml_pml": tv(first, second)}


if __name__ == "__main__":
  from experiments.cli import run_main

  run_main(main, "python3 -m experiments.benchmarks.compare_pml")
