"""The Cascade CNN detection pipeline end to end, in the paper's order (12-net -> 12-cal ->
NMS -> 24-net -> 24-cal -> NMS -> 48-net -> global NMS -> 48-cal), with nets whose answers are known: a random 12-net proposes,
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


def _nms_levels_then_all(boxes, scores, level, cfg):
  """The paper's NMS after a calibration: within each pyramid level, then across levels."""
  keep = np.concatenate([np.flatnonzero(level == l)[faces.nms_numpy(
      boxes[level == l], scores[level == l], cfg.nms[0])] for l in np.unique(level)])
  return keep[faces.nms_numpy(boxes[keep], scores[keep], cfg.nms[1])]


def test_12cal_comes_before_the_nms():
  """12-net -> 12-cal -> NMS (Li et al. 2015): the detector's boxes are the NMS of the
  calibrated proposals; NMS first and calibration after gives other boxes on this image."""
  img = _image()
  wide = dataclasses.replace(CFG, per_scale=512, proposals=2048, stage2=2048, stage3=2048)
  no_nms = dataclasses.replace(wide, nms=(1.0, 1.0, 1.0, 1.0))
  net12, cal = _net("12net"), _net("12cal", logits=_onehot(SHIFT))
  every = faces.FaceDetector({"12net": net12}, no_nms).raw(img)
  ok = every["valid"][0]
  b, s = every["boxes"][0][ok], every["scores"][0][ok]
  assert len(b) >= 20  # threshold 0: every window of the pyramid is a proposal
  # the pyramid level of each proposal: its place among the pyramid's windows
  windows = geometry.pyramid_windows(*img.shape[:2], CFG.min_face, kind="cascade-cnn")
  counts = [geometry.out_cells(hs, "cascade-cnn") * geometry.out_cells(ws, "cascade-cnn")
            for _, hs, ws in geometry.pyramid_scales(*img.shape[:2], CFG.min_face)]
  level_of = np.repeat(np.arange(len(counts)), counts)
  match = np.abs(b[:, None] - windows[None]).max(-1).argmin(1)
  assert np.allclose(windows[match], b)
  level = level_of[match]
  assert len(np.unique(level)) >= 2
  _, inside = geometry.crop_regions(b, *img.shape[:2])
  probs = np.asarray(jax.nn.softmax(jnp.asarray(_onehot(SHIFT))))[None].repeat(len(b), 0)
  calibrated = np.where(inside[:, None], geometry.apply_calibration(b, probs, 0.1), b)
  want = calibrated[_nms_levels_then_all(calibrated, s, level, wide)]
  got = faces.FaceDetector({"12net": net12, "12cal": cal}, wide).raw(img)
  got = got["boxes"][0][got["valid"][0]]
  _rows_match(got, want, 1e-3)
  # the other order keeps other windows: the test tells the two apart
  other = calibrated[_nms_levels_then_all(b, s, level, wide)]
  assert len(other) != len(want) or np.abs(np.sort(other, 0) - np.sort(want, 0)).max() > 1e-3


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
  # detect(): Cascade CNN has no landmarks (and there are faces to look at)
  found = det.detect(a)[0]
  assert found and all(f["landmarks"] == [] for f in found)


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
