"""The face crop that the landmark networks see, shared by training (data.py) and the
landmarker (predictor.py): a leaf module, so that neither imports the other."""
from __future__ import annotations

import numpy as np


def crop_face(image: np.ndarray, points: np.ndarray, size: int, scale: float = 1.25):
  """(crop float32 (size, size, 3) in [0, 1], points (P, 2) in the crop's unit frame)."""
  from PIL import Image
  img = image if image.ndim == 3 else np.repeat(image[..., None], 3, -1)
  lo, hi = points.min(0), points.max(0)
  c = (lo + hi) / 2
  side = max(float((hi - lo).max()) * scale, 4.0)
  x0, y0 = c - side / 2
  # PIL's EXTENT maps the output's pixel edges onto [x0, x0 + side] (pixel-centre
  # coordinate u maps to x0 + (u + 0.5) * side / size - 0.5 in input pixel centres)
  crop = Image.fromarray(img[..., :3].astype(np.uint8)).transform(
      (size, size), Image.Transform.EXTENT, (x0 + 0.5, y0 + 0.5, x0 + 0.5 + side,
                                             y0 + 0.5 + side), Image.Resampling.BILINEAR)
  unit = (points - [x0, y0]) / side
  return np.asarray(crop, np.float32) / 255.0, unit.astype(np.float32)
