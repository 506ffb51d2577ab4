"""Denoising data: clean crops (noise added on the device) or a user's noisy/clean pairs.

  config.data.dataset = "photos" | "folder:/clean/images" | any TFDS name
      clean images; the noise model (`config.noise`, jaxvision.denoise.noise) is applied in
      the train step with the step's key: a fresh draw every step, and for target=noisy
      (Noise2Noise) a second, independent draw as the target.
  config.data.dataset = "pairs:/path/noisy,/path/clean"
      real noise: the same file names in two folders (SIDD-style pairs exported as images;
      the extension may differ; a file without its partner is an error naming it);
      noisy crops are the input, the clean crops at the same place the target. Split
      "train" is every pair except each 10th (sorted by name), split "test" is each 10th,
      split "all" is all of them.

  PairedFolder(noisy, clean, split)   a picklable random-access source of such pairs
  BayerShape()                        post_fn of the `sid` task: "input" = packed RGGB planes
  ProgressLoader(loader, total_steps) the train loader with batch["progress"] = step / total
                                      (the annealed L0 loss needs where training is)
  make_data(config)                   the `denoise` task's (train loader, eval batches)

Every record carries "seed" (its index), so evaluation draws the same noise for an image at
every evaluation (`noise.eval_key`).
"""
from __future__ import annotations

import json
import os

import numpy as np

from jaxvision.core import data as jv_data
from jaxvision.core.errors import DataError
from jaxvision.core.io import IMAGE_EXTENSIONS, load_image_file

PAIRS_PREFIX = "pairs:"


def _image_names(folder: str) -> dict[str, str]:
  if not os.path.isdir(folder):
    raise DataError(f"{folder}: not a folder (pairs:NOISY_DIR,CLEAN_DIR)")
  return {os.path.splitext(f)[0]: f for f in sorted(os.listdir(folder))
          if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS}


class PairedFolder:
  """Noisy/clean pairs: the files of two folders matched by name (extension may differ)."""

  def __init__(self, noisy_dir: str, clean_dir: str, split: str = "train"):
    self.noisy_dir = os.path.abspath(os.path.expanduser(noisy_dir))
    self.clean_dir = os.path.abspath(os.path.expanduser(clean_dir))
    noisy, clean = _image_names(self.noisy_dir), _image_names(self.clean_dir)
    common = sorted(set(noisy) & set(clean))
    if not common:
      raise DataError(f"pairs:{self.noisy_dir},{self.clean_dir}: no file names in common "
                      f"({len(noisy)} noisy, {len(clean)} clean images)")
    for names, folder, other in ((noisy, self.noisy_dir, "clean"),
                                 (clean, self.clean_dir, "noisy")):
      alone = sorted(set(names) - set(common))
      if alone:  # a missing partner is a mistake in the data: say which, train nothing
        shown = ", ".join(names[a] for a in alone[:3]) + (", ..." if len(alone) > 3 else "")
        raise DataError(f"{os.path.join(folder, names[alone[0]])}: no {other} image of the "
                        f"same name ({len(alone)} unmatched in {folder}: {shown})")
    if split == "train":
      common = [c for i, c in enumerate(common) if i % 10 != 9] or common
    elif split == "test":
      common = common[9::10] or common[-1:]
    elif split != "all":
      raise DataError(f"pairs: unknown split {split!r}; choose from train, test, all")
    self.split = split
    self.pairs = [(noisy[c], clean[c]) for c in common]

  def __len__(self) -> int:
    return len(self.pairs)

  def __getitem__(self, index) -> dict:
    i = int(index)
    n, c = self.pairs[i]
    noisy = load_image_file(os.path.join(self.noisy_dir, n))
    clean = load_image_file(os.path.join(self.clean_dir, c))
    if noisy.shape != clean.shape:
      raise DataError(f"{os.path.join(self.noisy_dir, n)}: {noisy.shape[1]}x{noisy.shape[0]} "
                      f"but its clean pair {c} is {clean.shape[1]}x{clean.shape[0]}")
    return {"image": clean, "noisy": noisy, "index": i, "name": c,
            "dataset_id": f"pairs:{self.noisy_dir},{self.clean_dir}"}

  def __repr__(self) -> str:  # stable: grain checks it when restoring a data position
    return (f"PairedFolder({self.noisy_dir}, {self.clean_dir}, split={self.split!r}, "
            f"len={len(self.pairs)})")


