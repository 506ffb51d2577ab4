"""The one registry: models, weight converters, trainer tasks and CLI commands, by name.

A leaf module (as timm's and CompressAI's registries are): it imports nothing of
jaxvision, families import it and fill it when they are imported, and the entry
points (`jaxvision.models`, `jaxvision.cli`, `train`) import `jaxvision.families`
first so that every family has registered.

    @register_model("can24")                      # fn(**kwargs) -> flax.linen.Module
    @register_converter("edsr", task="superres")  # fn(state_dict, **kwargs) -> variables
    register_task("super_resolution", Task(...))  # what the generic trainer trains
    register_commands(add)                        # add(subparsers): a family's subcommands
    register_face_detector("mtcnn", factory)      # factory(**kw) -> a face detector
    register_landmarker("dlib_ert_5", factory)    # factory(**kw) -> a landmark predictor

Face detectors and landmark predictors are services that one family (faces, landmarks)
offers to others (recognition, landmarks) without their importing it (ARCHITECTURE.md,
rule 1): the offering family's `commands.py` registers its factories, and a command of
another family asks the registry for one by name when it runs.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable

_MODELS: dict[str, Callable[..., Any]] = {}
_CONVERTERS: dict[str, "Converter"] = {}
_TASKS: dict[str, Any] = {}
_COMMANDS: list[Callable[[Any], None]] = []
_FACE_DETECTORS: dict[str, Callable[..., Any]] = {}
_LANDMARKERS: dict[str, Callable[..., Any]] = {}


def _unknown(kind: str, name: str, known) -> str:
  close = difflib.get_close_matches(name, list(known), n=3)
  hint = f" (did you mean {', '.join(close)}?)" if close else ""
  return f"unknown {kind} {name!r}{hint}; registered: {', '.join(sorted(known)) or 'none'}"


# ---------------------------------------------------------------- models
def register_model(name: str):
  """Decorator: registers `fn(**kwargs) -> nn.Module` under `name`."""

  def deco(fn):
    if name in _MODELS:
      raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn

  return deco


# Loaders of the models not imported yet (`jaxvision.cli` sets one: every family's models),
# run once at the first lookup that misses. A command then imports only the models it
# uses: the others (flax and some 60 architectures, 0.5-0.6 s on 2 CPU cores) only when a
# workdir names a model no imported family has registered.
_MODEL_LOADERS: list[Callable[[], None]] = []


def load_models_on_demand(loader: Callable[[], None]) -> None:
  """`loader()` registers more models; it runs at the first lookup of an unknown name."""
  _MODEL_LOADERS.append(loader)


def _load_pending_models() -> None:
  while _MODEL_LOADERS:
    _MODEL_LOADERS.pop(0)()


def list_models() -> list[str]:
  _load_pending_models()
  return sorted(_MODELS)


def create_model(name: str, **kwargs):
  """The registered model `name` built with `kwargs` (an un-initialised linen Module)."""
  if name not in _MODELS:
    _load_pending_models()
  if name not in _MODELS:
    raise ValueError(_unknown("model", name, _MODELS))
  return _MODELS[name](**kwargs)


# ---------------------------------------------------------------- converters
@dataclasses.dataclass(frozen=True)
class Converter:
  fn: Callable[..., dict]     # (state_dict, **model_kwargs) -> flax variables
  task: str                   # the trainer task whose commands read the workdir
  help: str = ""
  # Reads a file or folder itself instead of a generic state dict (formats that are
  # not a flat {name: array}, e.g. the MTCNN packages' three files); None: the generic
  # safe readers of jaxvision.core.weights.
  load: Callable[[str], Any] | None = None


def register_converter(model_name: str, task: str, help: str = "",
                       load: Callable[[str], Any] | None = None):
  """Decorator: `fn(state_dict, **model_kwargs) -> variables` converts for `model_name`."""

  def deco(fn):
    _CONVERTERS[model_name] = Converter(fn, task, help, load)
    return fn

  return deco


def list_converters() -> list[str]:
  return sorted(_CONVERTERS)


def get_converter(model_name: str) -> Converter | None:
  return _CONVERTERS.get(model_name)


# ---------------------------------------------------------------- tasks
def register_task(name: str, task) -> None:
  if name in _TASKS:
    raise ValueError(f"task {name!r} is registered twice")
  _TASKS[name] = task


def get_task(name: str):
  if name not in _TASKS:
    raise ValueError(_unknown("task", name, _TASKS))
  return _TASKS[name]


def list_tasks() -> list[str]:
  return sorted(_TASKS)


# ---------------------------------------------------------------- commands
def register_commands(add: Callable[[Any], None]) -> Callable[[Any], None]:
  """`add(subparsers)` adds a family's subcommands to the `jaxvision` command line."""
  if add not in _COMMANDS:
    _COMMANDS.append(add)
  return add


def command_adders() -> list[Callable[[Any], None]]:
  return list(_COMMANDS)


# ---------------------------------------------------------------- face detectors
def register_face_detector(name: str, factory: Callable[..., Any]) -> None:
  """`factory(**kwargs)` builds a face detector: an object whose
  `detect_each(images)` takes a list of RGB uint8 (H, W, 3) arrays of any sizes and yields,
  per image and in order, a list of faces `{"box": [x1, y1, x2, y2], "score": float,
  "landmarks": [[x, y] * 5]}` in input pixels, sorted by score; the five landmarks are
  left eye, right eye, nose, left and right mouth corner (the image's left and right),
  MTCNN's order; `landmarks` is empty for a detector that has none."""
  _FACE_DETECTORS[name] = factory


def get_face_detector(name: str, **kwargs):
  """The face detector `name` built with `kwargs` (see register_face_detector)."""
  if name not in _FACE_DETECTORS:
    raise ValueError(_unknown("face detector", name, _FACE_DETECTORS))
  return _FACE_DETECTORS[name](**kwargs)


def list_face_detectors() -> list[str]:
  return sorted(_FACE_DETECTORS)


# ---------------------------------------------------------------- landmark predictors
def register_landmarker(name: str, factory: Callable[..., Any]) -> None:
  """`factory(**kwargs)` builds a landmark predictor `lm`: `lm(image, boxes)` takes an RGB
  uint8 (H, W, 3) array and a list of face boxes [x1, y1, x2, y2] and returns a float
  (K, P, 2) array of (x, y) points in input pixels, one row per box, in order; `lm.name`
  and `lm.num_points` say what it is. kwargs every factory takes: `box_kind` ("dlib":
  the boxes are dlib rectangles (left, top, right, bottom), only rounded; "mtcnn": MTCNN
  boxes, mapped to the rectangles the predictor was trained on) and `weights` (a model
  file, None for the installed default); a missing model file raises a UserError."""
  _LANDMARKERS[name] = factory


def get_landmarker(name: str, **kwargs):
  """The landmark predictor `name` built with `kwargs` (see register_landmarker)."""
  if name not in _LANDMARKERS:
    raise ValueError(_unknown("landmark predictor", name, _LANDMARKERS))
  return _LANDMARKERS[name](**kwargs)


def list_landmarkers() -> list[str]:
  return sorted(_LANDMARKERS)
