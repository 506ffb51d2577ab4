"""CFAN: shapes and a forward pass; stage-wise training on bright-dot faces where each
local stage lowers the training faces' NME below the stage before, while every earlier
stage (its params, and so its output) stays bit-identical to what its phase left, with no
second copy kept; auto-encoder pre-training on the embedded faces (each layer's
reconstruction loss falls, the layers below and the output layer stay put, fine-tuning
starts from the pre-trained weights); a workdir of the earlier layout (frozen copies in the
"cfan" collection) predicts with its copies; the optimiser's mask follows the schedule; a
trained workdir runs in detect-landmarks (longrun)."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxvision import models
from jaxvision.landmarks import cfan as C
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
  assert set(v["cfan"]) == {"step"}             # no copy of any stage: params is the one
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


def _train_step(m, tx, config, x, y):
  """One jitted step of the landmarks loss on (x, y) with `tx`, as the trainer takes it ->
  (params, model state, optimiser state, metrics with the loss)."""
  @jax.jit
  def step(params, state, opt, rng):
    def f(p):
      return T.landmarks_loss(m, {"params": p, **state}, {"input": x, "landmarks": y}, rng,
                              True, config)
    (loss, (metrics, new_state)), g = jax.value_and_grad(f, has_aux=True)(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), new_state, opt, {**metrics, "loss": loss}
  return step


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
  # as the trainer runs it (landmarks_optimizer): Adam with its momentum, chained with the
  # mask that freezes every stage not training
  tx = T.landmarks_optimizer(optax.adam(3e-3, b2=0.99), config, m)
  opt = tx.init(params)

  step = _train_step(m, tx, config, x, y)

  predict = jax.jit(lambda p, st: m.apply({"params": p, **st}, x)["stages"])
  names = ["global", "local1", "local2"]
  seen, left, n = [], [], 0
  first = jax.tree.map(np.asarray, params)
  for k, count in enumerate(steps):
    for _ in range(count):
      params, state, opt, metrics = step(params, state, opt, jax.random.key(n))
      n += 1
      assert int(metrics["stage"]) == k + 1
    seen.append(np.asarray(predict(params, state)))
    left.append(jax.tree.map(np.asarray, params))
  # each stage trained in its phase, and its params stayed bit-identical after it while the
  # later stages trained (the mask zeroes its momentum's updates), so its output too
  for k, name in enumerate(names):
    assert not np.array_equal(left[k][name]["dense0"]["kernel"], first[name]["dense0"]["kernel"])
    for later, out in zip(left[k + 1:], seen[k + 1:]):
      jax.tree.map(np.testing.assert_array_equal, later[name], left[k][name])
      np.testing.assert_array_equal(out[k], seen[k][k])
  assert set(state["cfan"]) == {"step"}         # and no second copy of any stage is kept
  nmes = [_nme(seen[-1][k], np.asarray(y)) for k in range(len(steps))]
  print("training-face NME per stage:", [round(e, 4) for e in nmes])
  assert nmes[1] < nmes[0] and nmes[2] < nmes[1], nmes


@pytest.mark.longrun   # 14-16 s on the shared 2-core machine
def test_cfan_workdir_runs_in_detect_landmarks(tmp_path):
  from train import trainer
  from configs import landmarks as cfg
  from jaxvision import cli
  folder = tmp_path / "faces"
  folder.mkdir()
  _folder(str(folder))
  c = cfg.get_config(f"model=cfan,size=48,stages=1,stage_steps=20/20,pretrain_steps=5,"
                     f"data=folder:{folder}")
  c.model.kwargs.update(global_size=16, global_hidden=(32,), local_hidden=(32,))
  c.batch_size, c.log_every, c.data.eval_batch_size = 8, 10, 1
  c.total_steps = 50                    # 5 + 20 per stage: one hidden layer each here
  res = trainer.train_and_evaluate(c, str(tmp_path / "run"))
  assert res["step"] == 50 and np.isfinite(res["eval"]["nme_stage2"])
  assert "ae_loss" in res["train"]
  # the checkpoint holds the params once: beside them only the step counter
  from jaxvision.core import checkpoint as ck
  _, variables, _ = ck.load_variables(str(tmp_path / "run"))
  assert set(variables) == {"params", "cfan"} and set(variables["cfan"]) == {"step"}
  img = str(folder / "f0.png")
  (tmp_path / "b.json").write_text(json.dumps({img: [{"box": [10, 10, 54, 54]}]}))
  assert cli.main(["detect-landmarks", img, "--json", str(tmp_path / "o.json"), "--checkpoint",
                   str(tmp_path / "run"), "--boxes", str(tmp_path / "b.json"),
                   "--box-kind", "dlib"]) == 0
  pts = np.array(json.loads((tmp_path / "o.json").read_text())[img][0]["points"])
  assert pts.shape == (68, 2) and np.isfinite(pts).all()
  assert os.path.isdir(tmp_path / "run" / "checkpoints")


def _embedded(n=32, size=48):
  s = D.samples_from(D.get_faces("embedded", "train"), size, 1.25)
  return jnp.asarray(s["input"][:n]), jnp.asarray(s["landmarks"][:n])


@pytest.mark.longrun   # 10-12 s on the shared 2-core machine
def test_autoencoder_pretraining_on_embedded_faces():
  x, y = _embedded()
  pre, lr = 25, 3e-3
  m = models.create("cfan", input_size=48, global_size=16, num_stages=1,
                    global_hidden=(64, 32), local_hidden=(64,), stage_steps=(1, 1),
                    pretrain_steps=pre, shape_noise=0.02)
  assert m.schedule() == [(2 * pre, 1), (pre, 1)]
  config = ml_collections.ConfigDict({"model": {"name": "cfan"}, "loss": "l2",
                                      "optimizer": {"name": "adam", "b1": 0.0}})
  v = jax.jit(m.init)(jax.random.key(0), x[:1])
  assert set(v) == {"params", "cfan"} and set(v["cfan"]) == {"step"}   # no decoder stored
  params, state = v["params"], {"cfan": v["cfan"]}
  # (b1 = 0 for the bound on the first fine-tuning step below; the mask as in training)
  tx = optax.chain(optax.adam(lr, b1=0.0, b2=0.99), C.freeze_untrained(m))
  opt = tx.init(params)

  step = _train_step(m, tx, config, x, y)

  snap = lambda: jax.tree.map(np.asarray, params)
  init = snap()
  phases = [("global", 0, pre), ("global", 1, pre), ("global", None, 1), ("local1", 0, pre)]
  kept = [init]
  for n_phase, (name, layer, count) in enumerate(phases):
    losses = []
    for _ in range(count):
      params, state, opt, met = step(params, state, opt, jax.random.key(len(kept) * 100 +
                                                                         len(losses)))
      if layer is not None:
        np.testing.assert_array_equal(met["loss"], met["ae_loss"])   # the AE loss alone
        losses.append(float(met["ae_loss"]))
      else:
        assert float(met["ae_loss"]) == 0.0
        losses.append(float(met["loss"]))
    now = snap()
    if layer is not None:
      # the reconstruction error falls; the layer's weights moved and nothing else did
      assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), (name, layer, losses)
      before = kept[-1]
      for key in now[name]:
        same = key != f"dense{layer}"
        assert np.array_equal(now[name][key]["kernel"], before[name][key]["kernel"]) == same
      for other in now:
        if other != name:
          jax.tree.map(np.testing.assert_array_equal, now[other], before[other])
    kept.append(now)
    if n_phase == 1:   # pre-training done: the global SAN's encoder is no longer its init
      for key in ("dense0", "dense1"):
        assert not np.allclose(now["global"][key]["kernel"], init["global"][key]["kernel"])
  # fine-tuning started from the pre-trained encoder: its first Adam step moved each weight
  # by at most lr / sqrt(1 - b2) = 10 lr from it, less than pre-training moved it
  tuned, pretrained = kept[3]["global"], kept[2]["global"]
  for key in ("dense0", "dense1"):
    t, p0, i0 = tuned[key]["kernel"], pretrained[key]["kernel"], init["global"][key]["kernel"]
    assert 0 < np.abs(t - p0).max() <= 10 * lr * 1.001 < np.abs(p0 - i0).max()
  # the global stage's params stayed bit-identical while local1 pre-trained
  jax.tree.map(np.testing.assert_array_equal, kept[4]["global"], kept[3]["global"])


def test_workdir_of_the_earlier_layout_predicts_with_its_frozen_copies(tmp_path):
  """Workdirs written before the optimiser froze the stages hold, for each finished stage, a
  drifted params entry and the frozen copy in "cfan": the copy is what predicts."""
  from jaxvision.core import checkpoint as ck
  from jaxvision.core import weights
  kw = dict(input_size=32, global_size=8, num_stages=1, global_hidden=(16,),
            local_hidden=(16,), stage_steps=(2, 2))
  m = models.create("cfan", **kw)
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  shapes = jax.eval_shape(m.init, jax.random.key(1), x)["params"]
  rng = np.random.default_rng(0)
  draw = lambda: jax.tree.map(lambda a: rng.normal(0, 0.3, a.shape).astype(np.float32),
                              shapes)
  drifted, copy = draw(), draw()["global"]
  old = {"params": drifted, "cfan": {"step": np.int32(5), "global": copy}}  # 5 > every end
  weights.save_workdir(str(tmp_path / "old"), old, task="landmarks", model_name="cfan",
                       model_kwargs=kw)
  _, model, variables, _ = ck.load_model(str(tmp_path / "old"), "landmarks")
  assert set(variables["cfan"]) == {"step", "global"}
  apply = jax.jit(lambda v: model.apply(v, x)["stages"])
  got = apply(variables)
  step = {"step": np.int32(5)}
  want = apply({"params": {**drifted, "global": copy}, "cfan": step})
  np.testing.assert_allclose(got, want, atol=1e-5)       # (XLA may fuse the two apart)
  drift = apply({"params": drifted, "cfan": step})
  assert np.abs(drift - want).max() > 1e-2              # the copy is what predicted


def test_trainable_follows_the_schedule():
  """The optimiser's mask: each hidden layer alone in its pre-training steps, the whole stage
  in its supervised steps, nothing of a stage outside its phase; the last stage past the end."""
  m = models.create("cfan", input_size=32, global_size=8, num_stages=1, global_hidden=(8, 4),
                    local_hidden=(8,), stage_steps=(3, 2), pretrain_steps=2)
  assert m.schedule() == [(4, 3), (2, 2)]
  want = {  # step -> the layers that train
      0: {("global", 0)}, 1: {("global", 0)}, 2: {("global", 1)}, 3: {("global", 1)},
      4: {("global", i) for i in range(3)}, 5: {("global", i) for i in range(3)},
      6: {("global", i) for i in range(3)},
      7: {("local1", 0)}, 8: {("local1", 0)}, 9: {("local1", 0), ("local1", 1)},
      10: {("local1", 0), ("local1", 1)}, 25: {("local1", 0), ("local1", 1)}}
  for step, layers in want.items():
    on = C.trainable(m, jnp.int32(step))
    got = {(k, int(d[5:])) for k, sub in on.items() for d, v in sub.items() if bool(v)}
    assert got == layers, step
  # and the transformation zeroes exactly the others' updates
  v = jax.jit(m.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  ones = jax.tree.map(jnp.ones_like, v["params"])
  tx = C.freeze_untrained(m)
  state = tx.init(ones)
  for step in range(11):
    u, state = tx.update(ones, state)
    for k, sub in u.items():
      for d, leaves in sub.items():
        for leaf in jax.tree.leaves(leaves):
          assert bool((leaf == 1).all()) == ((k, int(d[5:])) in want[step]), step
