"""`jaxvision stylize`: a trained style network, or the Gatys et al. optimisation.

  jaxvision stylize --checkpoint WORKDIR IN OUT.png                 feed-forward (Johnson /
                                                                   texture_net workdir)
  jaxvision stylize --optimize --style STYLE IN OUT.png [--vgg WEIGHTS] [--steps N]
  jaxvision stylize ... PHOTOS/ OUT_DIR/                            a folder of images

jax and the models are imported when the command runs, so that `jaxvision --help` stays fast.
"""
from __future__ import annotations

import time

from jaxvision.core.errors import UserError, first_line
from jaxvision.core.inputs import nonnegative_float, nonnegative_int, positive_float, positive_int
from jaxvision.core.registry import register_commands


def _generator(workdir: str):
  """(apply(x (N,H,W,3), seed) -> (N,H,W,3), model, config, step), not jitted."""
  import jax

  from jaxvision.core import checkpoint
  from jaxvision.style import generators  # noqa: F401  (registers johnson, texture_net)
  config, model, variables, step = checkpoint.load_model(workdir, ("style_transfer", "texture"),
                                                         "a style network")

  def apply(x, seed):
    key = jax.random.key(seed, impl="rbg")  # texture nets draw noise; others ignore it
    return model.apply(variables, x, rngs={"noise": key})

  return apply, model, config, step


def load_generator(workdir: str):
  """(apply(x (N,H,W,3), seed) -> (N,H,W,3), config, step) from a style/texture workdir."""
  import jax
  apply, _, config, step = _generator(workdir)
  return jax.jit(apply), config, step


def load_bucketed_generator(workdir: str):
  """(run(x (H,W,3) numpy, seed) -> (H,W,3) numpy, config, step): the generator in shape
  buckets (jaxvision.core.buckets), one compiled program per bucket for a folder of many
  sizes; the few sizes a bucket cannot reproduce (`generators.bucketable`: texture nets on
  images with a side <= 2**(scales-1)) take the per-size program."""
  import jax
  import numpy as np

  from jaxvision.core import buckets
  from jaxvision.style import generators
  apply, model, config, step = _generator(workdir)
  whole = jax.jit(apply)
  bucketed = buckets.bucketed_apply(apply, generators.bucket_multiple(model))

  def run(x, seed):
    h, w = x.shape[:2]
    if generators.bucketable(model, h, w):
      return bucketed(x[None], seed)[0]
    return np.asarray(whole(x[None], seed))[0]

  return run, config, step


