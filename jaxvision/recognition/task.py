"""The `face_embedding` task: metric learning of face embeddings with the generic trainer.

  loss       config.loss: "semihard" (FaceNet: triplets with online semi-hard negatives,
             squared distances), "batch_hard" (Hermans et al. 2017, margin),
             "batch_hard_soft" (its soft margin), "softmax_center" (softmax + centre loss,
             as davidsandberg/facenet trains its best models; needs model.kwargs.num_classes)
             config.margin (0.2), config.center_weight (0.01),
             config.ohem_fraction: 1.0 uses every triplet / anchor / example; below 1 the
             loss is the mean of that hardest fraction (online hard example mining).
  evaluate   on the held-out identities' fixed views (one batch): verification ROC AUC over
             all pairs of the batch, the mean same-identity and different-identity distance,
             and the embeddings (for the collapse check)
  samples    the first eval chips; and the collapse detector: embeddings that have become
             one point (losses.collapse_reason) stop the run with a TrainingError naming it
  data       jaxvision.recognition.data (P x K batches; lfw_subset smoke-test set by default)

Training keys: see configs/recognition.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.core.errors import TrainingError
from jaxvision.core.registry import register_task
from jaxvision.core.tasks import Task, apply_model
from jaxvision.recognition import losses as L
from jaxvision.recognition.data import make_data

TASK = "face_embedding"
LOSSES = ("semihard", "batch_hard", "batch_hard_soft", "softmax_center")


def embedding_loss(model, variables, batch, rng, train, config):
  kind = config.get("loss", "semihard")
  if kind not in LOSSES:
    raise TrainingError(f"loss {kind!r}: choose from {', '.join(LOSSES)}")
  rngs = {"dropout": rng} if rng is not None else {}  # DeepFace's and FaceNet's dropout
  e, new_state = apply_model(model, variables, batch["input"], train, rngs=rngs)
  e = e.astype(jnp.float32)
  labels = batch["label"]
  margin = float(config.get("margin", 0.2))
  frac = float(config.get("ohem_fraction", 1.0))
  if kind == "semihard":
    loss, per, mask = L.triplet_semihard(e, labels, margin, squared=True)
  elif kind.startswith("batch_hard"):
    loss, per, mask = L.batch_hard(e, labels, margin, soft=kind.endswith("soft"))
  else:
    head = variables["params"]["head"]
    logits = e @ head["logits"]["kernel"] + head["logits"]["bias"]
    loss, per, _ = L.softmax_center(logits, e, batch["identity"], head["centres"],
                                    float(config.get("center_weight", 0.01)))
    mask = jnp.ones(per.shape, bool)
  if frac < 1.0:
    loss = L.ohem(per, frac, mask)
  active = jnp.sum((per > 0) & mask) / jnp.maximum(jnp.sum(mask), 1)
  spread = jnp.sqrt(jnp.mean(jnp.sum((e - e.mean(0)) ** 2, -1)))
  return loss, ({"active_fraction": active, "embedding_spread": spread}, new_state)


def _pair_auc(e, labels):
  """ROC AUC of "same identity when closer" over all pairs of one batch (jit)."""
  d = L.pairwise_distances(e)
  n = e.shape[0]
  upper = jnp.triu(jnp.ones((n, n), bool), 1)
  same = (labels[:, None] == labels[None, :]) & upper
  diff = (labels[:, None] != labels[None, :]) & upper
  dp = jnp.where(same, d, jnp.nan).reshape(-1)
  dn = jnp.where(diff, d, jnp.nan).reshape(-1)
  closer = (dp[:, None] < dn[None, :]) + 0.5 * (dp[:, None] == dn[None, :])
  valid = same.reshape(-1)[:, None] & diff.reshape(-1)[None, :]
  auc = jnp.sum(jnp.where(valid, closer, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
  return auc, jnp.sum(jnp.where(same, d, 0)) / jnp.maximum(jnp.sum(same), 1), \
      jnp.sum(jnp.where(diff, d, 0)) / jnp.maximum(jnp.sum(diff), 1)


def embedding_evaluate(model, variables, batch, config):
  del config
  e = model.apply(variables, batch["input"], train=False).astype(jnp.float32)
  auc, dp, dn = _pair_auc(e, batch["label"])
  return {"auc": auc[None], "same_distance": dp[None], "different_distance": dn[None],
          "embedding": e}


def embedding_samples(batch, outputs, config) -> dict[str, np.ndarray]:
  """The collapse check (host side, after every evaluation) and the first 8 eval chips."""
  reason = L.collapse_reason(np.asarray(outputs["embedding"]),
                             float(config.get("collapse_spread", 1e-3)))
  if reason is not None:
    raise TrainingError(f"training stopped: {reason}")
  x = np.clip(np.asarray(batch["input"][:8]), 0, 255).round().astype(np.uint8)
  return {"eval_chips": np.concatenate(list(x), axis=1)[None]}


register_task(TASK, Task(make_data=make_data, loss=embedding_loss, evaluate=embedding_evaluate,
                         samples=embedding_samples))
