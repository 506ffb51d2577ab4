"""Tests for jaxvision.compression.rd: Bjøntegaard deltas, Pillow RD points, evaluate()."""
import io
import json
import math

import numpy as np
import pytest
import skimage.data
from PIL import Image

from jaxvision.compression import rd
from jaxvision.core import metrics

# A smooth, made-up RD curve: PSNR rises ~6 dB per doubling of rate at low rate.
RATES = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
PSNRS = np.array([26.0, 29.0, 31.8, 34.3, 36.5])


def _photo(size=128, which="astronaut"):
  img = getattr(skimage.data, which)()
  return np.asarray(Image.fromarray(img).resize((size, size), Image.LANCZOS))


@pytest.fixture(scope="module")
def photo():
  return _photo()


# --------------------------------------------------------------------------- #
# BD-rate / BD-PSNR
# --------------------------------------------------------------------------- #
def test_bd_self_is_zero():
  assert abs(rd.bd_rate(RATES, PSNRS, RATES, PSNRS)) < 1e-6
  assert abs(rd.bd_psnr(RATES, PSNRS, RATES, PSNRS)) < 1e-6


def test_bd_rate_scaled_rates():
  # Same PSNR at 0.9x the bits: exactly -10% (log-rate shifts by a constant).
  assert rd.bd_rate(RATES, PSNRS, 0.9 * RATES, PSNRS) == pytest.approx(-10.0, abs=0.1)
  assert rd.bd_rate(RATES, PSNRS, 1.25 * RATES, PSNRS) == pytest.approx(25.0, abs=0.1)
  # Point order does not matter.
  assert rd.bd_rate(RATES[::-1], PSNRS[::-1], 0.9 * RATES, PSNRS) == pytest.approx(-10.0, abs=0.1)


def test_bd_psnr_shifted():
  assert rd.bd_psnr(RATES, PSNRS, RATES, PSNRS + 0.5) == pytest.approx(0.5, abs=1e-6)
  assert rd.bd_psnr(RATES, PSNRS, RATES, PSNRS - 1.0) == pytest.approx(-1.0, abs=1e-6)
  # A better curve in PSNR is also cheaper in rate, and vice versa.
  assert rd.bd_rate(RATES, PSNRS, RATES, PSNRS + 0.5) < 0
  assert rd.bd_rate(RATES, PSNRS, RATES, PSNRS - 0.5) > 0


@pytest.mark.parametrize("args, match", [
  ((RATES[:3], PSNRS[:3], RATES, PSNRS), ">= 4 RD points"),
  ((RATES, PSNRS, RATES[:3], PSNRS[:3]), ">= 4 RD points"),
  ((RATES, PSNRS[:4], RATES, PSNRS), "rates but"),
  ((RATES, PSNRS[[0, 2, 1, 3, 4]], RATES, PSNRS), "monotone"),
  ((np.r_[RATES[:4], RATES[3]], PSNRS, RATES, PSNRS), "monotone"),
  ((np.r_[0.0, RATES[1:]], PSNRS, RATES, PSNRS), "> 0"),
  ((RATES, np.r_[PSNRS[:4], np.nan], RATES, PSNRS), "finite"),
])
def test_bd_validation(args, match):
  with pytest.raises(ValueError, match=match):
    rd.bd_rate(*args)
  with pytest.raises(ValueError, match=match):
    rd.bd_psnr(*args)


def test_bd_no_overlap():
  # bd_rate integrates over PSNR, bd_psnr over log-rate: each needs its own overlap.
  with pytest.raises(ValueError, match="overlap in PSNR"):
    rd.bd_rate(RATES, PSNRS, RATES, PSNRS + 20)
  with pytest.raises(ValueError, match="overlap in log-rate"):
    rd.bd_psnr(RATES, PSNRS, RATES * 100, PSNRS)


def _kodak(name):
  pts = np.array(rd.COMPRESSAI_KODAK[name])
  return pts[:, 0], pts[:, 1]


def test_compressai_anchor_ordering():
  assert all(len(v) == 8 for v in rd.COMPRESSAI_KODAK.values())
  fac, hyp, mean = (_kodak(n) for n in
                    ("bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean"))
  hyp_vs_fac = rd.bd_rate(*fac, *hyp)
  mean_vs_hyp = rd.bd_rate(*hyp, *mean)
  assert -40 < hyp_vs_fac < 0  # hyperprior is better than factorized
  assert -15 < mean_vs_hyp < 0  # mean-scale is better than hyperprior
  assert rd.bd_psnr(*fac, *hyp) > 0 and rd.bd_psnr(*hyp, *mean) > 0


# --------------------------------------------------------------------------- #
# Pillow codecs
# --------------------------------------------------------------------------- #
def test_pillow_codecs_reports_all():
  avail = rd.pillow_codecs()
  assert set(avail) == set(rd.CODECS)
  assert all(isinstance(v, bool) for v in avail.values())
  assert avail["jpeg"]  # Pillow always ships libjpeg in its wheels


