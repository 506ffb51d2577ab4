"""Real faces for the landmark tests, built from scikit-image's bundled files with numpy
and Pillow only, so that the peer venv (dlib, no scikit-image) and the tests build the same
pixels:
  astronaut  skimage astronaut.png (512x512 RGB, one face)
  camera     skimage camera.png (512x512 grey)
  lfw        eight LFW faces (lfw_subset.npy, 25x25) upscaled 5x (nearest) on a 500x280
             grey canvas: frontal faces of several people
"""
from __future__ import annotations

import glob
import importlib.util
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def skimage_data_dir() -> str:
  spec = importlib.util.find_spec("skimage")
  if spec is not None and spec.submodule_search_locations:
    return os.path.join(list(spec.submodule_search_locations)[0], "data")
  found = glob.glob(os.path.join(HERE, "..", "..", ".venv", "lib", "python*", "site-packages",
                                 "skimage", "data"))
  if not found:
    raise SystemExit("scikit-image's data folder not found")
  return found[0]


def photos(data_dir: str | None = None) -> dict[str, np.ndarray]:
  """{name: uint8 (H, W, 3) RGB or (H, W) grey}."""
  from PIL import Image
  d = data_dir or skimage_data_dir()
  load = lambda n: np.asarray(Image.open(os.path.join(d, n)))
  lfw = np.load(os.path.join(d, "lfw_subset.npy"))[:100]
  canvas = np.full((280, 500), 120, np.uint8)
  for k, i in enumerate((0, 7, 19, 33, 52, 77, 3, 41)):
    r, c = divmod(k, 4)
    face = np.repeat(np.repeat((lfw[i] * 255).round().astype(np.uint8), 5, 0), 5, 1)
    canvas[10 + r * 135:10 + r * 135 + 125, 0 + c * 125:125 + c * 125] = face
  return {"astronaut": load("astronaut.png")[..., :3], "camera": load("camera.png"),
          "lfw": canvas}


def fixed_rects() -> dict[str, list[list[int]]]:
  """Rectangles given by hand (dlib's left, top, right, bottom, inclusive): around the
  faces, and ones that hang over the image border (samples outside the image read 0)."""
  lfw = []
  for k in range(8):
    r, c = divmod(k, 4)
    x, y = c * 125, 10 + r * 135
    lfw.append([x + 12, y + 20, x + 112, y + 120])
  return {"astronaut": [[173, 70, 262, 159], [150, 50, 290, 190], [-40, -30, 100, 110],
                        [440, 400, 560, 520]],
          "camera": [[230, 60, 300, 130], [200, 40, 330, 170]],
          "lfw": lfw}
