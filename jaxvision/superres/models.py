"""Single-image super-resolution networks: ESPCN, EDSR, WDSR-A/B, RCAN, Johnson et al.

Every model maps a low-resolution RGB batch (N, h, w, 3) in [0, 1] to (N, s*h, s*w, 3)
for its `scale` s, any h and w (odd sizes included):

  espcn          Shi et al. 2016: conv5-64 tanh, conv3-32 tanh, conv3 -> 3*s^2, pixel shuffle
  edsr_baseline  Lim et al. 2017: 16 residual blocks of 64 channels, residual scale 1
  edsr           32 residual blocks of 256 channels, residual scale 0.1
  wdsr_a, wdsr_b Yu et al. 2018: wide activation before the ReLU (x4 / x6 with a linear
                 low-rank 1x1 in B), weight normalisation, a 5x5 global skip branch
  rcan           Zhang et al. 2018: residual groups of residual channel-attention blocks
                 (channel attention = `jaxvision.core.layers.SqueezeExcite`)
  johnson_sr     Johnson et al. 2016 perceptual SR (x4, x8): conv9-64, 4 residual blocks
                 with batch norm, log2(s) stride-1/2 convolutions, conv9-3, scaled tanh

EDSR, WDSR and RCAN follow the EDSR-PyTorch code they were released in: pixel values
on a 0..`rgb_range` (255) scale, the DIV2K RGB mean subtracted at the input and added
back at the output (`MeanShift`), and PyTorch's `PixelShuffle` channel order, so
converted PyTorch weights (jaxvision.superres.convert.convert_edsr) give the same numbers.
Parameter names follow the PyTorch keys with "." -> "_" (`head_0`, `body_3`, `tail_0_2`).

`receptive_radius()` is the context, in low-resolution pixels, that one output pixel
sees (conservative); `local` says whether the network is a local operator at inference
(RCAN is not: channel attention pools the whole image), which makes tiled inference
exact (jaxvision.superres.eval.upscale).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxvision.core import buckets, layers, scan
from jaxvision.core.metrics import rgb_to_ycbcr, ycbcr_to_rgb
from jaxvision.core.registry import register_model
from jaxvision.superres.resize import contributions

# DIV2K training-set RGB mean on [0, 1] (EDSR-PyTorch `rgb_mean`).
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
SCALES = (2, 3, 4)


def pixel_shuffle(x: jnp.ndarray, r: int) -> jnp.ndarray:
  """Depth to space in PyTorch PixelShuffle order, NHWC.

  out[n, h*r + i, w*r + j, c] = x[n, h, w, c*r*r + i*r + j], so a PyTorch sub-pixel
  convolution's kernel works here after the usual (O,I,kh,kw) -> (kh,kw,I,O) transpose.
  """
  n, h, w, cr2 = x.shape
  if cr2 % (r * r):
    raise ValueError(f"pixel_shuffle: {cr2} channels are not divisible by {r}^2")
  c = cr2 // (r * r)
  x = x.reshape(n, h, w, c, r, r)
  x = x.transpose(0, 1, 4, 2, 5, 3)  # n, h, i, w, j, c
  return x.reshape(n, h * r, w * r, c)


def _check_scale(name: str, scale, allowed=SCALES) -> int:
  if scale not in allowed:
    raise ValueError(f"{name}: scale must be one of {', '.join(map(str, allowed))}, got {scale!r}")
  return int(scale)


def _dtype(d):
  return jnp.dtype(d) if isinstance(d, str) else d


def _conv(features, k, dtype, name, param_dtype=jnp.float32, **kw):
  return nn.Conv(features, (k, k), padding="SAME", dtype=dtype, param_dtype=param_dtype,
                 name=name, conv_general_dilated=layers.conv_general_dilated, **kw)


def _mean(rgb_range: float) -> jnp.ndarray:
  return jnp.asarray(DIV2K_RGB_MEAN, jnp.float32) * rgb_range


def _upsampler_convs(scale: int) -> list[int]:
  """EDSR's Upsampler: one conv + shuffle(3) for x3, log2(s) conv + shuffle(2) otherwise."""
  if scale == 3:
    return [3]
  if scale & (scale - 1) == 0:
    return [2] * int(math.log2(scale))
  raise ValueError(f"upsampler: scale {scale} is neither 3 nor a power of 2")


