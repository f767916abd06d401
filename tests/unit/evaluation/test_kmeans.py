"""k-means: the protocols against scikit-learn, Lloyd's stopping rules, initialisations and restarts."""

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from sklearn.metrics import normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from hdml_jax import evaluation as ev
from hdml_jax.evaluation import _device as ev_device
from hdml_jax.evaluation import _kmeans as ev_kmeans
from tests.helpers.evaluation import blobs, brute_pair_f1, eval_data


class ClusteringTest(chex.TestCase):

  def test_nmi_matches_sklearn(self):
    rng = np.random.default_rng(0)
    for _ in range(5):
      y = rng.integers(0, 7, 200)
      c = np.where(rng.random(200) < 0.6, y, rng.integers(0, 9, 200))
      self.assertAlmostEqual(ev.normalized_mutual_information(y, c),
                             normalized_mutual_info_score(y, c, average_method="arithmetic"), places=10)
    self.assertEqual(ev.normalized_mutual_information([1, 1, 1], [0, 0, 0]), 1.0)

  def test_contingency_matches_sklearn(self):
    rng = np.random.default_rng(1)
    y, c = rng.integers(0, 5, 100) * 10, rng.integers(0, 4, 100) + 3
    cells, ti, pi, a, b = ev.contingency(y, c)
    dense = contingency_matrix(y, c)
    rebuilt = np.zeros_like(dense)
    rebuilt[ti, pi] = cells
    np.testing.assert_array_equal(rebuilt, dense)
    np.testing.assert_array_equal(a, dense.sum(1))
    np.testing.assert_array_equal(b, dense.sum(0))

  def test_pair_f1_matches_brute_force(self):
    rng = np.random.default_rng(2)
    for _ in range(4):
      y, c = rng.integers(0, 4, 40), rng.integers(0, 5, 40)
      self.assertAlmostEqual(ev.pair_f1(y, c), brute_pair_f1(y, c))
    self.assertEqual(ev.pair_f1([0, 1, 2], [0, 1, 2]), 0.0)   # no pairs at all
    self.assertEqual(ev.pair_f1([0, 0, 1, 1], [5, 5, 7, 7]), 1.0)

  @parameterized.parameters("greedy-k-means++", "k-means++", "random")
  def test_kmeans_recovers_separated_blobs(self, init):
    x, y = blobs(seed=3, n=300, classes=5, spread=0.2)
    assign, centers = ev.kmeans(x, 5, seed=0, init=init)
    chex.assert_shape(centers, (5, 5))
    a2, _ = ev.kmeans(x, 5, seed=0, init=init)
    np.testing.assert_array_equal(assign, a2)   # seeded
    if init != "random":
      # Greedy k-means++ recovers the blobs from every seed; plain D^2 sampling occasionally puts two
      # centres in one blob (from which Lloyd cannot recover), as plain k-means++ does.
      recovered = sum(ev.normalized_mutual_information(y, ev.kmeans(x, 5, seed=s, init=init)[0]) == 1.0
                      for s in range(10))
      self.assertGreaterEqual(recovered, 10 if init == "greedy-k-means++" else 8)

  def test_kmeans_inertia_close_to_sklearn(self):
    from sklearn.cluster import KMeans
    x, _ = blobs(seed=4, n=400, classes=12, spread=1.5)
    assign, centers = ev.kmeans(x, 12, seed=0)
    ours = np.sum((x - centers[assign]) ** 2)
    theirs = KMeans(n_clusters=12, n_init=1, random_state=0).fit(x).inertia_
    self.assertLess(ours, 1.15 * theirs)
    # Every point sits at its nearest centre (a Lloyd fixed point).
    d = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
    np.testing.assert_allclose(d[np.arange(len(x)), assign], d.min(1), rtol=1e-5, atol=1e-5)

  @pytest.mark.slow
  def test_reference_protocol_matches_sklearn_nmi(self):
    # The paper's protocol is scikit-learn's KMeans(n_init=10) (greedy k-means++, Lloyd): on overlapping
    # clusters at several k, NMI (mean over two seeds on each side) within 0.01 of scikit-learn's, and the
    # best-of-10 inertia within 1 % (means over the seeds). A single plain k-means++ run falls short on the same data.
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs
    for k, std, n, d in ((8, 4.0, 800, 8), (20, 4.0, 1000, 16), (50, 4.5, 1500, 24)):
      with self.subTest(k=k):
        x, y = make_blobs(n_samples=n, centers=k, n_features=d, cluster_std=std, random_state=k)
        ours, theirs, inertia = [], [], []
        for seed in (0, 1):
          a, _, info = ev.kmeans(x, k, n_init=10, seed=seed, return_info=True)
          km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
          ours.append(ev.normalized_mutual_information(y, a))
          theirs.append(ev.normalized_mutual_information(y, km.labels_))
          inertia.append(info["inertia"] / km.inertia_)
        self.assertLess(abs(np.mean(ours) - np.mean(theirs)), 0.01, (ours, theirs))
        self.assertLess(np.mean(inertia), 1.01, inertia)
        # The inertia is that of the returned assignment and centres.
        a, c, info = ev.kmeans(x, k, n_init=2, return_info=True)
        self.assertAlmostEqual(info["inertia"] / np.sum((x - c[a]) ** 2), 1.0, places=4)

  def test_reference_protocol_equals_sklearn_on_separated_clusters(self):
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs
    for k in (3, 12, 40):
      x, _ = make_blobs(n_samples=20 * k, centers=k, n_features=16, cluster_std=0.5, center_box=(-50, 50),
                        random_state=k)
      ours, _ = ev.kmeans(x, k, n_init=10)
      theirs = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(x)
      self.assertEqual(ev.normalized_mutual_information(theirs, ours), 1.0, k)   # equal up to relabelling

  def test_empty_clusters_are_relocated_as_sklearn_does(self):
    # Two far points and a crowd: a centre placed where no point is nearest is moved to the farthest point.
    x = np.concatenate([np.zeros((20, 2)), [[10.0, 0.0]], [[0.0, 30.0]]]).astype(np.float32)
    x[:20] += np.random.default_rng(0).normal(scale=0.01, size=(20, 2))
    assign, centers = ev.kmeans(x, 3, init="random", seed=3)
    self.assertEqual(len(np.unique(assign)), 3)
    relocated = ev_kmeans._relocate_empty(x, np.array([0] * 21 + [1]), np.arange(22, dtype=np.float32),
                                   np.array([[0.5, 0.0], [0.0, 30.0], [9.0, 9.0]]), np.array([21, 1, 0]), 22)
    np.testing.assert_allclose(relocated[2], x[21])   # the farthest point starts the empty cluster
    np.testing.assert_allclose(relocated[1], x[21])   # ... and its old cluster had it alone: kept as is

  def test_compilations_per_evaluation_are_constant_within_a_bucket(self):
    # Device shapes depend on the bucket of the set size, not on the size: test sets of 150, 160 and 170
    # items (bucket 192) share every compiled function; 200 (bucket 256) compiles once more.
    self.assertEqual([ev.bucket(n) for n in (1, 9, 13, 150, 170, 192, 193, 5924)],
                     [8, 12, 16, 192, 192, 192, 256, 6144])
    fns = (ev_device._knn_chunk, ev_device._assign, ev_kmeans._update_centers, ev_kmeans._greedy_kmeans_pp_init)
    # jax keeps every jitted function's compiled programs in one process-wide cache of 8,192 entries;
    # once a long-running worker has filled it, a function's count stops growing (entries are evicted
    # as they are added). Emptied here, so the counts below are this test's own.
    jax.clear_caches()
    rng = np.random.default_rng(0)
    counts = []
    for n in (150, 160, 170, 200):
      y = np.arange(n) % 20
      x = rng.normal(size=(n, 13)).astype(np.float32) + y[:, None]   # D = 13: shapes no other test uses
      ev.evaluate(x, y, knn_engine="device")   # the engine used on accelerators
      counts.append([f._cache_size() for f in fns])
    self.assertEqual(counts[0], counts[1])
    self.assertEqual(counts[0], counts[2])
    self.assertEqual([b - a for a, b in zip(counts[2], counts[3])], [1, 1, 1, 1])

  def test_protocols(self):
    self.assertEqual(ev.kmeans_settings("auto", 100)["protocol"], "reference")
    self.assertEqual(ev.kmeans_settings("auto", 11316),
                     {"protocol": "fast", "init": "k-means++", "n_init": 1, "max_iter": 20})
    self.assertEqual(ev.kmeans_settings("reference", 11316)["n_init"], 10)
    with self.assertRaisesRegex(ValueError, "kmeans_protocol must be one of"):
      ev.evaluate(np.eye(4), [0, 0, 1, 1], recall_ks=(1,), kmeans_protocol="faiss")
    x, y = blobs(seed=7, n=200, classes=4, spread=0.3)
    fast = ev.evaluate(x, y, kmeans_protocol="fast")
    ref = ev.evaluate(x, y, kmeans_protocol="reference")
    self.assertEqual(set(fast), set(ref))
    with self.assertRaisesRegex(ValueError, "n_init must be a positive integer"):
      ev.kmeans(x, 4, n_init=0)

  def test_kmeans_batched_init_and_duplicates(self):
    x, _ = blobs(seed=5, n=200, classes=20, spread=0.5)
    assign, _ = ev.kmeans(x, 20, init_per_round=4)
    self.assertEqual(assign.shape, (200,))
    dup = np.repeat(x[:3], 10, axis=0)   # 3 distinct points, k = 5
    assign, centers = ev.kmeans(dup, 5)
    self.assertTrue(np.all(np.isfinite(centers)))
    with self.assertRaisesRegex(ValueError, r"k=31 must lie in \[1, 30\]"):
      ev.kmeans(dup, 31)
    with self.assertRaisesRegex(ValueError, "init must be"):
      ev.kmeans(dup, 2, init="farthest")

  def test_device_kmeans_pp_init(self):
    # 50 copies of one point and one far point: whichever is drawn first, the other location must
    # come second (the only one at a positive distance); padding rows (weight 0) are never drawn.
    x = np.concatenate([np.zeros((50, 2)), [[10.0, 0.0]], np.full((13, 2), 5.0)]).astype(np.float32)
    w = np.concatenate([np.ones(51), np.zeros(13)]).astype(np.float32)
    for seed in range(6):
      idx = np.asarray(ev_kmeans._kmeans_pp_init(x, w, jax.random.key(seed), k=2, per_round=1))
      self.assertEqual(sorted(x[idx, 0].tolist()), [0.0, 10.0])
      idx = np.asarray(ev_kmeans._kmeans_pp_init(x, w, jax.random.key(seed), k=8, per_round=3))
      self.assertTrue(np.all(idx < 51), idx)                    # no padding row
      self.assertEqual(len(set(idx.tolist())), 8)               # distinct points (Gumbel top-k)
      self.assertIn(50, idx.tolist())                           # the far point
      np.testing.assert_array_equal(idx, ev_kmeans._kmeans_pp_init(x, w, jax.random.key(seed), k=8, per_round=3))
    # Through kmeans: three distinct locations, k = 5, plain k-means++ puts a centre on each.
    dup = np.repeat(np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 9.0]], np.float32), 10, axis=0)
    assign, centers = ev.kmeans(dup, 5, init="k-means++", init_per_round=2)
    self.assertEqual(len(np.unique(assign)), 3)
    self.assertTrue(np.all(np.isfinite(centers)))

  def test_evaluate_clustering_backends(self):
    x, y = blobs(seed=6, n=150, classes=5, spread=0.2)
    ours = ev.evaluate(x, y)
    sk = ev.evaluate(x, y, kmeans_backend="sklearn")
    self.assertAlmostEqual(ours["nmi"], 1.0)
    self.assertAlmostEqual(sk["nmi"], 1.0)
    self.assertAlmostEqual(ours["f1"], 1.0)
    with self.assertRaisesRegex(ValueError, "backend must be"):
      ev.evaluate(x, y, kmeans_backend="faiss")