def stylize(args) -> None:
  """IN OUT.png, or a folder of images into a folder (OUT_DIR/<name>.png each); the
  network (or the style image and descriptor of the optimisation) is loaded once."""

  import numpy as np

  from jaxvision.core import inputs, io

  jobs, folder = inputs.one_to_one_jobs(args.input, args.output, ".png", must_exist=False)
  if bool(args.checkpoint) == bool(args.optimize):
    raise UserError("give either --checkpoint WORKDIR (feed-forward) or --optimize --style "
                    "STYLE (Gatys optimisation)")

  def load(path):
    image = io.load_image_file(path)  # alpha composited on white, as before
    return io.resize_max_side(image, args.max_side or None)

  first = None if folder else load(args.input)  # one file: read before the model, as before
  if args.checkpoint:
    apply, config, step = load_bucketed_generator(args.checkpoint)
    what = f"{config.model.name} (checkpoint step {step}, style {config.style.get('image', '?')})"

    def run(x):
      return apply(x, args.seed), what
  else:
    if not args.style:
      raise UserError("--optimize needs --style STYLE_IMAGE")
    from jaxvision.core import perceptual
    from jaxvision.style import gatys
    try:
      s = gatys.load_style_image(args.style, args.style_size or None)
      fn, pretrained = perceptual.load_descriptor(args.vgg, arch=args.arch)
    except ValueError as e:  # DataError, WeightsError and an unknown arch: one line
      raise UserError(first_line(e)) from None
    content_layer, style_layers = gatys.layers_for(fn.arch)

    def run(x):
      y, values = gatys.gatys(fn, x, s, steps=args.steps, method=args.optimizer,
                              learning_rate=args.learning_rate,
                              content_weight=args.content_weight,
                              style_weight=args.style_weight, tv_weight=args.tv_weight,
                              content_layer=content_layer, style_layers=style_layers)
      if not np.all(np.isfinite(y)):
        raise UserError("the optimisation diverged (non-finite image); try --optimizer adam")
      return y, (f"Gatys {args.optimizer}, {args.steps} steps, loss {values[0]:.4g} -> "
                 f"{values[-1]:.4g}, {'pretrained' if pretrained else 'RANDOM'} {fn.arch} "
                 f"(content {content_layer}, style {', '.join(style_layers)})")

  def one(job):
    src, dst = job
    image = first if first is not None else load(src)
    x = image.astype(np.float32) / 255.0
    h, w = x.shape[:2]
    t = time.time()
    y, what = run(x)
    io.write_png(dst, io.output_uint8(y, src))
    inputs.say(f"{src} -> {dst}: {w}x{h}, {what}, {time.time() - t:.2f}s")

  if folder:
    inputs.make_folder(args.output)
  inputs.for_each(jobs, one, command=args.command, strict=not folder).raise_if_failed()


def add(sub) -> None:
  """Adds `jaxvision stylize`."""
  p = sub.add_parser(
      "stylize", help="stylise a photo: a trained style network, or Gatys optimisation",
      description="Feed-forward: --checkpoint WORKDIR of a configs/johnson.py or "
      "configs/texture_net.py run; images are padded to a few size buckets, the padding "
      "masked, so a folder of many sizes compiles one program per bucket. Optimisation "
      "(Gatys et al.): --optimize --style STYLE.")
  p.add_argument("--checkpoint", metavar="WORKDIR", help="trained style/texture network")
  p.add_argument("--optimize", action="store_true", help="Gatys et al. optimisation instead")
  p.add_argument("--style", help="style image (file or embedded photo name), with --optimize")
  p.add_argument("--vgg", metavar="WEIGHTS", default=None,
                 help="VGG weights: torchvision .pth, Keras .h5 or a converted workdir "
                 "(default: random weights, with a warning)")
  p.add_argument("--arch", default="auto", choices=("auto", "vgg16", "vgg19"),
                 help="descriptor of --optimize: auto (default) = the one --vgg holds, VGG-19 "
                 "without --vgg; VGG-19 uses Gatys et al.'s layers (style relu1_1..relu5_1, "
                 "content relu4_2), VGG-16 the perceptual-loss ones (relu1_2..relu4_3, "
                 "relu2_2)")
  p.add_argument("--steps", type=positive_int, default=100, help="optimisation steps (default 100)")
  p.add_argument("--optimizer", default="lbfgs", choices=("lbfgs", "adam"))
  p.add_argument("--learning-rate", type=positive_float, default=0.02, help="Adam step size")
  p.add_argument("--content-weight", type=nonnegative_float, default=1.0)
  p.add_argument("--style-weight", type=nonnegative_float, default=1e5)
  p.add_argument("--tv-weight", type=nonnegative_float, default=1.0)
  p.add_argument("--style-size", type=positive_int, default=512, help="style image long side")
  p.add_argument("--max-side", type=nonnegative_int, default=0,
                 help="resize the input so its long side is at most this (0: as is)")
  p.add_argument("--seed", type=nonnegative_int, default=0, help="noise seed (texture networks)")
  p.add_argument("input", metavar="IN", help="an image, or a folder of them")
  p.add_argument("output", metavar="OUT.png",
                 help="the PNG; a folder (existing or new) when IN is a folder")
  p.set_defaults(func=stylize)


register_commands(add)
