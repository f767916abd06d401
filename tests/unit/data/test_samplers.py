"""The batch samplers' contracts: layouts, class and image distinctness, epoch coverage, errors."""

import numpy as np
from absl.testing import absltest, parameterized

from hdml_jax.data import EpochNPairSampler, MPerClassSampler, NPairSampler, TripletSampler, make_sampler


def sized(*counts):
  """Labels with ``counts[c]`` images of class ``10 * c + 7`` (ids that are not positions)."""
  return np.concatenate([np.full(n, 10 * c + 7) for c, n in enumerate(counts)])


class ClassIndexErrorsTest(parameterized.TestCase):

  @parameterized.parameters(
      ("NPairSampler", lambda y: NPairSampler(y, num_pairs=2)),
      ("TripletSampler", lambda y: TripletSampler(y, num_triplets=2)),
      ("MPerClassSampler", lambda y: MPerClassSampler(y, m=2, batch_size=4)),
  )
  def test_bad_labels_name_the_sampler(self, name, make):
    with self.assertRaisesRegex(ValueError, rf"^{name}: labels must be a non-empty 1-D array, got shape \(2, 3\)"):
      make(np.zeros((2, 3), int))
    with self.assertRaisesRegex(ValueError, rf"^{name}: labels must be a non-empty 1-D array, got shape \(0,\)"):
      make(np.zeros(0, int))
    with self.assertRaisesRegex(ValueError, rf"^{name}: every class needs at least 2 images; "
                                            r"classes \[17\] have fewer \(counts \[1\]\)"):
      make(sized(3, 1, 2, 2))

  def test_small_class_listing(self):
    # Classes with exactly the minimum are not listed; more than 10 small classes end in "...".
    with self.assertRaisesRegex(ValueError, r"classes \[7, 27\] have fewer \(counts \[1, 1\]\)\.$"):
      NPairSampler(sized(1, 2, 1, 2), num_pairs=2)
    ten = sized(*([1] * 10 + [2]))
    with self.assertRaisesRegex(ValueError, r"classes \[7, 17, .*, 97\] have fewer \(counts \[1(, 1){9}\]\)\.$"):
      NPairSampler(ten, num_pairs=2)
    eleven = sized(*([1] * 11 + [2]))
    with self.assertRaisesRegex(ValueError, r"classes \[7, 17, .*, 97\]\.\.\. have fewer \(counts \[1(, 1){9}\]\)\.$"):
      NPairSampler(eleven, num_pairs=2)

  def test_a_single_image_is_enough_for_m_1(self):
    s = MPerClassSampler(np.array([5]), m=1, batch_size=1)
    np.testing.assert_array_equal(s(0), [0])
    np.testing.assert_array_equal(s(3), [0])


class NPairSamplerTest(parameterized.TestCase):

  def test_layout_and_bounds(self):
    y = sized(2, 2, 2, 3)   # classes with exactly two images are enough
    for num_pairs in (2, 4):
      s = NPairSampler(y, num_pairs=num_pairs, seed=1)
      self.assertEqual(s.batch_size, 2 * num_pairs)
      for step in range(20):
        b = s(step)
        self.assertEqual(b.shape, (2 * num_pairs,))
        a, p = b[:num_pairs], b[num_pairs:]
        np.testing.assert_array_equal(y[a], y[p])
        self.assertEqual(len(set(y[a])), num_pairs)       # distinct classes
        self.assertTrue(np.all(a != p))                   # two distinct images per pair
    with self.assertRaisesRegex(ValueError, r"^NPairSampler: num_pairs must be >= 2, got 1\."):
      NPairSampler(y, num_pairs=1)
    with self.assertRaisesRegex(ValueError, r"^NPairSampler: num_pairs=5 distinct classes requested but the data "
                                            r"has only 4 classes\."):
      NPairSampler(y, num_pairs=5)


