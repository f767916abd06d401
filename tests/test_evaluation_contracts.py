"""The evaluation's contracts beyond the metrics' values: exact messages, defaults, options passed through,
and the Lloyd iterations step for step against scikit-learn.

Fast (small inputs, few compilations): the mutation run of ``hdml_jax/evaluation.py`` starts with these.
"""

import inspect
import math
import threading
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl
from absl.testing import parameterized

from hdml_jax import evaluation as ev
from hdml_jax.evaluation import _checks as ev_checks
from hdml_jax.evaluation import _device as ev_device
from hdml_jax.evaluation import _exact as ev_exact
from hdml_jax.evaluation import _host as ev_host
from hdml_jax.evaluation import _kmeans as ev_kmeans
from hdml_jax.evaluation import _metrics as ev_metrics
from hdml_jax.evaluation import _select as ev_select
from tests.test_evaluation import OnDevice, SmallTiles, blobs, near_ties, numpy_neighbors


def _data(seed=0, n=40, classes=4, d=3, spread=1.0):
  rng = np.random.default_rng(seed)
  y = np.arange(n) % classes
  centers = rng.normal(size=(classes, d)) * 3
  return (centers[y] + spread * rng.normal(size=(n, d))).astype(np.float32), y


def _blas_threads(info=None):
  return {i["num_threads"] for i in (info or threadpoolctl.threadpool_info()) if i["user_api"] == "blas"}


class ProductSpy:
  """Stands in for ``np.matmul(a, b)``: records the BLAS threads and the worker thread of each product,
  checks that both operands are float32 (and ``check(a, b)`` if given), and computes it."""

  def __init__(self, test, check=None):
    self.test, self.check, self.real = test, check, np.matmul
    self.seen, self.workers = [], set()

  def __call__(self, a, b):
    self.seen.append(_blas_threads())
    self.workers.add(threading.get_ident())
    self.test.assertEqual((a.dtype, b.dtype), (np.float32, np.float32))
    if self.check:
      self.check(a, b)
    return self.real(a, b)


class InputMessagesTest(chex.TestCase):
  """Every input check names the entry point and the argument, word for word."""

  def _message(self, exc, fn, *args, **kwargs):
    with self.assertRaises(exc) as cm:
      fn(*args, **kwargs)
    return str(cm.exception)

  def test_embedding_checks_in_every_entry_point(self):
    x, y = _data()
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
    x, y = _data()
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
    x, y = _data()
    want = ev.evaluate(x, y, clustering=False)
    for dtype in (np.float16, np.float64):
      with self.subTest(dtype=dtype):
        x_cast = x.astype(dtype)
        np.testing.assert_array_equal(ev_checks._as_embeddings(x_cast, "x", "here"), x_cast.astype(np.float32))
        self.assertEqual(ev_checks._as_embeddings(x_cast, "x", "here").dtype, np.float32)
        got = ev.evaluate(x_cast.astype(np.float32), y, clustering=False)
        self.assertEqual(got, want)
    labels = np.arange(5, dtype=np.uint8)
    self.assertIs(ev_checks._as_labels(labels, 5, "y", "here"), labels)   # labels are returned as given

  def test_evaluate_messages(self):
    x, y = _data()
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
    x, y = _data()
    for ks in ((0, 1), (1, 41)):
      self.assertEqual(self._message(ValueError, ev.evaluate_query_gallery, x, y, x, y, recall_ks=ks),
                       f"evaluate_query_gallery: recall K values {sorted(ks)} must lie in [1, 40] (the gallery "
                       "size).")
    got = ev.evaluate_query_gallery(x, y, x, y, recall_ks=(1, 40))   # the whole gallery is allowed
    self.assertEqual(got["recall@40"], 1.0)

  def test_nearest_neighbors_messages(self):
    x, _ = _data(n=6)
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
    x, _ = _data(n=10)
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
  def test_evaluate_clusters_with_the_protocol_and_seed_given(self, protocol):
    # Overlapping classes, so that seeds and protocols give different clusterings.
    x, y = _data(seed=1, n=90, classes=6, spread=2.5)
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
    x, y = _data(seed=1, n=90, classes=6, spread=2.5)
    got = ev.evaluate(x, y)
    self.assertEqual(set(got), {"recall@1", "recall@2", "recall@4", "recall@8", "precision@1", "r_precision",
                                "map@r", "num_queries_map@r", "nmi", "f1"})
    want = ev.evaluate(x, y, kmeans_seed=0, kmeans_protocol="reference", kmeans_backend="jax")
    self.assertEqual(got, want)
    self.assertEqual(ev.cluster_metrics(x, y), {"nmi": got["nmi"], "f1": got["f1"]})
    self.assertNotIn("nmi", ev.evaluate(x, y, clustering=False))

  def test_sklearn_backend_is_scikit_learns_kmeans_with_the_protocol(self):
    from sklearn.cluster import KMeans
    x, y = _data(seed=1, n=90, classes=6, spread=2.5)
    for protocol, n_init, max_iter in (("reference", 10, 300), ("fast", 1, 20)):
      for seed in (0, 5):
        assign = KMeans(n_clusters=6, n_init=n_init, max_iter=max_iter, random_state=seed).fit_predict(x)
        got = ev.cluster_metrics(x, y, backend="sklearn", seed=seed, protocol=protocol)
        self.assertEqual(got, {"nmi": ev.normalized_mutual_information(y, assign), "f1": ev.pair_f1(y, assign)})


