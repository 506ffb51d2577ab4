"""Face detection with cascades (MTCNN, Cascade CNN), jit-compiled end to end.

    >>> from jaxvision.faces import detector
    >>> det = detector.mtcnn_detector()           # the original weights, from `mtcnn`
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
pixel coordinates. That geometry is `jaxvision.faces.boxes`, which sample mining uses too.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.core import checkpoint as jv_ckpt
from jaxvision.core.errors import CheckpointError, DataError
from jaxvision.faces.boxes import (apply_calibration, area_crops, bbreg, cell_windows,
                                   crop_regions, integral_image, nms, out_cells, pack_levels,
                                   packed_width, pyramid_scales, rerec, window_spans)
from jaxvision.faces.convert import load_mtcnn_weights
from jaxvision.faces.models import ONet, PNet, RNet, normalize

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
  # facenet-pytorch keeps every candidate: a busy 1280x720 photo has ~2300 P-Net candidates
  # (986 at the first level), ~1300 after the per-level NMS, and R-Net sees all of them.
  # Buffers below that drop candidates whose R-Net/O-Net boxes would have won (a 182 px face
  # at IoU 0.86, a 27 px one lost, with proposals 512 and stage2 256).
  per_scale: int = 256                      # stage-1 candidates kept per scale (before NMS)
  proposals: int = 2048                     # stage-1 candidates across scales (before NMS)
  stage2: int = 2048                        # crops given to R-Net / 24-net
  stage3: int = 64                          # crops given to O-Net / 48-net (= max faces)


# ---------------------------------------------------------------- buffers
def _top(scores, valid, k: int):
  """Indices of the k best valid entries (descending), and their validity."""
  n = scores.shape[0]
  s = jnp.where(valid, scores, NEG)
  if n < k:
    s = jnp.pad(s, (0, k - n), constant_values=NEG)
  v, idx = jax.lax.top_k(s, k)
  return jnp.minimum(idx, max(n - 1, 0)), v > NEG / 2


def _prob(logits):
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1]


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
    canvas = jax.lax.dynamic_update_slice(canvas, normalize(x), (oy, ox, 0))
    mask = mask | (((rows >= oy) & (rows < oy + hs - 2))[:, None]
                   & ((cols >= ox) & (cols < ox + ws - 2))[None, :])
  prob, reg = apply(canvas[None], mask[None])
  kind = cfg.kind
  n_max = max(out_cells(hs, kind) * out_cells(ws, kind) for _, hs, ws in levels)
  k1 = min(cfg.per_scale, n_max)
  per_level = []
  for (scale, hs, ws), (oy, ox) in zip(levels, offsets):
    hh, ww = out_cells(hs, kind), out_cells(ws, kind)
    p = jax.lax.dynamic_slice(prob, (oy // 2, ox // 2), (hh, ww)).reshape(-1)
    idx, ok = _top(p, p >= cfg.thresholds[0], k1)
    boxes = cell_windows(idx, ww, scale, window, rows=hh)
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



# ---------------------------------------------------------------- MTCNN, staged
# What each stage's shapes depend on (and so what it compiles for):
#   host   pyramid levels of each image, area-resampled from its integral image (numpy,
#          the same float32 operations as `boxes.area_crops` in jnp), packed into a canvas
#          of a size from CANVAS_SIDES; the crops of stages 2 and 3 (numpy, likewise)
#   P-Net  one program per (batch bucket, canvas height, canvas width): the net on the
#          canvas, every level's cells, NMS within each level then across levels
#   R-Net  one program per crop-count bucket, whatever the image sizes: the net on the
#          24x24 crops of every image of the batch, NMS within each image
#   O-Net  likewise on 48x48 crops, with landmarks and the last 'Min' NMS
# A folder of photos of N sizes compiles a handful of programs, not N cascades, and the
# persistent compilation cache (jaxvision.core.compile) keeps them between runs. The
# host does what depends on the image size: two small transfers between stages.
# x1.5 and x2 apart: a folder of 24 photos of 21 sizes lands on 14 canvases (a x1.25
# ladder: 20, with 15% less padding; powers of two: 9, with 27% more), and each canvas
# is one P-Net program.
CANVAS_SIDES = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144,
                8192, 12288, 16384)
MAX_BATCH = 8  # images whose crops R-Net and O-Net see together (their NMS: per image)
CROP_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
MAX_LEVELS = 24  # level-table slots; a 16384-pixel image has 21 levels at min_face 12


def _bucket(n: int, sizes) -> int:
  for b in sizes:
    if n <= b:
      return b
  return int(-(-n // sizes[-1]) * sizes[-1])


@dataclasses.dataclass
class _Prepared:
  """One image on the host: its integral image and its packed pyramid."""
  h: int
  w: int
  sat: np.ndarray                 # (h+1, w+1, 3) int64
  canvas: np.ndarray | None       # (Hc, Wc, 3) float32, normalised; None: no level
  mask: np.ndarray | None         # (Hc-2, Wc-2) bool: conv1 cells of some level
  levels: np.ndarray | None       # (MAX_LEVELS, 4) float32: oy/2, ox/2, scale, valid
  cells: np.ndarray | None        # (Hp, Wp) int32: level of each output cell, -1 none
  spans: np.ndarray | None = None  # (MAX_LEVELS, max(Hp, Wp), 2) float32: `window_spans`


def _prepare(image: np.ndarray, cfg: DetectorConfig) -> _Prepared:
  h, w = image.shape[:2]
  sat = integral_image(image)
  levels = pyramid_scales(h, w, cfg.min_face, cfg.factor)
  if not levels:
    return _Prepared(h, w, sat, None, None, None, None, None)
  if len(levels) > MAX_LEVELS:
    raise DataError(f"image of {w}x{h} pixels has {len(levels)} pyramid levels at "
                    f"min_face {cfg.min_face}; at most {MAX_LEVELS} are supported")
  sizes = [(hs, ws) for _, hs, ws in levels]
  offsets, (packed_h, width) = pack_levels(sizes, _bucket(packed_width(sizes), CANVAS_SIDES))
  hc = _bucket(packed_h, CANVAS_SIDES)
  canvas = np.zeros((hc, width, 3), np.float32)
  mask = np.zeros((hc - 2, width - 2), bool)
  hp, wp = out_cells(hc, cfg.kind), out_cells(width, cfg.kind)
  cells = np.full((hp, wp), -1, np.int32)
  table = np.zeros((MAX_LEVELS, 4), np.float32)
  spans = np.zeros((MAX_LEVELS, max(hp, wp), 2), np.float32)
  whole = np.array([[0, h, 0, w]], np.int32)
  for i, ((scale, hs, ws), (oy, ox)) in enumerate(zip(levels, offsets)):
    canvas[oy:oy + hs, ox:ox + ws] = normalize(area_crops(sat, whole, (hs, ws))[0])
    mask[oy:oy + hs - 2, ox:ox + ws - 2] = True
    rows, cols = out_cells(hs, cfg.kind), out_cells(ws, cfg.kind)
    if rows > 0 and cols > 0:
      cells[oy // 2:oy // 2 + rows, ox // 2:ox // 2 + cols] = i
      # the windows of this level's rows and columns, rounded as the reference rounds them
      spans[i, :max(rows, cols)] = window_spans(max(rows, cols), scale)
    table[i] = (oy // 2, ox // 2, scale, 1.0)
  return _Prepared(h, w, sat, canvas, mask, table, cells, spans)


def _mtcnn_stage1(pnet, pvars, canvas, mask, cells, table, spans, cfg: DetectorConfig,
                  k_out: int):
  """P-Net over a batch of packed canvases -> squared candidates (B, k_out, 4), scores, ok."""
  out = pnet.apply(pvars, canvas, pool_mask=mask)
  prob, reg = _prob(out["logits"]), out["box"]
  n_levels = table.shape[1]
  k1 = min(cfg.per_scale * n_levels, prob.shape[1] * prob.shape[2])

  def one(prob, reg, cells, table, spans):
    wp = prob.shape[1]
    flat = prob.reshape(-1)
    lev = cells.reshape(-1)
    idx, ok = _top(flat, (lev >= 0) & (flat >= cfg.thresholds[0]), k1)
    lv = jnp.maximum(lev[idx], 0)
    t = table[lv].astype(jnp.int32)
    xx = jnp.maximum(idx % wp - t[:, 1], 0)   # cell within its level (invalid slots: 0)
    yy = jnp.maximum(idx // wp - t[:, 0], 0)
    sx, sy = spans[lv, xx], spans[lv, yy]     # (K, 2): window start, end
    boxes = jnp.stack([sx[:, 0], sy[:, 0], sx[:, 1], sy[:, 1]], axis=1)
    sc, r = flat[idx], reg.reshape(-1, 4)[idx]
    # NMS within each level: one loop per level, vmapped (its trip count is the most
    # survivors of one level, not of all of them)
    keep = jax.vmap(lambda l: nms(boxes, sc, ok & (lv == l), cfg.nms[0]))(
        jnp.arange(n_levels)).any(0)
    idx, ok = _top(sc, keep, min(cfg.proposals, k1))
    boxes, sc, r = boxes[idx], sc[idx], r[idx]
    keep = nms(boxes, sc, ok, cfg.nms[1])                    # across levels
    boxes = rerec(bbreg(boxes, r, plus_one=False))
    ok, sc, boxes = _compact(k_out, sc, keep, boxes)
    return boxes, sc, ok

  return jax.vmap(one)(prob, reg, cells, table, spans)


def _mtcnn_refine(net, variables, crops, boxes, image, valid, threshold, nms_threshold,
                  last: bool):
  """R-Net (last=False) or O-Net (last=True) on the crops of a flattened batch; NMS within
  each image (`image` ids). -> boxes (N, 4), scores, keep, landmarks (N, 5, 2)."""
  out = net.apply(variables, normalize(crops))
  sc = _prob(out["logits"])
  ok = valid & (sc > threshold)
  per_image = lambda **kw: jax.vmap(lambda g: nms(boxes, sc, ok & (image == g), nms_threshold,
                                                  **kw))(jnp.arange(MAX_BATCH)).any(0)
  if not last:
    keep = per_image()
    return rerec(bbreg(boxes, out["box"])), sc, keep, jnp.zeros(boxes.shape[:1] + (5, 2))
  p = out["landmarks"]
  bw = boxes[:, 2] - boxes[:, 0] + 1
  bh = boxes[:, 3] - boxes[:, 1] + 1
  lm = jnp.stack([bw[:, None] * p[:, :5] + boxes[:, 0:1] - 1,
                  bh[:, None] * p[:, 5:] + boxes[:, 1:2] - 1], axis=-1)
  boxes = bbreg(boxes, out["box"])
  keep = per_image(mode="min", plus_one=True)
  return boxes, sc, keep, lm


def _best(scores: np.ndarray, keep: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k best kept entries, best first, ties by lower index (lax.top_k's)."""
  idx = np.flatnonzero(keep)
  return idx[np.argsort(-scores[idx], kind="stable")][:k]

