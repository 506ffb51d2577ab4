"""Super-resolution evaluation: Y-channel metrics, tiled inference, dataset evaluation.

  y_psnr / y_ssim                   Y-channel metrics, border crop = scale (published convention)
  bucketed_model(model, variables)  the model applied in shape buckets: one program per bucket
  upscale(model, variables, img)    any size, tiled with overlap (seam-free for local models)
  evaluate_source(...)              Y-PSNR/SSIM of a model and of bicubic over a dataset split

Shape buckets (jaxvision.core.buckets): `upscale` pads each image (or tile window) bottom/
right to a bucket of the x1.25 ladder, with the padding masked at every convolution input and
in channel attention's mean, so a folder of photos of many sizes compiles one program per
bucket, not one per size, and the output is the unpadded one (bit for bit on the local
models in our tests; RCAN's global mean to float32 rounding). `evaluate_source` computes the
metrics in buckets too.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.core import buckets, metrics
from jaxvision.core.tiling import apply_tiled
from jaxvision.superres.data import SREvalPairs


# ---------------------------------------------------------------- metrics (jax)
def _shave(x, border: int):
  return x[..., border:x.shape[-3] - border, border:x.shape[-2] - border, :] if border else x


def _y_pair(sr, hr, scale: int, quantize_sr: bool):
  sr = jnp.asarray(sr, jnp.float32)
  if quantize_sr:
    sr = jnp.round(jnp.clip(sr, 0.0, 1.0) * 255.0) / 255.0
  return (_shave(metrics.y_channel(sr), scale),
          _shave(metrics.y_channel(jnp.asarray(hr, jnp.float32)), scale))


def y_psnr(sr, hr, scale: int, quantize_sr: bool = True):
  """PSNR on BT.601 Y of (..., H, W, 3) images in [0, 1], `scale` pixels shaved off each
  border; `sr` is first rounded to 8 bits, as a saved output would be (EDSR's protocol)."""
  return metrics.psnr(*_y_pair(sr, hr, scale, quantize_sr))


def y_ssim(sr, hr, scale: int, quantize_sr: bool = True):
  """SSIM (Gaussian 11x11, sigma 1.5) on Y with the same shave and rounding as y_psnr."""
  return metrics.ssim(*_y_pair(sr, hr, scale, quantize_sr))


# ---------------------------------------------------------------- tiled inference
# Bucket sides are multiples of this (the SR networks have no strides: any multiple works).
BUCKET_MULTIPLE = 32


def _tile(model, h: int, w: int, tile: int | None, max_pixels: int) -> int:
  """upscale's tile side: the whole image when it fits max_pixels and no tile is given."""
  if tile is None:
    radius = int(model.receptive_radius())
    tile = max(h, w) if h * w <= max_pixels else max(32, int(max_pixels ** 0.5) - 2 * radius)
  return int(tile)


def bucketed_model(model, variables, *, tile: int | None = None,
                   max_pixels: int = 1 << 20) -> Callable:
  """`apply_fn` for `upscale` (make it once for many images): the model in shape buckets,
  one compiled program per bucket; the window side of tiled large images (from `tile` or
  `max_pixels`, as `upscale` picks it) is a bucket of its own, so their windows run unpadded."""
  radius = int(model.receptive_radius())
  window = _tile(model, 1 << 30, 1 << 30, tile, max_pixels) + 2 * radius
  return buckets.bucketed_apply(lambda x: model.apply(variables, x, train=False),
                                BUCKET_MULTIPLE, keep_sides=(window,))


def upscale(model, variables, image: np.ndarray, *, tile: int | None = None,
            max_pixels: int = 1 << 20, apply_fn: Callable | None = None) -> np.ndarray:
  """(H, W, 3) float in [0, 1] -> (s*H, s*W, 3) float32, clipped to [0, 1].

  Whole image when it has at most `max_pixels` LR pixels and no `tile` is given, else
  tiles of `tile` LR pixels (default: what fits max_pixels) with receptive-radius overlap.
  `apply_fn` (default: a new `bucketed_model`; pass one to share its programs between
  images) runs the model on each window."""
  if apply_fn is None:
    apply_fn = bucketed_model(model, variables, tile=tile, max_pixels=max_pixels)
  h, w = image.shape[:2]
  y = apply_tiled(  # the image operators' tiler, scaled
      apply_fn, np.asarray(image, np.float32), scale=int(model.scale),
      radius=int(model.receptive_radius()), tile=_tile(model, h, w, tile, max_pixels))
  return np.clip(y, 0.0, 1.0)


# ---------------------------------------------------------------- dataset evaluation
_FILTER = 11  # y_ssim's Gaussian window


@functools.partial(jax.jit, static_argnames=("scale",))
def _bucket_y_metrics(sr, bicubic, hr, h, w, *, scale: int):
  """(PSNR-Y, SSIM-Y) of the model's and of bicubic's output, for the top-left h x w of
  three images padded to one shape bucket: y_psnr / y_ssim's arithmetic on the valid region."""
  def y(x, quantize):
    if quantize:
      x = jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0) / 255.0
    return metrics.y_channel(x)[None, scale:, scale:]  # shave the top/left border here,

  hv, wv = h - 2 * scale, w - 2 * scale                 # the bottom/right one by size
  target = y(hr, False)
  out = []
  for img in (sr, bicubic):
    a = y(img, True)
    out += [metrics.psnr_valid(a, target, hv, wv)[0], metrics.ssim_valid(a, target, hv, wv)[0]]
  return out


