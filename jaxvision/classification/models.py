"""ResNet (He et al. 2016), SE-ResNet / SE-ResNeXt (Hu et al. 2018) and SPP-net (He et al. 2014).

One `ResNet` module; the variants are arguments, as in timm (`attn_layer='se'`):

  resnet18/34/50/101/152          basic (18, 34) or bottleneck blocks
  se_resnet18/34/50/101/152       + a Squeeze-and-Excitation gate after the last BN of
                                  every block (`se=True`), r = 16, at least 8 units
                                  (timm's make_divisible(c/16, 8) for these widths)
  se_resnext50_32x4d/101_32x4d    + grouped 3x3 convolutions, 32 groups of width 4
  spp_resnet18                    ResNet-18 with a spatial pyramid pool instead of the
                                  global average (any input size, the same weights)
  spp_net                         the ZF-5-style SPP-net classifier (conv1-5, SPP, fc6-8)

Input: NHWC floats in [0, 1]; the ImageNet mean/std normalisation is inside the model
(`input_norm="imagenet"`, or "none"), so converted timm/torchvision weights work on
raw [0, 1] images. `model.apply(v, x)` returns logits; `model.apply(v, x,
features=True)` returns {"logits", "pre_logits", "stages": {"stage1".."stage4"}} for
perceptual losses and detection heads. `num_classes=0` drops the classifier (logits are
then the pre-logits). BatchNorm statistics live in the "batch_stats" collection.

Parameter names follow timm/torchvision (`layer1_0/conv1` <-> `layer1.0.conv1`,
`downsample_conv/_bn` <-> `downsample.0/1`, `se/fc1` <-> `se.fc1`), so
`jaxvision.classification.convert.load(name, path)` imports their .pth/.safetensors
files; `jaxvision convert --model se_resnet50 IN OUT` does the same from the command line.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.core import layers, scan
from jaxvision.core.registry import register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _dtype(d):
  return None if d is None else jnp.dtype(d)


def _normalize(x, how: str, dtype):
  x = x.astype(jnp.float32)
  if how == "imagenet":
    x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
  elif how != "none":
    raise ValueError(f"input_norm {how!r}: choose imagenet or none")
  return x.astype(dtype or jnp.float32)


# ---------------------------------------------------------------- spatial pyramid pooling
def _bin_masks(size: int, n: int) -> np.ndarray:
  """(n, size) bool: bin i covers [floor(i*size/n), ceil((i+1)*size/n)) (never empty,
  overlapping when size < n), as adaptive max pooling."""
  i = np.arange(n)
  start = (i * size) // n
  end = -((-(i + 1) * size) // n)
  pos = np.arange(size)
  return (pos[None] >= start[:, None]) & (pos[None] < end[:, None])


def spatial_pyramid_pool(x, levels: Sequence[int] = (6, 3, 2, 1)):
  """(B, H, W, C) -> (B, C * sum(n*n)): max over an n x n grid of bins per level.

  Separable masked maxima (columns, then rows): one vectorised op per level for any H, W."""
  b, h, w, c = x.shape
  low = jnp.asarray(jnp.finfo(x.dtype).min, x.dtype)
  outs = []
  for n in levels:
    cols = jnp.asarray(_bin_masks(w, n))            # (n, W)
    rows = jnp.asarray(_bin_masks(h, n))            # (n, H)
    y = jnp.max(jnp.where(cols[None, None, :, :, None], x[:, :, None], low), axis=3)  # B,H,n,C
    z = jnp.max(jnp.where(rows[None, :, :, None, None], y[:, None], low), axis=2)     # B,n,n,C
    outs.append(z.reshape(b, n * n * c))
  return jnp.concatenate(outs, axis=-1)


class SpatialPyramidPool(nn.Module):
  """SPP layer (He et al. 2014): fixed-length output from any feature-map size."""
  levels: Sequence[int] = (6, 3, 2, 1)

  def __call__(self, x):
    return spatial_pyramid_pool(x, tuple(self.levels))


# ---------------------------------------------------------------- blocks
def _conv(dtype, param_dtype=jnp.float32):
  return functools.partial(nn.Conv, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                           conv_general_dilated=layers.conv_general_dilated)


def _norm(train, dtype, param_dtype=jnp.float32):
  # torch momentum 0.1 == flax momentum 0.9; eps as torch. The running mean/var
  # ("batch_stats") are float32 whatever dtype/param_dtype: flax's BatchNorm reduces the
  # batch statistics in float32 (it promotes bf16 inputs) and stores them so.
  return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                           epsilon=1e-5, dtype=dtype, param_dtype=param_dtype)


class Block(nn.Module):
  """Basic (3x3, 3x3) or bottleneck (1x1, grouped 3x3, 1x1 x4) residual block; stride on
  the 3x3 (torchvision/timm "v1.5"); optional SE gate before the residual sum."""
  planes: int
  stride: int = 1
  bottleneck: bool = True
  groups: int = 1
  base_width: int = 64
  se: bool = False
  se_reduction: int = 16
  downsample: bool = False
  zero_init_last: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = _conv(self.dtype, self.param_dtype)
    norm = _norm(train, self.dtype, self.param_dtype)
    last_scale = nn.initializers.zeros if self.zero_init_last else nn.initializers.ones
    s, p1 = (self.stride, self.stride), ((1, 1), (1, 1))
    if self.bottleneck:
      width = int(self.planes * (self.base_width / 64.0)) * self.groups
      out_ch = self.planes * 4
      y = nn.relu(norm(name="bn1")(conv(width, (1, 1), name="conv1")(x)))
      y = conv(width, (3, 3), s, p1, feature_group_count=self.groups, name="conv2")(y)
      y = nn.relu(norm(name="bn2")(y))
      y = norm(name="bn3", scale_init=last_scale)(conv(out_ch, (1, 1), name="conv3")(y))
    else:
      out_ch = self.planes
      y = nn.relu(norm(name="bn1")(conv(out_ch, (3, 3), s, p1, name="conv1")(x)))
      y = norm(name="bn2", scale_init=last_scale)(conv(out_ch, (3, 3), (1, 1), p1, name="conv2")(y))
    if self.se:
      y = layers.SqueezeExcite(self.se_reduction, min_channels=8, dtype=self.dtype,
                               param_dtype=self.param_dtype, name="se")(y)
    if self.downsample:
      x = norm(name="downsample_bn")(conv(out_ch, (1, 1), s, "VALID", name="downsample_conv")(x))
    return nn.relu(y + x)


class ResNet(nn.Module):
  """ResNet / SE-ResNet / (SE-)ResNeXt by argument. x: (B, H, W, 3) in [0, 1]."""
  layers: Sequence[int] = (3, 4, 6, 3)
  bottleneck: bool = True
  num_classes: int = 1000
  width: int = 64              # stage-1 planes; 16 makes a 1/16-FLOP model for CPU tests
  groups: int = 1              # ResNeXt cardinality
  base_width: int = 64         # ResNeXt width per group (4 for 32x4d)
  se: bool = False
  se_reduction: int = 16
  stem: str = "imagenet"       # "imagenet": 7x7/2 + maxpool; "cifar": one 3x3/1 conv
  pool: str = "avg"            # "avg" or "spp" (spatial pyramid pool of `spp_levels`)
  spp_levels: Sequence[int] = (6, 3, 2, 1)
  input_norm: str = "imagenet"
  zero_init_last: bool = False  # timm's default True; False lets every weight learn at step 0
  dtype: Any = None            # compute dtype ("bfloat16" on GPU/TPU); None: float32
  param_dtype: Any = jnp.float32  # parameters' dtype (float32 master weights)
  scan: bool = True            # each stage's identical blocks (all but its first) scanned
  remat: bool = False          # recompute the scanned blocks' activations in the backward pass

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    if x.ndim != 4:
      raise ValueError(f"ResNet expects NHWC input, got shape {x.shape}")
    dt, pdt = _dtype(self.dtype), _dtype(self.param_dtype)
    conv, norm = _conv(dt, pdt), _norm(train, dt, pdt)
    x = _normalize(x, self.input_norm, dt)
    if self.stem == "imagenet":
      x = nn.relu(norm(name="bn1")(conv(self.width, (7, 7), (2, 2), ((3, 3), (3, 3)),
                                        name="conv1")(x)))
      x = nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    elif self.stem == "cifar":
      x = nn.relu(norm(name="bn1")(conv(self.width, (3, 3), (1, 1), ((1, 1), (1, 1)),
                                        name="conv1")(x)))
    else:
      raise ValueError(f"stem {self.stem!r}: choose imagenet or cifar")
    expansion = 4 if self.bottleneck else 1
    stages = {}
    in_ch = self.width
    for i, n in enumerate(self.layers):
      planes = self.width * 2 ** i
      block = dict(planes=planes, bottleneck=self.bottleneck, groups=self.groups,
                   base_width=self.base_width, se=self.se, se_reduction=self.se_reduction,
                   zero_init_last=self.zero_init_last, dtype=dt, param_dtype=pdt)
      stride = 2 if i > 0 else 1
      # the first block changes stride and width; the others are identical: one scan
      x = Block(**block, stride=stride, downsample=(stride != 1 or in_ch != planes * expansion),
                name=f"layer{i + 1}_0")(x, train)
      in_ch = planes * expansion
      x = scan.repeat(self, Block, block, [f"layer{i + 1}_{j}" for j in range(1, n)], x,
                      train=train, scan=self.scan, remat=self.remat)
      stages[f"stage{i + 1}"] = x
    if self.pool == "avg":
      pre = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    elif self.pool == "spp":
      pre = spatial_pyramid_pool(x.astype(jnp.float32), tuple(self.spp_levels))
    else:
      raise ValueError(f"pool {self.pool!r}: choose avg or spp")
    logits = pre
    if self.num_classes:
      logits = nn.Dense(self.num_classes, dtype=dt, param_dtype=pdt,
                        name="fc")(pre).astype(jnp.float32)
    if features:
      return {"logits": logits, "pre_logits": pre, "stages": stages}
    return logits


class SPPNet(nn.Module):
  """SPP-net classifier on a ZF-5-style trunk (He et al. 2014, without LRN):
  conv1 7x7/2 - pool - conv2 5x5/2 - pool - conv3..5 3x3 - SPP - fc6 - fc7 - fc8.
  Any input size gives the same fc6 input length (channels x 50 bins by default)."""
  num_classes: int = 1000
  widths: Sequence[int] = (96, 256, 384, 384, 256)
  fc_dim: int = 4096
  levels: Sequence[int] = (6, 3, 2, 1)
  dropout: float = 0.5
  input_norm: str = "imagenet"
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    dt, pdt = _dtype(self.dtype), _dtype(self.param_dtype)
    conv = functools.partial(nn.Conv, dtype=dt, param_dtype=pdt,
                             conv_general_dilated=layers.conv_general_dilated)
    x = _normalize(x, self.input_norm, dt)
    w = self.widths
    pool = lambda y: nn.max_pool(y, (3, 3), (2, 2), ((1, 1), (1, 1)))
    stages = {}
    x = stages["stage1"] = pool(nn.relu(conv(w[0], (7, 7), (2, 2), ((3, 3), (3, 3)), name="conv1")(x)))
    x = stages["stage2"] = pool(nn.relu(conv(w[1], (5, 5), (2, 2), ((2, 2), (2, 2)), name="conv2")(x)))
    x = stages["stage3"] = nn.relu(conv(w[2], (3, 3), name="conv3")(x))
    x = nn.relu(conv(w[3], (3, 3), name="conv4")(x))
    x = stages["stage4"] = nn.relu(conv(w[4], (3, 3), name="conv5")(x))
    y = spatial_pyramid_pool(x.astype(jnp.float32), tuple(self.levels))
    for name in ("fc6", "fc7"):
      y = nn.relu(nn.Dense(self.fc_dim, dtype=dt, param_dtype=pdt, name=name)(y))
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
    pre = y.astype(jnp.float32)
    logits = nn.Dense(self.num_classes, dtype=dt, param_dtype=pdt,
                      name="fc8")(y).astype(jnp.float32)
    if features:
      return {"logits": logits, "pre_logits": pre, "stages": stages}
    return logits


# ---------------------------------------------------------------- registry
_ARCHS = {  # name: (layers, bottleneck, extra kwargs)
    "resnet18": ((2, 2, 2, 2), False, {}),
    "resnet34": ((3, 4, 6, 3), False, {}),
    "resnet50": ((3, 4, 6, 3), True, {}),
    "resnet101": ((3, 4, 23, 3), True, {}),
    "resnet152": ((3, 8, 36, 3), True, {}),
    "se_resnet18": ((2, 2, 2, 2), False, {"se": True}),
    "se_resnet34": ((3, 4, 6, 3), False, {"se": True}),
    "se_resnet50": ((3, 4, 6, 3), True, {"se": True}),
    "se_resnet101": ((3, 4, 23, 3), True, {"se": True}),
    "se_resnet152": ((3, 8, 36, 3), True, {"se": True}),
    "se_resnext50_32x4d": ((3, 4, 6, 3), True, {"se": True, "groups": 32, "base_width": 4}),
    "se_resnext101_32x4d": ((3, 4, 23, 3), True, {"se": True, "groups": 32, "base_width": 4}),
}

# timm names of the same architectures (their pretrained files convert with ours)
TIMM_NAMES = {"se_resnet18": "seresnet18", "se_resnet34": "seresnet34",
              "se_resnet50": "seresnet50", "se_resnet101": "seresnet101",
              "se_resnet152": "seresnet152", "se_resnext50_32x4d": "seresnext50_32x4d",
              "se_resnext101_32x4d": "seresnext101_32x4d"}


def _factory(name):
  blocks, bottleneck, extra = _ARCHS[name]

  def make(**kwargs) -> ResNet:
    return ResNet(**{"layers": blocks, "bottleneck": bottleneck, **extra, **kwargs})

  make.__name__ = name
  make.__doc__ = f"{name}: ResNet(layers={blocks}, bottleneck={bottleneck}, {extra})"
  return make


for _name in _ARCHS:
  register_model(_name)(_factory(_name))


@register_model("spp_resnet18")
def spp_resnet18(**kwargs) -> ResNet:
  return ResNet(**{"layers": (2, 2, 2, 2), "bottleneck": False, "pool": "spp", **kwargs})


@register_model("spp_net")
def spp_net(**kwargs) -> SPPNet:
  return SPPNet(**kwargs)


# ---------------------------------------------------------------- shapes
def abstract_variables(model: nn.Module, size: int = 32):
  """Shapes of the model's variables (no compute)."""
  return abstract_init(model, (1, size, size, 3))[1]


def abstract_init(model: nn.Module, shape=(1, 32, 32, 3), **call_kwargs):
  """(output, variables) shapes of `model.init_with_output` in one trace (no compute)."""
  x = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
  return jax.eval_shape(lambda x: model.init_with_output(
      jax.random.key(0, impl="rbg"), x, train=False, **call_kwargs), x)  # rbg: cheap to trace
