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
