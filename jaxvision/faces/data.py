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

Annotation files: `parse_annotations` (WIDER FACE's format, optionally with five landmarks).
Training samples are mined from these records by `jaxvision.faces.mining`.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxvision.core import data as jv_data
from jaxvision.core.errors import DataError
from jaxvision.core.io import _encode_png, decode_image, load_image_file, resize_max_side


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
  return {"image": encoded if encoded is not None else _encode_png(rgb),
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
    image = decode_image(rec["image"], f"{self.dataset}[{self.split}][{i}] ({name})")
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
    bgs = [resize_max_side(load_image_file(p.path()), 384) for p in photos]
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
        rgb = load_image_file(path)
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
