"""Super-resolution training and evaluation pairs, made from any image dataset.

  SRPairs(scale, patch)             post_fn: HR crop -> (bicubic LR patch, HR patch), numpy
  SREvalPairs(scale)                post_fn: HR image -> (LR, HR, bicubic upscale) for eval
  make_data(config)                 the `super_resolution` task's (train loader, eval batches)

Low-resolution inputs are made on the fly by MATLAB-style bicubic downscaling
(jaxvision.superres.resize) in the grain workers, from HR crops of scale * (patch + 4)
pixels; eval: centre HR crops (or whole images) with LR and the bicubic baseline.
"""
from __future__ import annotations

import numpy as np

from jaxvision.superres.resize import bicubic_upscale, downscale, modcrop


# ---------------------------------------------------------------- pairs (data.post_fn)
class SRPairs:
  """Train post_fn: HR crop of scale*(patch + 2*margin) -> LR patch and its HR patch.

  The LR of the whole window is made first and its `margin`-pixel border dropped, so every
  LR pixel saw real image context (bicubic reaches 2 LR pixels): the pairs are those of
  downscaling the whole image (shifted by the crop offset), as DIV2K's LR files are.
  Deterministic, numpy only (runs in the grain workers)."""

  def __init__(self, scale: int, patch: int, margin: int = 2, quantize_lr: bool = True):
    self.scale, self.patch, self.margin, self.quantize_lr = int(scale), int(patch), int(margin), \
        bool(quantize_lr)

  @property
  def crop_size(self) -> int:
    return self.scale * (self.patch + 2 * self.margin)

  def __call__(self, item: dict) -> dict:
    s, p, m = self.scale, self.patch, self.margin
    hr = np.asarray(item["target"], np.float32)
    if hr.shape[:2] != (self.crop_size, self.crop_size):
      raise ValueError(f"SRPairs: expected a {self.crop_size}^2 crop, got {hr.shape}")
    lr = downscale(hr, s, self.quantize_lr)[m:m + p, m:m + p]
    return {"input": np.ascontiguousarray(lr),
            "target": np.ascontiguousarray(hr[s * m:s * (m + p), s * m:s * (m + p)])}

  def __repr__(self):  # stable: grain checks it when restoring a data position
    return f"SRPairs(scale={self.scale}, patch={self.patch}, margin={self.margin}, " \
           f"quantize_lr={self.quantize_lr})"


class SREvalPairs:
  """Eval post_fn: HR (modcropped) -> LR (bicubic, 8-bit), HR, and bicubic upscale of LR."""

  def __init__(self, scale: int, quantize_lr: bool = True):
    self.scale, self.quantize_lr = int(scale), bool(quantize_lr)

  def __call__(self, item: dict) -> dict:
    hr = modcrop(np.asarray(item["target"], np.float32), self.scale)
    if min(hr.shape[:2]) < self.scale * 4:
      raise ValueError(f"SREvalPairs: image {hr.shape[:2]} too small for x{self.scale}")
    lr = downscale(hr, self.scale, self.quantize_lr)
    return {"input": lr, "target": np.ascontiguousarray(hr),
            "bicubic": bicubic_upscale(lr, self.scale)}

  def __repr__(self):
    return f"SREvalPairs(scale={self.scale}, quantize_lr={self.quantize_lr})"


# ---------------------------------------------------------------- the task's data
def make_data(config):
  """(train loader, eval batches) of `config.data.dataset` as SR pairs at
  `config.model.kwargs.scale`; the global batch is split evenly over the processes."""
  import jax
  from jaxvision.core import data

  d = config.data
  scale = int(config.model.kwargs.scale)
  data_dir = d.get("data_dir") or None
  train_src = data.get_source(d.dataset, d.train_split, data_dir)
  eval_src = data.get_source(d.dataset, d.eval_split, data_dir)
  pairs = SRPairs(scale, int(d.patch_size), quantize_lr=d.get("quantize_lr", True))
  per_host = config.batch_size // jax.process_count()
  loader = data.make_train_loader(
      train_src, batch_size=per_host, crop_size=pairs.crop_size, seed=config.seed,
      worker_count=d.get("worker_count", 2), post_fn=pairs)
  eval_batches = data.make_eval_batches(
      eval_src, crop_size=d.get("eval_crop") or None, max_images=d.get("eval_max_images") or None,
      post_fn=SREvalPairs(scale, d.get("quantize_lr", True)))
  return loader, eval_batches
