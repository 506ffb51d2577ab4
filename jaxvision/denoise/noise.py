"""Noise models of the Noise2Noise set, vectorised in jax.numpy over a batch.

  spec = parse("gaussian:25")          sigma 25 (8-bit units), one level
  spec = parse("gaussian:0-50")        sigma drawn per image, uniform in [0, 50] (N2N training)
  spec = parse("poisson:30")           peak: photons at value 1 (N2N's lambda; test 30)
  spec = parse("poisson_gaussian:30,10")  Poisson(peak) then Gaussian(sigma), signal-dependent
  spec = parse("bernoulli:0.5")        pixels dropped (set to 0) with probability p
  spec = parse("impulse:0.5")          pixels replaced by a uniform random colour with prob. p
  spec = parse("text:0.25")            words of random colour cover ~p of the image (N2N's text)
  y = apply(spec, key, x)              x: (N, H, W, C) float in [0, 1]; y: same shape

Every parameter may be a range "lo-hi": each image of the batch draws its own value,
uniformly (the "blind" training of Noise2Noise / DnCNN-B). Values are in the units the
papers quote: sigma in 8-bit levels (sigma=25 means 25/255 on [0, 1] images), peak in
photons at full scale, rates in [0, 1].

Where the noise is drawn. The noise is applied on the device inside the jitted train step
(`jaxvision.denoise.task`), the last stage of the input pipeline, with the step's PRNG key:
the grain workers deliver clean crops, every step sees a fresh draw (never the same noisy
copy twice, as Noise2Noise needs), and no noisy copy is stored. Evaluation uses a fixed key
per image (`eval_key`), so every evaluation of every model sees the same noisy inputs.

Stated statistics (tested with hypothesis in tests/denoise/test_noise.py):
  gaussian          E[y] = x, Var[y] = (sigma/255)^2
  poisson           y = Poisson(peak * x) / peak: E[y] = x, Var[y] = x / peak
  poisson_gaussian  E[y] = x, Var[y] = x / peak + (sigma/255)^2
  bernoulli         y = 0 with probability p (all channels of a pixel together), else x
  impulse           y = u ~ U[0, 1]^C with probability p, else x
  text              a pixel is covered with probability p * fill (fill: the font's ink share)
No clipping (the papers add unclipped noise); `clip=True` gives what an 8-bit file would
hold, clipped to [0, 1].

Text overlay: the Noise2Noise paper draws random strings of random size and colour at random
places. Drawing with a font rasteriser per image cannot run under jit, so the glyphs come
from an atlas rendered once (Pillow's built-in bitmap font, 6x11 pixels, identical on every
machine) and are laid on a character grid: each grid row is cut into words of `WORD` cells,
a word is shown with probability p, each cell picks a random glyph, each word a random
colour, and the grid is shifted by a random offset and scaled by an integer factor. Covered
pixels take the word's colour (opaque text, as the paper's).
"""
from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("gaussian", "poisson", "poisson_gaussian", "bernoulli", "impulse", "text")
_NPARAMS = {"gaussian": 1, "poisson": 1, "poisson_gaussian": 2, "bernoulli": 1, "impulse": 1,
            "text": 1}
WORD = 6           # grid cells per word of the text overlay
CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
  """A noise model: its kind and, per parameter, a (lo, hi) range (lo == hi: fixed)."""
  kind: str
  params: tuple[tuple[float, float], ...]
  text_scale: int = 1   # integer glyph magnification of the text overlay

  def __str__(self) -> str:
    def one(lo, hi):
      return f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"
    return f"{self.kind}:" + ",".join(one(*p) for p in self.params)

  @property
  def fixed(self) -> bool:
    return all(lo == hi for lo, hi in self.params)


