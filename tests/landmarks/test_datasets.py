"""Landmark datasets: the 300-W and WFLW builders on tiny fake layouts made from the
embedded photos (points round-trip exactly, splits and counts, one-line errors), PFLD's
attribute weights against a direct formula, and horizontal flips (the mirror permutations
are involutions; they map dlib's mean face and dlib's prediction on a mirrored photo onto
the mirrored points)."""
import os

import numpy as np
import pytest
from PIL import Image

from jaxvision.core.errors import DataError
from jaxvision.core.io import decode_image
from jaxvision.landmarks import data as D
from jaxvision.landmarks import datasets as S
from jaxvision.landmarks import convert as C
from tests.landmarks import photos as P

needs_dlib_files = pytest.mark.skipif(C.package_models_dir() is None,
                                      reason="face-recognition-models is not installed")


def _images():
  """Small real images: LFW faces (grey), astronaut and camera crops; RGB and grey."""
  ph = P.photos()
  lfw = ph["lfw"]
  out = [np.repeat(lfw[10 + r * 135:135 + r * 135, c * 125:(c + 1) * 125, None], 3, -1)
         for r in range(2) for c in range(4)]
  out.insert(1, ph["camera"][40:180, 200:330])     # grey (a grey JPEG in the 300-W layout:
  out.append(ph["astronaut"][60:200, 150:290])     # stored as a PNG of its RGB)
  return out


def _random_points(rng, h, w, n):
  return rng.uniform([2, 2], [w - 3, h - 3], (n, 2)).astype(np.float32)


def _fake_300w(root, rng):
  ims = _images()
  layout = {"lfpw/trainset": 2, "helen/trainset": 2, "afw": 1, "lfpw/testset": 1,
            "helen/testset": 2, "ibug": 1}
  k = 0
  for rel, n in layout.items():
    os.makedirs(root / rel)
    for j in range(n):
      im = ims[k % len(ims)]
      ext = ".jpg" if k % 2 else ".png"
      stem = root / rel / f"img_{k:02d}"
      Image.fromarray(im).save(str(stem) + ext)
      D.write_pts(str(stem) + ".pts", _random_points(rng, *im.shape[:2], 68))
      k += 1
  return layout


def _wflw_line(pts, box, attrs, rel):
  return " ".join([repr(float(v)) for v in pts.ravel()] + [repr(float(v)) for v in box]
                  + [str(int(a)) for a in attrs] + [rel])


def _fake_wflw(root, rng):
  ims = _images()
  lists = root / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
  os.makedirs(lists)
  faces = {"train": [], "test": []}
  for split, n in (("train", 5), ("test", 2)):
    lines = []
    for j in range(n):
      k = j // 2 if split == "train" else 3 + j     # two faces per train picture
      rel = f"{k}--Event/e_{k}.jpg"
      d = root / "WFLW_images" / f"{k}--Event"
      os.makedirs(d, exist_ok=True)
      Image.fromarray(ims[k]).save(d / f"e_{k}.jpg", quality=90)
      pts = _random_points(rng, *ims[k].shape[:2], 98).astype(np.float64) + rng.random()
      box = np.concatenate([pts.min(0) - 1, pts.max(0) + 1])
      attrs = rng.integers(0, 2, 6) * (rng.random() < 0.7)
      lines.append(_wflw_line(pts, box, attrs, rel))
      faces[split].append((rel, pts, box, attrs))
    (lists / f"list_98pt_rect_attr_{split}.txt").write_text("\n".join(lines) + "\n")
  return faces


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """Both fake layouts, built once into one TFDS data dir (their default manual dirs)."""
  data_dir = tmp_path_factory.mktemp("lm_tfds")
  rng = np.random.default_rng(0)
  m300, mwflw = (data_dir / "downloads" / "manual" / n for n in ("300w", "wflw"))
  layout = _fake_300w(m300, rng)
  wflw = _fake_wflw(mwflw, rng)
  return dict(data_dir=str(data_dir), m300=m300, layout=layout, mwflw=mwflw, wflw=wflw)


