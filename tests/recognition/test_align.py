"""Alignment: the similarity fit, the warp, dlib's chip convention and the MTCNN template."""
import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxvision.recognition import align as A


@settings(max_examples=30, deadline=None)
@given(st.floats(-3.0, 3.0), st.floats(0.2, 5.0), st.floats(-100, 100), st.floats(-100, 100),
       st.integers(0, 10_000))
def test_similarity_recovers_a_known_transform(angle, scale, tx, ty, seed):
  """Points moved by an exact similarity give back that similarity (Umeyama is exact on
  noiseless data), and a reflection is never fitted."""
  pts = np.random.default_rng(seed).uniform(-50, 50, (5, 2))
  r = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  dst = pts @ r.T + [tx, ty]
  m = A.similarity(pts, dst)
  np.testing.assert_allclose(m[:, :2], r, atol=1e-7 * max(1, scale))
  np.testing.assert_allclose(m[:, 2], [tx, ty], atol=1e-5)
  assert np.linalg.det(A.similarity(pts, pts * [-1, 1])[:, :2]) >= 0


def test_warp_is_exact_on_a_linear_image_and_black_outside():
  """Bilinear interpolation reproduces a linear image exactly: each chip pixel holds the
  value of the image point its matrix names; samples whose 2x2 neighbourhood leaves the
  image are black (dlib's rule)."""
  h, w = 50, 70
  yy, xx = np.mgrid[0:h, 0:w]
  img = np.stack([xx * 2.0, yy * 3.0, xx + yy], -1).astype(np.float32)
  m = np.array([[[0.7, -0.2, 10.3], [0.25, 0.8, 5.6]], [[1.1, 0, -3], [0, 1.1, 2]]])
  chips = A.warp(img, m, 24)
  u, v = np.meshgrid(np.arange(24.0), np.arange(24.0))
  for k in range(2):
    x = m[k, 0, 0] * u + m[k, 0, 1] * v + m[k, 0, 2]
    y = m[k, 1, 0] * u + m[k, 1, 1] * v + m[k, 1, 2]
    inside = (x >= 0) & (y >= 0) & (np.floor(x) + 1 < w) & (np.floor(y) + 1 < h)
    want = np.where(inside[..., None], np.stack([2 * x, 3 * y, x + y], -1), 0)
    np.testing.assert_allclose(chips[k], want, atol=2e-3)
  assert (~inside).any()  # the second matrix reaches past the left border


def test_facenet_crop_matrix_maps_the_grown_box_onto_the_chip():
  """The chip's first and last pixel centres sample the grown, clipped box's first and last
  pixel-area centres (a resize of the crop), and a box at the border is clipped."""
  m = A.facenet_crop_matrix([100, 50, 180, 150], (400, 400), size=160, margin=44)
  x1, y1, x2, y2 = 78, 28, 202, 172
  np.testing.assert_allclose(m @ [0, 0, 1], [x1 + (x2 - x1) / 320 - 0.5,
                                             y1 + (y2 - y1) / 320 - 0.5])
  np.testing.assert_allclose(m @ [160, 160, 1], [x2 - 0.5 + (x2 - x1) / 320,
                                                 y2 - 0.5 + (y2 - y1) / 320])
  m2 = A.facenet_crop_matrix([5, 5, 60, 60], (100, 100))
  assert m2[0, 2] == pytest.approx(0.5 * m2[0, 0] - 0.5)  # clipped at x = 0


def test_dlib_chip_matrix_is_dlib_template_on_its_own_points():
  """On points that ARE dlib's padded mean face (times a similarity), the mapping sends the
  chip points back onto them up to dlib's (size*s - 1)/(size - 1) rectangle step."""
  size, pad = 150, 0.25
  chip_pts = (pad + A.DLIB_5PT) / (2 * pad + 1) * size
  r = 1.6 * np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
  parts = chip_pts @ r.T + [40, 70]
  m = A.dlib_chip_matrix(parts, size, pad)
  step = (size * 1.6 - 1) / (size - 1) / 1.6
  centre = (size / 2) * np.ones(2) @ r.T + [40, 70]
  mapped = (chip_pts - (size - 1) / 2) @ (r * step).T + centre
  np.testing.assert_allclose(m[:, :2] @ chip_pts.T + m[:, 2:], mapped.T, atol=1e-9)


@pytest.mark.parity
def test_warp_reproduces_dlib_get_face_chip(dlib_ref):
  """From dlib's own 5 points, our chips equal dlib.get_face_chip's (150 px, padding 0.25):
  at most 1 grey level apart (float rounding at dlib's truncation) and >= 99.5% exact."""
  same = total = 0
  for i, chip in enumerate(dlib_ref["chips"]):
    photo = dlib_ref[f"photo_{dlib_ref['photo'][i]}"]
    ours = A.warp(photo, A.dlib_chip_matrix(dlib_ref["parts"][i])[None], 150, as_uint8=True)[0]
    diff = np.abs(ours.astype(int) - chip.astype(int))
    assert diff.max() <= 1
    same += (diff == 0).sum()
    total += diff.size
  print(f"exact pixels: {same / total:.4%}")
  assert same / total >= 0.995


