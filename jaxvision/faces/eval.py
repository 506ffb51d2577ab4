"""Face-detection evaluation: WIDER FACE-style average precision and an FDDB-style ROC.

Detections per image: (K,5) x1, y1, x2, y2, score. Ground truth: (N,4) x1, y1, x2, y2 and an
optional (N,) `ignore` flag (WIDER's `invalid`, or faces outside a subset).

Matching (both metrics): detections in descending score order each take the unmatched,
non-ignored face they overlap most, if that IoU >= 0.5 (true positive); a detection whose best
face is ignored (IoU >= 0.5) is dropped: neither a true nor a false positive, as in the
official WIDER FACE evaluation; any other detection is a false positive. Each face is matched
at most once (FDDB's discrete score with IoU 0.5 standing in for its ellipse ratio).

Subsets by face size (the official easy/medium/hard lists come from annotations and EdgeBox
detection rates, which a plain box dataset does not have): a face belongs to
  easy    if its box height >= 50 px,
  medium  if >= 30 px,
  hard    if >= 10 px,
nested like the official sets (hard contains medium contains easy). Faces outside a subset are
ignored for it, so detecting them costs nothing and missing them costs nothing.

AP: the area under the precision envelope over all recall points (VOC 2010+ / WIDER's voc_ap;
the official tool samples 1000 score thresholds first, which changes AP by < 0.001 in practice).
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Sequence

import numpy as np

from jaxvision.core.io import atomic_write
from jaxvision.faces.boxes import iou_matrix

SUBSETS = {"easy": 50.0, "medium": 30.0, "hard": 10.0}  # minimum face height in pixels


def subset_ignore(boxes: np.ndarray, subset: str, ignore: np.ndarray | None = None) -> np.ndarray:
  """(N,) bool: faces ignored in `subset` (too small for it, or ignored already)."""
  if subset not in SUBSETS:
    raise ValueError(f"unknown subset {subset!r}; choose from: {', '.join(SUBSETS)}")
  b = np.asarray(boxes, np.float32).reshape(-1, 4)
  small = (b[:, 3] - b[:, 1]) < SUBSETS[subset]
  return small if ignore is None else small | np.asarray(ignore, bool)


def match(dets: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None,
          iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One image -> (scores (K,), true positive (K,) bool, counted (K,) bool: not dropped)."""
  d = np.asarray(dets, np.float32).reshape(-1, 5)
  g = np.asarray(gt, np.float32).reshape(-1, 4)
  ign = np.zeros(len(g), bool) if ignore is None else np.asarray(ignore, bool).reshape(-1)
  order = np.argsort(-d[:, 4], kind="stable")
  d = d[order]
  tp = np.zeros(len(d), bool)
  counted = np.ones(len(d), bool)
  if len(g) and len(d):
    iou = iou_matrix(d[:, :4], g)
    free = ~ign
    for k in range(len(d)):  # greedy in score order: inherently sequential
      cand = np.where(free, iou[k], -1.0)
      j = int(np.argmax(cand))
      if cand[j] >= iou_threshold:
        tp[k], free[j] = True, False
      elif np.any(ign) and np.max(np.where(ign, iou[k], -1.0)) >= iou_threshold:
        counted[k] = False
  return d[:, 4], tp, counted


def _gather(detections, ground_truth, ignores, subset, iou_threshold):
  scores, tps, n_gt = [], [], 0
  ignores = ignores if ignores is not None else [None] * len(ground_truth)
  if not (len(detections) == len(ground_truth) == len(ignores)):
    raise ValueError(f"{len(detections)} detection lists for {len(ground_truth)} images")
  for dets, gt, ign in zip(detections, ground_truth, ignores):
    gt = np.asarray(gt, np.float32).reshape(-1, 4)
    ign = subset_ignore(gt, subset, ign) if subset else (
        np.zeros(len(gt), bool) if ign is None else np.asarray(ign, bool))
    s, tp, counted = match(dets, gt, ign, iou_threshold)
    scores.append(s[counted])
    tps.append(tp[counted])
    n_gt += int(np.sum(~ign))
  s = np.concatenate(scores) if scores else np.zeros(0, np.float32)
  tp = np.concatenate(tps) if tps else np.zeros(0, bool)
  order = np.argsort(-s, kind="stable")
  return s[order], tp[order], n_gt


