"""Learned image codecs: Ballé et al. 2017/2018 and Minnen et al. 2018 (CompressAI).

  * `bmshj2018-factorized`: GDN autoencoder, factorized prior on y.
  * `bmshj2018-hyperprior`: scale hyperprior, y ~ N(0, σ²) with σ = h_s(z).
  * `mbt2018-mean`: mean-scale hyperprior, y ~ N(μ, σ²) with (σ, μ) = h_s(z).
  * `mbt2018`: mean-scale hyperprior + masked 5x5 context model (Minnen et al. 2018,
    joint autoregressive and hierarchical priors); coded serially, position by position.

Modules are NHWC with inputs in [0, 1]. Submodules are lists named like the indices
of CompressAI's `nn.Sequential`s (g_a_0, g_a_1 = GDN, ...; activations keep their
slot), so a converter maps `g_a.2.weight` to `g_a_2/kernel` one to one. Transposed
convs use padding (2, 3): the same output grid as PyTorch's padding=2,
output_padding=1 (flax does not flip the kernel; a converter must).

Host-side coding (`update`, `compress`, `decompress`, `estimate_bits`) are pure
functions of (model, variables, tables). Determinism: the decoder's inputs to every
CDF choice are integers (z symbols), and the encoder derives the y indexes from those
same integers with the same jitted function (`_hyper_decode`) as the decoder, never
from its own float path. `mbt2018` goes further: the decoder's y_hat[i, j] = s + μ
(s the decoded int, μ from one jitted step over the 5x5 window of y_hat already
decoded), and the encoder fills its y_hat buffer with exactly the same float32
operations on the same values, so both sides see identical windows at every step.

CDF tables: `update` builds them from the parameters; `checkpoint_tables` saves them
beside a checkpoint step (workdir/cdf_tables/<step>.npz) and reuses them, and a
.jvc file stores their CRC32 (`tables_crc`), so a file decodes with exactly the
tables that encoded it or fails with a clear message.
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import time
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision import codec
from jaxvision.models import register
from jaxvision.models.compression_layers import (GDN, CdfTables, EntropyBottleneck,
                                                 GaussianConditional, MaskedConv)

# λ of the CompressAI zoo (MSE), quality 1..8.
LAMBDAS = {q: l for q, l in enumerate(
    [0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800], start=1)}
# λ of the CompressAI zoo for the MS-SSIM models (loss λ·(1 - MS-SSIM) + bpp).
MS_SSIM_LAMBDAS = {q: l for q, l in enumerate(
    [2.40, 4.58, 8.73, 16.64, 31.73, 60.50, 115.37, 220.00], start=1)}

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

  def _synthesis(self, y_hat):
    return _seq(self.g_s, y_hat)

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


class JointAutoregressiveHierarchicalPriors(MeanScaleHyperprior):
  """Minnen et al. 2018 ("mbt2018"): (σ, μ) = entropy_parameters([h_s(z), ctx(y_hat)]),
  ctx a masked 5x5 conv (type A) over the quantized latent (CompressAI layout)."""

  def setup(self):
    super().setup()
    M = self.M
    self.context_prediction = MaskedConv(2 * M, 5)
    self.entropy_parameters = [_conv(M * 10 // 3, 1, 1), _leaky, _conv(M * 8 // 3, 1, 1),
                               _leaky, _conv(M * 6 // 3, 1, 1)]

  def _gaussian_params(self, params, ctx):
    scales, means = jnp.split(_seq(self.entropy_parameters,
                                  jnp.concatenate([params, ctx], axis=-1)), 2, axis=-1)
    return scales, means

  def __call__(self, x, train: bool = False):
    y = _seq(self.g_a, x)
    z_hat, z_lik = self.entropy_bottleneck(self.hyper_analysis(y), train)
    params = _seq(self.h_s, z_hat)
    gc = self.gaussian_conditional
    # As CompressAI: the context (and g_s) see round(y) in eval mode, y + noise when
    # training; the serial coder instead uses round(y - μ) + μ (see `reconstruct`).
    y_hat = (gc.quantize(y, "noise", key=self.make_rng("noise")) if train
             else gc.quantize(y, "dequantize"))
    scales, means = self._gaussian_params(params, self.context_prediction(y_hat))
    _, y_lik = gc(y, scales, means, train=train)
    return {"x_hat": _seq(self.g_s, y_hat), "likelihoods": {"y": y_lik, "z": z_lik}}

  def _hyper_params(self, z_sym):
    z_hat = z_sym.astype(jnp.float32) + self.entropy_bottleneck.medians()
    return _seq(self.h_s, z_hat)

  def _ar_step(self, window, params):
    """One position: window (1, 5, 5, M) of y_hat around it (zeros outside the image
    and not yet decoded), params (1, 1, 1, 2M) -> (int32 indexes (M,), means (M,))."""
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


def _factory(cls, split, low=(128, 192)):
  def make(quality: int = 3, N: int | None = None, M: int | None = None):
    n, m = _nm(quality, split, low)
    return cls(N=N or n, M=M or m)
  return make


register("bmshj2018-factorized")(_factory(FactorizedPrior, 5))
register("bmshj2018-hyperprior")(_factory(ScaleHyperprior, 5))
register("mbt2018-mean")(_factory(MeanScaleHyperprior, 4))
register("mbt2018")(_factory(JointAutoregressiveHierarchicalPriors, 4, (192, 192)))

MODEL_NAMES = ("bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean", "mbt2018")


# ----------------------------------------------------------------- host coding


def _is_hyper(model):
  return isinstance(model, ScaleHyperprior)


def _is_ar(model):
  return isinstance(model, JointAutoregressiveHierarchicalPriors)


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


def tables_crc(tables: dict[str, CdfTables]) -> int:
  """CRC32 of the tables' int32 contents (little-endian, latents in sorted order):
  stored in each .jvc file so a decoder can tell that it holds the same tables."""
  crc = 0
  for k in sorted(tables):
    crc = zlib.crc32(k.encode(), crc)
    for a in tables[k]:
      a = np.ascontiguousarray(a, "<i4")
      crc = zlib.crc32(np.asarray(a.shape, "<i8").tobytes(), crc)
      crc = zlib.crc32(a.tobytes(), crc)
  return crc


def params_crc(variables) -> int:
  """CRC32 of the float32 parameters (sorted paths): ties saved tables to their params."""
  crc = 0
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(variables["params"])[0],
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    crc = zlib.crc32(jax.tree_util.keystr(path).encode(), crc)
    crc = zlib.crc32(np.ascontiguousarray(np.asarray(leaf), "<f4").tobytes(), crc)
  return crc


TABLES_DIR = "cdf_tables"


def save_tables(path: str, tables: dict[str, CdfTables], params_fingerprint: int) -> None:
  """Writes the tables as an .npz of int32 arrays (keys "<latent>/<field>"), atomically."""
  from jaxvision.data import atomic_write
  arrays = {f"{k}/{f}": np.asarray(v, np.int32)
            for k, t in tables.items() for f, v in zip(CdfTables._fields, t)}
  arrays["params_crc"] = np.asarray(params_fingerprint, np.int64)
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_tables(path: str) -> tuple[dict[str, CdfTables], int]:
  """(tables, params CRC) saved by `save_tables`; ValueError for a damaged file."""
  try:
    with np.load(path, allow_pickle=False) as z:
      latents = sorted({k.split("/")[0] for k in z.files if "/" in k})
      tables = {k: CdfTables(*(np.asarray(z[f"{k}/{f}"], np.int32) for f in CdfTables._fields))
                for k in latents}
      fp = int(z["params_crc"])
  except (OSError, KeyError, ValueError, zlib.error, EOFError) as e:
    raise ValueError(f"{path}: unreadable CDF tables ({e})") from None
  for k, t in tables.items():  # the coder validates the rows; shapes here
    if t.cdfs.ndim != 2 or t.cdf_lengths.shape != (len(t.cdfs),) or t.offsets.shape != (
        len(t.cdfs),):
      raise ValueError(f"{path}: CDF tables of {k!r} have inconsistent shapes")
  return tables, fp


def checkpoint_tables(workdir: str, step: int, model, variables) -> dict[str, CdfTables]:
  """The CDF tables of checkpoint `step` of `workdir`, built once and saved as
  workdir/cdf_tables/<step>.npz; later calls (compress, decompress, other machines
  with a copy of the workdir) read that file, so every file coded with this step
  uses the very same integers. A saved file whose parameter CRC does not match the
  checkpoint (a workdir trained afresh) is rebuilt."""
  path = os.path.join(workdir, TABLES_DIR, f"{int(step)}.npz")
  want = params_crc(variables)
  if os.path.exists(path):
    tables, fp = load_tables(path)
    expected = {"y", "z"} if _is_hyper(model) else {"y"}
    if fp == want and set(tables) == expected:
      return tables
  tables = update(model, variables)
  try:
    save_tables(path, tables, want)
  except OSError:  # a read-only workdir: `update` is deterministic, so rebuilding the
    pass           # tables next time gives the same integers
  return tables


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


class Timings:
  """Optional accumulator of wall time split into network (jitted JAX, host syncs
  included) and entropy coding (constriction): `compress(..., timings=t)`."""

  def __init__(self):
    self.network = 0.0
    self.coding = 0.0

  @contextlib.contextmanager
  def _add(self, field):
    t = time.perf_counter()
    try:
      yield
    finally:
      setattr(self, field, getattr(self, field) + time.perf_counter() - t)


def _net(timings):
  return timings._add("network") if timings is not None else contextlib.nullcontext()


def _code(timings):
  return timings._add("coding") if timings is not None else contextlib.nullcontext()


def compress(model, variables, tables, x, timings: Timings | None = None):
  """(1, H, W, 3) float in [0, 1] -> (strings, latent_shapes).

  Hyperpriors: strings = [z, y]; the y indexes come from the decoded z symbols via
  `_hyper_decode`, the very function `decompress` runs.
  """
  x = np.asarray(x, np.float32)
  if x.ndim != 4 or x.shape[0] != 1 or x.shape[-1] != 3:
    raise ValueError(f"expected a (1, H, W, 3) image, got {x.shape}")
  with _net(timings):
    out = jax.tree.map(np.asarray, _apply(model, variables, "_encode_net", pad(x)))
  if not _is_hyper(model):
    y = out["y"]
    with _code(timings):
      return [_encode(y, _channel_indexes(y.shape), tables["y"])], [y.shape]
  z = out["z"]
  with _code(timings):
    z_str = _encode(z, _channel_indexes(z.shape), tables["z"])
  if _is_ar(model):
    with _net(timings):
      params = np.asarray(_apply(model, variables, "_hyper_params", z))
    y_str, _ = _ar_encode(model, variables, tables["y"], out["y_float"], params, timings)
    return [z_str, y_str], [z.shape, tuple(out["y_float"].shape)]
  with _net(timings):
    idx, means = _apply(model, variables, "_hyper_decode", z)
    y = np.asarray(_apply(model, variables, "_quantize_y", out["y_float"], means))
    idx = np.asarray(idx)
  with _code(timings):
    y_str = _encode(y, idx, tables["y"])
  return [z_str, y_str], [z.shape, y.shape]


def decompress(model, variables, tables, strings, latent_shapes, height, width,
               timings: Timings | None = None):
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
    with _code(timings):
      y = _decode(strings[0], _channel_indexes(y_shape), tables["y"])
    side = None
  else:
    z_shape, y_shape = want
    with _code(timings):
      z = _decode(strings[0], _channel_indexes(z_shape), tables["z"])
    if _is_ar(model):
      with _net(timings):
        params = np.asarray(_apply(model, variables, "_hyper_params", z))
      y_hat = _ar_decode(model, variables, tables["y"], strings[1], params, timings)
      with _net(timings):
        x_hat = np.asarray(_apply(model, variables, "_synthesis", y_hat))
      return np.clip(x_hat[:, :height, :width], 0.0, 1.0)
    with _net(timings):
      idx, side = _apply(model, variables, "_hyper_decode", z)
      idx = np.asarray(idx)
    with _code(timings):
      y = _decode(strings[1], idx, tables["y"])
  with _net(timings):
    x_hat = np.asarray(_apply(model, variables, "_decode_net", y, side))
  return np.clip(x_hat[:, :height, :width], 0.0, 1.0)


_K = 5  # context kernel; the latent is zero-padded by _K // 2 as in CompressAI


def _ar_quantize(model, variables, y, params, timings=None):
  """Serial quantizer of mbt2018 (CompressAI `_compress_ar`): ([(symbols, indexes)
  per position, row-major], y_hat)."""
  _, h, w, m = y.shape
  p = _K // 2
  buf = np.zeros((1, h + 2 * p, w + 2 * p, m), np.float32)
  chunks = []
  for i in range(h):
    for j in range(w):
      with _net(timings):
        idx, mu = _apply(model, variables, "_ar_step", buf[:, i:i + _K, j:j + _K],
                         params[:, i:i + 1, j:j + 1])
        idx, mu = np.asarray(idx), np.asarray(mu, np.float32)
      s = np.round(y[0, i, j] - mu).astype(np.int32)
      buf[0, i + p, j + p] = s.astype(np.float32) + mu  # as the decoder will
      chunks.append((s, idx))
  return chunks, buf[:, p:p + h, p:p + w]


def _ar_encode(model, variables, t: CdfTables, y, params, timings=None):
  """(y string, y_hat): the positions' chunks in one ANS stream, in decoding order."""
  chunks, y_hat = _ar_quantize(model, variables, y, params, timings)
  with _code(timings):
    return codec.encode_sequence(chunks, t.cdfs, t.cdf_lengths, t.offsets), y_hat