def _mtcnn_matches(dlib_ref):
  """(face index, MTCNN landmarks) of the dlib faces MTCNN also finds (box centre inside)."""
  from jaxvision import families
  from jaxvision.core.registry import get_face_detector
  families.load("commands")
  det = get_face_detector("mtcnn")
  n_photos = 1 + int(dlib_ref["photo"].max())
  found = list(det.detect_each([dlib_ref[f"photo_{k}"] for k in range(n_photos)]))
  out = []
  for i, b in enumerate(dlib_ref["boxes"]):
    for f in found[dlib_ref["photo"][i]]:
      cx, cy = (f["box"][0] + f["box"][2]) / 2, (f["box"][1] + f["box"][3]) / 2
      if b[0] < cx < b[2] and b[1] < cy < b[3]:
        out.append((i, np.asarray(f["landmarks"])))
  return out


@pytest.mark.parity
def test_mtcnn_template_chips_match_dlib_chips(dlib_ref):
  """With MTCNN's landmarks and the fitted template, the descriptor of our chip is close to
  dlib's descriptor of its own chip of the same face (far below the 0.6 same-person
  threshold), leave-one-out: the template is refitted without the face it is tested on."""
  from jaxvision.recognition.convert import dlib_resnet_variables
  from jaxvision.recognition.models import dlib_resnet
  matches = _mtcnn_matches(dlib_ref)
  assert len(matches) >= 8
  lms = np.stack([lm for _, lm in matches])
  mats = np.stack([A.dlib_chip_matrix(dlib_ref["parts"][i]) for i, _ in matches])
  np.testing.assert_allclose(A.fit_template(lms, mats), A.DLIB_MTCNN_TEMPLATE, atol=6e-4)
  apply = jax.jit(dlib_resnet().apply)
  variables = dlib_resnet_variables()
  dists, chip_diffs = [], []
  for k, (i, lm) in enumerate(matches):
    keep = [j for j in range(len(matches)) if j != k]
    tpl = A.fit_template(lms[keep], mats[keep])
    photo = dlib_ref[f"photo_{dlib_ref['photo'][i]}"]
    chip = A.warp(photo, A.template_chip_matrix(lm, tpl)[None], 150)
    chip_diffs.append(np.abs(chip[0] - dlib_ref["chips"][i]).mean())
    dists.append(np.linalg.norm(np.asarray(apply(variables, chip))[0]
                                - dlib_ref["descriptors"][i]))
  print(f"MTCNN-template chips vs dlib's: descriptor L2 max {max(dists):.3f} "
        f"mean {np.mean(dists):.3f}; chip mean |diff| {np.mean(chip_diffs):.1f} grey levels")
  assert max(dists) < 0.3


def test_pyramid_down_filters_and_samples_as_dlib_says():
  """dlib's pyramid_down<2>: (H-3)//2 x (W-3)//2 pixels; a [1 4 6 4 1] x [1 4 6 4 1] / 256
  filter keeps a constant and a linear ramp (output pixel (r, c) holds the input's value at
  (2r+2, 2c+2)); images of 8 px or less on a side give an empty level."""
  h, w = 41, 30
  yy, xx = np.mgrid[0:h, 0:w]
  img = np.stack([2 * xx, 3 * yy, np.full_like(xx, 77)], -1).astype(np.uint8)
  down = A.pyramid_down(img)
  assert down.shape == ((h - 3) // 2, (w - 3) // 2, 3) and down.dtype == np.uint8
  r, c = np.mgrid[0:down.shape[0], 0:down.shape[1]]
  np.testing.assert_array_equal(down[..., 0], 2 * (2 * c + 2))
  np.testing.assert_array_equal(down[..., 1], 3 * (2 * r + 2))
  assert (down[..., 2] == 77).all()
  assert A.pyramid_down(img[:8]).size == 0


@settings(max_examples=20, deadline=None)
@given(st.floats(-0.5, 0.5), st.floats(60, 600), st.integers(0, 1000))
def test_chip_details_and_pyramid_depth(angle, side, seed):
  """face_chip_details puts dlib's padded mean face onto points that are that face moved
  by a similarity (angle, scale and centre recovered; the rectangle's side is size * scale,
  dlib's centered_drect), and the pyramid depth is the number of halvings (rect_down) after
  which the rectangle still has more pixels than the chip: none up to a side of 299."""
  size, pad = 150, 0.25
  rng = np.random.default_rng(seed)
  scale = side / size
  chip_pts = (pad + A.DLIB_5PT) / (2 * pad + 1) * size
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  centre = rng.uniform(200, 800, 2)
  parts = (chip_pts - size / 2) @ (scale * rot).T + centre
  d = A.face_chip_details(parts, size, pad)
  assert d.angle == pytest.approx(angle, abs=1e-9)
  l, t, r, b = d.rect
  np.testing.assert_allclose([(l + r) / 2, (t + b) / 2], centre, atol=1e-7)
  assert r - l + 1 == pytest.approx(side, abs=1e-7)
  n, rect = 0, A._rect_down(d.rect)
  while A._rect_area(rect) > size * size:
    n, rect = n + 1, A._rect_down(rect)
  assert A.pyramid_levels(d) == n
  assert (n == 0) == (side <= 299)


def test_extract_chips_without_pyramid_is_the_plain_warp():
  """Faces whose chip rectangle is under twice the chip side need no pyramid: the chip is
  the bilinear warp of dlib_chip_matrix (dlib's mapping from the chip's corners)."""
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (240, 260, 3), np.uint8)
  parts = (0.25 + A.DLIB_5PT) / 1.5 * 150 * 1.2 + [40, 30]
  d = A.face_chip_details(parts)
  assert A.pyramid_levels(d) == 0
  np.testing.assert_array_equal(
      A.extract_chips(img, [d])[0],
      A.warp(img, A.dlib_chip_matrix(parts)[None], 150, as_uint8=True)[0])


