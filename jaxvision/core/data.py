"""Data layer: image sources (TFDS array_record, no TensorFlow), grain train loader, eval batches,
and a disk cache of targets for slow image operators.  See docs/data.md for the full story.

Sources
  get_source("photos", "train")               the embedded real photos (TFDS "jaxvision_photos")
  get_source("folder:/my/photos", "train")     your own images, built once into a TFDS dataset
  get_source("div2k/bicubic_x2", "validation") any TFDS dataset already prepared as array_record
Every source is picklable, random access, and yields {"image": (H,W,3) uint8, "index": int,
"name": str, "dataset_id": str}.

Pipeline
  loader = make_train_loader(source, batch_size=8, crop_size=128, seed=0)
  it = iter(loader); batch = next(it)   # {"input": f32[8,128,128,3], "target": ...} in [0,1]
  state = it.get_state(); it.set_state(state)     # or via orbax: checkpoint_save_arg(it)
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.resources
import io
import json
import logging
import os
import re
import shutil
import sys
import threading
from typing import Any, Callable, Iterable, Mapping

import grain
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxvision.core.errors import DataError
from jaxvision.core.io import (IMAGE_EXTENSIONS, _encode_png, atomic_write, atomic_write_text,
                               decode_image, load_image_file, resize_max_side, to_rgb_uint8,
                               write_png)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DATA_DIR", "DataError", "to_rgb_uint8", "load_image_file", "decode_image",
    "resize_max_side", "resolve_data_dir", "get_source", "ImageSource", "PHOTOS",
    "PHOTOS_TEST", "make_train_loader", "TrainLoader", "make_eval_batches",
    "checkpoint_save_arg", "checkpoint_restore_arg", "CachedPairs",
]


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> str:
  """`data_dir` if given (non-empty), else $TFDS_DATA_DIR, else ~/tensorflow_datasets (tfds's default).

  Resolved at call time, so setting TFDS_DATA_DIR after import works."""
  d = os.fspath(data_dir) if data_dir else (os.environ.get("TFDS_DATA_DIR") or
                                            os.path.join("~", "tensorflow_datasets"))
  return os.path.abspath(os.path.expanduser(d))


# The value at import time (for display / config defaults); functions resolve it per call.
DEFAULT_DATA_DIR = resolve_data_dir(None)


# --------------------------------------------------------------------------------------------
# Small helpers: hashing, names, locks, quiet tfds
# --------------------------------------------------------------------------------------------

def _sha(text: str, n: int = 12) -> str:
  return hashlib.sha256(text.encode()).hexdigest()[:n]


def _slug(text: str, max_len: int = 40) -> str:
  s = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
  return (s[:max_len].strip("_") or "x")


@contextlib.contextmanager
def _file_lock(path: str):
  """Exclusive advisory lock (fcntl) so concurrent processes/hosts do not build the same thing."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_tfds():
  """No tqdm bars from tfds when stderr is not a terminal (logs, CI)."""
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  was = getattr(tqdm_utils, "_active", True)
  if not sys.stderr.isatty():
    tfds.display_progress_bar(False)
  try:
    yield
  finally:
    tfds.display_progress_bar(was)


def _prepare_builder(builder_factory: Callable[[], Any], builder_dir: str, lock_path: str) -> None:
  """download_and_prepare() once, under a file lock; a no-op when builder_dir is complete."""
  if os.path.isfile(os.path.join(builder_dir, "dataset_info.json")):
    return
  with _file_lock(lock_path):
    if os.path.isfile(os.path.join(builder_dir, "dataset_info.json")):
      return
    builder = builder_factory()
    try:
      with _quiet_tfds():
        builder.download_and_prepare()
    except Exception as e:  # our generators stash a DataError; tfds may wrap what it sees
      for d in (builder_dir, os.path.dirname(builder_dir)):  # tfds leaves empty dirs behind
        try:
          os.rmdir(d)
        except FileNotFoundError:
          continue
        except OSError:
          break
      err = getattr(builder, "_jv_error", None)
      if err is not None:
        raise err from None
      if isinstance(e, DataError):
        raise
      raise DataError(f"{builder_dir}: preparing the dataset failed ({type(e).__name__}: "
                      f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from e
    if os.fspath(builder.data_dir) != builder_dir:  # our path arithmetic must match tfds'
      raise DataError(f"{builder_dir}: tfds prepared {builder.data_dir} instead (internal error)")


# --------------------------------------------------------------------------------------------
# Embedded dataset: jaxvision_photos
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Photo:
  name: str
  source: str        # "skimage" | "sklearn"
  filename: str      # inside skimage/data or sklearn/datasets/images

  def path(self) -> str:
    if self.source == "skimage":
      base = importlib.resources.files("skimage").joinpath("data")
    else:
      base = importlib.resources.files("sklearn").joinpath("datasets", "images")
    return os.fspath(base.joinpath(self.filename))


# Every natural photograph (incl. microscopy / astronomy / retina) shipped inside the
# scikit-image and scikit-learn wheels; nothing here is fetched with pooch.  Excluded on purpose:
# synthetic images (chessboard_*, color (colour wheel), logo, phantom (Shepp-Logan), horse
# (binary silhouette)), test fixtures (multipage*.tif, no_time_for_that_tiny.gif), lfw_subset.npy
# (25x25 faces), and everything skimage only downloads (eagle, brain, kidney, lily, skin, ...).
PHOTOS: tuple[_Photo, ...] = (
    _Photo("astronaut", "skimage", "astronaut.png"),                  # 512x512 RGB
    _Photo("brick", "skimage", "brick.png"),                          # 512x512 grey
    _Photo("camera", "skimage", "camera.png"),                        # 512x512 grey
    _Photo("cell", "skimage", "cell.png"),                            # 660x550 grey
    _Photo("chelsea", "skimage", "chelsea.png"),                      # 451x300 RGB
    _Photo("clock", "skimage", "clock_motion.png"),                   # 400x300 grey
    _Photo("coffee", "skimage", "coffee.png"),                        # 600x400 RGB
    _Photo("coins", "skimage", "coins.png"),                          # 384x303 grey
    _Photo("grass", "skimage", "grass.png"),                          # 512x512 grey
    _Photo("gravel", "skimage", "gravel.png"),                        # 512x512 grey
    _Photo("hubble_deep_field", "skimage", "hubble_deep_field.jpg"),  # 1000x872 RGB
    _Photo("immunohistochemistry", "skimage", "ihc.png"),             # 512x512 RGB
    _Photo("microaneurysms", "skimage", "microaneurysms.png"),        # 102x102 grey
    _Photo("moon", "skimage", "moon.png"),                            # 512x512 grey
    _Photo("motorcycle_left", "skimage", "motorcycle_left.png"),      # 741x500 RGB
    _Photo("motorcycle_right", "skimage", "motorcycle_right.png"),    # 741x500 RGB
    _Photo("page", "skimage", "page.png"),                            # 384x191 grey
    _Photo("retina", "skimage", "retina.jpg"),                        # 1411x1411 RGB
    _Photo("rocket", "skimage", "rocket.jpg"),                        # 640x427 RGB
    _Photo("text", "skimage", "text.png"),                            # 448x172 grey
    _Photo("china", "sklearn", "china.jpg"),                          # 640x427 RGB
    _Photo("flower", "sklearn", "flower.jpg"),                        # 640x427 RGB
)
# Fixed held-out photos: one grey PNG, one colour PNG, one colour JPEG, none with a near-duplicate
# in train (both stereo views stay in train).
PHOTOS_TEST: tuple[str, ...] = ("camera", "coffee", "rocket")


class JaxvisionPhotos(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Real photos shipped in the scikit-image / scikit-learn wheels (grey ones converted to RGB)."""

  name = "jaxvision_photos"
  code_path = None  # no checksums file (nothing to download); tfds' lookup needs importlib_resources
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "22 photos: 19 train, 3 test (camera, coffee, rocket)."}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="Natural photos shipped inside the scikit-image and scikit-learn wheels.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "name": tfds.features.Text(),
            "source": tfds.features.Text(),
        }),
        homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
        disable_shuffling=True,  # records in PHOTOS order (integer keys)
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    train = [p for p in PHOTOS if p.name not in PHOTOS_TEST]
    test = [p for p in PHOTOS if p.name in PHOTOS_TEST]
    return {"train": self._generate_examples(train), "test": self._generate_examples(test)}

  def _generate_examples(self, photos):
    for key, p in enumerate(photos):
      try:
        rgb = load_image_file(p.path())
      except DataError as e:
        self._jv_error = DataError(f"jaxvision_photos: {p.source} photo {p.name!r} unavailable ({e})")
        raise self._jv_error
      yield key, {"image": _encode_png(rgb), "name": p.name, "source": p.source}


def _prepare_photos(data_dir: str) -> str:
  builder_dir = os.path.join(data_dir, JaxvisionPhotos.name, str(JaxvisionPhotos.VERSION))
  _prepare_builder(lambda: JaxvisionPhotos(data_dir=data_dir, file_format="array_record"),
                   builder_dir, os.path.join(data_dir, f".{JaxvisionPhotos.name}.lock"))
  return builder_dir


# --------------------------------------------------------------------------------------------
# Folder datasets: jaxvision_folder/<slug>_<pathhash>_<contenthash>
# --------------------------------------------------------------------------------------------

def _scan_folder(root: str) -> dict[str, list[tuple[str, int, int]]]:
  """{split: [(relpath, size, mtime_ns), ...]} of the image files under root (sorted).

  If root has a "train" subfolder, every top-level subfolder is a split (its name) and loose
  images in root are an error; otherwise every image (recursively) is in split "train".
  Hidden files/folders and files without an image extension are ignored."""
  if not os.path.isdir(root):
    raise DataError(f"folder:{root}: not a directory")

  def walk(top: str) -> list[tuple[str, int, int]]:
    out = []
    for d, dirs, files in os.walk(top, followlinks=True):
      dirs[:] = sorted(x for x in dirs if not x.startswith("."))
      for f in sorted(files):
        if f.startswith(".") or os.path.splitext(f)[1].lower() not in IMAGE_EXTENSIONS:
          continue
        p = os.path.join(d, f)
        st = os.stat(p)
        out.append((os.path.relpath(p, root), st.st_size, st.st_mtime_ns))
    return out

  entries = sorted(os.listdir(root))
  subdirs = [e for e in entries if not e.startswith(".") and os.path.isdir(os.path.join(root, e))]
  if "train" in subdirs:
    loose = [e for e in entries if os.path.isfile(os.path.join(root, e)) and not e.startswith(".")
             and os.path.splitext(e)[1].lower() in IMAGE_EXTENSIONS]
    if loose:
      raise DataError(f"folder:{root}: has split subfolders ({', '.join(subdirs)}) and "
                      f"{len(loose)} loose images (e.g. {loose[0]}); move them into a split folder")
    splits = {}
    for s in subdirs:
      if not re.fullmatch(r"\w+", s):
        raise DataError(f"folder:{root}: split folder name {s!r} must be letters, digits, _")
      files = walk(os.path.join(root, s))  # paths relative to root: "train/a.png"
      if files:
        splits[s] = files
  else:
    files = walk(root)
    splits = {"train": files} if files else {}
  if not splits:
    raise DataError(f"folder:{root}: no image files found ({', '.join(sorted(IMAGE_EXTENSIONS))})")
  return splits


class JaxvisionFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A user's image folder; one BuilderConfig per (absolute path, file list + mtimes)."""

  name = "jaxvision_folder"
  code_path = None  # no checksums file (nothing to download); tfds' lookup needs importlib_resources
  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, folder_root: str, folder_splits, **kwargs):
    self._jv_root = folder_root
    self._jv_splits = folder_splits
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"Images from the folder {self._jv_root}",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "name": tfds.features.Text(),  # path relative to the folder
        }),
        disable_shuffling=True,  # records in sorted path order (integer keys)
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {s: self._generate_examples(files) for s, files in self._jv_splits.items()}

  def _generate_examples(self, files):
    for key, (rel, _, _) in enumerate(files):
      path = os.path.join(self._jv_root, rel)
      try:
        yield key, {"image": _folder_image_bytes(path), "name": rel}
      except DataError as e:
        self._jv_error = e
        raise


