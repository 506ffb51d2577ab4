"""Feed-forward stylisation networks trained with perceptual losses.

johnson      Johnson, Alahi, Fei-Fei, "Perceptual Losses for Real-Time Style Transfer and
             Super-Resolution", ECCV 2016 (the image transformation network of the
             supplementary material / fast-neural-style): c9s1-32, d64, d128, 5 residual
             blocks of 128, u64, u32, c9s1-3; instance normalisation (Ulyanov et al. 2016,
             as fast-neural-style uses); reflect padding; output (1 + tanh) / 2 in [0, 1]
             (the paper's scaled tanh, scaled to jaxvision's image range).
texture_net  Ulyanov, Lebedev, Vedaldi, Lempitsky, "Texture Networks", ICML 2016: a
             multi-scale generator; scale k (k = 0 finest .. K-1) sees noise (plus, for
             stylisation, the image downsampled by 2^k) through a conv block (3x3, 3x3, 1x1
             convs, each normalised + LeakyReLU); from the coarsest, the running result is
             upsampled and *joined* (both normalised, concatenated) with the next finer
             block, then passed through a conv block; a 1x1 conv gives RGB.

Any input size, odd included, gives an output of the input's size: strided convolutions
(pad 1) give ceil(H / 2); the decoder upsamples by nearest-neighbour *resize to the exact
size of the matching encoder map* followed by a 3x3 convolution (resize-convolution,
Odena et al. 2016, instead of a stride-1/2 transposed conv: the same map on even sizes,
exact on odd ones, and no checkerboard artefacts). The texture net builds its pyramid
with the same ceil sizes.

Shape buckets (jaxvision.core.buckets; `jaxvision stylize` pads a folder's images to a few
bucket shapes): inside a `valid_region` every size-dependent step works at the image's
traced valid size, so the valid region of the output is the unpadded result: instance norm
over the valid region (`buckets.masked_mean`), reflection at the valid border (a gather),
nearest-neighbour and antialiased linear resizes with the valid sizes' coordinate maps,
and the noise drawn as the flat stream the unpadded shape would read. Buckets are multiples
of the total stride (`bucket_multiple`); `bucketable` says which sizes are exact there.

Compute dtype: both generators take `dtype` (None, the default: float32 as always;
"bfloat16" on GPU/TPU) for their convolutions and activations, and `param_dtype` (float32)
for the convolutions' parameters. Instance normalisation computes its mean, variance and
rsqrt in float32 from the (bf16) activations and applies its float32 affine there, then
returns the activations' dtype; the resize weights, noise and the output's scaled tanh are
float32, and so is the returned image, which the perceptual losses compare in float32.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.core import buckets, scan
from jaxvision.core.registry import register_model


def instance_normalize(x: jnp.ndarray, eps: float = 1e-5) -> jnp.ndarray:
  """Zero mean, unit variance per image and channel over H, W (before any affine)."""
  mean = buckets.masked_mean(x)  # jnp.mean over H, W; the valid region's in a bucket
  var = buckets.masked_mean(jnp.square(x - mean))
  return (x - mean) * jax.lax.rsqrt(var + eps)


def _dtype(d):
  return jnp.dtype(d) if isinstance(d, str) else d  # configs name dtypes as strings


class InstanceNorm(nn.Module):
  """Instance normalisation with a learned per-channel affine (scale 1, bias 0 at init).
  Statistics are those of the image itself in training and inference alike. Computed in
  float32 (statistics and affine), returned in x's dtype (a no-op for float32 x)."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    y = instance_normalize(x.astype(jnp.float32), self.eps) * scale + bias
    return y.astype(x.dtype)


def reflect_pad(x, p: int):
  # Reflect needs p < size; tiny maps (coarse scales of small images) fall back to edge.
  valid = buckets.valid_size(x)
  if valid is None:
    mode = "reflect" if min(x.shape[1], x.shape[2]) > p else "edge"
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=mode)
  if p == 0:
    return x
  # In a shape bucket: the same gather, mirrored at the valid border (the image's), not at
  # the bucket's; the padded map's positions past the valid size + p are left over.
  edge = jnp.minimum(*valid) <= p

  def index(big, n):
    i = jnp.arange(big + 2 * p) - p
    r = jnp.abs(i)
    r = jnp.where(r > n - 1, 2 * (n - 1) - r, r)
    return jnp.clip(jnp.where(edge, jnp.clip(i, 0, n - 1), r), 0, big - 1)

  return x[:, index(x.shape[1], valid[0])][:, :, index(x.shape[2], valid[1])]


class PaddedConv(nn.Conv):
  """nn.Conv on a map the model padded itself (`reflect_pad`): inside a shape bucket its
  input is already right (and larger than the resolution it stands for), so the bucket's
  interceptor does not mask it. Same parameters as nn.Conv."""
  unmasked_in_region = True


