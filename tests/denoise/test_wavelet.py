"""The numpy wavelet denoiser: the orthogonal DWT reconstructs perfectly and keeps energy;
BayesShrink soft thresholding improves a piecewise-constant image in Gaussian noise and
removes pure noise entirely; the MAD estimate finds sigma."""
from __future__ import annotations

import numpy as np
import pytest

from jaxvision.denoise import wavelet


def _psnr(a, b):
  return 10 * np.log10(1.0 / np.mean((np.clip(a, 0, 1) - b) ** 2))


@pytest.mark.parametrize("name", ["haar", "db2"])
def test_the_transform_is_orthogonal_and_perfectly_reconstructs(name):
  x = np.random.default_rng(0).normal(size=(48, 64))
  c = wavelet.dwt2(x, 3, name)
  bands = [c[0]] + [d for level in c[1:] for d in level]
  assert [b.shape for b in bands[:4]] == [(6, 8)] * 4 and bands[-1].shape == (24, 32)
  np.testing.assert_allclose(wavelet.idwt2(c, name), x, atol=1e-12)
  assert sum(np.sum(b * b) for b in bands) == pytest.approx(np.sum(x * x), rel=1e-12)
  h = wavelet.FILTERS[name]
  assert np.sum(h) == pytest.approx(np.sqrt(2)) and np.sum(h * h) == pytest.approx(1)
  if name == "db2":  # two vanishing moments: a ramp has no finest-level detail inside
    ramp = np.add.outer(np.arange(32.0), 2 * np.arange(32.0))
    dd = wavelet.dwt2(ramp, 1, name)[1]
    assert np.abs(dd[0][:-2, :-2]).max() < 1e-9 and np.abs(dd[2][:-2, :-2]).max() < 1e-9


def _blocks(h=96, w=128):
  """A piecewise-constant colour image: rectangles of random colour on a grey ground."""
  rng = np.random.default_rng(1)
  img = np.full((h, w, 3), 0.5)
  for _ in range(8):
    y, x = rng.integers(0, h - 16), rng.integers(0, w - 16)
    img[y:y + rng.integers(12, 40), x:x + rng.integers(12, 40)] = rng.uniform(0.1, 0.9, 3)
  return img


@pytest.mark.parametrize("sigma", [0.05, 0.1])
def test_bayes_shrink_improves_a_piecewise_constant_image(sigma):
  clean = _blocks()
  noisy = clean + sigma * np.random.default_rng(2).normal(size=clean.shape)
  assert wavelet.mad_sigma(noisy[..., 0]) == pytest.approx(sigma, rel=0.15)
  for name in ("haar", "db2"):
    out = wavelet.denoise_wavelet(noisy, wavelet=name)
    assert out.shape == clean.shape and out.dtype == np.float32
    assert _psnr(out, clean) > _psnr(noisy, clean) + 4.0, name
  # pure noise has no signal in any detail band: every detail coefficient goes, and only
  # the approximation band's share of the noise stays (std sigma / 2**levels = sigma / 8)
  flat = 0.5 + sigma * np.random.default_rng(3).normal(size=(64, 64))
  assert np.std(wavelet.denoise_channel(flat, sigma, levels=3)) < 0.2 * sigma
