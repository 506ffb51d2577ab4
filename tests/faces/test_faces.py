"""Face-detection pipeline: NMS, crops, the compiled MTCNN cascade vs the reference, CLI."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxvision.faces import boxes as geometry, detector as faces
from jaxvision.faces.convert import MTCNNWeightsError
from tests.faces import reference

REF = reference.REFERENCE_JSON


@pytest.fixture(scope="module")
def photos():
  return reference.photos()


@pytest.fixture(scope="module")
def detector():
  try:
    return faces.mtcnn_detector()
  except MTCNNWeightsError as e:
    pytest.skip(str(e))


# ---------------------------------------------------------------- NMS
def _greedy_nms_numpy(boxes, scores, thr, mode="union", plus_one=False):
  """The textbook loop (facenet-pytorch's nms_numpy / torchvision's greedy nms)."""
  e = 1.0 if plus_one else 0.0
  order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
  alive = np.ones(len(scores), bool)
  keep = np.zeros(len(scores), bool)
  area = (boxes[:, 2] - boxes[:, 0] + e) * (boxes[:, 3] - boxes[:, 1] + e)
  for i in order:
    if not alive[i]:
      continue
    keep[i] = True
    iw = np.maximum(np.minimum(boxes[i, 2], boxes[:, 2]) - np.maximum(boxes[i, 0], boxes[:, 0]) + e, 0)
    ih = np.maximum(np.minimum(boxes[i, 3], boxes[:, 3]) - np.maximum(boxes[i, 1], boxes[:, 1]) + e, 0)
    inter = iw * ih
    o = inter / (np.minimum(area[i], area) if mode == "min" else area[i] + area - inter)
    alive &= ~(o > thr)
    alive[i] = False
  return keep


K = 12
_nms_union = jax.jit(lambda b, s, v: geometry.nms(b, s, v, 0.5))
_nms_min = jax.jit(lambda b, s, v: geometry.nms(b, s, v, 0.7, mode="min", plus_one=True))
_overlap = jax.jit(jax.vmap(lambda b, bs: geometry.overlap(b, bs), in_axes=(0, None)))

box_sets = st.lists(
    st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 30), st.integers(1, 30),
              st.integers(0, 1000), st.booleans()),
    min_size=K, max_size=K)


def _arrays(rows):
  r = np.array(rows, np.float32)
  boxes = np.stack([r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]], 1)
  return boxes, r[:, 4] / 1000.0, r[:, 5].astype(bool)


@settings(max_examples=40, deadline=None)
@given(box_sets)
def test_nms_properties(rows):
  boxes, scores, valid = _arrays(rows)
  keep = np.asarray(_nms_union(boxes, scores, valid))
  assert not (keep & ~valid).any()
  # kept boxes overlap each other by at most the threshold
  iou = np.asarray(_overlap(boxes, boxes))
  kk = np.flatnonzero(keep)
  off = iou[np.ix_(kk, kk)][~np.eye(len(kk), dtype=bool)]
  assert (off <= 0.5 + 1e-6).all()
  # every dropped valid box is covered by a kept box scoring at least as high
  for j in np.flatnonzero(valid & ~keep):
    assert any(iou[i, j] > 0.5 and scores[i] >= scores[j] for i in kk)
  # the same set as the textbook greedy loop (ties: lower index first)
  want = _greedy_nms_numpy(boxes[valid], scores[valid], 0.5)
  np.testing.assert_array_equal(keep[valid], want)
  # idempotent
  np.testing.assert_array_equal(np.asarray(_nms_union(boxes, scores, keep)), keep)
  # 'Min' overlap with +1 widths (the reference's last NMS)
  keep_min = np.asarray(_nms_min(boxes, scores, valid))
  np.testing.assert_array_equal(keep_min[valid], _greedy_nms_numpy(
      boxes[valid], scores[valid], 0.7, "min", True))


def test_top_sorts_scores_and_masks_invalid():
  s = jnp.array([0.3, 0.9, 0.5, 0.7, 0.1])
  v = jnp.array([True, False, True, True, True])
  idx, ok = faces._top(s, v, 6)
  got = np.asarray(s)[np.asarray(idx)][np.asarray(ok)]
  np.testing.assert_array_equal(got, np.float32([0.7, 0.5, 0.3, 0.1]))
  assert np.asarray(ok).sum() == 4


# ---------------------------------------------------------------- crops
def _adaptive_avg_numpy(img, y0, y1, x0, x1, oh, ow):
  """torch adaptive_avg_pool2d (= interpolate mode='area') of a crop, by its formula."""
  crop = img[y0:y1, x0:x1].astype(np.float64)
  h, w = crop.shape[:2]
  out = np.zeros((oh, ow, img.shape[2]))
  for i in range(oh):
    a, b = (i * h) // oh, -(-((i + 1) * h) // oh)
    for j in range(ow):
      c, d = (j * w) // ow, -(-((j + 1) * w) // ow)
      out[i, j] = crop[a:b, c:d].mean((0, 1))
  return out


def test_area_crops_match_adaptive_pooling():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
  regions = np.array([[0, 37, 0, 53], [3, 30, 5, 14], [10, 11, 20, 21], [2, 40 - 3, 7, 50]],
                     np.int32)
  sizes = [(24, 24), (7, 5)]
  sat = geometry.integral_image(jnp.asarray(img))
  for oh, ow in sizes:
    got = np.asarray(geometry.area_crops(sat, jnp.asarray(regions), (oh, ow)))
    for k, (y0, y1, x0, x1) in enumerate(regions):
      np.testing.assert_allclose(got[k], _adaptive_avg_numpy(img, y0, y1, x0, x1, oh, ow),
                                 rtol=1e-5, atol=1e-3)
    # numpy's fast paths (whole image: rows then columns; crops: linear gathers) give the
    # very numbers of the jnp gathers
    sat_np = geometry.integral_image(img)
    np.testing.assert_array_equal(np.asarray(sat), sat_np)
    np.testing.assert_array_equal(geometry.area_crops(sat_np, regions, (oh, ow)), got)
    np.testing.assert_array_equal(geometry.area_crops(sat_np, regions[:1], (oh, ow)), got[:1])


def test_area_crops_exact_when_the_int32_table_wraps():
  """A photo whose pixel sum passes 2**31 (3000 x 3000 near-white): the int32 table wraps,
  and every window the detector takes (the coarsest pyramid level, a whole-image crop) is
  still the exact mean, as from an int64 table."""
  img = np.full((3000, 3000, 3), 250, np.uint8)
  img[1000:1500, 2000:2600] = (np.arange(600) % 256).astype(np.uint8)[None, :, None]
  sat = geometry.integral_image(img)
  assert sat.dtype == np.int32 and int(img.astype(np.int64).sum()) > 2 ** 31
  ref = np.zeros((3001, 3001, 3), np.int64)
  ref[1:, 1:] = img.astype(np.int64).cumsum(0).cumsum(1)
  levels = geometry.pyramid_scales(3000, 3000, 20.0, 0.709)
  _, hs, ws = levels[-1]                       # the coarsest level: the largest bins
  regions = np.array([[0, 3000, 0, 3000], [900, 1600, 1900, 2700]], np.int32)
  for size in ((hs, ws), (24, 24), (48, 48)):
    np.testing.assert_array_equal(geometry.area_crops(sat, regions, size),
                                  geometry.area_crops(ref, regions, size))
    np.testing.assert_array_equal(geometry.area_crops(sat, regions[:1], size),
                                  geometry.area_crops(ref, regions[:1], size))


def test_crop_and_resize_matches_bilinear_formula():
  rng = np.random.default_rng(1)
  img = rng.random((20, 30, 2)).astype(np.float32)
  boxes = np.array([[2.5, 3.0, 17.25, 12.0], [-3.0, -2.0, 8.0, 25.0]], np.float32)
  got = np.asarray(jax.jit(geometry.crop_and_resize, static_argnums=2)(img, boxes, 6))

  def px(y, x):  # zero outside
    return img[y, x] if 0 <= y < 20 and 0 <= x < 30 else np.zeros(2)

  for k, (x1, y1, x2, y2) in enumerate(boxes):
    for i in range(6):
      for j in range(6):
        y, x = y1 + (y2 - y1) * i / 5, x1 + (x2 - x1) * j / 5
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        dy, dx = y - y0, x - x0
        want = ((1 - dy) * (1 - dx) * px(y0, x0) + (1 - dy) * dx * px(y0, x0 + 1)
                + dy * (1 - dx) * px(y0 + 1, x0) + dy * dx * px(y0 + 1, x0 + 1))
        np.testing.assert_allclose(got[k, i, j], want, atol=1e-5)


def test_pack_levels_even_offsets_no_overlap():
  levels = geometry.pyramid_scales(720, 1280)
  sizes = [(hs, ws) for _, hs, ws in levels]
  offsets, (hc, wc) = geometry.pack_levels(sizes)
  occupied = np.zeros((hc, wc), int)
  for (h, w), (y, x) in zip(sizes, offsets):
    assert y % 2 == 0 and x % 2 == 0
    occupied[y:y + h, x:x + w] += 1
  assert occupied.max() == 1
  assert occupied.sum() / occupied.size > 0.6  # the canvas is not mostly empty


def test_pyramid_matches_reference_rule():
  levels = geometry.pyramid_scales(512, 512)
  assert len(levels) == 10 and levels[0][1:] == (308, 308)  # int(512 * 0.6 + 1)
  assert geometry.pyramid_scales(19, 400) == []  # 19 * 0.6 < 12: no level


def test_geometry_gives_the_same_numbers_in_numpy_and_jnp():
  """Mining (numpy) and detection (jnp, compiled) call the same geometry functions, which
  compute with their inputs' array module: the same float32 / integer operations in the
  same order. Windows, crops and squares come out identical even compiled; compiled
  regression and overlaps may differ in the last bit (XLA fuses a multiply-add into one
  rounding), and the calibration's pattern sum is a matrix product (the library's order)."""
  rng = np.random.default_rng(3)
  img = rng.integers(0, 256, (41, 57, 3), dtype=np.uint8)
  b = np.sort(rng.uniform(-8, 60, (16, 2, 2)), axis=1).reshape(16, 4).astype(np.float32)
  reg = rng.normal(0, 0.2, (16, 4)).astype(np.float32)
  probs = rng.dirichlet(np.full(45, 0.3), 16).astype(np.float32)
  labels = rng.integers(0, 45, 16)

  def both(fn, *args, rtol=0.0, atol=0.0, jit_rtol=0.0):
    got_np = fn(*args)
    for f, r in ((fn, rtol), (jax.jit(fn), max(rtol, jit_rtol))):
      got_jnp = f(*(jnp.asarray(a) for a in args))
      for x, y in zip(jax.tree.leaves(got_np), jax.tree.leaves(got_jnp)):
        assert isinstance(x, np.ndarray) and isinstance(y, jax.Array)
        np.testing.assert_allclose(x, np.asarray(y), rtol=r, atol=atol)
    return got_np

  idx = np.arange(400, dtype=np.int32)
  for scale in (0.6, 0.6 * 0.709, 0.6 * 0.709 ** 2, 0.3 * 0.709 ** 5):
    both(lambda i: geometry.cell_windows(i, 20, scale, rows=20), idx)
  sat = both(geometry.integral_image, img)
  regions, ok = both(lambda x: geometry.crop_regions(x, 41, 57), b)
  assert ok.any() and not ok.all()
  both(lambda s, r: geometry.area_crops(s, r, 12), sat, regions)
  both(geometry.rerec, b)
  both(lambda x, y: geometry.overlap(x[:, None], y[None]), b, b[::-1], jit_rtol=1e-6)
  both(lambda x, y: geometry.overlap(x[:, None], y[None], "min", True), b, b[::-1],
       jit_rtol=1e-6)
  both(geometry.bbreg, b, reg, jit_rtol=1e-6)
  both(lambda x, r: geometry.bbreg(x, r, plus_one=False), b, reg, jit_rtol=1e-6)
  both(geometry.calibration_windows, b, labels, jit_rtol=1e-6)
  both(geometry.apply_calibration, b, probs, atol=1e-5)
  np.testing.assert_array_equal(geometry.iou_matrix(b, b[::-1]),
                                geometry.overlap(b[:, None], b[::-1][None]))


# ---------------------------------------------------------------- the cascade
def _match(got, want, what):
  assert len(got) == len(want), f"{what}: {len(got)} faces, reference {len(want)}"
  for g, w in zip(got, want):
    gb, wb = np.array(g["box"]), np.array(w["box"])
    ix = max(0.0, min(gb[2], wb[2]) - max(gb[0], wb[0]))
    iy = max(0.0, min(gb[3], wb[3]) - max(gb[1], wb[1]))
    inter = ix * iy
    iou = inter / ((gb[2] - gb[0]) * (gb[3] - gb[1]) + (wb[2] - wb[0]) * (wb[3] - wb[1]) - inter)
    assert iou >= 0.999, f"{what}: IoU {iou:.4f}"
    # the tolerances docs/faces.md and the README state for these photos
    assert np.abs(gb - wb).max() <= 0.01, f"{what}: box {gb} vs {wb}"
    assert abs(g["score"] - w["score"]) <= 1e-5, what
    assert np.abs(np.array(g["landmarks"]) - np.array(w["landmarks"])).max() <= 1e-3, what


def test_reference_file_names_its_source():
  ref = json.load(open(REF))
  assert ref["reference"].startswith("facenet-pytorch")
  assert set(ref["photos"]) >= {"astronaut", "camera", "lfw_mosaic"}


def test_matches_reference_astronaut_and_grey_camera(detector, photos):
  """Batch of two 512x512 photos (one grey) against facenet-pytorch's detections."""
  ref = json.load(open(REF))["photos"]
  grey = photos["camera"]
  assert grey.ndim == 2
  batch = np.stack([photos["astronaut"], np.repeat(grey[..., None], 3, -1)])
  got = detector.detect(batch)
  _match(got[0], ref["astronaut"]["faces"], "astronaut")
  _match(got[1], ref["camera"]["faces"], "camera")
  r = detector.raw(batch)  # fixed-size buffers, valid entries first, sorted by score
  for s, ok in zip(r["scores"], r["valid"]):
    n = ok.sum()
    assert ok[:n].all() and not ok[n:].any()
    assert (np.diff(s[:n]) <= 0).all()


