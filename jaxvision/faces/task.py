"""Face-cascade tasks: MTCNN's multi-task stages and Cascade CNN's detection / calibration nets.

  face_cascade      binary face classification (+ box regression, + landmarks when the net
                    has those heads) with per-sample masks and online hard example mining:
                    negatives train classification only, positives classification and box,
                    part faces the box only, landmark faces the landmarks only.
                    loss = w_det * L_det + w_box * L_box + w_landmark * L_landmark, with
                    L_det = mean cross-entropy over the ceil(ohem_keep * n) hardest of the n
                    negatives+positives, L_box = mean over positives+parts of ||b - b*||^2,
                    L_landmark = mean over landmark faces of ||l - l*||^2 (Zhang et al. 2016;
                    weights 1/0.5/0.5 for P-Net and R-Net, 1/0.5/1 for O-Net; ohem_keep 0.7).
                    Cascade CNN's 12/24/48-nets use it with ohem_keep 1 and only a det head.
  face_calibration  45-way softmax over Cascade CNN's calibration patterns.

Data: jaxvision.faces.mining (samples mined from a face-box dataset, through the previous
stages when config.data.previous_stages lists them; batches mixed 3:1:1:2).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvision.core.registry import register_task
from jaxvision.core.tasks import Task
from jaxvision.faces.boxes import apply_calibration, calibration_windows, overlap


# ---------------------------------------------------------------- losses
def ohem_keep_mask(losses, valid, keep: float):
  """The ceil(keep * n) largest losses among the n valid ones (exactly that many, ties broken
  by position) -> bool mask. Traced: n may vary from batch to batch."""
  n = jnp.sum(valid)
  k = jnp.ceil(n * keep - 1e-4).astype(jnp.int32)  # 0.7 * 10 is 7, not 7.000001 -> 8
  order = jnp.argsort(-jnp.where(valid, losses, -jnp.inf), stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
  return valid & (rank < k)


def multitask_loss(logits, label, box_pred=None, box_target=None, lm_pred=None,
                   lm_target=None, weights=(1.0, 0.5, 0.5), ohem_keep: float = 0.7):
  """MTCNN's masked multi-task loss for one batch -> (total, parts dict).

  label: 0 negative, 1 positive, 2 part, 3 landmark (jaxvision.faces.mining). A head that is None
  contributes nothing. Each term is a mean over the samples it applies to (0 when none)."""
  logits = logits.reshape(logits.shape[0], -1).astype(jnp.float32)
  cls_valid = label <= 1
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.clip(label, 0, 1)[:, None], 1)[:, 0]
  kept = ohem_keep_mask(ce, cls_valid, ohem_keep)
  det = jnp.sum(jnp.where(kept, ce, 0.0)) / jnp.maximum(jnp.sum(kept), 1)
  total = weights[0] * det
  parts = {"det_loss": det}
  if box_pred is not None:
    m = (label == 1) | (label == 2)
    se = jnp.sum((box_pred.reshape(box_target.shape) - box_target) ** 2, axis=-1)
    parts["box_loss"] = jnp.sum(jnp.where(m, se, 0.0)) / jnp.maximum(jnp.sum(m), 1)
    total = total + weights[1] * parts["box_loss"]
  if lm_pred is not None:
    m = label == 3
    se = jnp.sum((lm_pred.reshape(lm_target.shape) - lm_target) ** 2, axis=-1)
    parts["landmark_loss"] = jnp.sum(jnp.where(m, se, 0.0)) / jnp.maximum(jnp.sum(m), 1)
    total = total + weights[2] * parts["landmark_loss"]
  return total, parts


def _weights(config):
  w = config.get("loss_weights", None) or {}
  return (float(w.get("det", 1.0)), float(w.get("box", 0.5)), float(w.get("landmark", 0.5)))


def _flat(out, key, n):
  return out[key].reshape(n, -1) if key in out else None


def cascade_loss(model, variables, batch, rng, train, config):
  del rng
  x = batch["input"]
  out = model.apply(variables, x, train=train)
  n = x.shape[0]
  total, parts = multitask_loss(
      out["logits"], batch["label"], _flat(out, "box", n), batch["box"],
      _flat(out, "landmarks", n), batch["landmarks"], weights=_weights(config),
      ohem_keep=float(config.get("ohem_keep", 0.7)))
  logits = out["logits"].reshape(n, -1)
  valid = batch["label"] <= 1
  acc = jnp.sum(valid & (jnp.argmax(logits, -1) == batch["label"])) / jnp.maximum(jnp.sum(valid), 1)
  return total, ({**parts, "accuracy": acc}, {})


def _masked_mean(x, m):
  return jnp.sum(jnp.where(m, x, 0.0)) / jnp.maximum(jnp.sum(m), 1)


def cascade_evaluate(model, variables, batch, config):
  """Per-batch metrics as (1,) arrays (the batches have the same mix): accuracy on
  negatives+positives at argmax, recall = positives above the stage threshold
  (config.data.threshold, default 0.5), pass rate = negatives above it, box / landmark MSE
  per coordinate on their samples."""
  x, label = batch["input"], batch["label"]
  n = x.shape[0]
  out = model.apply(variables, x, train=False)
  prob = jax.nn.softmax(out["logits"].reshape(n, -1), -1)[:, 1]
  thr = float(config.data.get("threshold", 0.5))
  valid = label <= 1
  res = {"accuracy": _masked_mean((prob > 0.5) == (label == 1), valid),
         "recall": _masked_mean(prob > thr, label == 1),
         "negative_pass_rate": _masked_mean(prob > thr, label == 0)}
  if "box" in out:
    err = jnp.mean((out["box"].reshape(n, 4) - batch["box"]) ** 2, -1)
    res["box_mse"] = _masked_mean(err, (label == 1) | (label == 2))
  if "landmarks" in out:
    err = jnp.mean((out["landmarks"].reshape(n, 10) - batch["landmarks"]) ** 2, -1)
    res["landmark_mse"] = _masked_mean(err, label == 3)
  return {k: v[None] for k, v in res.items()}


def calibration_loss(model, variables, batch, rng, train, config):
  del rng, config
  x = batch["input"]
  logits = model.apply(variables, x, train=train)["logits"].reshape(x.shape[0], -1)
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)),
                            batch["label"][:, None], 1)[:, 0]
  acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  return jnp.mean(ce), ({"accuracy": acc}, {})


def calibration_evaluate(model, variables, batch, config):
  """Pattern accuracy, and the mean IoU between the face and the window corrected with the
  predicted pattern (1.0 when every pattern is right)."""
  del config
  x, label = batch["input"], batch["label"]
  logits = model.apply(variables, x, train=False)["logits"].reshape(x.shape[0], -1)
  pred = jnp.argmax(logits, -1)
  face = jnp.tile(jnp.array([[0.0, 0.0, 1.0, 1.0]]), (x.shape[0], 1))
  win = calibration_windows(face, label)  # the window pattern `label` maps onto the unit face
  fixed = apply_calibration(win, jax.nn.one_hot(pred, 45), threshold=0.5)
  iou = overlap(fixed, face)
  return {"accuracy": jnp.mean(pred == label)[None], "corrected_iou": jnp.mean(iou)[None]}


def face_samples(batch, outputs, config):
  del batch, outputs, config
  return {}


# ---------------------------------------------------------------- data
def face_make_data(config):
  from jaxvision.faces import data as face_data
  from jaxvision.faces import mining

  d = config.data
  calibration = config.task == "face_calibration"
  data_dir = d.get("data_dir") or None
  opts = mining.MiningOptions(
      size=int(d.size), negatives_per_image=int(d.get("negatives_per_image", 50)),
      windows_per_face=int(d.get("windows_per_face", 20)),
      landmark_per_face=int(d.get("landmark_per_face", 10)),
      min_face=float(d.get("min_face", 12)), calibration=calibration)
  previous = list(d.get("previous_stages", ()) or ())
  thresholds = list(d.get("previous_thresholds", ()) or ())
  stages = []
  if previous:  # calibration nets too: the patterns on the faces and what these let through
    for i, w in enumerate(previous):
      stages.append(mining.load_stage(w, float(thresholds[i]) if i < len(thresholds) else 0.5))
  lead = jax.process_index() == 0
  mine = dict(stages=stages, min_size=float(d.get("mine_min_size", 20)),
              max_windows=int(d.get("mine_max_windows", 20000)),
              max_proposals=int(d.get("mine_max_proposals", 200)), progress=lead)
  train_src = face_data.get_face_source(d.dataset, d.train_split, data_dir,
                                        annotations=d.get("annotations") or None)
  eval_src = face_data.get_face_source(d.dataset, d.eval_split, data_dir,
                                       annotations=d.get("eval_annotations") or None)
  train = mining.mine_source(train_src, opts, config.seed, d.get("max_images") or None, **mine)
  ev = mining.mine_source(eval_src, opts, config.seed + 1, d.get("eval_max_images") or None,
                          **mine)
  if lead:
    via = f" through {len(stages)} previous stage(s)" if stages else ""
    print(f"face samples {opts.size}x{opts.size}{via}: "
          f"train {mining.counts_by_category(train)}, eval {mining.counts_by_category(ev)}",
          flush=True)
  mix = tuple(d.get("mix", (3, 1, 1, 2)))
  loader = mining.make_loader(train, batch_size=config.batch_size // jax.process_count(),
                              mix=mix, seed=config.seed, calibration=calibration,
                              shard_index=jax.process_index(), shard_count=jax.process_count())
  eval_src_batches = mining.MixedBatches(ev, int(d.get("eval_batch_size", 64)), mix,
                                         seed=config.seed + 1, calibration=calibration,
                                         flips=False)
  eval_batches = [eval_src_batches[i] for i in range(int(d.get("eval_batches", 4)))]
  return loader, eval_batches


register_task("face_cascade", Task(make_data=face_make_data, loss=cascade_loss,
                                   evaluate=cascade_evaluate, samples=face_samples))
register_task("face_calibration", Task(make_data=face_make_data, loss=calibration_loss,
                                       evaluate=calibration_evaluate, samples=face_samples))
