"""The `denoise` task: a denoiser trained on clean targets or, Noise2Noise, on noisy ones.

  target "clean"  input = noise(x), target = x (DnCNN's supervised training)
  target "noisy"  input = noise(x), target = noise'(x), an independent second draw
                  (Lehtinen et al. 2018): no clean image is ever used for training. With the
                  loss matched to the noise (L2 for zero-mean noise: the minimiser is the mean
                  of the targets; L1 for text: the median; annealed L0 for impulse: the
                  mode), the minimiser is the same as with clean targets.
  real pairs      data.dataset = "pairs:NOISY,CLEAN": the noisy file is the input, the clean
                  one the target (config.noise is then not used for training)

  loss       config.loss: "l2" (mse), "l1", or "l0": (|y - t| + 1e-8)^gamma with gamma
             annealed linearly from 2 to 0 over the run (N2N section 3.3), from
             batch["progress"] (jaxvision.denoise.data.ProgressLoader)
  evaluate   PSNR / SSIM of the clipped output against the clean image, and of the clipped
             noisy input, for `config.eval_noise` drawn with a fixed key per image
             (noise.eval_key(seed)); for real pairs the noisy file itself
  samples    noisy | output | clean strips

Noise is applied inside the jitted step (jaxvision.denoise.noise): the grain workers only
crop, and every step sees fresh noise.

The `sid` task (configs/sid.py) trains a raw-to-sRGB network (`sid_unet`) on raw simulated
from clean photos, again inside the jitted step: each clean sRGB crop is unprocessed with
a random camera (Brooks et al. 2019, jaxvision.denoise.raw), captured at 1/ratio of the
exposure with the paper's shot/read noise, amplified by `config.ratio` and clipped, and
the network's full-resolution sRGB output is compared with the clean photo (L1, SID's
loss). Evaluation draws the camera and the noise with the image's fixed key and reports,
as "input", the camera pipeline with the true metadata on the same noisy raw.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.core import metrics as jv_metrics
from jaxvision.core.errors import DataError
from jaxvision.core.io import to_uint8
from jaxvision.core.registry import register_task
from jaxvision.core.tasks import Task, apply_model
from jaxvision.denoise import noise, raw
from jaxvision.denoise.data import BayerShape, is_paired, make_data

LOSSES = ("l2", "l1", "l0")


def l0_gamma(progress):
  """N2N's annealed exponent: 2 at the start, 0 at the end."""
  return 2.0 * (1.0 - jnp.clip(progress, 0.0, 1.0))


def pixel_loss(kind: str, pred, target, progress=None):
  d = pred - target
  if kind in ("l2", "mse"):
    return jnp.mean(d * d)
  if kind == "l1":
    return jnp.mean(jnp.abs(d))
  if kind == "l0":
    p = jnp.zeros((d.shape[0],)) if progress is None else jnp.asarray(progress, jnp.float32)
    gamma = l0_gamma(p).reshape((-1,) + (1,) * (d.ndim - 1))
    return jnp.mean((jnp.abs(d) + 1e-8) ** gamma)
  raise ValueError(f"unknown loss {kind!r}; choose from: {', '.join(LOSSES)}")


def noisy_pair(config, batch, rng):
  """(network input, training target) of a train batch."""
  clean = batch["target"]
  if is_paired(config):
    return batch["input"], clean
  spec = noise.parse(config.noise)
  k_in, k_tgt = jax.random.split(rng)
  x = noise.apply(spec, k_in, clean)
  if config.get("target", "clean") == "noisy":
    return x, noise.apply(spec, k_tgt, clean)
  return x, clean


def denoise_loss(model, variables, batch, rng, train, config):
  x, target = noisy_pair(config, batch, rng)
  pred, new_state = apply_model(model, variables, x, train)
  loss = pixel_loss(config.get("loss", "l2"), pred, target, batch.get("progress"))
  return loss, ({"mse_to_clean": jnp.mean((pred - batch["target"]) ** 2)}, new_state)


def eval_input(config, batch):
  """The noisy eval input: real pairs' file, else `config.eval_noise` (default config.noise)
  with the fixed key of each image."""
  if is_paired(config):
    return batch["input"]
  spec = noise.parse(config.get("eval_noise") or config.noise)
  keys = jax.vmap(noise.eval_key)(jnp.asarray(batch["seed"], jnp.int32))
  return jax.vmap(lambda k, im: noise.apply(spec, k, im[None])[0])(keys, batch["target"])