class ConvLayer(nn.Module):
  """Reflect pad (unless `pad` is False: an unpadded conv), conv (stride s), then
  optionally instance norm and ReLU."""
  features: int
  kernel: int
  stride: int = 1
  norm: bool = True
  relu: bool = True
  pad: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = PaddedConv(self.features, (self.kernel, self.kernel), strides=self.stride,
                   padding="VALID", dtype=_dtype(self.dtype),
                   param_dtype=_dtype(self.param_dtype), name="conv")(
                       reflect_pad(x, self.kernel // 2) if self.pad else x)
    if self.norm:
      x = InstanceNorm(name="norm")(x)
    return nn.relu(x) if self.relu else x


def resize_nearest(x, size: tuple[int, int]):
  valid = buckets.valid_size(x)
  if valid is None:
    return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), "nearest")
  # In a shape bucket: jax.image.resize's own float32 map (i + 0.5) * m / n -> floor, for the
  # valid sizes m (in) and n (out); a dimension of equal sizes maps i -> i as resize skips it.
  out = buckets.valid_extent(*size)
  for axis in (1, 2):
    if x.shape[axis] == size[axis - 1]:
      continue
    m, n = valid[axis - 1], out[axis - 1]
    src = ((jnp.arange(size[axis - 1], dtype=jnp.float32) + 0.5) * m.astype(jnp.float32)
           / n.astype(jnp.float32))
    src = jnp.clip(jnp.floor(src).astype(jnp.int32), 0, x.shape[axis] - 1)
    x = jnp.take(x, src, axis=axis)
  return x


def _linear_weights(big_in: int, big_out: int, m, n):
  """jax.image.resize's antialiased linear weight matrix (big_in, big_out) for traced valid
  sizes m -> n (its compute_weight_mat, float32 throughout): rows past m are zero, so the
  normalisation sums the same weights; columns past n are left over."""
  f32 = jnp.float32
  inv = m.astype(f32) / n.astype(f32)  # = float32(1 / (n / m)), as resize's float64 rounds
  kernel_scale = jnp.maximum(inv, 1.0)
  sample_f = (jnp.arange(big_out, dtype=f32) + 0.5) * inv - 0.5
  x = jnp.abs(sample_f[None, :] - jnp.arange(big_in, dtype=f32)[:, None]) / kernel_scale
  w = jnp.maximum(0, 1 - jnp.abs(x))
  w = jnp.where(jnp.arange(big_in)[:, None] < m, w, 0)
  total = jnp.sum(w, axis=0, keepdims=True)
  w = jnp.where(jnp.abs(total) > 1000. * float(np.finfo(np.float32).eps),
                jnp.divide(w, jnp.where(total != 0, total, 1)), 0)
  inside = (sample_f >= -0.5) & (sample_f <= m.astype(f32) - 0.5)
  return jnp.where(inside[None, :], w, 0)


def _mul3(a, b, c):
  """a * b * c exactly for int32 0 <= a, b, c < 2**14, as (hi, lo) = hi * 2**15 + lo."""
  ab = a * b
  hi, lo = (ab >> 15) * c, (ab & 0x7FFF) * c
  return hi + (lo >> 15), lo & 0x7FFF


def _add_le(x, y, u, v):
  """x + y <= u + v for (hi, lo) numbers of `_mul3`."""
  def add(p, q):
    lo = p[1] + q[1]
    return p[0] + q[0] + (lo >> 15), lo & 0x7FFF
  a, b = add(x, y), add(u, v)
  return (a[0] < b[0]) | ((a[0] == b[0]) & (a[1] <= b[1]))


def resize_linear(x, size: tuple[int, int]):
  """jax.image.resize(x, size, "linear", antialias=True); in a shape bucket, the same
  numbers for the valid sizes (see `bucketable` for the sizes where that holds)."""
  valid = buckets.valid_size(x)
  if valid is None:
    return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), "linear", antialias=True)
  (mh, mw), (nh, nw) = valid, buckets.valid_extent(*size)
  a = _linear_weights(x.shape[1], size[0], mh, nh)
  b = _linear_weights(x.shape[2], size[1], mw, nw)
  # resize is one einsum, whose contraction order opt_einsum picks from the true sizes'
  # cost: rows first when mh*mw*nh + mw*nh*nw <= mh*mw*nw + mh*nh*nw (ties: rows), else
  # columns first (an outer product of the two weight matrices first only for sides of 1
  # to 5 at a scale: `bucketable` keeps those on the per-size path). Both orders, and the
  # one the unpadded resize takes.
  spec = (x, [0, 1, 2, 3], a, [1, 4], b, [2, 5], [0, 4, 5, 3])
  hi = jax.lax.Precision.HIGHEST
  rows = jnp.einsum(*spec, precision=hi, optimize=[(0, 1), (0, 1)])
  cols = jnp.einsum(*spec, precision=hi, optimize=[(0, 2), (0, 1)])
  rows_first = _add_le(_mul3(mh, mw, nh), _mul3(mw, nh, nw), _mul3(mh, mw, nw),
                       _mul3(mh, nh, nw))
  return jnp.where(rows_first, rows, cols)


