"""TFDS builders (array_record, no TensorFlow) for the landmark datasets 300-W and WFLW.

Nothing downloads: both sets are distributed after a licence form, so the builders read a
*manual dir* the user fills, `<data_dir>/downloads/manual/300w` or `.../wflw` (tfds' own
manual-dir place; `data.manual_dir` in configs/landmarks.py names another folder), and are
prepared once, on first use, into `<data_dir>/jaxvision_300w/1.0.0` / `jaxvision_wflw/1.0.0`.
To rebuild after changing the files, delete that folder.

300-W (iBUG's layout: each image with a 68-point `.pts` file of the same name beside it):
  train        lfpw/trainset + helen/trainset + afw                 (811 + 2000 + 337 = 3148)
  common       lfpw/testset + helen/testset                         (224 + 330 = 554)
  challenging  ibug                                                 (135)
  full         common + challenging (read as the split "common+challenging"; not stored twice)
The `.pts` coordinates are 1-based (Matlab) and stored 0-based (minus 1), as `read_pts`.
300-W has no box and no attributes: the box is the points' bounding box, the attributes 0.

WFLW (Wu et al. 2018): `WFLW_images/<event folders>/<image>.jpg` and
`WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_{train,test}.txt`, one
face per line: 196 coordinates (x0 y0 ... x97 y97, 0-based pixels, stored as given), the box
x_min y_min x_max y_max, six 0/1 flags (pose, expression, illumination, make-up, occlusion,
blur) and the image path relative to WFLW_images. Splits train (7500) and test (2500).
A picture with several faces appears once per face (the image bytes are stored per record).

Each record: image (the original JPEG/PNG bytes when they are 8-bit RGB, else a PNG),
image/filename (the path inside the manual dir), points (P, 2) float32 pixel (x, y) with
pixel centres at integers, box (4,) float32 x_min y_min x_max y_max, attributes (6,) int32.
Annotations are all parsed before the build starts, so a malformed `.pts` or annotation line
is one DataError naming the file (and line); a missing image or folder likewise.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxvision.core import data as jv_data
from jaxvision.core.errors import DataError

ATTRIBUTES = ("pose", "expression", "illumination", "make-up", "occlusion", "blur")
NUM_POINTS = {"300w": 68, "wflw": 98}
SPLITS = {"300w": ("train", "common", "challenging", "full"), "wflw": ("train", "test")}
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")

# 300-W: split -> its folders inside the manual dir
IBUG_FOLDERS = {"train": ("lfpw/trainset", "helen/trainset", "afw"),
                "common": ("lfpw/testset", "helen/testset"),
                "challenging": ("ibug",)}
WFLW_LIST = os.path.join("WFLW_annotations", "list_98pt_rect_attr_train_test",
                         "list_98pt_rect_attr_{}.txt")


def manual_dir(name: str, data_dir: str, override: str = "") -> str:
  """Where the user puts the dataset's files: `override`, else tfds' manual-dir place."""
  if override:
    return os.path.abspath(os.path.expanduser(override))
  return os.path.join(data_dir, "downloads", "manual", name)


# --------------------------------------------------------------------------------------------
# Annotation parsers (all run before a build, so errors come before any work)
# --------------------------------------------------------------------------------------------

Entry = tuple  # (relative image path, points (P, 2) float32, box (4,) float32, attrs (6,) int32)


def read_pts(path: str) -> np.ndarray:
  """An iBUG .pts file -> (P, 2) float32 0-based pixel coordinates."""
  try:
    with open(path) as f:
      text = f.read(1 << 20)
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
  except UnicodeDecodeError:
    raise DataError(f"{path}: not an iBUG .pts file (not text)") from None
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
  """(P, 2) 0-based points -> an iBUG .pts file (1-based, 3 decimals)."""
  pts = np.asarray(points, np.float64) + 1.0
  lines = ["version: 1", f"n_points: {len(pts)}", "{"]
  lines += [f"{x:.3f} {y:.3f}" for x, y in pts] + ["}"]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def _image_beside(stem: str) -> str | None:
  for e in IMAGE_EXTS + tuple(x.upper() for x in IMAGE_EXTS):
    if os.path.isfile(stem + e):
      return stem + e
  return None


def scan_300w(root: str) -> dict[str, list[Entry]]:
  """{split: [entry]} of an iBUG 300-W layout (module docstring): the split's folders in
  their order, each one's files sorted by name."""
  out = {}
  for split, folders in IBUG_FOLDERS.items():
    entries = []
    for rel in folders:
      d = os.path.join(root, rel)
      if not os.path.isdir(d):
        raise DataError(f"{d}: missing (the 300-W manual dir needs "
                        f"{', '.join(f for fs in IBUG_FOLDERS.values() for f in fs)})")
      for f in sorted(os.listdir(d)):
        if not f.lower().endswith(".pts"):
          continue
        pts_path = os.path.join(d, f)
        img = _image_beside(os.path.splitext(pts_path)[0])
        if img is None:
          raise DataError(f"{pts_path}: no image of the same name beside it")
        pts = read_pts(pts_path)
        if len(pts) != 68:
          raise DataError(f"{pts_path}: {len(pts)} points; 300-W has 68")
        box = np.concatenate([pts.min(0), pts.max(0)]).astype(np.float32)
        entries.append((os.path.relpath(img, root), pts, box, np.zeros(6, np.int32)))
    if not entries:
      raise DataError(f"{root}: no .pts files in {', '.join(folders)} (300-W split {split})")
    out[split] = entries
  return out


