"""Landmark accuracy: normalised mean error (NME), failure rate, the cumulative error
distribution (CED) and its area (AUC), and a CED plot.

    e = nme(pred, gt, norm="inter_ocular")    # (N,) per-face errors
    summary(e) -> {"nme", "failure_rate", "auc"} at threshold 0.1
    plot_ced({"dlib_ert_68": e}, "ced.png")

Conventions (68-point iBUG / 300-W markup, 0-based indices):
  - NME of a face = mean over its points of ||pred - gt||_2 / d.
  - inter-ocular d: distance between the outer eye corners, points 36 and 45 (the
    normalisation of 300-W's later papers, PFLD's among them);
  - inter-pupil d: between the eye centres, the means of points 36-41 and 42-47 (the
    older 300-W convention, e.g. in LBF and ERT-era tables);
  - failure: a face whose NME exceeds the threshold (0.1 unless given);
  - CED(x) = share of faces with NME <= x; AUC@t = (1/t) * integral_0^t CED(x) dx, which
    is exactly mean(max(0, t - e_i)) / t (each face contributes the length of [e_i, t]),
    so no sampling of the curve is needed.
A 5-point or other markup passes its own `eyes` indices, or `norm` as an array of
distances (e.g. the box diagonal).
"""
from __future__ import annotations

import numpy as np

LEFT_EYE_68 = tuple(range(36, 42))
RIGHT_EYE_68 = tuple(range(42, 48))
OUTER_CORNERS_68 = (36, 45)


def normaliser(gt: np.ndarray, norm: str = "inter_ocular") -> np.ndarray:
  """(N,) distances of 68-point ground truths (N, 68, 2) by name."""
  gt = np.asarray(gt, np.float64)
  if gt.shape[-2] != 68:
    raise ValueError(f"{norm} needs the 68-point markup; got {gt.shape[-2]} points "
                     "(pass the distances as an array)")
  if norm == "inter_ocular":
    a, b = gt[:, OUTER_CORNERS_68[0]], gt[:, OUTER_CORNERS_68[1]]
  elif norm == "inter_pupil":
    a, b = gt[:, LEFT_EYE_68].mean(1), gt[:, RIGHT_EYE_68].mean(1)
  else:
    raise ValueError(f"unknown normalisation {norm!r}: inter_ocular or inter_pupil")
  return np.linalg.norm(a - b, axis=-1)


def nme(pred, gt, norm="inter_ocular") -> np.ndarray:
  """(N,) normalised mean errors of (N, P, 2) predictions."""
  pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
  if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 2:
    raise ValueError(f"predictions {pred.shape} and ground truth {gt.shape}: expected "
                     "equal (N, P, 2)")
  d = normaliser(gt, norm) if isinstance(norm, str) else np.asarray(norm, np.float64)
  if (d <= 0).any():
    raise ValueError("a face with zero normalising distance")
  return np.linalg.norm(pred - gt, axis=-1).mean(-1) / d


def failure_rate(errors, threshold: float = 0.1) -> float:
  return float(np.mean(np.asarray(errors) > threshold))


def ced(errors, xs) -> np.ndarray:
  """CED at each x: the share of errors <= x."""
  e = np.sort(np.asarray(errors, np.float64))
  return np.searchsorted(e, np.asarray(xs, np.float64), side="right") / len(e)


def auc(errors, threshold: float = 0.1) -> float:
  """Area under the CED on [0, threshold], divided by threshold (1 = every error 0)."""
  e = np.asarray(errors, np.float64)
  return float(np.mean(np.maximum(0.0, threshold - e)) / threshold)


def summary(errors, threshold: float = 0.1) -> dict:
  e = np.asarray(errors, np.float64)
  return {"nme": float(e.mean()), "failure_rate": failure_rate(e, threshold),
          "auc": auc(e, threshold), "faces": int(len(e)), "threshold": threshold}


def plot_ced(curves: dict[str, np.ndarray], path: str, threshold: float = 0.1,
             title: str = "Cumulative error distribution") -> None:
  """A PNG of the CED of each named error array up to `threshold` (matplotlib, Agg)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from jaxvision.core import io
  xs = np.linspace(0, threshold, 201)
  fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
  for name, e in curves.items():
    ax.plot(xs, ced(e, xs), label=f"{name} (AUC {auc(e, threshold):.3f})")
  ax.set_xlabel("NME")
  ax.set_ylabel("share of faces")
  ax.set_xlim(0, threshold)
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right")
  ax.set_title(title)
  import io as _io
  buf = _io.BytesIO()
  fig.savefig(buf, format="png")
  plt.close(fig)
  io.atomic_write(path, lambda f: f.write(buf.getvalue()))
