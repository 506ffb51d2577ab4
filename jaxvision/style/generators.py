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
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.core.registry import register_model


def instance_normalize(x: jnp.ndarray, eps: float = 1e-5) -> jnp.ndarray:
  """Zero mean, unit variance per image and channel over H, W (before any affine)."""
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


class InstanceNorm(nn.Module):
  """Instance normalisation with a learned per-channel affine (scale 1, bias 0 at init).
  Statistics are those of the image itself in training and inference alike."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    return instance_normalize(x.astype(jnp.float32), self.eps) * scale + bias


def reflect_pad(x, p: int):
  # Reflect needs p < size; tiny maps (coarse scales of small images) fall back to edge.
  mode = "reflect" if min(x.shape[1], x.shape[2]) > p else "edge"
  return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=mode)


class ConvLayer(nn.Module):
  """Reflect pad, conv (stride s), then optionally instance norm and ReLU."""
  features: int
  kernel: int
  stride: int = 1
  norm: bool = True
  relu: bool = True

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, (self.kernel, self.kernel), strides=self.stride,
                padding="VALID", name="conv")(reflect_pad(x, self.kernel // 2))
    if self.norm:
      x = InstanceNorm(name="norm")(x)
    return nn.relu(x) if self.relu else x


def resize_nearest(x, size: tuple[int, int]):
  return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), "nearest")


class Johnson(nn.Module):
  """Image transformation network; NHWC RGB in [0, 1] -> same size, RGB in [0, 1]."""
  width: int = 32          # c9s1-{width}, d{2w}, d{4w}, residual blocks of 4w
  num_residual: int = 5

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    if x.ndim != 4:
      raise ValueError(f"johnson expects NHWC input, got shape {x.shape}")
    w = self.width
    sizes = [x.shape[1:3]]
    h = ConvLayer(w, 9, name="c9s1")(x.astype(jnp.float32))
    sizes.append(h.shape[1:3])
    h = ConvLayer(2 * w, 3, 2, name="d1")(h)
    sizes.append(h.shape[1:3])
    h = ConvLayer(4 * w, 3, 2, name="d2")(h)
    for i in range(self.num_residual):
      r = ConvLayer(4 * w, 3, name=f"res{i}_a")(h)
      h = h + ConvLayer(4 * w, 3, relu=False, name=f"res{i}_b")(r)
    h = ConvLayer(2 * w, 3, name="u1")(resize_nearest(h, sizes[2]))
    h = ConvLayer(w, 3, name="u2")(resize_nearest(h, sizes[1]))
    y = ConvLayer(3, 9, norm=False, relu=False, name="out")(h)
    return 0.5 * (jnp.tanh(y) + 1.0)


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

  @nn.compact
  def __call__(self, x):
    for i, k in enumerate((3, 3, 1)):
      x = nn.Conv(self.features, (k, k), padding="VALID", name=f"conv{i}")(reflect_pad(x, k // 2))
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

  @nn.compact
  def __call__(self, x, noise=None, train: bool = False):
    del train
    if x.ndim != 4:
      raise ValueError(f"texture_net expects NHWC input, got shape {x.shape}")
    n = x.shape[0]
    sizes = pyramid_sizes(x.shape[1], x.shape[2], self.scales)
    if noise is None:
      key = self.make_rng("noise") if self.has_rng("noise") else jax.random.key(0, impl="rbg")
      keys = jax.random.split(key, self.scales)
      noise = [jax.random.uniform(k, (n, *s, self.noise_channels)) for k, s in zip(keys, sizes)]
    h = None
    for k in reversed(range(self.scales)):  # coarsest first
      inp = noise[k]
      if self.image_input:
        img = x.astype(jnp.float32)
        if k:
          img = jax.image.resize(img, (n, *sizes[k], x.shape[-1]), "linear", antialias=True)
        inp = jnp.concatenate([inp, img], axis=-1)
      b = ConvBlock(self.width, name=f"block{k}")(inp)
      if h is None:
        h = b
      else:  # join: upsample the coarser result, normalise both, concatenate, conv block
        j = jnp.concatenate([InstanceNorm(name=f"join{k}_a")(resize_nearest(h, sizes[k])),
                             InstanceNorm(name=f"join{k}_b")(b)], axis=-1)
        h = ConvBlock(j.shape[-1], name=f"joined{k}")(j)
    y = nn.Conv(3, (1, 1), name="out")(h)
    return 0.5 * (jnp.tanh(y) + 1.0)


@register_model("texture_net")
def texture_net(**kwargs) -> TextureNet:
  return TextureNet(**kwargs)
