"""Unprocessing (Brooks et al. 2019) and the forward camera pipeline, vectorised in jax.numpy.

  meta = random_metadata(key, n)             a random camera per image (CCM, WB, brightening)
  bayer = unprocess(srgb, meta)              (N, H, W, 3) sRGB -> (N, H/2, W/2, 4) RGGB raw
  srgb2 = process(bayer, meta)               the forward pipeline: raw -> sRGB
  shot, read = random_noise_levels(key, n)   the paper's log-linear shot/read noise relation
  noisy = add_noise(key, bayer, shot, read)  heteroscedastic Gaussian: Var = shot * x + read
  x = low_light(key, bayer, ratio, shot, read)  a 1/ratio exposure, amplified by ratio (SID)

"Unprocessing Images for Learned Raw Denoising" (Brooks, Mildenhall, Xue, Chen, Sharlet,
Barron, CVPR 2019) inverts each step of a simple camera pipeline to turn an sRGB photo into
plausible raw sensor data, so a raw denoiser (here `sid_unet`, Chen et al. 2018) trains on
ordinary photos. The steps, in unprocessing order (each the inverse of a forward step):

  1. inverse tone map    x = 0.5 - sin(asin(1 - 2y) / 3): the exact inverse of the
                         smoothstep y = 3x^2 - 2x^3 on [0, 1] (the paper's "global tone
                         mapping" model of a camera's S-curve)
  2. inverse gamma       x^2.2 (the forward pipeline: max(x, 1e-8)^(1/2.2); the floor keeps
                         the gradient finite near 0)
  3. inverse colour      linear sRGB -> camera RGB with rgb2cam = normalise_rows(xyz2cam @
     correction          rgb2xyz); xyz2cam is a random convex combination of four cameras'
                         XYZ -> camera matrices (the numbers of the authors' released code,
                         google-research/unprocessing/unprocess.py: `XYZ2CAMS` below), each
                         row normalised to sum 1, so white maps to white (grey stays grey;
                         white balance is the gains' job). The forward pipeline applies the
                         inverse, cam2rgb.
  4. inverse white       gains (1/red, 1, 1/blue) / rgb_gain with red ~ U[1.9, 2.4], blue ~
     balance and gain    U[1.5, 1.9] (white balance) and rgb_gain = 1 / N(0.8, 0.1) (the
                         digital brightening a camera applies). Applied plainly, the inverse
                         gains (all < 1) would make saturated pixels grey-dim and the forward
                         gains could never bring them back to white; the paper's highlight-
                         preserving mask m = (max(grey - 0.9, 0) / 0.1)^2 (grey: the mean of
                         the three channels) moves the gain towards 1 near white:
                         safe = max(m + (1 - m) g, g). Then the values are clipped to [0, 1]
                         (a sensor saturates).
  5. mosaic              an RGGB Bayer pattern, packed as 4 half-resolution planes
                         (R at (0,0), G at (0,1), G at (1,0), B at (1,1) of each 2x2 block):
                         the layout `sid_unet` reads.

The forward pipeline `process` undoes them: white balance (and, with `brighten=True`, the
rgb_gain; the paper's own `process` leaves the brightening out because its network's output
and target are both raw), clip, bilinear demosaic, cam2rgb, clip, gamma 1/2.2, smoothstep.
Unprocess -> process returns the photo exactly (up to float rounding) wherever no value was
clipped and the highlight mask is 0, when the mosaic is skipped (`mosaic=False`); with the
mosaic the bilinear demosaic loses fine detail: on the embedded photos the round trip stays
within the tolerance stated in tests/denoise/test_raw.py.

Noise (the paper's section 3.2). Shot and read noise of a raw sensor as a heteroscedastic
Gaussian, y ~ N(x, shot * x + read) (shot: the variance per unit signal; read: the signal-
independent variance). The levels of real cameras lie along a line in log-log space; the
paper samples log(shot) ~ U[log 0.0001, log 0.012] and log(read) ~ N(2.18 log(shot) + 1.20,
0.26^2) (the released code's numbers). `random_noise_levels(min_shot, max_shot)` keeps the
relation and lets a config narrow the range.

Low light (SID, Chen et al. 2018). `low_light` simulates a capture 1/ratio as long: the
signal x / ratio gets the noise of that signal level, and the result is amplified by ratio
and clipped to [0, 1], as SID's input (`np.minimum(raw * ratio, 1)` after the black level):
Var(input) = ratio * shot * x + ratio^2 * read before clipping.

Everything is batched: metadata arrays have a leading image axis and broadcast over pixels,
so one call unprocesses a whole batch inside the jitted train step (no per-image Python).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# XYZ -> camera matrices of four cameras, from the authors' released code
# (google-research/unprocessing, unprocess.py, random_ccm).
XYZ2CAMS = np.array([
    [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
    [[0.4913, -0.0541, -0.0202], [-0.6130, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
    [[0.8380, -0.2630, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
    [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.0970, 0.1581, 0.5181]],
], np.float32)
# linear sRGB (D65) -> XYZ
RGB2XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                    [0.2126729, 0.7151522, 0.0721750],
                    [0.0193339, 0.1191920, 0.9503041]], np.float32)
RED_GAIN = (1.9, 2.4)
BLUE_GAIN = (1.5, 1.9)
BRIGHTEN_MEAN, BRIGHTEN_STD = 0.8, 0.1     # rgb_gain = 1 / N(0.8, 0.1)
SHOT_RANGE = (0.0001, 0.012)
READ_LINE = (2.18, 1.20)                   # log(read) = 2.18 log(shot) + 1.20 + N(0, 0.26^2)
READ_STD = 0.26
HIGHLIGHT = 0.9                            # the highlight mask's inflection


# ---------------------------------------------------------------- metadata
def random_ccm(key, n: int) -> jnp.ndarray:
  """(n, 3, 3) rgb2cam: a random convex combination of XYZ2CAMS, times RGB2XYZ, rows
  normalised to sum 1. The weights are uniform in [1e-8, 1e8] before normalising, as the
  released code draws them (so one camera usually dominates)."""
  w = jax.random.uniform(key, (n, len(XYZ2CAMS), 1, 1), jnp.float32, 1e-8, 1e8)
  xyz2cam = jnp.sum(w * jnp.asarray(XYZ2CAMS), axis=1) / jnp.sum(w, axis=1)
  rgb2cam = xyz2cam @ jnp.asarray(RGB2XYZ)
  return rgb2cam / jnp.sum(rgb2cam, axis=-1, keepdims=True)


def inv3(m):
  """(n, 3, 3) inverses by the adjugate (cofactors / determinant): a few multiply-adds,
  where jnp.linalg.inv's LU compiles for seconds on XLA:CPU. The row-normalised camera
  matrices are far from singular: |det| >= 0.24 at the four cameras and over 3 x 10^5
  random convex combinations of them (checked when this was written)."""
  a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
  d, e, f = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
  g, h, i = m[:, 2, 0], m[:, 2, 1], m[:, 2, 2]
  cof = jnp.stack([jnp.stack([e * i - f * h, c * h - b * i, b * f - c * e], -1),
                   jnp.stack([f * g - d * i, a * i - c * g, c * d - a * f], -1),
                   jnp.stack([d * h - e * g, b * g - a * h, a * e - b * d], -1)], -2)
  det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
  return cof / det[:, None, None]


def random_metadata(key, n: int) -> dict:
  """A random camera per image: {"rgb2cam", "cam2rgb" (n, 3, 3), "rgb_gain", "red_gain",
  "blue_gain" (n,)}; the distributions of the paper (module docstring)."""
  k1, k2, k3, k4 = jax.random.split(key, 4)
  rgb2cam = random_ccm(k1, n)
  return {"rgb2cam": rgb2cam, "cam2rgb": inv3(rgb2cam),
          "rgb_gain": 1.0 / (BRIGHTEN_MEAN + BRIGHTEN_STD * jax.random.normal(k2, (n,))),
          "red_gain": jax.random.uniform(k3, (n,), jnp.float32, *RED_GAIN),
          "blue_gain": jax.random.uniform(k4, (n,), jnp.float32, *BLUE_GAIN)}


def _b(v):
  """(n,) -> (n, 1, 1, 1): a per-image value broadcast over pixels and channels."""
  return jnp.reshape(v, (-1, 1, 1, 1))


# ---------------------------------------------------------------- the steps and inverses
def smoothstep(x):
  return 3.0 * x * x - 2.0 * x * x * x


def inverse_smoothstep(y):
  y = jnp.clip(y, 0.0, 1.0)
  return 0.5 - jnp.sin(jnp.arcsin(1.0 - 2.0 * y) / 3.0)


def gamma_expansion(x, gamma: float = 2.2):
  return jnp.maximum(x, 1e-8) ** gamma


def gamma_compression(x, gamma: float = 2.2):
  return jnp.maximum(x, 1e-8) ** (1.0 / gamma)


def apply_ccm(image, ccm):
  """(N, H, W, 3) @ (N, 3, 3)^T per pixel: out_i = sum_j ccm[i, j] * in_j. Written as a
  broadcast multiply-add (an einsum over a 3-vector is slower on XLA:CPU)."""
  c = ccm[:, None, None, :, :]
  return jnp.sum(image[..., None, :] * c, axis=-1)


def safe_invert_gains(image, meta):
  """The inverse white balance and brightening with the highlight-preserving mask."""
  one = jnp.ones_like(meta["red_gain"])
  gains = jnp.stack([1.0 / meta["red_gain"], one, 1.0 / meta["blue_gain"]], -1)
  gains = (gains / meta["rgb_gain"][:, None])[:, None, None, :]
  grey = jnp.mean(image, axis=-1, keepdims=True)
  mask = (jnp.maximum(grey - HIGHLIGHT, 0.0) / (1.0 - HIGHLIGHT)) ** 2
  return image * jnp.maximum(mask + (1.0 - mask) * gains, gains)


def highlight_mask(srgb, meta):
  """(N, H, W, 1) bool: where unprocessing is lossy (the highlight mask > 0, a raw value
  clipped at 0 or 1, or a saturated sRGB value); elsewhere unprocess -> process (without
  the mosaic) is the identity up to float rounding."""
  lin = apply_ccm(gamma_expansion(inverse_smoothstep(srgb)), meta["rgb2cam"])
  grey = jnp.mean(lin, axis=-1, keepdims=True)
  raw = safe_invert_gains(lin, meta)
  clipped = jnp.any((raw < 0.0) | (raw > 1.0), axis=-1, keepdims=True)
  return (grey > HIGHLIGHT) | clipped | jnp.any(srgb >= 1.0, axis=-1, keepdims=True)


def mosaic(image):
  """(N, H, W, 3) -> (N, H/2, W/2, 4) packed RGGB (H, W even)."""
  return jnp.stack([image[:, 0::2, 0::2, 0], image[:, 0::2, 1::2, 1],
                    image[:, 1::2, 0::2, 1], image[:, 1::2, 1::2, 2]], axis=-1)


def _sum3x3(x, k, xp=jnp):
  """3x3 correlation of (N, H, W) with the 3x3 numpy kernel k, zero outside the image
  (xp=np for constants: under jit a jnp expression would be traced)."""
  h, w = x.shape[1:]
  p = xp.pad(x, ((0, 0), (1, 1), (1, 1)))
  return sum(float(k[i, j]) * p[:, i:i + h, j:j + w]
             for i in range(3) for j in range(3) if k[i, j])


def demosaic(bayer):
  """Bilinear demosaic of packed RGGB (N, h, w, 4) -> (N, 2h, 2w, 3).

  Each colour's samples are laid on the full-resolution grid (zeros elsewhere) and
  interpolated by normalised convolution: out = (k * (v m)) / (k * m), with the bilinear
  kernels [1 2 1; 2 4 2; 1 2 1] for red and blue (a quarter of the sites) and
  [0 1 0; 1 4 1; 0 1 0] for green (half of them), m the sampling mask. Inside the image
  this is the textbook bilinear demosaic (the mean of the 2 or 4 nearest samples; a sample
  site keeps its value); at the border the missing neighbours drop out of both sums
  instead of counting as zeros."""
  n, h, w, _ = bayer.shape
  H, W = 2 * h, 2 * w

  def place(plane, dy, dx):  # interleave with zeros: (n, h, w) -> (n, 2h, 2w)
    z = jnp.zeros_like(plane)
    sites = [plane if (i, j) == (dy, dx) else z for i in (0, 1) for j in (0, 1)]
    s = jnp.stack(sites, -1).reshape(n, h, w, 2, 2)
    return s.transpose(0, 1, 3, 2, 4).reshape(n, H, W)

  def mask(sites):
    m = np.zeros((H, W), np.float32)
    for dy, dx in sites:
      m[dy::2, dx::2] = 1.0
    return m

  k_rb = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32)
  k_g = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32)
  out = []
  for vals, sites, k in (
      (place(bayer[..., 0], 0, 0), [(0, 0)], k_rb),
      (place(bayer[..., 1], 0, 1) + place(bayer[..., 2], 1, 0), [(0, 1), (1, 0)], k_g),
      (place(bayer[..., 3], 1, 1), [(1, 1)], k_rb)):
    m = mask(sites)
    den = _sum3x3(m[None], k, np)  # a constant of the image size
    out.append(_sum3x3(vals, k) / den)
  return jnp.stack(out, axis=-1)


def apply_gains(bayer, meta, brighten: bool = True):
  """White balance (red, 1, 1, blue) of packed RGGB, times rgb_gain when `brighten`."""
  one = jnp.ones_like(meta["red_gain"])
  g = jnp.stack([meta["red_gain"], one, one, meta["blue_gain"]], -1)
  if brighten:
    g = g * meta["rgb_gain"][:, None]
  return bayer * g[:, None, None, :]


# ---------------------------------------------------------------- the two pipelines
def unprocess(srgb, meta, *, do_mosaic: bool = True):
  """sRGB (N, H, W, 3) in [0, 1] -> raw: packed RGGB (N, H/2, W/2, 4) (H, W even), or the
  camera-RGB image before the mosaic (N, H, W, 3) with do_mosaic=False."""
  x = gamma_expansion(inverse_smoothstep(jnp.asarray(srgb, jnp.float32)))
  x = apply_ccm(x, meta["rgb2cam"])
  x = jnp.clip(safe_invert_gains(x, meta), 0.0, 1.0)
  return mosaic(x) if do_mosaic else x


def process(raw, meta, *, brighten: bool = True, tone: bool = True):
  """The forward pipeline: packed RGGB (N, h, w, 4) -> sRGB (N, 2h, 2w, 3), or a camera-
  RGB image (N, H, W, 3) (no demosaic) -> sRGB. White balance (and brightening), clip,
  bilinear demosaic, cam2rgb, clip, gamma, smoothstep tone curve (`tone`)."""
  raw = jnp.asarray(raw, jnp.float32)
  if raw.shape[-1] == 4:
    x = demosaic(jnp.clip(apply_gains(raw, meta, brighten), 0.0, 1.0))
  else:
    one = jnp.ones_like(meta["red_gain"])
    g = jnp.stack([meta["red_gain"], one, meta["blue_gain"]], -1)
    if brighten:
      g = g * meta["rgb_gain"][:, None]
    x = jnp.clip(raw * g[:, None, None, :], 0.0, 1.0)
  x = jnp.clip(apply_ccm(x, meta["cam2rgb"]), 0.0, 1.0)
  x = gamma_compression(x)
  return smoothstep(x) if tone else x


# ---------------------------------------------------------------- noise
def random_noise_levels(key, n: int, min_shot: float = SHOT_RANGE[0],
                        max_shot: float = SHOT_RANGE[1]):
  """(shot, read) (n,) each: log shot ~ U[log min, log max], log read ~ N(2.18 log shot +
  1.20, 0.26^2) (variances on the [0, 1] raw scale)."""
  k1, k2 = jax.random.split(key)
  log_shot = jax.random.uniform(k1, (n,), jnp.float32, np.log(min_shot), np.log(max_shot))
  log_read = READ_LINE[0] * log_shot + READ_LINE[1] + READ_STD * jax.random.normal(k2, (n,))
  return jnp.exp(log_shot), jnp.exp(log_read)


def add_noise(key, raw, shot, read):
  """raw + N(0, shot * raw + read), per image levels (n,) (the paper's add_noise; the
  variance uses max(raw, 0) so a negative value never takes a square root)."""
  var = _b(shot) * jnp.maximum(raw, 0.0) + _b(read)
  return raw + jnp.sqrt(var) * jax.random.normal(key, raw.shape, jnp.float32)


def low_light(key, raw, ratio, shot, read):
  """SID's input: a 1/ratio exposure with sensor noise, amplified by ratio, clipped to
  [0, 1]. `ratio` a scalar or (n,)."""
  r = _b(jnp.broadcast_to(jnp.asarray(ratio, jnp.float32), (raw.shape[0],)))
  dark = add_noise(key, raw / r, shot, read)
  return jnp.clip(dark * r, 0.0, 1.0)
