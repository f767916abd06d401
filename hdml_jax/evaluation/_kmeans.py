"""k-means: seeded initialisations, Lloyd's iterations with scikit-learn's rules, the protocols.

The initialisation and the centre updates run on the device; the assignment
step runs on the engine ``resolve_knn_engine`` names (``_device._assign`` or
``_host._assign_host``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hdml_jax.evaluation import _device, _exact, _host
from hdml_jax.evaluation._checks import _as_embeddings

__all__ = ["FAST_MAX_ITER", "KMEANS_INITS", "KMEANS_PROTOCOLS", "REFERENCE_MAX_K", "kmeans", "kmeans_settings"]


#: The initialisations :func:`kmeans` accepts (``init=``).
KMEANS_INITS = ("greedy-k-means++", "k-means++", "random")


@functools.partial(jax.jit, static_argnames=("k",))
def _update_centers(x, weights, assign, old_centers, *, k):
  sums = jax.ops.segment_sum(x * weights[:, None], assign, num_segments=k)
  counts = jax.ops.segment_sum(weights, assign, num_segments=k)
  new = sums / jnp.maximum(counts, 1.0)[:, None]
  return jnp.where(counts[:, None] > 0, new, old_centers), counts


def _pad_rows(x: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
  n = x.shape[0]
  pad = (-n) % multiple
  w = np.ones(n + pad, np.float32)
  if pad:
    x = np.concatenate([x, np.repeat(x[:1], pad, axis=0)])
    w[n:] = 0.0
  return x, w


def _d2_to(x, x_sq, weights, idx):
  """``[len(idx), n]`` squared distances from the points ``idx`` to every point, zero for padding rows."""
  dot = jnp.matmul(x[idx], x.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(x_sq[idx][:, None] + x_sq[None, :] - 2.0 * dot, 0.0) * weights[None, :]


@functools.partial(jax.jit, static_argnames=("k", "per_round"))
def _kmeans_pp_init(x, weights, key, *, k, per_round):
  """Plain k-means++ (D^2 sampling) on device, ``per_round`` centres per round: indices of the k centres.

  Each round draws ``per_round`` distinct points with probability
  proportional to their squared distance to the nearest centre so far
  (Gumbel top-k: sampling without replacement); points at distance zero are
  drawn only when no other point is left, a point already chosen and the
  padding rows never.
  """
  n = x.shape[0]
  x_sq = jnp.sum(jnp.square(x), axis=1)
  key, sub = jax.random.split(key)
  first = jax.random.choice(sub, n, p=weights / jnp.sum(weights)).astype(jnp.int32)
  closest = _d2_to(x, x_sq, weights, first[None])[0]
  rounds = -(-(k - 1) // per_round)
  chosen = jnp.zeros((1 + rounds * per_round,), jnp.int32).at[0].set(first)
  free = (weights > 0).at[first].set(False)   # real points not yet chosen

  def body(r, carry):
    closest, chosen, free, key = carry
    key, sub = jax.random.split(key)
    g = jax.random.gumbel(sub, (n,), jnp.float32)
    score = jnp.where(closest > 0, jnp.log(jnp.where(closest > 0, closest, 1.0)) + g, g - 1e4)
    _, picks = jax.lax.top_k(jnp.where(free, score, -jnp.inf), per_round)
    closest = jnp.minimum(closest, jnp.min(_d2_to(x, x_sq, weights, picks), axis=0))
    chosen = jax.lax.dynamic_update_slice(chosen, picks.astype(jnp.int32), (1 + r * per_round,))
    return closest, chosen, free.at[picks].set(False), key

  _, chosen, _, _ = jax.lax.fori_loop(0, rounds, body, (closest, chosen, free, key))
  return chosen[:k]


@functools.partial(jax.jit, static_argnames=("k", "trials"))
def _greedy_kmeans_pp_init(x, weights, key, *, k, trials):
  """Greedy k-means++ (scikit-learn's ``_kmeans_plusplus``) on device: indices of the k centres.

  The first centre is drawn with probability proportional to the weight;
  every next one from ``trials`` candidates drawn by D^2 sampling, keeping
  the candidate that lowers the total potential most.
  """
  n = x.shape[0]
  x_sq = jnp.sum(jnp.square(x), axis=1)
  d2_to = functools.partial(_d2_to, x, x_sq, weights)

  key, sub = jax.random.split(key)
  first = jax.random.choice(sub, n, p=weights / jnp.sum(weights))
  closest = d2_to(first[None])[0]
  chosen = jnp.zeros((k,), jnp.int32).at[0].set(first.astype(jnp.int32))

  def body(c, carry):
    closest, chosen, key = carry
    key, sub = jax.random.split(key)
    cumulative = jnp.cumsum(closest)
    r = jax.random.uniform(sub, (trials,), closest.dtype) * cumulative[-1]
    cand = jnp.minimum(jnp.searchsorted(cumulative, r), n - 1).astype(jnp.int32)
    cand_d2 = jnp.minimum(closest[None, :], d2_to(cand))
    best = jnp.argmin(jnp.sum(cand_d2, axis=1))
    return cand_d2[best], chosen.at[c].set(cand[best]), key

  _, chosen, _ = jax.lax.fori_loop(1, k, body, (closest, chosen, key))
  return chosen


def _relocate_empty(x, assign, d2, centers, counts, n):
  """scikit-learn's rule for empty clusters: each takes one of the points farthest from their centres."""
  empty = np.flatnonzero(counts == 0)
  if empty.size == 0:
    return centers
  centers, counts = np.array(centers), np.array(counts)
  far = np.argsort(-d2[:n], kind="stable")[:empty.size]
  for cluster, i in zip(empty, far):
    old = assign[i]
    if counts[old] > 1:   # the point leaves its cluster: that centre's mean without it
      centers[old] = (centers[old] * counts[old] - x[i]) / (counts[old] - 1)
      counts[old] -= 1
    centers[cluster] = x[i]
    counts[cluster] = 1
  return centers


def _lloyd(x, xp, xj, wj, centers, n, *, chunk, max_iter, tol_abs, engine):
  """Lloyd iterations with scikit-learn's stopping rule. Returns ``(assign, centers, inertia, iters)``.
  ``engine``: where the assignment step's products run (``"host"``: ``_host._assign_host`` on ``xp``)."""
  k = centers.shape[0]
  if engine == "host":
    assign_step = lambda c: tuple(jnp.asarray(a) for a in _host._assign_host(xp, c))
  else:
    assign_step = lambda c: _device._assign(xj, c, chunk=chunk)
  assign_prev, it = None, 0
  for it in range(1, max_iter + 1):
    assign, d2 = assign_step(centers)
    new_centers, counts = _update_centers(xj, wj, assign, centers, k=k)
    counts = np.asarray(counts)
    if (counts == 0).any():
      new_centers = jnp.asarray(_relocate_empty(x, np.asarray(assign), np.asarray(d2),
                                                np.asarray(new_centers), counts, n))
    shift = float(jnp.sum(jnp.square(new_centers - centers)))
    centers = new_centers
    if assign_prev is not None and bool(jnp.all(assign[:n] == assign_prev[:n])):
      break
    if shift <= tol_abs:
      break
    assign_prev = assign
  assign, d2 = assign_step(centers)   # the labels of the final centres (scikit-learn's last E-step)
  return assign, centers, float(jnp.sum(d2 * wj)), it


def kmeans(
    x,
    k: int,
    *,
    seed: int = 0,
    n_init: int = 1,
    max_iter: int = 300,
    init: str = "greedy-k-means++",
    init_per_round: int | None = None,
    tol: float = 1e-4,
    chunk_size: int = 2048,
    return_info: bool = False,
    engine: str = "auto",
):
  """Lloyd's k-means on device, chunked so memory stays ``O(chunk x k)``.

  Initialisation (seeded): ``"greedy-k-means++"`` (scikit-learn's: each
  centre is the best of ``2 + floor(ln k)`` D^2-sampled candidates, the one
  lowering the potential most), ``"k-means++"`` (plain D^2 sampling; to keep
  large k affordable, ``init_per_round`` centres are drawn per D^2 round, by
  default ``max(1, k // 256)``: exact k-means++ for k < 512) or ``"random"``
  (k distinct points, Forgy). Stops as scikit-learn's Lloyd does: when no
  point changes cluster, or when the squared centre shift summed over
  centres is at most ``tol`` times the mean per-feature variance, or after
  ``max_iter`` iterations; the labels returned are those of the final
  centres. An empty cluster is moved to the point farthest from its centre
  (scikit-learn's rule). ``n_init`` restarts from different seeds keep the
  run with the lowest inertia (``n_init=10`` with the greedy init is the
  protocol of the paper's scikit-learn ``KMeans``). ``engine`` (as for
  the kNN, ``resolve_knn_engine``): where Lloyd's assignment step runs,
  XLA on the device or BLAS on host threads (the default on a CPU backend);
  the initialisation and the centre updates run on the device either way.

  Returns:
    ``(assignments [N] int32, centres [k, D])``; with ``return_info``, a
    third item ``{"inertia", "n_iter", "best_init"}``.
  """
  where = "kmeans"
  x = _as_embeddings(x, "x", where)
  n = x.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f"{where}: k={k} must lie in [1, {n}] (the number of points).")
  if init not in KMEANS_INITS:
    raise ValueError(f"{where}: init must be one of {KMEANS_INITS}, got {init!r}.")
  if not isinstance(n_init, (int, np.integer)) or n_init < 1:
    raise ValueError(f"{where}: n_init must be a positive integer, got {n_init!r}.")
  if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
    raise ValueError(f"{where}: max_iter must be a positive integer, got {max_iter!r}.")
  engine = _exact.resolve_knn_engine(engine)
  # Centred and scaled by a power of two: any finite offset or scale clusters alike.
  x, _, center, unit = _exact._conditioned(x, x)
  chunk = min(chunk_size, _device.bucket(n))   # device shapes depend on the bucket of n only
  xp, w = _pad_rows(x, chunk)
  xj, wj = jnp.asarray(xp), jnp.asarray(w)
  tol_abs = tol * float(np.mean(np.var(x.astype(np.float64), axis=0)))
  best = None
  for run in range(n_init):
    run_seed = seed if n_init == 1 else np.random.SeedSequence([seed, run]).generate_state(1)[0]
    if init == "random":
      centers = x[np.random.default_rng(run_seed).choice(n, size=k, replace=False)]
    elif init == "k-means++":
      idx = _kmeans_pp_init(xj, wj, jax.random.key(int(run_seed)), k=k,
                            per_round=min(k, init_per_round or max(1, k // 256)))
      centers = xp[np.asarray(idx)]
    else:
      idx = _greedy_kmeans_pp_init(xj, wj, jax.random.key(int(run_seed)), k=k, trials=2 + int(np.log(k)))
      centers = xp[np.asarray(idx)]
    assign, centers, inertia, iters = _lloyd(x, xp, xj, wj, jnp.asarray(centers, jnp.float32), n, chunk=chunk,
                                             max_iter=max_iter, tol_abs=tol_abs, engine=engine)
    if best is None or inertia < best[2]:
      best = (assign, centers, inertia, iters, run)
  assign, centers, inertia, iters, run = best
  out = (np.asarray(assign)[:n], (np.asarray(centers, np.float64) * unit + center).astype(np.float32))
  if return_info:
    return (*out, {"inertia": inertia * unit ** 2, "n_iter": iters, "best_init": run})
  return out


#: The clustering protocols of NMI and F1 (see :func:`kmeans_settings`).
KMEANS_PROTOCOLS = ("auto", "reference", "fast")

#: ``"auto"`` uses the reference protocol up to this many clusters, the fast one above.
REFERENCE_MAX_K = 1024

#: The ``"fast"`` protocol's Lloyd budget: that of faiss's k-means in pytorch-metric-learning.
FAST_MAX_ITER = 20


def kmeans_settings(protocol: str, k: int) -> dict:
  """The k-means settings of a protocol for ``k`` clusters (``"auto"`` resolved).

  ``"reference"``: scikit-learn's ``KMeans`` of the paper's time, greedy
  k-means++ with ``n_init=10``, ``max_iter=300``, ``tol=1e-4``. ``"fast"``:
  one plain k-means++ run whose D^2 sampling draws ``max(1, k // 256)``
  centres per round (for SOP-scale k), then at most 20 Lloyd iterations
  (the budget of faiss's k-means as pytorch-metric-learning runs it; at SOP
  scale scikit-learn's tolerance is not reached within hundreds). ``"auto"``: reference for
  ``k <= 1024`` (CUB, Cars), fast above (SOP, k = 11,316).
  """
  if protocol not in KMEANS_PROTOCOLS:
    raise ValueError(f"kmeans_protocol must be one of {KMEANS_PROTOCOLS}, got {protocol!r}.")
  if protocol == "auto":
    protocol = "reference" if k <= REFERENCE_MAX_K else "fast"
  if protocol == "reference":
    return {"protocol": "reference", "init": "greedy-k-means++", "n_init": 10, "max_iter": 300}
  return {"protocol": "fast", "init": "k-means++", "n_init": 1, "max_iter": FAST_MAX_ITER}
