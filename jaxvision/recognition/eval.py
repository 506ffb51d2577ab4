"""Face verification and identification metrics: the LFW protocol and rank-1 over a gallery.

  read_pairs(pairs.txt, folder)        [(path_a, path_b, same, fold)] in LFW's layout
  verification_metrics(d, same, fold)  10-fold accuracy (threshold chosen on the other
                                       folds), ROC AUC, VAL at FAR = 1e-3
  roc_auc(d, same)                     P(a same pair is closer than a different pair)
  rank1(gallery, g_ids, probes, p_ids) nearest-gallery identification accuracy
  evaluate_lfw(embedder, pairs, folder)  embeds every image once and scores the pairs

The LFW protocol (Huang et al. 2007, "View 2"): pairs.txt starts with "10 300" (folds,
pairs of each kind per fold) and then, per fold, 300 same pairs `name i j` and 300
different pairs `name1 i name2 j`; image `i` of `name` is `name/name_%04d.jpg`. Accuracy is
the mean over the folds of the accuracy on the fold at the threshold that is best on the
other nine (the threshold is never chosen on the pairs it scores). Candidate thresholds
are the midpoints between consecutive distinct distances of the training folds, so the
choice is exact, not on a grid; a tie between thresholds takes the smallest.

VAL at FAR (Schroff et al. 2015, FaceNet): on the training folds the largest threshold whose
false-accept rate (different pairs accepted) is at most the target; VAL and FAR are then
measured on the test fold and averaged. With 300 different pairs per fold, FAR = 1e-3 means
no different pair of the training folds may be accepted: VAL at 1e-3 on LFW is "the share
of same pairs closer than the closest different pair" (facenet's code interpolates
instead; its numbers are therefore a little higher).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from jaxvision.core.errors import DataError


def read_pairs(path: str, folder: str, ext: str = ".jpg") -> list[tuple[str, str, bool, int]]:
  """LFW pairs.txt -> [(image a, image b, same, fold)] (DataError naming the line)."""
  try:
    with open(path) as f:
      lines = [l.split() for l in f if l.strip()]
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
  if not lines:
    raise DataError(f"{path}: empty pairs file")
  head = lines[0]
  try:
    folds, per = (int(head[0]), int(head[1])) if len(head) == 2 else (1, int(head[0]))
  except ValueError:
    raise DataError(f"{path}: line 1 must be 'FOLDS PAIRS' (e.g. '10 300')") from None
  body = lines[1:]
  if len(body) != folds * 2 * per:
    raise DataError(f"{path}: {len(body)} pairs, the header says {folds} x 2 x {per}")
  img = lambda name, i: os.path.join(folder, name, f"{name}_{int(i):04d}{ext}")
  out = []
  for k, parts in enumerate(body):
    fold = k // (2 * per)
    try:
      if len(parts) == 3:
        out.append((img(parts[0], parts[1]), img(parts[0], parts[2]), True, fold))
      elif len(parts) == 4:
        out.append((img(parts[0], parts[1]), img(parts[2], parts[3]), False, fold))
      else:
        raise ValueError
    except ValueError:
      raise DataError(f"{path}: line {k + 2}: expected 'name i j' or 'name1 i name2 j'") \
          from None
  return out


def roc_auc(distances: np.ndarray, same: np.ndarray) -> float:
  """Area under the ROC curve of "same when closer": the Mann-Whitney probability that a
  random same pair is closer than a random different pair (ties count one half)."""
  d = np.asarray(distances, np.float64)
  s = np.asarray(same, bool)
  pos, neg = d[s], d[~s]
  if len(pos) == 0 or len(neg) == 0:
    return float("nan")
  from scipy.stats import rankdata
  r_pos = rankdata(np.concatenate([-pos, -neg]))[:len(pos)].sum()  # ties: average ranks
  return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _candidates(d: np.ndarray) -> np.ndarray:
  u = np.unique(d)
  mids = (u[1:] + u[:-1]) / 2 if len(u) > 1 else np.empty(0)
  return np.concatenate([[u[0] - 1e-6], mids, [u[-1] + 1e-6]]) if len(u) else np.zeros(1)


def best_threshold(d: np.ndarray, same: np.ndarray) -> float:
  """The threshold (same when d < t) of highest accuracy on (d, same); smallest on ties."""
  t = _candidates(d)
  acc = ((d[None, :] < t[:, None]) == same[None, :]).mean(1)
  return float(t[int(np.argmax(acc))])


def far_threshold(d: np.ndarray, same: np.ndarray, far: float) -> float:
  """The largest threshold whose false-accept rate on (d, same) is at most `far`."""
  neg = np.sort(d[~same])
  if len(neg) == 0:
    return float(np.max(d) + 1e-6)
  k = int(np.floor(far * len(neg)))  # at most k different pairs may be accepted
  return float(neg[k]) if k < len(neg) else float(neg[-1] + 1e-6)


def verification_metrics(distances: Sequence[float], same: Sequence[bool],
                         folds: Sequence[int] | None = None, far: float = 1e-3) -> dict:
  """{"accuracy", "accuracy_std", "thresholds", "auc", "val", "far"} over the folds."""
  d = np.asarray(distances, np.float64)
  s = np.asarray(same, bool)
  f = np.zeros(len(d), int) if folds is None else np.asarray(folds, int)
  accs, thrs, vals, fars = [], [], [], []
  for k in np.unique(f):
    test, train = f == k, f != k
    if not train.any():  # one fold: choose and score on the same pairs (no protocol)
      train = test
    t = best_threshold(d[train], s[train])
    accs.append(float(((d[test] < t) == s[test]).mean()))
    thrs.append(t)
    tv = far_threshold(d[train], s[train], far)
    acc_pos = d[test & s] < tv
    acc_neg = d[test & ~s] < tv
    vals.append(float(acc_pos.mean()) if acc_pos.size else float("nan"))
    fars.append(float(acc_neg.mean()) if acc_neg.size else float("nan"))
  return {"accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
          "thresholds": thrs, "threshold": float(np.median(thrs)), "auc": roc_auc(d, s),
          "val": float(np.nanmean(vals)), "far": float(np.nanmean(fars)), "far_target": far,
          "pairs": int(len(d)), "folds": int(len(accs))}


def rank1(gallery: np.ndarray, gallery_ids: Sequence, probes: np.ndarray,
          probe_ids: Sequence) -> float:
  """Share of probes whose nearest gallery embedding (L2) has the probe's identity."""
  g = np.asarray(gallery, np.float64)
  p = np.asarray(probes, np.float64)
  d = (p ** 2).sum(1)[:, None] + (g ** 2).sum(1)[None, :] - 2 * p @ g.T
  nearest = np.argmin(d, axis=1)
  gids = np.asarray(gallery_ids)
  return float(np.mean(gids[nearest] == np.asarray(probe_ids)))


