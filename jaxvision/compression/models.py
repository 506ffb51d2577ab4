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
functions of (model, variables, tables). Determinism across machines: every value
that selects a CDF is an integer computed exactly. At coding time h_s (hyperpriors)
and mbt2018's context step (masked 5x5 conv + entropy-parameter 1x1 convs) run as
fixed-point integer networks on the host (`fixed_point_nets`, the `fx_*` helpers of
compression_layers: integer weights, rounded integer activations, exact int64 or
provably exact float64 matmuls), and the scale index is an integer comparison with
fixed-point table midpoints. Means are fixed point too: mbt2018's y_hat = s + μ is
the integer s·2^12 + μ_fx, so the serial encoder and decoder see identical integer
windows on any machine. Training and `estimate_bits` stay float; the jitted float
methods `_hyper_decode` / `_ar_step` remain as references for tests.

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
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision import codec
from jaxvision.models import register
from jaxvision.models.compression_layers import (
    ACT_FRAC, GDN, LEAKY_NUM, WEIGHT_FRAC, CdfTables, EntropyBottleneck, FxConv,
    FxDense, GaussianConditional, MaskedConv, causal_mask, fx_conv, fx_conv_apply,
    fx_dense, fx_leaky, fx_matmul, fx_quantize, fx_relu, fx_rescale)

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
    """z symbols -> (int32 y indexes, means or None) in float32: a reference only;
    the coder uses the fixed-point `hyper_fixed` (see the module docstring)."""
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


# What the coder's CDF choice depends on besides the tables (hyperpriors): the
# fixed-point format of h_s / the context step. Part of the tables fingerprint, so a
# file coded with another index arithmetic (e.g. the float indexes of jaxvision before
# the integer networks) is refused instead of decoding garbage.
FIXED_POINT_FORMAT = (f"fx1:act={ACT_FRAC},weight={WEIGHT_FRAC},leaky={LEAKY_NUM}/65536,"
                      "round=half-up,midpoint=ceil")


def tables_crc(tables: dict[str, CdfTables]) -> int:
  """CRC32 of the tables' int32 contents (little-endian, latents in sorted order),
  preceded for hyperpriors (a "z" table) by FIXED_POINT_FORMAT in ASCII: stored in
  each .jvc file so a decoder can tell that it holds the same tables and index
  arithmetic."""
  crc = zlib.crc32(FIXED_POINT_FORMAT.encode()) if "z" in tables else 0
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


# ------------------------------------------------------ fixed-point coding nets


class FxNets(NamedTuple):
  """The coder's integer networks of a hyperprior model (see `fixed_point_nets`)."""

  medians: np.ndarray        # (N,) int64 z medians at ACT_FRAC
  h_s: list                  # FxConv layers and fx_relu / fx_leaky activations
  ctx: FxDense | None        # mbt2018: masked 5x5 conv over its 12 causal taps
  taps: np.ndarray | None    # (5, 5) bool mask of those taps (row-major order)
  ep: list                   # mbt2018: entropy-parameter 1x1 convs and activations


def _apply_fx(layers, x, force_int64=False):
  for layer in layers:
    if isinstance(layer, FxConv):
      x = fx_conv_apply(x, layer, force_int64)
    elif isinstance(layer, FxDense):
      x = fx_rescale(fx_matmul(x, layer, force_int64))
    else:
      x = layer(x)
  return x