def _folder_image_bytes(path: str) -> bytes:
  """Stored bytes for one folder image: the original file when it is an 8-bit RGB JPEG/PNG that
  needs no EXIF rotation (lossless, compact), else a PNG of the normalised RGB uint8 image.
  The file is fully decoded either way, so unreadable files fail at build time."""
  rgb = load_image_file(path)
  with open(path, "rb") as f:
    raw = f.read()
  try:
    with Image.open(io.BytesIO(raw)) as im:
      keep = (im.format in ("JPEG", "PNG") and im.mode == "RGB"
              and im.getexif().get(0x0112, 1) == 1 and "transparency" not in im.info)
  except Exception:  # pylint: disable=broad-except
    keep = False
  return raw if keep else _encode_png(rgb)


def _prepare_folder(folder: str, data_dir: str) -> str:
  root = os.path.abspath(os.path.expanduser(folder))
  splits = _scan_folder(root)
  listing = json.dumps([JaxvisionFolder.VERSION.__str__(), root, splits], sort_keys=True)
  prefix = f"{_slug(os.path.basename(root) or 'root')}_{_sha(root, 8)}_"
  config_name = prefix + _sha(listing, 10)
  parent = os.path.join(data_dir, JaxvisionFolder.name)
  builder_dir = os.path.join(parent, config_name, str(JaxvisionFolder.VERSION))
  lock = os.path.join(data_dir, f".{JaxvisionFolder.name}.{prefix.rstrip('_')}.lock")
  if os.path.isfile(os.path.join(builder_dir, "dataset_info.json")):
    return builder_dir
  _prepare_builder(
      lambda: JaxvisionFolder(folder_root=root, folder_splits=splits, data_dir=data_dir,
                              config=tfds.core.BuilderConfig(name=config_name,
                                                             description=f"folder {root}"),
                              file_format="array_record"),
      builder_dir, lock)
  # The folder changed since an older build: drop the stale builds of the same folder.
  with _file_lock(lock):
    for d in os.listdir(parent):
      if d.startswith(prefix) and d != config_name:
        log.info("removing stale build %s of folder %s", d, root)
        shutil.rmtree(os.path.join(parent, d), ignore_errors=True)
  return builder_dir


