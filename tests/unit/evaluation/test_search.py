"""The exact search: neighbours against brute force on both engines, conditioning, the float32 error bound, the float64 re-ranking, the selection helpers."""

from unittest import mock

import chex
import jax
import numpy as np
from absl.testing import parameterized

from hdml_jax import evaluation as ev
from hdml_jax.evaluation import _checks as ev_checks
from hdml_jax.evaluation import _device as ev_device
from hdml_jax.evaluation import _exact as ev_exact
from hdml_jax.evaluation import _select as ev_select
from tests.helpers.evaluation import (
  OnDevice,
  SmallTiles,
  blobs,
  brute_neighbors,
  eval_data,
  metrics_from_neighbors,
  near_ties,
  numpy_neighbors,
)


class NeighborsTest(chex.TestCase):

  @parameterized.product(chunk=(1, 7, 1000))
  def test_matches_brute_force(self, chunk):
    x, _ = blobs(n=40)
    idx, d2 = ev.nearest_neighbors(x, k=39, chunk_size=chunk)
    want = brute_neighbors(x, x, True)
    np.testing.assert_array_equal(idx, np.array(want))
    np.testing.assert_allclose(d2[:, 0], [np.sum((x[i] - x[want[i][0]]) ** 2) for i in range(40)],
                               rtol=1e-4, atol=1e-4)
    g, _ = blobs(seed=1, n=25)
    idx, _ = ev.nearest_neighbors(x, g, k=25, chunk_size=chunk)
    np.testing.assert_array_equal(idx, np.array(brute_neighbors(x, g, False)))

  def test_ties_go_to_smaller_index(self):
    x = np.array([[0.0], [1.0], [1.0], [1.0], [5.0]], np.float32)
    idx, _ = ev.nearest_neighbors(x, k=4)
    np.testing.assert_array_equal(idx[0], [1, 2, 3, 4])
    np.testing.assert_array_equal(idx[2], [1, 3, 0, 4])

  def test_shifted_and_scaled_copies_give_identical_neighbours(self):
    # Points on a grid of 1/256 in [-8, 8]: shifting by 1e4 and scaling by
    # powers of two are exact in float32, so the exact neighbours (float64
    # brute force, ties to the smaller index) must not change at all.
    rng = np.random.default_rng(3)
    x = (rng.integers(-2048, 2048, size=(60, 6)) / 256).astype(np.float32)
    want = np.array(brute_neighbors(x, x, True))[:, :12]
    for name, copy, back in (("shift 1e4", x + np.float32(1e4), lambda c: c - np.float32(1e4)),
                             ("shift -3e3", x - np.float32(3e3), lambda c: c + np.float32(3e3)),
                             ("scale 2^-66 (~1e-20)", x * np.float32(2.0 ** -66), lambda c: c * np.float32(2.0 ** 66)),
                             ("scale 2^66 (~7e19)", x * np.float32(2.0 ** 66), lambda c: c * np.float32(2.0 ** -66))):
      with self.subTest(name):
        np.testing.assert_array_equal(back(copy), x)   # the copy is exact
        idx, _ = ev.nearest_neighbors(copy, k=12, chunk_size=16, return_float64=True)
        np.testing.assert_array_equal(idx, want)
    # The reported squared distances are the exact ones, in the input's units.
    _, d2 = ev.nearest_neighbors(x + np.float32(1e4), k=3)
    np.testing.assert_array_equal(d2, [[np.sum((x[i].astype(np.float64) - x[j]) ** 2) for j in want[i, :3]]
                                       for i in range(60)])
    with self.assertRaisesRegex(ValueError, "exceed the float32 range; rescale"):
      ev.nearest_neighbors(x * np.float32(2.0 ** 66), k=3)

  def test_many_ties_beyond_the_candidates_rank_the_whole_gallery(self):
    # 30 coincident points: every candidate ties with every non-candidate, so
    # the search must look past its spare candidates (ties to the smaller index).
    x = np.concatenate([np.ones((30, 3), np.float32), np.zeros((1, 3), np.float32)])
    idx, d2 = ev.nearest_neighbors(x, k=3)
    np.testing.assert_array_equal(idx, np.array(brute_neighbors(x, x, True))[:, :3])
    np.testing.assert_array_equal(idx[30], [0, 1, 2])
    np.testing.assert_array_equal(d2[30], [3.0, 3.0, 3.0])

  def test_far_from_the_origin_clusters_are_still_retrieved(self):
    # Well-separated clusters shifted by 1e4 or scaled by 1e-20 / 1e20:
    # the expanded |q|^2 + |g|^2 - 2 q.g in float32 loses them.
    x, y = blobs(seed=5, n=90, classes=5, spread=0.05)
    base = ev.evaluate(x, y, clustering=True)
    self.assertEqual(base["recall@1"], 1.0)
    for factor, shift in ((1.0, 1e4), (1e-20, 0.0), (1e20, 0.0), (1e3, 1e3)):
      with self.subTest(factor=factor, shift=shift):
        got = ev.evaluate(x * np.float32(factor) + np.float32(shift), y)
        self.assertEqual(got["recall@1"], 1.0)
        self.assertEqual(got["map@r"], base["map@r"])
        self.assertAlmostEqual(got["nmi"], base["nmi"], places=6)

  def test_errors(self):
    x, _ = blobs(n=5)
    with self.assertRaisesRegex(ValueError, r"k=5 neighbours requested but only 4 .*query itself excluded"):
      ev.nearest_neighbors(x, k=5)
    with self.assertRaisesRegex(ValueError, "differ in D"):
      ev.nearest_neighbors(x, x[:, :2], k=1)