@pytest.mark.parity
def test_dlib_pipeline_reproduces_dlib(dlib_pipeline):
  """dlib's pipeline, end to end, on real faces (three of them large enough for dlib's
  image pyramid: one and two halvings): our chips from dlib's 5 points equal
  dlib.get_face_chip's (at most 1 grey level apart, float rounding at dlib's truncation,
  >= 99.5% of pixels equal), all faces of a photo at once equal get_face_chips'; from the
  image and dlib's face rectangle alone (our 5-point predictor through the registry, our
  chip, our dlib_resnet), the descriptor is within 0.01 L2 of
  face_recognition_model_v1.compute_face_descriptor(img, shape)."""
  from jaxvision import families
  from jaxvision.recognition import embed
  families.load("commands")
  ref = dlib_pipeline
  photo = lambda i: ref[f"photo_{ref['photo'][i]}"]
  depths = [A.pyramid_levels(A.face_chip_details(p)) for p in ref["parts"]]
  assert {1, 2} <= set(depths) and len(depths) >= 12
  same = total = 0
  old = {}
  for i, chip in enumerate(ref["chips"]):
    ours = A.extract_chips(photo(i), [A.face_chip_details(ref["parts"][i])])[0]
    diff = np.abs(ours.astype(int) - chip.astype(int))
    assert diff.max() <= 1, (i, depths[i])
    same, total = same + (diff == 0).sum(), total + diff.size
    if depths[i]:  # what the warp without dlib's pyramid gives (for the record)
      plain = A.warp(photo(i), A.dlib_chip_matrix(ref["parts"][i])[None], 150, as_uint8=True)
      old[i] = float(np.abs(plain[0].astype(int) - chip.astype(int)).mean())
  assert same / total >= 0.995
  for p in np.unique(ref["multi_photo"]):
    idx = np.flatnonzero(ref["photo"] == p)
    ours = A.extract_chips(ref[f"photo_{p}"], [A.face_chip_details(ref["parts"][i])
                                                for i in idx])
    diff = np.abs(ours.astype(int) - ref["multi_chips"][ref["multi_photo"] == p].astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.995

  emb = embed.load_embedder("dlib_resnet", align_with="dlib")
  dists, off = [], []
  # the astronaut, her mirror image and the large turned one (not every photo: each image
  # shape compiles the predictor once more)
  e2e = np.flatnonzero(np.isin(ref["photo"], [0, 1, 3]))
  assert max(depths[i] for i in e2e) == 1
  for i in e2e:
    rect = ref["rects"][i]
    face = emb.faces_in(photo(i), [{"rect": rect.tolist()}])[0]
    off.append(np.abs(np.array(face["dlib_points"]) - ref["parts"][i]).max())
    dists.append(np.linalg.norm(np.array(face["embedding"]) - ref["descriptors"][i]))
  print(f"chips: {same / total:.4%} of pixels equal; without the pyramid the large faces' "
        f"chips differ by {', '.join(f'{v:.2f}' for v in old.values())} grey levels on "
        f"average; end-to-end descriptor L2 max {max(dists):.5f} mean {np.mean(dists):.5f}; "
        f"5 points max {max(off)} px off")
  assert max(off) <= 1
  assert max(dists) < 0.01