def test_300w_builder_round_trip(built):
  m = built["m300"]
  want = {s: [f"{rel}/{f}" for rel in folders for f in sorted(os.listdir(m / rel))
               if not f.endswith(".pts")] for s, folders in S.IBUG_FOLDERS.items()}
  want["full"] = want["common"] + want["challenging"]
  assert [len(want[s]) for s in ("train", "common", "challenging", "full")] == [5, 3, 1, 4]
  for split in S.SPLITS["300w"]:
    src = S.get_source("300w", split, built["data_dir"])
    assert len(src) == len(want[split])
    for i in range(len(src)):
      r = src[i]
      assert r["name"] == want[split][i]
      path = m / r["name"]
      ref = D.read_pts(os.path.splitext(str(path))[0] + ".pts")
      np.testing.assert_array_equal(r["points"], ref)           # exactly the .pts values
      np.testing.assert_array_equal(r["box"], np.r_[ref.min(0), ref.max(0)])
      np.testing.assert_array_equal(r["attributes"], np.zeros(6))
      np.testing.assert_array_equal(r["image"], decode_image(path.read_bytes()))
  with pytest.raises(DataError, match="unknown split 'test'"):
    S.get_source("300w", "test", built["data_dir"])


def test_wflw_builder_round_trip_and_attributes(built):
  for split, faces in built["wflw"].items():
    src = S.get_source("wflw", split, built["data_dir"])
    assert len(src) == len(faces)
    for i, (rel, pts, box, attrs) in enumerate(faces):
      r = src[i]
      assert r["name"] == os.path.join("WFLW_images", rel)
      assert r["points"].shape == (98, 2)
      np.testing.assert_array_equal(r["points"], pts.astype(np.float32))
      np.testing.assert_array_equal(r["box"], box.astype(np.float32))
      np.testing.assert_array_equal(r["attributes"], attrs)
      np.testing.assert_array_equal(
          r["image"], decode_image((built["mwflw"] / r["name"]).read_bytes()))
    np.testing.assert_array_equal(src.attributes(), np.stack([f[3] for f in faces]))


def test_bad_layouts_are_one_line_errors(tmp_path, built):
  def one_line(match, fn, *a):
    with pytest.raises(DataError, match=match) as e:
      fn(*a)
    assert "\n" not in str(e.value)
  one_line("not prepared.*manual dir", S.prepare, "wflw", str(tmp_path / "empty"))
  src = built["mwflw"] / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
  bad = tmp_path / "list_98pt_rect_attr_train.txt"
  lines = (src / "list_98pt_rect_attr_train.txt").read_text().splitlines()
  bad.write_text("\n".join([lines[0], lines[1].rsplit(" ", 2)[0] + " x.jpg"]) + "\n")
  one_line(r"list_98pt_rect_attr_train.txt: line 2: 206 fields", S.parse_wflw_list, str(bad))
  f = lines[0].split()
  bad.write_text(" ".join(f[:200] + ["2"] + f[201:]) + "\n")
  one_line("line 1: attribute flags", S.parse_wflw_list, str(bad))
  bad.write_text(" ".join(f[:5] + ["nan?"] + f[6:]) + "\n")
  one_line("line 1: a non-numeric", S.parse_wflw_list, str(bad))
  # a manual dir with a malformed line: the build stops before any work, nothing prepared
  man = tmp_path / "wflw_bad"
  lists = man / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
  lists.mkdir(parents=True)
  os.symlink(built["mwflw"] / "WFLW_images", man / "WFLW_images")
  (lists / "list_98pt_rect_attr_train.txt").write_text(bad.read_text())
  (lists / "list_98pt_rect_attr_test.txt").write_text(lines[0] + "\n")
  one_line(r"list_98pt_rect_attr_train.txt: line 1: a non-numeric", S.prepare, "wflw",
           str(tmp_path / "d2"), str(man))
  assert not os.path.exists(tmp_path / "d2" / "jaxvision_wflw" / "1.0.0" / "dataset_info.json")
  pts = tmp_path / "p.pts"
  pts.write_text("version: 1\nn_points: 68\n{\n1 2\n}\n")
  one_line("p.pts: n_points 68 but 1 points", D.read_pts, str(pts))
  m = tmp_path / "m300"
  (m / "lfpw" / "trainset").mkdir(parents=True)
  one_line("helen/trainset: missing", S.scan_300w, str(m))