class LloydTest(chex.TestCase):
  """``_lloyd`` from given centres against scikit-learn's Lloyd from the same centres."""

  @parameterized.parameters(*[(tol, empty, engine) for tol, empty in ((0.0, False), (1e-4, False), (1e-2, False),
                                                                      (1e-4, True)) for engine in ("host", "device")])
  def test_iterations_match_scikit_learn(self, tol, empty, engine):
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs
    x, _ = make_blobs(n_samples=300, centers=6, n_features=4, cluster_std=3.0 if not empty else 1.0,
                      random_state=0)
    x = x.astype(np.float32)
    init = x[np.random.default_rng(0).choice(300, 6, replace=False)]
    if empty:   # two centres no point is nearest to: relocated to the farthest points, as scikit-learn does
      init[4], init[5] = -1000.0, 1000.0
    tol_abs = tol * float(np.mean(np.var(x.astype(np.float64), axis=0)))
    xp, w = ev_kmeans._pad_rows(x, 64)
    assign, centers, inertia, iters = ev_kmeans._lloyd(x, xp, jnp.asarray(xp), jnp.asarray(w), jnp.asarray(init), 300,
                                                chunk=64, max_iter=300, tol_abs=tol_abs, engine=engine)
    km = KMeans(6, init=init, n_init=1, tol=tol, algorithm="lloyd").fit(x)
    self.assertEqual(iters, km.n_iter_)
    np.testing.assert_array_equal(np.asarray(assign)[:300], km.labels_)
    np.testing.assert_allclose(np.asarray(centers), km.cluster_centers_, rtol=1e-5, atol=1e-5)
    self.assertAlmostEqual(inertia / km.inertia_, 1.0, places=5)
    if tol == 1e-2:
      _, _, _, capped = ev_kmeans._lloyd(x, xp, jnp.asarray(xp), jnp.asarray(w), jnp.asarray(init), 300, chunk=64,
                                  max_iter=3, tol_abs=0.0, engine=engine)
      self.assertEqual(capped, 3)

  def test_relocation_takes_the_farthest_points_ties_to_the_smaller_index(self):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 2))
    d2 = rng.integers(0, 3, 100).astype(np.float32)   # many points tie at the largest distance, 2
    assign = np.zeros(100, int)
    centers = np.zeros((4, 2))
    counts = np.array([100, 0, 0, 0])
    got = ev_kmeans._relocate_empty(x, assign, d2, centers, counts, 100)
    farthest = np.flatnonzero(d2 == 2)[:3]
    np.testing.assert_array_equal(got[1:], x[farthest])
    mean_without = (centers[0] * 100 - x[farthest].sum(axis=0)) / 97
    np.testing.assert_allclose(got[0], mean_without)
    self.assertEqual(counts.tolist(), [100, 0, 0, 0])   # the caller's arrays are left as they were
    self.assertEqual(centers.tolist(), np.zeros((4, 2)).tolist())

  def test_a_point_leaving_a_cluster_of_two_moves_its_centre(self):
    x = np.array([[0.0, 0.0], [4.0, 0.0], [9.0, 9.0]])
    centers = np.array([[2.0, 0.0], [9.0, 9.0], [50.0, 50.0]])
    # Point 1 is the farthest from its centre (the mean of points 0 and 1): it starts cluster 2, and cluster 0's
    # centre becomes point 0.
    got = ev_kmeans._relocate_empty(x, np.array([0, 0, 1]), np.array([4.0, 4.5, 0.0]), centers, np.array([2, 1, 0]), 3)
    np.testing.assert_allclose(got, [[0.0, 0.0], [9.0, 9.0], [4.0, 0.0]])

  def test_relocation_keeps_centres_when_no_cluster_is_empty(self):
    centers = np.ones((2, 2))
    self.assertIs(ev_kmeans._relocate_empty(None, None, None, centers, np.array([1, 1]), 2), centers)


