"""The original MTCNN weights: readers for the `mtcnn` and `facenet-pytorch` packages' files
and for a user's copies, and the `mtcnn` converter.

    jaxvision convert --model mtcnn auto runs/mtcnn       # or mtcnn, facenet-pytorch, a path
    jaxvision detect-faces photo.jpg --json faces.json --checkpoint runs/mtcnn

`load_mtcnn_weights(source)` -> {"pnet": variables, "rnet": ..., "onet": ...} is what
`detector.mtcnn_detector()` uses by default. The registered converter writes the three
nets into one workdir (params {"pnet": ..., "rnet": ..., "onet": ...}, model name
"mtcnn", task "face_cascade"), which `detect-faces --checkpoint` reads as a whole cascade.
The `mtcnn` package's files are lz4-compressed joblib pickles and are only ever read
from the installed package; a user's files go through the safe readers of
`jaxvision.core.weights` (no unpickling).
"""
from __future__ import annotations

import importlib.util
import io
import os
from typing import Any

import jax
import numpy as np

from jaxvision.core import weights as W
from jaxvision.core.errors import WeightsError
from jaxvision.core.registry import register_converter


class MTCNNWeightsError(WeightsError):
  """The original MTCNN weights cannot be found or read (one line)."""


_INSTALL_HINT = ("the original MTCNN weights ship in the `mtcnn` package: pip install mtcnn "
                 "(or jaxvision[mtcnn]); facenet-pytorch's copies work too")
_NETS = ("pnet", "rnet", "onet")


def _package_dir(name: str) -> str | None:
  """The installed package's folder, found without importing it (`mtcnn` imports TF)."""
  try:
    spec = importlib.util.find_spec(name)
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.submodule_search_locations:
    return None
  return list(spec.submodule_search_locations)[0]


def _read_lz4_joblib(path: str) -> list[np.ndarray]:
  """The `mtcnn` package's assets: an lz4 frame holding a joblib pickle of arrays.

  Only ever called on the files inside the installed package (unpickling is not safe
  on user-named files, which go through jaxvision.core.weights instead).
  """
  import joblib
  import lz4.frame
  with open(path, "rb") as f:
    buf = lz4.frame.decompress(f.read())
  arrays = joblib.load(io.BytesIO(buf))
  if not isinstance(arrays, (list, tuple)) or not all(isinstance(a, np.ndarray) for a in arrays):
    raise MTCNNWeightsError(f"{path}: not a list of arrays")
  return [np.asarray(a, np.float32) for a in arrays]


def _conv_p(k, b):
  return {"kernel": np.asarray(k, np.float32), "bias": np.asarray(b, np.float32)}


def _from_keras(net: str, w: list[np.ndarray]) -> dict:
  """Keras weight list (set_weights order) -> flax params. Box head precedes face head."""
  w = [np.asarray(a, np.float32) for a in w]
  p: dict[str, Any] = {}
  n_conv = {"pnet": 3, "rnet": 3, "onet": 4}[net]
  i = 0
  for j in range(1, n_conv + 1):
    p[f"conv{j}"] = _conv_p(w[i], w[i + 1])
    p[f"prelu{j}"] = {"alpha": w[i + 2].reshape(-1)}
    i += 3
  if net != "pnet":
    fc = {"rnet": "fc4", "onet": "fc5"}[net]
    p[fc] = _conv_p(w[i], w[i + 1])
    p[f"prelu{n_conv + 1}"] = {"alpha": w[i + 2].reshape(-1)}
    i += 3
  heads = ["box", "landmarks", "face"] if net == "onet" else ["box", "face"]
  for h in heads:
    p[h] = _conv_p(w[i], w[i + 1])
    i += 2
  if i != len(w):
    raise MTCNNWeightsError(f"{net}: {len(w)} Keras arrays, expected {i}")
  return {"params": p}


