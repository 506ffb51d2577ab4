"""Face alignment: landmarks -> a similarity transform -> a batched, jit-compiled warp.

  similarity(src, dst)              least-squares similarity (Umeyama 1991, as dlib's
                                    find_similarity_transform) mapping src points to dst
  dlib_chip_matrix(parts5, ...)     dlib's get_face_chip mapping from its OWN 5-point shape
                                    predictor's points (eye corners, nose base)
  template_chip_matrix(lms, tpl)    the mapping from MTCNN's 5 landmarks to a model template
  facenet_crop_matrix(box, ...)     davidsandberg/facenet's crop: the MTCNN box plus a margin,
                                    clipped to the image, resized to 160x160
  warp(image, matrices, size)       every chip of one image at once (jit, bilinear, dlib's
                                    border rule), images padded to shape buckets
  face_chip_details(parts5, ...)    dlib's get_face_chip_details (ChipDetails: rectangle,
                                    angle, size) of dlib's integer 5 points
  extract_chips(image, details)     dlib's extract_image_chips exactly: its pyramid_down<2>
                                    image pyramid for large faces, then `warp`
  pyramid_down(image)               dlib's pyramid_down<2> (integer-exact)

A matrix here is (2, 3) and maps a CHIP pixel (x, y, 1) to the image point it samples
(x right, y down, pixel centres at integers, as dlib and PIL's affine transform do).

dlib's convention (dlib/image_transforms/interpolation.h). get_face_chip_details puts its
5-point predictor's points (0, 1: the subject's left eye outer / inner corner, 2, 3: the right
eye's outer / inner corner, 4: the base of the nose) on a mean face `DLIB_5PT`, normalised as
(padding + p) / (1 + 2 * padding) * size, and fits the similarity chip -> image by least
squares. It then keeps only the scale s, angle and the image point c of the chip centre
(size/2, size/2), and extracts a rectangle of side size*s - 1 (centered_drect subtracts one)
centred on c, whose corners land on chip pixels 0 and size-1: so chip pixel u samples
c + R(angle) * (u - (size-1)/2) * (size*s - 1)/(size - 1). `dlib_chip_matrix` reproduces
exactly that. dlib's bilinear interpolation gives black where any of the four neighbours is
outside the image; chips then are uint8 (dlib truncates the interpolated value).
dlib shrinks the image with a pyramid (pyramid_down<2>) before interpolating when a chip
rectangle is more than about twice the chip side (over 299 px for 150-px chips); the plain
`warp` of `dlib_chip_matrix` does not, and for such faces its chips are aliased (2.5-3.9
grey levels from dlib's, 0.04-0.07 L2 on the descriptor). `extract_chips` does what dlib
does, step for step (its docstring), and gives dlib's chips to 1 grey level (99.9% equal).

MTCNN's five landmarks (eye centres, nose tip, mouth corners) are other points than dlib's.
`DLIB_MTCNN_TEMPLATE` is where MTCNN's points fall, on average, in dlib's own 150-px chips
(padding 0.25) of the same faces: fitted once by `fit_template` on faces of the embedded
photos (benchmarks/peers/recognition_dlib.py gives dlib's chips, this project's MTCNN the
landmarks; the test measures the chip and descriptor differences on the same faces).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.core import buckets

# dlib's 5-point mean face (get_face_chip_details), points in [0, 1] of an unpadded chip.
DLIB_5PT = np.array([[0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677],
                     [0.1205750620789, 0.2137274526848], [0.3340850613712, 0.2290642403242],
                     [0.4901123135679, 0.6277975316475]])

# MTCNN's left eye, right eye, nose, left / right mouth corner (the image's left and right)
# in dlib's 150-px chip with padding 0.25, as fractions of the chip side (fit_template on
# the 10 faces of the embedded photos both detectors find; see the module docstring).
DLIB_MTCNN_TEMPLATE = np.array([[0.3168, 0.3092], [0.6762, 0.3066], [0.4978, 0.5247],
                                [0.3464, 0.6937], [0.6609, 0.6910]])

# davidsandberg/facenet align_dataset_mtcnn.py defaults: margin 44 px (image pixels, half
# on each side), image_size 160.
FACENET_SIZE, FACENET_MARGIN = 160, 44


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """(2, 3) least-squares similarity (rotation, uniform scale, translation) taking the
  points `src` (n, 2) onto `dst` (n, 2): Umeyama's closed form, as dlib's
  find_similarity_transform (no reflection)."""
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  mu_s, mu_d = src.mean(0), dst.mean(0)
  xs, xd = src - mu_s, dst - mu_d
  var_s = (xs ** 2).sum() / len(src)
  cov = xd.T @ xs / len(src)
  u, d, vt = np.linalg.svd(cov)
  sign = np.eye(2)
  if np.linalg.det(cov) < 0:
    sign[1, 1] = -1
  r = u @ sign @ vt
  c = np.trace(np.diag(d) @ sign) / var_s if var_s > 0 else 1.0
  t = mu_d - c * r @ mu_s
  return np.concatenate([c * r, t[:, None]], 1)


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
  pts = np.asarray(pts, np.float64)
  return pts @ m[:, :2].T + m[:, 2]


def dlib_chip_matrix(parts: np.ndarray, size: int = 150, padding: float = 0.25) -> np.ndarray:
  """dlib's get_face_chip(img, shape, size, padding) mapping for its 5-point `parts` (5, 2):
  chip pixel -> image point (see the module docstring for the rectangle convention), without
  dlib's pyramid for large faces (`extract_chips` adds it)."""
  d = face_chip_details(parts, size, padding)
  return _corner_matrix(d.rect, d.angle, size)


