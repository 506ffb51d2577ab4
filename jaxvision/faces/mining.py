"""Training samples for face-detection cascades (MTCNN, Cascade CNN), mined from face boxes.

Samples (MTCNN's recipe): windows around every face and anywhere in the image are labelled
by their best IoU with the faces: positive > 0.65, part 0.4..0.65, negative < 0.3 (0.3..0.4
is dropped); faces with landmarks also give landmark samples. Targets: box offsets
(gt - window) / window size in x1, y1, x2, y2 order; landmarks (x1..x5, y1..y5) as fractions
of the window (O-Net's output layout). Categories: 0 negative, 1 positive, 2 part,
3 landmark. Batches mix negative:positive:part:landmark = 3:1:1:2 (config `mix`, in that
order); an empty category's share is given to the others.

Later stages are trained on what the earlier ones let through: `propose()` takes the first
stage's windows over the image pyramid (the cells P-Net / 12-net score at detection time)
and runs every previous stage on the surviving windows (box regression and squaring for
MTCNN, pattern averaging for the calibration nets), with the detector's own geometry
(`jaxvision.faces.boxes`: the same windows, crops, regression, squaring and calibration).
Face records come from `jaxvision.faces.data`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np

from jaxvision.core import checkpoint as jv_ckpt
from jaxvision.core.errors import CheckpointError, DataError
from jaxvision.faces.boxes import (CAL_SCALES, CAL_SHIFTS, apply_calibration, area_crops, bbreg,
                                   calibration_windows, crop_regions, crop_resize,
                                   integral_image, iou_matrix, pyramid_windows, rerec)
from jaxvision.faces.models import normalize

NEG, POS, PART, LANDMARK = 0, 1, 2, 3
CATEGORIES = ("negative", "positive", "part", "landmark")
POS_IOU, PART_IOU, NEG_IOU = 0.65, 0.4, 0.3
# Horizontal flip: left eye <-> right eye, left mouth corner <-> right mouth corner.
LANDMARK_FLIP = np.array([1, 0, 2, 4, 3])


# --------------------------------------------------------------------------------------------
# Labels and targets
# --------------------------------------------------------------------------------------------

def categorize(max_iou: np.ndarray) -> np.ndarray:
  """Best IoU with any face -> NEG (< 0.3), PART (0.4..0.65), POS (> 0.65), or -1 (dropped)."""
  m = np.asarray(max_iou)
  return np.select([m > POS_IOU, m >= PART_IOU, m < NEG_IOU], [POS, PART, NEG], -1).astype(np.int8)


def box_targets(windows: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """Regression targets: (gt - window) / window width (x) or height (y), x1,y1,x2,y2 order."""
  w = (windows[:, 2] - windows[:, 0])[:, None]
  h = (windows[:, 3] - windows[:, 1])[:, None]
  scale = np.concatenate([w, h, w, h], axis=1)
  return ((gt - windows) / np.maximum(scale, 1e-6)).astype(np.float32)


def landmark_targets(windows: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
  """(K,5,2) pixel (x, y) -> (K,10) (x1..x5, y1..y5) as fractions of each window."""
  w = (windows[:, 2] - windows[:, 0])[:, None]
  h = (windows[:, 3] - windows[:, 1])[:, None]
  x = (landmarks[..., 0] - windows[:, 0:1]) / np.maximum(w, 1e-6)
  y = (landmarks[..., 1] - windows[:, 1:2]) / np.maximum(h, 1e-6)
  return np.concatenate([x, y], axis=1).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Mining
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MiningOptions:
  size: int = 12                  # crop side: 12 (P-Net, 12-net), 24, 48
  negatives_per_image: int = 50   # random windows anywhere (kept when IoU < 0.3 with every face)
  windows_per_face: int = 20      # perturbed windows per face (-> positive / part / negative)
  landmark_per_face: int = 10     # perturbed windows per face with landmarks (IoU > 0.65 kept)
  min_face: float = 12.0          # smaller (and ignored) faces give no positive/part samples
  calibration: bool = False       # Cascade CNN calibration samples instead (45 patterns)


def _random_squares(rng, n, lo, hi, h, w):
  s = rng.uniform(lo, max(lo, hi), n)
  x = rng.uniform(0, np.maximum(w - s, 0) + 1e-3)
  y = rng.uniform(0, np.maximum(h - s, 0) + 1e-3)
  return np.stack([x, y, x + s, y + s], axis=1).astype(np.float32)


def _perturb(rng, faces, k, shift=0.2, scale=(0.8, 1.25)):
  """k squares per face: side sqrt(w h) * U(scale), centre moved by U(-shift, shift) * (w, h)."""
  f = np.repeat(faces, k, axis=0)
  w, h = f[:, 2] - f[:, 0], f[:, 3] - f[:, 1]
  s = np.sqrt(w * h) * rng.uniform(*scale, len(f))
  cx = f[:, 0] + w / 2 + rng.uniform(-shift, shift, len(f)) * w
  cy = f[:, 1] + h / 2 + rng.uniform(-shift, shift, len(f)) * h
  return np.stack([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2], axis=1).astype(np.float32)


def _empty(size):
  return {"crops": np.zeros((0, size, size, 3), np.uint8), "label": np.zeros((0,), np.int8),
          "box": np.zeros((0, 4), np.float32), "landmarks": np.zeros((0, 10), np.float32)}


def label_windows(windows, boxes, landmarks=None, ignore=None):
  """Windows (K,4) against faces (N,4) -> (category (K,), box targets (K,4) to the best face,
  landmark targets (K,10) (NaN where the best face has none)). Windows overlapping an ignored
  face by >= 0.3 are dropped (-1): they are neither clean negatives nor usable positives."""
  windows = np.asarray(windows, np.float32).reshape(-1, 4)
  k = len(windows)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  if len(boxes) == 0:
    return (np.full(k, NEG, np.int8), np.zeros((k, 4), np.float32),
            np.full((k, 10), np.nan, np.float32))
  iou = iou_matrix(windows, boxes)
  ign = np.zeros(len(boxes), bool) if ignore is None else np.asarray(ignore, bool)
  best = np.argmax(np.where(ign[None], -1.0, iou), axis=1)
  cat = categorize(np.max(np.where(ign[None], 0.0, iou), axis=1))
  if ign.any():
    cat = np.where(np.max(np.where(ign[None], iou, 0.0), axis=1) >= NEG_IOU, -1, cat).astype(np.int8)
  tb = box_targets(windows, boxes[best])
  lm = np.full((k, 10), np.nan, np.float32)
  if landmarks is not None:
    lm = landmark_targets(windows, np.asarray(landmarks, np.float32)[best])
  return cat, tb, lm


def mine_image(record: dict, opts: MiningOptions, rng: np.random.Generator,
               proposals: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Training samples from one image: crops (K,S,S,3) uint8, label (K,) in {0,1,2,3} (or the
  calibration pattern), box (K,4), landmarks (K,10).

  Windows: `negatives_per_image` random squares (side 12 .. min(H,W)/2), `windows_per_face`
  perturbations of each face (side x0.8..1.25, centre +-20%), `landmark_per_face` tighter ones
  (x0.9..1.1, +-10%) of faces with landmarks, and `proposals` (windows that the previous stages
  let through), all labelled by `label_windows`."""
  image, boxes = record["image"], np.asarray(record["boxes"], np.float32).reshape(-1, 4)
  lms = np.asarray(record.get("landmarks", np.full((len(boxes), 5, 2), np.nan)), np.float32)
  ignore = np.asarray(record.get("ignore", np.zeros(len(boxes), bool)), bool)
  h, w = image.shape[:2]
  fw, fh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  usable = (np.minimum(fw, fh) >= opts.min_face) & ~ignore
  faces = boxes[usable]
  if opts.calibration:
    return _mine_calibration(image, faces, opts, rng, proposals)
  parts = [_random_squares(rng, opts.negatives_per_image, 12, min(h, w) / 2, h, w),
           _perturb(rng, faces, opts.windows_per_face)]
  if proposals is not None:
    parts.append(np.asarray(proposals, np.float32).reshape(-1, 4))
  windows = np.concatenate(parts)
  cat, tb, lm = label_windows(windows, boxes, lms, ignore)
  # A positive/part window needs a face big enough to be one (tiny faces only give negatives).
  big = np.minimum(fw, fh)[np.argmax(iou_matrix(windows, boxes), axis=1)] >= opts.min_face \
      if len(boxes) else np.zeros(len(windows), bool)
  cat = np.where((cat == NEG) | big, cat, -1).astype(np.int8)
  lm[:] = np.nan  # landmark targets only on the landmark windows below
  has_lm = np.all(np.isfinite(lms[usable]), axis=(1, 2))
  if opts.landmark_per_face and has_lm.any():
    lw = _perturb(rng, faces[has_lm], opts.landmark_per_face, shift=0.1, scale=(0.9, 1.1))
    li = np.repeat(np.arange(int(has_lm.sum())), opts.landmark_per_face)
    iou = iou_matrix(lw, faces[has_lm])[np.arange(len(lw)), li]
    ok = iou > POS_IOU
    windows = np.concatenate([windows, lw[ok]])
    cat = np.concatenate([cat, np.full(int(ok.sum()), LANDMARK, np.int8)])
    tb = np.concatenate([tb, np.zeros((int(ok.sum()), 4), np.float32)])
    lm = np.concatenate([lm, landmark_targets(lw[ok], lms[usable][has_lm][li[ok]])])
  keep = cat >= 0
  if not keep.any():
    return _empty(opts.size)
  windows, cat, tb, lm = windows[keep], cat[keep], tb[keep], lm[keep]
  return {"crops": crop_resize(image, windows, opts.size), "label": cat.astype(np.int8),
          "box": tb, "landmarks": np.nan_to_num(lm, nan=0.0)}


