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

Stage-wise training inside one run (the model counts train steps in its "cfan" collection,
which the trainer carries as model state and checkpoints): stage j's phase is
`pretrain_steps` x (its hidden layers) auto-encoder steps (below; none by default), then
`stage_steps[j]` supervised steps (global first). At train step s the active stage is the
first whose cumulative end exceeds s; "landmarks" is then that stage's output, so the loss
trains it alone; earlier stages' outputs enter it through stop_gradient. `shape_noise` (std
in the unit frame, training only, rng "noise") perturbs the shape the active local stage
starts from (in its pre-training too), so that it learns to correct errors larger than the
(over-fitted) previous stage makes on the training faces.

Freezing a finished stage: only the active stage's output reaches the loss (the later
stages see its shape through stop_gradient), so a finished stage's gradient is exactly zero;
but Adam's momentum would still move it (its first moment decays after the stage's last
gradient, it does not vanish), and so would weight decay. The landmarks task therefore
chains the trainer's optimiser with `freeze_untrained`, which zeroes the update of every
layer `trainable` says is not training at the step: a finished stage's "params" entry stays
bit-identical to what its phase left, under any optimiser, and it is the one copy.
(Workdirs written before this kept a frozen copy of every finished stage in the "cfan"
collection next to a drifted "params" entry; at inference the copy, when present, is still
what the network uses, so they predict the same points.)

Auto-encoder pre-training (`pretrain_steps` > 0; the paper's layer-wise pre-training of
each SAN): at the start of stage j's phase, each of its sigmoid hidden layers l in turn is
trained for `pretrain_steps` steps as a denoising auto-encoder of its own input, the
stage's input (the standardised 50 x 50 global face, or the descriptors at the previous
stage's shapes) mapped through the layers below, which stay fixed (stop_gradient; greedy).
Masking noise (Vincent et al. 2008): a fraction `pretrain_mask` of the input values, drawn
afresh each step from rng "noise", is set to 0 (for the standardised face, its mean); the
clean input is the target. Tied weights: h = sigmoid(W^T x~ + b), x^ = W h + c with the
encoder's own W, so the decoder owns no weights; its bias c is not stored either: the
squared error is minimised over c in closed form on every batch (c = the batch's mean
residual), and by the envelope theorem the gradient in W and b of that minimum is the
gradient at the optimal c. The reconstruction is linear at every layer (the first layer's
inputs are not in [0, 1]; the same form for the others), the error the mean square per
value ("ae_loss" in the outputs and the training metrics; 0 outside pre-training). The
layers' encoder weights are then what the supervised phase fine-tunes (the whole stage,
output layer included: it stays at its init during pre-training). Nothing of the decoder
enters the checkpoint: params and model state are those of pretrain_steps=0.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

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


def _san_apply(params, x, dtype, acts: list | None = None):
  """The SAN's output; `acts`, when given, receives every dense layer's input (float32)."""
  n = len(params)
  for i in range(n):
    if acts is not None:
      acts.append(x.astype(jnp.float32))
    p = params[f"dense{i}"]
    x = jnp.dot(x.astype(dtype), p["kernel"].astype(dtype)) + p["bias"].astype(dtype)
    if i < n - 1:
      x = jax.nn.sigmoid(x)
  return x.astype(jnp.float32)


