"""Denoising at any size, and PSNR / SSIM tables against the classical denoisers.

  bucketed_model(model, variables)        the model in shape buckets: one program per bucket
  denoise_image(model, variables, img)    (H, W, C) float -> denoised, any size, tiled
  BASELINES                               scikit-image's NL-means and TV, a BayesShrink
                                          wavelet denoiser (jaxvision.denoise.wavelet)
  evaluate_source(source, noises, methods)  {noise: {method: {psnr, ssim, images}}}
  markdown_table(results)                 the table `jaxvision denoise-eval` prints

Tiling. DnCNN is local (radius 17): tiles with that overlap give exactly the whole-image
result. The U-Net pools five times, so its output depends on where the 32-pixel pooling
grid falls: `denoise_image` reflect-pads the image to a multiple of `model.size_multiple`
(32) and uses tiles and overlaps that are multiples of it, so every window starts on the
grid, and each tile holds `receptive_radius()` (160) pixels of context: the tiles equal
the whole padded image's result (tested), and the padding is cropped away. Windows and
images are padded to shape buckets with the padding masked (jaxvision.core.buckets), so a
folder of many sizes compiles one program per bucket.

Evaluation protocol. Each clean image gets the noise drawn with its fixed key
(`noise.eval_key(index)`), unclipped, as in training and in the papers' tables; every
method sees the same noisy image. PSNR / SSIM (core.metrics: data range 1, Gaussian SSIM)
of the output clipped to [0, 1] against the clean image, per image, then averaged; the
"noisy input" row is the clipped noisy image. The classical baselines are blind: their
noise level comes from `estimate_sigma` (Donoho's wavelet MAD estimate, as the learned
blind models infer it), with the parameters of scikit-image's own examples; the wavelet
baseline estimates its sigma itself, per opponent-colour channel, from its db2 diagonal
band (as scikit-image's denoise_wavelet does). BM3D (the `bm3d` package,
dev-only) joins the same table from benchmarks/denoise.py through `methods`.
"""
from __future__ import annotations

import time
from typing import Callable, Mapping

import jax.numpy as jnp
import numpy as np

from jaxvision.core import buckets, metrics
from jaxvision.core.tiling import apply_tiled
from jaxvision.denoise import noise

BUCKET_MULTIPLE = 32


