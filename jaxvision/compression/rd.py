"""Rate-distortion evaluation: Pillow codec sweeps, Bjøntegaard deltas, RD plots.

Independent of the neural codecs: our models plug in through ``evaluate(extra=...)``
as lists of per-quality points (dicts with at least ``bpp`` and ``psnr``).

Conventions
-----------
* Images are ``uint8`` HxWx3 RGB. bpp = 8 * len(bitstream) / (H * W) (file bytes,
  headers included, as CompressAI reports for Pillow codecs).
* PSNR / MS-SSIM come from :mod:`jaxvision.core.metrics` on RGB scaled to [0, 1]
  (``data_range=1.0``). MS-SSIM needs ``min(H, W) > 160`` (5 scales, 11-tap
  filter); for smaller images it is reported as NaN, and a curve averaged over
  a set containing such an image has NaN MS-SSIM too (no silent partial means).
* Averages over images are the mean of per-image values (bpp and PSNR alike),
  as CompressAI's ``eval_model`` does -- not PSNR of the mean MSE.

Quality parameter per codec (the ``quality`` argument):
* ``jpeg``: Pillow ``quality`` 1-95 (default 4:2:0 subsampling, baseline).
* ``webp``: Pillow ``quality`` 0-100 (lossy, ``method`` 4 default).
* ``avif``: Pillow ``quality`` 0-100 (libavif, default speed 6, 4:2:0).
* ``jpeg2000``: the *target bpp*. OpenJPEG's ``quality_mode="rates"`` takes a
  compression ratio relative to the raw 24-bit RGB image, so we pass
  ``quality_layers=[24 / bpp]`` with the irreversible 9/7 wavelet (the lossy
  mode). The achieved bpp is measured from the file (it lands within a few
  percent of the target, plus ~100 bytes of header, which matters on tiny
  images). ``num_resolutions`` is lowered for images smaller than 32 pixels so
  OpenJPEG accepts them.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np

from jaxvision.core.io import atomic_write

__all__ = [
  "CODECS", "DEFAULT_QUALITIES", "COMPRESSAI_KODAK", "pillow_codecs", "encode", "decode",
  "pillow_rd_point", "rd_curve", "bd_rate", "bd_psnr", "plot_rd", "evaluate",
]

CODECS = ("jpeg", "webp", "jpeg2000", "avif")

# Chosen on Kodak-sized photos (astronaut 512x512) to span ~0.1-2 bpp; tiny
# images need more bits per pixel for the same setting.
DEFAULT_QUALITIES = {
  "jpeg": (5, 10, 20, 35, 50, 75, 90),  # ~0.25 .. 2.1 bpp
  "webp": (1, 10, 25, 50, 75, 85, 95),  # ~0.19 .. 2.4 bpp
  "avif": (10, 25, 40, 50, 60, 75, 85),  # ~0.13 .. 1.6 bpp
  "jpeg2000": (0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0),  # target bpp
}

_PIL_FORMAT = {"jpeg": "JPEG", "webp": "WEBP", "jpeg2000": "JPEG2000", "avif": "AVIF"}

# CompressAI pretrained zoo on Kodak (24 images, RGB PSNR, mean of per-image values),
# quality 1..8. Source: InterDigitalInc/CompressAI results/image/kodak/
# compressai-{bmshj2018-factorized,bmshj2018-hyperprior,mbt2018-mean}.json, as
# transcribed in shared/ANCHORS.md. Each entry: (bpp, psnr_db).
COMPRESSAI_KODAK = {
  "bmshj2018-factorized": (
    (0.1226, 26.91), (0.1885, 28.22), (0.2878, 29.62), (0.4404, 31.28),
    (0.6481, 32.96), (0.9670, 35.38), (1.3512, 37.40), (1.8333, 39.62),
  ),
  "bmshj2018-hyperprior": (
    (0.1313, 27.58), (0.2089, 29.20), (0.3199, 30.97), (0.4784, 32.84),
    (0.6687, 34.53), (0.9388, 36.74), (1.2592, 38.58), (1.6602, 40.56),
  ),
  "mbt2018-mean": (
    (0.1239, 27.70), (0.1980, 29.36), (0.3072, 31.13), (0.4606, 32.95),
    (0.6617, 34.97), (0.9144, 36.91), (1.2342, 38.84), (1.6191, 40.63),
  ),
}


# --------------------------------------------------------------------------- #
# codecs
# --------------------------------------------------------------------------- #
def _pil_module_check(name: str) -> bool:
  from PIL import features
  try:
    return bool(features.check(name))
  except (ValueError, KeyError):  # unknown feature name on this Pillow version
    return False


def _codec_status() -> dict[str, tuple[bool, str]]:
  """name -> (available, note). Feature flags first, then a real 16x16 encode+decode."""
  import PIL
  status = {}
  flags = {"jpeg": "jpg", "webp": "webp", "jpeg2000": "jpg_2000", "avif": "avif"}
  for name in CODECS:
    note = ""
    ok = _pil_module_check(flags[name])
    if not ok and name == "avif":
      # Pillow < 11.3 has no built-in AVIF; the pillow-avif-plugin registers it on import.
      try:
        import pillow_avif  # noqa: F401
        ok, note = True, "via pillow_avif plugin"
      except Exception:  # noqa: BLE001 - any import failure means "not available"
        note = f"Pillow {PIL.__version__} has no AVIF support and pillow_avif is not installed"
    elif not ok:
      note = f"Pillow {PIL.__version__} was built without {flags[name]} support"
    if ok:
      # Flags can lie (e.g. a decoder-only build): prove it with a round trip.
      try:
        probe = np.zeros((16, 16, 3), np.uint8)
        probe[::2] = 200
        q = DEFAULT_QUALITIES[name][len(DEFAULT_QUALITIES[name]) // 2]
        out = decode(encode(probe, name, q))
        ok = out.shape == probe.shape
      except Exception as e:  # noqa: BLE001 - report, never crash
        ok, note = False, f"test encode failed: {type(e).__name__}: {e}"
    status[name] = (ok, note)
  return status


def pillow_codecs() -> dict[str, bool]:
  """Which of jpeg / webp / jpeg2000 / avif the installed Pillow can encode and decode."""
  return {k: v[0] for k, v in _codec_status().items()}


def _check_image(image) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"expected a uint8 HxWx3 RGB image, got {image.dtype} {image.shape}")
  return image


def _check_codec(codec: str) -> str:
  if codec not in _PIL_FORMAT:
    raise ValueError(f"unknown codec {codec!r}; expected one of {CODECS}")
  return codec


def _save_kwargs(codec: str, quality, h: int, w: int) -> dict:
  if codec == "jpeg2000":
    bpp = float(quality)
    if not bpp > 0:
      raise ValueError(f"jpeg2000 quality is a target bpp and must be > 0, got {quality}")
    # OpenJPEG needs each side >= 2**(num_resolutions - 1); 6 is its default.
    nres = max(1, min(6, int(math.log2(min(h, w))) + 1))
    return {"quality_mode": "rates", "quality_layers": [24.0 / bpp], "irreversible": True,
            "num_resolutions": nres}
  q = int(quality)
  if not 0 <= q <= 100:
    raise ValueError(f"{codec} quality must be in [0, 100], got {quality}")
  return {"quality": q}


def encode(image, codec: str, quality) -> bytes:
  """Encode a uint8 HxWx3 image in memory with a Pillow codec; returns the file bytes."""
  from PIL import Image
  image = _check_image(image)
  codec = _check_codec(codec)
  if codec == "avif":
    try:
      import pillow_avif  # noqa: F401  (registers AVIF on Pillow < 11.3; harmless otherwise)
    except ImportError:
      pass
  buf = io.BytesIO()
  Image.fromarray(image, "RGB").save(
    buf, format=_PIL_FORMAT[codec], **_save_kwargs(codec, quality, *image.shape[:2]))
  return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
  """Decode file bytes with Pillow into a uint8 HxWx3 RGB array."""
  from PIL import Image
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"))


def _metrics(image: np.ndarray, decoded: np.ndarray) -> tuple[float, float]:
  from jaxvision.core import metrics
  a = image.astype(np.float32) / 255.0
  b = decoded.astype(np.float32) / 255.0
  psnr = float(metrics.psnr(a, b, data_range=1.0))
  try:
    msssim = float(metrics.ms_ssim(a, b, data_range=1.0))
  except ValueError:  # min side <= 160: too small for 5 MS-SSIM scales
    msssim = float("nan")
  return psnr, msssim


def pillow_rd_point(image_uint8, codec: str, quality) -> dict:
  """Encode + decode one image in memory and measure it.

  Returns ``dict(codec, quality, bpp, psnr, ms_ssim, bytes, encode_s, decode_s)``;
  ``ms_ssim`` is NaN when ``min(H, W) <= 160``; ``psnr`` is +inf for a lossless result.
  """
  image = _check_image(image_uint8)
  t0 = time.perf_counter()
  data = encode(image, codec, quality)
  t1 = time.perf_counter()
  decoded = decode(data)
  t2 = time.perf_counter()
  if decoded.shape != image.shape:
    raise RuntimeError(f"{codec} decoded shape {decoded.shape} != input {image.shape}")
  psnr, msssim = _metrics(image, decoded)
  h, w = image.shape[:2]
  return {"codec": codec, "quality": quality, "bpp": 8.0 * len(data) / (h * w), "psnr": psnr,
          "ms_ssim": msssim, "bytes": len(data), "encode_s": t1 - t0, "decode_s": t2 - t1}


def _named(images) -> list[tuple[str, np.ndarray]]:
  """Accept [(name, array), ...] or [array, ...]."""
  out = []
  for i, item in enumerate(images):
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
      out.append((item[0], item[1]))
    else:
      out.append((f"image{i}", item))
  if not out:
    raise ValueError("no images given")
  return out


_AVG_KEYS = ("bpp", "psnr", "ms_ssim", "bytes", "encode_s", "decode_s")


def rd_curve(images, codec: str, qualities: Sequence | None = None) -> dict:
  """Sweep ``qualities`` over ``images`` (list of (name, uint8) or arrays).

  Returns ``{"codec", "points": [averaged point per quality], "per_image": {name: [points]}}``;
  averaged values are the mean of per-image values (CompressAI convention).
  """
  codec = _check_codec(codec)
  named = _named(images)
  qualities = DEFAULT_QUALITIES[codec] if qualities is None else tuple(qualities)
  per_image = {name: [pillow_rd_point(img, codec, q) for q in qualities] for name, img in named}
  points = []
  for i, q in enumerate(qualities):
    pts = [per_image[name][i] for name, _ in named]
    avg = {k: float(np.mean([p[k] for p in pts])) for k in _AVG_KEYS}
    points.append({"codec": codec, "quality": q, **avg, "num_images": len(pts)})
  return {"codec": codec, "points": points, "per_image": per_image}


# --------------------------------------------------------------------------- #
# Bjøntegaard deltas
# --------------------------------------------------------------------------- #
def _check_curve(label: str, rates, psnrs) -> tuple[np.ndarray, np.ndarray]:
  r = np.asarray(rates, np.float64).ravel()
  p = np.asarray(psnrs, np.float64).ravel()
  if r.shape != p.shape:
    raise ValueError(f"{label}: {r.size} rates but {p.size} PSNRs")
  if r.size < 4:
    raise ValueError(f"{label}: need >= 4 RD points for a cubic fit, got {r.size}")
  if not (np.all(np.isfinite(r)) and np.all(np.isfinite(p))):
    raise ValueError(f"{label}: rates and PSNRs must be finite")
  if np.any(r <= 0):
    raise ValueError(f"{label}: rates must be > 0 (log-rate fit)")
  order = np.argsort(r)
  r, p = r[order], p[order]
  if np.any(np.diff(r) <= 0) or np.any(np.diff(p) <= 0):
    raise ValueError(f"{label}: RD curve must be strictly monotone "
                     f"(PSNR strictly increasing with rate), got rates {r} PSNRs {p}")
  return r, p


def _int_poly(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
  """Integral over [lo, hi] of the least-squares cubic y(x)."""
  pint = np.polyint(np.polyfit(x, y, 3))
  return float(np.polyval(pint, hi) - np.polyval(pint, lo))


def _overlap(a: np.ndarray, b: np.ndarray, what: str) -> tuple[float, float]:
  lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
  if not hi > lo:
    raise ValueError(f"the two RD curves do not overlap in {what}")
  return float(lo), float(hi)


def bd_rate(anchor_rates, anchor_psnrs, test_rates, test_psnrs) -> float:
  """Bjøntegaard delta rate (VCEG-M33, 2001) in percent.

  Fits log(rate) as a cubic in PSNR for each curve and averages the difference
  over the overlapping PSNR interval: ``100 * (exp(mean dlog R) - 1)``.
  Negative = the test codec needs fewer bits than the anchor at equal PSNR
  (e.g. -10.0 = 10% bit saving). Rates in any consistent unit (bpp, kbps).
  Raises ValueError for < 4 points, non-monotone curves or no PSNR overlap.
  """
  ra, pa = _check_curve("anchor", anchor_rates, anchor_psnrs)
  rt, pt = _check_curve("test", test_rates, test_psnrs)
  lo, hi = _overlap(pa, pt, "PSNR")
  diff = (_int_poly(pt, np.log(rt), lo, hi) - _int_poly(pa, np.log(ra), lo, hi)) / (hi - lo)
  return float((math.exp(diff) - 1.0) * 100.0)


def bd_psnr(anchor_rates, anchor_psnrs, test_rates, test_psnrs) -> float:
  """Bjøntegaard delta PSNR in dB: mean PSNR gain of test over anchor at equal rate.

  Fits PSNR as a cubic in log(rate), averaged over the overlapping log-rate
  interval. Positive = the test codec is better. Same validation as :func:`bd_rate`.
  """
  ra, pa = _check_curve("anchor", anchor_rates, anchor_psnrs)
  rt, pt = _check_curve("test", test_rates, test_psnrs)
  la, lt = np.log(ra), np.log(rt)
  lo, hi = _overlap(la, lt, "log-rate")
  return float((_int_poly(lt, pt, lo, hi) - _int_poly(la, pa, lo, hi)) / (hi - lo))


# --------------------------------------------------------------------------- #
# plotting and the full evaluation
# --------------------------------------------------------------------------- #
def plot_rd(curves: Mapping[str, Sequence], path: str, title: str = "Rate-distortion",
            dashed: Sequence[str] = ()) -> str:
  """PNG of PSNR (dB) vs bpp, one line+markers per curve; returns ``path``.

  ``curves``: name -> list of (bpp, psnr) pairs or of dicts with ``bpp``/``psnr``.
  Curves named in ``dashed`` (e.g. reference anchors) are drawn dashed.
  """
  # A bare Figure renders with Agg and needs no pyplot: no display, no global figure state.
  from matplotlib.figure import Figure

  fig = Figure(figsize=(7, 5), dpi=100)
  ax = fig.add_subplot()
  for name, pts in curves.items():
    xy = sorted(_bpp_psnr(p) for p in pts)
    if not xy:
      continue
    ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", markersize=4, label=name,
            linestyle="--" if name in dashed else "-")
  ax.set_xlabel("bits per pixel (bpp)")
  ax.set_ylabel("PSNR (dB, RGB)")
  ax.set_title(title)
  ax.grid(True, alpha=0.4)
  if curves:
    ax.legend(fontsize=8)
  fig.tight_layout()
  atomic_write(path, lambda f: fig.savefig(f, format="png"))
  return path


def _bpp_psnr(p) -> tuple[float, float]:
  if isinstance(p, Mapping):
    return float(p["bpp"]), float(p["psnr"])
  return float(p[0]), float(p[1])


def _jsonable(x):
  """NaN/inf are not JSON: write them as null."""
  if isinstance(x, float):
    return x if math.isfinite(x) else None
  if isinstance(x, (np.floating, np.integer)):
    return _jsonable(x.item())
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  return x


def _bd_entry(anchor: Sequence, test: Sequence) -> dict:
  a = [_bpp_psnr(p) for p in anchor]
  t = [_bpp_psnr(p) for p in test]
  try:
    args = ([x for x, _ in a], [y for _, y in a], [x for x, _ in t], [y for _, y in t])
    return {"bd_rate_percent": bd_rate(*args), "bd_psnr_db": bd_psnr(*args)}
  except ValueError as e:  # too few / non-monotone points, no overlap: record why
    return {"bd_rate_percent": None, "bd_psnr_db": None, "error": str(e)}


def neural_rd_point(model, variables, tables, image_uint8, *, model_name: str,
                    quality: int) -> dict:
  """Code one image into real .jvc bytes with a learned codec, decode it, measure.

  Same keys as :func:`pillow_rd_point`; bpp counts the whole file (header and CRC
  included), the decoded image is rounded to uint8 as `jaxvision decompress` writes it.
  """
  from jaxvision.compression import coding, files
  image = _check_image(image_uint8)
  h, w = image.shape[:2]
  x = image[None].astype(np.float32) / 255.0
  t0 = time.perf_counter()
  header, strings = files.compress_image(model, variables, tables, x, model_name=model_name,
                                         quality=quality)
  buf = io.BytesIO()
  files.write_jvc(buf, header, strings)
  data = buf.getvalue()
  t1 = time.perf_counter()
  header, strings = files.read_jvc(data)
  x_hat = coding.decompress(model, variables, tables, strings, header.latent_shapes, h, w)
  t2 = time.perf_counter()
  decoded = (x_hat[0] * 255.0 + 0.5).astype(np.uint8)
  psnr, msssim = _metrics(image, decoded)
  return {"codec": model_name, "quality": quality, "bpp": 8.0 * len(data) / (h * w),
          "psnr": psnr, "ms_ssim": msssim, "bytes": len(data), "encode_s": t1 - t0,
          "decode_s": t2 - t1}


def neural_rd_curves(images, codecs: Sequence) -> dict:
  """``codecs``: [(label, model, variables, tables, model_name, quality)]; one RD point
  per entry. Returns {label: {"points": [averaged per quality, by bpp], "per_image":
  {image: [points]}}}; entries sharing a label form one curve."""
  named = _named(images)
  out: dict = {}
  for label, model, variables, tables, model_name, quality in codecs:
    pts = {name: neural_rd_point(model, variables, tables, img, model_name=model_name,
                                 quality=quality) for name, img in named}
    avg = {k: float(np.mean([p[k] for p in pts.values()])) for k in _AVG_KEYS}
    cur = out.setdefault(label, {"points": [], "per_image": {n: [] for n, _ in named}})
    cur["points"].append({"codec": model_name, "quality": quality, **avg,
                          "num_images": len(named)})
    for n, p in pts.items():
      cur["per_image"][n].append(p)
  for cur in out.values():
    order = np.argsort([p["bpp"] for p in cur["points"]], kind="stable")
    cur["points"] = [cur["points"][i] for i in order]
    cur["per_image"] = {n: [v[i] for i in order] for n, v in cur["per_image"].items()}
  return out


def evaluate(images, codecs: Sequence[str] = CODECS, out_dir: str = ".",
             qualities: Mapping[str, Sequence] | None = None,
             extra: Mapping[str, Sequence] | None = None, title: str | None = None,
             extra_per_image: Mapping[str, Mapping] | None = None) -> dict:
  """Pillow RD sweeps + BD-rates; writes ``out_dir/rd.json`` and ``out_dir/rd.png``.

  ``images``: list of (name, uint8 HxWx3). ``qualities``: codec -> sweep
  (defaults: DEFAULT_QUALITIES). ``extra``: name -> list of averaged per-quality
  points (dicts with ``bpp``/``psnr``, or (bpp, psnr) pairs), e.g. our neural
  codecs. Every curve (Pillow and extra) gets BD-rate/BD-PSNR vs ``jpeg`` (when
  evaluated) and vs each COMPRESSAI_KODAK curve; a comparison that cannot be
  computed (fewer than 4 points, non-monotone, no overlap) is null with an
  ``error``. Unavailable codecs are skipped and listed. Returns the JSON dict.
  """
  import PIL
  named = _named(images)
  qualities = dict(qualities or {})
  status = _codec_status()
  curves, skipped = {}, {}
  for codec in codecs:
    _check_codec(codec)
    ok, note = status[codec]
    if not ok:
      skipped[codec] = note
      continue
    curves[codec] = rd_curve(named, codec, qualities.get(codec))

  tested = {c: r["points"] for c, r in curves.items()}
  for name, pts in (extra or {}).items():
    tested[name] = [p if isinstance(p, Mapping) else {"bpp": p[0], "psnr": p[1]} for p in pts]

  anchors = {f"compressai-kodak/{k}": v for k, v in COMPRESSAI_KODAK.items()}
  if "jpeg" in curves:
    anchors = {"jpeg": curves["jpeg"]["points"], **anchors}
  bd = {name: {a: _bd_entry(apts, pts) for a, apts in anchors.items() if a != name}
        for name, pts in tested.items()}

  result = {
    "pillow_version": PIL.__version__,
    "images": [{"name": n, "height": int(im.shape[0]), "width": int(im.shape[1])}
               for n, im in named],
    "codecs_available": {k: v[0] for k, v in status.items()},
    "skipped": skipped,
    "quality_mapping": {
      "jpeg": "Pillow quality", "webp": "Pillow quality", "avif": "Pillow quality (libavif)",
      "jpeg2000": "target bpp -> quality_mode='rates', quality_layers=[24/bpp], irreversible",
    },
    "conventions": ("bpp = 8*file_bytes/(H*W); RGB PSNR and MS-SSIM on [0,1]; averages are means "
                    "of per-image values; ms_ssim null when min(H,W) <= 160; BD-rate negative = "
                    "fewer bits than the anchor (Bjontegaard 2001, cubic fit of log-rate vs PSNR)"),
    "compressai_note": ("COMPRESSAI_KODAK curves were measured on Kodak (24 images, 768x512); "
                        "BD-rates against them are only indicative on other images"),
    "curves": {c: {"points": r["points"], "per_image": r["per_image"]} for c, r in curves.items()},
    "extra": {k: tested[k] for k in (extra or {})},
    "extra_per_image": dict(extra_per_image or {}),
    "bd": bd,
  }
  os.makedirs(out_dir, exist_ok=True)
  text = json.dumps(_jsonable(result), indent=2, allow_nan=False)
  atomic_write(os.path.join(out_dir, "rd.json"), lambda f: f.write(text.encode()))
  ref = {f"CompressAI {k} (Kodak)": v for k, v in COMPRESSAI_KODAK.items()}
  plot_rd({**tested, **ref}, os.path.join(out_dir, "rd.png"),
          title or f"RD on {len(named)} image(s), Pillow {PIL.__version__}", dashed=tuple(ref))
  return result