class Upsampler(nn.Module):
  """Sequential [conv F->r^2 F, PixelShuffle(r)]*: PyTorch indices 0, 2, 4... are the convs."""

  features: int
  scale: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i, r in enumerate(_upsampler_convs(self.scale)):
      x = _conv(self.features * r * r, 3, self.dtype, f"{2 * i}", self.param_dtype)(x)
      x = pixel_shuffle(x, r)
    return x


def _bicubic_matrix(n: int, scale: int) -> np.ndarray:
  """The (n*scale, n) float32 matrix of MATLAB bicubic x`scale` (symmetric borders), summed
  in float64 as the index/weight tables give it."""
  w, idx = contributions(n, n * scale, float(scale))
  m = np.zeros((n * scale, n), np.float64)
  np.add.at(m, (np.repeat(np.arange(n * scale), w.shape[1]), idx.ravel()), w.ravel())
  return m.astype(np.float32)


# The matrix of a size-n axis inside a bigger bucket: rows of input pixels < n - _EDGE_ROWS
# do not reach the bottom border (4 taps, at most 2 pixels away) and are the bucket's own;
# the last _EDGE_ROWS input pixels' rows, over the last _EDGE_COLS columns, are the same
# block for every n >= _SMALL (mirroring at the bottom border only); smaller n: a table.
_EDGE_ROWS, _EDGE_COLS, _SMALL = 4, 8, 12


def _bicubic_matrix_region(n, big: int, scale: int):
  """`_bicubic_matrix(n, scale)` zero-padded to (big*scale, big) for a traced size n <= big
  (an image in a shape bucket): the same float32 entries, so the same products."""
  import jax

  s = scale
  if big < 2 * _SMALL:  # small buckets: the matrix of every size, picked by n
    table = np.zeros((big + 1, big * s, big), np.float32)
    for k in range(1, big + 1):
      table[k, :k * s, :k] = _bicubic_matrix(k, s)
    return jnp.asarray(table)[jnp.clip(n, 0, big)]
  rows = jnp.arange(big * s)[:, None]
  r0 = (n - _EDGE_ROWS) * s
  block = _bicubic_matrix(_SMALL, s)[(_SMALL - _EDGE_ROWS) * s:, _SMALL - _EDGE_COLS:]
  edge = jax.lax.dynamic_update_slice(jnp.zeros((big * s, big), jnp.float32),
                                      jnp.asarray(block), (r0, n - _EDGE_COLS))
  general = jnp.where(rows < r0, jnp.asarray(_bicubic_matrix(big, s)), edge)
  table = np.zeros((_SMALL, _SMALL * s, _SMALL), np.float32)
  for k in range(1, _SMALL):
    table[k, :k * s, :k] = _bicubic_matrix(k, s)
  small = jnp.pad(jnp.asarray(table)[jnp.clip(n, 0, _SMALL - 1)],
                  ((0, (big - _SMALL) * s), (0, big - _SMALL)))
  return jnp.where(n < _SMALL, small, general)


def bicubic_upscale(x: jnp.ndarray, scale: int) -> jnp.ndarray:
  """MATLAB-style bicubic x`scale` upscaling of NHWC `x` (symmetric borders), as two
  matrix products with the index/weight tables of jaxvision.superres.resize.contributions
  (built at trace time for the static input size). Local: 2 pixels of context.

  Inside a shape bucket (jaxvision.core.buckets) the borders mirror at the image's valid
  size, not at the bucket's: the matrices are built for the traced size."""
  valid = buckets.valid_size(x)

  def matrix(axis):
    if valid is None:
      return jnp.asarray(_bicubic_matrix(x.shape[axis], scale))
    return _bicubic_matrix_region(valid[axis - 1], x.shape[axis], scale)

  x = x.astype(jnp.float32)
  y = jnp.einsum("oh,nhwc->nowc", matrix(1), x, precision="highest")
  return jnp.einsum("pw,nowc->nopc", matrix(2), y, precision="highest")


