"""VGG-16 / VGG-19 feature extractors (Simonyan & Zisserman 2015) as perceptual descriptors.

    >>> fn, pretrained = load_descriptor("vgg16-397923af.pth")   # or None: random weights
    >>> feats = fn(images)            # NHWC RGB in [0, 1] -> {"relu1_1": ..., "relu5_3": ...}

The module takes RGB images in [0, 1] and does the ImageNet preprocessing itself, from a
"preprocess" variable collection (not trained): y = (x @ matrix - mean) / std. Its default
is torchvision's (matrix = identity, mean/std of ImageNet in [0, 1]); the Keras converter
writes Caffe's (matrix = 255 * RGB->BGR permutation, BGR means in [0, 255], std = 1), so
either weight file runs with exactly the preprocessing it was trained with.

Weights: torchvision state dicts (`features.N.weight`, OIHW -> HWIO; `classifier.*` is
ignored) and Keras h5 files (`block1_conv1/...kernel|W`, already HWIO) through
`jaxvision convert --model vgg16 FILE OUT_WORKDIR`; `load_descriptor` also reads those
files directly. `width` scales every layer's channels (tests and quick CPU runs only:
pretrained weights exist for width 1).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.core import weights as jv_weights
from jaxvision.core.registry import register_converter, register_model as register

# Channels per block; each block ends with a 2x2 max pool (after the last block too).
CONFIGS = {
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def layer_names(arch: str = "vgg16") -> list[str]:
  """['relu1_1', 'relu1_2', 'relu2_1', ...]: the feature keys, in depth order."""
  return [f"relu{b + 1}_{i + 1}" for b, blk in enumerate(CONFIGS[arch]) for i in range(len(blk))]


def torch_indices(arch: str = "vgg16") -> dict[str, int]:
  """{'conv1_1': 0, 'conv1_2': 2, 'conv2_1': 5, ...}: torchvision `features.N` of each conv."""
  out, idx = {}, 0
  for b, blk in enumerate(CONFIGS[arch]):
    for i in range(len(blk)):
      out[f"conv{b + 1}_{i + 1}"] = idx
      idx += 2  # conv, relu
    idx += 1    # max pool
  return out


class VGG(nn.Module):
  """Convolutional part of VGG; returns every ReLU activation (unused ones cost nothing
  under jit: XLA drops the layers no output depends on).

  `dtype` is the convolutions' compute dtype: None (the default) is the float32 network
  the perceptual losses and the parity tests use; bfloat16 halves its cost on
  accelerators. The preprocessing runs in float32 and every feature is returned float32
  (the content/Gram/TV losses sum over many pixels and stay float32). `param_dtype` is the
  kernels' dtype (float32: the converted weights as read)."""

  arch: str = "vgg16"
  width: float = 1.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False) -> dict[str, jnp.ndarray]:
    del train  # no dropout / batch norm in the feature part
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"VGG expects NHWC RGB images, got shape {x.shape}")
    if self.arch not in CONFIGS:
      raise ValueError(f"unknown VGG arch {self.arch!r}; choose from: {', '.join(CONFIGS)}")
    matrix = self.variable("preprocess", "matrix", lambda: jnp.eye(3, dtype=jnp.float32)).value
    mean = self.variable("preprocess", "mean", lambda: jnp.asarray(TORCH_MEAN, jnp.float32)).value
    std = self.variable("preprocess", "std", lambda: jnp.asarray(TORCH_STD, jnp.float32)).value
    dt = jnp.dtype(self.dtype) if isinstance(self.dtype, str) else self.dtype
    pdt = jnp.dtype(self.param_dtype) if isinstance(self.param_dtype, str) else self.param_dtype
    h = (x.astype(jnp.float32) @ matrix - mean) / std
    if dt is not None:
      h = h.astype(dt)
    feats = {}
    # He (fan-in) init keeps activations at unit scale through 16 layers, so a randomly
    # initialised descriptor still gives usable Gram statistics.
    init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
    for b, blk in enumerate(CONFIGS[self.arch]):
      if b:
        h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")  # floors odd sizes, as torch
      for i, c in enumerate(blk):
        name = f"{b + 1}_{i + 1}"
        h = nn.Conv(max(1, int(round(c * self.width))), (3, 3), padding=((1, 1), (1, 1)),
                    kernel_init=init, dtype=dt, param_dtype=pdt, name=f"conv{name}")(h)
        h = nn.relu(h)
        feats[f"relu{name}"] = h.astype(jnp.float32)
    return feats


