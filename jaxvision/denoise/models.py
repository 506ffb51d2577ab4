"""Denoising networks: DnCNN (Zhang et al. 2017), the Noise2Noise U-Net (Lehtinen et al. 2018)
and the SID U-Net (Chen et al. 2018).

The first two map a noisy (N, H, W, C) image in [0, 1] to the denoised image (not clipped).

DnCNN ("Beyond a Gaussian Denoiser: Residual Learning of Deep CNN for Image Denoising",
TIP 2017). `depth` = 17 layers of 3x3 convolutions with 64 channels: Conv+ReLU, then 15 x
Conv+BN+ReLU, then Conv to C channels. Residual learning: the network predicts the noise v
and the output is y - v (the paper's loss is ||R(y) - (y - x)||^2, which equals
||(y - R(y)) - x||^2, so training the returned image against the clean one is the paper's
objective). The convolutions before BN have no bias (BN's shift replaces it), so a grey
DnCNN-S has 556,097 parameters and a colour one 558,403. The receptive field of d layers of
3x3 is (2d+1)^2: 35x35 for d = 17 (the paper's choice for sigma 25). Zero ("SAME") padding,
as the paper's (it notes zero padding does not cause boundary artefacts). Initialisation:
He-normal kernels (the paper's), but the last convolution starts at zero
(`zero_init_last`), so the untrained network is the identity. With a random last layer the
first outputs hold a residual of unit scale (the BN-normalised features times a unit-gain
kernel: loss 0.6 against a noise power of 0.01), and Adam drove the network into a dead,
near-identity state that stayed at the noisy input's PSNR (measured: 20.2 dB after 150
steps at sigma 25, against 27.0 dB with the zero start).

Noise2Noise U-Net (the paper's appendix A.1, table 2): ENC_CONV0, ENC_CONV1, POOL1, then
ENC_CONVk + POOLk for k = 2..5, ENC_CONV6 (all 48 channels); the decoder upsamples by 2
(nearest), concatenates the skip of the same resolution (POOL4 .. POOL1 outputs, then the
input) and applies two convolutions of 96 channels (DEC_CONV5A/B .. 2A/B); DEC_CONV1A/B/C
have 64, 32 and C channels. Every convolution is 3x3, "SAME", followed by leaky ReLU with
slope 0.1, except the last, which is linear. Five 2x2 max pools: sides must be multiples of
32; other sizes are reflect-padded up to one inside the model and the output cropped.
Parameters for C = 3: 991,203 (the sum over table 2 in `tests/denoise/test_models.py`).

SID U-Net ("Learning to See in the Dark", Chen, Chen, Xu, Koltun, CVPR 2018). The input is
the raw Bayer image packed into 4 half-resolution planes (RGGB), black level subtracted and
multiplied by the amplification ratio (the exposure difference, x100 to x300 in the
paper), clipped at 1. Encoder: two 3x3 convolutions per level with 32, 64, 128, 256, 512
channels, leaky ReLU max(x, 0.2x), 2x2 max pools between levels; decoder: a 2x2 stride-2
transposed convolution (no bias) to the next width, concatenated with the encoder's
features of that resolution, two 3x3 convolutions; a 1x1 convolution to 12 channels and
depth-to-space by 2 (TensorFlow's channel order) gives the sRGB image at the full sensor
resolution (the network demosaics, white-balances, colour-corrects, tone-maps and denoises
in one). Parameters: 7,760,268 (counted from the layer list in
tests/denoise/test_models.py). Sides in packed pixels must be multiples of 16; other sizes
are reflect-padded per plane (which keeps every plane one Bayer site) and cropped.

Tiling: DnCNN is a local operator (radius 17 pixels); `receptive_radius()` gives it to the
tiler. The U-Net pools, so its output depends on the 32-pixel grid phase, and its receptive
field is about 158 pixels each side: `receptive_radius()` returns 160 (a multiple of 32)
and `size_multiple` is 32; `jaxvision.denoise.eval.denoise_image` pads an image to a
multiple of 32 and tiles on that grid, so tiles agree with the whole (padded) image.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.core import layers
from jaxvision.core.registry import register_model as register


def _dtype(d):
  return jnp.dtype(d) if isinstance(d, str) else d


class DnCNN(nn.Module):
  """DnCNN-S/B (grey or colour): predicts the noise, returns input - noise."""

  depth: int = 17
  features: int = 64
  channels: int = 3
  residual: bool = True
  bn_momentum: float = 0.9
  zero_init_last: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32  # BN statistics stay float32 whatever `dtype` (flax's)
  size_multiple = 1

  def receptive_radius(self) -> int:
    return int(self.depth)

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4 or x.shape[-1] != self.channels:
      raise ValueError(f"DnCNN expects (N, H, W, {self.channels}) input, got {x.shape}")
    dt, pdt = _dtype(self.dtype), _dtype(self.param_dtype)
    conv = lambda f, name, bias, init=nn.initializers.he_normal(): nn.Conv(  # noqa: E731
        f, (3, 3), padding="SAME", use_bias=bias, dtype=dt, param_dtype=pdt, name=name,
        kernel_init=init, conv_general_dilated=layers.conv_general_dilated)
    h = nn.relu(conv(self.features, "conv1", True)(x.astype(dt)))
    for i in range(2, self.depth):
      h = conv(self.features, f"conv{i}", False)(h)
      h = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                       epsilon=1e-5, dtype=dt, param_dtype=pdt, name=f"bn{i}")(h)
      h = nn.relu(h)
    last_init = nn.initializers.zeros if self.zero_init_last else nn.initializers.he_normal()
    v = conv(self.channels, f"conv{self.depth}", True, last_init)(h).astype(jnp.float32)
    return x.astype(jnp.float32) - v if self.residual else v


def _upsample2(x):
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class N2NUNet(nn.Module):
  """The Noise2Noise U-Net (appendix table 2); any input size (padded to a multiple of 32)."""

  channels: int = 3
  features: int = 48
  negative_slope: float = 0.1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  size_multiple = 32

  def receptive_radius(self) -> int:
    return 160

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no batch statistics
    if x.ndim != 4 or x.shape[-1] != self.channels:
      raise ValueError(f"N2NUNet expects (N, H, W, {self.channels}) input, got {x.shape}")
    dt = _dtype(self.dtype)
    n, h0, w0, _ = x.shape
    ph, pw = -h0 % 32, -w0 % 32
    inp = x.astype(dt)
    if ph or pw:  # reflect where the image allows, edge beyond (tiny inputs)
      mode = "reflect" if min(h0, w0) > max(ph, pw) else "edge"
      inp = jnp.pad(inp, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)
    f, f2 = self.features, 2 * self.features

    def conv(h, c, name, act=True):
      h = nn.Conv(c, (3, 3), padding="SAME", dtype=dt, param_dtype=_dtype(self.param_dtype),
                  name=name, conv_general_dilated=layers.conv_general_dilated)(h)
      return nn.leaky_relu(h, self.negative_slope) if act else h

    pool = lambda h: nn.max_pool(h, (2, 2), strides=(2, 2))  # noqa: E731
    skips = [inp]
    h = conv(inp, f, "enc_conv0")
    h = pool(conv(h, f, "enc_conv1"))
    skips.append(h)                                  # pool1
    for k in range(2, 6):
      h = pool(conv(h, f, f"enc_conv{k}"))
      if k < 5:
        skips.append(h)                              # pool2 .. pool4
    h = conv(h, f, "enc_conv6")
    for k in range(5, 1, -1):
      h = jnp.concatenate([_upsample2(h), skips.pop()], axis=-1)
      h = conv(conv(h, f2, f"dec_conv{k}a"), f2, f"dec_conv{k}b")
    h = jnp.concatenate([_upsample2(h), skips.pop()], axis=-1)
    h = conv(conv(h, 64, "dec_conv1a"), 32, "dec_conv1b")
    y = conv(h, self.channels, "dec_conv1c", act=False).astype(jnp.float32)
    return y[:, :h0, :w0]


def depth_to_space(x, block: int = 2):
  """(N, h, w, b*b*C) -> (N, b*h, b*w, C) in TensorFlow's order (SID's tf.depth_to_space):
  out[y*b + i, x*b + j, c] = in[y, x, (i*b + j)*C + c]."""
  n, h, w, d = x.shape
  c = d // (block * block)
  x = x.reshape(n, h, w, block, block, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h * block, w * block, c)


class SIDUNet(nn.Module):
  """Learning to See in the Dark's U-Net: packed RGGB (N, h, w, 4) -> sRGB (N, 2h, 2w, 3).

  The input is the raw already multiplied by the amplification ratio (the task does it,
  as SID's data code does). Any packed size: reflect-padded to a multiple of 16 (four
  pools) and the output cropped back to (2h, 2w)."""

  features: int = 32
  channels: int = 3
  negative_slope: float = 0.2
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  size_multiple = 16      # in packed (half-resolution) pixels

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no batch statistics
    if x.ndim != 4 or x.shape[-1] != 4:
      raise ValueError(f"SIDUNet expects packed Bayer (N, H/2, W/2, 4) input, got {x.shape}")
    dt, pdt = _dtype(self.dtype), _dtype(self.param_dtype)
    n, h0, w0, _ = x.shape
    m = self.size_multiple
    ph, pw = -h0 % m, -w0 % m
    inp = x.astype(dt)
    if ph or pw:  # each packed plane is one Bayer site: reflecting keeps the phase
      mode = "reflect" if min(h0, w0) > max(ph, pw) else "edge"
      inp = jnp.pad(inp, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)

    def block(h, c, name):
      for k in (1, 2):
        h = nn.Conv(c, (3, 3), padding="SAME", dtype=dt, param_dtype=pdt, name=f"{name}_{k}",
                    conv_general_dilated=layers.conv_general_dilated)(h)
        h = nn.leaky_relu(h, self.negative_slope)
      return h

    widths = [self.features * 2 ** i for i in range(5)]   # 32, 64, 128, 256, 512
    skips, h = [], inp
    for i, c in enumerate(widths[:-1]):
      h = block(h, c, f"conv{i + 1}")
      skips.append(h)
      h = nn.max_pool(h, (2, 2), strides=(2, 2))
    h = block(h, widths[-1], "conv5")
    for i, c in zip(range(6, 10), reversed(widths[:-1])):
      # SID's upsample_and_concat: a 2x2 stride-2 transposed conv without bias (init
      # N(0, 0.02) truncated), then the skip of the same resolution
      h = nn.ConvTranspose(c, (2, 2), strides=(2, 2), use_bias=False, dtype=dt,
                           param_dtype=pdt, kernel_init=nn.initializers.truncated_normal(0.02),
                           name=f"up{i}")(h)
      h = block(jnp.concatenate([h, skips.pop()], axis=-1), c, f"conv{i}")
    y = nn.Conv(4 * self.channels, (1, 1), dtype=dt, param_dtype=pdt,
                name="conv10")(h).astype(jnp.float32)
    return depth_to_space(y, 2)[:, :2 * h0, :2 * w0]


@register("dncnn")
def dncnn(**kwargs) -> DnCNN:
  """DnCNN-S (17 layers, 64 channels, BN, residual learning); `channels=1` for grey."""
  return DnCNN(**kwargs)


@register("n2n_unet")
def n2n_unet(**kwargs) -> N2NUNet:
  """The Noise2Noise U-Net (48-channel encoder, 5 pools, skip concatenations, leaky 0.1)."""
  return N2NUNet(**kwargs)


@register("sid_unet")
def sid_unet(**kwargs) -> SIDUNet:
  """Learning to See in the Dark (Chen et al. 2018): packed 4-channel Bayer at half
  resolution (times the amplification ratio) -> full-resolution sRGB."""
  return SIDUNet(**kwargs)


def count_params(variables) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(variables["params"]))
