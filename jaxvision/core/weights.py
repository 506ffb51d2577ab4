"""Pretrained weights: safe loading of other frameworks' files, converters, workdirs.

Loading never unpickles arbitrary objects:
  .pt/.pth/.bin  torch.load(weights_only=True)   (torch needed only for these files)
  .safetensors   safetensors.numpy
  .npz           numpy with allow_pickle=False
  .h5/.hdf5      h5py (Keras layouts: every dataset, keyed by its path)
`load_state_dict(path)` returns a flat {name: np.ndarray}.

Families register a converter per model name: `fn(state_dict, **model_kwargs) ->
variables` (a flax variables dict {"params": ..., maybe "batch_stats": ...}), and a
task name, so `jaxvision convert --model NAME IN OUT_WORKDIR` writes a workdir that
every `--checkpoint WORKDIR` command reads like a trained one (`save_workdir`).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np


from jaxvision.core import registry  # noqa: E402
from jaxvision.core.errors import WeightsError  # noqa: E402  (re-exported)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """{name: array} from a torch/safetensors/npz/h5 file, without unpickling code."""
  if not os.path.isfile(path):
    raise WeightsError(f"{path}: no such file")
  ext = os.path.splitext(path)[1].lower()
  try:
    if ext == ".safetensors":
      from safetensors.numpy import load_file
      return dict(load_file(path))
    if ext == ".npz":
      with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
    if ext in (".h5", ".hdf5", ".keras"):
      return _load_h5(path)
    if ext in (".pt", ".pth", ".bin", ".ckpt", ".tar"):
      return _load_torch(path)
  except WeightsError:
    raise
  except ImportError as e:
    raise WeightsError(f"{path}: reading {ext} files needs {e.name} "
                       f"(pip install {e.name})") from None
  except Exception as e:  # corrupt or hostile file: one line, never a traceback
    raise WeightsError(f"{path}: not a readable {ext} weights file "
                       f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
                       ) from None
  raise WeightsError(f"{path}: unknown weights format {ext!r}; "
                     "use .pt/.pth (torch), .safetensors, .npz or .h5")


def _load_torch(path: str) -> dict[str, np.ndarray]:
  import torch  # noqa: F401  (dev/user dependency, only for torch files)
  obj = torch.load(path, map_location="cpu", weights_only=True)  # no arbitrary code
  # Common wrappers: {"state_dict": ...}, {"model": ...}, Lightning/EMA checkpoints.
  for key in ("state_dict", "model", "model_state_dict", "params"):
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
      break
  if not isinstance(obj, dict):
    raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  out = {}
  for k, v in obj.items():
    if hasattr(v, "detach"):
      out[k.removeprefix("module.")] = v.detach().cpu().float().numpy() if v.is_floating_point() \
          else v.detach().cpu().numpy()
  return out


def _load_h5(path: str) -> dict[str, np.ndarray]:
  import h5py
  out = {}
  with h5py.File(path, "r") as f:
    def visit(name, obj):
      if isinstance(obj, h5py.Dataset):
        out[name] = np.asarray(obj)
    f.visititems(visit)
  return out


# ---------------------------------------------------------------- converters
def convert(model_name: str, path_or_state_dict, **model_kwargs) -> dict:
  """Flax variables for `model_name` from a file path or an already loaded state dict.

  The converters live in each family's `convert.py` (registered in
  `jaxvision.core.registry`); the entry points import the families first."""
  conv = registry.get_converter(model_name)
  if conv is None:
    raise WeightsError(f"no converter for model {model_name!r}; converters exist for: "
                       f"{', '.join(registry.list_converters()) or 'none'}")
  if isinstance(path_or_state_dict, (str, os.PathLike)):
    path = os.fspath(path_or_state_dict)
    sd = conv.load(path) if conv.load is not None else load_state_dict(path)
  else:
    sd = path_or_state_dict if conv.load is not None else dict(path_or_state_dict)
  return conv.fn(sd, **model_kwargs)


def take(sd: dict[str, np.ndarray], key: str, shape: tuple | None = None) -> np.ndarray:
  """sd[key] with a one-line error naming the key (and the shape when it differs)."""
  if key not in sd:
    raise WeightsError(f"state dict has no {key!r} (has {len(sd)} keys, e.g. "
                       f"{', '.join(list(sd)[:3])})")
  v = np.asarray(sd[key])
  if shape is not None and tuple(v.shape) != tuple(shape):
    raise WeightsError(f"{key}: shape {tuple(v.shape)}, expected {tuple(shape)}")
  return v


def check_all_used(sd: dict, used: set[str], ignore: Callable[[str], bool] = lambda k: False):
  """Every key of the state dict was mapped (a converter that drops weights is a bug)."""
  left = sorted(k for k in sd if k not in used and not ignore(k))
  if left:
    raise WeightsError(f"{len(left)} state-dict key(s) not mapped: {', '.join(left[:5])}"
                       + (" ..." if len(left) > 5 else ""))


# ---------------------------------------------------------------- workdirs
def save_workdir(workdir: str, variables: dict, *, task: str, model_name: str,
                 model_kwargs: dict | None = None, extra_config: dict | None = None,
                 source: str = "") -> None:
  """Writes `workdir/config.json` + an Orbax step 0, readable by checkpoint.load_variables
  (and so by every `--checkpoint WORKDIR` command), like a trained run's workdir."""
  import jax
  import ml_collections
  import orbax.checkpoint as ocp
  from jaxvision.core import checkpoint as jv_ckpt

  ckdir = os.path.join(os.path.abspath(workdir), jv_ckpt.CHECKPOINT_DIR)
  if os.path.isdir(ckdir) and os.listdir(ckdir):
    raise WeightsError(f"{workdir}: already holds checkpoints; choose a new folder")
  config = ml_collections.ConfigDict({
      "task": task, "model": {"name": model_name, "kwargs": dict(model_kwargs or {})},
      "converted_from": str(source), **(extra_config or {})})
  params = variables["params"]
  state = {"params": params, "step": np.int32(0),
           "model_state": {k: v for k, v in variables.items() if k != "params"}}
  state = jax.tree.map(np.asarray, state)
  if not jv_ckpt.all_finite(state):
    raise WeightsError("converted weights hold NaN or Inf; nothing written")
  os.makedirs(workdir, exist_ok=True)
  mngr = ocp.CheckpointManager(ckdir, options=ocp.CheckpointManagerOptions(create=True),
                               item_handlers={"state": ocp.StandardCheckpointHandler()})
  mngr.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  mngr.wait_until_finished()
  mngr.close()
  jv_ckpt.save_config(workdir, config)  # last: a workdir with a config is complete


def param_count(tree: Any) -> int:
  import jax
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))