def _ar_decode(model, variables, t: CdfTables, data, params, timings=None):
  """Serial decoder of mbt2018: y_hat (1, h, w, M) float32."""
  _, h, w, _ = params.shape
  m = model.M
  p = _K // 2
  buf = np.zeros((1, h + 2 * p, w + 2 * p, m), np.float32)
  dec = codec.SequenceDecoder(data, t.cdfs, t.cdf_lengths, t.offsets)
  for i in range(h):
    for j in range(w):
      with _net(timings):
        idx, mu = _apply(model, variables, "_ar_step", buf[:, i:i + _K, j:j + _K],
                         params[:, i:i + 1, j:j + 1])
        idx, mu = np.asarray(idx), np.asarray(mu, np.float32)
      with _code(timings):
        s = dec.next(idx)
      buf[0, i + p, j + p] = s.astype(np.float32) + mu
  dec.finish()
  return buf[:, p:p + h, p:p + w]


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


def coded_latent(model, variables, x):
  """mbt2018: the serial coder's y_hat (round(y - μ) + μ, μ from the context of the
  already quantized neighbours), computed by the encoder alone."""
  out = _apply(model, variables, "_encode_net", pad(np.asarray(x, np.float32)))
  params = np.asarray(_apply(model, variables, "_hyper_params", out["z"]))
  return _ar_quantize(model, variables, np.asarray(out["y_float"]), params)[1]