def _from_torch(net: str, sd: dict[str, np.ndarray]) -> dict:
  """facenet-pytorch state dict -> flax params (OIHW -> HWIO, (out, in) -> (in, out))."""
  used: set[str] = set()

  def t(key):
    used.add(key)
    return np.asarray(W.take(sd, key), np.float32)

  p: dict[str, Any] = {}
  n_conv = {"pnet": 3, "rnet": 3, "onet": 4}[net]
  for j in range(1, n_conv + 1):
    p[f"conv{j}"] = _conv_p(t(f"conv{j}.weight").transpose(2, 3, 1, 0), t(f"conv{j}.bias"))
    p[f"prelu{j}"] = {"alpha": t(f"prelu{j}.weight").reshape(-1)}
  if net == "pnet":
    heads = {"face": "conv4_1", "box": "conv4_2"}
    for h, k in heads.items():
      p[h] = _conv_p(t(f"{k}.weight").transpose(2, 3, 1, 0), t(f"{k}.bias"))
  else:
    d = {"rnet": 4, "onet": 5}[net]
    p[f"fc{d}"] = _conv_p(t(f"dense{d}.weight").T, t(f"dense{d}.bias"))
    p[f"prelu{d}"] = {"alpha": t(f"prelu{d}.weight").reshape(-1)}
    heads = {"face": f"dense{d + 1}_1", "box": f"dense{d + 1}_2"}
    if net == "onet":
      heads["landmarks"] = f"dense{d + 1}_3"
    for h, k in heads.items():
      p[h] = _conv_p(t(f"{k}.weight").T, t(f"{k}.bias"))
  W.check_all_used(sd, used)
  return {"params": p}


def convert_keras(net: str, arrays: list[np.ndarray]) -> dict:
  """Public: the `mtcnn` package's Keras weight list for `net` -> flax variables."""
  return _from_keras(net, arrays)


def convert_torch(net: str, state_dict: dict) -> dict:
  """Public: a facenet-pytorch state dict for `net` -> flax variables."""
  return _from_torch(net, state_dict)


# The released nets' parameter shapes (tests/faces/test_mtcnn_weights.py checks this table
# against jax.eval_shape of the models): a table, because tracing three inits to get them
# costs every detect-faces run 0.4 s.
def _shapes(convs, prelus, dense=(), heads=()):
  out = {f"conv{i + 1}": {"kernel": k, "bias": k[-1:]} for i, k in enumerate(convs)}
  out.update({f"prelu{i + 1}": {"alpha": (n,)} for i, n in enumerate(prelus)})
  out.update({name: {"kernel": k, "bias": k[-1:]} for name, k in (*dense, *heads)})
  return {"params": out}


MTCNN_SHAPES = {
    "pnet": _shapes([(3, 3, 3, 10), (3, 3, 10, 16), (3, 3, 16, 32)], (10, 16, 32),
                    heads=[("face", (1, 1, 32, 2)), ("box", (1, 1, 32, 4))]),
    "rnet": _shapes([(3, 3, 3, 28), (3, 3, 28, 48), (2, 2, 48, 64)], (28, 48, 64, 128),
                    dense=[("fc4", (576, 128))], heads=[("face", (128, 2)), ("box", (128, 4))]),
    "onet": _shapes([(3, 3, 3, 32), (3, 3, 32, 64), (3, 3, 64, 64), (2, 2, 64, 128)],
                    (32, 64, 64, 128, 256), dense=[("fc5", (1152, 256))],
                    heads=[("face", (256, 2)), ("box", (256, 4)), ("landmarks", (256, 10))]),
}


def _check_shapes(variables: dict) -> dict:
  """Every converted tree must match the released architecture exactly."""
  for net, v in variables.items():
    if jax.tree.map(np.shape, v) != MTCNN_SHAPES[net]:
      raise MTCNNWeightsError(f"{net}: converted parameter shapes do not match MTCNN's")
  return variables