class OptionsTest(chex.TestCase):

  def test_normalize_divides_each_row_by_its_norm(self):
    # Rows scaled by different factors: the neighbours change unless the rows are normalised.
    x, y = _data(seed=2, n=48, classes=4, d=5)
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
    x, y = _data(seed=6, n=40, classes=4, spread=0.5)
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
    x, y = _data()
    got = ev.evaluate(x, y, recall_ks=(4, 1, 4), clustering=False)
    self.assertEqual([k for k in got if k.startswith("recall@")], ["recall@1", "recall@4"])
    got = ev.evaluate(x, y, recall_ks=(), clustering=False)
    self.assertEqual([k for k in got if k.startswith("recall@")], [])
    self.assertEqual(got["precision@1"], ev.evaluate(x, y, recall_ks=(1,), clustering=False)["recall@1"])
    got = ev.evaluate_query_gallery(x, y, x, y, recall_ks=(4, 1, 4))
    self.assertEqual([k for k in got if k.startswith("recall@")], ["recall@1", "recall@4"])

  def test_query_gallery_defaults_and_absent_classes(self):
    x, y = _data(n=60, classes=3)
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
    x, y = _data(seed=4, n=70, classes=5, spread=2.0)
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


class ConditionedTest(chex.TestCase):
  """``_conditioned``: float32 copies centred on the gallery mean and scaled by a power of two."""

  def test_centre_unit_and_dtypes(self):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(5, 3)) * 40 + 7
    g = rng.normal(size=(9, 3)) * 40 + 7
    cq, cg, center, unit = ev_exact._conditioned(q, g)
    np.testing.assert_array_equal(center, g.mean(axis=0))
    top = max(np.abs(q - center).max(), np.abs(g - center).max())
    self.assertEqual(unit, 2.0 ** np.ceil(np.log2(top)))   # a power of two, with top <= unit < 2 top
    self.assertTrue(unit / 2 < top <= unit)
    self.assertEqual((cq.dtype, cg.dtype), (np.float32, np.float32))   # float32 copies: half the host memory
    np.testing.assert_array_equal(cq, ((q - center) / unit).astype(np.float32))
    np.testing.assert_array_equal(cg, ((g - center) / unit).astype(np.float32))

  def test_the_queries_as_gallery_are_one_array(self):
    x = np.random.default_rng(1).normal(size=(6, 2)).astype(np.float32)
    cq, cg, _, _ = ev_exact._conditioned(x, x)
    self.assertIs(cg, cq)   # not a second copy

  def test_float32_inputs_are_not_copied(self):
    # At Stanford Online Products scale a copy of the embeddings is a quarter of a gigabyte.
    x = np.ones((3, 2), np.float32)
    self.assertIs(ev_checks._as_embeddings(x, "x", "here"), x)
    self.assertEqual(ev_checks._as_embeddings(x.astype(np.float16), "x", "here").dtype, np.float32)

  def test_identical_points(self):
    # Every point at the centre: nothing to scale (no log of zero); unit 1 and all-zero copies.
    x = np.full((4, 3), 2.5, np.float32)
    cq, cg, center, unit = ev_exact._conditioned(x, x)
    self.assertEqual(unit, 1.0)
    np.testing.assert_array_equal(cq, np.zeros((4, 3), np.float32))
    idx, d2 = ev.nearest_neighbors(x, k=3)
    np.testing.assert_array_equal(idx, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])   # ties to the smaller index
    np.testing.assert_array_equal(d2, np.zeros((4, 3), np.float32))
    _, c = ev.kmeans(x, 2)
    np.testing.assert_array_equal(c, x[:2])


class RefineTest(chex.TestCase):

  @parameterized.parameters(1, 7, 128)
  def test_refine_ranks_every_rows_candidates_in_float64(self, rows):
    # More candidate rows than one block of `rows`: every row is ranked, ties to the smaller index.
    rng = np.random.default_rng(0)
    q = rng.integers(-3, 4, size=(300, 4)).astype(np.float64)
    g = rng.integers(-3, 4, size=(50, 4)).astype(np.float64)     # many exact ties
    cand = np.stack([rng.permutation(50)[:20] for _ in range(300)])
    idx, d2 = ev_exact._refine(q, g, cand, 6, rows=rows)
    self.assertEqual((idx.dtype, d2.dtype, idx.shape), (np.int32, np.float64, (300, 6)))
    for i in range(300):
      dist = ((q[i] - g[cand[i]]) ** 2).sum(-1)
      order = sorted(range(20), key=lambda j: (dist[j], cand[i, j]))[:6]
      np.testing.assert_array_equal(idx[i], cand[i, order])
      np.testing.assert_array_equal(d2[i], dist[order])


