"""Tests for jaxvision.core.metrics against scikit-image and an independent numpy reference.

Compilation dominates the runtime (XLA:CPU), so the tests reuse a small set of
image shapes; see docs/metrics.md for what is matched to which tolerance.
"""

from __future__ import annotations

import chex
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import skimage.color
import skimage.data
import skimage.metrics
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from jaxvision.core import metrics

SSIM_ATOL = 1e-5  # vs skimage (float64), brief's tolerance
PSNR_ATOL = 1e-4  # dB, vs skimage (float64)
MS_SSIM_ATOL = 1e-4  # vs the numpy reference below
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# --------------------------------------------------------------------------- #
# data
# --------------------------------------------------------------------------- #
def _photo(name: str) -> np.ndarray:
    """A real photo as float64 (H, W, C) in [0, 1]; greyscale gets C = 1."""
    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = img[..., None]
    return img.astype(np.float64) / 255.0


PHOTOS = ("astronaut", "coffee", "camera")  # 512x512x3, 400x600x3, 512x512x1
DEGRADATIONS = ("noise_small", "noise_large", "blur")
# Odd sizes at every MS-SSIM scale; shared by several tests so that ms_ssim
# compiles once for it (compilation dominates the runtime on CPU).
ODD_CROP = (301, 257)


def _degrade(x: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "noise_small":
        return np.clip(x + 0.02 * rng.standard_normal(x.shape), 0.0, 1.0)
    if kind == "noise_large":
        return np.clip(x + 0.2 * rng.standard_normal(x.shape), 0.0, 1.0)
    if kind == "blur":
        return ndimage.gaussian_filter(x, sigma=(2.0, 2.0, 0.0), mode="reflect")
    raise ValueError(kind)


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: _photo(name) for name in PHOTOS}


def _sk_ssim(a, b, data_range=1.0, sigma=1.5):
    return skimage.metrics.structural_similarity(
        a,
        b,
        data_range=data_range,
        channel_axis=-1,
        gaussian_weights=True,
        sigma=sigma,
        use_sample_covariance=False,
    )


# --------------------------------------------------------------------------- #
# independent MS-SSIM reference, straight from Wang, Simoncelli & Bovik 2003
# --------------------------------------------------------------------------- #
def _gaussian_window_1d(size: int, sigma: float) -> np.ndarray:
    # The paper's 11x11 circular Gaussian (sigma 1.5) is the outer product of this with itself.
    r = np.arange(size) - size // 2
    w = np.exp(-(r**2) / (2.0 * sigma**2))
    return w / w.sum()


def _ref_ssim_cs(x, y, data_range, window, k1=0.01, k2=0.03):
    """Mean SSIM and mean c*s of one 2-D channel over the valid region (float64)."""
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    half = window.shape[0] // 2

    def mu(z):  # Gaussian-weighted local mean, then drop the border (valid region)
        z = ndimage.correlate1d(z, window, axis=0, mode="reflect")
        z = ndimage.correlate1d(z, window, axis=1, mode="reflect")
        return z[half:-half, half:-half]

    mx, my = mu(x), mu(y)
    sxx = mu(x * x) - mx * mx
    syy = mu(y * y) - my * my
    sxy = mu(x * y) - mx * my
    lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    return float(np.mean(lum * cs)), float(np.mean(cs))


def _ref_downsample(z):
    """2x2 mean; odd sizes replicate the last row/column (MATLAB msssim.m, TF)."""
    z = np.pad(z, ((0, z.shape[0] % 2), (0, z.shape[1] % 2)), mode="edge")
    return 0.25 * (z[0::2, 0::2] + z[1::2, 0::2] + z[0::2, 1::2] + z[1::2, 1::2])


def _ref_ms_ssim(a, b, data_range=1.0, weights=MS_SSIM_WEIGHTS, size=11, sigma=1.5):
    window = _gaussian_window_1d(size, sigma)
    per_channel = []
    for ch in range(a.shape[-1]):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
        value = 1.0
        for j, w in enumerate(weights):
            s, cs = _ref_ssim_cs(x, y, data_range, window)
            if j < len(weights) - 1:
                value *= max(cs, 0.0) ** w
                x, y = _ref_downsample(x), _ref_downsample(y)
            else:
                value *= max(s, 0.0) ** w
        per_channel.append(value)
    return float(np.mean(per_channel))


