"""The noise models have the statistics their docstrings state (hypothesis over levels and
signal values); each bound is 6 standard errors of the estimate, so a wrong variance, rate
or scale (a factor 255, a missing square root, p swapped for 1 - p) fails."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxvision.denoise import noise

N = 1 << 16  # samples per estimate: (1, 128, 128, 4)
SETTINGS = settings(max_examples=8, deadline=None, derandomize=True)


def _flat(value: float):
  return np.full((1, 128, 128, 4), value, np.float32)


def _key(seed):
  return jax.random.PRNGKey(seed)


@SETTINGS
@given(sigma=st.floats(1.0, 75.0), x=st.floats(0.1, 0.9), seed=st.integers(0, 99))
def test_gaussian_mean_and_variance(sigma, x, seed):
  y = np.asarray(noise.apply(f"gaussian:{sigma}", _key(seed), _flat(x)))
  s = sigma / 255.0
  assert abs(y.mean() - x) < 6 * s / np.sqrt(N)
  assert abs(y.var() / s**2 - 1) < 6 * np.sqrt(2 / N)


@SETTINGS
@given(peak=st.floats(2.0, 100.0), x=st.floats(0.05, 1.0), seed=st.integers(0, 99))
def test_poisson_mean_and_variance(peak, x, seed):
  y = np.asarray(noise.apply(f"poisson:{peak}", _key(seed), _flat(x)))
  var = x / peak
  assert abs(y.mean() - x) < 6 * np.sqrt(var / N)
  assert abs(y.var() / var - 1) < 0.1  # Poisson excess kurtosis: looser than Gaussian's
  # the photon counts are integers: y * peak is on the integer grid
  assert np.allclose(y * peak, np.round(y * peak), atol=1e-3 * peak)


@SETTINGS
@given(peak=st.floats(5.0, 60.0), sigma=st.floats(2.0, 40.0), x=st.floats(0.1, 0.9),
       seed=st.integers(0, 99))
def test_poisson_gaussian_variance_adds(peak, sigma, x, seed):
  y = np.asarray(noise.apply(f"poisson_gaussian:{peak},{sigma}", _key(seed), _flat(x)))
  var = x / peak + (sigma / 255.0) ** 2
  assert abs(y.mean() - x) < 6 * np.sqrt(var / N)
  assert abs(y.var() / var - 1) < 0.1


@SETTINGS
@given(p=st.floats(0.05, 0.95), seed=st.integers(0, 99))
def test_bernoulli_drop_rate_whole_pixels(p, seed):
  x = np.random.default_rng(seed).uniform(0.2, 1.0, (1, 128, 128, 3)).astype(np.float32)
  y = np.asarray(noise.apply(f"bernoulli:{p}", _key(seed), x))
  dropped = (y == 0).all(-1)
  kept = (y == x).all(-1)
  assert (dropped | kept).all()  # all channels of a pixel together
  n = dropped.size
  assert abs(dropped.mean() - p) < 6 * np.sqrt(p * (1 - p) / n)


@SETTINGS
@given(p=st.floats(0.05, 0.95), seed=st.integers(0, 99))
def test_impulse_rate_and_uniform_values(p, seed):
  x = _flat(2.0)[..., :3]  # outside [0, 1]: every replaced value is recognisable
  y = np.asarray(noise.apply(f"impulse:{p}", _key(seed), x))
  hit = (y != 2.0).all(-1)
  assert ((y == 2.0).all(-1) | hit).all()
  n = hit.size
  assert abs(hit.mean() - p) < 6 * np.sqrt(p * (1 - p) / n)
  v = y[hit]
  assert v.min() >= 0 and v.max() <= 1
  assert abs(v.mean() - 0.5) < 6 * np.sqrt(1 / 12 / v.size)


@SETTINGS
@given(p=st.floats(0.1, 0.9), seed=st.integers(0, 99))
def test_text_coverage_is_rate_times_ink(p, seed):
  x = np.full((4, 132, 144, 3), 2.0, np.float32)
  y = np.asarray(noise.apply(f"text:{p}", _key(seed), x))
  covered = (y != 2.0).all(-1)
  assert ((y == 2.0).all(-1) | covered).all()  # opaque: a covered pixel changes every channel
  expect = p * noise.text_fill()
  # words are ~6 x 66 pixel blocks: ~200 per image, so the error is that of ~800 draws
  words = 4 * (132 / 11) * (144 / 36)
  assert abs(covered.mean() - expect) < 6 * noise.text_fill() * np.sqrt(p * (1 - p) / words)


def test_ranges_draw_a_level_per_image():
  x = np.full((64, 32, 32, 1), 0.5, np.float32)
  y = np.asarray(noise.apply("gaussian:0-50", _key(0), x))
  s = y.reshape(64, -1).std(1) * 255
  assert s.min() < 10 and s.max() > 40  # spread over the range ...
  assert 20 < s.mean() < 30             # ... uniform: mean 25


def test_fresh_draws_differ_and_eval_key_is_fixed():
  x = _flat(0.5)
  a = noise.apply("gaussian:25", noise.eval_key(3), x)
  b = noise.apply("gaussian:25", noise.eval_key(3), x)
  c = noise.apply("gaussian:25", noise.eval_key(4), x)
  assert np.array_equal(a, b) and not np.allclose(a, c)
  noisy = noise.add_noise_numpy("gaussian:25", x[0], seed=3)
  assert noisy.min() >= 0 and noisy.max() <= 1  # clipped, as an 8-bit file holds it


@pytest.mark.parametrize("bad", ["salt", "gaussian", "gaussian:x", "gaussian:50-10",
                                 "bernoulli:1.5", "poisson:0", "poisson_gaussian:30"])
def test_parse_rejects_with_one_line(bad):
  with pytest.raises(ValueError) as e:
    noise.parse(bad)
  assert bad in str(e.value) and "\n" not in str(e.value)


def test_parse_round_trips():
  for s in ("gaussian:25", "gaussian:0-50", "poisson_gaussian:30,10", "text:0-0.5"):
    assert str(noise.parse(s)) == s