@pytest.mark.slow
def test_matches_reference_wide_and_no_face(detector, photos):
  ref = json.load(open(REF))["photos"]
  _match(detector.detect(photos["wide"])[0], ref["wide"]["faces"], "wide")
  assert detector.detect(photos["coffee"])[0] == ref["coffee"]["faces"] == []


def _mosaic_batch(photos):
  m = photos["lfw_mosaic"]
  return np.stack([m, np.repeat(m[..., :1], 3, -1), m[:, ::-1]])


def test_batch_equals_one_at_a_time(detector, photos):
  """A batch of 3 (the CLI test's shape: compiled once) vs each image alone; the
  mosaic's six faces match the reference (multi-face fidelity)."""
  batch = _mosaic_batch(photos)
  both = detector.detect(batch)
  one = [detector.detect(x)[0] for x in batch]
  _match(one[0], json.load(open(REF))["photos"]["lfw_mosaic"]["faces"], "lfw_mosaic")
  assert [len(f) for f in one] == [6, 6, 6]
  for a, b in zip(one, both):
    assert len(a) == len(b)
    for fa, fb in zip(a, b):
      np.testing.assert_allclose(fa["box"], fb["box"], atol=1e-3)
      np.testing.assert_allclose(fa["score"], fb["score"], atol=1e-6)
      np.testing.assert_allclose(fa["landmarks"], fb["landmarks"], atol=1e-3)


