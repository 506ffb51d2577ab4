"""Learned codecs: forward passes, update/compress/decompress, rate vs estimate.

Tiny models (N=8, M=12) and every image padded to 128x128, so each jitted path
compiles once per model for the whole file.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from jaxvision.compression import coding
from jaxvision.compression import tables as T
from jaxvision.compression import models as CM  # registers the codecs
from jaxvision.compression.layers import EntropyBottleneck
from jaxvision.core.registry import create_model

NAMES = ["bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean"]
N, M = 8, 12
SIDE = st.integers(65, 128)  # all pad to 128: one compile per path


def _key(seed):
  # threefry kernels take ~1 s each to compile on CPU here (~25 s per model init);
  # the XLA RngBitGenerator keys compile in a fraction of that.
  return jax.random.key(seed, impl="rbg")


def _image(seed, h, w):
  return np.random.default_rng(seed).uniform(size=(1, h, w, 3)).astype(np.float32)


@functools.cache
def _setup(name):
  """(model, random-init variables, tables); init jitted (eager init is slow)."""
  model = create_model(name, N=N, M=M)
  init = jax.jit(functools.partial(model.init, train=False))
  variables = init({"params": _key(0)}, jnp.zeros((1, 128, 128, 3)))
  return model, variables, T.update(model, variables)


@functools.cache
def _plausible(name):
  """Params shaped like a trained model's where the rate test needs it: exact
  quantiles, and (hyperpriors) scales of about 4 instead of the ReLU'd ~0 of a random
  h_s, which would put most of y into the escape bins that the estimate prices at
  the likelihood bound."""
  model, variables, _ = _setup(name)
  p = dict(variables["params"])
  eb = p["entropy_bottleneck"]
  p["entropy_bottleneck"] = EntropyBottleneck(eb["quantiles"].shape[0]).solve_quantiles(eb)
  if "h_s_4" in p:
    bias = np.array(p["h_s_4"]["bias"])
    bias[:M] = 4.0  # the scale half (means, if any, stay near 0)
    p["h_s_4"] = {"kernel": p["h_s_4"]["kernel"] * 0.1, "bias": jnp.asarray(bias)}
  variables = {"params": p}
  return model, variables, T.update(model, variables)


def test_registry_quality_table():
  assert CM.LAMBDAS[1] == 0.0018 and CM.LAMBDAS[8] == 0.18 and len(CM.LAMBDAS) == 8
  for name, split in [("bmshj2018-factorized", 5), ("bmshj2018-hyperprior", 5),
                      ("mbt2018-mean", 4)]:
    for q in range(1, 9):
      m = create_model(name, quality=q)
      assert (m.N, m.M) == ((128, 192) if q <= split else (192, 320))
    with pytest.raises(ValueError):
      create_model(name, quality=9)
  assert isinstance(create_model("mbt2018-mean", N=8, M=12), CM.MeanScaleHyperprior)


@pytest.mark.parametrize("name", NAMES)
def test_forward_train_and_eval(name):
  model, variables, _ = _setup(name)
  x = _image(0, 128, 128)
  fwd = jax.jit(model.apply, static_argnames="train")
  for train in (True, False):
    out = fwd(variables, x, train=train, rngs={"noise": _key(2)})
    assert out["x_hat"].shape == x.shape and np.all(np.isfinite(out["x_hat"]))
    liks = out["likelihoods"]
    assert set(liks) == ({"y"} if name.endswith("factorized") else {"y", "z"})
    assert liks["y"].shape == (1, 8, 8, M)
    for v in liks.values():
      v = np.asarray(v)
      assert np.all(np.isfinite(v)) and np.all(v > 0) and np.all(v <= 1)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=2, deadline=None)
@given(h=SIDE, w=SIDE, seed=st.integers(0, 2**16))
def test_decompress_equals_quantized_forward(name, h, w, seed):
  assume(h % 64 or w % 64)
  model, variables, tables = _setup(name)
  x = _image(seed, h, w)
  strings, shapes = coding.compress(model, variables, tables, x)
  assert shapes == coding.latent_shapes_for(model, h, w)
  x_hat = coding.decompress(model, variables, tables, strings, shapes, h, w)
  assert x_hat.shape == x.shape
  # The decoder reproduces the eval-mode forward (round around median / mean).
  np.testing.assert_allclose(x_hat, coding.reconstruct(model, variables, x), rtol=0, atol=1e-6)
  assert x_hat.min() >= 0 and x_hat.max() <= 1


def test_small_image_roundtrip():
  """Smaller than one 64-pixel block (pads to 64x64)."""
  model, variables, tables = _setup("bmshj2018-factorized")
  x = _image(3, 40, 56)
  strings, shapes = coding.compress(model, variables, tables, x)
  x_hat = coding.decompress(model, variables, tables, strings, shapes, 40, 56)
  assert x_hat.shape == (1, 40, 56, 3)
  np.testing.assert_allclose(x_hat, coding.reconstruct(model, variables, x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_update_is_idempotent(name):
  model, variables, tables = _setup(name)
  again = T.update(model, variables)
  assert set(again) == set(tables)
  for k in tables:
    for a, b in zip(tables[k], again[k]):
      assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_actual_bits_near_estimate(name):
  # Untrained params: 5%. The 1% target needs a model trained a few hundred
  # steps (scales that fit y; the training task checks it).
  model, variables, tables = _plausible(name)
  x = _image(7, 128, 128)
  strings, _ = coding.compress(model, variables, tables, x)
  actual = 8 * sum(map(len, strings))
  est = coding.estimate_bits(model, variables, x)
  assert abs(actual / est["total"] - 1) < 0.05, (actual, est)
  # and the plausible params still round-trip
  x_hat = coding.decompress(model, variables, tables, strings, *_shapes(model, x))
  np.testing.assert_allclose(x_hat, coding.reconstruct(model, variables, x), rtol=0, atol=1e-6)


def _shapes(model, x):
  return coding.latent_shapes_for(model, *x.shape[1:3]), x.shape[1], x.shape[2]


@pytest.mark.parametrize("name", NAMES)
def test_corrupt_strings_raise(name):
  model, variables, tables = _setup(name)
  x = _image(5, 100, 90)
  strings, shapes = coding.compress(model, variables, tables, x)
  dec = functools.partial(coding.decompress, model, variables, tables)
  for i, s in enumerate(strings):
    for bad in (s[:-4], s + b"\x01\x00\x00\x00", s[:-1]):  # truncated, extra word, odd
      broken = list(strings)
      broken[i] = bad
      with pytest.raises(ValueError):
        dec(broken, shapes, 100, 90)
  with pytest.raises(ValueError, match="do not match"):  # header lies about the size
    dec(strings, shapes, 300, 90)
  with pytest.raises(ValueError, match="do not match"):
    dec(strings[:-1], shapes, 100, 90)  # a string missing