@register("vgg16")
def vgg16(**kwargs) -> VGG:
  return VGG(arch="vgg16", **kwargs)


@register("vgg19")
def vgg19(**kwargs) -> VGG:
  return VGG(arch="vgg19", **kwargs)


def variable_shapes(arch: str = "vgg16", width: float = 1.0) -> dict:
  """The variables' shapes without computing anything (jax.eval_shape)."""
  model = VGG(arch=arch, width=width)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))


# ---------------------------------------------------------------- converters
def _preprocess(kind: str) -> dict:
  if kind == "torch":
    return {"matrix": np.eye(3, dtype=np.float32), "mean": np.asarray(TORCH_MEAN, np.float32),
            "std": np.asarray(TORCH_STD, np.float32)}
  # Caffe/Keras: BGR in [0, 255] minus the BGR channel means.
  return {"matrix": (255.0 * np.eye(3, dtype=np.float32)[:, ::-1]).copy(),
          "mean": np.asarray(CAFFE_MEAN_BGR, np.float32), "std": np.ones(3, np.float32)}


def _is_keras(sd: dict) -> bool:
  return any("block1_conv1" in k for k in sd)


def _keras_key(sd: dict, layer: str, what: str) -> str:
  """The h5 dataset of `layer`'s kernel or bias, in Keras 2 or tf.keras naming:
  block1_conv1/block1_conv1_W_1:0, .../kernel:0, model_weights/block1_conv1/.../bias:0."""
  tags = ("kernel", "_W") if what == "kernel" else ("bias", "_b")
  hits = [k for k in sd if f"{layer}/" in k and any(t in k.rsplit("/", 1)[-1] for t in tags)]
  if len(hits) != 1:
    raise jv_weights.WeightsError(
        f"h5 file: {'no' if not hits else f'{len(hits)}'} {what} dataset(s) for {layer}"
        + (f" ({', '.join(hits[:3])})" if hits else ""))
  return hits[0]


def convert_state_dict(sd: dict, arch: str = "vgg16", width: float = 1.0) -> dict:
  """torchvision or Keras-h5 state dict -> flax variables (params + preprocess)."""
  shapes = variable_shapes(arch, width)["params"]
  params, used = {}, set()
  keras = _is_keras(sd)
  idx = torch_indices(arch)
  for b, blk in enumerate(CONFIGS[arch]):
    for i in range(len(blk)):
      name = f"conv{b + 1}_{i + 1}"
      ks, bs = shapes[name]["kernel"].shape, shapes[name]["bias"].shape
      if keras:
        kk, bk = _keras_key(sd, f"block{b + 1}_conv{i + 1}", "kernel"), \
            _keras_key(sd, f"block{b + 1}_conv{i + 1}", "bias")
        kernel = jv_weights.take(sd, kk, ks)  # Keras kernels are HWIO already
      else:
        kk, bk = f"features.{idx[name]}.weight", f"features.{idx[name]}.bias"
        kernel = jv_weights.take(sd, kk, (ks[3], ks[2], ks[0], ks[1])).transpose(2, 3, 1, 0)
      params[name] = {"kernel": np.ascontiguousarray(kernel, np.float32),
                      "bias": jv_weights.take(sd, bk, bs).astype(np.float32)}
      used |= {kk, bk}
  # The classifier (fc6-8 / fc1, fc2, predictions) is not part of the descriptor.
  ignore = (lambda k: not any(f"block{b}_" in k for b in range(1, 6))) if keras \
      else (lambda k: k.startswith("classifier."))
  jv_weights.check_all_used(sd, used, ignore)
  return {"params": params, "preprocess": _preprocess("caffe" if keras else "torch")}


@register_converter("vgg16", task="descriptor",
                               help="torchvision vgg16 .pth or Keras vgg16 *_notop.h5")