class KmeansRunsTest(chex.TestCase):

  def test_restarts_keep_the_lowest_inertia_run_with_its_seed(self):
    x, _ = eval_data(seed=1, n=90, classes=6, spread=2.5)
    runs = []
    for run in range(4):
      seed = int(np.random.SeedSequence([7, run]).generate_state(1)[0])
      runs.append(ev.kmeans(x, 6, seed=seed, return_info=True))
    inertias = [info["inertia"] for _, _, info in runs]
    self.assertGreater(len(set(np.round(inertias, 3))), 1)   # the restarts differ
    a, c, info = ev.kmeans(x, 6, seed=7, n_init=4, return_info=True)
    best = int(np.argmin(inertias))
    self.assertEqual(info["best_init"], best)
    np.testing.assert_array_equal(a, runs[best][0])
    np.testing.assert_array_equal(c, runs[best][1])
    self.assertEqual(info["inertia"], inertias[best])
    self.assertEqual(info["n_iter"], runs[best][2]["n_iter"])
    self.assertEqual(a.dtype, np.int32)
    self.assertEqual(c.dtype, np.float32)

  def test_equal_restarts_keep_the_first(self):
    # Well-separated blobs: every restart finds the same clustering with the same inertia; the first is kept.
    x, _ = eval_data(seed=3, n=64, classes=4, spread=0.1)
    runs = [ev.kmeans(x, 4, seed=int(np.random.SeedSequence([0, r]).generate_state(1)[0]), return_info=True)[2]
            for r in range(3)]
    self.assertEqual(len({info["inertia"] for info in runs}), 1)
    self.assertEqual(ev.kmeans(x, 4, n_init=3, return_info=True)[2]["best_init"], 0)

  @parameterized.parameters("greedy-k-means++", "k-means++", "random")
  def test_results_are_in_the_input_units(self, init):
    x, _ = eval_data(seed=3, n=64, classes=4, spread=0.5)
    shifted = x * np.float32(8.0) + np.float32(1000.0)   # exact in float32
    a, c, info = ev.kmeans(x, 4, init=init, return_info=True)
    a2, c2, info2 = ev.kmeans(shifted, 4, init=init, return_info=True)
    np.testing.assert_array_equal(a2, a)
    np.testing.assert_allclose(c2, c * 8.0 + 1000.0, rtol=1e-6, atol=1e-3)
    self.assertAlmostEqual(info2["inertia"] / info["inertia"], 64.0, places=4)
    self.assertAlmostEqual(info2["inertia"] / np.sum((shifted.astype(np.float64) - c2[a2]) ** 2), 1.0, places=4)
    np.testing.assert_allclose(c2, [shifted[a2 == j].mean(axis=0) for j in range(4)], rtol=1e-5)

  def test_random_init_and_tol_follow_scikit_learn_from_the_same_centres(self):
    # Forgy's init draws k distinct rows with NumPy's generator seeded as given; from those rows, scikit-learn's
    # Lloyd with the same relative tol (times the mean per-feature variance) stops at the same iteration.
    # Features of very different scales, so that a variance over another axis would change the tolerance.
    from sklearn.cluster import KMeans
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(400, 3)) * np.array([30.0, 1.0, 0.1]) + np.array([5.0, -2.0, 40.0])).astype(np.float32)
    for seed, tol in ((0, 1e-3), (1, 3e-2), (2, 1e-2), (3, 1e-4)):
      rows = np.random.default_rng(seed).choice(400, size=8, replace=False)
      a, c, info = ev.kmeans(x, 8, init="random", seed=seed, tol=tol, return_info=True)
      km = KMeans(8, init=x[rows], n_init=1, tol=tol, algorithm="lloyd").fit(x)
      self.assertEqual(info["n_iter"], km.n_iter_, (seed, tol))
      np.testing.assert_array_equal(a, km.labels_)
    # k = n: the draw is a permutation (without replacement), so every point is its own cluster.
    a, _ = ev.kmeans(x[:12], 12, init="random", seed=4)
    self.assertEqual(sorted(a.tolist()), list(range(12)))

  def test_empty_clusters_take_real_points_not_padding(self):
    # n = 50 is padded to 64 rows with copies of row 0. Forgy's draw (seed 0) is arranged to hold three copies of
    # one point, so two clusters start empty; row 0, an outlier not drawn, is the farthest point from its centre.
    # The two empty clusters must take row 0 and the next-farthest real point, never a padding copy of row 0.
    from sklearn.cluster import KMeans
    n, k = 50, 5
    rows = np.random.default_rng(0).choice(n, size=k, replace=False)
    self.assertNotIn(0, rows)
    self.assertGreater(ev.bucket(n), n)
    x = np.random.default_rng(1).normal(size=(n, 2)).astype(np.float32)
    x[rows[1]] = x[rows[2]] = x[rows[3]] = x[rows[0]]
    x[0] = [40.0, 40.0]
    a, c, info = ev.kmeans(x, k, init="random", seed=0, tol=0.0, return_info=True)
    km = KMeans(k, init=x[rows], n_init=1, tol=0.0, algorithm="lloyd").fit(x)
    np.testing.assert_array_equal(a, km.labels_)
    np.testing.assert_allclose(c, km.cluster_centers_, rtol=1e-5, atol=1e-5)
    self.assertEqual(info["n_iter"], km.n_iter_)
    self.assertEqual(np.sum(a == a[0]), 1)   # the outlier ends alone in its cluster

  def test_max_iter_default_is_scikit_learns(self):
    from sklearn.cluster import KMeans
    self.assertEqual(inspect.signature(ev.kmeans).parameters["max_iter"].default, KMeans().max_iter)

  @pytest.mark.slow
  def test_lloyd_stops_after_300_iterations_by_default(self):
    from sklearn.cluster import KMeans
    # A dense band of points between two clumps: from this start the boundary between the two clusters creeps
    # toward the middle a few points per iteration, and Lloyd needs 377 iterations, as scikit-learn's does
    # from the same rows; by default both stop at 300.
    band = np.linspace(-0.2875, 0.2875, 10000)
    x = np.concatenate([band, np.full(5000, -1.0), np.full(5000, 1.0)])[:, None].astype(np.float32)
    rows = np.random.default_rng(36).choice(len(x), size=2, replace=False)   # Forgy's draw for seed 36
    for max_iter in (1000, None):
      kwargs = {} if max_iter is None else {"max_iter": max_iter}
      km = KMeans(2, init=x[rows], n_init=1, tol=0.0, algorithm="lloyd", **kwargs).fit(x)
      _, _, info = ev.kmeans(x, 2, init="random", seed=36, tol=0.0, return_info=True, **kwargs)
      self.assertEqual(info["n_iter"], km.n_iter_)
      self.assertEqual(info["n_iter"], 377 if max_iter else 300)

  def test_each_init_is_its_own(self):
    x, _ = eval_data(seed=1, n=200, classes=12, spread=2.0)
    runs = {init: [tuple(ev.kmeans(x, 12, init=init, seed=s)[0]) for s in range(3)]
            for init in ("greedy-k-means++", "k-means++", "random")}
    self.assertNotEqual(runs["k-means++"], runs["greedy-k-means++"])
    self.assertNotEqual(runs["random"], runs["greedy-k-means++"])
    self.assertNotEqual(runs["random"], runs["k-means++"])

  def test_tol_and_max_iter_stop_lloyd(self):
    x, _ = eval_data(seed=1, n=200, classes=6, spread=3.0)
    _, _, loose = ev.kmeans(x, 6, tol=1e9, return_info=True)
    _, _, exact = ev.kmeans(x, 6, tol=0.0, return_info=True)
    _, _, default = ev.kmeans(x, 6, return_info=True)
    _, _, capped = ev.kmeans(x, 6, tol=0.0, max_iter=2, return_info=True)
    self.assertEqual(loose["n_iter"], 1)
    self.assertGreater(exact["n_iter"], 2)
    self.assertLessEqual(default["n_iter"], exact["n_iter"])
    self.assertEqual(capped["n_iter"], 2)
    self.assertEqual(set(exact), {"inertia", "n_iter", "best_init"})
    # A negative tol never stops on the shift: the labels' stability alone stops Lloyd, at the same iteration.
    _, _, labels_only = ev.kmeans(x, 6, tol=-1.0, return_info=True)
    self.assertEqual(labels_only["n_iter"], exact["n_iter"])

  @pytest.mark.slow
  def test_chunk_size_and_per_round_are_only_costs(self):
    x, _ = eval_data(seed=1, n=100, classes=6, spread=2.5)
    for init in ("greedy-k-means++", "random"):
      a, c = ev.kmeans(x, 6, init=init)
      a2, c2 = ev.kmeans(x, 6, init=init, chunk_size=8)
      np.testing.assert_array_equal(a2, a)
      np.testing.assert_allclose(c2, c, rtol=1e-6)
    # Plain k-means++ draws max(1, k // 256) centres per round by default: one here, as asked explicitly.
    a, _ = ev.kmeans(x, 6, init="k-means++", seed=2)
    a1, _ = ev.kmeans(x, 6, init="k-means++", seed=2, init_per_round=1)
    np.testing.assert_array_equal(a, a1)
    a_big, _ = ev.kmeans(x, 6, init="k-means++", seed=2, init_per_round=100)   # at most k per round
    self.assertEqual(a_big.shape, (100,))
    # k = 512: two centres per round by default (k // 256).
    x = np.random.default_rng(0).normal(size=(600, 2)).astype(np.float32)
    a = ev.kmeans(x, 512, init="k-means++", seed=0, max_iter=2)[0]
    np.testing.assert_array_equal(a, ev.kmeans(x, 512, init="k-means++", seed=0, max_iter=2, init_per_round=2)[0])
    self.assertFalse(np.array_equal(a, ev.kmeans(x, 512, init="k-means++", seed=0, max_iter=2, init_per_round=1)[0]))