def reconstruct(model, variables, x):
  """The eval-mode forward's x_hat, cropped and clipped: what
  decompress(compress(x)) must reproduce. For mbt2018, g_s of the serial encoder's
  y_hat (CompressAI's compress path; its parallel forward uses round(y) instead)."""
  _, h, w, _ = np.shape(x)
  if _is_ar(model):
    x_hat = _apply(model, variables, "_synthesis", coded_latent(model, variables, x))
    return np.clip(np.asarray(x_hat)[:, :h, :w], 0.0, 1.0)
  return np.clip(np.asarray(_eval(model, variables, x)["x_hat"])[:, :h, :w], 0.0, 1.0)


# ------------------------------------------------------- CompressAI state dicts

import re  # noqa: E402

# CompressAI buffers: derived state (CDF tables, masks, bounds), rebuilt here.
_IGNORED_SUFFIXES = (".pedestal", ".bound", ".target", "._offset", "._quantized_cdf",
                     "._cdf_length", ".scale_table", ".scale_bound", ".mask")
# The published zoo files use `_matrices.0` / `_matrix0`; CompressAI >= 1.2 `matrices.0`.
_EB_KEY = re.compile(r"^(?:module\.)?entropy_bottleneck\.(?:_?(matrices|biases|factors)\.|"
                     r"_(matrix|bias|factor))(\d+)$")