def _uniform(key, shape):
  """jax.random.uniform(key, shape); in a shape bucket, the values the valid shape draws
  (the flat stream of the valid shape, laid out in the bucket) at its valid positions."""
  valid = buckets.valid_extent(shape[1], shape[2])
  if valid is None:
    return jax.random.uniform(key, shape)
  n, big_h, big_w, c = shape
  flat = jax.random.uniform(key, (n * big_h * big_w * c,))
  b, i, j, ch = jnp.meshgrid(*(jnp.arange(d) for d in shape), indexing="ij")
  hv, wv = valid
  return flat[jnp.clip(((b * hv + i) * wv + j) * c + ch, 0, flat.shape[0] - 1)]


def _check_bucket(x, multiple: int, name: str):
  """Inside a shape bucket the bucket must be a multiple of the network's total stride."""
  if buckets.valid_size(x) is not None and (x.shape[1] % multiple or x.shape[2] % multiple):
    raise ValueError(f"{name}: a shape bucket of {x.shape[1]}x{x.shape[2]} is not a "
                     f"multiple of {multiple} (the total stride)")


class JohnsonBlock(nn.Module):
  """A "same"-padded residual block of Johnson's network; its convolutions "a" and "b" sit
  flat in the parent as `res{i}_a`, `res{i}_b` (mapped by `scan.repeat`)."""
  features: int
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    r = ConvLayer(self.features, 3, name="a", **dt)(h)
    return h + ConvLayer(self.features, 3, relu=False, name="b", **dt)(r)