def convert_vgg16(sd, width: float = 1.0):
  return convert_state_dict(sd, "vgg16", width)


@register_converter("vgg19", task="descriptor",
                               help="torchvision vgg19 .pth or Keras vgg19 *_notop.h5")
def convert_vgg19(sd, width: float = 1.0):
  return convert_state_dict(sd, "vgg19", width)


# ---------------------------------------------------------------- descriptor
_WARNED: set = set()


def load_variables(weights: str | None = None, arch: str = "vgg16", width: float = 1.0,
                   seed: int = 0) -> tuple[dict, bool]:
  """(variables, pretrained) from a weights file, a converted workdir, or random init."""
  variables, pretrained, _, _ = _load(weights, arch, width, seed)
  return variables, pretrained


def _load(weights, arch, width, seed):
  if arch not in CONFIGS:
    raise ValueError(f"unknown descriptor {arch!r}; choose from: {', '.join(CONFIGS)}")
  if weights:
    if os.path.isdir(weights):  # a `jaxvision convert` workdir
      from jaxvision.core import checkpoint as jv_ckpt
      config, variables, _ = jv_ckpt.load_variables(weights)  # CheckpointError: one line
      if config.model.name not in CONFIGS:
        raise jv_weights.WeightsError(f"{weights}: holds {config.model.name!r}, not a VGG")
      return variables, True, config.model.name, float(config.model.kwargs.get("width", 1.0))
    return convert_state_dict(jv_weights.load_state_dict(weights), arch, width), True, arch, width
  model = VGG(arch=arch, width=width)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3))))(
      jax.random.key(seed, impl="rbg"))
  key = (arch, width)
  if key not in _WARNED:
    _WARNED.add(key)
    print(f"warning: descriptor {arch} has RANDOM weights (no VGG weights given): perceptual "
          f"and style losses use random features. Pass a torchvision {arch} .pth or a Keras "
          f"{arch}_weights_tf_dim_ordering_tf_kernels_notop.h5 (docs/style.md).", flush=True)
  return variables, False, arch, width


def arch_of_state_dict(sd: dict, what: str = "weights") -> str:
  """'vgg16' or 'vgg19' from a torchvision or Keras VGG state dict (its number of 3x3
  convolutions: 13 or 16), else a WeightsError naming `what`."""
  n = sum(1 for k, v in sd.items() if getattr(v, "ndim", 0) == 4 and (
      k.startswith("features.") or "_conv" in k))
  for arch, blocks in CONFIGS.items():
    if n == sum(len(b) for b in blocks):
      return arch
  raise jv_weights.WeightsError(f"{what}: {n} convolution kernels, not a VGG-16 (13) or "
                                "VGG-19 (16) file")


def load_descriptor(weights: str | None = None, arch: str = "vgg16", width: float = 1.0,
                    seed: int = 0) -> tuple[Callable[[jnp.ndarray], dict[str, jnp.ndarray]], bool]:
  """(feature_fn, pretrained): feature_fn(NHWC RGB in [0,1]) -> {relu1_1: ..., relu5_x: ...}
  with the parameters closed over (a pure function: jit it or call it inside jit).
  `weights`: torchvision .pth/.safetensors, Keras .h5, a converted workdir, or None for a
  random init (prints a warning once; pretrained is then False). `arch` "auto": the one
  the weights hold (a file's convolution count, a workdir's config), VGG-19 without
  weights. feature_fn.arch says which it is."""
  if arch == "auto":
    if weights and not os.path.isdir(weights):
      sd = jv_weights.load_state_dict(weights)
      arch = arch_of_state_dict(sd, weights)
      variables, pretrained = convert_state_dict(sd, arch, width), True
    else:
      variables, pretrained, arch, width = _load(weights, "vgg19", width, seed)
  else:
    variables, pretrained, arch, width = _load(weights, arch, width, seed)  # a workdir: its own
  model = VGG(arch=arch, width=width)
  variables = jax.tree.map(jnp.asarray, variables)

  def features(x):
    return model.apply(variables, x)

  features.arch = arch
  return features, pretrained

