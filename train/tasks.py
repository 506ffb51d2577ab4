"""Tasks: what the generic trainer trains. A task is a set of pure functions.

A task provides
  make_data(config) -> (train_loader, eval_batches)       host-side, grain + TFDS
  loss(model, variables, batch, rng, train) -> (loss, (metrics, new_model_state))
  evaluate(model, variables, batch) -> dict of per-example metrics and outputs
  samples(eval_outputs) -> dict name -> uint8 images (N, H, W, 3) to log / write
Families add tasks with `register`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision import metrics as jv_metrics

_TASKS: dict[str, "Task"] = {}


@dataclasses.dataclass(frozen=True)
class Task:
  make_data: Callable
  loss: Callable
  evaluate: Callable
  samples: Callable


def register(name: str, task: Task) -> None:
  _TASKS[name] = task


def get(name: str) -> Task:
  if name not in _TASKS:
    raise ValueError(f"unknown task {name!r}; choose from: {', '.join(sorted(_TASKS))}")
  return _TASKS[name]


# ---------------------------------------------------------------- image to image
def pixel_loss(kind: str, pred, target):
  d = pred - target
  if kind == "mse":
    return jnp.mean(d * d)
  if kind == "l1":
    return jnp.mean(jnp.abs(d))
  if kind == "charbonnier":
    return jnp.mean(jnp.sqrt(d * d + 1e-6))
  raise ValueError(f"unknown loss {kind!r}; choose from: mse, l1, charbonnier")


def _apply(model, variables, x, train):
  if train and len(variables) > 1:  # model state (batch statistics) to update
    mutable = [k for k in variables if k != "params"]
    return model.apply(variables, x, train=True, mutable=mutable)
  return model.apply(variables, x, train=train), {}


def i2i_loss(model, variables, batch, rng, train, config=None):
  del rng
  kind = config.get("loss", "mse") if config is not None else "mse"
  pred, new_state = _apply(model, variables, batch["input"], train)
  loss = pixel_loss(kind, pred, batch["target"])
  return loss, ({"mse": jnp.mean((pred - batch["target"]) ** 2)}, new_state)


def i2i_evaluate(model, variables, batch):
  pred = jnp.clip(model.apply(variables, batch["input"], train=False), 0.0, 1.0)
  tgt = batch["target"]
  return {
      "psnr": jv_metrics.psnr(pred, tgt),
      "ssim": jv_metrics.ssim(pred, tgt),
      "input_psnr": jv_metrics.psnr(jnp.clip(batch["input"], 0, 1), tgt),
      "output": pred,
  }


def to_uint8(x) -> np.ndarray:
  return (np.clip(np.asarray(x, np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)


def i2i_samples(batch, outputs) -> dict[str, np.ndarray]:
  """Side-by-side input | output | target strips, one per evaluated image."""
  x, y, t = (to_uint8(a) for a in (batch["input"], outputs["output"], batch["target"]))
  return {"input": x, "output": y, "target": t,
          "input|output|target": np.concatenate([x, y, t], axis=2)}


def i2i_make_data(config):
  from jaxvision import data

  d = config.data
  data_dir = d.get("data_dir") or None
  train_src = data.get_source(d.dataset, d.train_split, data_dir)
  eval_src = data.get_source(d.dataset, d.eval_split, data_dir)
  max_side = d.get("max_side") or None

  def pairs(split, src):
    if not d.get("operator"):
      return None
    from jaxvision import operators
    params = dict(d.get("operator_params") or {})
    fn = functools.partial(operators.get(d.operator), **params)
    p = data.CachedPairs(d.dataset, split, d.operator, fn, params, max_side, data_dir)
    p.prepare(src, progress=jax.process_index() == 0)
    return p

  per_host = config.batch_size // jax.process_count()
  loader = data.make_train_loader(
      train_src, batch_size=per_host, crop_size=d.crop_size, seed=config.seed,
      pair_fn=pairs(d.train_split, train_src), worker_count=d.get("worker_count", 2))
  eval_batches = data.make_eval_batches(
      eval_src, crop_size=d.get("eval_crop") or None, pair_fn=pairs(d.eval_split, eval_src),
      max_images=d.get("eval_max_images") or None)
  return loader, eval_batches


register("image_to_image", Task(make_data=i2i_make_data, loss=i2i_loss,
                                evaluate=i2i_evaluate, samples=i2i_samples))


# ---------------------------------------------------------------- learned compression
def _bits_per_image(likelihoods) -> jnp.ndarray:
  return sum(jnp.sum(-jnp.log2(l), axis=tuple(range(1, l.ndim))) for l in likelihoods.values())


def rd_loss(model, variables, batch, rng, train, config=None):
  """λ·D + R (CompressAI's RateDistortionLoss) + the entropy bottleneck's quantile loss.

  D is 255²·MSE, or 1 - MS-SSIM with config.distortion = "ms-ssim"; R in bits per
  pixel from the likelihoods (uniform noise in training). The quantile (aux) loss
  only reaches the `quantiles` parameters and the main loss never does, so one
  optimizer serves both (CompressAI runs a second Adam at 1e-3 for them).
  """
  x = batch["input"]
  out = model.apply(variables, x, train=train, rngs={"noise": rng})
  n_pixels = x.shape[0] * x.shape[1] * x.shape[2]
  bpp = jnp.sum(_bits_per_image(out["likelihoods"])) / n_pixels
  mse = jnp.mean((out["x_hat"] - x) ** 2)
  if config.get("distortion", "mse") == "mse":
    distortion = 255.0 ** 2 * mse
  else:
    distortion = 1.0 - jnp.mean(jv_metrics.ms_ssim(out["x_hat"], x))
  aux = model.apply(variables, method="aux_loss")
  loss = config.lmbda * distortion + bpp + aux
  return loss, ({"bpp": bpp, "mse": mse, "aux_loss": aux}, {})


def rd_evaluate(model, variables, batch):
  x = batch["input"]
  out = model.apply(variables, x, train=False)  # rounding: the rate the codec pays
  x_hat = jnp.clip(out["x_hat"], 0.0, 1.0)
  res = {"psnr": jv_metrics.psnr(x_hat, x),
         "bpp": _bits_per_image(out["likelihoods"]) / (x.shape[1] * x.shape[2]),
         "output": x_hat}
  if min(x.shape[1:3]) > 160:  # MS-SSIM needs 5 scales of an 11-tap filter
    res["ms_ssim"] = jv_metrics.ms_ssim(x_hat, x)
  return res


def rd_samples(batch, outputs) -> dict[str, np.ndarray]:
  x, y = to_uint8(batch["input"]), to_uint8(outputs["output"])
  return {"input": x, "output": y, "input|output": np.concatenate([x, y], axis=2)}


register("compression", Task(make_data=i2i_make_data, loss=rd_loss,
                             evaluate=rd_evaluate, samples=rd_samples))


# ---------------------------------------------------------------- other families
# Each family registers its tasks from its own module (they import Task/register above).
from train import task_classify, task_faces, task_style, task_superres  # noqa: E402,F401