class Johnson(nn.Module):
  """Image transformation network; NHWC RGB in [0, 1] -> same size, RGB in [0, 1].

  padding "valid" is the paper's (Johnson et al.'s supplementary material): the input is
  reflection-padded by 8 px per residual block (40 for five), the residual blocks'
  convolutions are unpadded and each block crops its shortcut by 2 px, so the trunk comes
  back to a quarter of the image. "same" (the default, what older workdirs hold)
  reflection-pads every convolution. Either way the decoder resizes to the image's own
  sizes (odd ones too). Shape buckets take "same" only (`bucketable`)."""
  width: int = 32          # c9s1-{width}, d{2w}, d{4w}, residual blocks of 4w
  num_residual: int = 5
  padding: str = "same"
  scan: bool = True        # "same": the residual blocks scanned (jaxvision.core.scan)
  remat: bool = False
  dtype: Any = None        # compute dtype (see the module docstring); None: float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    if x.ndim != 4:
      raise ValueError(f"johnson expects NHWC input, got shape {x.shape}")
    if self.padding not in ("same", "valid"):
      raise ValueError(f"johnson: padding must be 'same' or 'valid', got {self.padding!r}")
    valid = self.padding == "valid"
    _check_bucket(x, 4, "johnson")
    w = self.width
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = x.astype(jnp.float32)
    # the decoder's targets: the encoder's map sizes, of the image itself (not its padding)
    targets = [x.shape[1:3], tuple(-(-n // 2) for n in x.shape[1:3])]
    if valid:
      h = reflect_pad(h, 8 * self.num_residual)
    h = ConvLayer(w, 9, name="c9s1", **dt)(h)
    if not valid:
      targets[0] = h.shape[1:3]
    h = ConvLayer(2 * w, 3, 2, name="d1", **dt)(h)
    if not valid:
      targets[1] = h.shape[1:3]
    h = ConvLayer(4 * w, 3, 2, name="d2", **dt)(h)
    if valid or not self.scan:  # each block crops its shortcut: shapes differ, no scan
      for i in range(self.num_residual):
        r = ConvLayer(4 * w, 3, pad=not valid, name=f"res{i}_a", **dt)(h)
        r = ConvLayer(4 * w, 3, relu=False, pad=not valid, name=f"res{i}_b", **dt)(r)
        h = (h[:, 2:-2, 2:-2] if valid else h) + r
    else:
      h = scan.repeat(self, JohnsonBlock, dict(features=4 * w, **dt),
                      [{"a": f"res{i}_a", "b": f"res{i}_b"} for i in range(self.num_residual)],
                      h, remat=self.remat)
    h = ConvLayer(2 * w, 3, name="u1", **dt)(resize_nearest(h, targets[1]))
    h = ConvLayer(w, 3, name="u2", **dt)(resize_nearest(h, targets[0]))
    y = ConvLayer(3, 9, norm=False, relu=False, name="out", **dt)(h)
    return 0.5 * (jnp.tanh(y.astype(jnp.float32)) + 1.0)


@register_model("johnson")
def johnson(**kwargs) -> Johnson:
  return Johnson(**kwargs)


# ---------------------------------------------------------------- texture networks
def pyramid_sizes(h: int, w: int, scales: int) -> list[tuple[int, int]]:
  """(H, W), (ceil(H/2), ceil(W/2)), ... : one size per scale, finest first."""
  out = [(h, w)]
  for _ in range(scales - 1):
    h, w = -(-h // 2), -(-w // 2)
    out.append((h, w))
  return out


class ConvBlock(nn.Module):
  """Ulyanov's conv block: 3x3, 3x3, 1x1 convolutions, each normalised + LeakyReLU."""
  features: int
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i, k in enumerate((3, 3, 1)):
      x = PaddedConv(self.features, (k, k), padding="VALID", dtype=_dtype(self.dtype),
                     param_dtype=_dtype(self.param_dtype), name=f"conv{i}")(
          reflect_pad(x, k // 2))
      x = nn.leaky_relu(InstanceNorm(name=f"norm{i}")(x), 0.01)
    return x


class TextureNet(nn.Module):
  """Multi-scale generator. `image_input=False`: texture synthesis (x gives only the
  output size); True: stylisation (each scale sees the image downsampled to it).

  Noise: `noise` (a list of (N, h_k, w_k, noise_channels), finest first) when given, else
  uniform noise from the "noise" rng, else (e.g. in `init`) from a fixed key.
  Normalisation is instance norm (Ulyanov et al.'s later finding; the 2016 paper used
  batch norm), so training and inference behave alike."""
  scales: int = 5
  width: int = 8            # channels per conv block; the join of k blocks has k * width
  noise_channels: int = 3
  image_input: bool = True
  dtype: Any = None         # compute dtype (see the module docstring); None: float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, noise=None, train: bool = False):
    del train
    if x.ndim != 4:
      raise ValueError(f"texture_net expects NHWC input, got shape {x.shape}")
    n = x.shape[0]
    _check_bucket(x, 2 ** (self.scales - 1), "texture_net")
    sizes = pyramid_sizes(x.shape[1], x.shape[2], self.scales)
    if noise is None:
      key = self.make_rng("noise") if self.has_rng("noise") else jax.random.key(0, impl="rbg")
      keys = jax.random.split(key, self.scales)
      noise = [_uniform(k, (n, *s, self.noise_channels)) for k, s in zip(keys, sizes)]
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = None
    for k in reversed(range(self.scales)):  # coarsest first
      inp = noise[k]
      if self.image_input:
        img = x.astype(jnp.float32)
        if k:
          img = resize_linear(img, sizes[k])
        inp = jnp.concatenate([inp, img], axis=-1)
      b = ConvBlock(self.width, name=f"block{k}", **dt)(inp)
      if h is None:
        h = b
      else:  # join: upsample the coarser result, normalise both, concatenate, conv block
        j = jnp.concatenate([InstanceNorm(name=f"join{k}_a")(resize_nearest(h, sizes[k])),
                             InstanceNorm(name=f"join{k}_b")(b)], axis=-1)
        h = ConvBlock(j.shape[-1], name=f"joined{k}", **dt)(j)
    y = nn.Conv(3, (1, 1), dtype=_dtype(self.dtype), param_dtype=_dtype(self.param_dtype),
                name="out")(h)
    return 0.5 * (jnp.tanh(y.astype(jnp.float32)) + 1.0)


@register_model("texture_net")
def texture_net(**kwargs) -> TextureNet:
  return TextureNet(**kwargs)


# ---------------------------------------------------------------- shape buckets
def bucket_multiple(model) -> int:
  """The side multiple of `model`'s shape buckets: its total stride, at least 32 (the
  jaxvision.core.buckets ladder)."""
  stride = 2 ** (model.scales - 1) if isinstance(model, TextureNet) else 4
  return max(32, stride)


def bucketable(model, h: int, w: int) -> bool:
  """Whether an h x w image runs in a shape bucket with the unpadded output. Johnson: any
  size. TextureNet: both sides > 2**(scales - 1) (no pyramid level with a side of 1, where
  jax.image.resize would contract its weights in another order) and < 2**14 (the exact
  int32 cost comparison of `resize_linear`); other sizes take the per-size path."""
  if isinstance(model, TextureNet):
    return 2 ** (model.scales - 1) < min(h, w) and max(h, w) < 2 ** 14
  if isinstance(model, Johnson):  # the paper's unpadded trunk changes sizes additively
    return model.padding == "same"
  return True
