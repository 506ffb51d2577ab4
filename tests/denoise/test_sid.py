"""The `sid` task (configs/sid.py): raw simulated from photos on the device, and a short run
of sid_unet that lowers its L1 loss on held-out simulated captures."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from skimage import data as skd

from configs import sid as sid_config
from jaxvision.core import registry
from jaxvision.denoise import data, models, task  # noqa: F401  (registers)


def _crops(n, side, seed):
  rng = np.random.default_rng(seed)
  a = np.concatenate([skd.astronaut(), skd.coffee()[:, :512]], 0).astype(np.float32) / 255
  out = []
  for _ in range(n):
    y, x = rng.integers(0, a.shape[0] - side), rng.integers(0, a.shape[1] - side)
    out.append(a[y:y + side, x:x + side])
  return jnp.asarray(np.stack(out))


def test_config_and_the_packed_shape_the_network_is_initialised_with():
  c = sid_config.get_config("ratio=300")
  assert c.task == "sid" and c.ratio == 300.0 and c.loss == "l1"
  assert c.model.name == "sid_unet" and c.data.crop_size % 32 == 0
  # the host's placeholder "input": the RGGB planes of the crop (the device replaces it)
  img = np.random.default_rng(0).uniform(size=(32, 32, 3)).astype(np.float32)
  rec = data.BayerShape()({"input": img, "target": img})
  assert rec["input"].shape == (16, 16, 4) and rec["target"] is img
  np.testing.assert_array_equal(rec["input"][..., 3], img[1::2, 1::2, 2])
  for bad in ("ratio=0.5", "ratio=dark", "preset=fast"):
    with pytest.raises(ValueError):
      sid_config.get_config(bad)


@pytest.mark.longrun
def test_a_short_sid_run_lowers_the_loss():
  c = sid_config.get_config("")
  model = registry.create_model("sid_unet", features=4)
  train = _crops(8, 32, 1)
  held_out = _crops(4, 32, 2)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 4)))
  tx = optax.adam(2e-3)
  opt = tx.init(params)
  loss_fn = lambda p, b, k: task.sid_loss(model, p, {"target": b}, k, True, c)[0]  # noqa: E731

  @jax.jit
  def step(p, o, k):  # one program: the update, and the held-out L1 of p before it
    x, _ = task.simulated_raw(c, held_out, jax.random.PRNGKey(99))  # a fixed capture
    held = jnp.mean(jnp.abs(model.apply(p, x) - held_out))
    g = jax.grad(loss_fn)(p, train, k)                    # a fresh camera and noise draw
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, held, x

  losses = []
  for i in range(31):
    params, opt, held, x = step(params, opt, jax.random.PRNGKey(i))
    losses.append(float(held))
  # the network's input: packed RGGB at half the side, amplified and clipped to [0, 1]
  assert x.shape == (4, 16, 16, 4) and float(x.min()) >= 0 and float(x.max()) <= 1
  before, after = losses[0], losses[-1]
  print("held-out L1", before, after)
  assert after < 0.8 * before, (before, after)
