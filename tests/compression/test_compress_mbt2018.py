"""mbt2018 (joint autoregressive + hierarchical priors): serial coding is bit-exact.

Tiny model (N=8, M=12); images pad to 64x64, so y is 4x4 positions and every
jitted step compiles once for the file.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxvision.compression import coding, convert
from jaxvision.compression import tables as T
from jaxvision.compression.layers import EntropyBottleneck, causal_mask
from jaxvision.core.registry import create_model

N, M = 8, 12


@functools.cache
def _setup():
  model = create_model("mbt2018", N=N, M=M)
  init = jax.jit(functools.partial(model.init, train=False))
  variables = init({"params": jax.random.key(0, impl="rbg")}, jnp.zeros((1, 64, 64, 3)))
  p = dict(variables["params"])
  eb = p["entropy_bottleneck"]
  p["entropy_bottleneck"] = EntropyBottleneck(N).solve_quantiles(eb)
  variables = {"params": p}
  return model, variables, T.update(model, variables)


def test_zoo_sizes_and_layers():
  for q in range(1, 9):
    m = create_model("mbt2018", quality=q)
    assert (m.N, m.M) == ((192, 192) if q <= 4 else (192, 320))
  shapes = convert._param_shapes(create_model("mbt2018", quality=1))
  # CompressAI: entropy parameters 1x1 convs 4M -> 10M/3 -> 8M/3 -> 2M (640/512/384).
  assert [shapes[f"entropy_parameters_{i}"]["kernel"] for i in (0, 2, 4)] == [
      (1, 1, 768, 640), (1, 1, 640, 512), (1, 1, 512, 384)]
  assert shapes["context_prediction"]["kernel"] == (5, 5, 192, 384)
  mask = causal_mask(5)[..., 0, 0]  # type A: rows above, and left of the centre
  assert mask.sum() == 12 and mask[2, 2] == 0 and mask[2, :2].all() and not mask[3:].any()


@settings(max_examples=2, deadline=None)
@given(h=st.integers(17, 63), w=st.integers(17, 64), seed=st.integers(0, 2**16))
def test_decompress_equals_serial_reconstruction_bit_exact(h, w, seed):
  model, variables, tables = _setup()
  x = np.random.default_rng(seed).random((1, h, w, 3)).astype(np.float32)
  strings, shapes = coding.compress(model, variables, tables, x)
  assert shapes == coding.latent_shapes_for(model, h, w)
  got = coding.decompress(model, variables, tables, strings, shapes, h, w)
  want = coding.reconstruct(model, variables, x)
  assert got.shape == (1, h, w, 3)
  np.testing.assert_array_equal(got, want)
  # A damaged y string fails (left-over words or a different decoded length).
  with pytest.raises(ValueError):
    coding.decompress(model, variables, tables, [strings[0], strings[1][:-4]], shapes, h, w)


def test_serial_context_equals_parallel_masked_conv():
  """The per-position step (5x5 window of the zero-padded latent) computes the same
  means as the parallel masked conv over the finished latent: the padding and the
  mask agree with CompressAI's forward."""
  model, variables, _ = _setup()
  x = np.random.default_rng(1).random((1, 64, 64, 3)).astype(np.float32)
  y_hat = coding.coded_latent(model, variables, x)
  out = coding._apply(model, variables, "_encode_net", x)
  params = coding._apply(model, variables, "_hyper_params", out["z"])
  _, means = coding._apply(model, variables, "_ar_parallel", y_hat, params)
  # y_hat = round(y - μ) + μ with the serial μ; the parallel float μ must reproduce
  # it up to the coder's fixed-point resolution (μ has 2^-12 ≈ 2.4e-4 steps and each
  # rounded layer adds up to half a step: a few steps in all).
  y = np.asarray(out["y_float"])
  mu = np.asarray(means)
  assert np.mean(np.abs(y_hat - (np.round(y - mu) + mu)) < 4e-3) > 0.99
