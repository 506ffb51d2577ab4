"""dlib's face-recognition ResNet file -> flax variables for `dlib_resnet`.

    jaxvision convert --model dlib_resnet auto runs/dlib        # the installed package's file
    jaxvision convert --model dlib_resnet my/dlib_face_recognition_resnet_model_v1.dat runs/dlib
    jaxvision embed-faces photos/ --json faces.json --checkpoint runs/dlib

The file is read by `dlib_dnn.load_dnn` (pure byte arithmetic, no code runs). The converter
then walks the file's layers from the input up beside the layout that `dlib_resnet`'s
architecture implies (`expected_layout`), so a file of another dlib network (another
depth, other strides or paddings, tags in other places) is refused with the index and
kind of the first layer that differs, rather than loaded into the wrong places.

"auto" finds `dlib_face_recognition_resnet_model_v1.dat` in the installed
`face-recognition-models` package (the optional extra `jaxvision[dlib]`) without importing
it (its __init__ needs pkg_resources).
"""
from __future__ import annotations

import os

import numpy as np

from jaxvision.core.dlib_format import package_models_dir  # the installed .dat files
from jaxvision.core.errors import WeightsError
from jaxvision.core.registry import register_converter
from jaxvision.recognition.dlib_dnn import DlibNet, load_dnn
from jaxvision.recognition.models import DLIB_MEAN, DLIB_UNITS

DLIB_FILE = "dlib_face_recognition_resnet_model_v1.dat"
INSTALL_HINT = ("dlib's face-recognition model ships in the face-recognition-models "
                "package: pip install 'jaxvision[dlib]' (or pip install face-recognition-models)")




def default_dlib_file() -> str:
  d = package_models_dir()
  path = os.path.join(d, DLIB_FILE) if d else ""
  if not (path and os.path.isfile(path)):
    raise WeightsError(f"{DLIB_FILE} not found: {INSTALL_HINT}")
  return path


def load_dlib_resnet(source: str = "auto") -> DlibNet:
  """The parsed network of `source`: "auto" (the installed package's file) or a path."""
  if source in ("auto", "dlib", "face-recognition-models"):
    source = default_dlib_file()
  if not os.path.isfile(source):
    raise WeightsError(f"{source}: no such file (give a {DLIB_FILE} or 'auto')")
  return load_dnn(source)


def expected_layout(units=DLIB_UNITS, embed_dim: int = 128, stem: int = 32) -> list[tuple]:
  """[(kind, attrs to check, flax module path or None)] of `dlib_resnet` from the input up,
  in the order dlib serialises it (tags and skips as "tag")."""
  out = [("input", {"size": (150, 150)}, None),
         ("con", {"filters": stem, "size": (7, 7), "stride": (2, 2), "padding": (0, 0)},
          ("stem_conv",)),
         ("affine", {}, ("stem_affine",)), ("relu", {}, None),
         ("max_pool", {"size": (3, 3), "stride": (2, 2), "padding": (0, 0)}, None)]
  for i, (f, down) in enumerate(units):
    u = f"unit{i}"
    s, p = (2, 0) if down else (1, 1)
    out += [("tag", {}, None),
            ("con", {"filters": f, "size": (3, 3), "stride": (s, s), "padding": (p, p)},
             (u, "conv1")),
            ("affine", {}, (u, "affine1")), ("relu", {}, None),
            ("con", {"filters": f, "size": (3, 3), "stride": (1, 1), "padding": (1, 1)},
             (u, "conv2")),
            ("affine", {}, (u, "affine2"))]
    if down:  # tag2, skip1, avg_pool 2x2/2
      out += [("tag", {}, None), ("tag", {}, None),
              ("avg_pool", {"size": (2, 2), "stride": (2, 2), "padding": (0, 0)}, None)]
    out += [("add_prev", {}, None), ("relu", {}, None)]
  out += [("avg_pool", {"size": (0, 0), "stride": (1, 1), "padding": (0, 0)}, None),
          ("fc", {"outputs": embed_dim, "bias": False}, ("fc",))]
  return out


def _describe(kind, attrs) -> str:
  return kind + (f" {attrs}" if attrs else "")


def dlib_net_to_variables(net: DlibNet, what: str = "dlib file") -> dict:
  """The `dlib_resnet` variables of a parsed dlib network (WeightsError when its structure
  is not the face ResNet's)."""
  layout = expected_layout()
  if len(net.layers) != len(layout):
    raise WeightsError(f"{what}: {len(net.layers)} layers, dlib_resnet has {len(layout)} "
                       "(another dlib network?)")
  mean = net.layers[0].arrays["mean"]
  if not np.allclose(mean, DLIB_MEAN, atol=1e-3):
    raise WeightsError(f"{what}: input mean {np.round(mean, 3).tolist()}, dlib_resnet "
                       f"subtracts {list(DLIB_MEAN)}")
  params: dict = {}
  prev_c = 3
  for i, (layer, (kind, attrs, path)) in enumerate(zip(net.layers, layout)):
    have = {k: layer.attrs.get(k) for k in attrs}
    if layer.kind != kind or have != attrs:
      raise WeightsError(f"{what}: layer {i} is {_describe(layer.kind, layer.attrs)}, "
                         f"dlib_resnet expects {_describe(kind, attrs)}")
    if path is None:
      continue
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    a = layer.arrays
    if kind == "con":
      f = a["filters"]
      if f.shape[1] != prev_c:
        raise WeightsError(f"{what}: layer {i} takes {f.shape[1]} channels, not {prev_c}")
      node[path[-1]] = {"kernel": np.ascontiguousarray(f.transpose(2, 3, 1, 0)),
                        "bias": a["bias"]}
      prev_c = f.shape[0]  # a unit's sum has the conv branch's channels (>= the shortcut's)
    elif kind == "affine":
      node[path[-1]] = {"scale": a["gamma"], "bias": a["beta"]}
      if a["gamma"].size != prev_c:
        raise WeightsError(f"{what}: layer {i} scales {a['gamma'].size} channels, not {prev_c}")
    elif kind == "fc":
      node[path[-1]] = {"kernel": a["weights"]}
  out = {"params": params}
  n = sum(np.size(v) for v in _leaves(params))
  if n != net.file_param_count:
    raise WeightsError(f"{what}: {n} parameters mapped of the file's {net.file_param_count}")
  return out


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


@register_converter(
    "dlib_resnet", task="face_embedding", load=load_dlib_resnet,
    help="dlib's face-recognition ResNet (IN: auto for the installed face-recognition-models "
    f"package's {DLIB_FILE}, or a path to that file) -> a workdir for embed-faces --checkpoint")
def convert_dlib_resnet(net, **model_kwargs) -> dict:
  """Converter: a parsed `DlibNet` (what `load_dlib_resnet` returns) -> flax variables."""
  if model_kwargs:
    raise WeightsError(f"dlib_resnet takes no --kwargs for the released file "
                       f"(got {', '.join(model_kwargs)})")
  if not isinstance(net, DlibNet):
    raise WeightsError("dlib_resnet converts a dlib .dat file (give its path or 'auto')")
  return dlib_net_to_variables(net)


def dlib_resnet_variables(source: str = "auto") -> dict:
  """The released dlib_resnet variables, converted on the fly (0.1 s) from `source`."""
  net = load_dlib_resnet(source)
  return dlib_net_to_variables(net, source)