def fixed_point_nets(model, variables) -> FxNets:
  """Quantises the float params that select CDFs to fixed point (integers
  round(w·2^WEIGHT_FRAC), biases round(b·2^(ACT_FRAC+WEIGHT_FRAC)) + 2^(WEIGHT_FRAC-1)
  (the output rounding, see compression_layers); exact and
  machine-independent, see compression_layers)."""
  if not _is_hyper(model):
    raise ValueError(f"{type(model).__name__} has no hyperprior")
  p = variables["params"]
  k = lambda name: np.asarray(p[name]["kernel"], np.float32)
  b = lambda name: np.asarray(p[name]["bias"], np.float32)
  deconv = lambda name: fx_conv(k(name), b(name), 2, (2, 3), transpose=True)
  act = fx_leaky if isinstance(model, MeanScaleHyperprior) else fx_relu
  h_s = [deconv("h_s_0"), act, deconv("h_s_2"), act, fx_conv(k("h_s_4"), b("h_s_4"), 1, (1, 1))]
  if not isinstance(model, MeanScaleHyperprior):
    h_s.append(fx_relu)
  medians = fx_quantize(np.asarray(p["entropy_bottleneck"]["quantiles"], np.float32)[:, 1],
                        ACT_FRAC)
  ctx = taps = None
  ep = []
  if _is_ar(model):
    taps = causal_mask(_K)[..., 0, 0].astype(bool)
    kc = k("context_prediction")
    ctx = fx_dense(kc[taps].reshape(-1, kc.shape[-1]), b("context_prediction"))
    for i in (0, 2, 4):
      name = f"entropy_parameters_{i}"
      ep.append(fx_dense(k(name).reshape(-1, k(name).shape[-1]), b(name)))
      if i < 4:
        ep.append(fx_leaky)
  return FxNets(medians, h_s, ctx, taps, ep)


def hyper_fixed(nets: FxNets, z_sym, force_int64: bool = False) -> np.ndarray:
  """h_s of the z symbols (1, h, w, N) in fixed point: int64 (1, 4h, 4w, C), value
  ·2^-ACT_FRAC. Exact: the same integers on every machine."""
  z = np.asarray(z_sym, np.int64)[0]
  z_fx = z * (1 << ACT_FRAC) + nets.medians
  return _apply_fx(nets.h_s, z_fx, force_int64)[None]


def _fx_to_float(v) -> np.ndarray:
  # Exact (float32 holds the value) for |v| < 2^24, values below 2^(24 - ACT_FRAC) =
  # 4096; beyond, IEEE rounding of the conversion is still the same everywhere.
  return (np.asarray(v, np.float64) / float(1 << ACT_FRAC)).astype(np.float32)


def _fx_hyper(model, nets: FxNets, z_sym):
  """Coder's (int32 y indexes, float32 means or None) of a hyperprior without context."""
  out = hyper_fixed(nets, z_sym)
  if isinstance(model, MeanScaleHyperprior):
    scales, means = np.split(out, 2, axis=-1)
    return GaussianConditional().build_indexes_fixed(scales), _fx_to_float(means)
  return GaussianConditional().build_indexes_fixed(out), None


def _fx_ar_step(nets: FxNets, window, params, force_int64: bool = False):
  """mbt2018 at one position: window int64 (5, 5, M) of fixed-point y_hat (zeros
  outside and not yet decoded), params int64 (2M,) -> int64 (scales, means) (M,)."""
  a = window[nets.taps].reshape(1, -1)  # the 12 causal taps, (1, 12·M)
  ctx = fx_rescale(fx_matmul(a, nets.ctx, force_int64))
  h = _apply_fx(nets.ep, np.concatenate([params[None], ctx], axis=1), force_int64)[0]
  return np.split(h, 2)


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

  Hyperpriors: strings = [z, y]; the y indexes come from the z symbols through the
  fixed-point h_s (`hyper_fixed`), the very integers `decompress` computes.
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
  with _net(timings):
    nets = fixed_point_nets(model, variables)
  if _is_ar(model):
    with _net(timings):
      params = hyper_fixed(nets, z)
    y_str, _ = _ar_encode(nets, tables["y"], out["y_float"], params, timings)
    return [z_str, y_str], [z.shape, tuple(out["y_float"].shape)]
  with _net(timings):
    idx, means = _fx_hyper(model, nets, z)
    y = np.asarray(_apply(model, variables, "_quantize_y", out["y_float"], means))
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
    with _net(timings):
      nets = fixed_point_nets(model, variables)
    if _is_ar(model):
      with _net(timings):
        params = hyper_fixed(nets, z)
      y_hat = _ar_decode(nets, tables["y"], strings[1], params, timings)
      with _net(timings):
        x_hat = np.asarray(_apply(model, variables, "_synthesis", y_hat))
      return np.clip(x_hat[:, :height, :width], 0.0, 1.0)
    with _net(timings):
      idx, side = _fx_hyper(model, nets, z)
    with _code(timings):
      y = _decode(strings[1], idx, tables["y"])
  with _net(timings):
    x_hat = np.asarray(_apply(model, variables, "_decode_net", y, side))
  return np.clip(x_hat[:, :height, :width], 0.0, 1.0)


