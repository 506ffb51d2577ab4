"""`jaxvision upscale` and `jaxvision sr-eval`: a trained (or converted) SR workdir at work.

  jaxvision upscale --checkpoint WORKDIR IN OUT.png [--tile N]
  jaxvision upscale --checkpoint WORKDIR PHOTOS/ OUT_DIR/          (a folder)
  jaxvision sr-eval --checkpoint WORKDIR [--dataset D --split S]

jax and the models are imported when a command runs, so that `jaxvision --help` stays fast.
"""
from __future__ import annotations

import time

from jaxvision.core.errors import UserError, first_line
from jaxvision.core.inputs import nonnegative_int, positive_int
from jaxvision.core.registry import register_commands


def _load_sr(workdir: str):
  """(config, model, variables, step) of a `super_resolution` workdir."""
  from jaxvision.core import checkpoint
  from jaxvision.superres import models  # noqa: F401  (registers the SR models)
  return checkpoint.load_model(workdir, "super_resolution", "a super-resolution one")


def upscale_command(args) -> None:
  """IN OUT.png, or a folder of images into a folder (OUT_DIR/<name>.png each)."""
  import numpy as np

  from jaxvision.core import inputs, io
  from jaxvision.superres.eval import bucketed_model, upscale
  from jaxvision.superres.resize import imresize

  jobs, folder = inputs.one_to_one_jobs(args.input, args.output, ".png")
  if args.tile is not None and args.tile < 1:
    raise UserError(f"--tile {args.tile}: must be a positive number of input pixels")
  config, model, variables, step = _load_sr(args.checkpoint)
  note = [f"note: {config.model.name} pools over the whole input; tiles change it slightly"
          ] if args.tile is not None and not getattr(model, "local", True) else []
  # one model for every image: one compiled program per shape bucket, not per image size
  apply_fn = bucketed_model(model, variables, tile=args.tile, max_pixels=args.max_pixels)

  def one(job):
    src, dst = job
    image, alpha = io.read_image(src)
    t = time.time()
    y = upscale(model, variables, image.astype(np.float32) / 255.0, tile=args.tile,
                max_pixels=args.max_pixels, apply_fn=apply_fn)
    y = io.output_uint8(y, src)
    if alpha is not None:  # alpha is not the network's business: bicubic
      y = np.concatenate([y, imresize(alpha, float(model.scale))[..., None]], axis=-1)
    io.write_png(dst, y)
    h, w = image.shape[:2]
    if note:  # once, before the first result
      inputs.say(note.pop())
    elif (args.tile is None and h * w > args.max_pixels
          and not getattr(model, "local", True)):  # tiled automatically: say so, per image
      inputs.say(f"note: {src}: {w}x{h} is more than --max-pixels {args.max_pixels}, so it "
                 f"ran in tiles; {config.model.name} pools over the whole input, so the "
                 "tiles change it slightly (raise --max-pixels to run it whole)")
    inputs.say(f"{src} -> {dst}: {w}x{h} -> {y.shape[1]}x{y.shape[0]} "
               f"({config.model.name} x{model.scale}, checkpoint step {step}), "
               f"{time.time() - t:.2f}s")

  if folder:
    inputs.make_folder(args.output)
  inputs.for_each(jobs, one, command=args.command, strict=not folder).raise_if_failed()


def sr_eval_command(args) -> None:
  import json

  from jaxvision.core import data, io
  from jaxvision.superres.eval import evaluate_source

  config, model, variables, step = _load_sr(args.checkpoint)
  try:
    src = data.get_source(args.dataset, args.split, args.data_dir or None)
    res = evaluate_source(model, variables, src, int(model.scale), max_images=args.max_images,
                          tile=args.tile)
  except ValueError as e:  # a DataError (a ValueError too) or evaluate_source's own
    raise UserError(first_line(e)) from None
  name = f"{config.model.name} (step {step})"
  print(f"{args.dataset} [{args.split}] x{model.scale}, {res['model']['images']} images, "
        f"Y channel, {model.scale}-pixel border shaved")
  print("| method | PSNR-Y (dB) | SSIM-Y |\n|---|---|---|")
  for label, key in (("bicubic", "bicubic"), (name, "model")):
    print(f"| {label} | {res[key]['psnr_y']:.2f} | {res[key]['ssim_y']:.4f} |")
  if args.json:
    io.atomic_write(args.json, lambda f: json.dump(res, f, indent=2), binary=False)


def add(sub) -> None:
  """Adds this family's subcommands to the `jaxvision` parser."""
  p = sub.add_parser("upscale", help="super-resolve an image with a trained SR model",
                     description="Any size; large images go in overlapping tiles (overlap = "
                     "the network's receptive radius, so tiles are seam-free). Images are "
                     "padded to a few size buckets, the padding masked, so a folder of many "
                     "sizes compiles one program per bucket; outputs are the unpadded ones.")
  p.add_argument("--checkpoint", required=True, metavar="WORKDIR")
  p.add_argument("input", metavar="IN", help="an image, or a folder of them")
  p.add_argument("output", metavar="OUT.png",
                 help="the PNG; a folder (existing or new) when IN is a folder")
  p.add_argument("--tile", type=positive_int, default=None,
                 help="tile size in input pixels (default: whole image up to --max-pixels)")
  p.add_argument("--max-pixels", type=positive_int, default=1 << 20,
                 help="input pixels processed at once when --tile is not given")
  p.set_defaults(func=upscale_command)

  p = sub.add_parser("sr-eval", help="Y-PSNR/SSIM of an SR model and of bicubic on a dataset")
  p.add_argument("--checkpoint", required=True, metavar="WORKDIR")
  p.add_argument("--dataset", default="photos", help="photos, folder:/path or a TFDS name")
  p.add_argument("--split", default="test")
  p.add_argument("--data-dir", default="")
  p.add_argument("--max-images", type=nonnegative_int, default=0)
  p.add_argument("--tile", type=positive_int, default=None)
  p.add_argument("--json", default="", help="also write the results to this JSON file")
  p.set_defaults(func=sr_eval_command)


register_commands(add)
