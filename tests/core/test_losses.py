"""Perceptual losses against direct numpy formulas; histogram matching invariants."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.core import losses as L


def feats(seed, shapes):
  r = np.random.RandomState(seed)
  return {k: r.rand(*s).astype(np.float32) for k, s in shapes.items()}


SHAPES = {"relu1_2": (2, 6, 5, 4), "relu2_2": (2, 3, 3, 6), "relu3_3": (2, 2, 2, 8)}


def np_gram(f):
  n, h, w, c = f.shape
  F = f.reshape(n, h * w, c).astype(np.float64)
  return np.stack([F[i].T @ F[i] for i in range(n)]) / (h * w * c)


def test_gram_matches_numpy():
  f = feats(0, SHAPES)["relu1_2"]
  np.testing.assert_allclose(L.gram(jnp.asarray(f)), np_gram(f), rtol=1e-5, atol=1e-7)


def test_content_style_tv_match_numpy():
  a, b = feats(1, SHAPES), feats(2, SHAPES)
  np.testing.assert_allclose(L.content_loss(a, b), np.mean((a["relu2_2"] - b["relu2_2"]) ** 2),
                             rtol=1e-5)
  np.testing.assert_allclose(L.content_loss(a, b, "relu3_3"),
                             np.mean((a["relu3_3"] - b["relu3_3"]) ** 2), rtol=1e-5)
  s = {k: v[:1] for k, v in b.items()}  # one style image broadcast over the batch
  targets = L.style_targets(s, tuple(SHAPES))
  want = sum(np.mean((np_gram(a[k]) - np_gram(s[k])) ** 2) for k in SHAPES)
  np.testing.assert_allclose(L.style_loss(a, targets), want, rtol=1e-4)
  weights = {"relu1_2": 2.0, "relu3_3": 0.5}
  want_w = sum(weights.get(k, 1.0) * np.mean((np_gram(a[k]) - np_gram(s[k])) ** 2) for k in SHAPES)
  np.testing.assert_allclose(L.style_loss(a, targets, layer_weights=weights), want_w, rtol=1e-4)
  x = a["relu1_2"][..., :3]
  want_tv = np.mean((x[:, 1:] - x[:, :-1]) ** 2) + np.mean((x[:, :, 1:] - x[:, :, :-1]) ** 2)
  np.testing.assert_allclose(L.tv_loss(x), want_tv, rtol=1e-5)
  assert float(L.style_loss(s, targets)) < 1e-12  # the style image matches itself


def test_histogram_match_takes_style_distribution_keeps_order():
  r = np.random.RandomState(3)
  o = r.randn(2, 4, 5, 3).astype(np.float32)
  style = (r.rand(1, 5, 4, 3) * 7 + 2).astype(np.float32)  # same count of values per channel
  R = np.asarray(L.histogram_match(jnp.asarray(o), L.sorted_activations(jnp.asarray(style))))
  for i in range(2):
    for c in range(3):
      np.testing.assert_allclose(np.sort(R[i, ..., c].ravel()),
                                 np.sort(style[..., c].ravel()), rtol=1e-6)
      np.testing.assert_array_equal(np.argsort(R[i, ..., c].ravel()),
                                    np.argsort(o[i, ..., c].ravel()))


def test_histogram_loss_value_and_gradient():
  r = np.random.RandomState(4)
  o = {"relu1_2": jnp.asarray(r.randn(1, 4, 4, 2).astype(np.float32))}
  s = {"relu1_2": jnp.asarray(r.rand(1, 4, 4, 2).astype(np.float32))}
  t = L.histogram_targets(s, ["relu1_2"])
  R = np.asarray(L.histogram_match(o["relu1_2"], t["relu1_2"]))
  O = np.asarray(o["relu1_2"])
  np.testing.assert_allclose(L.histogram_loss(o, t), np.mean((O - R) ** 2), rtol=1e-5)
  g = jax.grad(lambda f: L.histogram_loss({"relu1_2": f}, t))(o["relu1_2"])
  np.testing.assert_allclose(g, 2 * (O - R) / O.size, rtol=1e-5, atol=1e-7)  # R is constant
  assert float(L.histogram_loss(s, t)) < 1e-12
