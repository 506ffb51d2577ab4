"""The photos the MTCNN reference numbers (data/mtcnn_reference.json) were computed on.

Built from scikit-image's bundled data files with numpy and Pillow only, so the reference
venv (facenet-pytorch, no scikit-image; benchmarks/face_reference.py imports this file)
and the tests build identical pixels:
  astronaut   skimage astronaut.png (512x512 RGB, one face)
  camera      skimage camera.png (512x512 grey, one face) as grey
  lfw_mosaic  six LFW faces from lfw_subset.npy, upscaled 3x (nearest), on a 420x300 canvas
  wide        astronaut's upper half next to two LFW faces: 700x256 (extreme-ish aspect)
  coffee      skimage coffee.png (no face)
"""
from __future__ import annotations

import glob
import importlib.util
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE_JSON = os.path.join(HERE, "data", "mtcnn_reference.json")


def skimage_data_dir() -> str:
  spec = importlib.util.find_spec("skimage")
  if spec is not None and spec.submodule_search_locations:
    return os.path.join(list(spec.submodule_search_locations)[0], "data")
  found = glob.glob(os.path.join(HERE, "..", "..", ".venv", "lib", "python*", "site-packages",
                                 "skimage", "data"))  # the project's venv
  if not found:
    raise SystemExit("scikit-image's data folder not found")
  return found[0]


def photos(data_dir: str | None = None) -> dict[str, np.ndarray]:
  """{name: uint8 array (H, W, 3) or (H, W) for grey}: deterministic real photos."""
  from PIL import Image
  d = data_dir or skimage_data_dir()
  load = lambda n: np.asarray(Image.open(os.path.join(d, n)))
  astro = load("astronaut.png")[..., :3]
  camera = load("camera.png")
  lfw = np.load(os.path.join(d, "lfw_subset.npy"))[:100]  # 100 faces, 25x25 floats in [0, 1]
  face = lambda i: np.repeat(np.repeat((lfw[i] * 255).round().astype(np.uint8), 3, 0), 3, 1)
  mosaic = np.full((300, 420), 128, np.uint8)
  for k, i in enumerate((0, 7, 19, 33, 52, 77)):
    r, c = divmod(k, 3)
    y, x = 40 + r * 130, 25 + c * 135
    mosaic[y:y + 75, x:x + 75] = face(i)
  mosaic = np.repeat(mosaic[..., None], 3, -1)
  wide = np.full((256, 700, 3), 90, np.uint8)
  wide[:, :512] = astro[:256]
  wide[80:155, 540:615] = face(3)[..., None]
  wide[100:175, 615:690] = face(41)[..., None]
  coffee = load("coffee.png")[..., :3]
  return {"astronaut": astro, "camera": camera, "lfw_mosaic": mosaic, "wide": wide,
          "coffee": coffee}