def proposal_calibration(windows, faces) -> tuple[np.ndarray, np.ndarray]:
  """Windows the earlier stages let through that a calibration pattern can correct ->
  (those windows (K, 4), their labels (K,)): each window against the face it overlaps
  most, as (s, xn, yn) with window = (x + xn w, y + yn h, s w, s h) (the inverse of Li et
  al.'s correction, `calibration_windows`), labelled with the nearest pattern (s on a log
  scale). Windows beyond the patterns' reach (s outside 0.79-1.27, a shift above 0.25 of
  the face, or no overlap) are left out: no pattern would bring them onto the face."""
  windows = np.asarray(windows, np.float32).reshape(-1, 4)
  faces = np.asarray(faces, np.float32).reshape(-1, 4)
  if not len(windows) or not len(faces):
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
  iou = iou_matrix(windows, faces)
  j = np.argmax(iou, axis=1)
  f = faces[j]
  fw, fh = f[:, 2] - f[:, 0], f[:, 3] - f[:, 1]
  ww, wh = windows[:, 2] - windows[:, 0], windows[:, 3] - windows[:, 1]
  s = np.sqrt(np.maximum(ww * wh, 1e-12) / np.maximum(fw * fh, 1e-12))
  xn, yn = (windows[:, 0] - f[:, 0]) / fw, (windows[:, 1] - f[:, 1]) / fh
  scales, shifts = np.log(np.asarray(CAL_SCALES)), np.asarray(CAL_SHIFTS)
  si = np.argmin(np.abs(np.log(s)[:, None] - scales[None]), axis=1)
  xi = np.argmin(np.abs(xn[:, None] - shifts[None]), axis=1)
  yi = np.argmin(np.abs(yn[:, None] - shifts[None]), axis=1)
  reach = ((iou[np.arange(len(windows)), j] > 0) & (s >= CAL_SCALES[0] / 1.05)
           & (s <= CAL_SCALES[-1] * 1.05) & (np.abs(xn) <= 0.25) & (np.abs(yn) <= 0.25))
  return windows[reach], ((si * 3 + xi) * 3 + yi)[reach]


