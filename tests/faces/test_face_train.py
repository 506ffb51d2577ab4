"""Face-cascade training: OHEM, the masked multi-task loss against numpy, configs, and one
short `python -m train --config configs/mtcnn.py:pnet` run whose workdir then serves as the
previous stage that R-Net's samples are mined through."""
import json
import math
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.faces import boxes as geometry
from jaxvision.faces import task as tf_
from tests.conftest import run


@pytest.mark.parametrize("n_valid,keep", [(10, 0.7), (7, 0.7), (1, 0.7), (12, 1.0), (0, 0.7)])
def test_ohem_keeps_exactly_the_ceil_hardest(n_valid, keep):
  rng = np.random.default_rng(n_valid)
  losses = rng.random(16).astype(np.float32)
  valid = np.zeros(16, bool)
  valid[rng.choice(16, n_valid, replace=False)] = True
  m = np.asarray(tf_.ohem_keep_mask(jnp.asarray(losses), jnp.asarray(valid), keep))
  k = math.ceil(round(keep * n_valid, 6))
  assert m.sum() == k and not (m & ~valid).any()
  if k:
    assert losses[m].min() >= losses[valid & ~m].max(initial=-1)


def numpy_multitask(logits, label, box, box_t, lm, lm_t, w, keep):
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  cls = label <= 1
  ce = -logp[np.arange(len(label)), np.clip(label, 0, 1)]
  hard = np.sort(ce[cls])[::-1][:math.ceil(round(keep * cls.sum(), 6))]
  det = hard.mean()
  bm = (label == 1) | (label == 2)
  box_l = ((box - box_t) ** 2).sum(-1)[bm].mean()
  lm_l = ((lm - lm_t) ** 2).sum(-1)[label == 3].mean()
  return w[0] * det + w[1] * box_l + w[2] * lm_l, det, box_l, lm_l


def test_masked_multitask_loss_matches_numpy():
  rng = np.random.default_rng(0)
  n = 21
  label = np.repeat([0, 1, 2, 3], [9, 3, 3, 6])
  logits = rng.normal(size=(n, 2)).astype(np.float32) * 2
  box, box_t = rng.normal(size=(2, n, 4)).astype(np.float32)
  lm, lm_t = rng.normal(size=(2, n, 10)).astype(np.float32)
  w = (1.0, 0.5, 1.0)
  total, parts = tf_.multitask_loss(jnp.asarray(logits), jnp.asarray(label), box, box_t, lm,
                                    lm_t, weights=w, ohem_keep=0.7)
  want = numpy_multitask(logits, label, box, box_t, lm, lm_t, w, 0.7)
  np.testing.assert_allclose(float(total), want[0], rtol=1e-5)
  np.testing.assert_allclose([float(parts[k]) for k in ("det_loss", "box_loss", "landmark_loss")],
                             want[1:], rtol=1e-5)
  # Targets of samples a task does not apply to cannot change its loss.
  box_t2 = np.where((label == 0)[:, None], 1e3, box_t)
  lm_t2 = np.where((label != 3)[:, None], 1e3, lm_t)
  total2, _ = tf_.multitask_loss(jnp.asarray(logits), jnp.asarray(label), box, box_t2, lm,
                                 lm_t2, weights=w, ohem_keep=0.7)
  np.testing.assert_allclose(float(total2), float(total), rtol=1e-6)


def test_configs_chain_the_stages():
  from configs import cascade_cnn, mtcnn
  c = mtcnn.get_config("pnet")
  assert c.model.name == "mtcnn-pnet" and c.data.size == 12 and c.data.previous_stages == ()
  assert (c.loss_weights.det, c.loss_weights.box, c.loss_weights.landmark) == (1, 0.5, 0.5)
  o = mtcnn.get_config("onet,pnet=runs/p,rnet=runs/r,preset=paper")
  assert o.data.previous_stages == ("runs/p", "runs/r") and o.loss_weights.landmark == 1.0
  assert o.model.name == "mtcnn-onet" and o.data.size == 48 and o.ohem_keep == 0.7
  with pytest.raises(ValueError, match="pnet=runs/pnet"):
    mtcnn.get_config("rnet")
  c = cascade_cnn.get_config("48cal," + ",".join(f"{n}=w/{n}" for n in cascade_cnn.NETS[:5]))
  assert c.task == "face_calibration" and c.model.name == "cascade-48cal"
  assert c.data.previous_stages == tuple(f"w/{n}" for n in cascade_cnn.NETS[:5])
  with pytest.raises(ValueError, match="12net=runs/12net"):
    cascade_cnn.get_config("24net,12cal=x")


def scalars(path, tag):
  from tensorboardX.proto import event_pb2
  out = []
  with open(path, "rb") as f:
    while header := f.read(12):
      (n,) = struct.unpack("<Q", header[:8])
      ev = event_pb2.Event.FromString(f.read(n))
      f.read(4)
      out += [(ev.step, v.simple_value) for v in ev.summary.value if v.tag == tag]
  return [v for _, v in sorted(out)]


