"""Super-resolution data, evaluation, tiled inference, EDSR weight import and commands.

  imresize(img, 1/4)                MATLAB-style antialiased bicubic resize (host, float64)
  SRPairs(scale, patch)             post_fn: HR crop -> (bicubic LR patch, HR patch), numpy
  SREvalPairs(scale)                post_fn: HR image -> (LR, HR, bicubic upscale) for eval
  y_psnr / y_ssim                   Y-channel metrics, border crop = scale (published convention)
  upscale(model, variables, img)    any size, tiled with overlap (seam-free for local models)
  evaluate_source(...)              Y-PSNR/SSIM of a model and of bicubic over a dataset split
  convert_edsr(state_dict, ...)     EDSR-PyTorch state dict -> flax variables

Commands: `jaxvision upscale --checkpoint WORKDIR IN OUT.png [--tile N]` and
`jaxvision sr-eval --checkpoint WORKDIR [--dataset D --split S]`.

imresize follows MATLAB's `imresize(..., 'bicubic')` (the tool that made DIV2K's and
Set5/Set14's LR images): cubic kernel a = -0.5; when shrinking by s < 1 the kernel is
widened to h(x) = s*cubic(s*x) (antialiasing, 4/s taps); output pixel i (1-based) maps to
u = i/s + (1 - 1/s)/2 in the input; per-row index/weight tables with weights normalised
to sum 1; symmetric (mirror) border handling. Differences from MATLAB: we compute in
float64 and round once at the end, where MATLAB rounds uint8 images after each of the
two 1-D passes (≤ 1 grey level on a few pixels). PIL's BICUBIC is the same kernel but
clamps taps at the borders instead of mirroring and works in 8-bit fixed point:
docs/superres.md gives the measured difference.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

import numpy as np

# ---------------------------------------------------------------- MATLAB imresize


def cubic(x: np.ndarray) -> np.ndarray:
  """Keys' cubic convolution kernel with a = -0.5 (MATLAB's `cubic`)."""
  ax = np.abs(np.asarray(x, np.float64))
  ax2, ax3 = ax * ax, ax * ax * ax
  return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
          + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


def contributions(in_length: int, out_length: int, scale: float,
                  antialiasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """MATLAB's index/weight tables: (weights (out, P) float64, indices (out, P) 0-based).

  Row i holds the input pixels (mirrored at the borders) and normalised weights that make
  output pixel i. Taps whose weight is zero for every output pixel are dropped."""
  kernel_width = 4.0
  if scale < 1 and antialiasing:
    h = lambda x: scale * cubic(scale * x)
    kernel_width /= scale
  else:
    h = cubic
  x = np.arange(1, out_length + 1, dtype=np.float64)
  u = x / scale + 0.5 * (1.0 - 1.0 / scale)
  left = np.floor(u - kernel_width / 2.0)
  p = int(math.ceil(kernel_width)) + 2
  indices = left[:, None] + np.arange(p)[None, :]            # 1-based
  weights = h(u[:, None] - indices)
  weights /= weights.sum(axis=1, keepdims=True)
  aux = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])
  indices = aux[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
  keep = np.any(weights != 0, axis=0)
  return weights[:, keep], indices[:, keep]


def _resize_axis(x: np.ndarray, axis: int, out_length: int, scale: float,
                 antialiasing: bool) -> np.ndarray:
  w, idx = contributions(x.shape[axis], out_length, scale, antialiasing)
  x = np.moveaxis(x, axis, 0)
  out = np.zeros((out_length,) + x.shape[1:], np.float64)
  extra = (slice(None),) + (None,) * (x.ndim - 1)
  for t in range(w.shape[1]):  # one pass per tap (a handful), vectorised over pixels
    out += w[:, t][extra] * x[idx[:, t]]
  return np.moveaxis(out, 0, axis)


def imresize(image: np.ndarray, scale: float | None = None, output_shape=None, *,
             antialiasing: bool = True) -> np.ndarray:
  """Bicubic resize of (H, W[, C]) like MATLAB `imresize(image, scale)`, in float64.

  `scale` gives the output size ceil(H*scale) x ceil(W*scale) and the coordinate map;
  `output_shape` (h, w) instead gives scale = h/H, w/W per axis. uint8 input: the result
  is rounded and clipped to uint8; float input stays float64 (no clipping)."""
  a = np.asarray(image)
  if a.ndim not in (2, 3) or 0 in a.shape[:2]:
    raise ValueError(f"imresize: expected an (H, W[, C]) image, got shape {a.shape}")
  h, w = a.shape[:2]
  if output_shape is not None:
    oh, ow = int(output_shape[0]), int(output_shape[1])
    scales = (oh / h, ow / w)
  elif scale is not None and scale > 0:
    scales = (float(scale), float(scale))
    oh, ow = int(math.ceil(h * scale - 1e-9)), int(math.ceil(w * scale - 1e-9))
  else:
    raise ValueError("imresize: give a positive scale or an output_shape")
  if oh < 1 or ow < 1:
    raise ValueError(f"imresize: output shape {(oh, ow)} is empty")
  out = a.astype(np.float64)
  # MATLAB's order: the axis with the smaller scale first (rows first on ties).
  for axis in sorted((0, 1), key=lambda ax: scales[ax]):
    out = _resize_axis(out, axis, (oh, ow)[axis], scales[axis], antialiasing)
  if a.dtype == np.uint8:
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
  return out


def quantize(x: np.ndarray) -> np.ndarray:
  """[0, 1] float -> the nearest of the 256 levels an 8-bit image file can hold."""
  return (np.round(np.clip(x, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
  """Top-left crop to a multiple of `scale` (the benchmarks' convention)."""
  h, w = image.shape[:2]
  return image[:h - h % scale, :w - w % scale]


def downscale(hr: np.ndarray, scale: int, quantize_lr: bool = True) -> np.ndarray:
  """HR float in [0, 1] (H, W, C), H and W multiples of scale -> bicubic LR, float32."""
  lr = imresize(hr.astype(np.float64), 1.0 / scale)
  return quantize(lr) if quantize_lr else lr.astype(np.float32)


# ---------------------------------------------------------------- pairs (data.post_fn)
class SRPairs:
  """Train post_fn: HR crop of scale*(patch + 2*margin) -> LR patch and its HR patch.

  The LR of the whole window is made first and its `margin`-pixel border dropped, so every
  LR pixel saw real image context (bicubic reaches 2 LR pixels): the pairs are those of
  downscaling the whole image (shifted by the crop offset), as DIV2K's LR files are.
  Deterministic, numpy only (runs in the grain workers)."""

  def __init__(self, scale: int, patch: int, margin: int = 2, quantize_lr: bool = True):
    self.scale, self.patch, self.margin, self.quantize_lr = int(scale), int(patch), int(margin), \
        bool(quantize_lr)

  @property
  def crop_size(self) -> int:
    return self.scale * (self.patch + 2 * self.margin)

  def __call__(self, item: dict) -> dict:
    s, p, m = self.scale, self.patch, self.margin
    hr = np.asarray(item["target"], np.float32)
    if hr.shape[:2] != (self.crop_size, self.crop_size):
      raise ValueError(f"SRPairs: expected a {self.crop_size}^2 crop, got {hr.shape}")
    lr = downscale(hr, s, self.quantize_lr)[m:m + p, m:m + p]
    return {"input": np.ascontiguousarray(lr),
            "target": np.ascontiguousarray(hr[s * m:s * (m + p), s * m:s * (m + p)])}

  def __repr__(self):  # stable: grain checks it when restoring a data position
    return f"SRPairs(scale={self.scale}, patch={self.patch}, margin={self.margin}, " \
           f"quantize_lr={self.quantize_lr})"


class SREvalPairs:
  """Eval post_fn: HR (modcropped) -> LR (bicubic, 8-bit), HR, and bicubic upscale of LR."""

  def __init__(self, scale: int, quantize_lr: bool = True):
    self.scale, self.quantize_lr = int(scale), bool(quantize_lr)

  def __call__(self, item: dict) -> dict:
    hr = modcrop(np.asarray(item["target"], np.float32), self.scale)
    if min(hr.shape[:2]) < self.scale * 4:
      raise ValueError(f"SREvalPairs: image {hr.shape[:2]} too small for x{self.scale}")
    lr = downscale(hr, self.scale, self.quantize_lr)
    return {"input": lr, "target": np.ascontiguousarray(hr),
            "bicubic": bicubic_upscale(lr, self.scale)}

  def __repr__(self):
    return f"SREvalPairs(scale={self.scale}, quantize_lr={self.quantize_lr})"


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
  """The bicubic baseline: MATLAB-style upscale of the LR image, 8-bit like a saved file."""
  return quantize(imresize(np.asarray(lr, np.float64), float(scale)))


# ---------------------------------------------------------------- metrics (jax)
def _shave(x, border: int):
  return x[..., border:x.shape[-3] - border, border:x.shape[-2] - border, :] if border else x


def y_psnr(sr, hr, scale: int, quantize_sr: bool = True):
  """PSNR on BT.601 Y of (..., H, W, 3) images in [0, 1], `scale` pixels shaved off each
  border; `sr` is first rounded to 8 bits, as a saved output would be (EDSR's protocol)."""
  import jax.numpy as jnp
  from jaxvision import metrics
  sr = jnp.asarray(sr, jnp.float32)
  if quantize_sr:
    sr = jnp.round(jnp.clip(sr, 0.0, 1.0) * 255.0) / 255.0
  return metrics.psnr(_shave(metrics.y_channel(sr), scale),
                      _shave(metrics.y_channel(jnp.asarray(hr, jnp.float32)), scale))


def y_ssim(sr, hr, scale: int, quantize_sr: bool = True):
  """SSIM (Gaussian 11x11, sigma 1.5) on Y with the same shave and rounding as y_psnr."""
  import jax.numpy as jnp
  from jaxvision import metrics
  sr = jnp.asarray(sr, jnp.float32)
  if quantize_sr:
    sr = jnp.round(jnp.clip(sr, 0.0, 1.0) * 255.0) / 255.0
  return metrics.ssim(_shave(metrics.y_channel(sr), scale),
                      _shave(metrics.y_channel(jnp.asarray(hr, jnp.float32)), scale))


# ---------------------------------------------------------------- tiled inference
def upscale(model, variables, image: np.ndarray, *, tile: int | None = None,
            max_pixels: int = 1 << 20, apply_fn: Callable | None = None) -> np.ndarray:
  """(H, W, 3) float in [0, 1] -> (s*H, s*W, 3) float32, clipped to [0, 1].

  Whole image when it has at most `max_pixels` LR pixels and no `tile` is given, else
  tiles of `tile` LR pixels (default: what fits max_pixels) with receptive-radius overlap."""
  import jax
  if apply_fn is None:
    apply_fn = jax.jit(lambda x: model.apply(variables, x, train=False))
  h, w = image.shape[:2]
  radius = int(model.receptive_radius())
  if tile is None:
    tile = max(h, w) if h * w <= max_pixels else max(32, int(max_pixels ** 0.5) - 2 * radius)
  from jaxvision.models.can import apply_tiled  # the CAN operators' tiler, scaled
  y = apply_tiled(apply_fn, np.asarray(image, np.float32), scale=int(model.scale),
                  radius=radius, tile=int(tile))
  return np.clip(y, 0.0, 1.0)


# ---------------------------------------------------------------- dataset evaluation
def evaluate_source(model, variables, source, scale: int, *, max_images: int | None = None,
                    tile: int | None = None, max_pixels: int = 1 << 20) -> dict:
  """Mean Y-PSNR / Y-SSIM of the model and of bicubic over the images of `source`
  (any jaxvision.data source: TFDS split or folder), full images, modcropped."""
  import jax
  n = len(source) if not max_images else min(int(max_images), len(source))
  if n == 0:
    raise ValueError("evaluate_source: no images")
  pairs = SREvalPairs(scale)
  apply_fn = jax.jit(lambda x: model.apply(variables, x, train=False))
  rows = {"bicubic": [], "model": []}
  for i in range(n):
    rec = source[i]
    hr = np.asarray(rec["image"], np.float32) / 255.0
    p = pairs({"target": hr})
    sr = upscale(model, variables, p["input"], tile=tile, max_pixels=max_pixels,
                 apply_fn=apply_fn)
    for key, img in (("bicubic", p["bicubic"]), ("model", sr)):
      rows[key].append((float(y_psnr(img, p["target"], scale)),
                        float(y_ssim(img, p["target"], scale))))
  return {k: {"psnr_y": float(np.mean([r[0] for r in v])),
              "ssim_y": float(np.mean([r[1] for r in v])), "images": len(v)}
          for k, v in rows.items()}


# ---------------------------------------------------------------- EDSR weight import
def _torch_key(path: tuple[str, ...]) -> str:
  """Flax path ('body_3', 'body_0', 'kernel') -> 'body.3.body.0.weight'."""
  *mods, leaf = path
  return ".".join(m.replace("_", ".") for m in mods) + "." + {"kernel": "weight",
                                                             "bias": "bias"}[leaf]


def _edsr_shape_hint(sd: dict) -> str:
  try:
    f = sd["head.0.weight"].shape[0]
    blocks = len({k.split(".")[1] for k in sd if k.startswith("body.") and ".body.0." in k})
    ups = sorted({k for k in sd if k.startswith("tail.0.") and k.endswith(".weight")})
    if len(ups) == 1:
      r = int(round(math.sqrt(sd[ups[0]].shape[0] / f)))
    else:
      r = 2 ** len(ups)
    return f" (the state dict holds an x{r} EDSR with {blocks} blocks of {f} channels: " \
           f"--kwargs scale={r},n_resblocks={blocks},n_feats={f})"
  except Exception:  # pylint: disable=broad-except
    return ""


def convert_edsr(sd: dict, model_name: str = "edsr", **model_kwargs) -> dict:
  """EDSR-PyTorch (`sanghyun-son/EDSR-PyTorch`, model/edsr.py) state dict -> flax variables.

  Keys: sub_mean/add_mean (fixed MeanShift convs, checked), head.0, body.{i}.body.{0,2},
  body.{n}, tail.0.{0,2,...} (upsampler convs; PixelShuffle order kept), tail.1. A
  'module.' prefix (DataParallel) is stripped. res_scale is not in the file: `edsr`
  uses 0.1, `edsr_baseline` 1 (override with --kwargs res_scale=...)."""
  import jax
  import jax.numpy as jnp
  from jaxvision import models
  from jaxvision.weights import WeightsError, check_all_used, take

  sd = {(k[len("module."):] if k.startswith("module.") else k): np.asarray(v)
        for k, v in sd.items()}
  model = models.create(model_name, **model_kwargs)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
  used: set[str] = set()

  def convert(path, leaf):
    names = tuple(getattr(p, "key", str(p)) for p in path)
    key = _torch_key(names)
    if names[-1] == "kernel":
      kh, kw, ci, co = leaf.shape
      v = take(sd, key, (co, ci, kh, kw)).transpose(2, 3, 1, 0)
    else:
      v = take(sd, key, leaf.shape)
    used.add(key)
    return np.asarray(v, np.float32)

  try:
    params = jax.tree_util.tree_map_with_path(convert, abstract["params"])
  except WeightsError as e:
    raise WeightsError(f"{e}{_edsr_shape_hint(sd)}") from None
  from jaxvision.models.superres import DIV2K_RGB_MEAN
  mean = np.asarray(DIV2K_RGB_MEAN) * model.rgb_range
  for name, sign in (("sub_mean", -1.0), ("add_mean", 1.0)):
    w = take(sd, f"{name}.weight", (3, 3, 1, 1))
    b = take(sd, f"{name}.bias", (3,))
    if not np.allclose(w[:, :, 0, 0], np.eye(3), atol=1e-4) or not np.allclose(
        b, sign * mean, rtol=1e-3, atol=1e-3):
      raise WeightsError(f"{name}: not the DIV2K mean shift at rgb_range {model.rgb_range:g} "
                         f"(bias {np.round(b, 3).tolist()}); pass --kwargs rgb_range=...")
    used |= {f"{name}.weight", f"{name}.bias"}
  try:
    check_all_used(sd, used)
  except WeightsError as e:
    raise WeightsError(f"{e}{_edsr_shape_hint(sd)}") from None
  return {"params": params}


# ---------------------------------------------------------------- commands
def _load_sr(workdir: str):
  from jaxvision import checkpoint as jv_ckpt
  from jaxvision import models
  from jaxvision.cli import CliError
  try:
    config, variables, step = jv_ckpt.load_variables(workdir)
  except jv_ckpt.CheckpointError as e:
    raise CliError(str(e)) from None
  if config.get("task") != "super_resolution":
    raise CliError(f"{workdir}: a {config.get('task')!r} model, not a super-resolution one")
  model = models.create(config.model.name, **config.model.get("kwargs", {}))
  return config, model, variables, step


def upscale_command(args) -> None:
  from jaxvision.cli import CliError, _atomic_save_png, _read_rgb_and_alpha

  if not args.output.lower().endswith(".png"):
    raise CliError(f"{args.output}: output must be a .png file")
  if not os.path.isfile(args.input):
    raise CliError(f"{args.input}: no such file")
  if args.tile is not None and args.tile < 1:
    raise CliError(f"--tile {args.tile}: must be a positive number of input pixels")
  config, model, variables, step = _load_sr(args.checkpoint)
  image, alpha = _read_rgb_and_alpha(args.input)
  t = time.time()
  y = upscale(model, variables, image.astype(np.float32) / 255.0, tile=args.tile,
              max_pixels=args.max_pixels)
  y = (y * 255.0 + 0.5).astype(np.uint8)
  if alpha is not None:  # alpha is not the network's business: bicubic
    y = np.concatenate([y, imresize(alpha, float(model.scale))[..., None]], axis=-1)
  _atomic_save_png(y, args.output)
  h, w = image.shape[:2]
  if args.tile is not None and not getattr(model, "local", True):
    print(f"note: {config.model.name} pools over the whole input; tiles change it slightly")
  print(f"{args.input} -> {args.output}: {w}x{h} -> {y.shape[1]}x{y.shape[0]} "
        f"({config.model.name} x{model.scale}, checkpoint step {step}), {time.time() - t:.2f}s")


def sr_eval_command(args) -> None:
  import json
  from jaxvision import data
  from jaxvision.cli import CliError
  config, model, variables, step = _load_sr(args.checkpoint)
  try:
    src = data.get_source(args.dataset, args.split, args.data_dir or None)
    res = evaluate_source(model, variables, src, int(model.scale), max_images=args.max_images,
                          tile=args.tile)
  except (data.DataError, ValueError) as e:
    raise CliError(str(e).splitlines()[0]) from None
  name = f"{config.model.name} (step {step})"
  print(f"{args.dataset} [{args.split}] x{model.scale}, {res['model']['images']} images, "
        f"Y channel, {model.scale}-pixel border shaved")
  print(f"| method | PSNR-Y (dB) | SSIM-Y |\n|---|---|---|")
  for label, key in (("bicubic", "bicubic"), (name, "model")):
    print(f"| {label} | {res[key]['psnr_y']:.2f} | {res[key]['ssim_y']:.4f} |")
  if args.json:
    data.atomic_write(args.json, lambda f: json.dump(res, f, indent=2), binary=False)


def add_commands(sub) -> None:
  """Adds this family's subcommands to the `jaxvision` parser."""
  p = sub.add_parser("upscale", help="super-resolve an image with a trained SR model",
                     description="Any size; large images go in overlapping tiles (overlap = "
                     "the network's receptive radius, so tiles are seam-free).")
  p.add_argument("--checkpoint", required=True, metavar="WORKDIR")
  p.add_argument("input", metavar="IN")
  p.add_argument("output", metavar="OUT.png")
  p.add_argument("--tile", type=int, default=None,
                 help="tile size in input pixels (default: whole image up to --max-pixels)")
  p.add_argument("--max-pixels", type=int, default=1 << 20,
                 help="input pixels processed at once when --tile is not given")
  p.set_defaults(func=upscale_command)

  p = sub.add_parser("sr-eval", help="Y-PSNR/SSIM of an SR model and of bicubic on a dataset")
  p.add_argument("--checkpoint", required=True, metavar="WORKDIR")
  p.add_argument("--dataset", default="photos", help="photos, folder:/path or a TFDS name")
  p.add_argument("--split", default="test")
  p.add_argument("--data-dir", default="")
  p.add_argument("--max-images", type=int, default=0)
  p.add_argument("--tile", type=int, default=None)
  p.add_argument("--json", default="", help="also write the results to this JSON file")
  p.set_defaults(func=sr_eval_command)