def test_attribute_weights_match_the_formula():
  rng = np.random.default_rng(3)
  attrs = (rng.random((40, 6)) < [0.05, 0.2, 0.1, 0.3, 0.15, 0.0]).astype(np.int32)
  attrs[:3] = 0                                   # some "normal" faces for sure
  attrs[3, 0] = 1                                 # and one profile face
  w = D.class_weights(attrs)
  n = len(attrs)
  classes = [attrs[:, c] == 1 for c in range(6)] + [attrs.sum(1) == 0]
  direct_w = [n / c.sum() if c.sum() else 0.0 for c in classes]
  np.testing.assert_allclose(w, direct_w)
  assert w[5] == 0 and w[6] > 1                  # blur absent: no weight; normal present
  a = D.sample_weights(attrs, w)
  direct = [sum(n / classes[c].sum() for c in range(7) if classes[c][m]) for m in range(n)]
  np.testing.assert_allclose(a, direct, rtol=1e-6)
  # the weight scales PFLD's per-face loss: w_m = a_m (floor + sum_k (1 - cos))
  from jaxvision.landmarks import task
  pred, gt = rng.normal(size=(n, 8)), rng.normal(size=(n, 8))
  ap, ag = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
  want = np.mean(a * (1.0 + (1 - np.cos(ap - ag)).sum(1)) * ((pred - gt) ** 2).sum(1))
  np.testing.assert_allclose(task.pfld_loss(pred, gt, ap, ag, a), want, rtol=1e-5)
  np.testing.assert_allclose(task.pfld_loss(pred, gt, ap, ag), np.mean(
      (1.0 + (1 - np.cos(ap - ag)).sum(1)) * ((pred - gt) ** 2).sum(1)), rtol=1e-5)


def test_wflw_config_batches(built):
  """configs/landmarks.py:data=tfds:wflw -> 98 points, batches carrying the attribute
  weights of their faces (computed from the training split); flips keep them."""
  from configs import landmarks as cfg
  from jaxvision.landmarks import task
  c = cfg.get_config("data=tfds:wflw,flip=0.5")
  assert c.model.kwargs.num_points == 98 and c.attribute_weights
  c.data.data_dir, c.batch_size, c.model.kwargs.input_size = built["data_dir"], 8, 32
  loader, evals = task.landmarks_make_data(c)
  attrs = np.stack([f[3] for f in built["wflw"]["train"]])
  per_face = D.sample_weights(attrs, D.class_weights(attrs))
  batch = next(iter(loader))
  assert batch["input"].shape == (8, 32, 32, 3) and batch["landmarks"].shape == (8, 196)
  assert set(np.round(batch["attr_weight"], 4)) <= set(np.round(per_face, 4))
  assert sum(len(e["input"]) for e in evals) == 2
  c = cfg.get_config("data=tfds:300w")
  c.attribute_weights, c.data.data_dir = True, built["data_dir"]
  with pytest.raises(DataError, match="carries no attributes"):
    task.landmarks_make_data(c)


# ------------------------------------------------------------------------------ flips

def test_mirror_permutations_are_involutions():
  for n, perm in ((68, D.MIRROR_68), (98, D.MIRROR_98)):
    assert sorted(perm) == list(range(n))
    np.testing.assert_array_equal(perm[perm], np.arange(n))
    pts = np.random.default_rng(n).uniform(0, 50, (3, n, 2))
    np.testing.assert_allclose(D.flip_points(D.flip_points(pts, 49), 49), pts)
  # the midline points stay: nose bridge, nose tip, lip middles, chin
  assert all(D.MIRROR_68[i] == i for i in (8, 27, 28, 29, 30, 33, 51, 57, 62, 66))
  assert all(D.MIRROR_98[i] == i for i in (16, 51, 52, 53, 54, 57, 79, 85, 90, 94))
  # WFLW's 68 iBUG points mirror as iBUG's do
  np.testing.assert_array_equal(D.MIRROR_98[D.WFLW_TO_68], D.WFLW_TO_68[D.MIRROR_68])
  with pytest.raises(DataError, match="68 .* 98"):
    D.flip_points(np.zeros((5, 2)))


def _dlib_mean_shape():
  """dlib's 68-point mean shape (the unit face rectangle), read from the file's head."""
  from jaxvision.core import dlib_format
  path = C.default_path("dlib_ert_68")
  with open(path, "rb") as f:
    r = dlib_format.DlibReader(f.read(1 << 13), path)
  assert r.int("version") == 1
  return r.matrix("initial_shape", cols=1).reshape(68, 2).astype(np.float64)