# ---------------------------------------------------------------- Cascade CNN pipeline
def _cascade_one(nets, sat, h: int, w: int, cfg: DetectorConfig):
  """12-net -> 12-cal -> NMS -> 24-net -> 24-cal -> NMS -> 48-net -> global NMS -> 48-cal."""
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
    probs = jax.nn.softmax(net.apply(v, normalize(area_crops(sat, reg, size)))["logits"], -1)
    return jnp.where((ok & cok)[:, None],
                     apply_calibration(boxes, probs, cfg.calibration_threshold), boxes)

  boxes = calibrate("12cal", 12, boxes, ok)
  ok, sc, boxes = _compact(cfg.stage2 if "24net" in nets else k_out, sc, ok, boxes)
  if "24net" in nets:
    net, v = nets["24net"]
    reg, cok = crop_regions(boxes, h, w)
    sc = _prob(net.apply(v, normalize(area_crops(sat, reg, 24)))["logits"])
    ok = ok & cok & (sc > cfg.thresholds[1])
    boxes = calibrate("24cal", 24, boxes, ok)
    ok = nms(boxes, sc, ok, cfg.nms[2])
    ok, sc, boxes = _compact(k_out, sc, ok, boxes)
  if "48net" in nets:
    net, v = nets["48net"]
    reg, cok = crop_regions(boxes, h, w)
    sc = _prob(net.apply(v, normalize(area_crops(sat, reg, 48)))["logits"])
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
    if config.kind == "mtcnn":
      cfg = config
      k1 = cfg.stage2 if "rnet" in nets else cfg.stage3
      pnet, rnet, onet = (self._modules.get(k) for k in MTCNN_STAGES)
      self._stages = {
          "pnet": lambda v, *a: _mtcnn_stage1(pnet, v, *a, cfg, k1),
          "rnet": lambda v, *a: _mtcnn_refine(rnet, v, *a, cfg.thresholds[1], cfg.nms[2], False),
          "onet": lambda v, *a: _mtcnn_refine(onet, v, *a, cfg.thresholds[2], cfg.nms[3], True)}
      self._jitted = {k: jax.jit(f) for k, f in self._stages.items()}

  def _run(self, variables, images):
    """Cascade CNN: images (B, H, W, 3) uint8 -> boxes (B, K, 4), scores, landmarks, valid."""
    _, h, w, _ = images.shape
    nets = {k: (self._modules[k], v) for k, v in variables.items()}
    sats = jax.vmap(integral_image)(images)
    return jax.vmap(lambda s: _cascade_one(nets, s, h, w, self.config))(sats)

  def _mtcnn_raw(self, images: list[np.ndarray], jit: bool) -> dict[str, np.ndarray]:
    """The staged MTCNN cascade over images of any sizes (module comment above)."""
    cfg, k_out = self.config, self.config.stage3
    run = self._jitted if jit else self._stages
    prep = [_prepare(im, cfg) for im in images]
    n = len(images)
    boxes = np.zeros((n, k_out, 4), np.float32)
    scores = np.zeros((n, k_out), np.float32)
    lms = np.zeros((n, k_out, 5, 2), np.float32)
    valid = np.zeros((n, k_out), bool)
    live = [i for i, p in enumerate(prep) if p.canvas is not None]
    if not live:
      return {"boxes": boxes, "scores": scores, "landmarks": lms, "valid": valid}
    # Stage 1: one image at a time, one program per canvas size (a batch dimension would
    # multiply the programs by the batch sizes and save nothing on a CPU).
    cand = {}
    for i in live:
      cand.update(self._first(run["pnet"], prep, [i], *prep[i].canvas.shape[:2]))
    for stage, size in (("rnet", 24), ("onet", 48)):
      if stage not in self.variables:
        break
      cand = self._refine(run[stage], self.variables[stage], prep, cand, size)
    for i, (b, s, lm) in cand.items():
      order = _best(s, np.ones(len(s), bool), k_out)
      m = len(order)
      boxes[i, :m], scores[i, :m], lms[i, :m], valid[i, :m] = b[order], s[order], lm[order], True
    return {"boxes": boxes, "scores": scores, "landmarks": lms, "valid": valid}

  def _first(self, fn, prep, members, hc: int, wc: int):
    """P-Net over the images `members`, whose canvases are all hc x wc."""
    cfg = self.config
    nb = len(members)
    canvas = np.zeros((nb, hc, wc, 3), np.float32)
    mask = np.zeros((nb, hc - 2, wc - 2), bool)
    cells = np.full((nb, out_cells(hc, cfg.kind), out_cells(wc, cfg.kind)), -1, np.int32)
    n_levels = max(int(prep[i].levels[:, 3].sum()) for i in members)
    n_levels = 16 if n_levels <= 16 else MAX_LEVELS  # two level counts: no extra programs
    table = np.zeros((nb, n_levels, 4), np.float32)
    spans = np.zeros((nb, n_levels) + prep[members[0]].spans.shape[1:], np.float32)
    for j, i in enumerate(members):
      p = prep[i]
      canvas[j], mask[j], cells[j], table[j] = p.canvas, p.mask, p.cells, p.levels[:n_levels]
      spans[j] = p.spans[:n_levels]
    b1, s1, ok1 = (np.asarray(t) for t in fn(self.variables["pnet"], canvas, mask, cells, table,
                                                 spans))
    return {i: (b1[j][ok1[j]], s1[j][ok1[j]], np.zeros((int(ok1[j].sum()), 5, 2), np.float32))
            for j, i in enumerate(members)}

  def _refine(self, fn, variables, prep, cand, size: int):
    """One later stage over every image's candidates, flattened into one crop batch; each
    image keeps its `stage3` best survivors (the buffer of the last stage)."""
    keys = [i for i in cand if len(cand[i][0])]
    n = sum(len(cand[i][0]) for i in keys)
    if n == 0:
      return {i: c for i, c in cand.items()}
    nb = _bucket(n, CROP_BUCKETS)
    crops = np.zeros((nb, size, size, 3), np.float32)
    boxes = np.zeros((nb, 4), np.float32)
    image = np.full((nb,), -1, np.int32)
    ok = np.zeros((nb,), bool)
    at = 0
    for i in keys:
      b = cand[i][0]
      reg, cok = crop_regions(b, prep[i].h, prep[i].w)
      crops[at:at + len(b)] = area_crops(prep[i].sat, reg, size)
      boxes[at:at + len(b)], image[at:at + len(b)], ok[at:at + len(b)] = b, i, cok
      at += len(b)
    b2, s2, keep, lm2 = (np.asarray(t) for t in fn(variables, crops, boxes, image, ok))
    out = {}
    for i in cand:
      sel = np.flatnonzero((image == i) & keep)
      sel = sel[np.argsort(-s2[sel], kind="stable")][:self.config.stage3]
      out[i] = (b2[sel], s2[sel], lm2[sel])
    return out

  def raw(self, images, jit: bool = True) -> dict[str, np.ndarray]:
    """Fixed-size outputs of the cascade for a (B, H, W, 3) uint8 batch (or, for MTCNN, a
    list of images of any sizes): per image the valid entries first, best score first."""
    if self.config.kind == "mtcnn":
      ims = ([as_rgb_batch(im)[0] for im in images] if isinstance(images, (list, tuple))
             else list(as_rgb_batch(images)))
      parts = [self._mtcnn_raw(ims[i:i + MAX_BATCH], jit) for i in range(0, len(ims), MAX_BATCH)]
      return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    images = as_rgb_batch(images)
    fn = self._fn if jit else self._run
    b, s, lm, ok = fn(self.variables, jnp.asarray(images))
    return {"boxes": np.asarray(b), "scores": np.asarray(s), "landmarks": np.asarray(lm),
            "valid": np.asarray(ok)}

  def detect(self, images, jit: bool = True) -> list[list[dict]]:
    """Per image, faces sorted by score: {"box", "score", "landmarks"} (input pixels).
    `images`: one image, a (B, H, W, C) batch, or (MTCNN) a list of images of any sizes."""
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
  (alpha dropped; `jaxvision.core.io.load_image_file` composites it on white instead)."""
  x = np.asarray(images)
  if x.dtype != np.uint8:
    if np.issubdtype(x.dtype, np.floating) and x.size and x.max() <= 1.0:
      raise DataError("images must be uint8 0..255 (got floats in [0, 1]; multiply by 255)")
    x = np.clip(np.round(x), 0, 255).astype(np.uint8)
  if x.ndim == 2:  # one grey image
    x = x[None, ..., None]
  elif x.ndim == 3:  # (H, W, C) single image, or (B, H, W) grey batch
    x = x[None] if x.shape[-1] in (1, 3, 4) else x[..., None]
  if x.ndim != 4:
    raise DataError(f"images must be (H, W[, C]) or (B, H, W, C), got shape {np.shape(images)}")
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  elif x.shape[-1] == 4:
    x = x[..., :3]
  elif x.shape[-1] != 3:
    raise DataError(f"images need 1, 3 or 4 channels, got {x.shape[-1]}")
  return np.ascontiguousarray(x)


def mtcnn_detector(source: str = "auto", **config) -> FaceDetector:
  """MTCNN with the original weights (see convert.load_mtcnn_weights)."""
  v = load_mtcnn_weights(source)
  nets = {"pnet": (PNet(), v["pnet"]), "rnet": (RNet(), v["rnet"]), "onet": (ONet(), v["onet"])}
  return FaceDetector(nets, DetectorConfig(kind="mtcnn", **config))


class CascadeWorkdirError(CheckpointError, ValueError):
  """A workdir that holds no usable face cascade (a ValueError too, as it always was)."""


CONVERTED_MTCNN = "mtcnn"  # model name of `jaxvision convert --model mtcnn` workdirs
_MTCNN_NETS = {"pnet": PNet, "rnet": RNet, "onet": ONet}


def _workdir_stages(workdir: str, seen=None) -> dict[str, tuple[Any, dict]]:
  """{stage: (module, variables)} from a trained workdir and its data.previous_stages,
  or the three nets of a converted MTCNN workdir."""
  seen = set() if seen is None else seen
  key = os.path.realpath(workdir)
  if key in seen:
    return {}
  seen.add(key)
  if not os.path.isfile(os.path.join(workdir, jv_ckpt.CONFIG_FILE)):
    raise CascadeWorkdirError(f"{workdir}: not a workdir (no {jv_ckpt.CONFIG_FILE})")
  name = jv_ckpt.load_config(workdir).model.name
  if name == CONVERTED_MTCNN:
    _, variables, _ = jv_ckpt.load_variables(workdir)
    params = variables["params"]
    missing = [n for n in _MTCNN_NETS if n not in params]
    if missing:
      raise CascadeWorkdirError(f"{workdir}: a converted MTCNN workdir without "
                                f"{', '.join(missing)}")
    return {n: (net(), {"params": params[n]}) for n, net in _MTCNN_NETS.items()}
  if name not in STAGE_MODELS:
    raise CascadeWorkdirError(f"{workdir}: holds {name!r}, not a face-detection stage "
                              f"({', '.join(STAGE_MODELS)})")
  config, model, variables, _ = jv_ckpt.load_model(workdir)
  out = {}
  data = config.get("data") or {}
  for prev in (data.get("previous_stages") or []):
    if not os.path.isabs(prev) and not os.path.isdir(prev):  # relative to the workdir's folder
      prev = os.path.join(os.path.dirname(os.path.abspath(workdir)), prev)
    out.update(_workdir_stages(prev, seen))
  out[STAGE_MODELS[name]] = (model, variables)
  return out


def detector_from_workdir(workdir: str, **config) -> FaceDetector:
  """The cascade of a trained workdir (and the earlier stages it lists), or of a
  converted MTCNN workdir (`jaxvision convert --model mtcnn`)."""
  nets = _workdir_stages(workdir)
  kind = "mtcnn" if any(s in nets for s in MTCNN_STAGES) else "cascade-cnn"
  if kind == "mtcnn" and any(s in nets for s in CASCADE_STAGES):
    raise CascadeWorkdirError(f"{workdir}: mixes MTCNN and Cascade CNN stages")
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