def test_jit_equals_no_jit_first_stage(detector, photos):
  """The P-Net stage alone (the full cascade un-jitted takes a minute op by op)."""
  nets = {"pnet": (detector._modules["pnet"], detector.variables["pnet"])}
  det = faces.FaceDetector(nets, faces.DetectorConfig(min_face=60, per_scale=32, proposals=32,
                                                      stage3=8))
  img = photos["lfw_mosaic"][35:120, 20:105]  # one 75-px face; two pyramid levels
  a, b = det.raw(img), det.raw(img, jit=False)
  np.testing.assert_array_equal(a["valid"], b["valid"])
  assert a["valid"].any()
  np.testing.assert_allclose(a["boxes"][a["valid"]], b["boxes"][b["valid"]], atol=1e-3)
  np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)


def test_tiny_and_extreme_aspect_images(detector):
  rng = np.random.default_rng(0)
  assert detector.detect(rng.integers(0, 255, (11, 40, 3), np.uint8)) == [[]]  # < 12 px
  assert detector.detect(rng.integers(0, 255, (5, 5), np.uint8)) == [[]]
  # 1:40 strip (one pyramid level), through the first stage (its compile is the cheap one)
  nets = {"pnet": (detector._modules["pnet"], detector.variables["pnet"])}
  det = faces.FaceDetector(nets, faces.DetectorConfig(per_scale=32, proposals=32, stage3=8))
  strip = rng.integers(0, 255, (24, 960, 3), np.uint8)
  r = det.raw(strip)
  assert r["boxes"].shape == (1, 8, 4)
  assert np.isfinite(r["boxes"]).all() and np.isfinite(r["scores"]).all()
  tall = det.raw(strip.transpose(1, 0, 2))
  assert np.isfinite(tall["boxes"]).all()