def template_chip_matrix(landmarks: np.ndarray, template: np.ndarray = DLIB_MTCNN_TEMPLATE,
                         size: int = 150) -> np.ndarray:
  """The chip -> image mapping that puts five MTCNN `landmarks` (5, 2) nearest (least
  squares) to `template` (fractions of the chip side)."""
  return similarity(np.asarray(template) * size, landmarks)


def facenet_crop_matrix(box: Sequence[float], image_hw: tuple[int, int],
                        size: int = FACENET_SIZE, margin: float = FACENET_MARGIN) -> np.ndarray:
  """davidsandberg/facenet's chip: the box grown by margin/2 on every side, clipped to the
  image, resized (bilinear) to size x size; an axis-aligned map (the clipped crop may not be
  square, then the chip stretches it, as facenet's misc.imresize does)."""
  h, w = image_hw
  x1, y1, x2, y2 = box
  x1, y1 = max(np.floor(x1 - margin / 2), 0), max(np.floor(y1 - margin / 2), 0)
  x2, y2 = min(np.floor(x2 + margin / 2), w), min(np.floor(y2 + margin / 2), h)
  sx, sy = (x2 - x1) / size, (y2 - y1) / size  # pixel-area resize: centre (u+0.5)*s - 0.5
  return np.array([[sx, 0.0, x1 + 0.5 * sx - 0.5], [0.0, sy, y1 + 0.5 * sy - 0.5]])


def fit_template(landmarks: np.ndarray, chip_matrices: np.ndarray, size: int = 150) -> np.ndarray:
  """The mean position, as fractions of the chip side, of each landmark (faces, 5, 2) in
  the chips that `chip_matrices` (faces, 2, 3: chip -> image) cut: the template that makes
  chips from these landmarks closest to those chips."""
  out = []
  for lm, m in zip(landmarks, chip_matrices):
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    out.append(_apply(inv, lm) / size)
  return np.mean(out, 0)


