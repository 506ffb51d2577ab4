"""Face-cascade geometry, the one copy: the image pyramid and its windows, crops, overlap
and NMS, box regression and squaring, and Cascade CNN's calibration patterns.

Detection (`jaxvision.faces.detector`, one jitted function, jnp) and sample mining
(`jaxvision.faces.mining`, numpy on the host) call the same functions, so a previous stage
sees at mining time the windows and crops it sees at detection time. A function written for
both computes with the array module of its inputs (`array_module`): numpy in, numpy out,
with the same float32 (or integer) operations in the same order. Windows, crops and squares
come out bit for bit the same in numpy and in the compiled detector (the area mean, which
XLA turns into a multiplication by a reciprocal, is written that way here; the windows'
quotients, which the reference rounds correctly and XLA does not, are tabulated by numpy
and gathered, `window_spans`); regression and
overlaps may differ in the last bit (compiled code fuses a multiply-add into one rounding),
and the calibration's pattern average is a matrix product (summed in the library's order).
`nms` (a lax.while_loop) and `crop_and_resize` are jnp only; `crop_resize` (the
supersampled training crops) is numpy only.

Conventions follow facenet-pytorch's `detect_face` (davidsandberg's port of the MATLAB
original), whose detections the tests compare against: boxes are x1, y1, x2, y2 in input
pixels; first-stage windows floor((2*i + 1) / scale) .. floor((2*i + 12) / scale); crops of
the box truncated to integers and clipped to the image (1-based, like MATLAB) and resampled
by 'area' (adaptive average pooling) from an integer integral image; the '+1' widths of
MATLAB in stage 2-3 regression and in the last 'Min' NMS.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def array_module(*arrays):
  """jax.numpy when any argument is a jax array (or a tracer inside jit), else numpy."""
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


# ---------------------------------------------------------------- pyramid and windows
def pyramid_scales(h: int, w: int, min_face: float = 20.0, factor: float = 0.709):
  """[(scale, height, width)] of the image pyramid, as the reference computes them."""
  m = 12.0 / min_face
  minl = min(h, w) * m
  out, s = [], m
  while minl >= 12:
    out.append((s, int(h * s + 1), int(w * s + 1)))
    s *= factor
    minl *= factor
  return out


def out_cells(n: int, kind: str) -> int:
  """Output cells of the fully convolutional first stage on n input pixels."""
  if kind == "mtcnn":  # conv3, pool 2/2 (ceil), conv3, conv3
    return -(-(n - 2) // 2) - 4
  return -(-(n - 5) // 2) - 3  # cascade 12-net: conv3, pool 3/2 (ceil), conv5


def window_spans(n: int, scale: float, window: int = 12) -> np.ndarray:
  """(n, 2) float32 numpy: along one axis, the first stage's window of output cells 0..n-1
  at pyramid `scale`, in input pixels: floor((2 i + 1) / scale), floor((2 i + window) /
  scale), each a correctly rounded float32 quotient, as the reference (torch) divides.

  Tabulated here with numpy's IEEE division and gathered by the compiled detector because
  XLA's float32 division is not correctly rounded (XLA:CPU computes x * (1 / scale), also for
  a divisor that is not a constant), and the quotient is often an integer: at the first level
  (scale 12 / min_face = 0.6) (2 i + 1) / 0.6 is one for every third cell, where the product
  rounds up to it and the true quotient down (i = 37: 75 * (1 / 0.6) -> 125, 75 / 0.6 ->
  124.99999). That level holds the 20-28 px faces: a window 1 px off changes which
  candidate wins each later NMS (issue: small faces at IoU 0.84-0.95)."""
  t = np.arange(n, dtype=np.float32)
  s = np.float32(scale)
  return np.stack([np.floor((2 * t + 1) / s), np.floor((2 * t + window) / s)],
                  axis=1).astype(np.float32)


def cell_windows(idx, cols: int, scale: float, window: int = 12, rows: int | None = None):
  """Windows (K, 4) in input pixels of the first stage's output cells `idx` (flat, row-major
  over a level `cols` cells wide and `rows` high) at pyramid `scale`: the cell at (row, col)
  covers floor((2 col + 1) / scale) .. floor((2 col + window) / scale), and likewise in y,
  the quotients rounded as the reference rounds them (`window_spans`). With jax arrays
  `rows` is needed (the table's length); numpy divides directly."""
  xp = array_module(idx)
  yy, xx = idx // cols, idx % cols
  if xp is np:
    s = np.float32(scale)
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    return np.stack([np.floor((2 * xx + 1) / s), np.floor((2 * yy + 1) / s),
                     np.floor((2 * xx + window) / s), np.floor((2 * yy + window) / s)],
                    axis=1).astype(np.float32)
  if rows is None:
    raise ValueError("cell_windows of jax arrays needs rows= (the level's height in cells)")
  span = jnp.asarray(window_spans(max(rows, cols), scale, window))
  return jnp.stack([span[xx, 0], span[yy, 0], span[xx, 1], span[yy, 1]], axis=1)


def pyramid_windows(h: int, w: int, min_face: float = 20.0, factor: float = 0.709,
                    kind: str = "mtcnn", window: int = 12) -> np.ndarray:
  """Every window the first stage scores over the pyramid -> (K, 4) float32 numpy, level by
  level, cells row-major: the windows of `cell_windows` for all `out_cells` of each level
  (the detector scores the same cells and keeps the best)."""
  out = [np.zeros((0, 4), np.float32)]
  for scale, hs, ws in pyramid_scales(h, w, min_face, factor):
    rows, cols = out_cells(hs, kind), out_cells(ws, kind)
    out.append(cell_windows(np.arange(rows * cols, dtype=np.int32), cols, scale, window,
                            rows))
  return np.concatenate(out).astype(np.float32)


def pack_levels(sizes: list[tuple[int, int]], width: int | None = None
                ) -> tuple[list[tuple[int, int]], tuple[int, int]]:
  """Shelf-packs pyramid levels (h, w) into one canvas at even offsets (the nets'
  stride is 2, so every level keeps its own output grid) -> (offsets, canvas size).
  `width`: the canvas width (default: the two largest levels side by side, `packed_width`)."""
  even = lambda n: n + (n & 1)
  width = packed_width(sizes) if width is None else width
  offsets, x, y, shelf = [], 0, 0, 0
  for h, w in sizes:
    if x > 0 and x + even(w) > width:
      x, y, shelf = 0, y + shelf, 0
    offsets.append((y, x))
    x += even(w)
    shelf = max(shelf, even(h))
  return offsets, (y + shelf, width)


# ---------------------------------------------------------------- crops
def packed_width(sizes: list[tuple[int, int]]) -> int:
  """The default canvas width of `pack_levels`: the two largest levels side by side."""
  even = lambda n: n + (n & 1)
  return even(sizes[0][1]) + (even(sizes[1][1]) if len(sizes) > 1 else 0)


def integral_image(image):
  """(H, W, C) integer image -> (H+1, W+1, C) summed-area table (int32 in jnp).

  int32 may wrap for huge images, but every window sum below 2**31 still comes out
  exact (two's complement differences), so area means are exact for uint8 input.
  (numpy: int32 too, wrapping the same way, unless some window the detectors take could
  itself sum past 2**31: their largest is a bin of the coarsest pyramid level, whose
  shorter side is 12 pixels or more, so a bin spans at most (h/12 + 2) x (w/12 + 2)
  pixels; that bound passes 2**31 / 255 only beyond a gigapixel, and then the table is
  int64. A 12-megapixel photo's table is 144 MB in int32 against 288 MB in int64.)
  """
  xp = array_module(image)
  if xp is np:  # in place into the padded table, in int32 (3x faster than int64)
    h, w, c = image.shape
    dt = np.int32 if 255 * (h // 12 + 2) * (w // 12 + 2) < 2 ** 31 else np.int64
    out = np.zeros((h + 1, w + 1, c), dt)
    v = out[1:, 1:]
    # down the rows first as one vector add per row (contiguous rows: 2x faster than a
    # cumsum over axis 0 on 1280x720), then along each row; the same integers
    v[:] = image
    for i in range(1, h):
      np.add(v[i], v[i - 1], out=v[i])
    np.cumsum(v, axis=1, dtype=dt, out=v)
    return out
  s = xp.cumsum(xp.cumsum(image.astype(xp.int32), axis=0), axis=1)
  return xp.pad(s, ((1, 0), (1, 0), (0, 0)))


def _bins(start, length, n: int):
  """Adaptive-pool windows [lo, hi) of n outputs over [start, start + length)."""
  xp = array_module(start, length)
  i = xp.arange(n, dtype=xp.int32)
  lo = start[..., None] + (i * length[..., None]) // n
  hi = start[..., None] - ((-(i + 1) * length[..., None]) // n)
  return lo, hi


def area_crops(sat, regions, size: int | tuple[int, int]):
  """Area-resampled crops ('adaptive average pooling', torch interpolate mode='area').

  sat: (H+1, W+1, C) from `integral_image`; regions: (K, 4) int32 rows
  (y0, y1, x0, x1), half-open and inside the image. Returns float32 (K, oh, ow, C)
  in the image's value range; empty regions give zeros.
  """
  xp = array_module(sat, regions)
  oh, ow = (size, size) if isinstance(size, int) else size
  regions = regions.astype(xp.int32)
  ys, ye = _bins(regions[:, 0], regions[:, 1] - regions[:, 0], oh)  # (K, oh)
  xs, xe = _bins(regions[:, 2], regions[:, 3] - regions[:, 2], ow)  # (K, ow)
  if xp is np and len(regions) == 1 and tuple(regions[0]) == (0, sat.shape[0] - 1, 0,
                                                              sat.shape[1] - 1):
    # the whole image (a pyramid level): rows then columns, the same integers 2x faster
    rows = sat[ye[0]] - sat[ys[0]]                                   # (oh, W+1, C)
    v = (np.take(rows, xe[0], axis=1) - np.take(rows, xs[0], axis=1))[None]
  elif xp is np:  # gathers by linear index: the same integers, 2.5x faster than sat[r, c]
    flat = sat.reshape(-1, sat.shape[2])
    cols = sat.shape[1]
    g = lambda r, c: np.take(flat, (r[:, :, None] * cols + c[:, None, :]).reshape(-1),
                             axis=0).reshape(r.shape[0], oh, ow, -1)
    v = g(ye, xe) - g(ys, xe) - g(ye, xs) + g(ys, xs)
  else:
    g = lambda r, c: sat[r[:, :, None], c[:, None, :]]  # (K, oh, ow, C)
    v = g(ye, xe) - g(ys, xe) - g(ye, xs) + g(ys, xs)
  n = (ye - ys)[:, :, None] * (xe - xs)[:, None, :]
  # The mean as v * (1 / n): what XLA compiles v / n into when n is broadcast over the
  # channels, written out so that numpy computes the very same float32 numbers.
  return v.astype(xp.float32) * (1.0 / xp.maximum(n, 1).astype(xp.float32))[..., None]


def crop_regions(b, h: int, w: int):
  """The reference's integer crop of each box, clipped to the image (1-based, like
  MATLAB) -> (K, 4) half-open (y0, y1, x0, x1) and validity (non-empty)."""
  xp = array_module(b)
  bi = xp.trunc(b).astype(xp.int32)
  x = xp.maximum(bi[:, 0], 1)
  y = xp.maximum(bi[:, 1], 1)
  ex = xp.minimum(bi[:, 2], w)
  ey = xp.minimum(bi[:, 3], h)
  ok = (ey > y - 1) & (ex > x - 1)
  reg = xp.stack([y - 1, xp.maximum(ey, y - 1), x - 1, xp.maximum(ex, x - 1)], axis=1)
  return xp.clip(reg, 0, xp.asarray([h, h, w, w], xp.int32)), ok


def crop_and_resize(image, boxes, size: int):
  """Bilinear crop-and-resize (TF crop_and_resize semantics, pixel centres), for users.

  image (H, W, C) float; boxes (K, 4) x1, y1, x2, y2 in pixels, sampled at
  x1 + (x2 - x1) * j / (size - 1); outside the image reads zero. -> (K, size, size, C).
  The MTCNN pipeline itself uses `area_crops` (the reference's resampling).
  """
  h, w = image.shape[:2]
  t = jnp.arange(size, dtype=jnp.float32) / max(size - 1, 1)
  ys = boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * t  # (K, size)
  xs = boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * t
  padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)))

  def one(y, x):
    y0 = jnp.floor(y)
    x0 = jnp.floor(x)
    wy = (y - y0)[:, None, None]
    wx = (x - x0)[None, :, None]
    yi = jnp.clip(y0.astype(jnp.int32) + 1, 0, h + 1)
    xi = jnp.clip(x0.astype(jnp.int32) + 1, 0, w + 1)
    yj = jnp.clip(yi + 1, 0, h + 1)
    xj = jnp.clip(xi + 1, 0, w + 1)
    g = lambda r, c: padded[r[:, None], c[None, :]]
    return ((1 - wy) * ((1 - wx) * g(yi, xi) + wx * g(yi, xj))
            + wy * ((1 - wx) * g(yj, xi) + wx * g(yj, xj)))

  return jax.vmap(one)(ys, xs)


