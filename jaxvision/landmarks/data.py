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
  tfds:300w       the TFDS builds of `datasets.py` (prepared once from a manual dir; read
  tfds:wflw       with tfds' data_source, no TensorFlow): train = the dataset's train split,
                  test = config.data.eval_split (300-W: common | challenging | full, default
                  common; WFLW: test). WFLW's six attribute flags come along (attributes).

Augmentation (FaceBatches): brightness / contrast jitter, and with probability `flip` the
horizontal mirror: the crop's columns reversed, the points mirrored (x -> 1 - x in the unit
frame) and renumbered by the markup's mirror permutation (MIRROR_68 / MIRROR_98: a left eye
corner becomes a right eye corner), the pose targets refitted to the mirrored points.

Attribute weights (PFLD, Guo et al. 2019, eq. 2): `class_weights` gives each attribute class
c the weight w_c = 1 / (fraction of the training faces in class c), computed once from the
training split; a face's weight is the sum of w_c over its classes. The classes are WFLW's
six flags plus "normal" for a face with none (the paper's classes: profile, frontal, head-up,
head-down, expression, occlusion; WFLW's flags are the nearest set that is annotated).

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
from jaxvision.landmarks import datasets, pose
from jaxvision.landmarks.crop import crop_face  # noqa: F401  (data.crop_face, as before)
from jaxvision.landmarks.datasets import read_pts, write_pts  # noqa: F401  (as before)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def _pairs(n: int, pairs) -> np.ndarray:
  perm = np.arange(n)
  for a, b in pairs:
    perm[a], perm[b] = b, a
  return perm


def _reversed_runs(*runs) -> list[tuple[int, int]]:
  """Pairs that mirror each run (first, last) end to end: (first, last), (first+1, last-1)..."""
  return [(a + k, b - k) for a, b in runs for k in range((b - a + 1) // 2)]


# Horizontal mirror permutations: point i of a mirrored face is point MIRROR[i] of the
# original, mirrored (x -> W - 1 - x); each is an involution (pairs swapped, the midline
# points fixed). From the markup definitions:
#
# iBUG 68 (300-W; Sagonas et al. 2013, Fig. 1; the subject's right side is on the image's
# left): jaw 0-16 from the image-left ear to the image-right one, reversed; eyebrows 17-21
# <-> 22-26, each read outer to inner on the left and inner to outer on the right, so 17 <->
# 26, ..., 21 <-> 22; nose bridge 27-30 on the midline, unchanged; nostrils 31-35 left to
# right, reversed (33 fixed); eyes 36-41 and 42-47 each start at the image-left corner and
# go clockwise (36 outer, 37-38 upper lid, 39 inner, 40-41 lower lid; 42 inner, 43-44 upper,
# 45 outer, 46-47 lower), so the outer corners 36 <-> 45, inner 39 <-> 42, upper lids
# 37 <-> 44, 38 <-> 43, lower lids 40 <-> 47, 41 <-> 46; outer mouth 48-59 clockwise from
# the left corner: 48 <-> 54, 49 <-> 53, 50 <-> 52 (51 top middle fixed), 55 <-> 59,
# 56 <-> 58 (57 bottom middle fixed); inner mouth 60-67 likewise: 60 <-> 64, 61 <-> 63
# (62 fixed), 65 <-> 67 (66 fixed).
MIRROR_68 = _pairs(68, _reversed_runs((0, 16), (17, 26), (31, 35), (48, 54), (55, 59),
                                      (60, 64), (65, 67))
                   + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)])

# WFLW 98 (Wu et al. 2018, the markup figure of the WFLW release): contour 0-32 reversed;
# left eyebrow upper edge 33-37 outer to inner, lower edge 38-41 inner to outer; right
# eyebrow upper 42-46 inner to outer, lower 47-50 outer to inner, so 33 <-> 46 ... 37 <-> 42
# and 38 <-> 50 ... 41 <-> 47; nose bridge 51-54 fixed; nostrils 55-59 reversed (57 fixed);
# eyes 60-67 and 68-75 each clockwise from the image-left corner (60 outer, 61-63 upper, 64
# inner, 65-67 lower; 68 inner, 69-71 upper, 72 outer, 73-75 lower): 60 <-> 72, 61 <-> 71,
# 62 <-> 70, 63 <-> 69, 64 <-> 68, 65 <-> 75, 66 <-> 74, 67 <-> 73; outer mouth 76-87 as the
# 68-point 48-59 (76 <-> 82, 77 <-> 81, 78 <-> 80; 83 <-> 87, 84 <-> 86; 79, 85 fixed);
# inner mouth 88-95 as 60-67 (88 <-> 92, 89 <-> 91, 93 <-> 95; 90, 94 fixed); the pupils
# 96 <-> 97.
MIRROR_98 = _pairs(98, _reversed_runs((0, 32), (55, 59), (76, 82), (83, 87), (88, 92),
                                      (93, 95), (96, 97))
                   + [(33 + k, 46 - k) for k in range(5)] + [(38 + k, 50 - k) for k in range(4)]
                   + [(60 + k, 72 - k) for k in range(5)] + [(65, 75), (66, 74), (67, 73)])

# The 68 WFLW points that are iBUG's 68 (the usual WFLW -> 68 conversion): every other
# contour point, the eyebrows' upper edges, the nose, the eyes without their second upper
# and lower lid points, the mouth. WFLW_TO_68[k] is the WFLW index of iBUG point k.
WFLW_TO_68 = np.array(list(range(0, 33, 2)) + list(range(33, 38)) + list(range(42, 47))
                      + list(range(51, 60)) + [60, 61, 63, 64, 65, 67, 68, 69, 71, 72, 73, 75]
                      + list(range(76, 96)))
MIRRORS = {68: MIRROR_68, 98: MIRROR_98}


def mirror_permutation(num_points: int) -> np.ndarray:
  if num_points not in MIRRORS:
    raise DataError(f"horizontal flips need a mirror permutation of the points; known for "
                    f"68 (iBUG) and 98 (WFLW) points, not {num_points}")
  return MIRRORS[num_points]


def flip_points(points: np.ndarray, width: float = 1.0) -> np.ndarray:
  """(..., P, 2) points of a face -> those of its horizontal mirror image: x -> width - x,
  indices permuted. In the crops' unit frame (pixel u's centre at (u + 0.5) / S) mirroring
  the pixel columns maps x to 1 - x (width 1); for pixel-centre coordinates of a W-wide
  image use width W - 1."""
  p = np.asarray(points)
  out = p[..., mirror_permutation(p.shape[-2]), :].copy()
  out[..., 0] = width - out[..., 0]
  return out


def pose_points(points: np.ndarray) -> np.ndarray:
  """(N, P, 2) -> the points `pose.fit_pose` reads: iBUG's 68 (WFLW's via WFLW_TO_68)."""
  return points[:, WFLW_TO_68] if points.shape[1] == 98 else points


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
          "angles": pose.fit_pose(pose_points(pts)).astype(np.float32)}


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


