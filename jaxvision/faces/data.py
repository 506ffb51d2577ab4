"""Face-box data for training face-detection cascades (MTCNN, Cascade CNN).

Sources (every one yields {"image": (H,W,3) uint8, "boxes": (N,4) float32 pixel x1,y1,x2,y2,
"landmarks": (N,5,2) float32 pixel (x, y) or NaN when a face has none, "ignore": (N,) bool,
"name": str}):

  get_face_source("faces", "train")          the embedded default (TFDS "jaxvision_faces")
  get_face_source("wider_face", "train")     any TFDS dataset prepared as array_record in the
                                             `wider_face` layout (image, faces/bbox normalised
                                             [ymin, xmin, ymax, xmax], optional faces/invalid,
                                             optional faces/landmarks (5, 2) normalised (x, y))
  get_face_source("folder:/imgs", "train", annotations="/imgs/wider_face_train_bbx_gt.txt")
                                             images + a WIDER FACE-style annotation file, built
                                             once into the same array_record layout

Samples (MTCNN's recipe): windows around every face and anywhere in the image are labelled
by their best IoU with the faces: positive > 0.65, part 0.4..0.65, negative < 0.3 (0.3..0.4
is dropped); faces with landmarks also give landmark samples. Targets: box offsets
(gt - window) / window size in x1, y1, x2, y2 order; landmarks (x1..x5, y1..y5) as fractions
of the window (O-Net's output layout). Categories: 0 negative, 1 positive, 2 part,
3 landmark. Batches mix negative:positive:part:landmark = 3:1:1:2 (config `mix`, in that
order); an empty category's share is given to the others.

Later stages are trained on what the earlier ones let through: `propose()` slides the first
stage's 12x12 window over an image pyramid (as P-Net / 12-net do at detection time) and runs
every previous stage on the surviving windows (box regression and squaring for MTCNN,
pattern averaging for the calibration nets).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxvision import data as jv_data
from jaxvision.data import DataError

NEG, POS, PART, LANDMARK = 0, 1, 2, 3
CATEGORIES = ("negative", "positive", "part", "landmark")
POS_IOU, PART_IOU, NEG_IOU = 0.65, 0.4, 0.3
# Horizontal flip: left eye <-> right eye, left mouth corner <-> right mouth corner.
LANDMARK_FLIP = np.array([1, 0, 2, 4, 3])


# --------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------

def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(K,4) x (N,4) x1,y1,x2,y2 (continuous coordinates) -> (K,N) intersection over union."""
  a = np.asarray(a, np.float32).reshape(-1, 4)
  b = np.asarray(b, np.float32).reshape(-1, 4)
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
  area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)
  union = area(a)[:, None] + area(b)[None, :] - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def categorize(max_iou: np.ndarray) -> np.ndarray:
  """Best IoU with any face -> NEG (< 0.3), PART (0.4..0.65), POS (> 0.65), or -1 (dropped)."""
  m = np.asarray(max_iou)
  return np.select([m > POS_IOU, m >= PART_IOU, m < NEG_IOU], [POS, PART, NEG], -1).astype(np.int8)