# --------------------------------------------------------------------------------------------
# Prepared TFDS datasets
# --------------------------------------------------------------------------------------------

_NOT_DATASETS = {"downloads", "jaxvision_targets", JaxvisionFolder.name}


def _is_version(s: str) -> bool:
  return re.fullmatch(r"\d+\.\d+\.\d+", s) is not None


def _version_key(s: str):
  return tuple(int(x) for x in s.split("."))


def _list_prepared(data_dir: str) -> list[str]:
  """'name[/config]:version' for every prepared TFDS dataset directly under data_dir."""
  out = []
  if not os.path.isdir(data_dir):
    return out
  for name in sorted(os.listdir(data_dir)):
    d = os.path.join(data_dir, name)
    if name.startswith(".") or name in _NOT_DATASETS or not os.path.isdir(d):
      continue
    for sub in sorted(os.listdir(d)):
      sd = os.path.join(d, sub)
      if _is_version(sub) and os.path.isfile(os.path.join(sd, "dataset_info.json")):
        out.append(f"{name}:{sub}")
      elif os.path.isdir(sd) and not sub.startswith("."):
        for v in sorted(os.listdir(sd)):
          if _is_version(v) and os.path.isfile(os.path.join(sd, v, "dataset_info.json")):
            out.append(f"{name}/{sub}:{v}")
  return out


