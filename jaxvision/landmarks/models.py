"""Landmark models: dlib's regression-tree cascade (evaluated in JAX), PFLD and (in
facemesh.py) MediaPipe's face mesh.

Architectures only (ARCHITECTURE.md rule 5): reading dlib's files is `dlib_ert.py` and
`convert.py`, the pose fit and losses are `pose.py` / `task.py`.

Compute dtype: each model has `dtype` (None, the default: float32 as always) and
`param_dtype` (float32). PFLD's convolutions and dense layers compute in `dtype`
("bfloat16" on GPU/TPU), its batch-norm statistics in float32 (flax's), and its outputs
are cast to float32. dlib's ERT cascade accepts `dtype` but always computes in float32:
its work is gathers and comparisons of pixel differences with split thresholds (no matrix
products for bf16 to speed up), and thresholds or shapes rounded to bf16 would send faces
down other branches of the trees than dlib's.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.core.registry import register_model


# ---------------------------------------------------------------- dlib's ERT cascade
def grey_like_dlib(images: jax.Array) -> jax.Array:
  """dlib's intensity of a pixel: an RGB pixel's grey value is (r + g + b) / 3 in integer
  arithmetic (`assign_pixel` from rgb_pixel to unsigned char, dlib/pixel.h), a grey pixel
  is itself. (B, H, W, 3) or (B, H, W, 1) or (B, H, W) -> (B, H, W) float32 holding
  integers 0..255 (for uint8 input; float input is floored the same way)."""
  x = jnp.asarray(images).astype(jnp.float32)
  if x.ndim == 4:
    if x.shape[-1] == 3:
      return jnp.floor((x[..., 0] + x[..., 1] + x[..., 2]) / 3.0)
    if x.shape[-1] == 1:
      return x[..., 0]
    raise ValueError(f"images with {x.shape[-1]} channels: expected 1 or 3")
  return x


def similarity_2x2(from_pts: jax.Array, to_pts: jax.Array) -> jax.Array:
  """The 2x2 scale-rotation part of the least-squares similarity from_pts -> to_pts.

  dlib (`find_similarity_transform`) uses Umeyama's SVD formulas, including the sign
  fix-up that keeps a proper rotation. In 2-D that optimum has a closed form: with both
  point sets centred, M = [[a, -b], [b, a]], a = sum(f . t) / sum|f|^2 and
  b = sum(f x t) / sum|f|^2, which is exactly Umeyama's c * R (R = U S V^T, c =
  trace(D S) / sigma_from) for any input, with no SVD. Only M is needed: dlib applies the
  transform's 2x2 matrix to the feature offsets and adds the anchor point's position, so
  the translation never enters. A single point (P = 1) gives the identity, as in dlib.
  """
  if from_pts.shape[-2] == 1:
    return jnp.broadcast_to(jnp.eye(2, dtype=from_pts.dtype), from_pts.shape[:-2] + (2, 2))
  f = from_pts - from_pts.mean(-2, keepdims=True)
  t = to_pts - to_pts.mean(-2, keepdims=True)
  ff = jnp.sum(f * f, (-2, -1))
  a = jnp.sum(f * t, (-2, -1)) / ff
  b = jnp.sum(f[..., 0] * t[..., 1] - f[..., 1] * t[..., 0], -1) / ff
  return jnp.stack([jnp.stack([a, -b], -1), jnp.stack([b, a], -1)], -2)


def rect_to_image(pts: jax.Array, rects: jax.Array) -> jax.Array:
  """dlib's `unnormalizing_tform(rect)`: (0, 0) -> (left, top), (1, 1) -> (right, bottom).

  A dlib rectangle is inclusive (right = left + width - 1), and the map sends 1 to the
  right/bottom pixel itself, so the scale is right - left, not the width. pts (B, K, 2),
  rects (B, 4) as (left, top, right, bottom)."""
  lt = rects[:, None, :2]
  return lt + pts * (rects[:, None, 2:] - lt)


def round_like_dlib(x: jax.Array) -> jax.Array:
  """dlib's float -> integer point conversion: floor(x + 0.5) (dlib/geometry/vector.h)."""
  return jnp.floor(x + 0.5)


