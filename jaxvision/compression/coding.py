"""Host-side coding of a codec's latents: the constriction ANS coder over integer CDF
tables, and compress / decompress / estimate_bits of an image.

Two halves:

* ``encode`` / ``decode`` / ``encode_sequence`` / ``SequenceDecoder``: pure numpy +
  ``constriction``, no JAX. ANS coding of int32 values, each with one of ``n_tables``
  quantized 16-bit CDFs (the layout produced by the entropy bottleneck's
  ``update()``, as in CompressAI). Out-of-range values are escaped and coded
  exactly, never clipped. The container that stores the strings is ``files.py``
  (byte layout: ``docs/jvc_format.md``).
* ``compress`` / ``decompress`` / ``estimate_bits`` / ``reconstruct``: pure functions
  of (model, variables, tables), with the fixed-point networks that choose every CDF.

Table layout (row ``i``, ``L = cdf_lengths[i]``): ``cdf[0] = 0``, strictly
increasing, ``cdf[L - 1] = 65536``. That is ``L - 1`` symbols; the last one,
``L - 2``, is the escape. A value ``v`` is coded directly as symbol
``v - offsets[i]`` when that lies in ``[0, L - 3]``, and escaped otherwise.

Escape scheme (all with a uniform 16-ary "bypass" model): the excess ``d``
below/above the direct range is folded to ``r >= 0`` (below: ``r = 2|d| - 1``,
odd; above: ``r = 2 (d - (L - 2))``, even), then coded as one nibble
``n - 1`` (``n`` = number of 4-bit groups of ``r``, at most 9 because ``r <
2^33`` for int32 inputs, so a single nibble suffices and no unary code is
needed) followed by the ``n`` groups, least significant first.

Determinism of the entropy coder: each table is turned into ``constriction``'s
``Categorical(freqs / 65536, perfect=False)`` with float64 probabilities.
constriction 0.5 quantizes these to its 24-bit fixed point as
``left[j] = floor(cdf[j] / 2^16 * (2^24 - n)) + j`` (``fast_quantized_cdf`` in
``src/stream/model/categorical.rs``). With 16-bit integer CDFs every one of
those float64 operations is exact (dyadic values, < 2^41 significant bits),
so the 24-bit model is an integer function of the table: no rounding happens,
hence no machine/compiler (FMA, SIMD) can change it. ``perfect=True`` would
instead run a float optimisation loop with ``log1p``, which we avoid.

Determinism of the CDF choice across machines: every value that selects a CDF is an
integer computed exactly. At coding time h_s (hyperpriors) and mbt2018's context
step (masked 5x5 conv + entropy-parameter 1x1 convs) run as fixed-point integer
networks (`fixed_point_nets`, the `fx_*` helpers of layers.py: integer weights,
rounded integer activations): h_s on the device in exact int8-digit arithmetic
(fxdevice.py) where its ranges hold, else on the host (`hyper_fixed`: exact int64 or
provably exact float64 matmuls), the context step on the host; the scale index is an
integer comparison with fixed-point table midpoints.

Shapes: `compress` / `decompress` run one program per bucket (see "bucketed device
programs" below), not one per image size; the files are those of the unbucketed coder. Means are fixed point too: mbt2018's y_hat = s + μ is the integer
s·2^12 + μ_fx, so the serial encoder and decoder see identical integer windows on
any machine. Training and `estimate_bits` stay float; the jitted float methods
`_hyper_decode` / `_ar_step` of the models remain as references for tests.
"""
from __future__ import annotations

import contextlib
import functools
import time
from typing import NamedTuple

import constriction
import jax
import numpy as np

from jaxvision.compression import fxdevice, programs
from jaxvision.compression.layers import (
    ACT_FRAC, CdfTables, FxConv, FxDense, GaussianConditional, causal_mask, fx_conv,
    fx_conv_apply, fx_dense, fx_leaky, fx_matmul, fx_quantize, fx_relu, fx_rescale)
from jaxvision.compression.models import (
    STRIDE, MeanScaleHyperprior, is_autoregressive, is_hyperprior)
from jaxvision.core import buckets

