"""The detector's fast forms of the MTCNN nets (faces.programs) compute the modules' function."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.faces import convert as C
from jaxvision.faces import detector as D
from jaxvision.faces import models as M
from jaxvision.faces import programs as P


@pytest.fixture(scope="module")
def weights():
  try:
    return jax.tree.map(jnp.asarray, C.load_mtcnn_weights("auto"))
  except Exception as e:  # noqa: BLE001 - no weight package installed
    pytest.skip(f"no MTCNN weights: {e}")


def _close(a: dict, b: dict, tol: float):
  assert set(a) == set(b)
  for k in a:
    assert a[k].shape == b[k].shape, k
    scale = float(jnp.abs(b[k]).max()) + 1e-6
    assert float(jnp.abs(a[k] - b[k]).max()) <= tol * scale, k


def test_pnet_on_tiles_with_pool_masks(weights):
  """Even conv1 outputs (the detector's tiles) take the space-to-depth path; a mask that
  cuts pooling windows in half (odd rows and columns) pools as the module does."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(-1, 1, (2, 40, 52, 3)), jnp.float32)
  mask = np.ones((2, 38, 50), bool)
  mask[0, 21:, :] = False        # a level ending on an odd row: a window half outside
  mask[1, :, 17:20] = False      # a gap between two levels, odd width
  mask[1, :5, :] = False
  mask = jnp.asarray(mask)
  # (jitted: op by op each net takes seconds)
  module = jax.jit(lambda v, x, m: M.PNet().apply(v, x, pool_mask=m))
  fast = jax.jit(P.pnet)
  _close(fast(weights["pnet"], x, mask), module(weights["pnet"], x, mask), 1e-5)
  _close(fast(weights["pnet"], x), jax.jit(M.PNet().apply)(weights["pnet"], x), 1e-5)


def test_pnet_odd_sizes_fall_back(weights):
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (1, 13, 17, 3)), jnp.float32)
  _close(jax.jit(P.pnet)(weights["pnet"], x), jax.jit(M.PNet().apply)(weights["pnet"], x), 1e-6)


@pytest.mark.parametrize("stage,net,size", [("rnet", M.RNet, 24), ("onet", M.ONet, 48)])
def test_crop_nets(weights, stage, net, size):
  x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (5, size, size, 3)), jnp.float32)
  _close(jax.jit(P.NETS[stage])(weights[stage], x), jax.jit(net().apply)(weights[stage], x), 1e-5)


def test_detector_uses_them_only_for_the_released_nets():
  assert D._released_form("pnet", M.PNet()) is P.pnet
  assert D._released_form("onet", M.ONet()) is P.onet
  assert D._released_form("rnet", M.RNet(width=0.5)) is None  # a trained narrow net


@pytest.mark.parametrize("h,w", [(480, 640), (720, 1280), (300, 451), (1111, 555), (41, 4000),
                                 (3000, 4000)])
def test_tile_plan_computes_every_output_cell_once(h, w):
  """Each pyramid level's output cells are computed by exactly one piece, every piece lies
  inside its tile at even offsets, and pieces in one tile own disjoint even rectangles."""
  cfg = D.DetectorConfig()
  levels = [(hs, ws) for _, hs, ws in D.pyramid_scales(h, w, cfg.min_face, cfg.factor)]
  count, pieces = D._tile_plan(tuple(levels))
  owner = [np.zeros((D.out_cells(hs, "mtcnn"), D.out_cells(ws, "mtcnn")), int)
           for hs, ws in levels]
  used = np.zeros((count, D.PNET_TILE, D.PNET_TILE), np.uint8)
  for pc in pieces:
    assert pc.y % 2 == pc.x % 2 == pc.ty % 2 == pc.tx % 2 == 0
    assert pc.ty + pc.h <= D.PNET_TILE and pc.tx + pc.w <= D.PNET_TILE
    assert pc.y + pc.h <= levels[pc.level][0] and pc.x + pc.w <= levels[pc.level][1]
    nr, nc = D.out_cells(pc.h, "mtcnn"), D.out_cells(pc.w, "mtcnn")
    owner[pc.level][pc.y // 2:pc.y // 2 + nr, pc.x // 2:pc.x // 2 + nc] += 1
    used[pc.tile, pc.ty:pc.ty + D._even(pc.h), pc.tx:pc.tx + D._even(pc.w)] += 1
  assert all((o == 1).all() for o in owner)
  assert used.max() == 1
  assert count <= -(-sum(hs * ws for hs, ws in levels) * 3 // 2 // D.PNET_TILE ** 2) + 1


def test_pnet_on_packed_pieces_is_pnet_on_each_level(weights):
  """P-Net's maps put back together from the packed tiles (levels cut into pieces and
  several levels per tile) equal P-Net run on each pyramid level alone."""
  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, (620, 700, 3), np.uint8)
  cfg = D.DetectorConfig(min_face=30)  # level 0: 248x280 (cut in width), odd sizes below
  pyr = D._pyramid(image, cfg)
  assert any(pc.x > 0 for pc in pyr.pieces) and len(pyr.levels) > 4
  fast = jax.jit(P.pnet)
  o = fast(weights["pnet"], jnp.asarray(pyr.tiles), jnp.asarray(pyr.masks))
  o = {"prob": np.asarray(jax.nn.softmax(o["logits"], -1)[..., 1]), "box": np.asarray(o["box"])}
  maps = D._level_maps(pyr, o, "mtcnn")
  whole = np.array([[0, image.shape[0], 0, image.shape[1]]], np.int32)
  sat = D.integral_image(image)
  for i in (0, 1, len(pyr.levels) - 1):
    _, hs, ws = pyr.levels[i]
    lv = P.normalize(D.area_crops(sat, whole, (hs, ws)))
    ref = jax.jit(M.PNet().apply)(weights["pnet"], jnp.asarray(lv))
    prob = np.asarray(jax.nn.softmax(ref["logits"], -1)[0, ..., 1])
    np.testing.assert_allclose(maps[i][0], prob, atol=2e-5)
    np.testing.assert_allclose(maps[i][1], np.asarray(ref["box"][0]), atol=2e-5)


def test_threaded_pyramid_fills_the_same_tiles_and_raises_what_it_raises(monkeypatch):
  """A photo alone resamples level 0 here and the others on a second thread, P-Net taking
  each tile as it fills: the same tiles as one thread; a failure on that thread comes out
  of `wait_tiles` (no wait forever)."""
  image = np.random.default_rng(4).integers(0, 256, (480, 640, 3), np.uint8)
  cfg = D.DetectorConfig()
  one = D._pyramid(image, cfg)
  two = D._pyramid(image, cfg, threads=2)
  tiles, masks = two.wait_tiles(0, len(two.tiles))
  two.finish()
  np.testing.assert_array_equal(tiles, one.tiles)
  np.testing.assert_array_equal(masks, one.masks)
  real = D.area_crops

  def failing(sat, regions, size):
    if size[0] < 200:  # every level but the first
      raise RuntimeError("resampling failed")
    return real(sat, regions, size)

  monkeypatch.setattr(D, "area_crops", failing)
  bad = D._pyramid(image, cfg, threads=2)
  with pytest.raises(RuntimeError, match="resampling failed"):
    bad.wait_tiles(0, len(bad.tiles))