# --------------------------------------------------------------------------- #
# PSNR / SSIM vs scikit-image on real photos
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kind", DEGRADATIONS)
@pytest.mark.parametrize("name", PHOTOS)
def test_psnr_and_ssim_match_skimage(photos, name, kind):
    x = photos[name]
    y = _degrade(x, kind)
    want_psnr = skimage.metrics.peak_signal_noise_ratio(x, y, data_range=1.0)
    want_ssim = _sk_ssim(x, y)
    got_psnr = metrics.psnr(x, y)
    got_ssim = metrics.ssim(x, y)
    assert got_psnr.shape == () and got_ssim.shape == ()
    np.testing.assert_allclose(float(got_psnr), want_psnr, rtol=0, atol=PSNR_ATOL)
    np.testing.assert_allclose(float(got_ssim), want_ssim, rtol=0, atol=SSIM_ATOL)


def test_uint8_with_data_range_255():
    x = skimage.data.astronaut()
    y = (255 * _degrade(x / 255.0, "noise_small")).round().astype(np.uint8)
    want_psnr = skimage.metrics.peak_signal_noise_ratio(x, y, data_range=255)
    want_ssim = _sk_ssim(x, y, data_range=255)
    np.testing.assert_allclose(float(metrics.psnr(x, y, data_range=255)), want_psnr, atol=PSNR_ATOL)
    np.testing.assert_allclose(float(metrics.ssim(x, y, data_range=255)), want_ssim, atol=SSIM_ATOL)


def test_ssim_other_sigma_matches_skimage(photos):
    # skimage uses filter_size = 2 * int(3.5 * sigma + 0.5) + 1, i.e. 9 for sigma = 1.
    x = photos["camera"]
    y = _degrade(x, "noise_small")
    got = metrics.ssim(x, y, filter_size=9, sigma=1.0)
    np.testing.assert_allclose(float(got), _sk_ssim(x, y, sigma=1.0), atol=SSIM_ATOL)


def test_batched_and_leading_dims_give_per_image_values(photos):
    # A (2, 3, H, W, C) stack of different real-photo crops, each degraded differently.
    crops = []
    for name in ("astronaut", "coffee"):
        for k, kind in enumerate(DEGRADATIONS):
            x = photos[name][40 * k : 40 * k + 96, 64 * k : 64 * k + 128]
            crops.append((x, _degrade(x, kind, seed=k)))
    a = np.stack([x for x, _ in crops]).reshape(2, 3, 96, 128, 3)
    b = np.stack([y for _, y in crops]).reshape(2, 3, 96, 128, 3)
    got_psnr = metrics.psnr(a, b)
    got_ssim = metrics.ssim(a, b)
    chex.assert_shape([got_psnr, got_ssim], (2, 3))
    for (i, j), (x, y) in zip(np.ndindex(2, 3), crops):
        want_psnr = skimage.metrics.peak_signal_noise_ratio(x, y, data_range=1.0)
        np.testing.assert_allclose(float(got_psnr[i, j]), want_psnr, atol=PSNR_ATOL)
        np.testing.assert_allclose(float(got_ssim[i, j]), _sk_ssim(x, y), atol=SSIM_ATOL)
    # Flattening the batch axes changes nothing.
    flat = metrics.ssim(a.reshape(6, 96, 128, 3), b.reshape(6, 96, 128, 3))
    np.testing.assert_allclose(np.asarray(flat), np.asarray(got_ssim).ravel(), atol=1e-7)


def test_psnr_identical_is_inf():
    x = np.full((4, 4, 3), 0.5, np.float32)
    assert np.isposinf(float(metrics.psnr(x, x)))


