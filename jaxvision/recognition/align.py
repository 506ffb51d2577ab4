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
dlib shrinks a face whose chip rectangle is more than about twice the chip side with an image
pyramid (pyramid_down<2>) before interpolating; `warp` does not (it interpolates the full
image), so for faces over about 300 px in the photo the chips differ slightly (aliasing).

MTCNN's five landmarks (eye centres, nose tip, mouth corners) are other points than dlib's.
`DLIB_MTCNN_TEMPLATE` is where MTCNN's points fall, on average, in dlib's own 150-px chips
(padding 0.25) of the same faces: fitted once by `fit_template` on faces of the embedded
photos (benchmarks/peers/recognition_dlib.py gives dlib's chips, this project's MTCNN the
landmarks; the test measures the chip and descriptor differences on the same faces).
"""
from __future__ import annotations

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
  chip pixel -> image point (see the module docstring for the rectangle convention)."""
  chip_pts = (padding + DLIB_5PT) / (2 * padding + 1) * size
  m = similarity(chip_pts, parts)
  scale = np.hypot(m[0, 0], m[1, 0])
  rot = m[:, :2] / scale
  centre = _apply(m, np.array([[size / 2.0, size / 2.0]]))[0]
  step = (size * scale - 1.0) / (size - 1.0)
  lin = rot * step
  return np.concatenate([lin, (centre - lin @ np.full(2, (size - 1) / 2.0))[:, None]], 1)


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