def parse(text: str) -> NoiseSpec:
  """'kind:v[,v2]' with each v a number or a range 'lo-hi'; raises ValueError naming the fault."""
  if isinstance(text, NoiseSpec):
    return text
  m = re.fullmatch(r"\s*([a-z_]+)\s*(?::\s*(.*))?", str(text))
  if not m or m.group(1) not in KINDS:
    raise ValueError(f"noise {text!r}: unknown kind; choose from {', '.join(KINDS)} "
                     "(e.g. gaussian:25, gaussian:0-50, poisson:30, impulse:0.5, text:0.25)")
  kind, rest = m.group(1), (m.group(2) or "").strip()
  if not rest:
    raise ValueError(f"noise {text!r}: give its level, e.g. {kind}:"
                     f"{ {'gaussian': '25', 'poisson': '30', 'poisson_gaussian': '30,10'}.get(kind, '0.5')}")
  params = []
  for part in rest.split(","):
    r = re.fullmatch(r"\s*([0-9.eE+]+)\s*(?:-\s*([0-9.eE+]+))?\s*", part)
    try:
      lo = float(r.group(1))
      hi = float(r.group(2)) if r.group(2) else lo
    except (AttributeError, ValueError):
      raise ValueError(f"noise {text!r}: {part!r} is not a number or a range lo-hi") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo or lo < 0:
      raise ValueError(f"noise {text!r}: {part!r} must be a non-negative number or range lo-hi")
    params.append((lo, hi))
  if len(params) != _NPARAMS[kind]:
    raise ValueError(f"noise {text!r}: {kind} takes {_NPARAMS[kind]} value(s), got {len(params)}")
  if kind in ("bernoulli", "impulse", "text") and params[0][1] > 1:
    raise ValueError(f"noise {text!r}: the rate must be in [0, 1]")
  if kind in ("poisson", "poisson_gaussian") and params[0][0] <= 0:
    raise ValueError(f"noise {text!r}: the peak (photons at value 1) must be > 0")
  return NoiseSpec(kind, tuple(params))


def _draw(key, n: int, lo_hi) -> jnp.ndarray:
  """(n, 1, 1, 1) per-image values, uniform in [lo, hi] (exactly lo when fixed)."""
  lo, hi = lo_hi
  if lo == hi:
    return jnp.full((n, 1, 1, 1), lo, jnp.float32)
  return jax.random.uniform(key, (n, 1, 1, 1), jnp.float32, lo, hi)


# ---------------------------------------------------------------- the models
def gaussian(key, x, sigma):
  """x + N(0, (sigma/255)^2); sigma a scalar or (N, 1, 1, 1) in 8-bit levels."""
  return x + jnp.asarray(sigma, jnp.float32) / 255.0 * jax.random.normal(key, x.shape, x.dtype)


def poisson(key, x, peak):
  """Poisson(peak * x) / peak: photon shot noise, variance x / peak (signal-dependent)."""
  peak = jnp.asarray(peak, jnp.float32)
  lam = jnp.maximum(x, 0.0) * peak
  # jax's Poisson sampler takes threefry keys only: one is made from the key's bits, so the
  # noise works whatever PRNG implementation the program uses (rbg in the tests).
  tkey = jax.random.wrap_key_data(jax.random.bits(key, (2,), jnp.uint32), impl="threefry2x32")
  return jax.random.poisson(tkey, lam, x.shape).astype(jnp.float32) / peak


def poisson_gaussian(key, x, peak, sigma):
  """Shot noise then read noise: Var = x / peak + (sigma/255)^2 (a raw sensor's model)."""
  k1, k2 = jax.random.split(key)
  return gaussian(k2, poisson(k1, x, peak), sigma)


def bernoulli(key, x, p):
  """Each pixel (all its channels) dropped to 0 with probability p."""
  keep = jax.random.uniform(key, x.shape[:-1] + (1,)) >= jnp.asarray(p, jnp.float32)
  return jnp.where(keep, x, 0.0)


def impulse(key, x, p):
  """Random-valued impulse noise: each pixel replaced, with probability p, by a colour
  uniform in [0, 1]^C (N2N section 3.3); the others keep their values."""
  k1, k2 = jax.random.split(key)
  hit = jax.random.uniform(k1, x.shape[:-1] + (1,)) < jnp.asarray(p, jnp.float32)
  return jnp.where(hit, jax.random.uniform(k2, x.shape, x.dtype), x)