class RerankTest(chex.TestCase):
  """``_rerank_close`` on candidates whose approximate distances are made by hand."""

  def setUp(self):
    super().setUp()
    # One-dimensional gallery, query at 0: the exact squared distance of item j is values[j]. Runs (closer
    # than tol = 1e-6): items {0, 1, 2} near 1, {3, 4} near 5; the rest are far apart. Inside each run the
    # exact order (2, 0, 1 and 4, 3) is not the index order.
    self.values = np.array([1.0 + 2e-9, 1.0 + 3e-9, 1.0 + 1e-9, 5.0 + 5e-9, 5.0 + 4e-9, 9.0, 12.0, 13.0, 14.0,
                            15.0])
    self.g64 = np.sqrt(self.values)[:, None]
    self.q64 = np.zeros((2, 1))
    # The approximate (float32-like) distances tie inside a run; candidates listed in a wrong order there.
    self.cand = np.array([[1, 0, 2, 3, 4, 5, 6, 7, 8, 9], [2, 1, 0, 4, 3, 5, 6, 7, 8, 9]])
    self.d = np.round(self.values[self.cand], 3)
    self.tol = np.full(2, 1e-6)

  @parameterized.parameters(1, 2, 16384)
  def test_runs_are_reranked_exactly(self, pairs):
    cand, d = ev_exact._rerank_close(self.q64, self.g64, self.cand, self.d, self.tol, 6, pairs=pairs)
    want = [2, 0, 1, 4, 3, 5]
    np.testing.assert_array_equal(cand, [want, want])
    np.testing.assert_allclose(d, [self.values[want]] * 2, rtol=0, atol=1e-12)   # exact where re-ranked
    self.assertEqual(d.dtype, np.float64)

  def test_only_runs_among_the_first_k_and_only_mixed_ones_with_labels(self):
    cand, d = ev_exact._rerank_close(self.q64, self.g64, self.cand, self.d, self.tol, 2)
    np.testing.assert_array_equal(cand, [[2, 0], [2, 0]])   # the run {0, 1, 2} starts in the first 2
    cand, _ = ev_exact._rerank_close(self.q64, self.g64, self.cand, self.d, self.tol, 4)
    np.testing.assert_array_equal(cand, [[2, 0, 1, 4], [2, 0, 1, 4]])   # {3, 4} reaches position 4
    # Relevance by item: {0, 1, 2} all relevant (not recomputed: their approximate distances tie, so they
    # end in index order), {3, 4} mixed (re-ranked exactly).
    relevant = np.isin(self.cand, [0, 1, 2, 4])
    cand, d = ev_exact._rerank_close(self.q64, self.g64, self.cand, self.d, self.tol, 5, relevant)
    np.testing.assert_array_equal(cand, [[0, 1, 2, 4, 3], [0, 1, 2, 4, 3]])
    np.testing.assert_array_equal(d[:, :3], np.ones((2, 3)))   # the approximate values, not recomputed
    np.testing.assert_allclose(d[:, 3:], [self.values[[4, 3]]] * 2, rtol=0, atol=1e-12)
    relevant = np.isin(self.cand, [4])   # {0, 1, 2} all irrelevant: not recomputed either
    cand, d = ev_exact._rerank_close(self.q64, self.g64, self.cand, self.d, self.tol, 5, relevant)
    np.testing.assert_array_equal(cand, [[0, 1, 2, 4, 3], [0, 1, 2, 4, 3]])
    np.testing.assert_array_equal(d[:, :3], np.ones((2, 3)))
    # No close run at all: the first k as given, distances untouched.
    far = np.array([[5, 6, 7, 8, 9]] * 2)
    cand, d = ev_exact._rerank_close(self.q64, self.g64, far, self.values[far], self.tol, 3)
    np.testing.assert_array_equal(cand, far[:, :3])
    np.testing.assert_array_equal(d, self.values[far][:, :3])