def evaluate_lfw(embedder, pairs: list[tuple[str, str, bool, int]], aligned: bool = False,
                 far: float = 1e-3) -> dict:
  """Embeds every image of `pairs` once (its best face, or the whole image as a chip when
  `aligned`) and returns `verification_metrics`; images without a face or unreadable are
  counted in "skipped" and their pairs left out (LFW papers report them; say how many)."""
  from jaxvision.core import io
  paths = sorted({p for a, b, _, _ in pairs for p in (a, b)})
  emb: dict[str, np.ndarray] = {}
  skipped = []
  for p in paths:
    try:
      image = io.load_image_file(p)
    except (OSError, ValueError):
      skipped.append(p)
      continue
    if aligned:
      emb[p] = embedder.embed_chips(embedder.aligned_chip(image))[0]
      continue
    faces = embedder.faces_in(image)
    if not faces:
      skipped.append(p)
      continue
    emb[p] = np.asarray(max(faces, key=lambda f: f.get("score", 1.0))["embedding"])
  kept = [(a, b, s, k) for a, b, s, k in pairs if a in emb and b in emb]
  if not kept:
    raise DataError("no pair has a face in both images")
  d = [float(np.linalg.norm(emb[a] - emb[b])) for a, b, _, _ in kept]
  out = verification_metrics(d, [s for *_, s, _ in kept], [k for *_, k in kept], far)
  out["skipped_images"] = len(skipped)
  out["skipped_pairs"] = len(pairs) - len(kept)
  return out
