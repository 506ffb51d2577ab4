"""CFAN (Zhang, Shan, Kan, Chen, ECCV 2014, "Coarse-to-Fine Auto-encoder Networks for
Real-Time Face Alignment"): a global stacked auto-encoder network (SAN) regresses the shape
from the whole face at low resolution, then local SANs refine it from shape-indexed
features at higher resolutions.

Input and output are PFLD's (the landmarks task, `detect-landmarks --checkpoint`): an RGB
face crop (B, S, S, 3) in [0, 1] -> {"landmarks": (B, 2P)} in the crop's unit frame (a
point u sits at pixel centre u * S - 0.5 of an S-pixel crop). With train=False the output
also holds "stages" (K, B, 2P): every stage's shape, the last one the prediction.

  global SAN: grey crop resized to `global_size` (50, the paper's 50 x 50), standardised
    per face, hidden sigmoid layers `global_hidden`, a linear layer to 2P (bias 0.5: the
    crop's centre);
  local SAN k: the grey crop resized to `local_sizes[k]` (higher each stage), a descriptor
    at every current point (below), hidden sigmoid layers `local_hidden`, a linear layer
    to the shape increment (initialised to zero: a new stage starts as the identity).

Descriptor (a substitute for the paper's SIFT, no gradient taken through it): a 16 x 16
pixel window of the stage's image around the point, sampled bilinearly on an 8 x 8 grid
(2-pixel steps) of the image's x / y gradients (central differences); each sample's
gradient magnitude goes to 8 orientation bins (linear between the two nearest), summed
over 2 x 2 cells of 4 x 4 samples: 32 values per point, L2-normalised, clipped at 0.2 and
normalised again as SIFT does. A fixed 16-pixel window on a finer image covers less of the
face: that is the coarse-to-fine of the stages.

Stage-wise training inside one run (the model keeps the schedule in its "cfan" collection,
which the trainer carries as model state and checkpoints): `stage_steps` = train steps per
stage (global first). At train step s the active stage is the first whose cumulative end
exceeds s; "landmarks" is then that stage's output, so the loss trains it alone; earlier
stages' outputs enter it through stop_gradient. Adam would still move a finished stage's
parameters (its moments decay, they do not vanish), so at the first step after stage j's
phase its parameters are copied into "cfan"/<stage> and from then on the copy is what the
network uses (in training and inference): a finished stage is frozen exactly. The "params"
slot of a finished stage is dead weight after that step. `shape_noise` (std in the unit
frame, training only, rng "noise") perturbs the shape the active local stage starts from,
so that it learns to correct errors larger than the (over-fitted) previous stage makes on
the training faces.

The paper pre-trains each SAN layer by layer as auto-encoders, then fine-tunes; here only
the supervised fine-tuning is implemented (sigmoid layers initialised by lecun-normal).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.core.registry import register_model

WINDOW, GRID, CELLS, BINS = 16, 8, 2, 8


def grey(x: jax.Array) -> jax.Array:
  """(B, H, W, 3) RGB -> (B, H, W) luma (ITU-R 601 weights); one channel is itself."""
  if x.shape[-1] == 1:
    return x[..., 0]
  return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def bilinear(img: jax.Array, xy: jax.Array) -> jax.Array:
  """img (B, H, W), xy (B, N, 2) pixel-centre coordinates -> (B, N); edge replicated."""
  b, h, w = img.shape
  x = jnp.clip(xy[..., 0], 0, w - 1)
  y = jnp.clip(xy[..., 1], 0, h - 1)
  x0 = jnp.clip(jnp.floor(x), 0, w - 2).astype(jnp.int32)
  y0 = jnp.clip(jnp.floor(y), 0, h - 2).astype(jnp.int32)
  fx, fy = x - x0, y - y0
  flat = img.reshape(b, h * w)
  at = lambda yy, xx: jnp.take_along_axis(flat, yy * w + xx, 1)
  top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
  bot = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
  return top * (1 - fy) + bot * fy


def descriptors(img: jax.Array, pts: jax.Array) -> jax.Array:
  """The SIFT-like descriptor (module docstring). img (B, R, R) grey, pts (B, P, 2) unit
  frame -> (B, P * 32)."""
  b, r, _ = img.shape
  p = pts.shape[1]
  pad = jnp.pad(img, ((0, 0), (1, 1), (1, 1)), mode="edge")
  gx = (pad[:, 1:-1, 2:] - pad[:, 1:-1, :-2]) / 2
  gy = (pad[:, 2:, 1:-1] - pad[:, :-2, 1:-1]) / 2
  step = WINDOW / GRID
  off = (jnp.arange(GRID, dtype=jnp.float32) - (GRID - 1) / 2) * step
  ox, oy = jnp.meshgrid(off, off)                                 # (G, G): x, y
  centre = pts * r - 0.5                                          # (B, P, 2) pixels
  xy = centre[:, :, None, None, :] + jnp.stack([ox, oy], -1)      # (B, P, G, G, 2)
  xy = xy.reshape(b, -1, 2)
  dx, dy = bilinear(gx, xy), bilinear(gy, xy)
  mag = jnp.sqrt(dx * dx + dy * dy + 1e-12)
  ang = jnp.mod(jnp.arctan2(dy, dx), 2 * jnp.pi) / (2 * jnp.pi) * BINS
  lo = jnp.floor(ang)
  frac = ang - lo
  lo = lo.astype(jnp.int32) % BINS
  hist = (jax.nn.one_hot(lo, BINS) * (mag * (1 - frac))[..., None]
          + jax.nn.one_hot((lo + 1) % BINS, BINS) * (mag * frac)[..., None])
  c = GRID // CELLS
  hist = hist.reshape(b, p, CELLS, c, CELLS, c, BINS).sum((3, 5))  # (B, P, 2, 2, 8)
  d = hist.reshape(b, p, -1)
  d = d / (jnp.linalg.norm(d, axis=-1, keepdims=True) + 1e-6)
  d = jnp.minimum(d, 0.2)
  d = d / (jnp.linalg.norm(d, axis=-1, keepdims=True) + 1e-6)
  return d.reshape(b, -1)


def _san_init(key, sizes: Sequence[int], out_bias: float, zero_out: bool, dtype):
  """A SAN's parameters {dense<i>: {kernel, bias}} for layer widths `sizes` (in ... out)."""
  params = {}
  keys = jax.random.split(key, len(sizes) - 1)
  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    last = i == len(sizes) - 2
    k = (jnp.zeros((a, b), dtype) if last and zero_out
         else nn.initializers.lecun_normal()(keys[i], (a, b), dtype))
    params[f"dense{i}"] = {"kernel": k, "bias": jnp.full((b,), out_bias if last else 0.0,
                                                          dtype)}
  return params