_EB_CANON = {"matrix": "matrices", "bias": "biases", "factor": "factors"}


def _canonical_key(k: str) -> str:
  m = _EB_KEY.match(k)
  if m:
    return f"entropy_bottleneck.{m.group(1) or _EB_CANON[m.group(2)]}.{m.group(3)}"
  return k[7:] if k.startswith("module.") else k


def _is_deconv(model, module: str) -> bool:
  name, _, i = module.rpartition("_")
  if name == "g_s":
    return True
  # h_s: transposed convs at 0 and 2 (the final 3x3 of the hyperpriors is a conv)
  return name == "h_s" and i in ("0", "2")


def _param_map(model, params_shapes):
  """[(our path tuple, CompressAI key, kind)] for every parameter of `model`."""
  out = []
  for mod, leaves in params_shapes.items():
    if mod == "entropy_bottleneck":
      for k in leaves:
        if k == "quantiles":
          out.append(((mod, k), "entropy_bottleneck.quantiles", "quantiles"))
        else:
          kind, i = k.rsplit("_", 1)
          out.append(((mod, k), f"entropy_bottleneck.{_EB_CANON[kind]}.{i}", "copy"))
      continue
    torch_mod = mod if mod == "context_prediction" else mod[::-1].replace("_", ".", 1)[::-1]
    for k in leaves:
      if k == "kernel":
        kind = "deconv" if _is_deconv(model, mod) else "conv"
        out.append(((mod, k), f"{torch_mod}.weight", kind))
      else:  # bias, GDN beta / gamma (same stored reparametrisation as CompressAI)
        out.append(((mod, k), f"{torch_mod}.{k}", "copy"))
  return out