def _sample(img: np.ndarray, boxes: np.ndarray, size: int, k: int) -> np.ndarray:
  """Bilinear samples of (H,W,3) float `img` at k x k points per output pixel, averaged."""
  h, w = img.shape[:2]
  padded = np.pad(img, ((1, 1), (1, 1), (0, 0)))  # one black pixel all round: bilinear edge
  n = size * k
  t = (np.arange(n, dtype=np.float32) + 0.5) / n  # sample positions as fractions of the box
  xs = np.clip(boxes[:, 0:1] + t[None] * (boxes[:, 2:3] - boxes[:, 0:1]) + 0.5, 0, w + 1)
  ys = np.clip(boxes[:, 1:2] + t[None] * (boxes[:, 3:4] - boxes[:, 1:2]) + 0.5, 0, h + 1)
  x0 = np.clip(np.floor(xs).astype(np.int32), 0, w)
  y0 = np.clip(np.floor(ys).astype(np.int32), 0, h)
  fx = (xs - x0)[:, None, :, None]
  fy = (ys - y0)[:, :, None, None]
  g = lambda yy, xx: padded[yy[:, :, None], xx[:, None, :]]
  top = g(y0, x0) * (1 - fx) + g(y0, x0 + 1) * fx
  bot = g(y0 + 1, x0) * (1 - fx) + g(y0 + 1, x0 + 1) * fx
  v = top * (1 - fy) + bot * fy
  return v.reshape(len(boxes), size, k, size, k, 3).mean(axis=(2, 4))


