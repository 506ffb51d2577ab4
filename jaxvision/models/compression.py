"""Learned image codecs: Ballé et al. 2017/2018 and Minnen et al. 2018 (CompressAI).

  * `bmshj2018-factorized`: GDN autoencoder, factorized prior on y.
  * `bmshj2018-hyperprior`: scale hyperprior, y ~ N(0, σ²) with σ = h_s(z).
  * `mbt2018-mean`: mean-scale hyperprior, y ~ N(μ, σ²) with (σ, μ) = h_s(z).

Modules are NHWC with inputs in [0, 1]. Submodules are lists named like the indices
of CompressAI's `nn.Sequential`s (g_a_0, g_a_1 = GDN, ...; activations keep their
slot), so a converter maps `g_a.2.weight` to `g_a_2/kernel` one to one. Transposed
convs use padding (2, 3): the same output grid as PyTorch's padding=2,
output_padding=1 (flax does not flip the kernel; a converter must).

Host-side coding (`update`, `compress`, `decompress`, `estimate_bits`) are pure
functions of (model, variables, tables). Determinism: the decoder's inputs to every
CDF choice are integers (z symbols), and the encoder derives the y indexes from those
same integers with the same jitted function (`_hyper_decode`) as the decoder, never
from its own float path.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision import codec
from jaxvision.models import register
from jaxvision.models.compression_layers import (GDN, CdfTables, EntropyBottleneck,
                                                 GaussianConditional)

# λ of the CompressAI zoo (MSE), quality 1..8.
LAMBDAS = {q: l for q, l in enumerate(
    [0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800], start=1)}

# Total stride of g_a ∘ h_a: images are padded to a multiple of this.
STRIDE = 64


def _conv(features, k=5, stride=2):
  return nn.Conv(features, (k, k), (stride, stride), padding=((k // 2,) * 2,) * 2)


def _deconv(features, k=5, stride=2):
  # Output exactly stride x input (PyTorch padding=k//2, output_padding=stride-1).
  lo, hi = k // 2, k // 2 + stride - 1
  return nn.ConvTranspose(features, (k, k), (stride, stride), padding=((lo, hi),) * 2)


def _seq(layers, x):
  for layer in layers:
    x = layer(x)
  return x


def _leaky(x):
  return nn.leaky_relu(x, 0.01)  # torch.nn.LeakyReLU default slope


def _analysis(N, M):
  return [_conv(N), GDN(), _conv(N), GDN(), _conv(N), GDN(), _conv(M)]


def _synthesis(N):
  return [_deconv(N), GDN(inverse=True), _deconv(N), GDN(inverse=True), _deconv(N),
          GDN(inverse=True), _deconv(3)]


class FactorizedPrior(nn.Module):
  """Ballé et al. 2017 ("bmshj2018-factorized" in CompressAI)."""

  N: int = 128
  M: int = 192

  def setup(self):
    self.g_a = _analysis(self.N, self.M)
    self.g_s = _synthesis(self.N)
    self.entropy_bottleneck = EntropyBottleneck(self.M)

  def __call__(self, x, train: bool = False):
    y = _seq(self.g_a, x)
    y_hat, y_lik = self.entropy_bottleneck(y, train)
    return {"x_hat": _seq(self.g_s, y_hat), "likelihoods": {"y": y_lik}}

  def aux_loss(self):
    return self.entropy_bottleneck.aux_loss()

  # Coding paths (see `compress`): integers in, integers out where a CDF is chosen.
  def _encode_net(self, x):
    return {"y": self.entropy_bottleneck.quantize(_seq(self.g_a, x), "symbols")}

  def _decode_net(self, y_sym, side):
    del side
    y_hat = y_sym.astype(jnp.float32) + self.entropy_bottleneck.medians()
    return _seq(self.g_s, y_hat)


class ScaleHyperprior(nn.Module):
  """Ballé et al. 2018 ("bmshj2018-hyperprior"): σ = h_s(z), z = h_a(|y|)."""

  N: int = 128
  M: int = 192

  def setup(self):
    N, M = self.N, self.M
    self.g_a = _analysis(N, M)
    self.g_s = _synthesis(N)
    self.h_a = [_conv(N, 3, 1), nn.relu, _conv(N), nn.relu, _conv(N)]
    self.h_s = [_deconv(N), nn.relu, _deconv(N), nn.relu, _conv(M, 3, 1), nn.relu]
    self.entropy_bottleneck = EntropyBottleneck(N)
    self.gaussian_conditional = GaussianConditional()

  def hyper_analysis(self, y):
    return _seq(self.h_a, jnp.abs(y))

  def hyper_synthesis(self, z_hat):
    """(scales, means or None)."""
    return _seq(self.h_s, z_hat), None

  def __call__(self, x, train: bool = False):
    y = _seq(self.g_a, x)
    z_hat, z_lik = self.entropy_bottleneck(self.hyper_analysis(y), train)
    scales, means = self.hyper_synthesis(z_hat)
    y_hat, y_lik = self.gaussian_conditional(y, scales, means, train=train)
    return {"x_hat": _seq(self.g_s, y_hat), "likelihoods": {"y": y_lik, "z": z_lik}}

  def aux_loss(self):
    return self.entropy_bottleneck.aux_loss()

  def _encode_net(self, x):
    y = _seq(self.g_a, x)
    z_sym = self.entropy_bottleneck.quantize(self.hyper_analysis(y), "symbols")
    return {"y_float": y, "z": z_sym}

  def _hyper_decode(self, z_sym):
    """z symbols -> (int32 y indexes, means or None). Shared by encoder and decoder."""
    z_hat = z_sym.astype(jnp.float32) + self.entropy_bottleneck.medians()
    scales, means = self.hyper_synthesis(z_hat)
    return self.gaussian_conditional.build_indexes(scales), means

  def _quantize_y(self, y, means):
    return self.gaussian_conditional.quantize(y, "symbols", means)

  def _decode_net(self, y_sym, means):
    y_hat = y_sym.astype(jnp.float32)
    if means is not None:
      y_hat = y_hat + means  # = round(y - μ) + μ, as in the eval-mode forward
    return _seq(self.g_s, y_hat)


class MeanScaleHyperprior(ScaleHyperprior):
  """Minnen et al. 2018 without context ("mbt2018-mean"): h_s predicts σ and μ."""

  def setup(self):
    N, M = self.N, self.M
    self.g_a = _analysis(N, M)
    self.g_s = _synthesis(N)
    self.h_a = [_conv(N, 3, 1), _leaky, _conv(N), _leaky, _conv(N)]
    self.h_s = [_deconv(M), _leaky, _deconv(M * 3 // 2), _leaky, _conv(M * 2, 3, 1)]
    self.entropy_bottleneck = EntropyBottleneck(N)
    self.gaussian_conditional = GaussianConditional()

  def hyper_analysis(self, y):
    return _seq(self.h_a, y)  # signed y: the means need the sign

  def hyper_synthesis(self, z_hat):
    scales, means = jnp.split(_seq(self.h_s, z_hat), 2, axis=-1)  # CompressAI order
    return scales, means


# --------------------------------------------------------------------- registry


def _nm(quality, split):
  if not 1 <= quality <= 8:
    raise ValueError(f"quality must be in 1..8, got {quality}")
  return (128, 192) if quality <= split else (192, 320)


def _factory(cls, split):
  def make(quality: int = 3, N: int | None = None, M: int | None = None):
    n, m = _nm(quality, split)
    return cls(N=N or n, M=M or m)
  return make


register("bmshj2018-factorized")(_factory(FactorizedPrior, 5))
register("bmshj2018-hyperprior")(_factory(ScaleHyperprior, 5))
register("mbt2018-mean")(_factory(MeanScaleHyperprior, 4))


# ----------------------------------------------------------------- host coding


def _is_hyper(model):
  return isinstance(model, ScaleHyperprior)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _apply(model, variables, method, *args):
  # One compile per (model config, method, shapes); the model is hashable.
  return model.apply(variables, *args, method=getattr(type(model), method))


def update(model, variables, precision: int = 16) -> dict[str, CdfTables]:
  """Integer CDF tables per latent ("y", and "z" for hyperpriors). Deterministic, so
  calling it twice gives identical tables."""
  eb = EntropyBottleneck(model.M if not _is_hyper(model) else model.N)
  eb_tables = eb.update(variables["params"]["entropy_bottleneck"], precision)
  if not _is_hyper(model):
    return {"y": eb_tables}
  return {"z": eb_tables, "y": GaussianConditional().update(precision)}


def pad(x, stride: int = STRIDE):
  """Edge-pads (1, H, W, C) up to multiples of `stride` (cropped back on decode)."""
  _, h, w, _ = x.shape
  ph, pw = -h % stride, -w % stride
  return np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")


def latent_shapes_for(model, height: int, width: int):
  """Expected latent shapes (z first for hyperpriors) of an H x W image."""
  hp, wp = -(-height // STRIDE) * STRIDE, -(-width // STRIDE) * STRIDE
  y = (1, hp // 16, wp // 16, model.M)
  return [(1, hp // 64, wp // 64, model.N), y] if _is_hyper(model) else [y]


def _channel_indexes(shape):
  return np.broadcast_to(np.arange(shape[-1], dtype=np.int32), shape)


def _encode(sym, idx, t: CdfTables):
  return codec.encode(sym, idx, t.cdfs, t.cdf_lengths, t.offsets)


def _decode(s, idx, t: CdfTables):
  return codec.decode(s, idx, t.cdfs, t.cdf_lengths, t.offsets)


def compress(model, variables, tables, x):
  """(1, H, W, 3) float in [0, 1] -> (strings, latent_shapes).

  Hyperpriors: strings = [z, y]; the y indexes come from the decoded z symbols via
  `_hyper_decode`, the very function `decompress` runs.
  """
  x = np.asarray(x, np.float32)
  if x.ndim != 4 or x.shape[0] != 1 or x.shape[-1] != 3:
    raise ValueError(f"expected a (1, H, W, 3) image, got {x.shape}")
  out = _apply(model, variables, "_encode_net", pad(x))
  if not _is_hyper(model):
    y = np.asarray(out["y"])
    return [_encode(y, _channel_indexes(y.shape), tables["y"])], [y.shape]
  z = np.asarray(out["z"])
  z_str = _encode(z, _channel_indexes(z.shape), tables["z"])
  idx, means = _apply(model, variables, "_hyper_decode", z)
  y = np.asarray(_apply(model, variables, "_quantize_y", out["y_float"], means))
  y_str = _encode(y, np.asarray(idx), tables["y"])
  return [z_str, y_str], [z.shape, y.shape]


def decompress(model, variables, tables, strings, latent_shapes, height, width):
  """Inverse of `compress`: (1, height, width, 3) float32 in [0, 1].

  Raises ValueError for shapes that do not fit the image size (before allocating
  anything) and for strings that do not decode cleanly.
  """
  want = latent_shapes_for(model, height, width)
  if [tuple(s) for s in latent_shapes] != want or len(strings) != len(want):
    raise ValueError(f"latent shapes {latent_shapes} / {len(strings)} strings do not "
                     f"match a {height}x{width} image for this model ({want})")
  if not _is_hyper(model):
    (y_shape,) = want
    y = _decode(strings[0], _channel_indexes(y_shape), tables["y"])
    side = None
  else:
    z_shape, y_shape = want
    z = _decode(strings[0], _channel_indexes(z_shape), tables["z"])
    idx, side = _apply(model, variables, "_hyper_decode", z)
    y = _decode(strings[1], np.asarray(idx), tables["y"])
  x_hat = _apply(model, variables, "_decode_net", y, side)
  return np.clip(np.asarray(x_hat)[:, :height, :width], 0.0, 1.0)


def _eval(model, variables, x):
  """Eval-mode forward of the padded image (one compile serves both users below)."""
  return _apply(model, variables, "__call__", pad(np.asarray(x, np.float32)))


def estimate_bits(model, variables, x) -> dict[str, float]:
  """The model's estimated rate Σ -log2(likelihood) (eval mode, rounded latents) of
  the padded image, per latent and "total" (float64 sums on the host), to compare
  with the coded size."""
  lik = _eval(model, variables, x)["likelihoods"]
  bits = {k: float(-np.log2(np.asarray(v, np.float64)).sum()) for k, v in lik.items()}
  bits["total"] = sum(bits.values())
  return bits


def reconstruct(model, variables, x):
  """The eval-mode forward's x_hat, cropped and clipped: what
  decompress(compress(x)) must reproduce."""
  _, h, w, _ = np.shape(x)
  return np.clip(np.asarray(_eval(model, variables, x)["x_hat"])[:, :h, :w], 0.0, 1.0)