def test_jpeg_rd_point_monotone_and_exact(photo):
  pts = [rd.pillow_rd_point(photo, "jpeg", q) for q in (10, 50, 90)]
  bpps, psnrs = [p["bpp"] for p in pts], [p["psnr"] for p in pts]
  assert bpps == sorted(bpps) and len(set(bpps)) == 3
  assert psnrs == sorted(psnrs) and len(set(psnrs)) == 3
  p = pts[1]
  assert p["bpp"] == pytest.approx(8 * p["bytes"] / (128 * 128))
  assert math.isnan(p["ms_ssim"])  # 128 px <= 160: too small for 5-scale MS-SSIM
  assert p["encode_s"] > 0 and p["decode_s"] > 0
  # PSNR is jaxvision.core.metrics.psnr of the decoded image (JPEG encoding is deterministic).
  data = rd.encode(photo, "jpeg", 50)
  assert len(data) == p["bytes"]
  dec = rd.decode(data)
  ref = float(metrics.psnr(photo / 255.0, dec / 255.0, data_range=1.0))
  assert p["psnr"] == pytest.approx(ref, abs=1e-5)
  # Decoding is an exact, repeatable reload; the decoded pixels survive a lossless PNG trip.
  np.testing.assert_array_equal(rd.decode(data), dec)
  buf = io.BytesIO()
  Image.fromarray(dec).save(buf, format="PNG")
  np.testing.assert_array_equal(rd.decode(buf.getvalue()), dec)


@pytest.mark.parametrize("codec, quality", [("webp", 50), ("jpeg2000", 1.0), ("avif", 50)])
def test_other_codecs_round_trip(photo, codec, quality):
  if not rd.pillow_codecs()[codec]:
    pytest.skip(f"{codec} not available in this Pillow")
  p = rd.pillow_rd_point(photo, codec, quality)
  assert 0.1 < p["bpp"] < 8 and 15 < p["psnr"] < 60
  if codec == "jpeg2000":  # quality is the target bpp: hit within header overhead
    assert p["bpp"] == pytest.approx(1.0, rel=0.15)


def test_ms_ssim_on_larger_image():
  img = _photo(176, "coffee")
  p = rd.pillow_rd_point(img, "jpeg", 75)
  assert 0.8 < p["ms_ssim"] <= 1.0


def test_bad_inputs(photo):
  with pytest.raises(ValueError, match="uint8 HxWx3"):
    rd.pillow_rd_point(photo[..., 0], "jpeg", 50)
  with pytest.raises(ValueError, match="uint8 HxWx3"):
    rd.pillow_rd_point(photo.astype(np.float32), "jpeg", 50)
  with pytest.raises(ValueError, match="unknown codec"):
    rd.pillow_rd_point(photo, "bpg", 50)
  with pytest.raises(ValueError, match="target bpp"):
    rd.pillow_rd_point(photo, "jpeg2000", 0)


def test_rd_curve_averages_per_image_values(photo):
  other = _photo(96, "coffee")
  res = rd.rd_curve([("a", photo), ("b", other)], "jpeg", (20, 60))
  assert [p["quality"] for p in res["points"]] == [20, 60]
  for i, p in enumerate(res["points"]):
    for k in ("bpp", "psnr", "bytes"):
      assert p[k] == pytest.approx(np.mean([res["per_image"][n][i][k] for n in ("a", "b")]))
    assert p["num_images"] == 2


# --------------------------------------------------------------------------- #
# evaluate
# --------------------------------------------------------------------------- #
def test_evaluate_writes_json_and_png(tmp_path, monkeypatch):
  images = [("astronaut", _photo(64)), ("coffee", _photo(48, "coffee"))]
  real = rd._codec_status()
  # Force one codec off so the skip path is exercised whatever this machine's Pillow has.
  monkeypatch.setattr(rd, "_codec_status",
                      lambda: {**real, "avif": (False, "disabled for the test")})
  qualities = {"jpeg": (20, 50, 90), "webp": (20, 50, 90), "jpeg2000": (0.5, 1.5, 3.0)}
  ours = [{"bpp": b, "psnr": p} for b, p in zip(RATES * 8, PSNRS - 4)]
  res = rd.evaluate(images, out_dir=str(tmp_path / "out"), qualities=qualities,
                    extra={"ours": ours})

  data = json.loads((tmp_path / "out" / "rd.json").read_text())
  assert data["pillow_version"] == __import__("PIL").__version__
  assert data["skipped"]["avif"] == "disabled for the test"
  assert "avif" not in data["curves"]
  for codec, avail in real.items():
    if codec != "avif" and not avail[0]:
      assert codec in data["skipped"]
  assert "jpeg" in data["curves"]
  jpeg = data["curves"]["jpeg"]
  assert len(jpeg["points"]) == 3 and set(jpeg["per_image"]) == {"astronaut", "coffee"}
  assert jpeg["points"][0]["ms_ssim"] is None  # NaN -> null (tiny images)
  assert "Kodak" in data["compressai_note"]
  # 3 qualities are too few for a cubic fit: recorded, not raised.
  e = data["bd"]["jpeg"]["compressai-kodak/bmshj2018-hyperprior"]
  assert e["bd_rate_percent"] is None and ">= 4" in e["error"]
  # The extra curve has 5 points but "jpeg" (the anchor) only 3; vs CompressAI it is computable.
  assert data["bd"]["ours"]["jpeg"]["bd_rate_percent"] is None
  assert data["bd"]["ours"]["compressai-kodak/bmshj2018-factorized"]["bd_rate_percent"] > 0
  assert set(res["curves"]) == set(data["curves"]) and res["skipped"] == data["skipped"]

  png = (tmp_path / "out" / "rd.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  assert len(png) > 5000
  assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".tmp-")]


def test_plot_rd_atomic_overwrite(tmp_path):
  path = tmp_path / "p.png"
  path.write_bytes(b"old")
  rd.plot_rd({"a": list(zip(RATES, PSNRS)), "b": [{"bpp": 1.0, "psnr": 30.0}]}, str(path), "t")
  assert path.read_bytes()[:4] == b"\x89PNG"
  assert [p.name for p in tmp_path.iterdir()] == ["p.png"]
