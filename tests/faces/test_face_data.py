"""Face-box data: IoU mining on constructed boxes, crops, the 3:1:1:2 mix, determinism,
the wider_face TFDS layout, folder + annotation files, and mining through a previous stage."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxvision.core.errors import DataError
from jaxvision.faces import boxes as geometry
from jaxvision.faces import data as face_data
from jaxvision.faces import mining


def test_iou_matrix_against_direct_formula():
  a = np.array([[0, 0, 10, 10], [0, 0, 4, 4]], np.float32)
  b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
  iou = geometry.iou_matrix(a, b)
  np.testing.assert_allclose(iou, [[50 / 150, 0, 1], [0, 0, 16 / 100]], rtol=1e-6)


def test_windows_are_labelled_by_iou_thresholds():
  face = np.array([[0, 0, 10, 10]], np.float32)
  # A 10x10 window shifted by d has IoU (10 - d) / (10 + d) with the face.
  d = np.array([0, 1, 2, 3, 5, 6, 8, 20], np.float32)
  iou = (10 - np.minimum(d, 10)) / (10 + np.minimum(d, 10))
  windows = np.stack([d, 0 * d, d + 10, 0 * d + 10], 1)
  cat, tb, _ = mining.label_windows(windows, face)
  want = np.where(iou > 0.65, mining.POS, np.where(iou >= 0.4, mining.PART, np.where(iou < 0.3, mining.NEG, -1)))
  assert cat.tolist() == want.tolist() == [1, 1, 1, 2, -1, 0, 0, 0]
  np.testing.assert_allclose(tb[1], [-0.1, 0, -0.1, 0], atol=1e-6)  # (gt - window) / size
  # Windows touching an ignored face are dropped, not made negatives.
  cat2, _, _ = mining.label_windows(windows, face, ignore=np.array([True]))
  assert cat2.tolist() == [-1, -1, -1, -1, -1, 0, 0, 0]


def test_mine_image_categories_and_landmarks():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
  face = np.array([[30, 20, 70, 60]], np.float32)
  lm = np.array([[[40, 35], [60, 35], [50, 45], [42, 52], [58, 52]]], np.float32)
  rec = {"image": img, "boxes": face, "landmarks": lm}
  s = mining.mine_image(rec, mining.MiningOptions(size=12, windows_per_face=60, landmark_per_face=8),
                    np.random.default_rng(1))
  counts = mining.counts_by_category(s)
  assert all(v > 0 for v in counts.values()), counts
  assert s["crops"].shape == (len(s["label"]), 12, 12, 3) and s["crops"].dtype == np.uint8
  lmk = s["landmarks"][s["label"] == mining.LANDMARK]
  assert np.all((lmk > 0) & (lmk < 1))  # landmarks inside their (IoU > 0.65) windows
  assert np.all(s["landmarks"][s["label"] != mining.LANDMARK] == 0)
  pos = s["box"][s["label"] == mining.POS]
  assert np.all(np.abs(pos) < 0.5)


def test_crop_resize_is_area_correct_on_a_linear_ramp():
  y, x = np.mgrid[0:200, 0:200].astype(np.float32)
  img = np.repeat((0.5 * x + 0.7 * y + 10)[..., None], 3, -1)
  boxes = np.array([[20, 30, 32, 42], [10, 20, 58, 68], [40, 10, 136, 106], [3.5, 7.25, 27.5, 31.25]],
                   np.float32)  # 1x, 4x (level 2), 8x (level 3), fractional
  out = geometry.crop_resize(img, boxes, 12).astype(np.float32)
  t = (np.arange(12) + 0.5) / 12
  for b, o in zip(boxes, out):
    cx = b[0] + t * (b[2] - b[0]) - 0.5  # pixel-centre coordinates of each output pixel
    cy = b[1] + t * (b[3] - b[1]) - 0.5
    want = 0.5 * cx[None, :] + 0.7 * cy[:, None] + 10
    np.testing.assert_allclose(o[..., 0], want, atol=1.01)
  outside = geometry.crop_resize(img, np.array([[-50, -50, -10, -10]], np.float32), 12)
  assert outside.max() == 0  # black outside the image


def test_mix_counts_and_mixed_batches_are_3_1_1_2_and_deterministic():
  assert mining.mix_counts(14, (3, 1, 1, 2), [9, 9, 9, 9]).tolist() == [6, 2, 2, 4]
  assert mining.mix_counts(70, (3, 1, 1, 2), [9, 9, 9, 9]).tolist() == [30, 10, 10, 20]
  # No landmark faces: the batch becomes 3:1:1, rounding leftovers to the negatives.
  assert mining.mix_counts(14, (3, 1, 1, 2), [9, 9, 9, 0]).tolist() == [10, 2, 2, 0]
  with pytest.raises(DataError):
    mining.mix_counts(8, (3, 1, 1, 2), [0, 0, 0, 0])
  n = 40
  rng = np.random.default_rng(0)
  samples = {"crops": rng.integers(0, 255, (n, 12, 12, 3), dtype=np.uint8),
             "label": np.arange(n, dtype=np.int8) % 4,
             "box": rng.normal(size=(n, 4)).astype(np.float32),
             "landmarks": np.where((np.arange(n) % 4 == 3)[:, None], rng.random((n, 10)), 0).astype(np.float32)}
  mb = mining.MixedBatches(samples, 14, (3, 1, 1, 2), seed=3)
  b = mb[5]
  assert np.bincount(b["label"], minlength=4).tolist() == [6, 2, 2, 4]
  assert b["input"].shape == (14, 12, 12, 3) and b["input"].dtype == np.float32
  assert np.abs(b["input"]).max() <= 127.5 / 128
  for k in b:
    np.testing.assert_array_equal(b[k], mining.MixedBatches(samples, 14, (3, 1, 1, 2), seed=3)[5][k])
  assert not np.array_equal(b["input"], mining.MixedBatches(samples, 14, (3, 1, 1, 2), seed=4)[5]["input"])
  # The grain loader: same seed, same batches; its state round-trips.
  it = iter(mining.make_loader(samples, batch_size=14, mix=(3, 1, 1, 2), seed=3))
  first = [next(it) for _ in range(2)]
  state = it.get_state()
  third = next(it)
  it2 = iter(mining.make_loader(samples, batch_size=14, mix=(3, 1, 1, 2), seed=3))
  np.testing.assert_array_equal(next(it2)["input"], first[0]["input"])
  it2.set_state(state)
  np.testing.assert_array_equal(next(it2)["box"], third["box"])


def test_flip_targets():
  crops = np.arange(2 * 12 * 12 * 3, dtype=np.uint8).reshape(2, 12, 12, 3)
  box = np.array([[0.1, 0.2, -0.3, 0.05], [0, 0, 0, 0]], np.float32)
  lm = np.array([[0.3, 0.7, 0.5, 0.35, 0.65, 0.4, 0.4, 0.6, 0.8, 0.8], [0] * 10], np.float32)
  label = np.array([3, 0])
  c, l, b, m = mining.flip_samples(crops, label, box, lm, False)
  np.testing.assert_array_equal(c[:, :, ::-1], crops)
  np.testing.assert_allclose(b[0], [0.3, 0.2, -0.1, 0.05])  # x1' = -x2, x2' = -x1
  np.testing.assert_allclose(m[0, :5], [0.3, 0.7, 0.5, 0.35, 0.65])  # symmetric face: same
  np.testing.assert_allclose(mining.flip_samples(c, l, b, m, False)[3], lm, atol=1e-6)
  pat = geometry.calibration_patterns()
  labs = np.arange(45)
  flipped = mining.flip_samples(np.zeros((45, 12, 12, 3)), labs, np.zeros((45, 4)), np.zeros((45, 10)), True)[1]
  np.testing.assert_allclose(pat[flipped], pat * np.array([1, -1, 1], np.float32))


def test_calibration_windows_are_undone_by_the_correction():
  faces = np.tile(np.array([[10, 20, 50, 70]], np.float32), (45, 1))
  win = geometry.calibration_windows(faces, np.arange(45))
  np.testing.assert_allclose(geometry.apply_calibration(win, np.eye(45, dtype=np.float32)), faces,
                             atol=1e-4)


def test_proposals_give_calibration_samples_of_their_own_pattern():
  """Windows the earlier stages let through: one at each pattern's exact offset from a
  face gets that pattern's label (then the correction of that label recovers the face);
  windows a little off a pattern get the nearest one; windows out of reach (far, too big,
  too small, no overlap) give no sample. mine_image adds them to the perturbed faces."""
  faces = np.array([[10, 20, 50, 70], [100, 40, 130, 80]], np.float32)
  exact = geometry.calibration_windows(np.repeat(faces[:1], 45, 0), np.arange(45))
  win, lab = mining.proposal_calibration(exact, faces)
  assert lab.tolist() == list(range(45))
  np.testing.assert_allclose(geometry.apply_calibration(win, np.eye(45, dtype=np.float32)[lab]),
                             np.repeat(faces[:1], 45, 0), atol=1e-4)
  w, h = 30.0, 40.0  # the second face: off the grid, to the nearest pattern
  near = np.array([[100 + 0.15 * w, 40 - 0.02 * h, 100 + 0.15 * w + 1.08 * w,
                    40 - 0.02 * h + 1.08 * h]], np.float32)
  _, lab = mining.proposal_calibration(near, faces)
  assert lab.tolist() == [geometry.calibration_label(1.10, 0.17, 0.0)]
  out = np.array([[10 + 0.4 * 40, 20, 10 + 0.4 * 40 + 40, 70],   # shifted 0.4 of the face
                  [10, 20, 10 + 40 * 1.5, 20 + 50 * 1.5],         # 1.5x the face
                  [10, 20, 10 + 40 * 0.6, 20 + 50 * 0.6],         # 0.6x
                  [300, 300, 340, 350]], np.float32)              # no overlap
  assert len(mining.proposal_calibration(out, faces)[0]) == 0
  rec = {"image": np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8),
         "boxes": faces}
  opts = mining.MiningOptions(size=12, windows_per_face=3, calibration=True)
  alone = mining.mine_image(rec, opts, np.random.default_rng(0))
  more = mining.mine_image(rec, opts, np.random.default_rng(0),
                           proposals=np.concatenate([exact, out]))
  assert len(alone["label"]) == 6 and len(more["label"]) == 6 + 45
  assert more["label"][6:].tolist() == list(range(45))


class WiderFaceMock(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The tfds `wider_face` features, written as array_record in the test."""
  name = "wider_face"
  code_path = None
  VERSION = tfds.core.Version("0.1.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="jpeg"),
        "image/filename": tfds.features.Text(),
        "faces": tfds.features.Sequence({
            "bbox": tfds.features.BBoxFeature(), "blur": np.uint8, "expression": np.bool_,
            "illumination": np.bool_, "occlusion": np.uint8, "pose": np.bool_,
            "invalid": np.bool_})}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    import io
    from PIL import Image
    buf = io.BytesIO()  # encoded bytes: tfds encodes arrays with TensorFlow, which we lack
    Image.fromarray(np.full((40, 80, 3), 100, np.uint8)).save(buf, format="JPEG")
    img = buf.getvalue()
    f = lambda b, inv: {"bbox": tfds.features.BBox(*b), "blur": 0, "expression": False,
                        "illumination": False, "occlusion": 0, "pose": False, "invalid": inv}
    yield 0, {"image": img, "image/filename": "a.jpg",
              "faces": [f((0.25, 0.125, 0.75, 0.5), False), f((0.0, 0.5, 0.5, 1.0), True)]}
    yield 1, {"image": img, "image/filename": "b.jpg", "faces": []}


