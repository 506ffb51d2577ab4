"""Image classification data: datasets, preprocessing and the trainer's loaders.

Datasets (`get_dataset(name, split)` -> a picklable random-access source of
{"image": (H, W, 3) uint8, "label": int32, "index": int}):
  digits        scikit-learn's handwritten digits: 1797 real 8x8 scans, 10 classes,
                upsampled (bilinear) to `image_size`; fixed, class-stratified 1438/359 train/test split
  lfw           scikit-image's lfw_subset: 100 faces + 100 non-faces, 25x25, 2 classes;
                fixed 160/40 split (balanced)
  cifar10, imagenet2012, any TFDS classification set prepared as array_record in
                data_dir (read with tfds.data_source, never downloaded)
The two embedded sets live in memory (they ship with scikit-learn / scikit-image):
nothing to prepare, nothing downloaded.

Preprocessing (host side, numpy/PIL): "pad_crop" (pad + random crop, optional flip) for
small images, "inception" (random-resized crop 8-100% area, 3/4-4/3 aspect, flip) for
ImageNet; evaluation resizes the short side to image_size / crop_fraction and takes the
centre crop. Batches: {"input": f32 (B, S, S, 3) in [0, 1], "label": i32 (B,)}; the
models normalise their input themselves. `jaxvision classify` (commands.py) preprocesses
its image files with the same `eval_transform`.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

from jaxvision.core.errors import DataError

EMBEDDED = ("digits", "lfw")


# ---------------------------------------------------------------- sources
class ArraySource:
  """In-memory random-access source (picklable; grain workers get a copy)."""

  def __init__(self, name: str, split: str, images: np.ndarray, labels: np.ndarray,
               class_names: list[str]):
    self.name, self.split = name, split
    self.images = np.ascontiguousarray(images, np.uint8)
    self.labels = np.asarray(labels, np.int32)
    self.class_names = list(class_names)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i) -> dict[str, Any]:
    i = int(i)
    return {"image": self.images[i], "label": self.labels[i], "index": i}

  def __repr__(self) -> str:  # stable: grain checks it when restoring a data position
    return f"ArraySource({self.name}, split={self.split!r}, len={len(self)})"


def _resize(img: np.ndarray, size: int) -> np.ndarray:
  im = Image.fromarray(img)
  return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR))


def _split_indices(labels: np.ndarray, test_fraction: float, split: str) -> np.ndarray:
  """A fixed, class-stratified split (seed 0): the same on every machine."""
  rng = np.random.default_rng(0)
  test = []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    test.extend(idx[:round(len(idx) * test_fraction)].tolist())
  test = np.sort(np.asarray(test))
  if split == "test":
    return test
  if split == "train":
    return np.setdiff1d(np.arange(len(labels)), test)
  if split == "all":
    return np.arange(len(labels))
  raise DataError(f"split {split!r}: the embedded sets have train, test and all")


def _embedded(name: str, split: str, size: int) -> ArraySource:
  if name == "digits":
    from sklearn.datasets import load_digits
    d = load_digits()
    grey = (d.images * (255.0 / 16.0) + 0.5).astype(np.uint8)   # 0..16 ink levels
    labels, names = d.target.astype(np.int32), [str(i) for i in range(10)]
  else:
    from skimage.data import lfw_subset
    grey = (lfw_subset() * 255.0 + 0.5).astype(np.uint8)        # 100 faces, then 100 not
    labels = np.r_[np.ones(100), np.zeros(100)].astype(np.int32)
    names = ["non-face", "face"]
  idx = _split_indices(labels, 0.2, split)
  imgs = np.stack([_resize(g, size) for g in grey[idx]])
  return ArraySource(name, split, np.repeat(imgs[..., None], 3, axis=-1), labels[idx], names)


class TfdsSource:
  """A prepared (array_record) TFDS classification split via tfds.data_source."""

  def __init__(self, name: str, split: str, data_dir: str | None = None,
               image_key: str = "image", label_key: str = "label"):
    from jaxvision.core.data import resolve_data_dir
    self.name, self.split, self.data_dir = name, split, resolve_data_dir(data_dir)
    self.image_key, self.label_key = image_key, label_key
    self._ds = None
    ds = self._open()
    self._len = len(ds)
    feat = ds.dataset_info.features[label_key] if hasattr(ds, "dataset_info") else None
    self.class_names = list(getattr(feat, "names", None) or [])

  def _open(self):
    if self._ds is None:
      import tensorflow_datasets as tfds
      try:
        self._ds = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir,
                                    download=False,
                                    decoders={self.image_key: tfds.decode.SkipDecoding()})
      except Exception as e:  # not prepared, wrong split, not array_record ...
        msg = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"dataset {self.name!r} split {self.split!r} is not readable in "
                        f"{self.data_dir} ({msg}); prepare it with tfds build "
                        f"--file_format=array_record, or use data=digits|lfw") from None
    return self._ds

  def __len__(self):
    return self._len

  def __getitem__(self, i):
    from jaxvision.core.io import decode_image
    rec = self._open()[int(i)]
    return {"image": decode_image(rec[self.image_key], f"{self.name}[{self.split}][{i}]"),
            "label": np.int32(rec[self.label_key]), "index": int(i)}

  def __getstate__(self):
    return {**self.__dict__, "_ds": None}

  def __repr__(self):
    return f"TfdsSource({self.name}, split={self.split!r}, len={self._len})"


def get_dataset(name: str, split: str, *, image_size: int = 32, data_dir: str | None = None):
  if name in EMBEDDED:
    return _embedded(name, split, image_size)
  return TfdsSource(name, split, data_dir)


# ---------------------------------------------------------------- preprocessing
def eval_transform(img: np.ndarray, size: int, crop_fraction: float = 1.0) -> np.ndarray:
  """Resize the short side to size / crop_fraction, centre crop size x size; f32 [0, 1]."""
  h, w = img.shape[:2]
  short = max(size, int(math.floor(size / crop_fraction + 0.5)))
  if (h, w) != (size, size):
    s = short / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BILINEAR))
    top, left = (nh - size) // 2, (nw - size) // 2
    img = img[top:top + size, left:left + size]
  return img.astype(np.float32) / 255.0


def train_transform(img: np.ndarray, rng: np.random.Generator, size: int, augment: str,
                    pad: int = 4, flips: bool = True) -> np.ndarray:
  if augment == "inception":
    h, w = img.shape[:2]
    for _ in range(10):
      area = h * w * rng.uniform(0.08, 1.0)
      ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
      cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
      if 0 < cw <= w and 0 < ch <= h:
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        break
    else:  # fall back to the centre square
      ch = cw = min(h, w)
      top, left = (h - ch) // 2, (w - cw) // 2
    crop = Image.fromarray(img[top:top + ch, left:left + cw])
    img = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))
  elif augment == "pad_crop":
    img = eval_transform(img, size) if img.shape[:2] != (size, size) else img
    img = np.asarray(img)
    if img.dtype != np.uint8:
      img = (img * 255.0 + 0.5).astype(np.uint8)
    if pad:
      p = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
      top, left = rng.integers(0, 2 * pad + 1, size=2)
      img = p[top:top + size, left:left + size]
  elif augment == "none":
    return eval_transform(img, size)
  else:
    raise ValueError(f"augment {augment!r}: choose pad_crop, inception or none")
  if flips and rng.random() < 0.5:
    img = img[:, ::-1]
  return np.ascontiguousarray(img, np.float32) / 255.0


def _train_op(size, augment, pad, flips):
  import grain

  class _Augment(grain.transforms.RandomMap):
    def random_map(self, el, rng):
      return {"input": train_transform(el["image"], rng, size, augment, pad, flips),
              "label": np.int32(el["label"])}

    def __repr__(self):
      return f"_Augment({size}, {augment}, pad={pad}, flips={flips})"

  return _Augment()


def make_data(config):
  """(train loader, eval batches) for the classification task from config.data."""
  import grain
  import jax
  from jaxvision.core import data as jv_data

  d = config.data
  size = int(d.image_size)
  train = get_dataset(d.dataset, d.train_split, image_size=size, data_dir=d.get("data_dir"))
  test = get_dataset(d.dataset, d.eval_split, image_size=size, data_dir=d.get("data_dir"))
  shard = grain.sharding.ShardOptions(shard_index=jax.process_index(),
                                      shard_count=jax.process_count(), drop_remainder=True)
  sampler = grain.samplers.IndexSampler(num_records=len(train), shard_options=shard,
                                        shuffle=True, num_epochs=None, seed=int(config.seed))
  workers = int(d.get("worker_count", 0))
  if workers:
    jv_data._ensure_absl_flags_parsed()  # grain worker start-up reads an absl flag
  loader = jv_data.TrainLoader(
      batch_size=config.batch_size // jax.process_count(), data_source=train, sampler=sampler,
      operations=[_train_op(size, d.augment, int(d.get("pad", 4)), bool(d.flips))],
      worker_count=workers, shard_options=shard)
  n = len(test) if not d.get("eval_max_images") else min(len(test), int(d.eval_max_images))
  bs = int(d.get("eval_batch_size", 128))
  frac = float(d.get("crop_fraction", 1.0))
  batches = []
  for s in range(0, n, bs):
    recs = [test[i] for i in range(s, min(n, s + bs))]
    batches.append({"input": np.stack([eval_transform(r["image"], size, frac) for r in recs]),
                    "label": np.asarray([r["label"] for r in recs], np.int32)})
  return loader, batches


def class_names(config, num_classes: int) -> list[str]:
  names = list(config.get("data", {}).get("class_names", None) or [])
  return names if len(names) == num_classes else [str(i) for i in range(num_classes)]
