"""Losses: pixel losses, and perceptual losses over descriptor features (dicts {layer: NHWC activations}).

Normalisations follow jcjohnson/fast-neural-style (the reference of Johnson et al. 2016):
  content   mean over N,H,W,C of (phi_j(y) - phi_j(x))^2 at one layer (relu2_2)
  gram      G[c, c'] = sum_hw F[h,w,c] F[h,w,c'] / (H * W * C), per image
  style     sum over layers of mean over N,C,C' of (G(y) - G(s))^2
  tv        mean of squared horizontal plus mean of squared vertical differences
  histogram (Wilmot et al. 2017) mean of (O - R)^2, R = O remapped per image and channel to
            the style activations' distribution (R held constant), summed over layers.
  pixel     mse, l1 or charbonnier (sqrt(d^2 + 1e-6)) between two images
All are pure jnp functions; jit them inside the training step.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

CONTENT_LAYER = "relu2_2"
STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")

Features = Mapping[str, jnp.ndarray]


def content_loss(feats_a: Features, feats_b: Features, layer: str = CONTENT_LAYER) -> jnp.ndarray:
  """Feature reconstruction loss of Johnson et al.: MSE between the activations at `layer`."""
  a, b = feats_a[layer], feats_b[layer]
  return jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))


def gram(f: jnp.ndarray) -> jnp.ndarray:
  """(N, H, W, C) -> (N, C, C) Gram matrices normalised by H * W * C."""
  n, h, w, c = f.shape
  f = f.astype(jnp.float32).reshape(n, h * w, c)
  return jnp.einsum("npc,npd->ncd", f, f) / (h * w * c)


def style_targets(feats: Features, layers: Sequence[str] = STYLE_LAYERS) -> dict[str, jnp.ndarray]:
  """Gram matrices of the style image(s) (computed once, outside the training step)."""
  return {l: gram(feats[l]) for l in layers}


def style_loss(feats: Features, targets: Mapping[str, jnp.ndarray],
               layers: Sequence[str] | None = None,
               layer_weights: Mapping[str, float] | None = None) -> jnp.ndarray:
  """Sum over layers of the MSE between Gram matrices; targets (1 or N, C, C) broadcast."""
  layers = tuple(targets) if layers is None else tuple(layers)
  total = jnp.zeros((), jnp.float32)
  for l in layers:
    w = 1.0 if layer_weights is None else layer_weights.get(l, 1.0)
    g = gram(feats[l])
    total = total + w * jnp.mean(jnp.square(g - jnp.broadcast_to(targets[l], g.shape)))
  return total


def tv_loss(x: jnp.ndarray) -> jnp.ndarray:
  """Total variation (squared, anisotropic) of NHWC images."""
  x = x.astype(jnp.float32)
  dy = x[:, 1:, :, :] - x[:, :-1, :, :]
  dx = x[:, :, 1:, :] - x[:, :, :-1, :]
  return jnp.mean(jnp.square(dy)) + jnp.mean(jnp.square(dx))


# ---------------------------------------------------------------- histogram loss
def sorted_activations(f: jnp.ndarray) -> jnp.ndarray:
  """Style side of the histogram loss: (N, H, W, C) -> (C, N*H*W) sorted per channel
  (the empirical quantile function; computed once)."""
  c = f.shape[-1]
  return jnp.sort(f.astype(jnp.float32).reshape(-1, c).T, axis=1)


def histogram_match(o: jnp.ndarray, style_sorted: jnp.ndarray) -> jnp.ndarray:
  """R: every channel of every image of `o` (N, H, W, C) remapped so its values have the
  style's distribution while keeping their order. Exact (sort-based) histogram matching:
  the value of rank r among n takes the style quantile at r / (n - 1), linearly
  interpolated between the style's sorted values (Wilmot et al. use 256-bin histograms;
  the sort is the limit of infinitely fine bins)."""
  n, h, w, c = o.shape
  flat = o.astype(jnp.float32).reshape(n, h * w, c)
  ranks = jnp.argsort(jnp.argsort(flat, axis=1), axis=1).astype(jnp.float32)
  m = style_sorted.shape[1]
  pos = ranks / max(h * w - 1, 1) * (m - 1)
  lo = jnp.floor(pos).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, m - 1)
  t = pos - lo
  s = style_sorted.T  # (m, C)
  take = jax.vmap(lambda i: jnp.take_along_axis(s, i, axis=0))  # s[i[p, c], c] per image
  matched = take(lo) * (1 - t) + take(hi) * t
  return matched.reshape(n, h, w, c)


def histogram_targets(feats: Features, layers: Sequence[str]) -> dict[str, jnp.ndarray]:
  return {l: sorted_activations(feats[l]) for l in layers}


def histogram_loss(feats: Features, targets: Mapping[str, jnp.ndarray],
                   layers: Sequence[str] | None = None) -> jnp.ndarray:
  """Histogram loss of Wilmot, Risser & Barnes 2017: sum over layers of mean (O - R)^2 with
  R = histogram_match(O) treated as a constant (the paper's gradient O - R)."""
  layers = tuple(targets) if layers is None else tuple(layers)
  total = jnp.zeros((), jnp.float32)
  for l in layers:
    o = feats[l].astype(jnp.float32)
    r = jax.lax.stop_gradient(histogram_match(o, targets[l]))
    total = total + jnp.mean(jnp.square(o - r))
  return total


PIXEL_LOSSES = ("mse", "l1", "charbonnier")


def pixel_loss(kind: str, pred, target) -> jnp.ndarray:
  d = pred - target
  if kind == "mse":
    return jnp.mean(d * d)
  if kind == "l1":
    return jnp.mean(jnp.abs(d))
  if kind == "charbonnier":
    return jnp.mean(jnp.sqrt(d * d + 1e-6))
  raise ValueError(f"unknown loss {kind!r}; choose from: {', '.join(PIXEL_LOSSES)}")
