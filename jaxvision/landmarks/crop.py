"""The face crop that the landmark networks see, shared by training (data.py) and the
landmarker (predictor.py): a leaf module, so that neither imports the other."""
from __future__ import annotations

import numpy as np


def crop_face(image: np.ndarray, points: np.ndarray, size: int, scale: float = 1.25):
  """(crop float32 (size, size, 3) in [0, 1], points (P, 2) in the crop's unit frame)."""
  from PIL import Image
  img = image if image.ndim == 3 else np.repeat(image[..., None], 3, -1)
  lo, hi = points.min(0), points.max(0)
  c = (lo + hi) / 2
  side = max(float((hi - lo).max()) * scale, 4.0)
  x0, y0 = c - side / 2
  # PIL's EXTENT maps the output's pixel edges onto [x0, x0 + side] (pixel-centre
  # coordinate u maps to x0 + (u + 0.5) * side / size - 0.5 in input pixel centres)
  crop = Image.fromarray(img[..., :3].astype(np.uint8)).transform(
      (size, size), Image.Transform.EXTENT, (x0 + 0.5, y0 + 0.5, x0 + 0.5 + side,
                                             y0 + 0.5 + side), Image.Resampling.BILINEAR)
  unit = (points - [x0, y0]) / side
  return np.asarray(crop, np.float32) / 255.0, unit.astype(np.float32)


def rotated_crops(images, sizes, image_index, centers, sides, angles, out_size: int):
  """Square crops, rotated, resampled bilinearly, in JAX (batched over faces, jit-able):
  what MediaPipe's ImageToTensorCalculator does with a rotated ROI.

  images (N, H, W, C) float (padded bottom/right; `sizes` (N, 2) the valid (h, w) of
  each), image_index (B,) which image each crop reads, centers (B, 2) (x, y), sides (B,),
  angles (B,) radians. Crop pixel (u, v), whose centre is at ((u + 0.5) / out_size - 0.5,
  (v + 0.5) / out_size - 0.5) in the ROI's unit square, samples the image at
      center + side * (a * (cos t, sin t) + b * (-sin t, cos t))
  (image axes: x right, y down; t > 0 turns the crop's x axis clockwise on screen, so a
  face whose eye line falls to the right comes out level). Samples beyond the valid
  image repeat its border pixels (OpenCV's BORDER_REPLICATE, the CPU calculator's
  default). Points and centres share one pixel convention: whatever `centers` uses, the
  crop frame maps back with `crop_to_image`. Returns (B, out_size, out_size, C)."""
  import jax.numpy as jnp
  n, h, w, c = images.shape
  t = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) / out_size - 0.5
  a, b = t[None, None, :], t[None, :, None]                  # (1, 1, S) x, (1, S, 1) y
  cos, sin = jnp.cos(angles)[:, None, None], jnp.sin(angles)[:, None, None]
  s = sides[:, None, None]
  x = centers[:, 0, None, None] + s * (a * cos - b * sin)
  y = centers[:, 1, None, None] + s * (a * sin + b * cos)
  hw = sizes[image_index].astype(jnp.float32)
  hmax, wmax = hw[:, 0, None, None] - 1, hw[:, 1, None, None] - 1
  x0, y0 = jnp.floor(x), jnp.floor(y)
  fx, fy = (x - x0)[..., None], (y - y0)[..., None]
  flat = images.reshape(n * h * w, c)
  base = image_index[:, None, None] * (h * w)

  def px(yy, xx):
    yi = jnp.clip(yy, 0, hmax).astype(jnp.int32)
    xi = jnp.clip(xx, 0, wmax).astype(jnp.int32)
    return flat[base + yi * w + xi]

  top = px(y0, x0) * (1 - fx) + px(y0, x0 + 1) * fx
  bot = px(y0 + 1, x0) * (1 - fx) + px(y0 + 1, x0 + 1) * fx
  return top * (1 - fy) + bot * fy


def crop_to_image(points, centers, sides, angles, out_size: int):
  """(B, P, 2|3) points in crop pixels (0..out_size, pixel edges at integers, as the face
  mesh outputs them) -> image coordinates of `rotated_crops`' convention; a third (depth)
  coordinate is scaled by side / out_size, as MediaPipe's LandmarkProjectionCalculator
  scales z with the ROI's width."""
  import jax.numpy as jnp
  u = points[..., 0] / out_size - 0.5
  v = points[..., 1] / out_size - 0.5
  cos, sin = jnp.cos(angles)[:, None], jnp.sin(angles)[:, None]
  s = sides[:, None]
  x = centers[:, 0, None] + s * (u * cos - v * sin)
  y = centers[:, 1, None] + s * (u * sin + v * cos)
  out = [x, y]
  if points.shape[-1] > 2:
    out.append(points[..., 2] * s / out_size)
  return jnp.stack(out, -1)