class WideGalleryTest(chex.TestCase):
  """Galleries wide enough for the two-stage selection (more than 4 k groups of columns)."""

  def test_two_stage_selection_keeps_the_k_smallest_values(self):
    rng = np.random.default_rng(0)
    score = rng.integers(0, 50, size=(24, 3 * 512)).astype(np.float32)   # many ties
    score[3, 100:200] = np.inf
    k = 20
    self.assertGreaterEqual(score.shape[1] // ev_select._GROUP, 4 * k)   # the two-stage path
    cols, values = ev_select._smallest(score, k)
    values, cols = np.asarray(values), np.asarray(cols)
    np.testing.assert_array_equal(values, np.sort(score, axis=1)[:, :k])
    np.testing.assert_array_equal(np.take_along_axis(score, cols, axis=1), values)
    self.assertTrue(all(len(set(row)) == k for row in cols.tolist()))   # distinct columns

  @parameterized.parameters(False, True)
  def test_near_ties_match_the_float64_brute_force(self, return_float64):
    x = near_ties(1100, seed=1)
    k = 12
    want = numpy_neighbors(x, x, True, k)
    # The data are hard: float32 distances order some rows differently from the exact order.
    x32 = x.astype(np.float32)
    d32 = (x32 ** 2).sum(1)[:, None] + (x32 ** 2).sum(1)[None] - 2 * x32 @ x32.T
    np.fill_diagonal(d32, np.inf)
    self.assertFalse(np.array_equal(np.argsort(d32, axis=1, kind="stable")[:, :k], want))
    idx, d2 = ev.nearest_neighbors(x, k=k, chunk_size=256, return_float64=return_float64)
    np.testing.assert_array_equal(idx, want)
    exact = ((x.astype(np.float64)[:, None] - x[want]) ** 2).sum(-1)
    np.testing.assert_allclose(d2, exact, rtol=1e-6, atol=1e-9)
    g = near_ties(1000, seed=2)
    idx, _ = ev.nearest_neighbors(x[:300], g, k=k, chunk_size=128, return_float64=return_float64)
    np.testing.assert_array_equal(idx, numpy_neighbors(x[:300], g, False, k))

  def test_metrics_with_near_ties_across_labels_match_the_brute_force(self):
    # Random labels: close runs mix relevant and irrelevant neighbours, so their order matters.
    x = near_ties(1100, seed=3)
    y = np.random.default_rng(4).integers(0, 40, x.shape[0])
    ks = (1, 2, 4, 16)
    got = ev.evaluate(x, y, recall_ks=ks, clustering=False)
    k = max(max(ks), int(np.bincount(y).max()) - 1)
    rec, rp, mapr = metrics_from_neighbors(numpy_neighbors(x, x, True, k), y, y, ks, True)
    for kk in ks:
      self.assertAlmostEqual(got[f"recall@{kk}"], rec[kk], places=12)
    self.assertAlmostEqual(got["r_precision"], rp, places=12)
    self.assertAlmostEqual(got["map@r"], mapr, places=12)
    g, q = x[:1000], near_ties(200, seed=5)
    gl, ql = y[:1000], np.random.default_rng(6).integers(0, 40, 200)
    got = ev.evaluate_query_gallery(q, ql, g, gl, recall_ks=ks)
    k = max(max(ks), int(np.bincount(gl).max()))
    rec, rp, mapr = metrics_from_neighbors(numpy_neighbors(q, g, False, k), ql, gl, ks, False)
    for kk in ks:
      self.assertAlmostEqual(got[f"recall@{kk}"], rec[kk], places=12)
    self.assertAlmostEqual(got["map@r"], mapr, places=12)


class NeighborsOnDeviceTest(OnDevice, NeighborsTest):
  pass


class NeighborsInSmallTilesTest(SmallTiles, NeighborsTest):
  pass


class WideGalleryInSmallTilesTest(SmallTiles, WideGalleryTest):
  pass


class WideGalleryOnDeviceTest(OnDevice, WideGalleryTest):
  pass


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
    x, _ = eval_data(n=40, d=16)   # 40 rows: bucket 48, so the gallery has 8 padding rows
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


class ErrorBoundOnDeviceTest(OnDevice, ErrorBoundTest):
  pass


class SearchShapesOnDeviceTest(OnDevice, SearchShapesTest):
  pass


class ErrorBoundInSmallTilesTest(SmallTiles, ErrorBoundTest):
  pass


class SearchShapesInSmallTilesTest(SmallTiles, SearchShapesTest):
  pass

