"""The `compression` task: λ·D + R with the entropy bottleneck's quantile loss."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxvision.core import metrics as jv_metrics
from jaxvision.core.io import to_uint8
from jaxvision.core.registry import register_task
from jaxvision.core.tasks import Task, image_data


def _bits_per_image(likelihoods) -> jnp.ndarray:
  return sum(jnp.sum(-jnp.log2(l), axis=tuple(range(1, l.ndim))) for l in likelihoods.values())


def rd_loss(model, variables, batch, rng, train, config):
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


def rd_evaluate(model, variables, batch, config=None):
  del config
  x = batch["input"]
  out = model.apply(variables, x, train=False)  # rounding: the rate the codec pays
  x_hat = jnp.clip(out["x_hat"], 0.0, 1.0)
  res = {"psnr": jv_metrics.psnr(x_hat, x),
         "bpp": _bits_per_image(out["likelihoods"]) / (x.shape[1] * x.shape[2]),
         "output": x_hat}
  if min(x.shape[1:3]) > 160:  # MS-SSIM needs 5 scales of an 11-tap filter
    res["ms_ssim"] = jv_metrics.ms_ssim(x_hat, x)
  return res


def rd_samples(batch, outputs, config=None) -> dict[str, np.ndarray]:
  del config
  x, y = to_uint8(batch["input"]), to_uint8(outputs["output"])
  return {"input": x, "output": y, "input|output": np.concatenate([x, y], axis=2)}


register_task("compression", Task(make_data=image_data, loss=rd_loss,
                                  evaluate=rd_evaluate, samples=rd_samples))


