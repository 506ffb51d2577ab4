"""CompressAI state dicts <-> jaxvision codec variables, and their registered converters.

`from_compressai` maps a CompressAI state dict (zoo checkpoints or a trained
CompressAI model; any of its key spellings) onto our parameter tree one to one (the
models name their submodules like CompressAI's `nn.Sequential` indices);
`to_compressai` is the inverse. CompressAI's derived buffers (CDF tables, masks,
bounds) are ignored: `tables.update` rebuilds the tables from the parameters.
`jaxvision convert --model mbt2018 --kwargs quality=3 FILE WORKDIR` goes through the
converters registered here (task "compression").
"""
from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.compression.layers import GaussianConditional
from jaxvision.compression.models import MODEL_NAMES
from jaxvision.core import registry
from jaxvision.core.errors import WeightsError
from jaxvision.core.weights import check_all_used, take

# CompressAI buffers: derived state (CDF tables, masks, bounds), rebuilt here.
_IGNORED_SUFFIXES = (".pedestal", ".bound", ".target", "._offset", "._quantized_cdf",
                     "._cdf_length", ".scale_table", ".scale_bound", ".mask")
# The published zoo files use `_matrices.0` / `_matrix0`; CompressAI >= 1.2 `matrices.0`.
_EB_KEY = re.compile(r"^(?:module\.)?entropy_bottleneck\.(?:_?(matrices|biases|factors)\.|"
                     r"_(matrix|bias|factor))(\d+)$")
_EB_CANON = {"matrix": "matrices", "bias": "biases", "factor": "factors"}


def _canonical_key(k: str) -> str:
  m = _EB_KEY.match(k)
  if m:
    return f"entropy_bottleneck.{m.group(1) or _EB_CANON[m.group(2)]}.{m.group(3)}"
  return k[7:] if k.startswith("module.") else k


def _is_deconv(model, module: str) -> bool:
  name, _, i = module.rpartition("_")
  if name == "g_s":
    return True
  # h_s: transposed convs at 0 and 2 (the final 3x3 of the hyperpriors is a conv)
  return name == "h_s" and i in ("0", "2")


def _param_map(model, params_shapes):
  """[(our path tuple, CompressAI key, kind)] for every parameter of `model`."""
  out = []
  for mod, leaves in params_shapes.items():
    if mod == "entropy_bottleneck":
      for k in leaves:
        if k == "quantiles":
          out.append(((mod, k), "entropy_bottleneck.quantiles", "quantiles"))
        else:
          kind, i = k.rsplit("_", 1)
          out.append(((mod, k), f"entropy_bottleneck.{_EB_CANON[kind]}.{i}", "copy"))
      continue
    torch_mod = mod if mod == "context_prediction" else mod[::-1].replace("_", ".", 1)[::-1]
    for k in leaves:
      if k == "kernel":
        kind = "deconv" if _is_deconv(model, mod) else "conv"
        out.append(((mod, k), f"{torch_mod}.weight", kind))
      else:  # bias, GDN beta / gamma (same stored reparametrisation as CompressAI)
        out.append(((mod, k), f"{torch_mod}.{k}", "copy"))
  return out


def _to_ours(v, kind):
  if kind == "conv":  # (O, I, kh, kw) -> (kh, kw, I, O)
    return v.transpose(2, 3, 1, 0)
  if kind == "deconv":  # PyTorch's transposed conv flips the kernel; flax's does not
    return v.transpose(2, 3, 0, 1)[::-1, ::-1]
  if kind == "quantiles":
    return v.reshape(v.shape[0], 3)
  return v


def _to_torch(v, kind):
  if kind == "conv":
    return v.transpose(3, 2, 0, 1)
  if kind == "deconv":
    return v[::-1, ::-1].transpose(2, 3, 0, 1)
  if kind == "quantiles":
    return v.reshape(v.shape[0], 1, 3)
  return v


@functools.cache
def _param_shapes(model):
  init = functools.partial(model.init, train=False)
  shapes = jax.eval_shape(init, {"params": jax.random.key(0)},
                          jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  return jax.tree.map(lambda s: s.shape, shapes["params"])


def to_compressai(model, variables) -> dict[str, np.ndarray]:
  """Our params under CompressAI's names and layouts (float32 numpy; no buffers)."""
  p = variables["params"]
  return {key: np.ascontiguousarray(_to_torch(np.asarray(p[a][b], np.float32), kind))
          for (a, b), key, kind in _param_map(model, _param_shapes(model))}


def from_compressai(model, state_dict) -> dict:
  """Flax variables of `model` from a CompressAI state dict (any of its key spellings).

  Every parameter must be present with CompressAI's shape, and every key of the
  state dict must be used or be one of CompressAI's derived buffers (CDF tables,
  masks, bounds); a scale table that differs from ours is an error.
  """
  sd = {_canonical_key(k): np.asarray(v) for k, v in state_dict.items()}
  st = sd.get("gaussian_conditional.scale_table")
  if st is not None and st.size and not np.allclose(
      st, GaussianConditional().scales(), rtol=1e-5, atol=0):
    raise WeightsError("gaussian_conditional.scale_table differs from jaxvision's "
                         "(64 log-spaced scales from 0.11 to 256)")
  shapes = _param_shapes(model)
  params, used = {}, set()
  for (a, b), key, kind in _param_map(model, shapes):
    want = _to_torch(np.empty(shapes[a][b], np.float32), kind).shape
    v = take(sd, key, want).astype(np.float32)
    params.setdefault(a, {})[b] = jnp.asarray(np.ascontiguousarray(_to_ours(v, kind)))
    used.add(key)
  check_all_used(sd, used, ignore=lambda k: k.endswith(_IGNORED_SUFFIXES))
  return {"params": params}


def _register_converters():
  def make(name):
    def convert(state_dict, quality: int = 3, N: int | None = None, M: int | None = None):
      model = registry.create_model(name, quality=quality, N=N, M=M)
      sd_n = np.shape(state_dict.get("g_a.0.weight", state_dict.get("module.g_a.0.weight")))
      sd_m = np.shape(state_dict.get("g_a.6.weight", state_dict.get("module.g_a.6.weight")))
      if len(sd_n) == 4 and len(sd_m) == 4 and (sd_n[0], sd_m[0]) != (model.N, model.M):
        raise WeightsError(
            f"the state dict has N={sd_n[0]}, M={sd_m[0]} but {name} quality {quality} "
            f"has N={model.N}, M={model.M}: pass --kwargs quality=Q,N={sd_n[0]},M={sd_m[0]}")
      return from_compressai(model, state_dict)
    return convert

  for name in MODEL_NAMES:
    registry.register_converter(name, task="compression",
                                help=f"CompressAI {name} state dict (zoo checkpoints)")(make(name))


_register_converters()
