"""The host engine: BLAS threads, the symmetric leave-one-out path, the reservoirs, k-means' host assignment."""

import concurrent.futures
import threading
import time
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl
from absl.testing import parameterized

from hdml_jax import evaluation as ev
from hdml_jax.evaluation import _device as ev_device
from hdml_jax.evaluation import _exact as ev_exact
from hdml_jax.evaluation import _host as ev_host
from hdml_jax.evaluation import _select as ev_select
from tests.helpers.evaluation import ProductSpy, blas_threads, blobs, eval_data, near_ties, numpy_neighbors


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
    x, y = eval_data()
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
      self.assertEqual(spy.seen, [{1} if threads > 1 else blas_threads(before)] * 28, threads)
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
      self.assertEqual(spy.seen, [{1} if threads > 1 else blas_threads(before)] * 4, threads)   # 4 tasks of 16
      self.assertLessEqual(len(spy.workers), threads)   # the engine's own threads, no more
      np.testing.assert_array_equal(idx, ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1))
    self.assertEqual(threadpoolctl.threadpool_info(), before)

  def test_engines(self):
    x, y = eval_data(seed=5, n=120, classes=6, spread=0.3)
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
    # The first failing task raises, and the tasks not yet started do not run: the workers stop
    # themselves, however late the waiting thread wakes up (here it waits 0.2 s before each result,
    # as on a loaded machine; the search has 25 tiles, 325 pairs, one worker).
    x = near_ties(200, seed=3, d=4)
    calls = []

    def fail(*a, **kw):
      calls.append(1)
      raise FloatingPointError("boom")

    result = concurrent.futures.Future.result

    def late_result(self, *a, **kw):
      time.sleep(0.2)
      return result(self, *a, **kw)

    with mock.patch.object(ev_host, "_TILE", 8), mock.patch.object(ev_host, "_host_threads", return_value=1), \
        mock.patch.object(ev_host._Reservoir, "start", fail), \
        mock.patch.object(concurrent.futures.Future, "result", late_result):
      with self.assertRaisesRegex(FloatingPointError, "boom"):
        ev.nearest_neighbors(x, k=3, engine="host")
    self.assertLess(len(calls), 5)
    self.assertEqual(len(calls), 1)   # one worker: nothing starts after the failure