def test_wider_face_layout_through_tfds_data_source(tmp_path):
  WiderFaceMock(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  src = face_data.get_face_source("wider_face", "train", str(tmp_path))
  assert len(src) == 2
  r = src[0]
  assert r["image"].shape == (40, 80, 3) and r["name"] == "a.jpg"
  np.testing.assert_allclose(r["boxes"], [[10, 10, 40, 30], [40, 0, 80, 20]], atol=1e-4)
  assert r["ignore"].tolist() == [False, True] and np.isnan(r["landmarks"]).all()
  assert src[1]["boxes"].shape == (0, 4)
  s = mining.mine_source(src, mining.MiningOptions(size=12, negatives_per_image=10), seed=0)
  assert len(s["label"]) > 0
  with pytest.raises(DataError, match="unknown split"):
    face_data.get_face_source("wider_face", "validation", str(tmp_path))


def test_folder_with_wider_annotation_file(tmp_path):
  from PIL import Image
  root = tmp_path / "imgs"
  (root / "0--Parade").mkdir(parents=True)
  Image.fromarray(np.full((50, 60, 3), 80, np.uint8)).save(root / "0--Parade" / "p.jpg")
  Image.fromarray(np.full((30, 30), 200, np.uint8)).save(root / "empty.png")
  ann = tmp_path / "ann.txt"
  ann.write_text("0--Parade/p.jpg\n3\n"
                 "5 6 20 22 0 0 0 0 0 0\n"
                 "30 10 12 12 2 0 0 1 0 0\n"
                 "10 10 20 20 14 16 24 16 19 20 15 25 23 25\n"
                 "empty.png\n0\n0 0 0 0 0 0 0 0 0 0\n")
  src = face_data.get_face_source(f"folder:{root}", "train", str(tmp_path / "tfds"), annotations=str(ann))
  assert len(src) == 2
  r = src[0]
  np.testing.assert_allclose(r["boxes"], [[5, 6, 25, 28], [30, 10, 42, 22], [10, 10, 30, 30]],
                             atol=1e-3)
  assert r["ignore"].tolist() == [False, True, False]
  assert np.isnan(r["landmarks"][0]).all()
  np.testing.assert_allclose(r["landmarks"][2], [[14, 16], [24, 16], [19, 20], [15, 25], [23, 25]],
                             atol=1e-3)
  assert src[1]["image"].shape == (30, 30, 3) and len(src[1]["boxes"]) == 0
  with pytest.raises(DataError, match="annotation file"):
    face_data.get_face_source(f"folder:{root}", "train", str(tmp_path / "tfds"))
  bad = tmp_path / "bad.txt"
  bad.write_text("a.jpg\n1\n1 2 3\n")
  with pytest.raises(DataError, match="3 numbers"):
    face_data.parse_annotations(str(bad))
