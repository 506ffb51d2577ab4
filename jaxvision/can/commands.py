"""`jaxvision enhance` (apply a trained image operator) and `jaxvision operators`.

  jaxvision enhance --checkpoint WORKDIR --input IN.jpg --output OUT.png
  jaxvision enhance --checkpoint WORKDIR --input PHOTOS/ --output OUT_DIR/   (a folder)
"""
from __future__ import annotations

import time

from jaxvision.core.errors import UserError
from jaxvision.core.inputs import positive_float, positive_int
from jaxvision.core.registry import register_commands


def enhance(args) -> None:
  """One image (--input FILE --output OUT.png), or a folder of them into a folder
  (--input DIR --output OUT_DIR: OUT_DIR/<name>.png each; see `core.inputs`)."""

  import numpy as np

  from jaxvision.core import buckets, checkpoint, inputs, io, tiling

  jobs, folder = inputs.one_to_one_jobs(args.input, args.output, ".png")
  config, model, variables, step = checkpoint.load_model(args.checkpoint, "image_to_image",
                                                         "an image operator")
  whole = bool(getattr(model, "full_resolution", False))  # HDRNet: a low-res grid, no tiles
  if not whole and not hasattr(model, "receptive_radius"):  # tiling needs a bounded field
    raise UserError(f"{config.model.name}: no receptive_radius(); cannot apply it in tiles")
  radius = 0 if whole else model.receptive_radius()

  def default_tile(h, w):  # whole image if it fits the pixel budget, else the largest tiles that do
    return max(h, w) if h * w <= args.max_pixels else max(
        64, int(args.max_pixels ** 0.5) - 2 * radius)

  # One for every image: images (and the partial windows of large ones) padded to a few shape
  # buckets, the padding masked (core.buckets), so a folder compiles one program per bucket;
  # the full tile window is a bucket of its own (large images run unpadded).
  window = (args.tile if args.tile is not None else default_tile(1 << 30, 1 << 30)) + 2 * radius
  if whole:  # the whole image at full resolution: padding would change its low-res grid
    import jax
    fn = jax.jit(lambda x: model.apply(variables, x, train=False))
  else:
    fn = buckets.bucketed_apply(lambda x: model.apply(variables, x, train=False),
                                keep_sides=(window,))

  def one(job):
    src, dst = job
    image, alpha = io.read_image(src)
    x = image.astype(np.float32) / 255.0
    t = time.time()
    h, w = image.shape[:2]
    tile = args.tile if args.tile is not None else default_tile(h, w)
    if whole:
      y = io.output_uint8(np.asarray(fn(x[None]))[0], src)
    else:
      y = io.output_uint8(tiling.apply_tiled(fn, x, radius=radius, tile=tile), src)
    if alpha is not None:
      y = np.concatenate([y, alpha[..., None]], axis=-1)
    io.write_png(dst, y)
    op = (config.get("data") or {}).get("operator")
    inputs.say(f"{src} -> {dst}: {w}x{h}, {op + ' ' if op else ''}"
               f"(checkpoint step {step}), {time.time() - t:.2f}s")

  if folder:
    inputs.make_folder(args.output)
  inputs.for_each(jobs, one, command=args.command, strict=not folder).raise_if_failed()


def list_operators(args) -> None:
  from jaxvision.can import operators
  print("\n".join(operators.list_operators()))


def add(sub) -> None:
  p = sub.add_parser("enhance", help="apply a trained image operator (CAN) to a photo",
                     description="Applies a trained image-to-image network to any image "
                     "size, in overlapping tiles so memory stays bounded (no seams). Images "
                     "are padded to a few size buckets, the padding masked, so a folder of "
                     "many sizes compiles one program per bucket; outputs are the unpadded "
                     "ones.")
  p.add_argument("--checkpoint", required=True, metavar="WORKDIR",
                 help="workdir of a `python -m train` run")
  p.add_argument("--input", required=True, metavar="IN",
                 help="input image (any format Pillow reads), or a folder of them")
  p.add_argument("--output", required=True, metavar="OUT.png",
                 help="output PNG; a folder (existing or new) when --input is a folder")
  p.add_argument("--tile", type=positive_int, default=None,
                 help="output pixels per tile side (default: from --max-pixels)")
  p.add_argument("--max-pixels", type=positive_float, default=4e6,
                 help="largest window the network sees at once (default 4e6); bounds memory")
  p.set_defaults(func=enhance)
  sub.add_parser("operators", help="list image operators").set_defaults(func=list_operators)


register_commands(add)