class SearchShapesTest(chex.TestCase):
  """What ``_search`` sends to the device: chunks of one padded shape, the gallery padded at +inf."""

  def record(self, fn):
    calls = []
    real = ev_device._knn_chunk

    def spy(queries, query_offset, gallery, gallery_sq, *, k, exclude_self):
      calls.append({"rows": queries.shape, "dtypes": (queries.dtype, gallery.dtype, gallery_sq.dtype),
                    "offset": int(query_offset), "pad_sq": np.asarray(gallery_sq)[40:], "k": k})
      return real(queries, query_offset, gallery, gallery_sq, k=k, exclude_self=exclude_self)

    with mock.patch.object(ev_device, "_knn_chunk", spy):
      fn()
    return calls

  def test_chunks_are_padded_to_one_shape(self):
    x, _ = _data(n=40, d=16)   # 40 rows: bucket 48, so the gallery has 8 padding rows
    for chunk, rows in ((1024, 48), (16, 16), (1, 1)):
      with self.subTest(chunk=chunk):
        calls = self.record(lambda: ev.nearest_neighbors(x, k=3, chunk_size=chunk, engine="device"))
        self.assertEqual(len(calls), -(-40 // rows))
        self.assertEqual({c["rows"] for c in calls}, {(rows, 16)})   # the last chunk padded too
        self.assertEqual([c["offset"] for c in calls], list(range(0, 40, rows)))
        for c in calls:
          self.assertEqual(c["dtypes"], (np.float32, np.float32, np.float32))
          np.testing.assert_array_equal(c["pad_sq"], np.full(8, np.inf, np.float32))
          self.assertEqual(c["k"], 3 + 8 + 3 // 4)   # spare candidates
    calls = self.record(lambda: ev.nearest_neighbors(x[:30], x, k=32, engine="device"))
    self.assertEqual([c["rows"] for c in calls], [(32, 16)])   # the bucket of the 30 queries
    self.assertEqual(calls[0]["k"], 40)                         # spares capped at the gallery

  def test_separated_points_need_no_float64_work(self):
    # Well-separated distances: the float32 order is provably exact, so nothing is recomputed in float64.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    calls = []
    real = ev_exact._distances64
    with mock.patch.object(ev_exact, "_distances64", lambda q, g: calls.append(q.shape) or real(q, g)):
      idx, _ = ev.nearest_neighbors(x, k=5, return_float64=True)
      ev.evaluate(x, np.arange(200) % 10, clustering=False)
    self.assertEqual(calls, [])
    np.testing.assert_array_equal(idx, numpy_neighbors(x, x, True, 5))


  def test_a_nearer_item_beyond_the_candidates_is_found(self):
    # One item at distance 1, then 60 items at distance 2 whose float32 distances tie but whose exact ones
    # differ (float32 rounding of their coordinates): the exact second neighbour is not among the first
    # candidates the float32 search keeps, so the search must notice that the k-th candidate is within its
    # error bound of the last one and rank the whole gallery in float64.
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, 60)
    g = np.concatenate([[[1.0, 0.0]], np.stack([2 * np.cos(angle), 2 * np.sin(angle)], 1)]).astype(np.float32)
    q = np.zeros((1, 2), np.float32)
    exact = (g.astype(np.float64) ** 2).sum(1)
    want = np.lexsort((np.arange(61), exact))[:3]
    idx, d2 = ev.nearest_neighbors(q, g, k=2)
    np.testing.assert_array_equal(idx[0], want[:2])
    self.assertNotEqual(want[1], 1)   # not the first of the tied items in index order
    idx, _ = ev.nearest_neighbors(q, g, k=3)
    np.testing.assert_array_equal(idx[0], want)


class ErrorBoundTest(chex.TestCase):
  """The float32 error bound that decides which close calls are re-ranked in float64, at any scale.

  The search runs on data centred and scaled by a power of two (``unit``); the bound and the float32
  distances are brought back to the input's units by ``unit ** 2``. Scaling the input by a power of two
  leaves the conditioned data, and so the float32 candidates, bit for bit the same.
  """

  @parameterized.parameters(-10, 0, 10)
  def test_near_ties_are_exact_at_any_scale(self, e):
    # 64 features on a 2^-8 grid: float32 misorders some neighbours by less than the bound, and the bound
    # grows with |q|^2 + max |g|^2 (large here); the float64 brute force is the reference.
    x = near_ties(1100, seed=1, d=64, grid=8) * np.float32(2.0 ** e)
    idx, d2 = ev.nearest_neighbors(x, k=12, chunk_size=256, return_float64=True)
    want = numpy_neighbors(x, x, True, 12)
    np.testing.assert_array_equal(idx, want)
    exact = ((x.astype(np.float64)[:, None] - x[want]) ** 2).sum(-1)
    np.testing.assert_allclose(d2, exact, rtol=1e-5)

  @parameterized.parameters(-8, 0, 10)
  def test_float64_distances_are_in_the_input_units(self, e):
    # Well separated points: nothing re-ranked, so the returned distances are the float32 ones, rescaled.
    x = blobs(n=200)[0] * np.float32(2.0 ** e)
    idx, d2 = ev.nearest_neighbors(x, k=5, return_float64=True)
    np.testing.assert_array_equal(idx, numpy_neighbors(x, x, True, 5))
    exact = ((x.astype(np.float64)[:, None] - x[idx]) ** 2).sum(-1)
    np.testing.assert_allclose(d2, exact, rtol=1e-4)


class SmallestTest(chex.TestCase):

  @parameterized.parameters((1, 64, 2), (1, 63, 1), (2, 128, 2), (2, 112, 1), (3, 16 * 12 + 8, 1), (3, 16 * 13, 2))
  def test_two_stages_exactly_when_the_row_is_wide(self, k, cols, top_ks):
    # Two stages need whole groups of 16 columns and at least 4 k of them; otherwise one top_k over the row.
    score = np.random.default_rng(cols).integers(1, 10, size=(5, cols)).astype(np.float32)   # no zero: -0 == 0
    jaxpr = str(jax.make_jaxpr(lambda s: ev_select._smallest(s, k))(score))
    self.assertEqual(jaxpr.count("top_k["), top_ks, (k, cols))
    columns, values = (np.asarray(a) for a in ev_select._smallest(score, k))
    np.testing.assert_array_equal(values, np.sort(score, axis=1)[:, :k])   # the values, not their negatives
    np.testing.assert_array_equal(np.take_along_axis(score, columns, axis=1), values)


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
    x, _ = _data(seed=1, n=90, classes=6, spread=2.5)
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
    x, _ = _data(seed=3, n=64, classes=4, spread=0.1)
    runs = [ev.kmeans(x, 4, seed=int(np.random.SeedSequence([0, r]).generate_state(1)[0]), return_info=True)[2]
            for r in range(3)]
    self.assertEqual(len({info["inertia"] for info in runs}), 1)
    self.assertEqual(ev.kmeans(x, 4, n_init=3, return_info=True)[2]["best_init"], 0)

  @parameterized.parameters("greedy-k-means++", "k-means++", "random")
  def test_results_are_in_the_input_units(self, init):
    x, _ = _data(seed=3, n=64, classes=4, spread=0.5)
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
    x, _ = _data(seed=1, n=200, classes=12, spread=2.0)
    runs = {init: [tuple(ev.kmeans(x, 12, init=init, seed=s)[0]) for s in range(3)]
            for init in ("greedy-k-means++", "k-means++", "random")}
    self.assertNotEqual(runs["k-means++"], runs["greedy-k-means++"])
    self.assertNotEqual(runs["random"], runs["greedy-k-means++"])
    self.assertNotEqual(runs["random"], runs["k-means++"])

  def test_tol_and_max_iter_stop_lloyd(self):
    x, _ = _data(seed=1, n=200, classes=6, spread=3.0)
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

  def test_chunk_size_and_per_round_are_only_costs(self):
    x, _ = _data(seed=1, n=100, classes=6, spread=2.5)
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


class ClusterMetricEdgesTest(chex.TestCase):

  def test_nmi_edges_match_scikit_learn(self):
    from sklearn.metrics import normalized_mutual_info_score as sk_nmi
    cases = [([0, 0, 1, 1], [0, 0, 0, 0]), ([0, 0, 0, 0], [0, 1, 2, 3]), ([0, 1, 2, 3], [0, 1, 2, 3]),
             ([5, 5, 9, 9], [1, 1, 0, 0]), ([0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 1]), ([3], [4])]
    for a, b in cases:
      got = ev.normalized_mutual_information(a, b)
      self.assertAlmostEqual(got, sk_nmi(a, b, average_method="arithmetic"), places=12, msg=(a, b))
      self.assertGreaterEqual(got, 0.0)
      self.assertLessEqual(got, 1.0)
      self.assertIsInstance(got, float)

  def test_pair_f1_edges(self):
    # All in one cluster: precision = same-class pairs / all pairs, recall 1.
    y = np.array([0, 0, 0, 1, 1])
    p = (3 + 1) / 10
    self.assertAlmostEqual(ev.pair_f1(y, np.zeros(5, int)), 2 * p / (p + 1))
    # Singletons predicted: no predicted pair, precision 0, F1 0.
    self.assertEqual(ev.pair_f1(y, np.arange(5)), 0.0)
    # Classes all singletons, one cluster of two: recall 0, F1 0.
    self.assertEqual(ev.pair_f1(np.arange(4), [0, 0, 1, 2]), 0.0)
    # Large counts: no integer overflow in the pair counts.
    big = np.zeros(200000, np.int64)
    self.assertEqual(ev.pair_f1(big, big), 1.0)
    cells, ti, pi, a, b = ev.contingency(big, big)
    np.testing.assert_array_equal(cells, [200000])

  def test_contingency_of_sparse_ids(self):
    cells, ti, pi, a, b = ev.contingency([10, 10, 30, 30, 30], [7, 2, 2, 2, 7])
    table = {(int(t), int(p)): int(c) for c, t, p in zip(cells, ti, pi)}
    self.assertEqual(table, {(0, 0): 1, (0, 1): 1, (1, 0): 2, (1, 1): 1})
    np.testing.assert_array_equal(a, [2, 3])
    np.testing.assert_array_equal(b, [3, 2])

  def test_retrieval_metrics_of_given_neighbours(self):
    # Hand-made neighbour labels: query labels 0, 1, 2, with R = 2, 1, 0.
    nl = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 2]])
    ql = np.array([0, 1, 2])
    got = ev_metrics._retrieval_metrics(nl, ql, [1, 2], np.array([2, 1, 0]))
    self.assertEqual(got, {"recall@1": 1 / 3, "recall@2": 2 / 3, "precision@1": 1 / 3,
                           "r_precision": (0.5 + 1.0) / 2, "map@r": (0.25 + 1.0) / 2, "num_queries_map@r": 2})
    rp, mapr, used = ev.r_precision_and_map_at_r(nl, ql, np.zeros(3, int))
    self.assertTrue(math.isnan(rp) and math.isnan(mapr))
    self.assertEqual(used, 0)
    self.assertEqual(ev.recall_at_k(nl, ql, [3]), {3: 1.0})