def _available_msg(data_dir: str) -> str:
  found = [x for x in _list_prepared(data_dir) if not x.startswith(JaxvisionPhotos.name + ":")]
  return ("available: photos, folder:/path/to/images"
          + (", " + ", ".join(found) if found else "") + f" (in {data_dir})")


def _find_prepared(dataset: str, data_dir: str) -> str:
  """'name[/config][:version]' or a builder directory -> the builder directory."""
  if os.path.isabs(os.path.expanduser(dataset)):
    d = os.path.abspath(os.path.expanduser(dataset))
    if os.path.isfile(os.path.join(d, "dataset_info.json")):
      return d
    raise DataError(f"{dataset}: not a prepared TFDS dataset directory (no dataset_info.json); "
                    "use folder:{dataset} for a folder of image files")
  m = re.fullmatch(r"([\w.-]+)(?:/([\w.-]+))?(?::(\d+\.\d+\.\d+))?", dataset)
  if not m:
    raise DataError(f"{dataset!r}: not a dataset name; {_available_msg(data_dir)}")
  name, config, version = m.groups()
  base = os.path.join(data_dir, name)
  if not os.path.isdir(base) or name in _NOT_DATASETS:
    raise DataError(f"dataset {dataset!r} not found in {data_dir}; {_available_msg(data_dir)}")
  if config is None:
    versions = [v for v in os.listdir(base) if _is_version(v)]
    if not versions:
      configs = sorted(c for c in os.listdir(base) if os.path.isdir(os.path.join(base, c))
                       and not c.startswith("."))
      prepared = [c for c in configs if any(
          _is_version(v) and os.path.isfile(os.path.join(base, c, v, "dataset_info.json"))
          for v in os.listdir(os.path.join(base, c)))]
      if len(prepared) == 1:
        config = prepared[0]
      else:
        raise DataError(f"dataset {dataset!r} has configs {', '.join(prepared) or '(none prepared)'}"
                        f" in {data_dir}; name one, e.g. {name}/{(prepared or ['config'])[0]}")
  cdir = os.path.join(base, config) if config else base
  if not os.path.isdir(cdir):
    raise DataError(f"dataset {dataset!r} not found in {data_dir}; {_available_msg(data_dir)}")
  complete = sorted((v for v in os.listdir(cdir) if _is_version(v)
                     and os.path.isfile(os.path.join(cdir, v, "dataset_info.json"))),
                    key=_version_key)
  if version is None:
    if not complete:
      raise DataError(f"dataset {dataset!r}: no prepared version in {cdir}")
    version = complete[-1]
  elif version not in complete:
    raise DataError(f"dataset {dataset!r}: version {version} not prepared in {cdir} "
                    f"(prepared: {', '.join(complete) or 'none'})")
  return os.path.join(cdir, version)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

_NAME_KEYS = ("name", "filename", "file_name", "image/filename", "id")


def _split_base_names(split: str) -> list[str]:
  """'train[:10%]+test' -> ['train', 'test']."""
  return [re.split(r"[\[(]", part.strip(), maxsplit=1)[0].strip() for part in split.split("+")]


