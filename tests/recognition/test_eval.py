"""LFW protocol metrics and rank-1 identification on constructed cases with known answers."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxvision.core.errors import DataError
from jaxvision.recognition import eval as E


def test_auc_known_answers():
  # same 0.1, 0.5 vs different 0.3, 0.7: 3 of the 4 (same, different) pairs are ordered
  assert E.roc_auc([0.1, 0.5, 0.3, 0.7], [1, 1, 0, 0]) == pytest.approx(0.75)
  assert E.roc_auc([0.1, 0.2, 0.3, 0.4], [1, 1, 0, 0]) == 1.0
  assert E.roc_auc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == 0.0
  assert E.roc_auc([0.5, 0.5], [1, 0]) == 0.5  # a tie counts one half


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 2), min_size=1, max_size=12),
       st.lists(st.floats(0, 2), min_size=1, max_size=12))
def test_auc_equals_the_pair_count(pos, neg):
  """AUC = P(d_same < d_diff) + P(tie)/2 over all pairs, by direct counting."""
  want = np.mean([(p < n) + 0.5 * (p == n) for p in pos for n in neg])
  assert E.roc_auc(pos + neg, [1] * len(pos) + [0] * len(neg)) == pytest.approx(want)


def test_ten_fold_threshold_is_chosen_on_the_other_folds():
  """Folds 0-8 separate same (0.2) and different (0.8) pairs; fold 9's same pairs lie at
  0.6, beyond the threshold its training folds choose (0.5 = the midpoint), so fold 9
  scores 50% and the mean accuracy is (9 * 1 + 0.5) / 10 exactly; a threshold chosen on all
  folds would have scored fold 9 differently."""
  d, same, folds = [], [], []
  for k in range(10):
    sd = 0.6 if k == 9 else 0.2
    d += [sd] * 3 + [0.8] * 3
    same += [True] * 3 + [False] * 3
    folds += [k] * 6
  m = E.verification_metrics(d, same, folds)
  assert m["accuracy"] == pytest.approx(0.95)
  assert m["thresholds"][9] == pytest.approx(0.5)
  assert m["thresholds"][0] == pytest.approx(0.7)  # its training folds hold the 0.6 pairs
  assert m["folds"] == 10 and m["pairs"] == 60


def test_val_at_far_known_answer():
  """Different pairs at 0.5 + 0.01 k, same pairs at 0.1 .. 0.7: at FAR 0 the threshold is
  the closest different pair of the training folds, VAL the share of same pairs below it."""
  d = [0.1, 0.3, 0.55, 0.7] + [0.5, 0.6, 0.8, 0.9]
  same = [1, 1, 1, 1, 0, 0, 0, 0]
  m = E.verification_metrics(d, same, None, far=1e-3)
  assert m["val"] == pytest.approx(0.5) and m["far"] == 0.0


def test_rank1_known_answer():
  g = np.array([[0.0, 0], [10, 0], [0, 10]])
  probes = np.array([[1.0, 0], [9, 1], [6, 5], [0, 8]])  # (6, 5) is nearer id 1 than id 2
  assert E.rank1(g, ["a", "b", "c"], probes, ["a", "b", "c", "c"]) == pytest.approx(0.75)


def test_read_pairs_lfw_layout(tmp_path):
  p = tmp_path / "pairs.txt"
  p.write_text("2\t1\nAnn\t1\t2\nAnn\t1\tBob\t3\nCid\t2\t4\nBob\t1\tCid\t1\n")
  pairs = E.read_pairs(str(p), "/lfw")
  assert pairs[0] == ("/lfw/Ann/Ann_0001.jpg", "/lfw/Ann/Ann_0002.jpg", True, 0)
  assert pairs[1] == ("/lfw/Ann/Ann_0001.jpg", "/lfw/Bob/Bob_0003.jpg", False, 0)
  assert [x[3] for x in pairs] == [0, 0, 1, 1]
  p.write_text("2\t1\nAnn\t1\t2\n")
  with pytest.raises(DataError, match="header says"):
    E.read_pairs(str(p), "/lfw")
  p.write_text("2\t1\nAnn\t1\t2\nAnn\t1\tBob\nCid\t2\t4\nBob\t1\tCid\t1\n")
  with pytest.raises(DataError, match="line 3"):
    E.read_pairs(str(p), "/lfw")
