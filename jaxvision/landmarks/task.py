"""The `landmarks` task: PFLD's pose-weighted loss (or wing loss) on face crops.

  loss = "pfld" (default): (1/M) sum_m w_m sum_n ||p_mn - g_mn||^2 over the M faces and
         their points (unit-frame coordinates), with the weight of PFLD (Guo et al. 2019,
         eq. 2) w_m = a_m * (floor + sum_{k in yaw, pitch, roll} (1 - cos(theta^_mk -
         theta_mk))):
         theta^ the auxiliary head's angles, theta the pose fit's (pose.py), a_m the
         attribute weight. The paper's weight is floor = 0; there the auxiliary head alone
         can drive a face's weight, and so its landmark loss, to zero, so the default floor
         is 1 (config.loss_floor). a_m (config.attribute_weights, on by default for
         tfds:wflw, the one source with attributes) is the sum over the attribute classes c
         the face is in of w_c = 1 / (fraction of the training faces in class c), computed
         once from the training split (data.class_weights; WFLW's six flags plus "normal"
         for a face with none): rare conditions (profile faces, occlusion) weigh more. It
         multiplies the floor too, so that the rebalancing survives once the angle term is
         small (with floor 0 both forms are the paper's). Literal reciprocals make the mean
         a_m over the training set the number of classes present (7 on WFLW): a constant
         scale on the loss, which Adam's step ignores. Without attributes (embedded,
         folder, 300-W) a_m = 1 and the weight is floor + sum(1 - cos), as before.
  loss = "wing": Feng et al. 2018's wing loss on the coordinates in input pixels
         (w = 10, epsilon = 2), summed over coordinates, mean over faces (no angle head).
  loss = "l2": the unweighted sum of squares.

Metrics: per face the NME (inter-ocular for 68 and 98 points, else over the crop side)
and the loss; samples: the first eval crops with the predicted points drawn.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.core.errors import DataError
from jaxvision.core.registry import register_task
from jaxvision.core.tasks import Task, apply_model


def wing(x, w: float = 10.0, eps: float = 2.0):
  """Wing loss per element: w ln(1 + |x|/eps) for |x| < w, |x| - C beyond (C makes it
  continuous: C = w - w ln(1 + w/eps))."""
  a = jnp.abs(x)
  c = w - w * jnp.log1p(w / eps)
  return jnp.where(a < w, w * jnp.log1p(a / eps), a - c)


def pfld_loss(pred, gt, angles_pred, angles_gt, attribute_weight=None, floor: float = 1.0):
  """PFLD's weighted loss (module docstring): pred, gt (M, 2P); angles (M, 3) radians."""
  se = jnp.sum((pred - gt) ** 2, -1)
  a = 1.0 if attribute_weight is None else attribute_weight
  w = a * (floor + jnp.sum(1.0 - jnp.cos(angles_pred - angles_gt), -1))
  return jnp.mean(w * se)


def _inter_ocular(gt):
  g = gt.reshape(gt.shape[0], -1, 2)
  if g.shape[1] == 68:
    return jnp.linalg.norm(g[:, 36] - g[:, 45], axis=-1)
  if g.shape[1] == 98:   # WFLW: the outer eye corners 60 and 72
    return jnp.linalg.norm(g[:, 60] - g[:, 72], axis=-1)
  return jnp.ones(g.shape[0])


def landmarks_optimizer(tx, config, model):
  """The trainer's optimiser; for CFAN chained with `cfan.freeze_untrained`, which zeroes
  the updates of every stage (and pre-training layer) not training at the step, so that a
  finished stage stays bit-identical under any optimiser, momentum included."""
  if config.model.name != "cfan":
    return tx
  import optax
  from jaxvision.landmarks.cfan import freeze_untrained
  return optax.chain(tx, freeze_untrained(model))


