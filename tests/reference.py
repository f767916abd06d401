"""Brute-force NumPy references written with explicit loops.

They deliberately avoid the vectorised formulas of the library so that a
shared mistake cannot hide: distances are summed coordinate by coordinate,
softmax cross-entropies are computed term by term.
"""

import math

import numpy as np


def sq_dist(u, v):
  total = 0.0
  for a, b in zip(u, v):
    total += (float(a) - float(b)) ** 2
  return total


def dist(u, v):
  return math.sqrt(sq_dist(u, v))


def dot(u, v):
  return sum(float(a) * float(b) for a, b in zip(u, v))


def pairwise(x, y, squared):
  out = np.zeros((len(x), len(y)))
  for i in range(len(x)):
    for j in range(len(y)):
      out[i, j] = sq_dist(x[i], y[j]) if squared else dist(x[i], y[j])
  return out


def log_softmax_at(logits, k):
  m = max(logits)
  lse = m + math.log(sum(math.exp(v - m) for v in logits))
  return logits[k] - lse


def npair(anchors, positives, labels=None, l2_reg=0.0):
  p = len(anchors)
  total = 0.0
  for i in range(p):
    logits = [dot(anchors[i], positives[j]) for j in range(p)]
    if labels is None:
      targets = [1.0 if j == i else 0.0 for j in range(p)]
    else:
      same = [1.0 if labels[j] == labels[i] else 0.0 for j in range(p)]
      targets = [s / sum(same) for s in same]
    total += -sum(t * log_softmax_at(logits, j) for j, t in enumerate(targets) if t)
  reg_a = sum(dot(a, a) for a in anchors) / p
  reg_p = sum(dot(q, q) for q in positives) / p
  return total / p + 0.25 * l2_reg * (reg_a + reg_p)


def synthetic_npair(anchors, candidates, l2_reg=0.0):
  p = len(anchors)
  total = 0.0
  norms_c = 0.0
  for i in range(p):
    logits = [dot(anchors[i], candidates[i][j]) for j in range(p)]
    total += -log_softmax_at(logits, i)
    for j in range(p):
      norms_c += dot(candidates[i][j], candidates[i][j])
  reg_a = sum(dot(a, a) for a in anchors) / p
  return total / p + 0.25 * l2_reg * (reg_a + norms_c / (p * p))


def triplet(a, p, n, margin=1.0, squared=True):
  out = []
  for i in range(len(a)):
    dp = sq_dist(a[i], p[i]) if squared else dist(a[i], p[i])
    dn = sq_dist(a[i], n[i]) if squared else dist(a[i], n[i])
    out.append(max(dp - dn + margin, 0.0))
  return np.array(out)


def contrastive(x1, x2, same, margin=1.0):
  out = []
  for i in range(len(x1)):
    d = dist(x1[i], x2[i])
    if same[i]:
      out.append(d * d)
    else:
      out.append(max(margin - d, 0.0) ** 2)
  return np.array(out)


def synthesize_one(z, zp, zn, alpha, j_avg):
  d_pos = dist(z, zp)
  d_neg = dist(z, zn)
  if d_neg > d_pos:
    new = d_pos + (d_neg - d_pos) * math.exp(-alpha / j_avg)
    return np.array([float(z[k]) + new * (float(zn[k]) - float(z[k])) / d_neg
                     for k in range(len(z))])
  return np.array(zn, dtype=np.float64)


def cross_entropy(logits, labels):
  return sum(-log_softmax_at(list(map(float, row)), int(k))
             for row, k in zip(logits, labels)) / len(labels)


class BlockMeans:
  """A loop-style reimplementation of the reference's running statistics."""

  def __init__(self, block=64, init=1e6):
    self.block, self.j_avg, self.j_gen = block, init, init
    self.m, self.g, self.steps = [], [], 0

  def add(self, m, g):
    if math.isfinite(m):
      self.m.append(m)
    if math.isfinite(g):
      self.g.append(g)
    self.steps += 1
    if self.steps == self.block:
      if self.m:
        self.j_avg = sum(self.m) / len(self.m)
      if self.g:
        self.j_gen = sum(self.g) / len(self.g)
      self.m, self.g, self.steps = [], [], 0
