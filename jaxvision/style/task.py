"""Style-transfer and texture tasks: feed-forward generators trained with perceptual losses.

  style_transfer  Johnson et al. 2016 / Ulyanov et al. 2016 stylisation: for a content
                  batch x, the generator's output y is scored by
                  content_weight * content(phi(y), phi(x)) + style_weight * style(phi(y), s)
                  + tv_weight * tv(y); phi is the descriptor (VGG), s the style image whose
                  targets (Gram matrices, or sorted activations for the histogram loss) are
                  computed once.
  texture         Ulyanov et al. texture synthesis: the same without the content term (the
                  generator sees only noise; the batch gives the output size).

Config keys (configs/johnson.py, configs/texture_net.py):
  style.image   path of the style image, or the name of an embedded photo
                (jaxvision.core.data.PHOTOS)
  style.size    long side the style image is resized to (never upscaled)
  style.content_weight, style.style_weight, style.tv_weight, style.histogram_weight
  style.content_layer, style.style_layers, style.loss ("gram" | "histogram" | "both")
  descriptor.arch ("vgg16" | "vgg19"), descriptor.weights (file or converted workdir;
  empty: random weights, said plainly), descriptor.width (channel multiplier; 1 for
  pretrained weights)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.core import losses as L
from jaxvision.core import perceptual
from jaxvision.core.io import to_uint8
from jaxvision.core.registry import register_task
from jaxvision.core.tasks import Task, image_data
from jaxvision.style import generators  # noqa: F401  (registers johnson, texture_net)
from jaxvision.style.gatys import load_style_image


@functools.lru_cache(maxsize=8)
def descriptor(weights: str, arch: str, width: float):
  """(feature_fn, pretrained), built once per process and setting."""
  with jax.ensure_compile_time_eval():
    return perceptual.load_descriptor(weights or None, arch=arch, width=width)


def _descriptor_of(config):
  d = config.descriptor
  return descriptor(str(d.get("weights", "") or ""), str(d.get("arch", "vgg16")),
                    float(d.get("width", 1.0)))


@functools.lru_cache(maxsize=8)
def _targets(image: str, size: int, weights: str, arch: str, width: float,
             layers: tuple, kind: str) -> dict:
  # Concrete values even when first asked for inside a traced loss (cached as numpy).
  with jax.ensure_compile_time_eval():
    fn, _ = descriptor(weights, arch, width)
    s = jnp.asarray(load_style_image(image, size))[None]
    feats = jax.jit(fn)(s)
    out = {}
    if kind in ("gram", "both"):
      out["gram"] = jax.device_get(L.style_targets(feats, layers))
    if kind in ("histogram", "both"):
      out["histogram"] = jax.device_get(L.histogram_targets(feats, layers))
  return out


def style_targets(config) -> dict:
  """{"gram": {layer: (1, C, C)}, "histogram": {layer: (C, M)}} of the config's style image."""
  s, d = config.style, config.descriptor
  kind = s.get("loss", "gram")
  if kind not in ("gram", "histogram", "both"):
    raise ValueError(f"style.loss {kind!r}: choose from gram, histogram, both")
  return _targets(str(s.image), int(s.get("size", 256) or 0), str(d.get("weights", "") or ""),
                  str(d.get("arch", "vgg16")), float(d.get("width", 1.0)),
                  tuple(s.get("style_layers", L.STYLE_LAYERS)), kind)


def generate(model, variables, x, rng=None):
  """The generator's output for content/size batch x (texture nets draw their noise)."""
  rngs = {"noise": rng} if rng is not None else {}
  return model.apply(variables, x, rngs=rngs)


def _per_image_terms(config, fy, fx, y):
  """Loss terms per image (N,) so evaluation can report per-image means."""
  s = config.style
  targets = style_targets(config)
  layers = tuple(s.get("style_layers", L.STYLE_LAYERS))
  n = y.shape[0]
  terms = {}
  if fx is not None and s.content_weight:
    l = s.get("content_layer", L.CONTENT_LAYER)
    terms["content"] = jnp.mean(jnp.square(fy[l] - fx[l]), axis=(1, 2, 3))
  if "gram" in targets:
    terms["style"] = sum(jnp.mean(jnp.square(L.gram(fy[l]) - targets["gram"][l]), axis=(1, 2))
                         for l in layers)
  if "histogram" in targets:
    terms["histogram"] = jnp.stack([L.histogram_loss(
        {l: fy[l][i:i + 1] for l in layers}, targets["histogram"]) for i in range(n)])
  dy = jnp.mean(jnp.square(y[:, 1:] - y[:, :-1]), axis=(1, 2, 3))
  dx = jnp.mean(jnp.square(y[:, :, 1:] - y[:, :, :-1]), axis=(1, 2, 3))
  terms["tv"] = dy + dx
  return terms


def _total(config, terms):
  s = config.style
  w = {"content": s.content_weight, "style": s.style_weight, "tv": s.tv_weight,
       "histogram": s.get("histogram_weight", 1.0)}
  return sum(w[k] * v for k, v in terms.items())


def _make_loss(with_content: bool):
  def loss(model, variables, batch, rng, train, config):
    del train  # instance norm: no model state
    fn, _ = _descriptor_of(config)
    x = batch["input"]
    y = generate(model, variables, x, rng)
    fy = fn(y)
    fx = fn(x) if with_content else None
    per_image = _per_image_terms(config, fy, fx, y)
    if with_content:
      # Spatially uniform crops (a black sky) are left out: instance norm of a constant map has a
      # 1/sqrt(eps) derivative, ~316x per normalised layer, which overflows float32
      # through the generator's 14 layers. A zero weight gives an exact zero gradient.
      keep = (jnp.max(jnp.std(x, axis=(1, 2)), axis=-1) > 1e-3).astype(jnp.float32)
      terms = {k: jnp.sum(v * keep) / jnp.maximum(jnp.sum(keep), 1.0) for k, v in per_image.items()}
    else:
      terms = {k: jnp.mean(v) for k, v in per_image.items()}
    return _total(config, terms), (terms, {})
  return loss


def _make_evaluate(with_content: bool):
  def evaluate(model, variables, batch, config):
    fn, _ = _descriptor_of(config)
    x = batch["input"]
    y = generate(model, variables, x, jax.random.PRNGKey(1))
    terms = _per_image_terms(config, fn(y), fn(x) if with_content else None, y)
    return {**terms, "loss": _total(config, terms), "output": y}
  return evaluate


def make_data(config):
  _, pretrained = _descriptor_of(config)
  img = load_style_image(str(config.style.image), int(config.style.get("size", 256) or 0))
  style_targets(config)  # computed once, before training
  d = config.descriptor
  print(f"style image {config.style.image} ({img.shape[1]}x{img.shape[0]}); descriptor "
        f"{d.get('arch', 'vgg16')}: " + (f"pretrained weights from {d.weights}" if pretrained
                                         else "RANDOM weights (set descriptor_weights)"),
        flush=True)
  return image_data(config)


def samples(batch, outputs, config=None) -> dict[str, np.ndarray]:
  del config
  x, y = to_uint8(batch["input"]), to_uint8(outputs["output"])
  return {"input": x, "output": y, "input|output": np.concatenate([x, y], axis=2)}


register_task("style_transfer", Task(make_data=make_data, loss=_make_loss(True),
                                     evaluate=_make_evaluate(True), samples=samples))
register_task("texture", Task(make_data=make_data, loss=_make_loss(False),
                              evaluate=_make_evaluate(False), samples=samples))