_K = 5  # context kernel; the latent is zero-padded by _K // 2 as in CompressAI


def _ar_quantize(nets: FxNets, y, params, timings=None):
  """Serial quantizer of mbt2018 (CompressAI `_compress_ar`) in fixed point:
  ([(symbols, indexes) per position, row-major], y_hat float32). y_hat is kept as
  integers s·2^ACT_FRAC + μ_fx, exactly what the decoder rebuilds."""
  _, h, w, m = y.shape
  p = _K // 2
  buf = np.zeros((h + 2 * p, w + 2 * p, m), np.int64)
  gc = GaussianConditional()
  y64 = np.asarray(y, np.float64)
  chunks = []
  for i in range(h):
    for j in range(w):
      with _net(timings):
        scales, mu = _fx_ar_step(nets, buf[i:i + _K, j:j + _K], params[0, i, j])
        idx = gc.build_indexes_fixed(scales)
      s = np.rint(y64[0, i, j] - mu / float(1 << ACT_FRAC)).astype(np.int32)
      buf[i + p, j + p] = s.astype(np.int64) * (1 << ACT_FRAC) + mu  # as the decoder will
      chunks.append((s, idx))
  return chunks, _fx_to_float(buf[None, p:p + h, p:p + w])


def _ar_encode(nets: FxNets, t: CdfTables, y, params, timings=None):
  """(y string, y_hat): the positions' chunks in one ANS stream, in decoding order."""
  chunks, y_hat = _ar_quantize(nets, y, params, timings)
  with _code(timings):
    return codec.encode_sequence(chunks, t.cdfs, t.cdf_lengths, t.offsets), y_hat


def _ar_decode(nets: FxNets, t: CdfTables, data, params, timings=None):
  """Serial decoder of mbt2018: y_hat (1, h, w, M) float32."""
  _, h, w, c = params.shape
  m = c // 2
  p = _K // 2
  buf = np.zeros((h + 2 * p, w + 2 * p, m), np.int64)
  gc = GaussianConditional()
  dec = codec.SequenceDecoder(data, t.cdfs, t.cdf_lengths, t.offsets)
  for i in range(h):
    for j in range(w):
      with _net(timings):
        scales, mu = _fx_ar_step(nets, buf[i:i + _K, j:j + _K], params[0, i, j])
        idx = gc.build_indexes_fixed(scales)
      with _code(timings):
        s = dec.next(idx)
      buf[i + p, j + p] = np.asarray(s, np.int64) * (1 << ACT_FRAC) + mu
  dec.finish()
  return _fx_to_float(buf[None, p:p + h, p:p + w])


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
  """mbt2018: the serial coder's y_hat (round(y - μ) + μ, μ from the fixed-point
  context of the already quantized neighbours), computed by the encoder alone."""
  out = _apply(model, variables, "_encode_net", pad(np.asarray(x, np.float32)))
  nets = fixed_point_nets(model, variables)
  params = hyper_fixed(nets, np.asarray(out["z"]))
  return _ar_quantize(nets, np.asarray(out["y_float"]), params)[1]


def reconstruct(model, variables, x):
  """What decompress(compress(x)) must reproduce, cropped and clipped: the
  factorized model's eval-mode forward; for hyperpriors g_s of round(y - μ) + μ with
  the coder's fixed-point μ (0 for the scale hyperprior, where this is the eval-mode
  forward exactly); for mbt2018 g_s of the serial encoder's y_hat (CompressAI's
  compress path; its parallel forward uses round(y) instead)."""
  _, h, w, _ = np.shape(x)
  if _is_ar(model):
    x_hat = _apply(model, variables, "_synthesis", coded_latent(model, variables, x))
  elif _is_hyper(model):
    out = _apply(model, variables, "_encode_net", pad(np.asarray(x, np.float32)))
    _, means = _fx_hyper(model, fixed_point_nets(model, variables), np.asarray(out["z"]))
    y = _apply(model, variables, "_quantize_y", out["y_float"], means)
    x_hat = _apply(model, variables, "_decode_net", y, means)
  else:
    x_hat = _eval(model, variables, x)["x_hat"]
  return np.clip(np.asarray(x_hat)[:, :h, :w], 0.0, 1.0)


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
