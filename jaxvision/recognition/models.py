"""Face-embedding networks (architectures only: no file I/O, no training loop).

  dlib_resnet   dlib's metric-learning ResNet (`dnn_face_recognition_ex.cpp`): 150x150 RGB
                chips in, a 128-D descriptor out (not normalised: dlib's loss_metric works
                on raw distances, same person below 0.6). Its weights: convert.py.
  deepface      Taigman et al. 2014: 152x152, conv-pool-conv, three locally connected
                layers (`LocallyConnected`, lax.conv_general_dilated_local), F7 4096-D
                (the representation, L2-normalised), ~120 M parameters
  deepid        Sun et al. 2014: a 39x31 patch, four conv stages (the last locally
                connected), the 160-D DeepID layer fed by both pool3 and conv4
  facenet_inception_resnet_v1   davidsandberg/facenet's Inception-ResNet-v1: 160x160,
                512-D L2-normalised (its 2018 VGGFace2 / CASIA models' bottleneck)
  openface_nn4_small2   OpenFace's nn4.small2 (FaceNet's NN4 without 4b-4d, smaller 5x):
                96x96, 128-D L2-normalised, 3,733,968 parameters as its .def.lua says

Every model takes NHWC float pixels in [0, 255] (RGB) and returns (N, D) embeddings.

Compute dtype: every model has `dtype` (None, the default: float32 as always; "bfloat16"
on GPU/TPU) for its convolutions, locally connected and dense layers, and `param_dtype`
(float32) for their parameters. Batch norm statistics are float32 (flax computes them in
float32 for bf16 inputs), the cross-map LRN is computed in float32, and the embedding is
cast to float32 before the L2 normalisation (`finish`), so every model returns float32.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.core.registry import register_model

# dlib's input_rgb_image(_sized) subtracts these and divides by 256 (dlib/dnn/input.h).
DLIB_MEAN = (122.782, 117.001, 104.298)

# (channels, downsample) of each residual unit from the input up: alevel4 .. alevel0.
DLIB_UNITS = ((32, False),) * 3 + ((64, True),) + ((64, False),) * 3 + (
    (128, True),) + ((128, False),) * 2 + ((256, True),) + ((256, False),) * 2 + ((256, True),)


class Affine(nn.Module):
  """dlib's `affine_` layer: y = gamma * x + beta per channel. It is the test-time form of
  batch norm (dlib folds the running statistics into gamma and beta when a trained net's
  bn_ layers are loaded into affine ones), so the released model has no batch statistics."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    gamma = self.param("scale", nn.initializers.ones, (c,))
    beta = self.param("bias", nn.initializers.zeros, (c,))
    return x * gamma.astype(x.dtype) + beta.astype(x.dtype)  # no-op casts for float32 x


