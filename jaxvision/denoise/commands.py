"""`jaxvision denoise` and `jaxvision denoise-eval`: a trained denoiser at work.

  jaxvision denoise --checkpoint WORKDIR NOISY.png OUT.png            one file
  jaxvision denoise --checkpoint WORKDIR a.jpg b.png PHOTOS/ OUT_DIR/ many (OUT_DIR/<name>.png)
  jaxvision denoise --checkpoint WORKDIR CLEAN.png OUT.png --add-noise gaussian:25
  jaxvision denoise-eval --checkpoint WORKDIR --noise gaussian:25 --noise poisson:30 \
      [--dataset photos --split test | --dataset folder:/my/photos] [--baselines all]

Grey images are denoised as RGB (the models are trained on colour) and written grey; an
alpha channel is carried over unchanged. jax and the models load when a command runs.
"""
from __future__ import annotations

import os
import time

from jaxvision.core.errors import UserError, first_line
from jaxvision.core.inputs import nonnegative_int, positive_int
from jaxvision.core.registry import register_commands


def _load(workdir: str):
  from jaxvision.core import checkpoint
  from jaxvision.denoise import models  # noqa: F401  (registers the denoisers)
  return checkpoint.load_model(workdir, "denoise", "a denoiser")


def _jobs(paths: list[str], output: str) -> tuple[list[tuple[str, str]], bool]:
  """[(input, output)], many: one input file to a .png file, else files/folders to a folder."""
  from jaxvision.core import inputs
  if len(paths) == 1 and not os.path.isdir(paths[0]):
    return inputs.one_to_one_jobs(paths[0], output, ".png")
  if not os.path.isdir(output):
    inputs.check_output_folder(output, paths[0], ".png")
  sources = inputs.image_files(paths)
  return list(zip(sources, inputs.folder_outputs(sources, output, ".png"))), True


def denoise_command(args) -> None:
  import numpy as np

  from jaxvision.core import inputs, io
  from jaxvision.denoise import noise
  from jaxvision.denoise.eval import bucketed_model, denoise_image

  if len(args.paths) < 2:
    raise UserError("give the input image(s) and then the output (OUT.png or OUT_DIR)")
  *ins, output = args.paths
  spec = None
  if args.add_noise:
    try:
      spec = noise.parse(args.add_noise)
    except ValueError as e:
      raise UserError(f"--add-noise: {first_line(e)}") from None
  jobs, many = _jobs(ins, output)
  config, model, variables, step = _load(args.checkpoint)
  apply_fn = bucketed_model(model, variables, tile=args.tile, max_pixels=args.max_pixels)

  def one(job):
    src, dst = job
    image, alpha = io.read_image(src)
    x = image.astype(np.float32) / 255.0
    if spec is not None:
      x = noise.add_noise_numpy(spec, x, seed=0)
      if args.save_noisy:
        io.write_png(os.path.splitext(dst)[0] + "_noisy.png", io.to_uint8(x))
    t = time.time()
    y = denoise_image(model, variables, x, tile=args.tile, max_pixels=args.max_pixels,
                      apply_fn=apply_fn)
    grey = io.is_grey(src)
    if grey:  # the channels of a grey photo's output agree up to noise: keep their mean
      y = np.repeat(y.mean(-1, keepdims=True), 3, axis=-1)
    y = io.output_uint8(y, src)
    if alpha is not None:
      y = np.concatenate([y, alpha[..., None]], axis=-1)
    elif grey:
      y = y[..., 0]
    io.write_png(dst, y)
    h, w = image.shape[:2]
    inputs.say(f"{src} -> {dst}: {w}x{h}, {config.model.name} (checkpoint step {step}), "
               f"{time.time() - t:.2f}s")

  if many:
    inputs.make_folder(output)
  inputs.for_each(jobs, one, command=args.command, strict=not many).raise_if_failed()