# ---------------------------------------------------------------- ESPCN
class ESPCN(nn.Module):
  """Shi et al. 2016. `channels="y"` is the paper's: the network works on the BT.601 luma
  (as MATLAB's rgb2ycbcr) and Cb/Cr are upscaled bicubically; "rgb" (the default, what
  older workdirs hold) maps RGB to RGB. `residual=True` (not in the paper) adds the bicubic
  upscale of the input and starts the last layer at zero, so the untrained network is
  bicubic: short CPU runs then beat the bicubic baseline within tens of steps."""

  scale: int = 2
  features: tuple[int, int] = (64, 32)
  residual: bool = False
  channels: str = "rgb"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  local = True

  def receptive_radius(self) -> int:
    return 2 + 1 + 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    if self.channels not in ("rgb", "y"):
      raise ValueError(f"espcn: channels must be 'rgb' or 'y', got {self.channels!r}")
    if self.channels == "y":  # the net on Y; Cb, Cr (and the residual's Y) bicubic
      ycc = rgb_to_ycbcr(x.astype(jnp.float32))
      up = bicubic_upscale(ycc, self.scale)
      y = self._net(ycc[..., :1])
      if self.residual:
        y = y + up[..., :1]
      return ycbcr_to_rgb(jnp.concatenate([y, up[..., 1:]], axis=-1))
    y = self._net(x)
    return y + bicubic_upscale(x, self.scale) if self.residual else y

  def _net(self, x):
    dt, pdt = self.dtype, self.param_dtype
    h = x.astype(dt)
    h = jnp.tanh(_conv(self.features[0], 5, dt, "conv1", pdt)(h))
    h = jnp.tanh(_conv(self.features[1], 3, dt, "conv2", pdt)(h))
    init = nn.initializers.zeros if self.residual else nn.initializers.lecun_normal()
    h = _conv(x.shape[-1] * self.scale ** 2, 3, dt, "conv3", pdt, kernel_init=init)(h)
    return pixel_shuffle(h, self.scale).astype(jnp.float32)


# ---------------------------------------------------------------- EDSR
class ResBlock(nn.Module):
  """conv-ReLU-conv, scaled, plus the input (no batch norm: EDSR's point)."""

  features: int
  res_scale: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.relu(_conv(self.features, 3, self.dtype, "body_0", self.param_dtype)(x))
    h = _conv(self.features, 3, self.dtype, "body_2", self.param_dtype)(h)
    return x + h * self.res_scale


class EDSR(nn.Module):
  scale: int = 2
  n_resblocks: int = 16
  n_feats: int = 64
  res_scale: float = 1.0
  rgb_range: float = 255.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scan: bool = True    # the residual blocks as one scanned loop (jaxvision.core.scan)
  remat: bool = False  # recompute the blocks' activations in the backward pass
  local = True

  def receptive_radius(self) -> int:
    return 1 + 2 * self.n_resblocks + 1 + len(_upsampler_convs(self.scale)) + 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    mean = _mean(self.rgb_range)
    dt, pdt = self.dtype, self.param_dtype
    h = (x.astype(jnp.float32) * self.rgb_range - mean).astype(dt)
    h = _conv(self.n_feats, 3, dt, "head_0", pdt)(h)
    res = scan.repeat(self, ResBlock, dict(features=self.n_feats, res_scale=self.res_scale,
                                           dtype=dt, param_dtype=pdt),
                      [f"body_{i}" for i in range(self.n_resblocks)], h,
                      scan=self.scan, remat=self.remat)
    res = _conv(self.n_feats, 3, dt, f"body_{self.n_resblocks}", pdt)(res)
    h = Upsampler(self.n_feats, self.scale, dt, pdt, name="tail_0")(res + h)
    h = _conv(3, 3, dt, "tail_1", pdt)(h)
    return (h.astype(jnp.float32) + mean) / self.rgb_range