def test_as_rgb_batch_grey_rgba_and_errors():
  grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
  out = faces.as_rgb_batch(grey)
  assert out.shape == (1, 3, 4, 3) and (out[0, ..., 0] == grey).all() and (out[..., 2] == grey).all()
  rgba = np.zeros((2, 5, 6, 4), np.uint8)
  assert faces.as_rgb_batch(rgba).shape == (2, 5, 6, 3)
  with pytest.raises(ValueError, match="uint8"):
    faces.as_rgb_batch(np.zeros((5, 5, 3), np.float32) + 0.5)


# ---------------------------------------------------------------- command line
def test_cli_detect_faces_json_and_draw(detector, photos, tmp_path, monkeypatch, capsys):
  from PIL import Image
  from jaxvision import cli
  mosaic = photos["lfw_mosaic"]
  paths = [str(tmp_path / "mosaic.png"), str(tmp_path / "grey.png"), str(tmp_path / "rgba.png")]
  Image.fromarray(mosaic).save(paths[0])
  Image.fromarray(mosaic[..., 0]).save(paths[1])  # grey ('L')
  Image.fromarray(np.dstack([mosaic, np.full(mosaic.shape[:2], 255, np.uint8)])).save(paths[2])
  monkeypatch.setattr(faces, "mtcnn_detector", lambda *a, **k: detector)  # reuse the compile
  out = tmp_path / "faces.json"
  rc = cli.main(["detect-faces", *paths, "--json", str(out), "--draw", str(tmp_path / "drawn")])
  assert rc == 0, capsys.readouterr().err
  res = json.loads(out.read_text())
  assert list(res) == paths
  ref = json.load(open(REF))["photos"]["lfw_mosaic"]["faces"]
  for p in paths:
    _match(res[p], ref, p)
    assert all(len(f["landmarks"]) == 5 for f in res[p])
  drawn = np.asarray(Image.open(tmp_path / "drawn" / "mosaic.png"))
  assert drawn.shape == mosaic.shape and (drawn != mosaic).any()
  assert sorted(os.listdir(tmp_path / "drawn")) == ["grey.png", "mosaic.png", "rgba.png"]
  # user errors: one line, non-zero, nothing written
  bad = tmp_path / "bad.json"
  assert cli.main(["detect-faces", str(tmp_path / "missing.png"), "--json", str(bad)]) == 1
  assert cli.main(["detect-faces", paths[0], "--json", str(bad), "--model", "cascade-cnn"]) == 1
  err = capsys.readouterr().err
  assert "missing.png" in err and "--checkpoint" in err and not bad.exists()


