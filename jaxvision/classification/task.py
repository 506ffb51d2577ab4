"""Classification task: softmax cross-entropy with label smoothing; top-1/top-5 in eval.

Batches {"input": f32 (B, H, W, 3) in [0, 1], "label": i32 (B,)} from
jaxvision.classification.data.make_data (embedded digits/lfw, or TFDS cifar10/imagenet2012).
BatchNorm statistics are updated in training (the "batch_stats" collection comes back
as the new model state); dropout (SPP-net) draws from the step's rng.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvision.classification import data
from jaxvision.core.registry import register_task
from jaxvision.core.tasks import Task, apply_model


def _logits(model, variables, x, rng, train):
  if train:
    return apply_model(model, variables, x, True, rngs={"dropout": rng})
  return apply_model(model, variables, x, False)


def cross_entropy(logits, labels, smoothing: float = 0.0):
  """Per-example softmax cross-entropy against (1 - s) one-hot + s / K."""
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if smoothing:
    onehot = optax.smooth_labels(onehot, smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), onehot)


def topk_correct(logits, labels, k: int):
  """1.0 where the label is among the k largest logits (k clipped to the class count)."""
  k = min(k, logits.shape[-1])
  _, idx = jax.lax.top_k(logits, k)
  return jnp.any(idx == labels[:, None], axis=-1).astype(jnp.float32)


def loss(model, variables, batch, rng, train, config=None):
  smoothing = float(config.get("label_smoothing", 0.0)) if config is not None else 0.0
  logits, new_state = _logits(model, variables, batch["input"], rng, train)
  ce = cross_entropy(logits, batch["label"], smoothing)
  return jnp.mean(ce), ({"top1": jnp.mean(topk_correct(logits, batch["label"], 1))},
                        new_state)


def evaluate(model, variables, batch, config=None):
  del config  # top-1, top-5 and the unsmoothed loss need nothing from it
  logits = model.apply(variables, batch["input"], train=False)
  y = batch["label"]
  return {"top1": topk_correct(logits, y, 1), "top5": topk_correct(logits, y, 5),
          "loss": cross_entropy(logits, y)}


def samples(batch, outputs, config=None) -> dict[str, np.ndarray]:
  del batch, outputs, config  # nothing image-like to show; metrics say it all
  return {}


register_task("classification", Task(make_data=data.make_data, loss=loss, evaluate=evaluate,
                                      samples=samples))