@functools.partial(jax.jit, static_argnames=("size",))
def _warp(image, hw, matrices, size: int):
  """image (H, W, C) padded, hw its valid (h, w), matrices (n, 2, 3) -> (n, size, size, C)."""
  ys, xs = jnp.meshgrid(jnp.arange(size, dtype=jnp.float32),
                        jnp.arange(size, dtype=jnp.float32), indexing="ij")
  grid = jnp.stack([xs, ys, jnp.ones_like(xs)], -1)  # (s, s, 3)
  img = image.astype(jnp.float32)

  def one(m):
    p = grid @ m.T  # (s, s, 2) image x, y
    x0, y0 = jnp.floor(p[..., 0]), jnp.floor(p[..., 1])
    fx, fy = (p[..., 0] - x0)[..., None], (p[..., 1] - y0)[..., None]
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < hw[1]) & (y0 + 1 < hw[0])
    xi = jnp.clip(x0, 0, image.shape[1] - 2).astype(jnp.int32)
    yi = jnp.clip(y0, 0, image.shape[0] - 2).astype(jnp.int32)
    tl, tr = img[yi, xi], img[yi, xi + 1]
    bl, br = img[yi + 1, xi], img[yi + 1, xi + 1]
    v = (1 - fy) * ((1 - fx) * tl + fx * tr) + fy * ((1 - fx) * bl + fx * br)
    return jnp.where(inside[..., None], v, 0.0)

  return jax.vmap(one)(matrices.astype(jnp.float32))


def warp(image: np.ndarray, matrices: np.ndarray, size: int, *, as_uint8: bool = False):
  """Chips (n, size, size, C) float32 in the image's range (or uint8 truncated as dlib's
  are) of `image` (H, W, C) cut by `matrices` (n, 2, 3), one compiled program per shape
  bucket of the image and number of faces (padded to a power of two)."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, -1)
  matrices = np.asarray(matrices, np.float32).reshape(-1, 2, 3)
  n = len(matrices)
  if n == 0:
    return np.zeros((0, size, size, image.shape[-1]), np.uint8 if as_uint8 else np.float32)
  h, w = image.shape[:2]
  hh, ww = buckets.bucket_shape(h, w, 32)
  nn_ = 1 << max(0, (n - 1).bit_length())
  mats = np.concatenate([matrices, np.repeat(matrices[:1], nn_ - n, 0)])
  out = np.asarray(_warp(buckets.pad_to(image, hh, ww), np.array([h, w], np.float32), mats,
                         size))[:n]
  if as_uint8:
    return np.floor(out + 1e-3).clip(0, 255).astype(np.uint8)
  return out


# ---------------------------------------------------------------- dlib's face chips, exactly
@dataclasses.dataclass(frozen=True)
class ChipDetails:
  """dlib's chip_details for a square chip: `rect` the drectangle (left, top, right,
  bottom; image pixels, corners inclusive: width() = right - left + 1) that the chip's
  corner pixels sample before rotation by `angle` (radians) about its centre, and the
  chip's side `size`."""
  rect: tuple[float, float, float, float]
  angle: float
  size: int


def face_chip_details(parts, size: int = 150, padding: float = 0.25) -> ChipDetails:
  """dlib's get_face_chip_details(shape, size, padding) for its 5-point predictor's `parts`
  (5, 2): the mean face `DLIB_5PT` padded as (padding + p) / (1 + 2 * padding) * size,
  find_similarity_transform(chip points -> parts), then the chip_details constructor:
  angle = atan2 of the transform's first column, scale = its length, and
  centered_drect(tform(size/2, size/2), size * scale, size * scale) (which subtracts one from
  each side before halving). The parts are what dlib's shape predictor hands over:
  integer points (dlib rounds each coordinate, floor(v + 0.5)); give them rounded to match
  dlib (embed.Embedder.dlib_points does)."""
  chip_pts = (padding + DLIB_5PT) / (2 * padding + 1) * size
  m = similarity(chip_pts, np.asarray(parts, np.float64))
  px, py = m[0, 0], m[1, 0]
  angle, scale = float(np.arctan2(py, px)), float(np.hypot(px, py))
  cx, cy = _apply(m, np.array([[size / 2.0, size / 2.0]]))[0]
  half = (size * scale - 1.0) / 2.0
  return ChipDetails((cx - half, cy - half, cx + half, cy + half), angle, int(size))


