"""Unprocessing (Brooks et al. 2019) and the forward pipeline: unprocess -> process returns
the photo (exactly without the mosaic, outside the highlights; within the bilinear
demosaic's loss with it); the metadata, mosaic and demosaic conventions; the shot/read
noise has the stated mean and variance, and its levels lie on the paper's log-linear line
(hypothesis; bounds of 6 standard errors)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st
from skimage import data as skd

from jaxvision.core import metrics
from jaxvision.denoise import raw

SETTINGS = settings(max_examples=8, deadline=None, derandomize=True)


def _photos():
  """Four 64x64 crops of natural photos (highlights, saturated colours, dark areas)."""
  a, c = skd.astronaut(), skd.coffee()
  crops = [a[:64, :64], a[230:294, 200:264], c[140:204, 230:294], c[280:344, 400:464]]
  return jnp.asarray(np.stack(crops).astype(np.float32) / 255.0)


@jax.jit
def _round_trips(key, x):
  meta = raw.random_metadata(key, x.shape[0])  # a camera per image
  bayer = raw.unprocess(x, meta)
  return (meta, raw.process(raw.unprocess(x, meta, do_mosaic=False), meta),
          raw.highlight_mask(x, meta), bayer, raw.process(bayer, meta),
          jnp.mean(raw.gamma_expansion(x)))


def test_unprocess_then_process_returns_the_photo():
  x = _photos()
  meta, y, mask, bayer, y_mosaic, linear_mean = _round_trips(jax.random.PRNGKey(3), x)
  # Without the mosaic: the identity (float rounding) wherever nothing was clipped and
  # the highlight mask is 0 -- which is almost everywhere.
  keep = np.broadcast_to(~np.asarray(mask), x.shape)
  assert keep.mean() > 0.95
  err = np.abs(np.asarray(y) - np.asarray(x))
  assert err[keep].max() < 1e-5
  assert err.mean() < 2e-3  # the highlights too stay close
  # With the RGGB mosaic and the bilinear demosaic (lossy at fine detail): the stated
  # tolerance, PSNR above 22 dB per crop and 25 dB on average (measured: 24.4-33.4 dB on
  # these crops, 26.4-27.5 dB on the embedded held-out photos, whole images).
  bayer = np.asarray(bayer)
  assert bayer.shape == (4, 32, 32, 4)
  assert bayer.min() >= 0 and bayer.max() <= 1
  psnr = np.asarray(metrics.psnr(jnp.clip(y_mosaic, 0, 1), x))
  assert psnr.min() > 22.0 and psnr.mean() > 25.0, psnr
  # and the raw is darker than the photo's linear values: the inverse gains are < 1 mostly
  assert bayer.mean() < float(linear_mean)


@jax.jit
def _curves(key, t, img):
  b = raw.mosaic(img)
  return (raw.random_metadata(key, 256), raw.inverse_smoothstep(raw.smoothstep(t)),
          raw.gamma_expansion(raw.gamma_compression(t)), b, raw.demosaic(b))


def test_metadata_curves_and_the_bayer_layout():
  t = jnp.linspace(0, 1, 101)
  yy, xx = np.mgrid[0:12, 0:16].astype(np.float32)
  img = np.stack([0.01 * yy + 0.02 * xx, 0.5 + 0.03 * yy - 0.01 * xx, 0.02 * yy], -1)[None]
  meta, smooth_rt, gamma_rt, b, d = _curves(jax.random.PRNGKey(0), t, jnp.asarray(img))
  rgb2cam = np.asarray(meta["rgb2cam"])
  np.testing.assert_allclose(rgb2cam.sum(-1), 1.0, atol=1e-5)  # white stays white
  np.testing.assert_allclose(np.asarray(meta["cam2rgb"]) @ rgb2cam,
                             np.broadcast_to(np.eye(3), rgb2cam.shape), atol=1e-4)
  assert np.asarray(meta["red_gain"]).min() >= 1.9 and np.asarray(meta["red_gain"]).max() <= 2.4
  assert np.asarray(meta["blue_gain"]).min() >= 1.5 and np.asarray(meta["blue_gain"]).max() <= 1.9
  assert abs(float(np.mean(1 / np.asarray(meta["rgb_gain"]))) - 0.8) < 6 * 0.1 / 16
  np.testing.assert_allclose(smooth_rt, t, atol=1e-5)
  np.testing.assert_allclose(gamma_rt[1:], t[1:], rtol=1e-4)
  # RGGB: R at (0,0), G at (0,1) and (1,0), B at (1,1); each site keeps its value after the
  # demosaic, and a linear ramp is reproduced exactly away from the border
  b, d = np.asarray(b), np.asarray(d)
  np.testing.assert_array_equal(b[0, :, :, 0], img[0, 0::2, 0::2, 0])
  np.testing.assert_array_equal(b[0, :, :, 1], img[0, 0::2, 1::2, 1])
  np.testing.assert_array_equal(b[0, :, :, 2], img[0, 1::2, 0::2, 1])
  np.testing.assert_array_equal(b[0, :, :, 3], img[0, 1::2, 1::2, 2])
  np.testing.assert_allclose(d[0, 0::2, 0::2, 0], img[0, 0::2, 0::2, 0], atol=1e-6)
  np.testing.assert_allclose(d[0, 0::2, 1::2, 1], img[0, 0::2, 1::2, 1], atol=1e-6)
  np.testing.assert_allclose(d[:, 1:-1, 1:-1], img[:, 1:-1, 1:-1], atol=1e-5)


@SETTINGS
@given(x=st.floats(0.02, 1.0), log_shot=st.floats(np.log(1e-4), np.log(0.012)),
       log_read=st.floats(np.log(1e-8), np.log(1e-3)), seed=st.integers(0, 99))
def test_shot_and_read_noise_mean_and_variance(x, log_shot, log_read, seed):
  shot, read = np.exp(log_shot), np.exp(log_read)
  clean = jnp.full((2, 128, 128, 4), x, jnp.float32)
  n = clean.size
  y = np.asarray(jax.jit(raw.add_noise)(jax.random.PRNGKey(seed), clean, jnp.full(2, shot),
                                        jnp.full(2, read)), np.float64)
  var = shot * x + read
  assert abs(y.mean() - x) < 6 * np.sqrt(var / n)
  assert abs(y.var() / var - 1) < 6 * np.sqrt(2 / n)


@SETTINGS
@given(ratio=st.sampled_from([10.0, 100.0, 300.0]), seed=st.integers(0, 99))
def test_low_light_amplifies_the_noise_of_the_short_exposure(ratio, seed):
  x, shot, read = 0.3, 1e-5, 1e-9   # small enough that nothing clips at 0 or 1
  clean = jnp.full((1, 256, 256, 4), x, jnp.float32)
  y = np.asarray(jax.jit(raw.low_light)(jax.random.PRNGKey(seed), clean, ratio,
                                        jnp.full(1, shot), jnp.full(1, read)), np.float64)
  var = ratio * shot * x + ratio**2 * read
  assert 0 < y.min() and y.max() < 1
  assert abs(y.mean() - x) < 6 * np.sqrt(var / y.size)
  assert abs(y.var() / var - 1) < 6 * np.sqrt(2 / y.size)


def test_noise_levels_lie_on_the_log_linear_line():
  n = 20000
  shot, read = jax.jit(raw.random_noise_levels, static_argnums=1)(jax.random.PRNGKey(7), n)
  ls, lr = np.log(np.asarray(shot, np.float64)), np.log(np.asarray(read, np.float64))
  assert ls.min() >= np.log(1e-4) - 1e-5 and ls.max() <= np.log(0.012) + 1e-5
  # log shot uniform over its range: its mean and standard deviation
  lo, hi = np.log(1e-4), np.log(0.012)
  assert abs(ls.mean() - (lo + hi) / 2) < 6 * (hi - lo) / np.sqrt(12 * n)
  assert abs(ls.std() - (hi - lo) / np.sqrt(12)) < 0.02
  slope, intercept = np.polyfit(ls, lr, 1)
  resid = lr - (slope * ls + intercept)
  assert abs(slope - 2.18) < 0.02 and abs(intercept - 1.20) < 0.12, (slope, intercept)
  assert abs(resid.std() - 0.26) < 6 * 0.26 / np.sqrt(2 * n)
