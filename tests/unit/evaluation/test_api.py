"""The entry points: input messages, protocols and options of evaluate, evaluate_query_gallery and cluster_metrics."""

import math

import chex
import numpy as np
import pytest
from absl.testing import parameterized

from hdml_jax import evaluation as ev
from hdml_jax.evaluation import _checks as ev_checks
from hdml_jax.evaluation import _kmeans as ev_kmeans
from tests.helpers.evaluation import eval_data


class InputMessagesTest(chex.TestCase):
  """Every input check names the entry point and the argument, word for word."""

  def _message(self, exc, fn, *args, **kwargs):
    with self.assertRaises(exc) as cm:
      fn(*args, **kwargs)
    return str(cm.exception)

  def test_embedding_checks_in_every_entry_point(self):
    x, y = eval_data()
    calls = {
        "evaluate": (lambda e: ev.evaluate(e, y[:len(e)], recall_ks=(1,), clustering=False), "embeddings"),
        "evaluate_query_gallery/q": (lambda e: ev.evaluate_query_gallery(e, y[:len(e)], x, y, recall_ks=(1,)),
                                     "queries"),
        "evaluate_query_gallery/g": (lambda e: ev.evaluate_query_gallery(x, y, e, y[:len(e)], recall_ks=(1,)),
                                     "gallery"),
        "nearest_neighbors/q": (lambda e: ev.nearest_neighbors(e, k=1), "queries"),
        "nearest_neighbors/g": (lambda e: ev.nearest_neighbors(x, e, k=1), "gallery"),
        "kmeans": (lambda e: ev.kmeans(e, 1), "x"),
    }
    bad = np.repeat(x[:1], 9, axis=0)
    bad[[1, 2, 4, 5, 6, 8], 0] = np.nan
    bad[7, 2] = -np.inf
    for where, (call, name) in calls.items():
      where = where.split("/")[0]
      with self.subTest(where=where, name=name):
        self.assertEqual(self._message(ValueError, call, x[0]),
                         f"{where}: `{name}` must be [N, D], got shape (3,).")
        self.assertEqual(self._message(TypeError, call, np.ones((4, 3), np.int32)),
                         f"{where}: `{name}` must be floating point, got dtype int32.")
        self.assertEqual(self._message(ValueError, call, np.zeros((0, 3), np.float32)),
                         f"{where}: `{name}` is empty.")
        self.assertEqual(self._message(ValueError, call, bad),
                         f"{where}: `{name}` has 7 rows with NaN or infinite values (first rows: [1, 2, 4, 5, 6]).")

  def test_label_checks_in_every_entry_point(self):
    x, y = eval_data()
    calls = {
        ("evaluate", "labels"): lambda l: ev.evaluate(x, l, recall_ks=(1,), clustering=False),
        ("evaluate_query_gallery", "query_labels"): lambda l: ev.evaluate_query_gallery(x, l, x, y, recall_ks=(1,)),
        ("evaluate_query_gallery", "gallery_labels"): lambda l: ev.evaluate_query_gallery(x, y, x, l,
                                                                                           recall_ks=(1,)),
    }
    for (where, name), call in calls.items():
      with self.subTest(name=name):
        self.assertEqual(self._message(ValueError, call, y[:39]),
                         f"{where}: `{name}` must have shape (40,) to match the embeddings, got (39,).")
        self.assertEqual(self._message(ValueError, call, y[:, None]),
                         f"{where}: `{name}` must have shape (40,) to match the embeddings, got (40, 1).")
        self.assertEqual(self._message(TypeError, call, y.astype(np.float64)),
                         f"{where}: `{name}` must hold integer class ids, got dtype float64.")

  def test_embeddings_of_any_float_width_are_searched_in_float32(self):
    x, y = eval_data()
    want = ev.evaluate(x, y, clustering=False)
    for dtype in (np.float16, np.float64):
      with self.subTest(dtype=np.dtype(dtype).name):
        x_cast = x.astype(dtype)
        np.testing.assert_array_equal(ev_checks._as_embeddings(x_cast, "x", "here"), x_cast.astype(np.float32))
        self.assertEqual(ev_checks._as_embeddings(x_cast, "x", "here").dtype, np.float32)
        got = ev.evaluate(x_cast.astype(np.float32), y, clustering=False)
        self.assertEqual(got, want)
    labels = np.arange(5, dtype=np.uint8)
    self.assertIs(ev_checks._as_labels(labels, 5, "y", "here"), labels)   # labels are returned as given

  def test_evaluate_messages(self):
    x, y = eval_data()
    self.assertEqual(self._message(ValueError, ev.evaluate, x, np.zeros(40, int)),
                     "evaluate: need at least 2 classes to evaluate, got 1.")
    for ks in ((0, 4), (1, 40)):
      self.assertEqual(self._message(ValueError, ev.evaluate, x, y, recall_ks=ks),
                       f"evaluate: recall K values {sorted(ks)} must lie in [1, 39] (N - 1 = the gallery "
                       "without the query).")
    self.assertEqual(self._message(ValueError, ev.evaluate, x, y, kmeans_protocol="faiss"),
                     "kmeans_protocol must be one of ('auto', 'reference', 'fast'), got 'faiss'.")
    self.assertEqual(self._message(ValueError, ev.evaluate, x, y, kmeans_backend="faiss"),
                     "cluster_metrics: backend must be 'jax' or 'sklearn', got 'faiss'.")

  def test_query_gallery_messages(self):
    x, y = eval_data()
    for ks in ((0, 1), (1, 41)):
      self.assertEqual(self._message(ValueError, ev.evaluate_query_gallery, x, y, x, y, recall_ks=ks),
                       f"evaluate_query_gallery: recall K values {sorted(ks)} must lie in [1, 40] (the gallery "
                       "size).")
    got = ev.evaluate_query_gallery(x, y, x, y, recall_ks=(1, 40))   # the whole gallery is allowed
    self.assertEqual(got["recall@40"], 1.0)

  def test_nearest_neighbors_messages(self):
    x, _ = eval_data(n=6)
    self.assertEqual(self._message(ValueError, ev.nearest_neighbors, x, k=6),
                     "nearest_neighbors: k=6 neighbours requested but only 5 gallery items are available "
                     "(the query itself excluded).")
    self.assertEqual(self._message(ValueError, ev.nearest_neighbors, x, k=0),
                     "nearest_neighbors: k=0 neighbours requested but only 5 gallery items are available "
                     "(the query itself excluded).")
    self.assertEqual(self._message(ValueError, ev.nearest_neighbors, x, x[:4], k=5),
                     "nearest_neighbors: k=5 neighbours requested but only 4 gallery items are available.")
    self.assertEqual(self._message(ValueError, ev.nearest_neighbors, x, x[:, :2], k=1),
                     "nearest_neighbors: queries (6, 3) and gallery (6, 2) differ in D.")
    idx, d2 = ev.nearest_neighbors(x, k=5)    # the largest k allowed, either way
    self.assertEqual((idx.shape, idx.dtype, d2.dtype), ((6, 5), np.int32, np.float32))
    idx, d2 = ev.nearest_neighbors(x, x[:4], k=4, return_float64=True)
    self.assertEqual((idx.shape, idx.dtype, d2.dtype), ((6, 4), np.int32, np.float64))
    big = x.astype(np.float64) * 2.0 ** 66
    d = ((big[:, None] - big[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    self.assertEqual(self._message(ValueError, ev.nearest_neighbors, big.astype(np.float32), k=1),
                     f"nearest_neighbors: squared distances up to {d.min(axis=1).max():.3g} exceed the float32 "
                     "range; rescale the embeddings (the neighbours themselves would be exact).")

  def test_kmeans_messages(self):
    x, _ = eval_data(n=10)
    for k in (0, 11):
      self.assertEqual(self._message(ValueError, ev.kmeans, x, k),
                       f"kmeans: k={k} must lie in [1, 10] (the number of points).")
    self.assertEqual(self._message(ValueError, ev.kmeans, x, 2, init="farthest"),
                     "kmeans: init must be one of ('greedy-k-means++', 'k-means++', 'random'), got 'farthest'.")
    for n_init in (0, 2.0, None):
      self.assertEqual(self._message(ValueError, ev.kmeans, x, 2, n_init=n_init),
                       f"kmeans: n_init must be a positive integer, got {n_init!r}.")
    for max_iter in (0, 3.0):
      self.assertEqual(self._message(ValueError, ev.kmeans, x, 2, max_iter=max_iter),
                       f"kmeans: max_iter must be a positive integer, got {max_iter!r}.")
    a, c = ev.kmeans(x, 10, n_init=np.int64(1), max_iter=np.int32(1))   # k = n and NumPy integers allowed
    self.assertEqual(sorted(a.tolist()), list(range(10)))
    a, c = ev.kmeans(x, 1)
    np.testing.assert_array_equal(a, np.zeros(10))
    np.testing.assert_allclose(c[0], x.mean(axis=0), rtol=1e-5, atol=1e-6)

  def test_metric_function_messages(self):
    self.assertEqual(self._message(ValueError, ev.recall_at_k, np.zeros((3, 2)), np.zeros(3), [3]),
                     "recall_at_k: K=3 exceeds the 2 neighbours given.")
    self.assertEqual(self._message(ValueError, ev.recall_at_k, np.zeros((3, 2)), np.zeros(3), [0]),
                     "recall_at_k: K=0 exceeds the 2 neighbours given.")
    self.assertEqual(self._message(ValueError, ev.r_precision_and_map_at_r, np.zeros((3, 2)), np.zeros(3),
                                   np.array([1, 3, 0])),
                     "r_precision_and_map_at_r: need 3 neighbours, got 2.")
    for a, b, shapes in (([0, 1], [0, 1, 2], "(2,) and (3,)"), ([], [], "(0,) and (0,)"),
                         ([[0, 1]], [[0, 1]], "(1, 2) and (1, 2)")):
      self.assertEqual(self._message(ValueError, ev.contingency, a, b),
                       f"contingency: label arrays must be 1-D, non-empty and of one length, got {shapes}.")


class ProtocolsTest(chex.TestCase):

  def test_kmeans_settings(self):
    reference = {"protocol": "reference", "init": "greedy-k-means++", "n_init": 10, "max_iter": 300}
    fast = {"protocol": "fast", "init": "k-means++", "n_init": 1, "max_iter": 20}
    self.assertEqual(ev.kmeans_settings("auto", 1024), reference)   # the largest k of the reference rule
    self.assertEqual(ev.kmeans_settings("auto", 1025), fast)
    self.assertEqual(ev.kmeans_settings("reference", 20000), reference)
    self.assertEqual(ev.kmeans_settings("fast", 2), fast)
    with self.assertRaises(ValueError) as cm:
      ev.kmeans_settings("sklearn", 10)
    self.assertEqual(str(cm.exception), "kmeans_protocol must be one of ('auto', 'reference', 'fast'), got 'sklearn'.")

  @parameterized.parameters("reference", "fast", "auto")
  @pytest.mark.slow
  def test_evaluate_clusters_with_the_protocol_and_seed_given(self, protocol):
    # Overlapping classes, so that seeds and protocols give different clusterings.
    x, y = eval_data(seed=1, n=90, classes=6, spread=2.5)
    s = ev.kmeans_settings(protocol, 6)
    for seed in (0, 3):
      assign, _ = ev.kmeans(x, 6, seed=seed, init=s["init"], n_init=s["n_init"], max_iter=s["max_iter"])
      got = ev.evaluate(x, y, recall_ks=(1,), kmeans_seed=seed, kmeans_protocol=protocol)
      self.assertEqual(got["nmi"], ev.normalized_mutual_information(y, assign))
      self.assertEqual(got["f1"], ev.pair_f1(y, assign))
      self.assertEqual(ev.cluster_metrics(x, y, seed=seed, protocol=protocol), {"nmi": got["nmi"], "f1": got["f1"]})
    self.assertNotEqual(ev.evaluate(x, y, kmeans_seed=0, kmeans_protocol=protocol)["nmi"],
                        ev.evaluate(x, y, kmeans_seed=3, kmeans_protocol=protocol)["nmi"])

  def test_the_fast_protocol_stops_lloyd_at_20_iterations(self):
    # Gaussian data cut into 20 clusters: Lloyd needs more than 20 iterations from these seeds, so the fast
    # protocol's budget changes the clustering, for this module's k-means and for scikit-learn's.
    from sklearn.cluster import KMeans
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 3)).astype(np.float32)
    y = np.arange(3000) % 20
    assign, _, info = ev.kmeans(x, 20, init="k-means++", max_iter=300, return_info=True)
    self.assertGreater(info["n_iter"], 20)
    capped, _ = ev.kmeans(x, 20, init="k-means++", max_iter=20)
    got = ev.cluster_metrics(x, y, protocol="fast")
    self.assertEqual(got, {"nmi": ev.normalized_mutual_information(y, capped), "f1": ev.pair_f1(y, capped)})
    self.assertNotEqual(got["nmi"], ev.normalized_mutual_information(y, assign))
    self.assertGreater(KMeans(20, n_init=1, max_iter=300, random_state=5).fit(x).n_iter_, 20)
    capped = KMeans(20, n_init=1, max_iter=20, random_state=5).fit_predict(x)
    got = ev.cluster_metrics(x, y, backend="sklearn", seed=5, protocol="fast")
    self.assertEqual(got, {"nmi": ev.normalized_mutual_information(y, capped), "f1": ev.pair_f1(y, capped)})

  def test_defaults_are_the_auto_protocol_and_seed_zero(self):
    x, y = eval_data(seed=1, n=90, classes=6, spread=2.5)
    got = ev.evaluate(x, y)
    self.assertEqual(set(got), {"recall@1", "recall@2", "recall@4", "recall@8", "precision@1", "r_precision",
                                "map@r", "num_queries_map@r", "nmi", "f1"})
    want = ev.evaluate(x, y, kmeans_seed=0, kmeans_protocol="reference", kmeans_backend="jax")
    self.assertEqual(got, want)
    self.assertEqual(ev.cluster_metrics(x, y), {"nmi": got["nmi"], "f1": got["f1"]})
    self.assertNotIn("nmi", ev.evaluate(x, y, clustering=False))

  def test_sklearn_backend_is_scikit_learns_kmeans_with_the_protocol(self):
    from sklearn.cluster import KMeans
    x, y = eval_data(seed=1, n=90, classes=6, spread=2.5)
    for protocol, n_init, max_iter in (("reference", 10, 300), ("fast", 1, 20)):
      for seed in (0, 5):
        assign = KMeans(n_clusters=6, n_init=n_init, max_iter=max_iter, random_state=seed).fit_predict(x)
        got = ev.cluster_metrics(x, y, backend="sklearn", seed=seed, protocol=protocol)
        self.assertEqual(got, {"nmi": ev.normalized_mutual_information(y, assign), "f1": ev.pair_f1(y, assign)})


class OptionsTest(chex.TestCase):

  def test_normalize_divides_each_row_by_its_norm(self):
    # Rows scaled by different factors: the neighbours change unless the rows are normalised.
    x, y = eval_data(seed=2, n=48, classes=4, d=5)
    scale = np.random.default_rng(0).uniform(0.1, 10.0, size=(48, 1)).astype(np.float32)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    want = ev.evaluate(unit, y, clustering=True)
    got = ev.evaluate(x * scale, y, normalize=True)
    for key in want:
      self.assertAlmostEqual(got[key], want[key], places=6, msg=key)
    self.assertNotEqual(ev.evaluate(x * scale, y, clustering=False)["map@r"], want["map@r"])
    q, ql, g, gl = x[:20] * scale[:20], y[:20], x[20:] * scale[20:], y[20:]
    want = ev.evaluate_query_gallery(unit[:20], ql, unit[20:], gl, recall_ks=(1, 4))
    got = ev.evaluate_query_gallery(q, ql, g, gl, recall_ks=(1, 4), normalize=True)
    for key in want:
      self.assertAlmostEqual(got[key], want[key], places=6, msg=key)
    self.assertNotEqual(ev.evaluate_query_gallery(q, ql, g, gl, recall_ks=(1, 4))["map@r"], want["map@r"])

  def test_normalize_query_by_query(self):
    # One query at a time, so that any change in its ranking shows in its own recall@1 and MAP@R: gallery rows
    # of norms from 0.01 to 100 (many below 1), against the same search on rows normalised here. (Once the
    # gallery is normalised a query's own scale c > 0 cannot change its ranking, |cq - g|^2 = c^2 |q|^2 + 1 -
    # 2c q.g; in leave-one-out mode, below, every row is both.)
    rng = np.random.default_rng(5)
    g = rng.normal(size=(30, 4)).astype(np.float32)
    gl = np.arange(30) % 5
    norms = np.exp(rng.uniform(np.log(0.01), np.log(100.0), size=(30, 1))).astype(np.float32)
    g = g * norms / np.linalg.norm(g, axis=1, keepdims=True)
    q = g[:12] * np.float32(0.3) + rng.normal(size=(12, 4)).astype(np.float32) * np.float32(0.2)
    ql = gl[:12]
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    changed = 0
    for i in range(12):
      got = ev.evaluate_query_gallery(q[i:i + 1], ql[i:i + 1], g, gl, recall_ks=(1, 3), normalize=True)
      want = ev.evaluate_query_gallery(unit(q[i:i + 1]), ql[i:i + 1], unit(g), gl, recall_ks=(1, 3))
      for key in want:
        self.assertAlmostEqual(got[key], want[key], places=6, msg=(i, key))
      raw = ev.evaluate_query_gallery(q[i:i + 1], ql[i:i + 1], g, gl, recall_ks=(1, 3))
      changed += raw != want
    self.assertGreater(changed, 3)   # the data are such that normalising matters
    # In leave-one-out mode, against the same rows normalised here.
    got = ev.evaluate(g, gl, recall_ks=(1, 2, 3), normalize=True)
    want = ev.evaluate(unit(g), gl, recall_ks=(1, 2, 3))
    for key in want:
      self.assertAlmostEqual(got[key], want[key], places=6, msg=key)
    self.assertNotEqual(ev.evaluate(g, gl, recall_ks=(1, 2, 3), clustering=False)["map@r"], want["map@r"])

  def test_extreme_scales_are_evaluated_not_refused(self):
    # Squared distances beyond float32's range: the metrics need only the neighbours, so nothing is refused.
    x, y = eval_data(seed=6, n=40, classes=4, spread=0.5)
    big = x * np.float32(2.0 ** 66)
    want = ev.evaluate(x, y, clustering=False)
    self.assertEqual(ev.evaluate(big, y, clustering=False), want)
    want = ev.evaluate_query_gallery(x[:10], y[:10], x[10:], y[10:], recall_ks=(1, 2))
    self.assertEqual(ev.evaluate_query_gallery(big[:10], y[:10], big[10:], y[10:], recall_ks=(1, 2)), want)

  def test_normalize_leaves_zero_rows_at_zero(self):
    x = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 1.0]], np.float32)
    y = np.array([0, 1, 1, 2, 2])
    got = ev.evaluate(x, y, recall_ks=(1,), normalize=True, clustering=False)
    self.assertEqual(got["recall@1"], 0.8)   # the zero row is a miss, every other row finds its twin
    got = ev.evaluate_query_gallery(x, y, x[1:], y[1:], recall_ks=(1,), normalize=True)
    self.assertEqual(got["recall@1"], 0.8)

  def test_two_singletons(self):
    # The smallest set: two items of two classes, one neighbour each.
    got = ev.evaluate(np.array([[0.0], [1.0]], np.float32), np.array([0, 1]), recall_ks=(1,), clustering=False)
    self.assertEqual(got["recall@1"], 0.0)
    self.assertEqual(got["num_queries_map@r"], 0)
    self.assertTrue(math.isnan(got["map@r"]) and math.isnan(got["r_precision"]))
    got = ev.evaluate_query_gallery(np.array([[0.0]], np.float32), np.array([1]), np.array([[1.0]], np.float32),
                                    np.array([1]), recall_ks=(1,))
    self.assertEqual((got["recall@1"], got["map@r"], got["num_queries_map@r"]), (1.0, 1.0, 1))

  def test_recall_ks_are_sorted_and_deduplicated(self):
    x, y = eval_data()
    got = ev.evaluate(x, y, recall_ks=(4, 1, 4), clustering=False)
    self.assertEqual([k for k in got if k.startswith("recall@")], ["recall@1", "recall@4"])
    got = ev.evaluate(x, y, recall_ks=(), clustering=False)
    self.assertEqual([k for k in got if k.startswith("recall@")], [])
    self.assertEqual(got["precision@1"], ev.evaluate(x, y, recall_ks=(1,), clustering=False)["recall@1"])
    got = ev.evaluate_query_gallery(x, y, x, y, recall_ks=(4, 1, 4))
    self.assertEqual([k for k in got if k.startswith("recall@")], ["recall@1", "recall@4"])

  def test_query_gallery_defaults_and_absent_classes(self):
    x, y = eval_data(n=60, classes=3)
    got = ev.evaluate_query_gallery(x, y, x, y)
    self.assertEqual([k for k in got if k.startswith("recall@")],
                     ["recall@1", "recall@10", "recall@20", "recall@30", "recall@40", "recall@50"])
    # Queries of a class the gallery lacks: misses for recall, left out of MAP@R; R otherwise counts
    # every gallery item of the class (none is excluded).
    q = np.concatenate([x[:6], x[:2] + 50.0])
    ql = np.concatenate([y[:6], [7, 7]])
    got = ev.evaluate_query_gallery(q, ql, x, y, recall_ks=(1,))
    self.assertEqual(got["num_queries_map@r"], 6)
    self.assertEqual(got["recall@1"], 6 / 8)
    # Every gallery item of the class, 20 per class here, is within R.
    want = ev.evaluate_query_gallery(q[:6], ql[:6], x, y, recall_ks=(1,))
    self.assertEqual(got["map@r"], want["map@r"])
    g_small = x[:3]   # one item per class: each query finds itself, at distance 0
    got = ev.evaluate_query_gallery(x[:3], y[:3], g_small, y[:3], recall_ks=(3,))
    self.assertEqual(got["recall@3"], 1.0)
    self.assertEqual(got["r_precision"], 1.0)

  def test_chunk_size_does_not_change_the_result(self):
    x, y = eval_data(seed=4, n=70, classes=5, spread=2.0)
    want = ev.evaluate(x, y, clustering=False)
    for chunk in (1, 16, 5000):
      self.assertEqual(ev.evaluate(x, y, clustering=False, chunk_size=chunk), want)
      self.assertEqual(ev.evaluate_query_gallery(x[:30], y[:30], x[30:], y[30:], recall_ks=(1,), chunk_size=chunk),
                       ev.evaluate_query_gallery(x[:30], y[:30], x[30:], y[30:], recall_ks=(1,)))

  def test_buckets_follow_their_rule(self):
    sizes = [8]
    while sizes[-1] < 5000:
      s = sizes[-1]
      sizes.append(s * 3 // 2 if s & (s - 1) == 0 else s * 4 // 3)
    self.assertEqual(sizes[:10], [8, 12, 16, 24, 32, 48, 64, 96, 128, 192])
    for n in range(0, 5000, 7):
      want = min(s for s in sizes if s >= n)
      self.assertEqual(ev.bucket(n), want, n)

  def test_pad_rows(self):
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    xp, w = ev_kmeans._pad_rows(x, 4)
    np.testing.assert_array_equal(xp, np.concatenate([x, np.repeat(x[:1], 3, axis=0)]))
    np.testing.assert_array_equal(w, [1, 1, 1, 1, 1, 0, 0, 0])
    self.assertEqual(w.dtype, np.float32)
    xp, w = ev_kmeans._pad_rows(x, 5)
    self.assertIs(xp, x)
    np.testing.assert_array_equal(w, np.ones(5))



class QueryGalleryWidthTest(chex.TestCase):

  def test_queries_and_gallery_of_different_widths_are_refused_naming_both(self):
    x, y = eval_data()
    with self.assertRaisesRegex(ValueError, r"evaluate_query_gallery: queries and gallery must have the same width, "
                                            r"got queries \(40, 3\) and gallery \(40, 2\)\."):
      ev.evaluate_query_gallery(x, y, x[:, :2], y, recall_ks=(1,))
