"""EDSR-PyTorch weights -> flax variables for `edsr` and `edsr_baseline`.

  jaxvision convert --model edsr --kwargs scale=4 EDSR_x4.pt OUT_WORKDIR

writes a `super_resolution` workdir that `jaxvision upscale` and `jaxvision sr-eval`
read like a trained one.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.core.registry import create_model, register_converter
from jaxvision.core.weights import WeightsError, check_all_used, take
# Importing the family's models also registers the ones create_model builds below.
from jaxvision.superres.models import DIV2K_RGB_MEAN


def _torch_key(path: tuple[str, ...]) -> str:
  """Flax path ('body_3', 'body_0', 'kernel') -> 'body.3.body.0.weight'."""
  *mods, leaf = path
  return ".".join(m.replace("_", ".") for m in mods) + "." + {"kernel": "weight",
                                                             "bias": "bias"}[leaf]


def _edsr_shape_hint(sd: dict) -> str:
  try:
    f = sd["head.0.weight"].shape[0]
    blocks = len({k.split(".")[1] for k in sd if k.startswith("body.") and ".body.0." in k})
    ups = sorted({k for k in sd if k.startswith("tail.0.") and k.endswith(".weight")})
    if len(ups) == 1:
      r = int(round(math.sqrt(sd[ups[0]].shape[0] / f)))
    else:
      r = 2 ** len(ups)
    return f" (the state dict holds an x{r} EDSR with {blocks} blocks of {f} channels: " \
           f"--kwargs scale={r},n_resblocks={blocks},n_feats={f})"
  except Exception:  # pylint: disable=broad-except
    return ""


def convert_edsr(sd: dict, model_name: str = "edsr", **model_kwargs) -> dict:
  """EDSR-PyTorch (`sanghyun-son/EDSR-PyTorch`, model/edsr.py) state dict -> flax variables.

  Keys: sub_mean/add_mean (fixed MeanShift convs, checked), head.0, body.{i}.body.{0,2},
  body.{n}, tail.0.{0,2,...} (upsampler convs; PixelShuffle order kept), tail.1. A
  'module.' prefix (DataParallel) is stripped. res_scale is not in the file: `edsr`
  uses 0.1, `edsr_baseline` 1 (override with --kwargs res_scale=...)."""
  sd = {(k[len("module."):] if k.startswith("module.") else k): np.asarray(v)
        for k, v in sd.items()}
  model = create_model(model_name, **model_kwargs)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
  used: set[str] = set()

  def convert(path, leaf):
    names = tuple(getattr(p, "key", str(p)) for p in path)
    key = _torch_key(names)
    if names[-1] == "kernel":
      kh, kw, ci, co = leaf.shape
      v = take(sd, key, (co, ci, kh, kw)).transpose(2, 3, 1, 0)
    else:
      v = take(sd, key, leaf.shape)
    used.add(key)
    return np.asarray(v, np.float32)

  try:
    params = jax.tree_util.tree_map_with_path(convert, abstract["params"])
  except WeightsError as e:
    raise WeightsError(f"{e}{_edsr_shape_hint(sd)}") from None
  mean = np.asarray(DIV2K_RGB_MEAN) * model.rgb_range
  for name, sign in (("sub_mean", -1.0), ("add_mean", 1.0)):
    w = take(sd, f"{name}.weight", (3, 3, 1, 1))
    b = take(sd, f"{name}.bias", (3,))
    if not np.allclose(w[:, :, 0, 0], np.eye(3), atol=1e-4) or not np.allclose(
        b, sign * mean, rtol=1e-3, atol=1e-3):
      raise WeightsError(f"{name}: not the DIV2K mean shift at rgb_range {model.rgb_range:g} "
                         f"(bias {np.round(b, 3).tolist()}); pass --kwargs rgb_range=...")
    used |= {f"{name}.weight", f"{name}.bias"}
  try:
    check_all_used(sd, used)
  except WeightsError as e:
    raise WeightsError(f"{e}{_edsr_shape_hint(sd)}") from None
  return {"params": params}


def _edsr_converter(name):
  def fn(sd, **kwargs):
    return convert_edsr(sd, name, **kwargs)
  return fn


for _name in ("edsr", "edsr_baseline"):
  register_converter(_name, task="super_resolution",
                     help="EDSR-PyTorch state dict; --kwargs scale=2|3|4")(_edsr_converter(_name))