def _gather_rows(table: jax.Array, rows: jax.Array) -> jax.Array:
  """table[rows] for a 2-D table and 1-D in-bounds row indices: one gather of whole
  rows (slice (1, width)), which XLA:CPU emits as row copies; the indices are the
  caller's own (split and leaf numbers checked when the file was read), so no clamp."""
  dn = jax.lax.GatherDimensionNumbers(offset_dims=(1,), collapsed_slice_dims=(0,),
                                      start_index_map=(0,))
  return jax.lax.gather(table, rows[:, None], dn, (1, table.shape[1]),
                        mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _walk_trees(vals: jax.Array, ix: jax.Array, thr: jax.Array, depth: int) -> jax.Array:
  """The leaf each face reaches in each tree: vals (F, B) feature-pixel intensities (the
  batch last), ix (T, S, 2) split pixel indices, thr (T, S) -> (T, B) int32 leaf numbers.

  Every split of every tree is decided first, go[t, i, b] = value[idx1] - value[idx2] >
  thresh (True: to the left child 2i + 1), with row gathers of the (F, B) values; the
  path is then followed level by level with selects among the level's 2^d nodes. XLA
  fuses all of it into one loop over (T, B); the former level-by-level gathers (node
  -> split indices -> values) made 3 dependent gathers per level and ran 1.5x slower.
  The comparison is dlib's own, in float32, on integer intensities: the differences are
  exact, so every face takes dlib's branches."""
  t, s = thr.shape
  b = vals.shape[1]
  a = _gather_rows(vals, ix[..., 0].reshape(-1)).reshape(t, s, b)
  c = _gather_rows(vals, ix[..., 1].reshape(-1)).reshape(t, s, b)
  go = a - c > thr[..., None]                                   # (T, S, B)
  node = jnp.zeros((t, b), jnp.int32)
  for d in range(depth):
    lo = 2 ** d - 1
    left = go[:, lo]
    for k in range(1, 2 ** d):
      left = jnp.where(node == lo + k, go[:, lo + k], left)
    node = jnp.where(left, 2 * node + 1, 2 * node + 2)
  return node - s


class DlibERT(nn.Module):
  """dlib's shape predictor (Kazemi & Sullivan 2014, an ensemble of regression trees),
  batched over faces.

  Per cascade c, starting from the mean shape (in the face rectangle's unit frame):
    1. M = the similarity from the mean shape to the current one (2x2 part);
    2. feature pixel k sits at M @ deltas[c, k] + current[anchor[c, k]] (unit frame),
       mapped to the image by the rectangle, rounded to the nearest pixel; its value is
       that pixel's grey intensity, 0 outside the image (`extract_feature_pixel_values`);
    3. each of the T trees walks `depth` levels: at node i go to the left child 2i + 1
       when value[idx1] - value[idx2] > thresh, else to the right 2i + 2; the leaf's
       increment (P, 2) is added to the shape; all T trees read the same pixel values, so
       they are evaluated together and their increments summed.
  The result is mapped to image pixels by the rectangle. dlib returns the points rounded
  to integers (`round_like_dlib`); these are the unrounded floats.

  Call: `images` (N, H, W[, C]) uint8 or float 0..255 (RGB is converted to grey as dlib
  does), `rects` (B, 4) face rectangles (left, top, right, bottom; default each image's
  full rectangle, B = N), `image_index` (B,) which image each face is in (default
  arange(B), or all 0 for a single image), `sizes` (N, 2) the valid (height, width) of
  each image when the batch is padded (default H, W). Returns (B, P, 2) float32 (x, y)
  points.

  Parameters: the float tables in "params" (initial_shape, thresh, leaves, deltas); the
  integer ones (split indices, anchors) in the "tables" collection (they are not trained
  and take no gradient).
  """
  num_points: int = 68
  num_cascades: int = 15
  num_trees: int = 500
  depth: int = 4
  num_features: int = 500
  dtype: Any = None               # accepted; the cascade computes in float32 (see above)
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, rects=None, image_index=None, sizes=None):
    p, c, t, f = self.num_points, self.num_cascades, self.num_trees, self.num_features
    s = 2 ** self.depth - 1
    zeros, pdt = nn.initializers.zeros, self.param_dtype
    initial = self.param("initial_shape", lambda k, sh, d: jnp.full(sh, 0.5, d), (p, 2), pdt)
    thresh = self.param("thresh", zeros, (c, t, s), pdt)
    leaves = self.param("leaves", nn.initializers.normal(1e-3), (c, t, s + 1, p, 2), pdt)
    deltas = self.param("deltas", zeros, (c, f, 2), pdt)
    idx = self.variable("tables", "idx", lambda: jnp.zeros((c, t, s, 2), jnp.int32)).value
    anchor = self.variable("tables", "anchor", lambda: jnp.zeros((c, f), jnp.int32)).value

    grey = grey_like_dlib(images)                      # (N, H, W)
    n, h, w = grey.shape
    if sizes is None:
      sizes = jnp.broadcast_to(jnp.array([h, w], jnp.float32), (n, 2))
    sizes = jnp.asarray(sizes, jnp.float32)
    if rects is None:
      rects = jnp.concatenate([jnp.zeros((n, 2)), sizes[:, ::-1] - 1], -1)
    rects = jnp.asarray(rects, jnp.float32)
    b = rects.shape[0]
    if image_index is None:  # one image: every face is in it; else face i in image i
      if n != 1 and n != b:
        raise ValueError(f"{b} rectangles for {n} images: pass image_index")
      image_index = jnp.zeros(b, jnp.int32) if n == 1 else jnp.arange(b)
    image_index = jnp.asarray(image_index, jnp.int32)
    hw = sizes[image_index]                             # (B, 2)
    flat = grey.reshape(n * h * w)

    def sample(pts_unit):                               # (B, F, 2) -> (B, F) intensities
      q = round_like_dlib(rect_to_image(pts_unit, rects))
      x, y = q[..., 0], q[..., 1]
      inside = (x >= 0) & (y >= 0) & (x < hw[:, None, 1]) & (y < hw[:, None, 0])
      xi = jnp.clip(x, 0, w - 1).astype(jnp.int32)
      yi = jnp.clip(y, 0, h - 1).astype(jnp.int32)
      v = flat[image_index[:, None] * (h * w) + yi * w + xi]
      return jnp.where(inside, v, 0.0)

    # The leaf table as rows (C * T * L, 2P): a bitcast of the stored (C, T, L, P, 2)
    # array, so converted files and workdirs load unchanged; the scan indexes it with the
    # cascade number instead of slicing a (T, L, P, 2) block out of it as an `xs`
    # (a 4 MB copy per cascade).
    leaf_rows = leaves.reshape(c * t * (s + 1), 2 * p).astype(jnp.float32)
    unroll = max(1, min(25, t))

    def cascade(shape, xs):                            # shape (B, P, 2)
      ci, thr, delta, ix, anc = xs
      m = similarity_2x2(jnp.broadcast_to(initial, shape.shape), shape)   # (B, 2, 2)
      pts = jnp.einsum("bij,fj->bfi", m, delta) + shape[:, anc]           # (B, F, 2)
      vals = sample(pts).T                                                # (F, B)
      leaf = _walk_trees(vals, ix, thr, self.depth)                       # (T, B)
      rows = (ci * t + jnp.arange(t)[:, None]) * (s + 1) + leaf          # (T, B)

      # dlib's order: the shape plus tree 0's leaf, plus tree 1's, ... one (B, 2P)
      # row gather and add per tree. A loop over the trees (unrolled by 25) keeps the
      # accumulator in cache; the gather of all (T, B, 2P) rows and a sum over trees
      # (the former code) wrote and re-read 17 MB per cascade at batch 64 and was 2.5x
      # slower. The sum being in dlib's order is also what keeps the points identical.
      def add_tree(k, acc):
        return acc + _gather_rows(leaf_rows, jax.lax.dynamic_index_in_dim(rows, k, 0, False))

      acc = jax.lax.fori_loop(0, t, add_tree, shape.reshape(b, 2 * p), unroll=unroll)
      return acc.reshape(b, p, 2), None

    # A scan over the cascades (one compiled body): unrolling the 15 cascades compiled
    # 5-8x longer and ran no faster at batch 64 in our measurements.
    shape0 = jnp.broadcast_to(initial, (b, p, 2)).astype(jnp.float32)
    shape, _ = jax.lax.scan(cascade, shape0, (jnp.arange(c), thresh, deltas, idx, anchor))
    return rect_to_image(shape, rects)


