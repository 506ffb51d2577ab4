"""Landmarks for faces in images: a loaded model, compiled per shape bucket, and the
mapping from detector boxes to dlib rectangles.

    lm = landmarker("dlib_ert_68")                 # the installed package's .dat file
    lm = landmarker("facemesh")                    # the installed face_landmark.tflite
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
TRAINED = ("pfld", "cfan")   # crop -> unit-frame points networks
FACEMESH = "facemesh"

# MediaPipe's face landmark ROI (face_detection_front_detection_to_roi.pbtxt and
# face_landmark_landmarks_to_roi.pbtxt): a square of the box's longer side x 1.5 around
# its centre, turned by the eye line; from a mesh, the eye line runs from point 33 (the
# outer corner of the eye on the image's left) to point 263.
FACEMESH_SCALE = 1.5
FACEMESH_EYES = (33, 263)

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


def facemesh_roi(box, eyes=None) -> tuple[float, float, float, float]:
  """(cx, cy, side, angle) of MediaPipe's crop for a detector box [x1, y1, x2, y2] and
  optionally its two eye points [[x, y] (the eye on the image's left), [x, y]]: the box's
  centre, its longer side x 1.5, the angle of the eye line (0 without eyes)."""
  x1, y1, x2, y2 = (float(v) for v in box)
  side = max(x2 - x1, y2 - y1, 1.0) * FACEMESH_SCALE
  angle = 0.0
  if eyes is not None and len(eyes) >= 2:
    (ax, ay), (bx, by) = eyes[0][:2], eyes[1][:2]
    angle = float(np.arctan2(by - ay, bx - ax))
  return (x1 + x2) / 2, (y1 + y2) / 2, side, angle


class FaceMeshLandmarker:
  """MediaPipe's face mesh on the faces of an image: each face's rotated square crop
  (`facemesh_roi`), 192 x 192, RGB scaled to [0, 1] as MediaPipe feeds the model; the
  468 (x, y, z) points mapped back to the image (z in pixels at the image's scale).

  `passes` = 2 (the default) crops each face a second time from the first pass's mesh,
  as MediaPipe's tracking does from one video frame to the next (the axis-aligned box of
  the 468 points, x 1.5, turned by the line from point 33 to point 263): the crop the
  network was trained on, independent of how the detector's box sits on the face
  (MTCNN's box is taller than BlazeFace's, for which the 1.5 was chosen). passes = 1 is
  MediaPipe's single-image mode on the detector's box.

  Everything after the bucket padding of the image runs in one jitted program per image
  bucket and power-of-two face count: the crops (`crop.rotated_crops`), the network, the
  second pass and the mapping back."""

  name, num_points = FACEMESH, 468

  def __init__(self, model, variables, passes: int = 2):
    import jax
    import jax.numpy as jnp
    from jaxvision.landmarks import crop as C
    from jaxvision.landmarks import facemesh as F
    self.variables, self.passes = jax.device_put(variables), passes
    size = F.INPUT_SIZE
    i33, i263 = FACEMESH_EYES

    def run(v, img, index, sizes, roi):
      img = img.astype(jnp.float32) / 255.0
      for p in range(passes):
        centers, sides, angles = roi[:, :2], roi[:, 2], roi[:, 3]
        x = C.rotated_crops(img, sizes, index, centers, sides, angles, size)
        out = model.apply(v, x)
        pts = C.crop_to_image(out["landmarks"], centers, sides, angles, size)
        if p + 1 < passes:
          lo, hi = pts[..., :2].min(1), pts[..., :2].max(1)
          d = pts[:, i263, :2] - pts[:, i33, :2]
          roi = jnp.concatenate([(lo + hi) / 2, (hi - lo).max(-1, keepdims=True)
                                 * FACEMESH_SCALE, jnp.arctan2(d[:, 1:], d[:, :1])], -1)
      return pts, jax.nn.sigmoid(out["face_flag"])

    self._run = jax.jit(run)

  def faces(self, image: np.ndarray, boxes, eyes=None) -> tuple[np.ndarray, np.ndarray]:
    """(points (K, 468, 3) float32 (x, y, z), face probability (K,)) for K boxes, each
    with its optional eye points (MTCNN's first two landmarks)."""
    k = len(boxes)
    if k == 0:
      return np.zeros((0, self.num_points, 3), np.float32), np.zeros(0, np.float32)
    eyes = eyes or [None] * k
    roi = np.array([facemesh_roi(b, e) for b, e in zip(boxes, eyes)], np.float32)
    img = image if image.ndim == 3 else np.repeat(image[..., None], 3, -1)
    img = np.asarray(img)[..., :3]
    h, w = img.shape[:2]
    hb, wb = buckets.bucket_shape(h, w, 64)
    img = buckets.pad_to(img, hb, wb)[None]
    kb = 1 << (k - 1).bit_length()
    roi = np.concatenate([roi, np.repeat(roi[:1], kb - k, 0)])
    pts, prob = self._run(self.variables, img, np.zeros(kb, np.int32),
                          np.array([[h, w]], np.float32), roi)
    return np.asarray(pts)[:k], np.asarray(prob)[:k]

  def __call__(self, image: np.ndarray, boxes, eyes=None) -> np.ndarray:
    """(K, 468, 2) float32 (x, y) points, as the other landmarkers give them."""
    return self.faces(image, boxes, eyes)[0][..., :2]


def landmarker(model: str | None = None, checkpoint: str | None = None,
               weights: str | None = None) -> Landmarker:
  """A Landmarker from a workdir, or from a registered dlib model's .dat file
  (`weights`: a path, default the installed package's file)."""
  from jaxvision.core.registry import create_model
  if model == FACEMESH and not checkpoint:
    from jaxvision.landmarks import convert
    from jaxvision.landmarks import models as _fm  # noqa: F401  (registers facemesh)
    return FaceMeshLandmarker(create_model(FACEMESH), convert.load_facemesh(weights))
  if checkpoint:
    from jaxvision.core import checkpoint as ckpt
    config, net, variables, _ = ckpt.load_model(checkpoint, "landmarks", "a landmark model")
    if config.model.name not in MODELS + TRAINED + (FACEMESH,):
      raise CheckpointError(f"{checkpoint}: a {config.model.name} workdir; detect-landmarks "
                            f"runs {', '.join(MODELS + TRAINED + (FACEMESH,))}")
    if model and model != config.model.name:
      raise UserError(f"{checkpoint}: holds {config.model.name}, not --model {model}")
    if config.model.name == FACEMESH:
      return FaceMeshLandmarker(net, variables)
    if config.model.name in TRAINED:
      return CropLandmarker(net, variables, config.model.name,
                            int(config.model.kwargs.get("input_size", 112)),
                            float(config.data.get("crop_scale", 1.25)))
    return Landmarker(net, variables, config.model.name)
  model = model or "dlib_ert_68"
  if model not in MODELS:
    raise UserError(f"--model {model}: needs --checkpoint WORKDIR (no released weights); "
                    f"without one: {', '.join(MODELS + (FACEMESH,))}")
  from jaxvision.landmarks import convert
  from jaxvision.landmarks import models as _registers  # noqa: F401  (the dlib models)
  variables, dims = convert.load_predictor(model, weights)
  return Landmarker(create_model(model, **dims), variables, model)