def add_prev(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """dlib's `add_prev`: the sum of two tensors of possibly different sizes.

  dlib sizes the output to the larger of each dimension and adds each input where it is
  defined, i.e. zero-pads the smaller one at the END of each axis (bottom, right, last
  channels; `tt::add` in dlib/cuda/cpu_dlib.cpp). In the face ResNet this happens in the
  down-sampling units: 64 -> 128 channels (the shortcut is zero-padded in channels, not
  projected) and, at 8x8, the strided 3x3 conv (no padding) gives 3x3 while the 2x2
  average pool gives 4x4, so the conv branch sits in the top-left 3x3 of the 4x4 sum."""
  shape = tuple(max(i, j) for i, j in zip(a.shape, b.shape))
  pad = lambda t: jnp.pad(t, [(0, s - d) for s, d in zip(shape, t.shape)])
  return pad(a) + pad(b)


class DlibResidual(nn.Module):
  """`ares` / `ares_down` of dnn_face_recognition_ex.cpp.

  block = affine(con3x3/1(relu(affine(con3x3/stride(x))))); dlib's `con_` pads by
  kernel//2 only at stride 1 and not at all at stride 2 (its template default
  `_stride_y != 1 ? 0 : _nr/2`), so the strided conv is VALID. The shortcut of a
  down-sampling unit is a 2x2/2 average pool (VALID), added with `add_prev`'s zero
  padding; then ReLU."""
  features: int
  down: bool
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = 2 if self.down else 1
    p = 0 if self.down else 1
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = nn.Conv(self.features, (3, 3), (s, s), padding=((p, p), (p, p)), name="conv1",
                **dt)(x)
    y = nn.relu(Affine(name="affine1")(y))
    y = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2", **dt)(y)
    y = Affine(name="affine2")(y)
    if self.down:
      x = nn.avg_pool(x, (2, 2), (2, 2), padding="VALID")
    return nn.relu(add_prev(y, x))


class ClassHead(nn.Module):
  """Training-only parameters of softmax + centre loss: class weights, biases and one centre
  per class (losses.softmax_center). Created when `num_classes` > 0; the embedding output is
  unchanged and inference never reads them."""
  num_classes: int

  @nn.compact
  def __call__(self, e):
    self.param("centres", nn.initializers.zeros, (self.num_classes, e.shape[-1]))
    return nn.Dense(self.num_classes, name="logits")(e)


class DlibResNet(nn.Module):
  """dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1).

  input (x - mean) / 256 -> con 32 7x7/2 (VALID: 150 -> 72) -> affine -> relu ->
  max_pool 3x3/2 (VALID: 72 -> 35) -> 14 residual units (35 -> 17 -> 8 -> 4 -> 2) ->
  global average -> fc 256 -> 128 without bias. 5.6 M parameters, 29 convolutions.
  `normalize` (not dlib's: its loss_metric works on raw distances) L2-normalises the output,
  as FaceNet-style training wants; `num_classes` adds the softmax + centre-loss head."""
  units: Sequence[tuple[int, bool]] = DLIB_UNITS
  embed_dim: int = 128
  mean: Sequence[float] = DLIB_MEAN
  stem_features: int = 32
  normalize: bool = False
  num_classes: int = 0
  dtype: Any = None         # compute dtype (see the module docstring); None: float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # affine layers only: the same at training and test time
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = (x - jnp.asarray(self.mean, x.dtype)) / 256.0
    x = nn.Conv(self.stem_features, (7, 7), (2, 2), padding="VALID", name="stem_conv",
                **dt)(x)
    x = nn.relu(Affine(name="stem_affine")(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding="VALID")
    for i, (f, down) in enumerate(self.units):
      x = DlibResidual(f, down, name=f"unit{i}", **dt)(x)
    x = jnp.mean(x, axis=(1, 2))
    return finish(self, nn.Dense(self.embed_dim, use_bias=False, name="fc", **dt)(x))


def finish(module: nn.Module, e: jnp.ndarray) -> jnp.ndarray:
  """The embedding's last steps shared by every model: the optional class head's parameters
  (created, not used: XLA drops the unused logits) and the optional L2 normalisation, in
  float32 whatever the compute dtype (a no-op cast for float32 models)."""
  e = e.astype(jnp.float32)
  if getattr(module, "num_classes", 0):
    ClassHead(module.num_classes, name="head")(e)
  if getattr(module, "normalize", False):
    e = e * jax.lax.rsqrt(jnp.maximum(jnp.sum(e * e, -1, keepdims=True), 1e-12))
  return e


@register_model("dlib_resnet")
def dlib_resnet(**kwargs) -> DlibResNet:
  """dlib's 150x150 -> 128-D face ResNet (the released model's structure by default)."""
  if "units" in kwargs:
    kwargs["units"] = tuple(tuple(u) for u in kwargs["units"])
  return DlibResNet(**kwargs)


# ---------------------------------------------------------------- locally connected layers
class LocallyConnected(nn.Module):
  """A convolution whose filters are NOT shared over positions (DeepFace's L4-L6).

  Keras dropped LocallyConnected2D; JAX keeps `lax.conv_general_dilated_local`. Its kernel
  is (out_h, out_w, C * kh * kw, features): each output position has its own filter over
  the input window, the window flattened channel-major — index c * kh * kw + i * kw + j
  for input channel c and window row i, column j (the "C" + spatial order the lax docs
  give for HWIO). A bias per output position and feature, as the paper's layers have.
  VALID padding (DeepFace's layers shrink: 63 -> 55 -> 25 -> 21)."""
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  param_dtype: Any = jnp.float32  # computes in its input's dtype

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    sh, sw = self.strides
    h, w, c = x.shape[1:]
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    init = nn.initializers.variance_scaling(2.0, "fan_in", "normal", in_axis=2, out_axis=3)
    kernel = self.param("kernel", init, (oh, ow, c * kh * kw, self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (oh, ow, self.features), self.param_dtype)
    y = jax.lax.conv_general_dilated_local(
        x, kernel.astype(x.dtype), (sh, sw), "VALID", (kh, kw),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(x.dtype)


class DeepFace(nn.Module):
  """DeepFace (Taigman, Yang, Ranzato, Wolf 2014), on 152x152 3D-aligned RGB crops.

  C1 32@11x11 (142) -> M2 max 3x3/2 (71, Caffe's ceil) -> C3 16@9x9 (63) -> L4 16@9x9 (55)
  -> L5 16@7x7/2 (25) -> L6 16@5x5 (21) -> F7 4096 (the representation) [-> F8 softmax
  over the training identities: `num_classes`]. ReLU after every layer, dropout on F7
  in training. The paper normalises F7 (each feature by its training maximum, then L2);
  here the L2 step (`normalize`, default on). Pixels in [0, 255] are scaled to [0, 1]."""
  embed_dim: int = 4096
  widths: tuple[int, int, int, int, int, int] = (32, 16, 16, 16, 16, 16)
  dropout: float = 0.5
  normalize: bool = True
  num_classes: int = 0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x / 255.0
    w = self.widths
    dt, pdt = dict(dtype=self.dtype, param_dtype=self.param_dtype), self.param_dtype
    x = nn.relu(nn.Conv(w[0], (11, 11), padding="VALID", name="c1", **dt)(x))
    pad = [(0, 0), (0, (x.shape[1] - 3) % 2), (0, (x.shape[2] - 3) % 2), (0, 0)]
    x = nn.max_pool(jnp.pad(x, pad, constant_values=-jnp.inf), (3, 3), (2, 2), "VALID")
    x = nn.relu(nn.Conv(w[1], (9, 9), padding="VALID", name="c3", **dt)(x))
    x = nn.relu(LocallyConnected(w[2], (9, 9), param_dtype=pdt, name="l4")(x))
    x = nn.relu(LocallyConnected(w[3], (7, 7), (2, 2), param_dtype=pdt, name="l5")(x))
    x = nn.relu(LocallyConnected(w[4], (5, 5), param_dtype=pdt, name="l6")(x))
    x = nn.relu(nn.Dense(self.embed_dim, name="f7", **dt)(x.reshape(x.shape[0], -1)))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return finish(self, x)


class DeepID(nn.Module):
  """DeepID (Sun, Wang, Tang 2014), on a 39x31 face patch (grey or RGB).

  conv1 20@4x4 -> max 2x2 -> conv2 40@3x3 -> max 2x2 -> conv3 60@3x3 -> max 2x2 ->
  conv4 80@2x2 (locally connected: the paper's weights are unshared there) -> DeepID
  160 = ReLU(W3 pool3 + W4 conv4 + b), the multi-scale layer fed by both the last two
  stages [-> softmax over `num_classes`]. The paper shares conv3's weights in 2x2 regions;
  here they are shared over the whole map. Pixels in [0, 255] are scaled to [0, 1]."""
  embed_dim: int = 160
  widths: tuple[int, int, int, int] = (20, 40, 60, 80)
  normalize: bool = False
  num_classes: int = 0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = x / 255.0
    w = self.widths
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    pool = lambda t: nn.max_pool(t, (2, 2), (2, 2), "VALID")
    x = pool(nn.relu(nn.Conv(w[0], (4, 4), padding="VALID", name="conv1", **dt)(x)))
    x = pool(nn.relu(nn.Conv(w[1], (3, 3), padding="VALID", name="conv2", **dt)(x)))
    p3 = pool(nn.relu(nn.Conv(w[2], (3, 3), padding="VALID", name="conv3", **dt)(x)))
    c4 = nn.relu(LocallyConnected(w[3], (2, 2), param_dtype=self.param_dtype,
                                  name="conv4")(p3))
    flat = lambda t: t.reshape(t.shape[0], -1)
    e = nn.Dense(self.embed_dim, name="from_pool3", **dt)(flat(p3)) + nn.Dense(
        self.embed_dim, use_bias=False, name="from_conv4", **dt)(flat(c4))
    return finish(self, nn.relu(e))


@register_model("deepface")
def deepface(**kwargs) -> DeepFace:
  """DeepFace's 152x152 -> 4096-D network with locally connected layers (~120 M params)."""
  if "widths" in kwargs:
    kwargs["widths"] = tuple(kwargs["widths"])
  return DeepFace(**kwargs)


@register_model("deepid")
def deepid(**kwargs) -> DeepID:
  """DeepID's 39x31 patch -> 160-D network."""
  if "widths" in kwargs:
    kwargs["widths"] = tuple(kwargs["widths"])
  return DeepID(**kwargs)


# ---------------------------------------------------------------- Inception-ResNet-v1
class ConvBN(nn.Module):
  """slim.conv2d as davidsandberg/facenet configures it: no bias, batch norm without scale
  (slim's default scale=False: beta only; decay 0.995, epsilon 0.001), then ReLU."""
  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: str = "SAME"
  relu: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Conv(self.features, self.kernel, (self.strides,) * 2, padding=self.padding,
                use_bias=False, name="conv", **dt)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.995, epsilon=1e-3,
                     use_scale=False, name="bn", **dt)(x)
    return nn.relu(x) if self.relu else x


class InceptionResidual(nn.Module):
  """block35 / block17 / block8 of inception_resnet_v1.py: branches of ConvBN, their concat
  projected back to the input's channels by a 1x1 conv with bias (no BN), x + scale * up,
  then ReLU (`relu` False: the last block8)."""
  kind: str
  scale: float
  relu: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    cb = lambda f, k, name: ConvBN(f, k, name=name, **dt)
    if self.kind == "35":
      b0 = cb(32, (1, 1), "b0")(x, train)
      b1 = cb(32, (3, 3), "b1_1")(cb(32, (1, 1), "b1_0")(x, train), train)
      b2 = cb(32, (1, 1), "b2_0")(x, train)
      b2 = cb(32, (3, 3), "b2_2")(cb(32, (3, 3), "b2_1")(b2, train), train)
      mixed = jnp.concatenate([b0, b1, b2], -1)
    elif self.kind == "17":
      b0 = cb(128, (1, 1), "b0")(x, train)
      b1 = cb(128, (1, 7), "b1_1")(cb(128, (1, 1), "b1_0")(x, train), train)
      b1 = cb(128, (7, 1), "b1_2")(b1, train)
      mixed = jnp.concatenate([b0, b1], -1)
    else:  # "8"
      b0 = cb(192, (1, 1), "b0")(x, train)
      b1 = cb(192, (1, 3), "b1_1")(cb(192, (1, 1), "b1_0")(x, train), train)
      b1 = cb(192, (3, 1), "b1_2")(b1, train)
      mixed = jnp.concatenate([b0, b1], -1)
    x = x + self.scale * nn.Conv(c, (1, 1), name="up", **dt)(mixed)
    return nn.relu(x) if self.relu else x


class InceptionResNetV1(nn.Module):
  """davidsandberg/facenet src/models/inception_resnet_v1.py at 160x160 (sizes after each
  stage: 79, 77, 77, 38, 38, 36, 17 | 5 x block35 | reduction A 8 | 10 x block17 |
  reduction B 3 | 5 x block8 + one without ReLU | 3x3 average -> dropout (keep 0.8) ->
  Bottleneck fully connected with batch norm (no bias) -> L2 normalisation). Input: facenet's
  fixed_image_standardization, (x - 127.5) / 128."""
  embed_dim: int = 512
  dropout: float = 0.2
  normalize: bool = True
  num_classes: int = 0
  repeats: tuple[int, int, int] = (5, 10, 5)
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = (x - 127.5) / 128.0
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    cb = lambda f, k, name, s=1, p="SAME": ConvBN(f, k, s, p, name=name, **dt)
    x = cb(32, (3, 3), "conv1a", 2, "VALID")(x, train)
    x = cb(32, (3, 3), "conv2a", 1, "VALID")(x, train)
    x = cb(64, (3, 3), "conv2b")(x, train)
    x = nn.max_pool(x, (3, 3), (2, 2), "VALID")
    x = cb(80, (1, 1), "conv3b", 1, "VALID")(x, train)
    x = cb(192, (3, 3), "conv4a", 1, "VALID")(x, train)
    x = cb(256, (3, 3), "conv4b", 2, "VALID")(x, train)
    for i in range(self.repeats[0]):
      x = InceptionResidual("35", 0.17, name=f"block35_{i}", **dt)(x, train)
    # reduction A (k, l, m, n) = (192, 192, 256, 384)
    r0 = cb(384, (3, 3), "ra_b0", 2, "VALID")(x, train)
    r1 = cb(192, (3, 3), "ra_b1_1")(cb(192, (1, 1), "ra_b1_0")(x, train), train)
    r1 = cb(256, (3, 3), "ra_b1_2", 2, "VALID")(r1, train)
    x = jnp.concatenate([r0, r1, nn.max_pool(x, (3, 3), (2, 2), "VALID")], -1)
    for i in range(self.repeats[1]):
      x = InceptionResidual("17", 0.10, name=f"block17_{i}", **dt)(x, train)
    # reduction B
    r0 = cb(384, (3, 3), "rb_b0_1", 2, "VALID")(cb(256, (1, 1), "rb_b0_0")(x, train), train)
    r1 = cb(256, (3, 3), "rb_b1_1", 2, "VALID")(cb(256, (1, 1), "rb_b1_0")(x, train), train)
    r2 = cb(256, (3, 3), "rb_b2_1")(cb(256, (1, 1), "rb_b2_0")(x, train), train)
    r2 = cb(256, (3, 3), "rb_b2_2", 2, "VALID")(r2, train)
    x = jnp.concatenate([r0, r1, r2, nn.max_pool(x, (3, 3), (2, 2), "VALID")], -1)
    for i in range(self.repeats[2]):
      x = InceptionResidual("8", 0.20, name=f"block8_{i}", **dt)(x, train)
    x = InceptionResidual("8", 1.0, relu=False, name=f"block8_{self.repeats[2]}", **dt)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.embed_dim, use_bias=False, name="bottleneck", **dt)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.995, epsilon=1e-3,
                     use_scale=False, name="bottleneck_bn", **dt)(x)
    return finish(self, x)


@register_model("facenet_inception_resnet_v1")
def facenet_inception_resnet_v1(**kwargs) -> InceptionResNetV1:
  """davidsandberg/facenet's Inception-ResNet-v1: 160x160 -> 512-D, L2-normalised."""
  if "repeats" in kwargs:
    kwargs["repeats"] = tuple(kwargs["repeats"])
  return InceptionResNetV1(**kwargs)


# ---------------------------------------------------------------- OpenFace nn4.small2
def cross_map_lrn(x, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
  """Torch's SpatialCrossMapLRN: x / (k + alpha / size * sum of x^2 over `size` channels
  centred on each channel) ^ beta (zero beyond the first and last channel). In float32,
  returned in x's dtype (no-op casts for float32 x)."""
  dtype, x = x.dtype, x.astype(jnp.float32)
  sq = jnp.pad(x * x, [(0, 0)] * 3 + [(size // 2, (size - 1) // 2)])
  window = sum(sq[..., i:i + x.shape[-1]] for i in range(size))
  return (x / (k + alpha / size * window) ** beta).astype(dtype)


def lp_pool(x, strides: int):
  """Torch's SpatialLPPooling with p = 2 and a 3x3 window: sqrt of the window's sum of
  squares (no averaging), padded by one like the Inception's other branches."""
  s = nn.pool(x * x, 0.0, jax.lax.add, (3, 3), (strides, strides), ((1, 1), (1, 1)))
  return jnp.sqrt(s + 1e-12)


class TorchConvBN(nn.Module):
  """SpatialConvolutionMM (with bias) -> SpatialBatchNormalization (affine) -> ReLU."""
  features: int
  kernel: int
  strides: int = 1
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    p = self.kernel // 2
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Conv(self.features, (self.kernel, self.kernel), (self.strides,) * 2,
                padding=((p, p), (p, p)), name="conv", **dt)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn",
                     **dt)(x)
    return nn.relu(x)


class OpenFaceInception(nn.Module):
  """dpnn's nn.Inception with batchNorm: per kernel size a 1x1 reduce and the k x k conv at
  the block's stride; a pool branch (max or L2, 3x3, padded to the block's output size),
  projected by a 1x1 when a projection size is given (else passed through); a plain 1x1
  branch when its size is given; all concatenated."""
  kernels: tuple[int, ...]
  outputs: tuple[int, ...]
  reduces: tuple[int, ...]
  pool_proj: int | None
  one_by_one: int | None
  strides: int
  pool: str  # "max" | "l2"
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    outs = []
    for i, (k, o, r) in enumerate(zip(self.kernels, self.outputs, self.reduces)):
      y = TorchConvBN(r, 1, name=f"reduce{k}", **dt)(x, train)
      outs.append(TorchConvBN(o, k, self.strides, name=f"conv{k}", **dt)(y, train))
    s = self.strides
    if self.pool == "max":
      y = nn.max_pool(x, (3, 3), (s, s), ((1, 1), (1, 1)))
    else:
      y = lp_pool(x, s)
    if self.pool_proj:
      y = TorchConvBN(self.pool_proj, 1, name="pool_proj", **dt)(y, train)
    outs.append(y)
    if self.one_by_one:
      outs.append(TorchConvBN(self.one_by_one, 1, name="conv1", **dt)(x, train))
    return jnp.concatenate(outs, -1)


# (kernels, outputs, reduces, pool projection, 1x1, stride, pool) of nn4.small2.def.lua
NN4_SMALL2 = {
    "3a": ((3, 5), (128, 32), (96, 16), 32, 64, 1, "max"),
    "3b": ((3, 5), (128, 64), (96, 32), 64, 64, 1, "l2"),
    "3c": ((3, 5), (256, 64), (128, 32), None, None, 2, "max"),
    "4a": ((3, 5), (192, 64), (96, 32), 128, 256, 1, "l2"),
    "4e": ((3, 5), (256, 128), (160, 64), None, None, 2, "max"),
    "5a": ((3,), (384,), (96,), 96, 256, 1, "l2"),
    "5b": ((3,), (384,), (96,), 96, 256, 1, "max"),
}


class OpenFaceNN4Small2(nn.Module):
  """OpenFace nn4.small2 (cmusatyalab/openface models/openface/nn4.small2.def.lua), 96x96:
  conv 64 7x7/2 -> max 3x3/2 -> LRN -> conv 64 1x1 -> conv 192 3x3 -> LRN -> max 3x3/2 ->
  inception 3a 3b 3c 4a 4e 5a 5b (12 -> 6 -> 3 px) -> 3x3 average -> linear 736 -> 128 ->
  L2 normalisation. Input: OpenFace feeds RGB in [0, 1]."""
  embed_dim: int = 128
  normalize: bool = True
  num_classes: int = 0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x / 255.0
    x = TorchConvBN(64, 7, 2, name="conv1", **dt)(x, train)
    x = cross_map_lrn(nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))))
    x = TorchConvBN(64, 1, name="conv2", **dt)(x, train)
    x = TorchConvBN(192, 3, name="conv3", **dt)(x, train)
    x = nn.max_pool(cross_map_lrn(x), (3, 3), (2, 2), ((1, 1), (1, 1)))
    for name, (k, o, r, pp, one, s, pool) in NN4_SMALL2.items():
      x = OpenFaceInception(k, o, r, pp, one, s, pool, name=f"inception_{name}", **dt)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return finish(self, nn.Dense(self.embed_dim, name="linear", **dt)(x))


@register_model("openface_nn4_small2")
def openface_nn4_small2(**kwargs) -> OpenFaceNN4Small2:
  """OpenFace's nn4.small2: 96x96 -> 128-D, L2-normalised (3.73 M parameters)."""
  return OpenFaceNN4Small2(**kwargs)

