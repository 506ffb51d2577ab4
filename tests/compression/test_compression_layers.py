"""Compression layers: GDN, factorized and Gaussian entropy models, integer CDF tables."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st
from scipy import special

from jaxvision.compression.layers import (
    GDN, EntropyBottleneck, GaussianConditional, nonneg_init, pmf_to_quantized_cdf,
    scale_table)

C = 3
KEY = jax.random.PRNGKey(0)


def _normal(seed, shape, scale=1.0):  # numpy inputs: no RNG kernels to compile
  return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def _jit(model, **static):
  """model.apply jitted with static keywords (train, method, mode) bound: one
  compile instead of dozens of eager op compiles keeps the file fast."""
  return jax.jit(functools.partial(model.apply, **static))


# ---------------------------------------------------------------------------- GDN


def _gdn_params(beta, gamma):
  return {"params": {"beta": nonneg_init(beta), "gamma": nonneg_init(gamma)}}


def test_gdn_matches_formula():
  rng = np.random.default_rng(0)
  beta = rng.uniform(0.5, 2.0, C)
  gamma = rng.uniform(0.0, 0.3, (C, C))
  x = rng.normal(size=(2, 4, 5, C)).astype(np.float32)
  ref_norm = np.empty_like(x, dtype=np.float64)
  for i in range(C):  # the paper's formula, one output channel at a time
    ref_norm[..., i] = beta[i] + sum(gamma[i, j] * x[..., j] ** 2 for j in range(C))
  p = _gdn_params(beta, gamma)
  np.testing.assert_allclose(GDN().apply(p, x), x / np.sqrt(ref_norm), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(GDN(inverse=True).apply(p, x), x * np.sqrt(ref_norm),
                             rtol=1e-5, atol=1e-6)


def test_gdn_init_and_igdn_inverts_for_small_gamma():
  x = _normal(0, (1, 4, 4, C), 0.05)
  p = GDN().init(KEY, x)
  beta, gamma = GDN().effective(p["params"])
  np.testing.assert_allclose(beta, np.ones(C), atol=1e-6)
  np.testing.assert_allclose(gamma, 0.1 * np.eye(C), atol=1e-6)
  p = _gdn_params(np.ones(C), 1e-3 * np.ones((C, C)))
  y = GDN().apply(p, x)
  np.testing.assert_allclose(GDN(inverse=True).apply(p, y), x, atol=1e-6)


def test_gdn_params_stay_nonnegative_under_optimisation():
  x = _normal(0, (1, 4, 4, C))
  gdn = GDN()
  params = gdn.init(KEY, x)["params"]

  def loss(p):  # rewards negative β and γ: the optimiser pushes them down hard
    beta, gamma = gdn.effective(p)
    return jnp.sum(beta) + jnp.sum(gamma)

  opt = optax.adam(0.3)
  state = opt.init(params)
  for _ in range(15):
    g = jax.grad(loss)(params)
    upd, state = opt.update(g, state)
    params = optax.apply_updates(params, upd)
  beta, gamma = gdn.effective(params)
  assert float(params["beta"].min()) < 0.5  # it did move
  assert np.all(np.asarray(beta) >= 1e-6 * (1 - 1e-3)) and np.all(np.asarray(gamma) >= 0)
  assert np.all(np.isfinite(gdn.apply({"params": params}, x)))
  # Below the bound the gradient still flows when it points back up.
  g = jax.grad(lambda p: -jnp.sum(gdn.effective(p)[0]))(params)
  assert np.all(np.asarray(g["beta"]) < 0)


# -------------------------------------------------------------- EntropyBottleneck


@pytest.fixture(scope="module")
def eb():
  model = EntropyBottleneck(C)
  return model, model.init({"params": KEY}, jnp.zeros((1, 1, 1, C)), train=False)


def _perturbed(variables, scale=0.3):
  """Non-trivial density (factors on, biases spread); quantiles left alone."""
  p = dict(variables["params"])
  for i, k in enumerate(sorted(p)):
    if k != "quantiles":
      p[k] = p[k] + _normal(7 + i, p[k].shape, scale)
  return {"params": p}


def test_eb_likelihoods_in_unit_interval_and_modes(eb):
  model, v = eb
  v = {"params": {**v["params"], "quantiles": v["params"]["quantiles"].at[:, 1].set(0.3)}}
  y = _normal(1, (2, 5, 5, C), 8.0)
  fwd = _jit(model, train=True)
  noisy, lik_n = fwd(v, y, rngs={"noise": jax.random.PRNGKey(2)})
  noisy2, _ = fwd(v, y, rngs={"noise": jax.random.PRNGKey(3)})
  rounded, lik_r = _jit(model, train=False)(v, y)
  for lik in (lik_n, lik_r):
    assert lik.shape == y.shape and np.all((lik > 0) & (lik <= 1))
  d = np.asarray(noisy - y)
  assert np.all(np.abs(d) <= 0.5) and not np.allclose(noisy, noisy2)
  assert np.abs(d).std() > 0.1  # really noise, not rounding
  r = np.asarray(rounded) - 0.3  # rounded around the median 0.3
  np.testing.assert_allclose(r, np.round(r), atol=1e-5)
  assert np.all(np.abs(np.asarray(rounded - y)) <= 0.5 + 1e-5)
  sym = _jit(model, method="quantize", mode="symbols")(v, y)
  assert sym.dtype == jnp.int32
  np.testing.assert_allclose(sym + 0.3, rounded, atol=1e-5)


def test_eb_likelihood_sums_to_one(eb):
  model, v = eb
  grid = jnp.broadcast_to(jnp.arange(-400.0, 401.0)[:, None], (801, C))
  lik = _jit(model, method="likelihood")(v, grid)
  np.testing.assert_allclose(np.asarray(lik, np.float64).sum(0), np.ones(C), atol=1e-3)


def test_eb_aux_loss_trains_only_quantiles(eb):
  model, v = eb
  params = v["params"]
  aux = lambda p: model.apply({"params": p}, method="aux_loss")
  opt = optax.adam(1.0)

  @jax.jit
  def step(params, state):
    loss, g = jax.value_and_grad(aux)(params)
    upd, state = opt.update(g, state)
    return optax.apply_updates(params, upd), state, loss, g

  state, losses = opt.init(params), []
  for _ in range(8):
    params, state, loss, g = step(params, state)
    losses.append(float(loss))
    assert all(np.all(g[k] == 0) for k in g if k != "quantiles")
  assert np.all(np.diff(losses) < 0) and losses[-1] < losses[0] - 2
  q = np.asarray(params["quantiles"])
  med = np.asarray(model.apply({"params": params}, method="medians"))
  np.testing.assert_array_equal(med, q[:, 1])
  assert np.all((q[:, 0] < med) & (med < q[:, 2]))


def test_eb_solve_quantiles(eb):
  model, v = eb
  v = model.solve_quantiles(_perturbed(v))
  assert float(model.apply(v, method="aux_loss")) < 1e-3
  q = np.asarray(v["params"]["quantiles"])
  assert np.all((q[:, 0] < q[:, 1]) & (q[:, 1] < q[:, 2]))


# ----------------------------------------------------------- GaussianConditional


def test_gaussian_likelihood_matches_scipy():
  rng = np.random.default_rng(0)
  n = 4000
  means = rng.normal(0, 3, n).astype(np.float32)
  scales = np.exp(rng.uniform(np.log(0.11), np.log(50), n)).astype(np.float32)
  y = (np.round(rng.normal(0, 10, n)) + rng.uniform(-0.5, 0.5, n)).astype(np.float32)
  lik = jax.jit(GaussianConditional().likelihood)(y, scales, means)
  y64, m64, s64 = (a.astype(np.float64) for a in (y, means, scales))
  ref = special.ndtr((y64 + 0.5 - m64) / s64) - special.ndtr((y64 - 0.5 - m64) / s64)
  np.testing.assert_allclose(lik, np.maximum(ref, 1e-9), rtol=0, atol=1e-6)
  # Scales below the bound are evaluated at the bound.
  small = GaussianConditional().likelihood(jnp.zeros(2), jnp.array([1e-3, 0.11]))
  assert small[0] == small[1]


def test_gaussian_call_modes():
  gc = GaussianConditional()
  y = _normal(0, (2, 4, 4, C), 4.0)
  mu, s = np.full_like(y, 0.25), np.ones_like(y)
  noisy, lik = _jit(gc, train=True)({}, y, s, mu, rngs={"noise": jax.random.PRNGKey(1)})
  assert np.all(np.abs(np.asarray(noisy - y)) <= 0.5) and np.all((lik > 0) & (lik <= 1))
  deq, _ = _jit(gc, train=False)({}, y, s, mu)
  np.testing.assert_allclose(deq - 0.25, np.round(np.asarray(deq) - 0.25), atol=1e-5)
  sym = jax.jit(functools.partial(gc.quantize, mode="symbols"))(y, means=mu)
  np.testing.assert_allclose(sym + 0.25, deq, atol=1e-5)
  ste = jax.jit(jax.value_and_grad(lambda v: jnp.sum(gc.quantize(v, "ste", mu))))
  val, g = ste(y)
  np.testing.assert_array_equal(g, np.ones(y.shape))
  np.testing.assert_allclose(val, jnp.sum(deq), rtol=1e-5)


TABLE = scale_table()


_build_indexes = jax.jit(GaussianConditional().build_indexes)


MIDS = np.sqrt(TABLE[:-1].astype(np.float64) * TABLE[1:]).astype(np.float32)


def _ref_index(s):
  """Nearest table entry in log scale: the number of geometric midpoints <= s."""
  return np.sum(MIDS[None, :] <= s[:, None], axis=1)


def test_scale_table():
  assert TABLE.dtype == np.float32 and TABLE.size == 64 and np.all(np.diff(TABLE) > 0)
  np.testing.assert_allclose([TABLE[0], TABLE[-1]], [0.11, 256.0], rtol=1e-6)
  np.testing.assert_allclose(np.diff(np.log(TABLE.astype(np.float64))),
                             math.log(256 / 0.11) / 63, rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 63), st.lists(st.floats(-7.0, 7.0), min_size=8, max_size=8))
def test_build_indexes(i, log_scales):
  gc = GaussianConditional()
  t = TABLE[i]
  assert np.asarray(_build_indexes(np.array([t], np.float32)))[0] == i  # on an entry
  m = MIDS[min(i, MIDS.size - 1)]
  at = np.array([m, np.nextafter(m, np.float32(0)), np.nextafter(m, np.float32(np.inf))],
                np.float32)
  idx = np.asarray(_build_indexes(at))
  assert idx.dtype == np.int32
  j = min(i, MIDS.size - 1)
  assert idx[0] == j + 1 and idx[1] == j and idx[2] == j + 1  # ties go up
  s = np.sort(np.exp(np.array(log_scales)).astype(np.float32))
  got = np.asarray(_build_indexes(s))
  np.testing.assert_array_equal(got, _ref_index(s))
  assert np.all(np.diff(got) >= 0)  # monotone in the scale
  # nearest entry in log scale (within the table's range)
  inside = (s >= TABLE[0]) & (s <= TABLE[-1])
  d = np.abs(np.log(TABLE[None, :].astype(np.float64)) - np.log(s[:, None]))
  assert np.all(d[np.arange(s.size), got][inside] <= d[inside].min(axis=1) + 1e-6)


# ---------------------------------------------------------------------- CDF tables


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.just(0.0), st.floats(0, 1), st.floats(0, 1e-7)),
                min_size=1, max_size=300),
       st.sampled_from([8, 12, 16]))
def test_pmf_to_quantized_cdf(pmf, precision):
  pmf = np.array(pmf)
  if pmf.sum() == 0:
    pmf[0] = 1.0
  cdf = pmf_to_quantized_cdf(pmf, precision)
  freq = np.diff(cdf)
  assert cdf[0] == 0 and cdf[-1] == 1 << precision and freq.size == pmf.size
  assert np.all(freq >= 1)
  # Frequencies stay close to the rounded pmf: repairs only move counts by few.
  ideal = pmf / pmf.sum() * (1 << precision)
  assert np.all(np.abs(freq - ideal) <= 1 + pmf.size)


def _check_tables(t):
  assert all(a.dtype == np.int32 for a in t)
  assert t.cdfs.shape == (t.cdf_lengths.size, t.cdf_lengths.max())
  for row, n in zip(t.cdfs, t.cdf_lengths):
    assert row[0] == 0 and row[n - 1] == 1 << 16
    assert np.all(np.diff(row[:n]) >= 1)  # every symbol, escape included, codable
    assert np.all(row[n:] == 0)


@pytest.fixture(scope="module")
def eb_fitted(eb):
  model, v = eb
  return model, model.solve_quantiles(_perturbed(v))


def test_eb_tables(eb_fitted):
  model, v = eb_fitted
  t = model.update(v)
  _check_tables(t)
  q = np.asarray(v["params"]["quantiles"], np.float64)
  lo, hi = np.ceil(q[:, 0] - q[:, 1]), np.floor(q[:, 2] - q[:, 1])
  np.testing.assert_array_equal(t.offsets, lo)
  np.testing.assert_array_equal(t.cdf_lengths, hi - lo + 1 + 2)
  # Idempotent, also from a copy of the params that went through numpy.
  t2 = model.update(jax.tree.map(np.array, v))
  for a, b in zip(t, t2):
    np.testing.assert_array_equal(a, b)


def test_gaussian_tables():
  gc = GaussianConditional()
  t = gc.update()
  _check_tables(t)
  tails = np.ceil(TABLE.astype(np.float64) * -special.ndtri(0.5e-9))
  np.testing.assert_array_equal(t.offsets, -tails)
  np.testing.assert_array_equal(t.cdf_lengths, 2 * tails + 1 + 2)
  t2 = gc.update()
  for a, b in zip(t, t2):
    np.testing.assert_array_equal(a, b)


def _code_lengths(t, rows, symbols):
  """Ideal bits -log2(freq / 2^16) of support symbols (value - offset) in rows."""
  s = symbols - t.offsets[rows]
  assert np.all((s >= 0) & (s < t.cdf_lengths[rows] - 2)), "sample fell into the escape"
  freq = t.cdfs[rows, s + 1] - t.cdfs[rows, s]
  return -np.log2(freq / 2.0 ** 16)


def test_eb_table_code_length(eb_fitted):
  model, v = eb_fitted
  t = model.update(v)
  rng = np.random.default_rng(0)
  med = np.asarray(model.apply(v, method="medians"))
  k = np.arange(t.offsets.min(), t.offsets.min() + t.cdf_lengths.max())
  grid = jnp.asarray(med[None, :] + k[:, None], jnp.float32)
  lik = _jit(model, method="likelihood")
  pmf = np.asarray(lik(v, grid), np.float64)
  n = 20000
  sym = np.stack([rng.choice(k, n, p=pmf[:, c] / pmf[:, c].sum()) for c in range(C)], 1)
  y_hat = jnp.asarray(med + sym, jnp.float32)
  model_bits = -np.log2(np.asarray(lik(v, y_hat), np.float64))
  rows = np.asarray(model.build_indexes(sym.shape))
  table_bits = _code_lengths(t, rows, sym)
  assert model_bits.sum() > n * C  # a few bits a symbol: a meaningful comparison
  assert abs(table_bits.sum() / model_bits.sum() - 1) < 0.01


def test_gaussian_table_code_length():
  gc = GaussianConditional()
  t = gc.update()
  rng = np.random.default_rng(0)
  n = 50000
  scales = TABLE[rng.integers(0, TABLE.size, n)]
  means = rng.uniform(-5, 5, n).astype(np.float32)
  sym = np.round(rng.normal(size=n) * scales).astype(np.int64)  # ~ discretised N(0, σ²)
  y_hat = jnp.asarray(sym + means, jnp.float32)
  model_bits = -np.log2(np.asarray(jax.jit(gc.likelihood)(y_hat, scales, means), np.float64))
  rows = np.asarray(_build_indexes(scales))
  np.testing.assert_array_equal(TABLE[rows], scales)
  table_bits = _code_lengths(t, rows, sym)
  assert abs(table_bits.sum() / model_bits.sum() - 1) < 0.01


def test_tables_round_trip_through_codec(eb_fitted):
  """The layout matches jaxvision.compression.coding (escape = last symbol): exact round trip,
  escapes included, and the stream costs about the ideal code length."""
  from jaxvision.compression import coding
  model, v = eb_fitted
  t = model.update(v)
  y = _normal(3, (1, 8, 8, C), 6.0)
  y[0, 0, 0] = 1e4  # far outside the support: escaped, still exact
  sym = np.asarray(_jit(model, method="quantize", mode="symbols")(v, y))
  idx = np.asarray(model.build_indexes(sym.shape))
  data = coding.encode(sym, idx, *t)
  np.testing.assert_array_equal(coding.decode(data, idx, *t), sym)
  gc = GaussianConditional()
  tg = gc.update()
  scales = np.exp(np.random.default_rng(4).uniform(np.log(0.05), np.log(300), 4096))
  sym = np.round(np.random.default_rng(5).normal(size=4096) * scales).astype(np.int32)
  idx = np.asarray(_build_indexes(scales.astype(np.float32)))
  data = coding.encode(sym, idx, *tg)
  np.testing.assert_array_equal(coding.decode(data, idx, *tg), sym)
  inside = (sym - tg.offsets[idx] >= 0) & (sym - tg.offsets[idx] < tg.cdf_lengths[idx] - 2)
  assert inside.all()
  ideal = _code_lengths(tg, idx, sym).sum()
  assert 0.99 * ideal <= 8 * len(data) < 1.01 * ideal + 64
