"""Face-detection cascades: MTCNN (Zhang et al. 2016) and Cascade CNN (Li et al. 2015).

Every network takes NHWC float32 images normalised as (x - 127.5) / 128 (MTCNN's
convention, used for Cascade CNN too) and returns a dict of raw outputs:

  mtcnn-pnet     any size >= 12 (fully convolutional, stride 2, 12x12 window)
                 {"logits": (N, H', W', 2), "box": (N, H', W', 4)}
  mtcnn-rnet     24x24 crops  {"logits": (N, 2), "box": (N, 4)}
  mtcnn-onet     48x48 crops  {"logits": (N, 2), "box": (N, 4), "landmarks": (N, 10)}
  cascade-12net  any size >= 12 (fully convolutional, stride 2) {"logits": (N, H', W', 2)}
  cascade-24net  24x24 crops  {"logits": (N, 2)}
  cascade-48net  48x48 crops  {"logits": (N, 2)}
  cascade-{12,24,48}cal  12/24/48 crops  {"logits": (N, 45)} over `boxes.calibration_patterns()`

Logits index 1 is "face" (softmax gives the probability). MTCNN's box output is the
offset of (x1, y1, x2, y2) in units of the window's width/height; landmarks are
(x1..x5, y1..y5) as fractions of the window (the original order). Cascade CNN's
detection nets have no regression head (the calibration nets do that job), so they
return only logits.

MTCNN layout follows the released Caffe models as ported to Keras/PyTorch: VALID 3x3
convolutions, per-channel PReLU, max pools with ceil rounding (= TF 'SAME' padding
with -inf), and R-Net/O-Net flatten their last feature map after swapping H and W
(Caffe's W-major blob order), so the released dense weights apply unchanged.

Cascade CNN multi-resolution (Li et al. Fig. 2): the 24-net takes the 24x24 crop and
computes its 12-net branch internally on a 2x2-average-pooled 12x12 copy; its
classifier sees concat(fc128(24x24), fc16(12x12)). The 48-net likewise downsamples
its 48x48 crop to 24x24 and runs a full 24-net feature branch on it (which in turn
includes the 12 branch), classifying concat(fc256, fc128, fc16). Branch weights are
the 48/24-net's own (trained jointly), not shared with the separately trained
smaller nets. The 48-nets use local response normalisation as in the paper.

Original weights: `jaxvision.faces.convert.load_mtcnn_weights()` reads them from the
installed `mtcnn` or `facenet-pytorch` package (never committed here). The calibration
patterns and the rest of the cascade's geometry are in `jaxvision.faces.boxes`.

Compute dtype: every net has `dtype` (None, the default: float32 as always; "bfloat16" on
GPU/TPU) for its convolutions, dense layers and activations, and `param_dtype` (float32)
for their parameters. The local response normalisation of the 48-nets is computed in
float32 (a sum of squares raised to a power: a normalisation statistic), and every output
(logits, box offsets, landmarks) is cast to float32 at the net's boundary, so the losses,
softmax and the detector's thresholds and NMS see float32 whatever the compute dtype.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.core.registry import register_model
# the input convention and Caffe's flatten order, shared with the detector's flax-free forms
from jaxvision.faces.programs import normalize  # noqa: F401  (public here as before)
from jaxvision.faces.programs import swap_hw_flatten as _swap_hw_flatten


# ---------------------------------------------------------------- layers


class PReLU(nn.Module):
  """Per-channel PReLU (Caffe/Keras shared_axes=[1, 2]); slope initialised to 0.25."""

  @nn.compact
  def __call__(self, x):
    alpha = self.param("alpha", nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
    return jnp.where(x >= 0, x, alpha.astype(x.dtype) * x)


def max_pool_ceil(x, k: int, s: int):
  """Caffe's ceil-mode max pooling: out = ceil((n - k) / s) + 1, padding at the end."""
  pads = []
  for n in x.shape[1:3]:
    out = -(-(n - k) // s) + 1
    pads.append((0, max((out - 1) * s + k - n, 0)))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1),
                               [(0, 0)] + pads + [(0, 0)])


def max_pool_same(x, k: int, s: int):
  """TF/Keras 'SAME' max pooling (what the `mtcnn` package's Keras graphs use)."""
  return nn.max_pool(x, (k, k), (s, s), padding="SAME")