def test_crowd_keeps_every_face_and_mixed_sizes_compile_four_programs(detector):
  """No buffer caps the faces (72 LFW faces, more than the default stage3=64 that used to
  be the most a photo could hold), and a folder of five sizes compiles the four fixed-batch
  programs at most: P-Net on 1 tile, R-Net on 64 or 16 crops, O-Net on 4."""
  from jaxvision.core.compile import count_compiles
  from tests.faces import face_folder
  bg = face_folder.resize(face_folder.photo("grass")[..., :3], 760, 680)
  crowd = [((9 * r + c) % 100, 52, 12 + 82 * c, 14 + 82 * r) for r in range(8) for c in range(9)]
  img = face_folder.paste_faces(bg, crowd)
  det = faces.FaceDetector({k: (detector._modules[k], detector.variables[k])
                            for k in ("pnet", "rnet", "onet")}, detector.config)
  sizes = [(120, 160), (333, 517), (97, 203), (480, 640)]
  rng = np.random.default_rng(0)
  others = [rng.integers(0, 255, s + (3,), np.uint8) for s in sizes]
  with count_compiles() as c:
    found = list(det.detect_each([img] + others))
  assert c.requests <= 4, c
  assert len(found[0]) >= 72 > det.config.stage3
  pasted = np.array([[x, y, x + s, y + s] for _, s, x, y in crowd], np.float32)
  boxes = np.array([f["box"] for f in found[0]], np.float32)
  iou = geometry.iou_matrix(pasted, boxes)
  assert (iou.max(axis=1) > 0.4).all()  # every pasted face has its detection


