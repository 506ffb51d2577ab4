"""Wavelet denoising without PyWavelets: BayesShrink soft thresholding over an orthogonal DWT.

  coeffs = dwt2(image, levels, "db2")        a multi-level 2-D transform of (H, W) (H, W
                                             multiples of 2**levels)
  image = idwt2(coeffs, "db2")               its exact inverse (orthogonal: the transpose)
  y = denoise_wavelet(noisy)                 (H, W[, 3]) -> denoised, BayesShrink, soft

Why it is written here. scikit-image's `denoise_wavelet` (the issue's "wavelet" baseline)
needs PyWavelets, which the main environment does not have; the transform it uses is small
enough to write out. This module reproduces its method (Chang, Yu & Vetterli 2000,
"Adaptive wavelet thresholding for image denoising and compression", BayesShrink), with
scikit-image's defaults where they apply:

Transform. The separable 2-D DWT with an orthogonal filter pair: low-pass h (the taps in
`FILTERS`) and high-pass g[k] = (-1)^k h[L-1-k]; one level filters the rows and then the
columns and keeps every second sample: a = (h, h), and the details (h, g), (g, h), (g, g).
Periodic extension (indices taken modulo the side), so for an even side N >= L the
analysis is an orthogonal N x N matrix and the synthesis is its transpose: `idwt2(dwt2(x))`
is x up to float rounding (tested), and white noise of variance sigma^2 stays white with
the same variance in every subband (which is what makes one threshold rule per subband
meaningful). Images are first mirrored by `MARGIN` pixels on each side and up to a
multiple of 2**levels, so the periodic wrap joins mirrored copies (no artificial edge at
the border), and the margin is cropped again.
  haar   h = (1, 1) / sqrt(2)                                 (scikit-image's default 'db1')
  db2    h = (1 + sqrt3, 3 + sqrt3, 3 - sqrt3, 1 - sqrt3) / (4 sqrt2)   (Daubechies, 2 vanishing
         moments: smooth ramps give no detail coefficients)

Levels. scikit-image's default: the maximum level for the smaller side,
floor(log2(min(H, W) / (L - 1))), minus 3, at least 1.

Noise level. Donoho & Johnstone's robust estimate from the finest diagonal (g, g) band:
sigma = median(|d|) / 0.6745 (image content hardly reaches that band; a Gaussian's median
absolute value is 0.6745 sigma), per channel, as scikit-image estimates it (with db2).

Threshold (BayesShrink). For each detail subband d with mean square sigma_y^2 = mean(d^2):
the signal's standard deviation is sigma_x = sqrt(max(sigma_y^2 - sigma^2, 0)) and the
threshold T = sigma^2 / sigma_x (the minimiser of the Bayes risk of soft thresholding for
a generalised-Gaussian prior, to a good approximation); a subband with sigma_x = 0 is noise
only and T is infinite (scikit-image uses sqrt(eps) there: the same). Soft thresholding
sign(d) max(|d| - T, 0); the approximation band is kept.

Colour. scikit-image converts to YCbCr first (`convert2ycbcr=True`); here the colour
transform is the orthonormal opponent basis (R+G+B)/sqrt3, (R-B)/sqrt2, (R-2G+B)/sqrt6,
whose orthonormality keeps i.i.d. RGB noise i.i.d. with the same sigma in every channel
(YCbCr scales the channels differently; the per-channel sigma estimate absorbs either). Each
channel is denoised with its own estimate, and the result transformed back.
"""
from __future__ import annotations

import numpy as np

_S3 = np.sqrt(3.0)
FILTERS = {
    "haar": np.array([1.0, 1.0]) / np.sqrt(2.0),
    "db2": np.array([1 + _S3, 3 + _S3, 3 - _S3, 1 - _S3]) / (4 * np.sqrt(2.0)),
}
MARGIN = 16
OPPONENT = np.array([[1, 1, 1] / _S3,
                     [1, 0, -1] / np.sqrt(2.0),
                     [1, -2, 1] / np.sqrt(6.0)])   # rows orthonormal: inverse = transpose


def _filters(wavelet: str):
  if wavelet not in FILTERS:
    raise ValueError(f"unknown wavelet {wavelet!r}; choose from {', '.join(FILTERS)}")
  h = FILTERS[wavelet]
  g = np.array([(-1) ** k * h[len(h) - 1 - k] for k in range(len(h))])
  return h, g


def _analyse(x: np.ndarray, f: np.ndarray, axis: int) -> np.ndarray:
  """y[n] = sum_k f[k] x[(2n + k) mod N] along `axis`."""
  acc = sum(c * np.roll(x, -k, axis=axis) for k, c in enumerate(f))
  return np.take(acc, np.arange(0, x.shape[axis], 2), axis=axis)