def _san_apply(params, x, dtype):
  n = len(params)
  for i in range(n):
    p = params[f"dense{i}"]
    x = jnp.dot(x.astype(dtype), p["kernel"].astype(dtype)) + p["bias"].astype(dtype)
    if i < n - 1:
      x = jax.nn.sigmoid(x)
  return x.astype(jnp.float32)


def _where(c, a, b):
  return jax.tree.map(lambda u, v: jnp.where(c, u, v), a, b)


class CFAN(nn.Module):
  """CFAN (module docstring). `num_stages` local SANs after the global one; `local_sizes`
  (default: evenly from 2 x input_size / 4 up to input_size, e.g. 56, 84, 112 at 112)."""
  num_points: int = 68
  input_size: int = 112
  global_size: int = 50
  num_stages: int = 3
  local_sizes: Sequence[int] = ()
  global_hidden: Sequence[int] = (1600, 900, 400)
  local_hidden: Sequence[int] = (1600, 900, 400)
  stage_steps: Sequence[int] = ()      # train steps per stage (global first); () = 1 each
  shape_noise: float = 0.0
  dtype: Any = None                    # compute dtype of the dense layers; None: float32
  param_dtype: Any = jnp.float32

  def sizes(self) -> list[int]:
    if self.local_sizes:
      if len(self.local_sizes) != self.num_stages:
        raise ValueError(f"CFAN: {len(self.local_sizes)} local_sizes for "
                         f"{self.num_stages} stages")
      return [int(s) for s in self.local_sizes]
    k = self.num_stages
    lo = self.input_size // 2
    return [int(round(lo + (self.input_size - lo) * i / max(k - 1, 1))) for i in range(k)]

  @nn.compact
  def __call__(self, x, train: bool = False):
    dt = self.dtype or jnp.float32
    p2 = 2 * self.num_points
    k = self.num_stages + 1
    steps = list(self.stage_steps) or [1] * k
    if len(steps) != k:
      raise ValueError(f"CFAN: stage_steps {tuple(steps)} for {k} stages (global + local)")
    ends = [sum(steps[:i + 1]) for i in range(k)]
    x = x.astype(jnp.float32)
    if x.shape[1] != self.input_size or x.shape[2] != self.input_size:
      x = jax.image.resize(x, (x.shape[0], self.input_size, self.input_size, x.shape[3]),
                           "bilinear")
    g = grey(x)
    b = g.shape[0]
    counter = self.variable("cfan", "step", lambda: jnp.zeros((), jnp.int32))
    s = counter.value
    init = self.is_initializing()

    def stage_params(j, name, sizes, out_bias, zero_out):
      p = self.param(name, lambda key: _san_init(key, sizes, out_bias, zero_out,
                                                 self.param_dtype))
      if j == k - 1:
        return p                     # the last stage is never frozen
      frozen = self.variable("cfan", name, lambda: jax.tree.map(jnp.zeros_like, p))
      if train:
        copy = _where(s == ends[j], p, frozen.value)   # first step after its phase
        if not init:
          frozen.value = copy
        return _where(s >= ends[j], jax.lax.stop_gradient(copy), p)
      return _where(s > ends[j], frozen.value, p)

    small = jax.image.resize(g, (b, self.global_size, self.global_size), "bilinear")
    small = small.reshape(b, -1)
    small = (small - small.mean(-1, keepdims=True)) / (small.std(-1, keepdims=True) + 1e-3)
    pg = stage_params(0, "global", [self.global_size ** 2, *self.global_hidden, p2], 0.5,
                      False)
    shape = _san_apply(pg, small, dt)
    outs = [shape]
    d_in = self.num_points * CELLS * CELLS * BINS
    active = jnp.searchsorted(jnp.array(ends), s, side="right")
    for i, r in enumerate(self.sizes()):
      j = i + 1
      start = jax.lax.stop_gradient(shape)
      if train and self.shape_noise > 0 and not init:
        noise = self.shape_noise * jax.random.normal(self.make_rng("noise"), start.shape)
        start = start + jnp.where(active == j, noise, 0.0)
      img = jax.image.resize(g, (b, r, r), "bilinear") if r != g.shape[1] else g
      feats = descriptors(img, start.reshape(b, self.num_points, 2))
      pl = stage_params(j, f"local{j}", [d_in, *self.local_hidden, p2], 0.0, True)
      shape = start + _san_apply(pl, feats, dt)
      outs.append(shape)
    stages = jnp.stack(outs)                                       # (K, B, 2P)
    if train:
      if not init:
        counter.value = s + 1
      pick = jnp.minimum(active, k - 1)
      return {"landmarks": jnp.take(stages, pick, 0),
              "stage": (pick + 1).astype(jnp.float32)}
    return {"landmarks": stages[-1], "stages": stages}


@register_model("cfan")
def cfan(**kw) -> CFAN:
  """CFAN: a global SAN on a 50 x 50 face and `num_stages` (3) local SANs on shape-indexed
  gradient-histogram descriptors; stage-wise training by `stage_steps`."""
  kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
  return CFAN(**kw)