def _mine_calibration(image, faces, opts, rng, proposals=None):
  """The 45 patterns applied to each face (Li et al.), plus, with `proposals`, the windows
  the earlier stages let through that a pattern can correct (`proposal_calibration`)."""
  k = max(1, opts.windows_per_face)
  f = np.repeat(faces, k, axis=0)
  labels = rng.integers(0, 45, len(f))
  win = calibration_windows(f, labels) if len(f) else np.zeros((0, 4), np.float32)
  if proposals is not None:
    pw, pl = proposal_calibration(proposals, faces)
    win, labels = np.concatenate([win, pw]), np.concatenate([labels, pl])
  if not len(win):
    return _empty(opts.size)
  n = len(win)
  return {"crops": crop_resize(image, win, opts.size), "label": labels.astype(np.int8),
          "box": np.zeros((n, 4), np.float32), "landmarks": np.zeros((n, 10), np.float32)}


def concat_samples(parts: Sequence[dict], size: int) -> dict[str, np.ndarray]:
  parts = [p for p in parts if len(p["label"])] or [_empty(size)]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --------------------------------------------------------------------------------------------
# Previous stages: what they let through
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Stage:
  """A trained earlier stage: its model, variables, input size and role."""
  name: str           # registered model name
  size: int
  kind: str           # "detect" | "calibration"
  model: Any
  variables: Any
  threshold: float = 0.5

  def __post_init__(self):
    import jax
    model, variables = self.model, self.variables

    # The variables are an argument, not constants closed over: with jax 0.10 a jitted
    # closure over them sometimes computed with the wrong weights (NaN or uniform
    # probabilities from a calibration net, depending on which other arrays were alive).
    @jax.jit
    def apply(variables, x):
      out = model.apply(variables, x, train=False)
      logits = out["logits"].reshape(x.shape[0], -1)
      prob = jax.nn.softmax(logits, axis=-1)
      box = out["box"].reshape(x.shape[0], 4) if "box" in out else None
      return prob, box

    self._apply = lambda x: apply(variables, x)

  def __call__(self, crops: np.ndarray, chunk: int = 1024):
    """(K,S,S,3) pixels 0..255 (uint8 or float) -> (probabilities (K,2|45), box offsets
    (K,4) or None); fixed-size chunks (zero-padded), so each stage compiles once."""
    probs, boxes = [], []
    for s in range(0, len(crops), chunk):
      c = crops[s:s + chunk]
      pad = np.zeros((chunk - len(c),) + c.shape[1:], c.dtype)
      x = normalize(np.concatenate([c, pad]))  # referenced until the results are read
      p, b = self._apply(x)
      probs.append(np.asarray(p)[:len(c)])
      if b is not None:
        boxes.append(np.asarray(b)[:len(c)])
    if not probs:
      return np.zeros((0, 45 if self.kind == "calibration" else 2), np.float32), None
    return np.concatenate(probs), (np.concatenate(boxes) if boxes else None)