def load_mtcnn_weights(source: str = "auto") -> dict[str, dict]:
  """{"pnet": variables, "rnet": ..., "onet": ...} holding the original MTCNN weights.

  source: "auto" (the `mtcnn` package, else facenet-pytorch), "mtcnn",
  "facenet-pytorch", or a path: a folder with {pnet,rnet,onet}.{pt,npz,safetensors}
  in facenet-pytorch's layout, or one .npz/.safetensors/.pt file whose keys are
  prefixed "pnet.", "rnet.", "onet.". User paths are read without unpickling.
  """
  if source in ("auto", "mtcnn"):
    d = _package_dir("mtcnn")
    files = [os.path.join(d or "", "assets", "weights", f"{n}.lz4") for n in _NETS]
    if d and all(os.path.isfile(f) for f in files):
      try:
        return _check_shapes({n: _from_keras(n, _read_lz4_joblib(f))
                              for n, f in zip(_NETS, files)})
      except ImportError as e:
        raise MTCNNWeightsError(f"reading the mtcnn package's weights needs {e.name} "
                                f"(pip install {e.name})") from None
    if source == "mtcnn":
      raise MTCNNWeightsError(f"the mtcnn package is not installed: {_INSTALL_HINT}")
  if source in ("auto", "facenet-pytorch"):
    d = _package_dir("facenet_pytorch")
    files = [os.path.join(d or "", "data", f"{n}.pt") for n in _NETS]
    if d and all(os.path.isfile(f) for f in files):
      return _load_torch_files(dict(zip(_NETS, files)))
    raise MTCNNWeightsError(f"no MTCNN weights found: {_INSTALL_HINT}"
                            if source == "auto" else
                            f"facenet-pytorch is not installed: {_INSTALL_HINT}")
  return _load_user_path(source)


def _load_torch_files(files: dict[str, str]) -> dict:
  return _check_shapes({n: _from_torch(n, W.load_state_dict(f)) for n, f in files.items()})


def _from_prefixed(sd: dict, what: str) -> dict:
  """One flat state dict with keys "pnet.*", "rnet.*", "onet.*" -> {net: variables}."""
  out = {}
  for n in _NETS:
    sub = {k[len(n) + 1:]: v for k, v in sd.items() if k.startswith(n + ".")}
    if not sub:
      raise MTCNNWeightsError(f"{what}: no keys starting with {n + '.'!r}")
    out[n] = _from_torch(n, sub)
  left = [k for k in sd if not k.startswith(tuple(n + "." for n in _NETS))]
  if left:
    raise MTCNNWeightsError(f"{what}: unexpected key {left[0]!r}")
  return _check_shapes(out)


def _load_user_path(path: str) -> dict:
  exts = (".pt", ".pth", ".npz", ".safetensors")
  if os.path.isdir(path):
    files = {}
    for n in _NETS:
      found = [os.path.join(path, n + e) for e in exts if os.path.isfile(os.path.join(path, n + e))]
      if not found:
        raise MTCNNWeightsError(f"{path}: no {n}.pt/.npz/.safetensors in this folder")
      files[n] = found[0]
    return _load_torch_files(files)
  if not os.path.isfile(path):
    raise MTCNNWeightsError(f"{path}: no such file or folder (source is 'auto', 'mtcnn', "
                            "'facenet-pytorch' or a path)")
  if not path.lower().endswith(exts):
    raise MTCNNWeightsError(f"{path}: weights must be .pt, .npz or .safetensors")
  return _from_prefixed(W.load_state_dict(path), path)


# ---------------------------------------------------------------- the converter
@register_converter(
    "mtcnn", task="face_cascade", load=load_mtcnn_weights,
    help="the original MTCNN weights (IN: auto, mtcnn, facenet-pytorch, or a folder/file of "
    ".pt/.npz/.safetensors) -> one workdir with P-, R- and O-Net for detect-faces --checkpoint")
def convert_mtcnn(nets: dict) -> dict:
  """The three nets in one variables tree: {"params": {"pnet": ..., "rnet": ..., "onet": ...}}.

  nets: what `load_mtcnn_weights` returns ({"pnet": variables, ...}), or one flat state
  dict with "pnet."/"rnet."/"onet." prefixed keys in facenet-pytorch's layout. The workdir
  has no per-net model kwargs: these are the released nets (width 1)."""
  if not (isinstance(nets, dict) and set(nets) == set(_NETS)
          and all(isinstance(v, dict) and "params" in v for v in nets.values())):
    nets = _from_prefixed(dict(nets), "state dict")
  return {"params": {n: nets[n]["params"] for n in _NETS}}