__all__ = ["encode", "decode", "encode_sequence", "SequenceDecoder", "CDF_PRECISION",
           "compress", "decompress", "estimate_bits", "reconstruct", "coded_latent",
           "fixed_point_nets", "hyper_fixed", "latent_shapes_for", "pad", "bucket_for",
           "bucket_side", "prepare_programs", "Timings"]


CDF_PRECISION = 16
_TOTAL = 1 << CDF_PRECISION
_NIBBLE = constriction.stream.model.Uniform(16)  # integer-exact model


# --------------------------------------------------------------------------
# Entropy coding
# --------------------------------------------------------------------------

def _check_tables(cdfs, cdf_lengths, offsets):
  cdfs = np.asarray(cdfs)
  cdf_lengths = np.asarray(cdf_lengths)
  offsets = np.asarray(offsets)
  if cdfs.ndim != 2 or not np.issubdtype(cdfs.dtype, np.integer):
    raise ValueError(f"cdfs must be a 2-D integer array, got {cdfs.dtype} {cdfs.shape}")
  n, max_len = cdfs.shape
  if cdf_lengths.shape != (n,) or offsets.shape != (n,):
    raise ValueError(f"cdf_lengths and offsets must have shape ({n},), got "
                     f"{cdf_lengths.shape} and {offsets.shape}")
  cdfs = cdfs.astype(np.int64)
  lengths = cdf_lengths.astype(np.int64)
  if np.any(lengths < 3) or np.any(lengths > max_len):
    raise ValueError(f"cdf_lengths must be in [3, {max_len}] (one regular symbol + escape)")
  # One vectorised validity check over all rows (padding beyond L is masked).
  cols = np.arange(max_len)
  inside = cols[None, :] < lengths[:, None]
  steps = np.diff(cdfs, axis=1)
  if (np.any(cdfs[:, 0] != 0)
      or np.any(cdfs[np.arange(n), lengths - 1] != _TOTAL)
      or np.any((steps < 1) & inside[:, 1:])):
    raise ValueError("every cdf row must start at 0, increase strictly and end at 65536")
  return cdfs, lengths, offsets.astype(np.int64)


def _model(cdf_row, length):
  # float64 of integer frequencies / 2^16 is exact; see module docstring for why
  # constriction's quantization of it is then exact too.
  freqs = np.diff(cdf_row[:length]).astype(np.float64) / _TOTAL
  return constriction.stream.model.Categorical(freqs, perfect=False)


def _group(indexes, n_tables):
  """Stable permutation sorting symbols by table, and per-table counts."""
  if indexes.size and (indexes.min() < 0 or indexes.max() >= n_tables):
    raise ValueError(f"indexes must be in [0, {n_tables})")
  order = np.argsort(indexes, kind="stable")
  counts = np.bincount(indexes, minlength=n_tables)
  return order, counts


def _check_symbols(symbols, indexes):
  symbols = np.asarray(symbols)
  indexes = np.asarray(indexes)
  if symbols.shape != indexes.shape:
    raise ValueError(f"symbols {symbols.shape} and indexes {indexes.shape} differ in shape")
  if symbols.size and not np.issubdtype(symbols.dtype, np.integer):
    raise ValueError(f"symbols must be integers, got {symbols.dtype}")
  if symbols.size and (symbols.min() < -2**31 or symbols.max() > 2**31 - 1):
    raise ValueError("symbols must fit in int32")
  return symbols, indexes


class _Models:
  """constriction models of checked tables, built once per row on first use."""

  def __init__(self, cdfs, cdf_lengths, offsets):
    self.cdfs, self.lengths, self.offsets = _check_tables(cdfs, cdf_lengths, offsets)
    self._cache = {}

  def __call__(self, t):
    m = self._cache.get(t)
    if m is None:
      m = self._cache[t] = _model(self.cdfs[t], self.lengths[t])
    return m