def stage_kind(model_name: str) -> tuple[int, str]:
  """'mtcnn-rnet' -> (24, 'detect'); 'cascade-12cal' -> (12, 'calibration')."""
  sizes = {"pnet": 12, "rnet": 24, "onet": 48, "12net": 12, "24net": 24, "48net": 48,
           "12cal": 12, "24cal": 24, "48cal": 48}
  tail = model_name.split("-")[-1]
  if tail not in sizes:
    raise DataError(f"{model_name!r} is not a face-cascade stage")
  return sizes[tail], "calibration" if tail.endswith("cal") else "detect"


def load_stage(workdir: str, threshold: float = 0.5) -> Stage:
  """A previous stage from its training workdir (config.json + newest checkpoint)."""
  try:
    config, model, variables, _ = jv_ckpt.load_model(workdir)
  except (CheckpointError, FileNotFoundError, OSError) as e:
    raise DataError(f"previous stage {workdir}: {e}") from None
  name = config.model.name
  size, kind = stage_kind(name)
  return Stage(name, size, kind, model, variables, threshold)


def _area_crops(image: np.ndarray, windows: np.ndarray, size: int, chunk: int = 2048):
  """The detector's crops of `windows` (`crop_regions` + `area_crops`, float32 0..255) and
  their validity (non-empty inside the image), in chunks to bound the memory."""
  h, w = image.shape[:2]
  sat = integral_image(np.asarray(image))
  reg, ok = crop_regions(windows, h, w)
  crops = [area_crops(sat, reg[i:i + chunk], size) for i in range(0, len(reg), chunk)]
  return (np.concatenate(crops) if crops else np.zeros((0, size, size, 3), np.float32)), ok


