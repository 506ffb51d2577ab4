"""Landmark training data: face crops with their points and head pose.

Sources (config.data.dataset):
  embedded        faces of scikit-image's bundled photos, labelled by dlib's 68-point model
                  as a teacher (distillation: the targets are dlib's predictions, not human
                  annotations): the astronaut, and the 100 LFW face crops of
                  `lfw_subset.npy` (25 x 25, upscaled 5x) on a fixed rectangle. Split:
                  train = the astronaut + LFW faces 0-79, test = LFW faces 80-99. The labels
                  are computed once and cached in the data dir (landmarks_teacher_v1.npz).
  folder:/path    every image with an iBUG `.pts` file of the same name beside it (300-W,
                  LFPW, HELEN, AFW, iBUG layout); split train = all but every 10th face,
                  test = every 10th (or config.data.eval_folder for a separate test folder).

Each face becomes a square crop around its points (side = crop_scale x the larger side of
the points' box, centred on it), resized to input_size with bilinear filtering (pixels
beyond the image are black), RGB in [0, 1]; the points in the crop's unit frame (0..1);
the Euler angles from `pose.fit_pose`. iBUG .pts coordinates are 1-based (Matlab); they
are read as 0-based pixel centres (minus 1).
"""
from __future__ import annotations

import glob
import hashlib
import os

import numpy as np

from jaxvision.core.errors import DataError
from jaxvision.landmarks import pose
from jaxvision.landmarks.crop import crop_face  # noqa: F401  (data.crop_face, as before)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def read_pts(path: str) -> np.ndarray:
  """An iBUG .pts file -> (P, 2) float32 0-based pixel coordinates."""
  try:
    with open(path) as f:
      text = f.read(1 << 20)
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
  try:
    head, body = text.split("{", 1)
    body = body.split("}", 1)[0]
    n = None
    for line in head.splitlines():
      if line.strip().lower().startswith("n_points"):
        n = int(line.split(":", 1)[1])
    vals = np.array(body.split(), np.float64).reshape(-1, 2)
  except (ValueError, IndexError):
    raise DataError(f"{path}: not an iBUG .pts file (version / n_points / {{ x y ... }})") \
        from None
  if n is None or len(vals) != n or n < 1:
    raise DataError(f"{path}: n_points {n} but {len(vals)} points")
  if not np.isfinite(vals).all():
    raise DataError(f"{path}: non-finite coordinates")
  return (vals - 1.0).astype(np.float32)


def write_pts(path: str, points) -> None:
  pts = np.asarray(points, np.float64) + 1.0
  lines = ["version: 1", f"n_points: {len(pts)}", "{"]
  lines += [f"{x:.3f} {y:.3f}" for x, y in pts] + ["}"]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def folder_faces(folder: str) -> list[tuple[str, np.ndarray]]:
  """[(image path, points)] of the images in `folder` (recursively) with a .pts beside."""
  if not os.path.isdir(folder):
    raise DataError(f"{folder}: no such folder")
  out = []
  for pts in sorted(glob.glob(os.path.join(folder, "**", "*.pts"), recursive=True)):
    stem = os.path.splitext(pts)[0]
    img = next((stem + e for e in IMAGE_EXTS + tuple(x.upper() for x in IMAGE_EXTS)
                if os.path.isfile(stem + e)), None)
    if img:
      out.append((img, read_pts(pts)))
  if not out:
    raise DataError(f"{folder}: no image with a .pts file beside it")
  n = {len(p) for _, p in out}
  if len(n) > 1:
    raise DataError(f"{folder}: .pts files with different point counts {sorted(n)}")
  return out


def samples_from(faces, size: int, scale: float = 1.25) -> dict[str, np.ndarray]:
  """{"input" (N, S, S, 3), "landmarks" (N, 2P), "angles" (N, 3)} from [(image, points)]."""
  crops, pts = zip(*(crop_face(im, p, size, scale) for im, p in faces))
  pts = np.stack(pts)
  return {"input": np.stack(crops), "landmarks": pts.reshape(len(pts), -1),
          "angles": pose.fit_pose(pts).astype(np.float32)}