def _to_ours(v, kind):
  if kind == "conv":  # (O, I, kh, kw) -> (kh, kw, I, O)
    return v.transpose(2, 3, 1, 0)
  if kind == "deconv":  # PyTorch's transposed conv flips the kernel; flax's does not
    return v.transpose(2, 3, 0, 1)[::-1, ::-1]
  if kind == "quantiles":
    return v.reshape(v.shape[0], 3)
  return v


def _to_torch(v, kind):
  if kind == "conv":
    return v.transpose(3, 2, 0, 1)
  if kind == "deconv":
    return v[::-1, ::-1].transpose(2, 3, 0, 1)
  if kind == "quantiles":
    return v.reshape(v.shape[0], 1, 3)
  return v


@functools.cache
def _param_shapes(model):
  init = functools.partial(model.init, train=False)
  shapes = jax.eval_shape(init, {"params": jax.random.key(0)},
                          jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  return jax.tree.map(lambda s: s.shape, shapes["params"])


def to_compressai(model, variables) -> dict[str, np.ndarray]:
  """Our params under CompressAI's names and layouts (float32 numpy; no buffers)."""
  p = variables["params"]
  return {key: np.ascontiguousarray(_to_torch(np.asarray(p[a][b], np.float32), kind))
          for (a, b), key, kind in _param_map(model, _param_shapes(model))}


def from_compressai(model, state_dict) -> dict:
  """Flax variables of `model` from a CompressAI state dict (any of its key spellings).

  Every parameter must be present with CompressAI's shape, and every key of the
  state dict must be used or be one of CompressAI's derived buffers (CDF tables,
  masks, bounds); a scale table that differs from ours is an error.
  """
  from jaxvision import weights as W
  sd = {_canonical_key(k): np.asarray(v) for k, v in state_dict.items()}
  st = sd.get("gaussian_conditional.scale_table")
  if st is not None and st.size and not np.allclose(
      st, GaussianConditional().scales(), rtol=1e-5, atol=0):
    raise W.WeightsError("gaussian_conditional.scale_table differs from jaxvision's "
                         "(64 log-spaced scales from 0.11 to 256)")
  shapes = _param_shapes(model)
  params, used = {}, set()
  for (a, b), key, kind in _param_map(model, shapes):
    want = _to_torch(np.empty(shapes[a][b], np.float32), kind).shape
    v = W.take(sd, key, want).astype(np.float32)
    params.setdefault(a, {})[b] = jnp.asarray(np.ascontiguousarray(_to_ours(v, kind)))
    used.add(key)
  W.check_all_used(sd, used, ignore=lambda k: k.endswith(_IGNORED_SUFFIXES))
  return {"params": params}


def _register_converters():
  from jaxvision import weights as W

  def make(name):
    def convert(state_dict, quality: int = 3, N: int | None = None, M: int | None = None):
      from jaxvision import models
      model = models.create(name, quality=quality, N=N, M=M)
      sd_n = np.shape(state_dict.get("g_a.0.weight", state_dict.get("module.g_a.0.weight")))
      sd_m = np.shape(state_dict.get("g_a.6.weight", state_dict.get("module.g_a.6.weight")))
      if len(sd_n) == 4 and len(sd_m) == 4 and (sd_n[0], sd_m[0]) != (model.N, model.M):
        raise W.WeightsError(
            f"the state dict has N={sd_n[0]}, M={sd_m[0]} but {name} quality {quality} "
            f"has N={model.N}, M={model.M}: pass --kwargs quality=Q,N={sd_n[0]},M={sd_m[0]}")
      return from_compressai(model, state_dict)
    return convert

  for name in MODEL_NAMES:
    W.register_converter(name, task="compression",
                         help=f"CompressAI {name} state dict (zoo checkpoints)")(make(name))


_register_converters()