def box_targets(windows: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """Regression targets: (gt - window) / window width (x) or height (y), x1,y1,x2,y2 order."""
  w = (windows[:, 2] - windows[:, 0])[:, None]
  h = (windows[:, 3] - windows[:, 1])[:, None]
  scale = np.concatenate([w, h, w, h], axis=1)
  return ((gt - windows) / np.maximum(scale, 1e-6)).astype(np.float32)


def landmark_targets(windows: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
  """(K,5,2) pixel (x, y) -> (K,10) (x1..x5, y1..y5) as fractions of each window."""
  w = (windows[:, 2] - windows[:, 0])[:, None]
  h = (windows[:, 3] - windows[:, 1])[:, None]
  x = (landmarks[..., 0] - windows[:, 0:1]) / np.maximum(w, 1e-6)
  y = (landmarks[..., 1] - windows[:, 1:2]) / np.maximum(h, 1e-6)
  return np.concatenate([x, y], axis=1).astype(np.float32)


def square(boxes: np.ndarray) -> np.ndarray:
  """MTCNN's rerec: the square of side max(w, h) with the same centre."""
  b = np.asarray(boxes, np.float32)
  w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
  s = np.maximum(w, h)
  cx, cy = b[:, 0] + w / 2, b[:, 1] + h / 2
  return np.stack([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2], axis=1)


def _sample(img: np.ndarray, boxes: np.ndarray, size: int, k: int) -> np.ndarray:
  """Bilinear samples of (H,W,3) float `img` at k x k points per output pixel, averaged."""
  h, w = img.shape[:2]
  padded = np.pad(img, ((1, 1), (1, 1), (0, 0)))  # one black pixel all round: bilinear edge
  n = size * k
  t = (np.arange(n, dtype=np.float32) + 0.5) / n  # sample positions as fractions of the box
  xs = np.clip(boxes[:, 0:1] + t[None] * (boxes[:, 2:3] - boxes[:, 0:1]) + 0.5, 0, w + 1)
  ys = np.clip(boxes[:, 1:2] + t[None] * (boxes[:, 3:4] - boxes[:, 1:2]) + 0.5, 0, h + 1)
  x0 = np.clip(np.floor(xs).astype(np.int32), 0, w)
  y0 = np.clip(np.floor(ys).astype(np.int32), 0, h)
  fx = (xs - x0)[:, None, :, None]
  fy = (ys - y0)[:, :, None, None]
  g = lambda yy, xx: padded[yy[:, :, None], xx[:, None, :]]
  top = g(y0, x0) * (1 - fx) + g(y0, x0 + 1) * fx
  bot = g(y0 + 1, x0) * (1 - fx) + g(y0 + 1, x0 + 1) * fx
  v = top * (1 - fy) + bot * fy
  return v.reshape(len(boxes), size, k, size, k, 3).mean(axis=(2, 4))


def crop_resize(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
  """Crops of (K,4) pixel boxes resized to size x size -> (K,size,size,3) uint8.

  Vectorised: each box is read from the level of a 2x2-mean pyramid where it is 1-2x the
  output size, with bilinear 2x2 supersampling there, so downscaled crops are area-averaged
  rather than aliased. Outside the image is black (MTCNN zero-pads windows crossing the
  border)."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  out = np.zeros((len(boxes), size, size, 3), np.uint8)
  if not len(boxes):
    return out
  side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
  level = np.floor(np.log2(np.maximum(side / size, 1.0))).astype(np.int32)
  img = np.asarray(image, np.float32)
  for lv in range(int(level.max()) + 1):
    if lv:
      hh, ww = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
      if hh == 0 or ww == 0:
        level = np.minimum(level, lv - 1)
        break
      img = img[:hh, :ww].reshape(hh // 2, 2, ww // 2, 2, 3).mean(axis=(1, 3))
    sel = np.flatnonzero(level == lv)
    for s in range(0, len(sel), 4096):
      i = sel[s:s + 4096]
      out[i] = np.clip(_sample(img, boxes[i] / 2 ** lv, size, 2) + 0.5, 0, 255).astype(np.uint8)
  return out


def normalize(crops_uint8: np.ndarray) -> np.ndarray:
  """uint8 -> float32 (x - 127.5) / 128, the networks' input convention."""
  return (np.asarray(crops_uint8, np.float32) - 127.5) / 128.0


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

def _face_features(with_landmarks: bool = True):
  faces = {"bbox": tfds.features.BBoxFeature(), "invalid": np.bool_}
  if with_landmarks:
    faces["landmarks"] = tfds.features.Tensor(shape=(5, 2), dtype=np.float32)
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
      "image/filename": tfds.features.Text(),
      "faces": tfds.features.Sequence(faces),
  })


def _face_example(name: str, rgb: np.ndarray, boxes_px, landmarks_px=None, invalid=None,
                  encoded: bytes | None = None) -> dict:
  """A record in the wider_face layout from pixel boxes (x1,y1,x2,y2) and landmarks (x,y)."""
  h, w = rgb.shape[:2]
  b = np.asarray(boxes_px, np.float32).reshape(-1, 4)
  bb = np.stack([b[:, 1] / h, b[:, 0] / w, b[:, 3] / h, b[:, 2] / w], axis=1)
  bb = np.clip(bb, 0.0, 1.0)
  lm = (np.full((len(b), 5, 2), -1.0, np.float32) if landmarks_px is None
        else np.asarray(landmarks_px, np.float32).reshape(-1, 5, 2) / np.array([w, h], np.float32))
  lm = np.where(np.isfinite(lm), lm, -1.0).astype(np.float32)
  inv = np.zeros(len(b), bool) if invalid is None else np.asarray(invalid, bool)
  faces = [{"bbox": tfds.features.BBox(*map(float, bb[i])), "invalid": bool(inv[i]),
            "landmarks": lm[i]} for i in range(len(b))]
  return {"image": encoded if encoded is not None else jv_data._encode_png(rgb),
          "image/filename": name, "faces": faces}


class FaceSource:
  """Picklable random-access reader of one split of a face-box dataset (array_record).

  source[i] -> {"image", "boxes" (N,4) pixel x1,y1,x2,y2, "landmarks" (N,5,2) pixel (x,y) (NaN
  where missing), "ignore" (N,) bool (faces/invalid), "name", "index"}."""

  def __init__(self, dataset: str, split: str, builder_dir: str):
    self.dataset, self.split, self.builder_dir = dataset, split, builder_dir
    builder = tfds.builder_from_directory(builder_dir)
    info = builder.info
    if info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
      raise DataError(f"dataset {dataset!r} in {builder_dir} is not stored as array_record")
    feats = info.features
    if "image" not in feats or "faces" not in feats or "bbox" not in feats["faces"].feature:
      raise DataError(f"dataset {dataset!r} is not in the wider_face layout (needs image and "
                      f"faces/bbox; has {', '.join(feats.keys())})")
    if split not in info.splits:
      raise DataError(f"dataset {dataset!r}: unknown split {split!r}; available splits: "
                      f"{', '.join(info.splits.keys())}")
    self.dataset_id = info.full_name
    self._ds = None
    self._len = len(self._data())
    if self._len == 0:
      raise DataError(f"dataset {dataset!r}: split {split!r} is empty")

  def _data(self):
    if self._ds is None:
      b = tfds.builder_from_directory(self.builder_dir)
      self._ds = b.as_data_source(split=self.split,
                                  decoders={"image": tfds.decode.SkipDecoding()})
    return self._ds

  def __len__(self):
    return self._len

  def __getitem__(self, index) -> dict[str, Any]:
    i = int(index)
    if not 0 <= i < self._len:
      raise IndexError(f"{self!r}: index {index} out of range")
    rec = self._data()[i]
    name = rec.get("image/filename", str(i))
    name = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    image = jv_data.decode_image(rec["image"], f"{self.dataset}[{self.split}][{i}] ({name})")
    h, w = image.shape[:2]
    faces = rec["faces"]
    bb = np.asarray(faces["bbox"], np.float32).reshape(-1, 4)
    boxes = np.stack([bb[:, 1] * w, bb[:, 0] * h, bb[:, 3] * w, bb[:, 2] * h], axis=1)
    n = len(boxes)
    lm = np.full((n, 5, 2), np.nan, np.float32)
    if "landmarks" in faces:
      raw = np.asarray(faces["landmarks"], np.float32).reshape(n, 5, 2)
      ok = np.all(raw >= 0, axis=(1, 2))
      lm[ok] = raw[ok] * np.array([w, h], np.float32)
    ignore = (np.asarray(faces["invalid"], bool).reshape(n) if "invalid" in faces
              else np.zeros(n, bool))
    return {"image": image, "boxes": boxes.astype(np.float32), "landmarks": lm,
            "ignore": ignore, "name": name, "index": i}

  def __getstate__(self):
    s = self.__dict__.copy()
    s["_ds"] = None
    return s

  def __repr__(self):
    return f"FaceSource({self.dataset_id}, split={self.split!r}, len={self._len})"


# ---------------------------------------------------------------- embedded default

class JaxvisionFaces(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """scikit-image's lfw_subset pasted into the embedded photos (wider_face layout).

  Each of the 100 real LFW face crops (25x25 grey) is pasted twice, at random sizes 24..72 px
  and places, into random 128x128 crops of the embedded photos; its box is the pasted square.
  The 100 LFW non-face crops are pasted the same way without a box (hard negatives), and plain
  photo crops add background. Faces 0-79 / non-faces 0-79 and the train photos form `train`;
  faces 80-99 / non-faces 80-99 and the held-out photos (camera, coffee, rocket) form `test`.
  No landmarks (LFW crops have none)."""

  name = "jaxvision_faces"
  code_path = None
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "lfw_subset faces and non-faces pasted into the embedded photos."}
  SIZE = 128

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=_face_features(),
                                 description="LFW subset faces pasted into natural photos.",
                                 disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples("train"), "test": self._generate_examples("test")}

  def _generate_examples(self, split: str):
    from skimage import data as skdata
    lfw = skdata.lfw_subset()  # (200, 25, 25) float in [0, 1]: 100 faces then 100 non-faces
    test = split == "test"
    photos = [p for p in jv_data.PHOTOS if (p.name in jv_data.PHOTOS_TEST) == test]
    bgs = [jv_data.resize_max_side(jv_data.load_image_file(p.path()), 384) for p in photos]
    bgs = [b for b in bgs if min(b.shape[:2]) >= self.SIZE]  # (microaneurysms is 102x102)
    rng = np.random.default_rng(1 if test else 0)
    idx = range(80, 100) if test else range(80)
    s = self.SIZE

    def background():
      bg = bgs[rng.integers(len(bgs))]
      y, x = rng.integers(0, bg.shape[0] - s + 1), rng.integers(0, bg.shape[1] - s + 1)
      return bg[y:y + s, x:x + s].copy()

    def paste(crop):
      im = background()
      side = int(rng.integers(24, 73))
      patch = np.asarray(Image.fromarray((crop * 255 + 0.5).astype(np.uint8)).resize(
          (side, side), Image.Resampling.BILINEAR))
      y, x = rng.integers(0, s - side + 1), rng.integers(0, s - side + 1)
      im[y:y + side, x:x + side] = patch[..., None]
      return im, [x, y, x + side, y + side]

    key = 0
    for i in idx:
      for rep in range(2):
        im, box = paste(lfw[i])
        yield key, _face_example(f"face_{i:03d}_{rep}", im, [box])
        key += 1
      im, _ = paste(lfw[100 + i])
      yield key, _face_example(f"nonface_{i:03d}", im, np.zeros((0, 4)))
      key += 1
    for j in range(len(idx) // 2):
      yield key, _face_example(f"photo_{j:03d}", background(), np.zeros((0, 4)))
      key += 1


def _prepare_faces(data_dir: str) -> str:
  bdir = os.path.join(data_dir, JaxvisionFaces.name, str(JaxvisionFaces.VERSION))
  jv_data._prepare_builder(lambda: JaxvisionFaces(data_dir=data_dir, file_format="array_record"),
                           bdir, os.path.join(data_dir, f".{JaxvisionFaces.name}.lock"))
  return bdir


# ---------------------------------------------------------------- folder + annotation file

def parse_annotations(path: str) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
  """A WIDER FACE-style annotation file -> [(relative image path, boxes (N,4) x1,y1,x2,y2,
  landmarks (N,5,2) or NaN, invalid (N,))].

  Per image: a line with the image path, a line with the face count N, then N lines of
  `x y w h` (4 numbers), `x y w h blur expression illumination invalid occlusion pose` (10,
  WIDER FACE's own files; `invalid` is kept), or `x y w h lx1 ly1 ... lx5 ly5` (14: five
  landmarks in left eye, right eye, nose, left mouth, right mouth order). WIDER FACE writes
  one `0 0 0 0 ...` line for images with no face; zero-area boxes are dropped."""
  try:
    lines = [l.strip() for l in open(path, encoding="utf-8").read().splitlines()]
  except OSError as e:
    raise DataError(f"{path}: cannot read the annotation file ({e.strerror})") from None
  lines = [l for l in lines if l]
  out, i = [], 0
  while i < len(lines):
    name = lines[i]
    try:
      n = int(lines[i + 1])
      if n == 0:  # WIDER FACE writes one placeholder row `0 0 0 0 ...` for an empty image
        nxt = lines[i + 2].split() if i + 2 < len(lines) else []
        consumed = 1 if len(nxt) >= 4 and all(float(v) == 0 for v in nxt[:4]) else 0
        rows = []
      else:
        consumed = n
        rows = [[float(v) for v in lines[i + 2 + j].split()] for j in range(n)]
    except (IndexError, ValueError):
      raise DataError(f"{path}: line {i + 2}: expected a face count and {name}'s boxes") from None
    boxes = np.zeros((len(rows), 4), np.float32)
    lms = np.full((len(rows), 5, 2), np.nan, np.float32)
    inv = np.zeros(len(rows), bool)
    for j, r in enumerate(rows):
      if len(r) not in (4, 10, 14):
        raise DataError(f"{path}: {name}: a face line has {len(r)} numbers (expected 4, 10 or 14)")
      boxes[j] = [r[0], r[1], r[0] + r[2], r[1] + r[3]]
      if len(r) == 10:
        inv[j] = bool(r[7])
      elif len(r) == 14:
        lms[j] = np.asarray(r[4:], np.float32).reshape(5, 2)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    out.append((name, boxes[keep], lms[keep], inv[keep]))
    i += 2 + consumed
  if not out:
    raise DataError(f"{path}: no images in the annotation file")
  return out


class JaxvisionFaceFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Images of a folder with a WIDER FACE-style annotation file, in the wider_face layout."""

  name = "jaxvision_face_folder"
  code_path = None
  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, root: str, split_name: str, entries, **kwargs):
    self._jv_root, self._jv_split, self._jv_entries = root, split_name, entries
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=_face_features(),
                                 description=f"faces in {self._jv_root}", disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {self._jv_split: self._generate_examples()}

  def _generate_examples(self):
    for key, (rel, boxes, lms, inv) in enumerate(self._jv_entries):
      path = os.path.join(self._jv_root, rel)
      try:
        rgb = jv_data.load_image_file(path)
      except DataError as e:
        self._jv_error = e
        raise
      yield key, _face_example(rel, rgb, boxes, lms, inv)


def _prepare_face_folder(folder: str, split: str, annotations: str, data_dir: str) -> str:
  root = os.path.abspath(os.path.expanduser(folder))
  if not os.path.isdir(root):
    raise DataError(f"folder:{folder}: not a directory")
  ann = os.path.abspath(os.path.expanduser(annotations))
  entries = parse_annotations(ann)
  st = os.stat(ann)
  key = json.dumps([root, ann, split, st.st_size, st.st_mtime_ns])
  cfg = f"{jv_data._slug(os.path.basename(root) or 'root')}_{jv_data._sha(key, 12)}"
  bdir = os.path.join(data_dir, JaxvisionFaceFolder.name, cfg, str(JaxvisionFaceFolder.VERSION))
  jv_data._prepare_builder(
      lambda: JaxvisionFaceFolder(root=root, split_name=split, entries=entries,
                                  data_dir=data_dir, file_format="array_record",
                                  config=tfds.core.BuilderConfig(name=cfg)),
      bdir, os.path.join(data_dir, f".{JaxvisionFaceFolder.name}.{cfg}.lock"))
  return bdir


def get_face_source(dataset: str, split: str, data_dir: str | None = None, *,
                    annotations: str | None = None) -> FaceSource:
  """dataset: "faces" (embedded default), "folder:/path" (needs `annotations`), or the name or
  builder directory of a TFDS dataset prepared as array_record in the wider_face layout."""
  if not isinstance(dataset, str) or not dataset:
    raise DataError(f"dataset must be a non-empty string, got {dataset!r}")
  data_dir = jv_data.resolve_data_dir(data_dir)
  if dataset in ("faces", JaxvisionFaces.name):
    bdir = _prepare_faces(data_dir)
  elif dataset.startswith("folder:"):
    if not annotations:
      raise DataError(f"{dataset}: a face folder needs an annotation file "
                      "(config data.annotations / data.eval_annotations)")
    bdir = _prepare_face_folder(dataset[len("folder:"):], split, annotations, data_dir)
  else:
    bdir = jv_data._find_prepared(dataset, data_dir)
  return FaceSource(dataset, split, bdir)


# --------------------------------------------------------------------------------------------
# Mining
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MiningOptions:
  size: int = 12                  # crop side: 12 (P-Net, 12-net), 24, 48
  negatives_per_image: int = 50   # random windows anywhere (kept when IoU < 0.3 with every face)
  windows_per_face: int = 20      # perturbed windows per face (-> positive / part / negative)
  landmark_per_face: int = 10     # perturbed windows per face with landmarks (IoU > 0.65 kept)
  min_face: float = 12.0          # smaller (and ignored) faces give no positive/part samples
  calibration: bool = False       # Cascade CNN calibration samples instead (45 patterns)


def _random_squares(rng, n, lo, hi, h, w):
  s = rng.uniform(lo, max(lo, hi), n)
  x = rng.uniform(0, np.maximum(w - s, 0) + 1e-3)
  y = rng.uniform(0, np.maximum(h - s, 0) + 1e-3)
  return np.stack([x, y, x + s, y + s], axis=1).astype(np.float32)


def _perturb(rng, faces, k, shift=0.2, scale=(0.8, 1.25)):
  """k squares per face: side sqrt(w h) * U(scale), centre moved by U(-shift, shift) * (w, h)."""
  f = np.repeat(faces, k, axis=0)
  w, h = f[:, 2] - f[:, 0], f[:, 3] - f[:, 1]
  s = np.sqrt(w * h) * rng.uniform(*scale, len(f))
  cx = f[:, 0] + w / 2 + rng.uniform(-shift, shift, len(f)) * w
  cy = f[:, 1] + h / 2 + rng.uniform(-shift, shift, len(f)) * h
  return np.stack([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2], axis=1).astype(np.float32)


def _empty(size):
  return {"crops": np.zeros((0, size, size, 3), np.uint8), "label": np.zeros((0,), np.int8),
          "box": np.zeros((0, 4), np.float32), "landmarks": np.zeros((0, 10), np.float32)}


def label_windows(windows, boxes, landmarks=None, ignore=None):
  """Windows (K,4) against faces (N,4) -> (category (K,), box targets (K,4) to the best face,
  landmark targets (K,10) (NaN where the best face has none)). Windows overlapping an ignored
  face by >= 0.3 are dropped (-1): they are neither clean negatives nor usable positives."""
  windows = np.asarray(windows, np.float32).reshape(-1, 4)
  k = len(windows)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  if len(boxes) == 0:
    return (np.full(k, NEG, np.int8), np.zeros((k, 4), np.float32),
            np.full((k, 10), np.nan, np.float32))
  iou = iou_matrix(windows, boxes)
  ign = np.zeros(len(boxes), bool) if ignore is None else np.asarray(ignore, bool)
  best = np.argmax(np.where(ign[None], -1.0, iou), axis=1)
  cat = categorize(np.max(np.where(ign[None], 0.0, iou), axis=1))
  if ign.any():
    cat = np.where(np.max(np.where(ign[None], iou, 0.0), axis=1) >= NEG_IOU, -1, cat).astype(np.int8)
  tb = box_targets(windows, boxes[best])
  lm = np.full((k, 10), np.nan, np.float32)
  if landmarks is not None:
    lm = landmark_targets(windows, np.asarray(landmarks, np.float32)[best])
  return cat, tb, lm


def mine_image(record: dict, opts: MiningOptions, rng: np.random.Generator,
               proposals: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Training samples from one image: crops (K,S,S,3) uint8, label (K,) in {0,1,2,3} (or the
  calibration pattern), box (K,4), landmarks (K,10).

  Windows: `negatives_per_image` random squares (side 12 .. min(H,W)/2), `windows_per_face`
  perturbations of each face (side x0.8..1.25, centre +-20%), `landmark_per_face` tighter ones
  (x0.9..1.1, +-10%) of faces with landmarks, and `proposals` (windows that the previous stages
  let through), all labelled by `label_windows`."""
  image, boxes = record["image"], np.asarray(record["boxes"], np.float32).reshape(-1, 4)
  lms = np.asarray(record.get("landmarks", np.full((len(boxes), 5, 2), np.nan)), np.float32)
  ignore = np.asarray(record.get("ignore", np.zeros(len(boxes), bool)), bool)
  h, w = image.shape[:2]
  fw, fh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  usable = (np.minimum(fw, fh) >= opts.min_face) & ~ignore
  faces = boxes[usable]
  if opts.calibration:
    return _mine_calibration(image, faces, opts, rng)
  parts = [_random_squares(rng, opts.negatives_per_image, 12, min(h, w) / 2, h, w),
           _perturb(rng, faces, opts.windows_per_face)]
  if proposals is not None:
    parts.append(np.asarray(proposals, np.float32).reshape(-1, 4))
  windows = np.concatenate(parts)
  cat, tb, lm = label_windows(windows, boxes, lms, ignore)
  # A positive/part window needs a face big enough to be one (tiny faces only give negatives).
  big = np.minimum(fw, fh)[np.argmax(iou_matrix(windows, boxes), axis=1)] >= opts.min_face \
      if len(boxes) else np.zeros(len(windows), bool)
  cat = np.where((cat == NEG) | big, cat, -1).astype(np.int8)
  lm[:] = np.nan  # landmark targets only on the landmark windows below
  has_lm = np.all(np.isfinite(lms[usable]), axis=(1, 2))
  if opts.landmark_per_face and has_lm.any():
    lw = _perturb(rng, faces[has_lm], opts.landmark_per_face, shift=0.1, scale=(0.9, 1.1))
    li = np.repeat(np.arange(int(has_lm.sum())), opts.landmark_per_face)
    iou = iou_matrix(lw, faces[has_lm])[np.arange(len(lw)), li]
    ok = iou > POS_IOU
    windows = np.concatenate([windows, lw[ok]])
    cat = np.concatenate([cat, np.full(int(ok.sum()), LANDMARK, np.int8)])
    tb = np.concatenate([tb, np.zeros((int(ok.sum()), 4), np.float32)])
    lm = np.concatenate([lm, landmark_targets(lw[ok], lms[usable][has_lm][li[ok]])])
  keep = cat >= 0
  if not keep.any():
    return _empty(opts.size)
  windows, cat, tb, lm = windows[keep], cat[keep], tb[keep], lm[keep]
  return {"crops": crop_resize(image, windows, opts.size), "label": cat.astype(np.int8),
          "box": tb, "landmarks": np.nan_to_num(lm, nan=0.0)}


def calibration_windows(faces: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """The window that pattern n (s, xn, yn) maps back onto a face (x, y, w, h): shifted by
  (xn w, yn h) and scaled by s, i.e. (x + xn w, y + yn h, s w, s h), so that Li et al.'s
  correction (x - xn w'/s, y - yn h'/s, w'/s, h'/s) recovers the face exactly."""
  from jaxvision.models.mtcnn import calibration_patterns
  p = calibration_patterns()[labels]
  w, h = faces[:, 2] - faces[:, 0], faces[:, 3] - faces[:, 1]
  x, y = faces[:, 0] + p[:, 1] * w, faces[:, 1] + p[:, 2] * h
  return np.stack([x, y, x + p[:, 0] * w, y + p[:, 0] * h], axis=1).astype(np.float32)


def _mine_calibration(image, faces, opts, rng):
  k = max(1, opts.windows_per_face)
  f = np.repeat(faces, k, axis=0)
  labels = rng.integers(0, 45, len(f))
  if not len(f):
    return _empty(opts.size)
  win = calibration_windows(f, labels)
  return {"crops": crop_resize(image, win, opts.size), "label": labels.astype(np.int8),
          "box": np.zeros((len(f), 4), np.float32), "landmarks": np.zeros((len(f), 10), np.float32)}


def concat_samples(parts: Sequence[dict], size: int) -> dict[str, np.ndarray]:
  parts = [p for p in parts if len(p["label"])] or [_empty(size)]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --------------------------------------------------------------------------------------------
# Previous stages: what they let through
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Stage:
  """A trained earlier stage: its model, variables, input size and role."""
  name: str           # registered model name
  size: int
  kind: str           # "detect" | "calibration"
  model: Any
  variables: Any
  threshold: float = 0.5

  def __post_init__(self):
    import jax
    model, variables = self.model, self.variables

    @jax.jit
    def apply(x):
      out = model.apply(variables, x, train=False)
      logits = out["logits"].reshape(x.shape[0], -1)
      prob = jax.nn.softmax(logits, axis=-1)
      box = out["box"].reshape(x.shape[0], 4) if "box" in out else None
      return prob, box

    self._apply = apply

  def __call__(self, crops_uint8: np.ndarray, chunk: int = 1024):
    """(K,S,S,3) uint8 -> (probabilities (K,2|45), box offsets (K,4) or None); fixed-size
    chunks (zero-padded), so each stage compiles once."""
    probs, boxes = [], []
    for s in range(0, len(crops_uint8), chunk):
      c = crops_uint8[s:s + chunk]
      pad = np.zeros((chunk - len(c),) + c.shape[1:], np.uint8)
      p, b = self._apply(normalize(np.concatenate([c, pad])))
      probs.append(np.asarray(p)[:len(c)])
      if b is not None:
        boxes.append(np.asarray(b)[:len(c)])
    if not probs:
      return np.zeros((0, 45 if self.kind == "calibration" else 2), np.float32), None
    return np.concatenate(probs), (np.concatenate(boxes) if boxes else None)


def stage_kind(model_name: str) -> tuple[int, str]:
  """'mtcnn-rnet' -> (24, 'detect'); 'cascade-12cal' -> (12, 'calibration')."""
  sizes = {"pnet": 12, "rnet": 24, "onet": 48, "12net": 12, "24net": 24, "48net": 48,
           "12cal": 12, "24cal": 24, "48cal": 48}
  tail = model_name.split("-")[-1]
  if tail not in sizes:
    raise DataError(f"{model_name!r} is not a face-cascade stage")
  return sizes[tail], "calibration" if tail.endswith("cal") else "detect"


def load_stage(workdir: str, threshold: float = 0.5) -> Stage:
  """A previous stage from its training workdir (config.json + newest checkpoint)."""
  from jaxvision import checkpoint as jv_ckpt
  from jaxvision import models
  try:
    config, variables, _ = jv_ckpt.load_variables(workdir)
  except (jv_ckpt.CheckpointError, FileNotFoundError, OSError) as e:
    raise DataError(f"previous stage {workdir}: {e}") from None
  name = config.model.name
  size, kind = stage_kind(name)
  model = models.create(name, **dict(config.model.get("kwargs", {}) or {}))
  return Stage(name, size, kind, model, variables, threshold)


def pyramid_windows(h: int, w: int, min_size: float = 20.0, factor: float = 0.709,
                    cell: int = 12, stride: int = 2, max_windows: int | None = None,
                    rng: np.random.Generator | None = None) -> np.ndarray:
  """The windows a fully convolutional 12x12 stage (stride 2) sees over MTCNN's image
  pyramid: sides min_size / factor^k up to min(H, W), stride 2 * side / 12 -> (K,4)."""
  out = []
  side = float(min_size)
  while side <= min(h, w):
    st = stride * side / cell
    xs = np.arange(0, w - side + 1e-3, st, dtype=np.float32)
    ys = np.arange(0, h - side + 1e-3, st, dtype=np.float32)
    gx, gy = np.meshgrid(xs, ys)
    out.append(np.stack([gx.ravel(), gy.ravel(), gx.ravel() + side, gy.ravel() + side], 1))
    side /= factor
  win = np.concatenate(out) if out else np.zeros((0, 4), np.float32)
  if max_windows and len(win) > max_windows:
    rng = rng or np.random.default_rng(0)
    win = win[np.sort(rng.choice(len(win), max_windows, replace=False))]
  return win.astype(np.float32)


def propose(image: np.ndarray, stages: Sequence[Stage], min_size: float = 20.0,
            max_windows: int = 20000, rng: np.random.Generator | None = None) -> np.ndarray:
  """Windows (K,4) of `image` that every stage in `stages` lets through, refined as at
  detection time: detection stages keep windows whose face probability exceeds their
  threshold, then apply their box regression (MTCNN) and square the result; calibration stages
  move each window by the average of its confident patterns (Li et al. eq. 1)."""
  from jaxvision.models.mtcnn import apply_calibration
  h, w = image.shape[:2]
  win = pyramid_windows(h, w, min_size, max_windows=max_windows, rng=rng)
  for st in stages:
    if not len(win):
      break
    prob, box = st(crop_resize(image, win, st.size))
    if st.kind == "calibration":
      win = apply_calibration(win, prob)
      continue
    keep = prob[:, 1] > st.threshold
    win = win[keep]
    if box is not None:
      b = box[keep]
      ww, hh = win[:, 2] - win[:, 0], win[:, 3] - win[:, 1]
      win = win + b * np.stack([ww, hh, ww, hh], axis=1)
      win = square(win)
  return np.asarray(win, np.float32).reshape(-1, 4)


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------

def mix_counts(batch_size: int, mix: Sequence[float], available: Sequence[int]) -> np.ndarray:
  """Samples per category (neg, pos, part, landmark) in one batch: batch_size split in the
  ratio `mix` over the categories that have samples; rounding leftovers go to the largest."""
  m = np.asarray(mix, np.float64) * (np.asarray(available) > 0)
  if m.sum() <= 0:
    raise DataError("no training samples in any category of the batch mix "
                    f"(samples per category {list(available)}, mix {list(mix)})")
  c = np.floor(batch_size * m / m.sum()).astype(np.int64)
  c[int(np.argmax(m))] += batch_size - c.sum()
  return c


def flip_samples(crops, label, box, landmarks, calibration: bool):
  """Horizontal flip of crops and their targets (numpy, per-sample boolean mask applied by the
  caller): box x offsets swap and change sign, landmark x -> 1 - x with left/right swapped,
  calibration pattern x shift negated."""
  crops = crops[:, :, ::-1]
  if calibration:
    s, xi, yi = label // 9, (label // 3) % 3, label % 3
    return crops, (s * 9 + (2 - xi) * 3 + yi).astype(label.dtype), box, landmarks
  box = np.stack([-box[:, 2], box[:, 1], -box[:, 0], box[:, 3]], axis=1)
  lx, ly = landmarks[:, :5], landmarks[:, 5:]
  landmarks = np.concatenate([(1 - lx)[:, LANDMARK_FLIP], ly[:, LANDMARK_FLIP]], axis=1)
  landmarks = np.where(label[:, None] == LANDMARK, landmarks, 0.0)
  return crops, label, box, landmarks


class MixedBatches:
  """A grain random-access source whose record i is one whole batch, drawn deterministically
  from (seed, i): counts per category from `mix_counts`, samples uniformly with replacement
  inside each category, a random horizontal flip per sample. Batches are ordered by category
  (negatives first); the model sees no order."""

  def __init__(self, samples: dict[str, np.ndarray], batch_size: int, mix: Sequence[float],
               seed: int, calibration: bool = False, flips: bool = True, length: int = 2**30):
    self.samples, self.batch_size, self.seed = samples, int(batch_size), int(seed)
    self.calibration, self.flips, self._len = calibration, flips, int(length)
    lab = samples["label"]
    if calibration:
      self.pools = [np.arange(len(lab))]
      self.counts = np.array([self.batch_size]) if len(lab) else mix_counts(1, [1], [0])
    else:
      self.pools = [np.flatnonzero(lab == c) for c in range(4)]
      self.counts = mix_counts(self.batch_size, mix, [len(p) for p in self.pools])

  def __len__(self):
    return self._len

  def __getitem__(self, i) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, int(i)])
    idx = np.concatenate([p[rng.integers(0, len(p), n)] for p, n in zip(self.pools, self.counts)
                          if n > 0])
    s = self.samples
    crops, label, box, lm = s["crops"][idx], s["label"][idx].astype(np.int32), s["box"][idx], \
        s["landmarks"][idx]
    if self.flips:
      f = rng.random(len(idx)) < 0.5
      fc, fl, fb, flm = flip_samples(crops, label, box, lm, self.calibration)
      crops = np.where(f[:, None, None, None], fc, crops)
      label = np.where(f, fl, label)
      box = np.where(f[:, None], fb, box)
      lm = np.where(f[:, None], flm, lm)
    return {"input": normalize(crops), "label": label.astype(np.int32),
            "box": box.astype(np.float32), "landmarks": lm.astype(np.float32)}

  def __repr__(self):  # stable: grain checks it when restoring a saved position
    return (f"MixedBatches(n={len(self.samples['label'])}, batch={self.batch_size}, "
            f"counts={self.counts.tolist()}, seed={self.seed}, calibration={self.calibration})")