def propose(image: np.ndarray, stages: Sequence[Stage], min_size: float = 20.0,
            max_windows: int = 20000, rng: np.random.Generator | None = None) -> np.ndarray:
  """Windows (K,4) of `image` that every stage in `stages` lets through, refined as at
  detection time, with the detector's geometry (`jaxvision.faces.boxes`).

  The first stage's windows are the cells it scores over the image pyramid at detection
  time (`pyramid_windows`, min face `min_size`; at most `max_windows` of them, drawn at
  random), each stage sees the detector's crops of its windows (truncated to integers,
  clipped to the image, area-resampled; windows with no pixel inside are dropped), and
  then: detection stages keep windows whose face probability exceeds their threshold and
  apply their box regression (MTCNN: the first stage scales by x2 - x1, later ones by the
  '+1' widths) and square the result; calibration stages move each window by the average
  of its confident patterns (Li et al. eq. 1). Two differences from detection remain: no
  NMS (the next stage learns from every window that passes), and the first stage scores
  crops of the image, not its pyramid level."""
  h, w = image.shape[:2]
  kind = "cascade-cnn" if stages and stages[0].name.startswith("cascade-") else "mtcnn"
  win = pyramid_windows(h, w, min_size, kind=kind)
  if max_windows and len(win) > max_windows:
    rng = rng or np.random.default_rng(0)
    win = win[np.sort(rng.choice(len(win), max_windows, replace=False))]
  regressed = 0  # detection stages with box regression so far
  for st in stages:
    if not len(win):
      break
    crops, inside = _area_crops(image, win, st.size)
    prob, box = st(crops)
    if st.kind == "calibration":
      win = np.where(inside[:, None], apply_calibration(win, prob), win)
      continue
    keep = inside & (prob[:, 1] > st.threshold)
    win = win[keep]
    if box is not None:
      win = rerec(bbreg(win, box[keep], plus_one=regressed > 0))
      regressed += 1
  return np.asarray(win, np.float32).reshape(-1, 4)


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------

def mix_counts(batch_size: int, mix: Sequence[float], available: Sequence[int]) -> np.ndarray:
  """Samples per category (neg, pos, part, landmark) in one batch: batch_size split in the
  ratio `mix` over the categories that have samples; rounding leftovers go to the largest."""
  m = np.asarray(mix, np.float64) * (np.asarray(available) > 0)
  if m.sum() <= 0:
    raise DataError("no training samples in any category of the batch mix "
                    f"(samples per category {list(available)}, mix {list(mix)})")
  c = np.floor(batch_size * m / m.sum()).astype(np.int64)
  c[int(np.argmax(m))] += batch_size - c.sum()
  return c


def flip_samples(crops, label, box, landmarks, calibration: bool):
  """Horizontal flip of crops and their targets (numpy, per-sample boolean mask applied by the
  caller): box x offsets swap and change sign, landmark x -> 1 - x with left/right swapped,
  calibration pattern x shift negated."""
  crops = crops[:, :, ::-1]
  if calibration:
    s, xi, yi = label // 9, (label // 3) % 3, label % 3
    return crops, (s * 9 + (2 - xi) * 3 + yi).astype(label.dtype), box, landmarks
  box = np.stack([-box[:, 2], box[:, 1], -box[:, 0], box[:, 3]], axis=1)
  lx, ly = landmarks[:, :5], landmarks[:, 5:]
  landmarks = np.concatenate([(1 - lx)[:, LANDMARK_FLIP], ly[:, LANDMARK_FLIP]], axis=1)
  landmarks = np.where(label[:, None] == LANDMARK, landmarks, 0.0)
  return crops, label, box, landmarks


