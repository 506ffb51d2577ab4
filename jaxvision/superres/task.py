"""Super-resolution task: (bicubic LR, HR) pairs made on the fly from any image dataset.

  loss       config.loss: "l1" (EDSR, RCAN, WDSR), "mse" (ESPCN), "charbonnier", or
             "perceptual" (Johnson et al.): content_weight * ||phi_j(y) - phi_j(hr)||^2 at
             perceptual.content_layer (relu2_2) of a VGG descriptor + tv_weight * TV(y)
             + pixel_weight * MSE
  evaluate   Y-channel PSNR / SSIM with a border of `scale` pixels shaved, output rounded to
             8 bits (the published tables' convention), and the same for bicubic upscaling
  data       HR crops of scale * (patch + 4) pixels, LR by MATLAB-style bicubic downscaling
             in the grain workers (jaxvision.superres.data.SRPairs); eval: centre HR crops
             (or whole images) with LR and bicubic baseline (SREvalPairs)

Config keys: model.kwargs.scale, loss, data.{dataset, train_split, eval_split, patch_size,
eval_crop, eval_max_images, quantize_lr, worker_count}, descriptor.{arch, weights, width}
and perceptual.{content_layer, content_weight, tv_weight, pixel_weight} for "perceptual".
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.core import losses, perceptual
from jaxvision.core.io import to_uint8
from jaxvision.core.registry import register_task
from jaxvision.core.tasks import Task, apply_model
from jaxvision.superres.data import make_data
from jaxvision.superres.eval import y_psnr, y_ssim


@functools.lru_cache(maxsize=4)
def _descriptor(weights: str, arch: str, width: float):
  return perceptual.load_descriptor(weights or None, arch=arch, width=width)


def perceptual_terms(config, pred, target):
  """Johnson et al.'s SR objective: feature reconstruction at relu2_2 plus TV."""
  d, p = config.descriptor, config.perceptual
  fn, _ = _descriptor(str(d.get("weights", "") or ""), str(d.get("arch", "vgg16")),
                      float(d.get("width", 1.0)))
  layer = p.get("content_layer", "relu2_2")
  content = losses.content_loss(fn(pred), jax.lax.stop_gradient(fn(target)), layer)
  return content, losses.tv_loss(pred)


def sr_loss(model, variables, batch, rng, train, config):
  del rng
  kind = config.get("loss", "l1")
  pred, new_state = apply_model(model, variables, batch["input"], train)
  target = batch["target"]
  mse = jnp.mean((pred - target) ** 2)
  metrics = {"mse": mse}
  if kind == "perceptual":
    p = config.perceptual
    content, tv = perceptual_terms(config, pred, target)
    loss = (p.get("content_weight", 1.0) * content + p.get("tv_weight", 0.0) * tv
            + p.get("pixel_weight", 0.0) * mse)
    metrics.update(content=content, tv=tv)
  else:
    loss = losses.pixel_loss(kind, pred, target)
  return loss, (metrics, new_state)


def sr_evaluate(model, variables, batch, config):
  del config
  s = int(model.scale)
  pred = jnp.clip(model.apply(variables, batch["input"], train=False), 0.0, 1.0)
  hr, bic = batch["target"], batch["bicubic"]
  return {
      "psnr_y": y_psnr(pred, hr, s), "ssim_y": y_ssim(pred, hr, s),
      "bicubic_psnr_y": y_psnr(bic, hr, s), "bicubic_ssim_y": y_ssim(bic, hr, s),
      "output": pred,
  }


def sr_samples(batch, outputs, config) -> dict[str, np.ndarray]:
  """bicubic | output | HR strips, plus the LR input."""
  del config
  b, y, t = (to_uint8(a) for a in (batch["bicubic"], outputs["output"], batch["target"]))
  return {"input": to_uint8(batch["input"]), "output": y,
          "bicubic|output|target": np.concatenate([b, y, t], axis=2)}


register_task("super_resolution", Task(make_data=make_data, loss=sr_loss, evaluate=sr_evaluate,
                                       samples=sr_samples))
