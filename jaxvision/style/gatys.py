"""Style transfer: the Gatys et al. optimisation baseline and the `jaxvision stylize` command.

  jaxvision stylize --checkpoint WORKDIR IN OUT.png                 feed-forward (Johnson /
                                                                   texture_net workdir)
  jaxvision stylize --optimize --style STYLE IN OUT.png [--vgg WEIGHTS] [--steps N]

Gatys, Ecker, Bethge, "Image Style Transfer Using Convolutional Neural Networks", CVPR 2016:
the image itself is optimised (from the content image) to minimise
content_weight * content + style_weight * style + tv_weight * tv, with the losses of
jaxvision.losses on a VGG descriptor. The whole loop (L-BFGS with optax's zoom line
search, or Adam) is one jitted `lax.scan`: one compilation per image size and step count.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvision import losses as L


def gatys_objective(feature_fn: Callable, content: jnp.ndarray, style: jnp.ndarray, *,
                    content_weight: float = 1.0, style_weight: float = 1e5,
                    tv_weight: float = 1.0, content_layer: str = L.CONTENT_LAYER,
                    style_layers: Sequence[str] = L.STYLE_LAYERS) -> Callable:
  """loss(image (1, H, W, 3)) for one content (1, H, W, 3) and style (1, h, w, 3) image."""
  fc = feature_fn(content)[content_layer]
  grams = L.style_targets(feature_fn(style), style_layers)

  def loss(x):
    f = feature_fn(x)
    return (content_weight * jnp.mean(jnp.square(f[content_layer] - fc))
            + style_weight * L.style_loss(f, grams, style_layers) + tv_weight * L.tv_loss(x))

  return loss


@functools.partial(jax.jit, static_argnames=("feature_fn", "steps", "method", "learning_rate",
                                             "weights"))
def _optimize(content, style, *, feature_fn, steps, method, learning_rate, weights):
  loss = gatys_objective(feature_fn, content, style, **dict(weights))
  if method == "lbfgs":
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)  # reuses the line search's values
  elif method == "adam":
    opt = optax.adam(learning_rate)
    value_and_grad = lambda x, state: jax.value_and_grad(loss)(x)
  else:
    raise ValueError(f"unknown optimizer {method!r}; choose from: lbfgs, adam")

  def step(carry, _):
    x, state = carry
    value, grad = value_and_grad(x, state=state)
    if method == "lbfgs":
      updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=loss)
    else:
      updates, state = opt.update(grad, state, x)
    return (optax.apply_updates(x, updates), state), value

  x0 = content
  (x, _), values = jax.lax.scan(step, (x0, opt.init(x0)), None, length=steps)
  return jnp.clip(x, 0.0, 1.0), values


def gatys(feature_fn: Callable, content: np.ndarray, style: np.ndarray, *, steps: int = 200,
          method: str = "lbfgs", learning_rate: float = 0.02, content_weight: float = 1.0,
          style_weight: float = 1e5, tv_weight: float = 1.0,
          content_layer: str = L.CONTENT_LAYER,
          style_layers: Sequence[str] = L.STYLE_LAYERS) -> tuple[np.ndarray, np.ndarray]:
  """Stylises `content` (H, W, 3) in [0, 1] with `style` (h, w, 3): (image, loss per step).
  `feature_fn` is a descriptor (jaxvision.models.vgg.load_descriptor); it must be hashable
  (any function is) since the loop is compiled for it."""
  weights = (("content_weight", float(content_weight)), ("style_weight", float(style_weight)),
             ("tv_weight", float(tv_weight)), ("content_layer", content_layer),
             ("style_layers", tuple(style_layers)))
  x, values = _optimize(jnp.asarray(content, jnp.float32)[None],
                        jnp.asarray(style, jnp.float32)[None], feature_fn=feature_fn,
                        steps=int(steps), method=method, learning_rate=float(learning_rate),
                        weights=weights)
  return np.asarray(x[0]), np.asarray(values)


def load_style_image(spec: str, size: int | None = None) -> np.ndarray:
  """(H, W, 3) float32 in [0, 1] from a file path or an embedded photo's name, its long
  side resized to `size` (never upscaled)."""
  from jaxvision import data
  names = {p.name: p for p in data.PHOTOS}
  if spec in names:
    path = names[spec].path()
  elif os.path.isfile(spec):
    path = spec
  else:
    raise data.DataError(f"style image {spec!r}: no such file, nor an embedded photo "
                         f"({', '.join(sorted(names))})")
  img = data.load_image_file(path)
  if size:
    img = data.resize_max_side(img, int(size))
  return img.astype(np.float32) / 255.0


# ---------------------------------------------------------------- feed-forward
def load_generator(workdir: str):
  """(apply(x (N,H,W,3), seed) -> (N,H,W,3), config, step) from a style/texture workdir."""
  from jaxvision import checkpoint as jv_ckpt
  from jaxvision import models
  config, variables, step = jv_ckpt.load_variables(workdir)
  if config.get("task") not in ("style_transfer", "texture"):
    raise ValueError(f"{workdir}: a {config.get('task')!r} model, not a style network")
  model = models.create(config.model.name, **config.model.get("kwargs", {}))

  @jax.jit
  def apply(x, seed):
    key = jax.random.key(seed, impl="rbg")  # texture nets draw noise; others ignore it
    return model.apply(variables, x, rngs={"noise": key})

  return apply, config, step


# ---------------------------------------------------------------- command line
def stylize(args) -> None:
  from jaxvision import data
  from jaxvision import weights as jv_weights
  from jaxvision.cli import CliError, _atomic_save_png
  from jaxvision.checkpoint import CheckpointError

  if not args.output.lower().endswith(".png"):
    raise CliError(f"{args.output}: output must be a .png file")
  if bool(args.checkpoint) == bool(args.optimize):
    raise CliError("give either --checkpoint WORKDIR (feed-forward) or --optimize --style "
                   "STYLE (Gatys optimisation)")
  try:
    image = data.load_image_file(args.input)
  except data.DataError as e:
    raise CliError(str(e)) from None
  image = data.resize_max_side(image, args.max_side or None)
  x = image.astype(np.float32) / 255.0
  h, w = x.shape[:2]
  t = time.time()
  if args.checkpoint:
    try:
      apply, config, step = load_generator(args.checkpoint)
    except (CheckpointError, ValueError) as e:
      raise CliError(str(e).splitlines()[0]) from None
    y = np.asarray(apply(jnp.asarray(x)[None], args.seed))[0]
    what = f"{config.model.name} (checkpoint step {step}, style {config.style.get('image', '?')})"
  else:
    if not args.style:
      raise CliError("--optimize needs --style STYLE_IMAGE")
    from jaxvision.models import vgg
    try:
      s = load_style_image(args.style, args.style_size or None)
      fn, pretrained = vgg.load_descriptor(args.vgg, arch=args.arch)
    except (data.DataError, jv_weights.WeightsError, ValueError) as e:
      raise CliError(str(e).splitlines()[0]) from None
    y, values = gatys(fn, x, s, steps=args.steps, method=args.optimizer,
                      learning_rate=args.learning_rate, content_weight=args.content_weight,
                      style_weight=args.style_weight, tv_weight=args.tv_weight)
    if not np.all(np.isfinite(y)):
      raise CliError("the optimisation diverged (non-finite image); try --optimizer adam")
    what = (f"Gatys {args.optimizer}, {args.steps} steps, loss {values[0]:.4g} -> "
            f"{values[-1]:.4g}, {'pretrained' if pretrained else 'RANDOM'} {args.arch}")
  out = (np.clip(y, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  _atomic_save_png(out, args.output)
  print(f"{args.input} -> {args.output}: {w}x{h}, {what}, {time.time() - t:.2f}s")


def add_commands(sub) -> None:
  """Adds `jaxvision stylize`."""
  p = sub.add_parser(
      "stylize", help="stylise a photo: a trained style network, or Gatys optimisation",
      description="Feed-forward: --checkpoint WORKDIR of a configs/johnson.py or "
      "configs/texture_net.py run. Optimisation (Gatys et al.): --optimize --style STYLE.")
  p.add_argument("--checkpoint", metavar="WORKDIR", help="trained style/texture network")
  p.add_argument("--optimize", action="store_true", help="Gatys et al. optimisation instead")
  p.add_argument("--style", help="style image (file or embedded photo name), with --optimize")
  p.add_argument("--vgg", metavar="WEIGHTS", default=None,
                 help="VGG weights: torchvision .pth, Keras .h5 or a converted workdir "
                 "(default: random weights, with a warning)")
  p.add_argument("--arch", default="vgg16", choices=("vgg16", "vgg19"))
  p.add_argument("--steps", type=int, default=100, help="optimisation steps (default 100)")
  p.add_argument("--optimizer", default="lbfgs", choices=("lbfgs", "adam"))
  p.add_argument("--learning-rate", type=float, default=0.02, help="Adam step size")
  p.add_argument("--content-weight", type=float, default=1.0)
  p.add_argument("--style-weight", type=float, default=1e5)
  p.add_argument("--tv-weight", type=float, default=1.0)
  p.add_argument("--style-size", type=int, default=512, help="style image long side")
  p.add_argument("--max-side", type=int, default=0,
                 help="resize the input so its long side is at most this (0: as is)")
  p.add_argument("--seed", type=int, default=0, help="noise seed (texture networks)")
  p.add_argument("input", metavar="IN")
  p.add_argument("output", metavar="OUT.png")
  p.set_defaults(func=stylize)