class ImageSource:
  """Picklable random-access source over one split of a prepared array_record TFDS dataset.

  `source[i]` -> {"image": (H,W,3) uint8, "index": i, "name": str, "dataset_id": str}.
  Images are read as raw bytes (tfds SkipDecoding) and decoded with `decode_image`, so grey,
  16-bit, palette and RGBA images in foreign datasets all come out as RGB uint8.  Only paths and
  names are pickled; each process reopens the files lazily.
  """

  def __init__(self, dataset: str, split: str, builder_dir: str, image_key: str | None = None):
    self.dataset = dataset
    self.split = split
    self.builder_dir = builder_dir
    self._lock = threading.Lock()
    self._ds = None
    builder = tfds.builder_from_directory(builder_dir)
    info = builder.info
    if info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
      raise DataError(f"dataset {dataset!r} in {builder_dir} is stored as "
                      f"{getattr(info.file_format, 'value', info.file_format)}; random access "
                      "needs array_record: prepare it with file_format='array_record'")
    features = info.features
    # sorted: the order of a FeaturesDict restored from features.json is not stable across runs
    image_keys = sorted(k for k, f in features.items() if isinstance(f, tfds.features.Image))
    if image_key is None:
      if not image_keys:
        raise DataError(f"dataset {dataset!r} has no Image feature "
                        f"(features: {', '.join(features.keys())})")
      image_key = next((k for k in ("image", "hr") if k in image_keys), image_keys[0])
    elif image_key not in image_keys:
      raise DataError(f"dataset {dataset!r}: image_key {image_key!r} is not an Image feature "
                      f"(Image features: {', '.join(image_keys) or 'none'})")
    self.image_key = image_key
    self._skip = tuple(image_keys)  # never decode any image feature with tfds
    self._name_key = next((k for k in _NAME_KEYS if k in features and
                           isinstance(features[k], tfds.features.Text)), None)
    available = list(info.splits.keys())
    unknown = [s for s in _split_base_names(split) if s not in available]
    if unknown:
      raise DataError(f"dataset {dataset!r}: unknown split {unknown[0]!r}; available splits: "
                      f"{', '.join(available)}")
    self.dataset_id = info.full_name  # e.g. jaxvision_photos/1.0.0, div2k/bicubic_x2/2.0.0
    try:
      self._ds = self._open(builder)
    except Exception as e:  # bad slice syntax etc.  # pylint: disable=broad-except
      raise DataError(f"dataset {dataset!r}: cannot read split {split!r} ({e})") from None
    self._len = len(self._ds)
    if self._len == 0:
      raise DataError(f"dataset {dataset!r}: split {split!r} is empty")

  def _open(self, builder=None):
    builder = builder or tfds.builder_from_directory(self.builder_dir)
    return builder.as_data_source(
        split=self.split, decoders={k: tfds.decode.SkipDecoding() for k in self._skip})

  def _data(self):
    if self._ds is None:
      with self._lock:
        if self._ds is None:
          self._ds = self._open()
    return self._ds

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index) -> dict[str, Any]:
    i = int(index)
    if not 0 <= i < self._len:
      raise IndexError(f"{self!r}: index {index} out of range [0, {self._len})")
    rec = self._data()[i]
    what = f"{self.dataset}[{self.split}][{i}]"
    name = rec.get(self._name_key) if self._name_key else None
    if isinstance(name, bytes):
      name = name.decode("utf-8", "replace")
    if name:
      what += f" ({name})"
    return {"image": decode_image(rec[self.image_key], what), "index": i,
            "name": str(name) if name else str(i), "dataset_id": self.dataset_id,
            **self._fields(rec)}

  def _fields(self, rec) -> dict[str, Any]:
    """A subclass's further fields of record `rec` (its labels), beside the image."""
    return {}

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_ds"] = None
    state["_lock"] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __repr__(self) -> str:  # stable across processes and runs: grain validates it on restore
    return (f"ImageSource({self.dataset_id}, split={self.split!r}, "
            f"image_key={self.image_key!r}, len={self._len})")


def get_source(dataset: str, split: str, data_dir: str | None = None, *,
               image_key: str | None = None) -> ImageSource:
  """A picklable random-access source of {"image": (H,W,3) uint8, "index", "name", "dataset_id"}.

  dataset: "photos" (embedded, prepared on first use) | "folder:/path" (built on first use,
  rebuilt when the folder's file list / sizes / mtimes change) | "name[/config][:version]" of a
  TFDS dataset already prepared as array_record in data_dir (or an absolute builder directory).
  image_key: the Image feature to read; default "image", else "hr", else the alphabetically first
  Image feature.
  """
  if not isinstance(dataset, str) or not dataset:
    raise DataError(f"dataset must be a non-empty string, got {dataset!r}")
  data_dir = resolve_data_dir(data_dir)
  if dataset in ("photos", JaxvisionPhotos.name):
    builder_dir = _prepare_photos(data_dir)
  elif dataset.startswith("folder:"):
    folder = dataset[len("folder:"):]
    if not folder:
      raise DataError("folder: needs a path, e.g. folder:/data/my_photos")
    builder_dir = _prepare_folder(folder, data_dir)
  else:
    builder_dir = _find_prepared(dataset, data_dir)
  return ImageSource(dataset, split, builder_dir, image_key)


# --------------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------------

def _pad_to(a: np.ndarray, size: int) -> np.ndarray:
  """Reflect-pad the two leading axes up to `size` (centred) when smaller."""
  h, w = a.shape[:2]
  ph, pw = max(0, size - h), max(0, size - w)
  if not ph and not pw:
    return a
  pad = [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)] + [(0, 0)] * (a.ndim - 2)
  mode = "reflect" if min(h, w) > 1 else "edge"
  return np.pad(a, pad, mode=mode)