def _y_metrics(sr, bicubic, hr, scale: int):
  """((model PSNR-Y, SSIM-Y), (bicubic PSNR-Y, SSIM-Y)) as y_psnr / y_ssim give them, in
  one program per shape bucket of the HR size (images too small for SSIM's window: the
  per-size functions, which say why)."""
  h, w = hr.shape[:2]
  if min(h, w) - 2 * scale < _FILTER:
    return tuple((float(y_psnr(img, hr, scale)), float(y_ssim(img, hr, scale)))
                 for img in (sr, bicubic))
  big_h, big_w = buckets.bucket_shape(h, w, BUCKET_MULTIPLE)
  pad = lambda a: buckets.pad_to(np.asarray(a, np.float32), big_h, big_w)
  v = [float(t) for t in _bucket_y_metrics(pad(sr), pad(bicubic), pad(hr), np.int32(h),
                                           np.int32(w), scale=int(scale))]
  return (v[0], v[1]), (v[2], v[3])


def evaluate_source(model, variables, source, scale: int, *, max_images: int | None = None,
                    tile: int | None = None, max_pixels: int = 1 << 20) -> dict:
  """Mean Y-PSNR / Y-SSIM of the model and of bicubic over the images of `source`
  (any jaxvision.core.data source: TFDS split or folder), full images, modcropped.

  The model and the metrics run in shape buckets: one program each per bucket."""
  n = len(source) if not max_images else min(int(max_images), len(source))
  if n == 0:
    raise ValueError("evaluate_source: no images")
  pairs = SREvalPairs(scale)
  apply_fn = bucketed_model(model, variables, tile=tile, max_pixels=max_pixels)
  rows = {"bicubic": [], "model": []}
  for i in range(n):
    rec = source[i]
    hr = np.asarray(rec["image"], np.float32) / 255.0
    p = pairs({"target": hr})
    sr = upscale(model, variables, p["input"], tile=tile, max_pixels=max_pixels,
                 apply_fn=apply_fn)
    model_row, bicubic_row = _y_metrics(sr, p["bicubic"], p["target"], scale)
    rows["model"].append(model_row)
    rows["bicubic"].append(bicubic_row)
  return {k: {"psnr_y": float(np.mean([r[0] for r in v])),
              "ssim_y": float(np.mean([r[1] for r in v])), "images": len(v)}
          for k, v in rows.items()}
