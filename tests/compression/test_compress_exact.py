"""The coder's CDF choices are exact integer functions of the params and symbols.

h_s (hyperpriors) and mbt2018's context step run as fixed-point networks
(jaxvision.compression.layers `fx_*`); these tests check them against an independent Python-int
reference (scatter-form transposed conv, exact floor division), their invariance to
summation order and to sub-step float noise in the weights, and their closeness to the
float model. Params are random numpy arrays of the real shapes (no init compile).
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

from jaxvision.compression import coding, convert
from jaxvision.compression import layers as L
from jaxvision.compression import models as CM
from jaxvision.core.registry import create_model

N, M = 8, 12
F = L.ACT_FRAC


@functools.cache
def _setup(name, seed=0):
  model = create_model(name, N=N, M=M)
  rng = np.random.default_rng(seed)
  params = {}
  for mod, leaves in convert._param_shapes(model).items():
    params[mod] = {}
    for k, shape in leaves.items():
      if k == "kernel":
        v = rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1])), shape)
      elif k == "quantiles":
        v = np.stack([np.full(shape[0], -6.0), rng.uniform(-.5, .5, shape[0]),
                      np.full(shape[0], 6.0)], 1)
      else:
        v = rng.normal(0, 0.1, shape)
      params[mod][k] = v.astype(np.float32)
  # Scales spread over the table (a random net's would all sit near 0).
  b = params["h_s_4"]["bias"]
  b[:M] = rng.uniform(0.2, 20, M)
  return model, {"params": params}


def _z(seed, h=2, w=3):
  return np.random.default_rng(seed).integers(-4, 5, (1, h, w, N)).astype(np.int32)


# ------------------------------------------------- Python-int reference of h_s


def _obj(a):
  return np.asarray(a, np.int64).astype(object)  # Python ints: exact, unbounded


def _ref_conv(x, kernel, bias, stride, lo):
  """Cross-correlation with zero padding lo, as a sum over taps (gather form)."""
  k = kernel.shape[0]
  h, w, _ = x.shape
  ho, wo = (h + 2 * lo - k) // stride + 1, (w + 2 * lo - k) // stride + 1
  xp = np.zeros((h + 2 * lo, w + 2 * lo, x.shape[2]), object)
  xp[lo:lo + h, lo:lo + w] = x
  out = np.empty((ho, wo, kernel.shape[3]), object)
  out[...] = bias
  for oy in range(ho):
    for ox in range(wo):
      for ty in range(k):
        for tx in range(k):
          out[oy, ox] = out[oy, ox] + xp[oy * stride + ty, ox * stride + tx].dot(kernel[ty, tx])
  return out


def _ref_deconv(x, kernel, bias, stride, lo):
  """lax conv_transpose (lhs dilation, unflipped kernel) in scatter form: input i
  and tap t feed output o = s·i + lo - t."""
  k = kernel.shape[0]
  h, w, _ = x.shape
  out = np.empty((h * stride, w * stride, kernel.shape[3]), object)
  out[...] = bias
  for iy in range(h):
    for ix in range(w):
      for ty in range(k):
        for tx in range(k):
          oy, ox = stride * iy + lo - ty, stride * ix + lo - tx
          if 0 <= oy < h * stride and 0 <= ox < w * stride:
            out[oy, ox] = out[oy, ox] + x[iy, ix].dot(kernel[ty, tx])
  return out


def _q(v, frac):
  # Python's round() of the exact float64 product: ties to even, like np.rint.
  return np.vectorize(lambda t: round(float(t) * 2 ** frac), otypes=[object])(
      np.asarray(v, np.float64))


def _floor(acc):
  """The layer output: acc / 2^16 rounded half up (exact Python floor division)."""
  return np.vectorize(lambda t: (t + 2 ** (L.WEIGHT_FRAC - 1)) // 2 ** L.WEIGHT_FRAC,
                      otypes=[object])(acc)


def _leaky(a):
  return np.vectorize(lambda t: t if t >= 0 else t * L.LEAKY_NUM // 2 ** 16,
                      otypes=[object])(a)


def _relu(a):
  return np.vectorize(lambda t: max(t, 0), otypes=[object])(a)


def _ref_hs(model, variables, z):
  p = variables["params"]
  wf, bf = L.WEIGHT_FRAC, F + L.WEIGHT_FRAC
  kb = lambda n: (_q(p[n]["kernel"], wf), _q(p[n]["bias"], bf))
  act = _leaky if isinstance(model, CM.MeanScaleHyperprior) else _relu
  med = _q(p["entropy_bottleneck"]["quantiles"][:, 1], F)
  x = _obj(z[0]) * 2 ** F + med
  x = act(_floor(_ref_deconv(x, *kb("h_s_0"), 2, 2)))
  x = act(_floor(_ref_deconv(x, *kb("h_s_2"), 2, 2)))
  x = _floor(_ref_conv(x, *kb("h_s_4"), 1, 1))
  return x if act is _leaky else _relu(x)


@pytest.mark.parametrize("name", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_fixed_hs_equals_python_int_reference(name):
  model, variables = _setup(name)
  z = _z(1)
  nets = coding.fixed_point_nets(model, variables)
  got = coding.hyper_fixed(nets, z)
  want = _ref_hs(model, variables, z)
  assert got.dtype == np.int64 and got.shape == (1, 8, 12, want.shape[-1])
  np.testing.assert_array_equal(got[0].astype(object), want)
  # the int64 path (no float64 BLAS) gives the same integers
  np.testing.assert_array_equal(coding.hyper_fixed(nets, z, force_int64=True), got)


def test_fixed_context_step_equals_python_int_reference():
  model, variables = _setup("mbt2018")
  nets = coding.fixed_point_nets(model, variables)
  rng = np.random.default_rng(2)
  window = rng.integers(-5 * 2 ** F, 5 * 2 ** F, (5, 5, M))
  params = rng.integers(-3 * 2 ** F, 3 * 2 ** F, 2 * M)
  scales, means = coding._fx_ar_step(nets, window, params)
  p = variables["params"]
  wf, bf = L.WEIGHT_FRAC, F + L.WEIGHT_FRAC
  mask = L.causal_mask(5)[..., 0, 0]
  kc = _q(p["context_prediction"]["kernel"], wf)
  ctx = _q(p["context_prediction"]["bias"], bf)
  for ty in range(5):  # masked 5x5 "valid" conv at one position, all 25 taps looked at
    for tx in range(5):
      if mask[ty, tx]:
        ctx = ctx + _obj(window[ty, tx]).dot(kc[ty, tx])
  h = np.concatenate([_obj(params), _floor(ctx)])
  for i in (0, 2, 4):
    n = f"entropy_parameters_{i}"
    h = _floor(h.dot(_q(p[n]["kernel"][0, 0], wf)) + _q(p[n]["bias"], bf))
    h = _leaky(h) if i < 4 else h
  np.testing.assert_array_equal(np.concatenate([scales, means]).astype(object), h)
  # a value in a masked (future) tap does not matter
  window2 = window.copy()
  window2[2, 2:] += 12345
  window2[3:] -= 777
  s2, m2 = coding._fx_ar_step(nets, window2, params)
  np.testing.assert_array_equal(s2, scales)
  np.testing.assert_array_equal(m2, means)


def test_matmul_exact_beyond_float64_range():
  """Bound >= 2^53: the int64 path, exact; >= 2^63: OverflowError, never wrong."""
  rng = np.random.default_rng(3)
  layer = L.fx_dense(rng.normal(0, 50, (64, 5)), rng.normal(0, 1, 5))
  a = rng.integers(-2 ** 30, 2 ** 30, (3, 64))
  assert int(np.abs(a).max()) * layer.l1 >= 2 ** 53  # float64 would round here
  got = L.fx_matmul(a, layer)
  want = _obj(a).dot(_obj(layer.kernel)) + _obj(layer.bias)  # the stored bias
  np.testing.assert_array_equal(got.astype(object), want)
  with pytest.raises(OverflowError):
    L.fx_matmul(a * 2 ** 10, layer)


# ------------------------------------------------------------------ invariance


def _permute_hidden(variables, perm):
  """Same function, hidden channels of h_s_0 -> h_s_2 in another order: every sum
  of h_s_2 runs over its input channels in a different order."""
  p = {k: dict(v) for k, v in variables["params"].items()}
  p["h_s_0"]["kernel"] = p["h_s_0"]["kernel"][..., perm]
  p["h_s_0"]["bias"] = p["h_s_0"]["bias"][perm]
  p["h_s_2"]["kernel"] = p["h_s_2"]["kernel"][:, :, perm]
  return {"params": p}


@pytest.mark.parametrize("name", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_indexes_invariant_to_summation_order_and_subquantum_noise(name):
  model, variables = _setup(name)
  z = _z(4)
  idx, means = coding._fx_hyper(model, coding.fixed_point_nets(model, variables), z)
  assert len(np.unique(idx)) > 10  # the indexes span the table
  # (a) a permuted reduction order and a chunked (blocked) matmul: same integers
  c = variables["params"]["h_s_0"]["kernel"].shape[-1]
  perm = np.random.default_rng(5).permutation(c)
  idx2, means2 = coding._fx_hyper(
      model, coding.fixed_point_nets(model, _permute_hidden(variables, perm)), z)
  np.testing.assert_array_equal(idx2, idx)
  np.testing.assert_array_equal(means2, means)
  layer = coding.fixed_point_nets(model, variables).h_s[2].parts[0][-1]  # a (phase) kernel
  a = np.random.default_rng(6).integers(-2 ** 20, 2 ** 20, (7, layer.kernel.shape[0]))
  blocked = sum(_obj(a[:, s:s + 37]).dot(_obj(layer.kernel[s:s + 37]))
                for s in range(0, a.shape[1], 37)) + _obj(layer.bias)
  np.testing.assert_array_equal(L.fx_matmul(a, layer).astype(object), blocked)
  # (b) float noise below the quantisation step: every weight 1 ulp towards its
  # quantised value (so it stays in its rounding cell). The float net changes, the
  # coder's indexes and means do not.
  def nudge(v, frac):
    target = np.rint(v.astype(np.float64) * 2.0 ** frac) / 2.0 ** frac
    return np.nextafter(v, target.astype(np.float32))
  p = {k: dict(v) for k, v in variables["params"].items()}
  for n in ("h_s_0", "h_s_2", "h_s_4"):
    p[n] = {"kernel": nudge(p[n]["kernel"], L.WEIGHT_FRAC),
            "bias": nudge(p[n]["bias"], F + L.WEIGHT_FRAC)}
  noisy = {"params": p}
  assert any(np.any(noisy["params"][n]["kernel"] != variables["params"][n]["kernel"])
             for n in ("h_s_0", "h_s_2", "h_s_4"))
  idx3, means3 = coding._fx_hyper(model, coding.fixed_point_nets(model, noisy), z)
  np.testing.assert_array_equal(idx3, idx)
  np.testing.assert_array_equal(means3, means)
  med = variables["params"]["entropy_bottleneck"]["quantiles"][:, 1]
  zf = z.astype(np.float32) + med
  before = coding._apply(model, variables, "hyper_synthesis", zf)[0]
  after = coding._apply(model, noisy, "hyper_synthesis", zf)[0]
  assert np.any(np.asarray(before) != np.asarray(after))  # the float net did move


# ------------------------------------------------------------- close to float


@pytest.mark.parametrize("name", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_fixed_scales_close_to_float_model(name):
  model, variables = _setup(name)
  z = _z(7)
  fx = coding.hyper_fixed(coding.fixed_point_nets(model, variables), z) / 2.0 ** F
  med = variables["params"]["entropy_bottleneck"]["quantiles"][:, 1]
  scales, means = coding._apply(model, variables, "hyper_synthesis",
                           z.astype(np.float32) + med)
  flt = np.asarray(scales) if means is None else np.concatenate(
      [np.asarray(scales), np.asarray(means)], -1)
  # 2^-12 activation steps, rounded per layer, and 2^-16 weights: a few steps at most
  err = np.abs(fx - flt)
  assert err.max() < 4 * 2.0 ** -F, err.max()
  assert err.mean() < 2.0 ** -F, err.mean()
  # hence the same table row almost everywhere (a different row only within the
  # error of a midpoint)
  gc = L.GaussianConditional()
  idx_fx = gc.build_indexes_fixed(coding.hyper_fixed(coding.fixed_point_nets(model, variables), z)[
      ..., :M])
  idx_fl = np.searchsorted(gc.midpoints(), flt[..., :M], side="right")
  assert np.mean(idx_fx == idx_fl) > 0.98
  assert np.all(np.abs(idx_fx.astype(int) - idx_fl) <= 1)


def test_fixed_midpoint_comparison_is_exact():
  """scale_fx >= ceil(m·2^F)  <=>  scale_fx·2^-F >= m, on both sides of every midpoint."""
  gc = L.GaussianConditional()
  mids = gc.midpoints().astype(np.float64)
  below = np.ceil(mids * 2 ** F).astype(np.int64) - 1
  for s, want in ((below, np.arange(len(mids))), (below + 1, np.arange(1, len(mids) + 1))):
    assert np.all((s / 2 ** F >= mids) == (s == below + 1))
    np.testing.assert_array_equal(gc.build_indexes_fixed(s), want)
