"""Learned image codecs: Ballé et al. 2017/2018 and Minnen et al. 2018 (CompressAI).

  * `bmshj2018-factorized`: GDN autoencoder, factorized prior on y.
  * `bmshj2018-hyperprior`: scale hyperprior, y ~ N(0, σ²) with σ = h_s(z).
  * `mbt2018-mean`: mean-scale hyperprior, y ~ N(μ, σ²) with (σ, μ) = h_s(z).
  * `mbt2018`: mean-scale hyperprior + masked 5x5 context model (Minnen et al. 2018,
    joint autoregressive and hierarchical priors); coded serially, position by position.

Modules are NHWC with inputs in [0, 1]. Submodules are lists named like the indices
of CompressAI's `nn.Sequential`s (g_a_0, g_a_1 = GDN, ...; activations keep their
slot), so a converter (`convert.py`) maps `g_a.2.weight` to `g_a_2/kernel` one to
one. Transposed convs use padding (2, 3): the same output grid as PyTorch's
padding=2, output_padding=1 (flax does not flip the kernel; a converter must).

Architectures only. The rest of the family works on (model, variables):
`tables.py` builds the integer CDF tables (`update`) and keeps them beside a
checkpoint; `coding.py` codes latents on the host (`compress`, `decompress`,
`estimate_bits`, the fixed-point networks that choose every CDF); `files.py` is the
.jvc container. The jitted float methods below (`_encode_net`, `_hyper_decode`,
`_ar_step`, ...) are what the coder runs on the accelerator, or float references of
its fixed-point integer networks for tests.

Compute dtype (`dtype`, e.g. "bfloat16" on GPU/TPU; None, the default, is float32 as
before): only the analysis and synthesis transforms g_a and g_s compute in it. Their
outputs y and x_hat are cast to float32 at once, so the hyperprior (h_a, h_s), the mbt2018
context model and entropy parameters, the entropy bottleneck and the Gaussian conditional
(likelihoods, medians, quantisation, the rate term of the loss) stay float32, and the
coder's fixed-point integer networks (which read only the float32 parameters) are not
affected at all. GDN's normalisation Σ γ x² and its square root are float32 inside g_a and
g_s too (`layers.GDN`). Rounding y in bf16 would move latents across quantisation
boundaries and the rate estimate with them; a bf16 g_a's y only perturbs the values being
coded. Parameters are `param_dtype` (float32: the trainer keeps master weights and
optimizer state in float32). A `.jvc` file is made by a model built from the workdir's
`model.kwargs`, which hold no dtype unless a user put one there: files made with the
default dtype are bit-identical to before.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxvision.compression.layers import (
    GDN, EntropyBottleneck, GaussianConditional, MaskedConv, PolyphaseConvTranspose)
from jaxvision.core.registry import register_model

# λ of the CompressAI zoo (MSE), quality 1..8.
LAMBDAS = {q: l for q, l in enumerate(
    [0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800], start=1)}
# λ of the CompressAI zoo for the MS-SSIM models (loss λ·(1 - MS-SSIM) + bpp).
MS_SSIM_LAMBDAS = {q: l for q, l in enumerate(
    [2.40, 4.58, 8.73, 16.64, 31.73, 60.50, 115.37, 220.00], start=1)}

# Total stride of g_a ∘ h_a: images are padded to a multiple of this.
STRIDE = 64


def _conv(features, k=5, stride=2, dtype=None, param_dtype=jnp.float32):
  return nn.Conv(features, (k, k), (stride, stride), padding=((k // 2,) * 2,) * 2,
                 dtype=dtype, param_dtype=param_dtype)


def _deconv(features, k=5, stride=2, dtype=None, param_dtype=jnp.float32):
  # Output exactly stride x input (PyTorch padding=k//2, output_padding=stride-1);
  # computed phase by phase (layers.PolyphaseConvTranspose), same params as nn.ConvTranspose.
  lo, hi = k // 2, k // 2 + stride - 1
  return PolyphaseConvTranspose(features, (k, k), (stride, stride), padding=((lo, hi),) * 2,
                                dtype=dtype, param_dtype=param_dtype)


def _seq(layers, x):
  for layer in layers:
    x = layer(x)
  return x


def _transform(layers, x):
  """g_a or g_s (in the compute dtype), its output in float32 (see the module docstring)."""
  return _seq(layers, x).astype(jnp.float32)


def _leaky(x):
  return nn.leaky_relu(x, 0.01)  # torch.nn.LeakyReLU default slope


def _analysis(N, M, dt=None, pdt=jnp.float32):
  c = lambda f: _conv(f, dtype=dt, param_dtype=pdt)  # noqa: E731
  return [c(N), GDN(), c(N), GDN(), c(N), GDN(), c(M)]


def _synthesis(N, dt=None, pdt=jnp.float32):
  d = lambda f: _deconv(f, dtype=dt, param_dtype=pdt)  # noqa: E731
  return [d(N), GDN(inverse=True), d(N), GDN(inverse=True), d(N), GDN(inverse=True), d(3)]


class FactorizedPrior(nn.Module):
  """Ballé et al. 2017 ("bmshj2018-factorized" in CompressAI)."""

  N: int = 128
  M: int = 192
  dtype: Any = None               # g_a / g_s compute dtype; None: float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.g_a = _analysis(self.N, self.M, self.dtype, self.param_dtype)
    self.g_s = _synthesis(self.N, self.dtype, self.param_dtype)
    self.entropy_bottleneck = EntropyBottleneck(self.M)

  def __call__(self, x, train: bool = False):
    y = _transform(self.g_a, x)
    y_hat, y_lik = self.entropy_bottleneck(y, train)
    return {"x_hat": _transform(self.g_s, y_hat), "likelihoods": {"y": y_lik}}

  def aux_loss(self):
    return self.entropy_bottleneck.aux_loss()

  # Coding paths (see `compress`): integers in, integers out where a CDF is chosen.
  def _encode_net(self, x):
    return {"y": self.entropy_bottleneck.quantize(_transform(self.g_a, x), "symbols")}

  def _decode_net(self, y_sym, side):
    del side
    y_hat = y_sym.astype(jnp.float32) + self.entropy_bottleneck.medians()
    return _transform(self.g_s, y_hat)


class ScaleHyperprior(nn.Module):
  """Ballé et al. 2018 ("bmshj2018-hyperprior"): σ = h_s(z), z = h_a(|y|)."""

  N: int = 128
  M: int = 192
  dtype: Any = None               # g_a / g_s compute dtype; None: float32
  param_dtype: Any = jnp.float32

  def setup(self):
    N, M, pdt = self.N, self.M, self.param_dtype
    self.g_a = _analysis(N, M, self.dtype, pdt)
    self.g_s = _synthesis(N, self.dtype, pdt)
    # the hyperprior in float32 (the coder's fixed-point h_s is its integer twin)
    self.h_a = [_conv(N, 3, 1, param_dtype=pdt), nn.relu, _conv(N, param_dtype=pdt), nn.relu,
                _conv(N, param_dtype=pdt)]
    self.h_s = [_deconv(N, param_dtype=pdt), nn.relu, _deconv(N, param_dtype=pdt), nn.relu,
                _conv(M, 3, 1, param_dtype=pdt), nn.relu]
    self.entropy_bottleneck = EntropyBottleneck(N)
    self.gaussian_conditional = GaussianConditional()

  def hyper_analysis(self, y):
    return _seq(self.h_a, jnp.abs(y))

  def hyper_synthesis(self, z_hat):
    """(scales, means or None)."""
    return _seq(self.h_s, z_hat), None

  def __call__(self, x, train: bool = False):
    y = _transform(self.g_a, x)
    z_hat, z_lik = self.entropy_bottleneck(self.hyper_analysis(y), train)
    scales, means = self.hyper_synthesis(z_hat)
    y_hat, y_lik = self.gaussian_conditional(y, scales, means, train=train)
    return {"x_hat": _transform(self.g_s, y_hat), "likelihoods": {"y": y_lik, "z": z_lik}}

  def aux_loss(self):
    return self.entropy_bottleneck.aux_loss()

  def _encode_net(self, x):
    y = _transform(self.g_a, x)
    z_sym = self.entropy_bottleneck.quantize(self.hyper_analysis(y), "symbols")
    return {"y_float": y, "z": z_sym}

  def _hyper_decode(self, z_sym):
    """z symbols -> (int32 y indexes, means or None) in float32: a reference only;
    the coder uses the fixed-point `hyper_fixed` (see the module docstring)."""
    z_hat = z_sym.astype(jnp.float32) + self.entropy_bottleneck.medians()
    scales, means = self.hyper_synthesis(z_hat)
    return self.gaussian_conditional.build_indexes(scales), means

  def _quantize_y(self, y, means):
    return self.gaussian_conditional.quantize(y, "symbols", means)

  def _synthesis(self, y_hat):
    return _transform(self.g_s, y_hat)

  def _decode_net(self, y_sym, means):
    y_hat = y_sym.astype(jnp.float32)
    if means is not None:
      y_hat = y_hat + means  # = round(y - μ) + μ, as in the eval-mode forward
    return _transform(self.g_s, y_hat)


class MeanScaleHyperprior(ScaleHyperprior):
  """Minnen et al. 2018 without context ("mbt2018-mean"): h_s predicts σ and μ."""

  def setup(self):
    N, M, pdt = self.N, self.M, self.param_dtype
    self.g_a = _analysis(N, M, self.dtype, pdt)
    self.g_s = _synthesis(N, self.dtype, pdt)
    self.h_a = [_conv(N, 3, 1, param_dtype=pdt), _leaky, _conv(N, param_dtype=pdt), _leaky,
                _conv(N, param_dtype=pdt)]
    self.h_s = [_deconv(M, param_dtype=pdt), _leaky, _deconv(M * 3 // 2, param_dtype=pdt),
                _leaky, _conv(M * 2, 3, 1, param_dtype=pdt)]
    self.entropy_bottleneck = EntropyBottleneck(N)
    self.gaussian_conditional = GaussianConditional()

  def hyper_analysis(self, y):
    return _seq(self.h_a, y)  # signed y: the means need the sign

  def hyper_synthesis(self, z_hat):
    scales, means = jnp.split(_seq(self.h_s, z_hat), 2, axis=-1)  # CompressAI order
    return scales, means


class JointAutoregressiveHierarchicalPriors(MeanScaleHyperprior):
  """Minnen et al. 2018 ("mbt2018"): (σ, μ) = entropy_parameters([h_s(z), ctx(y_hat)]),
  ctx a masked 5x5 conv (type A) over the quantized latent (CompressAI layout)."""

  def setup(self):
    super().setup()
    M, pdt = self.M, self.param_dtype
    self.context_prediction = MaskedConv(2 * M, 5)  # float32, as the entropy parameters
    self.entropy_parameters = [_conv(M * 10 // 3, 1, 1, param_dtype=pdt), _leaky,
                               _conv(M * 8 // 3, 1, 1, param_dtype=pdt), _leaky,
                               _conv(M * 6 // 3, 1, 1, param_dtype=pdt)]

  def _gaussian_params(self, params, ctx):
    scales, means = jnp.split(_seq(self.entropy_parameters,
                                  jnp.concatenate([params, ctx], axis=-1)), 2, axis=-1)
    return scales, means

  def __call__(self, x, train: bool = False):
    y = _transform(self.g_a, x)
    z_hat, z_lik = self.entropy_bottleneck(self.hyper_analysis(y), train)
    params = _seq(self.h_s, z_hat)
    gc = self.gaussian_conditional
    # As CompressAI: the context (and g_s) see round(y) in eval mode, y + noise when
    # training; the serial coder instead uses round(y - μ) + μ (see `reconstruct`).
    y_hat = (gc.quantize(y, "noise", key=self.make_rng("noise")) if train
             else gc.quantize(y, "dequantize"))
    scales, means = self._gaussian_params(params, self.context_prediction(y_hat))
    _, y_lik = gc(y, scales, means, train=train)
    return {"x_hat": _transform(self.g_s, y_hat), "likelihoods": {"y": y_lik, "z": z_lik}}

  def _hyper_params(self, z_sym):
    z_hat = z_sym.astype(jnp.float32) + self.entropy_bottleneck.medians()
    return _seq(self.h_s, z_hat)

  def _ar_step(self, window, params):
    """One position: window (1, 5, 5, M) of y_hat around it (zeros outside the image
    and not yet decoded), params (1, 1, 1, 2M) -> (int32 indexes (M,), means (M,)).
    Float reference of the coder's fixed-point `_fx_ar_step`."""
    ctx = self.context_prediction(window, valid=True)
    scales, means = self._gaussian_params(params, ctx)
    return self.gaussian_conditional.build_indexes(scales[0, 0, 0]), means[0, 0, 0]

  def _ar_parallel(self, y_hat, params):
    """(indexes, means) of every position from a complete y_hat (a check of the serial
    path: equal up to float rounding)."""
    scales, means = self._gaussian_params(params, self.context_prediction(y_hat))
    return self.gaussian_conditional.build_indexes(scales), means


