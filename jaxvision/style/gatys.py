"""Style transfer by optimisation: the Gatys et al. baseline, and style-image loading.

  jaxvision stylize --optimize --style STYLE IN OUT.png [--vgg WEIGHTS] [--steps N]
  (the command is in jaxvision/style/commands.py)

Gatys, Ecker, Bethge, "Image Style Transfer Using Convolutional Neural Networks", CVPR 2016:
the image itself is optimised (from the content image) to minimise
content_weight * content + style_weight * style + tv_weight * tv, with the losses of
jaxvision.core.losses on a VGG descriptor (jaxvision.core.perceptual). The whole loop (L-BFGS
with optax's zoom line search, or Adam) is one jitted `lax.scan`: one compilation per image
size and step count.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvision.core import io
from jaxvision.core import losses as L
from jaxvision.core.errors import DataError


# Gatys et al. 2016 (VGG-19): style from conv1_1, conv2_1, conv3_1, conv4_1, conv5_1, content
# from conv4_2 (their ReLUs). On VGG-16 (Johnson et al.'s descriptor) the perceptual-loss
# layers: content relu2_2, style relu1_2, relu2_2, relu3_3, relu4_3.
PAPER_LAYERS = {
    "vgg19": ("relu4_2", ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")),
    "vgg16": (L.CONTENT_LAYER, tuple(L.STYLE_LAYERS)),
}


def layers_for(arch: str) -> tuple[str, tuple[str, ...]]:
  """(content layer, style layers) of the optimisation on descriptor `arch`."""
  return PAPER_LAYERS[arch]


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
  `feature_fn` is a descriptor (jaxvision.core.perceptual.load_descriptor); it must be hashable
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
  from jaxvision.core import data  # local: the photo list lives with the data stack
  names = {p.name: p for p in data.PHOTOS}
  if spec in names:
    path = names[spec].path()
  elif os.path.isfile(spec):
    path = spec
  else:
    raise DataError(f"style image {spec!r}: no such file, nor an embedded photo "
                    f"({', '.join(sorted(names))})")
  img = io.load_image_file(path)
  if size:
    img = io.resize_max_side(img, int(size))
  return img.astype(np.float32) / 255.0
