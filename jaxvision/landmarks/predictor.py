"""Landmarks for faces in images: a loaded model, compiled per shape bucket, and the
mapping from detector boxes to dlib rectangles.

    lm = landmarker("dlib_ert_68")                 # the installed package's .dat file
    lm = landmarker(checkpoint="runs/dlib68")      # a `jaxvision convert` workdir
    points = lm(image_uint8, rects)                # (K, P, 2) float (x, y) pixels

Images are padded bottom/right to a shape bucket (`core.buckets`, multiples of 64) and the
face count to a power of two; the true size goes in as a value (samples beyond it read 0,
as dlib's outside-the-image test does), so a folder of mixed sizes compiles a handful of
programs and the padding changes no point.
"""
from __future__ import annotations

import numpy as np

from jaxvision.core import buckets
from jaxvision.core.errors import CheckpointError, UserError

MODELS = ("dlib_ert_68", "dlib_ert_5")
TRAINED = ("pfld",)

# MTCNN boxes are not dlib's detector rectangles: MTCNN's box runs from the forehead to the
# chin and is taller than wide, dlib's HOG detector gives a square from the eyebrows to
# the chin, which is what the shape predictors were trained on. Measured on the 9 faces
# that both detectors find in the test photos (astronaut and eight LFW faces,
# tests/landmarks/photos.py): dlib's centre is MTCNN's moved down by 0.068 (+-0.04) of the
# box height (sideways -0.03 +- 0.06 of the width: not significant, not applied), its side
# 1.131 (+-0.05) x MTCNN's width and 0.858 (+-0.05) x its height. The mapping below takes
# the centre moved down and a square side, the mean of the two estimates.
MTCNN_DY, MTCNN_SIDE_W, MTCNN_SIDE_H = 0.068, 1.131, 0.858


def round_rect(box) -> list[int]:
  """A box [x1, y1, x2, y2] as dlib's integer rectangle (left, top, right, bottom),
  each corner rounded to the nearest integer (floor(v + 0.5), dlib's point rounding)."""
  return [int(np.floor(float(v) + 0.5)) for v in box]


def rect_from_mtcnn(box) -> list[int]:
  """dlib-detector-like rectangle for an MTCNN box (see MTCNN_DY above)."""
  x1, y1, x2, y2 = (float(v) for v in box)
  w, h = x2 - x1, y2 - y1
  cx, cy = (x1 + x2) / 2, (y1 + y2) / 2 + MTCNN_DY * h
  half = (MTCNN_SIDE_W * w + MTCNN_SIDE_H * h) / 4
  return round_rect([cx - half, cy - half, cx + half, cy + half])


class Landmarker:
  def __init__(self, model, variables, name: str):
    import jax
    # on the device once: jit arguments given as numpy are copied in on every call (65 MB
    # of leaves for the 68-point model: most of a single face's time)
    self.model, self.variables, self.name = model, jax.device_put(variables), name
    self.num_points = int(np.shape(variables["params"]["initial_shape"])[0])
    self._run = jax.jit(lambda v, img, rects, sizes: model.apply(v, img, rects, None, sizes))

  def __call__(self, image: np.ndarray, rects) -> np.ndarray:
    """(K, P, 2) float32 (x, y) points of the K rectangles (left, top, right, bottom)."""
    rects = np.asarray(rects, np.float32).reshape(-1, 4)
    k = len(rects)
    if k == 0:
      return np.zeros((0, self.num_points, 2), np.float32)
    h, w = image.shape[:2]
    hb, wb = buckets.bucket_shape(h, w, 64)
    img = buckets.pad_to(np.asarray(image), hb, wb)[None]
    kb = 1 << (k - 1).bit_length()
    rp = np.concatenate([rects, np.repeat(rects[:1], kb - k, 0)])
    out = self._run(self.variables, img, rp, np.array([[h, w]], np.float32))
    return np.asarray(out)[:k]


class CropLandmarker:
  """A crop-based network (PFLD): each rectangle becomes the square crop the training
  pipeline made around a face's points (data.crop_face with the rectangle's corners
  standing for the points: dlib's rectangle spans about the 68 points' box), the net
  predicts unit-frame points, mapped back to the image."""

  def __init__(self, model, variables, name: str, size: int, scale: float):
    import jax
    self.name, self.size, self.scale = name, size, scale
    self.variables = jax.device_put(variables)
    self.num_points = int(model.num_points)
    self._run = jax.jit(lambda v, x: model.apply(v, x, train=False)["landmarks"])

  def __call__(self, image: np.ndarray, rects) -> np.ndarray:
    from jaxvision.landmarks.crop import crop_face
    rects = np.asarray(rects, np.float32).reshape(-1, 4)
    if not len(rects):
      return np.zeros((0, self.num_points, 2), np.float32)
    crops, frames = [], []
    for l, t, r, b in rects:
      corners = np.array([[l, t], [r, b]], np.float32)
      crop, _ = crop_face(image, corners, self.size, self.scale)
      side = max(float(max(r - l, b - t)) * self.scale, 4.0)
      frames.append(((l + r) / 2 - side / 2, (t + b) / 2 - side / 2, side))
      crops.append(crop)
    kb = 1 << (len(crops) - 1).bit_length()
    x = np.stack(crops + [crops[0]] * (kb - len(crops)))
    unit = np.asarray(self._run(self.variables, x))[:len(crops)].reshape(len(crops), -1, 2)
    f = np.array(frames, np.float32)
    return unit * f[:, None, 2:3] + f[:, None, :2]


def landmarker(model: str | None = None, checkpoint: str | None = None,
               weights: str | None = None) -> Landmarker:
  """A Landmarker from a workdir, or from a registered dlib model's .dat file
  (`weights`: a path, default the installed package's file)."""
  from jaxvision.core.registry import create_model
  if checkpoint:
    from jaxvision.core import checkpoint as ckpt
    config, net, variables, _ = ckpt.load_model(checkpoint, "landmarks", "a landmark model")
    if config.model.name not in MODELS + TRAINED:
      raise CheckpointError(f"{checkpoint}: a {config.model.name} workdir; detect-landmarks "
                            f"runs {', '.join(MODELS + TRAINED)}")
    if model and model != config.model.name:
      raise UserError(f"{checkpoint}: holds {config.model.name}, not --model {model}")
    if config.model.name in TRAINED:
      return CropLandmarker(net, variables, config.model.name,
                            int(config.model.kwargs.get("input_size", 112)),
                            float(config.data.get("crop_scale", 1.25)))
    return Landmarker(net, variables, config.model.name)
  model = model or "dlib_ert_68"
  if model not in MODELS:
    raise UserError(f"--model {model}: needs --checkpoint WORKDIR (no released weights); "
                    f"without one: {', '.join(MODELS)}")
  from jaxvision.landmarks import convert
  from jaxvision.landmarks import models as _registers  # noqa: F401  (the dlib models)
  variables, dims = convert.load_predictor(model, weights)
  return Landmarker(create_model(model, **dims), variables, model)
