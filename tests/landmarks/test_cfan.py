"""CFAN: shapes and a forward pass; stage-wise training on bright-dot faces where each
local stage lowers the training faces' NME below the stage before, while every earlier
stage (its frozen copy, and so its output) stays exactly as its phase left it; a trained
workdir runs in detect-landmarks (longrun)."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxvision import models
from jaxvision.landmarks import data as D
from jaxvision.landmarks import task as T
from tests.landmarks.test_train import _folder

TINY = dict(input_size=48, global_size=16, num_stages=2, global_hidden=(64,),
            local_hidden=(64,))


def test_shapes_and_forward():
  m = models.create("cfan", **TINY)
  x = jax.random.uniform(jax.random.key(0), (3, 48, 48, 3))
  v = jax.jit(m.init)(jax.random.key(1), x)
  assert set(v["params"]) == {"global", "local1", "local2"}
  assert set(v["cfan"]) == {"step", "global", "local1"}     # the last stage is never frozen
  out = jax.jit(m.apply)(v, x)
  assert out["landmarks"].shape == (3, 136) and out["stages"].shape == (3, 3, 136)
  np.testing.assert_array_equal(out["landmarks"], out["stages"][-1])
  # a new local stage starts as the identity (zero output layer)
  np.testing.assert_allclose(out["stages"][1], out["stages"][0], atol=1e-6)
  assert m.sizes() == [24, 48]


def _nme(pred, gt):
  err = np.linalg.norm((pred - gt).reshape(len(gt), -1, 2), axis=-1).mean(-1)
  g = gt.reshape(len(gt), -1, 2)
  return float(np.mean(err / np.linalg.norm(g[:, 36] - g[:, 45], axis=-1)))


@pytest.mark.longrun   # 8-9 s on the shared 2-core machine
def test_stagewise_training_refines_and_freezes(tmp_path):
  _folder(str(tmp_path), n=12, size=64)
  faces = D.get_faces(f"folder:{tmp_path}", "train")
  s = D.samples_from(faces, 48, 1.25)
  x, y = jnp.asarray(s["input"]), jnp.asarray(s["landmarks"])
  steps = (30, 60, 60)
  m = models.create("cfan", **TINY, stage_steps=steps)
  config = ml_collections.ConfigDict({"model": {"name": "cfan"}, "loss": "l2"})
  v = jax.jit(m.init)(jax.random.key(0), x[:1])
  params, state = v["params"], {"cfan": v["cfan"]}
  tx = optax.adam(3e-3, b2=0.99)
  opt = tx.init(params)

  @jax.jit
  def step(params, state, opt, rng):
    def f(p):
      return T.landmarks_loss(m, {"params": p, **state}, {"input": x, "landmarks": y}, rng,
                              True, config)
    (_, (metrics, new_state)), g = jax.value_and_grad(f, has_aux=True)(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), new_state, opt, metrics

  predict = jax.jit(lambda p, st: m.apply({"params": p, **st}, x)["stages"])
  seen, n = [], 0
  for k, count in enumerate(steps):
    for _ in range(count):
      params, state, opt, metrics = step(params, state, opt, jax.random.key(n))
      n += 1
      assert int(metrics["stage"]) == k + 1
    seen.append(np.asarray(predict(params, state)))
  # each earlier stage's output is exactly what its phase left, however Adam moved its
  # "params" slot afterwards (that slot did move: the frozen copy is what protects it)
  for k in range(len(steps)):
    for later in seen[k + 1:]:
      np.testing.assert_array_equal(later[k], seen[k][k])
  a = np.asarray(state["cfan"]["global"]["dense0"]["kernel"])
  assert not np.array_equal(a, np.asarray(params["global"]["dense0"]["kernel"]))
  nmes = [_nme(seen[-1][k], np.asarray(y)) for k in range(len(steps))]
  print("training-face NME per stage:", [round(e, 4) for e in nmes])
  assert nmes[1] < nmes[0] and nmes[2] < nmes[1], nmes


@pytest.mark.longrun
def test_cfan_workdir_runs_in_detect_landmarks(tmp_path):
  from train import trainer
  from configs import landmarks as cfg
  from jaxvision import cli
  folder = tmp_path / "faces"
  folder.mkdir()
  _folder(str(folder))
  c = cfg.get_config(f"model=cfan,size=48,stages=1,stage_steps=20/20,data=folder:{folder}")
  c.model.kwargs.update(global_size=16, global_hidden=(32,), local_hidden=(32,))
  c.batch_size, c.log_every, c.data.eval_batch_size = 8, 10, 1
  res = trainer.train_and_evaluate(c, str(tmp_path / "run"))
  assert res["step"] == 40 and np.isfinite(res["eval"]["nme_stage2"])
  img = str(folder / "f0.png")
  (tmp_path / "b.json").write_text(json.dumps({img: [{"box": [10, 10, 54, 54]}]}))
  assert cli.main(["detect-landmarks", img, "--json", str(tmp_path / "o.json"), "--checkpoint",
                   str(tmp_path / "run"), "--boxes", str(tmp_path / "b.json"),
                   "--box-kind", "dlib"]) == 0
  pts = np.array(json.loads((tmp_path / "o.json").read_text())[img][0]["points"])
  assert pts.shape == (68, 2) and np.isfinite(pts).all()
  assert os.path.isdir(tmp_path / "run" / "checkpoints")
