"""Matching two detectors' faces (numpy only): used by benchmarks/face_detection.py and
tests/faces/test_small_faces.py to compare jaxvision's MTCNN with facenet-pytorch's.

Faces are {"box": [x1, y1, x2, y2], "score", "landmarks": [[x, y] * 5]} (jaxvision's
`detect` / `detect-faces --json` layout). `match(got, ref)` pairs them greedily by IoU
(highest first, IoU > 0.3), and `compare` reports per reference face its IoU, score
difference and largest landmark distance, plus the faces only one side found.
"""
from __future__ import annotations

import numpy as np

TOLERANCE = {"iou": 0.95, "score": 0.01, "landmarks": 2.0}


def iou(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return float(inter / union) if union > 0 else 0.0


def match(got: list[dict], ref: list[dict], min_iou: float = 0.3):
  """-> (pairs [(i_got, j_ref, iou)], unmatched got indices, unmatched ref indices)."""
  cand = sorted(((iou(g["box"], r["box"]), i, j) for i, g in enumerate(got)
                 for j, r in enumerate(ref)), reverse=True)
  used_g, used_r, pairs = set(), set(), []
  for v, i, j in cand:
    if v <= min_iou or i in used_g or j in used_r:
      continue
    used_g.add(i)
    used_r.add(j)
    pairs.append((i, j, v))
  return (sorted(pairs, key=lambda p: p[1]), [i for i in range(len(got)) if i not in used_g],
          [j for j in range(len(ref)) if j not in used_r])


def compare(got: list[dict], ref: list[dict], tol=TOLERANCE) -> dict:
  """Per reference face: {"ref": j, "width", "iou", "score_diff", "landmark_px", "ok"};
  "only_got"/"only_ref": faces of one side only (with width and score); "ok": all within
  `tol` and the same number of faces."""
  pairs, og, orf = match(got, ref)
  rows = []
  for i, j, v in pairs:
    g, r = got[i], ref[j]
    lm = (float(np.abs(np.asarray(g["landmarks"], np.float64)
                       - np.asarray(r["landmarks"], np.float64)).max())
          if g.get("landmarks") and r.get("landmarks") else 0.0)
    ds = abs(g["score"] - r["score"])
    rows.append({"ref": j, "got": i, "width": r["box"][2] - r["box"][0], "iou": v,
                 "score_diff": ds, "landmark_px": lm,
                 "ok": v >= tol["iou"] and ds <= tol["score"] and lm <= tol["landmarks"]})
  side = lambda fs, idx: [{"index": k, "width": fs[k]["box"][2] - fs[k]["box"][0],
                           "score": fs[k]["score"], "box": fs[k]["box"]} for k in idx]
  return {"pairs": rows, "only_got": side(got, og), "only_ref": side(ref, orf),
          "ok": all(r["ok"] for r in rows) and not og and not orf}


def summary(results: dict[str, dict]) -> str:
  """One line per image with a difference, from {name: compare(...)}."""
  lines = []
  for name, c in results.items():
    bad = [r for r in c["pairs"] if not r["ok"]]
    if not bad and not c["only_got"] and not c["only_ref"]:
      continue
    parts = [f"{r['width']:.0f}px face: IoU {r['iou']:.3f}, score diff {r['score_diff']:.4f}, "
             f"landmarks {r['landmark_px']:.2f}px" for r in bad]
    parts += [f"only ours: {f['width']:.0f}px (score {f['score']:.3f})" for f in c["only_got"]]
    parts += [f"only reference: {f['width']:.0f}px (score {f['score']:.3f})"
              for f in c["only_ref"]]
    lines.append(f"{name}: " + "; ".join(parts))
  return "\n".join(lines)