@needs_dlib_files
def test_mirror_maps_dlibs_mean_face_onto_itself():
  """dlib's mean face is left-right symmetric in its unit rectangle: mirrored (x -> 1 - x)
  and renumbered it is itself, to 1e-4 of the rectangle; without the renumbering, or with
  the eyes' points paired in another order, it is not."""
  m = _dlib_mean_shape()
  assert np.abs(D.flip_points(m) - m).max() < 1e-4
  wrong = m.copy()
  wrong[:, 0] = 1 - wrong[:, 0]
  assert np.abs(wrong - m).max() > 0.3
  bad = D.MIRROR_68.copy()                      # upper lids paired 37 <-> 43, 38 <-> 44
  bad[[37, 38, 43, 44]] = [43, 44, 37, 38]
  assert (bad[bad] == np.arange(68)).all()
  assert np.abs(wrong[bad] - m).max() > 0.03
  # a 98-point WFLW-markup face built from it (the WFLW points between iBUG's as midpoints
  # of their neighbours, the pupils as the eyes' centres) is symmetric under MIRROR_98
  s = np.zeros((98, 2))
  s[D.WFLW_TO_68] = m
  for i in range(1, 32, 2):
    s[i] = (s[i - 1] + s[i + 1]) / 2
  for lower, (a, b) in zip((range(38, 42), range(47, 51)), ((37, 33), (46, 42))):
    for k, i in enumerate(lower):          # a lower eyebrow edge below its upper one
      s[i] = s[a] + (s[b] - s[a]) * (k + 1) / 5 + [0, 0.03]
  for i, (a, b) in {62: (61, 63), 66: (65, 67), 70: (69, 71), 74: (73, 75)}.items():
    s[i] = (s[a] + s[b]) / 2
  s[96], s[97] = s[60:68].mean(0), s[68:76].mean(0)
  assert np.abs(D.flip_points(s) - s).max() < 1e-4


def test_flipped_batches_and_crops():
  """A mirrored image's crop is the mirrored crop (unit frame x -> 1 - x); FaceBatches with
  flip 1 gives the flip-0 batch mirrored, the points renumbered, the pose refitted."""
  rng = np.random.default_rng(5)
  img = (rng.random((60, 70, 3)) * 255).astype(np.uint8)
  pts = _random_points(rng, 60, 70, 68)
  crop, unit = D.crop_face(img, pts, 32)
  mcrop, munit = D.crop_face(img[:, ::-1], D.flip_points(pts, 69), 32)
  np.testing.assert_allclose(mcrop, crop[:, ::-1], atol=1e-6)
  np.testing.assert_allclose(munit, D.flip_points(unit), atol=1e-5)
  samples = D.samples_from([(img, pts), (img[::-1], pts * [1, -1] + [0, 59])], 32)
  b0 = D.FaceBatches(samples, 6, seed=1)[3]
  b1 = D.FaceBatches(samples, 6, seed=1, flip=1.0)[3]
  np.testing.assert_allclose(b1["input"], b0["input"][:, :, ::-1])
  l0 = b0["landmarks"].reshape(6, 68, 2)
  np.testing.assert_allclose(b1["landmarks"].reshape(6, 68, 2), D.flip_points(l0), atol=1e-6)
  from jaxvision.landmarks import pose
  np.testing.assert_allclose(b1["angles"], pose.fit_pose(D.flip_points(l0)), atol=1e-5)
  plain, half = (D.FaceBatches(samples, 64, seed=2, flip=f)[0] for f in (0.0, 0.5))
  mirrored = np.isclose(half["input"], plain["input"][:, :, ::-1]).all((1, 2, 3))
  kept = np.isclose(half["input"], plain["input"]).all((1, 2, 3))
  assert (mirrored ^ kept).all() and 16 < mirrored.sum() < 48   # each face one or the other
  lm = plain["landmarks"].reshape(64, 68, 2)
  want = np.where(mirrored[:, None, None], D.flip_points(lm), lm).reshape(64, -1)
  np.testing.assert_allclose(half["landmarks"], want, atol=1e-6)


@pytest.mark.longrun
@needs_dlib_files
def test_mirror_agrees_with_dlib_on_mirrored_photos():
  """dlib's 68 points on a mirrored photo (the rectangle mirrored too) are its points on
  the photo, mirrored and renumbered by MIRROR_68, within a few pixels (dlib's cascade is
  not exactly mirror-symmetric): the astronaut and eight LFW faces."""
  from jaxvision.landmarks import predictor
  lm = predictor.landmarker("dlib_ert_68")
  ph, rects = P.photos(), P.fixed_rects()
  for name, rs, tol in (("astronaut", rects["astronaut"][:1], 3.0), ("lfw", rects["lfw"], 6.0)):
    im = ph[name]
    w = im.shape[1]
    mr = [[w - 1 - r[2], r[1], w - 1 - r[0], r[3]] for r in rs]
    a = np.stack(lm(im, rs))
    b = np.stack(lm(np.ascontiguousarray(im[:, ::-1]), mr))
    err = np.linalg.norm(D.flip_points(a, w - 1) - b, axis=-1)
    assert err.max() < tol and err.mean() < 1.5, (name, err.max(), err.mean())
    plain = a.copy()
    plain[..., 0] = w - 1 - plain[..., 0]                # mirrored but not renumbered
    assert np.linalg.norm(plain - b, axis=-1).max() > 10 * tol
