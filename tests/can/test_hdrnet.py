"""HDRNet: the bilateral-grid slicing against a direct numpy trilinear reference, identity
grids reproduce the input bit for bit, gradients reach the grid, the guidance and every
parameter, and the model runs whole at any size."""
from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxvision.can.hdrnet import HDRNet, apply_affine, slice_grid
from jaxvision.core import registry
from jaxvision.can import models  # noqa: F401  (registers hdrnet)
from tests.conftest import run


def slice_grid_reference(grid: np.ndarray, guide: np.ndarray) -> np.ndarray:
  """Direct trilinear slicing: per pixel, the sum over its 8 neighbouring cells of the tent
  weights max(0, 1 - |g - i|) times the cell (indices clamped to the grid), at the
  cell-centre coordinates gx = (x + .5) gw / W - .5, gy likewise, gz = z gd - .5."""
  n, gh, gw, gd, c = grid.shape
  _, h, w = guide.shape
  out = np.zeros((n, h, w, c), np.float64)
  for b in range(n):
    for y in range(h):
      fy = (y + 0.5) * gh / h - 0.5
      for x in range(w):
        fx = (x + 0.5) * gw / w - 0.5
        fz = float(guide[b, y, x]) * gd - 0.5
        acc = np.zeros(c)
        for iy in (int(np.floor(fy)), int(np.floor(fy)) + 1):
          for ix in (int(np.floor(fx)), int(np.floor(fx)) + 1):
            for iz in (int(np.floor(fz)), int(np.floor(fz)) + 1):
              wgt = (max(0.0, 1 - abs(fy - iy)) * max(0.0, 1 - abs(fx - ix))
                     * max(0.0, 1 - abs(fz - iz)))
              acc += wgt * grid[b, min(max(iy, 0), gh - 1), min(max(ix, 0), gw - 1),
                                min(max(iz, 0), gd - 1)]
        out[b, y, x] = acc
  return out


def test_slicing_equals_the_numpy_trilinear_reference():
  rng = np.random.default_rng(0)
  grid = rng.normal(size=(2, 4, 5, 3, 7)).astype(np.float32)
  guide = rng.uniform(0, 1, (2, 13, 11)).astype(np.float32)
  guide[0, 0, :3] = (0.0, 1.0, 0.5)  # the ends and a bin edge of the depth axis
  got = np.asarray(slice_grid(jnp.asarray(grid), jnp.asarray(guide)))
  np.testing.assert_allclose(got, slice_grid_reference(grid, guide), atol=2e-6, rtol=0)


def test_identity_affines_reproduce_the_input_exactly():
  rng = np.random.default_rng(1)
  eye = np.concatenate([np.eye(3), np.zeros((3, 1))], 1).reshape(-1)
  grid = np.broadcast_to(eye, (1, 16, 16, 8, 12)).astype(np.float32)
  image = rng.uniform(0, 1, (1, 37, 53, 3)).astype(np.float32)
  guide = rng.uniform(0, 1, (1, 37, 53)).astype(np.float32)
  out = apply_affine(slice_grid(jnp.asarray(grid), jnp.asarray(guide)), jnp.asarray(image))
  np.testing.assert_array_equal(np.asarray(out), image)
  # and the untrained network is that identity operator, at any size
  m = registry.create_model("hdrnet", lowres=64, n_splat=2, features=16, fc=[32])
  x = jnp.asarray(image)
  v = jax.jit(m.init)(jax.random.PRNGKey(0), x)
  np.testing.assert_array_equal(np.asarray(jax.jit(m.apply)(v, x)), image)


def test_gradients_flow_to_grid_guide_and_every_parameter():
  rng = np.random.default_rng(2)
  grid = jnp.asarray(rng.normal(size=(1, 4, 4, 4, 12)).astype(np.float32))
  guide = jnp.asarray(rng.uniform(0.05, 0.95, (1, 16, 16)).astype(np.float32))
  image = jnp.asarray(rng.uniform(0, 1, (1, 16, 16, 3)).astype(np.float32))
  f = lambda g, z: jnp.sum(apply_affine(slice_grid(g, z), image) ** 2)  # noqa: E731
  dg, dz = jax.jit(jax.grad(f, argnums=(0, 1)))(grid, guide)
  assert float(jnp.abs(dg).min()) >= 0 and float(jnp.abs(dg).sum()) > 0
  assert float(jnp.abs(dz).mean()) > 0
  # the guidance gradient is the derivative along z: check it by finite differences
  eps = 1e-3
  f = jax.jit(f)
  fd = (f(grid, guide.at[0, 5, 7].add(eps)) - f(grid, guide.at[0, 5, 7].add(-eps))) / (2 * eps)
  np.testing.assert_allclose(float(dz[0, 5, 7]), float(fd), rtol=2e-2, atol=1e-3)

  m = HDRNet(lowres=32, n_splat=2, features=8, fc=(16,))
  v = jax.jit(m.init)(jax.random.PRNGKey(0), image)
  target = image ** 2

  # a step away from the identity start, so the zero coefficient kernel passes gradient on
  r = np.random.default_rng(3)
  p = jax.tree.map(lambda a: a + 0.01 * r.normal(size=a.shape).astype(np.float32), v["params"])
  grads = jax.jit(jax.grad(
      lambda q: jnp.mean((m.apply({"params": q}, image) - target) ** 2)))(p)
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert float(jnp.abs(g).sum()) > 0, jax.tree_util.keystr(path)


def test_grid_is_low_resolution_and_sizes_are_free():
  m = registry.create_model("hdrnet")
  shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 1080, 1920, 3)))
  assert m.grid_shape() == (16, 16, 8)  # the paper's grid
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
  assert 400_000 < n < 500_000, n  # dominated by the 4x4x64 -> 256 fully connected layer
  out = jax.eval_shape(m.apply, shapes, jnp.zeros((1, 1080, 1920, 3)))
  assert out.shape == (1, 1080, 1920, 3)


@pytest.mark.longrun
def test_short_hdrnet_run_lowers_its_loss_and_enhance_runs_it_whole(tmp_path, tfds_dir):
  """configs/hdrnet.py on CAN's task: a short run moves HDRNet from its identity start
  (PSNR = the input's) towards the operator; `jaxvision enhance` runs it untiled."""
  wd = tmp_path / "hdrnet"
  o = {"total_steps": 40, "batch_size": 4, "log_every": 10, "eval_every": 40,
       "checkpoint_every": 40, "data.crop_size": 64, "data.max_side": 128,
       "data.eval_crop": 96, "data.eval_max_images": 2, "data.worker_count": 0,
       "model.kwargs.lowres": 64, "model.kwargs.n_splat": 2, "model.kwargs.features": 16,
       "optimizer.warmup_steps": 0}
  cmd = ([sys.executable, "-m", "train", "--config", "configs/hdrnet.py:tone_manipulation",
          "--workdir", str(wd)] + [f"--config.{k}={v}" for k, v in o.items()])
  run(cmd, tfds_dir)
  m = json.loads((wd / "metrics.json").read_text())["eval"]
  assert m["psnr"] > m["input_psnr"] + 0.3, m  # the untrained net is the identity: input_psnr
  photo = tmp_path / "odd.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (77, 131, 3), np.uint8)).save(photo)
  out = tmp_path / "out.png"
  code = ("from jaxvision import cli; import sys; sys.exit(cli.main(['enhance', '--checkpoint', "
          f"{str(wd)!r}, '--input', {str(photo)!r}, '--output', {str(out)!r}]))")
  run([sys.executable, "-c", code], tfds_dir)
  assert np.asarray(Image.open(out)).shape == (77, 131, 3)