class TripletSamplerTest(parameterized.TestCase):

  def check_batches(self, y, t, anchors, seed=0, steps=30):
    s = TripletSampler(y, num_triplets=t, seed=seed)
    self.assertEqual(s.batch_size, 3 * t)
    for step in range(steps):
      b = s(step)
      self.assertEqual(b.shape, (3 * t,))
      a, p, n = b[:t], b[t:2 * t], b[2 * t:]
      np.testing.assert_array_equal(y[a], y[p])
      self.assertTrue(np.all(a != p))
      self.assertEqual(len(set(y[a])), anchors)              # the anchor classes, cycled
      self.assertFalse(set(y[n]) & set(y[a]))               # negatives outside every anchor class

  def test_layout(self):
    self.check_batches(sized(2, 2, 2, 2, 2), t=10, anchors=2)   # min(T, C // 2) anchor classes
    self.check_batches(sized(2, 2, 2), t=1, anchors=1)
    self.check_batches(sized(2, 3), t=1, anchors=1)             # two classes are enough
    self.check_batches(sized(4, 4, 4, 4, 4, 4, 4), t=2, anchors=2)

  def test_negatives_are_drawn_with_replacement(self):
    # 2 anchor classes leave 2 negative classes for 6 negatives.
    y = sized(2, 2, 2, 2)
    b = TripletSampler(y, num_triplets=6, seed=0)(0)
    self.assertEqual(len(set(y[b[12:]])), 2)

  def test_bounds(self):
    with self.assertRaisesRegex(ValueError, r"^TripletSampler: num_triplets must be >= 1, got 0\."):
      TripletSampler(sized(2, 2), num_triplets=0)
    with self.assertRaisesRegex(ValueError, r"^TripletSampler: needs at least 2 classes, the data has 1\."):
      TripletSampler(sized(4), num_triplets=1)


