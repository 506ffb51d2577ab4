"""Super-resolution evaluation: Y-channel metrics, tiled inference, dataset evaluation.

  y_psnr / y_ssim                   Y-channel metrics, border crop = scale (published convention)
  upscale(model, variables, img)    any size, tiled with overlap (seam-free for local models)
  evaluate_source(...)              Y-PSNR/SSIM of a model and of bicubic over a dataset split
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.core import metrics
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
def upscale(model, variables, image: np.ndarray, *, tile: int | None = None,
            max_pixels: int = 1 << 20, apply_fn: Callable | None = None) -> np.ndarray:
  """(H, W, 3) float in [0, 1] -> (s*H, s*W, 3) float32, clipped to [0, 1].

  Whole image when it has at most `max_pixels` LR pixels and no `tile` is given, else
  tiles of `tile` LR pixels (default: what fits max_pixels) with receptive-radius overlap."""
  if apply_fn is None:
    apply_fn = jax.jit(lambda x: model.apply(variables, x, train=False))
  h, w = image.shape[:2]
  radius = int(model.receptive_radius())
  if tile is None:
    tile = max(h, w) if h * w <= max_pixels else max(32, int(max_pixels ** 0.5) - 2 * radius)
  y = apply_tiled(  # the image operators' tiler, scaled
apply_fn, np.asarray(image, np.float32), scale=int(model.scale),
                  radius=radius, tile=int(tile))
  return np.clip(y, 0.0, 1.0)


# ---------------------------------------------------------------- dataset evaluation
def evaluate_source(model, variables, source, scale: int, *, max_images: int | None = None,
                    tile: int | None = None, max_pixels: int = 1 << 20) -> dict:
  """Mean Y-PSNR / Y-SSIM of the model and of bicubic over the images of `source`
  (any jaxvision.core.data source: TFDS split or folder), full images, modcropped."""
  n = len(source) if not max_images else min(int(max_images), len(source))
  if n == 0:
    raise ValueError("evaluate_source: no images")
  pairs = SREvalPairs(scale)
  apply_fn = jax.jit(lambda x: model.apply(variables, x, train=False))
  rows = {"bicubic": [], "model": []}
  for i in range(n):
    rec = source[i]
    hr = np.asarray(rec["image"], np.float32) / 255.0
    p = pairs({"target": hr})
    sr = upscale(model, variables, p["input"], tile=tile, max_pixels=max_pixels,
                 apply_fn=apply_fn)
    for key, img in (("bicubic", p["bicubic"]), ("model", sr)):
      rows[key].append((float(y_psnr(img, p["target"], scale)),
                        float(y_ssim(img, p["target"], scale))))
  return {k: {"psnr_y": float(np.mean([r[0] for r in v])),
              "ssim_y": float(np.mean([r[1] for r in v])), "images": len(v)}
          for k, v in rows.items()}
