"""The recognition models: locally connected layers against numpy, shapes and param counts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.core.registry import create_model
from jaxvision.recognition import models as M


@pytest.mark.parametrize("size,strides", [((3, 2), (1, 1)), ((2, 3), (2, 1)), ((3, 3), (2, 2))])
def test_locally_connected_matches_numpy(size, strides):
  """out[n, y, x, o] = b[y, x, o] + sum over c, i, j of
  in[n, y*sy + i, x*sx + j, c] * K[y, x, c*kh*kw + i*kw + j, o]: a filter per position."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
  layer = M.LocallyConnected(4, size, strides)
  v = layer.init(jax.random.key(0), x)
  v = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), v)
  k, b = np.asarray(v["params"]["kernel"]), np.asarray(v["params"]["bias"])
  kh, kw = size
  sy, sx = strides
  oh, ow = k.shape[:2]
  want = np.zeros((2, oh, ow, 4))
  for y in range(oh):
    for xx in range(ow):
      for c in range(3):
        for i in range(kh):
          for j in range(kw):
            want[:, y, xx] += np.outer(x[:, y * sy + i, xx * sx + j, c],
                                       k[y, xx, c * kh * kw + i * kw + j])
      want[:, y, xx] += b[y, xx]
  np.testing.assert_allclose(np.asarray(layer.apply(v, x)), want, rtol=1e-4, atol=1e-4)
  # an unshared filter: changing the kernel at one position changes only that output
  v2 = jax.tree.map(np.array, v)
  v2["params"]["kernel"][0, 0] += 1.0
  d = np.abs(np.asarray(layer.apply(v2, x)) - np.asarray(layer.apply(v, x))).sum((0, 3))
  assert d[0, 0] > 0 and d.sum() == d[0, 0]


def _shapes(name, side, **kw):
  m = create_model(name, **kw)
  x = jnp.zeros((2, *side, 3)) if isinstance(side, tuple) else jnp.zeros((2, side, side, 3))
  v = jax.eval_shape(lambda: m.init(jax.random.key(0), x))
  out = jax.eval_shape(m.apply, v, x)
  return out.shape, sum(int(np.prod(a.shape)) for a in jax.tree.leaves(v)), v


def test_dlib_resnet_structure():
  shape, n, v = _shapes("dlib_resnet", 150)
  assert shape == (2, 128)
  convs = [p for p in jax.tree_util.tree_leaves_with_path(v)
           if "conv" in jax.tree_util.keystr(p[0]) and p[0][-1].key == "kernel"]
  assert len(convs) == 29


def test_deepface_structure():
  """4096-D from 152x152; with the paper's 4030-way F8 about 120 M parameters (Taigman et
  al.: "more than 120 million"), of which the L4 locally connected layer has 55*55 filters."""
  shape, n, v = _shapes("deepface", 152, num_classes=4030)
  assert shape == (2, 4096)
  n -= int(np.prod(v["params"]["head"]["centres"].shape))  # the centre loss's, not the paper's
  assert 1.15e8 < n < 1.25e8
  assert v["params"]["l4"]["kernel"].shape == (55, 55, 9 * 9 * 16, 16)
  assert v["params"]["l6"]["kernel"].shape[:2] == (21, 21)


def test_deepid_structure():
  """160-D from a 39x31 patch; the DeepID layer sees pool3 (3x2x60) and conv4 (2x1x80)."""
  shape, n, v = _shapes("deepid", (39, 31))
  assert shape == (2, 160)
  assert v["params"]["from_pool3"]["kernel"].shape == (3 * 2 * 60, 160)
  assert v["params"]["from_conv4"]["kernel"].shape == (2 * 1 * 80, 160)


def test_normalised_outputs_have_unit_norm():
  m = create_model("deepid", normalize=True, widths=[4, 8, 8, 8], embed_dim=16)
  x = np.random.default_rng(0).uniform(0, 255, (3, 39, 31, 3)).astype(np.float32)
  v = jax.jit(m.init)(jax.random.key(0), x)
  e = np.asarray(jax.jit(m.apply)(v, x))
  np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)


def test_facenet_inception_resnet_v1_structure():
  """512-D from 160x160 (davidsandberg/facenet's 2018 models), 5 x block35, 10 x block17,
  5 + 1 x block8, batch statistics in every ConvBN (the forward/backward sweep of the
  registry test runs it; the L2 step is `finish`, tested on deepid)."""
  shape, n, v = _shapes("facenet_inception_resnet_v1", 160)
  assert shape == (2, 512)
  names = set(v["params"])
  assert sum(k.startswith("block35_") for k in names) == 5
  assert sum(k.startswith("block17_") for k in names) == 10
  assert sum(k.startswith("block8_") for k in names) == 6
  assert "batch_stats" in v


def test_openface_nn4_small2_structure():
  """128-D from 96x96 with exactly the 3,733,968 parameters that OpenFace's
  nn4.small2.def.lua states (net:getParameters() with embSize=128)."""
  shape, n, v = _shapes("openface_nn4_small2", 96)
  assert shape == (2, 128)
  assert n - sum(int(np.prod(a.shape)) for a in jax.tree.leaves(v.get("batch_stats", {}))) \
      == 3_733_968


def test_cross_map_lrn_matches_numpy():
  """Torch's SpatialCrossMapLRN(5, 1e-4, 0.75): x / (1 + 1e-4/5 * window sum of x^2)^0.75."""
  x = np.random.default_rng(0).normal(size=(1, 2, 2, 7)).astype(np.float32) * 30
  want = np.empty_like(x)
  for c in range(7):
    lo, hi = max(0, c - 2), min(7, c + 3)
    want[..., c] = x[..., c] / (1 + 1e-4 / 5 * (x[..., lo:hi] ** 2).sum(-1)) ** 0.75
  np.testing.assert_allclose(np.asarray(M.cross_map_lrn(jnp.asarray(x))), want, rtol=1e-5)

