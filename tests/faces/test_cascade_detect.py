"""The Cascade CNN detection pipeline end to end (12-net -> 12-cal -> 24-net -> 24-cal ->
48-net -> NMS -> 48-cal), with nets whose answers are known: a random 12-net proposes,
constant-output later nets pass everything through, and calibration nets that are sure of
one pattern move every box by exactly that pattern."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.core.registry import create_model
from jaxvision.faces import boxes as geometry
from jaxvision.faces import detector as faces

SIZES = {"12net": 12, "24net": 24, "48net": 48, "12cal": 12, "24cal": 24, "48cal": 48}
CFG = faces.DetectorConfig(kind="cascade-cnn", thresholds=(0.0, 0.7, 0.7), min_face=24,
                           per_scale=32, proposals=64, stage2=32, stage3=16)
IDENTITY = geometry.calibration_label(1.0, 0.0, 0.0)
SHIFT = geometry.calibration_label(1.21, -0.17, 0.17)


def _net(stage, seed=0, logits=None):
  """A width-1/4 net; with `logits`, the last layer is zero but its bias: constant output."""
  m = create_model(f"cascade-{stage}", width=0.25)  # (jit vs eager: test_faces.py)
  s = SIZES[stage]
  v = m.init(jax.random.key(seed), jnp.zeros((1, s, s, 3)))
  if logits is not None:
    last = "pattern" if stage.endswith("cal") else "face"
    p = dict(v["params"])
    p[last] = {"kernel": jnp.zeros_like(p[last]["kernel"]), "bias": jnp.asarray(logits, jnp.float32)}
    v = {"params": p}
  return m, v


def _onehot(k, big=20.0):
  return np.where(np.arange(45) == k, big, 0.0)


def _image(h=56, w=64):
  r = np.random.default_rng(0)
  return (r.random((h, w, 3)) * 255).astype(np.uint8)


def test_12cal_moves_each_proposal_by_its_pattern():
  img = _image()
  alone = faces.FaceDetector({"12net": _net("12net")}, CFG).raw(img)
  cal = faces.FaceDetector({"12net": _net("12net"), "12cal": _net("12cal", logits=_onehot(SHIFT))},
                           CFG).raw(img)
  ok = alone["valid"][0]
  assert ok.sum() >= 3  # threshold 0: the random 12-net proposes
  np.testing.assert_array_equal(cal["valid"][0], ok)
  np.testing.assert_array_equal(cal["scores"][0], alone["scores"][0])
  b = alone["boxes"][0][ok]
  _, inside = geometry.crop_regions(jnp.asarray(b), *img.shape[:2])
  probs = np.asarray(jax.nn.softmax(jnp.asarray(_onehot(SHIFT))))[None].repeat(len(b), 0)
  want = np.where(np.asarray(inside)[:, None], geometry.apply_calibration(b, probs, 0.1), b)
  np.testing.assert_allclose(cal["boxes"][0][ok], want, rtol=1e-5, atol=1e-3)
  # the pattern maps a window scaled by 1.21 and shifted back to the face it came from
  w = b[:, 2] - b[:, 0]
  np.testing.assert_allclose((want[:, 2] - want[:, 0]), w / 1.21, rtol=1e-5)


def test_full_cascade_known_pass_through_and_batch():
  pass_all = np.array([-3.0, 3.0])  # face probability 0.9526 > 0.7
  nets = {"12net": _net("12net"), "12cal": _net("12cal", logits=_onehot(IDENTITY)),
          "24net": _net("24net", logits=pass_all), "24cal": _net("24cal", logits=_onehot(IDENTITY)),
          "48net": _net("48net", logits=pass_all), "48cal": _net("48cal", logits=_onehot(IDENTITY))}
  det = faces.FaceDetector(nets, CFG)
  a, b = _image(), _image()[::-1].copy()
  r = det.raw(np.stack([a, b]))
  proposals = faces.FaceDetector({"12net": nets["12net"]},
                                 dataclasses.replace(CFG, stage3=CFG.stage2)).raw(np.stack([a, b]))
  for i in range(2):
    ok = r["valid"][i]
    assert ok.sum() >= 2
    np.testing.assert_allclose(r["scores"][i][ok], jax.nn.sigmoid(6.0), rtol=1e-5)
    boxes = r["boxes"][i][ok]
    # identity calibration: every face is one of the 12-net's proposals, unchanged
    prop = proposals["boxes"][i][proposals["valid"][i]]
    d = np.abs(boxes[:, None, :] - prop[None]).max(-1).min(1)
    assert np.all(d < 1e-3), d
    # after the last NMS (IoU 0.7) no two faces overlap more than that
    iou = np.array(jax.vmap(lambda x: geometry.overlap(x, jnp.asarray(boxes)))(jnp.asarray(boxes)))
    np.fill_diagonal(iou, 0.0)
    assert iou.max() <= CFG.nms[3] + 1e-6
    # one image at a time gives the same faces as the batch
    one = det.raw(np.stack([a, b])[i:i + 1])
    np.testing.assert_allclose(one["boxes"][0][ok], boxes, atol=1e-4)
  # detect(): Cascade CNN has no landmarks
  assert all(f["landmarks"] == [] for f in det.detect(a)[0])


def _rows_match(a, b, atol):
  """Same number of rows, and every row of a has one within atol in b (order free)."""
  assert a.shape == b.shape, (a.shape, b.shape)
  d = np.abs(a[:, None, :] - b[None]).max(-1)
  assert d.min(1).max() <= atol and d.min(0).max() <= atol


def test_mining_proposes_the_windows_the_detector_scores():
  """Mining through previous stages (mining.propose, numpy) uses the detector's geometry:
  with every threshold open and no suppression, the first stage's windows (the cells of the
  pyramid levels, squared after a zero regression) and the 12-cal's correction are the
  detector's own."""
  from jaxvision.faces import mining
  img = _image(40, 52)
  wide_open = dict(thresholds=(0.0, 0.0, 0.0), nms=(1.0, 1.0, 1.0, 1.0), min_face=20,
                   per_scale=256, proposals=1024, stage2=1024, stage3=1024)
  # MTCNN: a P-Net whose box head outputs zero offsets.
  pnet = create_model("mtcnn-pnet", width=0.25)
  v = pnet.init(jax.random.key(0), jnp.zeros((1, 12, 12, 3)))
  p = dict(v["params"])
  p["box"] = jax.tree.map(jnp.zeros_like, p["box"])
  v = {"params": p}
  r = faces.FaceDetector({"pnet": (pnet, v)}, faces.DetectorConfig(**wide_open)).raw(img)
  det = r["boxes"][0][r["valid"][0]]
  stage = mining.Stage("mtcnn-pnet", 12, "detect", pnet, v, threshold=-1.0)
  mined = mining.propose(img, [stage], min_size=20)
  assert len(mined) == len(geometry.pyramid_windows(40, 52, 20)) > 50
  _rows_match(mined, det, 0.0)
  # Cascade CNN: the 12-net's windows (its own cell count), moved by a sure 12-cal.
  nets = {"12net": _net("12net"), "12cal": _net("12cal", logits=_onehot(SHIFT))}
  r = faces.FaceDetector(nets, faces.DetectorConfig(kind="cascade-cnn", **wide_open)).raw(img)
  det = r["boxes"][0][r["valid"][0]]
  stages = [mining.Stage("cascade-12net", 12, "detect", *nets["12net"], threshold=-1.0),
            mining.Stage("cascade-12cal", 12, "calibration", *nets["12cal"])]
  mined = mining.propose(img, stages, min_size=20)
  assert len(mined) == len(geometry.pyramid_windows(40, 52, 20, kind="cascade-cnn"))
  _rows_match(mined, det, 1e-4)
