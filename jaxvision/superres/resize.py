"""MATLAB-style bicubic resizing: the tool that makes super-resolution's LR images.

  imresize(img, 1/4)                MATLAB-style antialiased bicubic resize (host, float64)
  contributions(in, out, scale)     its per-row index/weight tables
  quantize / modcrop / downscale    8-bit rounding, benchmark crop, HR -> LR
  bicubic_upscale(lr, scale)        the bicubic baseline, 8-bit like a saved file

imresize follows MATLAB's `imresize(..., 'bicubic')` (the tool that made DIV2K's and
Set5/Set14's LR images): cubic kernel a = -0.5; when shrinking by s < 1 the kernel is
widened to h(x) = s*cubic(s*x) (antialiasing, 4/s taps); output pixel i (1-based) maps to
u = i/s + (1 - 1/s)/2 in the input; per-row index/weight tables with weights normalised
to sum 1; symmetric (mirror) border handling. Differences from MATLAB: we compute in
float64 and round once at the end, where MATLAB rounds uint8 images after each of the
two 1-D passes (≤ 1 grey level on a few pixels). PIL's BICUBIC is the same kernel but
clamps taps at the borders instead of mirroring and works in 8-bit fixed point:
docs/superres.md gives the measured difference.
"""
from __future__ import annotations

import math

import numpy as np

# ---------------------------------------------------------------- MATLAB imresize


def cubic(x: np.ndarray) -> np.ndarray:
  """Keys' cubic convolution kernel with a = -0.5 (MATLAB's `cubic`)."""
  ax = np.abs(np.asarray(x, np.float64))
  ax2, ax3 = ax * ax, ax * ax * ax
  return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
          + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


def contributions(in_length: int, out_length: int, scale: float,
                  antialiasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """MATLAB's index/weight tables: (weights (out, P) float64, indices (out, P) 0-based).

  Row i holds the input pixels (mirrored at the borders) and normalised weights that make
  output pixel i. Taps whose weight is zero for every output pixel are dropped."""
  kernel_width = 4.0
  if scale < 1 and antialiasing:
    h = lambda x: scale * cubic(scale * x)
    kernel_width /= scale
  else:
    h = cubic
  x = np.arange(1, out_length + 1, dtype=np.float64)
  u = x / scale + 0.5 * (1.0 - 1.0 / scale)
  left = np.floor(u - kernel_width / 2.0)
  p = int(math.ceil(kernel_width)) + 2
  indices = left[:, None] + np.arange(p)[None, :]            # 1-based
  weights = h(u[:, None] - indices)
  weights /= weights.sum(axis=1, keepdims=True)
  aux = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])
  indices = aux[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
  keep = np.any(weights != 0, axis=0)
  return weights[:, keep], indices[:, keep]


def _resize_axis(x: np.ndarray, axis: int, out_length: int, scale: float,
                 antialiasing: bool) -> np.ndarray:
  w, idx = contributions(x.shape[axis], out_length, scale, antialiasing)
  x = np.moveaxis(x, axis, 0)
  out = np.zeros((out_length,) + x.shape[1:], np.float64)
  extra = (slice(None),) + (None,) * (x.ndim - 1)
  for t in range(w.shape[1]):  # one pass per tap (a handful), vectorised over pixels
    out += w[:, t][extra] * x[idx[:, t]]
  return np.moveaxis(out, 0, axis)


def imresize(image: np.ndarray, scale: float | None = None, output_shape=None, *,
             antialiasing: bool = True) -> np.ndarray:
  """Bicubic resize of (H, W[, C]) like MATLAB `imresize(image, scale)`, in float64.

  `scale` gives the output size ceil(H*scale) x ceil(W*scale) and the coordinate map;
  `output_shape` (h, w) instead gives scale = h/H, w/W per axis. uint8 input: the result
  is rounded and clipped to uint8; float input stays float64 (no clipping)."""
  a = np.asarray(image)
  if a.ndim not in (2, 3) or 0 in a.shape[:2]:
    raise ValueError(f"imresize: expected an (H, W[, C]) image, got shape {a.shape}")
  h, w = a.shape[:2]
  if output_shape is not None:
    oh, ow = int(output_shape[0]), int(output_shape[1])
    scales = (oh / h, ow / w)
  elif scale is not None and scale > 0:
    scales = (float(scale), float(scale))
    oh, ow = int(math.ceil(h * scale - 1e-9)), int(math.ceil(w * scale - 1e-9))
  else:
    raise ValueError("imresize: give a positive scale or an output_shape")
  if oh < 1 or ow < 1:
    raise ValueError(f"imresize: output shape {(oh, ow)} is empty")
  out = a.astype(np.float64)
  # MATLAB's order: the axis with the smaller scale first (rows first on ties).
  for axis in sorted((0, 1), key=lambda ax: scales[ax]):
    out = _resize_axis(out, axis, (oh, ow)[axis], scales[axis], antialiasing)
  if a.dtype == np.uint8:
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
  return out


def quantize(x: np.ndarray) -> np.ndarray:
  """[0, 1] float -> the nearest of the 256 levels an 8-bit image file can hold."""
  return (np.round(np.clip(x, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
  """Top-left crop to a multiple of `scale` (the benchmarks' convention)."""
  h, w = image.shape[:2]
  return image[:h - h % scale, :w - w % scale]


def downscale(hr: np.ndarray, scale: int, quantize_lr: bool = True) -> np.ndarray:
  """HR float in [0, 1] (H, W, C), H and W multiples of scale -> bicubic LR, float32."""
  lr = imresize(hr.astype(np.float64), 1.0 / scale)
  return quantize(lr) if quantize_lr else lr.astype(np.float32)


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
  """The bicubic baseline: MATLAB-style upscale of the LR image, 8-bit like a saved file."""
  return quantize(imresize(np.asarray(lr, np.float64), float(scale)))