@register_model("dlib_ert_68")
def dlib_ert_68(**kw) -> DlibERT:
  """dlib's 68-point (iBUG 300-W markup) predictor: 15 cascades x 500 trees, depth 4."""
  return DlibERT(**{"num_points": 68, "num_features": 500, **kw})


@register_model("dlib_ert_5")
def dlib_ert_5(**kw) -> DlibERT:
  """dlib's 5-point predictor (eye corners and the base of the nose), 800 features."""
  return DlibERT(**{"num_points": 5, "num_features": 800, **kw})


# ---------------------------------------------------------------- PFLD
def _ch(c: int, width: float) -> int:
  """Channels at a width multiplier, at least 8 and a multiple of 8 when above 8."""
  return max(8, int(round(c * width / 8)) * 8) if c * width > 8 else 8


class _ConvBN(nn.Module):
  features: int
  kernel: int = 3
  stride: int = 1
  groups: int = 1
  relu: bool = True
  padding: str = "SAME"
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Conv(self.features, (self.kernel,) * 2, (self.stride,) * 2, padding=self.padding,
                feature_group_count=self.groups, use_bias=False, **dt)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, **dt)(x)
    return nn.relu(x) if self.relu else x


class _Bottleneck(nn.Module):
  """MobileNetV2's inverted residual: 1x1 expand (t), 3x3 depthwise (stride), 1x1 linear
  projection; a residual when the stride is 1 and the channels are unchanged."""
  features: int
  expand: int
  stride: int
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = _ConvBN(c * self.expand, 1, **dt)(x, train)
    h = _ConvBN(c * self.expand, 3, self.stride, groups=c * self.expand, **dt)(h, train)
    h = _ConvBN(self.features, 1, relu=False, **dt)(h, train)
    return x + h if self.stride == 1 and c == self.features else h


