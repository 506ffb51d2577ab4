"""The pose fit recovers the rotation that made the points; losses have their known values."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.landmarks import pose
from jaxvision.landmarks import task as T


def test_pose_fit_recovers_known_rotations():
  rng = np.random.default_rng(0)
  n = 50
  ang = np.stack([rng.uniform(-1.2, 1.2, n), rng.uniform(-0.6, 0.6, n),
                  rng.uniform(-0.8, 0.8, n)], -1)
  r = pose.rotation(ang[:, 0], ang[:, 1], ang[:, 2])
  np.testing.assert_allclose(pose.euler_from_rotation(r), ang, atol=1e-12)
  scale = rng.uniform(0.5, 3, (n, 1, 1))
  pts3 = np.einsum("nij,kj->nki", r, pose.TEMPLATE_3D)
  pts = scale * pts3[..., :2] + rng.uniform(-100, 300, (n, 1, 2))
  full = np.zeros((n, 68, 2))
  full[:, list(pose.TEMPLATE_IDX)] = pts
  np.testing.assert_allclose(pose.fit_pose(full), ang, atol=1e-9)
  noisy = full + rng.normal(0, 0.3, full.shape)       # ~0.3 px on faces ~100 px wide
  assert np.abs(pose.fit_pose(noisy) - ang).max() < 0.1


def test_wing_loss_known_values():
  w, eps = 10.0, 2.0
  c = w - w * np.log(1 + w / eps)
  x = jnp.array([0.0, 1.0, -5.0, 10.0, 20.0])
  want = [0.0, w * np.log(1.5), w * np.log(3.5), 10 - c, 20 - c]
  np.testing.assert_allclose(T.wing(x, w, eps), want, rtol=1e-6)
  # continuous at |x| = w
  np.testing.assert_allclose(T.wing(jnp.array([w - 1e-4]), w, eps), T.wing(jnp.array([w]), w, eps),
                             atol=1e-3)


def test_pfld_loss_weights():
  gt = jnp.zeros((2, 4))
  pred = jnp.ones((2, 4))                             # squared error 4 per face
  ang = jnp.zeros((2, 3))
  # predicted angles equal the truth: weight = floor (1) -> mean 4
  assert float(T.pfld_loss(pred, gt, ang, ang)) == pytest.approx(4.0)
  # a 90-degree yaw error on face 0: weight 1 + (1 - cos 90) = 2 -> (8 + 4) / 2
  a = ang.at[0, 0].set(np.pi / 2)
  assert float(T.pfld_loss(pred, gt, a, ang)) == pytest.approx(6.0, rel=1e-6)
  # the paper's own weight (floor 0) and attribute weights
  assert float(T.pfld_loss(pred, gt, a, ang, floor=0.0,
                           attribute_weight=jnp.array([3.0, 1.0]))) == pytest.approx(6.0, rel=1e-6)
