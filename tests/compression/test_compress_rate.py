"""The file size is within 1% (plus the header) of the model's estimated rate, for a
model trained a few hundred steps with the training task's own loss."""
import pytest
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxvision.compression import coding
from jaxvision.compression import tables as T
from jaxvision.compression import models as CM
from jaxvision.compression.layers import EntropyBottleneck
from jaxvision.core.registry import create_model

STEPS = 300


def _images(rng, n, size):
  """Smooth random images with edges (gradients, discs, mild noise): photo-like
  statistics, unlike white noise, which no codec can compress."""
  yy, xx = np.mgrid[:size, :size] / size
  out = np.empty((n, size, size, 3), np.float32)
  for i in range(n):
    a = rng.uniform(-1, 1, (3, 3))
    img = a[:, 0] * xx[..., None] + a[:, 1] * yy[..., None] + a[:, 2]
    for _ in range(3):
      cy, cx, r = rng.uniform(0, 1, 3) * [1, 1, 0.4]
      img = np.where((((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)[..., None],
                     rng.uniform(0, 1, 3), img)
    out[i] = np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)
  return out


@pytest.mark.longrun
def test_file_size_within_one_percent_of_estimate():
  from jaxvision.compression.task import rd_loss
  model = create_model("bmshj2018-hyperprior", N=8, M=12)
  config = ml_collections.ConfigDict({"lmbda": CM.LAMBDAS[6], "distortion": "mse"})
  key = jax.random.key(0, impl="rbg")
  variables = jax.jit(functools.partial(model.init, train=False))(
      {"params": key}, jnp.zeros((1, 64, 64, 3)))
  tx = optax.adam(1e-3)

  @jax.jit
  def step(params, opt, batch, k):
    def f(p):
      return rd_loss(model, {"params": p}, {"input": batch}, k, True, config)
    (loss, (m, _)), g = jax.value_and_grad(f, has_aux=True)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, m["bpp"]

  rng = np.random.default_rng(0)
  data = _images(rng, 64, 64)
  params, opt = variables["params"], tx.init(variables["params"])
  bpps = []
  for i in range(STEPS):
    batch = data[rng.integers(0, len(data), 2)]
    params, opt, bpp = step(params, opt, batch, jax.random.fold_in(key, i))
    bpps.append(float(bpp))
  assert np.mean(bpps[-30:]) < 0.7 * np.mean(bpps[:30])  # it trained
  # The quantiles from the aux loss after 300 steps are close; solve them exactly.
  p = dict(params)
  p["entropy_bottleneck"] = EntropyBottleneck(8).solve_quantiles(p["entropy_bottleneck"])
  variables = {"params": p}
  tables = T.update(model, variables)
  x = _images(np.random.default_rng(1), 1, 256)
  strings, shapes = coding.compress(model, variables, tables, x)
  actual = 8 * sum(map(len, strings))  # the strings only: the header is extra
  est = coding.estimate_bits(model, variables, x)["total"]
  assert abs(actual / est - 1) < 0.01, (actual, est)
  x_hat = coding.decompress(model, variables, tables, strings, shapes, 256, 256)
  np.testing.assert_array_equal(x_hat, coding.reconstruct(model, variables, x))