def denoise_evaluate(model, variables, batch, config):
  x = eval_input(config, batch)
  pred = jnp.clip(model.apply(variables, x, train=False), 0.0, 1.0)
  clean = batch["target"]
  xc = jnp.clip(x, 0.0, 1.0)
  return {"psnr": jv_metrics.psnr(pred, clean), "ssim": jv_metrics.ssim(pred, clean),
          "input_psnr": jv_metrics.psnr(xc, clean), "input_ssim": jv_metrics.ssim(xc, clean),
          "output": pred, "noisy": xc}


def denoise_samples(batch, outputs, config) -> dict[str, np.ndarray]:
  del config
  x, y, t = (to_uint8(a) for a in (outputs["noisy"], outputs["output"], batch["target"]))
  return {"noisy": x, "output": y, "noisy|output|clean": np.concatenate([x, y, t], axis=2)}


register_task("denoise", Task(make_data=make_data, loss=denoise_loss,
                              evaluate=denoise_evaluate, samples=denoise_samples))


# ---------------------------------------------------------------- sid: raw -> sRGB
def _even(x):
  """The crop of (N, H, W, C) to even sides (a whole Bayer pattern)."""
  return x[:, :x.shape[1] // 2 * 2, :x.shape[2] // 2 * 2]


def simulated_raw(config, clean, key):
  """(network input, metadata): the clean sRGB batch unprocessed with a random camera per
  image (jaxvision.denoise.raw), captured at 1/ratio of the exposure with the paper's
  shot/read noise, amplified by the ratio and clipped (SID's input)."""
  n = clean.shape[0]
  k_meta, k_levels, k_noise = jax.random.split(key, 3)
  meta = raw.random_metadata(k_meta, n)
  bayer = raw.unprocess(clean, meta)
  shot, read = raw.random_noise_levels(k_levels, n, float(config.min_shot_noise),
                                       float(config.max_shot_noise))
  return raw.low_light(k_noise, bayer, float(config.ratio), shot, read), meta


def sid_loss(model, variables, batch, rng, train, config):
  """SID's objective: L1 between the network's sRGB and the clean photo (the long
  exposure; unprocess -> process returns it, tests/denoise/test_raw.py)."""
  clean = _even(batch["target"])
  x, _ = simulated_raw(config, clean, rng)
  pred, new_state = apply_model(model, variables, x, train)
  loss = pixel_loss(config.get("loss", "l1"), pred, clean)
  return loss, ({"mse_to_clean": jnp.mean((pred - clean) ** 2)}, new_state)


def _eval_raw(config, clean, seed):
  keys = jax.vmap(noise.eval_key)(jnp.asarray(seed, jnp.int32))
  one = lambda k, im: jax.tree.map(  # noqa: E731
      lambda a: a[0], simulated_raw(config, im[None], k))
  return jax.vmap(one)(keys, clean)


def sid_evaluate(model, variables, batch, config):
  """PSNR / SSIM of the clipped network output against the clean photo; the reference
  "input" is the camera pipeline (`raw.process`, told the true white balance and colour
  matrix) applied to the amplified noisy raw: what the same capture gives without a
  learned pipeline."""
  clean = _even(batch["target"])
  x, meta = _eval_raw(config, clean, batch["seed"])
  pred = jnp.clip(model.apply(variables, x, train=False), 0.0, 1.0)
  isp = jnp.clip(raw.process(x, meta), 0.0, 1.0)
  return {"psnr": jv_metrics.psnr(pred, clean), "ssim": jv_metrics.ssim(pred, clean),
          "input_psnr": jv_metrics.psnr(isp, clean), "input_ssim": jv_metrics.ssim(isp, clean),
          "output": pred, "noisy": isp}


def sid_samples(batch, outputs, config) -> dict[str, np.ndarray]:
  del config
  x, y = to_uint8(outputs["noisy"]), to_uint8(outputs["output"])
  t = to_uint8(_even(jnp.asarray(batch["target"])))
  return {"camera_pipeline": x, "output": y,
          "camera_pipeline|output|clean": np.concatenate([x, y, t], axis=2)}


def sid_data(config):
  if is_paired(config):
    raise DataError(f"{config.data.dataset}: the sid task trains on raw simulated from clean "
                    "photos (photos, folder:/path or a TFDS name); real raw pairs are not "
                    "read yet")
  if int(config.data.crop_size) % 32 or (config.data.get("eval_crop") or 0) % 32:
    raise DataError(f"sid: data.crop_size ({config.data.crop_size}) and data.eval_crop "
                    f"({config.data.get('eval_crop')}) must be multiples of 32 (sid_unet "
                    "pools the half-resolution raw four times)")
  return make_data(config, post_fn=BayerShape())


register_task("sid", Task(make_data=sid_data, loss=sid_loss, evaluate=sid_evaluate,
                          samples=sid_samples))