def _lround(v: float) -> int:
  """C's lround: to the nearest integer, halves away from zero (dlib's drectangle ->
  rectangle)."""
  return int(np.sign(v) * np.floor(abs(v) + 0.5))


def _rect_area(r) -> float:
  l, t, rr, b = r
  return 0.0 if (t > b or l > rr) else (rr - l + 1.0) * (b - t + 1.0)


def _rect_down(r):
  """pyramid_down<2>::rect_down: each corner p -> p / 2 - (1.25, 0.75) (dlib's own
  convention, kept exactly: it is the geometry every dlib chip of a large face uses)."""
  l, t, rr, b = r
  return (l / 2 - 1.25, t / 2 - 0.75, rr / 2 - 1.25, b / 2 - 0.75)


def pyramid_levels(d: ChipDetails) -> int:
  """How many times dlib halves the image before it interpolates this chip: while the
  chip rectangle, halved once more, still has more pixels than the chip (a rectangle side
  over 299 for a 150-px chip: faces a little over 200 px wide at padding 0.25)."""
  n, r = 0, _rect_down(d.rect)
  while _rect_area(r) > d.size * d.size:
    r, n = _rect_down(r), n + 1
  return n


def _rotated_corners(rect, angle):
  """tl, tr, bl, br of `rect` rotated by `angle` about its centre (dlib's rotate_point)."""
  l, t, r, b = rect
  c = np.array([(l + r) / 2, (t + b) / 2])
  cs, sn = np.cos(angle), np.sin(angle)
  rot = np.array([[cs, -sn], [sn, cs]])
  pts = np.array([[l, t], [r, t], [l, b], [r, b]], np.float64)
  return (pts - c) @ rot.T + c


def _corner_matrix(rect, angle, size: int) -> np.ndarray:
  """(2, 3) chip pixel -> image point taking chip pixels (0, 0), (size-1, 0), (0, size-1)
  onto the rotated rectangle's tl, tr, bl corners (dlib's find_affine_transform of those
  three pairs, solved in closed form)."""
  tl, tr, bl, _ = _rotated_corners(rect, angle)
  k = float(max(size - 1, 1))
  return np.stack([(tr - tl) / k, (bl - tl) / k, tl], 1)


