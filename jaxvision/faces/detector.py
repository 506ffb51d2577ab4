"""Face detection with cascades (MTCNN, Cascade CNN), jit-compiled end to end.

    >>> from jaxvision import faces
    >>> det = faces.mtcnn_detector()              # the original weights, from `mtcnn`
    >>> det.detect(batch_uint8)                   # (B, H, W, 3) -> per image: list of faces
    [[{"box": [x1, y1, x2, y2], "score": 0.99, "landmarks": [[x, y] * 5]}], ...]

The whole cascade (image pyramid, P-Net per scale, NMS, crops, R-Net, O-Net) is one
jitted function of a batch of same-size images, compiled once per (batch, height,
width). Candidates live in fixed-size buffers (top-k + validity masks): no per-box
Python loop and no host round trip between stages. Buffer sizes (`DetectorConfig`)
cap the work; beyond them the lowest-scoring candidates are dropped.

Numerics follow facenet-pytorch's `detect_face` (davidsandberg's port of the MATLAB
original) so the original weights give its detections: 'area' resampling (adaptive
average pooling) for the pyramid and the crops, computed exactly from an integer
integral image; P-Net windows floor((2*i + 1) / scale) .. floor((2*i + 12) / scale);
regression and squaring as there; crops of the box clipped to the image (1-based
MATLAB convention); IoU NMS without '+1' in stages 1-2 and 'Min' NMS with '+1' after
O-Net; landmarks relative to the O-Net input box. Boxes are returned in those same
pixel coordinates.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

NEG = -1e9  # score of an empty buffer slot


# ---------------------------------------------------------------- configuration
@dataclasses.dataclass(frozen=True)
class DetectorConfig:
  """Detection settings (paper defaults) and the fixed buffer sizes.

  nms: (within a scale, across scales, after stage 2, after stage 3). For MTCNN the last
  uses the 'Min' overlap (intersection over the smaller box); Cascade CNN uses IoU.
  """
  kind: str = "mtcnn"                       # "mtcnn" | "cascade-cnn"
  min_face: float = 20.0
  factor: float = 0.709
  thresholds: tuple = (0.6, 0.7, 0.7)
  nms: tuple = (0.5, 0.7, 0.7, 0.7)
  calibration_threshold: float = 0.1        # Cascade CNN: patterns averaged above this
  per_scale: int = 256                      # stage-1 candidates kept per scale (before NMS)
  proposals: int = 512                      # stage-1 candidates across scales (before NMS)
  stage2: int = 256                         # crops given to R-Net / 24-net
  stage3: int = 64                          # crops given to O-Net / 48-net (= max faces)


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


# ---------------------------------------------------------------- building blocks
def integral_image(image):
  """(H, W, C) integer image -> int32 (H+1, W+1, C) summed-area table.

  int32 may wrap for huge images, but every window sum below 2**31 still comes out
  exact (two's complement differences), so area means are exact for uint8 input.
  """
  s = jnp.cumsum(jnp.cumsum(image.astype(jnp.int32), axis=0), axis=1)
  return jnp.pad(s, ((1, 0), (1, 0), (0, 0)))


def _bins(start, length, n: int):
  """Adaptive-pool windows [lo, hi) of n outputs over [start, start + length)."""
  i = jnp.arange(n, dtype=jnp.int32)
  lo = start[..., None] + (i * length[..., None]) // n
  hi = start[..., None] - ((-(i + 1) * length[..., None]) // n)
  return lo, hi


def area_crops(sat, regions, size: int | tuple[int, int]):
  """Area-resampled crops ('adaptive average pooling', torch interpolate mode='area').

  sat: (H+1, W+1, C) from `integral_image`; regions: (K, 4) int32 rows
  (y0, y1, x0, x1), half-open and inside the image. Returns float32 (K, oh, ow, C)
  in the image's value range; empty regions give zeros.
  """
  oh, ow = (size, size) if isinstance(size, int) else size
  regions = regions.astype(jnp.int32)
  ys, ye = _bins(regions[:, 0], regions[:, 1] - regions[:, 0], oh)
  xs, xe = _bins(regions[:, 2], regions[:, 3] - regions[:, 2], ow)

  def one(ys, ye, xs, xe):
    g = lambda r, c: sat[r[:, None], c[None, :]]
    v = g(ye, xe) - g(ys, xe) - g(ye, xs) + g(ys, xs)
    n = (ye - ys)[:, None] * (xe - xs)[None, :]
    return v.astype(jnp.float32) / jnp.maximum(n, 1).astype(jnp.float32)[..., None]

  return jax.vmap(one)(ys, ye, xs, xe)


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


def overlap(box, boxes, mode: str = "union", plus_one: bool = False):
  """Overlap of one box (4,) with boxes (K, 4): IoU ('union') or over the smaller ('min')."""
  e = 1.0 if plus_one else 0.0
  area = lambda b: (b[..., 2] - b[..., 0] + e) * (b[..., 3] - b[..., 1] + e)
  iw = jnp.maximum(jnp.minimum(box[2], boxes[:, 2]) - jnp.maximum(box[0], boxes[:, 0]) + e, 0.0)
  ih = jnp.maximum(jnp.minimum(box[3], boxes[:, 3]) - jnp.maximum(box[1], boxes[:, 1]) + e, 0.0)
  inter = iw * ih
  a, b = area(box), area(boxes)
  denom = jnp.minimum(a, b) if mode == "min" else a + b - inter
  return inter / jnp.maximum(denom, 1e-12)


def nms(boxes, scores, valid, threshold: float, mode: str = "union", plus_one: bool = False):
  """Greedy non-maximum suppression on a fixed-size buffer -> keep mask (K,).

  Highest score first (ties: lower index first); a box is suppressed when its overlap
  with a kept box exceeds `threshold`. Loops once per kept box (lax.while_loop), so
  the cost follows the number of survivors, not K. vmap it for batches.
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
    alive = alive & ~(overlap(boxes[i], boxes, mode, plus_one) > threshold)
    return alive.at[i].set(False), keep

  _, keep = jax.lax.while_loop(cond, body, (valid, jnp.zeros((k,), bool)))
  return keep


def _top(scores, valid, k: int):
  """Indices of the k best valid entries (descending), and their validity."""
  n = scores.shape[0]
  s = jnp.where(valid, scores, NEG)
  if n < k:
    s = jnp.pad(s, (0, k - n), constant_values=NEG)
  v, idx = jax.lax.top_k(s, k)
  return jnp.minimum(idx, max(n - 1, 0)), v > NEG / 2


def rerec(b):
  """Boxes to squares around the same centre (side = the longer side)."""
  w = b[:, 2] - b[:, 0]
  h = b[:, 3] - b[:, 1]
  l = jnp.maximum(w, h)
  x1 = b[:, 0] + w * 0.5 - l * 0.5
  y1 = b[:, 1] + h * 0.5 - l * 0.5
  return jnp.stack([x1, y1, x1 + l, y1 + l], axis=1)


def bbreg(b, reg):
  """Box regression with the MATLAB '+1' widths (stages 2 and 3)."""
  w = b[:, 2] - b[:, 0] + 1
  h = b[:, 3] - b[:, 1] + 1
  return b + reg * jnp.stack([w, h, w, h], axis=1)


def crop_regions(b, h: int, w: int):
  """The reference's integer crop of each box, clipped to the image (1-based, like
  MATLAB) -> (K, 4) half-open (y0, y1, x0, x1) and validity (non-empty)."""
  bi = jnp.trunc(b).astype(jnp.int32)
  x = jnp.maximum(bi[:, 0], 1)
  y = jnp.maximum(bi[:, 1], 1)
  ex = jnp.minimum(bi[:, 2], w)
  ey = jnp.minimum(bi[:, 3], h)
  ok = (ey > y - 1) & (ex > x - 1)
  reg = jnp.stack([y - 1, jnp.maximum(ey, y - 1), x - 1, jnp.maximum(ex, x - 1)], axis=1)
  return jnp.clip(reg, 0, jnp.array([h, h, w, w])), ok


def _normalise(x):
  return (x - 127.5) * 0.0078125


def _prob(logits):
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1]