# --------------------------------------------------------------------- registry


def _nm(quality, split, low=(128, 192)):
  if not 1 <= quality <= 8:
    raise ValueError(f"quality must be in 1..8, got {quality}")
  return low if quality <= split else (192, 320)


def _dtype(d):
  return jnp.dtype(d) if isinstance(d, str) else d  # configs name dtypes as strings


def _factory(cls, split, low=(128, 192)):
  def make(quality: int = 3, N: int | None = None, M: int | None = None, dtype: Any = None,
           param_dtype: Any = jnp.float32):
    n, m = _nm(quality, split, low)
    return cls(N=N or n, M=M or m, dtype=_dtype(dtype), param_dtype=_dtype(param_dtype))
  return make


register_model("bmshj2018-factorized")(_factory(FactorizedPrior, 5))
register_model("bmshj2018-hyperprior")(_factory(ScaleHyperprior, 5))
register_model("mbt2018-mean")(_factory(MeanScaleHyperprior, 4))
register_model("mbt2018")(_factory(JointAutoregressiveHierarchicalPriors, 4, (192, 192)))

MODEL_NAMES = ("bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean", "mbt2018")


def is_hyperprior(model) -> bool:
  """A model with a hyperprior (z, then y given z): every model but the factorized."""
  return isinstance(model, ScaleHyperprior)


def is_autoregressive(model) -> bool:
  """mbt2018: y is coded serially, each position's CDF from its decoded neighbours."""
  return isinstance(model, JointAutoregressiveHierarchicalPriors)