# --------------------------------------------------------------------------- #
# MS-SSIM
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "name,crop",
    [
        ("coffee", None),  # 400x600x3: even, except width 75 -> 38 at the last pooling
        ("camera", ODD_CROP),  # odd sizes from the first pooling, 1 channel
    ],
)
def test_ms_ssim_matches_numpy_reference(photos, name, crop):
    x = photos[name]
    if crop is not None:
        x = x[: crop[0], : crop[1]]
    for kind in ("noise_small", "blur"):
        y = _degrade(x, kind)
        got = float(metrics.ms_ssim(x, y))
        want = _ref_ms_ssim(x, y)
        np.testing.assert_allclose(got, want, rtol=0, atol=MS_SSIM_ATOL)


def test_ms_ssim_relu_on_negative_cs():
    # y = 1 - x anti-correlates every window, so c*s < 0 at scale 1; the relu
    # (pytorch_msssim / TF convention) makes the product 0, not a complex/NaN power.
    x = _photo("camera")[: ODD_CROP[0], : ODD_CROP[1]]
    y = 1.0 - x
    got = float(metrics.ms_ssim(x, y))
    assert np.isfinite(got)
    np.testing.assert_allclose(got, _ref_ms_ssim(x, y), atol=MS_SSIM_ATOL)


def test_ms_ssim_identity_and_monotone_in_noise(photos):
    x = photos["coffee"]  # same shape as above: no recompilation
    assert abs(float(metrics.ms_ssim(x, x)) - 1.0) < 1e-6
    rng = np.random.default_rng(3)
    noise = rng.standard_normal(x.shape)
    values = [float(metrics.ms_ssim(x, x + s * noise)) for s in (0.01, 0.03, 0.1, 0.3)]
    assert all(v0 > v1 for v0, v1 in zip(values, values[1:])), values
    assert values[0] < 1.0


# --------------------------------------------------------------------------- #
# hypothesis properties (one fixed shape each, so one compile)
# --------------------------------------------------------------------------- #
_unit_floats = st.floats(0.0, 1.0, allow_nan=False, width=32)
_images = hnp.arrays(np.float32, (16, 16, 3), elements=_unit_floats)


@settings(max_examples=40, deadline=None)
@given(x=_images, y=_images)
def test_ssim_properties(x, y):
    sxx = float(metrics.ssim(x, x))
    sxy = float(metrics.ssim(x, y))
    syx = float(metrics.ssim(y, x))
    assert abs(sxx - 1.0) < 1e-6
    assert abs(sxy - syx) < 1e-6
    assert -1.0 - 1e-6 <= sxy <= 1.0 + 1e-6


@settings(max_examples=40, deadline=None)
@given(
    x=_images,
    seed=st.integers(0, 2**32 - 1),
    s1=st.floats(1e-3, 1.0),
    ratio=st.floats(1.01, 100.0),
)
def test_psnr_symmetric_and_decreasing_in_noise(x, seed, s1, ratio):
    noise = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    y1 = x + np.float32(s1) * noise
    y2 = x + np.float32(s1 * ratio) * noise
    p1, p2 = float(metrics.psnr(x, y1)), float(metrics.psnr(x, y2))
    assert float(metrics.psnr(y1, x)) == p1
    assert p1 > p2