def _push(coder, symbols, indexes, models: _Models) -> None:
  """Pushes one chunk so that `_pop` with the same indexes reads it back first."""
  lengths, offsets = models.lengths, models.offsets
  idx = indexes.ravel().astype(np.int64)
  order, counts = _group(idx, len(lengths))
  tab = idx[order]
  # int64 so that v - offset cannot wrap for extreme int32 inputs.
  d = symbols.ravel().astype(np.int64)[order] - offsets[tab]
  esc_sym = lengths[tab] - 2
  low, high = d < 0, d >= esc_sym
  sym = np.where(low | high, esc_sym, d).astype(np.int32)

  # Escapes, in decode order (table-sorted order). Fold to r >= 0 and split
  # into nibbles, least significant first.
  r = np.where(low, -2 * d - 1, 2 * (d - esc_sym))[low | high]
  n_groups = np.ones(r.shape, np.int64)
  for k in range(1, 9):  # r < 2^33 needs at most 9 nibbles
    n_groups += r >= (1 << (4 * k))
  shifts = 4 * np.arange(9)
  nib = (r[:, None] >> shifts[None, :]) & 15
  nibbles = nib[np.arange(9)[None, :] < n_groups[:, None]].astype(np.int32)

  # ANS is a stack: push in reverse of the decode order
  # (tables 0..n-1, then group counts, then nibbles).
  if nibbles.size:
    coder.encode_reverse(nibbles, _NIBBLE)
    coder.encode_reverse((n_groups - 1).astype(np.int32), _NIBBLE)
  ends = np.cumsum(counts)
  for t in np.flatnonzero(counts)[::-1]:
    coder.encode_reverse(sym[ends[t] - counts[t]:ends[t]], models(t))