def dae_loss(p, x, key, mask: float, dtype=jnp.float32):
  """The denoising auto-encoder loss of one sigmoid layer p = {kernel (n, m), bias (m)} on
  its inputs x (B, n) (module docstring): masking noise of fraction `mask`, tied decoder,
  decoder bias at its per-batch least-squares optimum; the mean squared error per value."""
  x = jax.lax.stop_gradient(x.astype(jnp.float32))
  keep = jax.random.bernoulli(key, 1.0 - mask, x.shape)
  w = p["kernel"].astype(dtype)
  h = jax.nn.sigmoid(jnp.dot(jnp.where(keep, x, 0.0).astype(dtype), w)
                     + p["bias"].astype(dtype))
  r = x - jnp.dot(h, w.T).astype(jnp.float32)
  r = r - r.mean(0, keepdims=True)       # x^ = W h + c with c = the mean residual
  return jnp.mean(r * r)


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
  stage_steps: Sequence[int] = ()      # supervised steps per stage (global first); () = 1 each
  shape_noise: float = 0.0
  pretrain_steps: int = 0              # auto-encoder steps per hidden layer, at each stage
  pretrain_mask: float = 0.25          # masking-noise fraction of those auto-encoders
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

  def schedule(self) -> list[tuple[int, int]]:
    """(pre-training steps, supervised steps) of every stage's phase, global first."""
    k = self.num_stages + 1
    steps = list(self.stage_steps) or [1] * k
    if len(steps) != k:
      raise ValueError(f"CFAN: stage_steps {tuple(steps)} for {k} stages (global + local)")
    layers = [len(self.global_hidden)] + [len(self.local_hidden)] * self.num_stages
    return [(int(self.pretrain_steps) * n, int(t)) for n, t in zip(layers, steps)]

  @nn.compact
  def __call__(self, x, train: bool = False):
    dt = self.dtype or jnp.float32
    p2 = 2 * self.num_points
    phases = self.schedule()
    k = len(phases)
    ends = [sum(a + b for a, b in phases[:i + 1]) for i in range(k)]
    x = x.astype(jnp.float32)
    if x.shape[1] != self.input_size or x.shape[2] != self.input_size:
      x = jax.image.resize(x, (x.shape[0], self.input_size, self.input_size, x.shape[3]),
                           "bilinear")
    g = grey(x)
    b = g.shape[0]
    counter = self.variable("cfan", "step", lambda: jnp.zeros((), jnp.int32))
    s = counter.value
    init = self.is_initializing()
    active = jnp.searchsorted(jnp.array(ends), s, side="right")

    def stage_params(j, name, sizes, out_bias, zero_out):
      p = self.param(name, lambda key: _san_init(key, sizes, out_bias, zero_out,
                                                 self.param_dtype))
      if not train and not init and j < k - 1 and self.has_variable("cfan", name):
        # a workdir of the earlier layout: its frozen copy, not the drifted params entry
        return _where(s > ends[j], self.get_variable("cfan", name), p)
      return p

    small = jax.image.resize(g, (b, self.global_size, self.global_size), "bilinear")
    small = small.reshape(b, -1)
    small = (small - small.mean(-1, keepdims=True)) / (small.std(-1, keepdims=True) + 1e-3)
    pg = stage_params(0, "global", [self.global_size ** 2, *self.global_hidden, p2], 0.5,
                      False)
    acts = [[]]                      # every stage's dense-layer inputs (pre-training)
    shape = _san_apply(pg, small, dt, acts[0])
    sans = [pg]
    outs = [shape]
    d_in = self.num_points * CELLS * CELLS * BINS
    for i, r in enumerate(self.sizes()):
      j = i + 1
      start = jax.lax.stop_gradient(shape)
      if train and self.shape_noise > 0 and not init:
        noise = self.shape_noise * jax.random.normal(self.make_rng("noise"), start.shape)
        start = start + jnp.where(active == j, noise, 0.0)
      img = jax.image.resize(g, (b, r, r), "bilinear") if r != g.shape[1] else g
      feats = descriptors(img, start.reshape(b, self.num_points, 2))
      pl = stage_params(j, f"local{j}", [d_in, *self.local_hidden, p2], 0.0, True)
      acts.append([])
      shape = start + _san_apply(pl, feats, dt, acts[-1])
      sans.append(pl)
      outs.append(shape)
    stages = jnp.stack(outs)                                       # (K, B, 2P)
    if not train:
      return {"landmarks": stages[-1], "stages": stages}
    if not init:
      counter.value = s + 1
    pick = jnp.minimum(active, k - 1)
    out = {"landmarks": jnp.take(stages, pick, 0), "stage": (pick + 1).astype(jnp.float32)}
    if self.pretrain_steps > 0:
      out.update(self._pretraining(s, ends, phases, sans, acts, init, dt))
    return out

  def _pretraining(self, s, ends, phases, sans, acts, init, dt):
    """{"ae_loss", "pretraining"}: the auto-encoder loss of the layer that step s
    pre-trains (module docstring), computed for that one layer (lax.switch), else 0."""
    n = int(self.pretrain_steps)
    key = jax.random.key(0) if init else self.make_rng("noise")
    branches, idx = [lambda: jnp.zeros((), jnp.float32)], jnp.zeros((), jnp.int32)
    for j, (pre, _) in enumerate(phases):
      begin = ends[j] - sum(phases[j])
      for l in range(pre // n):
        branches.append(lambda j=j, l=l: dae_loss(
            sans[j][f"dense{l}"], acts[j][l], key, self.pretrain_mask, dt))
        lo = begin + l * n
        idx = jnp.where((s >= lo) & (s < lo + n), len(branches) - 1, idx)
    loss = jax.lax.switch(idx, branches)
    return {"ae_loss": loss, "pretraining": idx > 0}


class FreezeState(NamedTuple):
  count: jax.Array  # train steps taken (the model's "cfan"/"step" counts the same steps)


def trainable(model: "CFAN", step) -> dict[str, dict[str, jax.Array]]:
  """{stage: {dense layer: bool}}: which of `model`'s layers train at train step `step`.

  The schedule of `CFAN.schedule()`: in stage j's phase, its pre-training steps train one
  hidden layer at a time (the greedy auto-encoders), its supervised steps the whole
  stage; every other stage, finished or not begun, stays as it is. Past the schedule's
  end the last stage goes on training, as the model's forward pass does."""
  phases = model.schedule()
  hidden = [len(model.global_hidden)] + [len(model.local_hidden)] * model.num_stages
  names = ["global"] + [f"local{j}" for j in range(1, model.num_stages + 1)]
  n = max(int(model.pretrain_steps), 1)
  out, begin = {}, 0
  for j, ((pre, sup), layers, name) in enumerate(zip(phases, hidden, names)):
    last = j == len(phases) - 1
    pre_on = (step >= begin) & (step < begin + pre)
    sup_on = (step >= begin + pre) & ((step < begin + pre + sup) | last)
    out[name] = {f"dense{l}": (sup_on | (pre_on & ((step - begin) // n == l))
                               if l < layers else sup_on)
                 for l in range(layers + 1)}
    begin += pre + sup
  return out


def freeze_untrained(model: "CFAN"):
  """An optax transformation, chained after the optimiser, that zeroes the update of every
  layer `trainable` says is not training at this step: a finished stage (and, during
  pre-training, every layer but the one pre-trained) keeps its weights bit for bit
  whatever the optimiser (Adam's momentum would keep moving them: its first moment decays
  after the stage's last gradient, it does not vanish; so would weight decay)."""
  import optax  # (training only: the models module stays free of it)

  def init(params):
    del params
    return FreezeState(jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    del params
    on = trainable(model, state.count)
    frozen = {k: ({m: jax.tree.map(lambda u, m=m, k=k: jnp.where(on[k][m], u, jnp.zeros_like(u)),
                                   v) for m, v in sub.items()} if k in on else sub)
              for k, sub in updates.items()}
    return frozen, FreezeState(state.count + 1)

  return optax.GradientTransformation(init, update)


@register_model("cfan")
def cfan(**kw) -> CFAN:
  """CFAN: a global SAN on a 50 x 50 face and `num_stages` (3) local SANs on shape-indexed
  gradient-histogram descriptors; stage-wise training by `stage_steps`, each stage's hidden
  layers pre-trained as denoising auto-encoders for `pretrain_steps` each (0: none)."""
  kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
  return CFAN(**kw)