def make_loader(samples, *, batch_size: int, mix, seed: int, calibration: bool = False,
                shard_index: int = 0, shard_count: int = 1) -> grain.DataLoader:
  """Infinite, deterministic (per seed) loader of mixed batches; its iterator's state is
  checkpointed by the trainer like the image loaders'. Each host reads other batches."""
  src = MixedBatches(samples, batch_size, mix, seed, calibration)
  shard = grain.sharding.ShardOptions(shard_index=shard_index, shard_count=shard_count,
                                      drop_remainder=True)
  sampler = grain.samplers.IndexSampler(num_records=len(src), shard_options=shard,
                                        shuffle=False, num_epochs=1, seed=seed)
  return grain.DataLoader(data_source=src, sampler=sampler, worker_count=0,
                          shard_options=shard)


def mine_source(source, opts: MiningOptions, seed: int, max_images: int | None = None,
                stages: Sequence[Stage] = (), min_size: float = 20.0,
                max_windows: int = 20000, max_proposals: int = 200,
                progress: bool = False) -> dict[str, np.ndarray]:
  """All training samples of a face source (optionally through previous stages)."""
  n = len(source) if not max_images else min(int(max_images), len(source))
  parts = []
  it = range(n)
  if progress:
    from tqdm.auto import tqdm
    it = tqdm(it, desc=f"mining {opts.size}x{opts.size} samples", unit="img")
  for i in it:
    rng = np.random.default_rng([seed, i])
    rec = source[i]
    prop = None
    if stages and not opts.calibration:
      prop = propose(rec["image"], stages, min_size, max_windows, rng)
      if len(prop) > max_proposals:
        prop = prop[rng.choice(len(prop), max_proposals, replace=False)]
    parts.append(mine_image(rec, opts, rng, prop))
  return concat_samples(parts, opts.size)


def counts_by_category(samples) -> dict[str, int]:
  lab = samples["label"]
  return {c: int(np.sum(lab == k)) for k, c in enumerate(CATEGORIES)}