def _pop(coder, indexes, models: _Models) -> np.ndarray:
  """Reads one chunk pushed by `_push`; ValueError on a stream that cannot hold it."""
  lengths, offsets = models.lengths, models.offsets
  idx = indexes.ravel().astype(np.int64)
  order, counts = _group(idx, len(lengths))
  tab = idx[order]
  try:
    sym = np.empty(idx.size, np.int64)
    ends = np.cumsum(counts)
    for t in np.flatnonzero(counts):
      sym[ends[t] - counts[t]:ends[t]] = coder.decode(models(t), int(counts[t]))
    esc_sym = lengths[tab] - 2
    escaped = sym == esc_sym
    n_esc = int(escaped.sum())
    d = sym.copy()
    if n_esc:
      n_groups = coder.decode(_NIBBLE, n_esc).astype(np.int64) + 1
      if n_groups.max() > 9:  # the encoder never writes more (r < 2^36)
        raise ValueError("corrupt entropy-coded stream: escape longer than 9 nibbles")
      nib = coder.decode(_NIBBLE, int(n_groups.sum())).astype(np.int64)
      # Reassemble each escape's nibbles: position of each nibble in its value.
      starts = np.cumsum(n_groups) - n_groups
      pos = np.arange(nib.size) - np.repeat(starts, n_groups)
      r = np.zeros(n_esc, np.int64)
      np.add.at(r, np.repeat(np.arange(n_esc), n_groups), nib << (4 * pos))
      d[escaped] = np.where(r & 1, -((r + 1) // 2), r // 2 + esc_sym[escaped])
  except ValueError:
    raise
  except Exception as e:  # constriction raises assorted types on bad streams
    raise ValueError(f"corrupt entropy-coded stream: {e}") from None
  v = d + offsets[tab]
  if v.size and (v.min() < -2**31 or v.max() > 2**31 - 1):
    raise ValueError("corrupt entropy-coded stream: decoded value outside int32")
  out = np.empty(idx.size, np.int32)
  out[order] = v
  return out.reshape(indexes.shape)


def _words(data: bytes) -> np.ndarray:
  if len(data) % 4:
    raise ValueError(f"compressed length {len(data)} is not a multiple of 4 bytes")
  return np.frombuffer(data, dtype="<u4").astype(np.uint32)


def encode(symbols, indexes, cdfs, cdf_lengths, offsets) -> bytes:
  """Entropy-codes int32 ``symbols``; ``indexes`` (same shape) picks each one's table.

  Returns the ANS stream as little-endian 32-bit words. Decoding needs the same
  ``indexes`` and tables (the shape is not stored).
  """
  symbols, indexes = _check_symbols(symbols, indexes)
  coder = constriction.stream.stack.AnsCoder()
  _push(coder, symbols, indexes, _Models(cdfs, cdf_lengths, offsets))
  return coder.get_compressed().astype("<u4").tobytes()


def decode(data: bytes, indexes, cdfs, cdf_lengths, offsets) -> np.ndarray:
  """Inverse of ``encode``: int32 array of ``indexes.shape``.

  Raises ValueError on inconsistent tables or a stream that does not decode
  cleanly. ANS has no integrity check of its own: corruption is only caught
  when it leaves words over or yields a value outside int32 (the .jvc CRC is
  the real guard).
  """
  indexes = np.asarray(indexes)
  models = _Models(cdfs, cdf_lengths, offsets)
  dec = SequenceDecoder(data, models)
  out = dec.next(indexes)
  dec.finish()
  return out


def encode_sequence(chunks, cdfs, cdf_lengths, offsets) -> bytes:
  """One ANS stream of several (symbols, indexes) chunks, each coded as by ``encode``.

  For autoregressive models: the decoder needs chunk k's values before it can
  compute chunk k+1's indexes, so it reads chunks one at a time with
  `SequenceDecoder`. ``encode_sequence([(s, i)], ...)`` equals ``encode(s, i, ...)``.
  """
  models = _Models(cdfs, cdf_lengths, offsets)
  chunks = [_check_symbols(s, i) for s, i in chunks]
  coder = constriction.stream.stack.AnsCoder()
  for s, i in reversed(chunks):  # a stack: the first chunk is pushed last
    _push(coder, s, i, models)
  return coder.get_compressed().astype("<u4").tobytes()


class SequenceDecoder:
  """Reads the chunks of `encode_sequence` in order: ``next(indexes)`` per chunk,
  then ``finish()``, which raises ValueError when words are left over."""

  def __init__(self, data: bytes, cdfs, cdf_lengths=None, offsets=None):
    self.models = cdfs if isinstance(cdfs, _Models) else _Models(cdfs, cdf_lengths, offsets)
    words = _words(data)
    try:
      self.coder = constriction.stream.stack.AnsCoder(words)
    except Exception as e:  # noqa: BLE001
      raise ValueError(f"corrupt entropy-coded stream: {e}") from None

  def next(self, indexes) -> np.ndarray:
    return _pop(self.coder, np.asarray(indexes), self.models)

  def finish(self) -> None:
    if not self.coder.is_empty():
      raise ValueError("corrupt entropy-coded stream: data left after the last symbol")


# --------------------------------------------------------------------------
# Coding an image with a model
# --------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0, 2))
def _apply(model, variables, method, *args):
  # One compile per (model config, method, shapes); the model is hashable.
  return model.apply(variables, *args, method=getattr(type(model), method))


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
  (the output rounding, see layers.py); exact and
  machine-independent, see layers.py)."""
  if not is_hyperprior(model):
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
  if is_autoregressive(model):
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
  return [(1, hp // 64, wp // 64, model.N), y] if is_hyperprior(model) else [y]


def _channel_indexes(shape):
  return np.broadcast_to(np.arange(shape[-1], dtype=np.int32), shape)


# constriction models of a CdfTables, kept while the tables object lives (one per
# checkpoint): built once per process, not once per image.
_MODELS: dict = {}


def _models(t: CdfTables) -> _Models:
  hit = _MODELS.get(id(t))
  if hit is None or hit[0] is not t:
    if len(_MODELS) > 16:
      _MODELS.clear()
    hit = _MODELS[id(t)] = (t, _Models(t.cdfs, t.cdf_lengths, t.offsets))
  return hit[1]


def _encode(sym, idx, t: CdfTables):
  symbols, indexes = _check_symbols(sym, idx)
  coder = constriction.stream.stack.AnsCoder()
  _push(coder, symbols, indexes, _models(t))
  return coder.get_compressed().astype("<u4").tobytes()


def _decode(s, idx, t: CdfTables):
  dec = SequenceDecoder(s, _models(t))
  out = dec.next(np.asarray(idx))
  dec.finish()
  return out


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


# ------------------------------------------------------- bucketed device programs
#
# One program per (model, bucket) for every image size: the image, edge-padded to a
# multiple of STRIDE as always, is zero-padded to its bucket (core.buckets, sides that
# are multiples of STRIDE) and run under `valid_region`, which zeroes every conv input
# outside the padded image: the explicit symmetric padding of the codec's convs then
# sees exactly the zeros it sees at the true size, so the top-left of every latent is
# the unbucketed latent (checked bit for bit by the tests). Latents are cropped on the
# host (a device slice would compile per size). The fixed-point h_s runs in the same
# programs (fxdevice: exact integers, the host's `hyper_fixed` where it says not ok).


class _Prepared(NamedTuple):
  variables: dict        # on the device
  nets: FxNets | None    # host fixed-point nets (hyperpriors)
  dev: object            # fxdevice.DevHs without arrays (static), or None: host h_s
  dev_arrays: object     # its arrays on the device
  use_dot: bool          # int8 convs as im2col matmuls (backends other than CPU)


_PREPARED: dict = {}
# How often h_s ran on the host because the device's exact ranges did not hold (or the
# weights do not fit fxdevice): trained models never should (tests, benchmarks read it).
HOST_H_S = {"calls": 0}


def _prepared(model, variables, device=None) -> _Prepared:
  """Per (model, variables, device): device copies and the fixed-point nets, built once
  (device None: the default device)."""
  key = (id(variables), model, None if device is None else device.id)
  hit = _PREPARED.get(key)
  if hit is not None and hit[0] is variables:
    return hit[1]
  if device is not None:  # the host nets of the default's, the arrays copied to `device`
    base = _prepared(model, variables)
    prep = base._replace(variables=jax.device_put(base.variables, device),
                         dev_arrays=(None if base.dev_arrays is None
                                     else jax.device_put(base.dev_arrays, device)))
  else:
    nets = dev = arrays = None
    if is_hyperprior(model):
      nets = fixed_point_nets(model, variables)
      full = fxdevice.prepare(nets)
      if full is not None:
        dev, arrays = fxdevice.static(full), jax.device_put(fxdevice.device_arrays(full))
    prep = _Prepared(jax.device_put(variables), nets, dev, arrays,
                     jax.default_backend() != "cpu")
  if len(_PREPARED) > 16:
    _PREPARED.clear()
  _PREPARED[key] = (variables, prep)  # holds `variables`: its id stays unique
  return prep


def devices() -> list:
  """The devices a folder's images are spread over: every local CPU device on the CPU
  backend (one per core under `jaxvision`, core.compile.use_cpu_cores), else the first."""
  if jax.default_backend() == "cpu":
    return jax.local_devices(backend="cpu")
  return jax.local_devices()[:1]


def device_lanes(sizes, n_devices: int) -> dict:
  """{bucket: device index} for images of `sizes` [(h, w)]: whole buckets to a device (each
  device then loads only its buckets' programs), the largest total first to the least
  loaded device, so that the devices get about as many pixels each."""
  load: dict = {}
  for h, w in sizes:
    b = bucket_for(h, w)  # (the same as for the padded size: buckets are multiples of it)
    load[b] = load.get(b, 0) + b[0] * b[1]
  given = [0] * max(1, n_devices)
  lanes = {}
  for b in sorted(load, key=lambda b: (-load[b], b)):
    k = min(range(len(given)), key=lambda i: (given[i], i))
    lanes[b] = k
    given[k] += load[b]
  return lanes


def bucket_side(n: int) -> int:
  """The codec's bucket side for a side of n pixels: core.buckets' ladder in units of the
  codec's stride 64 (every multiple of 64 up to 512, then 640, 768, 896, 1024, 1280, 1536,
  1792, 2048, 2560, ...). The bucket never changes a result (see above), only how much is
  computed."""
  return buckets.bucket_side(n, STRIDE)


def bucket_for(height: int, width: int) -> tuple[int, int]:
  """The bucket (H, W) in which an image of this size is coded (multiples of STRIDE)."""
  return bucket_side(height), bucket_side(width)


def _mids():
  mids = GaussianConditional().fixed_midpoints()
  assert mids.max() < 2**31
  return mids.astype(np.int32)


def _indexes_means(model, hs):
  """Device `_fx_hyper`: int32 rows and float32 means (or None) of int32 h_s output."""
  import jax.numpy as jnp
  if isinstance(model, MeanScaleHyperprior):
    scales, means_fx = jnp.split(hs, 2, axis=-1)
    means = means_fx.astype(jnp.float32) * np.float32(1.0 / (1 << ACT_FRAC))  # exact scaling
  else:
    scales, means = hs, None
  idx = jnp.searchsorted(jnp.asarray(_mids()), scales, side="right").astype(jnp.int32)
  return idx, means


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _encode_program(model, dev, use_dot, estimate, variables, dev_arrays, x, hp, wp):
  """The encoder of a bucket: latents (bucket-sized), and for hyperpriors with a device
  h_s the y symbols, their CDF rows and `ok` (fxdevice); with `estimate`, also "bits",
  the model's estimated rate (`_estimate`)."""
  with buckets.valid_region(hp, wp, x.shape[1], x.shape[2]):
    out = model.apply(variables, x, method=type(model)._encode_net)
  if estimate:
    out["bits"] = _estimate(model, variables, out["y_float"] if is_hyperprior(model)
                            else out["y"], out.get("z"), hp, wp)
  if dev is None or not is_hyperprior(model):
    return out
  hs, ok = fxdevice.hyper(dev, dev_arrays, out["z"], hp // STRIDE, wp // STRIDE, use_dot)
  if is_autoregressive(model):
    return {**out, "params": hs, "ok": ok}
  idx, means = _indexes_means(model, hs)
  y = GaussianConditional().quantize(out["y_float"], "symbols", means)
  return {**out, "y": y, "idx": idx, "ok": ok}


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _hyper_program(model, dev, use_dot, dev_arrays, z, zh, zw):
  hs, ok = fxdevice.hyper(dev, dev_arrays, z, zh, zw, use_dot)
  if is_autoregressive(model):
    return hs, None, ok
  idx, means = _indexes_means(model, hs)
  return idx, means, ok


@functools.partial(jax.jit, static_argnums=(0, 1))
def _synth_program(model, method, variables, yh, yw, *args):
  y = args[0]
  with buckets.valid_region(yh, yw, y.shape[1], y.shape[2]):
    return model.apply(variables, *args, method=getattr(type(model), method))


def _estimate(model, variables, y, z, hp, wp):
  """{latent: Σ -log2 likelihood} (eval mode, float32) over the valid region: y the float
  latent (its symbols for the factorized model), z the z symbols."""
  import jax.numpy as jnp
  yh, yw = hp // 16, wp // 16

  def bits(lik):  # inside valid_region: its mask at lik's resolution
    return jnp.sum(jnp.where(buckets.region_mask(lik), -jnp.log2(lik), 0.0))

  def fn(module, y, z):
    with buckets.valid_region(yh, yw, y.shape[1], y.shape[2]):
      if not is_hyperprior(module):
        eb = module.entropy_bottleneck  # y: the symbols, y_hat = round(y - m) + m
        return {"y": bits(eb.likelihood(y.astype(jnp.float32) + eb.medians()))}
      z_hat = z.astype(jnp.float32) + module.entropy_bottleneck.medians()
      z_lik = module.entropy_bottleneck.likelihood(z_hat)
      gc = module.gaussian_conditional
      if is_autoregressive(module):
        params = _seq_h_s(module, z_hat)
        y_hat = buckets.apply_mask(gc.quantize(y, "dequantize"))
        scales, means = module._gaussian_params(params, module.context_prediction(y_hat))
      else:
        scales, means = module.hyper_synthesis(z_hat)
      _, y_lik = gc(y, scales, means, train=False)
      return {"y": bits(y_lik), "z": bits(z_lik)}

  return model.apply(variables, y, z, method=fn)


def _seq_h_s(module, z_hat):
  for layer in module.h_s:
    z_hat = layer(z_hat)
  return z_hat


def prepare_programs(model, variables, sizes, *, encode: bool = False,
                     decode: bool = False, estimate: bool = False, device_of=None) -> int:
  """Loads or compiles ahead of time the programs that `compress` (`encode`; `estimate`:
  with `info`) and `decompress` (`decode`) need for images of `sizes` [(h, w)], the
  missing ones in parallel (programs.prepare). Returns how many were compiled. Optional:
  the coder compiles whatever is missing when it gets there. `device_of(bucket)`: the
  device each bucket's programs run on (None: the default device)."""
  import jax
  spec = jax.ShapeDtypeStruct
  i32 = spec((), np.int32)
  hyper = is_hyperprior(model)
  requests = []
  for big_h, big_w in sorted({bucket_for(h, w) for h, w in sizes}):
    prep = _prepared(model, variables, device_of((big_h, big_w)) if device_of else None)
    yb = (1, big_h // 16, big_w // 16, model.M)
    if encode:
      requests.append((_encode_program, (model, prep.dev, prep.use_dot, estimate),
                       (prep.variables, prep.dev_arrays, spec((1, big_h, big_w, 3), np.float32),
                        i32, i32)))
    if not decode:
      continue
    if hyper and prep.dev is not None:
      requests.append((_hyper_program, (model, prep.dev, prep.use_dot),
                       (prep.dev_arrays, spec((1, big_h // STRIDE, big_w // STRIDE, model.N),
                                              np.int32), i32, i32)))
    if is_autoregressive(model):
      requests.append((_synth_program, (model, "_synthesis"),
                       (prep.variables, i32, i32, spec(yb, np.float32))))
    else:
      means = spec(yb, np.float32) if isinstance(model, MeanScaleHyperprior) else None
      requests.append((_synth_program, (model, "_decode_net"),
                       (prep.variables, i32, i32, spec(yb, np.int32), means)))
  return programs.prepare(requests)


def _host_h_s(fn, *args):
  HOST_H_S["calls"] += 1
  return fn(*args)


def _crop(a, h, w):
  return np.asarray(a)[:, :h, :w]


def compress(model, variables, tables, x, timings: Timings | None = None,
             info: dict | None = None, what: str | None = None, device=None):
  """(1, H, W, 3) float in [0, 1] -> (strings, latent_shapes).

  Hyperpriors: strings = [z, y]; the y indexes come from the z symbols through the
  fixed-point h_s (on the device, `fxdevice`; on the host, `hyper_fixed`, where the
  device says its ranges do not hold), the very integers `decompress` computes. One
  compiled program per bucket (`bucket_for`), whatever the image size. With a dict
  `info`, info["estimated_bits"] gets the model's estimate {latent: bits, "total"}
  (float32 sums on the device; `estimate_bits` is the float64 host version). With `what`
  (the input's name), a program whose memory would not fit is refused first, naming it
  (core.executables.check_memory). `device`: where the programs run (None: the default
  device); every device gives the same bytes.
  """
  x = np.asarray(x, np.float32)
  if x.ndim != 4 or x.shape[0] != 1 or x.shape[-1] != 3:
    raise ValueError(f"expected a (1, H, W, 3) image, got {x.shape}")
  xp = pad(x)
  hp, wp = xp.shape[1:3]
  big_h, big_w = bucket_for(hp, wp)
  yh, yw, zh, zw = hp // 16, wp // 16, hp // STRIDE, wp // STRIDE
  prep = _prepared(model, variables, device)
  with _net(timings):
    out = programs.call(_encode_program, (model, prep.dev, prep.use_dot, info is not None),
                        prep.variables, prep.dev_arrays,
                        buckets.pad_to(xp, big_h, big_w, batched=True), np.int32(hp),
                        np.int32(wp), what=what)
    if not is_hyperprior(model):
      y = _crop(out["y"], yh, yw)
    else:
      z = _crop(out["z"], zh, zw)
      ok = prep.dev is not None and bool(out["ok"])
  if info is not None:
    bits = {k: float(v) for k, v in out["bits"].items()}
    bits["total"] = sum(bits.values())
    info["estimated_bits"] = bits
  if not is_hyperprior(model):
    with _code(timings):
      return [_encode(y, _channel_indexes(y.shape), tables["y"])], [y.shape]
  with _code(timings):
    z_str = _encode(z, _channel_indexes(z.shape), tables["z"])
  if is_autoregressive(model):
    with _net(timings):
      y_float = _crop(out["y_float"], yh, yw)
      params = (_crop(out["params"], yh, yw).astype(np.int64) if ok
                else _host_h_s(hyper_fixed, prep.nets, z))
    y_str, _ = _ar_encode(prep.nets, tables["y"], y_float, params, timings)
    return [z_str, y_str], [z.shape, y_float.shape]
  with _net(timings):
    if ok:
      y, idx = _crop(out["y"], yh, yw), _crop(out["idx"], yh, yw)
    else:
      idx, means = _host_h_s(_fx_hyper, model, prep.nets, z)
      y = np.asarray(_apply(model, variables, "_quantize_y", _crop(out["y_float"], yh, yw),
                            means))
  with _code(timings):
    y_str = _encode(y, idx, tables["y"])
  return [z_str, y_str], [z.shape, y.shape]


def decompress(model, variables, tables, strings, latent_shapes, height, width,
               timings: Timings | None = None, what: str | None = None, device=None):
  """Inverse of `compress`: (1, height, width, 3) float32 in [0, 1].

  Raises ValueError for shapes that do not fit the image size (before allocating
  anything) and for strings that do not decode cleanly; with `what` (the file's name),
  ResourceError for a synthesis whose memory would not fit, before it runs. `device` as
  in `compress` (every device gives the same pixels).
  """
  want = latent_shapes_for(model, height, width)
  if [tuple(s) for s in latent_shapes] != want or len(strings) != len(want):
    raise ValueError(f"latent shapes {latent_shapes} / {len(strings)} strings do not "
                     f"match a {height}x{width} image for this model ({want})")
  big_h, big_w = bucket_for(height, width)
  yb = (big_h // 16, big_w // 16)
  prep = _prepared(model, variables, device)

  def synth(method, y_hat, *side):
    _, yh, yw, _ = y_hat.shape
    with _net(timings):
      x_hat = programs.call(_synth_program, (model, method), prep.variables, np.int32(yh),
                            np.int32(yw), buckets.pad_to(y_hat, *yb, batched=True), *side,
                            what=what)
      return np.clip(_crop(x_hat, height, width), 0.0, 1.0)

  if not is_hyperprior(model):
    (y_shape,) = want
    with _code(timings):
      y = _decode(strings[0], _channel_indexes(y_shape), tables["y"])
    return synth("_decode_net", y, None)
  z_shape, y_shape = want
  _, yh, yw, _ = y_shape
  with _code(timings):
    z = _decode(strings[0], _channel_indexes(z_shape), tables["z"])
  with _net(timings):
    ok = False
    if prep.dev is not None:
      idx, means, ok = programs.call(
          _hyper_program, (model, prep.dev, prep.use_dot), prep.dev_arrays,
          buckets.pad_to(z, big_h // STRIDE, big_w // STRIDE, batched=True),
          np.int32(z_shape[1]), np.int32(z_shape[2]))
      ok = bool(ok)
    if is_autoregressive(model):
      params = (_crop(idx, yh, yw).astype(np.int64) if ok
                else _host_h_s(hyper_fixed, prep.nets, z))
    elif ok:
      idx = _crop(idx, yh, yw)  # means stay on the device, bucket-sized, for g_s
    else:
      idx, means = _host_h_s(_fx_hyper, model, prep.nets, z)
      if means is not None:
        means = buckets.pad_to(means, *yb, batched=True)
  if is_autoregressive(model):
    y_hat = _ar_decode(prep.nets, tables["y"], strings[1], params, timings)
    return synth("_synthesis", y_hat)
  with _code(timings):
    y = _decode(strings[1], idx, tables["y"])
  return synth("_decode_net", y, means)


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
    return encode_sequence(chunks, t.cdfs, t.cdf_lengths, t.offsets), y_hat


def _ar_decode(nets: FxNets, t: CdfTables, data, params, timings=None):
  """Serial decoder of mbt2018: y_hat (1, h, w, M) float32."""
  _, h, w, c = params.shape
  m = c // 2
  p = _K // 2
  buf = np.zeros((h + 2 * p, w + 2 * p, m), np.int64)
  gc = GaussianConditional()
  dec = SequenceDecoder(data, t.cdfs, t.cdf_lengths, t.offsets)
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
  if is_autoregressive(model):
    x_hat = _apply(model, variables, "_synthesis", coded_latent(model, variables, x))
  elif is_hyperprior(model):
    out = _apply(model, variables, "_encode_net", pad(np.asarray(x, np.float32)))
    _, means = _fx_hyper(model, fixed_point_nets(model, variables), np.asarray(out["z"]))
    y = _apply(model, variables, "_quantize_y", out["y_float"], means)
    x_hat = _apply(model, variables, "_decode_net", y, means)
  else:
    x_hat = _eval(model, variables, x)["x_hat"]
  return np.clip(np.asarray(x_hat)[:, :h, :w], 0.0, 1.0)