ATTRIBUTE_CLASSES = ("pose", "expression", "illumination", "make-up", "occlusion", "blur",
                     "normal")
DEFAULT_EVAL_SPLIT = {"300w": "common", "wflw": "test"}


def attribute_classes(attributes) -> np.ndarray:
  """(N, 6) 0/1 flags -> (N, 7) bool class membership: the six flags and "normal" (none)."""
  a = np.asarray(attributes).reshape(-1, 6) != 0
  return np.concatenate([a, ~a.any(1, keepdims=True)], 1)


def class_weights(train_attributes) -> np.ndarray:
  """(7,) w_c = N / (number of training faces in class c); 0 for a class no training face
  is in (no training face can carry it, so the weight never applies)."""
  counts = attribute_classes(train_attributes).sum(0).astype(np.float64)
  n = len(np.asarray(train_attributes).reshape(-1, 6))
  return np.where(counts > 0, n / np.maximum(counts, 1), 0.0)


def sample_weights(attributes, weights) -> np.ndarray:
  """(N,) float32: each face's sum of w_c over the classes it is in."""
  return (attribute_classes(attributes) @ np.asarray(weights, np.float64)).astype(np.float32)


def load_split(dataset: str, split: str, data_dir: str | None = None, eval_folder: str = "",
               eval_split: str = "", manual_dir: str = ""):
  """(faces, attributes): faces an iterable of (image, points) (lazy for TFDS sets, which
  may not fit in memory decoded), attributes (N, 6) int32 for data that carries them
  (tfds:wflw), else None."""
  if dataset.startswith("tfds:"):
    name = dataset[len("tfds:"):]
    if name not in datasets.BUILDERS:
      raise DataError(f"unknown landmark dataset {dataset!r}: tfds:300w or tfds:wflw")
    part = "train" if split == "train" else (eval_split or DEFAULT_EVAL_SPLIT[name])
    src = datasets.get_source(name, part, data_dir, manual_dir)
    faces = ((r["image"], r["points"]) for r in map(src.__getitem__, range(len(src))))
    return faces, (src.attributes() if name == "wflw" else None)
  return get_faces(dataset, split, data_dir, eval_folder), None