def landmarks_loss(model, variables, batch, rng, train, config):
  # CFAN draws its shape and masking noise from the "noise" rng and reports its active stage
  cfan = config.model.name == "cfan"
  kw = {"rngs": {"noise": rng}} if cfan and train else {}
  out, state = apply_model(model, variables, batch["input"], train, **kw)
  pred, gt = out["landmarks"].astype(jnp.float32), batch["landmarks"]
  kind = config.get("loss", "pfld")
  if kind == "pfld" and "angles" in out:
    loss = pfld_loss(pred, gt, out["angles"].astype(jnp.float32), batch["angles"],
                     batch.get("attr_weight"), floor=float(config.get("loss_floor", 1.0)))
  elif kind == "wing":
    s = float(batch["input"].shape[1])
    loss = jnp.mean(jnp.sum(wing((pred - gt) * s, float(config.get("wing_w", 10.0)),
                                 float(config.get("wing_eps", 2.0))), -1))
  else:
    loss = jnp.mean(jnp.sum((pred - gt) ** 2, -1))
  err = jnp.linalg.norm((pred - gt).reshape(pred.shape[0], -1, 2), axis=-1).mean(-1)
  metrics = {"nme": jnp.mean(err / _inter_ocular(gt))}
  if "stage" in out:   # CFAN: which stage this step trains (1 = the global SAN)
    metrics["stage"] = out["stage"]
  if "ae_loss" in out:  # CFAN's auto-encoder pre-training steps train that loss alone
    loss = jnp.where(out["pretraining"], out["ae_loss"], loss)
    metrics["ae_loss"] = out["ae_loss"]
  return loss, (metrics, state)


def landmarks_evaluate(model, variables, batch, config):
  del config
  out = model.apply(variables, batch["input"], train=False)
  pred, gt = out["landmarks"], batch["landmarks"]
  err = jnp.linalg.norm((pred - gt).reshape(pred.shape[0], -1, 2), axis=-1).mean(-1)
  res = {"nme": err / _inter_ocular(gt), "l2": jnp.sum((pred - gt) ** 2, -1),
         "landmarks": pred}
  for k, p in enumerate(out.get("stages", ())):   # CFAN: the NME after each stage
    e = jnp.linalg.norm((p - gt).reshape(p.shape[0], -1, 2), axis=-1).mean(-1)
    res[f"nme_stage{k + 1}"] = e / _inter_ocular(gt)
  return res


def landmarks_samples(batch, outputs, config):
  del config
  x = np.asarray(batch["input"][:4])
  img = (np.clip(x, 0, 1) * 255).astype(np.uint8)
  pts = np.asarray(outputs["landmarks"][:4]).reshape(len(img), -1, 2) * img.shape[1]
  for im, p in zip(img, pts):
    for u, v in np.round(p).astype(int):
      if 0 <= u < im.shape[1] and 0 <= v < im.shape[0]:
        im[v, u] = (255, 0, 0)
  return {"points": img}


def landmarks_make_data(config):
  import grain.python as grain
  from jaxvision.landmarks import data as lm_data
  d = config.data
  size = int(config.model.kwargs.get("input_size", 112))
  scale = float(d.get("crop_scale", 1.25))
  kw = dict(data_dir=d.get("data_dir") or None, eval_folder=d.get("eval_folder", ""),
            eval_split=d.get("eval_split", ""), manual_dir=d.get("manual_dir", ""))
  faces, attrs = lm_data.load_split(d.dataset, "train", **kw)
  weigh = config.get("attribute_weights", False) and config.get("loss", "pfld") == "pfld"
  if weigh and attrs is None:
    raise DataError(f"attribute_weights=True: data {d.dataset} carries no attributes "
                    "(tfds:wflw does)")
  train = lm_data.samples_from(faces, size, scale)
  test = lm_data.samples_from(lm_data.load_split(d.dataset, "test", **kw)[0], size, scale)
  if weigh:
    train["attr_weight"] = lm_data.sample_weights(attrs, lm_data.class_weights(attrs))
  per_host = config.batch_size // jax.process_count()
  src = lm_data.FaceBatches(train, per_host, config.seed + 1000 * jax.process_index(),
                            flip=float(d.get("flip", 0.0)))
  sampler = grain.IndexSampler(num_records=len(src), shuffle=False, num_epochs=1,
                               shard_options=grain.NoSharding(), seed=config.seed)
  loader = grain.DataLoader(data_source=src, sampler=sampler, worker_count=0)
  eb = int(d.get("eval_batch_size", 32))
  n = len(test["input"])
  evals = [{k: v[i:i + eb] for k, v in test.items()} for i in range(0, n - n % eb or n, eb)]
  return loader, evals


register_task("landmarks", Task(make_data=landmarks_make_data, loss=landmarks_loss,
                                evaluate=landmarks_evaluate, samples=landmarks_samples,
                                optimizer=landmarks_optimizer))
