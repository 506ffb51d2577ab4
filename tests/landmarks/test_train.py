"""PFLD trained by the generic trainer on a tiny .pts folder: the loss falls and the
workdir runs in detect-landmarks; .pts files round-trip; crops keep points on their pixels;
the auxiliary head is left out of inference outputs."""
import glob
import os

import jax
import numpy as np
import pytest
from PIL import Image

from jaxvision import models
from jaxvision.landmarks import data as D
from jaxvision.landmarks import pose


def _folder(root, n=12, size=64, seed=0):
  """Faces drawn as bright dots at their points (a rotated, scaled mean-like shape), so
  that the points are visible in the pixels."""
  rng = np.random.default_rng(seed)
  base = np.zeros((68, 2))
  t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
  base[:, 0], base[:, 1] = np.cos(t) * (1 + 0.3 * np.sin(3 * t)), np.sin(t)
  for i in range(n):
    a = rng.uniform(-0.3, 0.3)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = base @ r.T * rng.uniform(15, 22) + rng.uniform(28, 36, 2)
    img = np.zeros((size, size, 3), np.uint8)
    for x, y in np.round(pts).astype(int):
      img[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = 255
    Image.fromarray(img).save(os.path.join(root, f"f{i}.png"))
    D.write_pts(os.path.join(root, f"f{i}.pts"), pts)


def test_pts_round_trip_and_errors(tmp_path):
  pts = np.random.default_rng(0).uniform(0, 100, (68, 2)).astype(np.float32)
  D.write_pts(tmp_path / "a.pts", pts)
  np.testing.assert_allclose(D.read_pts(str(tmp_path / "a.pts")), pts, atol=1e-3)
  (tmp_path / "b.pts").write_text("version: 1\nn_points: 3\n{\n1 2\n}\n")
  from jaxvision.core.errors import DataError
  with pytest.raises(DataError, match="b.pts"):
    D.read_pts(str(tmp_path / "b.pts"))


def test_crop_keeps_points_on_their_pixels():
  img = np.zeros((80, 90, 3), np.uint8)
  pts = np.array([[20.0, 30.0], [60.0, 50.0], [40.0, 70.0]])
  for x, y in pts.astype(int):
    img[y, x] = 255
  crop, unit = D.crop_face(img, pts, 64)
  for u, v in unit * 64 - 0.5:        # unit frame -> crop pixel centres
    assert crop[int(round(v)), int(round(u))].max() > 0.2


def test_pfld_shapes_and_count():
  m = models.create("pfld")
  x = np.zeros((1, 112, 112, 3), np.float32)
  shapes = jax.eval_shape(lambda: m.init(jax.random.key(0), x))
  n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["params"]))
  assert 1.0e6 < n < 3.5e6, n            # a MobileNetV2-sized net (1.68M as built here)
  out = jax.eval_shape(lambda: m.apply(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                                                     shapes), x, train=False))
  assert out["landmarks"].shape == (1, 136) and "angles" not in out


@pytest.mark.longrun
def test_pfld_training_lowers_the_loss(tmp_path):
  from train import trainer
  from configs import landmarks as cfg
  folder = tmp_path / "faces"
  folder.mkdir()
  _folder(str(folder))
  c = cfg.get_config(f"width=0.25,size=64,data=folder:{folder}")
  c.total_steps, c.batch_size, c.log_every, c.eval_every, c.checkpoint_every = 60, 8, 10, 60, 60
  c.data.eval_batch_size = 1
  c.model.kwargs.repeats = (1, 1)       # the paper's (5, 6) compiles for a minute here
  c.optimizer.warmup_steps = 5
  res = trainer.train_and_evaluate(c, str(tmp_path / "run"))
  loss = _scalars(glob.glob(str(tmp_path / "run" / "tensorboard" / "events.*"))[0],
                  "train/loss")
  assert len(loss) == 6 and loss[-1] < 0.5 * loss[0], loss
  assert res["step"] == 60 and np.isfinite(res["eval"]["nme"])
  print("train loss every 10 steps:", [round(v, 4) for v in loss], "eval", res["eval"])
  # the trained workdir runs in detect-landmarks (crops from the given rectangles)
  import json
  from jaxvision import cli
  img = str(folder / "f0.png")
  (tmp_path / "b.json").write_text(json.dumps({img: [{"box": [10, 10, 54, 54]}]}))
  assert cli.main(["detect-landmarks", img, "--json", str(tmp_path / "o.json"), "--checkpoint",
                   str(tmp_path / "run"), "--boxes", str(tmp_path / "b.json"),
                   "--box-kind", "dlib"]) == 0
  pts = np.array(json.loads((tmp_path / "o.json").read_text())[img][0]["points"])
  assert pts.shape == (68, 2) and np.isfinite(pts).all()


def _scalars(path, tag):
  import struct
  from tensorboardX.proto import event_pb2
  out = []
  with open(path, "rb") as f:
    while header := f.read(12):
      (n,) = struct.unpack("<Q", header[:8])
      ev = event_pb2.Event.FromString(f.read(n))
      f.read(4)
      out += [(ev.step, v.simple_value) for v in ev.summary.value if v.tag == tag]
  return [v for _, v in sorted(out)]
