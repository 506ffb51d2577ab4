"""WIDER FACE-style AP and FDDB-style ROC on constructed cases whose answer is known."""
import numpy as np
import pytest
from PIL import Image

from jaxvision.faces import eval as fe


def box(x, y, h):
  return [x, y, x + h, y + h]


def det(b, s):
  return list(b) + [s]


def test_perfect_detections_give_ap_one_in_every_subset_and_full_roc():
  gts = [np.array([box(0, 0, 60), box(100, 0, 80)], np.float32), np.array([box(5, 5, 120)])]
  dets = [np.array([det(g, 0.9 - 0.1 * i) for i, g in enumerate(gt)]) for gt in gts]
  r = fe.evaluate(dets, gts)
  assert r["ap_easy"] == r["ap_medium"] == r["ap_hard"] == pytest.approx(1.0)
  fp, tpr, _ = r["roc"]
  assert fp[-1] == 0 and tpr[-1] == pytest.approx(1.0)


def test_half_the_faces_found_at_the_top_scores():
  gt = [np.array([box(0, 0, 60), box(100, 0, 60), box(200, 0, 60), box(300, 0, 60)])]
  d = [np.array([det(gt[0][0], 0.9), det(gt[0][1], 0.8), det(box(0, 200, 60), 0.5),
                 det(box(100, 200, 60), 0.4)])]
  assert fe.average_precision(d, gt) == pytest.approx(0.5)


def test_interleaved_false_positive_known_ap():
  gt = [np.array([box(0, 0, 60), box(100, 0, 60)])]
  # FP at 0.9, TP at 0.8, TP at 0.7: precision 0, 1/2, 2/3 at recall 0, 1/2, 1.
  d = [np.array([det(box(0, 300, 60), 0.9), det(gt[0][0], 0.8), det(gt[0][1], 0.7)])]
  p, r, _ = fe.pr_curve(d, gt)
  np.testing.assert_allclose(p, [0, 0.5, 2 / 3])
  np.testing.assert_allclose(r, [0, 0.5, 1.0])
  assert fe.average_precision(d, gt) == pytest.approx(0.5 * 2 / 3 + 0.5 * 2 / 3)


def test_duplicate_detection_is_a_false_positive_and_iou_threshold_holds():
  gt = [np.array([box(0, 0, 60)])]
  shifted = box(20, 0, 60)  # IoU 40*60 / (2*3600 - 2400) = 0.5
  s, tp, counted = fe.match(np.array([det(gt[0][0], 0.9), det(gt[0][0], 0.8),
                                      det(shifted, 0.7)]), gt[0])
  assert tp.tolist() == [True, False, False] and counted.all()
  s, tp, _ = fe.match(np.array([det(shifted, 0.7)]), gt[0])
  assert tp.tolist() == [True]  # IoU exactly 0.5 matches (>= 0.5)


def test_subsets_by_size_and_ignored_faces():
  heights = [60, 40, 20, 5]
  gt = np.array([box(100 * i, 0, h) for i, h in enumerate(heights)], np.float32)
  assert fe.subset_ignore(gt, "easy").tolist() == [False, True, True, True]
  assert fe.subset_ignore(gt, "medium").tolist() == [False, False, True, True]
  assert fe.subset_ignore(gt, "hard").tolist() == [False, False, False, True]
  # Only the 20 px face is found: no cost in easy/medium (ignored there), recall 1/3 in hard.
  d = [np.array([det(gt[2], 0.9)])]
  assert fe.average_precision(d, [gt], subset="easy") == 0.0
  _, _, counted = fe.match(d[0], gt, fe.subset_ignore(gt, "easy"))
  assert not counted.any()  # dropped, not a false positive
  assert fe.average_precision(d, [gt], subset="hard") == pytest.approx(1 / 3)
  every = [np.array([det(g, 0.9) for g in gt])]
  r = fe.evaluate(every, [gt])
  assert r["ap_easy"] == r["ap_medium"] == r["ap_hard"] == pytest.approx(1.0)
  # An `invalid` face is ignored in every subset.
  r = fe.evaluate([np.zeros((0, 5))], [gt[:1]], [np.array([True])])
  assert r["ap_easy"] == 0.0 and r["roc"][0].size == 0


def test_roc_constructed_case(tmp_path):
  gt = [np.array([box(0, 0, 60), box(100, 0, 60)]), np.array([box(0, 0, 60)])]
  d = [np.array([det(gt[0][0], 0.9), det(box(0, 300, 60), 0.8)]),
       np.array([det(gt[1][0], 0.7), det(box(200, 200, 60), 0.7)])]
  fp, tpr, thr = fe.roc_curve(d, gt)
  np.testing.assert_allclose(thr, [0.9, 0.8, 0.7])
  assert fp.tolist() == [0, 1, 2]
  np.testing.assert_allclose(tpr, [1 / 3, 1 / 3, 2 / 3])
  assert fe.tpr_at_fp(fp, tpr, 1) == pytest.approx(1 / 3)
  assert fe.tpr_at_fp(fp, tpr, 5) == pytest.approx(2 / 3)
  path = fe.plot_curves(fe.evaluate(d, gt), tmp_path / "curves.png", title="test")
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size[0] > 500


def test_evaluate_detector_over_a_source():
  src = [{"image": np.zeros((100, 100, 3), np.uint8), "boxes": np.array([box(10, 10, 60)]),
          "ignore": np.array([False])}]
  r = fe.evaluate_detector(lambda im: np.array([[10, 10, 70, 70, 0.99]]), src)
  assert r["ap_easy"] == pytest.approx(1.0)
