"""Head pose (yaw, pitch, roll) from 2-D landmarks by a least-squares fit of a fixed 3-D
face template, vectorised over faces (PFLD's auxiliary targets, computed in the input
pipeline).

Model: scaled orthographic projection, x_k = s * R[:2] @ X_k + t for the template's K
points X_k. With both point sets centred, the 2 x 3 matrix A = s R[:2] is the linear
least-squares solution A = x^T X (X^T X)^{-1}; its rows are made orthonormal (the
symmetric, order-free polar step: the nearest pair of orthonormal rows to A's, by an SVD
of the 2 x 3 matrix), the third row is their cross product, and the Euler angles are read
from R = Rz(roll) @ Ry(yaw) @ Rx(pitch) (x right, y down, z away from the camera):
  yaw = asin(-R[2, 0]), pitch = atan2(R[2, 1], R[2, 2]), roll = atan2(R[1, 0], R[0, 0]).

The template is this project's own rough average face in millimetres (no measured data set;
a weak-perspective fit needs only its proportions): 15 of the 68 iBUG points, eyebrow and
eye corners, the nose tip and wings, the mouth corners, the lower lip and the chin. The
angles only weight PFLD's loss (a frontal face weighs little, a turned one more), so a
few degrees of bias do not matter; the fit recovers the rotation that made the points
exactly (tests/landmarks/test_pose.py).
"""
from __future__ import annotations

import numpy as np

TEMPLATE_IDX = (17, 21, 22, 26, 36, 39, 42, 45, 30, 31, 35, 48, 54, 57, 8)
TEMPLATE_3D = np.array([
    [-45, -40, 15], [-12, -45, 0], [12, -45, 0], [45, -40, 15],     # eyebrows
    [-40, -25, 15], [-13, -25, 8], [13, -25, 8], [40, -25, 15],     # eye corners
    [0, 5, -18], [-12, 12, 5], [12, 12, 5],                          # nose tip, wings
    [-25, 35, 12], [25, 35, 12], [0, 42, 8], [0, 68, 15],           # mouth, lip, chin
], np.float64)


def rotation(yaw, pitch, roll) -> np.ndarray:
  """R = Rz(roll) @ Ry(yaw) @ Rx(pitch), broadcast over leading dims -> (..., 3, 3)."""
  y, p, r = (np.asarray(a, np.float64) for a in (yaw, pitch, roll))
  cy, sy, cp, sp, cr, sr = np.cos(y), np.sin(y), np.cos(p), np.sin(p), np.cos(r), np.sin(r)
  one, zero = np.ones_like(cy), np.zeros_like(cy)
  rx = np.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(cy.shape + (3, 3))
  ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(cy.shape + (3, 3))
  rz = np.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(cy.shape + (3, 3))
  return rz @ ry @ rx


def euler_from_rotation(r: np.ndarray) -> np.ndarray:
  """(..., 3, 3) -> (..., 3) yaw, pitch, roll (radians), inverse of `rotation`."""
  yaw = np.arcsin(np.clip(-r[..., 2, 0], -1, 1))
  pitch = np.arctan2(r[..., 2, 1], r[..., 2, 2])
  roll = np.arctan2(r[..., 1, 0], r[..., 0, 0])
  return np.stack([yaw, pitch, roll], -1)


def fit_pose(points: np.ndarray, template: np.ndarray = TEMPLATE_3D,
             idx=TEMPLATE_IDX) -> np.ndarray:
  """(N, P, 2) landmarks (P = 68: the template's points are picked by `idx`; or P = K
  already matching the template) -> (N, 3) yaw, pitch, roll in radians."""
  x = np.asarray(points, np.float64)
  if x.shape[-2] != len(template):
    x = x[:, list(idx)]
  X = template - template.mean(0)
  x = x - x.mean(1, keepdims=True)
  a = np.einsum("nki,kj->nij", x, X) @ np.linalg.inv(X.T @ X)        # (N, 2, 3)
  u, _, vt = np.linalg.svd(a, full_matrices=False)                    # polar: rows orthonormal
  rows = u @ vt                                                       # (N, 2, 3)
  r = np.concatenate([rows, np.cross(rows[:, 0], rows[:, 1])[:, None]], 1)
  return euler_from_rotation(r)