class PFLD(nn.Module):
  """PFLD (Guo et al. 2019, "A Practical Facial Landmark Detector"), Table 1.

  Backbone on a 112 x 112 face crop (sizes for 112): conv3x3/2 64, depthwise 3x3 64,
  bottlenecks (t, c, n, s) = (2, 64, 5, 2), (2, 128, 1, 2), (4, 128, 6, 1), (2, 16, 1, 1);
  then S1 = that 14x14x16 map, S2 = conv3x3/2 32 (7x7), S3 = conv7x7 128 (VALID, 1x1); the
  multi-scale head concatenates the global averages of S1, S2 and S3 (16 + 32 + 128) into
  one fully connected layer of 2P outputs: the points (x, y) in the crop's unit frame.

  The auxiliary head (training only) reads the 28x28 map after the first bottleneck
  stage: conv3x3/2 128, conv3x3 128, conv3x3/2 32, conv7x7 128, max pool, fc 32, fc 3: the
  yaw, pitch and roll (radians) that weight the loss. It is always built (so that a
  model initialised for inference can be trained), and returned only when train=True.

  `width` multiplies every channel count (PFLD 1X = 1.0, 0.25X = 0.25); `input_size`
  must be a multiple of 16 (the S3 kernel is input_size / 16, 7 at 112); `repeats`
  (default the paper's 5 and 6) shortens the two repeated stages for quick tests.
  """
  num_points: int = 68
  width: float = 1.0
  input_size: int = 112
  repeats: Sequence[int] = (5, 6)   # the (2, 64) and (4, 128) stages' bottleneck counts
  dtype: Any = None                 # compute dtype (module docstring); None: float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.shape[1] != self.input_size or x.shape[2] != self.input_size:
      # the registry sweep and odd callers: resize to the size the head is built for
      x = jax.image.resize(x, (x.shape[0], self.input_size, self.input_size, x.shape[3]),
                           "bilinear")
    if self.input_size % 16:
      raise ValueError(f"PFLD input_size {self.input_size}: must be a multiple of 16")
    w = lambda c: _ch(c, self.width)
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = _ConvBN(w(64), 3, 2, **dt)(x, train)
    x = _ConvBN(w(64), 3, 1, groups=w(64), **dt)(x, train)
    for i in range(self.repeats[0]):
      x = _Bottleneck(w(64), 2, 2 if i == 0 else 1, **dt)(x, train)
    aux_in = x                                       # 28 x 28 at 112
    x = _Bottleneck(w(128), 2, 2, **dt)(x, train)
    for _ in range(self.repeats[1]):
      x = _Bottleneck(w(128), 4, 1, **dt)(x, train)
    s1 = _Bottleneck(16, 2, 1, **dt)(x, train)       # 14 x 14 x 16 (not width-scaled)
    s2 = _ConvBN(32, 3, 2, **dt)(s1, train)          # 7 x 7 x 32
    k = self.input_size // 16
    s3 = nn.relu(nn.Conv(128, (k, k), padding="VALID", **dt)(s2))   # 1 x 1 x 128
    feats = jnp.concatenate([s1.mean((1, 2)), s2.mean((1, 2)), s3.mean((1, 2))], -1)
    # bias 0.5: the points start at the crop's centre, not wherever a random bias puts them
    landmarks = nn.Dense(2 * self.num_points, name="fc",
                         bias_init=nn.initializers.constant(0.5), **dt)(feats)
    landmarks = landmarks.astype(jnp.float32)

    a = _ConvBN(128, 3, 2, **dt)(aux_in, train)
    a = _ConvBN(128, 3, 1, **dt)(a, train)
    a = _ConvBN(32, 3, 2, **dt)(a, train)
    a = _ConvBN(128, k, 1, **dt)(a, train)
    a = a.max((1, 2))
    a = nn.Dense(32, name="aux_fc1", **dt)(a)
    angles = nn.Dense(3, name="aux_fc2", **dt)(a).astype(jnp.float32)
    return {"landmarks": landmarks, "angles": angles} if train else {"landmarks": landmarks}


@register_model("pfld")
def pfld(**kw) -> PFLD:
  """PFLD with `width` (1.0 = PFLD 1X, 0.25 = 0.25X) and `input_size` (112)."""
  return PFLD(**kw)


# ---------------------------------------------------------------- MediaPipe face mesh
# The architecture is its own file (facemesh.py); importing it here registers `facemesh`
# with the family's other models.
from jaxvision.landmarks.facemesh import FaceMesh, facemesh  # noqa: E402,F401
# CFAN (coarse-to-fine auto-encoders) is its own file too (cfan.py).
from jaxvision.landmarks.cfan import CFAN, cfan  # noqa: E402,F401