def test_matrix_nms_keeps_exactly_what_the_loop_keeps(monkeypatch):
  """nms_numpy's overlap-matrix pass (up to NMS_MATRIX_MAX candidates) keeps the very same
  indices, in the same order, as its one-overlap-per-kept-box loop (used beyond): on
  crowded random boxes, duplicates, score ties and boxes whose IoU is exactly the
  threshold, in both modes."""
  rng = np.random.default_rng(7)
  for trial in range(30):
    n = int(rng.integers(2, 400))
    xy = rng.uniform(0, 150, (n, 2)).astype(np.float32)
    wh = rng.uniform(4, 50, (n, 2)).astype(np.float32)
    b = np.concatenate([xy, xy + wh], 1)
    b[n // 2:n // 2 + 3] = b[0]  # exact duplicates
    b[1] = [0, 0, 10, 10]
    b[-1] = [5, 0, 15, 10]  # IoU with b[1] is exactly 1/3
    s = rng.uniform(0, 1, n).astype(np.float32).round(2)  # many ties
    for mode, plus_one, thr in (("union", False, 0.5), ("union", False, 1 / 3),
                                ("min", True, 0.7)):
      matrix = faces.nms_numpy(b, s, thr, mode, plus_one)
      monkeypatch.setattr(faces, "NMS_MATRIX_MAX", 0)
      loop = faces.nms_numpy(b, s, thr, mode, plus_one)
      monkeypatch.undo()
      np.testing.assert_array_equal(matrix, loop)


def test_host_nms_is_the_compiled_nms():
  """detector.nms_numpy (host) keeps what boxes.nms (jnp, lax.while_loop) keeps, in IoU
  and in 'Min' mode with MATLAB's +1."""
  rng = np.random.default_rng(1)
  xy = rng.uniform(0, 200, (300, 2)).astype(np.float32)
  wh = rng.uniform(5, 60, (300, 2)).astype(np.float32)
  b = np.concatenate([xy, xy + wh], 1)
  s = rng.uniform(0, 1, 300).astype(np.float32)
  s[10:20] = s[0]  # ties: lower index first in both
  for mode, plus_one in (("union", False), ("min", True)):
    keep = faces.nms_numpy(b, s, 0.5, mode, plus_one)
    ref = np.asarray(geometry.nms(jnp.asarray(b), jnp.asarray(s), jnp.ones(300, bool), 0.5,
                                  mode, plus_one))
    assert sorted(keep.tolist()) == np.flatnonzero(ref).tolist()
    assert (np.diff(s[keep]) <= 0).all()
