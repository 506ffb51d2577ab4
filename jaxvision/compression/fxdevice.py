"""The coder's fixed-point hyper-synthesis h_s on the accelerator, exact in int8 x int8 -> int32.

`coding.hyper_fixed` runs h_s on the host in int64 (or provably exact float64) numpy; this
module computes the very same integers inside a jitted program, so that the encoder's one
device program goes from the image to the y symbols and their CDF rows, and the decoder's
from the z symbols to the y rows and means, without a host round trip in between.

  prepare(nets)                   device form of `coding.fixed_point_nets(...).h_s`, or None
                                  when its weights do not fit the scheme (then the host runs h_s)
  hyper(dev, z_sym, zh, zw)       (int32 h_s output, ok) inside a jitted function; z_sym
                                  (1, Hz, Wz, N) int32, valid in its top-left zh x zw

Exactness, with no float anywhere:

* Every integer v (activation or weight) is split into base-2^7 digits, the low ones in
  [0, 127] and the top one signed: v = Σ_i d_i 2^(7i), each digit an int8. Activations
  use 3 digits (|a| < 2^21, a value below 512 at ACT_FRAC = 12 fractional bits), weights as
  many as they need (|w| < 2^(7n), at most 3: |w| < 32 as a float).
* A layer's accumulator Σ_k a_k w_k + b is Σ_{i,j} 2^(7(i+j)) S_ij + b with
  S_ij = Σ_k d_i(a_k) d_j(w_k), an int8 convolution accumulated in int32: |S_ij| <= K·2^14,
  exact for K·3·2^14 < 2^29 (K <= 10922 taps, checked; the sums of equal i + j stay
  below 2^29, and so do the bias's top digit and every carry). All
  (i, j) come from one convolution: the activation digits stacked on the batch axis, the
  weight digits on the output channels.
* The S sums of each digit position, with the bias's digits, are carried base 2^7 in int32
  (each position stays below 2^30), which leaves acc = Σ_p dig_p 2^(7p) + top·2^(7P) with
  0 <= dig_p < 128. floor(acc / 2^16) (the layer's rounding, see layers.fx_rescale) is then
  top·2^(7P-16) + floor(Σ_p dig_p 2^(7p) / 2^16): integer shifts of values that fit int32.
* ReLU is a max; LeakyReLU floor(a·655 / 2^16) splits a = hi·2^16 + lo so that no product
  exceeds int32.
* `ok` is False when any activation entering a layer (z·2^12 + median included) is outside
  [-2^21, 2^21), a z symbol outside ±(2^19 - 1) (so that z·2^12 cannot wrap) or a layer's
  output outside [-2^30, 2^30]: where it is True the
  result equals the host's exactly (same integers, proven above); where it is False the
  caller must use the host's `hyper_fixed` (exact in int64, or OverflowError). Trained
  models stay far inside these ranges.

Transposed convolutions are the host's polyphase parts (layers.FxConv) stacked into one
stride-1 kernel with the stride² phases on the output channels (zeros where a phase has no
tap: exact, zero products add nothing), then depth-to-space. Outside the valid region every
layer input is zeroed, as the host's zero padding at the true size (core.buckets), so a
bucket-sized z gives, in its top-left, the integers of the true-sized z.

Integer convolutions: XLA:CPU runs int8 convolutions with int32 accumulation through
YNNPACK (about 5x faster than float32 here); other backends get the same sums as one
im2col int8 matmul (`dot_general`, int32 accumulation), which every XLA backend supports.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxvision.compression.layers import ACT_FRAC, LEAKY_NUM, WEIGHT_FRAC, FxConv, fx_leaky, fx_relu

DIGIT = 7                       # bits per digit
A_DIGITS = 3                    # activation digits: |a| < 2^21
A_LIMIT = 1 << (DIGIT * A_DIGITS)
MAX_W_DIGITS = 3
OUT_LIMIT = 1 << 30
Z_LIMIT = (1 << 19) - 1         # |z symbol|: z·2^12 + median cannot wrap in int32
MAX_TAPS = (1 << 29) // (3 << 14) - 1  # 3·K·2^14 < 2^29: no int32 sum can overflow


class DevLayer(NamedTuple):
  """One fixed-point conv of h_s in device form (arrays; the ints are static)."""

  w_digits: np.ndarray   # (D, D, C_in, n_w·C_out') int8, weight digits on the channels
  b_digits: np.ndarray   # (P, C_out') int32, bias digits (the top one signed), P = 3 + n_w - 1
  pad: tuple             # (lo, hi) spatial padding of the stride-1 conv
  stride: int            # 1, or the transposed conv's stride (depth-to-space after)
  n_w: int
  c_out: int             # channels after depth-to-space


def _digits(v: np.ndarray, n: int) -> np.ndarray:
  """(n, ...) base-2^7 digits of int64 v: low ones in [0, 127], the top one signed."""
  out = []
  for _ in range(n - 1):
    out.append(v & 127)
    v = v >> DIGIT
  out.append(v)
  return np.stack(out)


def _n_digits(v: np.ndarray) -> int | None:
  for n in range(1, MAX_W_DIGITS + 1):
    lim = 1 << (DIGIT * n)
    if v.size == 0 or (v.min() >= -lim and v.max() < lim):
      return n
  return None


def _layer(conv: FxConv) -> DevLayer | None:
  """The stride-1 integer kernel (D, D, C_in, s·s·C_out) of a host FxConv, digits split."""
  parts = conv.parts
  dense0 = parts[0][6]
  c_in = dense0.kernel.shape[0] // (parts[0][4] * parts[0][5])
  c_out = dense0.kernel.shape[1]
  if not conv.transpose:
    if conv.stride != 1:
      return None  # h_s has no strided conv
    _, _, _, _, ky, kx, dense = parts[0]
    kernel = dense.kernel.reshape(ky, kx, c_in, c_out)
    bias = dense.bias
    pad, s = tuple(conv.padding), 1
  else:
    s = conv.stride
    dmin = min(p[2] for p in parts)
    dmax = max(p[2] + p[4] - 1 for p in parts)
    if (dmin, dmax) != (min(p[3] for p in parts), max(p[3] + p[5] - 1 for p in parts)):
      return None
    d = dmax - dmin + 1
    kernel = np.zeros((d, d, c_in, s, s, c_out), np.int64)
    for ry, rx, oy, ox, ky, kx, dense in parts:
      if not np.array_equal(dense.bias, dense0.bias):
        return None
      kernel[oy - dmin:oy - dmin + ky, ox - dmin:ox - dmin + kx, :, ry, rx] = (
          dense.kernel.reshape(ky, kx, c_in, c_out))
    kernel = kernel.reshape(d, d, c_in, s * s * c_out)
    bias = np.tile(dense0.bias, s * s)
    pad = (-dmin, dmax)
  if kernel.shape[0] * kernel.shape[1] * c_in > MAX_TAPS:
    return None
  n_w = _n_digits(kernel)
  if n_w is None:
    return None
  p = A_DIGITS + n_w - 1
  b = _digits(np.asarray(bias, np.int64), p)
  if np.abs(b[-1]).max(initial=0) >= 1 << 29:
    return None
  wd = _digits(kernel, n_w)  # (n_w, D, D, C_in, C')
  wd = np.concatenate(list(wd), axis=-1).astype(np.int8)  # digit-major on the channels
  return DevLayer(wd, b.astype(np.int32), pad, s, n_w, c_out)


class DevHs(NamedTuple):
  """h_s in device form: `layers` (DevLayer or "relu" / "leaky"), the z medians at ACT_FRAC."""

  layers: tuple
  medians: np.ndarray  # (N,) int32


def prepare(nets) -> DevHs | None:
  """Device form of `coding.FxNets` h_s (numpy arrays; jit turns them into device
  arrays), or None when a weight, bias or median does not fit the scheme above."""
  if np.abs(nets.medians).max(initial=0) >= 1 << 20:
    return None
  out = []
  for layer in nets.h_s:
    if isinstance(layer, FxConv):
      dev = _layer(layer)
      if dev is None:
        return None
      out.append(dev)
    elif layer is fx_relu:
      out.append("relu")
    elif layer is fx_leaky:
      out.append("leaky")
    else:
      return None
  return DevHs(tuple(out), np.asarray(nets.medians, np.int32))


def _mask(h, w, shape):
  import jax.numpy as jnp
  rows = jnp.arange(shape[1]) < h
  cols = jnp.arange(shape[2]) < w
  return (rows[:, None] & cols[None, :])[None, :, :, None]


def _int_conv(x, w, pad, use_dot: bool):
  """Σ over taps and input channels of int8 x (B, H, W, C) and int8 w (D, D, C, O), int32,
  stride 1, zero padding pad = (lo, hi) on both spatial axes."""
  import jax
  import jax.numpy as jnp
  if not use_dot:
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), (pad, pad), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=jnp.int32)
  b, h, wd, c = x.shape
  d = w.shape[0]
  xp = jnp.pad(x, ((0, 0), pad, pad, (0, 0)))
  ho, wo = h + pad[0] + pad[1] - d + 1, wd + pad[0] + pad[1] - d + 1
  cols = jnp.concatenate([xp[:, i:i + ho, j:j + wo] for i in range(d) for j in range(d)],
                         axis=-1)  # (B, Ho, Wo, D·D·C), tap-major as w.reshape
  return jax.lax.dot_general(cols, w.reshape(-1, w.shape[-1]), (((3,), (0,)), ((), ())),
                             preferred_element_type=jnp.int32)


def _apply_layer(layer: DevLayer, w_digits, b_digits, a, use_dot):
  """int32 a (1, H, W, C_in), zero outside the valid region -> (int32 out, ok)."""
  import jax.numpy as jnp
  ok = jnp.all((a >= -A_LIMIT) & (a < A_LIMIT))
  digits = []
  v = a
  for _ in range(A_DIGITS - 1):
    digits.append(v & 127)
    v = v >> DIGIT
  digits.append(jnp.clip(v, -128, 127))  # in range wherever ok
  x = jnp.concatenate(digits, axis=0).astype(jnp.int8)  # (A_DIGITS, H, W, C)
  s = _int_conv(x, w_digits, layer.pad, use_dot)  # (A_DIGITS, H', W', n_w·C')
  c = s.shape[-1] // layer.n_w
  p_count = A_DIGITS + layer.n_w - 1
  sums = [None] * p_count
  for i in range(A_DIGITS):
    for j in range(layer.n_w):
      t = s[i:i + 1, ..., j * c:(j + 1) * c]
      sums[i + j] = t if sums[i + j] is None else sums[i + j] + t
  carry = 0
  low = 0  # Σ_p dig_p 2^(7p) over the positions below the top (< 2^28)
  for p in range(p_count - 1):
    v = sums[p] + b_digits[p] + carry
    low = low + ((v & 127) << (DIGIT * p))
    carry = v >> DIGIT
  top = sums[-1] + b_digits[-1] + carry
  e = DIGIT * (p_count - 1) - WEIGHT_FRAC
  if e >= 0:
    lim = OUT_LIMIT >> e
    ok &= jnp.all((top >= -lim) & (top < lim))
    out = (jnp.clip(top, -lim, lim - 1) << e) + (low >> WEIGHT_FRAC)
  else:  # the top digit lies below 2^16: the lower digits are < 2^(7(P-1)) <= 2^16
    out = top >> (-e)
  if layer.stride > 1:
    n, h, w, _ = out.shape
    st = layer.stride
    out = out.reshape(n, h, w, st, st, layer.c_out).transpose(0, 1, 3, 2, 4, 5)
    out = out.reshape(n, h * st, w * st, layer.c_out)
  return out, ok


def _leaky(a):
  """floor(a·LEAKY_NUM / 2^16) for a < 0 (fx_leaky), with no int32 overflow."""
  import jax.numpy as jnp
  neg = (a >> 16) * LEAKY_NUM + (((a & 0xFFFF) * LEAKY_NUM) >> 16)
  return jnp.where(a < 0, neg, a)


def hyper(dev: DevHs, arrays, z_sym, zh, zw, use_dot: bool = False):
  """(out int32 (1, s·Hz, s·Wz, C) at ACT_FRAC, ok) of h_s on z symbols; jit-traceable.

  `arrays` = `device_arrays(dev)` (passed as jit arguments, not constants); only the
  top-left (zh, zw) of z and (s·zh, s·zw) of the output are meaningful, and `ok` speaks
  only for those. Where ok is False the output must not be used (see the module doc)."""
  import jax.numpy as jnp
  medians, layer_arrays = arrays
  z = z_sym.astype(jnp.int32)
  full_h = z.shape[1]
  m = _mask(zh, zw, z.shape)
  ok = jnp.all(jnp.where(m, (z >= -Z_LIMIT) & (z <= Z_LIMIT), True))  # no abs: INT_MIN
  a = jnp.where(m, z * (1 << ACT_FRAC) + medians, 0)
  li = 0
  for layer in dev.layers:
    if isinstance(layer, DevLayer):
      scale = a.shape[1] // full_h
      a = jnp.where(_mask(zh * scale, zw * scale, a.shape), a, 0)
      w_digits, b_digits = layer_arrays[li]
      li += 1
      a, ok_l = _apply_layer(layer, w_digits, b_digits, a, use_dot)
      ok &= ok_l
    elif layer == "relu":
      a = jnp.maximum(a, 0)
    else:
      a = _leaky(a)
  return a, ok


def device_arrays(dev: DevHs):
  """The arrays of `dev` as a pytree (medians, [(w_digits, b_digits), ...])."""
  return (dev.medians, [(l.w_digits, l.b_digits) for l in dev.layers
                        if isinstance(l, DevLayer)])


def static(dev: DevHs) -> DevHs:
  """`dev` without its arrays (hashable: a jit static argument)."""
  return DevHs(tuple(l._replace(w_digits=None, b_digits=None) if isinstance(l, DevLayer)
                     else l for l in dev.layers), None)
