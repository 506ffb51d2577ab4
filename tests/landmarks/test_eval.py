"""NME, failure rate, CED and AUC on constructed cases with known answers."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxvision.landmarks import eval as E


def _face(rng, scale=100.0):
  gt = rng.uniform(0, scale, (68, 2))
  gt[36], gt[45] = [30.0, 50.0], [70.0, 50.0]   # outer eye corners 40 apart
  gt[36:42] = gt[36] + rng.normal(0, 1, (6, 2))
  gt[36] = [30.0, 50.0]
  return gt


def test_nme_known_answers():
  rng = np.random.default_rng(0)
  gt = np.stack([_face(rng) for _ in range(3)])
  pred = gt + [3.0, 4.0]                        # every point 5 px off
  np.testing.assert_allclose(E.nme(pred, gt, "inter_ocular"), 5 / 40)
  pupils = np.linalg.norm(gt[:, 36:42].mean(1) - gt[:, 42:48].mean(1), axis=-1)
  np.testing.assert_allclose(E.nme(pred, gt, "inter_pupil"), 5 / pupils)
  # half the points exact, half 10 px off: mean 5 px
  pred = gt.copy()
  pred[:, ::2, 0] += 10
  np.testing.assert_allclose(E.nme(pred, gt), 5 / 40)
  # explicit distances (any markup)
  np.testing.assert_allclose(E.nme(gt[:, :5] + [0, 2], gt[:, :5], norm=[4.0, 2.0, 1.0]),
                             [0.5, 1.0, 2.0])
  with pytest.raises(ValueError, match="68-point"):
    E.nme(gt[:, :5], gt[:, :5])


def test_failure_rate_and_auc_known():
  e = np.array([0.0, 0.05, 0.1, 0.2])
  assert E.failure_rate(e) == 0.25              # 0.1 itself is not a failure
  # AUC@0.1 = mean(max(0, 0.1 - e)) / 0.1 = (0.1 + 0.05 + 0 + 0) / 4 / 0.1
  assert E.auc(e) == pytest.approx(0.375)
  assert E.auc(np.zeros(5)) == 1.0 and E.auc(np.full(5, 0.3)) == 0.0
  np.testing.assert_array_equal(E.ced(e, [0.0, 0.04, 0.05, 0.15, 1.0]), [.25, .25, .5, .75, 1])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 0.3), min_size=1, max_size=40))
def test_auc_is_the_integral_of_the_ced(errors):
  xs = np.linspace(0, 0.1, 20001)
  numeric = np.trapezoid(E.ced(errors, xs), xs) / 0.1
  assert E.auc(errors) == pytest.approx(numeric, abs=2e-4)


def test_ced_plot(tmp_path):
  p = tmp_path / "ced.png"
  E.plot_ced({"a": np.linspace(0, 0.12, 50), "b": np.full(10, 0.02)}, str(p))
  from PIL import Image
  im = Image.open(p)
  assert im.size == (500, 400) and im.format == "PNG"