class MPerClassSamplerTest(parameterized.TestCase):

  def test_argument_errors(self):
    y = sized(4, 4, 4)
    with self.assertRaisesRegex(ValueError, r"^MPerClassSampler: batch_size=4 must be a multiple of m=0 >= 1\."):
      MPerClassSampler(y, m=0, batch_size=4)
    with self.assertRaisesRegex(ValueError, r"^MPerClassSampler: batch_size=5 must be a multiple of m=2 >= 1\."):
      MPerClassSampler(y, m=2, batch_size=5)
    with self.assertRaisesRegex(ValueError, r"^MPerClassSampler: 4 distinct classes per batch requested but the "
                                            r"data has only 3 classes\."):
      MPerClassSampler(y, m=2, batch_size=8)
    with self.assertRaisesRegex(ValueError, r"^MPerClassSampler: every class needs at least 3 images"):
      MPerClassSampler(sized(3, 2, 3), m=3, batch_size=6)
    s = MPerClassSampler(y, m=2, batch_size=6)   # as many classes per batch as the data has
    self.assertEqual(s(0).shape, (6,))
    self.assertEqual(MPerClassSampler(y, m=1, batch_size=3)(0).shape, (3,))

  @parameterized.parameters((4, 8, (5, 6, 7, 9, 4, 13)), (3, 6, (3, 4, 5, 7, 8)), (2, 6, (2, 3, 40, 5, 4)))
  def test_every_batch_has_distinct_classes_and_images(self, m, batch_size, counts):
    y = sized(*counts)
    for seed in range(4):
      s = MPerClassSampler(y, m=m, batch_size=batch_size, seed=seed)
      for epoch in range(3):
        plan = s._plan(epoch)
        seen = set()
        for b in plan:
          chunks = b.reshape(-1, m)
          self.assertEqual(len({int(y[c[0]]) for c in chunks}), batch_size // m, b)   # distinct classes
          for c in chunks:
            self.assertEqual(len(set(y[c])), 1)       # one class per chunk
            self.assertEqual(len(set(c)), m, c)       # m distinct images
          seen |= set(b.tolist())
        self.assertEqual(seen, set(range(y.size)))     # every image at least once per epoch

  def test_classes_with_the_most_chunks_left_come_first(self):
    # One class with 20 chunks, five with 2: the big class is in every batch of the epoch,
    # the others run out after 10 batches and the rest are filled with chunks seen again.
    y = sized(4, 4, 40, 4, 4, 4)
    s = MPerClassSampler(y, m=2, batch_size=4, seed=0)
    plan = s._plan(0)
    self.assertEqual(len(plan), 20)
    for b in plan:
      self.assertIn(27, set(y[b]))

  def test_epoch_of_and_resume(self):
    y = sized(4, 4, 4, 4)          # 8 chunks of 2, 2 classes a batch: 4 batches an epoch
    s = MPerClassSampler(y, m=2, batch_size=4, seed=3)
    self.assertEqual([s.epoch_of(i) for i in (0, 3, 4, 7, 8, 9, 13)],
                     [(0, 0), (0, 3), (1, 0), (1, 3), (2, 0), (2, 1), (3, 1)])
    fresh = MPerClassSampler(y, m=2, batch_size=4, seed=3)
    np.testing.assert_array_equal(fresh(13), s(13))
    np.testing.assert_array_equal(s(13), s._plan(3)[1])


class EpochNPairSamplerTest(parameterized.TestCase):

  def test_layout_seed_and_coverage(self):
    y = sized(2, 4, 6, 2, 4)
    s = EpochNPairSampler(y, num_pairs=3, seed=1)
    self.assertEqual(s.batch_size, 6)
    seen = set()
    for step in range(5):   # 9 chunks of 2, 3 per batch: one epoch in 3 batches
      b = s(step)
      self.assertEqual(b.shape, (6,))
      np.testing.assert_array_equal(y[b[:3]], y[b[3:]])
      self.assertEqual(len(set(y[b[:3]])), 3)
      if step < 3:
        seen |= set(b.tolist())
    self.assertEqual(seen, set(range(y.size)))
    np.testing.assert_array_equal(s(2), MPerClassSampler(y, m=2, batch_size=6, seed=1)(2).reshape(3, 2).T.ravel())
    self.assertFalse(all(np.array_equal(s(i), EpochNPairSampler(y, num_pairs=3, seed=0)(i)) for i in range(3)))


class MakeSamplerTest(parameterized.TestCase):

  def test_dispatch_and_arguments(self):
    y = sized(3, 3, 3, 3, 3, 3)
    s = make_sampler("npair", y, batch_size=4, seed=5)
    self.assertIsInstance(s, NPairSampler)
    self.assertEqual((s.num_pairs, s.seed), (2, 5))
    np.testing.assert_array_equal(s(3), NPairSampler(y, num_pairs=2, seed=5)(3))
    s = make_sampler("npair", y, batch_size=6, seed=5, epochs=True)
    self.assertIsInstance(s, EpochNPairSampler)
    np.testing.assert_array_equal(s(4), EpochNPairSampler(y, num_pairs=3, seed=5)(4))
    for loss in ("triplet", "contrastive"):
      s = make_sampler(loss, y, batch_size=9, seed=2)
      self.assertIsInstance(s, TripletSampler)
      self.assertEqual((s.num_triplets, s.seed), (3, 2))
      np.testing.assert_array_equal(s(1), TripletSampler(y, num_triplets=3, seed=2)(1))

  def test_errors(self):
    y = sized(3, 3, 3, 3)
    with self.assertRaisesRegex(ValueError, r"^make_sampler: an N-pair batch size must be even, got 5\."):
      make_sampler("npair", y, batch_size=5)
    with self.assertRaisesRegex(ValueError, r"^make_sampler: a contrastive batch size must be divisible by 3, got 8\."):
      make_sampler("contrastive", y, batch_size=8)
    with self.assertRaisesRegex(ValueError, r"^make_sampler: epoch coverage is offered for N-pair batches only, "
                                            r"not 'triplet'\."):
      make_sampler("triplet", y, batch_size=6, epochs=True)
    with self.assertRaisesRegex(ValueError, r"^unknown loss 'arcfce'; choose one of npair, "):
      make_sampler("arcfce", y, batch_size=6)
    with self.assertRaisesRegex(ValueError, r"^make_sampler: a circle batch compares samples of one class, so it "
                                            r"needs m_per_class >= 2, got 1\."):
      make_sampler("circle", y, batch_size=6, m_per_class=1)
    self.assertIsInstance(make_sampler("arcface", y, batch_size=6, m_per_class=2), MPerClassSampler)


if __name__ == "__main__":
  absltest.main()


class DefaultSeedTest(parameterized.TestCase):

  def test_every_sampler_defaults_to_seed_0(self):
    y = sized(4, 4, 4, 4, 4, 4)
    for make in (lambda **s: NPairSampler(y, num_pairs=3, **s), lambda **s: TripletSampler(y, num_triplets=3, **s),
                 lambda **s: MPerClassSampler(y, m=2, batch_size=6, **s),
                 lambda **s: EpochNPairSampler(y, num_pairs=3, **s),
                 lambda **s: make_sampler("npair", y, batch_size=6, **s),
                 lambda **s: make_sampler("triplet", y, batch_size=6, **s)):
      for step in (0, 5):
        np.testing.assert_array_equal(make()(step), make(seed=0)(step))
      self.assertFalse(all(np.array_equal(make()(i), make(seed=1)(i)) for i in range(4)))