def pyramid_down(image: np.ndarray) -> np.ndarray:
  """dlib's pyramid_down<2> of a uint8 (H, W, C) image, integer-exact: rows filtered with
  [1 4 6 4 1] at every other column (output column c from input columns 2c..2c+4), then
  columns the same way at every other row, the 16-bit sum divided by 256 with truncation;
  (H - 3) // 2 x (W - 3) // 2 pixels, and an empty image for inputs of 8 pixels or less
  on a side (dlib clears the output)."""
  img = np.asarray(image)
  h, w = img.shape[:2]
  if h <= 8 or w <= 8:
    return np.zeros((0, 0) + img.shape[2:], np.uint8)
  x = img.astype(np.int32)
  wc, hr = (w - 3) // 2, (h - 3) // 2
  taps = (1, 4, 6, 4, 1)
  rows = sum(t * x[:, k:k + 2 * wc:2] for k, t in enumerate(taps))
  cols = sum(t * rows[k:k + 2 * hr:2] for k, t in enumerate(taps))
  return (cols // 256).astype(np.uint8)


def extract_chips(image: np.ndarray, details: Sequence[ChipDetails]) -> np.ndarray:
  """dlib's extract_image_chips(img, details, chips) with bilinear interpolation: uint8
  chips (n, size, size, C), equal to `dlib.get_face_chips(img, shapes)` (one call over all
  faces of the image) and, with one face, to `dlib.get_face_chip` and to the chip inside
  `compute_face_descriptor(img, shape)`.

  What dlib does, step by step (dlib/image_transforms/interpolation.h): for each chip, the
  number of halvings `pyramid_levels` and a bounding box of its rotated rectangle grown by
  2 px, then by 2 * grow + 2 per halving, clipped to the image and rounded (lround); one
  pyramid (`pyramid_down`) of the union of those boxes; each chip is then interpolated
  bilinearly from the pyramid level it needs, its rectangle moved into the box's frame and
  halved with rect_down as many times (or from the full image when it needs none).
  Interpolating a large face straight from the photo would skip pixels (aliasing) and give
  other chips than dlib's. A chip whose rectangle is axis-aligned and exactly the chip's
  size is copied, as dlib's basic_extract_image_chip does. The pyramid is integer
  arithmetic on the host; the interpolation is `warp` (compiled, per shape bucket)."""
  img = np.asarray(image)
  if img.ndim == 2:
    img = np.repeat(img[..., None], 3, -1)
  h, w = img.shape[:2]
  out = [None] * len(details)
  depths = [pyramid_levels(d) for d in details]
  box = None  # dlib `rectangle` (l, t, r, b) ints; None: empty
  for d, n in zip(details, depths):
    grow = 2.0
    for _ in range(n):
      grow = grow * 2 + 2
    pts = _rotated_corners(d.rect, d.angle)
    g = (max(pts[:, 0].min() - grow, 0.0), max(pts[:, 1].min() - grow, 0.0),
         min(pts[:, 0].max() + grow, w - 1.0), min(pts[:, 1].max() + grow, h - 1.0))
    r = tuple(_lround(v) for v in g)
    if r[1] > r[3] or r[0] > r[2]:
      continue
    box = r if box is None else (min(box[0], r[0]), min(box[1], r[1]), max(box[2], r[2]),
                                 max(box[3], r[3]))
  levels = []
  if box is not None and max(depths, default=0) > 0:
    cur = img[box[1]:box[3] + 1, box[0]:box[2] + 1]
    for _ in range(max(depths)):
      cur = pyramid_down(cur)
      levels.append(cur)
  by_level: dict[int, list] = {}
  for i, (d, n) in enumerate(zip(details, depths)):
    l, t, r, b = d.rect
    if d.angle == 0 and d.size == r - l + 1 and d.size == b - t + 1:
      out[i] = _copy_rect(img, d)
      continue
    if n == 0 or box is None:
      by_level.setdefault(-1, []).append((i, _corner_matrix(d.rect, d.angle, d.size)))
      continue
    rect = (l - box[0], t - box[1], r - box[0], b - box[1])
    for _ in range(n):
      rect = _rect_down(rect)
    by_level.setdefault(n - 1, []).append((i, _corner_matrix(rect, d.angle, d.size)))
  for lev, items in by_level.items():
    src = img if lev < 0 else levels[lev]
    size = details[items[0][0]].size
    if src.shape[0] < 2 or src.shape[1] < 2:  # an empty level: every sample is outside
      for i, _ in items:
        out[i] = np.zeros((size, size, img.shape[-1]), np.uint8)
      continue
    for s in sorted({details[i].size for i, _ in items}):
      group = [(i, m) for i, m in items if details[i].size == s]
      chips = warp(src, np.stack([m for _, m in group]), s, as_uint8=True)
      for (i, _), c in zip(group, chips):
        out[i] = c
  if not out:
    return np.zeros((0, 0, 0, img.shape[-1]), np.uint8)
  return np.stack(out) if len({o.shape for o in out}) == 1 else out


def _copy_rect(img: np.ndarray, d: ChipDetails) -> np.ndarray:
  """dlib's basic_extract_image_chip: the pixels of the (lround-ed) rectangle, zeros
  outside the image."""
  l, t = (_lround(v) for v in d.rect[:2])
  chip = np.zeros((d.size, d.size, img.shape[-1]), np.uint8)
  y0, x0 = max(t, 0), max(l, 0)
  y1, x1 = min(t + d.size, img.shape[0]), min(l + d.size, img.shape[1])
  if y1 > y0 and x1 > x0:
    chip[y0 - t:y1 - t, x0 - l:x1 - l] = img[y0:y1, x0:x1]
  return chip
