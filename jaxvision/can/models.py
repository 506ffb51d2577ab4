"""Context Aggregation Network (Chen, Xu, Koltun, "Fast Image Processing with
Fully-Convolutional Networks", ICCV 2017).

Layer s = 1 .. d-2 is a 3x3 convolution with dilation 2^(s-1); layer d-1 is a 3x3
convolution with dilation 1; layer d is a 1x1 convolution to the output channels.
Every hidden layer is followed by adaptive normalisation λ·x + μ·BN(x) and
LeakyReLU(0.2). The released CAN24 has d = 9 (dilations 1..64), a receptive field of
257x257 pixels. `depth` is the paper's d (all layers, output included).

Identity initialisation (the paper found it crucial): every 3x3 kernel has a one at the
centre tap from input channel i to output channel i, zeros elsewhere, and so does the
1x1 output layer; with λ=1, μ=0 the untrained network is exactly the identity map on
[0, 1] images (LeakyReLU is the identity on non-negative inputs).

Batch normalisation uses running averages at inference, so the network is a local
operator there: tiled inference (`jaxvision.core.tiling.apply_tiled`) is seam-free.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxvision.core import layers
from jaxvision.core.registry import register_model as register


def identity_init(key, shape, dtype=jnp.float32):
  """Kernel (kh, kw, cin, cout) with a one at the centre tap for i -> i."""
  del key
  kh, kw, cin, cout = shape
  k = np.zeros(shape, np.float32)
  n = min(cin, cout)
  k[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
  return jnp.asarray(k, dtype)


class AdaptiveNorm(nn.Module):
  """λ·x + μ·BN(x), λ=1 and μ=0 at initialisation (BN without scale, as slim's)."""

  momentum: float = 0.99
  epsilon: float = 1e-3
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    lam = self.param("lambda", nn.initializers.ones, (), self.param_dtype)
    mu = self.param("mu", nn.initializers.zeros, (), self.param_dtype)
    # BN's statistics are computed and kept in float32 whatever x's dtype (flax's
    # BatchNorm promotes the mean/var reduction); param_dtype is its bias's dtype.
    bn = nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                      epsilon=self.epsilon, use_scale=False, dtype=x.dtype,
                      param_dtype=self.param_dtype, name="bn")(x)
    return lam.astype(x.dtype) * x + mu.astype(x.dtype) * bn


class CAN(nn.Module):
  """Context Aggregation Network; NHWC in, NHWC out, any spatial size."""

  width: int = 24
  depth: int = 9
  out_channels: int = 3
  negative_slope: float = 0.2
  adaptive_norm: bool = True
  dtype: Any = jnp.float32  # computation dtype (bf16 on accelerators)
  param_dtype: Any = jnp.float32  # parameters' dtype (float32 master weights)

  def dilations(self) -> list[int]:
    if self.depth < 3:
      raise ValueError(f"CAN depth must be >= 3, got {self.depth}")
    return [2 ** s for s in range(self.depth - 2)] + [1]

  def receptive_radius(self) -> int:
    return receptive_radius(self.depth)

  @nn.compact
  def __call__(self, x, train: bool = False):
    """x: (N, H, W, C) float in [0, 1]; train=True uses and updates batch statistics."""
    if x.ndim != 4:
      raise ValueError(f"CAN expects NHWC input, got shape {x.shape}")
    h = x.astype(self.dtype)
    for i, rate in enumerate(self.dilations()):
      h = nn.Conv(self.width, (3, 3), kernel_dilation=rate, padding="SAME",
                  use_bias=not self.adaptive_norm, kernel_init=identity_init,
                  dtype=self.dtype, param_dtype=self.param_dtype,
                  conv_general_dilated=layers.conv_general_dilated, name=f"conv{i + 1}")(h)
      if self.adaptive_norm:
        h = AdaptiveNorm(param_dtype=self.param_dtype, name=f"norm{i + 1}")(h, train)
      h = nn.leaky_relu(h, self.negative_slope)
    y = nn.Conv(self.out_channels, (1, 1), kernel_init=identity_init,
                dtype=self.dtype, param_dtype=self.param_dtype, name="output")(h)
    return y.astype(jnp.float32)


def receptive_radius(depth: int) -> int:
  """Pixels of context on each side that one output pixel sees."""
  return sum(2 ** s for s in range(depth - 2)) + 1


def _make(defaults, kwargs) -> CAN:
  kw = {**defaults, **kwargs}
  for k in ("dtype", "param_dtype"):
    if isinstance(kw.get(k), str):  # configs name dtypes as strings
      kw[k] = jnp.dtype(kw[k])
  return CAN(**kw)


@register("can")
def can(**kwargs) -> CAN:
  return _make({}, kwargs)


@register("can24")
def can24(**kwargs) -> CAN:
  return _make({"width": 24, "depth": 9}, kwargs)


@register("can32")
def can32(**kwargs) -> CAN:
  return _make({"width": 32, "depth": 9}, kwargs)


@register("hdrnet")
def hdrnet(**kwargs):
  """HDRNet (Gharbi et al. 2017), trained on CAN's operators and task: jaxvision/can/hdrnet.py."""
  from jaxvision.can.hdrnet import HDRNet
  if "fc" in kwargs:  # configs hold lists
    kwargs["fc"] = tuple(kwargs["fc"])
  return HDRNet(**kwargs)