def _skimage_dir() -> str:
  import importlib.util
  spec = importlib.util.find_spec("skimage")
  if spec is None or not spec.submodule_search_locations:
    raise DataError("the embedded landmark data needs scikit-image's bundled photos "
                    "(pip install scikit-image)")
  return os.path.join(list(spec.submodule_search_locations)[0], "data")


LFW_RECT = (12, 20, 112, 120)          # dlib rectangle on a 125 x 125 (5x) LFW crop
ASTRONAUT_RECT = (175, 76, 265, 166)   # dlib's frontal detector on skimage's astronaut


def embedded_images() -> list[tuple[str, np.ndarray, tuple]]:
  """[(name, uint8 image, dlib rectangle)] of the embedded faces, in a fixed order."""
  from PIL import Image
  d = _skimage_dir()
  astro = np.asarray(Image.open(os.path.join(d, "astronaut.png")))[..., :3]
  lfw = np.load(os.path.join(d, "lfw_subset.npy"))[:100]
  out = [("astronaut", astro, ASTRONAUT_RECT)]
  for i in range(len(lfw)):
    face = np.repeat(np.repeat((lfw[i] * 255).round().astype(np.uint8), 5, 0), 5, 1)
    out.append((f"lfw{i:03d}", np.repeat(face[..., None], 3, -1), LFW_RECT))
  return out


def embedded_faces(data_dir: str | None = None) -> dict[str, list]:
  """{"train": [(image, points)], "test": [...]}: dlib's 68-point predictions as labels."""
  from jaxvision.core import data as core_data
  items = embedded_images()
  root = core_data.resolve_data_dir(data_dir)
  key = hashlib.sha256(b"".join(im.tobytes()[:4096] for _, im, _ in items)).hexdigest()[:10]
  cache = os.path.join(root, f"landmarks_teacher_v1_{key}.npz")
  if os.path.isfile(cache):
    with np.load(cache, allow_pickle=False) as z:
      pts = z["points"]
  else:
    from jaxvision.landmarks import predictor
    lm = predictor.landmarker("dlib_ert_68")
    pts = np.stack([lm(im, [rect])[0] for _, im, rect in items])
    os.makedirs(root, exist_ok=True)
    tmp = cache + f".tmp{os.getpid()}.npz"
    np.savez(tmp, points=pts)
    os.replace(tmp, cache)
  faces = [(im, p) for (_, im, _), p in zip(items, pts)]
  return {"train": faces[:81], "test": faces[81:]}


def get_faces(dataset: str, split: str, data_dir: str | None = None,
              eval_folder: str = "") -> list:
  if dataset == "embedded":
    return embedded_faces(data_dir)["train" if split == "train" else "test"]
  if dataset.startswith("folder:"):
    from jaxvision.core import io
    folder = dataset[len("folder:"):]
    if split != "train" and eval_folder:
      folder, every = eval_folder, None
    else:
      every = 10
    faces = folder_faces(folder)
    if every:
      keep = [(i % every == every - 1) == (split != "train") for i in range(len(faces))]
      faces = [f for f, k in zip(faces, keep) if k] or faces[-1:]
    return [(io.load_image_file(p), pts) for p, pts in faces]
  raise DataError(f"unknown landmark dataset {dataset!r}: embedded or folder:/path")


class FaceBatches:
  """A grain random-access source whose record i is one batch drawn from (seed, i):
  faces uniformly with replacement, brightness and contrast jittered by up to 20%."""

  def __init__(self, samples: dict, batch_size: int, seed: int, length: int = 2**30):
    self.samples, self.batch_size, self.seed, self._len = samples, batch_size, seed, length

  def __len__(self):
    return self._len

  def __getitem__(self, i):
    rng = np.random.default_rng([self.seed, int(i)])
    idx = rng.integers(0, len(self.samples["input"]), self.batch_size)
    x = self.samples["input"][idx]
    gain = rng.uniform(0.8, 1.2, (len(idx), 1, 1, 1)).astype(np.float32)
    bias = rng.uniform(-0.1, 0.1, (len(idx), 1, 1, 1)).astype(np.float32)
    return {"input": np.clip(x * gain + bias, 0, 1), "landmarks": self.samples["landmarks"][idx],
            "angles": self.samples["angles"][idx]}