def _as_float(a: np.ndarray) -> np.ndarray:
  if a.dtype == np.uint8:
    return a.astype(np.float32) * np.float32(1.0 / 255.0)
  return a.astype(np.float32, copy=False)


def _pair_arrays(record: Mapping[str, Any], pair_fn) -> dict[str, Any]:
  if pair_fn is None:
    img = record["image"]
    return {"input": img, "target": img}
  out = pair_fn(record)
  if not isinstance(out, Mapping) or "input" not in out or "target" not in out:
    raise ValueError(f"pair_fn must return a dict with 'input' and 'target', got "
                     f"{type(out).__name__} {list(out) if isinstance(out, Mapping) else ''}")
  return dict(out)


def _spatial(arrays: Mapping[str, Any], what: str) -> tuple[dict, dict, tuple[int, int]]:
  """Split into image-like arrays (ndim >= 2, cropped) and scalars (kept); drop the rest."""
  images, scalars, hw = {}, {}, None
  for k, v in arrays.items():
    if isinstance(v, np.ndarray) and v.ndim >= 2:
      if hw is None:
        hw = v.shape[:2]
      elif v.shape[:2] != hw:
        raise ValueError(f"{what}: pair arrays must share H,W to be cropped together; "
                         f"{k!r} is {v.shape} vs {hw}")
      images[k] = v
    elif isinstance(v, (np.ndarray, np.number, int, float, bool)) and np.ndim(v) == 0:
      scalars[k] = np.asarray(v)
  return images, scalars, hw


def _crop_pair(arrays, what, crop_size, rng=None, flips=False):
  """Same window (random when rng is given, else centred) and flip for every image array."""
  images, scalars, hw = _spatial(arrays, what)
  if hw is None:
    raise ValueError(f"{what}: no (H,W[,C]) arrays to crop in {list(arrays)}")
  h, w = hw
  y = x = 0
  flip = False
  if crop_size is not None:
    h, w = max(h, crop_size), max(w, crop_size)
    if rng is not None:  # fixed number of draws per record, whatever `flips` is
      y = int(rng.integers(0, h - crop_size + 1))
      x = int(rng.integers(0, w - crop_size + 1))
      flip = bool(rng.random() < 0.5) and flips
    else:
      y, x = (h - crop_size) // 2, (w - crop_size) // 2
  done: dict[int, np.ndarray] = {}  # without pair_fn input *is* target: crop/convert once
  out = {}
  for k, v in images.items():
    if id(v) not in done:
      c = v
      if crop_size is not None:
        c = _pad_to(c, crop_size)[y:y + crop_size, x:x + crop_size]
      if flip:
        c = c[:, ::-1]
      done[id(v)] = np.ascontiguousarray(_as_float(c))
    out[k] = done[id(v)]
  out.update(scalars)
  return out


class _RandomCropFlip(grain.transforms.RandomMap):
  """record -> pair_fn (full size) -> same random crop / horizontal flip of every image array ->
  float32 in [0,1].  The rng comes from grain (keyed by seed and the record's global position)."""

  def __init__(self, crop_size: int, flips: bool, pair_fn, post_fn=None):
    self.crop_size = crop_size
    self.flips = flips
    self.pair_fn = pair_fn
    self.post_fn = post_fn

  def random_map(self, element, rng: np.random.Generator):
    what = f"record {element.get('index')} ({element.get('name')})"
    out = _crop_pair(_pair_arrays(element, self.pair_fn), what, self.crop_size, rng=rng,
                     flips=self.flips)
    return self.post_fn(out) if self.post_fn is not None else out

  def __repr__(self):
    post = f", post_fn={self.post_fn!r}" if self.post_fn is not None else ""
    return (f"_RandomCropFlip(crop_size={self.crop_size}, flips={self.flips}, "
            f"pair_fn={self.pair_fn!r}{post})")


# --------------------------------------------------------------------------------------------
# Train loader
# --------------------------------------------------------------------------------------------

def _stack(elements: list[dict]) -> dict[str, np.ndarray]:
  return {k: np.stack([e[k] for e in elements]) for k in elements[0]}


class _BatchingIterator(grain.DataLoaderIterator):
  """grain's iterator over single elements, batched here in the consuming process.

  Batching after grain's worker round-robin (instead of grain.transforms.Batch inside each
  worker) makes batch composition independent of worker_count.  get_state() is only ever taken
  between batches, so it is always batch-aligned."""

  def __init__(self, loader: "TrainLoader"):
    super().__init__(loader, None)
    self._batch_size = loader.batch_size

  def __next__(self) -> dict[str, np.ndarray]:
    next_element = super().__next__  # (zero-arg super() does not work inside a comprehension)
    elements = [next_element() for _ in range(self._batch_size)]  # partial batch: dropped
    return _stack(elements)


class TrainLoader(grain.DataLoader):
  """A grain.DataLoader whose iterators yield batches {"input", "target"} f32[B, crop, crop, C]."""

  def __init__(self, *, batch_size: int, **kwargs):
    super().__init__(**kwargs)
    self.batch_size = batch_size

  def __iter__(self) -> _BatchingIterator:
    return _BatchingIterator(self)


