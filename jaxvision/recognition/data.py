"""Identity-labelled face data: P x K batches for metric learning, and held-out eval batches.

  identities(dataset, split, size)    {identity: [images or paths]} of a dataset
  PKBatches(ids, P, K, size, seed)    grain source: record i is one batch of P identities
                                      with K images each, drawn deterministically from (seed, i)
  make_data(config)                   the face_embedding task's (train loader, eval batches)

Datasets (config.data.dataset):
  lfw_subset      (default) scikit-image's lfw_subset.npy: 100 grey 25x25 LFW face crops.
                  Each crop is its OWN identity and its K images are strong random
                  augmentations of it (scale, rotation, shift, flip, brightness, contrast,
                  noise), upscaled to the model's side. A SMOKE-TEST SET: it checks that
                  the pipeline and the losses train (held-out pseudo-identities get closer to
                  their own views), it is not a face-recognition benchmark. Faces 0-79 train,
                  80-99 are the held-out pseudo-identities of the eval batch.
  folder:/path    one subfolder per identity (LFW, CASIA-WebFace, VGGFace2 layout) of
                  pre-aligned face chips; every 10th identity (sorted by name) with at least
                  two images is held out for evaluation, the rest train. Identities with
                  fewer than K images are sampled with replacement.
  tfds:NAME[/config][:version]
                  a TFDS dataset prepared as array_record in $TFDS_DATA_DIR (`tfds:lfw` once
                  tfds has built lfw; no download here) with an Image feature ("image") and
                  an identity feature "label" (a ClassLabel or a Text, e.g. lfw's person
                  name), read through tfds' data_source (random access, no TensorFlow)
                  from its "train" split; identities are grouped by label and held out as
                  for a folder (every 10th, sorted by label). Images are taken whole (lfw's
                  are 250x250 photos with the face in the middle, not aligned chips).

Batches: {"input": float32 (P*K, S, S, 3) in [0, 255], "label": int32 (P*K,) 0..P-1 inside
the batch (what the metric losses compare), "identity": int32 (P*K,) the identity's index
in the split (the class of softmax + centre loss)}.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

from jaxvision.core.errors import DataError


def lfw_subset_faces() -> np.ndarray:
  """(100, 25, 25) float in [0, 1]: the faces of scikit-image's lfw_subset.npy."""
  spec = importlib.util.find_spec("skimage")
  if spec is None or not spec.submodule_search_locations:
    raise DataError("the lfw_subset smoke-test set needs scikit-image (pip install scikit-image)")
  path = os.path.join(list(spec.submodule_search_locations)[0], "data", "lfw_subset.npy")
  if not os.path.isfile(path):
    raise DataError(f"{path}: scikit-image's lfw_subset.npy is missing")
  return np.load(path)[:100]


