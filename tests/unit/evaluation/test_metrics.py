"""Retrieval and clustering metrics against brute force and scikit-learn, with their edge cases."""

import math

import chex
import numpy as np

from hdml_jax import evaluation as ev
from hdml_jax.evaluation import _metrics as ev_metrics
from tests.helpers.evaluation import OnDevice, SmallTiles, blobs, brute_metrics, brute_neighbors


class RetrievalMetricsTest(chex.TestCase):

  def test_matches_brute_force(self):
    x, y = blobs(seed=2, n=60, spread=2.5)
    got = ev.evaluate(x, y, recall_ks=(1, 2, 4, 8, 16), clustering=False)
    rec, rp, mapr, used = brute_metrics(x, y, (1, 2, 4, 8, 16))
    for k, v in rec.items():
      self.assertAlmostEqual(got[f"recall@{k}"], v)
    self.assertAlmostEqual(got["precision@1"], rec[1])
    self.assertAlmostEqual(got["r_precision"], rp)
    self.assertAlmostEqual(got["map@r"], mapr)
    self.assertEqual(got["num_queries_map@r"], used)

  def test_hand_made_map_at_r_and_singletons(self):
    # 1-D points: class A at 0, 1, 3; class B at 2 (and 2.1); class C a singleton at 10.
    x = np.array([[0.0], [1.0], [3.0], [2.0], [2.1], [10.0]], np.float32)
    y = np.array([0, 0, 0, 1, 1, 2])
    got = ev.evaluate(x, y, recall_ks=(1, 2), clustering=False)
    # Query 0: R=2, order 1(A), 3(B) -> AP = (1/1)/2 = 0.5, RP = 0.5.
    # Query 1: R=2, order 0(A) (d=1), 3(B) (d=1, index 0 < 3 tie) -> AP 0.5, RP 0.5.
    # Query 2: R=2, order 4(B) .9, 3(B) 1 -> AP 0, RP 0.
    # Query 3: R=1, order 4(B) -> 1.  Query 4: R=1, order 3(B) -> 1.
    # Query 5 (singleton C): left out of MAP@R and R-precision.
    self.assertEqual(got["num_queries_map@r"], 5)
    self.assertAlmostEqual(got["map@r"], (0.5 + 0.5 + 0 + 1 + 1) / 5)
    self.assertAlmostEqual(got["r_precision"], (0.5 + 0.5 + 0 + 1 + 1) / 5)
    # Recall counts the singleton as a miss.
    self.assertAlmostEqual(got["recall@1"], 4 / 6)

  def test_k_beyond_class_size_and_gallery(self):
    x, _ = blobs(seed=3, n=12, classes=4)
    y = np.repeat(np.arange(4), 3)
    got = ev.evaluate(x, y, recall_ks=(11,), clustering=False)
    self.assertEqual(got["recall@11"], 1.0)   # the whole gallery holds every class
    with self.assertRaisesRegex(ValueError, r"recall K values \[12\] must lie in \[1, 11\]"):
      ev.evaluate(x, y, recall_ks=(12,))

  def test_query_gallery_mode(self):
    q, ql = blobs(seed=4, n=30, spread=2.0)
    g, gl = blobs(seed=5, n=50, spread=2.0)
    got = ev.evaluate_query_gallery(q, ql, g, gl, recall_ks=(1, 5))
    nbrs = brute_neighbors(q, g, False)
    for k in (1, 5):
      self.assertAlmostEqual(got[f"recall@{k}"], np.mean([any(gl[j] == ql[i] for j in nb[:k])
                                                          for i, nb in enumerate(nbrs)]))
    aps = []
    for i, nb in enumerate(nbrs):
      r = int(np.sum(gl == ql[i]))
      if r:
        rel = [gl[j] == ql[i] for j in nb[:r]]
        aps.append(sum(np.mean(rel[:p + 1]) for p in range(r) if rel[p]) / r)
    self.assertAlmostEqual(got["map@r"], np.mean(aps))

  def test_errors(self):
    x, y = blobs(n=10)
    bad = x.copy()
    bad[3, 1] = np.nan
    with self.assertRaisesRegex(ValueError, r"1 rows with NaN or infinite values \(first rows: \[3\]\)"):
      ev.evaluate(bad, y)
    bad[3, 1] = np.inf
    with self.assertRaisesRegex(ValueError, "NaN or infinite"):
      ev.evaluate(bad, y)
    with self.assertRaisesRegex(ValueError, r"`labels` must have shape \(10,\).*\(9,\)"):
      ev.evaluate(x, y[:9])
    with self.assertRaisesRegex(ValueError, "at least 2 classes"):
      ev.evaluate(x, np.zeros(10, int))
    with self.assertRaisesRegex(TypeError, "integer class ids"):
      ev.evaluate(x, y.astype(float))
    with self.assertRaisesRegex(ValueError, r"must be \[N, D\]"):
      ev.evaluate(x[0], y)


class RetrievalMetricsOnDeviceTest(OnDevice, RetrievalMetricsTest):
  pass


class RetrievalMetricsInSmallTilesTest(SmallTiles, RetrievalMetricsTest):
  pass


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