# ---------------------------------------------------------------- MTCNN pipeline
def pack_levels(sizes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], tuple[int, int]]:
  """Shelf-packs pyramid levels (h, w) into one canvas at even offsets (the nets'
  stride is 2, so every level keeps its own output grid) -> (offsets, canvas size)."""
  even = lambda n: n + (n & 1)
  width = even(sizes[0][1]) + (even(sizes[1][1]) if len(sizes) > 1 else 0)
  offsets, x, y, shelf = [], 0, 0, 0
  for h, w in sizes:
    if x > 0 and x + even(w) > width:
      x, y, shelf = 0, y + shelf, 0
    offsets.append((y, x))
    x += even(w)
    shelf = max(shelf, even(h))
  return offsets, (y + shelf, width)


def _out_cells(n: int, kind: str) -> int:
  """Output cells of the fully convolutional first stage on n input pixels."""
  if kind == "mtcnn":  # conv3, pool 2/2 (ceil), conv3, conv3
    return -(-(n - 2) // 2) - 4
  return -(-(n - 5) // 2) - 3  # cascade 12-net: conv3, pool 3/2 (ceil), conv5


def _stage1(apply, sat, h, w, cfg: DetectorConfig, window: int = 12):
  """P-Net / 12-net over the pyramid -> candidate boxes (P, 4), scores, regression, keep.

  All levels are area-resampled into one canvas and the net runs once on it (one
  compiled convolution instead of one per scale); `pool_mask` keeps each level's max
  pooling exactly as if it ran alone. apply(x, pool_mask) -> (prob map, box map or None).
  """
  levels = pyramid_scales(h, w, cfg.min_face, cfg.factor)
  if not levels:
    return None
  offsets, (hc, wc) = pack_levels([(hs, ws) for _, hs, ws in levels])
  canvas = jnp.zeros((hc, wc, 3), jnp.float32)
  rows = jnp.arange(hc - 2)
  cols = jnp.arange(wc - 2)
  mask = jnp.zeros((hc - 2, wc - 2), bool)
  for (_, hs, ws), (oy, ox) in zip(levels, offsets):
    x = area_crops(sat, jnp.array([[0, h, 0, w]], jnp.int32), (hs, ws))[0]
    canvas = jax.lax.dynamic_update_slice(canvas, _normalise(x), (oy, ox, 0))
    mask = mask | (((rows >= oy) & (rows < oy + hs - 2))[:, None]
                   & ((cols >= ox) & (cols < ox + ws - 2))[None, :])
  prob, reg = apply(canvas[None], mask[None])
  kind = cfg.kind
  n_max = max(_out_cells(hs, kind) * _out_cells(ws, kind) for _, hs, ws in levels)
  k1 = min(cfg.per_scale, n_max)
  per_level = []
  for (scale, hs, ws), (oy, ox) in zip(levels, offsets):
    hh, ww = _out_cells(hs, kind), _out_cells(ws, kind)
    p = jax.lax.dynamic_slice(prob, (oy // 2, ox // 2), (hh, ww)).reshape(-1)
    idx, ok = _top(p, p >= cfg.thresholds[0], k1)
    yy, xx = (idx // ww).astype(jnp.float32), (idx % ww).astype(jnp.float32)
    sc32 = jnp.float32(scale)
    boxes = jnp.stack([jnp.floor((2 * xx + 1) / sc32), jnp.floor((2 * yy + 1) / sc32),
                       jnp.floor((2 * xx + window) / sc32), jnp.floor((2 * yy + window) / sc32)],
                      axis=1)
    if reg is not None:
      r = jax.lax.dynamic_slice(reg, (oy // 2, ox // 2, 0), (hh, ww, 4)).reshape(-1, 4)[idx]
    else:
      r = jnp.zeros((k1, 4))
    per_level.append((boxes, p[idx], r, ok))
  boxes, sc, r, ok = (jnp.stack(t) for t in zip(*per_level))  # (S, K1, ...)
  keep = jax.vmap(lambda b, s, v: nms(b, s, v, cfg.nms[0]))(boxes, sc, ok)
  flat = lambda t: t.reshape((-1,) + t.shape[2:])
  boxes, sc, r, ok = flat(boxes), flat(sc), flat(r), flat(keep)
  idx, ok = _top(sc, ok, min(cfg.proposals, sc.shape[0]))
  boxes, sc, r = boxes[idx], sc[idx], r[idx]
  keep = nms(boxes, sc, ok, cfg.nms[1])
  return boxes, sc, r, keep


def _compact(k, scores, valid, *arrays):
  idx, ok = _top(scores, valid, k)
  return (ok, scores[idx]) + tuple(a[idx] for a in arrays)


def _bucketed(fn, n_valid, k: int, buckets: tuple, *arrays):
  """fn on the first b of the k rows of each (B, k, ...) array, b the smallest bucket
  holding every valid row of the batch (rows are compacted: valid ones first); outputs
  are zero-padded back to k rows. One `lax.switch` branch per bucket is compiled, and
  only the chosen one runs, so a later stage costs what its survivors need, not its
  buffer (O-Net on 64 crops cost 50 ms of a 200 ms CPU detection when 8 survived)."""
  sizes = tuple(b for b in buckets if b < k) + (k,)
  which = jnp.searchsorted(jnp.asarray(sizes), jnp.max(n_valid))

  def branch(b):
    def run(arrays):
      out = fn(*(a[:, :b] for a in arrays))
      return jax.tree.map(lambda o: jnp.pad(o, [(0, 0), (0, k - b)] + [(0, 0)] * (o.ndim - 2)),
                          out)
    return run

  return jax.lax.switch(jnp.minimum(which, len(sizes) - 1), [branch(b) for b in sizes], arrays)


def _apply_crops(net, variables, sats, boxes, size: int, h: int, w: int):
  """Batched crops (B, b, 4) -> (outputs of the net with (B, b, ...) leaves, crop validity)."""
  reg, cok = jax.vmap(lambda b: crop_regions(b, h, w))(boxes)
  crops = jax.vmap(lambda s, r: area_crops(s, r, size))(sats, reg)
  bsz, n = boxes.shape[:2]
  out = net.apply(variables, _normalise(crops.reshape((bsz * n, size, size, 3))))
  return jax.tree.map(lambda o: o.reshape((bsz, n) + o.shape[1:]), out), cok


STAGE2_BUCKETS = (32, 64, 128, 192)  # R-Net batch sizes compiled below cfg.stage2
STAGE3_BUCKETS = (8, 16, 32)     # O-Net batch sizes compiled below cfg.stage3


def _mtcnn(nets, sats, h: int, w: int, cfg: DetectorConfig):
  """The MTCNN cascade over a batch of summed-area tables (B, H+1, W+1, 3)."""
  (pnet, pvars), stage2, stage3 = nets["pnet"], nets.get("rnet"), nets.get("onet")
  bsz, k_out = sats.shape[0], cfg.stage3
  if not pyramid_scales(h, w, cfg.min_face, cfg.factor):
    # image smaller than one 12-pixel window at min_face: nothing to find
    return (jnp.zeros((bsz, k_out, 4)), jnp.zeros((bsz, k_out)), jnp.zeros((bsz, k_out, 5, 2)),
            jnp.zeros((bsz, k_out), bool))

  def apply_p(x, pool_mask):
    out = pnet.apply(pvars, x, pool_mask=pool_mask)
    return _prob(out["logits"])[0], out["box"][0]

  def first(sat):
    boxes, sc, r, ok = _stage1(apply_p, sat, h, w, cfg)
    wh = jnp.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    boxes = rerec(boxes + r * jnp.concatenate([wh, wh], axis=1))
    return _compact(cfg.stage2 if stage2 else k_out, sc, ok, boxes)

  ok, sc, boxes = jax.vmap(first)(sats)
  lm = jnp.zeros(boxes.shape[:2] + (5, 2))

  if stage2 is not None:
    rnet, rvars = stage2
    out, cok = _bucketed(lambda b: _apply_crops(rnet, rvars, sats, b, 24, h, w),
                         ok.sum(1), boxes.shape[1], STAGE2_BUCKETS, boxes)

    def second(boxes, ok, cok, logits, reg):
      sc = _prob(logits)
      ok = ok & cok & (sc > cfg.thresholds[1])
      keep = nms(boxes, sc, ok, cfg.nms[2])
      return _compact(k_out, sc, keep, rerec(bbreg(boxes, reg)))

    ok, sc, boxes = jax.vmap(second)(boxes, ok, cok, out["logits"], out["box"])
    lm = jnp.zeros((bsz, k_out, 5, 2))

  if stage3 is not None:
    onet, ovars = stage3
    out, cok = _bucketed(lambda b: _apply_crops(onet, ovars, sats, b, 48, h, w),
                         ok.sum(1), boxes.shape[1], STAGE3_BUCKETS, boxes)

    def third(boxes, ok, cok, logits, reg, p):
      sc = _prob(logits)
      ok = ok & cok & (sc > cfg.thresholds[2])
      bw = boxes[:, 2] - boxes[:, 0] + 1
      bh = boxes[:, 3] - boxes[:, 1] + 1
      lm = jnp.stack([bw[:, None] * p[:, :5] + boxes[:, 0:1] - 1,
                      bh[:, None] * p[:, 5:] + boxes[:, 1:2] - 1], axis=-1)
      boxes = bbreg(boxes, reg)
      keep = nms(boxes, sc, ok, cfg.nms[3], mode="min", plus_one=True)
      return _compact(k_out, sc, keep, boxes, lm)

    ok, sc, boxes, lm = jax.vmap(third)(boxes, ok, cok, out["logits"], out["box"],
                                        out["landmarks"])
  return boxes, sc, lm, ok


# ---------------------------------------------------------------- Cascade CNN pipeline
def _cascade_one(nets, sat, h: int, w: int, cfg: DetectorConfig):
  """12-net -> 12-cal -> NMS -> 24-net -> 24-cal -> NMS -> 48-net -> global NMS -> 48-cal."""
  from jaxvision.models.mtcnn import apply_calibration
  k_out = cfg.stage3
  net12, v12 = nets["12net"]

  def apply_12(x, pool_mask):
    return _prob(net12.apply(v12, x, pool_mask=pool_mask)["logits"])[0], None

  s1 = _stage1(apply_12, sat, h, w, cfg)
  if s1 is None:
    return (jnp.zeros((k_out, 4)), jnp.zeros((k_out,)), jnp.zeros((k_out, 5, 2)),
            jnp.zeros((k_out,), bool))
  boxes, sc, _, ok = s1

  def calibrate(name, size, boxes, ok):
    if name not in nets:
      return boxes
    net, v = nets[name]
    reg, cok = crop_regions(boxes, h, w)
    probs = jax.nn.softmax(net.apply(v, _normalise(area_crops(sat, reg, size)))["logits"], -1)
    return jnp.where((ok & cok)[:, None],
                     apply_calibration(boxes, probs, cfg.calibration_threshold), boxes)

  boxes = calibrate("12cal", 12, boxes, ok)
  ok, sc, boxes = _compact(cfg.stage2 if "24net" in nets else k_out, sc, ok, boxes)
  if "24net" in nets:
    net, v = nets["24net"]
    reg, cok = crop_regions(boxes, h, w)
    sc = _prob(net.apply(v, _normalise(area_crops(sat, reg, 24)))["logits"])
    ok = ok & cok & (sc > cfg.thresholds[1])
    boxes = calibrate("24cal", 24, boxes, ok)
    ok = nms(boxes, sc, ok, cfg.nms[2])
    ok, sc, boxes = _compact(k_out, sc, ok, boxes)
  if "48net" in nets:
    net, v = nets["48net"]
    reg, cok = crop_regions(boxes, h, w)
    sc = _prob(net.apply(v, _normalise(area_crops(sat, reg, 48)))["logits"])
    ok = ok & cok & (sc > cfg.thresholds[2])
    ok = nms(boxes, sc, ok, cfg.nms[3])  # global NMS, then the last calibration
    boxes = calibrate("48cal", 48, boxes, ok)
    ok, sc, boxes = _compact(k_out, sc, ok, boxes)
  return boxes, sc, jnp.zeros((boxes.shape[0], 5, 2)), ok


# ---------------------------------------------------------------- the detector
MTCNN_STAGES = ("pnet", "rnet", "onet")
CASCADE_STAGES = ("12net", "12cal", "24net", "24cal", "48net", "48cal")
STAGE_MODELS = {"mtcnn-pnet": "pnet", "mtcnn-rnet": "rnet", "mtcnn-onet": "onet",
                **{f"cascade-{s}": s for s in CASCADE_STAGES}}


class FaceDetector:
  """A compiled face-detection cascade.

  nets: {stage: (linen module, variables)} with stages from MTCNN_STAGES or
  CASCADE_STAGES; the first stage is required, later ones may be missing (the cascade
  then stops early, e.g. to inspect a partly trained cascade).
  """

  def __init__(self, nets: dict[str, tuple[Any, dict]], config: DetectorConfig = DetectorConfig()):
    first = "pnet" if config.kind == "mtcnn" else "12net"
    if first not in nets:
      raise ValueError(f"a {config.kind} detector needs its first stage {first!r}; "
                       f"got {', '.join(nets) or 'none'}")
    self.config = config
    self._modules = {k: m for k, (m, _) in nets.items()}
    self.variables = {k: jax.tree.map(jnp.asarray, v) for k, (_, v) in nets.items()}
    self._fn = jax.jit(self._run)

  def _run(self, variables, images):
    """images (B, H, W, 3) uint8 -> boxes (B, K, 4), scores, landmarks (B, K, 5, 2), valid."""
    _, h, w, _ = images.shape
    nets = {k: (self._modules[k], v) for k, v in variables.items()}
    sats = jax.vmap(integral_image)(images)
    if self.config.kind == "mtcnn":
      return _mtcnn(nets, sats, h, w, self.config)
    return jax.vmap(lambda s: _cascade_one(nets, s, h, w, self.config))(sats)

  def raw(self, images, jit: bool = True) -> dict[str, np.ndarray]:
    """Fixed-size outputs of the compiled cascade for a (B, H, W, 3) uint8 batch."""
    images = as_rgb_batch(images)
    fn = self._fn if jit else self._run
    b, s, lm, ok = fn(self.variables, jnp.asarray(images))
    return {"boxes": np.asarray(b), "scores": np.asarray(s), "landmarks": np.asarray(lm),
            "valid": np.asarray(ok)}

  def detect(self, images, jit: bool = True) -> list[list[dict]]:
    """Per image, faces sorted by score: {"box", "score", "landmarks"} (input pixels)."""
    r = self.raw(images, jit=jit)
    with_landmarks = self.config.kind == "mtcnn" and "onet" in self.variables
    out = []
    for b, s, lm, ok in zip(r["boxes"], r["scores"], r["landmarks"], r["valid"]):
      out.append([{"box": [float(v) for v in b[i]], "score": float(s[i]),
                   "landmarks": [[float(x), float(y)] for x, y in lm[i]] if with_landmarks else []}
                  for i in np.flatnonzero(ok)])
    return out


def as_rgb_batch(images) -> np.ndarray:
  """uint8 (B, H, W, 3) from one image or a batch; grey (H, W[, 1]) and RGBA accepted
  (alpha dropped; `data.load_image_file` composites it on white instead)."""
  x = np.asarray(images)
  if x.dtype != np.uint8:
    if np.issubdtype(x.dtype, np.floating) and x.size and x.max() <= 1.0:
      raise ValueError("images must be uint8 0..255 (got floats in [0, 1]; multiply by 255)")
    x = np.clip(np.round(x), 0, 255).astype(np.uint8)
  if x.ndim == 2:  # one grey image
    x = x[None, ..., None]
  elif x.ndim == 3:  # (H, W, C) single image, or (B, H, W) grey batch
    x = x[None] if x.shape[-1] in (1, 3, 4) else x[..., None]
  if x.ndim != 4:
    raise ValueError(f"images must be (H, W[, C]) or (B, H, W, C), got shape {np.shape(images)}")
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  elif x.shape[-1] == 4:
    x = x[..., :3]
  elif x.shape[-1] != 3:
    raise ValueError(f"images need 1, 3 or 4 channels, got {x.shape[-1]}")
  return np.ascontiguousarray(x)


def mtcnn_detector(source: str = "auto", **config) -> FaceDetector:
  """MTCNN with the original weights (see models.mtcnn.load_mtcnn_weights)."""
  from jaxvision.models import mtcnn as M
  v = M.load_mtcnn_weights(source)
  nets = {"pnet": (M.PNet(), v["pnet"]), "rnet": (M.RNet(), v["rnet"]),
          "onet": (M.ONet(), v["onet"])}
  return FaceDetector(nets, DetectorConfig(kind="mtcnn", **config))


def _workdir_stages(workdir: str, seen=None) -> dict[str, tuple[Any, dict]]:
  """{stage: (module, variables)} from a trained workdir and its data.previous_stages."""
  from jaxvision import checkpoint as jv_ckpt
  from jaxvision import models
  seen = set() if seen is None else seen
  key = os.path.realpath(workdir)
  if key in seen:
    return {}
  seen.add(key)
  if not os.path.isfile(os.path.join(workdir, jv_ckpt.CONFIG_FILE)):
    raise ValueError(f"{workdir}: not a workdir (no {jv_ckpt.CONFIG_FILE})")
  config, variables, _ = jv_ckpt.load_variables(workdir)
  name = config.model.name
  if name not in STAGE_MODELS:
    raise ValueError(f"{workdir}: holds {name!r}, not a face-detection stage "
                     f"({', '.join(STAGE_MODELS)})")
  out = {}
  data = config.get("data") or {}
  for prev in (data.get("previous_stages") or []):
    prev = prev if os.path.isabs(prev) else os.path.join(os.path.dirname(os.path.abspath(workdir)), prev) \
        if not os.path.isdir(prev) else prev
    out.update(_workdir_stages(prev, seen))
  kwargs = dict(config.model.get("kwargs") or {})
  out[STAGE_MODELS[name]] = (models.create(name, **kwargs), variables)
  return out


def detector_from_workdir(workdir: str, **config) -> FaceDetector:
  """The cascade of a trained workdir (and the earlier stages it lists)."""
  nets = _workdir_stages(workdir)
  kind = "mtcnn" if any(s in nets for s in MTCNN_STAGES) else "cascade-cnn"
  if kind == "mtcnn" and any(s in nets for s in CASCADE_STAGES):
    raise ValueError(f"{workdir}: mixes MTCNN and Cascade CNN stages")
  return FaceDetector(nets, DetectorConfig(kind=kind, **config))


# ---------------------------------------------------------------- drawing
def draw_faces(image: np.ndarray, faces: list[dict]) -> np.ndarray:
  """RGB uint8 copy with boxes (green), scores and landmarks (red) drawn."""
  from PIL import Image, ImageDraw
  im = Image.fromarray(as_rgb_batch(image)[0])
  d = ImageDraw.Draw(im)
  lw = max(1, round(max(im.size) / 400))
  for f in faces:
    x1, y1, x2, y2 = f["box"]
    d.rectangle([x1, y1, x2, y2], outline=(0, 255, 0), width=lw)
    d.text((x1 + 2, y1 + 2), f"{f['score']:.2f}", fill=(0, 255, 0))
    r = 1.5 * lw
    for x, y in f.get("landmarks") or []:
      d.ellipse([x - r, y - r, x + r, y + r], fill=(255, 0, 0))
  return np.asarray(im)


# ---------------------------------------------------------------- command line
def detect_faces_cmd(args) -> None:
  from jaxvision import data
  from jaxvision.cli import CliError
  from jaxvision.models.mtcnn import MTCNNWeightsError

  if not args.json.lower().endswith(".json"):
    raise CliError(f"{args.json}: --json must name a .json file")
  out_dir = os.path.dirname(os.path.abspath(args.json))
  if not os.path.isdir(out_dir):
    raise CliError(f"{args.json}: output folder {out_dir} does not exist")
  if args.draw and os.path.exists(args.draw) and not os.path.isdir(args.draw):
    raise CliError(f"{args.draw}: --draw must be a folder")
  images = {}
  for p in args.inputs:
    try:
      images[p] = data.load_image_file(p)  # grey, palette, RGBA (on white) -> RGB uint8
    except data.DataError as e:
      raise CliError(str(e)) from None
  try:
    if args.checkpoint:
      from jaxvision import checkpoint as jv_ckpt
      try:
        det = detector_from_workdir(args.checkpoint)
      except jv_ckpt.CheckpointError as e:
        raise CliError(str(e)) from None
      if args.model and args.model != det.config.kind:
        raise CliError(f"{args.checkpoint}: holds a {det.config.kind} cascade, not {args.model}")
    elif (args.model or "mtcnn") == "mtcnn":
      det = mtcnn_detector(args.weights)
    else:
      raise CliError("--model cascade-cnn needs --checkpoint WORKDIR (a trained cascade; "
                     "there are no released Cascade CNN weights)")
  except (MTCNNWeightsError, ValueError) as e:
    raise CliError(str(e).splitlines()[0]) from None

  t = time.time()
  by_size: dict[tuple, list[str]] = {}
  for p, im in images.items():  # one compile per image size, a batch per size
    by_size.setdefault(im.shape, []).append(p)
  result: dict[str, list] = {}
  for shape, paths in by_size.items():
    for i in range(0, len(paths), args.batch):
      chunk = paths[i:i + args.batch]
      for p, faces in zip(chunk, det.detect(np.stack([images[p] for p in chunk]))):
        result[p] = faces
  result = {p: result[p] for p in args.inputs}  # the order given
  data.atomic_write(args.json, lambda f: f.write(json.dumps(result, indent=1)), binary=False)
  if args.draw:
    from PIL import Image
    os.makedirs(args.draw, exist_ok=True)
    used: set[str] = set()
    for p in args.inputs:
      stem = os.path.splitext(os.path.basename(p))[0]
      name, n = stem, 1
      while name in used:
        n += 1
        name = f"{stem}_{n}"
      used.add(name)
      drawn = draw_faces(images[p], result[p])
      data.atomic_write(os.path.join(args.draw, name + ".png"),
                        lambda f, a=drawn: Image.fromarray(a).save(f, format="PNG"))
  n = sum(len(v) for v in result.values())
  print(f"{len(result)} image(s), {n} face(s) -> {args.json}"
        + (f", drawings in {args.draw}" if args.draw else "") + f" ({time.time() - t:.2f}s)")


def add_commands(sub) -> None:
  """Adds this family's subcommands to the `jaxvision` parser."""
  p = sub.add_parser(
      "detect-faces", help="find faces (boxes, scores, five landmarks) with MTCNN or Cascade CNN",
      description="Runs a face-detection cascade, compiled end to end, on image files. Without "
      "--checkpoint it uses MTCNN with the original weights from the installed `mtcnn` package "
      "(pip install mtcnn).")
  p.add_argument("inputs", nargs="+", metavar="IN", help="image files (grey and RGBA work too)")
  p.add_argument("--json", required=True, metavar="OUT.json",
                 help='writes {input path: [{"box": [x1, y1, x2, y2], "score", "landmarks"}]}')
  p.add_argument("--draw", metavar="OUT_DIR", help="also write PNGs with the detections drawn")
  p.add_argument("--model", choices=("mtcnn", "cascade-cnn"), default=None,
                 help="cascade family (default mtcnn; cascade-cnn needs --checkpoint)")
  p.add_argument("--checkpoint", metavar="WORKDIR",
                 help="a trained last-stage workdir; earlier stages come from its config's "
                 "data.previous_stages")
  p.add_argument("--weights", default="auto",
                 help="MTCNN weights: auto (default), mtcnn, facenet-pytorch, or a folder/file "
                 "of .pt/.npz/.safetensors")
  p.add_argument("--batch", type=int, default=8, help="images of one size run together (default 8)")
  p.set_defaults(func=detect_faces_cmd)