def parse_wflw_list(path: str) -> list[Entry]:
  """WFLW's list_98pt_rect_attr_*.txt -> [entry] (module docstring); a malformed line is a
  DataError naming the file and line."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
  except UnicodeDecodeError:
    raise DataError(f"{path}: not a text file (a WFLW annotation list)") from None
  out = []
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    f = line.split()
    if len(f) != 207:
      raise DataError(f"{path}: line {n}: {len(f)} fields; a WFLW line has 207 (196 "
                      "coordinates, 4 box values, 6 attribute flags, the image path)")
    try:
      v = np.array(f[:206], np.float64)
    except ValueError:
      raise DataError(f"{path}: line {n}: a non-numeric value among the first 206 fields") \
          from None
    if not np.isfinite(v).all():
      raise DataError(f"{path}: line {n}: non-finite values")
    attrs = v[200:206]
    if not np.isin(attrs, (0, 1)).all():
      raise DataError(f"{path}: line {n}: attribute flags must be 0 or 1, got "
                      f"{' '.join(f[200:206])}")
    box = v[196:200]
    if not (box[2] >= box[0] and box[3] >= box[1]):
      raise DataError(f"{path}: line {n}: box {' '.join(f[196:200])} is not "
                      "x_min y_min x_max y_max")
    out.append((f[206], v[:196].reshape(98, 2).astype(np.float32), box.astype(np.float32),
                attrs.astype(np.int32)))
  if not out:
    raise DataError(f"{path}: no faces in the annotation list")
  return out


def scan_wflw(root: str) -> dict[str, list[Entry]]:
  """{"train", "test": [entry]} of a WFLW manual dir; image paths made relative to `root`."""
  out = {}
  for split in ("train", "test"):
    lst = os.path.join(root, WFLW_LIST.format(split))
    if not os.path.isfile(lst):
      raise DataError(f"{lst}: missing (the WFLW manual dir needs WFLW_images/ and "
                      "WFLW_annotations/ as unpacked from the release)")
    entries = []
    for rel, pts, box, attrs in parse_wflw_list(lst):
      img = os.path.join("WFLW_images", rel)
      if not os.path.isfile(os.path.join(root, img)):
        raise DataError(f"{lst}: image {rel} not found in {os.path.join(root, 'WFLW_images')}")
      entries.append((img, pts, box, attrs))
    out[split] = entries
  return out


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------

def _features(num_points: int):
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3)),
      "image/filename": tfds.features.Text(),
      "points": tfds.features.Tensor(shape=(num_points, 2), dtype=np.float32),
      "box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
      "attributes": tfds.features.Tensor(shape=(6,), dtype=np.int32),
  })


class _LandmarkBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Records from entries parsed beforehand (`scan_300w` / `scan_wflw`)."""

  code_path = None   # nothing to download: no checksums file
  VERSION = tfds.core.Version("1.0.0")
  NUM_POINTS = 0
  DESCRIPTION = ""

  def __init__(self, *, root: str, splits: dict[str, list[Entry]], **kwargs):
    self._jv_root, self._jv_splits = root, splits
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=_features(self.NUM_POINTS),
                                 description=self.DESCRIPTION, disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {s: self._generate_examples(e) for s, e in self._jv_splits.items()}

  def _generate_examples(self, entries):
    for key, (rel, pts, box, attrs) in enumerate(entries):
      try:
        image = jv_data._folder_image_bytes(os.path.join(self._jv_root, rel))
      except DataError as e:
        self._jv_error = e   # _prepare_builder re-raises it, not tfds' wrapped error
        raise
      yield key, {"image": image, "image/filename": rel, "points": pts, "box": box,
                  "attributes": attrs}