def denoise_eval_command(args) -> None:
  import json

  from jaxvision.core import io
  from jaxvision.denoise import data, noise
  from jaxvision.denoise.eval import (BASELINES, available_baselines, evaluate_source,
                                      markdown_table, missing_package, model_method)

  noises = args.noise or []
  for n in noises:
    try:
      noise.parse(n)
    except ValueError as e:
      raise UserError(f"--noise: {first_line(e)}") from None
  names = [] if args.baselines == "none" else (
      available_baselines() if args.baselines == "all" else args.baselines.split(","))
  unknown = [b for b in names if b not in BASELINES]
  if unknown:
    raise UserError(f"--baselines: unknown {unknown[0]!r}; choose from all, none, "
                    f"{', '.join(BASELINES)}")
  for b in names:
    if missing_package(b):
      raise UserError(f"--baselines: {b} needs the Python module {missing_package(b)}, "
                      "which is not installed")
  skipped = [b for b in BASELINES if args.baselines == "all" and b not in names]
  methods = {}
  for wd in args.checkpoint or []:
    config, model, variables, step = _load(wd)
    label = f"{config.model.name} ({os.path.basename(os.path.normpath(wd))}, step {step})"
    methods[label] = model_method(model, variables)
    if not noises:
      noises = [config.get("eval_noise") or config.noise]
  if not noises:
    raise UserError("give --noise (e.g. gaussian:25) or a --checkpoint that names its noise")
  methods.update({b: BASELINES[b] for b in names})
  try:
    src = data.get_source(args.dataset, args.split, args.data_dir or None)
    res = evaluate_source(src, noises, methods, max_images=args.max_images or None,
                          crop=args.crop or None)
  except ValueError as e:  # a DataError is a ValueError too
    raise UserError(first_line(e)) from None
  print(f"{args.dataset} [{args.split}], noise drawn with a fixed key per image"
        + (f" ({', '.join(skipped)}: not installed)" if skipped else ""))
  print(markdown_table(res))
  if args.json:
    io.atomic_write(args.json, lambda f: json.dump(res, f, indent=2), binary=False)


def add(sub) -> None:
  """Adds this family's subcommands to the `jaxvision` parser."""
  p = sub.add_parser("denoise", help="denoise images with a trained denoiser",
                     description="Any size: large images go in overlapping tiles (the "
                     "network's receptive radius of overlap: no seams). Images are padded "
                     "to a few size buckets, the padding masked, so a folder of many sizes "
                     "compiles one program per bucket.")
  p.add_argument("--checkpoint", required=True, metavar="WORKDIR")
  p.add_argument("paths", nargs="+", metavar="IN... OUT",
                 help="input images or folders, then the output: OUT.png for one input "
                 "file, else a folder (existing, or new in an existing folder)")
  p.add_argument("--tile", type=positive_int, default=None,
                 help="tile side in pixels (default: whole image up to --max-pixels)")
  p.add_argument("--max-pixels", type=positive_int, default=1 << 21,
                 help="pixels processed at once when --tile is not given (bounds memory)")
  p.add_argument("--add-noise", default="", metavar="NOISE",
                 help="add this noise first (e.g. gaussian:25), to try a model on clean photos")
  p.add_argument("--save-noisy", action="store_true",
                 help="with --add-noise: also write OUT_noisy.png")
  p.set_defaults(func=denoise_command)

  p = sub.add_parser("denoise-eval", help="PSNR/SSIM of denoisers and classical baselines",
                     description="One table: each --checkpoint, NL-means, wavelet and TV "
                     "(scikit-image) on the same noisy copies of a dataset's images. BM3D "
                     "joins the table in benchmarks/denoise.py (a dev-only package).")
  p.add_argument("--checkpoint", action="append", metavar="WORKDIR",
                 help="a denoiser workdir (repeat for several)")
  p.add_argument("--noise", action="append", metavar="NOISE",
                 help="noise model (repeat): gaussian:25, poisson:30, impulse:0.5, text:0.25 "
                 "... (default: the first checkpoint's eval noise)")
  p.add_argument("--baselines", default="all",
                 help="all (those installed), none, or a comma list of nl_means, wavelet "
                 "(BayesShrink, db2), tv_chambolle")
  p.add_argument("--dataset", default="photos",
                 help="photos, folder:/path (clean images), or a TFDS name")
  p.add_argument("--split", default="test")
  p.add_argument("--data-dir", default="")
  p.add_argument("--max-images", type=nonnegative_int, default=0)
  p.add_argument("--crop", type=nonnegative_int, default=0,
                 help="centre crops of this side (0: whole images)")
  p.add_argument("--json", default="", help="also write the results to this JSON file")
  p.set_defaults(func=denoise_eval_command)


register_commands(add)
