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