def get_source(dataset: str, split: str, data_dir: str | None = None):
  """A clean-image source (jaxvision.core.data) or, for "pairs:NOISY,CLEAN", a PairedFolder."""
  if dataset.startswith(PAIRS_PREFIX):
    parts = dataset[len(PAIRS_PREFIX):].split(",")
    if len(parts) != 2 or not all(parts):
      raise DataError(f"{dataset!r}: expected pairs:/path/noisy,/path/clean")
    return PairedFolder(parts[0], parts[1], split)
  return jv_data.get_source(dataset, split, data_dir)


class CleanRecord:
  """pair_fn for clean images: input = target = the image (noise comes on the device)."""

  def __call__(self, record) -> dict:
    img = record["image"]
    return {"input": img, "target": img, "seed": np.int32(record["index"])}

  def __repr__(self):
    return "CleanRecord()"


class NoisyCleanRecord:
  """pair_fn for real pairs: the noisy file is the input, its clean pair the target."""

  def __call__(self, record) -> dict:
    return {"input": record["noisy"], "target": record["image"],
            "seed": np.int32(record["index"])}

  def __repr__(self):
    return "NoisyCleanRecord()"


class BayerShape:
  """post_fn of the `sid` task: "input" becomes the packed RGGB planes (H/2, W/2, 4) of the
  clean sRGB crop, the shape `sid_unet` reads (the trainer initialises the model from
  batch["input"]). The train step replaces it with the raw simulated from "target" on the
  device (jaxvision.denoise.raw: unprocessing, noise and amplification run jitted there),
  so this is only the sRGB mosaic, never the network's real input."""

  def __call__(self, item: dict) -> dict:
    t = item["target"]
    out = dict(item)
    out["input"] = np.ascontiguousarray(np.stack(
        [t[0::2, 0::2, 0], t[0::2, 1::2, 1], t[1::2, 0::2, 1], t[1::2, 1::2, 2]], axis=-1)
        [:t.shape[0] // 2, :t.shape[1] // 2])
    return out

  def __repr__(self):
    return "BayerShape()"


class _ProgressIterator:
  """The train iterator with batch["progress"] (step / total_steps, float32 per example).

  Its position is the wrapped iterator's; the step count rides along inside the saved
  state (one more JSON key, removed again on restore), so a resumed run anneals on."""

  KEY = "jaxvision_denoise_step"

  def __init__(self, inner, total_steps: int):
    self._inner, self._total, self._step = inner, max(1, int(total_steps)), 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self._inner)
    n = len(next(iter(batch.values())))
    batch["progress"] = np.full((n,), min(1.0, self._step / self._total), np.float32)
    self._step += 1
    return batch

  def __getattr__(self, name):  # start_prefetch() and the rest: the wrapped iterator's
    if name.startswith("_"):
      raise AttributeError(name)
    return getattr(self._inner, name)

  def get_state(self) -> bytes:
    state = json.loads(self._inner.get_state())
    state[self.KEY] = self._step
    return json.dumps(state, indent=4).encode()

  def set_state(self, state: bytes) -> None:
    s = json.loads(state)
    self._step = int(s.pop(self.KEY, 0))
    self._inner.set_state(json.dumps(s, indent=4).encode())


class ProgressLoader:
  """A train loader whose iterators add batch["progress"]; see _ProgressIterator."""

  def __init__(self, loader, total_steps: int):
    self.loader, self.total_steps = loader, int(total_steps)

  def __iter__(self):
    return _ProgressIterator(iter(self.loader), self.total_steps)


def make_data(config, post_fn=None):
  """(train loader, eval batches): random crops (flips) of clean images or of pairs; eval:
  centre crops of `data.eval_crop` (0: whole images) of the eval split. `post_fn` runs on
  each cropped record (BayerShape for the `sid` task)."""
  import jax

  d = config.data
  data_dir = d.get("data_dir") or None
  train_src = get_source(d.dataset, d.train_split, data_dir)
  eval_src = get_source(d.dataset, d.eval_split, data_dir)
  pair = NoisyCleanRecord() if isinstance(train_src, PairedFolder) else CleanRecord()
  per_host = config.batch_size // jax.process_count()
  loader = jv_data.make_train_loader(
      train_src, batch_size=per_host, crop_size=int(d.crop_size), seed=config.seed,
      pair_fn=pair, worker_count=d.get("worker_count", 2), post_fn=post_fn)
  eval_batches = jv_data.make_eval_batches(
      eval_src, crop_size=d.get("eval_crop") or None, pair_fn=pair,
      max_images=d.get("eval_max_images") or None, post_fn=post_fn)
  return ProgressLoader(loader, config.total_steps), eval_batches


def is_paired(config) -> bool:
  return str(config.data.dataset).startswith(PAIRS_PREFIX)
