"""From photos to face embeddings: detect (a registered face detector), align, embed.

    emb = load_embedder(model="dlib_resnet")            # or checkpoint="runs/dlib"
    faces = emb.faces_in(image)                         # [{box, score, landmarks, embedding}]
    d = distance(faces[0]["embedding"], other)          # same person when d < emb.threshold

Which chip a model gets, by `align` ("dlib" or "mtcnn"):
- "dlib" (the default for dlib_resnet when dlib's 5-point shape predictor is installed):
  dlib's own pipeline, exactly: a face rectangle (the MTCNN box mapped to a dlib-detector
  rectangle, or a dlib rectangle given as a face's "rect") -> the 5-point predictor
  (`get_landmarker("dlib_ert_5")`, the landmarks family's service) -> its points rounded
  to integers as dlib holds them -> `align.face_chip_details` (get_face_chip_details, at
  the model's side, padding 0.25) -> `align.extract_chips` (extract_image_chips, with its
  pyramid for large faces). dlib_resnet's descriptors are then those of
  `compute_face_descriptor(img, shape)` (docs/recognition.md, measured).
- "mtcnn": from MTCNN's five landmarks (`MODEL_INFO`): dlib_resnet dlib's 150-px chip with
  padding 0.25 through `align.DLIB_MTCNN_TEMPLATE` (about 0.15-0.19 L2 from dlib's
  descriptor of the same face); the FaceNet-style models davidsandberg/facenet's margin
  crop; the rest the same template scaled to their side (their default).
The face detector and the landmark predictor come from the registry (registered by the
faces and landmarks families' commands), so this family never imports another.

Embeddings run in batches of 1, 2, 4, ... 32 chips (a batch is padded up to the next of
those), so a folder of photos compiles at most six programs per model.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from jaxvision.core.errors import CheckpointError, UserError
from jaxvision.recognition import align

TASK = "face_embedding"
MAX_BATCH = 32

# name: (chip side, alignment, same-person threshold on the L2 distance, L2-normalised)
MODEL_INFO = {
    "dlib_resnet": (150, "dlib", 0.6, False),
    # davidsandberg/facenet: squared-L2 thresholds of about 1.1 -> 1.05 on the plain distance
    "facenet_inception_resnet_v1": (160, "facenet", 1.05, True),
    # OpenFace's classifier demos use a squared-L2 threshold of about 0.99
    "openface_nn4_small2": (96, "template", 1.0, True),
    "deepface": (152, "template", 1.0, True),
    "deepid": (39, "template", 1.0, False),
}
# Trained models without a threshold in their workdir: L2-normalised embeddings, FaceNet's
# usual operating point (davidsandberg/facenet validate_on_lfw picks about 1.1-1.2).
DEFAULT_INFO = (None, "template", 1.1, True)

ALIGNS = ("dlib", "mtcnn")
DLIB_5PT_FILE = "shape_predictor_5_face_landmarks.dat"
DLIB_PADDING = 0.25  # dlib's default for compute_face_descriptor and get_face_chip


def dlib_landmarks_available() -> bool:
  """Whether `--align dlib` can run: the 5-point predictor registered (the landmarks
  family's commands loaded) and its file in the installed face-recognition-models."""
  from jaxvision.core.dlib_format import package_models_dir
  from jaxvision.core.registry import list_landmarkers
  d = package_models_dir()
  return ("dlib_ert_5" in list_landmarkers() and d is not None
          and os.path.isfile(os.path.join(d, DLIB_5PT_FILE)))


def distance(a, b) -> float:
  return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


@dataclasses.dataclass
class Embedder:
  name: str
  model: Any
  variables: Any
  size: int
  alignment: str
  threshold: float
  detector: Any = None
  _apply: Any = None
  align: str = "mtcnn"      # "dlib": dlib's 5-point pipeline; "mtcnn": from MTCNN's points
  notice: str = ""          # a line for the user (e.g. why the default alignment fell back)
  _landmarkers: dict = dataclasses.field(default_factory=dict)

  # ---------------------------------------------------------------- chips
  def chip_matrices(self, image_hw, faces) -> np.ndarray:
    mats = []
    for f in faces:
      if self.alignment == "facenet":
        mats.append(align.facenet_crop_matrix(f["box"], image_hw, self.size))
      elif f.get("landmarks"):
        mats.append(align.template_chip_matrix(np.asarray(f["landmarks"]),
                                               align.DLIB_MTCNN_TEMPLATE, self.size))
      else:  # a detector without landmarks: the box, grown as dlib's padding does
        x1, y1, x2, y2 = f["box"]
        side = max(x2 - x1, y2 - y1) * 1.5 / self.size
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        c0 = (self.size - 1) / 2
        mats.append(np.array([[side, 0, cx - side * c0], [0, side, cy - side * c0]]))
    return np.asarray(mats).reshape(-1, 2, 3)

  def chips(self, image: np.ndarray, faces) -> np.ndarray:
    """(n, size, size, 3) float32 chips of `faces` (detector faces, or {"rect": a dlib
    rectangle} for the dlib alignment)."""
    if self.align == "dlib":
      return self.dlib_chips(image, self.dlib_points(image, faces))
    return align.warp(image, self.chip_matrices(image.shape[:2], faces), self.size)

  def dlib_chips(self, image: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """dlib's chips (float32 of its uint8 values) of the 5-point shapes `parts`, all faces
    of the image in one extract_image_chips as dlib's batch calls do."""
    details = [align.face_chip_details(p, self.size, DLIB_PADDING) for p in parts]
    return align.extract_chips(image, details).astype(np.float32)

  def dlib_points(self, image: np.ndarray, faces) -> np.ndarray:
    """(n, 5, 2) dlib 5-point shapes, rounded to integers as dlib's are, of faces with a
    "rect" (dlib rectangle, left top right bottom) or a detector's "box" (MTCNN's)."""
    out = np.zeros((len(faces), 5, 2))
    for kind, key in (("dlib", "rect"), ("mtcnn", "box")):
      idx = [i for i, f in enumerate(faces) if key in f and (key == "rect" or "rect" not in f)]
      if idx:
        out[idx] = self.landmarker(kind)(image, [faces[i][key] for i in idx])
    return np.floor(out + 0.5)

  def landmarker(self, box_kind: str):
    if box_kind not in self._landmarkers:
      from jaxvision.core.registry import get_landmarker
      try:
        self._landmarkers[box_kind] = get_landmarker("dlib_ert_5", box_kind=box_kind)
      except ValueError as e:
        if isinstance(e, UserError):
          raise
        raise UserError(f"--align dlib: {e}; the landmarks family's commands register it "
                        "(jaxvision.families.load('commands'))") from None
    return self._landmarkers[box_kind]

  def aligned_chip(self, image: np.ndarray) -> np.ndarray:
    """A pre-aligned chip of any size, resized (bilinear, pixel areas) to the model's side."""
    h, w = image.shape[:2]
    if (h, w) == (self.size, self.size):
      img = image if image.ndim == 3 else np.repeat(image[..., None], 3, -1)
      return img[None].astype(np.float32)
    sx, sy = w / self.size, h / self.size
    m = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5]])
    return align.warp(np.pad(image, ((0, 1), (0, 1), (0, 0)) if image.ndim == 3
                             else ((0, 1), (0, 1)), mode="edge"), m[None], self.size)

  # ---------------------------------------------------------------- embeddings
  def embed_chips(self, chips: np.ndarray) -> np.ndarray:
    """(n, D) float32 embeddings of chips (n, size, size, 3) in [0, 255]."""
    import jax
    if self._apply is None:
      self._apply = jax.jit(self.model.apply)
    chips = np.asarray(chips, np.float32)
    out = []
    for i in range(0, len(chips), MAX_BATCH):
      part = chips[i:i + MAX_BATCH]
      n = len(part)
      b = 1 << max(0, (n - 1).bit_length())
      if b > n:
        part = np.concatenate([part, np.repeat(part[:1], b - n, 0)])
      out.append(np.asarray(self._apply(self.variables, part))[:n])
    if not out:
      return np.zeros((0, 0), np.float32)
    return np.concatenate(out).astype(np.float32)

  def faces_in(self, image: np.ndarray, faces=None) -> list[dict]:
    """Every face of `image` (RGB uint8) with its embedding; `faces` (a detector's
    output) skips the detection."""
    if faces is None:
      faces = next(iter(self.face_detector().detect_each([image])))
    if not faces:
      return []
    parts = self.dlib_points(image, faces) if self.align == "dlib" else None
    chips = self.chips(image, faces) if parts is None else self.dlib_chips(image, parts)
    emb = self.embed_chips(chips)
    out = [{**{k: f[k] for k in ("box", "rect", "score", "landmarks") if k in f},
            "embedding": [round(float(x), 6) for x in e]} for f, e in zip(faces, emb)]
    if parts is not None:  # the 5 points the chip was cut from (dlib's integers)
      for o, p in zip(out, parts):
        o["dlib_points"] = p.astype(int).tolist()
    return out

  def face_detector(self):
    if self.detector is None:
      from jaxvision.core.registry import get_face_detector
      try:
        self.detector = get_face_detector("mtcnn")
      except ValueError as e:
        raise UserError(f"no MTCNN face detector is registered ({e}); the faces family's "
                        "commands register it (jaxvision.families.load('commands'))") from None
    return self.detector