def _scan_identities(root: str) -> dict[str, list[str]]:
  from jaxvision.core.io import IMAGE_EXTENSIONS
  if not os.path.isdir(root):
    raise DataError(f"{root}: no such folder (folder:/path needs one subfolder per identity)")
  out = {}
  for name in sorted(os.listdir(root)):
    d = os.path.join(root, name)
    if name.startswith(".") or not os.path.isdir(d):
      continue
    files = sorted(os.path.join(d, f) for f in os.listdir(d)
                   if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
    if files:
      out[name] = files
  if len(out) < 2:
    raise DataError(f"{root}: {len(out)} identity folder(s) with images; need at least 2")
  return out


class TfdsImage:
  """One image of a TFDS identity dataset: picklable (the source reopens its files in each
  process), loaded when a batch needs it."""

  def __init__(self, source, index: int):
    self.source, self.index = source, int(index)

  def load(self) -> np.ndarray:
    return self.source[self.index]["image"]


def tfds_identities(dataset: str, data_dir: str | None = None) -> dict[str, list[TfdsImage]]:
  """{label: [TfdsImage, ...]} of a prepared TFDS dataset's "train" split, grouped by its
  "label" feature (one pass over the labels; images are not decoded)."""
  import tensorflow_datasets as tfds

  from jaxvision.core import data as core_data
  name = dataset[len("tfds:"):]
  if not name:
    raise DataError("tfds: needs a dataset name, e.g. tfds:lfw")
  source = core_data.get_source(name, "train", data_dir)
  builder = tfds.builder_from_directory(source.builder_dir)
  features = builder.info.features
  label = features["label"] if "label" in features else None
  if not isinstance(label, (tfds.features.ClassLabel, tfds.features.Text)):
    raise DataError(f"{dataset}: no identity feature 'label' (a ClassLabel or Text); "
                    f"features: {', '.join(features.keys())}")
  skip = {k: tfds.decode.SkipDecoding() for k, f in features.items()
          if isinstance(f, tfds.features.Image)}  # the labels are read, not the images
  records = builder.as_data_source(split="train", decoders=skip)
  out: dict[str, list[TfdsImage]] = {}
  for i in range(len(records)):
    v = records[i]["label"]
    if isinstance(v, bytes):  # a Text label (lfw: the person's name)
      key = v.decode("utf-8", "replace")
    elif isinstance(label, tfds.features.ClassLabel):
      key = label.int2str(int(v))
    else:
      key = str(v)
    out.setdefault(key, []).append(TfdsImage(source, i))
  if len(out) < 2:
    raise DataError(f"{dataset}: {len(out)} identity label(s) in its train split; need at "
                    "least 2")
  return dict(sorted(out.items()))


def _held_out(ids: dict[str, list], dataset: str, split: str) -> list[list]:
  """Every 10th identity (in sorted order) with at least two images is held out (the last
  such identity for a small set); `split` "train" gets the others."""
  names = list(ids)
  held = {n for k, n in enumerate(names) if k % 10 == 9 and len(ids[n]) >= 2}
  if not held:
    two = [n for n in names if len(ids[n]) >= 2]
    held = {two[-1]} if two else set()
  keep = [n for n in names if (n in held) == (split != "train")]
  if not keep:
    raise DataError(f"{dataset}: no identities for the {split} split")
  return [ids[n] for n in keep]


def identities(dataset: str, split: str) -> list[list]:
  """[[images or paths of one identity], ...] of `dataset`'s `split` ("train" or "test")."""
  if dataset == "lfw_subset":
    faces = lfw_subset_faces()
    chosen = faces[:80] if split == "train" else faces[80:]
    return [[f] for f in chosen]
  if dataset.startswith("tfds:"):
    return _held_out(tfds_identities(dataset), dataset, split)
  if dataset.startswith("folder:"):
    return _held_out(_scan_identities(dataset[len("folder:"):]), dataset, split)
  raise DataError(f"unknown face dataset {dataset!r}; use lfw_subset, folder:/path (one "
                  "subfolder per identity) or tfds:NAME (a prepared TFDS dataset with 'label')")


def _load(item, size: int) -> np.ndarray:
  """An (h, w, 3) float32 image in [0, 255] from an array in [0, 1] or a file path."""
  if isinstance(item, str):
    from jaxvision.core.io import load_image_file
    return load_image_file(item).astype(np.float32)
  if isinstance(item, TfdsImage):
    return item.load().astype(np.float32)
  a = np.asarray(item, np.float32)
  a = a * 255.0 if a.max() <= 1.0 else a
  return np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a


def augment(image: np.ndarray, size: int, rng: np.random.Generator, strong: bool) -> np.ndarray:
  """One random view (size, size, 3) of `image`: a similarity warp (bilinear, edge
  clamped) with scale, rotation, shift and flip, then brightness / contrast / noise when
  `strong`; `rng` None: the plain resize."""
  from scipy.ndimage import map_coordinates
  h, w = image.shape[:2]
  if rng is None:
    s, ang, tx, ty, flip = 1.0, 0.0, 0.0, 0.0, False
  elif strong:
    s, ang = rng.uniform(0.8, 1.2), rng.uniform(-0.25, 0.25)
    tx, ty, flip = rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), rng.random() < 0.5
  else:
    s, ang = rng.uniform(0.95, 1.05), 0.0
    tx, ty, flip = rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03), rng.random() < 0.5
  v, u = np.mgrid[0:size, 0:size].astype(np.float64)
  x = (u + 0.5) / size - 0.5
  y = (v + 0.5) / size - 0.5
  if flip:
    x = -x
  c, sn = np.cos(ang) / s, np.sin(ang) / s
  xs = (c * x - sn * y + tx + 0.5) * w - 0.5
  ys = (sn * x + c * y + ty + 0.5) * h - 0.5
  out = np.stack([map_coordinates(image[..., k], [ys, xs], order=1, mode="nearest")
                  for k in range(image.shape[-1])], -1)
  if rng is not None and strong:
    out = (out - out.mean()) * rng.uniform(0.7, 1.3) + out.mean() + rng.uniform(-25, 25)
    out = out + rng.normal(0, 4.0, out.shape)
  return np.clip(out, 0, 255).astype(np.float32)