def test_pnet_trains_on_the_embedded_faces_then_feeds_the_next_stage(tmp_path, tfds_dir):
  import glob
  import sys
  wd = tmp_path / "pnet"
  over = {"total_steps": 40, "log_every": 10, "eval_every": 40, "checkpoint_every": 40,
          "batch_size": 70, "optimizer.learning_rate": 0.01, "optimizer.warmup_steps": 0,
          "data.max_images": 60, "data.eval_max_images": 16, "data.eval_batches": 1,
          "data.negatives_per_image": 20, "data.windows_per_face": 12}
  cmd = [sys.executable, "-m", "train", "--config", "configs/mtcnn.py:pnet", "--workdir", str(wd)]
  p = run(cmd + [f"--config.{k}={v}" for k, v in over.items()], tfds_dir)
  assert "face samples 12x12" in p.stdout and "done: step 40" in p.stdout
  loss = scalars(glob.glob(f"{wd}/tensorboard/events.*")[0], "train/loss")
  assert len(loss) == 4 and loss[-1] < 0.8 * loss[0], loss
  m = json.load(open(wd / "metrics.json"))
  assert {"accuracy", "recall", "box_mse", "negative_pass_rate"} <= set(m["eval"])
  assert json.load(open(wd / "config.json"))["data"]["previous_stages"] == []
  # The trained P-Net as the previous stage: what it lets through, refined and squared.
  from jaxvision.faces import boxes as geometry
  from jaxvision.faces import mining
  stage = mining.load_stage(str(wd), threshold=-1.0)
  assert stage.name == "mtcnn-pnet" and stage.size == 12 and stage.kind == "detect"
  img = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
  n = len(geometry.pyramid_windows(48, 48, 20))
  everything = mining.propose(img, [stage])
  assert everything.shape == (n, 4)
  np.testing.assert_allclose(everything[:, 2] - everything[:, 0],
                             everything[:, 3] - everything[:, 1], rtol=1e-4)  # squared
  stage.threshold = 1.0
  assert mining.propose(img, [stage]).shape == (0, 4)
  rec = {"image": img, "boxes": np.array([[10, 10, 34, 34]], np.float32)}
  stage.threshold = -1.0
  s = mining.mine_image(rec, mining.MiningOptions(size=24), np.random.default_rng(0),
                        proposals=mining.propose(img, [stage]))
  assert s["crops"].shape[1:] == (24, 24, 3) and mining.counts_by_category(s)["negative"] > 0


def test_cascade_cnn_chain_trains_and_detects(tmp_path, tfds_dir):
  """12-net, then the 12-calibration net (trained on the 45 calibration patterns applied to
  the faces, as in Li et al., and on the 12-net's survivors), both through `python -m
  train`; the calibration workdir
  names the 12-net as its previous stage, and `detect-faces --model cascade-cnn` runs the
  chain 12-net -> 12-cal -> NMS."""
  import sys
  over = {"total_steps": 10, "log_every": 5, "eval_every": 10, "checkpoint_every": 10,
          "batch_size": 64, "data.max_images": 30, "data.eval_max_images": 6,
          "data.eval_batches": 1}
  args = [f"--config.{k}={v}" for k, v in over.items()]
  w12, wcal = tmp_path / "12net", tmp_path / "12cal"
  run([sys.executable, "-m", "train", "--config", "configs/cascade_cnn.py:12net",
       "--workdir", str(w12)] + args, tfds_dir)
  p = run([sys.executable, "-m", "train", "--config",
           f"configs/cascade_cnn.py:12cal,12net={w12}", "--workdir", str(wcal)] + args, tfds_dir)
  assert "done: step 10" in p.stdout and "corrected_iou" in p.stdout
  assert json.load(open(wcal / "config.json"))["data"]["previous_stages"] == [str(w12)]
  img, out = tmp_path / "x.png", tmp_path / "faces.json"
  from PIL import Image
  Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 52, 3), np.uint8)).save(img)
  run([sys.executable, "-m", "jaxvision.cli", "detect-faces", str(img), "--json", str(out),
       "--model", "cascade-cnn", "--checkpoint", str(wcal)], tfds_dir)
  faces = json.load(open(out))[str(img)]
  assert all(f["landmarks"] == [] and 0.0 <= f["score"] <= 1.0 for f in faces)
  # the chain itself, with the 12-net's threshold open so that it proposes: both stages
  # ran, and NMS came after the calibration (no two outputs overlap above its threshold)
  from jaxvision.faces import detector
  det = detector.detector_from_workdir(str(wcal), thresholds=(0.0, 0.7, 0.7))
  assert set(det.variables) == {"12net", "12cal"}
  r = det.raw(np.asarray(Image.open(img)))
  boxes = r["boxes"][0][r["valid"][0]]
  assert len(boxes) >= 2
  iou = geometry.iou_matrix(boxes, boxes)
  np.fill_diagonal(iou, 0.0)
  assert iou.max() <= det.config.nms[1] + 1e-6


def test_eval_threshold_comes_from_the_config():
  """The stage threshold of the recall / pass-rate metrics is config.data.threshold (not a
  value carried in the eval batches)."""
  import ml_collections
  from jaxvision.core.registry import get_task
  from jaxvision.faces import models
  model = models.PNet(width=0.25)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 12, 12, 3)))
  rng = np.random.default_rng(0)
  batch = {"input": jnp.asarray(rng.uniform(-1, 1, (8, 12, 12, 3)), jnp.float32),
           "label": jnp.asarray([0, 1, 2, 3, 0, 1, 0, 1]),
           "box": jnp.zeros((8, 4)), "landmarks": jnp.zeros((8, 10))}
  task = get_task("face_cascade")
  for thr, want in ((-1.0, 1.0), (1.0, 0.0)):
    config = ml_collections.ConfigDict({"data": {"threshold": thr}})
    m = task.evaluate(model, variables, batch, config)
    assert float(m["recall"][0]) == want and float(m["negative_pass_rate"][0]) == want
