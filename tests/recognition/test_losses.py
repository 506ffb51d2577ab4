"""Metric-learning losses against direct numpy formulas (hypothesis), and the collapse check."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxvision.recognition import losses as L

# A fixed batch size (8) keeps each jitted loss at one compiled program; the labels (1 to 4
# identities, so some anchors have no positive or no negative) and values vary.
batches = st.tuples(st.just(8), st.integers(1, 4), st.integers(0, 10_000))
semihard = jax.jit(L.triplet_semihard, static_argnames=("squared",))
negatives = jax.jit(L.semihard_negatives)
hard = jax.jit(L.batch_hard, static_argnames=("soft", "squared"))
ohem = jax.jit(L.ohem)
softmax_center = jax.jit(L.softmax_center)


def _batch(n, ids, seed, dim=4):
  rng = np.random.default_rng(seed)
  e = rng.normal(size=(n, dim)).astype(np.float32)
  labels = rng.integers(0, ids, n).astype(np.int32)
  return e, labels


def _dist(e, squared):
  d = np.sqrt(((e[:, None].astype(np.float64) - e[None]) ** 2).sum(-1))
  return d ** 2 if squared else d


@settings(max_examples=40, deadline=None)
@given(batches, st.floats(0.05, 1.0), st.booleans())
def test_triplet_semihard_matches_numpy(b, margin, squared):
  e, labels = _batch(*b)
  d = _dist(e, squared)
  n = len(e)
  total, count = 0.0, 0
  for a in range(n):
    negs = [j for j in range(n) if labels[j] != labels[a]]
    for p in range(n):
      if p == a or labels[p] != labels[a] or not negs:
        continue
      outside = [j for j in negs if d[a, j] > d[a, p]]
      j = min(outside, key=lambda j: d[a, j]) if outside else max(negs, key=lambda j: d[a, j])
      total += max(d[a, p] - d[a, j] + margin, 0.0)
      count += 1
  want = total / max(count, 1)
  loss, _, pairs = semihard(jnp.asarray(e), jnp.asarray(labels), margin, squared=squared)
  assert int(pairs.sum()) == count
  assert float(loss) == pytest.approx(want, rel=1e-4, abs=1e-5)


@settings(max_examples=40, deadline=None)
@given(batches, st.floats(0.05, 1.0))
def test_semihard_negatives_lie_between_positive_and_margin(b, margin):
  """Every chosen negative that exists beyond the positive satisfies d(a,p) < d(a,n), and
  the ones that contribute a loss also d(a,n) < d(a,p) + margin: semi-hard."""
  e, labels = _batch(*b)
  d = np.asarray(L.pairwise_distances(jnp.asarray(e), squared=True))
  idx, pairs = (np.asarray(x) for x in negatives(jnp.asarray(d), jnp.asarray(labels)))
  _, per, _ = semihard(jnp.asarray(e), jnp.asarray(labels), margin, squared=True)
  per = np.asarray(per)
  for a, p in zip(*np.nonzero(pairs)):
    neg = idx[a, p]
    assert labels[neg] != labels[a]
    beyond = [j for j in range(len(e)) if labels[j] != labels[a] and d[a, j] > d[a, p]]
    if beyond:
      assert d[a, p] < d[a, neg]
      if per[a, p] > 0:
        assert d[a, neg] < d[a, p] + margin + 1e-6


@settings(max_examples=40, deadline=None)
@given(batches, st.floats(0.05, 1.0), st.booleans())
def test_batch_hard_matches_numpy(b, margin, soft):
  e, labels = _batch(*b)
  d = _dist(e, False)
  per = []
  for a in range(len(e)):
    pos = [d[a, j] for j in range(len(e)) if j != a and labels[j] == labels[a]]
    neg = [d[a, j] for j in range(len(e)) if labels[j] != labels[a]]
    if pos and neg:
      gap = max(pos) - min(neg)
      per.append(math.log1p(math.exp(gap)) if soft else max(gap + margin, 0.0))
  want = float(np.mean(per)) if per else 0.0
  loss, _, ok = hard(jnp.asarray(e), jnp.asarray(labels), margin, soft=soft)
  assert int(ok.sum()) == len(per)
  assert float(loss) == pytest.approx(want, rel=1e-4, abs=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 10), min_size=1, max_size=20), st.floats(0.01, 1.0))
def test_ohem_is_the_mean_of_the_hardest_fraction(values, fraction):
  k = max(1, math.ceil(len(values) * fraction - 1e-4))
  want = float(np.mean(sorted(values, reverse=True)[:k]))
  padded = np.zeros(20, np.float32)
  padded[:len(values)] = values
  valid = np.arange(20) < len(values)
  assert float(ohem(jnp.asarray(padded), fraction, jnp.asarray(valid))) == pytest.approx(
      want, rel=1e-5, abs=1e-5)


@settings(max_examples=20, deadline=None)
@given(batches, st.floats(0.0, 1.0))
def test_softmax_center_matches_numpy(b, weight):
  e, labels = _batch(*b)
  rng = np.random.default_rng(b[2] + 1)
  c = 4
  logits = rng.normal(size=(len(e), c)).astype(np.float32)
  centres = rng.normal(size=(c, e.shape[1])).astype(np.float32)
  lse = np.log(np.exp(logits.astype(np.float64)).sum(1))
  ce = lse - logits[np.arange(len(e)), labels]
  centre = 0.5 * ((e - centres[labels]) ** 2).sum(1).mean()
  loss, _, _ = softmax_center(jnp.asarray(logits), jnp.asarray(e), jnp.asarray(labels),
                                jnp.asarray(centres), weight)
  assert float(loss) == pytest.approx(ce.mean() + weight * centre, rel=1e-4, abs=1e-5)


def test_distance_gradient_is_finite_at_identical_embeddings():
  e = jnp.ones((4, 3))
  g = jax.jit(jax.grad(lambda x: L.batch_hard(x, jnp.array([0, 0, 1, 1]))[0]))(e)
  assert np.isfinite(np.asarray(g)).all()


def test_collapse_reason():
  rng = np.random.default_rng(0)
  assert L.collapse_reason(rng.normal(size=(8, 16))) is None
  collapsed = np.ones((8, 16)) + rng.normal(size=(8, 16)) * 1e-7
  assert "collapsed" in L.collapse_reason(collapsed)
  assert "not finite" in L.collapse_reason(np.full((2, 3), np.nan))