def _ensure_absl_flags_parsed():
  """grain 0.2.18 reads an absl flag when it starts worker processes and raises
  UnparsedFlagAccessError unless absl flags were parsed (google/grain#1355, fixed upstream in
  #1362).  Programs using absl.app have parsed them already; elsewhere (pytest, notebooks,
  plain scripts) we mark them parsed so every flag keeps its default."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def make_train_loader(source, *, batch_size: int, crop_size: int, seed: int, pair_fn=None,
                      flips: bool = True, worker_count: int = 2, shard_index: int | None = None,
                      shard_count: int | None = None, num_epochs: int | None = None,
                      post_fn=None) -> TrainLoader:
  """Infinite (num_epochs=None), per-epoch shuffled, deterministic loader of random crops.

  batch_size is per host.  Every host (shard_index / shard_count, default jax.process_index() /
  jax.process_count()) reads a disjoint, equal-sized part of every epoch (drop_remainder).
  Element: pair_fn(record) (default {"input": image, "target": image}) -> one random
  crop_size^2 window and (flips) one random horizontal flip, applied identically to every array
  with ndim >= 2 -> float32 ([0,1] for uint8).  Images smaller than the crop are reflect-padded.
  The same seed gives the same batches in the same order for any worker_count.
  post_fn(cropped float32 dict) -> dict runs last, in the workers (e.g. super-resolution makes
  the low-resolution input of each high-resolution crop there); it must be deterministic.
  """
  for nm, v in (("batch_size", batch_size), ("crop_size", crop_size)):
    if not isinstance(v, (int, np.integer)) or v <= 0:
      raise ValueError(f"{nm} must be a positive int, got {v!r}")
  if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
    raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  shard = grain.sharding.ShardOptions(shard_index=int(shard_index), shard_count=int(shard_count),
                                      drop_remainder=True)
  n = len(source)
  if n // shard.shard_count < 1:
    raise DataError(f"{source!r}: {n} records cannot feed {shard.shard_count} shards")
  sampler = grain.samplers.IndexSampler(num_records=n, shard_options=shard, shuffle=True,
                                        num_epochs=num_epochs, seed=int(seed))
  if worker_count and worker_count > 0:
    _ensure_absl_flags_parsed()
  # Elements (not batches) travel from the workers; each process keeps about its share of one
  # batch (+1) in flight.  grain's default read-ahead (500 records per process) would hold hundreds
  # of full-size decoded images; 2 reader threads keep PNG decoding off the critical path.
  per_process = -(-int(batch_size) // max(1, int(worker_count))) + 1
  return TrainLoader(
      batch_size=int(batch_size),
      data_source=source,
      sampler=sampler,
      operations=[_RandomCropFlip(int(crop_size), bool(flips), pair_fn, post_fn)],
      worker_count=int(worker_count),
      worker_buffer_size=per_process,
      shard_options=shard,
      read_options=grain.ReadOptions(num_threads=2, prefetch_buffer_size=max(2, per_process)),
  )


def checkpoint_save_arg(iterator):
  """Orbax save arg for a train iterator: ocp.args.Composite(..., data=checkpoint_save_arg(it)).

  grain's handler writes `process_{i}-of-{n}.json` (this process's iterator state) into the item
  directory, on every process, so the checkpoint directory must be shared by all hosts and the
  restore must use the same process count and worker_count."""
  return grain.checkpoint.CheckpointSave(iterator)


def checkpoint_restore_arg(iterator):
  """Orbax restore arg: restores the state into `iterator` (a fresh iter(loader)) in place."""
  return grain.checkpoint.CheckpointRestore(iterator)


# --------------------------------------------------------------------------------------------
# Eval batches
# --------------------------------------------------------------------------------------------

def make_eval_batches(source, *, crop_size: int | None, pair_fn=None, max_images: int | None = None,
                      batch_size: int = 1, post_fn=None) -> list[dict[str, np.ndarray]]:
  """The first max_images records (all when None), in order, as float32 batches shaped like the
  train batches: centre crop_size^2 crops (reflect-padded when smaller), or the full images when
  crop_size is None (then batch_size must be 1).  The last batch may be smaller (no data dropped).
  post_fn(cropped float32 dict) -> dict as in make_train_loader."""
  if crop_size is None and batch_size != 1:
    raise ValueError("full-image evaluation (crop_size=None) needs batch_size=1 (sizes differ)")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  n = len(source) if max_images is None else min(int(max_images), len(source))
  batches, pending = [], []
  for i in range(n):
    rec = source[i]
    what = f"{source!r}[{i}]"
    item = _crop_pair(_pair_arrays(rec, pair_fn), what, crop_size)
    pending.append(post_fn(item) if post_fn is not None else item)
    if len(pending) == batch_size:
      batches.append(_stack(pending))
      pending = []
  if pending:
    batches.append(_stack(pending))
  return batches


# --------------------------------------------------------------------------------------------
# Target cache for slow operators
# --------------------------------------------------------------------------------------------


class CachedPairs:
  """Picklable pair_fn whose targets come from a slow image operator, computed once and cached.

  Target of record i = operator_fn(resize_max_side(image, max_side) / 255), an (H,W,3) float32
  image in [0,1], stored as an 8-bit RGB PNG at
    {data_dir}/jaxvision_targets/{source_key}/{split}/{operator}-{hash(key)}/{hash(dataset_id)}/{i:07d}.png
  where key = (source_key, split, operator, params, max_side) and dataset_id identifies the
  prepared data (so a rebuilt folder dataset never reuses stale targets).  `params` only enter
  the key: bind them into operator_fn yourself (functools.partial(op, **params)).
  __call__(record) -> {"input": resized image / 255, "target": cached target / 255}, float32.
  """

  def __init__(self, source_key: str, split: str, operator: str, operator_fn: Callable,
               params: Mapping[str, Any] | None, max_side: int | None, data_dir: str | None):
    self.source_key = source_key
    self.split = split
    self.operator = operator
    self.operator_fn = operator_fn
    self.params = dict(params or {})
    self.max_side = int(max_side) if max_side else None
    self.data_dir = resolve_data_dir(data_dir)
    self.key = json.dumps({"source": source_key, "split": split, "operator": operator,
                           "params": self.params, "max_side": self.max_side},
                          sort_keys=True, default=repr)
    self.root = os.path.join(self.data_dir, "jaxvision_targets", _slug(source_key, 60),
                             _slug(split), f"{_slug(operator)}-{_sha(self.key)}")

  def __repr__(self):
    return f"CachedPairs({self.key})"

  def _dir(self, dataset_id: str) -> str:
    return os.path.join(self.root, f"{_slug(dataset_id, 60)}-{_sha(dataset_id, 8)}")

  def target_path(self, index: int, dataset_id: str = "") -> str:
    return os.path.join(self._dir(dataset_id), f"{int(index):07d}.png")

  def _compute(self, image_uint8: np.ndarray, what: str) -> np.ndarray:
    out = np.asarray(self.operator_fn(image_uint8.astype(np.float32) / 255.0))
    if out.ndim == 2:
      out = out[:, :, None]
    if out.shape[:2] != image_uint8.shape[:2] or out.ndim != 3 or out.shape[-1] not in (1, 3):
      raise DataError(f"{what}: operator {self.operator!r} returned shape {out.shape} for an "
                      f"image of shape {image_uint8.shape}")
    return to_rgb_uint8(out.astype(np.float32, copy=False))

  def _target(self, record: Mapping[str, Any], image_uint8: np.ndarray) -> tuple[np.ndarray, bool]:
    """(target uint8, computed?) for a record whose resized image is image_uint8."""
    if "index" not in record:
      raise ValueError("CachedPairs needs records with an 'index' (use get_source)")
    dataset_id = str(record.get("dataset_id", ""))
    path = self.target_path(record["index"], dataset_id)
    if os.path.exists(path):
      try:
        t = load_image_file(path)
        if t.shape == image_uint8.shape:
          return t, False
        log.warning("%s: cached target has shape %s, image %s; recomputing", path, t.shape,
                    image_uint8.shape)
      except DataError as e:
        log.warning("%s; recomputing", e)
    d = self._dir(dataset_id)
    meta = os.path.join(d, "key.json")
    if not os.path.exists(meta):
      atomic_write_text(meta, json.dumps({"key": json.loads(self.key), "dataset_id": dataset_id},
                                          indent=1, default=repr))
    t = self._compute(image_uint8, f"{self.source_key}[{self.split}][{record['index']}]")
    write_png(path, t, make_folder=True)
    return t, True

  def __call__(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    image = resize_max_side(record["image"], self.max_side)
    target, _ = self._target(record, image)
    return {"input": image.astype(np.float32) / 255.0, "target": target.astype(np.float32) / 255.0}

  def prepare(self, source, progress: bool = True, indices: Iterable[int] | None = None) -> int:
    """Computes every missing target of `source` (or of `indices`) up front, so loader workers
    only read.  Returns how many were computed.  Existing files are trusted without decoding.
    Multi-host with a shared data_dir: run it on one process (or give each a disjoint `indices`)
    and barrier before training; concurrent writers are safe (atomic replace) but redundant."""
    dataset_id = getattr(source, "dataset_id", "")
    idx = range(len(source)) if indices is None else list(indices)
    todo = [i for i in idx if not os.path.exists(self.target_path(i, dataset_id))]
    if not todo:
      return 0
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    computed = 0
    for i in tqdm(todo, desc=f"{self.operator} targets {self.source_key}[{self.split}]",
                  unit="img", disable=not progress):
      rec = source[i]
      _, c = self._target(rec, resize_max_side(rec["image"], self.max_side))
      computed += c
    return computed
