"""Layers and entropy models for learned image compression.

  * `GDN` / IGDN (Ballé, Laparra, Simoncelli 2016), non-negative reparametrisation
    as CompressAI's `NonNegativeParametrizer`.
  * `EntropyBottleneck`: the factorized non-parametric density of Ballé et al. 2018
    (appendix 6.1), one monotone cumulative per channel, learned quantiles.
  * `GaussianConditional`: the discretised Gaussian of the scale / mean-scale
    hyperprior (Ballé et al. 2018, Minnen et al. 2018) over a log-spaced scale table.
  * Host-side integer CDF tables (`update`) for a range coder, in float64 numpy so
    that they are a deterministic function of the parameters.

Layout is channels-last (NHWC). Quantisation is around the learned medians for the
factorized model and around the predicted means for the Gaussian, as in CompressAI.

Determinism contract for the coder: an encoder and a decoder must pick the same CDF
row for every symbol. A float scale near a scale-table boundary may round to either
side on two machines (different XLA fusion, FMA, BLAS), so at coding time the scales
come from fixed-point integer networks (`fx_*` below: integer weights and
activations, exact int64 / bounded float64 arithmetic) and the row from an integer
comparison with fixed-point midpoints (`GaussianConditional.build_indexes_fixed`).
The float `build_indexes` serves training-time checks only. The coder only ever sees
int32 indexes and the int32 tables below; it never compares floats itself.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Bound used by the likelihood models below and by CompressAI (likelihood_bound).
LIKELIHOOD_BOUND = 1e-9


# --------------------------------------------------------------------------- bounds


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def lower_bound(x, bound: float):
  """max(x, bound), whose gradient still flows when it would push x back up.

  A plain max kills the gradient below the bound and a parameter that crossed it
  could never return (CompressAI `LowerBound`).
  """
  return jnp.maximum(x, bound)


def _lower_bound_fwd(x, bound):
  return jnp.maximum(x, bound), x


def _lower_bound_bwd(bound, x, g):
  # Pass if above the bound, or if gradient descent (x -= lr*g) would raise x.
  return (jnp.where((x >= bound) | (g < 0), g, jnp.zeros_like(g)),)


lower_bound.defvjp(_lower_bound_fwd, _lower_bound_bwd)


def nonneg_init(value, pedestal: float = 2.0 ** -36):
  """Stored form of a non-negative value: sqrt(max(value + pedestal, pedestal))."""
  value = jnp.asarray(value, jnp.float32)
  return jnp.sqrt(jnp.maximum(value + pedestal, pedestal))


def nonneg(stored, minimum: float = 0.0, pedestal: float = 2.0 ** -36):
  """Effective value lower_bound(stored, sqrt(minimum + pedestal))² - pedestal >= minimum.

  The square root makes small values move slowly under SGD (the parametrisation of
  Ballé 2016); the pedestal keeps the bound away from 0 where the gradient of the
  square vanishes.
  """
  bound = math.sqrt(minimum + pedestal)
  return lower_bound(stored, bound) ** 2 - pedestal


# ---------------------------------------------------------------------------- GDN


class GDN(nn.Module):
  """y_i = x_i / sqrt(β_i + Σ_j γ_ij x_j²) (IGDN: times the square root). NHWC.

  Params (stored, see `nonneg`): beta (C,), gamma (C_out, C_in); init β=1, γ=0.1·I.

  The normalisation β + Σ_j γ_ij x_j² and its (inverse) square root are computed in
  float32 whatever x's dtype, and only the product is cast back to it: under bf16 compute
  (the codecs' `dtype`) a bf16 x² loses the small terms of the sum next to the large ones,
  and the rsqrt of a bf16 sum would add its 2^-8 relative error to every activation of
  every GDN layer; like a normalisation layer's statistics, the sum stays float32. For
  float32 x every cast is a no-op, so float32 models compute exactly what they did.
  """

  inverse: bool = False
  beta_min: float = 1e-6
  gamma_init: float = 0.1
  reparam_offset: float = 2.0 ** -18

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    ped = self.reparam_offset ** 2
    beta = self.param("beta", lambda k, s: nonneg_init(jnp.ones(s), ped), (c,))
    gamma = self.param(
        "gamma", lambda k, s: nonneg_init(self.gamma_init * jnp.eye(s[0]), ped), (c, c))
    beta, gamma = self.effective({"beta": beta, "gamma": gamma})
    f32 = jnp.float32
    norm = (jnp.matmul(jnp.square(x.astype(f32)), gamma.T.astype(f32)) + beta.astype(f32))
    y = x.astype(f32) * (jnp.sqrt(norm) if self.inverse else jax.lax.rsqrt(norm))
    return y.astype(x.dtype)

  @nn.nowrap
  def effective(self, params):
    """(β, γ) as used by the layer, from the stored params."""
    ped = self.reparam_offset ** 2
    return (nonneg(params["beta"], self.beta_min, ped),
            nonneg(params["gamma"], 0.0, ped))


# ------------------------------------------------------ transposed convolution


def polyphase_taps(kernel_size: int, stride: int, lo: int):
  """How a flax transposed conv (no kernel flip, explicit padding (lo, hi) of the dilated
  input) splits into `stride` phases: output s·q + r = Σ_t x[q + d] K[t] over the taps t
  with d = (r + t - lo) / s an integer. Returns ({(r, d): t}, d_min, d_max)."""
  taps = {}
  for r in range(stride):
    for t in range(kernel_size):
      if (r + t - lo) % stride == 0:
        taps[(r, (r + t - lo) // stride)] = t
  ds = [d for _, d in taps]
  return taps, min(ds), max(ds)


class PolyphaseConvTranspose(nn.ConvTranspose):
  """`nn.ConvTranspose` (same parameters, same result up to float rounding) computed as
  one stride-1 convolution of the undilated input with all stride² phases stacked on the
  output channels, then depth-to-space.

  XLA:CPU runs a transposed conv as a convolution of the zero-dilated input, stride² times
  the multiply-adds; here a 5x5 stride-2 layer costs 9/6.25 of the ideal instead of 4x
  (1.9x faster on the large g_s layers). Only for 2-D, equal strides and explicit padding
  with output = stride x input (lo + hi = k + s - 2, CompressAI's deconvs); anything else
  runs flax's own code. Masked like any nn.ConvTranspose under `core.buckets.valid_region`
  (its input is zero outside the region, as the plain layer's padding would be)."""

  def _polyphase(self):
    k = tuple(self.kernel_size) if not isinstance(self.kernel_size, int) else (
        self.kernel_size,) * 2
    s = self.strides if self.strides is not None else 1
    s = (s, s) if isinstance(s, int) else tuple(s)
    pad = self.padding
    if (len(k) != 2 or k[0] != k[1] or s[0] != s[1] or s[0] < 2 or isinstance(pad, str)
        or self.transpose_kernel or self.mask is not None or self.kernel_dilation not in (
            None, 1, (1, 1))):
      return None
    pad = tuple(tuple(p) for p in pad)
    if len(pad) != 2 or pad[0] != pad[1] or pad[0][0] + pad[0][1] != k[0] + s[0] - 2:
      return None
    return k[0], s[0], pad[0][0]

  @nn.compact
  def __call__(self, inputs):
    spec = self._polyphase()
    if spec is None or inputs.ndim != 4:
      return super().__call__(inputs)
    k, s, lo = spec
    cin = inputs.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (k, k, cin, self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    taps, dmin, dmax = polyphase_taps(k, s, lo)
    d = dmax - dmin + 1
    # tap index per (offset, phase); k selects an appended zero tap
    index = np.full((d, s), k, np.int32)
    for (r, off), t in taps.items():
      index[off - dmin, r] = t
    kz = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
    big = kz[index][:, :, index]  # (d, s, d, s, cin, cout): [a, ry, b, rx]
    big = big.transpose(0, 2, 4, 1, 3, 5).reshape(d, d, cin, s * s * self.features)
    y = jax.lax.conv_general_dilated(inputs, big, (1, 1), ((-dmin, dmax), (-dmin, dmax)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=self.precision)
    n, h, w, _ = y.shape
    y = y.reshape(n, h, w, s, s, self.features).transpose(0, 1, 3, 2, 4, 5)
    y = y.reshape(n, h * s, w * s, self.features)
    if bias is not None:
      y = y + bias
    return y


# ------------------------------------------------------------------ integer tables


class CdfTables(NamedTuple):
  """Quantised CDFs for a range coder (all int32).

  cdfs: (rows, max_len), row r is 0 = c_0 < c_1 < ... < c_{n} = 2^precision over
    its first cdf_lengths[r] entries, zero-padded. Symbols 0..n-2 are the support,
    symbol n-1 the escape (tail) bin, so cdf_lengths = support size + 2.
  cdf_lengths: (rows,).
  offsets: (rows,) value of symbol 0 (support symbol s encodes value s + offset,
    relative to the median / mean).
  """

  cdfs: np.ndarray
  cdf_lengths: np.ndarray
  offsets: np.ndarray


def pmf_to_quantized_cdf(pmf, precision: int = 16) -> np.ndarray:
  """CDF (len n+1, int64) of frequencies summing to 2^precision, every one >= 1.

  CompressAI's algorithm: scale and round, then repair zero frequencies by stealing
  counts. We steal from the largest frequencies (ties: lowest index, so it is
  deterministic): one count costs a large symbol the least code length.
  """
  pmf = np.asarray(pmf, np.float64)
  total = 1 << precision
  n = pmf.size
  if n > total:
    raise ValueError(f"{n} symbols do not fit into {precision}-bit frequencies")
  if not np.all(np.isfinite(pmf)) or np.any(pmf < 0) or pmf.sum() <= 0:
    raise ValueError("pmf must be finite, non-negative and not all zero")
  freq = np.maximum(np.rint(pmf / pmf.sum() * total).astype(np.int64), 1)
  excess = int(freq.sum()) - total
  if excess < 0:
    freq[np.argmax(freq)] -= excess  # rounding left counts over: give them to the mode
  while excess > 0:
    # One count from each of the `excess` largest symbols that can spare one.
    order = np.argsort(-freq, kind="stable")
    order = order[freq[order] > 1][:excess]
    freq[order] -= 1
    excess -= order.size
  return np.concatenate([[0], np.cumsum(freq)])


def _pack(rows, offsets) -> CdfTables:
  lengths = np.array([r.size for r in rows], np.int32)
  cdfs = np.zeros((len(rows), lengths.max()), np.int32)
  for i, r in enumerate(rows):
    cdfs[i, :r.size] = r
  return CdfTables(cdfs, lengths, np.asarray(offsets, np.int32))


# ------------------------------------------------------------- factorized density


def _logits_cumulative(p, x, xp):
  """Per-channel monotone logit of the CDF. p: density params, x: (C, N) -> (C, N).

  xp is jnp (training, float32) or np (tables, float64); the same code serves both.
  """
  if xp is np:
    softplus, tanh = (lambda v: np.logaddexp(0.0, v)), np.tanh
  else:
    softplus, tanh = jax.nn.softplus, jnp.tanh
  logits = x[:, None, :]
  i = 0
  while f"matrix_{i}" in p:
    logits = xp.matmul(softplus(p[f"matrix_{i}"]), logits) + p[f"bias_{i}"]
    if f"factor_{i}" in p:
      logits = logits + tanh(p[f"factor_{i}"]) * tanh(logits)
    i += 1
  return logits[:, 0, :]


def _factorized_likelihood(p, v, xp):
  """P(v-½ < y < v+½) per channel; v: (C, N). Returns (pmf, lower, upper logits)."""
  lower = _logits_cumulative(p, v - 0.5, xp)
  upper = _logits_cumulative(p, v + 0.5, xp)
  # Evaluate on the side where both sigmoids are small (no 1 - 1 cancellation).
  # where() instead of CompressAI's -sign(): sign(0) = 0 would zero the likelihood.
  sign = xp.where(lower + upper > 0, -1.0, 1.0)
  if xp is np:
    from scipy import special  # host tables only: scipy stays out of the commands' start-up
    sigmoid = special.expit
  else:
    sigmoid = jax.nn.sigmoid
  return xp.abs(sigmoid(sign * upper) - sigmoid(sign * lower)), lower, upper


def _host_params(params):
  params = params.get("params", params)
  return {k: np.asarray(v, np.float64) for k, v in params.items()}


class EntropyBottleneck(nn.Module):
  """Factorized prior p(y_c) = c_c(y+½) - c_c(y-½), c_c a learned monotone CDF.

  Params per layer i: matrix_i (C, f_out, f_in) (softplus'ed), bias_i (C, f_out, 1),
  factor_i (C, f_out, 1) (tanh'ed, all but the last layer); quantiles (C, 3): the
  tail_mass/2, ½ and 1 - tail_mass/2 quantiles, trained only by `aux_loss`.
  """

  channels: int
  filters: tuple[int, ...] = (3, 3, 3, 3)
  init_scale: float = 10.0
  tail_mass: float = 1e-9
  likelihood_bound: float = LIKELIHOOD_BOUND

  def setup(self):
    f = (1,) + tuple(self.filters) + (1,)
    scale = self.init_scale ** (1.0 / (len(f) - 1))
    c = self.channels
    density = {}
    for i in range(len(f) - 1):
      # Each layer scales by 1/scale, so the init CDF is a logistic of width init_scale.
      init = math.log(math.expm1(1.0 / scale / f[i + 1]))
      density[f"matrix_{i}"] = self.param(
          f"matrix_{i}", nn.initializers.constant(init), (c, f[i + 1], f[i]))
      density[f"bias_{i}"] = self.param(
          f"bias_{i}", lambda k, s: jax.random.uniform(k, s, minval=-0.5, maxval=0.5),
          (c, f[i + 1], 1))
      if i < len(f) - 2:
        density[f"factor_{i}"] = self.param(
            f"factor_{i}", nn.initializers.zeros, (c, f[i + 1], 1))
    self.density = density
    s = self.init_scale
    self.quantiles = self.param(
        "quantiles", lambda k, sh: jnp.tile(jnp.array([-s, 0.0, s]), (sh[0], 1)), (c, 3))

  def medians(self):
    """(C,) learned medians; no gradient (only the aux loss trains quantiles)."""
    return jax.lax.stop_gradient(self.quantiles[:, 1])

  def quantize(self, y, mode: str):
    """'dequantize': round(y - median) + median; 'symbols': int32 round(y - median)."""
    m = self.medians()
    if mode == "dequantize":
      return jnp.round(y - m) + m
    if mode == "symbols":
      return jnp.round(y - m).astype(jnp.int32)
    raise ValueError(f"unknown mode {mode!r}")

  def likelihood(self, y_hat):
    c = self.channels
    v = y_hat.reshape(-1, c).T
    lik = _factorized_likelihood(self.density, v, jnp)[0]
    return lower_bound(lik.T.reshape(y_hat.shape), self.likelihood_bound)

  def __call__(self, y, train: bool):
    """y (..., C) -> (y_hat, likelihoods). Uniform noise (rng 'noise') when training."""
    if train:
      y_hat = y + jax.random.uniform(self.make_rng("noise"), y.shape, y.dtype, -0.5, 0.5)
    else:
      y_hat = self.quantize(y, "dequantize")
    return y_hat, self.likelihood(y_hat)

  def aux_loss(self):
    """Σ |logits(quantiles) - target|: drives the quantiles to the model's quantiles."""
    t = math.log(2.0 / self.tail_mass - 1.0)
    density = jax.lax.stop_gradient(self.density)
    logits = _logits_cumulative(density, self.quantiles, jnp)
    return jnp.sum(jnp.abs(logits - jnp.array([-t, 0.0, t])))

  @nn.nowrap
  def build_indexes(self, shape):
    """CDF row of every element of a (..., C) tensor: its channel."""
    return jnp.broadcast_to(jnp.arange(shape[-1], dtype=jnp.int32), shape)

  @nn.nowrap
  def solve_quantiles(self, params, iters: int = 100):
    """Params with `quantiles` set to the exact quantiles by bisection (host, float64).

    The CDF is monotone, so this replaces thousands of aux-loss steps (e.g. before
    `update` on a checkpoint whose quantiles were not trained to convergence).
    """
    p = _host_params(params)
    t = math.log(2.0 / self.tail_mass - 1.0)
    target = np.broadcast_to(np.array([-t, 0.0, t]), p["quantiles"].shape)
    lo, hi = np.full(target.shape, -1.0), np.full(target.shape, 1.0)
    f = lambda x: _logits_cumulative(p, x, np)
    while np.any(f(lo) > target):
      lo = np.where(f(lo) > target, 2 * lo, lo)
    while np.any(f(hi) < target):
      hi = np.where(f(hi) < target, 2 * hi, hi)
    for _ in range(iters):
      mid = 0.5 * (lo + hi)
      below = f(mid) < target
      lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    out = dict(params.get("params", params))
    out["quantiles"] = jnp.asarray(0.5 * (lo + hi), jnp.float32)
    return {"params": out} if "params" in params else out

  @nn.nowrap
  def update(self, params, precision: int = 16) -> CdfTables:
    """Integer CDF tables, one row per channel (host-side float64; deterministic).

    Support of channel c: integers k in [ceil(q0 - m), floor(q2 - m)] (k = 0
    included), value m + k, plus an escape bin holding the mass outside.
    """
    p = _host_params(params)
    q = p["quantiles"]
    med = q[:, 1]
    lo = np.minimum(np.ceil(q[:, 0] - med), 0).astype(np.int64)
    hi = np.maximum(np.floor(q[:, 2] - med), 0).astype(np.int64)
    rows = []
    for c in range(q.shape[0]):
      pc = {k: v[c:c + 1] for k, v in p.items() if k != "quantiles"}
      v = med[c] + np.arange(lo[c], hi[c] + 1, dtype=np.float64)[None]
      pmf, lower, upper = _factorized_likelihood(pc, v, np)
      from scipy import special
      tail = special.expit(lower[0, 0]) + special.expit(-upper[0, -1])
      rows.append(pmf_to_quantized_cdf(np.append(pmf[0], tail), precision))
    return _pack(rows, lo)


# ---------------------------------------------------------- Gaussian conditional


def scale_table(min: float = 0.11, max: float = 256.0, levels: int = 64) -> np.ndarray:
  """Log-spaced scales, as float32 values: the model (float32 jax) and the tables
  (float64 numpy) then see the very same numbers."""
  return np.exp(np.linspace(math.log(min), math.log(max), levels)).astype(np.float32)


def _std_cdf(x):
  return 0.5 * jax.lax.erfc(-x * (2 ** -0.5))


class GaussianConditional(nn.Module):
  """Discretised N(μ, σ²): P(y) = Φ((y+½-μ)/σ) - Φ((y-½-μ)/σ), σ >= scale_bound.

  No params. `table` (scale table) defaults to `scale_table()`.
  """

  table: tuple[float, ...] | None = None
  scale_bound: float = 0.11
  tail_mass: float = 1e-9
  likelihood_bound: float = LIKELIHOOD_BOUND

  @nn.nowrap
  def scales(self) -> np.ndarray:
    return scale_table() if self.table is None else np.asarray(self.table, np.float32)

  @nn.nowrap
  def quantize(self, y, mode: str, means=None, key=None):
    """'noise' (needs key), 'ste' (round, identity gradient), 'dequantize'
    (round(y - μ) + μ) or 'symbols' (int32 round(y - μ))."""
    if mode == "noise":
      return y + jax.random.uniform(key, y.shape, y.dtype, -0.5, 0.5)
    m = 0.0 if means is None else means
    if mode == "ste":
      return y + jax.lax.stop_gradient(jnp.round(y - m) + m - y)
    if mode == "dequantize":
      return jnp.round(y - m) + m
    if mode == "symbols":
      return jnp.round(y - m).astype(jnp.int32)
    raise ValueError(f"unknown mode {mode!r}")

  @nn.nowrap
  def likelihood(self, y_hat, scales, means=None):
    v = y_hat if means is None else y_hat - means
    s = lower_bound(scales, self.scale_bound)
    v = jnp.abs(v)  # symmetric: evaluate in the lower tail, where Φ is accurate
    lik = _std_cdf((0.5 - v) / s) - _std_cdf((-0.5 - v) / s)
    return lower_bound(lik, self.likelihood_bound)

  def __call__(self, y, scales, means=None, train: bool = False):
    """(y_hat, likelihoods); uniform noise from rng 'noise' when training."""
    if train:
      y_hat = self.quantize(y, "noise", key=self.make_rng("noise"))
    else:
      y_hat = self.quantize(y, "dequantize", means)
    return y_hat, self.likelihood(y_hat, scales, means)

  @nn.nowrap
  def midpoints(self) -> np.ndarray:
    """float32 geometric midpoints sqrt(t_k t_{k+1}) of the scale table (float64 on the
    host, then rounded once: constants that every machine sees alike)."""
    t = self.scales().astype(np.float64)
    return np.sqrt(t[:-1] * t[1:]).astype(np.float32)

  @nn.nowrap
  def build_indexes(self, scales):
    """int32 row per scale: the table entry nearest in log scale, i.e. the number of
    geometric midpoints <= scale (a tie goes up). CompressAI takes the next entry up
    instead; the nearest one costs within ~0.5% of the model's estimated rate where
    either one-sided choice is off by ~2% (tests/test_compress_rate.py). See the
    module docstring on why only these integers, never float scales, reach the coder."""
    mids = jnp.asarray(self.midpoints())
    idx = jnp.searchsorted(mids, jnp.asarray(scales, jnp.float32), side="right")
    return idx.astype(jnp.int32)

  @nn.nowrap
  def fixed_midpoints(self, frac: int | None = None) -> np.ndarray:
    """int64 ceil(midpoint·2^frac): a fixed-point scale s (value s·2^-frac) is >= a
    float32 midpoint m iff s >= ceil(m·2^frac) (m·2^frac is exact in float64)."""
    frac = ACT_FRAC if frac is None else frac
    return np.ceil(self.midpoints().astype(np.float64) * float(1 << frac)).astype(np.int64)

  @nn.nowrap
  def build_indexes_fixed(self, scales_fx, frac: int | None = None) -> np.ndarray:
    """`build_indexes` for fixed-point scales (int64, `frac` fractional bits,
    default ACT_FRAC): the number of midpoints <= scale, by integer comparison, so
    the row is the same on every machine. This is what the coder uses."""
    mids = self.fixed_midpoints(frac)
    return np.searchsorted(mids, np.asarray(scales_fx, np.int64), side="right").astype(np.int32)

  @nn.nowrap
  def update(self, precision: int = 16) -> CdfTables:
    """Integer CDF tables, one row per table scale: zero-mean discretised Gaussian on
    [-tail, tail], tail = ceil(σ Φ^-1(1 - tail_mass/2)), plus an escape bin."""
    s = self.scales().astype(np.float64)
    from scipy import special
    mult = -special.ndtri(self.tail_mass / 2)
    tails = np.ceil(s * mult).astype(np.int64)
    rows = []
    for sc, t in zip(s, tails):
      k = np.abs(np.arange(-t, t + 1, dtype=np.float64))
      pmf = special.ndtr((0.5 - k) / sc) - special.ndtr((-0.5 - k) / sc)
      rows.append(pmf_to_quantized_cdf(np.append(pmf, 2 * special.ndtr((-0.5 - t) / sc)),
                                       precision))
    return _pack(rows, -tails)


# ------------------------------------------------------------------ context model


def causal_mask(k: int, mask_type: str = "A") -> np.ndarray:
  """(k, k, 1, 1) mask of a PixelCNN conv in HWIO layout: rows above the centre and
  the pixels left of it (type A), or including the centre (type B)."""
  m = np.ones((k, k, 1, 1), np.float32)
  m[k // 2, k // 2 + (mask_type == "B"):] = 0
  m[k // 2 + 1:] = 0
  return m


class MaskedConv(nn.Module):
  """Masked k x k conv (CompressAI `MaskedConv2d`, stride 1, zero padding k//2).

  Params: kernel (k, k, C_in, features) HWIO (stored unmasked, as CompressAI),
  bias. `valid=True` applies it to one k x k window (the serial coder's step).
  """

  features: int
  kernel_size: int = 5
  mask_type: str = "A"

  @nn.compact
  def __call__(self, x, valid: bool = False):
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    kernel = kernel * jnp.asarray(causal_mask(k, self.mask_type))
    pad = "VALID" if valid else ((k // 2, k // 2),) * 2
    y = jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), pad,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(x.dtype)


# ------------------------------------------------------------- fixed-point nets
#
# The coder's CDF choices (hyper-synthesis h_s, and mbt2018's context step) are
# evaluated on the host in exact integer arithmetic (Ballé, Johnston & Minnen 2019,
# "Integer networks for data compression with latent-variable models", made
# pragmatic): a float32 weight w becomes the integer round(w·2^WEIGHT_FRAC), a bias
# round(b·2^(ACT_FRAC+WEIGHT_FRAC)), an activation the integer a with value a·2^-ACT_FRAC.
# A layer is acc = Σ a·w + b (exact), then floor((acc + 2^(WEIGHT_FRAC-1)) /
# 2^WEIGHT_FRAC): rounded half up, the 2^(WEIGHT_FRAC-1) folded into the integer bias
# so that no layer biases its output downwards. Every step is an IEEE-exact or integer operation, so two machines compute
# the same integers whatever their BLAS, FMA or summation order.

ACT_FRAC = 12      # fractional bits of activations (resolution 2^-12 ≈ 2.4e-4)
WEIGHT_FRAC = 16   # fractional bits of weights (resolution 2^-16 ≈ 1.5e-5)
LEAKY_NUM = 655    # LeakyReLU(0.01) as x·655/2^16 (slope 0.009995), floored
_F64_EXACT = 1 << 53  # float64 holds every integer below this exactly
_I64_MAX = (1 << 63) - 1


def fx_quantize(x, frac: int) -> np.ndarray:
  """int64 round(x·2^frac), ties to even: x (float32 or float64) times a power of two
  is exact in float64, and rint is IEEE-exact, so this is machine-independent."""
  v = np.asarray(x, np.float64) * float(1 << frac)
  if not np.all(np.isfinite(v)) or np.any(np.abs(v) >= 2.0 ** 62):
    raise OverflowError(f"value out of the fixed-point range (2^{62 - frac})")
  return np.rint(v).astype(np.int64)


class FxDense(NamedTuple):
  """One fixed-point affine map, acc = a @ kernel + bias (int64 (K, O), (O,)).

  `kernel_f64` is the same integers as float64 (for BLAS), `l1` the largest column
  sum of |kernel| and `bias_max` max|bias|: with max|a| they bound every partial
  sum of every output, whatever the summation order."""

  kernel: np.ndarray
  bias: np.ndarray
  kernel_f64: np.ndarray
  l1: int
  bias_max: int


def fx_dense(kernel, bias) -> FxDense:
  """FxDense from float (K, O) kernel and (O,) bias."""
  k = fx_quantize(kernel, WEIGHT_FRAC)
  b = fx_quantize(bias, ACT_FRAC + WEIGHT_FRAC) + (1 << (WEIGHT_FRAC - 1))  # see fx_rescale
  l1 = int(np.abs(k).sum(axis=0).max()) if k.size else 0  # <= 2^62·K: Python int
  return FxDense(k, b, k.astype(np.float64), l1, int(np.abs(b).max(initial=0)))


def fx_matmul(a, layer: FxDense, force_int64: bool = False) -> np.ndarray:
  """Exact int64 a @ kernel + bias for int64 a (P, K).

  |partial sum| <= max|a|·l1 + bias_max =: bound. Below 2^53 every product and
  every partial sum (in any order, FMA or not) is an integer float64 represents,
  so float64 BLAS is exact; otherwise int64 (exact below 2^63), else OverflowError.
  """
  amax = int(np.abs(a).max(initial=0))
  bound = amax * layer.l1 + layer.bias_max  # Python ints: no overflow here
  if bound > _I64_MAX:
    raise OverflowError(f"fixed-point layer could reach {bound:.3g} >= 2^63")
  if bound < _F64_EXACT and not force_int64:
    acc = a.astype(np.float64) @ layer.kernel_f64
    return acc.astype(np.int64) + layer.bias
  return a @ layer.kernel + layer.bias


def fx_rescale(acc) -> np.ndarray:
  """floor(acc / 2^WEIGHT_FRAC): back to ACT_FRAC fractional bits (acc holds the
  fx_dense bias, which carries the +2^(WEIGHT_FRAC-1) that makes this round)."""
  return np.right_shift(acc, WEIGHT_FRAC)


def fx_relu(a) -> np.ndarray:
  return np.maximum(a, 0)


def fx_leaky(a) -> np.ndarray:
  """LeakyReLU(≈0.01): negative a -> floor(a·LEAKY_NUM / 2^16)."""
  if a.size and int(np.abs(a).max()) >= 1 << 52:
    raise OverflowError("fixed-point activation too large for the leaky slope")
  return np.where(a < 0, np.right_shift(a * LEAKY_NUM, 16), a)


class FxConv(NamedTuple):
  """A fixed-point k x k conv (or flax ConvTranspose, kernel not flipped) on one
  (H, W, C) image. A conv holds one im2col kernel (k·k·C_in, C_out); a transposed
  conv one per output phase (r_y, r_x) (polyphase: output s·q + r only meets the
  taps t ≡ lo - r mod s, so no products with the dilation's zeros)."""

  parts: tuple  # ((r_y, r_x, off_y, off_x, k_y, k_x, FxDense), ...); one for a conv
  stride: int
  padding: tuple[int, int]
  transpose: bool


def fx_conv(kernel, bias, stride: int, padding, transpose: bool = False) -> FxConv:
  """kernel (k, k, C_in, C_out) HWIO as flax stores it; padding (lo, hi) per side."""
  kernel = np.asarray(kernel)
  k = kernel.shape[0]
  if not transpose:
    return FxConv(((0, 0, 0, 0, k, k, fx_dense(kernel.reshape(-1, kernel.shape[-1]), bias)),),
                  stride, tuple(padding), False)
  lo = padding[0]
  parts = []
  for ry in range(stride):
    for rx in range(stride):
      ty, tx = (lo - ry) % stride, (lo - rx) % stride  # first tap of this phase
      sub = kernel[ty::stride, tx::stride]
      # out[s·q + r] = Σ_u x[q + off + u] · K[t0 + s·u],  off = (r + t0 - lo) / s
      parts.append((ry, rx, (ry + ty - lo) // stride, (rx + tx - lo) // stride,
                    sub.shape[0], sub.shape[1], fx_dense(sub.reshape(-1, sub.shape[-1]), bias)))
  return FxConv(tuple(parts), stride, tuple(padding), True)


def _windows(x, ky: int, kx: int, stride: int, pads):
  """im2col: (H', W', ky·kx·C) patches of x zero-padded by pads ((t, b), (l, r))."""
  x = np.pad(x, (*pads, (0, 0)))
  win = np.lib.stride_tricks.sliding_window_view(x, (ky, kx), axis=(0, 1))[::stride, ::stride]
  ho, wo = win.shape[:2]
  return win.transpose(0, 1, 3, 4, 2).reshape(ho * wo, -1), (ho, wo)


def fx_conv_apply(x, layer: FxConv, force_int64: bool = False) -> np.ndarray:
  """int64 (H, W, C_in) at ACT_FRAC -> int64 (H', W', C_out) at ACT_FRAC (rounded)."""
  h, w, _ = x.shape
  if not layer.transpose:
    (_, _, _, _, ky, kx, dense), = layer.parts
    lo, hi = layer.padding
    cols, (ho, wo) = _windows(x, ky, kx, layer.stride, ((lo, hi), (lo, hi)))
    return fx_rescale(fx_matmul(cols, dense, force_int64)).reshape(ho, wo, -1)
  s = layer.stride
  out = None
  for ry, rx, oy, ox, ky, kx, dense in layer.parts:
    # rows q + oy .. q + oy + ky - 1 for q in 0..h-1, zeros outside x
    pads = ((max(0, -oy), max(0, oy + ky - 1)), (max(0, -ox), max(0, ox + kx - 1)))
    xs = x[max(0, oy):, max(0, ox):]
    cols, (ho, wo) = _windows(xs, ky, kx, 1, pads)
    part = fx_rescale(fx_matmul(cols, dense, force_int64)).reshape(ho, wo, -1)[:h, :w]
    if out is None:
      out = np.empty((h * s, w * s, part.shape[-1]), np.int64)
    out[ry::s, rx::s] = part
  return out