def crop_resize(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
  """Training crops: (K,4) pixel boxes resized to size x size -> (K,size,size,3) uint8.

  Vectorised: each box is read from the level of a 2x2-mean pyramid where it is 1-2x the
  output size, with bilinear 2x2 supersampling there, so downscaled crops are area-averaged
  rather than aliased. Outside the image is black (MTCNN zero-pads windows crossing the
  border)."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  out = np.zeros((len(boxes), size, size, 3), np.uint8)
  if not len(boxes):
    return out
  side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
  level = np.floor(np.log2(np.maximum(side / size, 1.0))).astype(np.int32)
  img = np.asarray(image, np.float32)
  for lv in range(int(level.max()) + 1):
    if lv:
      hh, ww = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
      if hh == 0 or ww == 0:
        level = np.minimum(level, lv - 1)
        break
      img = img[:hh, :ww].reshape(hh // 2, 2, ww // 2, 2, 3).mean(axis=(1, 3))
    sel = np.flatnonzero(level == lv)
    for s in range(0, len(sel), 4096):
      i = sel[s:s + 4096]
      out[i] = np.clip(_sample(img, boxes[i] / 2 ** lv, size, 2) + 0.5, 0, 255).astype(np.uint8)
  return out


# ---------------------------------------------------------------- overlap and NMS
def overlap(a, b, mode: str = "union", plus_one: bool = False):
  """Overlap of boxes a (..., 4) with boxes b (..., 4), broadcast against each other:
  IoU ('union') or intersection over the smaller box ('min'); `plus_one` counts widths
  MATLAB's way (x2 - x1 + 1). One box against K: overlap(box, boxes) -> (K,); a matrix:
  overlap(a[:, None], b[None]) -> (K, N)."""
  xp = array_module(a, b)
  e = 1.0 if plus_one else 0.0
  area = lambda t: (t[..., 2] - t[..., 0] + e) * (t[..., 3] - t[..., 1] + e)
  iw = xp.maximum(xp.minimum(a[..., 2], b[..., 2]) - xp.maximum(a[..., 0], b[..., 0]) + e, 0.0)
  ih = xp.maximum(xp.minimum(a[..., 3], b[..., 3]) - xp.maximum(a[..., 1], b[..., 1]) + e, 0.0)
  inter = iw * ih
  sa, sb = area(a), area(b)
  denom = xp.minimum(sa, sb) if mode == "min" else sa + sb - inter
  return inter / xp.maximum(denom, 1e-12)


def iou_matrix(a, b) -> np.ndarray:
  """(K,4) x (N,4) x1,y1,x2,y2 (continuous coordinates) -> (K,N) float32 intersection over
  union (numpy; `overlap` on every pair)."""
  a = np.asarray(a, np.float32).reshape(-1, 4)
  b = np.asarray(b, np.float32).reshape(-1, 4)
  return overlap(a[:, None], b[None]).astype(np.float32)


def nms(boxes, scores, valid, threshold: float, mode: str = "union", plus_one: bool = False,
        groups=None):
  """Greedy non-maximum suppression on a fixed-size buffer -> keep mask (K,).

  Highest score first (ties: lower index first); a box is suppressed when its overlap
  with a kept box exceeds `threshold`. Loops once per kept box (lax.while_loop), so
  the cost follows the number of survivors, not K. vmap it for batches. `groups` (K,)
  int: boxes only suppress boxes of their own group (torchvision's batched_nms: one
  call for every pyramid level, or every image of a flattened batch).
  """
  k = scores.shape[0]
  if k == 0:
    return jnp.zeros((0,), bool)
  s = jnp.where(valid, scores, -jnp.inf)

  def cond(state):
    return jnp.any(state[0])

  def body(state):
    alive, keep = state
    i = jnp.argmax(jnp.where(alive, s, -jnp.inf))
    keep = keep.at[i].set(True)
    hit = overlap(boxes[i], boxes, mode, plus_one) > threshold
    if groups is not None:
      hit = hit & (groups == groups[i])
    alive = alive & ~hit
    return alive.at[i].set(False), keep

  _, keep = jax.lax.while_loop(cond, body, (valid, jnp.zeros((k,), bool)))
  return keep


# ---------------------------------------------------------------- regression and squaring
def rerec(b):
  """Boxes to squares around the same centre (side = the longer side)."""
  xp = array_module(b)
  w = b[:, 2] - b[:, 0]
  h = b[:, 3] - b[:, 1]
  l = xp.maximum(w, h)
  x1 = b[:, 0] + w * 0.5 - l * 0.5
  y1 = b[:, 1] + h * 0.5 - l * 0.5
  return xp.stack([x1, y1, x1 + l, y1 + l], axis=1)


def bbreg(b, reg, plus_one: bool = True):
  """Box regression: `reg` offsets x1, y1, x2, y2 in units of the box's width and height.

  plus_one: the MATLAB '+1' widths of the reference's stages 2 and 3; its first stage
  scales by x2 - x1 (plus_one=False)."""
  xp = array_module(b, reg)
  w = b[:, 2] - b[:, 0]
  h = b[:, 3] - b[:, 1]
  if plus_one:
    w, h = w + 1, h + 1
  return b + reg * xp.stack([w, h, w, h], axis=1)


# ---------------------------------------------------------------- Cascade CNN calibration
CAL_SCALES = (0.83, 0.91, 1.0, 1.10, 1.21)
CAL_SHIFTS = (-0.17, 0.0, 0.17)


def calibration_patterns() -> np.ndarray:
  """(45, 3) float32 rows (s, x_shift, y_shift); index = (si * 3 + xi) * 3 + yi."""
  s, xs, ys = np.meshgrid(CAL_SCALES, CAL_SHIFTS, CAL_SHIFTS, indexing="ij")
  return np.stack([s.ravel(), xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


def calibration_label(s: float, xn: float, yn: float) -> int:
  """Index of a pattern (for mining calibration samples)."""
  return (CAL_SCALES.index(s) * 3 + CAL_SHIFTS.index(xn)) * 3 + CAL_SHIFTS.index(yn)


def apply_calibration(boxes, probs, threshold: float = 0.1):
  """Li et al. eq. 1: average the patterns whose confidence exceeds `threshold`.

  boxes (..., 4) x1, y1, x2, y2; probs (..., 45) softmax outputs. A window that was
  shifted by (xn*w, yn*h) and scaled by s relative to the face is mapped back:
  (x - xn*w/s, y - yn*h/s, w/s, h/s). Boxes with no confident pattern stay as they are.
  Works on numpy and jnp arrays (jit-friendly); the two agree to float32 rounding (the
  pattern sum is a matrix product, whose summation order is the library's).
  """
  xp = array_module(boxes, probs)
  pat = xp.asarray(calibration_patterns())
  m = (probs > threshold).astype(boxes.dtype)
  n = m.sum(-1, keepdims=True)
  mean = (m @ pat) * (1.0 / xp.maximum(n, 1.0))  # XLA's form of (m @ pat) / max(n, 1)
  has = n > 0
  s = xp.where(has, mean[..., 0:1], 1.0)
  xn = xp.where(has, mean[..., 1:2], 0.0)
  yn = xp.where(has, mean[..., 2:3], 0.0)
  x1, y1, x2, y2 = (boxes[..., i:i + 1] for i in range(4))
  w, h = x2 - x1, y2 - y1
  nx1 = x1 - xn * w / s
  ny1 = y1 - yn * h / s
  return xp.concatenate([nx1, ny1, nx1 + w / s, ny1 + h / s], axis=-1)


def calibration_windows(faces, labels):
  """The window that pattern n (s, xn, yn) maps back onto a face (x, y, w, h): shifted by
  (xn w, yn h) and scaled by s, i.e. (x + xn w, y + yn h, s w, s h), so that Li et al.'s
  correction (x - xn w'/s, y - yn h'/s, w'/s, h'/s) recovers the face exactly."""
  xp = array_module(faces, labels)
  p = xp.asarray(calibration_patterns())[labels]
  w, h = faces[:, 2] - faces[:, 0], faces[:, 3] - faces[:, 1]
  x, y = faces[:, 0] + p[:, 1] * w, faces[:, 1] + p[:, 2] * h
  return xp.stack([x, y, x + p[:, 0] * w, y + p[:, 0] * h], axis=1).astype(xp.float32)