def _geometry(model, tile: int | None, max_pixels: int, h: int, w: int) -> tuple[int, int, int]:
  """(multiple, radius, tile) for an h x w image: radius and tile on the model's grid."""
  m = int(getattr(model, "size_multiple", 1))
  r = -(-int(model.receptive_radius()) // m) * m
  if tile is None:
    tile = max(h, w) if h * w <= max_pixels else max(64, int(max_pixels ** 0.5) - 2 * r)
  tile = max(m, -(-int(tile) // m) * m)
  return m, r, tile


def bucketed_model(model, variables, *, tile: int | None = None, max_pixels: int = 1 << 21):
  """`apply_fn` for `denoise_image`, made once for many images; the full tile window is a
  bucket of its own (large images' windows run unpadded)."""
  _, r, t = _geometry(model, tile, max_pixels, 1 << 30, 1 << 30)
  return buckets.bucketed_apply(lambda x: model.apply(variables, x, train=False),
                                BUCKET_MULTIPLE, keep_sides=(t + 2 * r,))


def denoise_image(model, variables, image: np.ndarray, *, tile: int | None = None,
                  max_pixels: int = 1 << 21, apply_fn: Callable | None = None) -> np.ndarray:
  """(H, W, C) float image (noisy) -> (H, W, C) float32 denoised, clipped to [0, 1]."""
  x = np.asarray(image, np.float32)
  h, w = x.shape[:2]
  m, r, t = _geometry(model, tile, max_pixels, h, w)
  ph, pw = -h % m, -w % m
  if ph or pw:
    mode = "reflect" if min(h, w) > max(ph, pw) else "edge"
    x = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode=mode)
  fn = apply_fn if apply_fn is not None else bucketed_model(model, variables, tile=tile,
                                                            max_pixels=max_pixels)
  y = apply_tiled(fn, x, radius=r, tile=t)[:h, :w]
  return np.clip(y, 0.0, 1.0)


# ---------------------------------------------------------------- classical baselines
def estimate_sigma(noisy: np.ndarray) -> float:
  """Donoho & Johnstone's robust noise estimate, averaged over channels: the median absolute
  finest-scale diagonal wavelet coefficient / 0.6745. Haar coefficients (a - b - c + d) / 2
  of 2x2 blocks (skimage's estimate_sigma uses db2 and needs PyWavelets; Haar needs
  nothing): for white Gaussian noise they are N(0, sigma^2), and smooth image content
  hardly reaches them."""
  x = np.asarray(noisy, np.float64)
  h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
  x = x[:h, :w]
  hh = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2.0
  return float(np.mean(np.median(np.abs(hh.reshape(-1, x.shape[-1])), axis=0) / 0.6745))


_sigma = estimate_sigma


def nl_means(noisy: np.ndarray) -> np.ndarray:
  from skimage.restoration import denoise_nl_means
  s = _sigma(noisy)
  return denoise_nl_means(noisy, h=0.8 * s, sigma=s, fast_mode=True, patch_size=5,
                          patch_distance=6, channel_axis=-1)


def wavelet(noisy: np.ndarray) -> np.ndarray:
  """BayesShrink soft thresholding over a db2 DWT (jaxvision.denoise.wavelet: scikit-image's
  method written in numpy, as its own needs PyWavelets)."""
  from jaxvision.denoise.wavelet import denoise_wavelet
  return denoise_wavelet(noisy, wavelet="db2")


def tv_chambolle(noisy: np.ndarray) -> np.ndarray:
  from skimage.restoration import denoise_tv_chambolle
  return denoise_tv_chambolle(noisy, weight=max(0.02, 1.2 * _sigma(noisy)), channel_axis=-1)


BASELINES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "nl_means": nl_means, "wavelet": wavelet, "tv_chambolle": tv_chambolle}
NEEDS: dict[str, str] = {}  # baseline -> the module it needs (all present: wavelet is ours)


def missing_package(name: str) -> str | None:
  """The module a baseline needs and this environment lacks, or None."""
  import importlib.util
  mod = NEEDS.get(name)
  return mod if mod and importlib.util.find_spec(mod) is None else None


def available_baselines() -> list[str]:
  return [b for b in BASELINES if missing_package(b) is None]


# ---------------------------------------------------------------- tables
def _metrics(y: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
  a = jnp.asarray(np.clip(y, 0.0, 1.0), jnp.float32)[None]
  b = jnp.asarray(clean, jnp.float32)[None]
  return float(metrics.psnr(a, b)[0]), float(metrics.ssim(a, b)[0])


def _centre_crop(img: np.ndarray, crop: int | None) -> np.ndarray:
  if not crop:
    return img
  h, w = img.shape[:2]
  y, x = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
  return img[y:y + crop, x:x + crop]


def evaluate_source(source, noises, methods: Mapping[str, Callable[[np.ndarray], np.ndarray]],
                    *, max_images: int | None = None, crop: int | None = None,
                    batch_methods: Mapping[str, Callable] | None = None) -> dict:
  """{noise: {"noisy input" | method: {"psnr", "ssim", "images", "seconds"}}}.

  `source[i]["image"]` (uint8 or float, (H, W, 3)) is the clean image (a centre crop of
  `crop` pixels when given); `methods[name](noisy (H, W, 3) float) -> denoised`.
  `batch_methods[name](list of noisy images, spec) -> list of outputs` run once per noise
  over all images (BM3D in a peer process)."""
  n = len(source) if not max_images else min(int(max_images), len(source))
  if n == 0:
    raise ValueError("evaluate_source: no images")
  clean = []
  for i in range(n):
    im = np.asarray(source[i]["image"])
    im = im.astype(np.float32) / 255.0 if im.dtype == np.uint8 else im.astype(np.float32)
    clean.append(_centre_crop(im, crop))
  out: dict = {}
  for spec_text in noises:
    spec = noise.parse(spec_text)
    noisy = [np.asarray(noise.apply(spec, noise.eval_key(i), c[None])[0])
             for i, c in enumerate(clean)]
    rows: dict[str, dict] = {}

    def add(name, outputs, seconds):
      vals = [_metrics(y, c) for y, c in zip(outputs, clean)]
      rows[name] = {"psnr": float(np.mean([v[0] for v in vals])),
                    "ssim": float(np.mean([v[1] for v in vals])), "images": len(vals),
                    "seconds": seconds}

    add("noisy input", noisy, 0.0)
    for name, fn in methods.items():
      t = time.time()
      outputs = [fn(x) for x in noisy]
      add(name, outputs, time.time() - t)
    for name, fn in (batch_methods or {}).items():
      t = time.time()
      add(name, fn(noisy, spec), time.time() - t)
    out[str(spec)] = rows
  return out


def markdown_table(results: Mapping[str, Mapping[str, Mapping]]) -> str:
  lines = ["| noise | method | PSNR (dB) | SSIM | images | seconds |", "|---|---|---|---|---|---|"]
  for spec, rows in results.items():
    for name, r in rows.items():
      lines.append(f"| {spec} | {name} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['images']} | "
                   f"{r['seconds']:.1f} |")
  return "\n".join(lines)


def model_method(model, variables, *, tile: int | None = None, max_pixels: int = 1 << 21):
  """A `methods` entry for a trained model (one bucketed program shared by the images)."""
  fn = bucketed_model(model, variables, tile=tile, max_pixels=max_pixels)
  return lambda x: denoise_image(model, variables, x, tile=tile, max_pixels=max_pixels,
                                 apply_fn=fn)