# ---------------------------------------------------------------- WDSR
class WNConv(nn.Module):
  """Weight-normalised conv (Salimans & Kingma 2016): w = g * v / ||v||, per output channel.

  g starts at ||v|| so the initial kernel is v (PyTorch's weight_norm does the same)."""

  features: int
  kernel: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    shape = (self.kernel, self.kernel, x.shape[-1], self.features)
    v = self.param("v", nn.initializers.lecun_normal(), shape, self.param_dtype)
    norm = lambda a: jnp.sqrt(jnp.sum(a * a, axis=(0, 1, 2)))
    g = self.param("g", lambda _: norm(v))  # v's dtype (param_dtype)
    b = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    w = v * (g / jnp.maximum(norm(v), 1e-12))
    x = buckets.apply_mask(x)  # no nn.Conv: zero the padding of a shape bucket here
    y = layers.conv_general_dilated(x.astype(self.dtype), w.astype(self.dtype), (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + b.astype(self.dtype)


class WDSRBlock(nn.Module):
  """One WDSR residual block; its convs "0", "1" (B only), "2" sit flat in the parent as
  `body_{i}_0`, `body_{i}_1`, `body_{i}_2` (the PyTorch keys), mapped by `scan.repeat`."""

  kind: str
  features: int
  expansion: int
  linear: float
  res_scale: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    f, dt, pdt = self.features, self.dtype, self.param_dtype
    r = nn.relu(WNConv(f * self.expansion, 3 if self.kind == "a" else 1, dtype=dt,
                       param_dtype=pdt, name="0")(h))
    if self.kind == "b":
      r = WNConv(int(f * self.linear), 1, dtype=dt, param_dtype=pdt, name="1")(r)
    r = WNConv(f, 3, dtype=dt, param_dtype=pdt, name="2")(r)
    return h + r * self.res_scale


class WDSR(nn.Module):
  """WDSR-A (`kind="a"`) or WDSR-B (`kind="b"`), as in JiahuiYu/wdsr_ntire2018."""

  scale: int = 2
  kind: str = "a"
  n_resblocks: int = 16
  n_feats: int = 32
  expansion: int | None = None  # a: 4, b: 6
  linear: float = 0.8           # b: low-rank 1x1 width as a fraction of n_feats
  res_scale: float = 1.0
  rgb_range: float = 255.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scan: bool = True
  remat: bool = False
  local = True

  def receptive_radius(self) -> int:
    per_block = 2 if self.kind == "a" else 1
    return max(1 + per_block * self.n_resblocks + 1, 2)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    s, f, dt, pdt = self.scale, self.n_feats, self.dtype, self.param_dtype
    if self.kind not in ("a", "b"):
      raise ValueError(f"wdsr kind must be 'a' or 'b', got {self.kind!r}")
    expansion = self.expansion or (4 if self.kind == "a" else 6)
    mean = _mean(self.rgb_range)
    half = self.rgb_range / 2  # WDSR normalises to about [-1, 1]
    h0 = ((x.astype(jnp.float32) * self.rgb_range - mean) / half).astype(dt)
    h = WNConv(f, 3, dtype=dt, param_dtype=pdt, name="head")(h0)
    convs = ("0", "1", "2") if self.kind == "b" else ("0", "2")
    if self.scan:
      h = scan.repeat(self, WDSRBlock, dict(kind=self.kind, features=f, expansion=expansion,
                                            linear=self.linear, res_scale=self.res_scale,
                                            dtype=dt, param_dtype=pdt),
                      [{c: f"body_{i}_{c}" for c in convs} for i in range(self.n_resblocks)],
                      h, remat=self.remat)
    for i in range(0 if self.scan else self.n_resblocks):  # the unrolled reference
      r = nn.relu(WNConv(f * expansion, 3 if self.kind == "a" else 1, dtype=dt,
                         param_dtype=pdt, name=f"body_{i}_0")(h))
      if self.kind == "b":
        r = WNConv(int(f * self.linear), 1, dtype=dt, param_dtype=pdt, name=f"body_{i}_1")(r)
      r = WNConv(f, 3, dtype=dt, param_dtype=pdt, name=f"body_{i}_2")(r)
      h = h + r * self.res_scale
    y = pixel_shuffle(WNConv(3 * s * s, 3, dtype=dt, param_dtype=pdt, name="tail")(h), s)
    y = y + pixel_shuffle(WNConv(3 * s * s, 5, dtype=dt, param_dtype=pdt, name="skip")(h0), s)
    return (y.astype(jnp.float32) * half + mean) / self.rgb_range


# ---------------------------------------------------------------- RCAN
class RCAB(nn.Module):
  """Residual channel-attention block: conv-ReLU-conv-SE, plus the input."""

  features: int
  reduction: int = 16
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.relu(_conv(self.features, 3, self.dtype, "body_0", self.param_dtype)(x))
    h = _conv(self.features, 3, self.dtype, "body_2", self.param_dtype)(h)
    h = layers.SqueezeExcite(self.reduction, dtype=self.dtype, param_dtype=self.param_dtype,
                             name="ca")(h)
    return x + h


class ResidualGroup(nn.Module):
  features: int
  n_resblocks: int
  reduction: int = 16
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scan: bool = True
  remat: bool = False

  @nn.compact
  def __call__(self, x):
    h = scan.repeat(self, RCAB, dict(features=self.features, reduction=self.reduction,
                                     dtype=self.dtype, param_dtype=self.param_dtype),
                    [f"body_{i}" for i in range(self.n_resblocks)], x,
                    scan=self.scan, remat=self.remat)
    return x + _conv(self.features, 3, self.dtype, f"body_{self.n_resblocks}",
                     self.param_dtype)(h)


class RCAN(nn.Module):
  scale: int = 2
  n_resgroups: int = 10
  n_resblocks: int = 20
  n_feats: int = 64
  reduction: int = 16
  rgb_range: float = 255.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scan: bool = True    # groups and blocks as nested scanned loops (jaxvision.core.scan)
  remat: bool = False  # recompute each block's activations in the backward pass
  local = False  # channel attention averages over the whole image

  def receptive_radius(self) -> int:
    return 1 + self.n_resgroups * (2 * self.n_resblocks + 1) + 1 + \
        len(_upsampler_convs(self.scale)) + 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    mean = _mean(self.rgb_range)
    dt, pdt = self.dtype, self.param_dtype
    h = (x.astype(jnp.float32) * self.rgb_range - mean).astype(dt)
    h = _conv(self.n_feats, 3, dt, "head_0", pdt)(h)
    group = dict(features=self.n_feats, n_resblocks=self.n_resblocks, reduction=self.reduction,
                 dtype=dt, param_dtype=pdt, scan=self.scan, remat=self.remat)
    # remat on the blocks inside the groups, not again on the groups
    res = scan.repeat(self, ResidualGroup, group, [f"body_{g}" for g in range(self.n_resgroups)],
                      h, scan=self.scan)
    res = _conv(self.n_feats, 3, dt, f"body_{self.n_resgroups}", pdt)(res)
    h = Upsampler(self.n_feats, self.scale, dt, pdt, name="tail_0")(res + h)
    h = _conv(3, 3, dt, "tail_1", pdt)(h)
    return (h.astype(jnp.float32) + mean) / self.rgb_range


# ---------------------------------------------------------------- Johnson et al.
class JohnsonSR(nn.Module):
  """Perceptual-loss SR network (Johnson, Alahi, Fei-Fei 2016, supplementary): batch norm,
  ReLU, stride-1/2 (transposed) 3x3 convolutions, output (tanh + 1) / 2 in [0, 1]."""

  scale: int = 4
  features: int = 64
  n_resblocks: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32  # BN's running mean/var stay float32 whatever (flax's)
  local = True  # batch norm uses running averages at inference

  def receptive_radius(self) -> int:
    return 4 + 2 * self.n_resblocks + int(math.log2(self.scale)) + 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    f, dt, pdt = self.features, self.dtype, self.param_dtype
    bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=dt,
                                   param_dtype=pdt, name=name)
    h = x.astype(dt) * 2.0 - 1.0
    h = nn.relu(bn("bn_in")(_conv(f, 9, dt, "conv_in", pdt)(h)))
    for i in range(self.n_resblocks):
      r = nn.relu(bn(f"res{i}_bn1")(_conv(f, 3, dt, f"res{i}_conv1", pdt)(h)))
      h = h + bn(f"res{i}_bn2")(_conv(f, 3, dt, f"res{i}_conv2", pdt)(r))
    for i in range(int(math.log2(self.scale))):
      h = nn.ConvTranspose(f, (3, 3), strides=(2, 2), padding="SAME", dtype=dt,
                           param_dtype=pdt, name=f"up{i}")(h)
      h = nn.relu(bn(f"up{i}_bn")(h))
    h = _conv(3, 9, dt, "conv_out", pdt)(h)
    return (jnp.tanh(h.astype(jnp.float32)) + 1.0) / 2.0


# ---------------------------------------------------------------- registry
def _kw(kwargs):
  kw = dict(kwargs)
  for k in ("dtype", "param_dtype"):  # configs name dtypes as strings
    if k in kw:
      kw[k] = _dtype(kw[k])
  return kw


@register_model("espcn")
def espcn(scale: int = 2, **kwargs) -> ESPCN:
  kw = _kw(kwargs)
  if "features" in kw:
    kw["features"] = tuple(kw["features"])
  return ESPCN(scale=_check_scale("espcn", scale), **kw)


@register_model("edsr_baseline")
def edsr_baseline(scale: int = 2, **kwargs) -> EDSR:
  kw = {"n_resblocks": 16, "n_feats": 64, "res_scale": 1.0, **_kw(kwargs)}
  return EDSR(scale=_check_scale("edsr_baseline", scale), **kw)


@register_model("edsr")
def edsr(scale: int = 2, **kwargs) -> EDSR:
  kw = {"n_resblocks": 32, "n_feats": 256, "res_scale": 0.1, **_kw(kwargs)}
  return EDSR(scale=_check_scale("edsr", scale), **kw)


@register_model("wdsr_a")
def wdsr_a(scale: int = 2, **kwargs) -> WDSR:
  kw = {"n_resblocks": 16, "n_feats": 32, **_kw(kwargs)}
  return WDSR(scale=_check_scale("wdsr_a", scale), kind="a", **kw)


@register_model("wdsr_b")
def wdsr_b(scale: int = 2, **kwargs) -> WDSR:
  kw = {"n_resblocks": 16, "n_feats": 32, **_kw(kwargs)}
  return WDSR(scale=_check_scale("wdsr_b", scale), kind="b", **kw)


@register_model("rcan")
def rcan(scale: int = 2, **kwargs) -> RCAN:
  return RCAN(scale=_check_scale("rcan", scale), **_kw(kwargs))


@register_model("johnson_sr")
def johnson_sr(scale: int = 4, **kwargs) -> JohnsonSR:
  return JohnsonSR(scale=_check_scale("johnson_sr", scale, (4, 8)), **_kw(kwargs))


SR_MODELS = ("espcn", "edsr_baseline", "edsr", "wdsr_a", "wdsr_b", "rcan", "johnson_sr")