if __name__ == "__main__":
  from absl.testing import absltest
  absltest.main()


class ErrorBoundOnDeviceTest(OnDevice, ErrorBoundTest):
  pass


class SearchShapesOnDeviceTest(OnDevice, SearchShapesTest):
  pass


class ErrorBoundInSmallTilesTest(SmallTiles, ErrorBoundTest):
  pass


class SearchShapesInSmallTilesTest(SmallTiles, SearchShapesTest):
  pass


class HostEngineTest(chex.TestCase):
  """The host kNN engine (``"auto"`` on a CPU): BLAS products and ``argpartition`` on host threads."""

  def test_engine_choice(self):
    for backend, engine in (("cpu", "host"), ("gpu", "device"), ("tpu", "device")):
      with mock.patch.object(jax, "default_backend", return_value=backend):
        self.assertEqual(ev.resolve_knn_engine(), engine, backend)
        self.assertEqual(ev.resolve_knn_engine("auto"), engine, backend)
        self.assertEqual(ev.resolve_knn_engine("host"), "host")
        self.assertEqual(ev.resolve_knn_engine("device"), "device")
    message = "kNN engine must be one of ('auto', 'device', 'host'), got 'gpu'."
    with self.assertRaisesWithLiteralMatch(ValueError, message):
      ev.resolve_knn_engine("gpu")
    x, y = _data()
    with mock.patch.object(ev_exact, "_search") as search:   # a bad engine fails before any search
      with self.assertRaisesWithLiteralMatch(ValueError, message):
        ev.evaluate(x, y, knn_engine="gpu")
      with self.assertRaisesWithLiteralMatch(ValueError, message):
        ev.evaluate_query_gallery(x, y, x, y, recall_ks=(1,), knn_engine="gpu")
      with self.assertRaisesWithLiteralMatch(ValueError, message):
        ev.nearest_neighbors(x, k=2, engine="gpu")
    search.assert_not_called()

  def test_auto_runs_the_host_engine_on_the_cpu(self):
    self.assertEqual(jax.default_backend(), "cpu")
    calls = []
    with mock.patch.object(ev_device, "_knn_chunk", lambda *a, **kw: calls.append(1)):
      idx, _ = ev.nearest_neighbors(blobs()[0], k=3)
    self.assertEqual(calls, [])
    np.testing.assert_array_equal(idx, numpy_neighbors(blobs()[0], blobs()[0], True, 3))

  @parameterized.parameters((1, 64, 2), (1, 63, 1), (2, 128, 2), (2, 112, 1), (3, 16 * 12 + 8, 1),
                            (3, 16 * 13, 2), (20, 3 * 512, 2))
  def test_smallest_host(self, k, cols, partitions):
    # Two stages need whole groups of 16 columns and at least 4 k of them; otherwise one partition.
    rng = np.random.default_rng(cols)
    score = rng.integers(1, 10, size=(6, cols)).astype(np.float32)   # many ties
    score[1, :] = np.inf
    score[1, ::7] = rng.permutation(np.arange(len(score[1, ::7]))).astype(np.float32)
    groups = cols // 16
    score[2, :] = 100.0
    score[2, 5::groups] = -np.arange(len(score[2, 5::groups]), dtype=np.float32)   # the smallest: one strided group
    score[3, :k] = np.arange(k)[::-1]                            # ... or in the first contiguous columns
    real = np.argpartition
    calls = []
    with mock.patch.object(np, "argpartition", lambda *a, **kw: calls.append(1) or real(*a, **kw)):
      columns, values = ev_select._smallest_host(score, k)
    self.assertLen(calls, partitions)
    # Distinct values: the k smallest are one set, and each row's columns are exactly theirs.
    distinct = np.stack([rng.permutation(cols) for _ in range(40)]).astype(np.float32)
    got_cols, got_vals = ev_select._smallest_host(distinct, k)
    np.testing.assert_array_equal(got_vals, np.arange(k, dtype=np.float32)[None].repeat(40, 0))
    np.testing.assert_array_equal(got_cols, np.argsort(distinct, axis=1)[:, :k])
    np.testing.assert_array_equal(values, np.sort(score, axis=1)[:, :k])   # ascending
    np.testing.assert_array_equal(np.take_along_axis(score, columns, axis=1), values)
    self.assertTrue(all(len(set(row)) == k for row in columns.tolist()))   # distinct columns
    self.assertEqual(values.dtype, np.float32)

  @parameterized.parameters((1, 16 * 4096), (100, 16 * 4096), (100, 16 * 1000 + 3))
  def test_smallest_host_at_scale(self, k, cols):
    # Wide rows of distinct values (argpartition leaves them unsorted beyond its kth element): exactly the k
    # smallest, ascending, in the two-stage path as in the one-stage one.
    rng = np.random.default_rng(k + cols)
    score = np.stack([rng.permutation(cols) for _ in range(8)]).astype(np.float32)
    columns, values = ev_select._smallest_host(score, k)
    np.testing.assert_array_equal(values, np.arange(k, dtype=np.float32)[None].repeat(8, 0))
    np.testing.assert_array_equal(columns, np.argsort(score, axis=1)[:, :k])

  def record(self, fn, threads):
    """Runs ``fn`` with ``threads`` host threads; returns each product's operands, BLAS threads and rows."""
    calls = []
    real = np.matmul

    def spy(a, b, out):
      blas = {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}
      calls.append({"a": a.copy(), "b": b, "rows": a.shape[0], "blas": blas, "out": out.dtype,
                    "worker": threading.get_ident()})
      return real(a, b, out=out)

    with mock.patch.object(ev_host, "_host_threads", return_value=threads), mock.patch.object(np, "matmul", spy):
      out = fn()
    return calls, out

  def test_products_and_padding(self):
    x = near_ties(37, seed=4, d=5)
    before = threadpoolctl.threadpool_info()
    for threads, chunk in ((1, 1024), (2, 1024), (3, 10), (3, 2), (4, 1)):
      with self.subTest(threads=threads, chunk=chunk):
        calls, (idx, _) = self.record(lambda: ev.nearest_neighbors(x, k=4, chunk_size=chunk), threads)
        np.testing.assert_array_equal(idx, numpy_neighbors(x, x, True, 4))   # the query itself excluded
        # Each chunk is split in 2 slices per thread, the rows in order, as evenly as possible.
        per_chunk = [min(chunk, 37 - s) for s in range(0, 37, chunk)]
        want = [len(a) for m in per_chunk for a in np.array_split(np.arange(m), min(2 * threads, m))]
        self.assertEqual(sorted(c["rows"] for c in calls), sorted(want))
        self.assertEqual(sum(c["rows"] for c in calls), 37)
        cq, cg, _, _ = ev_exact._conditioned(x, x)
        g = calls[0]["b"]   # [-2 g; |g|^2], 37 columns padded to 48 at a finite, larger-than-any score
        self.assertEqual(g.shape, (6, 48))
        self.assertEqual(g.dtype, np.float32)
        self.assertEqual({c["out"] for c in calls}, {np.dtype(np.float32)})   # float32 scores
        self.assertLessEqual(len({c["worker"] for c in calls}), threads)     # the engine's own threads, no more
        np.testing.assert_array_equal(g[:5, :37], -2 * cg.T)
        np.testing.assert_array_equal(g[5, :37], np.einsum("nd,nd->n", cg, cg, dtype=np.float64).astype(np.float32))
        np.testing.assert_array_equal(g[:5, 37:], 0)
        np.testing.assert_array_equal(g[5, 37:], np.float32(np.finfo(np.float32).max / 2))
        rows = np.concatenate([c["a"] for c in sorted(calls, key=lambda c: c["a"][:, :5].tobytes())])
        self.assertEqual(sorted(map(bytes, rows[:, :5])), sorted(map(bytes, cq)))
        np.testing.assert_array_equal(rows[:, 5], 1)   # [q, 1]
        # BLAS is single-threaded inside the engine's own threads (and left alone with one thread).
        for c in calls:
          self.assertEqual(c["blas"], {1} if threads > 1 else {i["num_threads"] for i in before
                                                               if i["user_api"] == "blas"})
    self.assertEqual(threadpoolctl.threadpool_info(), before)   # restored afterwards

  @parameterized.parameters((1, 1024), (3, 7), (2, 100))
  def test_engines_give_the_same_neighbours(self, threads, chunk):
    # Near ties: float32 misorders some neighbours, so the re-ranking decides; both engines, any split.
    x = near_ties(600, seed=1, d=32, grid=8)
    y = np.random.default_rng(2).integers(0, 30, 600)
    want = numpy_neighbors(x, x, True, 12)
    with mock.patch.object(ev_host, "_host_threads", return_value=threads):
      idx, d2 = ev.nearest_neighbors(x, k=12, chunk_size=chunk, engine="host")
      got = ev.evaluate(x, y, recall_ks=(1, 4), clustering=False, chunk_size=chunk, knn_engine="host")
      qg = ev.evaluate_query_gallery(x[:50], y[:50], x[50:], y[50:], recall_ks=(1, 4), chunk_size=chunk,
                                     knn_engine="host")
    np.testing.assert_array_equal(idx, want)
    device = ev.nearest_neighbors(x, k=12, chunk_size=chunk, engine="device")
    np.testing.assert_array_equal(device[0], want)
    np.testing.assert_array_equal(d2, device[1])   # the exact distances, recomputed in float64
    self.assertEqual(got, ev.evaluate(x, y, recall_ks=(1, 4), clustering=False, knn_engine="device"))
    self.assertEqual(qg, ev.evaluate_query_gallery(x[:50], y[:50], x[50:], y[50:], recall_ks=(1, 4),
                                                   knn_engine="device"))

  def test_one_pass_leave_one_out_in_two_stages(self):
    # Under two tiles, the one-pass host search masks each query itself at +inf: its column's group of 16
    # must stay selectable (a NaN there would hide the group's 15 other items from the two stages).
    x = near_ties(1500, seed=9, d=8, grid=4)
    calls = []
    real = np.argpartition
    with mock.patch.object(np, "argpartition", lambda *a, **kw: calls.append(1) or real(*a, **kw)), \
        mock.patch.object(ev_host, "_host_threads", return_value=2):
      idx, _ = ev.nearest_neighbors(x, k=3, engine="host")
    self.assertEqual(len(calls), 2 * 2 * 4)   # two stages in each slice: 2 chunks of 4 slices (2 per thread)
    np.testing.assert_array_equal(idx, numpy_neighbors(x, x, True, 3))

  def test_the_leave_one_out_search_is_symmetric_from_two_tiles(self):
    # Two tiles or more of queries searched among themselves: half the products; else one pass per chunk.
    real = ev_host._symmetric_candidates
    for n, engine, gallery, used in ((2 * ev_host._TILE, "host", None, True), (2 * ev_host._TILE - 1, "host", None, False),
                                     (2 * ev_host._TILE, "device", None, False), (2 * ev_host._TILE, "host", "x", False)):
      x = np.random.default_rng(n).normal(size=(n, 3)).astype(np.float32)
      calls = []
      with mock.patch.object(ev_host, "_symmetric_candidates", lambda *a: calls.append(1) or real(*a)):
        idx, _ = ev.nearest_neighbors(x, None if gallery is None else x, k=2, engine=engine)
      self.assertEqual(calls, [1] if used else [], (n, engine, gallery))
      self.assertFalse((idx == np.arange(n)[:, None]).any() if gallery is None else False)

  def test_symmetric_products_run_a_single_threaded_blas_in_the_engine_threads(self):
    x = near_ties(100, seed=2, d=4)
    before = threadpoolctl.threadpool_info()
    for threads in (1, 2, 3):
      spy = ProductSpy(self)
      with mock.patch.object(ev_host, "_TILE", 16), mock.patch.object(ev_host, "_host_threads", return_value=threads), \
          mock.patch.object(np, "matmul", spy):
        idx, _ = ev.nearest_neighbors(x, k=3, engine="host")
      self.assertLen(spy.seen, 7 * 8 // 2)   # 7 tiles: 28 pairs, each one product
      self.assertEqual(spy.seen, [{1} if threads > 1 else _blas_threads(before)] * 28, threads)
      self.assertLessEqual(len(spy.workers), threads)
      np.testing.assert_array_equal(idx, numpy_neighbors(x, x, True, 3))
    self.assertEqual(threadpoolctl.threadpool_info(), before)

  @parameterized.parameters((16, 1), (16, 3), (7, 2), (50, 2))
  def test_symmetric_search_with_any_tiles_and_threads(self, tile, threads):
    # Near ties, exact duplicates (ties to the smaller index) and k larger than a tile.
    x = near_ties(300, seed=7, d=16, grid=6)
    x[::10] = x[5]
    with mock.patch.object(ev_host, "_TILE", tile), mock.patch.object(ev_host, "_host_threads", return_value=threads):
      for k in (1, 12, 40):
        idx, d2 = ev.nearest_neighbors(x, k=k, engine="host")
        np.testing.assert_array_equal(idx, numpy_neighbors(x, x, True, k), (k, tile, threads))
        np.testing.assert_array_equal(d2, ev.nearest_neighbors(x, k=k, engine="device")[1])


class ReservoirTest(chex.TestCase):
  """``_Reservoir``: the kc smallest scores of each row among everything offered, whatever the order."""

  @parameterized.parameters((5, 3), (5, 40), (12, 9))
  def test_keeps_the_smallest_values(self, kc, width):
    rng = np.random.default_rng(kc * width)
    rows = 6
    blocks = [rng.integers(0, 30, size=(rows, width)).astype(np.float32) for _ in range(12)]   # ties
    blocks[3][2] = -np.arange(width)                  # a row whose offers grow closer block by block ...
    blocks[7][2] = -100 - np.arange(width)
    blocks[5][4] = np.inf                             # ... and one with nothing finite to offer
    keep = ev_host._Reservoir(rows, kc)
    keep.start(blocks[0], 0)
    merged = []
    real = keep._merge
    keep._merge = lambda rows_, *a: merged.append(rows_.size) or real(rows_, *a)
    for b, v in enumerate(blocks[1:], 1):
      rr, cc = np.nonzero(v < keep.tau[:, None])
      keep.offer(rr, b * width + cc.astype(np.int32), v[rr, cc])
      self.assertTrue((keep.fill <= keep.cap).all())
    allv = np.concatenate(blocks, axis=1)
    columns, values = keep.result()
    np.testing.assert_array_equal(values, np.sort(allv, axis=1)[:, :kc])   # ascending
    np.testing.assert_array_equal(np.take_along_axis(allv, columns, axis=1), values)
    self.assertTrue(all(len(set(r)) == kc for r in columns.tolist()))
    self.assertNotEqual(merged, [])   # merges happened
    if width < kc:   # a first offer narrower than kc keeps everything and no threshold
      fresh = ev_host._Reservoir(rows, kc)
      fresh.start(blocks[0], 0)
      self.assertTrue(np.isinf(fresh.tau).all())
      self.assertTrue((fresh.fill == width).all())

  def test_an_offer_larger_than_the_room_is_merged_at_once(self):
    keep = ev_host._Reservoir(2, 2)
    self.assertEqual(keep.cap, 4)   # room for 2 kc per row
    keep.start(np.array([[5.0, 6.0], [1.0, 2.0]], np.float32), 0)
    v = np.array([[4.0, 3.0, 9.0, 0.5, 7.0], [8.0, 8.0, 8.0, 8.0, 8.0]], np.float32)
    rr, cc = np.nonzero(v < keep.tau[:, None])
    self.assertEqual(rr.tolist(), [0, 0, 0])           # row 0: 3 offers on top of 2 kept: over 4
    keep.offer(rr, 10 + cc.astype(np.int32), v[rr, cc])
    self.assertEqual(keep.fill.tolist(), [2, 2])
    self.assertEqual(keep.tau.tolist(), [3.0, 2.0])
    columns, values = keep.result()
    self.assertEqual(values.tolist(), [[0.5, 3.0], [1.0, 2.0]])
    self.assertEqual(columns.tolist(), [[13, 11], [0, 1]])


  def test_rows_merged_together_with_unequal_offers(self):
    # Two rows overflow in one offer, with different numbers of offers and kept scores: the merge pads the
    # shorter row at +inf, which never displaces a score.
    keep = ev_host._Reservoir(3, 2)
    keep.start(np.array([[5.0, 6.0, 7.0], [1.0, 2.0, 9.0], [4.0, 4.0, 4.0]], np.float32), 0)
    keep.offer(np.array([0, 0]), np.array([3, 4], np.int32), np.array([4.5, 4.0], np.float32))   # row 0 full
    self.assertEqual(keep.fill.tolist(), [4, 2, 2])
    rr = np.array([0, 1, 1, 1])
    keep.offer(rr, np.array([5, 6, 7, 8], np.int32), np.array([0.125, 0.5, 0.75, 1.5], np.float32))
    self.assertEqual(keep.fill.tolist(), [2, 2, 2])   # rows 0 (4 + 1) and 1 (2 + 3) merged together
    columns, values = keep.result()
    self.assertEqual(values.tolist(), [[0.125, 4.0], [0.5, 0.75], [4.0, 4.0]])
    self.assertEqual(columns.tolist(), [[5, 4], [6, 7], [0, 1]])


class HostKmeansTest(chex.TestCase):
  """Lloyd's assignment step on the host engine (``_assign_host``), the default on a CPU backend."""

  @parameterized.parameters((1, 1024), (3, 7), (2, 64))
  def test_assign_host_matches_a_float64_brute_force(self, threads, rows):
    rng = np.random.default_rng(threads)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    c = rng.normal(size=(11, 6)).astype(np.float32) * 2
    d = ((x.astype(np.float64)[:, None] - c[None]) ** 2).sum(-1)
    with mock.patch.object(ev_host, "_host_threads", return_value=threads):
      idx, d2 = ev_host._assign_host(x, jnp.asarray(c), rows=rows)
    np.testing.assert_array_equal(idx, d.argmin(axis=1))
    self.assertEqual((idx.dtype, d2.dtype), (np.int32, np.float32))
    np.testing.assert_allclose(d2, d.min(axis=1), rtol=1e-6)
    device_idx, device_d2 = ev_device._assign(jnp.asarray(x), jnp.asarray(c), chunk=60)
    np.testing.assert_array_equal(idx, device_idx)
    np.testing.assert_allclose(d2, device_d2, rtol=1e-4, atol=1e-5)

  def test_blas_is_single_threaded_inside_the_tasks(self):
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    c = x[:4]
    before = threadpoolctl.threadpool_info()
    norms = np.einsum("kd,kd->k", c, c, dtype=np.float64).astype(np.float32)   # |c|^2 rounded once
    for threads in (1, 2, 3):
      spy = ProductSpy(self, check=lambda a, b: np.testing.assert_array_equal(b[3], norms))
      with mock.patch.object(ev_host, "_host_threads", return_value=threads), mock.patch.object(np, "matmul", spy):
        idx, _ = ev_host._assign_host(x, c, rows=16)
      self.assertEqual(spy.seen, [{1} if threads > 1 else _blas_threads(before)] * 4, threads)   # 4 tasks of 16
      self.assertLessEqual(len(spy.workers), threads)   # the engine's own threads, no more
      np.testing.assert_array_equal(idx, ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1))
    self.assertEqual(threadpoolctl.threadpool_info(), before)

  def test_engines(self):
    x, y = _data(seed=5, n=120, classes=6, spread=0.3)
    calls = {"host": 0, "device": 0}
    real_host, real_device = ev_host._assign_host, ev_device._assign

    def host(*a, **kw):
      calls["host"] += 1
      return real_host(*a, **kw)

    def device(*a, **kw):
      calls["device"] += 1
      return real_device(*a, **kw)

    results = {}
    with mock.patch.object(ev_host, "_assign_host", host), mock.patch.object(ev_device, "_assign", device):
      for engine in ("auto", "host", "device"):
        before = dict(calls)
        results[engine] = ev.kmeans(x, 6, engine=engine)
        used = {e for e in calls if calls[e] > before[e]}
        self.assertEqual(used, {"device" if engine == "device" else "host"}, engine)   # "auto": the host on a CPU
        before = dict(calls)
        ev.evaluate(x, y, recall_ks=(1,), knn_engine=engine)
        self.assertEqual({e for e in calls if calls[e] > before[e]}, used, engine)
    for engine in ("host", "device"):
      np.testing.assert_array_equal(results[engine][0], results["auto"][0])
      np.testing.assert_allclose(results[engine][1], results["auto"][1], rtol=1e-5, atol=1e-5)
    with self.assertRaisesWithLiteralMatch(ValueError, "kNN engine must be one of ('auto', 'device', 'host'), "
                                                       "got 'cuda'."):
      ev.kmeans(x, 6, engine="cuda")

  def test_an_error_in_a_task_stops_the_search(self):
    # The first failing task raises, and the tasks not yet started are cancelled, not run to the end.
    x = near_ties(200, seed=3, d=4)
    calls = []

    def fail(*a, **kw):
      calls.append(1)
      raise FloatingPointError("boom")

    with mock.patch.object(ev_host, "_TILE", 8), mock.patch.object(ev_host, "_host_threads", return_value=1), \
        mock.patch.object(ev_host._Reservoir, "start", fail):
      with self.assertRaisesRegex(FloatingPointError, "boom"):
        ev.nearest_neighbors(x, k=3, engine="host")
    self.assertLess(len(calls), 5)   # 25 tiles, 325 pairs: stopped after the first
