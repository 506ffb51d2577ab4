"""dlib's shape-predictor file (`dlib/image_processing/shape_predictor.h`), read safely.

    sp = read_shape_predictor("shape_predictor_68_face_landmarks.dat")
    sp.initial_shape   # (P, 2) float32: the mean shape in the face rectangle's unit frame
    sp.idx             # (C, T, S, 2) int32: each split's two feature-pixel indices
    sp.thresh          # (C, T, S) float32
    sp.leaves          # (C, T, L, P, 2) float32: each leaf's shape increment
    sp.anchor          # (C, F) int32: the shape point each feature pixel hangs from
    sp.deltas          # (C, F, 2) float32: its offset from that point (unit frame)

The serialisation, in dlib's order (every number a dlib integer; floats are two):
  int version (1); matrix<float,0,1> initial_shape (2P x 1, x0 y0 x1 y1 ...);
  vector<vector<regression_tree>> forests, a regression_tree being
    vector<split_feature> splits (unsigned long idx1, idx2; float thresh) and
    vector<matrix<float,0,1>> leaf_values (2P x 1 each);
  vector<vector<unsigned long>> anchor_idx; vector<vector<dlib::vector<float,2>>> deltas.

The 68-point file is ~33M integers (16M leaf floats). They are decoded in one vectorised
pass (`DlibReader.int_run`, a jitted integer walk plus numpy) and the structure is then
read by slicing that array, one Python step per tree (7,500): about 3 s in all instead
of a minute for a number-by-number reader. Every length is checked against what is left;
the trees must be complete binary trees (L = S + 1 leaves, a power of two) of one depth,
every forest of one size, every split index below the cascade's feature count and every
anchor below the number of points, or the file is refused with a FileFormatError naming it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxvision.core import dlib_format
from jaxvision.core.errors import FileFormatError


@dataclasses.dataclass
class ShapePredictor:
  initial_shape: np.ndarray
  idx: np.ndarray
  thresh: np.ndarray
  leaves: np.ndarray
  anchor: np.ndarray
  deltas: np.ndarray

  @property
  def num_points(self) -> int:
    return self.initial_shape.shape[0]

  @property
  def dims(self) -> dict:
    """The model kwargs this file fits (the `DlibERT` module's attributes)."""
    c, t, s, _ = self.idx.shape
    return {"num_points": self.num_points, "num_cascades": c, "num_trees": t,
            "depth": int(np.log2(s + 1)), "num_features": self.anchor.shape[1]}


def read_shape_predictor(path_or_bytes, name: str | None = None) -> ShapePredictor:
  """Parses a shape predictor from a path or bytes (errors name `name` or the path)."""
  if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
    r = dlib_format.DlibReader(bytes(path_or_bytes), name or "shape predictor")
  else:
    r = dlib_format.read_file(str(path_or_bytes))
  if r.left() == 0:
    raise r.error("empty file")
  run = r.int_run()
  return parse_ints(run)


def parse_ints(run: dlib_format.IntRun) -> ShapePredictor:
  version = run.int("version")
  if version != 1:
    raise run.error(f"shape predictor version {version}, expected 1 (not a dlib shape "
                    "predictor?)", 0)
  rows, cols = run.int("initial_shape rows"), run.int("initial_shape cols")
  if rows >= 0 or cols != -1 or -rows % 2:
    raise run.error(f"initial_shape: matrix shape ({-rows}, {-cols}), expected (2P, 1)",
                    run.i - 2)
  d = -rows
  p = d // 2
  initial = run.floats(d, "initial_shape").reshape(p, 2)

  n_casc = run.count("number of cascades", 1, limit=1000)
  fast = _uniform_forests(run, n_casc, d)
  if fast is not None:
    splits, thresh, leaves = fast
    n_trees, n_splits = splits.shape[1], splits.shape[2]
  else:
    splits, thresh, leaves, n_trees, n_splits = _forests_tree_by_tree(run, n_casc, d)
  return _anchors_and_deltas(run, initial, splits, thresh, leaves, n_casc, p)


def _uniform_forests(run, n_casc: int, d: int):
  """All forests at once when every forest has the first one's tree count and every
  tree the first tree's split count (dlib's trainer makes them so): the integers then
  lie at computable strides and a reshape reads them. None when the file is not so laid
  out (the tree-by-tree reader then finds and names the irregularity)."""
  v, i0 = run.values, run.i
  if run.left() < 3:
    return None
  t, s = int(v[i0]), int(v[i0 + 1])
  if t < 1 or s < 1 or (s + 1) & s or i0 + 2 + 4 * s >= len(v):
    return None
  nl = s + 1
  leaf_width = 2 + 4 * (d // 2)
  block = 2 + 4 * s + nl * leaf_width        # one tree's integers
  forest = 1 + t * block
  if run.left() < n_casc * forest:
    return None
  f = v[i0:i0 + n_casc * forest].reshape(n_casc, forest)
  if (f[:, 0] != t).any():
    return None
  trees = f[:, 1:].reshape(n_casc, t, block)
  if (trees[..., 0] != s).any() or (trees[..., 1 + 4 * s] != nl).any():
    return None
  lv = trees[..., 2 + 4 * s:].reshape(n_casc, t, nl, leaf_width)
  if (lv[..., 0] != -d).any() or (lv[..., 1] != -1).any():
    return None
  sp = trees[..., 1:1 + 4 * s].reshape(n_casc, t, s, 4)
  splits = sp[..., :2]
  if (splits < 0).any():
    raise run.error("a negative split index")
  thresh = dlib_format.decode_floats(sp[..., 2], sp[..., 3])
  pairs = lv[..., 2:].reshape(n_casc, t, nl, d // 2, 2, 2)
  leaves = dlib_format.decode_floats(pairs[..., 0], pairs[..., 1])
  run.i = i0 + n_casc * forest
  return splits, thresh, leaves


def _forests_tree_by_tree(run, n_casc: int, d: int):
  p = d // 2
  idx_all, thr_all, leaf_all = [], [], []
  n_trees = n_splits = None
  leaf_width = 2 + 2 * d
  for c in range(n_casc):
    t = run.count(f"cascade {c}: number of trees", 2, limit=100_000)
    if n_trees is None:
      n_trees = t
    elif t != n_trees:
      raise run.error(f"cascade {c} has {t} trees, cascade 0 {n_trees} (not supported)",
                      run.i - 1)
    for k in range(t):
      s = run.count(f"cascade {c} tree {k}: number of splits", 4, limit=1 << 16)
      if n_splits is None:
        n_splits = s
        if s < 1 or (s + 1) & s:
          raise run.error(f"tree with {s} splits is not a complete binary tree", run.i - 1)
      elif s != n_splits:
        raise run.error(f"cascade {c} tree {k}: {s} splits, other trees {n_splits}",
                        run.i - 1)
      sp = run.take(4 * s, "splits").reshape(s, 4)
      nl = run.count(f"cascade {c} tree {k}: number of leaves", leaf_width)
      if nl != s + 1:
        raise run.error(f"cascade {c} tree {k}: {nl} leaves for {s} splits", run.i - 1)
      lv = run.take(nl * leaf_width, "leaf values").reshape(nl, leaf_width)
      if (lv[:, 0] != -d).any() or (lv[:, 1] != -1).any():
        raise run.error(f"cascade {c} tree {k}: a leaf is not a {d} x 1 matrix",
                        run.i - nl * leaf_width)
      idx_all.append(sp[:, :2])
      thr_all.append(sp[:, 2:])
      leaf_all.append(lv[:, 2:])
  if n_trees is None or n_casc == 0 or n_trees == 0:
    raise run.error("a shape predictor without trees")
  splits = np.stack(idx_all).reshape(n_casc, n_trees, n_splits, 2)
  if (splits < 0).any():
    raise run.error("a negative split index")
  thr = np.stack(thr_all).reshape(-1, 2)
  thresh = dlib_format.decode_floats(thr[:, 0], thr[:, 1]).reshape(n_casc, n_trees, n_splits)
  lv = np.stack(leaf_all).reshape(-1, 2)
  leaves = dlib_format.decode_floats(lv[:, 0], lv[:, 1]).reshape(
      n_casc, n_trees, n_splits + 1, p, 2)

  return splits, thresh, leaves, n_trees, n_splits


def _anchors_and_deltas(run, initial, splits, thresh, leaves, n_casc, p):
  if run.int("number of anchor lists") != n_casc:
    raise run.error("anchor_idx: not one list per cascade", run.i - 1)
  anchors = []
  for c in range(n_casc):
    f = run.count(f"cascade {c}: number of feature pixels", 1, limit=1 << 20)
    anchors.append(run.take(f, "anchor_idx"))
  nf = len(anchors[0])
  if any(len(a) != nf for a in anchors):
    raise run.error("cascades with different numbers of feature pixels (not supported)")
  anchor = np.stack(anchors)
  if (anchor < 0).any() or (anchor >= p).any():
    raise run.error(f"anchor index outside the {p} shape points")
  if run.int("number of delta lists") != n_casc:
    raise run.error("deltas: not one list per cascade", run.i - 1)
  deltas = []
  for c in range(n_casc):
    if run.int(f"cascade {c}: number of deltas") != nf:
      raise run.error(f"cascade {c}: deltas and anchors differ in number", run.i - 1)
    deltas.append(run.floats(2 * nf, "deltas").reshape(nf, 2))
  if run.left():
    raise run.error(f"{run.left()} integers after the shape predictor")
  if (splits >= nf).any():
    raise run.error(f"split index outside the {nf} feature pixels")
  arrays = (initial, thresh, leaves, np.stack(deltas))
  if not all(np.isfinite(a).all() for a in arrays):
    raise FileFormatError(f"{run.reader.name}: shape predictor holds NaN or Inf")
  return ShapePredictor(initial.astype(np.float32), splits.astype(np.int32), thresh,
                        leaves, anchor.astype(np.int32), np.stack(deltas).astype(np.float32))
