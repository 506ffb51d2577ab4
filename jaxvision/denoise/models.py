"""Denoising networks: DnCNN (Zhang et al. 2017) and the Noise2Noise U-Net (Lehtinen et al. 2018).

Both map a noisy (N, H, W, C) image in [0, 1] to the denoised image (not clipped).

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
  size_multiple = 1

  def receptive_radius(self) -> int:
    return int(self.depth)

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4 or x.shape[-1] != self.channels:
      raise ValueError(f"DnCNN expects (N, H, W, {self.channels}) input, got {x.shape}")
    dt = _dtype(self.dtype)
    conv = lambda f, name, bias, init=nn.initializers.he_normal(): nn.Conv(  # noqa: E731
        f, (3, 3), padding="SAME", use_bias=bias, dtype=dt, name=name, kernel_init=init,
        conv_general_dilated=layers.conv_general_dilated)
    h = nn.relu(conv(self.features, "conv1", True)(x.astype(dt)))
    for i in range(2, self.depth):
      h = conv(self.features, f"conv{i}", False)(h)
      h = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                       epsilon=1e-5, dtype=dt, name=f"bn{i}")(h)
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
      h = nn.Conv(c, (3, 3), padding="SAME", dtype=dt, name=name,
                  conv_general_dilated=layers.conv_general_dilated)(h)
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


@register("dncnn")
def dncnn(**kwargs) -> DnCNN:
  """DnCNN-S (17 layers, 64 channels, BN, residual learning); `channels=1` for grey."""
  return DnCNN(**kwargs)


@register("n2n_unet")
def n2n_unet(**kwargs) -> N2NUNet:
  """The Noise2Noise U-Net (48-channel encoder, 5 pools, skip concatenations, leaky 0.1)."""
  return N2NUNet(**kwargs)


def count_params(variables) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(variables["params"]))
