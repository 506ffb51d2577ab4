"""The `image_to_image` task: a network trained to reproduce an image operator."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.can import operators
from jaxvision.core import data
from jaxvision.core import metrics as jv_metrics
from jaxvision.core.io import to_uint8
from jaxvision.core.losses import pixel_loss
from jaxvision.core.registry import register_task
from jaxvision.core.tasks import Task, apply_model, image_data


def i2i_loss(model, variables, batch, rng, train, config):
  del rng
  pred, new_state = apply_model(model, variables, batch["input"], train)
  loss = pixel_loss(config.get("loss", "mse"), pred, batch["target"])
  return loss, ({"mse": jnp.mean((pred - batch["target"]) ** 2)}, new_state)


def i2i_evaluate(model, variables, batch, config=None):
  del config
  pred = jnp.clip(model.apply(variables, batch["input"], train=False), 0.0, 1.0)
  tgt = batch["target"]
  return {
      "psnr": jv_metrics.psnr(pred, tgt),
      "ssim": jv_metrics.ssim(pred, tgt),
      "input_psnr": jv_metrics.psnr(jnp.clip(batch["input"], 0, 1), tgt),
      "output": pred,
  }


def i2i_samples(batch, outputs, config=None) -> dict[str, np.ndarray]:
  """Side-by-side input | output | target strips, one per evaluated image."""
  del config
  x, y, t = (to_uint8(a) for a in (batch["input"], outputs["output"], batch["target"]))
  return {"input": x, "output": y, "target": t,
          "input|output|target": np.concatenate([x, y, t], axis=2)}


def i2i_make_data(config):
  """Crops of the dataset's images with the operator's output as target (computed once
  per image and cached on disk, see `jaxvision.core.data.CachedPairs`)."""
  d = config.data

  def pairs(split, src):
    if not d.get("operator"):
      return None
    params = dict(d.get("operator_params") or {})
    fn = functools.partial(operators.get(d.operator), **params)
    p = data.CachedPairs(d.dataset, split, d.operator, fn, params, d.get("max_side") or None,
                         d.get("data_dir") or None)
    p.prepare(src, progress=jax.process_index() == 0)
    return p

  return image_data(config, pairs)


register_task("image_to_image", Task(make_data=i2i_make_data, loss=i2i_loss,
                                     evaluate=i2i_evaluate, samples=i2i_samples))