# --------------------------------------------------------------------------- #
# jit vs no jit
# --------------------------------------------------------------------------- #
class JitTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        x = _photo("camera")[: ODD_CROP[0], : ODD_CROP[1]]
        self.x = x.astype(np.float32)
        self.y = _degrade(x, "noise_small").astype(np.float32)
        self.rgb = _photo("astronaut")[:32, :48].astype(np.float32)

    @chex.variants(with_jit=True, without_jit=True)
    def test_same_values(self):
        x, y = self.x, self.y
        np.testing.assert_allclose(
            float(self.variant(metrics.psnr)(x, y)),
            skimage.metrics.peak_signal_noise_ratio(x.astype(np.float64), y.astype(np.float64), data_range=1.0),
            atol=PSNR_ATOL,
        )
        np.testing.assert_allclose(
            float(self.variant(metrics.ssim)(x, y)),
            _sk_ssim(x.astype(np.float64), y.astype(np.float64)),
            atol=SSIM_ATOL,
        )
        np.testing.assert_allclose(float(self.variant(metrics.ms_ssim)(x, y)), _ref_ms_ssim(x, y), atol=MS_SSIM_ATOL)
        ycc = self.variant(metrics.rgb_to_ycbcr)(self.rgb)
        np.testing.assert_allclose(np.asarray(ycc), skimage.color.rgb2ycbcr(self.rgb) / 255.0, atol=1e-6)
        np.testing.assert_allclose(np.asarray(self.variant(metrics.y_channel)(self.rgb)), np.asarray(ycc[..., :1]), atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_traced_data_range(self):
        # data_range may be a traced argument; filter_size must stay static.
        got = self.variant(metrics.ssim)(self.x * 255, self.y * 255, 255.0)
        np.testing.assert_allclose(float(got), float(metrics.ssim(self.x, self.y)), atol=1e-6)


# --------------------------------------------------------------------------- #
# colour conversion
# --------------------------------------------------------------------------- #
def test_rgb_to_ycbcr_matches_skimage(photos):
    rgb = photos["coffee"]
    want = skimage.color.rgb2ycbcr(rgb)  # MATLAB convention, output on 0..255 scale
    np.testing.assert_allclose(np.asarray(metrics.rgb_to_ycbcr(rgb)), want / 255.0, atol=1e-6)
    rgb8 = skimage.data.coffee()
    np.testing.assert_allclose(
        np.asarray(metrics.rgb_to_ycbcr(rgb8, data_range=255)), skimage.color.rgb2ycbcr(rgb8), atol=1e-4
    )
    y = metrics.y_channel(rgb8, data_range=255)
    chex.assert_shape(y, rgb8.shape[:-1] + (1,))
    np.testing.assert_allclose(np.asarray(y[..., 0]), skimage.color.rgb2ycbcr(rgb8)[..., 0], atol=1e-4)


def test_ycbcr_studio_swing_extremes():
    corners = np.array([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])
    got = np.asarray(metrics.rgb_to_ycbcr(corners)) * 255.0
    np.testing.assert_allclose(got, [[[16.0, 128.0, 128.0], [235.0, 128.0, 128.0]]], atol=1e-4)
    # batched leading dims pass through
    chex.assert_shape(metrics.y_channel(np.zeros((2, 3, 5, 7, 3))), (2, 3, 5, 7, 1))


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("fn", [metrics.psnr, metrics.ssim, metrics.ms_ssim])
def test_shape_mismatch_raises(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(np.zeros((200, 200, 3)), np.zeros((200, 200, 1)))


def test_ms_ssim_too_small_raises():
    with pytest.raises(ValueError, match=r"too small.*> 160"):
        metrics.ms_ssim(np.zeros((160, 300, 3)), np.zeros((160, 300, 3)))
    # The bound follows filter_size and the number of scales: (3 - 1) * 2**1 = 4.
    with pytest.raises(ValueError, match=r"too small.*> 4"):
        metrics.ms_ssim(np.zeros((4, 9, 1)), np.zeros((4, 9, 1)), filter_size=3, weights=(0.5, 0.5))
    ok = metrics.ms_ssim(np.ones((5, 9, 1)), np.ones((5, 9, 1)), filter_size=3, weights=(0.5, 0.5))
    assert abs(float(ok) - 1.0) < 1e-6


def test_other_input_errors():
    with pytest.raises(ValueError, match="filter_size"):
        metrics.ssim(np.zeros((8, 8, 1)), np.zeros((8, 8, 1)))  # smaller than the window
    with pytest.raises(ValueError, match="odd"):
        metrics.ssim(np.zeros((32, 32, 1)), np.zeros((32, 32, 1)), filter_size=10)
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W, C\)"):
        metrics.psnr(np.zeros((8, 8)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="size 3"):
        metrics.rgb_to_ycbcr(np.zeros((8, 8, 4)))
