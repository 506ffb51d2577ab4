"""timm/torchvision weights for the classification family's ResNets.

Parameter names of `jaxvision.classification.models` follow timm/torchvision
(`layer1_0/conv1` <-> `layer1.0.conv1`, `downsample_conv/_bn` <-> `downsample.0/1`,
`se/fc1` <-> `se.fc1`, `fc`), so a converter is a rename plus a transpose per kernel:

    variables = load("se_resnet50", "seresnet50.pth")          # or .safetensors / .npz
    variables = load("resnet50", "resnet50.pth", num_classes=0)  # backbone only

Every model variable must be in the state dict and every state-dict key must be used
(BN's num_batches_tracked aside); a different head size is an error that names
`num_classes=N`. Each of the twelve ResNet / SE-ResNet / SE-ResNeXt names is registered
as a converter (task "classification"), so `jaxvision convert --model se_resnet50 IN
OUT` writes a workdir that `jaxvision classify` reads. The SPP variants have no
timm/torchvision counterpart.
"""
from __future__ import annotations

import functools
import re
from typing import Sequence

import jax
import numpy as np

from jaxvision.classification.models import _ARCHS, TIMM_NAMES, ResNet, abstract_variables
from jaxvision.core import weights as jv_weights
from jaxvision.core.errors import WeightsError
from jaxvision.core.registry import create_model, register_converter


# ---------------------------------------------------------------- weight import
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias",
         "mean": "running_mean", "var": "running_var"}


def torch_key(path: Sequence[str]) -> str:
  """Flax variable path (without the collection) -> timm/torchvision state-dict key."""
  parts = []
  for p in path[:-1]:
    m = re.fullmatch(r"layer(\d+)_(\d+)", p)
    if m:
      parts += [f"layer{m[1]}", m[2]]
    elif p in ("downsample_conv", "downsample_bn"):
      parts += ["downsample", "0" if p.endswith("conv") else "1"]
    else:
      parts.append(p)
  return ".".join(parts + [_LEAF[path[-1]]])


def _to_flax(key: str, v: np.ndarray, shape: tuple) -> np.ndarray:
  if len(shape) == 4:  # conv (O, I/g, kh, kw) -> (kh, kw, I/g, O)
    want = (shape[3], shape[2], shape[0], shape[1])
    if v.shape != want:
      raise WeightsError(f"{key}: shape {v.shape}, expected {want}")
    return v.transpose(2, 3, 1, 0)
  if len(shape) == 2:  # Linear (O, I) or a 1x1 conv (O, I, 1, 1) as in timm's SE
    if v.ndim == 4 and v.shape[2:] == (1, 1):
      v = v[:, :, 0, 0]
    if v.shape != (shape[1], shape[0]):
      raise WeightsError(f"{key}: shape {v.shape}, expected {(shape[1], shape[0])}"
                         + ("; pass num_classes=" + str(v.shape[0])
                            if key.startswith("fc.") else ""))
    return v.T
  if v.shape != tuple(shape):
    raise WeightsError(f"{key}: shape {v.shape}, expected {tuple(shape)}"
                       + ("; pass num_classes=" + str(v.shape[0])
                          if key.startswith("fc.") else ""))
  return v


@functools.lru_cache(maxsize=8)
def _abstract_for(name: str, kwargs: tuple):
  model = create_model(name, **dict(kwargs))
  if not isinstance(model, ResNet) or model.pool != "avg":
    raise WeightsError(f"{name}: no timm/torchvision counterpart to convert from")
  if model.stem != "imagenet":
    raise WeightsError("stem='cifar' has no timm/torchvision counterpart")
  return model, abstract_variables(model)


def convert_state_dict(name: str, sd: dict, **kwargs) -> dict:
  """Flax variables of registered model `name` from a timm/torchvision state dict.

  Every model variable must be in `sd` and every `sd` key must be used (BN's
  num_batches_tracked aside; the `fc.*` head is skipped with num_classes=0)."""
  hashable = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  model, abstract = _abstract_for(name, tuple(sorted(hashable.items())))
  used: set[str] = set()

  def fill(path, leaf):
    names = tuple(k.key for k in path)
    key = torch_key(names[1:])
    used.add(key)
    v = np.asarray(jv_weights.take(sd, key), np.float32)  # no copy when already f32
    return _to_flax(key, v, leaf.shape)

  variables = jax.tree_util.tree_map_with_path(fill, abstract)
  ignore = lambda k: k.endswith("num_batches_tracked") or (
      not model.num_classes and k.startswith("fc."))
  jv_weights.check_all_used(sd, used, ignore)
  return jax.tree.map(np.asarray, variables)


for _name in _ARCHS:
  register_converter(_name, task="classification",
                     help=f"timm/torchvision {TIMM_NAMES.get(_name, _name)}")(
      functools.partial(convert_state_dict, _name))


def load(name: str, path, **kwargs) -> dict:
  """Flax variables {"params", "batch_stats"} for `create_model(name, **kwargs)` from a
  timm/torchvision .pth (torch weights_only) / .safetensors / .npz file or a state dict.
  num_classes=0 imports the backbone without its classifier."""
  return jv_weights.convert(name, path, **kwargs)