class Jaxvision300W(_LandmarkBuilder, skip_registration=True):
  name = "jaxvision_300w"
  NUM_POINTS = 68
  DESCRIPTION = "iBUG 300-W (68 points) from a manual dir: train, common, challenging."


class JaxvisionWFLW(_LandmarkBuilder, skip_registration=True):
  name = "jaxvision_wflw"
  NUM_POINTS = 98
  DESCRIPTION = "WFLW (98 points, box, 6 attribute flags) from a manual dir: train, test."


BUILDERS = {"300w": (Jaxvision300W, scan_300w), "wflw": (JaxvisionWFLW, scan_wflw)}


def prepare(name: str, data_dir: str | None = None, manual: str = "") -> str:
  """Builds `name` ("300w" | "wflw") from its manual dir once; returns the builder dir."""
  if name not in BUILDERS:
    raise DataError(f"tfds:{name}: unknown landmark dataset; choose 300w or wflw")
  cls, scan = BUILDERS[name]
  data_dir = jv_data.resolve_data_dir(data_dir)
  bdir = os.path.join(data_dir, cls.name, str(cls.VERSION))
  if os.path.isfile(os.path.join(bdir, "dataset_info.json")):
    return bdir
  root = manual_dir(name, data_dir, manual)
  if not os.path.isdir(root):
    raise DataError(f"tfds:{name}: not prepared in {data_dir} and its manual dir {root} does "
                    f"not exist: put the {'300-W' if name == '300w' else 'WFLW'} files there "
                    "(docs/landmarks.md) or name the folder with data.manual_dir")
  splits = scan(root)
  jv_data._prepare_builder(
      lambda: cls(root=root, splits=splits, data_dir=data_dir, file_format="array_record"),
      bdir, os.path.join(data_dir, f".{cls.name}.lock"))
  return bdir


class LandmarkSource(jv_data.ImageSource):
  """Picklable random-access reader of one split of a prepared landmark dataset
  (`core.data.ImageSource` with the labels).

  source[i] -> {"image" (H, W, 3) uint8, "points" (P, 2) float32, "box" (4,) float32,
  "attributes" (6,) int32, "name", "index", "dataset_id"}. `split` may be tfds split
  arithmetic; 300-W's "full" reads "common+challenging"."""

  def __init__(self, name: str, split: str, builder_dir: str):
    if split not in SPLITS[name]:
      raise DataError(f"tfds:{name}: unknown split {split!r}; choose "
                      f"{', '.join(SPLITS[name])}")
    self.name = name
    super().__init__(f"tfds:{name}",
                     "common+challenging" if (name, split) == ("300w", "full") else split,
                     builder_dir, image_key="image")

  def _fields(self, rec) -> dict[str, Any]:
    return {"points": np.asarray(rec["points"], np.float32),
            "box": np.asarray(rec["box"], np.float32),
            "attributes": np.asarray(rec["attributes"], np.int32)}

  def attributes(self) -> np.ndarray:
    """(N, 6) int32 of the whole split, without decoding any image."""
    ds = self._data()
    return np.stack([np.asarray(ds[i]["attributes"], np.int32) for i in range(self._len)])

  def __repr__(self):
    return f"LandmarkSource({self.name}, split={self.split!r}, len={self._len})"


def get_source(name: str, split: str, data_dir: str | None = None,
               manual: str = "") -> LandmarkSource:
  """The split of `name` ("300w" | "wflw"), preparing the dataset from its manual dir once."""
  return LandmarkSource(name, split, prepare(name, data_dir, manual))