class MixedBatches:
  """A grain random-access source whose record i is one whole batch, drawn deterministically
  from (seed, i): counts per category from `mix_counts`, samples uniformly with replacement
  inside each category, a random horizontal flip per sample. Batches are ordered by category
  (negatives first); the model sees no order."""

  def __init__(self, samples: dict[str, np.ndarray], batch_size: int, mix: Sequence[float],
               seed: int, calibration: bool = False, flips: bool = True, length: int = 2**30):
    self.samples, self.batch_size, self.seed = samples, int(batch_size), int(seed)
    self.calibration, self.flips, self._len = calibration, flips, int(length)
    lab = samples["label"]
    if calibration:
      self.pools = [np.arange(len(lab))]
      self.counts = np.array([self.batch_size]) if len(lab) else mix_counts(1, [1], [0])
    else:
      self.pools = [np.flatnonzero(lab == c) for c in range(4)]
      self.counts = mix_counts(self.batch_size, mix, [len(p) for p in self.pools])

  def __len__(self):
    return self._len

  def __getitem__(self, i) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, int(i)])
    idx = np.concatenate([p[rng.integers(0, len(p), n)] for p, n in zip(self.pools, self.counts)
                          if n > 0])
    s = self.samples
    crops, label, box, lm = s["crops"][idx], s["label"][idx].astype(np.int32), s["box"][idx], \
        s["landmarks"][idx]
    if self.flips:
      f = rng.random(len(idx)) < 0.5
      fc, fl, fb, flm = flip_samples(crops, label, box, lm, self.calibration)
      crops = np.where(f[:, None, None, None], fc, crops)
      label = np.where(f, fl, label)
      box = np.where(f[:, None], fb, box)
      lm = np.where(f[:, None], flm, lm)
    return {"input": normalize(crops), "label": label.astype(np.int32),
            "box": box.astype(np.float32), "landmarks": lm.astype(np.float32)}

  def __repr__(self):  # stable: grain checks it when restoring a saved position
    return (f"MixedBatches(n={len(self.samples['label'])}, batch={self.batch_size}, "
            f"counts={self.counts.tolist()}, seed={self.seed}, calibration={self.calibration})")


def make_loader(samples, *, batch_size: int, mix, seed: int, calibration: bool = False,
                shard_index: int = 0, shard_count: int = 1) -> grain.DataLoader:
  """Infinite, deterministic (per seed) loader of mixed batches; its iterator's state is
  checkpointed by the trainer like the image loaders'. Each host reads other batches."""
  src = MixedBatches(samples, batch_size, mix, seed, calibration)
  shard = grain.sharding.ShardOptions(shard_index=shard_index, shard_count=shard_count,
                                      drop_remainder=True)
  sampler = grain.samplers.IndexSampler(num_records=len(src), shard_options=shard,
                                        shuffle=False, num_epochs=1, seed=seed)
  return grain.DataLoader(data_source=src, sampler=sampler, worker_count=0,
                          shard_options=shard)


def mine_source(source, opts: MiningOptions, seed: int, max_images: int | None = None,
                stages: Sequence[Stage] = (), min_size: float = 20.0,
                max_windows: int = 20000, max_proposals: int = 200,
                progress: bool = False) -> dict[str, np.ndarray]:
  """All training samples of a face source (optionally through previous stages)."""
  n = len(source) if not max_images else min(int(max_images), len(source))
  parts = []
  it = range(n)
  if progress:
    from tqdm.auto import tqdm
    it = tqdm(it, desc=f"mining {opts.size}x{opts.size} samples", unit="img")
  for i in it:
    rng = np.random.default_rng([seed, i])
    rec = source[i]
    prop = None
    if stages:  # detection and calibration nets alike see what the earlier stages pass
      prop = propose(rec["image"], stages, min_size, max_windows, rng)
      if len(prop) > max_proposals:
        prop = prop[rng.choice(len(prop), max_proposals, replace=False)]
    parts.append(mine_image(rec, opts, rng, prop))
  return concat_samples(parts, opts.size)


def counts_by_category(samples) -> dict[str, int]:
  lab = samples["label"]
  return {c: int(np.sum(lab == k)) for k, c in enumerate(CATEGORIES)}