def load_embedder(model: str | None = None, checkpoint: str | None = None,
                  align_with: str | None = None) -> Embedder:
  """The embedder of a workdir (`checkpoint`, task face_embedding) or of a model with
  released weights converted on the fly (dlib_resnet from face-recognition-models).

  `align_with`: "dlib" (dlib's 5-point pipeline at the model's side), "mtcnn" (the
  model's chips from MTCNN's landmarks) or None: "dlib" for dlib_resnet when the 5-point
  predictor is available (else "mtcnn", saying so in `notice`), "mtcnn" for the others
  (they were trained on those chips)."""
  from jaxvision.core.registry import create_model
  if checkpoint:
    from jaxvision.core.checkpoint import load_model
    config, net, variables, _ = load_model(checkpoint, TASK, "a face-embedding model")
    name = config.model.name
    if model and model != name:
      raise CheckpointError(f"{checkpoint}: holds {name}, not {model}")
    size, how, thr, _ = MODEL_INFO.get(name, DEFAULT_INFO)
    if config.get("converted_from", None) is None:  # a training run: its own chips
      thr = DEFAULT_INFO[2]
      size = int((config.get("data", None) or {}).get("image_size", 0) or 0) or size
    thr = float(config.get("threshold", None) or thr)
    if not size:
      raise CheckpointError(f"{checkpoint}: config.json gives no data.image_size")
  else:
    name = model or "dlib_resnet"
    if name != "dlib_resnet":
      raise UserError(f"--model {name}: no released weights; give --checkpoint WORKDIR (a "
                      "trained face_embedding run)")
    from jaxvision.recognition.convert import dlib_resnet_variables
    net, variables = create_model(name), dlib_resnet_variables()
    size, how, thr, _ = MODEL_INFO[name]
  notice = ""
  if align_with is None:
    align_with = "mtcnn"
    if how == "dlib":
      if dlib_landmarks_available():
        align_with = "dlib"
      else:
        notice = (f"note: {DLIB_5PT_FILE} not found (pip install 'jaxvision[dlib]'): faces "
                  "aligned from MTCNN's landmarks (--align mtcnn), about 0.15-0.19 L2 from "
                  "dlib's own descriptors")
  elif align_with not in ALIGNS:
    raise UserError(f"--align {align_with}: one of {', '.join(ALIGNS)}")
  elif align_with == "dlib" and not dlib_landmarks_available():
    from jaxvision.core.registry import list_landmarkers
    raise UserError(f"--align dlib: {DLIB_5PT_FILE} not found: pip install 'jaxvision[dlib]'"
                    if "dlib_ert_5" in list_landmarkers() else
                    "--align dlib: no dlib_ert_5 landmark predictor is registered (the "
                    "landmarks family's commands register it: jaxvision.families.load"
                    "('commands'))")
  return Embedder(name, net, variables, size, how, thr, align=align_with, notice=notice)