def lrn(x, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
  """Caffe across-channel local response normalisation (alpha divided by size), computed
  in float32 and returned in x's dtype (a no-op cast for float32 x)."""
  dtype, x = x.dtype, x.astype(jnp.float32)
  sq = jnp.square(x)
  half = size // 2
  padded = jnp.pad(sq, [(0, 0)] * (x.ndim - 1) + [(half, half)])
  c = x.shape[-1]
  window = sum(padded[..., i:i + c] for i in range(size))
  return (x / jnp.power(k + alpha / size * window, beta)).astype(dtype)


def _dtype(d):
  return jnp.dtype(d) if isinstance(d, str) else d  # configs name dtypes as strings


def _conv(features, k, name, m):
  """VALID k x k convolution in module m's compute and parameter dtypes."""
  return nn.Conv(features, (k, k), padding="VALID", name=name, dtype=_dtype(m.dtype),
                 param_dtype=_dtype(m.param_dtype))


def _dense(features, name, m):
  return nn.Dense(features, name=name, dtype=_dtype(m.dtype),
                  param_dtype=_dtype(m.param_dtype))


def _conv1x1(features, name, m):
  return nn.Conv(features, (1, 1), name=name, dtype=_dtype(m.dtype),
                 param_dtype=_dtype(m.param_dtype))


def _f32(outputs: dict) -> dict:
  """The net's outputs in float32 (no-op casts under the default dtype)."""
  return {k: v.astype(jnp.float32) for k, v in outputs.items()}


# ---------------------------------------------------------------- MTCNN


class PNet(nn.Module):
  """MTCNN proposal net: conv3-10, PReLU, pool 2/2, conv3-16, conv3-32, 1x1 heads."""

  width: float = 1.0  # channel multiplier (1.0 = the released net); tests use < 1
  dtype: Any = None  # compute dtype (see the module docstring); None: float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, pool_mask=None):
    """pool_mask (optional, (N, H-2, W-2) bool): conv1 cells outside it are left out of
    the max pool, so several pyramid levels packed into one canvas pool exactly as
    each alone (ceil-mode pooling at every level's edge); see jaxvision.faces.detector."""
    del train
    c = lambda n: max(1, int(round(n * self.width)))
    x = PReLU(name="prelu1")(_conv(c(10), 3, "conv1", self)(x))
    if pool_mask is not None:
      x = jnp.where(pool_mask[..., None], x, -jnp.inf)
    x = max_pool_same(x, 2, 2)
    if pool_mask is not None:
      x = jnp.where(jnp.isfinite(x), x, 0.0)
    x = PReLU(name="prelu2")(_conv(c(16), 3, "conv2", self)(x))
    x = PReLU(name="prelu3")(_conv(c(32), 3, "conv3", self)(x))
    return _f32({"logits": _conv1x1(2, "face", self)(x), "box": _conv1x1(4, "box", self)(x)})


class RNet(nn.Module):
  """MTCNN refine net on 24x24 crops."""

  width: float = 1.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    if x.shape[1:3] != (24, 24):
      raise ValueError(f"mtcnn-rnet takes 24x24 crops, got {x.shape[1:3]}")
    c = lambda n: max(1, int(round(n * self.width)))
    x = PReLU(name="prelu1")(_conv(c(28), 3, "conv1", self)(x))
    x = max_pool_same(x, 3, 2)
    x = PReLU(name="prelu2")(_conv(c(48), 3, "conv2", self)(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding="VALID")
    x = PReLU(name="prelu3")(_conv(c(64), 2, "conv3", self)(x))
    x = PReLU(name="prelu4")(_dense(c(128), "fc4", self)(_swap_hw_flatten(x)))
    return _f32({"logits": _dense(2, "face", self)(x), "box": _dense(4, "box", self)(x)})


class ONet(nn.Module):
  """MTCNN output net on 48x48 crops, with five landmarks."""

  width: float = 1.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    if x.shape[1:3] != (48, 48):
      raise ValueError(f"mtcnn-onet takes 48x48 crops, got {x.shape[1:3]}")
    c = lambda n: max(1, int(round(n * self.width)))
    x = PReLU(name="prelu1")(_conv(c(32), 3, "conv1", self)(x))
    x = max_pool_same(x, 3, 2)
    x = PReLU(name="prelu2")(_conv(c(64), 3, "conv2", self)(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding="VALID")
    x = PReLU(name="prelu3")(_conv(c(64), 3, "conv3", self)(x))
    x = max_pool_same(x, 2, 2)
    x = PReLU(name="prelu4")(_conv(c(128), 2, "conv4", self)(x))
    x = PReLU(name="prelu5")(_dense(c(256), "fc5", self)(_swap_hw_flatten(x)))
    return _f32({"logits": _dense(2, "face", self)(x), "box": _dense(4, "box", self)(x),
                 "landmarks": _dense(10, "landmarks", self)(x)})


@register_model("mtcnn-pnet")
def mtcnn_pnet(**kw) -> nn.Module:
  return PNet(**kw)


@register_model("mtcnn-rnet")
def mtcnn_rnet(**kw) -> nn.Module:
  return RNet(**kw)


@register_model("mtcnn-onet")
def mtcnn_onet(**kw) -> nn.Module:
  return ONet(**kw)


# ---------------------------------------------------------------- Cascade CNN


def _down2(x):
  """2x2 average pooling: the half-resolution copy fed to the smaller branch."""
  return nn.avg_pool(x, (2, 2), (2, 2), padding="VALID")


class Features12(nn.Module):
  """12-net trunk: conv3-16, max-pool 3/2, fc16 (a 5x5 conv, so it slides)."""

  width: float = 1.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, pool_mask=None):
    c = lambda n: max(1, int(round(n * self.width)))
    x = nn.relu(_conv(c(16), 3, "conv1", self)(x))
    if pool_mask is not None:  # as PNet: pyramid levels packed in one canvas
      x = jnp.where(pool_mask[..., None], x, -jnp.inf)
    x = max_pool_ceil(x, 3, 2)
    if pool_mask is not None:
      x = jnp.where(jnp.isfinite(x), x, 0.0)
    return nn.relu(_conv(c(16), 5, "fc", self)(x))  # 12x12 -> 10 -> 5 -> 1


class Features24(nn.Module):
  """24-net trunk: conv5-64, max-pool 3/2, fc128."""

  width: float = 1.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = lambda n: max(1, int(round(n * self.width)))
    x = nn.relu(_conv(c(64), 5, "conv1", self)(x))
    x = max_pool_ceil(x, 3, 2)  # 20 -> 10
    return nn.relu(_dense(c(128), "fc", self)(x.reshape(x.shape[0], -1)))


class Features48(nn.Module):
  """48-net trunk: conv5-64, pool 3/2, LRN, conv5-64, LRN, pool 3/2, fc256."""

  width: float = 1.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = lambda n: max(1, int(round(n * self.width)))
    x = nn.relu(_conv(c(64), 5, "conv1", self)(x))  # 44
    x = lrn(max_pool_ceil(x, 3, 2))  # 22
    x = nn.relu(_conv(c(64), 5, "conv2", self)(x))  # 18
    x = max_pool_ceil(lrn(x), 3, 2)  # 9
    return nn.relu(_dense(c(256), "fc", self)(x.reshape(x.shape[0], -1)))


class Net12(nn.Module):
  """Cascade CNN 12-net, fully convolutional: (N, H', W', 2) logits, stride 2."""

  width: float = 1.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, pool_mask=None):
    del train
    f = Features12(self.width, self.dtype, self.param_dtype, name="features")(x, pool_mask)
    return _f32({"logits": _conv1x1(2, "face", self)(f)})


class Net24(nn.Module):
  """Cascade CNN 24-net with the 12-net branch on a downsampled copy."""

  width: float = 1.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  def features(self, x):
    dt = (self.dtype, self.param_dtype)
    f24 = Features24(self.width, *dt, name="features")(x)
    f12 = Features12(self.width, *dt, name="branch12")(_down2(x))
    return jnp.concatenate([f24, f12.reshape(f12.shape[0], -1)], axis=-1)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    if x.shape[1:3] != (24, 24):
      raise ValueError(f"cascade-24net takes 24x24 crops, got {x.shape[1:3]}")
    return _f32({"logits": _dense(2, "face", self)(self.features(x))})


class Net48(nn.Module):
  """Cascade CNN 48-net with a 24-net branch (itself with its 12 branch)."""

  width: float = 1.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    if x.shape[1:3] != (48, 48):
      raise ValueError(f"cascade-48net takes 48x48 crops, got {x.shape[1:3]}")
    dt = (self.dtype, self.param_dtype)
    f48 = Features48(self.width, *dt, name="features")(x)
    x24 = _down2(x)
    f24 = Features24(self.width, *dt, name="branch24")(x24)
    f12 = Features12(self.width, *dt, name="branch12")(_down2(x24))
    f = jnp.concatenate([f48, f24, f12.reshape(f12.shape[0], -1)], axis=-1)
    return _f32({"logits": _dense(2, "face", self)(f)})


class CalNet(nn.Module):
  """Cascade CNN calibration net (12/24/48) over the 45 patterns."""

  size: int = 12
  width: float = 1.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    s = self.size
    if x.shape[1:3] != (s, s):
      raise ValueError(f"cascade-{s}cal takes {s}x{s} crops, got {x.shape[1:3]}")
    c = lambda n: max(1, int(round(n * self.width)))
    if s == 12:
      x = nn.relu(_conv(c(16), 3, "conv1", self)(x))
      x = max_pool_ceil(x, 3, 2)
      fc = 128
    elif s == 24:
      x = nn.relu(_conv(c(32), 5, "conv1", self)(x))
      x = max_pool_ceil(x, 3, 2)
      fc = 64
    else:
      x = nn.relu(_conv(c(64), 5, "conv1", self)(x))
      x = lrn(max_pool_ceil(x, 3, 2))
      x = lrn(nn.relu(_conv(c(64), 5, "conv2", self)(x)))
      fc = 256
    x = nn.relu(_dense(c(fc), "fc", self)(x.reshape(x.shape[0], -1)))
    return _f32({"logits": _dense(45, "pattern", self)(x)})


@register_model("cascade-12net")
def cascade_12net(**kw) -> nn.Module:
  return Net12(**kw)


@register_model("cascade-24net")
def cascade_24net(**kw) -> nn.Module:
  return Net24(**kw)


@register_model("cascade-48net")
def cascade_48net(**kw) -> nn.Module:
  return Net48(**kw)


@register_model("cascade-12cal")
def cascade_12cal(**kw) -> nn.Module:
  return CalNet(size=12, **kw)


@register_model("cascade-24cal")
def cascade_24cal(**kw) -> nn.Module:
  return CalNet(size=24, **kw)


@register_model("cascade-48cal")
def cascade_48cal(**kw) -> nn.Module:
  return CalNet(size=48, **kw)