def pr_curve(detections: Sequence, ground_truth: Sequence, ignores: Sequence | None = None,
             subset: str | None = None, iou_threshold: float = 0.5):
  """(precision, recall, scores) over all images, one point per detection in score order."""
  s, tp, n_gt = _gather(detections, ground_truth, ignores, subset, iou_threshold)
  ctp = np.cumsum(tp)
  cfp = np.cumsum(~tp)
  recall = ctp / max(n_gt, 1)
  precision = ctp / np.maximum(ctp + cfp, 1)
  return precision, recall, s


def average_precision(detections: Sequence, ground_truth: Sequence,
                      ignores: Sequence | None = None, subset: str | None = None,
                      iou_threshold: float = 0.5) -> float:
  """Area under the precision envelope (all recall points). 0 when there is no face."""
  precision, recall, _ = pr_curve(detections, ground_truth, ignores, subset, iou_threshold)
  if not len(recall) or recall[-1] == 0:
    return 0.0
  mrec = np.concatenate([[0.0], recall, [1.0]])
  mpre = np.concatenate([[0.0], precision, [0.0]])
  mpre = np.maximum.accumulate(mpre[::-1])[::-1]
  i = np.flatnonzero(mrec[1:] != mrec[:-1])
  return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def roc_curve(detections: Sequence, ground_truth: Sequence, ignores: Sequence | None = None,
              iou_threshold: float = 0.5):
  """FDDB-style discrete ROC -> (false positives (T,), true positive rate (T,), thresholds
  (T,)): one point per distinct score, counting every detection scoring at least that."""
  s, tp, n_gt = _gather(detections, ground_truth, ignores, None, iou_threshold)
  if not len(s):
    return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.float32)
  last = np.flatnonzero(np.append(s[1:] != s[:-1], True))  # end of each tie group
  fp = np.cumsum(~tp)[last]
  tpr = np.cumsum(tp)[last] / max(n_gt, 1)
  return fp, tpr, s[last]


def tpr_at_fp(fp: np.ndarray, tpr: np.ndarray, max_fp: int) -> float:
  """The highest true positive rate with at most `max_fp` false positives (FDDB's readout)."""
  ok = np.asarray(fp) <= max_fp
  return float(np.max(np.asarray(tpr)[ok])) if np.any(ok) else 0.0


def evaluate(detections: Sequence, ground_truth: Sequence, ignores: Sequence | None = None,
             iou_threshold: float = 0.5) -> dict:
  """{"ap_easy", "ap_medium", "ap_hard", "tpr_at_100fp", "roc": (fp, tpr, thr),
  "pr": {subset: (precision, recall)}}."""
  out: dict = {"pr": {}}
  for sub in SUBSETS:
    p, r, _ = pr_curve(detections, ground_truth, ignores, sub, iou_threshold)
    out["pr"][sub] = (p, r)
    out[f"ap_{sub}"] = average_precision(detections, ground_truth, ignores, sub, iou_threshold)
  out["roc"] = roc_curve(detections, ground_truth, ignores, iou_threshold)
  out["tpr_at_100fp"] = tpr_at_fp(out["roc"][0], out["roc"][1], 100)
  return out


def evaluate_detector(detect: Callable[[np.ndarray], np.ndarray], source: Iterable[dict] | Sequence,
                      max_images: int | None = None) -> dict:
  """Runs `detect(image uint8 (H,W,3)) -> (K,5)` over a face source (jaxvision.faces.data) and
  evaluates it against the source's boxes and ignore flags."""
  n = len(source) if max_images is None else min(int(max_images), len(source))
  dets, gts, igns = [], [], []
  for i in range(n):
    rec = source[i]
    dets.append(np.asarray(detect(rec["image"]), np.float32).reshape(-1, 5))
    gts.append(rec["boxes"])
    igns.append(rec.get("ignore"))
  return evaluate(dets, gts, igns)


def plot_curves(result: dict, path: str, title: str = "") -> str:
  """PNG with the precision-recall curves of the three subsets and the ROC (fp vs tpr)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
  for sub, (p, r) in result["pr"].items():
    a.plot(r, p, label=f"{sub}: AP {result[f'ap_{sub}']:.3f}")
  a.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
        title="precision-recall (IoU 0.5)")
  a.legend(loc="lower left")
  fp, tpr, _ = result["roc"]
  b.step(fp, tpr, where="post")
  b.set(xlabel="false positives", ylabel="true positive rate", ylim=(0, 1.02),
        title=f"ROC (discrete, IoU 0.5); TPR@100 FP {result['tpr_at_100fp']:.3f}")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  atomic_write(os.fspath(path), lambda f: fig.savefig(f, format="png", dpi=100))
  plt.close(fig)
  return os.fspath(path)