class PKBatches:
  """grain random-access source: record i is one batch of `p` identities x `k` images,
  drawn from (seed, i) alone (the identities without replacement, the images of each
  without replacement when it has k, else with), so a resumed run sees the same batches."""

  def __init__(self, ids: list[list], p: int, k: int, size: int, seed: int,
               strong: bool = True, length: int = 2 ** 30):
    if p > len(ids):
      raise DataError(f"P = {p} identities per batch, the data has {len(ids)}")
    self.ids, self.p, self.k, self.size = ids, int(p), int(k), int(size)
    self.seed, self.strong, self._len = int(seed), bool(strong), int(length)

  def __len__(self):
    return self._len

  def __getitem__(self, i) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, int(i)])
    chosen = rng.choice(len(self.ids), self.p, replace=False)
    images, labels = [], []
    for j, c in enumerate(chosen):
      items = self.ids[c]
      pick = rng.choice(len(items), self.k, replace=len(items) < self.k)
      for q in pick:
        images.append(augment(_load(items[q], self.size), self.size, rng, self.strong))
        labels.append(j)
    return {"input": np.stack(images), "label": np.asarray(labels, np.int32),
            "identity": np.repeat(chosen, self.k).astype(np.int32)}

  def __repr__(self):  # stable: grain checks it when restoring a saved position
    return (f"PKBatches(n_ids={len(self.ids)}, p={self.p}, k={self.k}, size={self.size}, "
            f"seed={self.seed}, strong={self.strong})")


def eval_batch(ids: list[list], size: int, views: int, seed: int, strong: bool,
               max_ids: int = 0) -> dict[str, np.ndarray]:
  """One batch of `views` fixed random views of each held-out identity."""
  ids = ids[:max_ids] if max_ids else ids
  rng = np.random.default_rng([seed, 99991])
  images, labels = [], []
  for j, items in enumerate(ids):
    for v in range(views):
      item = items[v % len(items)]
      images.append(augment(_load(item, size), size, rng, strong))
      labels.append(j)
  labels = np.asarray(labels, np.int32)
  return {"input": np.stack(images), "label": labels, "identity": labels}


def make_data(config):
  """(train loader, [eval batch]) for the face_embedding task (see the module docstring)."""
  import grain
  import jax
  d = config.data
  size = int(d.image_size)
  strong = d.dataset == "lfw_subset" or bool(d.get("strong_augment", False))
  train_ids = identities(d.dataset, "train")
  classes = int(config.model.kwargs.get("num_classes", 0) or 0)
  if config.get("loss") == "softmax_center" and classes < len(train_ids):
    raise DataError(f"loss softmax_center: model.kwargs.num_classes is {classes}, the train "
                    f"split has {len(train_ids)} identities")
  src = PKBatches(train_ids, int(d.identities_per_batch), int(d.images_per_identity), size,
                  int(config.seed) + 1000 * jax.process_index(), strong)
  if int(d.identities_per_batch) * int(d.images_per_identity) * jax.process_count() != \
      int(config.batch_size):
    raise DataError(f"batch_size {config.batch_size} must be data.identities_per_batch x "
                    f"data.images_per_identity ({d.identities_per_batch} x "
                    f"{d.images_per_identity}) x processes")
  sampler = grain.samplers.IndexSampler(num_records=len(src), shuffle=False, num_epochs=1,
                                        seed=int(config.seed),
                                        shard_options=grain.sharding.NoSharding())
  loader = grain.DataLoader(data_source=src, sampler=sampler, worker_count=0)
  evals = [eval_batch(identities(d.dataset, "test"), size, int(d.get("eval_views", 2)),
                      int(config.seed), strong, int(d.get("eval_max_identities", 0)))]
  return loader, evals