def _synthesise(a: np.ndarray, f: np.ndarray, axis: int) -> np.ndarray:
  """The transpose of _analyse: x[m] = sum_k f[k] u[m - k], u the 2x upsampled a."""
  shape = list(a.shape)
  shape[axis] *= 2
  u = np.zeros(shape, a.dtype)
  idx = [slice(None)] * a.ndim
  idx[axis] = slice(0, None, 2)
  u[tuple(idx)] = a
  return sum(c * np.roll(u, k, axis=axis) for k, c in enumerate(f))


def dwt2(x: np.ndarray, levels: int, wavelet: str = "db2") -> list:
  """[a_L, (dH, dV, dD)_L, ..., (dH, dV, dD)_1] of (H, W) with H, W multiples of 2**levels
  (coarsest first, as PyWavelets' wavedec2)."""
  h, g = _filters(wavelet)
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or x.shape[0] % (1 << levels) or x.shape[1] % (1 << levels):
    raise ValueError(f"dwt2: need a 2-D array with sides multiples of {1 << levels}, "
                     f"got {x.shape}")
  details = []
  a = x
  for _ in range(levels):
    lo, hi = _analyse(a, h, 0), _analyse(a, g, 0)
    a, dh = _analyse(lo, h, 1), _analyse(lo, g, 1)
    dv, dd = _analyse(hi, h, 1), _analyse(hi, g, 1)
    details.append((dh, dv, dd))
  return [a] + details[::-1]


def idwt2(coeffs: list, wavelet: str = "db2") -> np.ndarray:
  """The inverse of dwt2 (exact: the transform is orthogonal)."""
  h, g = _filters(wavelet)
  a = coeffs[0]
  for dh, dv, dd in coeffs[1:]:
    lo = _synthesise(a, h, 1) + _synthesise(dh, g, 1)
    hi = _synthesise(dv, h, 1) + _synthesise(dd, g, 1)
    a = _synthesise(lo, h, 0) + _synthesise(hi, g, 0)
  return a


def default_levels(h: int, w: int, wavelet: str = "db2") -> int:
  """scikit-image's default: PyWavelets' dwt_max_level for the smaller side, minus 3."""
  taps = len(FILTERS[wavelet])
  return max(int(np.floor(np.log2(min(h, w) / (taps - 1)))) - 3, 1)


def mad_sigma(x: np.ndarray, wavelet: str = "db2") -> float:
  """Donoho's estimate: median |finest diagonal coefficient| / 0.6745, for (H, W)."""
  p = _pad(np.asarray(x, np.float64), 1)
  return float(np.median(np.abs(dwt2(p, 1, wavelet)[1][2])) / 0.6745)


def soft(d: np.ndarray, t: float) -> np.ndarray:
  return np.sign(d) * np.maximum(np.abs(d) - t, 0.0)


def bayes_threshold(d: np.ndarray, sigma: float) -> float:
  """BayesShrink: sigma^2 / sigma_x with sigma_x^2 = max(mean(d^2) - sigma^2, 0)."""
  sx2 = float(np.mean(d * d)) - sigma * sigma
  return sigma * sigma / np.sqrt(sx2) if sx2 > 0 else np.inf


def _pad(x: np.ndarray, levels: int) -> np.ndarray:
  m = 1 << levels
  h, w = x.shape
  ph, pw = -(h + 2 * MARGIN) % m, -(w + 2 * MARGIN) % m
  mode = "symmetric"
  return np.pad(x, ((MARGIN, MARGIN + ph), (MARGIN, MARGIN + pw)), mode=mode)


def denoise_channel(x: np.ndarray, sigma: float | None = None, *, wavelet: str = "db2",
                    levels: int | None = None) -> np.ndarray:
  """BayesShrink soft thresholding of one (H, W) channel; sigma estimated when None."""
  x = np.asarray(x, np.float64)
  h, w = x.shape
  levels = levels or default_levels(h, w, wavelet)
  sigma = mad_sigma(x, wavelet) if sigma is None else float(sigma)
  coeffs = dwt2(_pad(x, levels), levels, wavelet)
  out = [coeffs[0]] + [tuple(soft(d, bayes_threshold(d, sigma)) for d in band)
                       for band in coeffs[1:]]
  return idwt2(out, wavelet)[MARGIN:MARGIN + h, MARGIN:MARGIN + w]


def denoise_wavelet(noisy: np.ndarray, *, wavelet: str = "db2",
                    levels: int | None = None) -> np.ndarray:
  """(H, W) or (H, W, 3) float image -> BayesShrink-denoised float32 (not clipped)."""
  x = np.asarray(noisy, np.float64)
  if x.ndim == 2:
    return denoise_channel(x, wavelet=wavelet, levels=levels).astype(np.float32)
  if x.ndim != 3 or x.shape[-1] != 3:
    raise ValueError(f"denoise_wavelet: expected (H, W) or (H, W, 3), got {x.shape}")
  opp = x @ OPPONENT.T
  den = np.stack([denoise_channel(opp[..., c], wavelet=wavelet, levels=levels)
                  for c in range(3)], axis=-1)
  return (den @ OPPONENT).astype(np.float32)
