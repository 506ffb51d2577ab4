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
                                   pyramid_scales, rerec)
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
  per_scale: int = 256                      # stage-1 candidates kept per scale (before NMS)
  proposals: int = 512                      # stage-1 candidates across scales (before NMS)
  stage2: int = 256                         # crops given to R-Net / 24-net
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


# ---------------------------------------------------------------- MTCNN pipeline
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
    boxes = cell_windows(idx, ww, scale, window)
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
  out = net.apply(variables, normalize(crops.reshape((bsz * n, size, size, 3))))
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
    boxes = rerec(bbreg(boxes, r, plus_one=False))
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