def get_faces(dataset: str, split: str, data_dir: str | None = None,
              eval_folder: str = "") -> list:
  if dataset.startswith("tfds:"):
    return list(load_split(dataset, split, data_dir, eval_folder)[0])
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
  raise DataError(f"unknown landmark dataset {dataset!r}: embedded, folder:/path, tfds:300w "
                  "or tfds:wflw")


class FaceBatches:
  """A grain random-access source whose record i is one batch drawn from (seed, i):
  faces uniformly with replacement, brightness and contrast jittered by up to 20%, each
  face mirrored with probability `flip` (module docstring). With flip 0 the draws are the
  same as before flips existed (the flip coins are drawn after the jitter). An
  "attr_weight" array in `samples` (one weight per face) is passed on with the batch."""

  def __init__(self, samples: dict, batch_size: int, seed: int, length: int = 2**30,
               flip: float = 0.0):
    self.samples, self.batch_size, self.seed, self._len = samples, batch_size, seed, length
    self.flip = float(flip)
    if not 0.0 <= self.flip <= 1.0:
      raise DataError(f"data.flip={flip}: a probability in [0, 1]")
    if self.flip > 0:
      n = len(samples["landmarks"])
      pts = flip_points(samples["landmarks"].reshape(n, -1, 2))
      self._flipped = {"landmarks": pts.reshape(n, -1).astype(np.float32),
                       "angles": pose.fit_pose(pose_points(pts)).astype(np.float32)}

  def __len__(self):
    return self._len

  def __getitem__(self, i):
    rng = np.random.default_rng([self.seed, int(i)])
    idx = rng.integers(0, len(self.samples["input"]), self.batch_size)
    x = self.samples["input"][idx]
    gain = rng.uniform(0.8, 1.2, (len(idx), 1, 1, 1)).astype(np.float32)
    bias = rng.uniform(-0.1, 0.1, (len(idx), 1, 1, 1)).astype(np.float32)
    lm, angles = self.samples["landmarks"][idx], self.samples["angles"][idx]
    if self.flip > 0:
      f = rng.random(len(idx)) < self.flip
      x = np.where(f[:, None, None, None], x[:, :, ::-1], x)
      lm = np.where(f[:, None], self._flipped["landmarks"][idx], lm)
      angles = np.where(f[:, None], self._flipped["angles"][idx], angles)
    out = {"input": np.clip(x * gain + bias, 0, 1), "landmarks": lm, "angles": angles}
    if "attr_weight" in self.samples:
      out["attr_weight"] = self.samples["attr_weight"][idx]
    return out