@functools.lru_cache(maxsize=1)
def glyph_atlas() -> np.ndarray:
  """(len(CHARS), 11, 6) bool: Pillow's built-in bitmap font (the same on every machine)."""
  from PIL import Image, ImageDraw, ImageFont
  font = ImageFont.load_default_imagefont()
  out = []
  for ch in CHARS:
    im = Image.new("L", (6, 11), 0)
    ImageDraw.Draw(im).text((0, 0), ch, fill=255, font=font)
    out.append(np.asarray(im) > 127)
  return np.stack(out)


def text_fill() -> float:
  """The share of a glyph cell's pixels that are ink (the coverage of a fully shown word)."""
  return float(glyph_atlas().mean())


def text(key, x, p, scale: int = 1):
  """Opaque words of random colour at random places; a word is shown with probability p,
  so a pixel is covered with probability p * text_fill() (see the module docstring)."""
  atlas = jnp.asarray(glyph_atlas(), jnp.float32)
  k_chars, gh, gw = atlas.shape
  n, h, w, c = x.shape
  gh_s, gw_s = gh * scale, gw * scale
  rows, words = -(-h // gh_s) + 1, -(-w // (gw_s * WORD)) + 1
  cols = words * WORD
  k1, k2, k3, k4 = jax.random.split(key, 4)
  shown = jax.random.uniform(k1, (n, rows, words)) < jnp.reshape(
      jnp.asarray(p, jnp.float32), (-1, 1, 1))
  colour = jax.random.uniform(k2, (n, rows, words, c))
  ids = jax.random.randint(k3, (n, rows, cols), 0, k_chars)
  ink = atlas[ids] * jnp.repeat(shown, WORD, axis=2)[..., None, None]  # (n, r, cols, gh, gw)
  ink = ink.transpose(0, 1, 3, 2, 4).reshape(n, rows * gh, cols * gw)
  col = jnp.repeat(jnp.repeat(jnp.repeat(colour, WORD, axis=2), gh, axis=1), gw, axis=2)
  if scale > 1:
    ink = jnp.repeat(jnp.repeat(ink, scale, axis=1), scale, axis=2)
    col = jnp.repeat(jnp.repeat(col, scale, axis=1), scale, axis=2)
  off = jax.random.randint(k4, (n, 2), 0, jnp.array([gh_s, gw_s * WORD]))

  def crop(a, o):
    return jax.lax.dynamic_slice(a, (o[0], o[1]) + (0,) * (a.ndim - 2), (h, w) + a.shape[2:])

  ink = jax.vmap(crop)(ink, off)[..., None]
  col = jax.vmap(crop)(col, off)
  return jnp.where(ink > 0, col, x)


def apply(spec: NoiseSpec | str, key, x, *, clip: bool = False):
  """The noisy copy of x (N, H, W, C) in [0, 1] under `spec`; per-image levels for ranges."""
  spec = parse(spec)
  x = jnp.asarray(x, jnp.float32)
  n = x.shape[0]
  kp, kn = jax.random.split(key)
  vals = [_draw(k, n, lh) for k, lh in zip(jax.random.split(kp, len(spec.params)), spec.params)]
  if spec.kind == "gaussian":
    y = gaussian(kn, x, vals[0])
  elif spec.kind == "poisson":
    y = poisson(kn, x, vals[0])
  elif spec.kind == "poisson_gaussian":
    y = poisson_gaussian(kn, x, vals[0], vals[1])
  elif spec.kind == "bernoulli":
    y = bernoulli(kn, x, vals[0])
  elif spec.kind == "impulse":
    y = impulse(kn, x, vals[0])
  else:
    y = text(kn, x, vals[0].reshape(n), spec.text_scale)
  return jnp.clip(y, 0.0, 1.0) if clip else y


def eval_key(index, salt: int = 0):
  """The fixed key of evaluation image `index` (the same noisy input for every model)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(20170710), salt), index)


def add_noise_numpy(spec, image: np.ndarray, seed: int = 0, *, clip: bool = True) -> np.ndarray:
  """Host helper: one (H, W, C) float image in [0, 1] -> its noisy copy (numpy), drawn with
  `eval_key(seed)` (for the CLI, benchmarks and the baselines' table)."""
  y = apply(spec, eval_key(seed), np.asarray(image, np.float32)[None], clip=clip)
  return np.asarray(y[0])
