"""From photos to face embeddings: detect (a registered face detector), align, embed.

    emb = load_embedder(model="dlib_resnet")            # or checkpoint="runs/dlib"
    faces = emb.faces_in(image)                         # [{box, score, landmarks, embedding}]
    d = distance(faces[0]["embedding"], other)          # same person when d < emb.threshold

Which chip a model gets (`MODEL_INFO`): dlib_resnet dlib's 150-px chip with padding 0.25
(`align.DLIB_MTCNN_TEMPLATE` from MTCNN's landmarks); the FaceNet-style models
davidsandberg/facenet's margin crop; the rest the same template scaled to their side. The
face detector comes from the registry (`get_face_detector("mtcnn")`, registered by the
faces family's commands), so this family never imports another.

Embeddings run in batches of 1, 2, 4, ... 32 chips (a batch is padded up to the next of
those), so a folder of photos compiles at most six programs per model.
"""
from __future__ import annotations

import dataclasses
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
    return align.warp(image, self.chip_matrices(image.shape[:2], faces), self.size)

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
    emb = self.embed_chips(self.chips(image, faces))
    return [{**{k: f[k] for k in ("box", "score", "landmarks") if k in f},
             "embedding": [round(float(x), 6) for x in e]} for f, e in zip(faces, emb)]

  def face_detector(self):
    if self.detector is None:
      from jaxvision.core.registry import get_face_detector
      try:
        self.detector = get_face_detector("mtcnn")
      except ValueError as e:
        raise UserError(f"no MTCNN face detector is registered ({e}); the faces family's "
                        "commands register it (jaxvision.families.load('commands'))") from None
    return self.detector


def load_embedder(model: str | None = None, checkpoint: str | None = None) -> Embedder:
  """The embedder of a workdir (`checkpoint`, task face_embedding) or of a model with
  released weights converted on the fly (dlib_resnet from face-recognition-models)."""
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
  return Embedder(name, net, variables, size, how, thr)
